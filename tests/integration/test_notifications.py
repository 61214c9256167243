"""Job state-change events through the local stack: EventBridge (moto) read back through a rule with an SQS target,
SNS through a subscribed queue. Each job's events are asserted in the order they were published."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from sagebatch.lambdas import service
from sagebatch.tooling.local.faults import SentRequest, fail_calls
from sagebatch.tooling.local.notifications import EventCapture, TopicCapture
from sagebatch.tooling.local.session import LocalRun, local_stack
from sagebatch.tooling.local.stack import ACCOUNT, REGION
from tests.conftest import jsonl

TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:sagebatch-jobs"
ADAPTER_ATTEMPTS = 3  # adapters/events.py: a refused entry is sent three times before the message comes back


@pytest.fixture
def watched() -> Iterator[tuple[LocalRun, EventCapture]]:
    """A fresh local stack and a rule on its bus that keeps sagebatch's events."""
    with local_stack() as run:
        yield run, EventCapture.on(run.stack)


def refused_entry(sent: SentRequest) -> AWSResponse:
    """PutEvents' answer when it takes none of the request's entries: HTTP 200 with FailedEntryCount 1."""

    class Raw:
        def stream(self, **_: Any) -> Iterator[bytes]:
            yield json.dumps(
                {"FailedEntryCount": 1, "Entries": [{"ErrorCode": "InternalFailure", "ErrorMessage": "injected"}]}
            ).encode()

    return AWSResponse(sent.url, 200, {"Content-Type": "application/x-amz-json-1.1"}, Raw())


def entry_status(sent: SentRequest) -> str:
    return json.loads(sent.json()["Entries"][0]["Detail"])["status"]


def test_a_completed_jobs_events_arrive_in_lifecycle_order_with_counts_and_results_on_the_last(watched):
    # Given a three-line file, one line malformed, dropped under inputs/
    run, events = watched
    job_id = run.drop_file(jsonl({"prompt": "a"}, "{not json", {"prompt": "b"}), "inputs/three.jsonl")

    # When the stack runs the job to the end
    assert run.wait_for(job_id) == "COMPLETED"

    # Then its events are CREATING, RUNNING, FINALIZING, COMPLETED, each naming the one before, once each
    details = events.details(job_id)
    assert [(d["status"], d["previous_status"]) for d in details] == [
        ("CREATING", None),
        ("RUNNING", "CREATING"),
        ("FINALIZING", "RUNNING"),
        ("COMPLETED", "FINALIZING"),
    ]
    assert [d["event_id"] for d in details] == [f"{job_id}:{d['status']}" for d in details]
    # the total is known from RUNNING on, the outcomes from FINALIZING on
    assert [d["counts"]["total"] for d in details] == [None, 3, 3, 3]
    # and the last one has what the manifest has, and where the results are
    last, manifest = details[-1], run.manifest(job_id)
    assert last["counts"] == {"total": 3, "succeeded": 2, "failed": 1, "cancelled": 0, "expired": 0}
    assert (
        last["tokens"]
        == {"input": manifest["tokens"]["input"], "output": manifest["tokens"]["output"]}
        != {"input": 0, "output": 0}
    )
    assert last["results_uri"] == manifest["results"] == f"s3://{run.stack.bucket}/outputs/{job_id}/results.jsonl"
    assert last["manifest_uri"] == f"s3://{run.stack.bucket}/outputs/{job_id}/manifest.json"
    assert last["input"] == f"s3://{run.stack.bucket}/inputs/three.jsonl" and last["error"] is None


def test_a_gzip_input_fails_the_job_with_creating_then_failed(watched):
    # Given a gzip-compressed file dropped under inputs/
    run, events = watched
    job_id = run.drop_file(gzip.compress(jsonl({"prompt": "a"})), "inputs/batch.jsonl.gz")

    # When intake takes it
    assert run.wait_for(job_id) == "FAILED"

    # Then the job's events are CREATING and FAILED; the failure says why and where the manifest is, no results
    details = events.details(job_id)
    assert [d["status"] for d in details] == ["CREATING", "FAILED"]
    failed = details[-1]
    assert failed["previous_status"] == "CREATING" and "gzip" in failed["error"]
    assert failed["results_uri"] is None and failed["counts"]["total"] is None
    assert failed["manifest_uri"] == f"s3://{run.stack.bucket}/outputs/{job_id}/manifest.json"
    assert run.manifest(job_id)["status"] == "FAILED"


def test_a_rejected_job_message_emits_creating_then_failed(watched):
    # Given a job message that is not valid
    run, events = watched
    run.submit_job({"job_id": "bad-message", "input": "not an s3 uri"})

    # When intake takes it
    assert run.wait_for("bad-message") == "FAILED"

    # Then the job record it leaves behind was announced, then its failure, with no input named
    details = events.details("bad-message")
    assert [d["status"] for d in details] == ["CREATING", "FAILED"]
    assert details[-1]["input"] is None and details[-1]["error"].startswith("invalid job message")


