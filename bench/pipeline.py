"""Pipeline benchmark: the whole pipeline against the best fixed-concurrency client, on the same records, in one run.

The figure that counts for a user is not the caller's (bench/saturation.py, a unit-level bench) but the pipeline's:
intake, shards, worker invocations, result stores and finalize, from the file's drop to its last result. For each
workload, on the calibrated TGI 1.1 emulator (`EmulatorConfig(perf=True)`, model time sped up by the row's scale):

1. **as deployed** (`sagebatch.tooling.local.deployed.DeployedStack`): `WorkerMaxConcurrency` worker environments
   that share nothing in memory (each its own caller, limiter and SlotShare), fed as Lambda's SQS event source
   feeds them (`BatchSize` and batching window from template.yaml, no rounds), over the in-memory fakes of the AWS
   ports, the endpoint over real HTTP;
2. **local**: `sagebatch run` as a user runs it (moto, the template's event sources played by the local poller);
3. **oracle**: every request body the pipeline sent (recorded at the emulator), replayed by a plain client holding
   a fixed number of requests in flight, for a sweep of concurrencies, each on the whole job; the best without
   timeouts is the oracle. Same records, same outputs (the emulator's output length is a function of the input).

Reported per row: output tok/s (model time), its ratio to the oracle, timeouts, 429s, p99 end-to-end latency of
one request, and the makespan from the drop to the last result (model seconds). The pipeline's own work (intake,
stores, finalize) runs in wall time, which the time scale magnifies: each row runs at a scale that does not let it
dominate (1 for the small job), given in the table. The emulator runs in this process in both topologies (it must,
to record each request's model times); `sagebatch run` starts it the same way.

Run:  make bench-pipeline   (writes bench/results/pipeline.{json,png}; about 8 min on 2 cores; --quick: ~3 min)
"""

from __future__ import annotations

import os
import sys

# bench/ holds scripts named like stdlib modules (tokenize.py): drop it from sys.path before importing anything else.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import json
import logging
import queue
import random
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    import sagebatch  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

import boto3
from botocore.exceptions import ClientError

from sagebatch.endpoint.sagemaker import runtime_client_config
from sagebatch.tooling.emulator.server import Emulator, EmulatorConfig, EmulatorServer

RESULTS = Path(__file__).resolve().parent / "results"
PHRASE = "I believe the meaning of life is to "  # 8 words, ~1 token a word (performance-model.md 1.1)
WORDS = {129: 128, 513: 512, 6401: 6400}  # input tokens (BOS included) -> words of the seed's payload
MAX_NEW_TOKENS = 128
ENDPOINT = "mistral-7b-instruct"
TARGET = 0.95


