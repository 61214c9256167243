"""A job's deadline when its message sets none (domain/deadline.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sagebatch.domain.deadline import DAY_S, derived_deadline_s, estimated_processing_s, job_deadline_s
from sagebatch.domain.limits import MAX_JOB_DEADLINE_S
from sagebatch.domain.sharding import SHORT_RECORD_BYTES

SIZES = st.integers(min_value=0, max_value=10**13)


def test_a_small_job_gets_a_day() -> None:
    # Given 10k short records (~6 MB, ~21 min of work); Then a day
    assert derived_deadline_s(10_000 * SHORT_RECORD_BYTES) == DAY_S


def test_a_job_of_a_million_short_records_gets_twice_its_estimated_time() -> None:
    # Given 1M short records (~600 MB): ~125,000 s at ~8 records/s; Then twice that (~2.9 days)
    size = 1_000_000 * SHORT_RECORD_BYTES
    assert derived_deadline_s(size) == int(2 * estimated_processing_s(size)) == 250_000


def test_a_job_larger_than_the_queues_allow_gets_13_days() -> None:
    # Given 10M short records (~6 GB, ~14 days of work); Then the longest deadline the 14-day queues allow
    assert derived_deadline_s(10_000_000 * SHORT_RECORD_BYTES) == MAX_JOB_DEADLINE_S == 13 * DAY_S


@given(SIZES)
def test_a_derived_deadline_is_between_a_day_and_13_days(size: int) -> None:
    assert DAY_S <= derived_deadline_s(size) <= MAX_JOB_DEADLINE_S


@given(SIZES, SIZES)
def test_a_larger_input_never_gets_an_earlier_deadline(size: int, other: int) -> None:
    small, large = sorted((size, other))
    assert derived_deadline_s(small) <= derived_deadline_s(large)


def test_the_message_deadline_wins_then_the_deployments_then_the_derived_one() -> None:
    # Given a 6 GB input; Then a message's own deadline_s wins, else a non-zero default, else the derived one
    size = 10_000_000 * SHORT_RECORD_BYTES
    assert job_deadline_s(size, 600, 7_200) == 600
    assert job_deadline_s(size, None, 7_200) == 7_200
    assert job_deadline_s(size, None, 0) == derived_deadline_s(size)
