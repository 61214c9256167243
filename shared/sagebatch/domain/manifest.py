"""manifest.json: what a finished job reports about itself (counts, tokens, timings, settings)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sagebatch.domain.cost import DEFAULT_ENDPOINT_HOURLY_PRICE, JobCounts, job_cost
from sagebatch.domain.job import Job
from sagebatch.domain.layout import errors_key, part_key_pattern, parts_prefix, results_key, s3_uri


@dataclass(frozen=True)
class AssemblySummary:
    """How the finalizer wrote results.jsonl (usecases.assembly)."""

    results_parts: int  # multipart parts (1: a single PUT)
    errors_parts: int | None  # OpenAI output only
    results_bytes: int
    deliveries: int  # finalize deliveries it took (more than one: paused and resumed)


def iso_time(timestamp: float | None, timespec: str = "auto") -> str | None:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec=timespec) if timestamp else None


def build_manifest(
    job: Job,
    bucket: str,
    finished_at: float,
    status: str,
    endpoint_hourly_price: float = DEFAULT_ENDPOINT_HOURLY_PRICE,
    assembly: AssemblySummary | None = None,
) -> dict[str, Any]:
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
        # The shards' parts results.jsonl was assembled from (they stay, readable on their own): their prefix, key
        # pattern and count, not each key (a 1M-line job has ~31k: ~2 MB of keys).
        "result_parts": {
            "prefix": s3_uri(bucket, parts_prefix(job.job_id)),
            "key_pattern": part_key_pattern(job.job_id),
            "count": job.total_shards or 0,
        },
        "assembly": _assembly(assembly),
        "input_format": job.input_format,
        "output_format": job.output_format,
        "counts": counts,
        "tokens": {"input": job.input_tokens, "output": job.output_tokens},
        "endpoint_calls": job.endpoint_calls,
        "reused_calls": job.reused_calls,
        # The job's share of the endpoint's time, and the worker time its calls kept busy (README "Cost").
        "endpoint_seconds": round(job.endpoint_seconds, 3),
        "worker_seconds": round(job.worker_seconds, 3),
        "cost": job_cost(job.endpoint_seconds, job_counts(job), endpoint_hourly_price),
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


def job_counts(job: Job) -> JobCounts:
    """What the plumbing estimate reads from a job (domain.cost)."""
    return JobCounts(
        records=job.total_records or 0,
        shards=job.total_shards or 0,
        endpoint_calls=job.endpoint_calls,
        output_tokens=job.output_tokens,
        worker_seconds=job.worker_seconds,
    )


def _assembly(summary: AssemblySummary | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {
        "results_parts": summary.results_parts,
        "errors_parts": summary.errors_parts,
        "results_bytes": summary.results_bytes,
        "deliveries": summary.deliveries,
    }
