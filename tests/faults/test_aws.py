"""AWS faults injected at botocore's before-send (the SDK's own retries apply): DynamoDB throttling and
S3 errors while writing the results."""

from __future__ import annotations

from contextlib import ExitStack

import boto3
import pytest

from sagebatch.domain.layout import results_key
from sagebatch.tooling.local.faults import (
    S3_INTERNAL_ERROR,
    S3_SLOW_DOWN,
    THROTTLED,
    After,
    fail_calls,
    fast_sdk_backoff,
    result_lines_of,
    s3_key_endswith,
)
from sagebatch.tooling.local.stack import REGION
from tests.faults.conftest import wait_until

SDK_ATTEMPTS = 5  # adapters/clients.py: standard mode, total_max_attempts 5


def test_throttling_below_the_attempt_limit_is_absorbed_by_the_sdk(harness):
    h = harness()
    # Given a 12-line job, S3 throttling (SlowDown) on the first 4 attempts of the write that keeps line 6's
    # result (its shard's checkpoint), and DynamoDB throttling on 2 shard-completion transactions and 2 job reads
    job = h.drop(12)
    with ExitStack() as faults, fast_sdk_backoff():
        rules = [
            faults.enter_context(
                fail_calls("s3", "PutObject", S3_SLOW_DOWN, times=SDK_ATTEMPTS - 1, match=lambda sent: 6 in result_lines_of(sent))
            ),
            faults.enter_context(fail_calls("dynamodb", "TransactWriteItems", THROTTLED, times=2)),
            faults.enter_context(fail_calls("dynamodb", "GetItem", THROTTLED, times=2)),
        ]

        # When the stack runs the job
        h.wait(job)

    # Then the SDK's retries absorbed every fault: no item failed, no line was generated twice
    assert [r.fired for r in rules] == [SDK_ATTEMPTS - 1, 2, 2]
    assert h.run.poller.stats.item_failures == 0 and h.run.poller.stats.batch_failures == 0
    h.check(job, fault="S3 / DynamoDB throttling < attempt limit", faults_tried=sum(r.fired for r in rules))


def test_persistent_throttling_of_a_result_write_fails_the_item_then_succeeds_on_redelivery(harness):
    h = harness()
    # Given a 12-line job, and S3 throttling on every attempt of the first write that keeps line 6's result
    # (all 5 SDK attempts of one call), which comes after the endpoint answered lines 5-8 (line 6's shard)
    job = h.drop(12)
    answered = After(lambda: wait_until(lambda: all(job.generations()[line] for line in range(5, 9))), S3_SLOW_DOWN)

    # When the stack runs the job
    with (
        fast_sdk_backoff(),
        fail_calls("s3", "PutObject", answered, times=SDK_ATTEMPTS, match=lambda sent: 6 in result_lines_of(sent)) as fault,
    ):
        h.wait(job)

    # Then the shard was handed back as an item failure and completed on redelivery; line 6 cost at most one
    # more generation, and no other line was generated twice
    assert fault.fired == SDK_ATTEMPTS
    assert h.run.poller.stats.item_failures == 1
    h.check(job, fault="S3 throttling of a result write, persistent", faults_tried=fault.fired, allow={6: 2})


@pytest.mark.parametrize(
    "name, target, error, times, finalize_deliveries",
    [
        ("S3 SlowDown 503 on results.jsonl x2", "results.jsonl", S3_SLOW_DOWN, 2, 1),
        ("S3 InternalError 500 on results.jsonl, persistent", "results.jsonl", S3_INTERNAL_ERROR, SDK_ATTEMPTS, 2),
        ("S3 SlowDown 503 on manifest.json, persistent", "manifest.json", S3_SLOW_DOWN, SDK_ATTEMPTS, 2),
    ],
    ids=["slowdown-results-transient", "internal-error-results-persistent", "slowdown-manifest-persistent"],
)
def test_s3_errors_writing_the_results_are_retried_and_the_job_completes_once(
    harness, name, target, error, times, finalize_deliveries
):
    h = harness()
    # Given a 12-line job, and S3 failing `times` attempts to write the job's `target`
    # (5 = every SDK attempt of one write: the finalize message must come back)
    job = h.drop(12)
    deliveries = []
    h.wrap("FinalizerFunction", lambda original, event, context: deliveries.append(1) or original(event, context))

    # When the stack runs the job
    with (
        fast_sdk_backoff(),
        fail_calls("s3", "PutObject", error, times=times, match=s3_key_endswith(f"/{job.job_id}/{target}")) as fault,
    ):
        h.wait(job)

    # Then the finalizer ran again when the SDK gave up, results.jsonl was written once (a second write only when
    # the manifest failed after it, byte-identical) and the job completed once
    assert fault.fired == times
    assert len(deliveries) == finalize_deliveries
    results_writes = 2 if target == "manifest.json" else 1
    h.check(job, fault=name, faults_tried=fault.fired, results_writes=results_writes)
    versions = boto3.client("s3", region_name=REGION).list_object_versions(
        Bucket=h.run.stack.bucket, Prefix=results_key(job.job_id)
    )["Versions"]
    assert len(versions) == results_writes
    assert len({v["ETag"] for v in versions}) == 1, "rewritten results.jsonl must be byte-identical"
    assert h.run.manifest(job.job_id)["counts"]["total"] == job.n
