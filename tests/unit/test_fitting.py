"""Strategies for records that do not fit (sagebatch.domain.fitting), with a fake endpoint."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence

import pytest

from sagebatch.domain.budget import BudgetExceeded, TokenBudget
from sagebatch.domain.fitting import Call, UnsupportedStrategy, answer, default_strategy
from sagebatch.domain.generation import Generation
from sagebatch.domain.prompt import Message, PromptFormatError, render_messages
from sagebatch.domain.records import ChatRecord, DocumentRecord, FitSettings, PromptRecord, RawRecord, Strategy
from sagebatch.domain.tokens import get_tokenizer

TOK = get_tokenizer()
BIG = TokenBudget()
SMALL = TokenBudget(max_input_length=511, max_total_tokens=512)


class FakeEndpoint:
    """Records every batch of calls; answers with ``reply(call, index)``."""

    def __init__(self, reply: Callable[[Call, int], str] | None = None) -> None:
        self.batches: list[list[Call]] = []
        self.reply = reply or (lambda call, index: f"answer {index}")

    def __call__(self, calls: Sequence[Call]) -> list[Generation]:
        self.batches.append(list(calls))
        results = []
        for call in calls:
            text = self.reply(call, len(self.calls) - len(calls) + len(results))
            results.append(Generation(text, TOK.count(text) - 1, "eos_token"))
        return results

    @property
    def calls(self) -> list[Call]:
        return [c for batch in self.batches for c in batch]


def within_tgi_limits(call: Call, budget: TokenBudget) -> bool:
    count = TOK.count(call.inputs)  # recounted independently of the code under test
    return (
        count == call.input_tokens and count <= budget.max_input_length and count + call.max_new_tokens <= budget.max_total_tokens
    )


def numbered_document(sentences: int, per_paragraph: int = 5) -> str:
    """Sentences "S00001 lorem ... ." grouped into paragraphs, so order and overlap are visible."""
    filler = "the quick brown fox jumps over the lazy dog while it rains"
    paragraphs = []
    for start in range(0, sentences, per_paragraph):
        stop = min(sentences, start + per_paragraph)
        paragraphs.append(" ".join(f"S{i:05d} {filler}." for i in range(start, stop)))
    return "\n\n".join(paragraphs)


def chunk_of(call: Call, instruction: str) -> str:
    """The document part of a chunk call rendered as '[INST] {instruction}\\n\\n{chunk} [/INST]'."""
    prefix, suffix = f"[INST] {instruction}\n\n", " [/INST]"
    assert call.inputs.startswith(prefix) and call.inputs.endswith(suffix)
    return call.inputs[len(prefix) : -len(suffix)]


def ids_in(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"S(\d{5})", text)]


# -- fits as is ---------------------------------------------------------------


def test_a_fitting_prompt_is_one_call_without_strategy() -> None:
    # Given a short prompt
    endpoint = FakeEndpoint()
    # When answered
    outcome = answer(PromptRecord(prompt="What is the capital of France?"), 64, generate=endpoint)
    # Then one call carries the rendered prompt unchanged
    (call,) = endpoint.calls
    assert call == Call("[INST] What is the capital of France? [/INST]", 15, 64)
    assert outcome.strategy is None and outcome.calls == 1 and outcome.chunks == 1
    assert (outcome.output, outcome.input_tokens, outcome.max_new_tokens_lowered) == ("answer 0", 15, False)


def test_max_new_tokens_is_lowered_when_the_room_is_above_the_floor() -> None:
    # Given a prompt of about 450 tokens on a 512 budget asking for 200 new tokens
    text = "word " * 440
    endpoint = FakeEndpoint()
    # When answered
    outcome = answer(PromptRecord(prompt=text), 200, FitSettings(), SMALL, TOK, endpoint)
    # Then it is sent whole with max_new_tokens lowered to the remaining room, and flagged
    (call,) = endpoint.calls
    assert outcome.strategy is None and outcome.max_new_tokens_lowered
    assert call.max_new_tokens == 512 - call.input_tokens == outcome.max_new_tokens
    assert within_tgi_limits(call, SMALL)


def test_below_the_floor_the_strategy_shrinks_the_input_instead() -> None:
    # Given a prompt leaving fewer than min_new_tokens of room
    text = "word " * 500
    endpoint = FakeEndpoint()
    # When answered with the default (truncate) for prompts
    outcome = answer(PromptRecord(prompt=text), 200, FitSettings(min_new_tokens=16), SMALL, TOK, endpoint)
    # Then the input was truncated and the full 200 new tokens kept
    assert outcome.strategy is Strategy.TRUNCATE and outcome.truncated
    assert endpoint.calls[0].max_new_tokens == 200 and within_tgi_limits(endpoint.calls[0], SMALL)


# -- defaults, reject, unsupported ------------------------------------------------


@pytest.mark.parametrize(
    ("content", "strategy"),
    [
        (PromptRecord(prompt="x"), Strategy.TRUNCATE),
        (ChatRecord(messages=[Message(role="user", content="x")]), Strategy.WINDOW),
        (RawRecord(inputs="x"), Strategy.REJECT),
        (DocumentRecord(instruction="i", document="d"), Strategy.MAP_REDUCE),
    ],
)
def test_default_strategy_per_shape(content, strategy: Strategy) -> None:
    # Given each content shape
    # Then its default strategy is the documented one
    assert default_strategy(content) is strategy


def test_reject_reports_the_token_count_and_the_budget() -> None:
    # Given a 20,000-token prompt and strategy reject
    text = "alpha beta " * 10000
    count = TOK.count(f"[INST] {text} [/INST]")
    # When answered
    with pytest.raises(BudgetExceeded) as caught:
        answer(PromptRecord(prompt=text), 256, FitSettings(strategy=Strategy.REJECT), generate=FakeEndpoint())
    # Then the message gives the count, max_new_tokens and the limits
    message = str(caught.value)
    assert str(count) in message and "256" in message and "8191" in message and "8192" in message
    assert caught.value.input_tokens == count


def test_raw_inputs_are_rejected_by_default() -> None:
    # Given raw inputs far over budget
    # When answered with default options
    # Then BudgetExceeded is raised and nothing is sent
    endpoint = FakeEndpoint()
    with pytest.raises(BudgetExceeded):
        answer(RawRecord(inputs="[INST] " + "x " * 600 + "[/INST]"), 64, None, SMALL, TOK, endpoint)
    assert endpoint.calls == []


@pytest.mark.parametrize(
    ("content", "strategy"),
    [
        (ChatRecord(messages=[Message(role="user", content="x")]), Strategy.SPLIT),
        (RawRecord(inputs="x"), Strategy.MAP_REDUCE),
        (PromptRecord(prompt="x"), Strategy.WINDOW),
    ],
)
def test_strategy_that_does_not_apply_to_the_shape_is_refused(content, strategy: Strategy) -> None:
    # Given a strategy that makes no sense for the shape
    # When answered (even though it would fit)
    # Then UnsupportedStrategy is raised
    with pytest.raises(UnsupportedStrategy, match=strategy.value):
        answer(content, 10, FitSettings(strategy=strategy), generate=FakeEndpoint())


def test_empty_raw_inputs_are_a_format_error() -> None:
    # Given empty raw inputs (TGI: "`inputs` cannot be empty"), built past the record model's own check
    # Then fitting refuses them too: PromptFormatError is raised
    with pytest.raises(PromptFormatError):
        answer(RawRecord.model_construct(inputs=""), 10, generate=FakeEndpoint())


# -- truncate ------------------------------------------------------------------


@pytest.mark.parametrize("keep", ["head", "tail"])
def test_truncate_keeps_the_head_or_the_tail_of_a_prompt(keep: str) -> None:
    # Given a numbered prompt of ~3,000 tokens on a 512 budget
    text = numbered_document(150)
    endpoint = FakeEndpoint()
    # When truncated keeping the head or the tail
    outcome = answer(PromptRecord(prompt=text), 100, FitSettings(strategy=Strategy.TRUNCATE, keep=keep), SMALL, TOK, endpoint)
    # Then one call holds a prefix or a suffix of the text, close to the full room, flagged truncated
    (call,) = endpoint.calls
    kept = ids_in(call.inputs)
    assert within_tgi_limits(call, SMALL) and call.input_tokens > 512 - 100 - 20
    assert kept == (list(range(len(kept))) if keep == "head" else list(range(150 - len(kept), 150)))
    assert outcome.truncated and outcome.strategy is Strategy.TRUNCATE


def test_truncating_a_document_keeps_the_instruction_whole() -> None:
    # Given a long document with an instruction and a system prompt
    content = DocumentRecord(instruction="List every S-number.", document=numbered_document(200), system="Be exact.")
    endpoint = FakeEndpoint()
    # When truncated keeping the tail
    answer(content, 64, FitSettings(strategy=Strategy.TRUNCATE, keep="tail"), SMALL, TOK, endpoint)
    # Then the call starts with the system prompt and the whole instruction and ends with the last sentence
    (call,) = endpoint.calls
    assert call.inputs.startswith("[INST] Be exact.\n\nList every S-number.\n\n")
    assert ids_in(call.inputs)[-1] == 199 and within_tgi_limits(call, SMALL)


def test_raw_truncate_keeps_the_tail_like_tgi() -> None:
    # Given raw inputs ending with the question to answer
    inputs = "[INST] " + numbered_document(100) + " Which S-number comes last? [/INST]"
    endpoint = FakeEndpoint()
    # When truncated (keep is irrelevant for raw inputs)
    outcome = answer(RawRecord(inputs=inputs), 64, FitSettings(strategy=Strategy.TRUNCATE, keep="head"), SMALL, TOK, endpoint)
    # Then the tail survives, sent as is, within limits
    (call,) = endpoint.calls
    assert inputs.endswith(call.inputs) and call.inputs.endswith("Which S-number comes last? [/INST]")
    assert within_tgi_limits(call, SMALL) and outcome.truncated


# -- split ---------------------------------------------------------------------


def test_split_sends_all_chunks_in_one_batch_in_order_with_overlap() -> None:
    # Given a numbered document of ~4,500 tokens, a 512 budget and 40 tokens of overlap
    content = DocumentRecord(instruction="Summarize.", document=numbered_document(300))
    endpoint = FakeEndpoint()
    # When split
    outcome = answer(content, 100, FitSettings(strategy=Strategy.SPLIT, overlap_tokens=40), SMALL, TOK, endpoint)
    # Then all chunk calls went out together, each within limits
    assert len(endpoint.batches) == 1 and outcome.chunks == outcome.calls == len(endpoint.calls) > 5
    assert all(within_tgi_limits(c, SMALL) for c in endpoint.calls)
    # And chunks cover the document in order, each one starting inside the previous one
    chunks = [ids_in(chunk_of(c, "Summarize.")) for c in endpoint.calls]
    assert chunks[0][0] == 0 and chunks[-1][-1] == 299
    for previous, current in itertools.pairwise(chunks):
        assert current == sorted(current)
        assert current[0] <= previous[-1] < current[-1]  # overlap, then progress
    # And the output joins the chunk outputs in order
    assert outcome.chunk_outputs == [f"answer {i}" for i in range(outcome.chunks)]
    assert outcome.output == "\n\n".join(outcome.chunk_outputs)


def test_split_without_overlap_partitions_the_document_at_paragraphs() -> None:
    # Given paragraphs of ~75 tokens and no overlap
    document = numbered_document(300)
    endpoint = FakeEndpoint()
    # When split
    answer(
        DocumentRecord(instruction="Summarize.", document=document),
        100,
        FitSettings(strategy=Strategy.SPLIT, overlap_tokens=0),
        SMALL,
        TOK,
        endpoint,
    )
    # Then the chunks, rejoined, are the document, and every chunk holds whole paragraphs
    chunks = [chunk_of(c, "Summarize.") for c in endpoint.calls]
    assert "\n\n".join(chunks) == document
    assert all(ids_in(chunk)[0] % 5 == 0 and ids_in(chunk)[-1] % 5 == 4 for chunk in chunks[:-1])


def test_split_falls_back_to_sentences_then_tokens() -> None:
    # Given one paragraph with no paragraph breaks, then one "sentence" with no breaks at all
    sentences = numbered_document(100, per_paragraph=100)
    run_on = "x" + "y" * 20000
    endpoint = FakeEndpoint()
    # When split
    answer(PromptRecord(prompt=sentences), 64, FitSettings(strategy=Strategy.SPLIT, overlap_tokens=0), SMALL, TOK, endpoint)
    answer(PromptRecord(prompt=run_on), 64, FitSettings(strategy=Strategy.SPLIT, overlap_tokens=0), SMALL, TOK, endpoint)
    # Then sentence chunks end at a full stop, and the run-on text is cut by tokens and fully covered
    sentence_calls = [c for c in endpoint.calls if "S00" in c.inputs]
    assert all(c.inputs.endswith(". [/INST]") for c in sentence_calls)
    run_on_calls = [c for c in endpoint.calls if "S00" not in c.inputs]
    assert "".join(c.inputs[len("[INST] ") : -len(" [/INST]")] for c in run_on_calls) == run_on
    assert all(within_tgi_limits(c, SMALL) for c in endpoint.calls)


def test_chunk_tokens_caps_the_chunk_size() -> None:
    # Given chunk_tokens=100 on the big budget
    endpoint = FakeEndpoint()
    document = numbered_document(2000)  # ~30,000 tokens
    # When split
    answer(
        DocumentRecord(instruction="Summarize.", document=document),
        256,
        FitSettings(strategy=Strategy.SPLIT, chunk_tokens=100, overlap_tokens=0),
        BIG,
        TOK,
        endpoint,
    )
    # Then no chunk holds more than 100 tokens of document
    assert all(TOK.count(chunk_of(c, "Summarize.")) - 1 <= 100 for c in endpoint.calls)


# -- map_reduce ----------------------------------------------------------------


def test_map_reduce_answers_a_30000_token_document_within_budget() -> None:
    # Given a ~30,000-token document and a model that always writes as much as allowed
    document = numbered_document(2000)
    assert TOK.count(document) > 30000
    endpoint = FakeEndpoint(reply=lambda call, i: " ".join(["token"] * call.max_new_tokens))
    # When answered with the default strategy (map_reduce) and 512 new tokens
    outcome = answer(DocumentRecord(instruction="Summarize the events.", document=document), 512, generate=endpoint)
    # Then chunk calls were batched together, a final call combined them, and every call fits
    assert outcome.strategy is Strategy.MAP_REDUCE
    assert len(endpoint.batches[0]) == outcome.chunks > 1 and len(endpoint.batches[-1]) == 1
    assert all(within_tgi_limits(c, BIG) for c in endpoint.calls)
    final = endpoint.calls[-1]
    assert final.inputs.startswith("[INST] Summarize the events.\n\n") and "Partial answer 1:" in final.inputs
    assert outcome.output == " ".join(["token"] * final.max_new_tokens)
    assert outcome.max_new_tokens == 512 and not outcome.max_new_tokens_lowered
    assert outcome.input_tokens == sum(c.input_tokens for c in endpoint.calls)
    assert len(outcome.chunk_outputs or []) == outcome.chunks


def test_map_reduce_combines_recursively_when_partials_do_not_fit() -> None:
    # Given a small budget, a long document, and verbose partial answers
    endpoint = FakeEndpoint(reply=lambda call, i: " ".join(["word"] * call.max_new_tokens))
    # When answered with map_reduce
    outcome = answer(
        DocumentRecord(instruction="Summarize.", document=numbered_document(600)),
        200,
        FitSettings(strategy=Strategy.MAP_REDUCE),
        SMALL,
        TOK,
        endpoint,
    )
    # Then there were intermediate combining rounds, each batched and shrinking, and a single final call
    sizes = [len(b) for b in endpoint.batches]
    assert len(sizes) >= 3 and sizes[-1] == 1 and sizes == sorted(sizes, reverse=True)
    assert all(within_tgi_limits(c, SMALL) for c in endpoint.calls)
    assert outcome.calls == sum(sizes)


def test_instruction_too_long_for_any_chunk_is_budget_exceeded() -> None:
    # Given an instruction that alone fills the small budget
    content = DocumentRecord(instruction="do " * 600, document="text " * 600)
    # When answered with any chunking strategy
    # Then BudgetExceeded explains that the instruction fills the budget
    for strategy in (Strategy.SPLIT, Strategy.MAP_REDUCE, Strategy.TRUNCATE):
        with pytest.raises(BudgetExceeded, match="instruction"):
            answer(content, 64, FitSettings(strategy=strategy), SMALL, TOK, FakeEndpoint())


# -- window --------------------------------------------------------------------


def chat(turns: int, words: int) -> list[Message]:
    messages = [Message(role="system", content="You are helpful.")]
    for i in range(turns):
        messages.append(Message(role="user", content=f"U{i} " + "ask " * words))
        messages.append(Message(role="assistant", content=f"A{i} " + "reply " * words))
    messages.append(Message(role="user", content="LAST question?"))
    return messages


def test_window_drops_oldest_turns_and_keeps_system_and_last_user() -> None:
    # Given a 10-exchange chat of ~1,000 tokens on a 512 budget
    endpoint = FakeEndpoint()
    # When answered with the default (window)
    outcome = answer(ChatRecord(messages=chat(10, 40)), 100, None, SMALL, TOK, endpoint)
    # Then the system prompt and the last question are kept, the oldest exchanges dropped
    (call,) = endpoint.calls
    assert call.inputs.startswith("[INST] You are helpful.\n\nU") and call.inputs.endswith("LAST question? [/INST]")
    assert "U0 " not in call.inputs and "U9 " in call.inputs and "A9 " in call.inputs
    assert outcome.strategy is Strategy.WINDOW and outcome.dropped_messages > 0 and not outcome.truncated
    assert within_tgi_limits(call, SMALL)
    # And it kept as many recent exchanges as fit: one more would not
    kept_from = int(re.search(r"\n\nU(\d+) ", call.inputs).group(1))
    messages = chat(10, 40)
    one_more = [messages[0], *messages[1 + 2 * (kept_from - 1) :]]
    assert TOK.count(render_messages(one_more)) > SMALL.room_for_input(100)


def test_window_truncates_the_last_user_turn_when_it_alone_is_too_long() -> None:
    # Given a chat whose last user turn alone exceeds the budget
    messages = [*chat(2, 5)[:-1], Message(role="user", content="START " + "long " * 1000 + "END")]
    endpoint = FakeEndpoint()
    # When answered with window (keep head)
    outcome = answer(ChatRecord(messages=messages), 64, None, SMALL, TOK, endpoint)
    # Then only the system prompt and the head of the last turn are sent, flagged truncated
    (call,) = endpoint.calls
    assert call.inputs.startswith("[INST] You are helpful.\n\nSTART long") and "END" not in call.inputs
    assert outcome.truncated and outcome.dropped_messages == 4 and within_tgi_limits(call, SMALL)


def test_malformed_chat_raises_prompt_format_error() -> None:
    # Given a chat ending with an assistant turn
    messages = [Message(role="user", content="q"), Message(role="assistant", content="a")]
    # Then answering raises PromptFormatError before any call
    with pytest.raises(PromptFormatError):
        answer(ChatRecord(messages=messages), 10, generate=FakeEndpoint())


# -- contract with generate ----------------------------------------------------


def test_generate_returning_the_wrong_number_of_results_is_an_error() -> None:
    # Given a broken generate
    def broken(calls: Sequence[Call]) -> list[Generation]:
        return []

    # When answering
    # Then RuntimeError is raised
    with pytest.raises(RuntimeError, match="0 results for 1 calls"):
        answer(PromptRecord(prompt="hi"), 10, generate=broken)


def test_generate_errors_propagate() -> None:
    # Given a generate that fails (e.g. the endpoint call failed)
    def failing(calls: Sequence[Call]) -> list[Generation]:
        raise TimeoutError("endpoint timed out")

    # Then the error reaches the caller unchanged
    with pytest.raises(TimeoutError):
        answer(PromptRecord(prompt="hi"), 10, generate=failing)
