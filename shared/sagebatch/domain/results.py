"""A record's result: one line of results.jsonl for each input line."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0


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
    calls: int = 0
    latency_ms: float | None = None
    notes: list[str] | None = None
    parent_line: int | None = None  # retry jobs: this record's line in the parent job


RECORD_ADAPTER = TypeAdapter(ResultLine)


def failed(line: int, record_id: Any, kind: str, message: str, usage: Usage | None = None) -> ResultLine:
    return ResultLine(id=record_id, line=line, status="failed", error=RecordError(type=kind, message=message), usage=usage or Usage())


_STOP_MESSAGES = {
    "cancelled": "not run: the job was cancelled before this record started",
    "expired": "not run: the job's deadline passed before this record started",
}


def stopped(line: int, record_id: Any, reason: StopReason) -> ResultLine:
    """The result of a record its job never started (no endpoint call, no tokens)."""
    return ResultLine(id=record_id, line=line, status=reason, error=RecordError(type=reason, message=_STOP_MESSAGES[reason]))
