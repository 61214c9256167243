"""Adaptive, token-aware concurrency limiter for the TGI endpoint ("RenoGuard", performance-model.md 8.1).

One in-flight limit L, measured in *weight units*, is shared by every caller that uses the same `LimiterStore`:

- a request weighs `max(1, cost_tokens / token_unit)`: prompts up to `token_unit` tokens cost one unit, a 6,401-token
  prompt costs 6.25, because it holds ~23x the KV cache and ~45x the prefill time of a short one;
- a request is admitted while `inflight_weight + weight <= L`, `inflight_count < max_inflight` (the hard cap below
  TGI's `MAX_CONCURRENT_REQUESTS`) and, for prompts over `long_prompt_tokens`, the optional long-prompt bulkhead has
  room (default 8: about what TGI's KV cache holds of 6,400-token prompts). A request heavier than L is admitted
  only when nothing else is in flight, so it cannot starve;
- waiters are served first come, first served (a heavy request at the head is not overtaken forever), except that
  long prompts parked by a full bulkhead do not block the short ones behind them;
- loss and deadline signals drive L: hard (429, timeout, 5xx, throttling) -> L x 0.5; soft (a success whose
  end-to-end time is above 0.5 x the 60 s deadline, optionally also above a ms/output-token budget) -> L x 0.9;
  at most one cut per smoothed RTT, and never for a request admitted before the last cut; slow start (+weight per
  success, doubling L per RTT) until the first cut, then +weight^2/L per success (about one request of that size
  per RTT); no increase while the caller is app-limited (in flight < L/2) or while the count cap binds.

Only threading primitives and the injected clock are used; no AWS. The state lives behind `LimiterStore` so that
a shared store (one DynamoDB item, see docs/concurrency.md) can replace `InMemoryLimiterStore`.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol

from sagebatch.domain.generation import EndpointError, ErrorKind

Clock = Callable[[], float]


class Signal(str, Enum):
    """What a finished request says about the endpoint's load."""

    SUCCESS = "success"  # grows L, unless it also was slow (then it is SOFT)
    SOFT = "soft"  # success, but too slow for comfort: L x soft_decrease
    HARD = "hard"  # 429 / timeout / 5xx / throttled: L x hard_decrease
    IGNORE = "ignore"  # says nothing about load (validation, client errors, not ready, local failures)


HARD_KINDS = frozenset({ErrorKind.OVERLOADED, ErrorKind.TIMEOUT, ErrorKind.SERVER_ERROR, ErrorKind.THROTTLED})


def signal_for_error(error: BaseException) -> Signal:
    """Map a failed attempt onto a load signal: only overload, timeouts and server faults are congestion."""
    if isinstance(error, EndpointError) and error.kind in HARD_KINDS:
        return Signal.HARD
    return Signal.IGNORE


class LimiterTimeout(TimeoutError):
    """`acquire` gave up waiting for capacity."""


