"""How intake cuts a job's input into work shards: how many lines a shard holds, and where each shard ends.

A shard has a fixed cost whatever its size: its SQS message (sent, received, deleted), its lease (taken, released),
its `shard_done` and status items, the ranged GET of its input, its part written and read back: about 13 AWS
requests. Spread over 32 lines that is ~0.4 request per record; over 256 lines ~0.05. Small shards, on the other
hand, let a small job spread over every worker and every endpoint slot, and keep a retried shard cheap.

So a small job keeps `min_lines` (32) lines per shard, and a large one gets larger shards so that it has at most
about `TARGET_SHARDS` of them, up to `MAX_SHARD_LINES`. Intake knows the input's size before reading it (HeadObject)
but not its line count, so the rule estimates lines from bytes at the size of a short-prompt record: a file of
longer records is over-estimated, i.e. it gets shards of at most as many lines as a short-prompt file of that size,
and the shard's byte cap (settings.shard_bytes) keeps a shard of long prompts as small as today's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

# A short-prompt record as the seed's benchmark sends it: ~128 words (~580 characters) and its JSON wrapper.
SHORT_RECORD_BYTES = 600
MIN_SHARD_LINES = 64
# A job larger than TARGET_SHARDS x 64 estimated lines (~79 MB of short prompts) gets larger shards.
TARGET_SHARDS = 2048
# Past 256 lines a shard's fixed cost is already < 0.06 request per record, while one shard would keep an
# environment's 60 endpoint slots busy for minutes and a crash would redo more of it.
MAX_SHARD_LINES = 256


def estimated_lines(total_bytes: int) -> int:
    """Lines of an input of `total_bytes`, were they all short-prompt records (rounded up; 0 for an empty input)."""
    return -(-max(total_bytes, 0) // SHORT_RECORD_BYTES)


def shard_lines(total_bytes: int, min_lines: int = MIN_SHARD_LINES, max_lines: int = MAX_SHARD_LINES) -> int:
    """Lines per shard for an input of `total_bytes`: `min_lines` for small jobs, growing so that the job has at most
    ~TARGET_SHARDS shards, never more than `max_lines` (nor fewer than `min_lines`, which wins if it is larger)."""
    wanted = -(-estimated_lines(total_bytes) // TARGET_SHARDS)
    return max(min_lines, min(wanted, max_lines))


def cut_shards(line_ends: Iterable[int], start: int, max_lines: int, max_bytes: int) -> Iterator[tuple[int, int, int]]:
    """Consecutive shards as (start, end, lines), from the end offsets of consecutive lines beginning at `start`.

    A shard holds at most `max_lines` lines and `max_bytes` bytes, unless its one line is larger. Each cut depends
    only on where the shard starts and the lines after it, so cutting again from any shard's start (a resumed
    intake) gives exactly the shards one pass would have.
    """
    shard_start = last_end = start
    lines = 0
    for end in line_ends:
        if lines and (lines == max_lines or end - shard_start > max_bytes):
            yield shard_start, last_end, lines
            shard_start, lines = last_end, 0
        lines += 1
        last_end = end
    if lines:
        yield shard_start, last_end, lines
