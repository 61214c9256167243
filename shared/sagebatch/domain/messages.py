"""The messages that cross the queues: job submissions, control requests, work shards, finalize requests."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from sagebatch.domain.formats import Format
from sagebatch.domain.limits import MAX_JOB_DEADLINE_S
from sagebatch.domain.parameters import Parameters
from sagebatch.domain.records import FitSettings

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ClientToken = Annotated[str, Field(min_length=1, max_length=128)]
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
    # The results' shape: native, or a peer's (OpenAI Batch, Bedrock batch). Default: the input's own format.
    output_format: Format | None = None

    @field_validator("input")
    @classmethod
    def _s3_uri(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("s3://") or "/" not in value[5:]):
            raise ValueError("input must be an s3://bucket/key URI")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> JobSpec:
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


class ResumeIntake(BaseModel):
    """Go on enqueueing a CREATING job's shards from its saved progress: intake sends this to its own queue when its
    invocation runs short of time. Anyone may send it; for a job that is not CREATING it does nothing."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["resume_intake"] = "resume_intake"
    job_id: str = Field(pattern=JOB_ID_PATTERN)


ControlRequest = Annotated[CancelRequest | RetryRequest | ResumeIntake, Field(discriminator="action")]
CONTROL_ADAPTER: TypeAdapter[CancelRequest | RetryRequest | ResumeIntake] = TypeAdapter(ControlRequest)


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
    # The file's format as intake decided it (and the line that decided it), so no worker decides again.
    input_format: Format = "native"
    input_format_line: int | None = None

    def parent_line(self, line: int) -> int | None:
        return self.parent_lines[line - self.first_line] if self.parent_lines is not None else None

    def default_id(self, line: int) -> int:
        return self.default_ids[line - self.first_line] if self.default_ids is not None else line


class FinalizeRequest(BaseModel):
    job_id: str
