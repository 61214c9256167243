"""Unit tests for the RenoGuard limiter: fake clock, no real sleeps (threads only where concurrency is the point)."""

from __future__ import annotations

import threading

import pytest

from sagebatch.domain.generation import EndpointError, ErrorKind
from sagebatch.endpoint.limiter import (
    AdaptiveLimiter,
    InMemoryLimiterStore,
    LimiterSettings,
    LimiterTimeout,
    Signal,
)


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_limiter(clock: FakeClock | None = None, **overrides) -> AdaptiveLimiter:
    settings = LimiterSettings(**{"initial_limit": 8.0, "max_limit": 120.0, "max_inflight": 120, **overrides})
    return AdaptiveLimiter(InMemoryLimiterStore(settings), clock=clock or FakeClock())


def fill(limiter: AdaptiveLimiter, n: int, cost_tokens: int = 100):
    return [limiter.acquire(cost_tokens, timeout_s=0) for _ in range(n)]


def overloaded() -> EndpointError:
    return EndpointError(ErrorKind.OVERLOADED, "Model is overloaded", 429)


def test_overloaded_halves_the_limit():
    # Given a limiter at L = 8 with requests in flight
    limiter = make_limiter()
    permits = fill(limiter, 8)
    # When one request comes back with TGI 429
    permits[0].failure(overloaded())
    # Then L is halved
    assert limiter.limit == pytest.approx(4.0)


@pytest.mark.parametrize("kind", [ErrorKind.TIMEOUT, ErrorKind.SERVER_ERROR, ErrorKind.THROTTLED])
def test_timeouts_and_server_errors_are_hard_signals(kind):
    # Given a busy limiter at L = 8
    limiter = make_limiter()
    permits = fill(limiter, 8)
    # When a request fails with a timeout / 5xx / throttle
    permits[0].failure(EndpointError(kind, "boom"))
    # Then L is halved
    assert limiter.limit == pytest.approx(4.0)


@pytest.mark.parametrize("kind", [ErrorKind.VALIDATION, ErrorKind.CLIENT_ERROR, ErrorKind.PAYLOAD_TOO_LARGE, ErrorKind.NOT_READY])
def test_errors_that_say_nothing_about_load_leave_the_limit_alone(kind):
    # Given a busy limiter at L = 8
    limiter = make_limiter()
    permits = fill(limiter, 8)
    # When a request fails with a non-load error
    permits[0].failure(EndpointError(kind, "bad request"))
    # Then L is unchanged and the slot is free again
    assert limiter.limit == pytest.approx(8.0)
    assert limiter.snapshot().inflight_count == 7


def test_success_in_slow_start_grows_the_limit_by_the_request_weight():
    # Given a fully used limiter at L = 8 in slow start
    clock = FakeClock()
    limiter = make_limiter(clock)
    permits = fill(limiter, 8)
    # When a short request succeeds quickly
    clock.advance(2.0)
    permits[0].success(output_tokens=128)
    # Then L grows by one unit
    assert limiter.limit == pytest.approx(9.0)


def test_after_a_cut_success_grows_the_limit_additively():
    # Given a limiter that has left slow start (one 429 took L from 16 to 8)
    clock = FakeClock()
    limiter = make_limiter(clock, initial_limit=16.0)
    permits = fill(limiter, 16)
    permits.pop().failure(overloaded())
    clock.advance(1.0)
    for p in permits[7:]:
        p.release(Signal.IGNORE)
    # When a request admitted after the cut succeeds while the limiter is full (8 in flight at L = 8)
    newer = limiter.acquire(100, timeout_s=0)
    clock.advance(2.0)
    newer.success(output_tokens=128)
    # Then L grows by weight / L = 1/8
    assert limiter.limit == pytest.approx(8.0 + 1.0 / 8.0)


def test_slow_success_is_a_soft_signal():
    # Given a busy limiter at L = 10
    clock = FakeClock()
    limiter = make_limiter(clock, initial_limit=10.0)
    permits = fill(limiter, 10)
    # When a request succeeds after 31 s (> 0.5 x 60 s)
    clock.advance(31.0)
    signal = permits[0].success(output_tokens=128)
    # Then it counts as SOFT and L shrinks by 10 %
    assert signal is Signal.SOFT
    assert limiter.limit == pytest.approx(9.0)


