"""Saturation benchmark: sagebatch's adaptive callers against the best fixed concurrency (the oracle).

Runs in-process on the calibrated TGI 1.1 scheduler emulation (`sagebatch.tooling.emulator.perf.TgiScheduler`), in model
time sped up by `--time-scale`. For each workload (129, 513, 6,401 input tokens, 128 output tokens, and a
85/10/5 % mix of the three):

1. sweep: fixed concurrency c (1..128), c threads each sending 3c requests' share (the seed's probe), to draw the
   throughput curve;
2. oracle: the three best sweep points without timeouts, re-run on the full job (same records as step 3); the best
   of them is the oracle;
3. sagebatch: W Lambda-like workers x T threads, each worker with its own `AdaptiveCaller`, processing the job;
   `shared` = all workers' limiters on one store (one DynamoDB item in production), `split` = each worker adapting
   alone with 1/W of the endpoint's cap.

Run:  PYTHONPATH=shared .venv/bin/python bench/saturation.py   (writes bench/results/saturation.{json,png})
"""

from __future__ import annotations

import os
import sys

# This script's folder is sys.path[0]; bench/ also holds scripts named like stdlib modules (tokenize.py), which
# would shadow them for every import below. Drop it before importing anything else.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import json
import queue
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import sagebatch  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from sagebatch.domain.generation import EndpointError, ErrorKind, Generation
from sagebatch.endpoint.caller import AdaptiveCaller
from sagebatch.endpoint.limiter import AdaptiveLimiter, InMemoryLimiterStore, LimiterSettings
from sagebatch.endpoint.retry import RetryBudget, RetryPolicy
from sagebatch.tooling.emulator.perf import ContainerTimeout, Overloaded, PerfParams, TgiScheduler

RESULTS = Path(__file__).resolve().parent / "results"
OUTPUT_TOKENS = 128
ENDPOINT_MAX_CONCURRENCY = 128
MARGIN = 8
SWEEP = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 80, 96, 112, 128]

WORKLOADS: dict[str, dict[str, Any]] = {
    "129 tok": {"mix": {129: 1.0}, "records": 2400},
    "513 tok": {"mix": {513: 1.0}, "records": 1000},
    "6401 tok": {"mix": {6401: 1.0}, "records": 100},
    "mix 85/10/5": {"mix": {129: 0.85, 513: 0.10, 6401: 0.05}, "records": 1600},
}


# --- the emulated endpoint --------------------------------------------------------------------------------------


class EmulatedEndpoint:
    """`invoke_once` on the in-process TGI scheduler; the payload carries its token count for the emulator."""

    def __init__(self, scheduler: TgiScheduler):
        self.scheduler = scheduler

    def invoke_once(self, payload: dict[str, Any]) -> Generation:
        input_tokens = int(payload["bench_input_tokens"])
        new_tokens = int(payload["parameters"]["max_new_tokens"])
        try:
            permit = self.scheduler.admit()
        except Overloaded as error:
            raise EndpointError(ErrorKind.OVERLOADED, str(error), 429) from error
        try:
            timing = self.scheduler.generate(permit, input_tokens, new_tokens)
        except ContainerTimeout as error:
            raise EndpointError(ErrorKind.TIMEOUT, str(error), 0) from error
        return Generation(text="", generated_tokens=timing.generated_tokens, finish_reason="length", latency_ms=timing.total_ms)


def model_clock(scheduler: TgiScheduler) -> Callable[[], float]:
    """Seconds of model time: the controller must see the emulated endpoint's time, not the host's."""
    return lambda: scheduler.now_ms() / 1000.0


def model_sleep(time_scale: float) -> Callable[[float], None]:
    return lambda seconds: time.sleep(seconds / time_scale)


def payload_for(input_tokens: int) -> dict[str, Any]:
    return {"inputs": "", "parameters": {"max_new_tokens": OUTPUT_TOKENS, "details": True}, "bench_input_tokens": input_tokens}


