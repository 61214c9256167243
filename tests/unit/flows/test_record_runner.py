"""The record runner on a fake endpoint and the real tokenizer: one input line in, one result out (or "try later")."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from sagebatch.domain.budget import TokenBudget
from sagebatch.domain.generation import ErrorKind
from sagebatch.domain.parameters import Parameters
from sagebatch.domain.records import FitSettings, Strategy
from sagebatch.domain.results import ResultLine
from sagebatch.domain.tokens import get_tokenizer
from sagebatch.fakes import FakeEndpointCaller, InMemoryCallCacheStore
from sagebatch.usecases.record_runner import RecordRunner, RetryLater

MAX_LINE_BYTES = 2048
MAX_NEW_TOKENS = 16


@pytest.fixture
def endpoint() -> FakeEndpointCaller:
    return FakeEndpointCaller()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


def make_runner(endpoint: FakeEndpointCaller, pool: ThreadPoolExecutor, budget: TokenBudget | None = None) -> RecordRunner:
    return RecordRunner(endpoint, budget or TokenBudget(), get_tokenizer(), MAX_NEW_TOKENS, MAX_LINE_BYTES, pool)


@pytest.fixture
def runner(endpoint: FakeEndpointCaller, pool: ThreadPoolExecutor) -> RecordRunner:
    return make_runner(endpoint, pool)


def run(runner: RecordRunner, raw: bytes | dict[str, Any], line: int = 1, **kwargs: Any) -> ResultLine:
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode("utf-8")
    return runner.run(line, data, kwargs.pop("parameters", Parameters()), kwargs.pop("fit", None), **kwargs)


def error_type(result: ResultLine) -> str | None:
    return result.error.type if result.error else None


# -- success ------------------------------------------------------------------------------------
def test_a_prompt_is_answered_with_its_usage(runner: RecordRunner, endpoint: FakeEndpointCaller) -> None:
    # Given a prompt record; When it runs
    result = run(runner, {"prompt": "What is the capital of France?"}, line=7)
    # Then it succeeds with the endpoint's answer, under its line number, counting the exact tokens sent
    (call,) = endpoint.calls
    assert (result.status, result.id, result.line) == ("succeeded", 7, 7)
    assert result.output == FakeEndpointCaller.default_answer(call.payload).text
    assert result.usage.input_tokens == get_tokenizer().count(call.payload["inputs"]) == call.cost_tokens
    assert result.usage.output_tokens == 3 and result.calls == 1 and result.finish_reason == "eos_token"
    assert "[INST]" in call.payload["inputs"] and "What is the capital of France?" in call.payload["inputs"]
    assert call.payload["parameters"]["max_new_tokens"] == MAX_NEW_TOKENS


def test_a_record_takes_its_own_id_and_parameters_over_the_jobs(runner: RecordRunner, endpoint: FakeEndpointCaller) -> None:
    # Given a record with an id and a parameter, in a job with parameters of its own
    record = {"id": "q-1", "prompt": "hi", "parameters": {"max_new_tokens": 8}}
    # When it runs
    result = run(runner, record, parameters=Parameters(max_new_tokens=64, top_k=5))
    # Then it answers under its id, with its own value over the job's and the job's for the rest
    assert (result.id, result.status, result.id_given) == ("q-1", "succeeded", True)
    assert {"max_new_tokens": 8, "top_k": 5}.items() <= endpoint.calls[0].payload["parameters"].items()


def test_a_fixable_parameter_is_fixed_and_noted(runner: RecordRunner, endpoint: FakeEndpointCaller) -> None:
    # Given temperature 0 (TGI rejects it); When the record runs
    result = run(runner, {"prompt": "hi", "parameters": {"temperature": 0}})
    # Then it is sent as greedy decoding, with a note saying so
    assert result.status == "succeeded" and result.notes and "greedy" in result.notes[0]
    assert endpoint.calls[0].payload["parameters"]["do_sample"] is False
    assert "temperature" not in endpoint.calls[0].payload["parameters"]


# -- each error type ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b'{"prompt": "unterminated', "invalid_json"),
        (b"\xff\xfe not utf-8", "invalid_utf8"),
        (b"   ", "empty_line"),
        (b"", "empty_line"),
        (json.dumps({"prompt": "x" * MAX_LINE_BYTES}).encode(), "line_too_large"),
        (b'{"text": "no content field"}', "invalid_record"),
        (b'["a", "list"]', "invalid_record"),
        (b'{"prompt": "x", "surprise": 1}', "invalid_record"),
        (b'{"messages": [{"role": "assistant", "content": "a chat must end with the user"}]}', "invalid_record"),
        (b'{"prompt": "x", "parameters": {"temperature": -1}}', "invalid_parameters"),
        (b'{"prompt": "x", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}', "invalid_parameters"),
    ],
    ids=[
        "json",
        "utf8",
        "blank",
        "empty",
        "too-large",
        "no-content",
        "not-object",
        "unknown-field",
        "bad-chat",
        "temperature",
        "stop-sequences",
    ],
)
def test_a_line_that_cannot_be_a_request_fails_with_its_type(
    runner: RecordRunner, endpoint: FakeEndpointCaller, raw: bytes, kind: str
) -> None:
    # Given a line that cannot become a request; When it runs
    result = run(runner, raw, line=3)
    # Then it fails with that error type and a message, under its line number, without a call
    assert (result.status, error_type(result), result.line, result.id) == ("failed", kind, 3, 3)
    assert result.error is not None and result.error.message
    assert endpoint.calls == []


def test_a_record_too_long_for_the_context_fails_when_its_strategy_is_reject(
    endpoint: FakeEndpointCaller, pool: ThreadPoolExecutor
) -> None:
    # Given a small context and raw inputs (whose default strategy is reject) far longer than it
    runner = make_runner(endpoint, pool, TokenBudget(max_input_length=64, max_total_tokens=128))
    # When it runs
    result = run(runner, {"id": "long", "inputs": "word " * 200})
    # Then it fails as context_length_exceeded, under its id, without a call
    assert (result.status, error_type(result), result.id) == ("failed", "context_length_exceeded", "long")
    assert endpoint.calls == []


def test_an_endpoint_validation_error_fails_the_line(runner: RecordRunner, endpoint: FakeEndpointCaller) -> None:
    # Given an endpoint that rejects the request (TGI's 422); When the record runs
    endpoint.fail(ErrorKind.VALIDATION, message="Input validation error: `inputs` tokens + `max_new_tokens` must be <= 8192")
    result = run(runner, {"id": 9, "prompt": "hi"})
    # Then it fails with the endpoint's message, having cost one call
    assert (result.status, error_type(result), result.id, result.calls) == ("failed", "endpoint_validation", 9, 1)
    assert result.error is not None and "Input validation error" in result.error.message


@pytest.mark.parametrize("value", [{"a": 1}, [1], 1.5, True], ids=["object", "array", "fraction", "boolean"])
def test_an_id_that_is_not_a_string_or_an_integer_fails_the_record(runner: RecordRunner, value: object) -> None:
    # Given a record whose id is not a string or an integer; When it runs
    result = run(runner, {"id": value, "prompt": "hi"}, line=4)
    # Then it fails as invalid_record under its line number (it has no usable id)
    assert (result.status, error_type(result), result.id) == ("failed", "invalid_record", 4)


# -- retries and stops ------------------------------------------------------------------------------
def test_a_retryable_endpoint_failure_asks_to_try_later(runner: RecordRunner, endpoint: FakeEndpointCaller) -> None:
    # Given an endpoint that is overloaded; When a record with an id runs
    endpoint.fail(ErrorKind.OVERLOADED)
    with pytest.raises(RetryLater) as raised:
        run(runner, {"id": "r-1", "prompt": "hi"})
    # Then it asks to be tried later, carrying the kind and the record's id for a final failure
    assert raised.value.error.kind is ErrorKind.OVERLOADED and raised.value.record_id == "r-1"


def test_a_record_not_run_keeps_the_id_it_would_have_had(runner: RecordRunner, endpoint: FakeEndpointCaller) -> None:
    # Given a cancelled job's records: one naming its id, one not JSON; When they are answered without running
    named = runner.not_run(1, b'{"id": "keep-me", "prompt": "x"}', "cancelled")
    broken = runner.not_run(2, b"{not json", "expired", default_id=40)
    # Then each has the id `run` would have given it, and no call was made
    assert (named.id, named.status, named.id_given) == ("keep-me", "cancelled", True)
    assert (broken.id, broken.status, broken.id_given) == (40, "expired", False)
    assert endpoint.calls == []


def test_a_split_record_redelivered_reuses_its_stored_chunk_answers(
    endpoint: FakeEndpointCaller, pool: ThreadPoolExecutor
) -> None:
    # Given a small context, a prompt several chunks long to split, and chunk answers kept per record
    runner = make_runner(endpoint, pool, TokenBudget(max_input_length=120, max_total_tokens=160))
    record = {"prompt": " ".join(f"Sentence number {n} is here." for n in range(60)), "fit": {"strategy": "split"}}
    cache = InMemoryCallCacheStore().call_cache("j", 1)
    # When the second call fails once (retryable), and the record is delivered again
    endpoint.fail(ErrorKind.SERVER_ERROR, calls=[2], times=1)
    with pytest.raises(RetryLater):
        run(runner, record, cache=cache)
    before = len(endpoint.calls)
    result = run(runner, record, cache=cache)
    # Then it succeeds in several chunks, and the answers the first delivery got are reused, not sent again
    assert result.status == "succeeded" and result.strategy == Strategy.SPLIT.value and result.chunks > 2
    assert result.reused_calls >= 1
    assert len(endpoint.calls) - before == result.chunks - result.reused_calls == result.calls


def test_the_jobs_fit_settings_apply_when_the_record_has_none(endpoint: FakeEndpointCaller, pool: ThreadPoolExecutor) -> None:
    # Given a small context and a long prompt, in a job whose fit strategy is reject
    runner = make_runner(endpoint, pool, TokenBudget(max_input_length=64, max_total_tokens=128))
    # When the record runs
    result = run(runner, {"prompt": "word " * 200}, fit=FitSettings(strategy=Strategy.REJECT))
    # Then the job's strategy applies (not the prompt's default, truncate)
    assert error_type(result) == "context_length_exceeded" and endpoint.calls == []
