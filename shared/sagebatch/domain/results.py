"""A record's result: one line of results.jsonl for each input line."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field, TypeAdapter

from sagebatch.domain.formats import dumps_line


class Usage(BaseModel):
    """Tokens of the answers a result is built from. The `reused_*` part came from answers a previous delivery of
    this job already paid for (chunk answers kept across deliveries): they are counted once, here, not sent again."""

    input_tokens: int = 0
    output_tokens: int = 0
    reused_input_tokens: int = 0
    reused_output_tokens: int = 0


class RecordError(BaseModel):
    type: str
    message: str


# Why a job stopped early; also the status (and error type) of the records it never started.
StopReason = Literal["cancelled", "expired"]


class ResultLine(BaseModel):
    """One line of results.jsonl, for one input line."""

    id: str | int | None
    line: int
    status: Literal["succeeded", "failed", "cancelled", "expired"]
    output: str | None = None
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    error: RecordError | None = None
    strategy: str | None = None
    chunks: int = 1
    truncated: bool = False
    max_new_tokens: int | None = None
    max_new_tokens_lowered: bool = False
    chunk_outputs: list[str] | None = None
    calls: int = 0  # endpoint requests sent for this result, retries included
    reused_calls: int = 0  # answers taken from the chunk cache instead of being sent again
    latency_ms: float | None = None
    notes: list[str] | None = None
    parent_line: int | None = None  # retry jobs: this record's line in the parent job
    # Did the record name its id itself (else: its line, or a retry's inherited id)? Kept with the stored result
    # for the duplicate-id check at finalize; not written to results.jsonl.
    id_given: bool = False
    # The record's share of endpoint time and of its worker's time, summed over the calls this result paid for
    # (sagebatch.endpoint.share_clock; README "Cost"). Kept with the stored result, so that a shard counts it once
    # whichever delivery made it; the job's totals are in manifest.json, not on each line of results.jsonl.
    endpoint_seconds: float = 0.0
    worker_seconds: float = 0.0

    def public_json(self) -> dict[str, Any]:
        """The result as results.jsonl shows it."""
        return self.model_dump(mode="json", exclude=_PRIVATE)


# Stored with a result, never written to results.jsonl.
_PRIVATE = {"id_given", "endpoint_seconds", "worker_seconds"}


RECORD_ADAPTER = TypeAdapter(ResultLine)


def printable(text: str) -> str:
    """`text` with any unpaired surrogate escaped, so it always encodes to UTF-8 (error messages may quote input)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def failed(
    line: int,
    record_id: Any,
    kind: str,
    message: str,
    usage: Usage | None = None,
    calls: int = 0,
    endpoint_seconds: float = 0.0,
    worker_seconds: float = 0.0,
) -> ResultLine:
    return ResultLine(
        id=record_id,
        line=line,
        status="failed",
        error=RecordError(type=kind, message=printable(message)),
        usage=usage or Usage(),
        calls=calls,
        endpoint_seconds=endpoint_seconds,
        worker_seconds=worker_seconds,
    )


_STOP_MESSAGES = {
    "cancelled": "not run: the job was cancelled before this record started",
    "expired": "not run: the job's deadline passed before this record started",
}


def stopped(line: int, record_id: Any, reason: StopReason) -> ResultLine:
    """The result of a record its job never started (no endpoint call, no tokens)."""
    return ResultLine(id=record_id, line=line, status=reason, error=RecordError(type=reason, message=_STOP_MESSAGES[reason]))


class FirstLineTable(Protocol):
    """id digest -> the first line naming it (a dict, or the compact domain.id_table.FirstLines)."""

    def setdefault(self, key: int, default: int, /) -> int: ...


class DuplicateIds:
    """Ids need not be unique (every result line has its own `line`), but a user joining on ids should know: every
    record that names an id already named on an earlier line gets a note saying which line. Ids compare as JSON
    values (7 and "7" differ); a line without an id of its own never collides with one. Fed results in line order.

    Memory: one 8-byte digest and one line number per distinct id: about 100 bytes in the default dict (~100 MB for
    1M ids); the finalizer passes a `domain.id_table.FirstLines` (17-34 bytes an id, saved across invocations).
    """

    def __init__(self, first_lines: FirstLineTable | None = None) -> None:
        self._first_line: FirstLineTable = {} if first_lines is None else first_lines

    def flag(self, result: ResultLine) -> ResultLine:
        if not result.id_given:
            return result
        text = json.dumps(result.id, ensure_ascii=False).encode("utf-8", "surrogatepass")
        key = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")
        first = self._first_line.setdefault(key, result.line)
        if first == result.line:
            return result
        note = f"duplicate id: line {first} has the same id"
        return result.model_copy(update={"notes": [*(result.notes or []), note]})


class ResultUnstorable(Exception):
    """This result cannot be stored as it is (it does not serialise): the line's problem, not the store's."""


def encode_result(result: ResultLine) -> bytes:
    """A result's stored form: one JSON line (line separators and lone surrogates escaped, never NaN)."""
    try:
        return dumps_line(result.model_dump(mode="json")).encode("utf-8")
    except ValueError as error:  # pydantic's serialisation errors, NaN, UnicodeEncodeError are ValueErrors
        raise ResultUnstorable(f"{type(error).__name__}: {error}") from error


def decode_result(encoded: bytes) -> ResultLine:
    return ResultLine.model_validate_json(encoded)
