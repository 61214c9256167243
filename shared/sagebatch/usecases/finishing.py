"""Asking for a job's finalize: once when its last shard is done, and again when a redelivery finds the request lost.

The switch RUNNING -> FINALIZING and the finalize message are separate writes: a crash (or a failed send) between
them would leave a job FINALIZING with no finalize request, or RUNNING with every shard done, forever. So the
sender marks the job once the message is sent, and a redelivered message that finds its job RUNNING with every
shard done, or FINALIZING but not marked, asks again. The finalizer closes a job once (its last transition is
conditional), so the rare extra request (a crash between the send and the mark) costs at most a rewrite of
identical outputs.
"""

from __future__ import annotations

from sagebatch.domain.job import Job, JobStatus
from sagebatch.domain.messages import FinalizeRequest
from sagebatch.ports import JobStore, MessageSender


def request_finalize(jobs: JobStore, finalize: MessageSender, job_id: str) -> None:
    finalize.send(FinalizeRequest(job_id=job_id))
    jobs.mark_finalize_requested(job_id)


def begin_finalize(jobs: JobStore, finalize: MessageSender, job_id: str) -> bool:
    """RUNNING -> FINALIZING if every shard is done, then request the finalize. True if this call requested it."""
    if jobs.try_begin_finalize(job_id):
        request_finalize(jobs, finalize, job_id)
        return True
    return False


def resume_finalize(jobs: JobStore, finalize: MessageSender, job: Job) -> bool:
    """For a redelivery: request the finalize of a job left FINALIZING without one, or begin it for one left RUNNING."""
    if job.status == JobStatus.FINALIZING and not job.finalize_requested:
        request_finalize(jobs, finalize, job.job_id)
        return True
    if job.status == JobStatus.RUNNING:
        return begin_finalize(jobs, finalize, job.job_id)
    return False
