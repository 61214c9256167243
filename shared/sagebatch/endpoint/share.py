"""SlotShare: this execution environment's share of the endpoint's concurrency, re-divided as environments with
work come and go.

Each worker environment that has work registers itself with a heartbeat every `refresh_s` (lapsing after three),
announcing the slots it may hold until its next heartbeat: its share, or more while requests admitted under a
larger share are still in flight. It sizes its limiter to the smaller of its fair share (the endpoint's cap divided
by the environments registered) and what the others' announcements leave of the cap. An environment alone (a small
job, the end of a job) gets all 120 slots; two get 60 each.

It announces a new share before it uses it (a second write, only when its share changes), so what the others read
bounds what it holds. A newcomer announces only the margin below TGI's limit (8 slots) at first, and grows as the others
drain to their new share, not before: the sum stays under TGI's 128. Cost: one write and one query per environment
per `refresh_s` (and a write when its share changes), whatever the number of records.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sagebatch.endpoint.limiter import InMemoryLimiterStore, LimiterSettings
from sagebatch.ports import EnvironmentRegistry


class SlotShare:
    def __init__(
        self,
        registry: EnvironmentRegistry,
        store: InMemoryLimiterStore,
        endpoint_max_concurrency: int,
        *,
        newcomer_slots: int = 8,
        refresh_s: float = 10.0,
        overrides: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        environment: str | None = None,
    ):
        self.registry = registry
        self.store = store
        self.cap = endpoint_max_concurrency
        self.newcomer_slots = newcomer_slots
        self.refresh_s = refresh_s
        self.overrides = overrides or {}
        self.clock = clock
        self.environment = environment or uuid.uuid4().hex
        self.sharers: int | None = None
        # The share in use; announced (with what is in flight above it) at each heartbeat. A newcomer's first
        # heartbeat announces only the margin below TGI's limit.
        self._slots = min(newcomer_slots, endpoint_max_concurrency)
        self._fair = self._slots
        self._announced = 0
        self._refreshed_at = -math.inf
        self._lock = threading.Lock()

    def refresh(self) -> int:
        """Renew this environment's registration and resize its limiter to its share; returns the sharers."""
        now = self.clock()
        until = now + 3 * self.refresh_s
        with self._lock:
            # What this environment may hold until its next heartbeat: its share, or what is still in flight.
            announced = max(self._slots, self.store.snapshot().inflight_count)
        holdings = self.registry.heartbeat(self.environment, until, now, announced)
        others = {name: held for name, held in holdings.items() if name != self.environment}
        sharers = len(others) + 1
        # Alone: every slot. Beside others: the fair share, and never more than the others' announcements leave.
        slots = max(1, min(self.cap // sharers, self.cap - sum(others.values()))) if others else self.cap
        # Announce a change before using it: a larger share, so that the others leave room for it; a smaller one, so
        # that they may grow as soon as what is in flight here drains.
        holding = max(slots, self.store.snapshot().inflight_count)
        if holding != announced:
            self.registry.heartbeat(self.environment, until, now, holding)
        with self._lock:
            self._slots = slots
            self._fair = self.cap // sharers
            self._announced = holding
            self._refreshed_at = now
            # The long-prompt bulkhead (what TGI's KV cache holds of 6,400-token prompts) is the endpoint's, not
            # each environment's: divided in proportion.
            long_slots = max(1, (LimiterSettings().max_long_inflight or 8) * slots // self.cap)
            # The share starts full: TGI's admission (128, above our cap) and the long-prompt bulkhead bound what may
            # go wrong, and the limiter still backs off on every 429, timeout and slow answer. Probing up from a
            # fraction cost a 200-record job 14 % of its throughput (bench/pipeline.py, small job).
            values: dict[str, Any] = {"max_long_inflight": long_slots, "initial_limit": float(slots), **self.overrides}
            settings = LimiterSettings.for_endpoint(slots, margin=0, sharers=1, **values)
            if settings != self.store.settings:
                self.store.resize(settings)
            self.sharers = sharers
        return sharers

    def changing(self) -> bool:
        """Is this environment's share on its way to the fair one? It waits for room to grow into, or it holds less
        than it announced (the others wait for it to say so)."""
        with self._lock:
            in_flight = self.store.snapshot().inflight_count
            return self._slots < self._fair or self._announced > max(self._slots, in_flight)

    def leave(self) -> None:
        with self._lock:
            self._slots = min(self.newcomer_slots, self.cap)  # a later invocation comes back as a newcomer
        self.registry.leave(self.environment)

    @contextmanager
    def holding(self) -> Iterator[SlotShare]:
        """Registered (and refreshed every `refresh_s`) for the duration of the block; gone at its end."""
        stop = threading.Event()
        self.refresh()

        def beat() -> None:
            # A heartbeat every half interval; while a share is changing (an environment came or went), one every
            # tenth, so a newcomer grows as soon as the others have drained (a join then costs the endpoint a few
            # seconds of a few idle slots instead of an interval of half of them; bench/pipeline.py, local).
            while not stop.wait(self.refresh_s / 10):
                try:
                    if self.clock() - self._refreshed_at >= self.refresh_s / 2 or self.changing():
                        self.refresh()
                except Exception:  # a missed heartbeat only delays a resize; the next one tries again
                    continue

        thread = threading.Thread(target=beat, name="slot-share", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=5)
            self.leave()
