"""The finalizer on the fakes: once per job, results.jsonl in line order and manifest.json, then the job's final status."""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Callable
from typing import Any

import pytest

from sagebatch.domain.generation import ErrorKind
from sagebatch.domain.job import Job, JobStatus
from sagebatch.domain.layout import assembly_key, errors_key, manifest_key, results_key
from sagebatch.domain.messages import FinalizeRequest
from sagebatch.domain.results import RecordError, ResultLine, encode_result
from sagebatch.fakes import FakeAws, Pipeline, drive
from sagebatch.usecases.finalize import AssemblyPaused, Finalizer, ResultsIncomplete

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


# -- streamed assembly: multipart parts, paused and resumed across deliveries --------------------------------------
PART = 4096  # bytes a part gathers in these tests (S3's 5 MiB, scaled down; the fake is told the same minimum)


def stored_job(aws: FakeAws, shards: int, per_shard: int, output_format: str = "native") -> None:
    """A FINALIZING job of `shards` x `per_shard` lines with every shard's part stored: outputs of varied length,
    every fifth line failed, ids that repeat (duplicate-id notes span shards), and for a peer format its input."""
    bucket = aws.settings.bucket_name
    aws.objects.MIN_PART_BYTES = PART  # every part but the last must hold a part's worth
    total = shards * per_shard
    info = aws.objects.put(bucket, "inputs/in.jsonl", jsonl(*({"custom_id": f"c{n}", "body": {}} for n in range(1, total + 1))))
    aws.jobs.put(
        Job(
            job_id="j",
            source=f"s3://{bucket}/inputs/in.jsonl",
            bucket=bucket,
            key="inputs/in.jsonl",
            version_id=info.version_id,
            etag=info.etag,
            output_format=output_format,  # type: ignore[arg-type]
            status=JobStatus.FINALIZING,
            total_records=total,
            total_shards=shards,
            shards_done=shards,
        )
    )
    for shard in range(shards):
        lines = range(shard * per_shard + 1, (shard + 1) * per_shard + 1)
        aws.results.save_part("j", shard, [encode_result(result_line(line, output_format)) for line in lines])


def result_line(line: int, output_format: str) -> ResultLine:
    record_id = f"c{line}" if output_format == "openai" else f"id{line % 7}"
    if line % 5 == 0:
        return ResultLine(id=record_id, id_given=True, line=line, status="failed", error=RecordError(type="x", message="no"))
    return ResultLine(id=record_id, id_given=True, line=line, status="succeeded", output="word " * (line % 40))


def finalizer_of(aws: FakeAws, **options: Any) -> Finalizer:
    return Finalizer(aws.jobs, aws.results, aws.objects, aws.settings, part_bytes=PART, **options)


def stop_every(shards: int) -> Callable[[], bool]:
    """A keep_going that says stop after every `shards` shards (it is asked once after each)."""
    asked = itertools.count(1)
    return lambda: next(asked) % shards != 0


def outputs(aws: FakeAws) -> dict[str, bytes | None]:
    bucket = aws.settings.bucket_name
    return {key: aws.objects.read_if_exists(bucket, key) for key in (results_key("j"), errors_key("j"))}


def one_pass(shards: int, per_shard: int, output_format: str = "native") -> dict[str, bytes | None]:
    aws = FakeAws.create()
    stored_job(aws, shards, per_shard, output_format)
    finalizer_of(aws).finalize("j")
    return outputs(aws)


def finalize_until_done(aws: FakeAws, keep_going: Callable[[], bool]) -> int:
    """Deliver the finalize message, and each one a pause sends, until the job closes; how many deliveries."""
    finalizer = finalizer_of(aws, finalize=aws.finalize)
    aws.finalize.send(FinalizeRequest(job_id="j"))
    deliveries = 0
    while (delivery := aws.finalize.receive()) is not None:
        deliveries += 1
        finalizer.finalize(FinalizeRequest.model_validate_json(delivery.body).job_id, keep_going)
    return deliveries


def test_a_job_assembled_across_deliveries_is_byte_for_byte_the_one_pass_file(aws: FakeAws) -> None:
    # Given a job of 12 shards whose results.jsonl takes several parts, with ids repeated across shards
    stored_job(aws, shards=12, per_shard=6)
    # When every finalize delivery stops after one shard (mostly between parts), each pause sending the message
    # that resumes it
    deliveries = finalize_until_done(aws, stop_every(1))
    # Then the job took 12 deliveries and completed, with exactly the bytes of one pass, duplicate-id notes included
    assert deliveries == 12 and job_of(aws, "j").status is JobStatus.COMPLETED
    assert outputs(aws) == one_pass(shards=12, per_shard=6)
    assert "duplicate id: line 1 has the same id" in (outputs(aws)[results_key("j")] or b"").decode()
    assembly = manifest_of(aws, "j")["assembly"]
    assert assembly["deliveries"] == 12 and assembly["results_parts"] > 2


