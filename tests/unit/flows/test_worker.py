"""The worker on the fakes: a shard's records answered, stored once and counted once; the last shard finalizes."""

from __future__ import annotations

import threading
import time

import pytest

from sagebatch.domain.generation import ErrorKind
from sagebatch.domain.job import JobStatus
from sagebatch.domain.messages import FinalizeRequest, Shard
from sagebatch.domain.time_budget import TimeBudget
from sagebatch.fakes import FakeAws, Pipeline, build_pipeline, drive, fake_settings
from sagebatch.ports import SendFailed
from sagebatch.usecases.lease import Busy
from sagebatch.usecases.worker import ShardIncomplete, ShardOutcome

from .conftest import MakePipeline
from .helpers import job_of, jsonl, message, prompts, queued_shards


def submit(pipeline: Pipeline, records: list[dict[str, object]], job_id: str = "j") -> list[Shard]:
    """Run intake on a job of these records; return its shards (taken off the work queue)."""
    pipeline.intake.handle_message(message(records=records, job_id=job_id), f"m-{job_id}")
    return queued_shards(pipeline.aws)


def statuses(aws: FakeAws, job_id: str = "j") -> list[tuple[int, str]]:
    return [(r.line, r.status) for r in aws.results.results(job_id)]


def error_types(aws: FakeAws, job_id: str = "j") -> list[str | None]:
    return [r.error.type if r.error else None for r in aws.results.results(job_id)]