@dataclass(frozen=True)
class Workload:
    name: str
    parts: tuple[tuple[dict[int, float], int], ...]  # (mix of input sizes, records), one after the other in the file
    scale: float  # model time runs this many times faster than wall time
    candidates: tuple[int, ...]  # fixed concurrencies the oracle tries
    quick_records: float = 0.5  # share of the records --quick runs

    def records(self, quick: bool) -> list[dict[str, Any]]:
        rng = random.Random(7)
        out: list[dict[str, Any]] = []
        for mix, count in self.parts:
            sizes, weights = zip(*mix.items(), strict=True)
            for _ in range(max(1, int(count * (self.quick_records if quick else 1)))):
                words = WORDS[rng.choices(sizes, weights)[0]]
                # The record number leads the text, so each record's natural output length (a hash of its input at
                # the emulator) differs: natural EOS lengths, 12-96 tokens, under max_new_tokens 128.
                text = f"{len(out)}: " + (PHRASE * (words // 8)).rstrip()
                out.append({"id": len(out), "inputs": text, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}})
        return out


SHORT = {129: 1.0}
LONG = {6401: 1.0}
WORKLOADS = [
    Workload("129 tok", ((SHORT, 600),), 2, (120, 128)),
    Workload("513 tok", (({513: 1.0}, 300),), 4, (48, 64, 96)),
    Workload("6401 tok", ((LONG, 32),), 10, (6, 8, 10)),
    Workload("mix 85/10/5", (({129: 0.85, 513: 0.10, 6401: 0.05}, 400),), 4, (64, 96, 128)),
    Workload("small job (200)", ((SHORT, 200),), 1, (120, 128), quick_records=1.0),
    Workload("short-then-long", ((SHORT, 150), (LONG, 36)), 8, (16, 24, 32)),
]


# -- the emulator, recording every request in model time ------------------------------------------------------------
@dataclass
class Request:
    arrived_ms: float
    done_ms: float
    status: int
    output_tokens: int
    timed_out: bool
    body: bytes


class RecordingEmulator:
    """The calibrated emulator behind HTTP, with each request's model times, status and body kept."""

    def __init__(self, scale: float):
        self.emulator: Emulator = EmulatorConfig(perf=True, time_scale=scale).build(ENDPOINT)
        self.scheduler = self.emulator.scheduler
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        original = self.emulator.invoke

        def invoke(name: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
            arrived = self.scheduler.now_ms()
            status, headers, answer = original(name, body)
            done = self.scheduler.now_ms()
            tokens, timed_out = _output_tokens(status, answer)
            with self._lock:
                self.requests.append(Request(arrived, done, status, tokens, timed_out, body))
            return status, headers, answer

        self.emulator.invoke = invoke  # type: ignore[method-assign]
        self.server = EmulatorServer(self.emulator)

    def now_ms(self) -> float:
        return float(self.scheduler.now_ms())

    def __enter__(self) -> RecordingEmulator:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self.scheduler.close()


def _output_tokens(status: int, answer: bytes) -> tuple[int, bool]:
    if status != 200:
        return 0, b"timed out" in answer.lower() or b"timeout" in answer.lower()
    item = json.loads(answer)[0]
    return int((item.get("details") or {}).get("generated_tokens", 0)), False


# -- one run's figures ------------------------------------------------------------------------------------------------
@dataclass
class Row:
    workload: str
    topology: str
    scale: float
    records: int
    concurrency: int | None = None  # the oracle's fixed concurrency
    output_tokens: int = 0
    tok_per_s: float = 0.0
    ratio: float | None = None
    timeouts: int = 0
    overloaded: int = 0
    p99_e2e_s: float = 0.0
    makespan_s: float = 0.0  # model seconds, from the drop (or the first request) to the last result
    lost: int = 0
    mean_in_flight: float = 0.0  # requests at the endpoint, averaged over the makespan
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def summarise(row: Row, requests: list[Request], started_ms: float) -> Row:
    ok = [r for r in requests if r.status == 200]
    last = max((r.done_ms for r in ok), default=started_ms)
    row.output_tokens = sum(r.output_tokens for r in ok)
    row.makespan_s = (last - started_ms) / 1000
    row.tok_per_s = row.output_tokens / row.makespan_s if row.makespan_s > 0 else 0.0
    row.timeouts = sum(1 for r in requests if r.timed_out)
    busy_ms = sum(r.done_ms - r.arrived_ms for r in requests)
    row.mean_in_flight = busy_ms / (last - started_ms) if last > started_ms else 0.0
    latencies = sorted((r.done_ms - r.arrived_ms) / 1000 for r in ok)
    row.p99_e2e_s = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0
    return row


def overloaded_of(emulator: RecordingEmulator) -> int:
    return int(emulator.scheduler.stats().overloaded)


# -- topologies -------------------------------------------------------------------------------------------------------
def run_deployed(workload: Workload, data: bytes, records: int, template: dict[str, Any]) -> tuple[Row, list[bytes]]:
    from sagebatch.domain.time_budget import DEFAULT_CALL_TIME_RESERVE_S
    from sagebatch.fakes import fake_settings
    from sagebatch.tooling.local.clocks import scaled_settings
    from sagebatch.tooling.local.deployed import DeployedStack

    trigger = _worker_trigger(template)
    with RecordingEmulator(workload.scale) as emulator:
        settings = fake_settings(
            endpoint_name=ENDPOINT, worker_max_concurrency=trigger["environments"], **scaled_settings(workload.scale)
        )
        stack = DeployedStack(
            settings,
            emulator.server.url,
            environments=trigger["environments"],
            batch_size=trigger["batch_size"],
            batching_window_s=trigger["window_s"] / workload.scale,
            invocation_timeout_s=trigger["timeout_s"] / workload.scale,
            call_reserve_s=DEFAULT_CALL_TIME_RESERVE_S / workload.scale,
        )
        try:
            wall = time.monotonic()
            started = emulator.now_ms()
            job_id = stack.drop(data, "inputs/bench.jsonl")
            job = stack.run_job(job_id, timeout_s=900)
            wall = time.monotonic() - wall
        finally:
            stack.close()
        row = summarise(Row(workload.name, "as deployed", workload.scale, records), emulator.requests, started)
        row.overloaded = overloaded_of(emulator)
        row.lost = records - _answered(stack.aws.results.results(job_id))
        row.wall_s = wall
        row.extra = {
            "status": str(job.status),
            "invocations": [w.invocations for w in stack.workers],
            "final_limits": [round(w.caller.limiter.limit, 1) for w in stack.workers],
            "caller_stats": [asdict(w.caller.stats) for w in stack.workers],
            "peak_in_flight": emulator.emulator.stats.max_in_flight,
        }
        return row, [r.body for r in emulator.requests if r.status == 200]


def run_local(workload: Workload, path: Path, records: int) -> Row:
    from sagebatch.tooling.local.session import local_stack

    with (
        RecordingEmulator(workload.scale) as emulator,
        local_stack(emulator=emulator.emulator) as run,
    ):
        wall = time.monotonic()
        started = emulator.now_ms()
        job_id = run.drop_file(path.read_bytes(), f"inputs/{path.name}")
        status = run.wait_for(job_id, timeout_s=900)
        wall = time.monotonic() - wall
        results = run.results(job_id)
        row = summarise(Row(workload.name, "local (sagebatch run)", workload.scale, records), emulator.requests, started)
        row.overloaded = overloaded_of(emulator)
        row.lost = records - sum(1 for r in results if r.get("status") == "succeeded")
        row.wall_s = wall
        row.extra = {"invocations": run.poller.stats.invocations, "status": str(status)}
        return row


def run_fixed(workload: Workload, bodies: list[bytes], concurrency: int) -> Row:
    """A plain client: `concurrency` threads, each sending the next body as soon as its last answer came."""
    with RecordingEmulator(workload.scale) as emulator:
        client = boto3.client(
            "sagemaker-runtime",
            endpoint_url=emulator.server.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=runtime_client_config(max_pool_connections=concurrency + 4),
        )
        todo: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        for body in bodies:
            todo.put(body)

        def send() -> None:
            while True:
                try:
                    body = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    client.invoke_endpoint(EndpointName=ENDPOINT, ContentType="application/json", Body=body)["Body"].read()
                except ClientError:  # an answer (429, timeout): counted at the emulator, not retried
                    continue
                except Exception:  # the request did not get through (connection): a plain client tries again
                    todo.put(body)

        wall = time.monotonic()
        started = emulator.now_ms()
        threads = [threading.Thread(target=send) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        row = summarise(Row(workload.name, "oracle", workload.scale, len(bodies), concurrency), emulator.requests, started)
        row.overloaded = overloaded_of(emulator)
        row.lost = len(bodies) - sum(1 for r in emulator.requests if r.status == 200)
        row.wall_s = time.monotonic() - wall
        return row


def _answered(results: Any) -> int:
    return sum(1 for result in results if result.status == "succeeded")


def _worker_trigger(template: dict[str, Any]) -> dict[str, Any]:
    """The worker's event source as template.yaml deploys it (parameters at their defaults)."""
    from sagebatch.tooling.local.template import sqs_triggers

    parameters = {name: spec.get("Default") for name, spec in template.get("Parameters", {}).items()}

    def resolve(value: Any) -> Any:
        if isinstance(value, dict) and "Ref" in value:
            return parameters[value["Ref"]]
        return value

    root = Path(__file__).resolve().parents[1]
    (trigger,) = [t for t in sqs_triggers(template, root, resolve) if t.function == "WorkerFunction"]
    props = template["Resources"]["WorkerFunction"]["Properties"]
    timeout = props.get("Timeout") or template["Globals"]["Function"]["Timeout"]
    return {
        "environments": int(trigger.max_concurrency or 1),
        "batch_size": trigger.batch_size,
        "window_s": trigger.batching_window_s,
        "timeout_s": float(timeout),
    }


# -- the bench --------------------------------------------------------------------------------------------------------
def bench_workload(workload: Workload, args: argparse.Namespace, folder: Path, template: dict[str, Any]) -> list[Row]:
    records = workload.records(args.quick)
    path = folder / f"{workload.name.split()[0]}.jsonl"
    data = "".join(json.dumps(record) + "\n" for record in records).encode()
    path.write_bytes(data)
    rows: list[Row] = []
    deployed, bodies = run_deployed(workload, data, len(records), template)
    rows.append(deployed)
    _progress(deployed)
    if not args.skip_local:
        local = run_local(workload, path, len(records))
        rows.append(local)
        _progress(local)
    fixed = []
    for concurrency in workload.candidates:
        row = run_fixed(workload, bodies, concurrency)
        fixed.append(row)
        _progress(row)
    clean = [row for row in fixed if row.timeouts == 0 and row.lost == 0] or fixed
    oracle = max(clean, key=lambda row: row.tok_per_s)
    oracle.topology = "oracle (best fixed)"
    for row in rows:
        row.ratio = row.tok_per_s / oracle.tok_per_s if oracle.tok_per_s else None
    oracle.ratio = 1.0
    return [*rows, oracle, *[row for row in fixed if row is not oracle]]


def _progress(row: Row) -> None:
    label = row.topology if row.concurrency is None else f"fixed c={row.concurrency}"
    print(
        f"  {row.workload:18} {label:24} {row.tok_per_s:7.0f} tok/s  makespan {row.makespan_s:6.1f} s  "
        f"timeouts {row.timeouts}  429 {row.overloaded}  lost {row.lost}  in flight {row.mean_in_flight:5.1f}  wall {row.wall_s:5.1f} s  {row.extra or ''}",
        flush=True,
    )


def table(rows: list[Row]) -> str:
    header = (
        "| workload | topology | scale | records | tok/s | vs oracle | timeouts | 429s | p99 e2e s | makespan s | lost |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [header]
    for row in rows:
        if row.topology.startswith("oracle") or row.concurrency is None:
            topology = f"{row.topology} (c={row.concurrency})" if row.concurrency else row.topology
            ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
            mark = "" if row.ratio is None or row.ratio >= TARGET or row.topology.startswith("oracle") else " ✗"
            lines.append(
                f"| {row.workload} | {topology} | {row.scale:g} | {row.records} | {row.tok_per_s:.0f} | {ratio}{mark} | "
                f"{row.timeouts} | {row.overloaded} | {row.p99_e2e_s:.1f} | {row.makespan_s:.1f} | {row.lost} |"
            )
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(row.workload for row in rows))
    topologies = ["as deployed", "local (sagebatch run)"]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.35
    for offset, topology in enumerate(topologies):
        values = [next((r.ratio or 0 for r in rows if r.workload == w and r.topology == topology), 0) for w in workloads]
        ax.bar([i + offset * width for i in range(len(workloads))], values, width, label=topology)
    ax.axhline(TARGET, color="red", linestyle="--", linewidth=1, label=f"target {TARGET}")
    ax.set_xticks([i + width / 2 for i in range(len(workloads))], workloads, rotation=15)
    ax.set_ylabel("output tok/s / best fixed client")
    ax.set_ylim(0, 1.15)
    ax.legend(loc="lower right")
    ax.set_title("Whole pipeline vs the best fixed-concurrency client (calibrated TGI emulator)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer records per workload (about half)")
    parser.add_argument("--only", action="append", help="run only the workloads whose name starts with this")
    parser.add_argument("--skip-local", action="store_true", help="skip the local topology (sagebatch run)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.disable(logging.WARNING)  # the functions' info lines (ids and timings) would drown the table
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    from sagebatch.tooling.local.template import default_template_path, load_template

    template = load_template(default_template_path())
    workloads = [w for w in WORKLOADS if not args.only or any(w.name.startswith(o) for o in args.only)]
    rows: list[Row] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        for workload in workloads:
            print(f"{workload.name} (time scale {workload.scale:g}):", flush=True)
            rows += bench_workload(workload, args, Path(folder), template)
    text = table(rows)
    print()
    print(text)
    print(f"\n{time.monotonic() - started:.0f} s in all")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline.json").write_text(
        json.dumps({"target": TARGET, "trigger": _worker_trigger(template), "rows": [asdict(r) for r in rows]}, indent=1) + "\n"
    )
    (args.out / "pipeline.txt").write_text(text + "\n")
    plot(rows, args.out / "pipeline.png")
    misses = [r for r in rows if r.ratio is not None and not r.topology.startswith("oracle") and r.ratio < TARGET]
    print(f"{len(misses)} row(s) below {TARGET} of the oracle" if misses else f"every row at or above {TARGET} of the oracle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
