"""Real-time discrete-event emulation of the TGI 1.1.0 router/scheduler (Mistral 7B, one A10G).

One background thread advances a *model clock* one forward pass at a time (a prefill call or a decode
round, costed by ``perf_model``) and sleeps ``step / time_scale`` of wall time per step. Handler threads
call :meth:`TgiScheduler.admit` then :meth:`TgiScheduler.generate`, which parks them on an event until
the model says their request is done (or has hit the SageMaker 60 s limit).

Model time versus wall time:

* Wall and model time are linked by an anchor: ``model = m0 + (wall - w0) * time_scale``.
* The scheduler never runs more than ``_MIN_SLEEP_S`` of wall time ahead of that mapping (small sleeps
  are coalesced), and when Python overhead makes it fall behind, the anchor is moved at the end of the
  step, so the model clock pauses instead of charging the lag to requests. Latencies are therefore set
  by the cost model, not by the host CPU.
* An arrival is stamped with the model time of its wall arrival, clamped into the step in progress
  (it cannot be seen before the next step boundary, exactly as in TGI's batching loop).
* Deadlines (the 60 s limit) are fired by the scheduler thread at their exact model time, even in the
  middle of a long prefill.

Scheduler rules reproduced (performance-model.md section 2, TGI ``router/src/infer.rs``/``queue.rs``):
non-blocking admission semaphore (429), FIFO queue, prefill budget on 16-token blocks, KV budget
M - sum(R) with R(n) including the sliding-window rule, prefill pauses the whole running batch,
WAITING_SERVED_RATIO / MAX_WAITING_TOKENS concatenation rules, one decode round per step, no
preemption, cancelled queued entries skipped at ``next_batch``, cancelled running entries dropped at
their next token.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from sagebatch.tooling.emulator.perf_model import (
    PerfParams,
    ceil_block,
    decode_ms,
    decode_reservation,
    prefill_ms,
    reserved_tokens,
    windowed_context,
)

__all__ = [
    "ContainerTimeout",
    "GenTiming",
    "Overloaded",
    "PerfParams",
    "Permit",
    "SchedulerClosed",
    "SchedulerStats",
    "TgiScheduler",
]

# Sleeps shorter than this are skipped (coalesced into the next one): at a high time_scale the
# scheduler becomes CPU-bound instead of sleep-bound, and runs at most this far ahead of wall time.
_MIN_SLEEP_S = 0.001


class Overloaded(Exception):
    """TGI 429 "Model is overloaded": no admission permit was free."""

    def __init__(self, message: str = "Model is overloaded") -> None:
        super().__init__(message)


class ContainerTimeout(Exception):
    """The SageMaker 60 s invocation limit passed (end-to-end, queue time included)."""

    def __init__(self, elapsed_ms: float, timeout_s: float, stage: str, generated_tokens: int) -> None:
        super().__init__(
            f"invocation timed out after {elapsed_ms / 1000.0:.1f} s (limit {timeout_s:g} s) "
            f"while {stage}; {generated_tokens} tokens generated"
        )
        self.elapsed_ms = elapsed_ms  # model time
        self.timeout_s = timeout_s
        self.stage = stage  # "queued" or "running"
        self.generated_tokens = generated_tokens


class SchedulerClosed(RuntimeError):
    """The scheduler was closed while a request was waiting."""


@dataclass
class GenTiming:
    """Timings of one successful request, all in model milliseconds."""

    queue_ms: float  # arrival at the router -> start of the prefill call that took the request
    prefill_ms: float  # duration of that prefill call (it produced the first token)
    total_ms: float  # end-to-end as the SageMaker caller sees it, overhead included
    generated_tokens: int

    @property
    def ms_per_token(self) -> float:
        return self.total_ms / max(1, self.generated_tokens)


@dataclass(frozen=True)
class SchedulerStats:
    in_flight: int  # admission permits held (TGI queued + running, incl. zombie work)
    queued: int
    running: int
    completed: int
    timeouts: int
    overloaded: int
    cancelled: int  # timed-out work dropped from the queue or the batch
    model_time_ms: float


class Permit:
    """An admission slot. Pass it to :meth:`TgiScheduler.generate`, or :meth:`release` it if the
    request is rejected later (e.g. validation, which TGI runs after admission)."""

    __slots__ = ("_req", "_sched", "_slot_held")

    def __init__(self, sched: TgiScheduler) -> None:
        self._sched = sched
        self._slot_held = True
        self._req: _Req | None = None

    def release(self) -> None:
        """Give the slot back unless a request still holds it (it is freed when that work ends)."""
        self._sched._release_permit(self)

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_QUEUED, _RUNNING, _DONE, _DROPPED = "queued", "running", "done", "dropped"


class _Req:
    __slots__ = (
        "closed",
        "deadline",
        "decode_tokens",
        "event",
        "generated",
        "n_in",
        "n_new",
        "permit",
        "pf_ms",
        "prefill_tokens",
        "reserve",
        "rid",
        "state",
        "t_arr",
        "t_done",
        "t_start",
        "timed_out",
    )

    def __init__(
        self, rid: int, n_in: int, n_new: int, max_new: int, t_arr: float, deadline: float, permit: Permit, p: PerfParams
    ) -> None:
        self.rid = rid
        self.n_in = n_in
        self.n_new = n_new
        self.reserve = reserved_tokens(n_in, max_new, p)
        self.prefill_tokens = ceil_block(n_in, p.block)
        self.decode_tokens = ceil_block(decode_reservation(n_in, max_new, p.window), p.block)
        self.t_arr = t_arr
        self.deadline = deadline
        self.generated = 0
        self.t_start = 0.0
        self.pf_ms = 0.0
        self.t_done = 0.0
        self.state = _QUEUED
        self.timed_out = False
        self.event = threading.Event()
        self.permit = permit
        self.closed = False


class TgiScheduler:
    """Thread-safe real-time emulation of one TGI 1.1.0 shard; see the module docstring."""

    def __init__(
        self,
        params: PerfParams = PerfParams(),
        *,
        time_scale: float = 1.0,
        max_concurrent_requests: int = 128,
        timeout_s: float = 60.0,
        cancel_on_timeout: bool = True,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        if max_concurrent_requests < 1:
            raise ValueError("max_concurrent_requests must be >= 1")
        self.params = params
        self.time_scale = float(time_scale)
        self.max_concurrent_requests = max_concurrent_requests
        self.timeout_s = float(timeout_s)
        self.cancel_on_timeout = cancel_on_timeout

        self._cv = threading.Condition(threading.Lock())
        self._stop = threading.Event()
        self._closed = False
        self._ids = itertools.count()

        # wall <-> model mapping: model_ms = _m0 + (wall - _w0) * _ms_per_wall_s
        self._ms_per_wall_s = 1000.0 * self.time_scale
        self._w0 = time.monotonic()
        self._m0 = 0.0
        self._now = 0.0  # model time of the current decision point / step start
        self._step_end = 0.0  # end of the step in progress (== _now when idle)
        self._idle = True

        self._queue: deque[_Req] = deque()
        self._running: list[_Req] = []
        self._reserved = 0  # sum of R(n) over the running batch (TGI batch.max_tokens)
        self._waiting_tokens = 0
        self._must_decode = False  # a concatenated prefill is always followed by a decode round
        self._deadlines: list[tuple[float, int, _Req]] = []

        self._in_flight = 0
        self._completed = 0
        self._timeouts = 0
        self._overloaded = 0
        self._cancelled = 0

        self._thread = threading.Thread(target=self._run, name="tgi-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API

    def admit(self) -> Permit:
        """Take an admission permit without waiting; raise :class:`Overloaded` (TGI 429) if none is free."""
        with self._cv:
            if self._closed:
                raise SchedulerClosed("scheduler is closed")
            if self._in_flight >= self.max_concurrent_requests:
                self._overloaded += 1
                raise Overloaded()
            self._in_flight += 1
            return Permit(self)

    def generate(self, permit: Permit, input_tokens: int, new_tokens: int, *, max_new_tokens: int | None = None) -> GenTiming:
        """Block until the request would have finished on the emulated endpoint.

        ``new_tokens`` is how many tokens the request generates (EOS decided by the caller);
        ``max_new_tokens`` (default ``new_tokens``) is what TGI reserves KV for. Raises
        :class:`ContainerTimeout` when the end-to-end model time would pass ``timeout_s``. The permit
        is always released (for zombie work, when that work ends).
        """
        p = self.params
        try:
            if permit._sched is not self or not permit._slot_held or permit._req is not None:
                raise ValueError("permit is not a live, unused permit of this scheduler")
            max_new = new_tokens if max_new_tokens is None else max_new_tokens
            if input_tokens < 1 or new_tokens < 1 or max_new < new_tokens:
                raise ValueError("need input_tokens >= 1 and 1 <= new_tokens <= max_new_tokens")
            with self._cv:
                if self._closed:
                    raise SchedulerClosed("scheduler is closed")
                t_arr = self._stamp_arrival()
                deadline = t_arr + self.timeout_s * 1000.0 - p.overhead_ms
                req = _Req(next(self._ids), input_tokens, new_tokens, max_new, t_arr, deadline, permit, p)
                permit._req = req
                self._queue.append(req)
                heapq.heappush(self._deadlines, (deadline, req.rid, req))
                if self._idle:
                    self._cv.notify_all()
            req.event.wait()
            if req.closed:
                raise SchedulerClosed("scheduler closed while the request was in flight")
            if p.overhead_ms > 0:
                time.sleep(p.overhead_ms / 1000.0 / self.time_scale)
            if req.timed_out:
                raise ContainerTimeout(
                    self.timeout_s * 1000.0,
                    self.timeout_s,
                    "queued" if req.t_start == 0.0 and req.generated == 0 else "running",
                    req.generated,
                )
            return GenTiming(
                queue_ms=req.t_start - req.t_arr,
                prefill_ms=req.pf_ms,
                total_ms=req.t_done - req.t_arr + p.overhead_ms,
                generated_tokens=req.generated,
            )
        finally:
            permit.release()

    def now_ms(self) -> float:
        """Current model time (ms), as an arrival at this instant would be stamped."""
        with self._cv:
            return self._stamp_arrival()

    def stats(self) -> SchedulerStats:
        with self._cv:
            return SchedulerStats(
                in_flight=self._in_flight,
                queued=sum(1 for r in self._queue if r.state == _QUEUED),
                running=len(self._running),
                completed=self._completed,
                timeouts=self._timeouts,
                overloaded=self._overloaded,
                cancelled=self._cancelled,
                model_time_ms=self._stamp_arrival(),
            )

    def close(self) -> None:
        """Stop the scheduler thread; waiting callers get :class:`SchedulerClosed`."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            self._cv.notify_all()
        self._thread.join(timeout=5.0)
        with self._cv:
            for _, _, req in self._deadlines:
                if not req.event.is_set():
                    req.closed = True
                    req.event.set()
            self._deadlines.clear()

    def __enter__(self) -> TgiScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ clock mapping (lock held)

    def _model_of(self, wall: float) -> float:
        return self._m0 + (wall - self._w0) * self._ms_per_wall_s

    def _wall_of(self, model_ms: float) -> float:
        return self._w0 + (model_ms - self._m0) / self._ms_per_wall_s

    def _stamp_arrival(self) -> float:
        t = self._model_of(time.monotonic())
        if t < self._now:  # the scheduler ran slightly ahead of wall time (coalesced sleep)
            return self._now
        if not self._idle and t > self._step_end:  # the scheduler lags: seen at the step's end
            return self._step_end
        return t

    # ------------------------------------------------------------------ permits (lock held inside)

    def _release_permit(self, permit: Permit) -> None:
        with self._cv:
            req = permit._req
            if req is not None and req.state in (_QUEUED, _RUNNING) and not (req.timed_out and self.cancel_on_timeout):
                return  # still working (zombie); the scheduler frees the slot when it ends
            self._free_slot(permit)

    def _free_slot(self, permit: Permit) -> None:
        if permit._slot_held:
            permit._slot_held = False
            self._in_flight -= 1

    # ------------------------------------------------------------------ TGI queue.rs next_batch

    def _next_batch(self, min_size: int | None, token_budget: int) -> list[_Req]:
        q = self._queue
        if not q:
            return []
        if min_size is not None and len(q) < min_size:  # TGI counts entries before skipping dead ones
            return []
        p = self.params
        batch: list[_Req] = []
        pf = 0
        dec = 0
        while q:
            r = q[0]
            if r.state != _QUEUED:  # client gone: skipped and forgotten
                q.popleft()
                continue
            if r.t_arr > self._now:
                break
            pf += r.prefill_tokens
            dec += r.decode_tokens
            if pf > p.max_batch_prefill_tokens or pf + dec > token_budget:
                break
            batch.append(q.popleft())
        if min_size is not None and len(batch) < min_size:
            q.extendleft(reversed(batch))
            return []
        return batch

    # ------------------------------------------------------------------ TGI infer.rs batching_task

    def _plan_step(self) -> tuple[str, list[_Req], float] | None:
        """Choose the next forward pass at model time ``_now``; None when there is nothing to do."""
        p = self.params
        if self._running:
            if not self._must_decode:
                if self._waiting_tokens >= p.max_waiting_tokens:
                    min_size = None
                else:
                    min_size = math.floor(len(self._running) * p.waiting_served_ratio)
                batch = self._next_batch(min_size, p.max_batch_total_tokens - self._reserved)
                if batch:
                    self._must_decode = True
                    return self._start_prefill(batch)
            self._must_decode = False
            ctx = sum(windowed_context(r.n_in + r.generated, p.window) for r in self._running)
            return "decode", list(self._running), decode_ms(len(self._running), ctx, p)
        # idle TGI: the first arrival wakes the batching task, which takes what fits
        while self._queue and self._queue[0].state != _QUEUED:
            self._queue.popleft()
        if not self._queue:
            return None
        self._now = max(self._now, self._queue[0].t_arr)
        batch = self._next_batch(None, p.max_batch_total_tokens)
        if not batch:
            return None  # head request can never fit (M or the prefill budget too small): it waits
        self._must_decode = False
        return self._start_prefill(batch)

    def _start_prefill(self, batch: list[_Req]) -> tuple[str, list[_Req], float]:
        for r in batch:
            r.state = _RUNNING
            r.t_start = self._now
            self._reserved += r.reserve
        dt = prefill_ms((r.n_in for r in batch), self.params)
        for r in batch:
            r.pf_ms = dt
        return "prefill", batch, dt

    def _finish_step(self, kind: str, reqs: list[_Req]) -> None:
        """Apply a finished forward pass at model time ``_now`` (lock held).

        Every request in the pass gets one token. A timed-out request (cancel mode) is dropped at that
        token's send, a finished one leaves the batch and frees its KV reservation.
        """
        t = self._now
        self._waiting_tokens = 1 if kind == "prefill" else self._waiting_tokens + 1
        for r in reqs:
            if r.state != _RUNNING:
                continue
            r.generated += 1
            if r.timed_out and self.cancel_on_timeout:
                r.state = _DROPPED
                self._cancelled += 1
            elif r.generated >= r.n_new:
                r.state = _DONE
                r.t_done = t
                if not r.timed_out:
                    self._completed += 1
                    r.event.set()
                self._free_slot(r.permit)
        if kind == "prefill":
            for r in reqs:
                if r.state == _RUNNING:
                    self._running.append(r)
                else:
                    self._reserved -= r.reserve
        else:
            keep = []
            for r in self._running:
                if r.state == _RUNNING:
                    keep.append(r)
                else:
                    self._reserved -= r.reserve
            self._running = keep
        if not self._running:
            self._must_decode = False

    def _fire_deadlines(self, upto: float) -> None:
        """Time out every live request whose deadline is <= ``upto`` (lock held)."""
        dl = self._deadlines
        while dl and dl[0][0] <= upto:
            _, _, r = heapq.heappop(dl)
            if r.state not in (_QUEUED, _RUNNING) or r.timed_out:
                continue
            r.timed_out = True
            self._timeouts += 1
            r.event.set()
            if self.cancel_on_timeout:
                self._free_slot(r.permit)  # the client disconnected: the handler drops its permit
                if r.state == _QUEUED:
                    r.state = _DROPPED  # skipped at the next next_batch
                    self._cancelled += 1

    def _next_deadline(self) -> float | None:
        dl = self._deadlines
        while dl and (dl[0][2].state not in (_QUEUED, _RUNNING) or dl[0][2].timed_out):
            heapq.heappop(dl)
        return dl[0][0] if dl else None

    # ------------------------------------------------------------------ scheduler thread

    def _run(self) -> None:
        cv = self._cv
        while True:
            with cv:
                if self._closed:
                    return
                step = self._plan_step()
                if step is None:
                    self._idle = True
                    self._step_end = self._now
                    nd = self._next_deadline()
                    if nd is None:
                        cv.wait()
                    else:  # only a request that can never be scheduled: let it time out
                        cv.wait(max(0.0, self._wall_of(nd) - time.monotonic()))
                        if self._model_of(time.monotonic()) >= nd:
                            self._now = max(self._now, nd)
                            self._fire_deadlines(self._now)
                    continue
                self._idle = False
                kind, reqs, dt = step
                t_end = self._now + dt
                self._step_end = t_end
            if not self._advance_to(t_end):
                return
            with cv:
                self._now = t_end
                self._finish_step(kind, reqs)

    def _advance_to(self, t_end: float) -> bool:
        """Sleep until model time ``t_end``, firing deadlines on the way; False if closed."""
        cv = self._cv
        while True:
            with cv:
                if self._closed:
                    return False
                nd = self._next_deadline()
                target = t_end if nd is None or nd > t_end else nd
                delay = self._wall_of(target) - time.monotonic()
            if delay > _MIN_SLEEP_S:
                if self._stop.wait(delay):
                    return False
            with cv:
                if target < t_end:
                    self._fire_deadlines(target)
                    continue
                self._fire_deadlines(t_end)
                wall = time.monotonic()
                if wall > self._wall_of(t_end):  # lagging: pause the model clock instead
                    self._m0, self._w0 = t_end, wall
                return True
