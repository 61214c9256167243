"""Job state-change events: the detail (domain.events) and the EventBridge / SNS adapter (adapters.events) on moto."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from moto import mock_aws

from sagebatch.adapters.events import EventBridgeJobEvents, subject
from sagebatch.domain.events import MAX_ERROR_CHARS, JobStateChange, state_change
from sagebatch.domain.job import FINISHED, Job, JobStatus
from sagebatch.ports import PublishFailed
from sagebatch.tooling.local.faults import SentRequest, fail_calls
from sagebatch.tooling.local.notifications import EventCapture, TopicCapture
from sagebatch.tooling.local.stack import ACCOUNT, REGION, use_fake_aws_environment
from tests.conftest import ROOT

BUCKET = "stack-bucket"
AT = 1_750_000_000.25
TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:sagebatch-jobs"


def a_job(**fields: Any) -> Job:
    values: dict[str, Any] = {"job_id": "job-1", "source": "s3://in/prompts.jsonl", "bucket": "in", "key": "prompts.jsonl"}
    return Job(**(values | fields))


def change(status: JobStatus, **fields: Any) -> JobStateChange:
    return state_change(a_job(**fields), status, AT, BUCKET)


# -- the detail ------------------------------------------------------------------------------------
def test_every_copy_of_one_change_has_the_same_event_id():
    # Given the same change built twice, at different times, from different reads of the job
    first = state_change(a_job(status=JobStatus.FINALIZING), JobStatus.COMPLETED, AT, BUCKET)
    again = state_change(a_job(status=JobStatus.COMPLETED, succeeded=3), JobStatus.COMPLETED, AT + 60, BUCKET)

    # Then both carry the id a subscriber dedupes on: the job id and the status
    assert first.event_id == again.event_id == "job-1:COMPLETED"


@pytest.mark.parametrize(
    ("read_as", "status", "previous"),
    [
        (JobStatus.CREATING, JobStatus.CREATING, None),
        (JobStatus.CREATING, JobStatus.RUNNING, JobStatus.CREATING),
        (JobStatus.CREATING, JobStatus.FAILED, JobStatus.CREATING),
        (JobStatus.FINALIZING, JobStatus.FINALIZING, JobStatus.RUNNING),  # the finalizer reads it already FINALIZING
        (JobStatus.FINALIZING, JobStatus.CANCELLED, JobStatus.FINALIZING),
        (JobStatus.EXPIRED, JobStatus.EXPIRED, JobStatus.FINALIZING),  # published again for a closed job
    ],
)
def test_the_previous_status_follows_the_state_machine(read_as, status, previous):
    # Given a job read in one status; When the event for its change to `status` is built
    event = state_change(a_job(status=read_as), status, AT, BUCKET)

    # Then it names the status the job left
    assert event.previous_status == previous


def test_only_jobs_finalized_with_results_point_at_results_and_every_finished_job_at_its_manifest():
    # Given one event per status; When their URIs are read
    uris = {status: (change(status).results_uri, change(status).manifest_uri) for status in JobStatus}

    # Then results.jsonl is named once the finalizer wrote it, the manifest for every finished job
    results = f"s3://{BUCKET}/outputs/job-1/results.jsonl"
    manifest = f"s3://{BUCKET}/outputs/job-1/manifest.json"
    assert uris == {
        JobStatus.CREATING: (None, None),
        JobStatus.RUNNING: (None, None),
        JobStatus.FINALIZING: (None, None),
        JobStatus.COMPLETED: (results, manifest),
        JobStatus.CANCELLED: (results, manifest),
        JobStatus.EXPIRED: (results, manifest),
        JobStatus.FAILED: (None, manifest),
    }


def test_the_counts_are_the_jobs_with_the_total_the_change_brings():
    # Given a CREATING job read before intake counted its lines; When its RUNNING event is built with the count
    event = state_change(a_job(), JobStatus.RUNNING, AT, BUCKET, total_records=7)

    # Then the total is the new one and the detail carries counts, tokens and the time in UTC with milliseconds
    assert event.counts.total == 7
    later = change(
        JobStatus.COMPLETED, total_records=3, succeeded=2, failed=1, input_tokens=40, output_tokens=9, endpoint_calls=4
    )
    assert json.loads(later.detail_json())["counts"] == {"total": 3, "succeeded": 2, "failed": 1, "cancelled": 0, "expired": 0}
    assert (later.tokens.input, later.tokens.output, later.endpoint_calls) == (40, 9, 4)
    assert event.time == "2025-06-15T15:06:40.250+00:00"


def test_a_failure_carries_its_reason_cut_to_a_bounded_length():
    # Given a job failing with a very long reason
    event = state_change(a_job(), JobStatus.FAILED, AT, BUCKET, error="x" * (MAX_ERROR_CHARS * 3))

    # Then the event carries its beginning only; other statuses carry no error
    assert event.error == "x" * MAX_ERROR_CHARS
    assert change(JobStatus.COMPLETED, error="stale").error is None


def test_every_detail_field_is_documented_in_the_readme():
    # Given the README's Notifications section
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Notifications", 1)[1].split("\n## ", 1)[0]

    # Then each field of the detail has its row in the schema table
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))
    assert set(JobStateChange.model_fields) <= documented


# -- the adapter on moto ---------------------------------------------------------------------------
@pytest.fixture
def aws() -> Iterator[None]:
    use_fake_aws_environment()
    with mock_aws():
        yield


def publisher(topic: str | None = None, **options: Any) -> EventBridgeJobEvents:
    sns = boto3.client("sns", region_name=REGION) if topic else None
    return EventBridgeJobEvents(
        boto3.client("events", region_name=REGION), "default", sns, topic, sleep=lambda seconds: None, **options
    )


def refused_entry(code: str = "InternalFailure") -> Any:
    """A PutEvents answer that takes none of the request's one entry (HTTP 200, FailedEntryCount 1)."""

    class Raw:
        def stream(self, **_: Any) -> Iterator[bytes]:
            yield json.dumps({"FailedEntryCount": 1, "Entries": [{"ErrorCode": code, "ErrorMessage": "injected"}]}).encode()

    def respond(sent: SentRequest) -> AWSResponse:
        return AWSResponse(sent.url, 200, {"Content-Type": "application/x-amz-json-1.1"}, Raw())

    return respond


