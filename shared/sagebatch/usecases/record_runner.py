"""RecordRunner: one input line in, one `ResultLine` out (or "try again later").

The invariant lives here: whatever bytes a line holds, `run` returns exactly one result for it. A known problem
becomes a failed result with its own `error.type`; anything else raised while reading, validating, fitting,
formatting or calling for the line becomes `internal_error` with the exception's class and message (its stack
trace goes to the log, without the message, which may quote the input). Only `RetryLater` (a retryable endpoint
failure that outlived the caller's retries) and `OutOfTime` (the invocation's `TimeBudget` allowed no more calls:
the record is continued by a later delivery, its chunk answers already paid for kept in the call cache) escape, so
the shard comes back.

Lines in a peer's format (OpenAI Batch, Bedrock batch: domain.formats) are converted to native records before
validation, in the file's format as intake decided it; a line in another format fails alone. The result keeps the
peer's id (custom_id, recordId) as its `id`, and the conversion's notes (peer fields ignored) in its `notes`.

Pure orchestration over injected collaborators: the tokenizer, the token budget and an `EndpointCaller`.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import ValidationError

from sagebatch.domain.budget import BudgetExceeded, TokenBudget
from sagebatch.domain.errors import describe
from sagebatch.domain.fitting import Call, UnsupportedStrategy, answer
from sagebatch.domain.formats import Format, FormatDetector, FormatError, families, to_native
from sagebatch.domain.generation import EndpointError, Generation
from sagebatch.domain.parameters import InvalidParameters, Parameters, describe_parameter_errors, normalize
from sagebatch.domain.prompt import PromptFormatError
from sagebatch.domain.records import FitSettings, parse_record
from sagebatch.domain.results import ResultLine, StopReason, Usage, failed, stopped
from sagebatch.domain.time_budget import OutOfTime, TimeBudget
from sagebatch.observability import logger
from sagebatch.ports import CallCache, EndpointCaller

# The field that names a record's id, in each format.
_ID_FIELDS: dict[Format, str] = {"native": "id", "openai": "custom_id", "bedrock": "recordId"}

# An escaped surrogate in the JSON text: the only way a valid UTF-8 line can carry one (checked only then).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class RetryLater(Exception):
    """A retryable endpoint failure outlived the caller's retries; the message should come back."""

    def __init__(self, error: EndpointError, record_id: Any):
        super().__init__(error.message)
        self.error = error
        self.record_id = record_id  # so that a final failure is reported under the record's own id


class OutsideTheLine(Exception):
    """A port (the endpoint client, the chunk cache) failed for a reason that is not the line's: AWS throttling or
    a 5xx, the limiter's wait running out. `run` re-raises the original so the shard comes back."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


class LineFailed(Exception):
    """A known problem with one line: it becomes that line's failed result."""

    def __init__(self, kind: str, message: str, calls: int = 0):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.calls = calls


