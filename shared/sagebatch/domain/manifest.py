"""manifest.json: what a finished job reports about itself (counts, tokens, timings, settings)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sagebatch.domain.job import Job
from sagebatch.domain.layout import errors_key, results_key, s3_uri


def iso_time(timestamp: float | None, timespec: str = "auto") -> str | None:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec=timespec) if timestamp else None


def build_manifest(job: Job, bucket: str, finished_at: float, status: str) -> dict[str, Any]:
    counts = {"total": job.total_records, "succeeded": job.succeeded, "failed": job.failed}
    if job.stop_reason is not None:
        # Only a stopped job can have records that never ran; other manifests keep the three counts.
        counts |= {"cancelled": job.cancelled, "expired": job.expired}
    return {
        "job_id": job.job_id,
        "status": status,
        "input": job.source,
        "input_version_id": job.version_id,
        "results": s3_uri(bucket, results_key(job.job_id)),
        # OpenAI's error file: the lines of results.jsonl whose response is null or not 200 (OpenAI output only).
        "errors": s3_uri(bucket, errors_key(job.job_id)) if job.output_format == "openai" else None,
        "input_format": job.input_format,
        "output_format": job.output_format,
        "counts": counts,
        "tokens": {"input": job.input_tokens, "output": job.output_tokens},
        "endpoint_calls": job.endpoint_calls,
        "reused_calls": job.reused_calls,
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