def test_soft_signal_can_be_normalised_per_output_token():
    # Given a limiter whose soft threshold is 120 ms per output token
    clock = FakeClock()
    limiter = make_limiter(clock, initial_limit=10.0, soft_ms_per_token=120.0)
    permits = fill(limiter, 10)
    # When a 128-token answer takes 20 s (156 ms/token, but under the 30 s deadline guard)
    clock.advance(20.0)
    signal = permits[0].success(output_tokens=128)
    # Then it is a soft signal
    assert signal is Signal.SOFT
    assert limiter.limit == pytest.approx(9.0)


def test_at_most_one_cut_per_smoothed_rtt():
    # Given a busy limiter whose smoothed RTT is about 10 s
    clock = FakeClock()
    limiter = make_limiter(clock, initial_limit=32.0)
    warm = limiter.acquire(100, timeout_s=0)
    clock.advance(10.0)
    warm.release(Signal.SUCCESS)
    first = fill(limiter, 20)
    clock.advance(1.0)
    first[0].failure(overloaded())
    limit_after_first_cut = limiter.limit
    for p in first[1:12]:
        p.release(Signal.IGNORE)
    # When more requests, admitted after the cut, fail within the same RTT
    later = [limiter.acquire(100, timeout_s=0) for _ in range(2)]
    clock.advance(3.0)
    later[0].failure(overloaded())
    # Then L was cut only once
    assert limiter.limit == pytest.approx(limit_after_first_cut)
    # And once a full RTT has passed, the next signal cuts again
    clock.advance(10.0)
    later[1].failure(overloaded())
    assert limiter.limit == pytest.approx(limit_after_first_cut / 2)


def test_request_admitted_before_the_last_cut_does_not_cut_again():
    # Given a cut made while older requests were still in flight
    clock = FakeClock()
    limiter = make_limiter(clock, initial_limit=16.0)
    permits = fill(limiter, 16)
    clock.advance(1.0)
    permits[0].failure(overloaded())
    # When an older request reports a 429 much later
    clock.advance(100.0)
    permits[1].failure(overloaded())
    # Then the limit is not cut twice for the same congestion event
    assert limiter.limit == pytest.approx(8.0)


def test_no_increase_while_app_limited():
    # Given a limiter at L = 20 used by only 3 requests (< L/2)
    clock = FakeClock()
    limiter = make_limiter(clock, initial_limit=20.0)
    permits = fill(limiter, 3)
    # When they all succeed
    for p in permits:
        clock.advance(1.0)
        p.success(output_tokens=128)
    # Then L does not grow
    assert limiter.limit == pytest.approx(20.0)


def test_limit_stays_within_bounds():
    # Given a limiter at its floor of 1
    clock = FakeClock()
    limiter = make_limiter(clock, initial_limit=1.0, max_limit=2.0)
    # When it keeps receiving 429s, each a full RTT apart
    for _ in range(5):
        p = limiter.acquire(100, timeout_s=0)
        clock.advance(100.0)
        p.failure(overloaded())
    # Then L never drops below 1
    assert limiter.limit == pytest.approx(1.0)
    # And when successes pour in, L never exceeds max_limit
    for _ in range(10):
        ps = fill(limiter, int(limiter.limit))
        clock.advance(1.0)
        for p in ps:
            p.success(output_tokens=128)
    assert limiter.limit == pytest.approx(2.0)


def test_long_prompts_take_more_of_the_budget():
    # Given a limiter at L = 8 with 1,024 tokens per weight unit
    limiter = make_limiter(initial_limit=8.0, token_unit=1024)
    # When a 6,144-token prompt is in flight (weight 6)
    limiter.acquire(6144, timeout_s=0)
    # Then only two short prompts fit beside it, not seven
    limiter.acquire(100, timeout_s=0)
    limiter.acquire(100, timeout_s=0)
    with pytest.raises(LimiterTimeout):
        limiter.acquire(100, timeout_s=0)
    assert limiter.snapshot().inflight_weight == pytest.approx(8.0)


def test_request_heavier_than_the_limit_runs_alone():
    # Given L = 2 and nothing in flight
    limiter = make_limiter(initial_limit=2.0)
    # When an 8,000-token prompt (weight ~7.8) asks for a slot
    permit = limiter.acquire(8000, timeout_s=0)
    # Then it is admitted, and nothing else is while it runs
    assert permit.weight > limiter.limit
    with pytest.raises(LimiterTimeout):
        limiter.acquire(100, timeout_s=0)


