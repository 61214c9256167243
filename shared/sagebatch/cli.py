"""The `sagebatch` command: run a file through the local stack, or serve the endpoint emulator alone."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from sagebatch.local.session import run_file

    started = time.monotonic()
    manifest = run_file(Path(args.file), Path(args.out), timeout_s=args.timeout)
    elapsed = time.monotonic() - started
    if manifest["status"] != "COMPLETED":
        print(f"job {manifest['job_id']} {manifest['status']}: {manifest.get('error')}", file=sys.stderr)
        print(f"manifest: {Path(args.out) / 'manifest.json'}")
        return 1
    counts, tokens = manifest["counts"], manifest["tokens"]
    print(f"job {manifest['job_id']} {manifest['status']} in {elapsed:.1f} s")
    print(f"  records   {counts['total']} total, {counts['succeeded']} succeeded, {counts['failed']} failed")
    print(f"  tokens    {tokens['input']} in, {tokens['output']} out, {manifest['endpoint_calls']} endpoint calls")
    print(f"  results   {Path(args.out) / 'results.jsonl'}")
    print(f"  manifest  {Path(args.out) / 'manifest.json'}")
    return 0


def _emulator(args: argparse.Namespace) -> int:
    from sagebatch.emulator.server import Emulator, EmulatorServer

    scheduler = None
    if args.perf:
        from sagebatch.emulator.perf import TgiScheduler

        scheduler = TgiScheduler(time_scale=args.time_scale)
    server = EmulatorServer(Emulator(endpoint_name=args.endpoint_name, scheduler=scheduler), port=args.port).start()
    print(f"TGI emulator for endpoint '{args.endpoint_name}' at {server.url} (Ctrl-C to stop)")
    print(f"  boto3.client('sagemaker-runtime', endpoint_url='{server.url}').invoke_endpoint(EndpointName='{args.endpoint_name}', ...)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sagebatch", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a JSONL file through the whole pipeline locally (moto + emulator)")
    run.add_argument("file", help="JSONL file, one record per line")
    run.add_argument("--out", default="out", help="directory for results.jsonl and manifest.json (default: out)")
    run.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    run.set_defaults(func=_run)

    emulator = commands.add_parser("emulator", help="serve the TGI endpoint emulator on loopback")
    emulator.add_argument("--port", type=int, default=8080)
    emulator.add_argument("--endpoint-name", default="mistral-7b-instruct")
    emulator.add_argument("--perf", action="store_true", help="use the calibrated g5.2xlarge performance model")
    emulator.add_argument("--time-scale", type=float, default=1.0, help="run the performance model this many times faster")
    emulator.set_defaults(func=_emulator)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