def test_an_event_goes_to_the_bus_with_sagebatchs_source_and_detail_type(aws):
    # Given a rule on the default bus that keeps sagebatch's events
    capture = EventCapture("default")

    # When a change is published
    publisher().publish(change(JobStatus.RUNNING, total_records=2))

    # Then one event arrives: source sagebatch, detail-type "Job State Change", the detail as built
    (event,) = capture.events()
    assert (event["source"], event["detail-type"]) == ("sagebatch", "Job State Change")
    assert event["detail"] == json.loads(change(JobStatus.RUNNING, total_records=2).detail_json())
    assert event["time"] == "2025-06-15T15:06:40Z"


def test_a_refused_entry_is_sent_again_and_is_not_lost(aws):
    # Given a bus that refuses the first two attempts of an entry
    capture = EventCapture("default")
    events = publisher()
    with fail_calls(events._events, "PutEvents", refused_entry("ThrottlingException"), times=2) as refusal:
        # When a change is published
        events.publish(change(JobStatus.CREATING))

    # Then the third attempt got it onto the bus, once
    assert refusal.fired == 2
    assert [e["detail"]["status"] for e in capture.events()] == ["CREATING"]


def test_an_entry_refused_on_every_attempt_raises_so_the_message_comes_back(aws):
    # Given a bus that refuses every attempt
    capture = EventCapture("default")
    events = publisher(attempts=3)
    with fail_calls(events._events, "PutEvents", refused_entry(), times=None) as refusal:
        # When a change is published; Then PublishFailed names the event and the error, after three attempts
        with pytest.raises(PublishFailed, match="job-1:FAILED .*InternalFailure"):
            events.publish(change(JobStatus.FAILED, error="gzip"))

    assert refusal.fired == 3
    assert capture.events() == []


@pytest.mark.parametrize("status", sorted(FINISHED))
def test_a_finished_job_is_also_told_to_the_topic(aws, status):
    # Given a topic with a subscribed queue
    boto3.client("sns", region_name=REGION).create_topic(Name="sagebatch-jobs")
    topic = TopicCapture(TOPIC)

    # When the job's final change is published
    publisher(TOPIC).publish(change(status))

    # Then the topic got the detail, a subject naming status and job, and the status as a message attribute
    (notification,) = topic.notifications()
    assert json.loads(notification["Message"]) == json.loads(change(status).detail_json())
    assert notification["Subject"] == f"sagebatch job {status}: job-1"
    assert notification["MessageAttributes"]["status"] == {"Type": "String", "Value": str(status)}
    assert notification["MessageAttributes"]["job_id"] == {"Type": "String", "Value": "job-1"}


def test_a_job_still_in_progress_is_not_told_to_the_topic(aws):
    # Given a topic with a subscribed queue, and a rule on the bus
    boto3.client("sns", region_name=REGION).create_topic(Name="sagebatch-jobs")
    topic, capture = TopicCapture(TOPIC), EventCapture("default")

    # When the changes before a job finishes are published
    events = publisher(TOPIC)
    for status in (JobStatus.CREATING, JobStatus.RUNNING, JobStatus.FINALIZING):
        events.publish(change(status))

    # Then the bus has them all and the topic none
    assert [e["detail"]["status"] for e in capture.events()] == ["CREATING", "RUNNING", "FINALIZING"]
    assert topic.notifications() == []


def test_without_a_topic_nothing_goes_to_sns(aws):
    # Given a publisher with an SNS client but no topic, and that client failing any call it makes
    sns = boto3.client("sns", region_name=REGION)
    events = EventBridgeJobEvents(boto3.client("events", region_name=REGION), "default", sns, None)
    with fail_calls(sns, None, RuntimeError("no SNS call expected"), times=None) as calls:
        # When a finished job's change is published
        events.publish(change(JobStatus.COMPLETED))

    # Then no SNS call was made
    assert calls.matched == 0


def test_the_subject_is_what_sns_accepts_whatever_the_job_id():
    # Given a job id with non-ASCII letters and a long one
    odd = change(JobStatus.FAILED).model_copy(update={"job_id": "prüfung-ü"})
    long = change(JobStatus.COMPLETED).model_copy(update={"job_id": "j" * 100})

    # Then subjects are printable ASCII under 100 characters
    assert subject(odd) == "sagebatch job FAILED: pr?fung-?"
    assert len(subject(long)) == 99 and subject(long).endswith("...")
