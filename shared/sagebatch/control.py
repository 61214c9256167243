"""Job control: cancel, deadlines, retry of what did not succeed, and how a job is reported.

Stopping never bypasses the normal path to the end of a job. A stop only changes what a worker does with a
record it has not started yet: it stores a `cancelled` / `expired` result instead of calling the endpoint.
Shards still complete and count once, the one caller that wins RUNNING -> FINALIZING still sends the one
finalize message, and results.jsonl still has one line per input line. The stop reason lives on the job item
and is written once (conditionally), so every worker and the finalizer agree on it.
"""

from __future__ import annotations

import threading
import time
from array import array
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable

from sagebatch.adapters.jobs import CANCELLED, COMPLETED, EXPIRED, FINISHED, Job, JobStore
from sagebatch.adapters.queues import DeadLetterQueues, MoveTaskUnsupported
from sagebatch.models import ResultLine, StopReason
from sagebatch.observability import logger

# The final job status for each stop reason (when the stop actually left records unstarted).
STOPPED_STATUS = {"cancelled": CANCELLED, "expired": EXPIRED}
# A retry takes every record that did not succeed. Cancelled and expired records never ran; failed ones may
# have failed for a reason that is gone (an endpoint outage) or one that is not (invalid JSON fails again).
RETRIED_STATUSES = ("failed", "cancelled", "expired")
# Jobs whose results.jsonl is complete and may be retried. A FAILED job failed as a whole (unreadable or
# disallowed input, invalid message): it has no results to retry, it must be submitted again.
RETRYABLE_JOB_STATUSES = (COMPLETED, CANCELLED, EXPIRED)


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


class StopCheck:
    """Should a worker still start records of this job? Asked before every record of a shard.

    The stop reason is re-read from the job at most every `interval_s` (one read per shard per interval, not
    one per record; a cancel is seen within that interval). The deadline needs no read: it is compared with
    the clock on every call, and the first worker past it records `expired` on the job, unless a cancel got
    there first, in which case every worker reports the cancel.
    """

    def __init__(self, jobs: JobStore, job: Job, interval_s: float, clock: Callable[[], float] = time.time):
        self._jobs = jobs
        self._job_id = job.job_id
        self._deadline_at = job.deadline_at
        self._reason: StopReason | None = job.stop_reason
        self._interval_s = interval_s
        self._clock = clock
        self._read_at = clock()
        # The shard's records ask from several threads; the one that reads holds the others for that one
        # round trip, so a stale view is refreshed once, not by every thread at the same moment.
        self._lock = threading.Lock()

    def reason(self) -> StopReason | None:
        with self._lock:
            if self._reason is None:
                now = self._clock()
                if self._deadline_at is not None and now >= self._deadline_at:
                    job, recorded = self._jobs.request_stop(self._job_id, "expired")
                    if recorded:
                        logger.info("job deadline passed", extra={"job_id": self._job_id})
                    self._reason = job.stop_reason if job is not None and job.stop_reason else "expired"
                elif now - self._read_at >= self._interval_s:
                    job = self._jobs.get_job(self._job_id)
                    self._read_at = now
                    self._reason = job.stop_reason if job is not None else None
            return self._reason


def final_status(job: Job) -> str:
    """COMPLETED, unless a stop left records unstarted: then CANCELLED or EXPIRED after the recorded reason.

    A cancel (or deadline) that arrives when every record has already started changes nothing, so such a job
    completes normally; its manifest still shows the stop reason.
    """
    if job.stop_reason is not None and job.cancelled + job.expired > 0:
        return STOPPED_STATUS[job.stop_reason]
    return COMPLETED


# -- retry ------------------------------------------------------------------------------------
class RetryRefused(Exception):
    """The job named by a retry request cannot be retried (the message says why)."""


def retryable(parent: Job | None, parent_id: str) -> Job:
    """`parent`, if a retry of it may start; else RetryRefused with the reason."""
    if parent is None:
        raise RetryRefused(f"no job {parent_id} to retry")
    if parent.status not in FINISHED:
        raise RetryRefused(f"job {parent_id} is {parent.status}: retry it once it has finished (or cancel it first)")
    if parent.status not in RETRYABLE_JOB_STATUSES:
        raise RetryRefused(f"job {parent_id} is {parent.status} as a whole ({parent.error}); submit it again instead of retrying")
    return parent


