"""`AdaptiveCaller`: the production `EndpointCaller` (limiter + retries around one-attempt endpoint calls).

Per logical call: acquire a permit (blocks while the endpoint is at its adaptive limit) -> one `invoke_once` ->
release the permit with the outcome's load signal -> on a retryable error, back off *outside* the limiter (so a
sleeping retry holds no slot) and go through the limiter again.

With a `TimeBudget` (the invocation's time), every attempt starts only while the budget allows a call: the wait for
a permit and the backoff before a retry use only the time above its reserve, and when none is left the call raises
`OutOfTime` (the record goes back to the queue unanswered; a later delivery makes the call).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

from sagebatch.domain.generation import EndpointError, ErrorKind, Generation
from sagebatch.domain.time_budget import OutOfTime, TimeBudget
from sagebatch.endpoint.limiter import (
    AdaptiveLimiter,
    Clock,
    InMemoryLimiterStore,
    LimiterSettings,
    LimiterStore,
    LimiterTimeout,
    Permit,
    Signal,
)
from sagebatch.endpoint.retry import RetryBudget, RetryPolicy
from sagebatch.endpoint.sagemaker import SageMakerEndpoint
from sagebatch.endpoint.share_clock import ShareClock, Shares


class SingleAttemptEndpoint(Protocol):
    def invoke_once(self, payload: dict[str, Any]) -> Generation: ...


@dataclass
class CallerStats:
    """Counters for the manifest and the benchmark (all attempts, not just logical calls)."""

    calls: int = 0  # logical calls (invoke)
    attempts: int = 0
    successes: int = 0
    failures: int = 0  # logical calls that raised
    retries: int = 0
    overloaded: int = 0
    timeouts: int = 0
    server_errors: int = 0
    throttled: int = 0
    not_ready: int = 0
    retry_budget_exhausted: int = 0
    soft_signals: int = 0
    out_of_time: int = 0  # logical calls left to a later delivery: the invocation's time ran out before an attempt

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


_KIND_COUNTER = {
    ErrorKind.OVERLOADED: "overloaded",
    ErrorKind.TIMEOUT: "timeouts",
    ErrorKind.SERVER_ERROR: "server_errors",
    ErrorKind.THROTTLED: "throttled",
    ErrorKind.NOT_READY: "not_ready",
}


class AdaptiveCaller:
    """Implements `EndpointCaller`; thread-safe, share one per execution environment."""

    def __init__(
        self,
        endpoint: SingleAttemptEndpoint,
        limiter: AdaptiveLimiter,
        retry_policy: RetryPolicy,
        *,
        clock: Clock | None = None,
        sleep: Callable[[float], None] = time.sleep,
        acquire_timeout_s: float | None = None,
        endpoint_slots: int | None = None,
    ):
        self.endpoint = endpoint
        self.limiter = limiter
        self.retry_policy = retry_policy
        self.clock = clock or limiter.clock
        self.sleep = sleep
        self.acquire_timeout_s = acquire_timeout_s
        self._stats = CallerStats()
        self._lock = threading.Lock()
        # Each attempt's share of the endpoint's time: this environment's slice of the endpoint (its limiter's cap over
        # the endpoint's `endpoint_slots`; 1 when not given) split among its attempts in flight (README "Cost").
        self.shares = ShareClock(
            self.clock, lambda: self.limiter.store.settings.max_inflight / endpoint_slots if endpoint_slots else 1.0
        )

    def invoke(self, payload: dict[str, Any], cost_tokens: int, budget: TimeBudget | None = None) -> Generation:
        budget = budget or TimeBudget.unlimited()
        self._count("calls")
        tracker = self.retry_policy.begin()
        attempts = 0
        spent = Shares()
        while True:
            permit = self._acquire(cost_tokens, budget)
            self._count("attempts")
            attempts += 1
            started = self.clock()
            mark = self.shares.start()
            try:
                generation = self.endpoint.invoke_once(payload)
            except EndpointError as error:
                spent += self.shares.stop(mark)
                permit.failure(error)
                self._count_error(error)
                # The budget is read only for an error worth retrying (a line's own error fails it at once).
                decision = tracker.on_error(error, time_left_s=budget.call_room() if error.retryable else math.inf)
                if decision.out_of_time:
                    self._count("out_of_time")
                    raise OutOfTime(f"no time left to retry after {error.kind.value}") from error
                if not decision.retry:
                    if decision.reason == "retry budget exhausted":
                        self._count("retry_budget_exhausted")
                    self._count("failures")
                    error.attempts = attempts
                    error.endpoint_seconds, error.worker_seconds = spent.endpoint_seconds, spent.worker_seconds
                    raise
                self._count("retries")
                self.sleep(decision.delay_s)
                continue
            except BaseException as error:
                self.shares.stop(mark)
                permit.failure(error)
                self._count("failures")
                raise
            latency_ms = 1000.0 * (self.clock() - started)
            spent += self.shares.stop(mark)
            signal = permit.success(generation.generated_tokens or None)
            self._count("successes")
            if signal is Signal.SOFT:
                self._count("soft_signals")
            return replace(
                generation,
                latency_ms=latency_ms,
                attempts=attempts,
                endpoint_seconds=spent.endpoint_seconds,
                worker_seconds=spent.worker_seconds,
            )

    def _acquire(self, cost_tokens: int, budget: TimeBudget) -> Permit:
        """A permit for one attempt, waited for at most `acquire_timeout_s` and only while the budget allows a call."""
        try:
            room = budget.check_call()
        except OutOfTime:
            self._count("out_of_time")
            raise
        timeout = room if self.acquire_timeout_s is None else min(self.acquire_timeout_s, room)
        try:
            return self.limiter.acquire(cost_tokens, None if math.isinf(timeout) else timeout)
        except LimiterTimeout as error:
            if timeout < room:  # the caller's own wait limit ran out: a fault outside the record
                self._count("failures")
                raise
            self._count("out_of_time")
            raise OutOfTime("no endpoint slot before the invocation's time ran out") from error

    @property
    def stats(self) -> CallerStats:
        with self._lock:
            return replace(self._stats)

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self._stats, name, getattr(self._stats, name) + 1)

    def _count_error(self, error: EndpointError) -> None:
        name = _KIND_COUNTER.get(error.kind)
        if name:
            self._count(name)


def make_default_caller(
    client: Any,
    endpoint_name: str,
    *,
    endpoint_max_concurrency: int = 120,
    worker_max_concurrency: int = 8,
    store: LimiterStore | None = None,
    limiter_overrides: dict[str, Any] | None = None,
    max_attempts: int = 4,
    clock: Clock = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> AdaptiveCaller:
    """Caller for one Lambda execution environment (create once, share across the worker's threads).

    `endpoint_max_concurrency` is the cap already below TGI's 128 (Settings.endpoint_max_concurrency, 120 by
    default). With a shared `store` (the recommended design, docs/concurrency.md), all workers share one limit and
    one in-flight count. Without one, this worker's limiter gets 1/`worker_max_concurrency` of the cap and adapts on
    its own ("split"): within 1-2 % of shared at 8 workers in the saturation bench, but weaker with more workers.
    """
    if store is None:
        settings = LimiterSettings.for_endpoint(
            endpoint_max_concurrency, margin=0, sharers=worker_max_concurrency, **(limiter_overrides or {})
        )
        store = InMemoryLimiterStore(settings)
    limiter = AdaptiveLimiter(store, clock=clock)
    policy = RetryPolicy(max_attempts=max_attempts, budget=RetryBudget())
    return AdaptiveCaller(
        SageMakerEndpoint(client, endpoint_name),
        limiter,
        policy,
        clock=clock,
        sleep=sleep,
        endpoint_slots=endpoint_max_concurrency,
    )
