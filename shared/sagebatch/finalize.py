"""Finalizer: once per job, write results.jsonl (input order) and manifest.json, then close the job.

Only the worker (or intake) that moved the job RUNNING -> FINALIZING sends the finalize message,
and the last transition is conditional, so a redelivered message rewrites identical objects at most.
A stopped job is finalized the same way and closed as CANCELLED or EXPIRED (control.final_status).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

from sagebatch.adapters.jobs import FINALIZING, Job, JobStore
from sagebatch.adapters.objects import ObjectStore
from sagebatch.control import final_status, iso_time
from sagebatch.observability import logger
from sagebatch.settings import Settings


class ResultsIncomplete(Exception):
    pass


@dataclass(frozen=True)
class FinalizeOutcome:
    job_id: str
    status: str
    results_uri: str | None = None


def results_key(job_id: str) -> str:
    return f"outputs/{job_id}/results.jsonl"


def manifest_key(job_id: str) -> str:
    return f"outputs/{job_id}/manifest.json"


def build_manifest(job: Job, bucket: str, finished_at: float, status: str) -> dict:
    counts = {"total": job.total_records, "succeeded": job.succeeded, "failed": job.failed}
    if job.stop_reason is not None:
        # Only a stopped job can have records that never ran; other manifests keep the three counts.
        counts |= {"cancelled": job.cancelled, "expired": job.expired}
    return {
        "job_id": job.job_id,
        "status": status,
        "input": job.source,
        "input_version_id": job.version_id,
        "results": f"s3://{bucket}/{results_key(job.job_id)}",
        "counts": counts,
        "tokens": {"input": job.input_tokens, "output": job.output_tokens},
        "endpoint_calls": job.endpoint_calls,
        "timings": {
            "created_at": iso_time(job.created_at),
            "started_at": iso_time(job.started_at),
            "finished_at": iso_time(finished_at),
            "duration_s": round(finished_at - job.created_at, 3),
            "deadline_at": iso_time(job.deadline_at),
        },
        "stop_reason": job.stop_reason,
        "stopped_at": iso_time(job.stopped_at),
        # A retry job: its parent, and (on each result line, as `parent_line`) where each record came from.
        "parent_job_id": job.parent_job_id,
        "parameters": job.parameters.model_dump(exclude_none=True),
        "fit": job.fit.model_dump() if job.fit else None,
    }


class Finalizer:
    def __init__(self, jobs: JobStore, objects: ObjectStore, settings: Settings):
        self._jobs = jobs
        self._objects = objects
        self._settings = settings

    def finalize(self, job_id: str) -> FinalizeOutcome:
        job = self._jobs.get_job(job_id)
        if job is None or job.status != FINALIZING:
            logger.info("nothing to finalize", extra={"job_id": job_id, "status": job.status if job else None})
            return FinalizeOutcome(job_id, job.status if job else "MISSING")
        bucket = self._settings.bucket_name
        written = 0
        # Spool to disk past 64 MB: a million-line result file must not have to fit in memory.
        with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as spool:
            for expected, result in enumerate(self._jobs.results(job_id), start=1):
                if result.line != expected:
                    raise ResultsIncomplete(f"job {job_id}: no result for line {expected}")
                spool.write(result.model_dump_json().encode("utf-8") + b"\n")
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
        return FinalizeOutcome(job_id, status, f"s3://{bucket}/{results_key(job_id)}")
