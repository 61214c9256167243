"""Delivery faults: duplicates, reordering, poison messages, and two workers finishing a job together."""

from __future__ import annotations

import threading

import pytest

from sagebatch.domain.messages import FinalizeRequest, Shard
from sagebatch.lambdas import service
from sagebatch.tooling.local.faults import endpoint_line_of, fail_calls
from tests.faults.conftest import DuplicateWork, gate


def test_duplicate_and_reordered_deliveries_generate_each_line_once(harness):
    h = harness()
    # Given a 12-line drop (3 shards) whose S3 notification arrives three times
    job = h.drop(12)
    [notification] = h.take("IntakeQueue", contains="ObjectCreated")
    for _ in range(3):
        h.send("IntakeQueue", notification["Body"])
    h.drain(h.poller("IntakeFunction"))
    shards = h.take("WorkQueue")
    assert len(shards) == 3, "three notifications, handled one after another, enqueue the shards once"

    # When one batch carries the same shard message twice (same messageId), and every shard message is then
    # delivered twice more in reverse order
    last = shards[-1]
    assert h.invoke("WorkerFunction", [last["Body"]] * 2, [last["MessageId"]] * 2) == set()
    for message in reversed(shards):
        h.send("WorkQueue", message["Body"])
        h.send("WorkQueue", message["Body"])
    h.drain(h.poller("WorkerFunction", "FinalizerFunction"))
    assert h.run.jobs.get_job(job.job_id).status == "COMPLETED"
    # ... and, after completion, the notification, every shard and the finalize request come once more
    h.send("IntakeQueue", notification["Body"])
    for message in shards:
        h.send("WorkQueue", message["Body"])
    h.send("FinalizeQueue", FinalizeRequest(job_id=job.job_id).model_dump_json())
    h.drain(h.poller("IntakeFunction", "WorkerFunction", "FinalizerFunction"))

    # Then every line has one result, generated once, and the job completed once
    duplicates = 2 + 1 + 2 * len(shards) + 1 + len(shards) + 1
    h.check(job, fault="duplicate + reordered deliveries", faults_tried=duplicates)
    assert h.log.messages_sent(h.queue("WorkQueue"), job.job_id) == 3
    assert h.run.jobs_in_table() == [job.job_id]


def test_concurrent_duplicate_deliveries_of_a_shard_generate_each_line_once(harness):
    h = harness()
    # Given a one-shard job whose work message SQS delivers twice at the same time (at-least-once delivery)
    job = h.drop(4)
    h.drain(h.poller("IntakeFunction"))
    [message] = h.take("WorkQueue")

    # When two worker invocations process the copies concurrently (line 1's endpoint call is held until the
    # other copy asks for line 1 too, or 3 s pass: a service that claims the shard never sends the second)
    failed: list[set[str]] = []
    with fail_calls(
        "sagemaker-runtime", "InvokeEndpoint", gate(2), times=2, match=lambda sent: endpoint_line_of(sent, job.tag) == 1
    ):
        threads = [
            threading.Thread(target=lambda: failed.append(h.invoke("WorkerFunction", [message["Body"]], [message["MessageId"]])))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    for failure in failed:  # a copy handed back as "in progress" comes back later through the queue
        if failure:
            h.send("WorkQueue", message["Body"])
    h.drain(h.poller("WorkerFunction", "FinalizerFunction"))

    # Then each line was generated once and has one result
    h.check(job, fault="concurrent duplicate work message", faults_tried=1)


def test_concurrent_duplicate_notifications_enqueue_the_shards_once(harness):
    h = harness()
    # Given an 8-line drop (2 shards) whose notification two intake invocations receive at the same time
    job = h.drop(8)
    [notification] = h.take("IntakeQueue", contains="ObjectCreated")

    # When both intakes run concurrently (each is held at its first read of the input until the other gets there)
    with fail_calls("s3", "HeadObject", gate(2), times=2, match=lambda sent: sent.path.endswith(job.key)):
        threads = [threading.Thread(target=h.invoke, args=("IntakeFunction", [notification["Body"]])) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    h.drain(h.poller("WorkerFunction", "FinalizerFunction"))  # one batch at a time: copies never overlap here

    # Then there is one job, the invariant holds (shards processed one after another)...
    assert h.run.jobs_in_table() == [job.job_id]
    h.check(job, fault="concurrent duplicate S3 notification", faults_tried=1)
    # ... and each shard was enqueued once (a second copy is what lets two workers pay for one line twice)
    enqueued = h.log.messages_sent(h.queue("WorkQueue"), job.job_id)
    if enqueued != 2:
        raise DuplicateWork(f"{enqueued} work messages for 2 shards")


@pytest.mark.parametrize(
    "kind, poison",
    [("not a shard", '{"job_id": "nope", "shard": "not a number"}'), ("not JSON", "this is not JSON")],
    ids=["not-a-shard", "not-json"],
)
def test_a_poison_work_message_reaches_the_dlq_and_its_batch_mates_run_once(harness, kind, poison):
    h = harness(parallel=1)
    # Given a work message that is not a shard, queued before a healthy 12-line job's shards
    h.send("WorkQueue", poison)
    job = h.drop(12)
    batches: list[list[str]] = []

    def record(original, event, context):
        batches.append([r["body"] for r in event["Records"]])
        return original(event, context)

    h.wrap("WorkerFunction", record)

    # When the stack runs until every queue is empty
    h.wait(job)

    # Then the poison sits in the work DLQ after maxReceiveCount (5) receives...
    [dead] = h.take("WorkDLQ")
    assert dead["Body"] == poison
    assert sum(batch.count(poison) for batch in batches) == 5
    # ... healthy shards shared batches with it and were each processed once
    assert any(poison in batch and len(batch) > 1 for batch in batches)
    healthy = [body for batch in batches for body in batch if body != poison]
    assert len(healthy) == len(set(healthy)) == 3
    h.check(job, fault=f"poison work message ({kind}) -> DLQ", faults_tried=5)


def test_two_workers_finishing_the_last_shards_together_finalize_once(harness):
    h = harness()
    # Given a 12-line job (3 shards) whose first shard is done
    job = h.drop(12)
    h.drain(h.poller("IntakeFunction"))
    shards = sorted((Shard.model_validate_json(m["Body"]) for m in h.take("WorkQueue")), key=lambda s: s.shard)
    processor = service.shard_processor()
    processor.process(shards[0])

    # When two workers process the last two shards at the same time (both shard transactions, then both
    # "all shards done?" transitions, are sent together)
    outcomes = []
    both_count, both_try = gate(2), gate(2)
    with (
        fail_calls("dynamodb", "TransactWriteItems", both_count, times=2),
        fail_calls("dynamodb", "UpdateItem", both_try, times=2, match=lambda sent: b'"FINALIZING"' in sent.body),
    ):
        threads = [threading.Thread(target=lambda s=s: outcomes.append(processor.process(s))) for s in shards[1:]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    # Then exactly one of them sent the finalize message
    assert both_count.met == 2 and both_try.met == 2, "the two completions really overlapped"
    assert len(outcomes) == 2
    assert sum(o.finalize_sent for o in outcomes) == 1
    assert h.depth("FinalizeQueue") == 1
    # ... and when the finalize request is delivered twice, the job still completes once
    [request] = h.take("FinalizeQueue")
    for _ in range(2):
        assert h.invoke("FinalizerFunction", [request["Body"]]) == set()
    h.drain()
    h.check(job, fault="completion race (2 workers) + finalize twice", faults_tried=2)
