"""TimeBudget: how long an invocation has left, and whether it may still start an endpoint call.

A Lambda invocation that runs past its timeout is killed: its calls in flight are paid for and lost, its shards come
back only after the visibility timeout. So an endpoint call starts only while the invocation has more time left than
the worst case of one call (`reserve_s`: SageMaker's 60 s limit plus the time to store the answer and hand the
shard back); waiting for a slot (the limiter) or before a retry (backoff) may use only the time above the reserve.

Remaining time only shrinks, so once the budget has refused a call it refuses every later one without looking at
the clock again (`spent`): records still queued in the invocation then go back at once and cheaply.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

# The worst case of one attempt is the runtime client's: 5 s to connect and 70 s to read (SageMaker itself gives up
# after 60 s); 15 s more to store the answer, checkpoint and hand the shard back.
DEFAULT_CALL_TIME_RESERVE_S = 90.0


class OutOfTime(Exception):
    """This invocation may not start (or wait for) an endpoint call any more: the record is to be continued by a
    later delivery, not failed."""


class TimeBudget:
    """The time left to an invocation, read from `remaining_s` (seconds, e.g. the Lambda context's)."""

    def __init__(self, remaining_s: Callable[[], float], reserve_s: float):
        self._remaining_s = remaining_s
        self.reserve_s = reserve_s
        self._spent = False

    @classmethod
    def unlimited(cls) -> TimeBudget:
        """No deadline (tests and tools that run a shard outside Lambda)."""
        return cls(lambda: math.inf, 0.0)

    @classmethod
    def until(cls, ends_at: float, reserve_s: float, clock: Callable[[], float] = time.monotonic) -> TimeBudget:
        """A budget that ends at `ends_at` on `clock`."""
        return cls(lambda: ends_at - clock(), reserve_s)

    @classmethod
    def starting_now(cls, seconds: float, reserve_s: float, clock: Callable[[], float] = time.monotonic) -> TimeBudget:
        return cls.until(clock() + seconds, reserve_s, clock)

    def remaining(self) -> float:
        return self._remaining_s()

    def allows(self, seconds: float) -> bool:
        """Is there more than `seconds` left?"""
        return self.remaining() > seconds

    @property
    def spent(self) -> bool:
        """True once a call was refused: no later call can start either."""
        return self._spent

    def call_room(self) -> float:
        """Seconds that may still pass before a call must have started (0 when none may start any more)."""
        if self._spent:
            return 0.0
        room = self.remaining() - self.reserve_s
        if room <= 0:
            self._spent = True
            return 0.0
        return room

    def allows_call(self) -> bool:
        """May an endpoint call start now?"""
        return self.call_room() > 0

    def check_call(self) -> float:
        """The room left for a call that is about to start (or wait); raises OutOfTime when there is none."""
        room = self.call_room()
        if room <= 0:
            raise OutOfTime(f"less than {self.reserve_s:g} s left: no endpoint call may start in this invocation")
        return room
