"""Job control through the local stack: cancel, deadlines, retry of what did not succeed, DLQ redrive, the CLI.

To see a job stop half-way, the tests drive the event-source poller one round at a time (`poll_once`: one intake
message, then one worker batch of two small shards), or run it in a thread against a slow emulator.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import boto3
import pytest

from sagebatch.lambdas import service
from sagebatch.tooling import cli
from sagebatch.tooling.emulator.server import EmulatorConfig, FaultConfig
from sagebatch.tooling.local.runner import dlq_depths
from sagebatch.tooling.local.session import LocalRun, local_stack
from tests.conftest import jsonl

SHARD_RECORDS = 2  # the poller's worker batch is 2 messages, so one round answers 4 records


@pytest.fixture
def control_stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., LocalRun]]:
    """`control_stack(slow_seconds=0, stop_check_seconds=None, shard_records=2, **parameters)`: a stack with small
    shards and one worker invocation per poller round; `slow_seconds` delays every endpoint answer."""
    with ExitStack() as stacks:

        def build(
            slow_seconds: float = 0.0,
            stop_check_seconds: float | None = None,
            shard_records: int = SHARD_RECORDS,
            **parameters: Any,
        ) -> LocalRun:
            monkeypatch.setenv("SAGEBATCH_SHARD_RECORDS", str(shard_records))
            # These tests step the event source one round at a time: workers take no shards of their own.
            monkeypatch.setenv("SAGEBATCH_SELF_FEED", "false")
            if stop_check_seconds is not None:
                monkeypatch.setenv("SAGEBATCH_STOP_CHECK_SECONDS", str(stop_check_seconds))
            emulator = EmulatorConfig(faults=FaultConfig(slow=1.0 if slow_seconds else 0.0, slow_seconds=slow_seconds))
            run = stacks.enter_context(local_stack(parameters=parameters or None, emulator=emulator, parallel=1))
            # One round answers two shards (the template's BatchSize takes ten: a whole small job in one round).
            run.poller.triggers = [replace(t, batch_size=2) if t.function == "WorkerFunction" else t for t in run.poller.triggers]
            run.drain()  # the s3:TestEvent S3 sends when the bucket notification is configured
            return run

        yield build


def prompts(count: int) -> bytes:
    """`count` prompt records; the odd ones name an id, the even ones default to their line number."""
    return jsonl(*({"id": f"r{n}", "prompt": f"Say {n}."} if n % 2 else {"prompt": f"Say {n}."} for n in range(1, count + 1)))


def submit(run: LocalRun, job_id: str, data: bytes, **spec: Any) -> None:
    """Store `data` in the stack's bucket and send a job message for it (no S3 notification outside inputs/)."""
    boto3.client("s3").put_object(Bucket=run.stack.bucket, Key=f"staging/{job_id}.jsonl", Body=data)
    run.submit_job({"job_id": job_id, "input": f"s3://{run.stack.bucket}/staging/{job_id}.jsonl", **spec})


def intake_directly(body: dict[str, Any]) -> str:
    """Hand one message to the intake use case, as a concurrent intake invocation would; returns its outcome."""
    return service.intake().handle_message(json.dumps(body), "direct")[0].reason


def cancel_now(job_id: str) -> None:
    """The cancel message handled by intake before the stack runs on: the event sources run the functions at once,
    so a cancel sent to the queue would race the workers for the job's next shards."""
    intake_directly({"action": "cancel", "job_id": job_id})