def test_a_shard_is_answered_stored_and_counted(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a job of one shard of three prompts
    (shard,) = submit(pipeline, prompts(3))
    # When the worker processes it
    outcome = pipeline.worker.process(shard)
    # Then each line has a result from one endpoint call, and the job counts them with their tokens
    assert outcome == ShardOutcome(stored=3, reused=0, pending=0, finalize_sent=True)
    assert statuses(aws) == [(1, "succeeded"), (2, "succeeded"), (3, "succeeded")]
    assert len(aws.endpoint.calls) == 3
    job = job_of(aws, "j")
    assert (job.succeeded, job.failed, job.shards_done, job.endpoint_calls) == (3, 0, 1, 3)
    assert job.input_tokens == sum(call.cost_tokens for call in aws.endpoint.calls) and job.output_tokens == 9


def test_a_shard_delivered_twice_is_answered_and_counted_once(make_pipeline: MakePipeline) -> None:
    # Given a job of two shards whose first shard has been processed
    pipeline = make_pipeline(shard_records=2)
    aws = pipeline.aws
    first, _ = submit(pipeline, prompts(4))
    pipeline.worker.process(first)
    # When the same shard is delivered again
    again = pipeline.worker.process(first)
    # Then nothing is called or counted again
    assert again == ShardOutcome(stored=0, reused=2, pending=0)
    assert len(aws.endpoint.calls) == 2
    job = job_of(aws, "j")
    assert (job.succeeded, job.shards_done, job.status) == (2, 1, JobStatus.RUNNING)


def test_a_redelivered_shard_reuses_stored_results(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a shard whose second record hit a retryable failure once, after the others were stored
    (shard,) = submit(pipeline, prompts(3))
    aws.endpoint.fail(ErrorKind.OVERLOADED, containing="question 2", times=1)
    with pytest.raises(ShardIncomplete):
        pipeline.worker.process(shard)
    assert sorted(aws.results.load_shard("j", 0)) == [1, 3] and job_of(aws, "j").shards_done == 0  # kept in its checkpoint
    # When the shard comes back
    outcome = pipeline.worker.process(shard)
    # Then only the missing record is sent again; the others are reused, and the shard counts all three once
    assert outcome == ShardOutcome(stored=1, reused=2, pending=0, finalize_sent=True)
    assert len(aws.endpoint.calls) == 4 and "question 2" in aws.endpoint.calls[-1].payload["inputs"]
    assert job_of(aws, "j").succeeded == 3


def test_a_retryable_failure_on_the_final_attempt_becomes_a_failed_line(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given an endpoint that keeps answering one record with "overloaded"
    (shard,) = submit(pipeline, prompts(3))
    aws.endpoint.fail(ErrorKind.OVERLOADED, containing="question 2")
    with pytest.raises(ShardIncomplete):
        pipeline.worker.process(shard)
    # When the shard's final attempt comes
    outcome = pipeline.worker.process(shard, final_attempt=True)
    # Then the record fails with the endpoint's reason, and the shard completes
    (failed,) = [r for r in aws.results.results("j") if r.status == "failed"]
    assert failed.line == 2 and failed.error is not None and failed.error.type == "endpoint_overloaded"
    assert "gave up after retries" in failed.error.message
    assert outcome.finalize_sent and (job_of(aws, "j").succeeded, job_of(aws, "j").failed) == (2, 1)


def test_a_non_retryable_endpoint_failure_fails_the_line_at_once(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given an endpoint that rejects one record as invalid; When the shard is processed
    (shard,) = submit(pipeline, prompts(2))
    aws.endpoint.fail(ErrorKind.VALIDATION, containing="question 1", message="Input validation error")
    pipeline.worker.process(shard)
    # Then that line fails with the endpoint's message on the first delivery
    assert error_types(aws) == ["endpoint_validation", None]
    assert job_of(aws, "j").failed == 1


def test_a_cancelled_jobs_records_are_answered_without_calls(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a job cancelled before its shard ran
    (shard,) = submit(pipeline, [{"id": "a", "prompt": "x"}, {"prompt": "y"}])
    pipeline.intake.handle_message(message(action="cancel", job_id="j"), "m-cancel")
    # When the shard is processed
    outcome = pipeline.worker.process(shard)
    # Then each record is `cancelled` under its own id, no call is made, and the shard still completes
    assert [(r.id, r.status) for r in aws.results.results("j")] == [("a", "cancelled"), (2, "cancelled")]
    assert aws.endpoint.calls == [] and outcome.finalize_sent
    assert job_of(aws, "j").cancelled == 2


def test_an_expired_jobs_records_are_answered_without_calls(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a running job whose deadline has passed
    (shard,) = submit(pipeline, prompts(2))
    aws.jobs.put(job_of(aws, "j").model_copy(update={"deadline_at": time.time() - 1}))
    # When its shard is processed
    pipeline.worker.process(shard)
    # Then the records are `expired` without calls, and the job records why it stopped
    assert statuses(aws) == [(1, "expired"), (2, "expired")] and aws.endpoint.calls == []
    job = job_of(aws, "j")
    assert (job.stop_reason, job.expired) == ("expired", 2)


def test_an_input_changed_after_intake_fails_its_lines(make_pipeline: MakePipeline) -> None:
    # Given a job over a file in an unversioned (ETag-pinned) allowed bucket, overwritten after intake
    pipeline = make_pipeline(allowed_input_locations="s3://partner/")
    aws = pipeline.aws
    aws.objects.create_bucket("partner", versioned=False)
    aws.objects.put("partner", "a.jsonl", jsonl(*prompts(2)))
    pipeline.intake.handle_message(message(input="s3://partner/a.jsonl", job_id="j"), "m-1")
    (shard,) = queued_shards(aws)
    aws.objects.put("partner", "a.jsonl", jsonl(*prompts(3, start=7)))
    # When the shard is processed
    outcome = pipeline.worker.process(shard)
    # Then every line fails as `input_unreadable` (none is lost), without calls, and the shard completes
    assert error_types(aws) == ["input_unreadable", "input_unreadable"]
    assert aws.endpoint.calls == [] and outcome.finalize_sent and job_of(aws, "j").failed == 2


def test_an_input_overwritten_in_the_versioned_bucket_is_still_read_as_it_was(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a job over a file in the stack's (versioned) bucket, overwritten after intake
    aws.objects.put(aws.settings.bucket_name, "inputs/a.jsonl", jsonl(*prompts(2)))
    pipeline.intake.handle_message(message(input=f"s3://{aws.settings.bucket_name}/inputs/a.jsonl", job_id="j"), "m-1")
    (shard,) = queued_shards(aws)
    aws.objects.put(aws.settings.bucket_name, "inputs/a.jsonl", b"garbage\n")
    # When the shard is processed; Then the version intake saw is answered
    pipeline.worker.process(shard)
    assert statuses(aws) == [(1, "succeeded"), (2, "succeeded")]
    sent = " ".join(call.payload["inputs"] for call in aws.endpoint.calls)
    assert "question 1" in sent and "question 2" in sent


def test_only_the_last_shard_sends_the_finalize_message(make_pipeline: MakePipeline) -> None:
    # Given a job of three shards
    pipeline = make_pipeline(shard_records=1)
    aws = pipeline.aws
    shards = submit(pipeline, prompts(3))
    # When they are processed in turn
    sent = [pipeline.worker.process(shard).finalize_sent for shard in shards]
    # Then exactly one finalize message was sent, by the last shard
    assert sent == [False, False, True]
    assert aws.finalize.messages(FinalizeRequest) == [FinalizeRequest(job_id="j")]
    assert job_of(aws, "j").status is JobStatus.FINALIZING


def test_a_redelivered_shard_of_a_finalizing_job_sends_no_second_finalize_request(make_pipeline: MakePipeline) -> None:
    # Given a job whose last shard switched it to FINALIZING and sent its finalize request
    pipeline = make_pipeline(shard_records=1)
    aws = pipeline.aws
    shards = submit(pipeline, prompts(2))
    for shard in shards:
        pipeline.worker.process(shard)
    # When the last shard is delivered again
    outcome = pipeline.worker.process(shards[-1])
    # Then it calls nothing and sends no second request
    assert not outcome.finalize_sent and outcome.stored == 0
    assert aws.finalize.messages(FinalizeRequest) == [FinalizeRequest(job_id="j")]


def test_racing_shards_send_exactly_one_finalize_message(make_pipeline: MakePipeline) -> None:
    # Given a job of eight shards
    pipeline = make_pipeline(shard_records=1)
    aws = pipeline.aws
    shards = submit(pipeline, prompts(8))
    # When eight workers process them at the same time
    threads = [threading.Thread(target=pipeline.worker.process, args=(shard,)) for shard in shards]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then one finalize message was sent and every shard counted once
    assert len(aws.finalize.sent) == 1
    job = job_of(aws, "j")
    assert (job.shards_done, job.succeeded, job.status) == (8, 8, JobStatus.FINALIZING)


def test_a_shard_of_a_job_that_is_not_running_is_dropped(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a shard whose job no longer exists; When it is processed; Then nothing happens
    (shard,) = submit(pipeline, prompts(1))
    orphan = shard.model_copy(update={"job_id": "gone"})
    assert pipeline.worker.process(orphan) == ShardOutcome(0, 0, 0)
    assert aws.endpoint.calls == []


def test_a_worker_out_of_time_sends_the_shard_back_without_calls(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a shard and an invocation with no time left for a call
    (shard,) = submit(pipeline, prompts(2))
    # When it is processed; Then it comes back untouched
    with pytest.raises(ShardIncomplete):
        pipeline.worker.process(shard, budget=TimeBudget(lambda: 0.0, reserve_s=75))
    assert aws.endpoint.calls == [] and list(aws.results.results("j")) == []


def test_a_shard_another_worker_holds_comes_back(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a shard whose lease another live worker holds
    (shard,) = submit(pipeline, prompts(1))
    assert aws.leases.lease("j", "shard#00000000").acquire("other-worker", 60)
    # When a second copy arrives and may not wait; Then it is told the shard is busy, and calls nothing
    with pytest.raises(Busy):
        pipeline.worker.process(shard, budget=TimeBudget(lambda: 0.0, reserve_s=75))
    assert aws.endpoint.calls == []


def test_a_finalize_message_that_could_not_be_sent_is_sent_on_redelivery(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a job of one shard, and a finalize queue that refuses messages
    pipeline.intake.handle_message(message(records=prompts(2), job_id="j"), "m-1")
    (shard,) = queued_shards(aws)
    aws.finalize.fail_after = 0
    # When the shard runs: it is counted and switches the job to FINALIZING, but the finalize request fails
    with pytest.raises(SendFailed):
        pipeline.worker.process(shard)
    assert job_of(aws, "j").status is JobStatus.FINALIZING
    # And the message is redelivered after the queue recovered
    aws.finalize.fail_after = None
    outcome = pipeline.worker.process(shard)
    drive(aws, pipeline=pipeline)
    # Then the redelivery asked for the finalize again, and the job completes
    assert outcome.finalize_sent
    assert job_of(aws, "j").status is JobStatus.COMPLETED


def test_a_failure_between_counting_the_last_shard_and_finalizing_is_recovered(
    pipeline: Pipeline, aws: FakeAws, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a job of one shard, and a store whose finalize switch fails once (a throttled update, a crash)
    pipeline.intake.handle_message(message(records=prompts(2), job_id="j"), "m-1")
    (shard,) = queued_shards(aws)
    switch = aws.jobs.try_begin_finalize
    calls = []

    def fails_once(job_id: str) -> bool:
        calls.append(job_id)
        if len(calls) == 1:
            raise RuntimeError("store unavailable")  # any error: the message comes back
        return switch(job_id)

    monkeypatch.setattr(aws.jobs, "try_begin_finalize", fails_once)
    with pytest.raises(RuntimeError):
        pipeline.worker.process(shard)
    # When the shard is redelivered
    pipeline.worker.process(shard)
    # Then the job moves on to finalizing and sends its finalize message
    assert job_of(aws, "j").status is JobStatus.FINALIZING
    assert aws.finalize.messages(FinalizeRequest) == [FinalizeRequest(job_id="j")]


def test_a_counted_shards_lease_is_left_to_lapse_and_a_later_copy_costs_no_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a job of two shards on a clock the test moves, and a lease store that notes its releases
    now = [1000.0]
    aws = FakeAws.create(fake_settings(shard_records=2), clock=lambda: now[0])
    releases: list[tuple[str, str, str]] = []
    monkeypatch.setattr(aws.leases, "release_lease", lambda *args: releases.append(args))
    with build_pipeline(aws, in_flight=2) as pipeline:
        first, _ = submit(pipeline, prompts(4))

        # When its first shard is processed, and a copy of it arrives after the lease lapsed
        pipeline.worker.process(first)
        now[0] += aws.settings.lease_seconds + 1
        again = pipeline.worker.process(first)

    # Then the counted shard's lease was not released (a write nobody needs), and the copy reused its results
    assert [name for _, name, _ in releases if name.startswith("shard#")] == []
    assert again == ShardOutcome(stored=0, reused=2, pending=0)
    assert len(aws.endpoint.calls) == 2 and job_of(aws, "j").shards_done == 1


def test_a_shards_last_answer_is_written_in_its_part_not_in_a_checkpoint_too(make_pipeline: MakePipeline) -> None:
    # Given a worker that checkpoints every answer, and a job of one shard of three prompts
    pipeline = make_pipeline(checkpoint_seconds=0)
    aws = pipeline.aws
    checkpoints: list[int] = []
    save = aws.results.save_checkpoint
    aws.results.save_checkpoint = lambda job_id, shard, encoded: checkpoints.append(len(encoded)) or save(job_id, shard, encoded)  # type: ignore[method-assign]
    (shard,) = submit(pipeline, prompts(3))

    # When it is processed
    pipeline.worker.process(shard)

    # Then answers were checkpointed as they came, but none held all three: the part did
    assert checkpoints and max(checkpoints) < 3
    assert statuses(aws) == [(1, "succeeded"), (2, "succeeded"), (3, "succeeded")]


def test_answers_whose_part_could_not_be_written_are_kept_for_the_next_delivery(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a shard of three prompts, and a store that fails the shard's part write once
    (shard,) = submit(pipeline, prompts(3))
    save_part = aws.results.save_part
    failures = [RuntimeError("S3 unavailable")]

    def fails_once(*args: object) -> None:
        if failures:
            raise failures.pop()
        save_part(*args)  # type: ignore[arg-type]

    aws.results.save_part = fails_once  # type: ignore[method-assign]

    # When it is processed (the message comes back), and delivered again
    with pytest.raises(RuntimeError):
        pipeline.worker.process(shard)
    kept = sorted(aws.results.load_shard("j", 0))
    outcome = pipeline.worker.process(shard)

    # Then the answers were checkpointed and reused: three calls in all, the shard counted once
    assert kept == [1, 2, 3]
    assert outcome == ShardOutcome(stored=0, reused=3, pending=0, finalize_sent=True)
    assert len(aws.endpoint.calls) == 3 and job_of(aws, "j").succeeded == 3
