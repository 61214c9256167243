"""WorkerInvocation: one invocation of the worker, keeping the environment's endpoint slots full across shard and
batch boundaries.

The SQS event source hands an invocation a batch of shard messages. They run at the same time: their records
share the environment's record pool and its limiter, so a shard's slow last records never leave slots idle while
another shard has records waiting. While the invocation has time and few records are waiting for a slot, it takes
more shards from the work queue itself (`WorkSource`), runs them the same way and deletes each when done; the
endpoint does not wait for the next batch, and the tail of idle slots comes once per invocation (minutes), not once
per shard. A shard that cannot finish in this invocation goes back: an event record as a batch item failure, a
message taken here by being made visible again (its receive count goes on, as for any redelivery).

The invocation's `TimeBudget` is handed to every shard (and so to every endpoint call): nothing is taken from the
queue, and no call starts, once less than the reserve is left, so the invocation returns before its timeout.
A receive that finds the queue empty is not repeated for `empty_queue_pause_s` (each is a billed request, and the
event source delivers new shards anyway).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from sagebatch.domain.messages import Shard
from sagebatch.domain.time_budget import DEFAULT_CALL_TIME_RESERVE_S, TimeBudget
from sagebatch.observability import logger
from sagebatch.ports import WorkItem, WorkSource
from sagebatch.usecases.worker import ShardOutcome, ShardProcessor

# maxReceiveCount is 5: on the 4th delivery retryable failures are recorded as failed results, leaving one spare
# delivery for a crash, so no record waits in the DLQ without a result.
FINAL_ATTEMPT_RECEIVE_COUNT = 4
# After an empty receive, how long the invocation waits before asking the work queue again.
EMPTY_QUEUE_PAUSE_S = 5.0


@dataclass(frozen=True)
class Delivery:
    """A shard message this invocation holds: one of its event's records (`item` None) or one it took itself."""

    message_id: str
    body: str
    receive_count: int
    item: WorkItem | None = None


OnShard = Callable[[Delivery, ShardOutcome | None, BaseException | None, float], None]


@dataclass
class InvocationReport:
    failed_message_ids: set[str]  # the event's own records to hand back (batchItemFailures)
    outcomes: list[tuple[Delivery, ShardOutcome | None, BaseException | None]]
    taken: int = 0  # shards taken from the queue by this invocation


class WorkerInvocation:
    def __init__(
        self,
        processor: ShardProcessor,
        source: WorkSource | None,
        max_shards: int = 16,
        empty_queue_pause_s: float = EMPTY_QUEUE_PAUSE_S,
        call_time_reserve_s: float = DEFAULT_CALL_TIME_RESERVE_S,
    ):
        self._processor = processor
        self.call_time_reserve_s = call_time_reserve_s
        self._source = source
        self._max_shards = max(1, max_shards)
        self._empty_queue_pause_s = empty_queue_pause_s
        self._pool = ThreadPoolExecutor(max_workers=self._max_shards, thread_name_prefix="shard")

    def time_budget(self, remaining_s: Callable[[], float]) -> TimeBudget:
        """The budget of an invocation whose remaining time `remaining_s()` tells (the Lambda context's)."""
        return TimeBudget(remaining_s, self.call_time_reserve_s)

    def run(
        self,
        deliveries: list[Delivery],
        budget: TimeBudget,
        wants_more: Callable[[], bool] = lambda: False,
        on_shard: OnShard | None = None,
        clock: Callable[[], float] | None = None,
    ) -> InvocationReport:
        """Run the event's shards within `budget`, and more from the queue while it allows calls and `wants_more()`."""
        now = clock or time.monotonic
        waiting: deque[Delivery] = deque(deliveries)
        running: dict[Future[ShardOutcome], tuple[Delivery, float]] = {}
        report = InvocationReport(set(), [])
        next_receive_at = now()
        while waiting or running:
            while waiting and len(running) < self._max_shards:
                delivery = waiting.popleft()
                running[self._pool.submit(self._process, delivery, budget)] = (delivery, now())
            if (
                self._source is not None
                and not waiting
                and len(running) < self._max_shards
                and now() >= next_receive_at
                and budget.allows_call()
                and wants_more()
            ):
                taken = self._source.receive(min(10, self._max_shards - len(running)))
                report.taken += len(taken)
                waiting.extend(Delivery(i.message_id, i.body, i.receive_count, i) for i in taken)
                if taken:
                    continue
                next_receive_at = now() + self._empty_queue_pause_s
            finished, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in finished:
                delivery, started = running.pop(future)
                error = future.exception()
                if error is not None and not isinstance(error, Exception):
                    raise error  # the process is going down (a crash): the whole invocation fails, as Lambda sees it
                outcome = None if error is not None else future.result()
                self._settle(delivery, error, report)
                report.outcomes.append((delivery, outcome, error))
                if on_shard is not None:
                    on_shard(delivery, outcome, error, now() - started)
        return report

    def _process(self, delivery: Delivery, budget: TimeBudget) -> ShardOutcome:
        shard = Shard.model_validate_json(delivery.body)
        return self._processor.process(shard, final_attempt=delivery.receive_count >= FINAL_ATTEMPT_RECEIVE_COUNT, budget=budget)

    def _settle(self, delivery: Delivery, error: BaseException | None, report: InvocationReport) -> None:
        if error is not None:
            logger.info("shard handed back", extra={"message_id": delivery.message_id, "reason": type(error).__name__})
        if delivery.item is None:
            if error is not None:
                report.failed_message_ids.add(delivery.message_id)
            return
        assert self._source is not None
        if error is None:
            self._source.done(delivery.item)
        else:
            self._source.release(delivery.item)
