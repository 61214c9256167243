"""Job specs may only read from the stack's own bucket and the AllowedInputLocations (template parameter)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest

from sagebatch.tooling.local.session import LocalRun, local_stack
from sagebatch.usecases.intake import S3Drop
from tests.conftest import jsonl

PARTNER = "partner-data"


@pytest.fixture
def partner_stack() -> Iterator[LocalRun]:
    """A local stack deployed with AllowedInputLocations=s3://partner-data/batches/, and that bucket."""
    with local_stack(parameters={"AllowedInputLocations": f"s3://{PARTNER}/batches/"}) as run:
        boto3.client("s3").create_bucket(Bucket=PARTNER)
        yield run


def _put(bucket: str, key: str, data: bytes) -> str:
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


def test_a_job_reading_a_bucket_that_is_not_allowed_fails_naming_the_location(stack):
    # Given a readable object in a bucket that is not the stack's and not allowed
    boto3.client("s3").create_bucket(Bucket="someone-elses-bucket")
    uri = _put("someone-elses-bucket", "private/secrets.jsonl", jsonl({"prompt": "leak me"}))

    # When a job message names it as its input
    stack.submit_job({"job_id": "outside-1", "input": uri})
    status = stack.wait_for("outside-1")

    # Then the job failed, saying which location was refused, and nothing reached the endpoint
    assert status == "FAILED"
    error = stack.manifest("outside-1")["error"]
    assert uri in error and "outside the allowed input locations" in error
    assert stack.jobs.get_job("outside-1").error == error
    assert stack.stack.emulator_server.emulator.stats.requests == 0


def test_a_job_in_the_stacks_own_bucket_still_runs(stack):
    # Given an object anywhere in the stack's own bucket
    uri = _put(stack.stack.bucket, "staging/mine.jsonl", jsonl({"prompt": "a"}, {"prompt": "b"}))

    # When a job message names it
    stack.submit_job({"job_id": "own-1", "input": uri})
    status = stack.wait_for("own-1")

    # Then it runs to completion
    assert status == "COMPLETED"
    assert [r["status"] for r in stack.results("own-1")] == ["succeeded", "succeeded"]


def test_a_forged_s3_notification_for_another_bucket_fails_instead_of_reading_it(stack):
    # Given a message shaped like an S3 notification, but for a bucket that is not allowed
    boto3.client("s3").create_bucket(Bucket="someone-elses-bucket")
    _put("someone-elses-bucket", "inputs/x.jsonl", jsonl({"prompt": "leak me"}))
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "someone-elses-bucket"}, "object": {"key": "inputs/x.jsonl", "eTag": '"abc"'}},
    }
    boto3.client("sqs").send_message(QueueUrl=stack.stack.queue_url("IntakeQueue"), MessageBody=json.dumps({"Records": [record]}))
    job_id = S3Drop("someone-elses-bucket", "inputs/x.jsonl", None, '"abc"').job_id

    # When intake handles it
    status = stack.wait_for(job_id)

    # Then the job failed naming the location, and nothing reached the endpoint
    assert status == "FAILED"
    assert "s3://someone-elses-bucket/inputs/x.jsonl" in stack.manifest(job_id)["error"]
    assert stack.stack.emulator_server.emulator.stats.requests == 0


def test_a_job_under_an_allowed_location_runs(partner_stack):
    # Given a stack that allows s3://partner-data/batches/ and an object under it
    uri = _put(PARTNER, "batches/2024/run.jsonl", jsonl({"prompt": "x"}, {"prompt": "y"}))

    # When a job message names it
    partner_stack.submit_job({"job_id": "partner-1", "input": uri})
    status = partner_stack.wait_for("partner-1")

    # Then it runs to completion
    assert status == "COMPLETED"
    assert partner_stack.manifest("partner-1")["input"] == uri
    assert len(partner_stack.results("partner-1")) == 2


def test_an_allowed_bucket_is_allowed_only_under_its_prefix(partner_stack):
    # Given an object in the allowed bucket but outside the allowed prefix
    uri = _put(PARTNER, "private/run.jsonl", jsonl({"prompt": "x"}))

    # When a job message names it
    partner_stack.submit_job({"job_id": "partner-2", "input": uri})
    status = partner_stack.wait_for("partner-2")

    # Then it fails, naming the location and what is allowed
    assert status == "FAILED"
    error = partner_stack.manifest("partner-2")["error"]
    assert uri in error and f"s3://{PARTNER}/batches/" in error
