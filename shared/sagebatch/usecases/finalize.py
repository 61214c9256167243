"""Finalizer: once per job, write results.jsonl (input order) and manifest.json, then close the job.

Only the worker (or intake) that moved the job RUNNING -> FINALIZING sends the finalize message,
and the last transition is conditional, so a redelivered message rewrites identical objects at most.
A stopped job is finalized the same way and closed as CANCELLED or EXPIRED (control.final_status).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

from sagebatch.domain.job import JobStatus, final_status
from sagebatch.domain.layout import manifest_key, results_key, s3_uri
from sagebatch.domain.formats import dumps_line
from sagebatch.domain.manifest import build_manifest
from sagebatch.domain.results import DuplicateIds
from sagebatch.observability import logger
from sagebatch.ports import JobStore, ObjectStore, ResultStore
from sagebatch.settings import Settings


class ResultsIncomplete(Exception):
    pass


@dataclass(frozen=True)
class FinalizeOutcome:
    job_id: str
    status: str
    results_uri: str | None = None


class Finalizer:
    def __init__(self, jobs: JobStore, results: ResultStore, objects: ObjectStore, settings: Settings):
        self._jobs = jobs
        self._results = results
        self._objects = objects
        self._settings = settings

    def finalize(self, job_id: str) -> FinalizeOutcome:
        job = self._jobs.get_job(job_id)
        if job is None or job.status != JobStatus.FINALIZING:
            logger.info("nothing to finalize", extra={"job_id": job_id, "status": job.status if job else None})
            return FinalizeOutcome(job_id, job.status if job else "MISSING")
        bucket = self._settings.bucket_name
        written = 0
        ids = DuplicateIds()
        # Spool to disk past 64 MB: a million-line result file must not have to fit in memory.
        with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as spool:
            for expected, result in enumerate(self._results.results(job_id), start=1):
                if result.line != expected:
                    raise ResultsIncomplete(f"job {job_id}: no result for line {expected}")
                spool.write(dumps_line(ids.flag(result).public_json()).encode("utf-8") + b"\n")
                written = expected
            if written != (job.total_records or 0):
                raise ResultsIncomplete(f"job {job_id}: {written} results for {job.total_records} lines")
            spool.seek(0)
            self._objects.upload_file(bucket, results_key(job_id), spool)
        finished_at = time.time()
        status = final_status(job)
        self._objects.put_json(bucket, manifest_key(job_id), build_manifest(job, bucket, finished_at, status))
        self._jobs.complete_job(job_id, status)
        logger.info("job finished", extra={"job_id": job_id, "records": written, "status": status})
        return FinalizeOutcome(job_id, status, s3_uri(bucket, results_key(job_id)))