def make_records(mix: dict[int, float], count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    sizes, weights = zip(*mix.items())
    return [rng.choices(sizes, weights)[0] for _ in range(count)]


# --- one run ------------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    label: str
    concurrency: int | None  # fixed concurrency, or None for adaptive runs
    records: int
    completed: int = 0
    lost: int = 0
    timeouts: int = 0
    overloaded: int = 0
    retries: int = 0
    soft_signals: int = 0
    makespan_s: float = 0.0
    tokens_per_s: float = 0.0
    p50_ms_per_token: float = 0.0
    p99_e2e_s: float = 0.0
    wall_s: float = 0.0
    final_limit: float | None = None
    peak_inflight: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def run_job(
    records: list[int], threads: list[Callable[[int], Generation]], scheduler: TgiScheduler, label: str, concurrency: int | None
) -> RunResult:
    """Each callable in `threads` is one client thread's way of making a call; all drain one record queue."""
    work: queue.Queue[int] = queue.Queue()
    for r in records:
        work.put(r)
    latencies: list[float] = []  # ms per token of successful attempts (model time)
    e2e: list[float] = []
    lost = 0
    lock = threading.Lock()
    peak = 0

    def client(call: Callable[[int], Generation]) -> None:
        nonlocal lost, peak
        while True:
            try:
                n = work.get_nowait()
            except queue.Empty:
                return
            try:
                generation = call(n)
            except EndpointError:
                with lock:
                    lost += 1
                continue
            with lock:
                latencies.append(generation.latency_ms / max(1, generation.generated_tokens))
                e2e.append(generation.latency_ms / 1000.0)
                peak = max(peak, scheduler.stats().in_flight)

    wall0 = time.monotonic()
    start = scheduler.now_ms()
    workers = [threading.Thread(target=client, args=(call,), daemon=True) for call in threads]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    end = scheduler.now_ms()
    stats = scheduler.stats()
    makespan = (end - start) / 1000.0
    completed = len(latencies)
    result = RunResult(
        label=label,
        concurrency=concurrency,
        records=len(records),
        completed=completed,
        lost=lost,
        timeouts=stats.timeouts,
        overloaded=stats.overloaded,
        makespan_s=makespan,
        tokens_per_s=completed * OUTPUT_TOKENS / makespan if makespan > 0 else 0.0,
        p50_ms_per_token=statistics.median(latencies) if latencies else 0.0,
        p99_e2e_s=_quantile(e2e, 0.99),
        wall_s=time.monotonic() - wall0,
        peak_inflight=peak,
    )
    result.extra["mean_inflight"] = round(sum(e2e) / makespan, 1) if makespan > 0 else 0.0
    return result


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_fixed(records: list[int], concurrency: int, time_scale: float, label: str = "fixed") -> RunResult:
    with TgiScheduler(PerfParams(), time_scale=time_scale, max_concurrent_requests=ENDPOINT_MAX_CONCURRENCY) as sched:
        endpoint = EmulatedEndpoint(sched)
        call = lambda n: endpoint.invoke_once(payload_for(n))  # noqa: E731 - one attempt, no retry: the oracle
        return run_job(records, [call] * concurrency, sched, label, concurrency)


def run_adaptive(
    records: list[int], mode: str, workers: int, threads_per_worker: int, time_scale: float, overrides: dict[str, Any]
) -> RunResult:
    with TgiScheduler(PerfParams(), time_scale=time_scale, max_concurrent_requests=ENDPOINT_MAX_CONCURRENCY) as sched:
        clock = model_clock(sched)
        endpoint = EmulatedEndpoint(sched)
        shared = None
        if mode == "shared":
            shared = InMemoryLimiterStore(default_settings(1, overrides))
        elif mode == "polled":  # DynamoDB-like: poll every 0.1-0.5 model seconds while full
            shared = PollingStore(InMemoryLimiterStore(default_settings(1, overrides)), (0.1, 0.5), time_scale, 11)
        callers: list[AdaptiveCaller] = []
        calls: list[Callable[[int], Generation]] = []
        for _ in range(workers):
            store = shared or InMemoryLimiterStore(default_settings(workers, overrides))
            caller = AdaptiveCaller(
                endpoint,
                AdaptiveLimiter(store, clock=clock),
                RetryPolicy(budget=RetryBudget()),
                clock=clock,
                sleep=model_sleep(time_scale),
            )
            callers.append(caller)
            calls += [lambda n, c=caller: c.invoke(payload_for(n), cost_tokens=n)] * threads_per_worker
        result = run_job(records, calls, sched, f"sagebatch {mode} {workers}x{threads_per_worker}", None)
        stats = [c.stats for c in callers]
        result.retries = sum(s.retries for s in stats)
        result.soft_signals = sum(s.soft_signals for s in stats)
        stores = {id(c.limiter.store): c.limiter for c in callers}  # one entry when shared
        result.final_limit = round(sum(store.limit for store in stores.values()), 2)
        return result


class PollingStore:
    """A shared store reached the way a DynamoDB item would be: non-blocking tries, jittered polling, no FIFO."""

    def __init__(self, inner: InMemoryLimiterStore, poll_s: tuple[float, float], time_scale: float, seed: int):
        self.inner = inner
        self.settings = inner.settings
        self.poll_s = poll_s
        self.time_scale = time_scale
        self._rng = random.Random(seed)

    def acquire(self, weight: float, long_prompt: bool, timeout_s: float | None) -> bool:
        while not self.inner.acquire(weight, long_prompt, 0):
            time.sleep(self._rng.uniform(*self.poll_s) / self.time_scale)
        return True

    def release(self, *args: Any) -> None:
        self.inner.release(*args)

    def snapshot(self):
        return self.inner.snapshot()


def default_settings(sharers: int, overrides: dict[str, Any]) -> LimiterSettings:
    return LimiterSettings.for_endpoint(ENDPOINT_MAX_CONCURRENCY, MARGIN, sharers=sharers, **overrides)


# --- the benchmark ------------------------------------------------------------------------------------------------


def bench_workload(name: str, spec: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    records = make_records(spec["mix"], int(spec["records"] * args.scale_records), seed=args.seed)
    sweep: list[RunResult] = []
    for c in SWEEP:
        probe = make_records(spec["mix"], max(3 * c, 24), seed=args.seed + c)
        result = run_fixed(probe, c, args.time_scale, label="sweep")
        sweep.append(result)
        print(
            f"  [{name}] sweep c={c:3d}: {result.tokens_per_s:7.1f} tok/s, timeouts {result.timeouts}, "
            f"p50 {result.p50_ms_per_token:.0f} ms/tok  ({result.wall_s:.1f} s wall)",
            flush=True,
        )
    clean = [r for r in sweep if r.timeouts == 0 and r.lost == 0]
    candidates = sorted(clean, key=lambda r: r.tokens_per_s, reverse=True)[: args.oracle_candidates]
    oracle_runs = []
    for cand in sorted(candidates, key=lambda r: r.concurrency or 0):
        result = run_fixed(records, cand.concurrency or 1, args.time_scale, label="oracle")
        oracle_runs.append(result)
        print(
            f"  [{name}] oracle c={cand.concurrency:3d}: {result.tokens_per_s:7.1f} tok/s, "
            f"timeouts {result.timeouts}, lost {result.lost}  ({result.wall_s:.1f} s wall)",
            flush=True,
        )
    valid = [r for r in oracle_runs if r.timeouts == 0 and r.lost == 0] or oracle_runs
    oracle = max(valid, key=lambda r: r.tokens_per_s)
    cap = ENDPOINT_MAX_CONCURRENCY - MARGIN
    top_within_cap = max(c for c in SWEEP if c <= cap)
    if (oracle.concurrency or 0) > cap and top_within_cap not in {r.concurrency for r in oracle_runs}:
        # the oracle used more than sagebatch may: also measure the largest sweep point under the cap
        result = run_fixed(records, top_within_cap, args.time_scale, label="oracle")
        oracle_runs.append(result)
        print(
            f"  [{name}] oracle c={result.concurrency:3d}: {result.tokens_per_s:7.1f} tok/s, "
            f"timeouts {result.timeouts}, lost {result.lost}  (within the cap; {result.wall_s:.1f} s wall)",
            flush=True,
        )
        if result.timeouts == 0 and result.lost == 0:
            valid.append(result)
    within_cap = [r for r in valid if (r.concurrency or 0) <= cap]
    oracle_cap = max(within_cap, key=lambda r: r.tokens_per_s) if within_cap else oracle
    adaptive = []
    for scenario in args.scenarios:
        mode, shape = scenario.split(":")
        workers, threads = (int(x) for x in shape.split("x"))
        result = run_adaptive(records, mode, workers, threads, args.time_scale, args.overrides)
        result.extra["ratio_to_oracle"] = round(result.tokens_per_s / oracle.tokens_per_s, 3)
        result.extra["ratio_to_oracle_within_cap"] = round(result.tokens_per_s / oracle_cap.tokens_per_s, 3)
        adaptive.append(result)
        print(
            f"  [{name}] {result.label}: {result.tokens_per_s:7.1f} tok/s = {result.extra['ratio_to_oracle']:.3f}"
            f" x oracle, timeouts {result.timeouts}, 429 {result.overloaded}, retries {result.retries}, "
            f"lost {result.lost}, soft {result.soft_signals}, final L {result.final_limit}, "
            f"peak {result.peak_inflight}  ({result.wall_s:.1f} s wall)",
            flush=True,
        )
    return {
        "workload": name,
        "mix": {str(k): v for k, v in spec["mix"].items()},
        "records": len(records),
        "sweep": [r.row() for r in sweep],
        "oracle_runs": [r.row() for r in oracle_runs],
        "oracle": oracle.row(),
        "oracle_within_cap": oracle_cap.row(),
        "adaptive": [r.row() for r in adaptive],
    }


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'workload':<12} {'run':<26} {'tok/s':>7} {'ratio':>6} {'r<=cap':>6} {'p50 ms/tok':>10} {'p99 e2e s':>9} "
        f"{'timeouts':>8} {'429s':>5} {'retries':>7} {'lost':>5}"
    )
    print(header)
    print("-" * len(header))
    for w in results:
        o, oc = w["oracle"], w["oracle_within_cap"]
        oracles = [(o, "oracle fixed c=")] + ([(oc, "best fixed c<=cap: c=")] if oc is not o and oc != o else [])
        for i, (r, title) in enumerate(oracles):
            print(
                f"{w['workload'] if i == 0 else '':<12} {title + str(r['concurrency']):<26} {r['tokens_per_s']:7.1f} "
                f"{r['tokens_per_s'] / o['tokens_per_s']:6.3f} {r['tokens_per_s'] / oc['tokens_per_s']:6.3f} "
                f"{r['p50_ms_per_token']:10.1f} {r['p99_e2e_s']:9.1f} {r['timeouts']:8d} "
                f"{r['overloaded']:5d} {0:7d} {r['lost']:5d}"
            )
        for a in w["adaptive"]:
            print(
                f"{'':<12} {a['label']:<26} {a['tokens_per_s']:7.1f} {a['extra']['ratio_to_oracle']:6.3f} "
                f"{a['extra']['ratio_to_oracle_within_cap']:6.3f} "
                f"{a['p50_ms_per_token']:10.1f} {a['p99_e2e_s']:9.1f} {a['timeouts']:8d} {a['overloaded']:5d} "
                f"{a['retries']:7d} {a['lost']:5d}"
            )


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2 if len(results) > 1 else 1
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.4 * rows), squeeze=False)
    for ax in axes.flat[len(results) :]:
        ax.set_visible(False)
    for ax, w in zip(axes.flat, results):
        xs = [r["concurrency"] for r in w["sweep"]]
        ys = [r["tokens_per_s"] for r in w["sweep"]]
        ax.plot(xs, ys, "o-", color="grey", label="fixed c (3c-request probe)")
        bad = [(r["concurrency"], r["tokens_per_s"]) for r in w["sweep"] if r["timeouts"]]
        if bad:
            ax.plot(*zip(*bad), "x", color="red", markersize=9, label="probe had timeouts")
        oracle_xy = [(r["concurrency"], r["tokens_per_s"]) for r in w["oracle_runs"]]
        ax.plot(*zip(*oracle_xy), "s", color="black", label="full job, fixed c")
        markers = {
            "shared 8x16": ("*", "tab:blue"),
            "split 8x16": ("D", "tab:orange"),
            "polled 8x16": ("v", "tab:cyan"),
            "shared 16x8": ("P", "tab:green"),
            "split 16x8": ("X", "tab:red"),
        }
        for a in w["adaptive"]:
            mode = a["label"].removeprefix("sagebatch ")
            marker, color = markers.get(mode, ("^", "tab:purple"))
            x = max(1, a["extra"].get("mean_inflight") or a["peak_inflight"])
            ax.plot(
                [x],
                [a["tokens_per_s"]],
                marker,
                color=color,
                markersize=13,
                label=f"sagebatch {mode} ({a['extra']['ratio_to_oracle']:.2f}x)",
            )
        ax.set_xscale("log", base=2)
        ax.set_title(w["workload"])
        ax.set_xlabel("requests in flight")
        ax.set_ylabel("output tok/s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="lower right" if w["workload"] != "6401 tok" else "upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-scale", type=float, default=80.0, help="model seconds per wall second")
    parser.add_argument(
        "--scenarios",
        nargs="+",
        default=["shared:8x16", "polled:8x16", "split:8x16", "shared:16x8", "split:16x8"],
        help="MODE:WORKERSxTHREADS; shared = one in-memory limiter store for all workers, polled = "
        "the same reached by polling (DynamoDB-like), split = one limiter per worker",
    )
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--scale-records", type=float, default=1.0, help="multiply the job sizes (quick runs)")
    parser.add_argument("--oracle-candidates", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a LimiterSettings field, e.g. --set initial_limit=16",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the saved JSON")
    args = parser.parse_args(argv)
    args.overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        args.overrides[key] = None if value == "None" else (float(value) if "." in value else int(value))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        plot(json.loads((args.out / "saturation.json").read_text())["workloads"], args.out / "saturation.png")
        return 0
    wall0 = time.monotonic()
    print(
        f"saturation bench: time_scale {args.time_scale}, scenarios {' '.join(args.scenarios)}, "
        f"limiter overrides {args.overrides or 'none'}",
        flush=True,
    )
    results = [bench_workload(name, WORKLOADS[name], args) for name in args.workloads]
    print()
    print_table(results)
    print(f"\nwall time {time.monotonic() - wall0:.0f} s")
    if not args.no_save:
        args.out.mkdir(parents=True, exist_ok=True)
        document = {
            "time_scale": args.time_scale,
            "scenarios": args.scenarios,
            "endpoint_max_concurrency": ENDPOINT_MAX_CONCURRENCY,
            "margin": MARGIN,
            "limiter_settings": default_settings(1, args.overrides).__dict__,
            "limiter_overrides": args.overrides,
            "output_tokens": OUTPUT_TOKENS,
            "workloads": results,
        }
        (args.out / "saturation.json").write_text(json.dumps(document, indent=2) + "\n")
        plot(results, args.out / "saturation.png")
        print(f"wrote {args.out / 'saturation.json'} and {args.out / 'saturation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
