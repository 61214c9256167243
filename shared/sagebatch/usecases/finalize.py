"""Finalizer: once per job, write results.jsonl (input order, in the job's output format; for OpenAI's, errors.jsonl
too: usecases.result_files) and manifest.json, then close the job.

Only the worker (or intake) that moved the job RUNNING -> FINALIZING sends the finalize message,
and the last transition is conditional, so a redelivered message rewrites identical objects at most.
A stopped job is finalized the same way and closed as CANCELLED or EXPIRED (control.final_status).

The finalizer publishes the job's FINALIZING event when it takes the job up (the winner of RUNNING -> FINALIZING
only sends the message: a redelivery of its shard message would find the job no longer running and publish
nothing), and the final one once it closed the job; a redelivered message for a job it already closed publishes
that final event again, so a failed publish is never lost (events are at least once, see domain.events).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sagebatch.domain.events import WITH_RESULTS, state_change
from sagebatch.domain.job import Job, JobStatus, final_status
from sagebatch.domain.layout import manifest_key, results_key, s3_uri
from sagebatch.domain.manifest import build_manifest
from sagebatch.domain.results import DuplicateIds
from sagebatch.observability import logger
from sagebatch.ports import JobEvents, JobStore, NoJobEvents, ObjectStore, ResultStore
from sagebatch.settings import Settings
from sagebatch.usecases.result_files import ResultFiles, input_originals


class ResultsIncomplete(Exception):
    pass


@dataclass(frozen=True)
class FinalizeOutcome:
    job_id: str
    status: str
    results_uri: str | None = None


class Finalizer:
    def __init__(
        self, jobs: JobStore, results: ResultStore, objects: ObjectStore, settings: Settings, events: JobEvents | None = None
    ):
        self._jobs = jobs
        self._results = results
        self._objects = objects
        self._settings = settings
        self._events = events or NoJobEvents()

    def finalize(self, job_id: str) -> FinalizeOutcome:
        job = self._jobs.get_job(job_id)
        if job is not None and job.status in WITH_RESULTS:  # closed by an earlier delivery: its event once more
            self._publish(job, job.status)
        if job is None or job.status != JobStatus.FINALIZING:
            logger.info("nothing to finalize", extra={"job_id": job_id, "status": job.status if job else None})
            return FinalizeOutcome(job_id, job.status if job else "MISSING")
        self._publish(job, JobStatus.FINALIZING)
        bucket = self._settings.bucket_name
        written = 0
        ids = DuplicateIds()
        # Spooled to disk past 64 MB; a peer format re-reads the input beside the results (read only then).
        with ResultFiles(job, input_originals(self._objects, job, self._settings.max_line_bytes)) as files:
            for expected, result in enumerate(self._results.results(job_id), start=1):
                if result.line != expected:
                    raise ResultsIncomplete(f"job {job_id}: no result for line {expected}")
                files.write(ids.flag(result))
                written = expected
            if written != (job.total_records or 0):
                raise ResultsIncomplete(f"job {job_id}: {written} results for {job.total_records} lines")
            files.upload(self._objects, bucket)
        finished_at = time.time()
        status = final_status(job)
        self._objects.put_json(
            bucket, manifest_key(job_id), build_manifest(job, bucket, finished_at, status, self._settings.endpoint_hourly_price)
        )
        if self._jobs.complete_job(job_id, status):
            self._publish(job, status)
        logger.info("job finished", extra={"job_id": job_id, "records": written, "status": status})
        return FinalizeOutcome(job_id, status, s3_uri(bucket, results_key(job_id)))

    def _publish(self, job: Job, status: JobStatus) -> None:
        self._events.publish(state_change(job, status, time.time(), self._settings.bucket_name))
