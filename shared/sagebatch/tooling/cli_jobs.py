"""The commands that drive a deployed stack: submit, status, watch, results, list, cancel, retry, redrive.

Each finds the stack's resources from its CloudFormation outputs (tooling/stack_outputs.py) unless an explicit
`--table` / `--queue-url` names them, and uses the AWS credentials of the environment. Results go to stdout,
progress and notes to stderr, so `JOB=$(sagebatch submit prompts.jsonl)` and `sagebatch results JOB > out.jsonl`
work in scripts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from botocore.exceptions import ClientError
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from sagebatch.adapters.dynamodb import Table
from sagebatch.adapters.jobs import DynamoJobStore
from sagebatch.adapters.objects import S3ObjectStore
from sagebatch.adapters.queues import SqsDeadLetterQueues, SqsMessageSender, region_of_queue_url
from sagebatch.domain.formats import dumps_line, native_fields
from sagebatch.domain.job import Job, JobStatus
from sagebatch.domain.layout import results_key, s3_uri
from sagebatch.domain.messages import JOB_ID_PATTERN, CancelRequest, JobSpec, RetryRequest
from sagebatch.domain.results import ResultLine
from sagebatch.tooling.cli_args import ExitCode, UsageProblem, parse_fit, parse_params, parse_since
from sagebatch.tooling.cli_view import WatchDisplay, job_table, jobs_table, stdout_console
from sagebatch.tooling.stack_outputs import DeadLetterQueue, StackNotUsable, StackOutputs, read_stack_outputs, stack_ref
from sagebatch.usecases.parts import PartsResultStore

# Local files are uploaded here, outside inputs/: a file under inputs/ starts a job of its own through the bucket's
# S3 notification (with the stack's defaults), and the job message sent for it would start a second one.
UPLOADS_PREFIX = "uploads/"
# How long `watch` waits for a job that does not exist yet (intake creates it within seconds of the message).
APPEAR_GRACE_S = 60.0

STATUS_EXIT = {
    JobStatus.COMPLETED: ExitCode.OK,
    JobStatus.FAILED: ExitCode.FAILED,
    JobStatus.CANCELLED: ExitCode.CANCELLED,
    JobStatus.EXPIRED: ExitCode.EXPIRED,
}


def aws(service: str, region: str | None) -> Any:
    import boto3

    return boto3.client(service, region_name=region)


@dataclass
class StackTarget:
    """The deployed stack a command talks to (`--stack`, `--region`), resolved on first use: a command given an
    explicit `--queue-url` or `--table` never reads CloudFormation."""

    stack: str | None = None
    region: str | None = None
    _outputs: StackOutputs | None = field(default=None, init=False, repr=False)

    def outputs(self) -> StackOutputs:
        if self._outputs is None:
            try:
                ref = stack_ref(self.stack, self.region)
                self._outputs = read_stack_outputs(aws("cloudformation", ref.region), ref)
            except StackNotUsable as error:
                raise UsageProblem(str(error)) from None
        return self._outputs

    def intake_queue(self, queue_url: str | None) -> tuple[str, str | None]:
        """The intake queue's URL and region: `--queue-url` (its region unless --region), else the stack's."""
        if queue_url:
            return queue_url, self.region or region_of_queue_url(queue_url)
        outputs = self.outputs()
        return outputs.intake_queue_url, outputs.region

    def jobs(self, table: str | None = None) -> tuple[DynamoJobStore, str]:
        """The job store and the table's name: `--table`, else the stack's."""
        if table:
            return DynamoJobStore(Table(aws("dynamodb", self.region), table)), table
        outputs = self.outputs()
        return DynamoJobStore(Table(aws("dynamodb", outputs.region), outputs.table)), outputs.table


def _check_job_id(job_id: str) -> None:
    if not re.match(JOB_ID_PATTERN, job_id):
        raise UsageProblem(f"{job_id!r} is not a job id (letters, digits, '_', '.', '-'; at most 64)")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _job_json(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json")


# -- submit ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SubmitOptions:
    source: str  # a local file, or s3://bucket/key
    job_id: str | None = None
    client_token: str | None = None
    params: list[str] = field(default_factory=list)
    fit: str | None = None
    deadline: int | None = None
    as_json: bool = False  # print {"job_id", "input", "stack"} (with --wait: the finished job) instead of the id


@dataclass(frozen=True)
class WatchOptions:
    interval: float = 2.0
    timeout: float | None = None
    as_json: bool = False  # the final job as JSON on stdout, instead of the summary table
    summary_on_stderr: bool = False  # `submit --wait`: stdout keeps only the job id, for JOB=$(sagebatch submit ...)


def submitted_job_id(spec: JobSpec, message_id: str) -> str:
    """The id intake gives the job of this message (usecases/intake.py, submit_job): the message's job_id, else one
    derived from the client token, else from the SQS message id."""
    from sagebatch.usecases.intake import job_id_for

    if spec.job_id:
        return spec.job_id
    return job_id_for(f"token:{spec.client_token}" if spec.client_token else f"msg:{message_id}")


def upload_key(path: Path) -> str:
    """uploads/<first 16 hex digits of the file's SHA-256>/<file name>: the same file is the same object."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"{UPLOADS_PREFIX}{digest.hexdigest()[:16]}/{path.name}"


