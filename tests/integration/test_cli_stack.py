"""`sagebatch` against a deployed stack found by its name: the local stack (moto + emulator) published as a
CloudFormation stack whose outputs are template.yaml's, driven through `cli.main([...])` with real boto3 clients.

While a command waits on a job, the event sources are polled in a thread, as Lambda would poll them.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest

from sagebatch.domain.messages import Shard
from sagebatch.lambdas import service
from sagebatch.tooling import cli
from sagebatch.tooling.local.outputs import publish_outputs
from sagebatch.tooling.local.session import LocalRun, local_stack
from tests.conftest import jsonl

STACK = "sagebatch-cli"
WAIT = ["--interval", "0.05", "--timeout", "60"]


@pytest.fixture
def deployed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LocalRun]:
    """The local stack, findable as CloudFormation stack STACK; the working directory has no samconfig.toml."""
    monkeypatch.delenv("SAGEBATCH_STACK", raising=False)
    monkeypatch.chdir(tmp_path)
    with local_stack(parallel=2) as run:
        run.drain()  # the s3:TestEvent S3 sends when the bucket notification is configured
        publish_outputs(run.stack, STACK)
        yield run


@contextmanager
def lambdas_running(run: LocalRun) -> Iterator[None]:
    """Poll the stack's queues in a thread until the block ends."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            if run.poller.poll_once() == 0:
                time.sleep(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)


def sagebatch(*args: str) -> int:
    return cli.main([*args])


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def prompts(count: int) -> bytes:
    return jsonl(*({"id": f"p{n}", "prompt": f"Say {n}."} for n in range(1, count + 1)))


def submit(capsys: pytest.CaptureFixture[str], path: Path, *options: str) -> str:
    """`sagebatch submit FILE --stack STACK`; returns the job id it printed (stdout's first line)."""
    assert sagebatch("submit", str(path), "--stack", STACK, *options) == 0
    return capsys.readouterr().out.splitlines()[0]


def intake_message(run: LocalRun) -> dict[str, Any]:
    """The one message on the intake queue (left there)."""
    messages = boto3.client("sqs").receive_message(QueueUrl=run.stack.queue_url("IntakeQueue"), VisibilityTimeout=0)["Messages"]
    assert len(messages) == 1
    return json.loads(messages[0]["Body"])


def finished_job(run: LocalRun, capsys: pytest.CaptureFixture[str], path: Path, *options: str) -> str:
    """A job submitted with `sagebatch submit` and run to its end."""
    job_id = submit(capsys, path, *options)
    assert run.wait_for(job_id, 60) in {"COMPLETED", "FAILED"}
    return job_id


# -- submit ----------------------------------------------------------------------------------------------
def test_submit_wait_then_results_gives_one_line_per_input_line(deployed, tmp_path, capsys):
    # Given a 5-line JSONL file on this machine, and the stack's functions running
    source = write(tmp_path / "five.jsonl", prompts(5))

    # When it is submitted with --wait, and its results are fetched to a file
    with lambdas_running(deployed):
        waited = sagebatch("submit", str(source), "--stack", STACK, "--wait", *WAIT)
    printed = capsys.readouterr()
    job_id = printed.out.strip()
    fetched = sagebatch("results", job_id, "--stack", STACK, "--out", str(tmp_path / "results.jsonl"))

    # Then stdout held just the job id, --wait ended with the COMPLETED summary on stderr (exit 0), and
    # results.jsonl has one line per input line, in order
    assert waited == 0 and fetched == 0
    assert f"job {job_id} COMPLETED" in printed.err and "5 total, 5 succeeded, 0 failed" in printed.err
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["line"], r["id"], r["status"]) for r in lines] == [(n, f"p{n}", "succeeded") for n in range(1, 6)]


