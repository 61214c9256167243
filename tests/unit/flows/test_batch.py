"""WorkerInvocation: an invocation runs its event's shards together and takes more from the queue while it has
room, so the endpoint's slots do not idle between shards and batches."""

from __future__ import annotations

from sagebatch.domain.job import JobStatus
from sagebatch.domain.time_budget import TimeBudget
from sagebatch.fakes import InMemoryWorkSource, drive
from sagebatch.usecases.batch import Delivery, WorkerInvocation
from tests.unit.flows.conftest import MakePipeline
from tests.unit.flows.helpers import job_of, message, prompts

NO_TIME_LEFT = TimeBudget(lambda: 0.0, reserve_s=75)


def event_deliveries(queue, count: int) -> list[Delivery]:
    deliveries = []
    for n in range(count):
        received = queue.receive()
        assert received is not None
        deliveries.append(Delivery(f"event-{n}", received.body, received.receive_count))
    return deliveries


def test_an_invocation_runs_its_shards_and_takes_the_rest_from_the_queue(make_pipeline: MakePipeline) -> None:
    # Given a job of six shards, and an invocation handed two of them by the event source
    pipeline = make_pipeline(shard_records=2)
    aws = pipeline.aws
    pipeline.intake.handle_message(message(records=prompts(12), job_id="j"), "m-1")
    event = event_deliveries(aws.work, 2)
    invocation = WorkerInvocation(pipeline.worker, InMemoryWorkSource(aws.work), max_shards=4)

    # When it runs while it may, wanting more work whenever it has room
    report = invocation.run(event, budget=TimeBudget.unlimited(), wants_more=lambda: True)

    # Then it processed every shard (two from its event, four taken itself) and the job is ready to finalize
    assert report.failed_message_ids == set() and report.taken == 4
    assert aws.work.pending() == []
    assert job_of(aws, "j").status is JobStatus.FINALIZING


def test_an_invocation_out_of_time_takes_nothing_more(make_pipeline: MakePipeline) -> None:
    # Given a job of three shards and an invocation handed one of them
    pipeline = make_pipeline(shard_records=2)
    aws = pipeline.aws
    pipeline.intake.handle_message(message(records=prompts(6), job_id="j"), "m-1")
    event = event_deliveries(aws.work, 1)
    invocation = WorkerInvocation(pipeline.worker, InMemoryWorkSource(aws.work), max_shards=4)

    # When it may not start anything more (its time is nearly up)
    report = invocation.run(event, budget=NO_TIME_LEFT, wants_more=lambda: True)

    # Then it took nothing from the queue, and its own shard went back unstarted
    assert report.taken == 0 and len(aws.work.pending()) == 2
    assert report.failed_message_ids == {"event-0"}


def test_a_failing_shard_taken_from_the_queue_goes_back_to_it(make_pipeline: MakePipeline) -> None:
    # Given a job of two shards whose endpoint throttles every call (a retryable failure)
    from sagebatch.domain.generation import ErrorKind

    pipeline = make_pipeline(shard_records=1)
    aws = pipeline.aws
    aws.endpoint.fail(ErrorKind.THROTTLED, times=1000)
    pipeline.intake.handle_message(message(records=prompts(2), job_id="j"), "m-1")
    event = event_deliveries(aws.work, 1)

    # When the invocation runs (taking one more shard from the queue)
    taken: list[int] = []
    source = InMemoryWorkSource(aws.work)
    invocation = WorkerInvocation(pipeline.worker, source, max_shards=2)
    report = invocation.run(event, budget=TimeBudget.unlimited(), wants_more=lambda: not taken and not taken.append(1))
    # Then the event's shard is a batch item failure and the taken one is visible on the queue again
    assert report.failed_message_ids == {"event-0"}
    assert report.taken == 1 and len(aws.work.pending()) == 1


def test_the_job_completes_when_invocations_feed_themselves(make_pipeline: MakePipeline) -> None:
    # Given a job of five shards, each invocation handed one shard and taking more itself
    pipeline = make_pipeline(shard_records=3)
    aws = pipeline.aws
    pipeline.intake.handle_message(message(records=prompts(15), job_id="j"), "m-1")
    invocation = WorkerInvocation(pipeline.worker, InMemoryWorkSource(aws.work), max_shards=3)

    # When one invocation runs, then the finalizer
    invocation.run(event_deliveries(aws.work, 1), budget=TimeBudget.unlimited(), wants_more=lambda: True)
    drive(aws, pipeline=pipeline)

    # Then the job completed with every line answered once
    job = job_of(aws, "j")
    assert job.status is JobStatus.COMPLETED and job.succeeded == 15
    assert len(aws.endpoint.calls) == 15


def test_an_invocation_does_not_ask_an_empty_queue_again_at_once(make_pipeline: MakePipeline) -> None:
    # Given a one-shard job whose only call is held for a while, and an invocation that wants more work
    import threading

    from sagebatch.fakes import FakeEndpointCaller

    release = threading.Event()

    def held_answer(payload):
        release.wait(5)
        return FakeEndpointCaller.default_answer(payload)

    pipeline = make_pipeline(endpoint=FakeEndpointCaller(held_answer))
    aws = pipeline.aws
    pipeline.intake.handle_message(message(records=prompts(1), job_id="j"), "m-1")
    event = event_deliveries(aws.work, 1)
    source = CountingSource(aws.work)
    invocation = WorkerInvocation(pipeline.worker, source, max_shards=4)

    # When the shard runs for several of the invocation's rounds on a clock that stands still
    threading.Timer(0.8, release.set).start()
    report = invocation.run(event, budget=TimeBudget.unlimited(), wants_more=lambda: True, clock=lambda: 0.0)

    # Then the empty queue was asked once, not once per round
    assert report.failed_message_ids == set()
    assert source.receives == 1


class CountingSource(InMemoryWorkSource):
    def __init__(self, queue) -> None:
        super().__init__(queue)
        self.receives = 0

    def receive(self, max_items: int):
        self.receives += 1
        return super().receive(max_items)
