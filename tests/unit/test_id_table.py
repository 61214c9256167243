"""FirstLines: the duplicate-id table that a 10M-line job's finalizer keeps (and saves across invocations)."""

from __future__ import annotations

import random

from sagebatch.domain.id_table import FirstLines


def test_it_answers_like_a_dict_through_its_growth() -> None:
    # Given 20,000 random 64-bit keys, a fifth of them repeated (past many doublings of the table)
    rng = random.Random(7)
    keys = [rng.getrandbits(64) for _ in range(16_000)]
    keys += rng.choices(keys, k=4_000)
    table, expected = FirstLines(), {}
    # When each is stored with its position as its line; Then the table answers what a dict answers
    answers = [table.setdefault(key, line) for line, key in enumerate(keys, start=1)]
    assert answers == [expected.setdefault(key, line) for line, key in enumerate(keys, start=1)]
    assert len(table) == len(expected)


def test_new_entries_saved_and_loaded_rebuild_the_table() -> None:
    # Given a table whose new entries were taken twice (two checkpoints' segments)
    first = FirstLines()
    for line in range(1, 3_001):
        first.setdefault(line * 7919, line)
        if line == 1_000:
            segment_one = first.take_new()
    segment_two = first.take_new()
    # When a fresh table loads both segments
    resumed = FirstLines()
    resumed.load(segment_one)
    resumed.load(segment_two)
    # Then it knows every first line, and none of them is new to it
    assert [resumed.setdefault(line * 7919, 0) for line in range(1, 3_001)] == list(range(1, 3_001))
    assert resumed.take_new() == b""


def test_a_zero_digest_is_stored_and_found() -> None:
    # Given the digest 0 (the empty-slot marker) stored first; Then it is found again, not stored twice
    table = FirstLines()
    assert table.setdefault(0, 5) == 5
    assert table.setdefault(0, 9) == 5 and len(table) == 1
