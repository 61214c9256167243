"""The job and its state machine.

    CREATING --(shards enqueued)--> RUNNING --(last shard done)--> FINALIZING --> COMPLETED
        |                                                                 |--> CANCELLED  (a cancel left records unstarted)
        '--(invalid message, unreadable input)--> FAILED                  '--> EXPIRED    (the deadline did)

A stop (cancel or deadline) is not a state: it is a reason recorded once on a CREATING or RUNNING job. Workers
then answer the records they have not started as `cancelled` / `expired` instead of calling the endpoint, and
the job goes the normal way to FINALIZING; the finalizer picks its final state (`final_status`).
Every status change is a conditional write in the store, guarded by `sources(target)`.
"""

from __future__ import annotations

import time
from enum import StrEnum

from pydantic import BaseModel, Field

from sagebatch.domain.formats import Format
from sagebatch.domain.parameters import Parameters
from sagebatch.domain.records import FitSettings
from sagebatch.domain.results import ResultLine, StopReason


class JobStatus(StrEnum):
    CREATING = "CREATING"
    RUNNING = "RUNNING"
    FINALIZING = "FINALIZING"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    FAILED = "FAILED"


# The allowed transitions: target status -> the statuses it may be reached from.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.RUNNING: frozenset({JobStatus.CREATING}),
    JobStatus.FAILED: frozenset({JobStatus.CREATING}),
    JobStatus.FINALIZING: frozenset({JobStatus.RUNNING}),
    JobStatus.COMPLETED: frozenset({JobStatus.FINALIZING}),
    JobStatus.CANCELLED: frozenset({JobStatus.FINALIZING}),
    JobStatus.EXPIRED: frozenset({JobStatus.FINALIZING}),
}
FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})
# Statuses in which workers still start records (and a stop may be requested).
ACTIVE = frozenset({JobStatus.CREATING, JobStatus.RUNNING})

STOPPED_STATUS: dict[str, JobStatus] = {"cancelled": JobStatus.CANCELLED, "expired": JobStatus.EXPIRED}


class InvalidTransition(ValueError):
    pass


def sources(target: JobStatus) -> frozenset[JobStatus]:
    """The statuses a job may move to `target` from (the condition of the store's conditional write)."""
    try:
        return TRANSITIONS[target]
    except KeyError:
        raise InvalidTransition(f"no transition leads to {target}") from None


def check_transition(current: JobStatus, target: JobStatus) -> None:
    if current not in sources(target):
        raise InvalidTransition(f"a {current} job cannot become {target}")


class ShardCounts(BaseModel):
    """Record outcomes and usage: one shard's, or (summed once per shard) the whole job's."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    endpoint_calls: int = 0  # requests sent, retries included
    reused_calls: int = 0  # chunk answers reused from an earlier delivery instead of being sent again
    # The records' share of endpoint time, and of their workers' time (sagebatch.endpoint.share_clock, README "Cost").
    endpoint_seconds: float = 0.0
    worker_seconds: float = 0.0

    def add(self, result: ResultLine) -> None:
        setattr(self, result.status, getattr(self, result.status) + 1)
        self.input_tokens += result.usage.input_tokens
        self.output_tokens += result.usage.output_tokens
        self.endpoint_calls += result.calls
        self.reused_calls += result.reused_calls
        self.endpoint_seconds += result.endpoint_seconds
        self.worker_seconds += result.worker_seconds


class IntakeProgress(BaseModel):
    """How far intake has enqueued a job's shards: saved on the job every so often, so a stopped or crashed intake
    resumes at `offset` instead of line 1. Every shard before `next_shard` was sent; shards sent after the last save
    are sent again on resume, which is harmless (a shard is counted once, under its lease and `shard_done`).

    The input's identity and the shard sizes are fixed at the first pass, so that a resumed pass reads the same
    bytes and cuts exactly the same shards.
    """

    version_id: str | None = None
    etag: str | None = None
    size: int = Field(ge=0)
    shard_lines: int = Field(ge=1)
    shard_bytes: int = Field(ge=1)
    offset: int = Field(0, ge=0)  # where the next shard starts
    next_line: int = Field(1, ge=1)
    next_shard: int = Field(0, ge=0)

    @property
    def complete(self) -> bool:
        """Every line of the input is in a sent shard."""
        return self.offset >= self.size

    @property
    def records(self) -> int:
        return self.next_line - 1

    def after(self, end: int, lines: int) -> IntakeProgress:
        """The progress once the next shard (of `lines` lines, ending at byte `end`) is sent."""
        return self.model_copy(update={"offset": end, "next_line": self.next_line + lines, "next_shard": self.next_shard + 1})


class Job(ShardCounts):
    """A job as the service sees it (the store keeps it as one item)."""

    job_id: str
    status: JobStatus = JobStatus.CREATING
    source: str
    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None  # of the input as intake read it: pins a retry's re-read in an unversioned bucket
    parameters: Parameters = Field(default_factory=Parameters)
    fit: FitSettings | None = None
    # The input's format, decided at intake by its first recognisable line (which `input_format_line` names; None
    # when no line in the head was recognisable and the file is read as native), and the format results are written in.
    input_format: Format = "native"
    input_format_line: int | None = None
    output_format: Format = "native"
    client_token: str | None = None
    parent_job_id: str | None = None  # set on a retry job: the job whose unsucceeded records it runs again
    created_at: float = Field(default_factory=time.time)
    deadline_at: float | None = None
    stop_reason: StopReason | None = None  # set once, by a cancel or by the first worker past the deadline
    stopped_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    total_records: int | None = None
    total_shards: int | None = None
    shards_done: int = 0
    error: str | None = None
    finalize_requested: bool = False  # the finalize message was sent after the switch to FINALIZING
    intake_progress: IntakeProgress | None = None  # while CREATING: how far intake got (a resumed intake goes on)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def final_status(job: Job) -> JobStatus:
    """COMPLETED, unless a stop left records unstarted: then CANCELLED or EXPIRED after the recorded reason.

    A cancel (or deadline) that arrives when every record has already started changes nothing, so such a job
    completes normally; its manifest still shows the stop reason.
    """
    if job.stop_reason is not None and job.cancelled + job.expired > 0:
        return STOPPED_STATUS[job.stop_reason]
    return JobStatus.COMPLETED