def move_deadline(run: LocalRun, job_id: str, at: float) -> None:
    boto3.client("dynamodb").update_item(
        TableName=run.stack.table,
        Key={"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "META"}},
        UpdateExpression="SET deadline_at = :at",
        ExpressionAttributeValues={":at": {"N": str(at)}},
    )


def requests(run: LocalRun) -> int:
    return run.stack.emulator_server.emulator.stats.requests


def statuses(run: LocalRun, job_id: str) -> list[str]:
    return [r["status"] for r in run.results(job_id)]


def cancelled_after_one_round(run: LocalRun, job_id: str = "ten", records: int = 10) -> None:
    """A `records`-line job of which one worker round (2 shards, 4 records) ran before it was cancelled."""
    submit(run, job_id, prompts(records))
    run.poller.poll_once()  # intake, then the first two shards
    cancel_now(job_id)
    run.wait_for(job_id)


# -- cancel -------------------------------------------------------------------------------------
def test_a_cancelled_job_keeps_what_was_done_and_cancels_the_rest(control_stack):
    # Given a 10-line job (5 shards of 2) whose first worker round answered 4 records
    run = control_stack()
    submit(run, "ten", prompts(10))
    run.poller.poll_once()
    assert requests(run) == 4

    # When it is cancelled and the stack runs to the end
    cancel_now("ten")
    status = run.wait_for("ten")

    # Then the job is CANCELLED, results.jsonl has one line per input line in order, the 4 answered records
    # kept their outputs, the other 6 are `cancelled` without an endpoint call, and the manifest counts them
    assert status == "CANCELLED"
    results = run.results("ten")
    assert [r["line"] for r in results] == list(range(1, 11))
    assert [r["status"] for r in results] == ["succeeded"] * 4 + ["cancelled"] * 6
    assert all(r["output"] for r in results[:4])
    assert all(r["error"]["type"] == "cancelled" and r["calls"] == 0 and r["output"] is None for r in results[4:])
    assert [r["id"] for r in results] == ["r1", 2, "r3", 4, "r5", 6, "r7", 8, "r9", 10]
    assert requests(run) == 4
    manifest = run.manifest("ten")
    assert manifest["status"] == "CANCELLED" and manifest["stop_reason"] == "cancelled"
    assert manifest["counts"] == {"total": 10, "succeeded": 4, "failed": 0, "cancelled": 6, "expired": 0}
    assert manifest["endpoint_calls"] == 4


def test_records_in_flight_when_the_cancel_arrives_finish_and_no_call_starts_after_it(control_stack):
    # Given one 8-record shard, 2 calls in flight at a time, answers taking 1 s, and workers that re-read the
    # job before every record (a stop-check interval of 0)
    run = control_stack(slow_seconds=1.0, stop_check_seconds=0, shard_records=8, EndpointMaxConcurrency=2)
    run.submit_job({"job_id": "inflight", "records": [{"id": n, "prompt": f"Say {n}."} for n in range(1, 9)]})
    runner = threading.Thread(target=run.wait_for, args=("inflight", 60))
    runner.start()

    # When the job is cancelled while the first two calls are in flight
    deadline = time.monotonic() + 30
    while requests(run) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    in_flight = requests(run)
    reason = intake_directly({"action": "cancel", "job_id": "inflight"})
    runner.join(60)

    # Then those two calls finished and were stored, every other record is cancelled, and the endpoint saw
    # no request after the cancel
    assert "cancelled" in reason
    # (2 in flight at a time; under load more may have started before the test saw the first two and cancelled)
    assert 2 <= in_flight < 8 and run.stack.emulator_server.emulator.stats.max_in_flight <= 2
    assert run.jobs.get_job("inflight").status == "CANCELLED"
    assert statuses(run, "inflight") == ["succeeded"] * in_flight + ["cancelled"] * (8 - in_flight)
    assert requests(run) == in_flight


def test_a_second_cancel_changes_nothing(control_stack):
    # Given a running job that was cancelled once
    run = control_stack()
    submit(run, "twice", prompts(6))
    run.poller.poll_once()
    first = intake_directly({"action": "cancel", "job_id": "twice"})
    stopped_at = run.jobs.get_job("twice").stopped_at

    # When the same cancel comes again (a resent or redelivered message)
    second = intake_directly({"action": "cancel", "job_id": "twice"})
    status = run.wait_for("twice")

    # Then it is a no-op that says so, and the job finishes cancelled once
    assert "cancelled" in first and "already stopped" in second
    assert run.jobs.get_job("twice").stopped_at == stopped_at
    assert status == "CANCELLED"
    assert statuses(run, "twice") == ["succeeded"] * 4 + ["cancelled"] * 2


def test_cancelling_an_unknown_job_creates_nothing(control_stack):
    # Given an empty stack; When a cancel names a job that does not exist
    run = control_stack()
    run.cancel("no-such-job")
    run.drain()

    # Then the message is consumed without creating a job (or a failure manifest)
    assert run.jobs_in_table() == []
    assert intake_directly({"action": "cancel", "job_id": "no-such-job"}) == "no job no-such-job: nothing to cancel"


def test_cancelling_a_finished_job_changes_nothing(control_stack):
    # Given a completed job
    run = control_stack()
    submit(run, "done", prompts(3))
    assert run.wait_for("done") == "COMPLETED"
    manifest = run.manifest("done")

    # When a cancel arrives for it
    reason = intake_directly({"action": "cancel", "job_id": "done"})

    # Then it says the job is finished, and neither the job nor its outputs change
    assert "is COMPLETED" in reason and "nothing changed" in reason
    job = run.jobs.get_job("done")
    assert (job.status, job.stop_reason) == ("COMPLETED", None)
    assert run.manifest("done") == manifest


def test_an_invalid_control_message_is_refused_without_creating_a_job(control_stack):
    # Given an action the intake does not know and a cancel without a job id
    run = control_stack()

    # When they are handled, and sent through the intake queue
    unknown = intake_directly({"action": "pause", "job_id": "x"})
    incomplete = intake_directly({"action": "cancel"})
    run.submit_job({"action": "pause", "job_id": "x"})
    run.drain()

    # Then each is refused with a reason naming what is valid, nothing is created, and nothing is dead-lettered
    assert "invalid control message" in unknown and "'cancel', 'retry'" in unknown
    assert "job_id" in incomplete
    assert run.jobs_in_table() == []
    assert set(dlq_depths(run.stack).values()) == {0}


# -- deadline -----------------------------------------------------------------------------------
def test_records_not_started_by_the_deadline_expire(control_stack):
    # Given a 10-line job with a 10-minute deadline, of which one worker round ran in time
    run = control_stack()
    submit(run, "late", prompts(10), deadline_s=600)
    run.poller.poll_once()
    job = run.jobs.get_job("late")
    assert job.deadline_at == pytest.approx(job.created_at + 600)

    # When the clock passes the deadline before the rest comes up (moved on the job item, so no test waits 10 min)
    move_deadline(run, "late", time.time() - 1)
    status = run.wait_for("late")

    # Then the job is EXPIRED: the 4 answered records kept, the other 6 `expired` without a call
    assert status == "EXPIRED"
    results = run.results("late")
    assert [r["status"] for r in results] == ["succeeded"] * 4 + ["expired"] * 6
    assert all(r["error"]["type"] == "expired" and "deadline" in r["error"]["message"] for r in results[4:])
    assert requests(run) == 4
    manifest = run.manifest("late")
    assert manifest["status"] == "EXPIRED" and manifest["stop_reason"] == "expired"
    assert manifest["counts"] == {"total": 10, "succeeded": 4, "failed": 0, "cancelled": 0, "expired": 6}


def test_a_job_whose_deadline_passed_before_any_shard_ran_makes_no_call(control_stack):
    # Given a job created with a 1-second deadline whose shards wait longer than that in the queue
    run = control_stack()
    boto3.client("s3").put_object(Bucket=run.stack.bucket, Key="staging/queued.jsonl", Body=prompts(6))
    intake_directly({"job_id": "queued", "input": f"s3://{run.stack.bucket}/staging/queued.jsonl", "deadline_s": 1})
    time.sleep(1.1)

    # When the workers get to them
    status = run.wait_for("queued")

    # Then every record expired, the endpoint was never called, and results.jsonl was still written
    assert status == "EXPIRED"
    assert statuses(run, "queued") == ["expired"] * 6
    assert requests(run) == 0


def test_a_cancel_after_the_deadline_keeps_the_job_expired(control_stack):
    # Given a job whose deadline passed and was recorded by a worker
    run = control_stack()
    boto3.client("s3").put_object(Bucket=run.stack.bucket, Key="staging/both.jsonl", Body=prompts(6))
    intake_directly({"job_id": "both", "input": f"s3://{run.stack.bucket}/staging/both.jsonl", "deadline_s": 1})
    time.sleep(1.1)
    run.poller.poll_once()

    # When a cancel arrives
    reason = intake_directly({"action": "cancel", "job_id": "both"})

    # Then the first recorded reason stays: the job ends EXPIRED, no record is `cancelled`
    assert "already stopped (expired)" in reason
    assert run.wait_for("both") == "EXPIRED"
    assert set(statuses(run, "both")) == {"expired"}


def test_a_deadline_beyond_the_queue_retention_is_refused(control_stack):
    # Given a job message asking for a 14-day deadline (queued shards are deleted after 14 days: at most 13)
    run = control_stack()
    submit(run, "too-long", prompts(1), deadline_s=14 * 86400)

    # When intake handles it; Then the job fails and says why
    assert run.wait_for("too-long") == "FAILED"
    assert "deadline_s" in run.manifest("too-long")["error"]


# -- retry --------------------------------------------------------------------------------------
def test_retry_runs_only_the_records_that_did_not_succeed_as_a_linked_child(control_stack):
    # Given a cancelled 10-line job: lines 1-4 succeeded, 5-10 cancelled
    run = control_stack()
    cancelled_after_one_round(run)
    parent_results = run.results("ten")

    # When it is retried
    child = run.retry("ten")
    status = run.wait_for(child)

    # Then a child job ran exactly the 6 cancelled records, read from the parent's input, and every result line
    # names its parent line and keeps the parent's record id (the line number where the record has no id)
    assert status == "COMPLETED"
    assert requests(run) == 4 + 6
    results = run.results(child)
    assert [r["line"] for r in results] == [1, 2, 3, 4, 5, 6]
    assert [r["parent_line"] for r in results] == [5, 6, 7, 8, 9, 10]
    assert [r["id"] for r in results] == [p["id"] for p in parent_results[4:]] == ["r5", 6, "r7", 8, "r9", 10]
    assert statuses(run, child) == ["succeeded"] * 6
    assert run.read(f"jobs/{child}/input.jsonl") == b"".join(prompts(10).splitlines(keepends=True)[4:])
    manifest = run.manifest(child)
    assert manifest["parent_job_id"] == "ten" and manifest["counts"] == {"total": 6, "succeeded": 6, "failed": 0}
    assert run.jobs.get_job(child).parent_job_id == "ten"


def test_a_retry_of_a_retry_keeps_the_original_record_ids(control_stack):
    # Given a cancelled 10-line job, and its retry child cancelled in turn after answering 4 of its 6 records
    run = control_stack()
    cancelled_after_one_round(run)
    child = run.retry("ten")
    run.poller.poll_once()
    cancel_now(child)
    assert run.wait_for(child) == "CANCELLED"

    # When the child is retried
    grandchild = run.retry(child)
    assert run.wait_for(grandchild) == "COMPLETED"

    # Then the grandchild ran the original lines 9 and 10: `parent_line` points into the child, and the ids are
    # still those of the original file (line 10 has no id of its own: it keeps 10, not its line in the child)
    results = run.results(grandchild)
    assert [(r["line"], r["parent_line"], r["id"], r["status"]) for r in results] == [
        (1, 5, "r9", "succeeded"),
        (2, 6, 10, "succeeded"),
    ]
    assert run.manifest(grandchild)["parent_job_id"] == child


def test_retry_takes_failed_records_and_keeps_the_parents_settings(control_stack):
    # Given a completed job with job parameters whose lines 2 and 4 failed (bad JSON, a bad parameter)
    run = control_stack()
    data = jsonl({"id": "a", "prompt": "x"}, "{not json", {"prompt": "y"}, {"id": "d", "prompt": "z", "parameters": {"top_k": 0}})
    submit(run, "mixed", data, parameters={"max_new_tokens": 7})
    assert run.wait_for("mixed") == "COMPLETED"

    # When it is retried
    child = run.retry("mixed")
    run.wait_for(child)

    # Then the child holds just those two lines, with the parent's parameters; they fail again the same way
    results = run.results(child)
    assert [(r["parent_line"], r["id"], r["error"]["type"]) for r in results] == [
        (2, 2, "invalid_json"),
        (4, "d", "invalid_parameters"),
    ]
    assert run.manifest(child)["parameters"] == {"max_new_tokens": 7}


def test_a_repeated_retry_makes_one_child_and_a_new_client_token_another(control_stack):
    # Given a cancelled job
    run = control_stack()
    cancelled_after_one_round(run, "twice-retried", records=6)

    # When the same retry is sent twice, and once more with a client token
    first, again = run.retry("twice-retried"), run.retry("twice-retried")
    tokened = run.retry("twice-retried", client_token="after-fix")
    run.drain()

    # Then the repeated request found the first child; the token made a second one
    assert first == again != tokened
    assert run.jobs_in_table() == sorted(["twice-retried", first, tokened])
    assert run.jobs.get_job(first).status == run.jobs.get_job(tokened).status == "COMPLETED"
    assert requests(run) == 4 + 2 + 2


def test_a_job_with_nothing_to_retry_gets_an_empty_completed_child(control_stack):
    # Given a job whose every record succeeded
    run = control_stack()
    submit(run, "all-good", prompts(2))
    run.wait_for("all-good")

    # When it is retried; Then the child completes at once with no records
    child = run.retry("all-good")
    assert run.wait_for(child) == "COMPLETED"
    assert run.results(child) == [] and run.manifest(child)["counts"]["total"] == 0


def test_retrying_a_running_or_unknown_job_is_refused_without_a_child(control_stack):
    # Given a job that is still running
    run = control_stack()
    submit(run, "busy", prompts(10))
    run.poller.poll_once()

    # When a retry names it, or a job that does not exist
    running = intake_directly({"action": "retry", "job_id": "busy"})
    unknown = intake_directly({"action": "retry", "job_id": "ghost"})

    # Then both are refused with the reason, and no child job is created
    assert "busy is RUNNING" in running and "once it has finished" in running
    assert unknown == "no job ghost to retry"
    assert run.jobs_in_table() == ["busy"]


def test_a_retry_whose_parent_input_is_gone_is_refused(control_stack):
    # Given a completed job with a failed line whose input object version was deleted since
    run = control_stack()
    submit(run, "gone", jsonl("{not json", {"prompt": "x"}))
    run.wait_for("gone")
    s3 = boto3.client("s3")
    version = run.jobs.get_job("gone").version_id
    s3.delete_object(Bucket=run.stack.bucket, Key="staging/gone.jsonl", VersionId=version)

    # When it is retried; Then the retry is refused with the reason, rather than reading some other input
    reason = intake_directly({"action": "retry", "job_id": "gone"})
    assert reason.startswith("cannot retry job gone: cannot read s3://") and "staging/gone.jsonl" in reason
    assert run.jobs_in_table() == ["gone"]


# -- dead-letter redrive ------------------------------------------------------------------------
def test_a_shard_redriven_from_the_dlq_completes_its_job(control_stack, capsys):
    # Given a 4-line job (2 shards) whose second shard ended up in the work DLQ (5 failed receives)
    run = control_stack()
    sqs = boto3.client("sqs")
    submit(run, "stuck", prompts(4))
    intake = run.stack.queue_url("IntakeQueue")
    message = sqs.receive_message(QueueUrl=intake)["Messages"][0]
    service.intake().handle_message(message["Body"], message["MessageId"])
    sqs.delete_message(QueueUrl=intake, ReceiptHandle=message["ReceiptHandle"])
    work, dlq = run.stack.queue_url("WorkQueue"), run.stack.queue_url("WorkDLQ")
    shards = sqs.receive_message(QueueUrl=work, MaxNumberOfMessages=10)["Messages"]
    assert len(shards) == 2
    dead = max(shards, key=lambda m: json.loads(m["Body"])["shard"])
    sqs.send_message(QueueUrl=dlq, MessageBody=dead["Body"])
    sqs.delete_message(QueueUrl=work, ReceiptHandle=dead["ReceiptHandle"])
    sqs.change_message_visibility(
        QueueUrl=work, ReceiptHandle=next(m for m in shards if m is not dead)["ReceiptHandle"], VisibilityTimeout=0
    )
    run.drain()
    assert run.jobs.get_job("stuck").status == "RUNNING"  # it waits for the dead shard

    # When the DLQ is redriven with `sagebatch redrive`
    code = cli.main(["redrive", "--queue-url", dlq])
    status = run.wait_for("stuck")

    # Then the shard went back to its source queue (moto has no StartMessageMoveTask: copied, and said so) and
    # the job completed with every line
    out = capsys.readouterr().out
    assert code == 0
    assert "StartMessageMoveTask is not available" in out and "moved 1 messages" in out
    assert status == "COMPLETED"
    assert statuses(run, "stuck") == ["succeeded"] * 4


# -- the CLI against the stack's queues and table ------------------------------------------------
def test_sagebatch_cancel_sends_the_cancel_message(control_stack, capsys):
    # Given a running job
    run = control_stack()
    submit(run, "cli-cancel", prompts(6))
    run.poller.poll_once()

    # When `sagebatch cancel` names it
    code = cli.main(["cancel", "cli-cancel", "--queue-url", run.stack.queue_url("IntakeQueue")])

    # Then the intake queue got the cancel message and the job ends cancelled
    assert code == 0 and "cancel sent for job cli-cancel" in capsys.readouterr().out
    assert run.wait_for("cli-cancel") == "CANCELLED"


def test_sagebatch_retry_sends_the_retry_message_and_names_the_child(control_stack, capsys):
    # Given a cancelled job
    run = control_stack()
    cancelled_after_one_round(run, "cli-retry", records=6)
    intake = run.stack.queue_url("IntakeQueue")

    # When `sagebatch retry` names it with a client token
    code = cli.main(["retry", "cli-retry", "--queue-url", intake, "--client-token", "t-1", "--deadline", "600"])

    # Then the message on the intake queue is the retry request, and the child it names runs the rest
    body = json.loads(boto3.client("sqs").receive_message(QueueUrl=intake, VisibilityTimeout=0)["Messages"][0]["Body"])
    assert {k: v for k, v in body.items() if v is not None} == {
        "action": "retry",
        "job_id": "cli-retry",
        "client_token": "t-1",
        "deadline_s": 600,
    }
    child = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    assert code == 0 and child == run.retry("cli-retry", client_token="t-1")
    assert run.wait_for(child) == "COMPLETED"
    job = run.jobs.get_job(child)
    assert job.deadline_at == pytest.approx(job.created_at + 600)


def test_sagebatch_status_prints_the_status_and_counts(control_stack, capsys):
    # Given a cancelled job
    run = control_stack()
    cancelled_after_one_round(run, "cli-status", records=6)

    # When `sagebatch status` asks the table about it, and about a job that does not exist
    code = cli.main(["status", "cli-status", "--table", run.stack.table])
    out = capsys.readouterr().out
    missing = cli.main(["status", "nope", "--table", run.stack.table])

    # Then it prints the status, counts and stop reason; an unknown job exits 1
    assert code == 0 and missing == 1
    assert "job cli-status CANCELLED" in out
    assert "6 total, 4 succeeded, 0 failed, 2 cancelled, 0 expired" in out
    assert "stopped   cancelled" in out


def test_sagebatch_cancel_refuses_an_invalid_job_id(capsys):
    # Given a job id with a space; When `sagebatch cancel` is given it; Then it is a usage error (exit 2)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["cancel", "not an id", "--queue-url", "https://sqs.us-east-1.amazonaws.com/123456789012/q"])
    assert exit_info.value.code == 2
    assert "job_id" in capsys.readouterr().err