def test_openai_errors_jsonl_is_the_same_across_pauses(aws: FakeAws) -> None:
    # Given an OpenAI-format job (its lines rendered from the input, re-read from where each pause stopped)
    stored_job(aws, shards=10, per_shard=8, output_format="openai")
    # When it is assembled 3 shards per delivery
    finalize_until_done(aws, stop_every(3))
    # Then results.jsonl and errors.jsonl are those of one pass, each custom_id echoed from its own input line
    files = outputs(aws)
    assert files == one_pass(shards=10, per_shard=8, output_format="openai")
    results = [json.loads(line) for line in (files[results_key("j")] or b"").splitlines()]
    assert [r["custom_id"] for r in results] == [f"c{n}" for n in range(1, 81)]
    assert len((files[errors_key("j")] or b"").splitlines()) == 16


def test_a_checkpoint_whose_upload_vanished_starts_over(aws: FakeAws) -> None:
    # Given an assembly paused with parts uploaded, whose multipart upload was then aborted (e.g. by a lifecycle rule)
    stored_job(aws, shards=12, per_shard=6)
    with pytest.raises(AssemblyPaused):
        finalizer_of(aws).finalize("j", stop_every(6))
    checkpoint = json.loads(aws.objects.read_bytes(aws.settings.bucket_name, assembly_key("j")))
    aws.objects.abort_multipart(aws.settings.bucket_name, results_key("j"), checkpoint["results"]["upload_id"])
    # When the next delivery goes on
    outcome = finalizer_of(aws).finalize("j")
    # Then it starts over and writes the whole file, the checkpoint gone
    assert outcome.status == JobStatus.COMPLETED
    assert outputs(aws) == one_pass(shards=12, per_shard=6)
    assert aws.objects.read_if_exists(aws.settings.bucket_name, assembly_key("j")) is None


def test_a_pause_sends_a_fresh_finalize_message_and_reports_success(aws: FakeAws) -> None:
    # Given a job of several shards and a finalizer that has the finalize queue
    stored_job(aws, shards=4, per_shard=6)
    # When its time runs out after the first shard
    outcome = finalizer_of(aws, finalize=aws.finalize).finalize("j", lambda: False)
    # Then it returns (no receive of its own message burnt), a new finalize message queued, the job still FINALIZING
    assert outcome.paused and outcome.results_uri is None
    assert FinalizeRequest.model_validate_json(aws.finalize.receive().body).job_id == "j"  # type: ignore[union-attr]
    assert job_of(aws, "j").status is JobStatus.FINALIZING


def test_assembly_never_uses_temporary_files(aws: FakeAws, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given temporary files (Lambda's /tmp is 512 MB) that fail if anything asks for one
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a temporary file was asked for")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    stored_job(aws, shards=8, per_shard=6, output_format="openai")
    # When a job of several parts is finalized; Then it completes
    assert finalizer_of(aws).finalize("j").status == JobStatus.COMPLETED


def test_an_empty_job_still_gets_an_empty_results_file(aws: FakeAws) -> None:
    # Given a finalizing job of no lines
    stored_job(aws, shards=0, per_shard=0)
    # When it is finalized
    finalizer_of(aws).finalize("j")
    # Then results.jsonl exists and is empty, written as one part
    assert outputs(aws)[results_key("j")] == b""
    assert manifest_of(aws, "j")["assembly"]["results_parts"] == 1


def test_the_manifest_names_the_result_parts_by_prefix_pattern_and_count(aws: FakeAws) -> None:
    # Given a job of 12 shards
    stored_job(aws, shards=12, per_shard=6)
    # When it is finalized
    finalizer_of(aws).finalize("j")
    # Then the manifest says where its 12 parts are without listing each
    bucket = aws.settings.bucket_name
    assert manifest_of(aws, "j")["result_parts"] == {
        "prefix": f"s3://{bucket}/outputs/j/parts/",
        "key_pattern": "outputs/j/parts/{shard:08d}.jsonl",
        "count": 12,
    }