def test_submit_uploads_outside_inputs_and_sends_a_job_message_with_the_options(deployed, tmp_path, capsys):
    # Given a local file
    source = write(tmp_path / "batch.jsonl", prompts(2))

    # When it is submitted with a job id, a client token, parameters, fit settings and a deadline
    code = sagebatch(
        "submit",
        str(source),
        "--stack",
        STACK,
        "--job-id",
        "nightly-1",
        "--client-token",
        "tok",
        "--param",
        "max_new_tokens=64",
        "--param",
        "temperature=0.5",
        "--param",
        "stop=###",
        "--fit",
        "strategy=map_reduce,chunk_tokens=512",
        "--deadline",
        "3600",
    )

    # Then it printed the job id, and the intake queue holds one job message naming the uploaded file (under
    # uploads/, where no S3 notification starts a second job) with those options
    assert code == 0 and capsys.readouterr().out.strip() == "nightly-1"
    body = intake_message(deployed)
    bucket, _, key = body["input"][len("s3://") :].partition("/")
    assert bucket == deployed.stack.bucket and key.startswith("uploads/") and key.endswith("/batch.jsonl")
    assert deployed.read(key) == prompts(2)
    assert body["job_id"] == "nightly-1" and body["client_token"] == "tok" and body["deadline_s"] == 3600
    assert body["parameters"] == {"max_new_tokens": 64, "temperature": 0.5, "stop": ["###"]}
    assert body["fit"]["strategy"] == "map_reduce" and body["fit"]["chunk_tokens"] == 512


def test_submit_an_s3_uri_sends_a_job_message_for_it(deployed, capsys):
    # Given a file already in S3
    boto3.client("s3").put_object(Bucket=deployed.stack.bucket, Key="staging/in.jsonl", Body=prompts(1))
    uri = f"s3://{deployed.stack.bucket}/staging/in.jsonl"

    # When it is submitted by URI
    code = sagebatch("submit", uri, "--stack", STACK)

    # Then the message names that object, nothing is uploaded, and intake makes the job whose id was printed
    job_id = capsys.readouterr().out.strip()
    assert code == 0 and intake_message(deployed)["input"] == uri
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=deployed.stack.bucket, Prefix="uploads/")
    assert deployed.wait_for(job_id, 60) == "COMPLETED"


# -- status, watch -----------------------------------------------------------------------------------------
def test_status_json_prints_the_job_as_json(deployed, tmp_path, capsys):
    # Given a finished 3-line job
    job_id = finished_job(deployed, capsys, write(tmp_path / "three.jsonl", prompts(3)))
    capsys.readouterr()

    # When its status is asked for as JSON
    code = sagebatch("status", job_id, "--stack", STACK, "--json")

    # Then stdout is the job item as one JSON document
    job = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (job["job_id"], job["status"], job["total_records"], job["succeeded"]) == (job_id, "COMPLETED", 3, 3)


def test_status_prints_a_table_with_the_results_location(deployed, tmp_path, capsys):
    # Given a finished job
    job_id = finished_job(deployed, capsys, write(tmp_path / "two.jsonl", prompts(2)))
    capsys.readouterr()

    # When its status is asked for
    code = sagebatch("status", job_id, "--stack", STACK)

    # Then the table shows the status, counts and where results.jsonl is
    out = capsys.readouterr().out
    assert code == 0 and f"job {job_id} COMPLETED" in out
    assert "2 total, 2 succeeded, 0 failed, 0 cancelled, 0 expired" in out
    assert f"results   s3://{deployed.stack.bucket}/outputs/{job_id}/results.jsonl" in out


def test_watch_exits_3_when_the_job_fails(deployed, tmp_path, capsys):
    # Given a gzip file submitted (intake fails such a job: it reads JSONL only)
    job_id = submit(capsys, write(tmp_path / "packed.jsonl.gz", gzip.compress(prompts(2))))

    # When it is watched while the stack runs
    with lambdas_running(deployed):
        code = sagebatch("watch", job_id, "--stack", STACK, *WAIT)

    # Then watch exits 3 and its summary says the job FAILED and why
    out = capsys.readouterr().out
    assert code == 3
    assert f"job {job_id} FAILED" in out and "gzip" in out