def test_bulkhead_caps_long_prompts_without_blocking_short_ones():
    # Given a bulkhead of one long prompt, with one long prompt in flight
    limiter = make_limiter(initial_limit=40.0, max_long_inflight=1)
    limiter.acquire(6400, timeout_s=0)
    # When a second long prompt waits (in another thread) and a short prompt arrives
    waiting_started = threading.Event()
    result: list[object] = []

    def second_long():
        waiting_started.set()
        try:
            result.append(limiter.acquire(6400, timeout_s=0.5))
        except LimiterTimeout as error:
            result.append(error)

    thread = threading.Thread(target=second_long)
    thread.start()
    waiting_started.wait()
    short = limiter.acquire(100, timeout_s=0.5)
    thread.join()
    # Then the short prompt got in and the second long prompt did not
    assert short.weight == 1.0
    assert isinstance(result[0], LimiterTimeout)


def test_count_cap_binds_regardless_of_limit():
    # Given max_inflight = 3 and a large L
    limiter = make_limiter(initial_limit=50.0, max_inflight=3)
    fill(limiter, 3)
    # When a fourth request asks
    # Then it is refused
    with pytest.raises(LimiterTimeout):
        limiter.acquire(100, timeout_s=0)


def test_releasing_twice_is_harmless():
    # Given a permit released once with a 429
    limiter = make_limiter()
    permits = fill(limiter, 8)
    permits[0].failure(overloaded())
    # When it is released again
    permits[0].success()
    # Then neither the count nor the limit changes again
    assert limiter.snapshot().inflight_count == 7
    assert limiter.limit == pytest.approx(4.0)


def test_concurrent_acquire_never_exceeds_the_limit():
    # Given a limiter with L = 5 shared by 16 threads
    limiter = make_limiter(initial_limit=5.0, max_limit=5.0)
    lock = threading.Lock()
    in_flight = 0
    peak = 0

    def worker():
        nonlocal in_flight, peak
        for _ in range(50):
            with limiter.acquire(100, timeout_s=5) as permit:
                with lock:
                    in_flight += 1
                    peak = max(peak, in_flight)
                with lock:
                    in_flight -= 1
                permit.release(Signal.IGNORE)

    # When they all hammer acquire/release
    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then never more than floor(L) were inside at once, and everything was returned
    assert 1 <= peak <= 5
    assert limiter.snapshot().inflight_count == 0


def test_limiters_on_one_store_share_one_limit():
    # Given two workers' limiters built on the same store with L = 4
    store = InMemoryLimiterStore(LimiterSettings(initial_limit=4.0))
    a, b = AdaptiveLimiter(store), AdaptiveLimiter(store)
    fill(a, 2)
    fill(b, 2)
    # When either asks for a fifth slot
    # Then it is refused: the in-flight count is global
    with pytest.raises(LimiterTimeout):
        a.acquire(100, timeout_s=0)


def test_release_hands_the_slot_to_the_oldest_waiter():
    # Given a full limiter (L = 1) and a second request waiting in another thread
    limiter = make_limiter(initial_limit=1.0)
    first = limiter.acquire(100, timeout_s=0)
    admitted = threading.Event()

    def waiter():
        limiter.acquire(100, timeout_s=5)
        admitted.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    while limiter.store.waiting() == 0:
        pass
    # When the first request finishes
    first.release(Signal.IGNORE)
    # Then the waiter is admitted
    assert admitted.wait(5)
    thread.join()
    assert limiter.snapshot().inflight_count == 1


def test_long_prompts_earn_slots_as_fast_as_short_ones_after_slow_start():
    # Given a limiter out of slow start at L = 50, full of 6,144-token prompts (weight 6)
    clock = FakeClock()
    limiter = make_limiter(clock, initial_limit=100.0)
    permits = [limiter.acquire(6144, timeout_s=0) for _ in range(8)]
    permits.pop().failure(overloaded())  # L 100 -> 50, leaves slow start
    for p in permits[:-6]:
        p.release(Signal.IGNORE)
    clock.advance(1.0)
    fresh = limiter.acquire(6144, timeout_s=0)
    # When one of them succeeds
    clock.advance(10.0)
    fresh.success(output_tokens=128)
    # Then L grows by weight^2 / L = 36/50, so ~L/weight successes (one RTT) add one more long prompt
    assert limiter.limit == pytest.approx(50.0 + 36.0 / 50.0)
