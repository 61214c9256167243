"""Finalizer: once per job, write results.jsonl (input order, in the job's output format; for OpenAI's, errors.jsonl
too: usecases.result_files) and manifest.json, then close the job.

Only the worker (or intake) that moved the job RUNNING -> FINALIZING sends the finalize message,
and the last transition is conditional, so a redelivered message rewrites identical objects at most.
A stopped job is finalized the same way and closed as CANCELLED or EXPIRED (control.final_status).

The finalizer publishes the job's FINALIZING event when it takes the job up (the winner of RUNNING -> FINALIZING
only sends the message: a redelivery of its shard message would find the job no longer running and publish
nothing), and the final one once it closed the job; a redelivered message for a job it already closed publishes
that final event again, so a failed publish is never lost (events are at least once, see domain.events).

A large job's results.jsonl is assembled across as many deliveries as it takes (usecases.assembly): the finalizer
stops when `keep_going` says its time is nearly up, with a checkpoint, and sends a fresh finalize message for the
next invocation to go on from it, then reports success. It does not let its own message come back instead: that
would burn one of the queue's five receives (maxReceiveCount) per pause, so a 10M-line job would reach the DLQ,
and the message would only reappear after the queue's 90-minute visibility timeout. A checkpoint whose upload no
longer exists (aborted, or expired by a lifecycle rule) is discarded and the assembly starts over.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sagebatch.domain.assembly import PART_BYTES
from sagebatch.domain.events import WITH_RESULTS, state_change
from sagebatch.domain.job import Job, JobStatus, final_status
from sagebatch.domain.layout import manifest_key, results_key, s3_uri
from sagebatch.domain.manifest import AssemblySummary, build_manifest
from sagebatch.domain.messages import FinalizeRequest
from sagebatch.observability import logger
from sagebatch.ports import JobEvents, JobStore, MessageSender, NoJobEvents, ObjectStore, ResultStore, UploadGone
from sagebatch.settings import Settings
from sagebatch.usecases.assembly import READ_AHEAD, AssemblyPaused, ResultsAssembly, ResultsIncomplete

__all__ = ["AssemblyPaused", "FinalizeOutcome", "Finalizer", "ResultsIncomplete"]


def _always() -> bool:
    return True


@dataclass(frozen=True)
class FinalizeOutcome:
    job_id: str
    status: str
    results_uri: str | None = None
    paused: bool = False  # assembly goes on in the next delivery (a fresh finalize message was sent)


class Finalizer:
    def __init__(
        self,
        jobs: JobStore,
        results: ResultStore,
        objects: ObjectStore,
        settings: Settings,
        events: JobEvents | None = None,
        finalize: MessageSender | None = None,
        part_bytes: int = PART_BYTES,
        read_ahead: int = READ_AHEAD,
    ):
        """`finalize`: the finalize queue, for the message that resumes a paused assembly (without it, a pause
        raises AssemblyPaused and the delivery's own message must come back)."""
        self._jobs = jobs
        self._results = results
        self._objects = objects
        self._settings = settings
        self._events = events or NoJobEvents()
        self._finalize = finalize
        self._part_bytes = part_bytes
        self._read_ahead = read_ahead

    def finalize(self, job_id: str, keep_going: Callable[[], bool] = _always) -> FinalizeOutcome:
        job = self._jobs.get_job(job_id)
        if job is not None and job.status in WITH_RESULTS:  # closed by an earlier delivery: its event once more
            self._publish(job, job.status)
        if job is None or job.status != JobStatus.FINALIZING:
            logger.info("nothing to finalize", extra={"job_id": job_id, "status": job.status if job else None})
            return FinalizeOutcome(job_id, job.status if job else "MISSING")
        bucket = self._settings.bucket_name
        assembly = ResultsAssembly(
            job, self._results, self._objects, bucket, self._settings.max_line_bytes, self._part_bytes, self._read_ahead
        )
        checkpoint = assembly.checkpoint()
        if checkpoint is None:
            self._publish(job, JobStatus.FINALIZING)
        try:
            try:
                assembled = assembly.run(checkpoint, keep_going)
            except UploadGone:
                current = self._jobs.get_job(job_id)
                if current is None or current.status != JobStatus.FINALIZING:  # another delivery closed it meanwhile
                    return FinalizeOutcome(job_id, current.status if current else "MISSING")
                logger.warning("assembly upload gone: starting over", extra={"job_id": job_id})
                assembly.discard(checkpoint)
                checkpoint = None
                assembled = assembly.run(None, keep_going)
        except AssemblyPaused:
            if self._finalize is None:
                raise
            self._finalize.send(FinalizeRequest(job_id=job_id))
            return FinalizeOutcome(job_id, JobStatus.FINALIZING, paused=True)
        finished_at = time.time()
        status = final_status(job)
        summary = AssemblySummary(assembled.results_parts, assembled.errors_parts, assembled.bytes, assembled.deliveries)
        manifest = build_manifest(job, bucket, finished_at, status, self._settings.endpoint_hourly_price, summary)
        self._objects.put_json(bucket, manifest_key(job_id), manifest)
        if self._jobs.complete_job(job_id, status):
            self._publish(job, status)
        assembly.clean_up(assembly.checkpoint())
        logger.info(
            "job finished",
            extra={"job_id": job_id, "records": assembled.lines, "status": status, "deliveries": assembled.deliveries},
        )
        return FinalizeOutcome(job_id, status, s3_uri(bucket, results_key(job_id)))

    def _publish(self, job: Job, status: JobStatus) -> None:
        self._events.publish(state_change(job, status, time.time(), self._settings.bucket_name))
