"""Intake on the fakes: an intake-queue message (S3 drop, job message, control message) becomes a job and its shards."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable

import pytest

from sagebatch.domain.deadline import DAY_S
from sagebatch.domain.generation import ErrorKind
from sagebatch.domain.job import JobStatus
from sagebatch.domain.layout import job_input_key
from sagebatch.domain.messages import FinalizeRequest, Shard
from sagebatch.fakes import FakeAws, FakeEndpointCaller, Pipeline, drive, s3_notification
from sagebatch.ports import SendFailed
from sagebatch.usecases.intake import S3Drop, job_id_for, retry_job_id

from .conftest import MakePipeline
from .helpers import job_of, jsonl, manifest_of, message, prompts, queued_shards, results_of


def bucket(aws: FakeAws) -> str:
    return aws.settings.bucket_name


def assert_failed_with_manifest(aws: FakeAws, job_id: str | None, reason: str) -> None:
    job = job_of(aws, job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None and reason in job.error
    assert job_id is not None
    manifest = manifest_of(aws, job_id)
    assert manifest == {"job_id": job_id, "status": "FAILED", "error": job.error}
    assert queued_shards(aws) == []


# -- S3 drops -----------------------------------------------------------------------------------
def test_an_s3_drop_becomes_a_running_job_over_that_version(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a file of three prompts dropped under inputs/, with a key S3 URL-encodes
    info = aws.objects.put(bucket(aws), "inputs/my prompts ü+1.jsonl", jsonl(*prompts(3)))
    # When intake gets S3's notification
    (outcome,) = pipeline.intake.handle_message(s3_notification(info), "m-1")
    # Then one RUNNING job reads exactly that version of the decoded key, in one shard of three lines
    job = job_of(aws, outcome.job_id)
    assert outcome.created and outcome.job_id == S3Drop(info.bucket, info.key, info.version_id, info.etag).job_id
    assert (job.status, job.key, job.version_id, job.total_records, job.total_shards) == (
        JobStatus.RUNNING,
        "inputs/my prompts ü+1.jsonl",
        info.version_id,
        3,
        1,
    )
    (shard,) = queued_shards(aws)
    assert (shard.key, shard.version_id, shard.start, shard.end, shard.first_line, shard.lines) == (
        info.key,
        info.version_id,
        0,
        info.size,
        1,
        3,
    )


def test_a_duplicate_s3_notification_finds_the_same_job(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a drop that intake has turned into a job
    info = aws.objects.put(bucket(aws), "inputs/a.jsonl", jsonl(*prompts(2)))
    (first,) = pipeline.intake.handle_message(s3_notification(info), "m-1")
    queued_shards(aws)
    # When S3 notifies again (a new message for the same object version)
    (again,) = pipeline.intake.handle_message(s3_notification(info), "m-2")
    # Then it names the same job, creates nothing and enqueues nothing
    assert (again.job_id, again.created, again.reason) == (first.job_id, False, "duplicate")
    assert queued_shards(aws) == [] and len(aws.jobs.list_jobs()) == 1


def test_s3s_test_event_is_skipped(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given S3's test event (sent when the notification is configured); When intake gets it; Then no job
    assert pipeline.intake.handle_message(message(Event="s3:TestEvent", Bucket=bucket(aws)), "m-1") == []
    assert aws.jobs.list_jobs() == []


# -- job messages ---------------------------------------------------------------------------------
def test_a_job_message_with_records_writes_its_input_and_runs(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a job message with inline records, job parameters and a client token
    body = message(records=prompts(3), client_token="nightly", parameters={"temperature": 0.2})
    # When intake handles it
    (outcome,) = pipeline.intake.handle_message(body, "m-1")
    # Then the job (named after the token) reads the input intake wrote, one record per line
    job_id = job_id_for("token:nightly")
    job = job_of(aws, outcome.job_id)
    assert outcome.job_id == job_id and job.status is JobStatus.RUNNING and job.total_records == 3
    assert (job.bucket, job.key) == (bucket(aws), job_input_key(job_id))
    assert aws.objects.read_bytes(bucket(aws), job_input_key(job_id)) == jsonl(*prompts(3))
    assert job.parameters.temperature == 0.2 and job.client_token == "nightly"
    assert [s.lines for s in queued_shards(aws)] == [3]


def test_a_job_message_with_an_input_uri_runs_over_that_object(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given an input file in the stack's bucket
    info = aws.objects.put(bucket(aws), "staging/eval.jsonl", jsonl(*prompts(5)))
    # When a job message names it
    (outcome,) = pipeline.intake.handle_message(message(input=f"s3://{bucket(aws)}/staging/eval.jsonl", job_id="eval-1"), "m-1")
    # Then the job reads it, pinned to the version it saw
    job = job_of(aws, "eval-1")
    assert outcome.created and job.status is JobStatus.RUNNING
    assert (job.key, job.version_id, job.etag, job.total_records) == ("staging/eval.jsonl", info.version_id, info.etag, 5)


def test_a_duplicate_submission_makes_no_second_job(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a job submitted with a client token
    body = message(records=prompts(2), client_token="once")
    (first,) = pipeline.intake.handle_message(body, "m-1")
    sent = len(aws.work.sent)
    # When the same submission arrives again as another message
    (again,) = pipeline.intake.handle_message(body, "m-2")
    # Then it is recognised: same job, not created, no more shards
    assert (again.job_id, again.created, again.reason) == (first.job_id, False, "duplicate")
    assert len(aws.jobs.list_jobs()) == 1 and len(aws.work.sent) == sent


def test_a_redelivered_message_without_a_token_finds_its_job(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a job message without a client token, handled once
    body = message(records=prompts(1))
    (first,) = pipeline.intake.handle_message(body, "m-7")
    # When SQS delivers the same message (same message id) again
    (again,) = pipeline.intake.handle_message(body, "m-7")
    # Then it is the same job
    assert first.job_id == again.job_id == job_id_for("msg:m-7") and not again.created


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (message(records=[{"prompt": "x"}], input="s3://b/k.jsonl"), "exactly one of 'input'"),
        (message(input="https://example.com/k.jsonl"), "s3://bucket/key"),
        (message(records=[{"prompt": "x"}], surprise=1), "surprise"),
    ],
    ids=["not-json", "not-an-object", "two-sources", "not-s3", "unknown-field"],
)
def test_an_invalid_message_becomes_a_failed_job_with_a_manifest(
    pipeline: Pipeline, aws: FakeAws, body: str, reason: str
) -> None:
    # Given a message that is not a valid job; When intake handles it
    (outcome,) = pipeline.intake.handle_message(body, "m-1")
    # Then a FAILED job (keyed on the message) says why, in its record and its manifest, and nothing runs
    assert outcome.job_id == job_id_for("msg:m-1") and reason in outcome.reason
    assert_failed_with_manifest(aws, outcome.job_id, reason)


def test_an_invalid_message_that_names_its_job_fails_under_that_name(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given an invalid message with a job id; When intake handles it; Then that job id is the FAILED job
    (outcome,) = pipeline.intake.handle_message(message(job_id="mine", input="s3://b"), "m-1")
    assert outcome.job_id == "mine"
    assert_failed_with_manifest(aws, "mine", "input")


# -- inputs that cannot run -------------------------------------------------------------------------
def test_a_gzip_input_fails_the_job(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a gzip-compressed JSONL file
    aws.objects.put(bucket(aws), "inputs/a.jsonl.gz", gzip.compress(jsonl(*prompts(3))))
    # When a job names it
    (outcome,) = pipeline.intake.handle_message(message(input=f"s3://{bucket(aws)}/inputs/a.jsonl.gz"), "m-1")
    # Then the job fails, saying the input is compressed
    assert_failed_with_manifest(aws, outcome.job_id, "gzip")


def test_an_unreadable_input_fails_the_job(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given no object at the named key; When a job names it
    (outcome,) = pipeline.intake.handle_message(message(input=f"s3://{bucket(aws)}/inputs/missing.jsonl"), "m-1")
    # Then the job fails, saying the input cannot be read
    assert_failed_with_manifest(aws, outcome.job_id, "cannot read")


def test_an_input_outside_the_allowed_locations_fails_the_job(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given another bucket holding a file, not among the allowed input locations
    aws.objects.create_bucket("someone-else")
    aws.objects.put("someone-else", "data.jsonl", jsonl(*prompts(1)))
    # When a job names it
    (outcome,) = pipeline.intake.handle_message(message(input="s3://someone-else/data.jsonl"), "m-1")
    # Then the job fails without reading it
    assert_failed_with_manifest(aws, outcome.job_id, "outside the allowed input locations")


def test_a_forged_notification_from_another_bucket_fails_its_job(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a notification that claims an object in a bucket that is not allowed
    aws.objects.create_bucket("someone-else")
    info = aws.objects.put("someone-else", "inputs/x.jsonl", jsonl(*prompts(1)))
    # When intake gets it; Then its job fails without reading the object
    (outcome,) = pipeline.intake.handle_message(s3_notification(info), "m-1")
    assert_failed_with_manifest(aws, outcome.job_id, "outside the allowed input locations")


def test_an_allowed_location_is_read_only_under_its_prefix(make_pipeline: MakePipeline) -> None:
    # Given a partner bucket allowed under exports/ only, with a file under exports/ and one beside it
    pipeline = make_pipeline(allowed_input_locations="s3://partner-data/exports/")
    aws = pipeline.aws
    aws.objects.create_bucket("partner-data", versioned=False)
    for key in ("exports/a.jsonl", "private/a.jsonl"):
        aws.objects.put("partner-data", key, jsonl(*prompts(2)))
    # When a job names each
    (inside,) = pipeline.intake.handle_message(message(input="s3://partner-data/exports/a.jsonl"), "m-1")
    (outside,) = pipeline.intake.handle_message(message(input="s3://partner-data/private/a.jsonl"), "m-2")
    # Then only the one under the prefix runs (pinned to its ETag: that bucket has no versions)
    running = job_of(aws, inside.job_id)
    assert running.status is JobStatus.RUNNING and running.version_id is None and running.etag
    assert job_of(aws, outside.job_id).status is JobStatus.FAILED


# -- sharding -------------------------------------------------------------------------------------
def test_shards_hold_at_most_shard_records_lines(make_pipeline: MakePipeline) -> None:
    # Given shards of at most 4 records and a file of 10
    pipeline = make_pipeline(shard_records=4)
    aws = pipeline.aws
    data = jsonl(*prompts(10))
    aws.objects.put(aws.settings.bucket_name, "inputs/ten.jsonl", data)
    # When a job reads it
    (outcome,) = pipeline.intake.handle_message(message(input=f"s3://{aws.settings.bucket_name}/inputs/ten.jsonl"), "m-1")
    # Then 3 shards of 4, 4 and 2 lines cover the file byte for byte, numbered in order
    shards = queued_shards(aws)
    assert [(s.shard, s.first_line, s.lines) for s in shards] == [(0, 1, 4), (1, 5, 4), (2, 9, 2)]
    assert b"".join(data[s.start : s.end] for s in shards) == data
    assert data[shards[1].start : shards[1].end] == jsonl(*prompts(4, start=5))
    assert job_of(aws, outcome.job_id).total_shards == 3


def test_shards_hold_at_most_shard_bytes_unless_one_line_is_larger(make_pipeline: MakePipeline) -> None:
    # Given shards of at most 1024 bytes, and lines of about 400 bytes with one of 3000 in the middle
    pipeline = make_pipeline(shard_bytes=1024)
    aws = pipeline.aws
    records = [{"prompt": "p" * 385}] * 3 + [{"prompt": "L" * 3000}] + [{"prompt": "p" * 385}] * 2
    data = jsonl(*records)
    aws.objects.put(aws.settings.bucket_name, "inputs/wide.jsonl", data)
    # When a job reads it
    pipeline.intake.handle_message(message(input=f"s3://{aws.settings.bucket_name}/inputs/wide.jsonl"), "m-1")
    # Then two lines fit a shard, the long line has a shard of its own, and nothing is lost
    shards = queued_shards(aws)
    assert [(s.first_line, s.lines) for s in shards] == [(1, 2), (3, 1), (4, 1), (5, 2)]
    assert all(s.end - s.start <= 1024 for s in shards if s.lines > 1)
    assert b"".join(data[s.start : s.end] for s in shards) == data


def test_an_empty_input_goes_straight_to_finalizing(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given an empty file
    aws.objects.put(bucket(aws), "inputs/empty.jsonl", b"")
    # When a job reads it
    (outcome,) = pipeline.intake.handle_message(message(input=f"s3://{bucket(aws)}/inputs/empty.jsonl"), "m-1")
    # Then it has no shards and intake itself sends the one finalize message
    job = job_of(aws, outcome.job_id)
    assert (job.status, job.total_records, job.total_shards) == (JobStatus.FINALIZING, 0, 0)
    assert queued_shards(aws) == []
    assert aws.finalize.messages(FinalizeRequest) == [FinalizeRequest(job_id=job.job_id)]


def test_a_failed_send_leaves_the_job_creating_and_a_redelivery_starts_it(make_pipeline: MakePipeline) -> None:
    # Given a work queue that takes one message and then refuses
    pipeline = make_pipeline(shard_records=2)
    aws = pipeline.aws
    aws.work.fail_after = 1
    body = message(records=prompts(5), job_id="j")
    # When intake enqueues three shards
    with pytest.raises(SendFailed):
        pipeline.intake.handle_message(body, "m-1")
    # Then the message must come back: the job is still CREATING
    assert job_of(aws, "j").status is JobStatus.CREATING
    # When it is redelivered after the queue recovered
    aws.work.fail_after = None
    (outcome,) = pipeline.intake.handle_message(body, "m-1")
    # Then the job runs with every shard enqueued (the first one twice: the worker counts a shard once)
    job = job_of(aws, "j")
    assert (job.status, job.total_shards) == (JobStatus.RUNNING, 3) and not outcome.created
    assert sorted(s.shard for s in queued_shards(aws)) == [0, 0, 1, 2]


# -- control messages ---------------------------------------------------------------------------------
def test_a_cancel_records_the_stop_once(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a running job
    pipeline.intake.handle_message(message(records=prompts(2), job_id="j"), "m-1")
    # When it is cancelled twice
    (first,) = pipeline.intake.handle_message(message(action="cancel", job_id="j"), "m-2")
    (second,) = pipeline.intake.handle_message(message(action="cancel", job_id="j"), "m-3")
    # Then the first cancel stopped it and the second changed nothing; it is still RUNNING, to finish normally
    job = job_of(aws, "j")
    assert (job.status, job.stop_reason) == (JobStatus.RUNNING, "cancelled")
    assert "cancelled" in first.reason and "already stopped" in second.reason
    assert not first.created and not second.created


@pytest.mark.parametrize(
    "body",
    [message(action="cancel", job_id="nobody"), message(action="pause", job_id="j"), message(action="cancel")],
    ids=["unknown-job", "unknown-action", "no-job-id"],
)
def test_a_pointless_or_invalid_control_message_creates_no_job(pipeline: Pipeline, aws: FakeAws, body: str) -> None:
    # Given no jobs; When a control message that cannot act arrives; Then it is acknowledged and no job appears
    (outcome,) = pipeline.intake.handle_message(body, "m-1")
    assert not outcome.created and outcome.reason
    assert aws.jobs.list_jobs() == []


def test_a_retry_runs_again_only_what_did_not_succeed(make_pipeline: MakePipeline) -> None:
    # Given a finished job whose line 2 failed (the endpoint refused it once)
    pipeline = make_pipeline(endpoint=FakeEndpointCaller())
    aws = pipeline.aws
    aws.endpoint.fail(ErrorKind.VALIDATION, containing="question 2", times=1)
    drive(aws, message(records=prompts(3), job_id="parent"), pipeline=pipeline)
    assert [r["status"] for r in results_of(aws, "parent")] == ["succeeded", "failed", "succeeded"]
    # When a retry of it is requested
    (outcome,) = pipeline.intake.handle_message(message(action="retry", job_id="parent"), "m-9")
    # Then a child job runs that one line, traced back to the parent's line 2 under the parent's id
    child_id = retry_job_id("parent")
    child = job_of(aws, child_id)
    assert outcome.job_id == child_id and child.parent_job_id == "parent" and child.total_records == 1
    assert aws.objects.read_bytes(bucket(aws), child.key) == jsonl(*prompts(1, start=2))
    drive(aws, pipeline=pipeline)
    (only,) = results_of(aws, child_id)
    assert (only["line"], only["parent_line"], only["id"], only["status"]) == (1, 2, 2, "succeeded")


def test_a_retry_of_an_unfinished_job_is_refused(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a running job; When a retry of it is requested
    pipeline.intake.handle_message(message(records=prompts(1), job_id="j"), "m-1")
    (outcome,) = pipeline.intake.handle_message(message(action="retry", job_id="j"), "m-2")
    # Then it is refused and no child job exists
    assert outcome.job_id is None and "RUNNING" in outcome.reason
    assert aws.jobs.get_job(retry_job_id("j")) is None


def test_a_repeated_retry_finds_the_same_child(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a finished job with a failed line, retried once
    aws.endpoint.fail(ErrorKind.VALIDATION, containing="question 1", times=1)
    drive(aws, message(records=prompts(2), job_id="parent"), pipeline=pipeline)
    (first,) = pipeline.intake.handle_message(message(action="retry", job_id="parent"), "m-8")
    # When the same retry is requested again
    (again,) = pipeline.intake.handle_message(message(action="retry", job_id="parent"), "m-9")
    # Then it names the same child and starts nothing new
    assert (again.job_id, again.created, again.reason) == (first.job_id, False, "duplicate")
    assert first.job_id == retry_job_id("parent") and len(aws.jobs.list_jobs()) == 2


def test_an_empty_input_whose_finalize_message_failed_is_finalized_on_redelivery(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given an empty file and a finalize queue that refuses one message
    aws.objects.put(bucket(aws), "inputs/empty.jsonl", b"")
    body = message(input=f"s3://{bucket(aws)}/inputs/empty.jsonl", job_id="j")
    aws.finalize.fail_after = 0
    with pytest.raises(SendFailed):
        pipeline.intake.handle_message(body, "m-1")
    # When the message is redelivered after the queue recovered
    aws.finalize.fail_after = None
    drive(aws, pipeline=pipeline)
    pipeline.intake.handle_message(body, "m-1")
    drive(aws, pipeline=pipeline)
    # Then the job completes
    assert job_of(aws, "j").status is JobStatus.COMPLETED


# -- long inputs: a checkpointed, resumable enqueue -------------------------------------------------
def stop_after_batches(batches: int) -> Callable[[], bool]:
    """A keep_going that lets intake send `batches` batches of ten shards (it asks after each), then says stop."""
    answers = iter([True] * (batches - 1))
    return lambda: next(answers, False)


def ranges(shards: list[Shard]) -> list[tuple[int, int, int, int, int]]:
    return sorted((s.shard, s.first_line, s.lines, s.start, s.end) for s in shards)


def put_input(aws: FakeAws, lines: int) -> str:
    """A file of `lines` prompts; the body of a job message over it (job id "j")."""
    aws.objects.put(bucket(aws), "inputs/long.jsonl", jsonl(*prompts(lines)))
    return message(input=f"s3://{bucket(aws)}/inputs/long.jsonl", job_id="j")


def test_an_intake_stopped_and_resumed_sends_exactly_the_shards_of_one_pass(make_pipeline: MakePipeline) -> None:
    # Given 95 lines in shards of 2 (48 shards), enqueued in one pass on a stack of their own
    one_pass = make_pipeline(shard_records=2)
    one_pass.intake.handle_message(put_input(one_pass.aws, 95), "m-1")
    expected = ranges(queued_shards(one_pass.aws))
    # When another intake of them stops after two batches, and the message it sent itself is handled
    pipeline = make_pipeline(shard_records=2)
    aws = pipeline.aws
    (first,) = pipeline.intake.handle_message(put_input(aws, 95), "m-1", stop_after_batches(2))
    stopped = job_of(aws, "j")
    (resume,) = aws.intake.pending()
    (second,) = pipeline.intake.handle_message(resume, "m-2")
    # Then the first left the job CREATING without totals, its progress saved after shard 20, and a resume_intake
    assert first.continues and stopped.status is JobStatus.CREATING and stopped.total_records is None
    assert stopped.intake_progress is not None
    assert (stopped.intake_progress.next_shard, stopped.intake_progress.next_line) == (20, 41)
    assert json.loads(resume) == {"action": "resume_intake", "job_id": "j"}
    # And together they sent the one pass's shards, each once, and started the job with its totals
    assert ranges(queued_shards(aws)) == expected and len(expected) == 48
    job = job_of(aws, "j")
    assert (second.reason, job.status, job.total_records, job.total_shards) == ("", JobStatus.RUNNING, 95, 48)


def test_a_job_enqueued_over_two_invocations_completes_with_one_result_a_line(make_pipeline: MakePipeline) -> None:
    # Given an intake of 95 lines (48 shards) that stops after its first batch
    pipeline = make_pipeline(shard_records=2)
    aws = pipeline.aws
    pipeline.intake.handle_message(put_input(aws, 95), "m-1", stop_after_batches(1))
    # When everything runs: the resume_intake message, the shards, the finalize
    drive(aws, pipeline=pipeline)
    # Then every line has one result, and the job's counts are the file's
    assert [r["line"] for r in results_of(aws, "j")] == list(range(1, 96))
    job = job_of(aws, "j")
    assert (job.status, job.total_records, job.total_shards, job.shards_done, job.succeeded) == (
        JobStatus.COMPLETED,
        95,
        48,
        48,
        95,
    )


def test_shards_sent_again_after_a_crash_before_the_checkpoint_are_processed_once(make_pipeline: MakePipeline) -> None:
    # Given an intake that saves its progress every 10 shards, and a work queue that takes 35 messages, then fails
    pipeline = make_pipeline(shard_records=2, intake_checkpoint_shards=10, intake_send_threads=1)
    aws = pipeline.aws
    body = put_input(aws, 95)
    aws.work.fail_after = 35
    with pytest.raises(SendFailed):
        pipeline.intake.handle_message(body, "m-1")
    saved = job_of(aws, "j").intake_progress
    # When the message is redelivered once the queue recovered, and everything runs
    aws.work.fail_after = None
    drive(aws, body, pipeline=pipeline)
    # Then intake had saved the 30 shards surely sent, resumed there, and sent the 5 after them twice
    sent = [Shard.model_validate_json(body).shard for body in aws.work.sent]
    assert saved is not None and saved.next_shard == 30
    assert sorted(n for n in set(sent) if sent.count(n) > 1) == [30, 31, 32, 33, 34]
    assert len(set(sent)) == 48
    # Yet each line was called once and has one result, and each shard counted once
    assert len(aws.endpoint.calls) == 95
    assert [r["line"] for r in results_of(aws, "j")] == list(range(1, 96))
    job = job_of(aws, "j")
    assert (job.status, job.total_records, job.shards_done, job.succeeded) == (JobStatus.COMPLETED, 95, 48, 95)


def test_a_resumed_retry_keeps_each_lines_place_in_the_parent(make_pipeline: MakePipeline) -> None:
    # Given a finished job of 30 lines that all failed once (one a shard), and a retry whose intake stops after a batch
    pipeline = make_pipeline(shard_records=1)
    aws = pipeline.aws
    aws.endpoint.fail(ErrorKind.VALIDATION, containing="question", times=30)
    drive(aws, message(records=prompts(30), job_id="parent"), pipeline=pipeline)
    (first,) = pipeline.intake.handle_message(message(action="retry", job_id="parent"), "m-9", stop_after_batches(1))
    # When the retry's intake resumes and the child runs
    drive(aws, pipeline=pipeline)
    # Then the child has all 30 lines, each traced back to its parent's line
    results = results_of(aws, retry_job_id("parent"))
    assert first.continues and job_of(aws, retry_job_id("parent")).total_records == 30
    assert [(r["line"], r["parent_line"], r["status"]) for r in results] == [(n, n, "succeeded") for n in range(1, 31)]


def test_a_resume_message_for_a_started_job_changes_nothing(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a job whose intake finished
    pipeline.intake.handle_message(message(records=prompts(3), job_id="j"), "m-1")
    queued_shards(aws)
    # When a resume_intake for it arrives (a duplicate, or forged)
    (outcome,) = pipeline.intake.handle_message(message(action="resume_intake", job_id="j"), "m-2")
    # Then nothing is sent and the job is as it was
    assert (outcome.job_id, outcome.created, outcome.reason) == ("j", False, "duplicate")
    assert queued_shards(aws) == [] and job_of(aws, "j").status is JobStatus.RUNNING


# -- deadlines ------------------------------------------------------------------------------------
def test_a_job_without_a_deadline_gets_one_derived_from_its_input_size(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a small job message without deadline_s, and no deployment default; When intake starts it
    pipeline.intake.handle_message(message(records=prompts(3), job_id="j"), "m-1")
    # Then its deadline is the derived one for a small input: a day
    job = job_of(aws, "j")
    assert job.deadline_at == pytest.approx(job.created_at + DAY_S)


def test_a_message_deadline_still_wins(pipeline: Pipeline, aws: FakeAws) -> None:
    # Given a job message with its own deadline_s; When intake starts it; Then that is its deadline
    pipeline.intake.handle_message(message(records=prompts(3), job_id="j", deadline_s=600), "m-1")
    job = job_of(aws, "j")
    assert job.deadline_at == pytest.approx(job.created_at + 600)