def _upload(s3: Any, path: Path, bucket: str, key: str, console: Console) -> None:
    columns = (TextColumn("uploading {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(path.name, total=path.stat().st_size)
        s3.upload_file(
            str(path),
            bucket,
            key,
            ExtraArgs={"ContentType": "application/x-ndjson"},
            Callback=lambda sent: progress.advance(task, sent),
        )


def submit_command(target: StackTarget, options: SubmitOptions, wait: WatchOptions | None = None) -> int:
    """Upload a local file (or name an s3:// object) and send a job message for it; print the job id."""
    parameters = parse_params(options.params)
    fit = parse_fit(options.fit)
    local: Path | None = None
    if options.source.startswith("s3://"):
        input_uri = options.source
    else:
        local = Path(options.source).expanduser()
        if not local.is_file():
            raise UsageProblem(f"no file {options.source}: submit takes a local JSONL file or an s3://bucket/key URI")
        input_uri = "s3://bucket/to-be-uploaded"
    # Validated before anything is uploaded or sent: a bad job id or deadline is a usage error, not a FAILED job.
    spec = JobSpec.model_validate(
        {
            "input": input_uri,
            "job_id": options.job_id,
            "client_token": options.client_token,
            "parameters": parameters,
            "fit": fit,
            "deadline_s": options.deadline,
        }
    )
    outputs = target.outputs()
    stderr = Console(stderr=True)
    if local is not None:
        key = upload_key(local)
        _upload(aws("s3", outputs.region), local, outputs.bucket, key, stderr)
        spec = spec.model_copy(update={"input": s3_uri(outputs.bucket, key)})
    body = json.dumps(spec.model_dump(mode="json", exclude_none=True), ensure_ascii=False)
    response = aws("sqs", outputs.region).send_message(QueueUrl=outputs.intake_queue_url, MessageBody=body)
    job_id = submitted_job_id(spec, response["MessageId"])
    if not options.as_json:
        print(job_id, flush=True)
    elif wait is None:
        _print_json({"job_id": job_id, "input": spec.input, "stack": outputs.stack_name})
    print(f"submitted {spec.input} to stack {outputs.stack_name} as job {job_id}", file=sys.stderr)
    if wait is None:
        return ExitCode.OK
    return watch_command(target, job_id, replace(wait, as_json=options.as_json, summary_on_stderr=not options.as_json))


# -- status, watch --------------------------------------------------------------------------------
def _results_uri(target: StackTarget, job_id: str, table: str | None) -> str | None:
    return s3_uri(target.outputs().bucket, results_key(job_id)) if table is None else None


def status_command(target: StackTarget, job_id: str, as_json: bool = False, table: str | None = None) -> int:
    store, table_name = target.jobs(table)
    job = store.get_job(job_id)
    if job is None:
        print(f"no job {job_id} in table {table_name} (a refused retry creates none: see the intake log)", file=sys.stderr)
        return ExitCode.ERROR
    if as_json:
        _print_json(_job_json(job))
    else:
        stdout_console().print(job_table(job, _results_uri(target, job_id, table)))
    return ExitCode.OK


def watch_command(target: StackTarget, job_id: str, options: WatchOptions, table: str | None = None) -> int:
    """Follow the job item until the job finishes; then print its summary. The exit code says how it ended."""
    store, table_name = target.jobs(table)
    results_uri = _results_uri(target, job_id, table)
    stderr = Console(stderr=True)
    started = time.monotonic()
    job: Job | None = None
    try:
        with WatchDisplay(stderr) as display:
            while True:
                job = store.get_job(job_id)
                waited = time.monotonic() - started
                if job is None:
                    if waited >= min(APPEAR_GRACE_S, options.timeout if options.timeout is not None else APPEAR_GRACE_S):
                        break
                    display.waiting(job_id)
                else:
                    display.update(job)
                    if job.finished:
                        break
                    if options.timeout is not None and waited >= options.timeout:
                        break
                time.sleep(options.interval)
    except KeyboardInterrupt:
        print(f"stopped watching; job {job_id} goes on (sagebatch watch {job_id})", file=sys.stderr)
        return 130
    if job is None:
        print(f"no job {job_id} in table {table_name} after {time.monotonic() - started:.0f} s", file=sys.stderr)
        return ExitCode.ERROR
    if options.as_json:
        _print_json(_job_json(job))
    elif options.summary_on_stderr:
        Console(stderr=True).print(job_table(job, results_uri))
    else:
        stdout_console().print(job_table(job, results_uri))
    if not job.finished:
        print(f"job {job_id} is still {job.status} after --timeout {options.timeout:g} s; it goes on", file=sys.stderr)
        return ExitCode.TIMEOUT
    return STATUS_EXIT[job.status]


# -- results --------------------------------------------------------------------------------------
def _lines(body: Any, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The object's lines, each with its newline (the last one as stored)."""
    pending = b""
    for chunk in body.iter_chunks(chunk_size):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line + b"\n"
    if pending:
        yield pending


def _is_failure(line: bytes) -> bool:
    """Whatever the job's output format: peer lines keep the native status under "sagebatch"."""
    try:
        return bool(native_fields(json.loads(line)).get("status") != "succeeded")
    except (ValueError, AttributeError, TypeError):
        return True


def _missing_results(target: StackTarget, job_id: str) -> int:
    store, _ = target.jobs()
    job = store.get_job(job_id)
    if job is None:
        print(f"no job {job_id} in stack {target.outputs().stack_name}", file=sys.stderr)
        return ExitCode.ERROR
    if job.status == JobStatus.FAILED:
        print(f"job {job_id} FAILED ({job.error}): a failed job has no results.jsonl", file=sys.stderr)
        return ExitCode.FAILED
    if not job.finished:
        print(
            f"job {job_id} is {job.status}: results.jsonl is written when it finishes (sagebatch watch {job_id})", file=sys.stderr
        )
        return ExitCode.ERROR
    print(f"job {job_id} is {job.status} but {results_key(job_id)} is not in the bucket", file=sys.stderr)
    return ExitCode.ERROR


def _to_stdout(lines: Iterator[bytes]) -> None:
    """Write the lines' bytes as they are (UTF-8 JSON), whatever the terminal's encoding."""
    sys.stdout.flush()
    buffer: IO[bytes] | None = getattr(sys.stdout, "buffer", None)
    try:
        for line in lines:
            if buffer is not None:
                buffer.write(line)
            else:
                sys.stdout.write(line.decode("utf-8"))
        (buffer or sys.stdout).flush()
    except BrokenPipeError:  # `sagebatch results JOB | head`: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush from failing


def results_command(
    target: StackTarget, job_id: str, out: str | None = None, failed_only: bool = False, partial: bool = False
) -> int:
    """Stream outputs/JOB/results.jsonl to stdout (`--out -`, the default) or to a file; with `partial`, the results
    of the shards finished so far (a running job's parts), in line order and in the native format."""
    _check_job_id(job_id)
    outputs = target.outputs()
    if partial:
        parts = PartsResultStore(S3ObjectStore(aws("s3", outputs.region)), outputs.bucket, _NoCallCache())
        finished = _Counted(parts.results(job_id))
        lines: Iterator[bytes] = (
            (dumps_line(result.public_json()) + "\n").encode("utf-8")
            for result in finished
            if not failed_only or result.status != "succeeded"
        )
        code = _write_results(lines, out)
        print(_partial_note(target, job_id, finished.count), file=sys.stderr)
        return code
    try:
        body = aws("s3", outputs.region).get_object(Bucket=outputs.bucket, Key=results_key(job_id))["Body"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return _missing_results(target, job_id)
        raise
    return _write_results((line for line in _lines(body) if not failed_only or _is_failure(line)), out)


class _Counted(Iterator[ResultLine]):
    """An iterator that counts what went through it."""

    def __init__(self, items: Iterator[ResultLine]):
        self._items = items
        self.count = 0

    def __next__(self) -> ResultLine:
        item = next(self._items)
        self.count += 1
        return item


def _partial_note(target: StackTarget, job_id: str, finished: int) -> str:
    """How much of the job the partial results are: lines of its finished shards, of all its lines."""
    job = target.jobs()[0].get_job(job_id)
    if job is None:
        return f"{finished} lines (no job {job_id} in the stack)"
    total = "?" if job.total_records is None else str(job.total_records)
    shards = "?" if job.total_shards is None else str(job.total_shards)
    return f"{finished} of {total} lines ({job.shards_done} of {shards} shards done; job {job.status})"


def _write_results(lines: Iterator[bytes], out: str | None) -> int:
    if out in (None, "-"):
        _to_stdout(lines)
        return ExitCode.OK
    path = Path(out)
    if not path.parent.is_dir():
        raise UsageProblem(f"no directory {path.parent} for --out {out}")
    written = 0
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        try:
            for line in lines:
                handle.write(line)
                written += 1
        except BaseException:
            os.unlink(handle.name)
            raise
    os.replace(handle.name, path)
    print(f"wrote {written} result lines to {path}", file=sys.stderr)
    return ExitCode.OK


# -- list -----------------------------------------------------------------------------------------
def list_command(
    target: StackTarget,
    status: JobStatus | None = None,
    since: str | None = None,
    limit: int = 20,
    as_json: bool = False,
    table: str | None = None,
) -> int:
    since_at = parse_since(since, time.time())
    if limit < 1:
        raise UsageProblem(f"--limit must be at least 1, not {limit}")
    store, _ = target.jobs(table)
    jobs = store.list_jobs(status, since_at, limit)
    if as_json:
        _print_json([_job_json(job) for job in jobs])
    elif not jobs:
        print("no jobs" + (f" {status}" if status else "") + (f" since {since}" if since else ""))
    else:
        stdout_console().print(jobs_table(jobs))
    return ExitCode.OK


# -- control: cancel, retry, redrive ---------------------------------------------------------------
def cancel_command(target: StackTarget, job_id: str, queue_url: str | None = None) -> int:
    request = CancelRequest(action="cancel", job_id=job_id)
    url, region = target.intake_queue(queue_url)
    SqsMessageSender(aws("sqs", region), url).send(request)
    print(
        f"cancel sent for job {job_id}: if it is still running, records not started yet end as 'cancelled' "
        f"(no effect on a finished job; follow it with `sagebatch watch {job_id}`)"
    )
    return ExitCode.OK


def retry_command(
    target: StackTarget, job_id: str, queue_url: str | None = None, client_token: str | None = None, deadline: int | None = None
) -> int:
    from sagebatch.usecases.intake import retry_job_id

    request = RetryRequest(action="retry", job_id=job_id, client_token=client_token, deadline_s=deadline)
    url, region = target.intake_queue(queue_url)
    SqsMessageSender(aws("sqs", region), url).send(request)
    print(f"retry sent for job {job_id}: the records that did not succeed run again as job {retry_job_id(job_id, client_token)}")
    return ExitCode.OK


def redrive_command(
    target: StackTarget,
    which: DeadLetterQueue | None = None,
    queue_url: str | None = None,
    to: str | None = None,
    copy: bool = False,
) -> int:
    from sagebatch.usecases.control.redrive import redrive

    if which and queue_url:
        raise UsageProblem(f"name the dead-letter queue once: `sagebatch redrive {which}` or --queue-url URL, not both")
    if queue_url:
        dlq, region = queue_url, target.region or region_of_queue_url(queue_url)
    elif which:
        outputs = target.outputs()
        dlq, region = outputs.dlq_url(which), outputs.region
    else:
        raise UsageProblem("name the dead-letter queue: sagebatch redrive work|intake|finalize (or --queue-url URL)")
    queues = SqsDeadLetterQueues(aws("sqs", region))
    outcome = redrive(queues, dlq, to, copy=copy)
    if outcome.note:
        print(outcome.note)
    if outcome.method == "move-task":
        print(
            f"message move task started ({outcome.task_handle}); follow it with "
            f"`aws sqs list-message-move-tasks --source-arn {queues.arn(dlq)}`"
        )
    else:
        print(f"moved {outcome.moved} messages from {dlq} to {to or 'its source queue'}")
    return ExitCode.OK


class _NoCallCache:
    """Reading parts needs no chunk answers."""

    def call_cache(self, job_id: str, line: int) -> Any:
        raise NotImplementedError("the CLI reads results, it does not answer records")
