"""Retry policy for endpoint calls: which errors, how long to wait, and how many retries overall.

- Only retryable kinds are retried (overloaded, timeout, server_error, throttled, not_ready); validation, client
  errors and oversized payloads never are.
- A timed-out request re-runs a whole generation on the GPU, so it is retried at most `max_timeout_retries` times.
- Waits use AWS "Full Jitter": U(0, min(cap, base * 2^(retry-1))), base 1 s, cap 20 s (performance-model.md 8.4).
- A shared `RetryBudget` (token bucket) keeps retries to about `ratio` of first attempts, so a sick endpoint is
  not hammered: when it is empty the call fails fast with the last error (performance-model.md 8.5). A 429 spends
  no token: TGI refuses it before any GPU work, and the limiter has already halved on it.
- A wait never runs past the invocation's time for calls (`time_left_s`, the TimeBudget's room): a retry that
  would have to start later is `out_of_time` instead, left to a later delivery (no budget token spent).
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sagebatch.domain.generation import EndpointError, ErrorKind


class RetryBudget:
    """Token bucket: each new call deposits `ratio` tokens, each retry withdraws one. Thread-safe.

    `initial` tokens allow a small burst of retries before any deposits (e.g. at start-up); the balance never
    exceeds `max_balance`, so a long healthy period does not bank an unbounded retry storm.
    """

    def __init__(self, ratio: float = 0.1, initial: float = 10.0, max_balance: float = 100.0):
        if ratio < 0 or initial < 0 or max_balance < initial:
            raise ValueError("need ratio >= 0 and 0 <= initial <= max_balance")
        self.ratio = ratio
        self.max_balance = max_balance
        self._balance = initial
        self._lock = threading.Lock()

    def deposit(self) -> None:
        with self._lock:
            self._balance = min(self.max_balance, self._balance + self.ratio)

    def try_withdraw(self) -> bool:
        with self._lock:
            if self._balance >= 1.0 - 1e-9:  # ten deposits of 0.1 make one token
                self._balance -= 1.0
                return True
            return False

    @property
    def balance(self) -> float:
        with self._lock:
            return self._balance


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_s: float = 0.0
    reason: str = ""
    out_of_time: bool = False  # would retry, but not before the invocation's time for calls runs out


class RetryPolicy:
    """Stateless rules plus a shared budget; `begin()` returns the per-call tracker."""

    def __init__(
        self,
        *,
        max_attempts: int = 4,
        base_s: float = 1.0,
        cap_s: float = 20.0,
        max_timeout_retries: int = 1,
        budget: RetryBudget | None = None,
        rng: Callable[[], float] = random.random,
    ):
        if max_attempts < 1 or base_s < 0 or cap_s < base_s:
            raise ValueError("need max_attempts >= 1 and 0 <= base_s <= cap_s")
        self.max_attempts = max_attempts
        self.base_s = base_s
        self.cap_s = cap_s
        self.max_timeout_retries = max_timeout_retries
        self.budget = budget if budget is not None else RetryBudget()
        self._rng = rng

    def backoff_s(self, retry_number: int) -> float:
        """Full Jitter wait before retry number `retry_number` (1 = first retry)."""
        ceiling = min(self.cap_s, self.base_s * (2 ** max(0, retry_number - 1)))
        return self._rng() * ceiling

    def begin(self) -> RetryTracker:
        """Start one logical call (deposits its share into the budget)."""
        self.budget.deposit()
        return RetryTracker(self)


class RetryTracker:
    """Retry state of one logical call: attempts made, timeouts seen."""

    def __init__(self, policy: RetryPolicy):
        self.policy = policy
        self.attempts = 1  # the first attempt is under way when the tracker is created
        self.timeouts = 0

    def on_error(self, error: BaseException, time_left_s: float = math.inf) -> RetryDecision:
        """Decide after a failed attempt; a positive decision has consumed a budget token. `time_left_s`: how long
        this invocation may still wait before an attempt must start."""
        policy = self.policy
        if not isinstance(error, EndpointError) or not error.retryable:
            return RetryDecision(False, reason="not retryable")
        if error.kind is ErrorKind.TIMEOUT:
            self.timeouts += 1
            if self.timeouts > policy.max_timeout_retries:
                return RetryDecision(False, reason="timeout retries exhausted")
        if self.attempts >= policy.max_attempts:
            return RetryDecision(False, reason="attempts exhausted")
        delay = policy.backoff_s(self.attempts)
        if delay >= time_left_s:
            return RetryDecision(False, reason="out of time", out_of_time=True)
        # TGI refuses a 429 at admission, before any GPU work, and the retry goes back through the limiter, which
        # has halved on it: retrying it does not hammer the endpoint, so it spends no budget token. (Spending them,
        # a burst of 429s emptied the budget and handed whole shards back, delivery after delivery.)
        if error.kind is not ErrorKind.OVERLOADED and not policy.budget.try_withdraw():
            return RetryDecision(False, reason="retry budget exhausted")
        self.attempts += 1
        return RetryDecision(True, delay_s=delay, reason=error.kind.value)