def valid_id(value: Any) -> bool:
    """Record ids are JSON strings or integers (no floats, no booleans, no objects)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def id_field(data: Any) -> str:
    """The field naming this line's id: its own format's (a line of no single format is read as native)."""
    found = families(data)
    return _ID_FIELDS[found[0]] if len(found) == 1 else "id"


def line_format(data: Any, line: int, decided: Format, decided_at: int | None = None) -> Format:
    """The format this line is read in: the file's, which the line must be in (else LineFailed, this line only).

    In a native file, a line of no known format is left to the native validation, whose messages say what a native
    record lacks; a line carrying a peer's fields there fails with the formats module's message.
    """
    try:
        return FormatDetector(decided, decided_at).feed(data, line)
    except FormatError as error:
        if decided == "native" and not families(data):
            return "native"
        raise LineFailed("invalid_record", str(error)) from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def parse_line(raw: bytes, max_line_bytes: int) -> Any:
    """The JSON value of one input line, or LineFailed saying why it has none."""
    if len(raw) > max_line_bytes:
        raise LineFailed("line_too_large", f"line is {len(raw)} bytes; the limit is {max_line_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise LineFailed("invalid_utf8", f"line is not UTF-8 text (byte {error.start})") from None
    if not text.strip():
        raise LineFailed("empty_line", "blank line: expected a JSON object")
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise LineFailed("invalid_json", "line is not valid JSON: nested too deeply") from None
    except ValueError as error:
        message = str(error) if str(error).startswith("duplicate key") else f"line is not valid JSON: {error}"
        raise LineFailed("invalid_json", message) from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as error:
            bad = error.object[error.start : error.end].encode("utf-8", "backslashreplace").decode()
            raise LineFailed("invalid_json", f"line holds an unpaired surrogate escape ({bad}): not Unicode text") from None
    return data


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

    def record_id(self, line: int, raw: bytes, default_id: Any = None) -> tuple[Any, bool]:
        """The id `run` gives this line's result, and whether the record named it itself."""
        fallback = line if default_id is None else default_id
        try:
            data = parse_line(raw, self._max_line_bytes)
        except Exception:  # no JSON, no id of its own
            return fallback, False
        named = data.get(id_field(data)) if isinstance(data, dict) else None
        return (named, True) if named is not None and valid_id(named) else (fallback, False)

    def not_run(self, line: int, raw: bytes, reason: StopReason, default_id: Any = None) -> ResultLine:
        """The result of a line its job stopped before it started, with the id `run` would have given it."""
        record_id, given = self.record_id(line, raw, default_id)
        return stopped(line, record_id, reason).model_copy(update={"id_given": given})

    def run(
        self,
        line: int,
        raw: bytes,
        job_parameters: Parameters,
        job_fit: FitSettings | None,
        default_id: Any = None,
        cache: CallCache | None = None,
        input_format: Format = "native",
        input_format_line: int | None = None,
        budget: TimeBudget | None = None,
    ) -> ResultLine:
        """Answer one line: always one result. Raises RetryLater only for retryable endpoint failures, and
        OutOfTime when `budget` (the invocation's time) allows none of the calls the line still needs.

        `default_id` is the result's id when the record names none (a retry job passes the parent's); else the line.
        `input_format` is the file's format (and `input_format_line` the line that decided it), as intake decided.
        """
        record_id: Any = line if default_id is None else default_id
        given = False
        sent = _Sent()
        notes: tuple[str, ...] = ()
        try:
            data = parse_line(raw, self._max_line_bytes)
            key = id_field(data)
            if isinstance(data, dict) and data.get(key) is not None:
                if valid_id(data[key]):
                    record_id, given = data[key], True
                elif key == "id":  # a peer's id field is checked, with the peer's words, by the conversion
                    raise LineFailed("invalid_record", f"id must be a string or an integer, not {_json_kind(data['id'])}")
            fmt = line_format(data, line, input_format, input_format_line)
            if fmt != "native":
                try:
                    converted = to_native(data, fmt)
                except FormatError as error:
                    raise LineFailed("invalid_record", str(error)) from None
                data, notes = converted.record, converted.notes
            result = self._answer(line, data, record_id, job_parameters, job_fit, cache, sent, budget)
            return _noted(result, notes).model_copy(update={"id_given": given})
        except (RetryLater, OutOfTime):
            raise
        except OutsideTheLine as wrapped:
            raise wrapped.error from None
        except LineFailed as problem:
            result = failed(
                line,
                record_id,
                problem.kind,
                problem.message,
                calls=sent.requests,
                endpoint_seconds=sent.shares()[0],
                worker_seconds=sent.shares()[1],
            )
        except Exception as error:  # our own bug: the line fails, the shard goes on
            logger.error(
                "internal error on a line",
                extra={"line": line, "error_class": type(error).__name__, "trace": traceback.format_tb(error.__traceback__)},
            )
            result = failed(
                line,
                record_id,
                "internal_error",
                f"{type(error).__name__}: {error}",
                calls=sent.requests,
                endpoint_seconds=sent.shares()[0],
                worker_seconds=sent.shares()[1],
            )
        return _noted(result, notes).model_copy(update={"id_given": given})

    def _answer(
        self,
        line: int,
        data: Any,
        record_id: Any,
        job_parameters: Parameters,
        job_fit: FitSettings | None,
        cache: CallCache | None,
        sent: _Sent,
        budget: TimeBudget | None,
    ) -> ResultLine:
        try:
            record = parse_record(data)
        except ValidationError as error:
            if all(item["loc"] and item["loc"][0] == "parameters" for item in error.errors()):
                raise LineFailed("invalid_parameters", describe_parameter_errors(error, ("parameters",))) from None
            raise LineFailed("invalid_record", describe(error)) from None
        except ValueError as error:
            raise LineFailed("invalid_record", str(error)) from None
        try:
            params, notes = normalize(record.parameters.over(job_parameters), self._budget.max_input_length)
        except InvalidParameters as error:
            raise LineFailed("invalid_parameters", str(error)) from None
        fit = record.fit or job_fit or FitSettings()
        max_new_tokens = params.max_new_tokens or self._default_max_new_tokens
        body = params.model_dump(exclude_none=True, exclude={"max_new_tokens"})
        started = time.monotonic()
        try:
            outcome = answer(
                record,
                max_new_tokens,
                fit,
                self._budget,
                self._tokenizer,
                lambda calls: self._generate(calls, body, cache, sent, budget),
            )
        except BudgetExceeded as error:
            raise LineFailed("context_length_exceeded", str(error), sent.requests) from None
        except UnsupportedStrategy as error:
            raise LineFailed("unsupported_strategy", str(error), sent.requests) from None
        except PromptFormatError as error:
            raise LineFailed("invalid_record", str(error), sent.requests) from None
        except EndpointError as error:
            if error.retryable:
                raise RetryLater(error, record_id) from error
            raise LineFailed(f"endpoint_{error.kind.value}", error.message, sent.requests) from None
        return ResultLine(
            id=record_id,
            line=line,
            status="succeeded",
            output=outcome.output,
            finish_reason=outcome.finish_reason,
            usage=Usage(
                input_tokens=outcome.input_tokens,
                output_tokens=outcome.output_tokens,
                reused_input_tokens=sent.reused_input_tokens,
                reused_output_tokens=sent.reused_output_tokens,
            ),
            strategy=outcome.strategy.value if outcome.strategy else None,
            chunks=outcome.chunks,
            truncated=outcome.truncated,
            max_new_tokens=outcome.max_new_tokens,
            max_new_tokens_lowered=outcome.max_new_tokens_lowered,
            chunk_outputs=outcome.chunk_outputs,
            latency_ms=round((time.monotonic() - started) * 1000, 1),
            notes=notes or None,
            calls=sent.requests,
            reused_calls=sent.reused,
            endpoint_seconds=sent.shares()[0],
            worker_seconds=sent.shares()[1],
        )

    def _generate(
        self, calls: Sequence[Call], parameters: dict[str, Any], cache: CallCache | None, sent: _Sent, budget: TimeBudget | None
    ) -> list[Generation]:
        """Run one stage's calls concurrently; every call goes through the same caller and limiter.

        A stage of several calls (the chunks of `split` / `map_reduce`) keeps each answer in `cache` as it arrives,
        so a redelivery after one chunk failed (or found no time left) pays only for what is missing. A single call
        needs no cache: its answer is the record's result, stored as soon as it exists. Each call starts only while
        `budget` allows one (the caller checks it before every attempt).
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
            known: Generation | None = _port(cache.get, key) if cache is not None and use_cache else None
            if known is not None:
                sent.reuse(call.input_tokens, known.generated_tokens)
                return known
            try:
                result = self._caller.invoke(payload, cost_tokens=call.input_tokens, budget=budget)
            except EndpointError as error:  # classified: the caller decides (retry later, or the line fails)
                sent.add(error.attempts, error.endpoint_seconds, error.worker_seconds)
                raise
            except OutOfTime:  # not the line's fault, nor a port's: the record waits for a later delivery
                raise
            except Exception as error:
                raise OutsideTheLine(error) from error
            sent.add(result.attempts, result.endpoint_seconds, result.worker_seconds)
            if use_cache:
                _port(cache.put, key, result)  # type: ignore[union-attr]
            return result

        if len(calls) == 1:
            return [one(calls[0])]
        return list(self._pool.map(one, calls))


def _noted(result: ResultLine, notes: tuple[str, ...]) -> ResultLine:
    """`result` with the conversion's notes appended to its own."""
    if not notes:
        return result
    return result.model_copy(update={"notes": [*(result.notes or []), *notes]})


