"""The `sagebatch` command: run a file through the local stack, or serve the endpoint emulator alone; and control
the jobs of a deployed stack (cancel, retry, status, redrive a dead-letter queue).

`run` and `emulator` take the same emulator options: fault knobs (`--fault-*`), the calibrated performance model
(`--perf`), or proxy mode (`--proxy URL`), where a real TGI or OpenAI-compatible server writes the text.
The job-control commands use the AWS credentials and region of the environment (the region defaults to the
queue URL's); see docs/operations.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from sagebatch.domain.limits import MAX_INPUT_LENGTH, MAX_TOTAL_TOKENS
from sagebatch.tooling.emulator.proxy import DEFAULT_TIMEOUT_S, KINDS, Proxy, ProxyConfig, UpstreamError
from sagebatch.tooling.emulator.server import EmulatorConfig, FaultConfig


def _run(args: argparse.Namespace) -> int:
    """Exit 0 when the job finished (COMPLETED, or FAILED as a job, e.g. an unreadable input), whatever its
    records' outcomes; 1 when it could not finish (stalled, timed out, proxy unreachable)."""
    from sagebatch.tooling.local.runner import PipelineStalled
    from sagebatch.tooling.local.session import run_file
    from sagebatch.observability import logger

    config = _ready(args.emulator_config, fatal=True)
    if config is None:
        return 1
    level = logger.log_level
    if not args.verbose:
        logger.setLevel("WARNING")  # the handlers' JSON log lines would drown the summary
    started = time.monotonic()
    try:
        manifest = run_file(Path(args.file), Path(args.out), timeout_s=args.timeout, emulator=config)
    except (PipelineStalled, TimeoutError) as error:
        print(f"the job did not finish: {error}", file=sys.stderr)
        return 1
    finally:
        logger.setLevel(level)
    elapsed = time.monotonic() - started
    if manifest["status"] != "COMPLETED":
        print(f"job {manifest['job_id']} {manifest['status']}: {manifest.get('error')}", file=sys.stderr)
        print(f"  manifest  {Path(args.out) / 'manifest.json'}")
        return 0
    counts, tokens, local = manifest["counts"], manifest["tokens"], manifest["_local"]
    print(f"job {manifest['job_id']} {manifest['status']} in {elapsed:.1f} s")
    print(f"  records   {counts['total']} total, {counts['succeeded']} succeeded, {counts['failed']} failed")
    print(f"  tokens    {tokens['input']} in, {tokens['output']} out, {manifest['endpoint_calls']} endpoint calls")
    print(f"  emulator  {local['emulator_requests']} requests, {local['emulator_injected_faults']} injected faults, "
          f"{local['emulator_slowed']} slowed")
    print(f"  results   {Path(args.out) / 'results.jsonl'}")
    print(f"  manifest  {Path(args.out) / 'manifest.json'}")
    return 0


def _aws(service: str, region: str | None) -> Any:
    import boto3

    return boto3.client(service, region_name=region)


def _send_control(args: argparse.Namespace, request: Any) -> None:
    from sagebatch.adapters.queues import SqsMessageSender, region_of_queue_url

    SqsMessageSender(_aws("sqs", args.region or region_of_queue_url(args.queue_url)), args.queue_url).send(request)


def _cancel(args: argparse.Namespace) -> int:
    from sagebatch.domain.messages import CancelRequest

    _send_control(args, CancelRequest(action="cancel", job_id=args.job_id))
    print(f"cancel sent for job {args.job_id}: if it is still running, records not started yet end as 'cancelled' "
          f"(no effect on a finished job; see `sagebatch status {args.job_id} --table <TableName>`)")
    return 0