def test_watch_exits_6_when_its_timeout_ends_before_the_job(deployed, tmp_path, capsys):
    # Given a job that intake started but whose shards no worker takes
    boto3.client("s3").put_object(Bucket=deployed.stack.bucket, Key="staging/slow.jsonl", Body=prompts(3))
    service.intake().handle_message(
        json.dumps({"job_id": "slow", "input": f"s3://{deployed.stack.bucket}/staging/slow.jsonl"}), "m"
    )

    # When it is watched with a short --timeout
    code = sagebatch("watch", "slow", "--stack", STACK, "--interval", "0.05", "--timeout", "0.2")

    # Then watch gives up with exit 6, saying the job goes on
    assert code == 6
    assert "still RUNNING" in capsys.readouterr().err


def test_cancel_by_stack_name_ends_the_job_cancelled_and_watch_exits_4(deployed, tmp_path, capsys):
    # Given a running job whose shards wait in the work queue
    boto3.client("s3").put_object(Bucket=deployed.stack.bucket, Key="staging/stop.jsonl", Body=prompts(3))
    service.intake().handle_message(
        json.dumps({"job_id": "stop-me", "input": f"s3://{deployed.stack.bucket}/staging/stop.jsonl"}), "m"
    )

    # When `sagebatch cancel` names it and the stack, and the job is watched to the end
    cancelled = sagebatch("cancel", "stop-me", "--stack", STACK)
    with lambdas_running(deployed):
        watched = sagebatch("watch", "stop-me", "--stack", STACK, *WAIT)

    # Then the cancel reached the stack's intake queue: the job ends CANCELLED and watch exits 4
    assert cancelled == 0 and watched == 4
    assert deployed.jobs.get_job("stop-me").status == "CANCELLED"


def test_retry_by_stack_name_sends_the_retry_to_the_stacks_intake_queue(deployed, capsys):
    # Given a deployed stack; When `sagebatch retry` names a job and the stack
    code = sagebatch("retry", "some-job", "--stack", STACK, "--client-token", "again")

    # Then the stack's intake queue holds the retry request
    assert code == 0
    assert {k: v for k, v in intake_message(deployed).items() if v is not None} == {
        "action": "retry",
        "job_id": "some-job",
        "client_token": "again",
    }


