"""Who publishes each job event, and how a refused publish comes back, on the in-memory fakes (sagebatch.fakes)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from sagebatch.domain.job import JobStatus
from sagebatch.domain.layout import manifest_key
from sagebatch.fakes import FakeAws, Pipeline, build_pipeline, drive, fake_settings
from sagebatch.ports import PublishFailed

C, R, F, DONE, FAILED = JobStatus.CREATING, JobStatus.RUNNING, JobStatus.FINALIZING, JobStatus.COMPLETED, JobStatus.FAILED


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    with build_pipeline(FakeAws.create(fake_settings(shard_records=2)), in_flight=2) as built:
        yield built


def job_message(job_id: str, records: int) -> str:
    return json.dumps({"job_id": job_id, "records": [{"prompt": f"question {n}"} for n in range(records)]})


def test_each_change_of_a_job_is_published_once_in_lifecycle_order(pipeline):
    # Given a five-line job in three shards
    aws = pipeline.aws

    # When it runs to the end
    drive(aws, job_message("j", 5), pipeline=pipeline)

    # Then intake published CREATING and RUNNING, the finalizer FINALIZING and COMPLETED, one event each
    assert aws.events.statuses("j") == [C, R, F, DONE]
    assert [e.counts.total for e in aws.events.of("j")] == [None, 5, 5, 5]
    assert aws.events.of("j")[-1].counts.succeeded == 5


def test_an_empty_file_still_goes_through_every_status(pipeline):
    # Given a job with no lines (intake itself moves it to FINALIZING)
    aws = pipeline.aws
    aws.objects.put(aws.settings.bucket_name, "staging/empty.jsonl", b"")

    # When it runs
    drive(
        aws, json.dumps({"job_id": "empty", "input": f"s3://{aws.settings.bucket_name}/staging/empty.jsonl"}), pipeline=pipeline
    )

    # Then its events are the same four, the last with a total of 0
    assert aws.events.statuses("empty") == [C, R, F, DONE]
    assert aws.events.of("empty")[-1].counts.total == 0


def test_a_refused_failure_event_leaves_the_job_creating_so_the_redelivery_fails_it_and_publishes(pipeline):
    # Given an input intake cannot read, and a bus refusing the FAILED event once
    aws = pipeline.aws
    body = json.dumps({"job_id": "gone", "input": f"s3://{aws.settings.bucket_name}/staging/missing.jsonl"})
    aws.events.refuse(FAILED)

    # When intake takes the message: Then it raises (the message comes back) with the job still CREATING
    with pytest.raises(PublishFailed):
        pipeline.intake.handle_message(body, "m-1")
    assert aws.jobs.get_job("gone").status == C

    # When the message is delivered again: Then the job fails and its events are whole
    pipeline.intake.handle_message(body, "m-1")
    assert aws.jobs.get_job("gone").status == FAILED
    assert aws.events.statuses("gone") == [C, C, FAILED]  # CREATING once more: at least once
    assert json.loads(aws.objects.read_bytes(aws.settings.bucket_name, manifest_key("gone")))["status"] == "FAILED"


def test_a_refused_finalizing_event_brings_the_finalize_message_back_before_anything_is_written(pipeline):
    # Given a two-line job and a bus refusing the FINALIZING event once
    aws = pipeline.aws
    aws.events.refuse(F)

    # When the job runs to the end (the finalize message is redelivered as SQS would)
    report = drive(aws, job_message("j", 2), pipeline=pipeline)

    # Then the first finalize delivery failed, the second published FINALIZING and closed the job
    assert report.finalize_deliveries == 2 and isinstance(report.failures[0][1], PublishFailed)
    assert aws.events.statuses("j") == [C, R, F, DONE]


def test_a_refused_final_event_is_published_by_the_redelivery_that_finds_the_job_closed(pipeline):
    # Given a two-line job and a bus refusing the COMPLETED event once
    aws = pipeline.aws
    aws.events.refuse(DONE)

    # When the job runs to the end
    report = drive(aws, job_message("j", 2), pipeline=pipeline)

    # Then the job was closed by the first finalize delivery, and the second published its final event
    assert report.finalize_deliveries == 2
    assert aws.jobs.get_job("j").status == DONE
    assert aws.events.statuses("j") == [C, R, F, DONE]


def test_a_duplicate_finalize_message_repeats_the_final_event_with_the_same_id(pipeline):
    # Given a finished job
    aws = pipeline.aws
    drive(aws, job_message("j", 1), pipeline=pipeline)

    # When a copy of its finalize message is delivered again
    pipeline.finalizer.finalize("j")

    # Then the final event is published again, with the id subscribers dedupe on
    events = aws.events.of("j")
    assert [e.status for e in events] == [C, R, F, DONE, DONE]
    assert events[-1].event_id == events[-2].event_id == "j:COMPLETED"


def test_a_stopped_job_ends_with_its_stop_reason(pipeline):
    # Given a started six-line job that is then cancelled
    aws = pipeline.aws
    pipeline.intake.handle_message(job_message("c", 6), "m-1")
    pipeline.intake.handle_message(json.dumps({"action": "cancel", "job_id": "c"}), "m-2")

    # When it runs to the end
    drive(aws, pipeline=pipeline)

    # Then it ends CANCELLED, naming why and how many records never ran
    last = aws.events.of("c")[-1]
    assert aws.events.statuses("c") == [C, R, F, JobStatus.CANCELLED]
    assert (last.stop_reason, last.counts.cancelled) == ("cancelled", 6)
