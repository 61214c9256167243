"""The finalizer on the fakes: once per job, results.jsonl in line order and manifest.json, then the job's final status."""

from __future__ import annotations

import pytest

from sagebatch.domain.generation import ErrorKind
from sagebatch.domain.job import Job, JobStatus
from sagebatch.domain.layout import manifest_key, results_key
from sagebatch.domain.results import ResultLine, encode_result
from sagebatch.fakes import FakeAws, Pipeline, drive
from sagebatch.usecases.finalize import ResultsIncomplete

from .conftest import MakePipeline
from .helpers import job_of, jsonl, manifest_of, message, prompts, queued_shards, results_of


def finalizing_job(aws: FakeAws, lines: list[int], total: int) -> None:
    """A FINALIZING job of `total` lines with results stored for `lines` only."""
    aws.jobs.put(
        Job(
            job_id="j",
            source="s3://b/k",
            bucket="b",
            key="k",
            status=JobStatus.FINALIZING,
            total_records=total,
            total_shards=1,
            shards_done=1,
            succeeded=len(lines),
        )
    )
    # The job's one shard's part, holding `lines`
    aws.results.save_part(
        "j", 0, [encode_result(ResultLine(id=line, line=line, status="succeeded", output="ok")) for line in lines]
    )


def test_results_are_written_in_line_order_one_per_input_line(make_pipeline: MakePipeline) -> None:
    # Given a job of ten lines in four shards, two of them lines that cannot run
    pipeline = make_pipeline(shard_records=3)
    records: list[object] = [*prompts(4), "not json", *prompts(3, start=6), "", *prompts(1, start=10)]
    pipeline.aws.objects.put(pipeline.aws.settings.bucket_name, "inputs/ten.jsonl", jsonl(*records))
    # When the whole job runs
    drive(
        pipeline.aws, message(input=f"s3://{pipeline.aws.settings.bucket_name}/inputs/ten.jsonl", job_id="j"), pipeline=pipeline
    )
    # Then results.jsonl has one line per input line, in order, failed ones included
    results = results_of(pipeline.aws, "j")
    assert [r["line"] for r in results] == list(range(1, 11))
    assert [r["id"] for r in results] == list(range(1, 11))
    assert [r["error"]["type"] for r in results if r["status"] == "failed"] == ["invalid_json", "empty_line"]