def test_a_cancelled_job_ends_with_a_cancelled_event_naming_the_stop(watched):
    # Given a four-line job that intake has started, and a cancel sent before any worker ran
    run, events = watched
    records = [{"prompt": f"Say {n}."} for n in range(4)]
    service.intake().handle_message(json.dumps({"job_id": "to-cancel", "records": records}), "direct")
    # (handled here, not queued: the stack's event sources run at once, and a queued cancel would race the workers)
    service.intake().handle_message(json.dumps({"action": "cancel", "job_id": "to-cancel"}), "cancel")

    # When the stack runs to the end (the cancel is taken before the shards)
    assert run.wait_for("to-cancel") == "CANCELLED"

    # Then the events end CANCELLED, with the stop reason, the cancelled count and the results
    details = events.details("to-cancel")
    assert [d["status"] for d in details] == ["CREATING", "RUNNING", "FINALIZING", "CANCELLED"]
    last = details[-1]
    assert last["stop_reason"] == "cancelled"
    assert last["counts"] == {"total": 4, "succeeded": 0, "failed": 0, "cancelled": 4, "expired": 0}
    assert last["results_uri"] == f"s3://{run.stack.bucket}/outputs/to-cancel/results.jsonl"


def test_the_notification_topic_is_told_of_the_completion_only():
    # Given a stack with NotificationTopicArn set, and a queue subscribed to that topic
    with local_stack(parameters={"NotificationTopicArn": TOPIC}) as run:
        topic, events = TopicCapture.on(run.stack), EventCapture.on(run.stack)
        job_id = run.drop_file(jsonl({"prompt": "a"}, {"prompt": "b"}), "inputs/two.jsonl")

        # When the job runs to the end
        assert run.wait_for(job_id) == "COMPLETED"

        # Then the topic got one notification, the completion, with the event's detail; the bus got all four
        (notification,) = topic.notifications()
        assert notification["Subject"] == f"sagebatch job COMPLETED: {job_id}"
        assert notification["MessageAttributes"]["status"]["Value"] == "COMPLETED"
        assert json.loads(notification["Message"]) == events.details(job_id)[-1]
        assert [d["status"] for d in events.details(job_id)] == ["CREATING", "RUNNING", "FINALIZING", "COMPLETED"]


def test_a_refused_completion_event_brings_the_finalize_message_back_and_is_published_on_redelivery(watched):
    # Given a job, and a bus that refuses every attempt at its COMPLETED event, once over
    run, events = watched
    job_id = run.drop_file(jsonl({"prompt": "a"}), "inputs/one.jsonl")
    with fail_calls(
        "events", "PutEvents", refused_entry, times=ADAPTER_ATTEMPTS, match=lambda sent: entry_status(sent) == "COMPLETED"
    ) as refusal:
        # When the stack runs the job, and on until the COMPLETED event is out
        run.poller.run_until(lambda: "COMPLETED" in events.statuses(job_id), timeout_s=60)

    # Then the finalize message failed once (after three attempts), came back, and its redelivery published the
    # final event for the job already closed: every change is on the bus, once
    assert refusal.fired == ADAPTER_ATTEMPTS
    assert run.poller.stats.item_failures == 1
    assert events.statuses(job_id) == ["CREATING", "RUNNING", "FINALIZING", "COMPLETED"]
    assert run.jobs.get_job(job_id).status == "COMPLETED"


def test_a_refused_running_event_brings_the_intake_message_back_and_a_copy_may_repeat_with_the_same_id(watched):
    # Given a job, and a bus that refuses every attempt at its RUNNING event, once over
    run, events = watched
    job_id = run.drop_file(jsonl({"prompt": "a"}, {"prompt": "b"}), "inputs/two.jsonl")
    with fail_calls(
        "events", "PutEvents", refused_entry, times=ADAPTER_ATTEMPTS, match=lambda sent: entry_status(sent) == "RUNNING"
    ):
        # When the stack runs the job to the end
        assert run.wait_for(job_id, timeout_s=60) == "COMPLETED"

    # Then the intake message came back while the job was still CREATING, and its redelivery published CREATING a
    # second time (at least once: the redelivered shard then asks for the finalize again, so FINALIZING may repeat
    # too) and then RUNNING. Deduped on event_id, the job's lifecycle is whole and in order
    details = events.details(job_id)
    assert [d["status"] for d in details][:3] == ["CREATING", "CREATING", "RUNNING"]
    unique = list(dict.fromkeys(d["event_id"] for d in details))
    assert unique == [f"{job_id}:{status}" for status in ("CREATING", "RUNNING", "FINALIZING", "COMPLETED")]
    assert details[-1]["status"] == "COMPLETED" and len(run.results(job_id)) == 2
