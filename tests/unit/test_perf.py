"""Unit tests for the calibrated TGI 1.1 emulator scheduler (sagebatch.tooling.emulator.perf).

Assertions are on model-time figures (what the cost model says), never on how fast the host is. The
one wall-clock test checks that ``time_scale`` compresses time, with generous bounds.
"""

from __future__ import annotations

import threading
import time

import pytest

from sagebatch.tooling.emulator.perf import (
    ContainerTimeout,
    GenTiming,
    Overloaded,
    PerfParams,
    TgiScheduler,
)
from sagebatch.tooling.emulator.perf_model import max_batch_size, prefill_ms, reserved_tokens

FAST = 200.0  # time_scale for tests that only look at model time


@pytest.fixture
def sched():
    s = TgiScheduler(time_scale=FAST)
    yield s
    s.close()


def run_one(s: TgiScheduler, input_tokens: int, new_tokens: int, **kw) -> GenTiming:
    return s.generate(s.admit(), input_tokens, new_tokens, **kw)


def burst(s: TgiScheduler, n: int, input_tokens: int, new_tokens: int) -> list[GenTiming | Exception]:
    """n client threads released together, one request each."""
    gate = threading.Barrier(n)
    results: list[GenTiming | Exception] = []
    lock = threading.Lock()

    def client() -> None:
        gate.wait()
        try:
            r: GenTiming | Exception = run_one(s, input_tokens, new_tokens)
        except Exception as exc:
            r = exc
        with lock:
            results.append(r)

    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def wait_until(pred, timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def test_cost_model_derived_values_match_reference():
    # Given the fitted parameters
    p = PerfParams()
    # When deriving prefill time, reservation and Bmax for the three benchmark prompts
    # Then they match performance-model.md section 3.2 (58 ms / 202 ms / 2.70 s; R 272 / 656 / 6416; 191 / 79 / 8)
    assert prefill_ms([129], p) == pytest.approx(58, abs=0.5)
    assert prefill_ms([513], p) == pytest.approx(202, abs=1)
    assert prefill_ms([6401], p) == pytest.approx(2700, abs=5)
    assert [reserved_tokens(n, 128, p) for n in (129, 513, 6401)] == [272, 656, 6416]
    assert [max_batch_size(n, 128, p) for n in (129, 513, 6401)] == [191, 79, 8]


def test_admission_rejects_with_overloaded_at_max_concurrent_requests():
    # Given a scheduler with 2 admission permits, both taken
    with TgiScheduler(time_scale=FAST, max_concurrent_requests=2) as s:
        held = [s.admit(), s.admit()]
        # When a third request arrives
        # Then it is rejected at once with TGI's 429 "Model is overloaded", and counted
        with pytest.raises(Overloaded, match="Model is overloaded"):
            s.admit()
        assert s.stats().overloaded == 1
        assert s.stats().in_flight == 2
        # And once a permit is released (e.g. validation failed after admission) a new request gets in
        held[0].release()
        assert s.stats().in_flight == 1
        s.admit()
        assert s.stats().in_flight == 2


def test_single_short_request_costs_about_33_ms_per_token(sched):
    # Given an idle endpoint
    # When one 129-token prompt generates 128 tokens (the seed's c = 1 row)
    t = run_one(sched, 129, 128)
    # Then it is not queued, its prefill takes ~58 ms, and latency is ~33 ms/token (seed: 32; model: 32.8)
    assert t.queue_ms == 0
    assert t.prefill_ms == pytest.approx(58, abs=0.5)
    assert t.generated_tokens == 128
    assert t.ms_per_token == pytest.approx(33.0, rel=0.10)


def test_generate_releases_its_permit(sched):
    # Given a request that runs to completion
    run_one(sched, 129, 8)
    # When it has returned
    # Then no admission slot is left held and it counts as completed
    st = sched.stats()
    assert (st.in_flight, st.completed, st.timeouts) == (0, 1, 0)


def test_generated_tokens_follow_the_caller_not_max_new_tokens(sched):
    # Given a request that stops at EOS after 10 tokens although max_new_tokens is 128
    t = run_one(sched, 129, 10, max_new_tokens=128)
    # When it finishes
    # Then it reports 10 generated tokens and costs one prefill + 9 decode rounds + overhead
    p = PerfParams()
    assert t.generated_tokens == 10
    assert t.total_ms == pytest.approx(prefill_ms([129], p) + 9 * 32.35 + p.overhead_ms, rel=0.02)


def test_kv_budget_caps_the_running_batch_at_eight_long_prompts():
    # Given 12 simultaneous 6,401-token prompts (R = 6,416 tokens each, M = 52,000 -> Bmax = 8),
    # long enough generations that the first ones still run when the 9th could start, and no 60 s limit
    with TgiScheduler(time_scale=100, timeout_s=3600) as s:
        peak = 0
        stop = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, s.stats().running)
                time.sleep(0.0005)

        w = threading.Thread(target=watch)
        w.start()
        # When they are served
        results = burst(s, 12, 6401, 600)
        stop.set()
        w.join()
    # Then all succeed, and exactly 8 ran at once: the rest queued for a KV slot
    assert all(isinstance(r, GenTiming) for r in results)
    assert peak == 8


