"""A job's deadline when neither its message nor the deployment sets one: as long as the work, within the queues.

The work is estimated from the input's size at the seed's short-prompt rate (performance-model.md 1: 128-word
prompts, 128 output tokens, 128 in flight: 1,030 tok/s, i.e. ~8 records/s of ~600 bytes, ~4.8 KB of input per
second). Per byte that is the slowest workload of the seed's table (6,400-word prompts move ~10 KB/s), so a
deadline derived from it also covers files of long prompts. It is multiplied by a safety factor (the endpoint may
be shared, retries and long outputs take longer) and kept between a day and the longest deadline the queues allow.
"""

from __future__ import annotations

from sagebatch.domain.limits import MAX_JOB_DEADLINE_S
from sagebatch.domain.sharding import SHORT_RECORD_BYTES

DAY_S = 86_400
MIN_DERIVED_DEADLINE_S = DAY_S
SHORT_PROMPT_RECORDS_PER_S = 8.0  # 1,030 output tok/s / 128 tokens per record
INPUT_BYTES_PER_S = SHORT_PROMPT_RECORDS_PER_S * SHORT_RECORD_BYTES
DEADLINE_SAFETY_FACTOR = 2.0


def estimated_processing_s(input_bytes: int) -> float:
    """Seconds one endpoint needs for an input of `input_bytes` at the seed's short-prompt rate."""
    return max(input_bytes, 0) / INPUT_BYTES_PER_S


def derived_deadline_s(input_bytes: int) -> int:
    """clamp(2 x the estimated processing time, 1 day, 13 days): ~200 MB (~350k short records) or less get a day;
    from ~2.7 GB (~4.5M short records) on, the 13 days the queues' 14-day retention allows."""
    wanted = int(DEADLINE_SAFETY_FACTOR * estimated_processing_s(input_bytes))
    return max(MIN_DERIVED_DEADLINE_S, min(wanted, MAX_JOB_DEADLINE_S))


def job_deadline_s(input_bytes: int, requested_s: int | None, default_s: int) -> int:
    """The deadline a job gets: its message's own, else the deployment's default, else (default 0) derived."""
    if requested_s:
        return requested_s
    if default_s:
        return default_s
    return derived_deadline_s(input_bytes)
