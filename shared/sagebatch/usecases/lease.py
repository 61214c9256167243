"""Leases: at most one live worker runs a piece of work (a shard, a job's enqueueing) at a time.

SQS delivers at least once, sometimes two copies at the same moment; without a claim both copies would call the
endpoint for the same records. A lease is a short claim (`seconds`) renewed by a heartbeat while the work runs,
so a crashed holder's claim lapses within `seconds` and a redelivery can take over, while a live holder keeps it.

The store is anything with `acquire(owner, seconds) -> bool` (take or renew, conditional on the lease being free,
lapsed or already ours) and `release(owner)` (sagebatch.ports.Lease); `LeaseStore.lease(job_id, name)` gives one.
No AWS here.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from sagebatch.ports import Lease as LeaseItem


class Busy(Exception):
    """Another live worker holds the lease; this delivery should come back later."""


class Lease:
    """Hold a lease for the duration of a `with` block, renewing it every third of its length.

    `held` turns False if a renewal finds the lease taken over (this holder stalled past its expiry): the caller
    should stop starting new work. `release` on exit lets a redelivery proceed at once instead of after expiry,
    unless the work was `finished()`: then whoever comes next finds it done (asking while the lease is still held,
    or once it lapsed), and the release would be a write nobody needs.
    """

    def __init__(self, store: LeaseItem, seconds: float):
        self._store = store
        self.seconds = seconds
        self.owner = uuid.uuid4().hex
        self.held = False
        self._finished = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def try_acquire(self) -> bool:
        self.held = self._store.acquire(self.owner, self.seconds)
        return self.held

    def acquire_or_wait(self, done: Callable[[], bool], may_wait: Callable[[], bool], poll_s: float = 0.25) -> bool:
        """Take the lease; while another holder has it, poll until the work is `done` (returns False: nothing to
        do) or the lease lapses (taken over). Raises `Busy` when `may_wait()` turns False first."""
        give_up = time.monotonic() + self.seconds + 2 * poll_s  # a dead holder's lease lapses within `seconds`
        waited = False
        while not self.try_acquire():
            if done():
                return False
            if not may_wait() or time.monotonic() > give_up:
                raise Busy("another worker holds the lease")
            waited = True
            time.sleep(poll_s)
        if waited and done():  # the holder finished and released between two polls
            self._store.release(self.owner)
            self.held = False
            return False
        return True

    def finished(self) -> None:
        """The work is done and recorded where a newcomer looks first: stop renewing, and do not release on exit
        (a write nobody needs; the lease lapses within `seconds`)."""
        self._finished = True
        self._stop.set()

    def __enter__(self) -> Lease:
        if not self.held and not self.try_acquire():
            raise Busy("another worker holds the lease")
        self._heartbeat = threading.Thread(target=self._renew_until_stopped, name="lease-heartbeat", daemon=True)
        self._heartbeat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self._finished:
            return
        try:
            self._store.release(self.owner)
        except Exception:
            pass

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.held = self._store.acquire(self.owner, self.seconds)
            except Exception:
                continue
            if not self.held:
                return
