"""SlotShare: this execution environment's share of the endpoint's concurrency, re-divided as environments with
work come and go.

Each worker environment that has work registers itself (a heartbeat every `refresh_s`, lapsing after three) and
sizes its limiter to the endpoint's cap divided by the environments registered now: one environment alone (a
small job, the end of a job) gets all 120 slots, two get 60 each. A newcomer that finds others registered starts
with only the margin below TGI's limit (8 slots) for one refresh interval, so that the environments already
running have shrunk their share before it grows: the sum stays under TGI's 128. Cost: one write and one query per environment per
`refresh_s`, whatever the number of records.
"""

from __future__ import annotations

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
        self._joined_at: float | None = None
        self._lock = threading.Lock()

    def refresh(self) -> int:
        """Renew this environment's registration and resize its limiter to its share; returns the sharers."""
        now = self.clock()
        sharers = max(1, self.registry.heartbeat(self.environment, now + 3 * self.refresh_s, now))
        with self._lock:
            if self._joined_at is None:
                self._joined_at = now
            # Alone, there is no one to wait for; beside others, wait until they have seen us and shrunk.
            newcomer = sharers > 1 and now - self._joined_at < self.refresh_s
            slots = min(self.newcomer_slots, self.cap) if newcomer else max(1, self.cap // sharers)
            # The long-prompt bulkhead (what TGI's KV cache holds of 6,400-token prompts) is the endpoint's, not
            # each environment's: divided too.
            long_slots = 1 if newcomer else max(1, LimiterSettings().max_long_inflight or 8) // sharers
            values: dict[str, Any] = {"max_long_inflight": max(1, long_slots), **self.overrides}
            settings = LimiterSettings.for_endpoint(slots, margin=0, sharers=1, **values)
            if settings != self.store.settings:
                self.store.resize(settings)
            self.sharers = sharers
        return sharers

    def leave(self) -> None:
        with self._lock:
            self._joined_at = None
        self.registry.leave(self.environment)

    @contextmanager
    def holding(self) -> Iterator[SlotShare]:
        """Registered (and refreshed every `refresh_s`) for the duration of the block; gone at its end."""
        stop = threading.Event()
        self.refresh()

        def beat() -> None:
            while not stop.wait(self.refresh_s / 2):
                try:
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
