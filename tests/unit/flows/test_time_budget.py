"""Workers never run past their invocation's time: every endpoint call starts only with more than the reserve left,
and what could not start is handed back and finished by a later delivery, paid for once.

The endpoint here takes simulated time (a clock the test owns: 40 s per call, one call at a time), behind the real
AdaptiveCaller and limiter, so "time" is exact and nothing sleeps.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from sagebatch.domain.generation import Generation
from sagebatch.domain.job import JobStatus
from sagebatch.domain.time_budget import OutOfTime, TimeBudget
from sagebatch.endpoint.caller import AdaptiveCaller
from sagebatch.endpoint.limiter import AdaptiveLimiter, InMemoryLimiterStore, LimiterSettings
from sagebatch.endpoint.retry import RetryBudget, RetryPolicy
from sagebatch.fakes import FakeAws, FakeEndpointCaller, InMemoryWorkSource, Pipeline, build_pipeline, drive, fake_settings
from sagebatch.usecases.batch import Delivery, InvocationReport, WorkerInvocation
from tests.unit.flows.helpers import job_of, message, results_of

CALL_SECONDS = 40.0  # a long prompt's call
RESERVE_S = 75.0  # the worst case of one call: no call starts with less than this left
INVOCATION_S = 340.0  # room for seven 40 s calls one after another: they start at 0, 40, ..., 240 s


class SimClock:
    def __init__(self) -> None:
        self._now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@dataclass
class SlowEndpoint:
    """A SingleAttemptEndpoint whose every request takes CALL_SECONDS of the clock, and that notes how much of the
    running invocation's time was left when each request started."""

    clock: SimClock
    ends_at: float = 0.0  # the running invocation's deadline on the clock
    started: list[tuple[str, float]] = field(default_factory=list)  # (the request's inputs, seconds left)

    def invoke_once(self, payload: dict[str, Any]) -> Generation:
        self.started.append((json.dumps(payload, sort_keys=True), self.ends_at - self.clock()))
        self.clock.advance(CALL_SECONDS)
        return FakeEndpointCaller.default_answer(payload)


@pytest.fixture
def clock() -> SimClock:
    return SimClock()


@pytest.fixture
def endpoint(clock: SimClock) -> SlowEndpoint:
    return SlowEndpoint(clock)


@pytest.fixture
def pipeline(clock: SimClock, endpoint: SlowEndpoint):
    # A context so small that the document record is answered with map_reduce in several chunk calls.
    aws = FakeAws.create(fake_settings(shard_records=4, max_input_length=160, max_total_tokens=200, default_max_new_tokens=8))
    limiter = AdaptiveLimiter(InMemoryLimiterStore(LimiterSettings()), clock=clock)
    caller = AdaptiveCaller(endpoint, limiter, RetryPolicy(budget=RetryBudget()), clock=clock, sleep=clock.advance)
    # One record and one chunk call at a time: the calls follow each other on the clock, 40 s apart.
    built = build_pipeline(aws, caller=caller, in_flight=1)
    yield built
    built.close()


def document_record() -> dict[str, Any]:
    return {
        "instruction": "Summarise the passage.",
        "document": " ".join(f"Paragraph {n} says something short about the number {n}." for n in range(18)),
        "parameters": {"max_new_tokens": 8},
    }


def invoke(
    pipeline: Pipeline, endpoint: SlowEndpoint, clock: SimClock, deliveries: list[Delivery]
) -> tuple[InvocationReport, float]:
    """One worker invocation of INVOCATION_S on the clock; returns its report and the clock when it returned."""
    endpoint.ends_at = clock() + INVOCATION_S
    budget = TimeBudget.until(endpoint.ends_at, RESERVE_S, clock)
    invocation = WorkerInvocation(pipeline.worker, InMemoryWorkSource(pipeline.aws.work), max_shards=1)
    report = invocation.run(deliveries, budget)
    return report, clock()


def receive_all(pipeline: Pipeline) -> list[Delivery]:
    deliveries = []
    while (received := pipeline.aws.work.receive()) is not None:
        deliveries.append(Delivery(f"m-{len(deliveries)}-{received.receive_count}", received.body, received.receive_count))
    return deliveries


def hand_back(pipeline: Pipeline, deliveries: list[Delivery], report: InvocationReport) -> None:
    """What SQS does with an invocation's batch item failures: they become visible again."""
    for delivery in deliveries:
        if delivery.message_id in report.failed_message_ids:
            pipeline.aws.work.put_body(delivery.body)


