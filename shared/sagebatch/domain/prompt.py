"""Mistral 7B Instruct (v1 template) prompt rendering.

The text produced here is the ``inputs`` string sent to TGI. It reproduces what
mistral-common's ``MistralTokenizer.v1()`` builds for the same chat, with two
deliberate differences in form (not in tokens):

* No leading ``<s>``. TGI adds BOS itself; a literal ``<s>`` would be parsed as a
  second BOS (protocol.md section 9, seed.md BOS note).
* The end of an assistant turn is written as the literal ``</s>``. mistral-common
  appends the EOS control id (2) there; TGI's tokenizer parses the literal
  ``</s>`` into that same id, and the text after it is encoded as a fresh
  segment (with SentencePiece's leading ``▁``), which is exactly how
  mistral-common encodes each message on its own.

mistral-common v1 encodes ``"[INST] {user} [/INST]"`` and the assistant content
as separate SentencePiece calls and joins the ids. Rendering the assistant
content after one space (``"[/INST] {answer}"``) yields identical ids because no
v1 vocabulary piece spans ``]`` and a following ``▁``; an *empty* answer must
not get that space, or an extra ``▁`` token would appear (mistral-common itself
refuses an empty assistant message; we accept it and render ``[/INST]</s>``).
tests/unit/test_tokens.py checks id-for-id equality on a corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

Role = Literal["system", "user", "assistant"]

BOS = "<s>"
EOS = "</s>"
INST_OPEN = "[INST]"
INST_CLOSE = "[/INST]"
# mistral-common v1 folds the system prompt into the first user turn this way.
SYSTEM_SEPARATOR = "\n\n"


class PromptFormatError(ValueError):
    """The conversation cannot be rendered with the Mistral instruct template."""


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Role
    content: str


def user_turn(content: str) -> str:
    """One ``[INST] … [/INST]`` block (v1: plain text, not control tokens)."""
    return f"{INST_OPEN} {content} {INST_CLOSE}"


def assistant_turn(content: str) -> str:
    """An answer plus its EOS, spaced so the ids equal mistral-common's."""
    return (f" {content}" if content else "") + EOS


def fold_system(system: str | None, user: str) -> str:
    """First user turn with the system prompt in front, as mistral-common v1 does.

    An empty system prompt is ignored (mistral-common tests ``if system_prompt``).
    """
    return f"{system}{SYSTEM_SEPARATOR}{user}" if system else user


def split_system(messages: Sequence[Message]) -> tuple[str | None, list[Message]]:
    """Validate the turn order and return (system prompt, alternating turns).

    Rules: an optional leading system message, then user/assistant alternating,
    starting and ending with a user turn (the model answers the last user turn).
    mistral-common merges repeated roles instead; a batch record with that shape
    is more likely a bug upstream, so we refuse it loudly.
    """
    if not messages:
        raise PromptFormatError("conversation is empty: at least one user message is required")
    system: str | None = None
    turns = list(messages)
    if turns[0].role == "system":
        system = turns[0].content
        turns = turns[1:]
    if not turns:
        raise PromptFormatError("conversation has a system message but no user message")
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.role != expected:
            position = index + (1 if system is not None else 0)
            raise PromptFormatError(
                f"message {position} has role {message.role!r}, expected {expected!r}: "
                "after an optional first system message, roles must alternate "
                "user/assistant starting with user"
            )
    if turns[-1].role != "user":
        raise PromptFormatError("conversation must end with a user message")
    return system, turns


def render_turns(system: str | None, turns: Sequence[Message]) -> str:
    """Render already-validated alternating turns (see ``split_system``)."""
    parts: list[str] = []
    for index, message in enumerate(turns):
        if message.role == "user":
            content = fold_system(system, message.content) if index == 0 else message.content
            parts.append(user_turn(content))
        else:
            parts.append(assistant_turn(message.content))
    return "".join(parts)


def render_messages(messages: Sequence[Message]) -> str:
    """The TGI ``inputs`` string for a chat, without a leading ``<s>``.

    ``[INST] u1 [/INST] a1</s>[INST] u2 [/INST]``; a system prompt becomes
    ``[INST] {system}\\n\\n{u1} [/INST]``.
    """
    system, turns = split_system(messages)
    return render_turns(system, turns)


def render_prompt(text: str, system: str | None = None) -> str:
    """The TGI ``inputs`` string for a single user prompt."""
    return user_turn(fold_system(system, text))