@dataclass(frozen=True)
class LimiterSettings:
    """Knobs of the controller. Times are seconds on the limiter's clock."""

    initial_limit: float = 48.0  # weight units: 48 short prompts, or 7 of 6,400 tokens (KV holds 8)
    min_limit: float = 1.0
    max_limit: float = 180.0  # weight units, 1.5 x max_inflight so that a mix can still fill the count cap
    max_inflight: int = 120  # hard cap on concurrent requests: EndpointMaxConcurrency (128) - margin (8)
    token_unit: int = 1024  # prompt tokens per weight unit
    long_prompt_tokens: int = 2048  # prompts above this go through the bulkhead
    max_long_inflight: int | None = 8  # bulkhead: ~ how many 6,400-token requests TGI's KV cache holds at once
    hard_decrease: float = 0.5
    soft_decrease: float = 0.9
    deadline_s: float = 60.0  # SageMaker's response limit
    soft_deadline_fraction: float = 0.5  # soft signal when end-to-end > fraction x deadline (bench-tuned)
    soft_ms_per_token: float | None = None  # optional: soft signal when e2e / output tokens exceeds this
    srtt_alpha: float = 0.1
    app_limited_fraction: float = 0.5  # no increase while in flight < fraction x L
    slow_start_gain: float = 1.0  # slow start adds gain x weight per success: 1.0 doubles L per RTT
    additive_increase: float = 1.0  # requests (of the size that succeeded) added per RTT after slow start

    def __post_init__(self) -> None:
        if not 0 < self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError("need 0 < min_limit <= initial_limit <= max_limit")
        if self.max_inflight < 1 or self.token_unit < 1:
            raise ValueError("max_inflight and token_unit must be >= 1")
        if not (0 < self.hard_decrease <= self.soft_decrease < 1):
            raise ValueError("need 0 < hard_decrease <= soft_decrease < 1")

    def weight(self, cost_tokens: int) -> float:
        """Budget a request takes: one unit per `token_unit` prompt tokens, at least one."""
        return max(1.0, cost_tokens / self.token_unit)

    def is_long(self, cost_tokens: int) -> bool:
        return cost_tokens > self.long_prompt_tokens

    @classmethod
    def for_endpoint(
        cls, endpoint_max_concurrency: int = 128, margin: int = 8, sharers: int = 1, **overrides: float | int | None
    ) -> LimiterSettings:
        """Settings for one of `sharers` independent limiters splitting the endpoint's admission cap evenly."""
        sharers = max(1, sharers)
        cap = max(1, (endpoint_max_concurrency - margin) // sharers)
        values: dict = {
            "max_inflight": cap,
            "max_limit": 1.5 * cap,
            "initial_limit": float(min(cap, max(1, 48 // sharers))),
            "max_long_inflight": max(1, 8 // sharers),
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class ControllerState:
    """The whole RenoGuard state. Plain data so that a remote store can persist it as one item."""

    limit: float
    inflight_weight: float = 0.0
    inflight_count: int = 0
    long_inflight: int = 0
    srtt: float | None = None  # smoothed end-to-end time of successes
    last_cut_at: float | None = None
    slow_start: bool = True
    cuts: int = 0
    version: int = 0  # bumped on every change (optimistic concurrency in a remote store)


# --- pure controller logic -------------------------------------------------------------------------------------


def admits(state: ControllerState, settings: LimiterSettings, weight: float, long_prompt: bool) -> bool:
    """Whether a request of `weight` may start now."""
    if state.inflight_count >= settings.max_inflight:
        return False
    if long_prompt and settings.max_long_inflight is not None and state.long_inflight >= settings.max_long_inflight:
        return False
    if state.inflight_count == 0:
        return True  # a request heavier than L still runs alone
    return state.inflight_weight + weight <= math.floor(state.limit) + 1e-9


def on_admit(state: ControllerState, weight: float, long_prompt: bool) -> ControllerState:
    return replace(
        state,
        inflight_weight=state.inflight_weight + weight,
        inflight_count=state.inflight_count + 1,
        long_inflight=state.long_inflight + (1 if long_prompt else 0),
        version=state.version + 1,
    )


def classify_success(settings: LimiterSettings, e2e_s: float, output_tokens: int | None) -> Signal:
    """A success is SOFT when it came too close to the deadline (absolute, or per output token if configured)."""
    if e2e_s > settings.soft_deadline_fraction * settings.deadline_s:
        return Signal.SOFT
    if settings.soft_ms_per_token is not None and output_tokens:
        if 1000.0 * e2e_s / output_tokens > settings.soft_ms_per_token:
            return Signal.SOFT
    return Signal.SUCCESS


def on_release(
    state: ControllerState,
    settings: LimiterSettings,
    *,
    weight: float,
    long_prompt: bool,
    signal: Signal,
    admitted_at: float,
    now: float,
) -> ControllerState:
    """Return the slot and apply the signal (AIMD with one cut per RTT)."""
    inflight_before = state.inflight_weight  # includes this request
    count_before = state.inflight_count
    state = replace(
        state,
        inflight_weight=max(0.0, state.inflight_weight - weight),
        inflight_count=max(0, state.inflight_count - 1),
        long_inflight=max(0, state.long_inflight - (1 if long_prompt else 0)),
        version=state.version + 1,
    )
    e2e = max(0.0, now - admitted_at)
    if signal in (Signal.SUCCESS, Signal.SOFT):
        srtt = e2e if state.srtt is None else (1 - settings.srtt_alpha) * state.srtt + settings.srtt_alpha * e2e
        state = replace(state, srtt=srtt)

    if signal in (Signal.HARD, Signal.SOFT):
        if _may_cut(state, admitted_at, now):
            factor = settings.hard_decrease if signal is Signal.HARD else settings.soft_decrease
            limit = max(settings.min_limit, state.limit * factor)
            return replace(state, limit=limit, last_cut_at=now, slow_start=False, cuts=state.cuts + 1)
        return state

    if signal is Signal.SUCCESS:
        app_limited = inflight_before < settings.app_limited_fraction * state.limit
        count_capped = count_before >= settings.max_inflight
        if app_limited or count_capped:
            return state
        # slow start: +weight per success (doubles per RTT). Congestion avoidance: +additive_increase x weight^2 / L,
        # i.e. about `additive_increase` requests *of this size* per RTT, so long prompts do not take 6x longer
        # to earn one more slot than short ones.
        if state.slow_start:
            increase = settings.slow_start_gain * weight
        else:
            increase = settings.additive_increase * weight * weight / max(state.limit, 1.0)
        return replace(state, limit=min(settings.max_limit, state.limit + increase))
    return state


def _may_cut(state: ControllerState, admitted_at: float, now: float) -> bool:
    if state.last_cut_at is None:
        return True
    if admitted_at < state.last_cut_at:
        return False  # the request saw the old, larger limit: that congestion event was already answered
    return now - state.last_cut_at >= (state.srtt or 0.0)


# --- stores ----------------------------------------------------------------------------------------------------


class LimiterStore(Protocol):
    """Where the controller state lives; every operation is atomic.

    A remote implementation (one DynamoDB item) needs: a conditional admit, an unconditional release that applies
    `on_release` (read, compute, conditional write on `version`), and a way to wait (polling with a short sleep).
    """

    settings: LimiterSettings

    def acquire(self, weight: float, long_prompt: bool, timeout_s: float | None) -> bool: ...

    def release(self, weight: float, long_prompt: bool, signal: Signal, admitted_at: float, now: float) -> None: ...

    def snapshot(self) -> ControllerState: ...


@dataclass(eq=False)
class _Waiter:
    weight: float
    long_prompt: bool
    event: threading.Event
    granted: bool = False


class InMemoryLimiterStore:
    """Thread-safe, FIFO store for one process; share one instance to share one limit.

    Admission is handed over: whoever frees capacity (a release, a limit change, a waiter giving up) admits the
    waiters at the head of the queue and wakes exactly those, instead of waking every waiter to re-check.
    """

    def __init__(self, settings: LimiterSettings | None = None):
        self.settings = settings or LimiterSettings()
        self._state = ControllerState(limit=self.settings.initial_limit)
        self._lock = threading.Lock()
        self._queue: deque[_Waiter] = deque()

    def acquire(self, weight: float, long_prompt: bool, timeout_s: float | None) -> bool:
        me = _Waiter(weight, long_prompt, threading.Event())
        with self._lock:
            self._queue.append(me)
            self._dispatch()
            if me.granted:
                return True
        if timeout_s is None or timeout_s > 0:
            me.event.wait(timeout_s)
        with self._lock:
            if me.granted:
                return True
            self._queue.remove(me)
            self._dispatch()  # a heavy head waiter giving up may unblock lighter ones behind it
            return False

    def _dispatch(self) -> None:
        """Admit waiters in FIFO order while they fit (lock held).

        Long prompts held back by a full bulkhead are skipped, so they do not block short prompts behind them;
        any other waiter that does not fit stops the scan (head-of-line, so heavy requests cannot starve).
        """
        settings = self.settings
        bulkhead = settings.max_long_inflight
        granted: list[_Waiter] = []
        for waiter in self._queue:
            if waiter.long_prompt and bulkhead is not None and self._state.long_inflight >= bulkhead:
                continue
            if not admits(self._state, settings, waiter.weight, waiter.long_prompt):
                break
            self._state = on_admit(self._state, waiter.weight, waiter.long_prompt)
            waiter.granted = True
            granted.append(waiter)
        for waiter in granted:
            self._queue.remove(waiter)
            waiter.event.set()

    def release(self, weight: float, long_prompt: bool, signal: Signal, admitted_at: float, now: float) -> None:
        with self._lock:
            self._state = on_release(
                self._state,
                self.settings,
                weight=weight,
                long_prompt=long_prompt,
                signal=signal,
                admitted_at=admitted_at,
                now=now,
            )
            self._dispatch()

    def snapshot(self) -> ControllerState:
        with self._lock:
            return self._state

    def resize(self, settings: LimiterSettings) -> None:
        """Take new caps (this environment's share of the endpoint changed): the limit is clamped into the new
        bounds, requests in flight above a smaller cap simply finish, and waiters that now fit are admitted."""
        with self._lock:
            old_cap = self.settings.max_inflight
            grew = settings.max_inflight > old_cap
            self.settings = settings
            limit = self._state.limit
            if grew and self._state.cuts == 0:
                # A larger share starts at least where a limiter of that size would (no slow start from a small share).
                limit = max(limit, settings.initial_limit)
            elif grew:
                # A limiter that has been cut has learned what the endpoint takes: its limit grows with the share, in
                # proportion, rather than starting over where it was cut from.
                limit = limit * settings.max_inflight / old_cap
            limit = min(max(limit, settings.min_limit), settings.max_limit)
            if limit != self._state.limit:
                self._state = replace(self._state, limit=limit, version=self._state.version + 1)
            self._dispatch()

    def waiting(self) -> int:
        with self._lock:
            return len(self._queue)


# --- facade ----------------------------------------------------------------------------------------------------


class Permit:
    """One admitted request. Release exactly once (later calls are ignored); usable as a context manager."""

    def __init__(self, limiter: AdaptiveLimiter, cost_tokens: int, weight: float, long_prompt: bool, admitted_at: float):
        self._limiter = limiter
        self.cost_tokens = cost_tokens
        self.weight = weight
        self.long_prompt = long_prompt
        self.admitted_at = admitted_at
        self.signal: Signal | None = None
        self._lock = threading.Lock()

    @property
    def released(self) -> bool:
        return self.signal is not None

    def release(self, signal: Signal) -> Signal:
        """Give the slot back and report `signal`; returns the signal applied."""
        with self._lock:
            if self.signal is not None:
                return self.signal
            self.signal = signal
        self._limiter._release(self, signal)
        return signal

    def success(self, output_tokens: int | None = None) -> Signal:
        """Report a success; it becomes SOFT when it was slow relative to the deadline."""
        e2e = self._limiter.clock() - self.admitted_at
        return self.release(classify_success(self._limiter.settings, e2e, output_tokens))

    def failure(self, error: BaseException) -> Signal:
        return self.release(signal_for_error(error))

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.failure(exc)
        elif not self.released:
            self.success()


class AdaptiveLimiter:
    """`acquire(cost_tokens)` blocks until admitted and returns a `Permit`; the permit's release feeds the AIMD.

    Several limiters built on the same store share one limit (and one in-flight count).
    """

    def __init__(
        self, store: LimiterStore | None = None, *, settings: LimiterSettings | None = None, clock: Clock = time.monotonic
    ):
        if store is None:
            store = InMemoryLimiterStore(settings or LimiterSettings())
        elif settings is not None and settings != store.settings:
            raise ValueError("settings belong to the store; pass one or the other")
        self.store = store
        self.clock = clock

    @property
    def settings(self) -> LimiterSettings:
        return self.store.settings

    def acquire(self, cost_tokens: int = 0, timeout_s: float | None = None) -> Permit:
        """Wait (real seconds, at most `timeout_s`) for room for a request with `cost_tokens` prompt tokens."""
        weight = self.settings.weight(cost_tokens)
        long_prompt = self.settings.is_long(cost_tokens)
        if not self.store.acquire(weight, long_prompt, timeout_s):
            raise LimiterTimeout(f"no capacity for a {cost_tokens}-token request within {timeout_s} s")
        return Permit(self, cost_tokens, weight, long_prompt, self.clock())

    def _release(self, permit: Permit, signal: Signal) -> None:
        self.store.release(permit.weight, permit.long_prompt, signal, permit.admitted_at, self.clock())

    @property
    def limit(self) -> float:
        return self.store.snapshot().limit

    def snapshot(self) -> ControllerState:
        return self.store.snapshot()
