"""Shard sizing and cutting (domain/sharding.py), and reading line ends from a byte offset (usecases/shard_enqueue.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sagebatch.domain.sharding import (
    MAX_SHARD_LINES,
    MIN_SHARD_LINES,
    SHORT_RECORD_BYTES,
    TARGET_SHARDS,
    cut_shards,
    estimated_lines,
    shard_lines,
)
from sagebatch.fakes import InMemoryObjectStore
from sagebatch.ports import LineSpan
from sagebatch.usecases.intake import group_spans
from sagebatch.usecases.shard_enqueue import line_ends

SIZES = st.integers(min_value=0, max_value=10**13)  # up to 10 TB
LINE_LENGTHS = st.lists(st.integers(min_value=1, max_value=300), max_size=200)


def ends_of(lengths: list[int], start: int = 0) -> list[int]:
    ends, at = [], start
    for length in lengths:
        at += length
        ends.append(at)
    return ends


# -- shard_lines -------------------------------------------------------------------------------
def test_a_small_job_keeps_32_lines_a_shard() -> None:
    # Given inputs up to TARGET_SHARDS shards of 32 short records (~39 MB); Then 32 lines a shard
    largest_small = MIN_SHARD_LINES * TARGET_SHARDS * SHORT_RECORD_BYTES
    assert {shard_lines(size) for size in (0, 1, 2_000 * SHORT_RECORD_BYTES, largest_small)} == {MIN_SHARD_LINES}


def test_a_10_million_line_job_gets_the_largest_shards() -> None:
    # Given 10M short records (~6 GB); Then shards of MAX_SHARD_LINES lines (~39k shards instead of ~312k)
    assert shard_lines(10_000_000 * SHORT_RECORD_BYTES) == MAX_SHARD_LINES


@given(SIZES)
def test_shard_lines_stay_between_the_minimum_and_the_cap(size: int) -> None:
    assert MIN_SHARD_LINES <= shard_lines(size) <= MAX_SHARD_LINES


@given(SIZES, SIZES)
def test_a_larger_input_never_gets_smaller_shards(size: int, other: int) -> None:
    small, large = sorted((size, other))
    assert shard_lines(small) <= shard_lines(large)


@given(SIZES)
def test_below_the_cap_a_job_has_at_most_about_target_shards(size: int) -> None:
    # Given an input whose shards are under the cap; Then its estimated lines fit in TARGET_SHARDS shards
    lines = shard_lines(size)
    if lines < MAX_SHARD_LINES:
        assert -(-estimated_lines(size) // lines) <= TARGET_SHARDS


@given(SIZES, st.integers(min_value=1, max_value=1000))
def test_a_configured_minimum_above_the_cap_wins(size: int, minimum: int) -> None:
    # Given settings.shard_records as the minimum; Then no shard size is below it
    assert shard_lines(size, minimum) >= minimum


# -- cut_shards --------------------------------------------------------------------------------
@given(LINE_LENGTHS, st.integers(1, 10), st.integers(1, 600))
def test_cut_shards_cuts_exactly_as_intake_always_did(lengths: list[int], max_lines: int, max_bytes: int) -> None:
    # Given lines of any lengths; When cut by cut_shards and by group_spans (the one-pass cutter over spans)
    ends = ends_of(lengths)
    spans = [LineSpan(end - length, end) for end, length in zip(ends, lengths, strict=True)]
    expected = [(g[0].start, g[-1].end, len(g)) for g in group_spans(iter(spans), max_lines, max_bytes)]
    # Then both give the same shards
    assert list(cut_shards(ends, 0, max_lines, max_bytes)) == expected


@given(LINE_LENGTHS, st.integers(1, 10), st.integers(1, 600))
def test_shards_cover_every_byte_in_order_within_their_limits(lengths: list[int], max_lines: int, max_bytes: int) -> None:
    # When lines are cut into shards
    shards = list(cut_shards(ends_of(lengths), 0, max_lines, max_bytes))
    # Then the shards follow each other from byte 0 to the end, hold every line, and keep their limits
    assert [s[0] for s in shards] == [0, *(s[1] for s in shards)][: len(shards)]
    assert sum(s[2] for s in shards) == len(lengths) and (shards[-1][1] if shards else 0) == sum(lengths)
    assert all(lines <= max_lines and (lines == 1 or end - start <= max_bytes) for start, end, lines in shards)


@given(LINE_LENGTHS, st.integers(1, 10), st.integers(1, 600), st.data())
def test_cutting_again_from_any_shards_start_gives_the_same_remaining_shards(
    lengths: list[int], max_lines: int, max_bytes: int, data: st.DataObject
) -> None:
    # Given the shards of one pass, and a resume at the start of one of them
    ends = ends_of(lengths)
    one_pass = list(cut_shards(ends, 0, max_lines, max_bytes))
    k = data.draw(st.integers(0, len(one_pass)))
    offset = one_pass[k][0] if k < len(one_pass) else sum(lengths)
    # When the rest is cut from that offset
    resumed = list(cut_shards([end for end in ends if end > offset], offset, max_lines, max_bytes))
    # Then the shards are exactly the ones the single pass made from there
    assert resumed == one_pass[k:]


# -- line_ends -------------------------------------------------------------------------------------
@given(st.binary(max_size=300), st.integers(1, 64), st.data())
def test_line_ends_from_any_line_start_in_any_chunk_size(body: bytes, chunk: int, data: st.DataObject) -> None:
    # Given an object of any bytes, and a line start to read from
    objects = InMemoryObjectStore()
    objects.create_bucket("b")
    info = objects.put("b", "k", body)
    all_ends = [i + 1 for i, byte in enumerate(body) if byte == ord("\n")]
    all_ends += [len(body)] if body and not body.endswith(b"\n") else []
    start = data.draw(st.sampled_from([0, *all_ends[:-1]]))
    # When its line ends are read in ranged chunks of `chunk` bytes
    ends = list(line_ends(objects, info, start, chunk))
    # Then they are the ends after `start`, a last line without a newline ending at the object's end
    assert ends == [end for end in all_ends if end > start]
