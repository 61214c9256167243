"""`sagebatch run` and `sagebatch emulator`: a file through the whole pipeline on this machine, or the endpoint
emulator alone. The command line (tooling/cli.py) builds `RunOptions` / `EmulatorOptions`; the bodies live here."""

from __future__ import annotations

import errno
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sagebatch.tooling.cli_args import ExitCode, UsageProblem
from sagebatch.tooling.emulator.proxy import DEFAULT_TIMEOUT_S, Proxy, ProxyConfig, UpstreamError
from sagebatch.tooling.emulator.server import EmulatorConfig, FaultConfig


@dataclass(frozen=True)
class EmulatorOptions:
    """The emulator flags `run` and `emulator` share."""

    perf: bool = False
    time_scale: float = 1.0
    fault_5xx: float = 0.0
    fault_throttling: float = 0.0
    fault_not_ready: float = 0.0
    fault_slow: float = 0.0
    slow_seconds: float = 2.0
    fault_seed: int = 0
    proxy: str | None = None
    proxy_kind: str = "tgi"
    proxy_model: str | None = None
    proxy_timeout: float = DEFAULT_TIMEOUT_S

    def config(self) -> EmulatorConfig:
        """The flags as an `EmulatorConfig`; an inconsistent combination is a usage problem."""
        if self.proxy is None and (self.proxy_model is not None or self.proxy_kind != "tgi"):
            raise UsageProblem("--proxy-kind and --proxy-model need --proxy URL")
        faults = FaultConfig(
            server_error=self.fault_5xx,
            throttling=self.fault_throttling,
            not_ready=self.fault_not_ready,
            slow=self.fault_slow,
            slow_seconds=self.slow_seconds,
            seed=self.fault_seed,
        )
        proxy = ProxyConfig(self.proxy, self.proxy_kind, self.proxy_model, self.proxy_timeout) if self.proxy else None
        return EmulatorConfig(faults=faults, proxy=proxy, perf=self.perf, time_scale=self.time_scale)


@dataclass(frozen=True)
class RunOptions:
    """`sagebatch run FILE`: where the outputs go, how long to wait, and the emulator to run against."""

    file: Path
    out: Path
    timeout: float
    verbose: bool
    emulator: EmulatorConfig


def run_command(options: RunOptions) -> int:
    """Exit 0 when the job finished (COMPLETED, or FAILED as a job, e.g. an unreadable input), whatever its
    records' outcomes; 1 when it could not finish (stalled, timed out, proxy unreachable)."""
    from sagebatch.observability import logger
    from sagebatch.tooling.local.progress import live_progress
    from sagebatch.tooling.local.runner import PipelineStalled
    from sagebatch.tooling.local.session import run_file

    config = ready(options.emulator, fatal=True)
    if config is None:
        return ExitCode.ERROR
    level = logger.log_level
    if not options.verbose:
        logger.setLevel("WARNING")  # the handlers' JSON log lines would drown the summary
    started = time.monotonic()
    try:
        manifest = run_file(options.file, options.out, timeout_s=options.timeout, emulator=config, watch=live_progress)
    except (PipelineStalled, TimeoutError) as error:
        print(f"the job did not finish: {error}", file=sys.stderr)
        return ExitCode.ERROR
    except OSError as error:  # the output folder (checked up front, but the disk may still say no)
        raise UsageProblem(f"cannot write the results to {str(options.out)!r}: {error.strerror or error}") from None
    finally:
        logger.setLevel(level)
    print_run_summary(manifest, options.out, time.monotonic() - started)
    return ExitCode.OK


def print_run_summary(manifest: dict[str, Any], out: Path, elapsed: float) -> None:
    if manifest["status"] != "COMPLETED":
        print(f"job {manifest['job_id']} {manifest['status']}: {manifest.get('error')}", file=sys.stderr)
        print(f"  manifest  {out / 'manifest.json'}")
        return
    counts, tokens, local = manifest["counts"], manifest["tokens"], manifest["_local"]
    print(f"job {manifest['job_id']} {manifest['status']} in {elapsed:.1f} s")
    print(f"  records   {counts['total']} total, {counts['succeeded']} succeeded, {counts['failed']} failed")
    print(f"  tokens    {tokens['input']} in, {tokens['output']} out, {manifest['endpoint_calls']} endpoint calls")
    print(
        f"  emulator  {local['emulator_requests']} requests, {local['emulator_injected_faults']} injected faults, "
        f"{local['emulator_slowed']} slowed"
    )
    print(f"  results   {out / 'results.jsonl'}")
    print(f"  manifest  {out / 'manifest.json'}")


def emulator_command(port: int, endpoint_name: str, emulator: EmulatorConfig) -> int:
    """Serve the emulator on loopback until Ctrl-C."""
    from sagebatch.tooling.emulator.server import EmulatorServer

    config = ready(emulator, fatal=False)
    assert config is not None
    try:
        server = EmulatorServer(config.build(endpoint_name), port=port).start()
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise UsageProblem(f"port {port} is in use; choose another with --port") from None
        raise
    print(f"TGI emulator for endpoint '{endpoint_name}' at {server.url} (Ctrl-C to stop)")
    print(
        f"  boto3.client('sagemaker-runtime', endpoint_url='{server.url}').invoke_endpoint(EndpointName='{endpoint_name}', ...)"
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return ExitCode.OK


def ready(config: EmulatorConfig, *, fatal: bool) -> EmulatorConfig | None:
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
