"""Rendering the Mistral v1 instruct template (sagebatch.domain.prompt)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sagebatch.domain.prompt import Message, PromptFormatError, render_messages, render_prompt


def user(text: str) -> Message:
    return Message(role="user", content=text)


def assistant(text: str) -> Message:
    return Message(role="assistant", content=text)


def system(text: str) -> Message:
    return Message(role="system", content=text)


def test_single_prompt_has_no_leading_bos() -> None:
    # Given a plain question
    # When it is rendered
    rendered = render_prompt("What is the capital of France?")
    # Then it is the v1 template without "<s>" (TGI adds BOS itself)
    assert rendered == "[INST] What is the capital of France? [/INST]"


def test_multi_turn_ends_assistant_turns_with_eos_and_no_bos() -> None:
    # Given a two-exchange conversation
    messages = [user("Hi"), assistant("Hello!"), user("How are you?")]
    # When it is rendered
    rendered = render_messages(messages)
    # Then answers follow one space and end with a literal EOS, later turns get no BOS
    assert rendered == "[INST] Hi [/INST] Hello!</s>[INST] How are you? [/INST]"


def test_system_prompt_is_folded_into_first_user_turn_only() -> None:
    # Given a system prompt and two user turns
    messages = [system("Be brief."), user("Hi"), assistant("Hello!"), user("Bye")]
    # When rendered
    rendered = render_messages(messages)
    # Then the system text precedes the first user turn, separated by a blank line
    assert rendered == "[INST] Be brief.\n\nHi [/INST] Hello!</s>[INST] Bye [/INST]"


def test_empty_system_prompt_is_ignored_like_mistral_common() -> None:
    # Given an empty system message
    # When rendered
    rendered = render_messages([system(""), user("Hi")])
    # Then no separator is added
    assert rendered == "[INST] Hi [/INST]"


def test_empty_assistant_answer_gets_no_space_before_eos() -> None:
    # Given an empty assistant turn (a space would add a stray "▁" token)
    # When rendered
    rendered = render_messages([user("a"), assistant(""), user("b")])
    # Then EOS follows [/INST] directly
    assert rendered == "[INST] a [/INST]</s>[INST] b [/INST]"


def test_render_prompt_accepts_a_system_prompt() -> None:
    # Given a prompt and a system prompt
    # When rendered
    # Then it equals the one-turn chat rendering
    assert render_prompt("q", system="s") == render_messages([system("s"), user("q")])


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([], "empty"),
        ([system("s")], "no user"),
        ([assistant("a"), user("u")], "expected 'user'"),
        ([user("u"), user("v")], "expected 'assistant'"),
        ([user("u"), assistant("a")], "end with a user"),
        ([user("u"), assistant("a"), system("s"), user("v")], "role 'system'"),
        ([system("s"), system("t"), user("u")], "role 'system'"),
    ],
    ids=["empty", "system-only", "starts-with-assistant", "two-users", "ends-with-assistant", "late-system", "two-systems"],
)
def test_malformed_conversations_are_refused(messages: list[Message], fragment: str) -> None:
    # Given a conversation that breaks the alternation rules
    # When it is rendered
    # Then PromptFormatError (a ValueError) names the problem
    with pytest.raises(PromptFormatError, match=fragment):
        render_messages(messages)


def test_unknown_role_is_a_validation_error() -> None:
    # Given a role the template does not know
    # When a Message is built
    # Then pydantic refuses it
    with pytest.raises(ValidationError):
        Message(role="tool", content="x")  # type: ignore[arg-type]
