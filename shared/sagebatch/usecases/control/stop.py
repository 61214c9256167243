"""Should a worker still start records of this job? (cancel, deadline)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sagebatch.domain.job import Job
from sagebatch.domain.results import StopReason
from sagebatch.observability import logger
from sagebatch.ports import JobStore


class StopCheck:
    """Should a worker still start records of this job? Asked before every record of the job's running shards.

    The stop reason is re-read from the job at most every `interval_s` (one read per job per interval, however many
    of its shards and records ask: `StopChecks` shares one check per job in an execution environment; a cancel is
    seen within that interval). The deadline needs no read: it is compared with the clock on every call, and the
    first worker past it records `expired` on the job, unless a cancel got there first, in which case every worker
    reports the cancel.
    """

    def __init__(self, jobs: JobStore, job: Job, interval_s: float, clock: Callable[[], float] = time.time):
        self._jobs = jobs
        self._job_id = job.job_id
        self._deadline_at = job.deadline_at
        self._reason: StopReason | None = job.stop_reason
        self._interval_s = interval_s
        self._clock = clock
        self._read_at = clock()
        # Records ask from several threads; the one that reads holds the others for that one round trip, so a
        # stale view is refreshed once, not by every thread at the same moment.
        self._lock = threading.Lock()

    def saw(self, job: Job) -> None:
        """A fresher read of the job (a shard starting reads it anyway): counts as this interval's read."""
        with self._lock:
            if self._reason is None:
                self._reason = job.stop_reason
                self._read_at = self._clock()

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


class StopChecks:
    """One `StopCheck` per job for every shard of it that runs in this execution environment at the same time.

    Without sharing, each running shard re-read its job every interval: sixteen shards of one job, sixteen reads a
    second. A check lives while a shard of its job runs; the next shard starts a fresh one from its own read.
    """

    def __init__(self, jobs: JobStore, interval_s: float, clock: Callable[[], float] = time.time):
        self._jobs = jobs
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._checks: dict[str, tuple[StopCheck, int]] = {}  # job id -> (its check, shards using it)

    @contextmanager
    def watching(self, job: Job) -> Iterator[StopCheck]:
        """The job's shared check, for the duration of one shard."""
        with self._lock:
            check, users = self._checks.get(job.job_id, (None, 0))
            if check is None:
                check = StopCheck(self._jobs, job, self._interval_s, self._clock)
            else:
                check.saw(job)
            self._checks[job.job_id] = (check, users + 1)
        try:
            yield check
        finally:
            with self._lock:
                users = self._checks[job.job_id][1] - 1
                if users:
                    self._checks[job.job_id] = (check, users)
                else:
                    del self._checks[job.job_id]

    def __len__(self) -> int:
        with self._lock:
            return len(self._checks)
