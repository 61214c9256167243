"""results.jsonl assembled as an S3 multipart upload (through S3ObjectStore, on moto), paused and resumed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from sagebatch.adapters.objects import S3ObjectStore
from sagebatch.domain.formats import dumps_line
from sagebatch.domain.job import Job, JobStatus
from sagebatch.domain.layout import assembly_key, manifest_key, results_key
from sagebatch.domain.results import ResultLine, encode_result
from sagebatch.fakes import InMemoryCallCacheStore, InMemoryJobStore, fake_settings
from sagebatch.ports import UploadGone
from sagebatch.tooling.local.stack import REGION
from sagebatch.usecases.finalize import AssemblyPaused, Finalizer
from sagebatch.usecases.parts import PartsResultStore

BUCKET = "assembly-bucket"
MIN_PART = 5 * 1024 * 1024  # what S3 (and moto) take for every part but the last
SHARDS, PER_SHARD = 48, 250  # 12,000 lines of ~1 KB: results.jsonl of ~12 MB, three parts


@pytest.fixture
def s3() -> Iterator[object]:
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        yield client


def result(line: int) -> ResultLine:
    return ResultLine(id=line, line=line, status="succeeded", output=f"answer {line} " + "x" * 900)


def test_a_multipart_assembled_results_file_round_trips_through_s3(s3: object) -> None:
    # Given a finalizing job whose 48 shards' parts are in S3, and a finalizer with S3's minimum part size
    objects = S3ObjectStore(s3)
    results = PartsResultStore(objects, BUCKET, InMemoryCallCacheStore())
    jobs = InMemoryJobStore()
    jobs.put(
        Job(
            job_id="j",
            source=f"s3://{BUCKET}/inputs/in.jsonl",
            bucket=BUCKET,
            key="inputs/in.jsonl",
            status=JobStatus.FINALIZING,
            total_records=SHARDS * PER_SHARD,
            total_shards=SHARDS,
            shards_done=SHARDS,
            succeeded=SHARDS * PER_SHARD,
        )
    )
    for shard in range(SHARDS):
        first = shard * PER_SHARD + 1
        results.save_part("j", shard, [encode_result(result(line)) for line in range(first, first + PER_SHARD)])
    finalizer = Finalizer(jobs, results, objects, fake_settings(bucket_name=BUCKET), part_bytes=MIN_PART)

    # When one delivery stops after 20 shards (a part uploaded, the rest pending in the checkpoint), the next finishes
    shards_seen = iter(range(1, SHARDS + 1))
    with pytest.raises(AssemblyPaused):
        finalizer.finalize("j", lambda: next(shards_seen) < 20)
    paused = json.loads(objects.read_bytes(BUCKET, assembly_key("j")))
    outcome = finalizer.finalize("j")

    # Then results.jsonl is every line in order, as one pass renders it, in 3 parts; the checkpoint is gone
    expected = b"".join((dumps_line(result(line).public_json()) + "\n").encode() for line in range(1, SHARDS * PER_SHARD + 1))
    assert outcome.status == JobStatus.COMPLETED
    assert len(paused["results"]["etags"]) == 1 and paused["next_shard"] == 20
    assert objects.read_bytes(BUCKET, results_key("j")) == expected
    manifest = json.loads(objects.read_bytes(BUCKET, manifest_key("j")))
    assert manifest["assembly"] == {"results_parts": 3, "errors_parts": None, "results_bytes": len(expected), "deliveries": 2}
    assert objects.read_if_exists(BUCKET, assembly_key("j")) is None


def test_aborting_an_upload_twice_is_no_error(s3: object) -> None:
    # Given an upload that was aborted (by an earlier delivery, or a lifecycle rule)
    objects = S3ObjectStore(s3)
    upload_id = objects.start_multipart(BUCKET, "outputs/j/results.jsonl")
    objects.abort_multipart(BUCKET, "outputs/j/results.jsonl", upload_id)
    # When it is aborted again (a restarting assembly discards its checkpoint's uploads); Then nothing is raised
    objects.abort_multipart(BUCKET, "outputs/j/results.jsonl", upload_id)


@pytest.mark.parametrize("operation", ["upload_part", "complete_multipart_upload"])
def test_s3s_no_such_upload_is_the_ports_upload_gone(operation: str) -> None:
    # Given S3 answering NoSuchUpload (moto raises a KeyError here instead, so S3's answer is stubbed)
    client = boto3.client("s3", region_name=REGION)
    stubber = Stubber(client)
    stubber.add_client_error(operation, service_error_code="NoSuchUpload", http_status_code=404)
    objects = S3ObjectStore(client)
    # When a part is uploaded, or the upload completed; Then the adapter raises UploadGone
    with stubber, pytest.raises(UploadGone):
        if operation == "upload_part":
            objects.upload_part(BUCKET, "k", "gone", 1, b"x")
        else:
            objects.complete_multipart(BUCKET, "k", "gone", ['"etag"'])
