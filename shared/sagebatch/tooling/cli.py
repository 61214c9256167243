"""The `sagebatch` command (typer): drive a deployed stack by its name, or run everything on this machine.

Deployed stack: `submit`, `status`, `watch`, `results`, `list`, `cancel`, `retry`, `redrive` find the stack's bucket,
queues and table from its CloudFormation outputs (`--stack`, else SAGEBATCH_STACK, else samconfig.toml), with the
AWS credentials of the environment (tooling/cli_jobs.py, tooling/stack_outputs.py). Local: `run` puts a file through
the whole pipeline on moto and the endpoint emulator, `emulator` serves the emulator alone (tooling/cli_local.py).
Endpoint: `endpoint deploy|describe|delete` (tooling/cli_endpoint.py; `deploy-endpoint` and `delete-endpoint` remain
as aliases).

`main(argv)` runs the app without click's standalone mode: a usage error prints one sentence and exits 2 (as
argparse did), an AWS error prints the error and returns 1, a command returns its exit code (cli_args.ExitCode).
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from sagebatch.domain.errors import describe_validation_error
from sagebatch.domain.job import JobStatus
from sagebatch.tooling.cli_args import UsageProblem, output_directory, parse_rate, positive_seconds
from sagebatch.tooling.cli_args import queue_url as checked_queue_url
from sagebatch.tooling.cli_endpoint import delete_command, deploy_command, endpoint_app
from sagebatch.tooling.cli_local import EmulatorOptions, RunOptions, emulator_command, run_command
from sagebatch.tooling.emulator.proxy import DEFAULT_TIMEOUT_S, KINDS

EXIT_CODES = """[bold]Exit codes[/bold]: 0 done (watch, submit --wait: the job COMPLETED) · 1 AWS error, unknown job, no results yet, \
a local run that could not finish · 2 usage error (bad option, unknown stack, missing file) · 3 the job FAILED · \
4 CANCELLED · 5 EXPIRED · 6 watch --timeout ran out while the job was still going."""

app = typer.Typer(
    name="sagebatch",
    help="Serverless batch inference on a SageMaker endpoint: drive a deployed stack by its name, or run a file "
    "through the whole pipeline on this machine.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_STACK_PANEL = "Stack"
_EMULATOR_PANEL = "Endpoint emulator"


class ProxyKind(StrEnum):
    tgi = "tgi"
    openai = "openai"


assert {k.value for k in ProxyKind} == set(KINDS), "ProxyKind must list the proxy's KINDS"


class DeadLetterQueueName(StrEnum):
    intake = "intake"
    work = "work"
    finalize = "finalize"


def _rate(value: float) -> float:
    try:
        return parse_rate(value)
    except UsageProblem as error:
        raise typer.BadParameter(str(error)) from None


# -- options shared by several commands -------------------------------------------------------------
Stack = Annotated[
    str | None,
    typer.Option(
        "--stack",
        metavar="NAME",
        rich_help_panel=_STACK_PANEL,
        show_default=False,
        help="the deployed stack (default: $SAGEBATCH_STACK, then stack_name in ./samconfig.toml)",
    ),
]
Region = Annotated[
    str | None,
    typer.Option(
        "--region",
        rich_help_panel=_STACK_PANEL,
        show_default=False,
        help="AWS region (default: samconfig.toml's when the stack name came from it, else the environment's; with "
        "--queue-url, the URL's)",
    ),
]
TableOverride = Annotated[
    str | None,
    typer.Option(
        "--table", rich_help_panel=_STACK_PANEL, show_default=False, help="the table itself (TableName output) instead of --stack"
    ),
]
QueueOverride = Annotated[
    str | None,
    typer.Option(
        "--queue-url",
        rich_help_panel=_STACK_PANEL,
        show_default=False,
        help="the intake queue itself (IntakeQueueUrl output) instead of --stack",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="print JSON (for scripts) instead of a table")]
JobId = Annotated[str, typer.Argument(metavar="JOB", help="the job id", show_default=False)]
Interval = Annotated[float, typer.Option("--interval", min=0.01, metavar="S", help="seconds between two reads of the job")]
Timeout = Annotated[
    float | None,
    typer.Option(
        "--timeout", min=0.0, metavar="S", show_default=False, help="stop watching after S seconds (exit 6; the job goes on)"
    ),
]

Perf = Annotated[
    bool, typer.Option("--perf", rich_help_panel=_EMULATOR_PANEL, help="use the calibrated g5.2xlarge performance model")
]
TimeScale = Annotated[
    float, typer.Option("--time-scale", rich_help_panel=_EMULATOR_PANEL, help="run the performance model this many times faster")
]
Fault5xx = Annotated[
    float,
    typer.Option(
        "--fault-5xx",
        metavar="RATE",
        callback=_rate,
        rich_help_panel=_EMULATOR_PANEL,
        help="share of requests answered with a container 500 (ModelError, OriginalStatusCode 500)",
    ),
]
FaultThrottling = Annotated[
    float,
    typer.Option(
        "--fault-throttling",
        metavar="RATE",
        callback=_rate,
        rich_help_panel=_EMULATOR_PANEL,
        help="share answered with ThrottlingException",
    ),
]
FaultNotReady = Annotated[
    float,
    typer.Option(
        "--fault-not-ready",
        metavar="RATE",
        callback=_rate,
        rich_help_panel=_EMULATOR_PANEL,
        help="share answered with ModelNotReadyException",
    ),
]
FaultSlow = Annotated[
    float,
    typer.Option(
        "--fault-slow", metavar="RATE", callback=_rate, rich_help_panel=_EMULATOR_PANEL, help="share delayed by --slow-seconds"
    ),
]
SlowSeconds = Annotated[
    float, typer.Option("--slow-seconds", metavar="S", rich_help_panel=_EMULATOR_PANEL, help="delay of a slow request")
]
FaultSeed = Annotated[
    int, typer.Option("--fault-seed", metavar="N", rich_help_panel=_EMULATOR_PANEL, help="seed of the fault draws")
]
ProxyUrl = Annotated[
    str | None,
    typer.Option(
        "--proxy",
        metavar="URL",
        rich_help_panel=_EMULATOR_PANEL,
        show_default=False,
        help="forward requests to a real model server at URL (e.g. http://127.0.0.1:3000)",
    ),
]
ProxyKindOption = Annotated[
    ProxyKind,
    typer.Option("--proxy-kind", rich_help_panel=_EMULATOR_PANEL, help="tgi: POST URL/generate; openai: POST URL/v1/completions"),
]
ProxyModel = Annotated[
    str | None,
    typer.Option(
        "--proxy-model",
        metavar="NAME",
        rich_help_panel=_EMULATOR_PANEL,
        show_default=False,
        help="model name for an openai upstream (default: first of GET URL/v1/models)",
    ),
]
ProxyTimeout = Annotated[
    float,
    typer.Option(
        "--proxy-timeout",
        metavar="S",
        rich_help_panel=_EMULATOR_PANEL,
        help="give up on the upstream after S seconds, like SageMaker's limit",
    ),
]


def _target(stack: str | None, region: str | None) -> Any:
    from sagebatch.tooling.cli_jobs import StackTarget

    return StackTarget(stack, region)


# -- local: run, emulator ---------------------------------------------------------------------------
@app.command(
    help="Run a JSONL file through the whole pipeline locally (moto + emulator). Exit 0 when the job "
    "finished (COMPLETED, or FAILED as a job), whatever its records' outcomes; 1 when it could not finish."
)
def run(
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="JSONL file, one record per line", exists=True, dir_okay=False, show_default=False),
    ],
    out: Annotated[Path, typer.Option("--out", help="directory for results.jsonl and manifest.json")] = Path("out"),
    timeout: Annotated[float, typer.Option("--timeout", help="give up after this many seconds")] = 3600,
    verbose: Annotated[bool, typer.Option("--verbose", help="show the functions' log lines (ids, sizes, timings)")] = False,
    perf: Perf = False,
    time_scale: TimeScale = 1.0,
    fault_5xx: Fault5xx = 0.0,
    fault_throttling: FaultThrottling = 0.0,
    fault_not_ready: FaultNotReady = 0.0,
    fault_slow: FaultSlow = 0.0,
    slow_seconds: SlowSeconds = 2.0,
    fault_seed: FaultSeed = 0,
    proxy: ProxyUrl = None,
    proxy_kind: ProxyKindOption = ProxyKind.tgi,
    proxy_model: ProxyModel = None,
    proxy_timeout: ProxyTimeout = DEFAULT_TIMEOUT_S,
) -> int:
    emulator = EmulatorOptions(
        perf,
        time_scale,
        fault_5xx,
        fault_throttling,
        fault_not_ready,
        fault_slow,
        slow_seconds,
        fault_seed,
        proxy,
        str(proxy_kind),
        proxy_model,
        proxy_timeout,
    ).config()
    positive_seconds(timeout)
    return run_command(RunOptions(file, output_directory(out), timeout, verbose, emulator))


@app.command(help="Serve the TGI endpoint emulator on loopback (Ctrl-C to stop).")
def emulator(
    port: Annotated[int, typer.Option("--port")] = 8080,
    endpoint_name: Annotated[str, typer.Option("--endpoint-name")] = "mistral-7b-instruct",
    perf: Perf = False,
    time_scale: TimeScale = 1.0,
    fault_5xx: Fault5xx = 0.0,
    fault_throttling: FaultThrottling = 0.0,
    fault_not_ready: FaultNotReady = 0.0,
    fault_slow: FaultSlow = 0.0,
    slow_seconds: SlowSeconds = 2.0,
    fault_seed: FaultSeed = 0,
    proxy: ProxyUrl = None,
    proxy_kind: ProxyKindOption = ProxyKind.tgi,
    proxy_model: ProxyModel = None,
    proxy_timeout: ProxyTimeout = DEFAULT_TIMEOUT_S,
) -> int:
    config = EmulatorOptions(
        perf,
        time_scale,
        fault_5xx,
        fault_throttling,
        fault_not_ready,
        fault_slow,
        slow_seconds,
        fault_seed,
        proxy,
        str(proxy_kind),
        proxy_model,
        proxy_timeout,
    ).config()
    return emulator_command(port, endpoint_name, config)


# -- a deployed stack: submit, status, watch, results, list ---------------------------------------------
@app.command(
    help="Submit a job: upload a local JSONL file (to uploads/ in the stack's bucket) or name an s3:// object, "
    "and send the job message; prints the job id (alone on stdout). With --wait, follows it like `watch`, "
    "the summary on stderr (exit 0 COMPLETED, 3 FAILED, 4 CANCELLED, 5 EXPIRED, 6 --timeout)."
)
def submit(
    source: Annotated[
        str, typer.Argument(metavar="FILE|s3://BUCKET/KEY", help="a local JSONL file, or an S3 object", show_default=False)
    ],
    job_id: Annotated[
        str | None,
        typer.Option("--job-id", show_default=False, help="the job's id (default: derived from the client token or the message)"),
    ] = None,
    client_token: Annotated[
        str | None,
        typer.Option("--client-token", show_default=False, help="submitting again with the same token makes no second job"),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            metavar="KEY=VALUE",
            show_default=False,
            help="a TGI generation parameter for every record (repeatable; "
            "JSON values, e.g. max_new_tokens=256, stop='[\"###\"]')",
        ),
    ] = None,
    fit: Annotated[
        str | None,
        typer.Option(
            "--fit",
            metavar="KEY=VALUE,...",
            show_default=False,
            help="fit settings for long records, e.g. strategy=map_reduce,keep=tail",
        ),
    ] = None,
    deadline: Annotated[
        int | None,
        typer.Option("--deadline", metavar="S", show_default=False, help="the job's deadline in seconds (default: the stack's)"),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="follow the job until it finishes, like `sagebatch watch`")] = False,
    interval: Interval = 2.0,
    timeout: Timeout = None,
    as_json: Json = False,
    stack: Stack = None,
    region: Region = None,
) -> int:
    from sagebatch.tooling.cli_jobs import SubmitOptions, WatchOptions, submit_command

    options = SubmitOptions(source, job_id, client_token, list(param or []), fit, deadline, as_json)
    return submit_command(_target(stack, region), options, WatchOptions(interval, timeout) if wait else None)


@app.command(help="Print a job's status, counts, tokens and times (exit 1 if there is no such job).")
def status(job: JobId, as_json: Json = False, stack: Stack = None, region: Region = None, table: TableOverride = None) -> int:
    from sagebatch.tooling.cli_jobs import status_command

    return status_command(_target(stack, region), job, as_json, table)


@app.command(
    help="Follow a job live (done / failed / total, tokens/s, ETA, endpoint calls) until it finishes, then print "
    "its summary. Exit 0 COMPLETED, 3 FAILED, 4 CANCELLED, 5 EXPIRED, 6 --timeout, 1 no such job."
)
def watch(
    job: JobId,
    interval: Interval = 2.0,
    timeout: Timeout = None,
    as_json: Json = False,
    stack: Stack = None,
    region: Region = None,
    table: TableOverride = None,
) -> int:
    from sagebatch.tooling.cli_jobs import WatchOptions, watch_command

    return watch_command(_target(stack, region), job, WatchOptions(interval, timeout, as_json), table)


@app.command(
    help="Stream a finished job's results.jsonl to stdout or a file. Exit 1 while the job runs (results exist "
    "once it has finished), 3 if it FAILED (no results)."
)
def results(
    job: JobId,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", metavar="FILE|-", show_default=False, help="write to FILE (default, or -: stdout)"),
    ] = None,
    failed_only: Annotated[bool, typer.Option("--failed-only", help="only the lines whose status is not succeeded")] = False,
    partial: Annotated[
        bool,
        typer.Option(
            "--partial", help="the results of the shards finished so far, in line order (native format), while the job runs"
        ),
    ] = False,
    stack: Stack = None,
    region: Region = None,
) -> int:
    from sagebatch.tooling.cli_jobs import results_command

    return results_command(_target(stack, region), job, out, failed_only, partial)


@app.command("list", help="List recent jobs, newest first.")
def list_jobs(
    status: Annotated[
        JobStatus | None, typer.Option("--status", case_sensitive=False, show_default=False, help="only jobs in this status")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="WHEN",
            show_default=False,
            help="only jobs created since: 30m, 24h, 7d, or a date (2026-12-01, UTC)",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, metavar="N", help="at most N jobs")] = 20,
    as_json: Json = False,
    stack: Stack = None,
    region: Region = None,
    table: TableOverride = None,
) -> int:
    from sagebatch.tooling.cli_jobs import list_command

    return list_command(_target(stack, region), status, since, limit, as_json, table)


# -- a deployed stack: cancel, retry, redrive -------------------------------------------------------------
@app.command(help="Cancel a job: no new endpoint calls, records not started end 'cancelled', results.jsonl still written.")
def cancel(job: JobId, stack: Stack = None, region: Region = None, queue_url: QueueOverride = None) -> int:
    from sagebatch.tooling.cli_jobs import cancel_command

    return cancel_command(_target(stack, region), job, checked_queue_url(queue_url))


@app.command(help="Run the records of a finished job that did not succeed again, as a new job (prints its id).")
def retry(
    job: JobId,
    client_token: Annotated[
        str | None,
        typer.Option(
            "--client-token", show_default=False, help="one child job per (JOB, token); without one, JOB has a single retry child"
        ),
    ] = None,
    deadline: Annotated[
        int | None,
        typer.Option(
            "--deadline", metavar="S", show_default=False, help="the new job's deadline in seconds (default: the stack's)"
        ),
    ] = None,
    stack: Stack = None,
    region: Region = None,
    queue_url: QueueOverride = None,
) -> int:
    from sagebatch.tooling.cli_jobs import retry_command

    return retry_command(_target(stack, region), job, checked_queue_url(queue_url), client_token, deadline)


@app.command(help="Move a dead-letter queue's messages back to be processed again (StartMessageMoveTask).")
def redrive(
    which: Annotated[
        DeadLetterQueueName | None,
        typer.Argument(metavar="[intake|work|finalize]", show_default=False, help="the stack's dead-letter queue to redrive"),
    ] = None,
    queue_url: Annotated[
        str | None,
        typer.Option("--queue-url", show_default=False, help="the dead-letter queue's URL instead of naming one of the stack's"),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option("--to", metavar="URL", show_default=False, help="destination queue (default: where each message came from)"),
    ] = None,
    copy: Annotated[
        bool, typer.Option("--copy", help="move the messages here (receive, send, delete) instead of with StartMessageMoveTask")
    ] = False,
    stack: Stack = None,
    region: Region = None,
) -> int:
    from sagebatch.tooling.cli_jobs import redrive_command

    return redrive_command(
        _target(stack, region), which.value if which else None, checked_queue_url(queue_url), checked_queue_url(to), copy
    )


# -- before a job: estimate (tooling/cli_estimate.py) ----------------------------------------------------------
@app.command(
    help="Predict a file's endpoint calls, tokens, duration and cost before anything runs: the worker's own "
    'tokenizing and fitting, the calibrated TGI performance model, the stack\'s prices (README "Cost").'
)
def estimate(
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="JSONL file, one record per line", exists=True, dir_okay=False, show_default=False),
    ],
    endpoint_instances: Annotated[
        int,
        typer.Option("--endpoint-instances", min=1, metavar="N", help="instances behind the endpoint (capacity and price x N)"),
    ] = 1,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", metavar="KEY=VALUE", show_default=False, help="a TGI generation parameter for every record, as for submit"
        ),
    ] = None,
    fit: Annotated[
        str | None,
        typer.Option("--fit", metavar="KEY=VALUE,...", show_default=False, help="fit settings for long records, as for submit"),
    ] = None,
    output_tokens: Annotated[
        str,
        typer.Option(
            "--output-tokens",
            metavar="max|emulator|N",
            help="expected answer length: max_new_tokens (an upper bound), the local emulator's, or N tokens a call",
        ),
    ] = "max",
    local: Annotated[
        bool,
        typer.Option(
            "--local", help="predict `sagebatch run` on this machine (one worker environment) instead of the deployed stack"
        ),
    ] = False,
    instance_hourly_price: Annotated[
        float | None,
        typer.Option(
            "--instance-hourly-price",
            metavar="USD",
            show_default=False,
            help="one instance's price per hour (default: $SAGEBATCH_ENDPOINT_HOURLY_PRICE, else ml.g5.2xlarge's)",
        ),
    ] = None,
    as_json: Json = False,
) -> int:
    from sagebatch.tooling.cli_estimate import EstimateOptions, estimate_command

    return estimate_command(
        EstimateOptions(file, endpoint_instances, tuple(param or ()), fit, output_tokens, local, instance_hourly_price, as_json)
    )


# -- the endpoint (tooling/cli_endpoint.py) ----------------------------------------------------------------
app.add_typer(endpoint_app, name="endpoint", help="Deploy, describe and delete the SageMaker endpoint the stack calls.")
app.command("deploy-endpoint", help="The same as `sagebatch endpoint deploy` (kept for existing scripts).")(deploy_command)
app.command("delete-endpoint", help="The same as `sagebatch endpoint delete` (kept for existing scripts).")(delete_command)


# -- entry point ---------------------------------------------------------------------------------------------
def _click_exception() -> type[Exception]:
    """click's ClickException, whether typer vendors click or depends on it."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _command_name(args: list[str]) -> str:
    names = {command.name or command.callback.__name__ for command in app.registered_commands if command.callback}
    return next((f"sagebatch {arg}" for arg in args if arg in names), "sagebatch")


