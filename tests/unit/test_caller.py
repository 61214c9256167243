"""Unit tests for AdaptiveCaller: fake endpoint, fake clock, recorded sleeps."""

from __future__ import annotations

from typing import Any

import pytest

from sagebatch.domain.generation import EndpointError, ErrorKind, Generation
from sagebatch.endpoint.caller import AdaptiveCaller, make_default_caller
from sagebatch.endpoint.limiter import AdaptiveLimiter, InMemoryLimiterStore, LimiterSettings
from sagebatch.endpoint.retry import RetryBudget, RetryPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ScriptedEndpoint:
    """Plays a script of outcomes (an EndpointError or a Generation), one per attempt; time passes per attempt."""

    def __init__(self, script: list[Any], clock: FakeClock, limiter: AdaptiveLimiter, seconds_per_call: float = 2.0):
        self.script = list(script)
        self.clock = clock
        self.limiter = limiter
        self.seconds_per_call = seconds_per_call
        self.payloads: list[dict] = []
        self.inflight_seen: list[int] = []

    def invoke_once(self, payload: dict) -> Generation:
        self.payloads.append(payload)
        self.inflight_seen.append(self.limiter.snapshot().inflight_count)
        self.clock.now += self.seconds_per_call
        outcome = self.script.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


OK = Generation(text="ok", generated_tokens=128, finish_reason="length")


def build(script, *, budget_tokens=10.0, initial_limit=8.0, **policy):
    clock = FakeClock()
    limiter = AdaptiveLimiter(InMemoryLimiterStore(LimiterSettings(initial_limit=initial_limit)), clock=clock)
    endpoint = ScriptedEndpoint(script, clock, limiter)
    sleeps: list[tuple[float, int]] = []

    def sleep(seconds: float) -> None:
        sleeps.append((seconds, limiter.snapshot().inflight_count))
        clock.now += seconds

    retry = RetryPolicy(budget=RetryBudget(initial=budget_tokens), rng=lambda: 0.5, **policy)
    caller = AdaptiveCaller(endpoint, limiter, retry, clock=clock, sleep=sleep)
    return caller, endpoint, limiter, sleeps


def test_success_returns_the_generation_with_latency():
    # Given an endpoint that answers in 2 s
    caller, endpoint, _, _ = build([OK])
    # When a call is made
    generation = caller.invoke({"inputs": "hi"}, cost_tokens=10)
    # Then the generation comes back with its measured latency and one attempt
    assert generation.text == "ok"
    assert generation.latency_ms == pytest.approx(2000.0)
    assert caller.stats.attempts == 1 and caller.stats.retries == 0


def test_overloaded_is_retried_after_backoff_outside_the_limiter():
    # Given an endpoint that answers 429 once, then succeeds
    caller, endpoint, limiter, sleeps = build([EndpointError(ErrorKind.OVERLOADED, "overloaded", 429), OK])
    # When a call is made
    generation = caller.invoke({"inputs": "hi"}, cost_tokens=10)
    # Then it succeeds on the second attempt, after a full-jitter wait (0.5 x 1 s) holding no slot
    assert generation.text == "ok"
    assert sleeps == [(0.5, 0)]
    assert len(endpoint.payloads) == 2
    stats = caller.stats
    assert (stats.calls, stats.attempts, stats.retries, stats.overloaded) == (1, 2, 1, 1)
    # And the 429 halved the limit
    assert limiter.limit < 8.0


def test_validation_error_is_raised_without_retry():
    # Given an endpoint that rejects the request as invalid
    caller, endpoint, limiter, sleeps = build([EndpointError(ErrorKind.VALIDATION, "too long", 422)])
    # When a call is made
    # Then the error surfaces at once, nothing is retried, and the limit is untouched
    with pytest.raises(EndpointError) as raised:
        caller.invoke({"inputs": "x"}, cost_tokens=9000)
    assert raised.value.kind is ErrorKind.VALIDATION
    assert sleeps == [] and len(endpoint.payloads) == 1
    assert limiter.limit == pytest.approx(8.0)
    assert limiter.snapshot().inflight_count == 0


def test_timeout_is_retried_only_once():
    # Given an endpoint that times out every time
    timeouts = [EndpointError(ErrorKind.TIMEOUT, "timed out", 0) for _ in range(4)]
    caller, endpoint, _, _ = build(timeouts)
    # When a call is made
    # Then two generations were attempted, and the timeout surfaces
    with pytest.raises(EndpointError) as raised:
        caller.invoke({"inputs": "x"}, cost_tokens=10)
    assert raised.value.kind is ErrorKind.TIMEOUT
    assert len(endpoint.payloads) == 2
    assert caller.stats.timeouts == 2 and caller.stats.failures == 1


def test_empty_retry_budget_fails_fast_with_the_last_error():
    # Given a caller whose retry budget is empty
    caller, endpoint, _, sleeps = build([EndpointError(ErrorKind.SERVER_ERROR, "500", 500), OK], budget_tokens=0.0)
    # When the first attempt fails with a 5xx
    # Then the 5xx is raised without a retry
    with pytest.raises(EndpointError) as raised:
        caller.invoke({"inputs": "x"}, cost_tokens=10)
    assert raised.value.kind is ErrorKind.SERVER_ERROR
    assert sleeps == []
    assert caller.stats.retry_budget_exhausted == 1


def test_unexpected_exception_releases_the_slot():
    # Given an endpoint with a bug
    caller, _, limiter, _ = build([RuntimeError("bug")])
    # When a call is made
    # Then the bug propagates and the slot is returned
    with pytest.raises(RuntimeError):
        caller.invoke({"inputs": "x"}, cost_tokens=10)
    assert limiter.snapshot().inflight_count == 0


def test_default_caller_splits_the_endpoint_cap_between_workers():
    # Given the defaults: 120 calls for the endpoint shared by 8 workers
    caller = make_default_caller(object(), "mistral", endpoint_max_concurrency=120, worker_max_concurrency=8)
    # When the limiter settings are inspected
    # Then each worker may have at most 15 requests in flight
    assert caller.limiter.settings.max_inflight == 15