def _retry(args: argparse.Namespace) -> int:
    from sagebatch.usecases.intake import retry_job_id
    from sagebatch.domain.messages import RetryRequest

    request = RetryRequest(action="retry", job_id=args.job_id, client_token=args.client_token, deadline_s=args.deadline)
    _send_control(args, request)
    print(f"retry sent for job {args.job_id}: the records that did not succeed run again as job "
          f"{retry_job_id(args.job_id, args.client_token)}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from sagebatch.adapters.dynamodb import Table
    from sagebatch.adapters.jobs import DynamoJobStore
    from sagebatch.usecases.control.report import describe

    job = DynamoJobStore(Table(_aws("dynamodb", args.region), args.table)).get_job(args.job_id)
    if job is None:
        print(f"no job {args.job_id} in table {args.table} (a refused retry creates none: see the intake log)", file=sys.stderr)
        return 1
    print("\n".join(describe(job)))
    return 0


def _redrive(args: argparse.Namespace) -> int:
    from sagebatch.adapters.queues import SqsDeadLetterQueues, region_of_queue_url
    from sagebatch.usecases.control.redrive import redrive

    queues = SqsDeadLetterQueues(_aws("sqs", args.region or region_of_queue_url(args.queue_url)))
    outcome = redrive(queues, args.queue_url, args.to, copy=args.copy)
    if outcome.note:
        print(outcome.note)
    if outcome.method == "move-task":
        print(f"message move task started ({outcome.task_handle}); follow it with "
              f"`aws sqs list-message-move-tasks --source-arn {queues.arn(args.queue_url)}`")
    else:
        print(f"moved {outcome.moved} messages from {args.queue_url} to {args.to or 'its source queue'}")
    return 0


def _emulator(args: argparse.Namespace) -> int:
    from sagebatch.tooling.emulator.server import EmulatorServer

    config = _ready(args.emulator_config, fatal=False)
    assert config is not None
    server = EmulatorServer(config.build(args.endpoint_name), port=args.port).start()
    print(f"TGI emulator for endpoint '{args.endpoint_name}' at {server.url} (Ctrl-C to stop)")
    print(f"  boto3.client('sagemaker-runtime', endpoint_url='{server.url}').invoke_endpoint(EndpointName='{args.endpoint_name}', ...)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


def _ready(config: EmulatorConfig, *, fatal: bool) -> EmulatorConfig | None:
    """In proxy mode, reach the upstream once: a run fails fast if it is not there; the emulator only warns.

    For an OpenAI-compatible upstream the model name found here is kept, so every request names the same model.
    """
    if config.proxy is None:
        return config
    proxy = Proxy(config.proxy)
    try:
        print(f"proxy: {proxy.check()}")
    except UpstreamError as error:
        print(f"proxy: {config.proxy.url} ({config.proxy.kind}) is not usable: {error.body or 'no answer'}", file=sys.stderr)
        return None if fatal else config
    if config.proxy.kind == "openai":
        return replace(config, proxy=replace(config.proxy, model=proxy.model()))
    return config


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a rate must be within [0, 1], not {value:g}")
    return value


def _add_emulator_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("endpoint emulator")
    group.add_argument("--perf", action="store_true", help="use the calibrated g5.2xlarge performance model")
    group.add_argument("--time-scale", type=float, default=1.0, help="run the performance model this many times faster")
    group.add_argument("--fault-5xx", type=_rate, default=0.0, metavar="RATE",
                       help="share of requests answered with a container 500 (ModelError, OriginalStatusCode 500)")
    group.add_argument("--fault-throttling", type=_rate, default=0.0, metavar="RATE",
                       help="share answered with ThrottlingException")
    group.add_argument("--fault-not-ready", type=_rate, default=0.0, metavar="RATE",
                       help="share answered with ModelNotReadyException")
    group.add_argument("--fault-slow", type=_rate, default=0.0, metavar="RATE", help="share delayed by --slow-seconds")
    group.add_argument("--slow-seconds", type=float, default=2.0, metavar="S", help="delay of a slow request (default: 2)")
    group.add_argument("--fault-seed", type=int, default=0, metavar="N", help="seed of the fault draws (default: 0)")
    group.add_argument("--proxy", metavar="URL",
                       help="forward requests to a real model server at URL (e.g. http://127.0.0.1:3000)")
    group.add_argument("--proxy-kind", choices=KINDS, default="tgi",
                       help="tgi: POST URL/generate; openai: POST URL/v1/completions (default: tgi)")
    group.add_argument("--proxy-model", metavar="NAME",
                       help="model name for an openai upstream (default: first of GET URL/v1/models)")
    group.add_argument("--proxy-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                       help=f"give up on the upstream after S seconds, like SageMaker's limit (default: {DEFAULT_TIMEOUT_S:g})")


def _emulator_config(args: argparse.Namespace) -> EmulatorConfig:
    """The flags as an `EmulatorConfig`; raises ValueError on an inconsistent combination."""
    if args.proxy is None and (args.proxy_model is not None or args.proxy_kind != "tgi"):
        raise ValueError("--proxy-kind and --proxy-model need --proxy URL")
    faults = FaultConfig(
        server_error=args.fault_5xx,
        throttling=args.fault_throttling,
        not_ready=args.fault_not_ready,
        slow=args.fault_slow,
        slow_seconds=args.slow_seconds,
        seed=args.fault_seed,
    )
    proxy = ProxyConfig(args.proxy, args.proxy_kind, args.proxy_model, args.proxy_timeout) if args.proxy else None
    return EmulatorConfig(faults=faults, proxy=proxy, perf=args.perf, time_scale=args.time_scale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sagebatch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a JSONL file through the whole pipeline locally (moto + emulator)")
    run.add_argument("file", help="JSONL file, one record per line")
    run.add_argument("--out", default="out", help="directory for results.jsonl and manifest.json (default: out)")
    run.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    run.add_argument("--verbose", action="store_true", help="show the functions' log lines (ids, sizes, timings)")
    _add_emulator_options(run)
    run.set_defaults(func=_run)

    emulator = commands.add_parser("emulator", help="serve the TGI endpoint emulator on loopback")
    emulator.add_argument("--port", type=int, default=8080)
    emulator.add_argument("--endpoint-name", default="mistral-7b-instruct")
    _add_emulator_options(emulator)
    emulator.set_defaults(func=_emulator)

    _add_control_commands(commands)

    args = parser.parse_args(argv)
    if hasattr(args, "perf"):
        try:
            args.emulator_config = _emulator_config(args)
        except ValueError as error:
            commands.choices[args.command].error(str(error))  # exits with status 2, like any bad flag
    return _run_command(args, commands.choices[args.command])


def _add_control_commands(commands: Any) -> None:
    def add(name: str, help_text: str, func: Any) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--region", help="AWS region (default: the queue URL's, else the environment's)")
        command.set_defaults(func=func)
        return command

    cancel = add("cancel", "cancel a job of a deployed stack: no new endpoint calls, results.jsonl still written", _cancel)
    cancel.add_argument("job_id", metavar="JOB")
    cancel.add_argument("--queue-url", required=True, help="the stack's IntakeQueueUrl output")

    retry = add("retry", "run the records of a finished job that did not succeed again, as a new job", _retry)
    retry.add_argument("job_id", metavar="JOB")
    retry.add_argument("--queue-url", required=True, help="the stack's IntakeQueueUrl output")
    retry.add_argument("--client-token", help="one child job per (JOB, token); without one, JOB has a single retry child")
    retry.add_argument("--deadline", type=int, metavar="S", help="the new job's deadline in seconds (default: the stack's)")

    status = add("status", "print a job's status and counts", _status)
    status.add_argument("job_id", metavar="JOB")
    status.add_argument("--table", required=True, help="the stack's TableName output")

    redrive = add("redrive", "move a dead-letter queue's messages back to be processed again", _redrive)
    redrive.add_argument("--queue-url", required=True, help="the dead-letter queue's URL (DeadLetterQueueUrls output)")
    redrive.add_argument("--to", metavar="URL", help="destination queue (default: where each message came from)")
    deploy = add("deploy-endpoint", "deploy the Mistral 7B Instruct endpoint (JumpStart, TGI 1.1.0, ml.g5.2xlarge)", _deploy)
    deploy.add_argument("--endpoint-name", default="mistral-7b-instruct", help="the stack's EndpointName")
    deploy.add_argument("--role", help="SageMaker execution role ARN (default: the SDK's)")
    deploy.add_argument("--model-version", default="*", help="pin the JumpStart model version (recommended)")
    deploy.add_argument("--max-input-length", type=int, default=MAX_INPUT_LENGTH, help="the stack's MaxInputLength")
    deploy.add_argument("--max-total-tokens", type=int, default=MAX_TOTAL_TOKENS, help="the stack's MaxTotalTokens")
    deploy.add_argument("--allow-other-tgi", action="store_true", help="accept a container other than TGI 1.1.0")
    deploy.add_argument("--dry-run", action="store_true", help="print the plan and the TGI environment; deploy nothing")

    delete = add("delete-endpoint", "delete the endpoint, its config and its model (stops billing)", _delete)
    delete.add_argument("--endpoint-name", default="mistral-7b-instruct")

    redrive.add_argument("--copy", action="store_true",
                         help="move the messages here (receive, send, delete) instead of with StartMessageMoveTask")


def _deploy(args: argparse.Namespace) -> int:
    from sagebatch.tooling.deploy import EndpointPlan, deploy

    plan = EndpointPlan(args.endpoint_name, args.role, model_version=args.model_version,
                        max_input_length=args.max_input_length, max_total_tokens=args.max_total_tokens)
    print(f"endpoint {plan.endpoint_name}: {plan.model_id} {plan.model_version} on {plan.instance_type}")
    print(f"  TGI environment {plan.environment()}")
    if args.dry_run:
        return 0
    deploy(plan, allow_other_tgi=args.allow_other_tgi)
    print(f"endpoint {plan.endpoint_name} is in service (it bills by the hour: sagebatch delete-endpoint)")
    return 0


def _delete(args: argparse.Namespace) -> int:
    import boto3

    from sagebatch.tooling.deploy import delete

    for item in delete(args.endpoint_name, boto3.client("sagemaker", region_name=args.region)):
        print(f"deleted {item}")
    return 0


def _run_command(args: argparse.Namespace, command: argparse.ArgumentParser) -> int:
    """Run the chosen command; a message that does not validate is a usage error, an AWS error exits 1."""
    from botocore.exceptions import BotoCoreError, ClientError
    from pydantic import ValidationError

    from sagebatch.ports import NoRedriveDestination, SendFailed

    try:
        return args.func(args)
    except ValidationError as error:
        command.error("; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()))
    except (BotoCoreError, ClientError, NoRedriveDestination, SendFailed) as error:
        print(f"sagebatch {args.command}: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
