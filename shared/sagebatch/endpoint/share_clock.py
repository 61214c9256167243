"""ShareClock: each endpoint attempt's share of the endpoint's time and of its worker's time (README "Cost").

Nothing outside one execution environment is observable from inside it, so the shares are defined on what is:

- the environment's *slice* of the endpoint, s = its limiter's in-flight cap / the endpoint's cap
  (`EndpointMaxConcurrency`): 1 / `WorkerMaxConcurrency` with today's static split, 1 / (environments with work)
  once the limiter is sized by `SlotShare`;
- its attempts in flight, n(t).

While n >= 1, each attempt in flight accrues dt / n of *worker* time and s * dt / n of *endpoint* time (processor
sharing: the environment's time, and its slice of the endpoint, split evenly among its attempts). Summed over a
job's attempts: `worker_seconds` is the time the environment spent with that job's calls in flight, and
`endpoint_seconds` the job's share of the endpoint's time. Exact bookkeeping, no sampling: a virtual clock
advanced at every start and stop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Shares:
    endpoint_seconds: float = 0.0
    worker_seconds: float = 0.0

    def __add__(self, other: Shares) -> Shares:
        return Shares(self.endpoint_seconds + other.endpoint_seconds, self.worker_seconds + other.worker_seconds)


class ShareClock:
    """Thread-safe; one per execution environment (the `AdaptiveCaller` holds it)."""

    def __init__(self, clock: Callable[[], float], endpoint_slice: Callable[[], float] = lambda: 1.0):
        self._clock = clock
        self._slice = endpoint_slice
        self._lock = threading.Lock()
        self._in_flight = 0
        self._worker = 0.0  # integral of dt / n
        self._endpoint = 0.0  # integral of s dt / n
        self._last = clock()

    def start(self) -> Shares:
        """An attempt starts; returns the mark `stop` needs."""
        with self._lock:
            self._advance()
            self._in_flight += 1
            return Shares(self._endpoint, self._worker)

    def stop(self, mark: Shares) -> Shares:
        """The attempt started at `mark` ended (answer or error): its shares."""
        with self._lock:
            self._advance()
            self._in_flight = max(0, self._in_flight - 1)
            return Shares(self._endpoint - mark.endpoint_seconds, self._worker - mark.worker_seconds)

    def _advance(self) -> None:
        now = self._clock()
        if self._in_flight:
            elapsed = max(0.0, now - self._last)
            self._worker += elapsed / self._in_flight
            self._endpoint += elapsed * min(1.0, max(0.0, self._slice())) / self._in_flight
        self._last = now
