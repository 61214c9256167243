"""Asking for a job's finalize: once when its last shard is done, and again whenever a redelivery finds it unfinished.

The switch RUNNING -> FINALIZING and the finalize message are two writes: a crash (or a failed send) between them
would leave a job FINALIZING with no finalize request, or RUNNING with every shard done, forever. So a redelivered
message that finds its job in either state asks again. The finalizer closes a job once (its last transition is
conditional), so an extra request costs at most a rewrite of identical outputs.
"""

from __future__ import annotations

from sagebatch.domain.job import JobStatus
from sagebatch.domain.messages import FinalizeRequest
from sagebatch.ports import JobStore, MessageSender


def begin_finalize(jobs: JobStore, finalize: MessageSender, job_id: str) -> bool:
    """RUNNING -> FINALIZING if every shard is done, then request the finalize. True if this call requested it."""
    if jobs.try_begin_finalize(job_id):
        finalize.send(FinalizeRequest(job_id=job_id))
        return True
    return False


def resume_finalize(jobs: JobStore, finalize: MessageSender, job_id: str, status: JobStatus) -> bool:
    """For a redelivery: request the finalize of a job left FINALIZING, or begin it for one left RUNNING."""
    if status == JobStatus.FINALIZING:
        finalize.send(FinalizeRequest(job_id=job_id))
        return True
    if status == JobStatus.RUNNING:
        return begin_finalize(jobs, finalize, job_id)
    return False
