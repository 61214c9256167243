"""`sagebatch status`: a job's state in a few lines (ids, counts and times; no record content)."""

from __future__ import annotations

from sagebatch.domain.job import Job
from sagebatch.domain.manifest import iso_time


def _iso(timestamp: float | None) -> str | None:
    return iso_time(timestamp, "seconds")


def describe(job: Job) -> list[str]:
    """`sagebatch status`: a job's state in a few lines (ids, counts and times; no record content)."""
    done = f"{job.shards_done}/{job.total_shards}" if job.total_shards is not None else "not sharded yet"
    lines = [
        f"job {job.job_id} {job.status}",
        f"  input     {job.source or '-'}",
        f"  records   {job.total_records if job.total_records is not None else '?'} total, {job.succeeded} succeeded, "
        f"{job.failed} failed, {job.cancelled} cancelled, {job.expired} expired",
        f"  shards    {done} done",
        f"  tokens    {job.input_tokens} in, {job.output_tokens} out, {job.endpoint_calls} endpoint calls"
        f"{f' ({job.reused_calls} reused)' if job.reused_calls else ''}",
        f"  created   {_iso(job.created_at)}, deadline {_iso(job.deadline_at) or 'none'}",
    ]
    if job.stop_reason:
        lines.append(f"  stopped   {job.stop_reason} at {_iso(job.stopped_at)}")
    if job.parent_job_id:
        lines.append(f"  retry of  {job.parent_job_id}")
    if job.finished_at:
        lines.append(f"  finished  {_iso(job.finished_at)}")
    if job.error:
        lines.append(f"  error     {job.error}")
    return lines
