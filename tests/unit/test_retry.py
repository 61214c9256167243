"""Unit tests for the retry policy: injected RNG, no sleeping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sagebatch.domain.generation import EndpointError, ErrorKind
from sagebatch.endpoint.retry import RetryBudget, RetryPolicy


def error(kind: ErrorKind) -> EndpointError:
    return EndpointError(kind, kind.value)


def generous_policy(**overrides) -> RetryPolicy:
    return RetryPolicy(**{"budget": RetryBudget(initial=100.0), "rng": lambda: 0.5, **overrides})


@pytest.mark.parametrize("kind", [ErrorKind.VALIDATION, ErrorKind.CLIENT_ERROR, ErrorKind.PAYLOAD_TOO_LARGE])
def test_never_retries_validation_or_client_errors(kind):
    # Given a fresh call with plenty of budget
    tracker = generous_policy().begin()
    # When the first attempt fails with a non-retryable kind
    decision = tracker.on_error(error(kind))
    # Then it is not retried
    assert not decision.retry


def test_does_not_retry_unknown_exceptions():
    # Given a fresh call
    tracker = generous_policy().begin()
    # When something that is not an EndpointError is raised
    # Then it is not retried
    assert not tracker.on_error(RuntimeError("bug")).retry


@pytest.mark.parametrize(
    "kind", [ErrorKind.OVERLOADED, ErrorKind.SERVER_ERROR, ErrorKind.THROTTLED, ErrorKind.NOT_READY, ErrorKind.TIMEOUT]
)
def test_retries_retryable_kinds(kind):
    # Given a fresh call
    tracker = generous_policy().begin()
    # When the first attempt fails with a retryable kind
    decision = tracker.on_error(error(kind))
    # Then it is retried after a backoff
    assert decision.retry
    assert decision.delay_s == pytest.approx(0.5)


def test_timeout_is_retried_at_most_once():
    # Given a call whose first attempt timed out and was retried
    tracker = generous_policy().begin()
    assert tracker.on_error(error(ErrorKind.TIMEOUT)).retry
    # When the retry times out as well
    decision = tracker.on_error(error(ErrorKind.TIMEOUT))
    # Then there is no third generation
    assert not decision.retry
    assert decision.reason == "timeout retries exhausted"


def test_stops_after_max_attempts():
    # Given a policy of 4 attempts
    tracker = generous_policy(max_attempts=4).begin()
    # When every attempt is overloaded
    decisions = [tracker.on_error(error(ErrorKind.OVERLOADED)) for _ in range(4)]
    # Then three retries are allowed and the fourth failure is final
    assert [d.retry for d in decisions] == [True, True, True, False]


@given(retry_number=st.integers(min_value=1, max_value=30), u=st.floats(min_value=0.0, max_value=0.999999))
def test_full_jitter_stays_between_zero_and_the_capped_exponential(retry_number, u):
    # Given full jitter with base 1 s and cap 20 s, and any RNG draw
    policy = RetryPolicy(base_s=1.0, cap_s=20.0, rng=lambda: u)
    # When the wait before a retry is computed
    delay = policy.backoff_s(retry_number)
    # Then it lies in [0, min(20, 2^(n-1))]
    assert 0.0 <= delay <= min(20.0, 2.0 ** (retry_number - 1))


def test_full_jitter_ceiling_doubles_then_caps():
    # Given an RNG that always draws its maximum
    policy = RetryPolicy(base_s=1.0, cap_s=20.0, rng=lambda: 1.0)
    # When the waits for retries 1..7 are computed
    # Then they are 1, 2, 4, 8, 16, 20, 20
    assert [policy.backoff_s(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 20, 20]


def test_retry_budget_exhausts_and_fails_fast():
    # Given a budget of 2 initial tokens and 10 % deposits
    policy = RetryPolicy(budget=RetryBudget(ratio=0.1, initial=2.0), rng=lambda: 0.0)
    # When 5 calls each hit a 5xx on their first attempt (5 deposits = +0.5 tokens)
    decisions = [policy.begin().on_error(error(ErrorKind.SERVER_ERROR)) for _ in range(5)]
    # Then only 2 are retried, the rest fail fast
    assert [d.retry for d in decisions] == [True, True, False, False, False]
    assert decisions[-1].reason == "retry budget exhausted"


def test_a_429_is_retried_without_spending_the_budget():
    # Given an empty retry budget
    policy = RetryPolicy(budget=RetryBudget(ratio=0.1, initial=0.0), rng=lambda: 0.0)
    # When 5 calls each hit TGI's 429 (refused at admission, before any GPU work)
    decisions = [policy.begin().on_error(error(ErrorKind.OVERLOADED)) for _ in range(5)]
    # Then every one is retried (through the limiter, which halves on it), and the budget is untouched
    assert all(d.retry for d in decisions)
    assert policy.budget.balance == pytest.approx(0.5)


def test_retry_budget_refills_with_new_calls():
    # Given an empty budget with 10 % deposits
    budget = RetryBudget(ratio=0.1, initial=0.0)
    assert not budget.try_withdraw()
    # When ten new calls are made
    for _ in range(10):
        budget.deposit()
    # Then one retry is available again
    assert budget.try_withdraw()
    assert not budget.try_withdraw()


def test_a_retry_whose_backoff_outlasts_the_time_left_is_not_taken_and_costs_no_token():
    # Given a call that failed retryably, with a 4 s backoff drawn and only 3 s left before a call must start
    budget = RetryBudget(ratio=0.0, initial=1.0)
    tracker = RetryPolicy(base_s=4.0, cap_s=4.0, budget=budget, rng=lambda: 1.0).begin()

    # When the tracker decides
    decision = tracker.on_error(EndpointError(ErrorKind.OVERLOADED, "busy"), time_left_s=3.0)

    # Then the call is left to a later delivery, and the retry budget still holds its token
    assert (decision.retry, decision.out_of_time) == (False, True)
    assert budget.balance == 1.0