def _usage_error(where: str, message: str) -> NoReturn:
    """One sentence on stderr, exit status 2 (what argparse did, and what scripts and tests rely on)."""
    print(f"{where}: {message.strip()}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """Run `sagebatch` on `argv` (default: the process's arguments) and return its exit code; a usage error exits 2."""
    from botocore.exceptions import BotoCoreError, ClientError
    from pydantic import ValidationError

    from sagebatch.ports import NoRedriveDestination, SendFailed

    args = sys.argv[1:] if argv is None else list(argv)
    command = typer.main.get_command(app)
    try:
        result = command.main(args=args, prog_name="sagebatch", standalone_mode=False)
    except UsageProblem as error:
        _usage_error(_command_name(args), str(error))
    except ValidationError as error:
        _usage_error(
            _command_name(args),
            describe_validation_error(error, "message"),
        )
    except _click_exception() as error:
        ctx = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError":  # `sagebatch` alone: the help (rich prints it as it is built)
            if error.format_message().strip():  # type: ignore[attr-defined]
                print(error.format_message(), file=sys.stderr)  # type: ignore[attr-defined]
            raise SystemExit(2) from None
        code = int(getattr(error, "exit_code", 1))
        message = error.format_message()  # type: ignore[attr-defined]
        where = ctx.command_path if ctx is not None else _command_name(args)
        if code == 2:
            _usage_error(where, message)
        print(f"{where}: {message}", file=sys.stderr)
        return code
    except typer.Abort:
        return 1
    except (BotoCoreError, ClientError, NoRedriveDestination, SendFailed) as error:
        print(f"{_command_name(args)}: {error}", file=sys.stderr)
        return 1
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