def test_the_manifest_counts_records_tokens_and_calls(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a job of four records of which the endpoint refuses one
    aws.endpoint.fail(ErrorKind.VALIDATION, containing="question 3")
    # When the whole job runs
    drive(aws, message(records=prompts(4), job_id="j"), pipeline=pipeline)
    # Then the job is COMPLETED and its manifest adds up what results.jsonl holds
    manifest, results = manifest_of(aws, "j"), results_of(aws, "j")
    assert manifest["status"] == "COMPLETED" and job_of(aws, "j").status is JobStatus.COMPLETED
    assert manifest["counts"] == {"total": 4, "succeeded": 3, "failed": 1}
    assert manifest["tokens"] == {
        "input": sum(r["usage"]["input_tokens"] for r in results),
        "output": sum(r["usage"]["output_tokens"] for r in results),
    }
    assert manifest["tokens"]["output"] == 9
    assert manifest["endpoint_calls"] == sum(r["calls"] for r in results)
    assert manifest["results"] == f"s3://{aws.settings.bucket_name}/{results_key('j')}"


def test_a_missing_result_refuses_to_finalize(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a finalizing job of three lines with no result for line 2
    finalizing_job(aws, [1, 3], total=3)
    # When it is finalized; Then it refuses, names the line, writes nothing and stays FINALIZING
    with pytest.raises(ResultsIncomplete, match="line 2"):
        pipeline.finalizer.finalize("j")
    assert aws.objects.keys(aws.settings.bucket_name, "outputs/") == ["outputs/j/parts/00000000.jsonl"]
    assert job_of(aws, "j").status is JobStatus.FINALIZING


def test_fewer_results_than_lines_refuses_to_finalize(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a finalizing job of three lines with results for the first two only
    finalizing_job(aws, [1, 2], total=3)
    # When it is finalized; Then it refuses and the job stays FINALIZING
    with pytest.raises(ResultsIncomplete, match="2 results for 3 lines"):
        pipeline.finalizer.finalize("j")
    assert job_of(aws, "j").status is JobStatus.FINALIZING


def test_a_second_finalize_does_nothing(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a job finalized once
    finalizing_job(aws, [1, 2], total=2)
    first = pipeline.finalizer.finalize("j")
    # When the finalize message is delivered again
    again = pipeline.finalizer.finalize("j")
    # Then nothing is rewritten and the job stays COMPLETED
    assert first.status == JobStatus.COMPLETED and first.results_uri
    assert again.status == JobStatus.COMPLETED and again.results_uri is None
    bucket = aws.settings.bucket_name
    assert aws.objects.version_count(bucket, results_key("j")) == aws.objects.version_count(bucket, manifest_key("j")) == 1


@pytest.mark.parametrize(("job", "status"), [(None, "MISSING"), ("running", JobStatus.RUNNING)])
def test_a_job_that_is_not_finalizing_is_left_alone(pipeline: Pipeline, aws: FakeAws, job: str | None, status: str) -> None:
    # Given no job, or a job still running
    if job:
        pipeline.intake.handle_message(message(records=prompts(1), job_id="j"), "m-1")
    # When a finalize message for it arrives; Then nothing is written
    assert pipeline.finalizer.finalize("j").status == status
    assert aws.objects.keys(aws.settings.bucket_name, "outputs/") == []


def test_a_cancelled_job_ends_cancelled_with_its_cancelled_records(make_pipeline: MakePipeline) -> None:
    # Given a job of two shards, the first processed, then a cancel
    pipeline = make_pipeline(shard_records=2)
    aws = pipeline.aws
    pipeline.intake.handle_message(message(records=prompts(4), job_id="j"), "m-1")
    first, second = queued_shards(aws)
    pipeline.worker.process(first)
    pipeline.intake.handle_message(message(action="cancel", job_id="j"), "m-2")
    # When the rest of the job runs
    pipeline.worker.process(second)
    drive(aws, pipeline=pipeline)
    # Then it ends CANCELLED, every line accounted for
    manifest = manifest_of(aws, "j")
    assert job_of(aws, "j").status is JobStatus.CANCELLED and manifest["status"] == "CANCELLED"
    assert manifest["counts"] == {"total": 4, "succeeded": 2, "failed": 0, "cancelled": 2, "expired": 0}
    assert manifest["stop_reason"] == "cancelled"
    assert [r["status"] for r in results_of(aws, "j")] == ["succeeded", "succeeded", "cancelled", "cancelled"]


def test_an_expired_job_ends_expired(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a running job whose deadline has passed before its shard ran
    pipeline.intake.handle_message(message(records=prompts(2), job_id="j"), "m-1")
    aws.jobs.put(job_of(aws, "j").model_copy(update={"deadline_at": 1.0}))
    # When the job runs to the end
    drive(aws, pipeline=pipeline)
    # Then it ends EXPIRED
    assert job_of(aws, "j").status is JobStatus.EXPIRED
    assert manifest_of(aws, "j")["counts"]["expired"] == 2


def test_a_cancel_after_every_record_ran_still_completes(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a job whose only shard has run
    pipeline.intake.handle_message(message(records=prompts(2), job_id="j"), "m-1")
    (shard,) = queued_shards(aws)
    pipeline.worker.process(shard)
    # When a cancel arrives before the finalizer runs (too late: the job is FINALIZING)
    (cancel,) = pipeline.intake.handle_message(message(action="cancel", job_id="j"), "m-2")
    drive(aws, pipeline=pipeline)
    # Then the job completes normally
    assert "nothing left to cancel" in cancel.reason
    assert job_of(aws, "j").status is JobStatus.COMPLETED and manifest_of(aws, "j")["stop_reason"] is None


def test_duplicate_ids_are_flagged_in_the_results(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given records naming ids, one id named twice, and records without ids
    records = [{"id": "a", "prompt": "x"}, {"prompt": "y"}, {"id": "a", "prompt": "z"}, {"id": 2, "prompt": "w"}]
    # When the job runs
    drive(aws, message(records=records, job_id="j"), pipeline=pipeline)
    # Then the repeated id carries a note naming the first line; a line's default id never collides with a named one
    results = results_of(aws, "j")
    assert [r["notes"] for r in results] == [None, None, ["duplicate id: line 1 has the same id"], None]
    assert [r["id"] for r in results] == ["a", 2, "a", 2]
    assert all("id_given" not in r for r in results)
