"""The `sagebatch` command: run a file through the local stack, or serve the endpoint emulator alone.

Both commands take the same emulator options: fault knobs (`--fault-*`), the calibrated performance model
(`--perf`), or proxy mode (`--proxy URL`), where a real TGI or OpenAI-compatible server writes the text.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from sagebatch.emulator.proxy import DEFAULT_TIMEOUT_S, KINDS, Proxy, ProxyConfig, UpstreamError
from sagebatch.emulator.server import EmulatorConfig, FaultConfig


def _run(args: argparse.Namespace) -> int:
    """Exit 0 when the job finished (COMPLETED, or FAILED as a job, e.g. an unreadable input), whatever its
    records' outcomes; 1 when it could not finish (stalled, timed out, proxy unreachable)."""
    from sagebatch.local.runner import PipelineStalled
    from sagebatch.local.session import run_file
    from sagebatch.observability import logger

    if not args.verbose:
        logger.setLevel("WARNING")  # the handlers' JSON log lines would drown the summary
    config = _ready(args.emulator_config, fatal=True)
    if config is None:
        return 1
    started = time.monotonic()
    try:
        manifest = run_file(Path(args.file), Path(args.out), timeout_s=args.timeout, emulator=config)
    except (PipelineStalled, TimeoutError) as error:
        print(f"the job did not finish: {error}", file=sys.stderr)
        return 1
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


def _emulator(args: argparse.Namespace) -> int:
    from sagebatch.emulator.server import EmulatorServer

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

    args = parser.parse_args(argv)
    try:
        args.emulator_config = _emulator_config(args)
    except ValueError as error:
        commands.choices[args.command].error(str(error))  # exits with status 2, like any bad flag
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
