"""RecordRunner: one input line in, one `ResultLine` out (or "try again later").

Pure orchestration over injected collaborators: the tokenizer, the token budget and an
`EndpointCaller`. Parsing, parameter fixing, fitting to the context and error typing live here;
AWS does not.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
import hashlib
from typing import Any, Protocol, Sequence

from pydantic import ValidationError

from sagebatch.domain.budget import BudgetExceeded, TokenBudget
from sagebatch.domain.errors import describe
from sagebatch.domain.fitting import Call, answer
from sagebatch.domain.generation import EndpointError, Generation
from sagebatch.domain.parameters import InvalidParameters, Parameters, normalize
from sagebatch.domain.prompt import PromptFormatError
from sagebatch.domain.records import FitSettings, parse_record
from sagebatch.domain.results import ResultLine, StopReason, Usage, failed, stopped
from sagebatch.ports import CallCache, EndpointCaller


class RetryLater(Exception):
    """A retryable endpoint failure outlived the caller's retries; the message should come back."""

    def __init__(self, error: EndpointError, record_id: Any):
        super().__init__(error.message)
        self.error = error
        self.record_id = record_id  # so that a final failure is reported under the record's own id


def _named_id(data: Any, default: Any) -> Any:
    """A parsed line's own `id` if it names one, else `default` (the line number, or a retry's inherited id)."""
    if isinstance(data, dict) and data.get("id") is not None:
        return data["id"]
    return default


class RecordRunner:
    def __init__(
        self,
        caller: EndpointCaller,
        budget: TokenBudget,
        tokenizer: Any,
        default_max_new_tokens: int,
        max_line_bytes: int,
        call_pool: ThreadPoolExecutor,
    ):
        self._caller = caller
        self._budget = budget
        self._tokenizer = tokenizer
        self._default_max_new_tokens = default_max_new_tokens
        self._max_line_bytes = max_line_bytes
        self._pool = call_pool

    def not_run(self, line: int, raw: bytes, reason: StopReason, default_id: Any = None) -> ResultLine:
        """The result of a line its job stopped before it started, with the id `run` would have given it."""
        record_id = line if default_id is None else default_id
        if len(raw) <= self._max_line_bytes:
            try:
                record_id = _named_id(json.loads(raw), record_id)
            except ValueError:  # not JSON (or not UTF-8): the line has no id of its own
                pass
        return stopped(line, record_id, reason)

    def run(
        self,
        line: int,
        raw: bytes,
        job_parameters: Parameters,
        job_fit: FitSettings | None,
        default_id: Any = None,
        cache: CallCache | None = None,
    ) -> ResultLine:
        """Answer one line. Raises RetryLater only for retryable endpoint failures.

        `default_id` is the result's id when the record names none (a retry job passes the parent's); else the line.
        """
        record_id: Any = line if default_id is None else default_id
        if len(raw) > self._max_line_bytes:
            return failed(line, record_id, "line_too_large", f"line is {len(raw)} bytes; the limit is {self._max_line_bytes}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            return failed(line, record_id, "invalid_utf8", f"line is not UTF-8 text (byte {error.start})")
        if not text.strip():
            return failed(line, record_id, "empty_line", "blank line: expected a JSON object")
        try:
            data = json.loads(text)
        except ValueError as error:
            return failed(line, record_id, "invalid_json", f"line is not valid JSON: {error}")
        record_id = _named_id(data, record_id)
        try:
            record = parse_record(data)
        except (ValidationError, ValueError) as error:
            return failed(line, record_id, "invalid_record", describe(error))
        if record.id is not None:
            record_id = record.id
        try:
            params, notes = normalize(record.parameters.over(job_parameters))
        except InvalidParameters as error:
            return failed(line, record_id, "invalid_parameters", str(error))
        fit = record.fit or job_fit or FitSettings()
        max_new_tokens = params.max_new_tokens or self._default_max_new_tokens
        sent = params.model_dump(exclude_none=True, exclude={"max_new_tokens"})
        started = time.monotonic()
        try:
            outcome = answer(
                record, max_new_tokens, fit, self._budget, self._tokenizer,
                lambda calls: self._generate(calls, sent, cache),
            )
        except BudgetExceeded as error:
            return failed(line, record_id, "context_length_exceeded", str(error))
        except PromptFormatError as error:
            return failed(line, record_id, "invalid_record", str(error))
        except EndpointError as error:
            if error.retryable:
                raise RetryLater(error, record_id) from error
            return failed(line, record_id, f"endpoint_{error.kind.value}", error.message)
        return ResultLine(
            id=record_id,
            line=line,
            status="succeeded",
            output=outcome.output,
            finish_reason=outcome.finish_reason,
            usage=Usage(input_tokens=outcome.input_tokens, output_tokens=outcome.output_tokens),
            strategy=outcome.strategy.value if outcome.strategy else None,
            chunks=outcome.chunks,
            truncated=outcome.truncated,
            max_new_tokens=outcome.max_new_tokens,
            max_new_tokens_lowered=outcome.max_new_tokens_lowered,
            chunk_outputs=outcome.chunk_outputs,
            latency_ms=round((time.monotonic() - started) * 1000, 1),
            notes=notes or None,
            calls=outcome.calls,
        )

    def _generate(self, calls: Sequence[Call], parameters: dict[str, Any], cache: CallCache | None) -> list[Generation]:
        """Run one stage's calls concurrently; every call goes through the same caller and limiter.

        A stage of several calls (the chunks of `split` / `map_reduce`) keeps each answer in `cache` as it arrives,
        so a redelivery after one chunk failed pays only for what is missing. A single call needs no cache: its
        answer is the record's result, stored as soon as it exists.
        """
        use_cache = cache is not None and len(calls) > 1

        def one(call: Call) -> Generation:
            payload = {
                "inputs": call.inputs,
                "parameters": {
                    **parameters,
                    "max_new_tokens": call.max_new_tokens,
                    "return_full_text": False,
                    "details": True,
                },
            }
            key = _call_key(payload) if use_cache else ""
            if use_cache and (known := cache.get(key)) is not None:  # type: ignore[union-attr]
                return known
            generation = self._caller.invoke(payload, cost_tokens=call.input_tokens)
            result = generation
            if use_cache:
                cache.put(key, result)  # type: ignore[union-attr]
            return result

        if len(calls) == 1:
            return [one(calls[0])]
        return list(self._pool.map(one, calls))


def _call_key(payload: dict[str, Any]) -> str:
    """Same request, same key: the chunk index in content form (a re-split of the same record gives the same calls)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:32]
