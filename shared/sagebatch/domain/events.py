"""Job state-change events: what EventBridge (and, for finished jobs, SNS) subscribers receive.

One event per status change of a job (CREATING, RUNNING, FINALIZING, then COMPLETED / CANCELLED / EXPIRED, or
FAILED), sent with source `sagebatch` and detail-type `Job State Change`; the detail is `JobStateChange` as JSON
(README "Notifications" documents it field by field). Delivery is at least once: a change may be published again
when the message whose step published it is redelivered, so every event carries `event_id` = job id + status, the
same for every copy of one change.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from sagebatch.domain.job import FINISHED, Job, JobStatus, sources
from sagebatch.domain.layout import manifest_key, results_key, s3_uri
from sagebatch.domain.manifest import iso_time
from sagebatch.domain.results import StopReason

SOURCE = "sagebatch"
DETAIL_TYPE = "Job State Change"
SCHEMA_VERSION = 1
# The statuses a job ends in after the finalizer wrote results.jsonl (FAILED jobs have none).
WITH_RESULTS = frozenset({JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.EXPIRED})
# What the optional SNS topic is told about: a job that finished, however it finished.
NOTIFIED = FINISHED
MAX_ERROR_CHARS = 2000


class EventCounts(BaseModel):
    model_config = ConfigDict(frozen=True)

    total: int | None  # input lines; None until intake has counted them (CREATING, or FAILED at intake)
    succeeded: int
    failed: int
    cancelled: int
    expired: int


class EventTokens(BaseModel):
    model_config = ConfigDict(frozen=True)

    input: int
    output: int


class JobStateChange(BaseModel):
    """The detail of one `Job State Change` event."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = SCHEMA_VERSION
    event_id: str  # "<job_id>:<status>": the same for every copy of one change (delivery is at least once)
    job_id: str
    status: JobStatus
    previous_status: JobStatus | None  # None for CREATING
    time: str  # ISO 8601, UTC, milliseconds: when this copy was published
    input: str | None  # s3://bucket/key of the job's input; None for a message rejected before naming one
    parent_job_id: str | None
    client_token: str | None
    counts: EventCounts
    tokens: EventTokens
    endpoint_calls: int
    stop_reason: StopReason | None
    error: str | None  # why a FAILED job failed (at most MAX_ERROR_CHARS)
    results_uri: str | None  # COMPLETED / CANCELLED / EXPIRED only
    manifest_uri: str | None  # every finished job, FAILED included

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def detail_json(self) -> str:
        return self.model_dump_json()


def event_id(job_id: str, status: JobStatus) -> str:
    return f"{job_id}:{status}"


def previous_status(job: Job, status: JobStatus) -> JobStatus | None:
    """The status the job left to enter `status`: the job's own when the state machine allows it from there
    (the job was read before the change), else the only one `status` can be reached from."""
    if status == JobStatus.CREATING:
        return None
    allowed = sources(status)
    if job.status in allowed:
        return job.status
    (only,) = allowed  # every status but CREATING has one source today; a second one must be passed as the job's
    return only


def state_change(
    job: Job, status: JobStatus, at: float, bucket: str, *, total_records: int | None = None, error: str | None = None
) -> JobStateChange:
    """The event for `job` entering `status` at `at` (epoch seconds). `job` may be the item as read before the change;
    `total_records` and `error` give what the change itself adds (intake's line count, a failure's reason)."""
    reason = error if error is not None else job.error if status == JobStatus.FAILED else None
    return JobStateChange(
        event_id=event_id(job.job_id, status),
        job_id=job.job_id,
        status=status,
        previous_status=previous_status(job, status),
        time=iso_time(at, "milliseconds") or "",
        input=job.source or None,
        parent_job_id=job.parent_job_id,
        client_token=job.client_token,
        counts=EventCounts(
            total=total_records if total_records is not None else job.total_records,
            succeeded=job.succeeded,
            failed=job.failed,
            cancelled=job.cancelled,
            expired=job.expired,
        ),
        tokens=EventTokens(input=job.input_tokens, output=job.output_tokens),
        endpoint_calls=job.endpoint_calls,
        stop_reason=job.stop_reason,
        error=reason[:MAX_ERROR_CHARS] if reason else None,
        results_uri=s3_uri(bucket, results_key(job.job_id)) if status in WITH_RESULTS else None,
        manifest_uri=s3_uri(bucket, manifest_key(job.job_id)) if status in FINISHED else None,
    )
