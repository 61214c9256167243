"""Leases: one live holder at a time; a second copy waits for the first to finish or for a dead holder's lease."""

from __future__ import annotations

import threading
import time

import pytest

from sagebatch.usecases.lease import Busy, Lease


class MemoryLeaseStore:
    """The conditional write JobStore.acquire_lease makes, in memory."""

    def __init__(self) -> None:
        self.owner: str | None = None
        self.until = 0.0
        self.acquires = 0
        self._lock = threading.Lock()

    def acquire(self, owner: str, seconds: float) -> bool:
        with self._lock:
            self.acquires += 1
            now = time.time()
            if self.owner in (None, owner) or self.until < now:
                self.owner, self.until = owner, now + seconds
                return True
            return False

    def release(self, owner: str) -> None:
        with self._lock:
            if self.owner == owner:
                self.until = 0.0


def test_a_second_holder_is_refused_while_the_first_holds_the_lease():
    # Given a lease held by one worker
    store = MemoryLeaseStore()
    with Lease(store, seconds=30):
        # When a second worker tries to take it without waiting; Then it is told the work is busy
        with pytest.raises(Busy):
            Lease(store, seconds=30).acquire_or_wait(done=lambda: False, may_wait=lambda: False)


def test_a_second_copy_waits_and_finds_the_work_done():
    # Given a holder that finishes its work after 0.3 s
    store, finished = MemoryLeaseStore(), threading.Event()

    def holder() -> None:
        with Lease(store, seconds=30):
            time.sleep(0.3)
            finished.set()

    thread = threading.Thread(target=holder)
    thread.start()
    time.sleep(0.05)
    # When a second copy arrives meanwhile
    took_over = Lease(store, seconds=30).acquire_or_wait(done=finished.is_set, may_wait=lambda: True, poll_s=0.05)
    thread.join()
    # Then it does not take the work: the first copy did it
    assert took_over is False


def test_a_dead_holders_lease_lapses_and_is_taken_over():
    # Given a lease taken by a worker that died without releasing it (no heartbeat, 0.3 s lease)
    store = MemoryLeaseStore()
    assert Lease(store, seconds=0.3).try_acquire()
    # When a redelivery asks for it
    started = time.monotonic()
    lease = Lease(store, seconds=0.3)
    took_over = lease.acquire_or_wait(done=lambda: False, may_wait=lambda: True, poll_s=0.05)
    # Then it takes over once the lease has lapsed
    assert took_over is True and store.owner == lease.owner
    assert time.monotonic() - started >= 0.2


def test_the_heartbeat_keeps_a_live_holders_lease_past_its_length():
    # Given a holder with a 0.3 s lease that works for 1 s
    store = MemoryLeaseStore()
    with Lease(store, seconds=0.3) as lease:
        time.sleep(1.0)
        # Then nobody else could take it meanwhile, and the holder still holds it
        assert not Lease(store, seconds=0.3).try_acquire()
        assert lease.held
    # And on exit it is released at once
    assert Lease(store, seconds=0.3).try_acquire()