def test_long_prompts_at_high_concurrency_time_out_and_are_cancelled():
    # Given 24 simultaneous 6,401-token prompts: prefills are serialised (2.7 s each) and KV fits 8.
    # A slower time_scale than FAST keeps the burst simultaneous in model time on a loaded CI host
    # (arrivals are stamped from the wall clock).
    sched = TgiScheduler(time_scale=50.0)
    # When they all ask for 128 tokens
    try:
        results = burst(sched, 24, 6401, 128)
        _assert_timeouts_cancelled(sched, results)
    finally:
        sched.close()


def _assert_timeouts_cancelled(sched: TgiScheduler, results: list) -> None:
    # Then some fail with the SageMaker 60 s container timeout, measured end to end in model time
    timeouts = [r for r in results if isinstance(r, ContainerTimeout)]
    assert len(results) == 24
    assert timeouts, "expected container timeouts"
    assert all(t.elapsed_ms == pytest.approx(60_000) for t in timeouts)
    assert all(isinstance(r, (GenTiming, ContainerTimeout)) for r in results)
    # And their work is dropped from the queue or the batch (cancel_on_timeout), releasing every slot
    assert wait_until(lambda: sched.stats().running == 0 and sched.stats().queued == 0)
    st = sched.stats()
    assert st.timeouts == len(timeouts)
    assert st.cancelled == len(timeouts)
    assert st.in_flight == 0


def test_without_cancellation_timed_out_work_keeps_its_slot_until_it_finishes():
    # Given an endpoint that keeps generating for disconnected callers (zombie work)
    with TgiScheduler(time_scale=FAST, timeout_s=5.0, cancel_on_timeout=False) as s:
        # When a single request needs more than the 5 s limit (1,000 tokens at ~33 ms)
        with pytest.raises(ContainerTimeout):
            run_one(s, 129, 1000)
        # Then the caller is released at the limit but the work still holds a permit and runs
        st = s.stats()
        assert (st.timeouts, st.cancelled, st.in_flight, st.running) == (1, 0, 1, 1)
        # And the permit is freed when the zombie generation ends
        assert wait_until(lambda: s.stats().in_flight == 0)
        assert s.stats().completed == 0


def test_time_scale_compresses_wall_time():
    # Given a scheduler running 20x faster than real time
    scale = 20.0
    with TgiScheduler(time_scale=scale) as s:
        # When one short request (~4.2 s of model time) is served
        t0 = time.monotonic()
        t = run_one(s, 129, 128)
        wall = time.monotonic() - t0
    # Then the wall time is about model/scale: far below real time, and not faster than the scale allows
    model_s = t.total_ms / 1000.0
    assert model_s == pytest.approx(4.19, rel=0.02)
    assert wall < model_s / 2
    assert wall > 0.8 * model_s / scale
