"""Pydantic models for everything that crosses a boundary: input lines, job specs, messages, results."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from sagebatch.prompt import Message

# Generation parameters TGI 1.1 understands (protocol.md 3.1). Unknown names are refused
# here rather than silently ignored by TGI, so a typo like `max_tokens` fails the record.
TGI_PARAMETERS = {
    "max_new_tokens", "temperature", "top_p", "typical_p", "top_k", "repetition_penalty",
    "do_sample", "best_of", "stop", "truncate", "seed", "watermark", "top_n_tokens",
    "decoder_input_details",
}


class Parameters(BaseModel):
    """TGI generation parameters; `None` means "not set", so job defaults can be merged under record values."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    typical_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    do_sample: bool | None = None
    best_of: int | None = None
    stop: list[str] | None = None
    truncate: int | None = None
    seed: int | None = None
    watermark: bool | None = None
    top_n_tokens: int | None = None
    decoder_input_details: bool | None = None

    def over(self, defaults: "Parameters") -> "Parameters":
        """These parameters with unset ones taken from `defaults`."""
        merged = defaults.model_dump(exclude_none=True)
        merged.update(self.model_dump(exclude_none=True))
        return Parameters(**merged)


class FitSettings(BaseModel):
    """How to handle a record too long for the context (see docs/fitting.md)."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["truncate", "split", "map_reduce", "window", "reject"] | None = None
    keep: Literal["head", "tail"] = "head"
    chunk_tokens: int | None = Field(None, ge=32)
    overlap_tokens: int = Field(64, ge=0)


class _RecordBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | int | None = None
    parameters: Parameters = Field(default_factory=Parameters)
    fit: FitSettings | None = None


class PromptRecord(_RecordBase):
    prompt: str


class ChatRecord(_RecordBase):
    messages: list[Message] = Field(min_length=1)


class RawRecord(_RecordBase):
    """`inputs` is sent to TGI as is: the caller owns the template."""

    inputs: str = Field(min_length=1)


class DocumentRecord(_RecordBase):
    """An instruction to repeat and a document to chunk when it does not fit."""

    instruction: str
    document: str
    system: str | None = None


InputRecord = Union[PromptRecord, ChatRecord, RawRecord, DocumentRecord]
_SHAPES: list[tuple[str, type[_RecordBase]]] = [
    ("prompt", PromptRecord),
    ("messages", ChatRecord),
    ("inputs", RawRecord),
    ("document", DocumentRecord),
]


def parse_record(data: Any) -> InputRecord:
    """Pick the record shape by its content field, then validate strictly (clear errors, no guessing)."""
    if not isinstance(data, dict):
        raise ValueError(f"a record must be a JSON object, got {type(data).__name__}")
    present = [name for name, _ in _SHAPES if name in data]
    if len(present) != 1:
        raise ValueError(
            "a record needs exactly one of 'prompt', 'messages', 'inputs' or 'document' (with 'instruction'); "
            f"found {present or 'none'}"
        )
    model = dict(_SHAPES)[present[0]]
    return model.model_validate(data)


JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ClientToken = Annotated[str, Field(min_length=1, max_length=128)]
# Seconds from the job's creation after which records not yet started end as `expired`. Bounded by the work
# queue's MessageRetentionPeriod (4 days, template.yaml): a shard still queued after that is deleted by SQS,
# so a later deadline could never be reached.
MAX_JOB_DEADLINE_S = 345_600
DeadlineSeconds = Annotated[int, Field(ge=1, le=MAX_JOB_DEADLINE_S)]


class JobSpec(BaseModel):
    """A job submission message on the intake queue."""

    model_config = ConfigDict(extra="forbid")

    input: str | None = None
    records: list[dict[str, Any]] | None = None
    job_id: str | None = Field(None, pattern=JOB_ID_PATTERN)
    client_token: ClientToken | None = None
    parameters: Parameters = Field(default_factory=Parameters)
    fit: FitSettings | None = None
    deadline_s: DeadlineSeconds | None = None

    @field_validator("input")
    @classmethod
    def _s3_uri(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("s3://") or "/" not in value[5:]):
            raise ValueError("input must be an s3://bucket/key URI")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "JobSpec":
        if (self.input is None) == (self.records is None):
            raise ValueError("a job needs exactly one of 'input' (an s3:// URI) or 'records' (a list)")
        return self

    @property
    def bucket_and_key(self) -> tuple[str, str]:
        bucket, _, key = (self.input or "")[5:].partition("/")
        return bucket, key


class CancelRequest(BaseModel):
    """Stop a job: no new endpoint calls; records not started yet end as `cancelled`."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["cancel"]
    job_id: str = Field(pattern=JOB_ID_PATTERN)


class RetryRequest(BaseModel):
    """Start a child job with the records of a finished job that did not succeed."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["retry"]
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    client_token: ClientToken | None = None
    deadline_s: DeadlineSeconds | None = None


ControlRequest = Annotated[Union[CancelRequest, RetryRequest], Field(discriminator="action")]
CONTROL_ADAPTER: TypeAdapter[CancelRequest | RetryRequest] = TypeAdapter(ControlRequest)


class Shard(BaseModel):
    """One work message: a byte range of the job's input object holding consecutive lines."""

    job_id: str
    shard: int = Field(ge=0)
    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    first_line: int = Field(ge=1)
    lines: int = Field(ge=0)
    # Retry jobs only, one entry per line of this shard: the line it had in the parent job, and the id its
    # result takes when the record names none (the parent's id, itself a line number of the original job).
    parent_lines: list[int] | None = None
    default_ids: list[int] | None = None

    def parent_line(self, line: int) -> int | None:
        return self.parent_lines[line - self.first_line] if self.parent_lines is not None else None

    def default_id(self, line: int) -> int:
        return self.default_ids[line - self.first_line] if self.default_ids is not None else line


class FinalizeRequest(BaseModel):
    job_id: str


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