def _call_key(payload: dict[str, Any]) -> str:
    """Same request, same key: the chunk index in content form (a re-split of the same record gives the same calls)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:32]


def _port(method: Any, *args: Any) -> Any:
    """Call a port of the outside world; its failures are not the line's."""
    try:
        return method(*args)
    except Exception as error:
        raise OutsideTheLine(error) from error


class _Sent:
    """What answering one record cost: requests sent (retries included) and answers reused from the chunk cache."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # chunk calls run on a thread pool
        self.requests = 0
        self.reused = 0
        self.reused_input_tokens = 0
        self.reused_output_tokens = 0
        self.endpoint_seconds = 0.0  # the requests' share of endpoint time (and of the worker's): README "Cost"
        self.worker_seconds = 0.0

    def add(self, requests: int, endpoint_seconds: float = 0.0, worker_seconds: float = 0.0) -> None:
        with self._lock:
            self.requests += requests
            self.endpoint_seconds += endpoint_seconds
            self.worker_seconds += worker_seconds

    def shares(self) -> tuple[float, float]:
        """(endpoint seconds, worker seconds) of the requests sent so far."""
        with self._lock:
            return round(self.endpoint_seconds, 6), round(self.worker_seconds, 6)

    def reuse(self, input_tokens: int, output_tokens: int) -> None:
        with self._lock:
            self.reused += 1
            self.reused_input_tokens += input_tokens
            self.reused_output_tokens += output_tokens


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return f"a number with a fraction ({value!r})" if value == value else "NaN"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
