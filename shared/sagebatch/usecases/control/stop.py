"""Should a worker still start records of this job? (cancel, deadline)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sagebatch.domain.job import Job
from sagebatch.domain.results import StopReason
from sagebatch.observability import logger
from sagebatch.ports import JobStore


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