def test_an_invocation_short_of_time_hands_back_what_it_cannot_call_and_the_next_finishes_it(
    pipeline: Pipeline, endpoint: SlowEndpoint, clock: SimClock
) -> None:
    # Given a job of two shards (lines 1-4, 5-8) whose line 6 is a document answered in several chunk calls, on an
    # endpoint taking 40 s a call, and worker invocations of 340 s with a 75 s reserve (seven calls' time each)
    records = [{"prompt": f"long question {n}"} for n in range(1, 9)]
    records[5] = document_record()
    pipeline.intake.handle_message(message(job_id="j", records=records), "m-1")

    # When a first invocation is handed both shards
    first = receive_all(pipeline)
    report, returned_at = invoke(pipeline, endpoint, clock, first)
    paid_in_first = len(endpoint.started)

    # Then it made the seven calls it had time for, none with less than the reserve left, and returned in time
    assert paid_in_first == 7
    assert min(left for _, left in endpoint.started) > RESERVE_S
    assert returned_at <= INVOCATION_S
    # And the first shard is done while the second came back, with the answer it paid for checkpointed
    assert report.failed_message_ids == {first[1].message_id}
    assert sorted(pipeline.aws.results.load_shard("j", 1)) == [5]
    assert job_of(pipeline.aws, "j").shards_done == 1

    # When the shard comes back to a second invocation, then the finalizer runs
    hand_back(pipeline, first, report)
    second = receive_all(pipeline)
    report, returned_at = invoke(pipeline, endpoint, clock, second)
    drive(pipeline.aws, pipeline=pipeline)

    # Then that invocation too called only with time left, and the job completed with one result per line
    assert report.failed_message_ids == set()
    assert min(left for _, left in endpoint.started) > RESERVE_S
    assert returned_at <= endpoint.ends_at
    job = job_of(pipeline.aws, "j")
    assert job.status is JobStatus.COMPLETED
    results = results_of(pipeline.aws, "j")
    assert [r["line"] for r in results] == list(range(1, 9))
    assert all(r["status"] == "succeeded" for r in results)
    # And no request was paid twice: the document's chunk answers of the first invocation were reused
    sent = Counter(inputs for inputs, _ in endpoint.started)
    assert max(sent.values()) == 1
    assert results[5]["chunks"] > 2 and results[5]["reused_calls"] >= 1


def test_no_call_starts_once_the_invocation_is_within_its_reserve(
    pipeline: Pipeline, endpoint: SlowEndpoint, clock: SimClock
) -> None:
    # Given a one-shard job, and an invocation with exactly the reserve left
    pipeline.intake.handle_message(message(job_id="j", records=[{"prompt": "one"}, {"prompt": "two"}]), "m-1")
    deliveries = receive_all(pipeline)
    endpoint.ends_at = clock() + RESERVE_S
    invocation = WorkerInvocation(pipeline.worker, None)

    # When it runs
    report = invocation.run(deliveries, TimeBudget.until(endpoint.ends_at, RESERVE_S, clock))

    # Then it called nothing and handed the shard back, no result stored
    assert endpoint.started == []
    assert report.failed_message_ids == {deliveries[0].message_id}
    assert pipeline.aws.results.load_shard("j", 0) == {}


def test_a_retry_that_would_wait_past_the_reserve_is_left_to_the_next_delivery(clock: SimClock) -> None:
    # Given an endpoint that fails retryably once, and a backoff longer than the time left above the reserve
    from sagebatch.domain.generation import EndpointError, ErrorKind

    class FailsOnce:
        calls = 0

        def invoke_once(self, payload: dict[str, Any]) -> Generation:
            FailsOnce.calls += 1
            clock.advance(CALL_SECONDS)
            raise EndpointError(ErrorKind.OVERLOADED, "busy")

    slept: list[float] = []
    policy = RetryPolicy(budget=RetryBudget(), base_s=30.0, cap_s=30.0, rng=lambda: 1.0)
    caller = AdaptiveCaller(
        FailsOnce(), AdaptiveLimiter(InMemoryLimiterStore(), clock=clock), policy, clock=clock, sleep=slept.append
    )
    budget = TimeBudget.until(RESERVE_S + 60.0, RESERVE_S, clock)  # 60 s above the reserve; the attempt takes 40

    # When the call fails after 40 s, leaving 20 s for a 30 s backoff
    with pytest.raises(OutOfTime):
        caller.invoke({"inputs": "x", "parameters": {}}, cost_tokens=1, budget=budget)

    # Then it neither slept nor tried again: the record waits for a later delivery
    assert (FailsOnce.calls, slept) == (1, [])
    assert caller.stats.out_of_time == 1


def test_a_budget_that_refused_a_call_refuses_the_next_without_reading_the_time() -> None:
    # Given a budget whose clock says the reserve is reached, then (wrongly) that time came back
    readings = iter([10.0, 1000.0])
    budget = TimeBudget(lambda: next(readings), reserve_s=RESERVE_S)

    # When calls ask twice; Then both are refused, and the clock was read once (time left only shrinks)
    assert (budget.allows_call(), budget.allows_call(), budget.spent) == (False, False, True)
    assert next(readings) == 1000.0