@dataclass
class Lineage:
    """For each line of a retry job's input (in order): its line in the parent and the id its result inherits."""

    parent_lines: array = field(default_factory=lambda: array("q"))
    default_ids: array = field(default_factory=lambda: array("q"))

    def __len__(self) -> int:
        return len(self.parent_lines)

    def add(self, result: ResultLine) -> None:
        self.parent_lines.append(result.line)
        # An id that is a number may be the parent's default (the original line number), which only this
        # message can carry on; a string id is the record's own, which the child reads from the record again.
        self.default_ids.append(result.id if isinstance(result.id, int) and not isinstance(result.id, bool) else result.line)

    def window(self, first_line: int, lines: int) -> tuple[list[int], list[int]]:
        """The entries of child lines first_line .. first_line + lines - 1."""
        start = first_line - 1
        return self.parent_lines[start:start + lines].tolist(), self.default_ids[start:start + lines].tolist()


def retry_lineage(parent_results: Iterable[ResultLine]) -> Lineage:
    """The parent's lines a retry runs again: every record that did not succeed, in line order."""
    lineage = Lineage()
    for result in parent_results:
        if result.status in RETRIED_STATUSES:
            lineage.add(result)
    return lineage


# -- dead-letter redrive ----------------------------------------------------------------------
@dataclass(frozen=True)
class RedriveOutcome:
    method: str  # "move-task": SQS moves the messages asynchronously; "copy": moved here, one batch at a time
    task_handle: str | None = None
    moved: int = 0
    note: str = ""


def redrive(queues: DeadLetterQueues, dlq_url: str, destination_url: str | None = None, copy: bool = False) -> RedriveOutcome:
    """Send a dead-letter queue's messages back for processing: SQS's StartMessageMoveTask where it exists (the
    documented way), else (or with `copy`) a receive / send / delete loop to `destination_url`, or to the DLQ's
    only source queue."""
    note = ""
    if not copy:
        try:
            return RedriveOutcome("move-task", task_handle=queues.start_move_task(dlq_url, destination_url))
        except MoveTaskUnsupported as error:
            note = f"StartMessageMoveTask is not available here ({error}); copied the messages instead"
    destination = destination_url or queues.only_source(dlq_url)
    return RedriveOutcome("copy", moved=queues.copy_messages(dlq_url, destination), note=note)


# -- reporting --------------------------------------------------------------------------------
def iso_time(timestamp: float | None, timespec: str = "auto") -> str | None:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec=timespec) if timestamp else None


def _iso(timestamp: float | None) -> str | None:
    return iso_time(timestamp, "seconds")


def describe(job: Job) -> list[str]:
    """`sagebatch status`: a job's state in a few lines (ids, counts and times; no record content)."""
    done = f"{job.shards_done}/{job.total_shards}" if job.total_shards is not None else "not sharded yet"
    lines = [
        f"job {job.job_id} {job.status}",
        f"  input     {job.source or '-'}",
        f"  records   {job.total_records if job.total_records is not None else '?'} total, {job.succeeded} succeeded, "
        f"{job.failed} failed, {job.cancelled} cancelled, {job.expired} expired",
        f"  shards    {done} done",
        f"  tokens    {job.input_tokens} in, {job.output_tokens} out, {job.endpoint_calls} endpoint calls",
        f"  created   {_iso(job.created_at)}, deadline {_iso(job.deadline_at) or 'none'}",
    ]
    if job.stop_reason:
        lines.append(f"  stopped   {job.stop_reason} at {_iso(job.stopped_at)}")
    if job.parent_job_id:
        lines.append(f"  retry of  {job.parent_job_id}")
    if job.finished_at:
        lines.append(f"  finished  {_iso(job.finished_at)}")
    if job.error:
        lines.append(f"  error     {job.error}")
    return lines
