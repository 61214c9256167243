"""Cancel a job: no new endpoint calls; records not started yet end as `cancelled`."""

from __future__ import annotations

from dataclasses import dataclass

from sagebatch.observability import logger
from sagebatch.ports import JobStore


@dataclass(frozen=True)
class CancelOutcome:
    job_id: str
    stopped: bool  # did this request stop the job (False: unknown, already stopped, or already finishing)
    message: str


def cancel(jobs: JobStore, job_id: str) -> CancelOutcome:
    """Ask a CREATING or RUNNING job to stop; idempotent, and a clear no-op for any other job."""
    job, recorded = jobs.request_stop(job_id, "cancelled")
    if job is None:
        outcome = CancelOutcome(job_id, False, f"no job {job_id}: nothing to cancel")
    elif recorded:
        outcome = CancelOutcome(job_id, True, f"job {job_id} cancelled: records not started yet will be 'cancelled'")
    elif job.stop_reason is not None:
        outcome = CancelOutcome(job_id, False, f"job {job_id} was already stopped ({job.stop_reason}); nothing changed")
    else:
        outcome = CancelOutcome(job_id, False, f"job {job_id} is {job.status}: nothing left to cancel; nothing changed")
    logger.info("cancel request", extra={"job_id": job_id, "stopped": outcome.stopped, "outcome": outcome.message})
    return outcome