def test_redrive_by_name_moves_the_stacks_dead_letter_queue_back(deployed, capsys):
    # Given a message in the stack's work dead-letter queue
    sqs = boto3.client("sqs")
    sqs.send_message(QueueUrl=deployed.stack.queue_url("WorkDLQ"), MessageBody=json.dumps({"job_id": "x", "shard": 0}))

    # When `sagebatch redrive work` names the stack
    code = sagebatch("redrive", "work", "--stack", STACK)

    # Then the message is back on the work queue (moto has no move task: copied, and said so)
    assert code == 0 and "moved 1 messages" in capsys.readouterr().out
    depth = sqs.get_queue_attributes(
        QueueUrl=deployed.stack.queue_url("WorkQueue"), AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert depth["Attributes"]["ApproximateNumberOfMessages"] == "1"


# -- results -----------------------------------------------------------------------------------------------
def test_results_failed_only_streams_the_lines_that_did_not_succeed(deployed, tmp_path, capsys):
    # Given a finished job whose lines 2 and 4 failed (not JSON, an unknown field)
    data = jsonl({"prompt": "a"}, "{not json", {"prompt": "b"}, {"prompt": "c", "colour": "red"})
    job_id = finished_job(deployed, capsys, write(tmp_path / "mixed.jsonl", data))
    capsys.readouterr()

    # When its results are streamed to stdout with --failed-only
    code = sagebatch("results", job_id, "--stack", STACK, "--failed-only")

    # Then stdout holds exactly those two result lines
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [(r["line"], r["status"]) for r in lines] == [(2, "failed"), (4, "failed")]


def test_results_partial_streams_the_finished_shards_parts_in_line_order(deployed, tmp_path, capsys):
    # Given a job that ran (its shards' parts are what a running job shows as it goes)
    job_id = finished_job(deployed, capsys, write(tmp_path / "four.jsonl", prompts(4)))
    capsys.readouterr()

    # When its partial results are streamed
    code = sagebatch("results", job_id, "--stack", STACK, "--partial")

    # Then every finished line comes out once, in line order, in the native shape
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [(r["line"], r["id"], r["status"]) for r in lines] == [(n, f"p{n}", "succeeded") for n in range(1, 5)]


def test_results_partial_of_a_running_job_say_how_many_lines_of_how_many(deployed, capsys):
    # Given a running job of 80 lines in two shards (64 + 16), of which only the first has run
    bucket = deployed.stack.bucket
    boto3.client("s3").put_object(Bucket=bucket, Key="staging/half.jsonl", Body=prompts(80))
    service.intake().handle_message(json.dumps({"job_id": "half", "input": f"s3://{bucket}/staging/half.jsonl"}), "m")
    queued = boto3.client("sqs").receive_message(QueueUrl=deployed.stack.queue_url("WorkQueue"), MaxNumberOfMessages=10)
    shards = [Shard.model_validate_json(message["Body"]) for message in queued["Messages"]]
    service.shard_processor().process(min(shards, key=lambda shard: shard.shard))

    # When its partial results are streamed
    code = sagebatch("results", "half", "--stack", STACK, "--partial")

    # Then the first shard's lines come out in order, and stderr says how much of the job they are
    printed = capsys.readouterr()
    assert code == 0
    assert [json.loads(line)["line"] for line in printed.out.splitlines()] == list(range(1, 65))
    assert "64 of 80 lines (1 of 2 shards done; job RUNNING)" in printed.err


def test_results_of_an_unfinished_job_say_when_they_come(deployed, capsys):
    # Given a job that is still running
    boto3.client("s3").put_object(Bucket=deployed.stack.bucket, Key="staging/busy.jsonl", Body=prompts(2))
    service.intake().handle_message(
        json.dumps({"job_id": "busy", "input": f"s3://{deployed.stack.bucket}/staging/busy.jsonl"}), "m"
    )

    # When its results are asked for
    code = sagebatch("results", "busy", "--stack", STACK)

    # Then there are none yet: exit 1, saying results.jsonl comes when the job finishes
    assert code == 1
    assert "busy is RUNNING" in capsys.readouterr().err


def test_results_of_a_failed_job_exit_3_saying_there_are_none(deployed, tmp_path, capsys):
    # Given a job that FAILED (a gzip input)
    job_id = finished_job(deployed, capsys, write(tmp_path / "packed.jsonl.gz", gzip.compress(prompts(1))))

    # When its results are asked for
    code = sagebatch("results", job_id, "--stack", STACK)

    # Then exit 3: a failed job has no results.jsonl, and the reason is given
    err = capsys.readouterr().err
    assert code == 3
    assert f"job {job_id} FAILED" in err and "no results.jsonl" in err


# -- list --------------------------------------------------------------------------------------------------
def test_list_shows_jobs_newest_first_and_filters_by_status(deployed, tmp_path, capsys):
    # Given three finished jobs, made one after the other: completed, failed (gzip), completed
    first = finished_job(deployed, capsys, write(tmp_path / "a.jsonl", prompts(1)))
    failed = finished_job(deployed, capsys, write(tmp_path / "b.jsonl.gz", gzip.compress(prompts(1))))
    last = finished_job(deployed, capsys, write(tmp_path / "c.jsonl", prompts(2)))
    capsys.readouterr()

    # When the jobs are listed, all of them and the FAILED ones, as JSON and as a table
    everything = sagebatch("list", "--stack", STACK, "--json")
    listed = [job["job_id"] for job in json.loads(capsys.readouterr().out)]
    only_failed = sagebatch("list", "--stack", STACK, "--status", "failed", "--json")
    failed_listed = [job["job_id"] for job in json.loads(capsys.readouterr().out)]
    table = sagebatch("list", "--stack", STACK, "--limit", "2")
    rows = capsys.readouterr().out

    # Then they come newest first, the filter keeps only the failed one, and --limit keeps the newest
    assert everything == only_failed == table == 0
    assert listed == [last, failed, first]
    assert failed_listed == [failed]
    assert last in rows and failed in rows and first not in rows and rows.index(last) < rows.index(failed)


def test_list_since_leaves_out_older_jobs(deployed, tmp_path, capsys):
    # Given two jobs, one of them created two days ago
    old = finished_job(deployed, capsys, write(tmp_path / "old.jsonl", prompts(1)))
    new = finished_job(deployed, capsys, write(tmp_path / "new.jsonl", prompts(1)))
    boto3.client("dynamodb").update_item(
        TableName=deployed.stack.table,
        Key={"pk": {"S": f"JOB#{old}"}, "sk": {"S": "META"}},
        UpdateExpression="SET created_at = :at",
        ExpressionAttributeValues={":at": {"N": str(time.time() - 2 * 86400)}},
    )
    capsys.readouterr()

    # When jobs of the last 24 hours are listed
    code = sagebatch("list", "--stack", STACK, "--since", "24h", "--json")

    # Then only the recent one is there
    assert code == 0
    assert [job["job_id"] for job in json.loads(capsys.readouterr().out)] == [new]


# -- usage errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, says",
    [
        (["status", "some-job", "--stack", "no-such-stack"], "no stack no-such-stack in us-east-1"),
        (["submit", "missing.jsonl", "--stack", STACK], "no file missing.jsonl"),
        (["submit", "PLACEHOLDER", "--stack", STACK, "--param", "max_new_tokens"], "--param takes KEY=VALUE"),
        (["submit", "PLACEHOLDER", "--stack", STACK, "--param", "top_k=many"], "bad --param: top_k"),
        (["submit", "PLACEHOLDER", "--stack", STACK, "--deadline", "9999999"], "deadline_s"),
        (["list", "--stack", STACK, "--since", "last week"], "--since takes a duration"),
        (["watch", "some-job", "--stack", STACK, "--interval", "soon"], "Invalid value for '--interval'"),
    ],
    ids=[
        "unknown-stack",
        "missing-file",
        "param-without-value",
        "bad-param",
        "deadline-too-long",
        "bad-since",
        "bad-interval",
    ],
)
def test_a_usage_error_prints_one_sentence_and_exits_2(deployed, tmp_path, capsys, args, says):
    # Given a command line that cannot work (a real file where the case needs one)
    source = write(tmp_path / "ok.jsonl", prompts(1))
    args = [str(source) if arg == "PLACEHOLDER" else arg for arg in args]

    # When it runs
    with pytest.raises(SystemExit) as exit_info:
        sagebatch(*args)

    # Then it exits 2 with one line naming the problem, no traceback, and nothing was sent to the stack
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "Messages" not in boto3.client("sqs").receive_message(QueueUrl=deployed.stack.queue_url("IntakeQueue"))


# -- which stack ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flag, environment, samconfig, says",
    [
        (None, None, STACK, None),  # samconfig.toml alone
        (None, "from-env", STACK, "no stack from-env in us-east-1 (named by SAGEBATCH_STACK)"),  # the environment first
        (STACK, "from-env", "from-samconfig", None),  # --stack before both
        (None, None, None, "no stack named: pass --stack NAME"),
    ],
    ids=["samconfig", "env-over-samconfig", "flag-over-env", "none"],
)
def test_the_stack_is_named_by_the_flag_then_the_environment_then_samconfig(
    deployed, tmp_path, capsys, monkeypatch, flag, environment, samconfig, says
):
    # Given the stack named (or not) by --stack, SAGEBATCH_STACK and ./samconfig.toml
    if environment:
        monkeypatch.setenv("SAGEBATCH_STACK", environment)
    if samconfig:
        (tmp_path / "samconfig.toml").write_text(
            f'version = 0.1\n[default.deploy.parameters]\nstack_name = "{samconfig}"\nresolve_s3 = true\n', encoding="utf-8"
        )

    # When a command needs the stack
    args = ["list", "--json"] + (["--stack", flag] if flag else [])
    if says is None:
        code = sagebatch(*args)
    else:
        with pytest.raises(SystemExit) as exit_info:
            sagebatch(*args)
        code = exit_info.value.code

    # Then the first of the three that names a stack is the one used
    if says is None:
        assert code == 0 and json.loads(capsys.readouterr().out) == []
    else:
        assert code == 2 and says in capsys.readouterr().err
