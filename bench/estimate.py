"""How far `sagebatch estimate` is from `sagebatch run --perf` on the benchmark workloads.

For each workload (the shapes of bench/saturation.py: 129, 513 and 6,401 input tokens and an 85/10/5 % mix of
the three, 128 output tokens at temperature 99 as the seed's benchmark, so no EOS), a small JSONL file is written
(the seed's payload, "I believe the meaning of life is to " repeated, as raw `inputs`), then:

- predicted: `sagebatch estimate FILE --local --json` (the plan through the worker's RecordRunner, the fitted fluid
  model at the concurrency one local worker environment reaches);
- measured: the file through the whole local pipeline on the calibrated TGI 1.1 emulator, as `sagebatch run FILE
  --perf --time-scale K` runs it (moto, the handlers, the adaptive caller, the discrete TGI scheduler), times
  scaled back to model seconds (x K).

Compared: endpoint calls, output tokens, the endpoint's busy time with the job (predicted duration vs measured
`worker_seconds`: one local environment, so the time its caller had a call of the job in flight), `endpoint_seconds`
and the total cost (the measured one priced again on model seconds). The job's wall time (created -> finished, x K)
is shown too: it adds intake, shard pickup and finalize, which the local poller and moto stretch by K.

The time scale is a compromise: the pipeline's own CPU time (moto, HTTP, tokenizing, on 2 cores) is stretched by K
too, so a high K makes the measured times longer (129-token workload: about +10 % from K = 2 to 8, +35 % at 20).

Each worker environment of the local stack builds its caller on its first invocation, as a Lambda environment
does on its cold start; the measured time includes that.

Run:  make bench-estimate, or PYTHONPATH=shared .venv/bin/python bench/estimate.py  (about 1.5 minutes on 2 cores;
writes bench/results/estimate.txt)
"""

from __future__ import annotations

import os
import sys

# bench/ holds scripts named like stdlib modules (tokenize.py): drop it from sys.path before importing anything else.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import contextlib
import io
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import sagebatch  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

RESULTS = Path(__file__).resolve().parent / "results"
PHRASE = "I believe the meaning of life is to "  # 8 words, ~1 token a word (performance-model.md 1.1)
WORDS = {129: 128, 513: 512, 6401: 6400}  # input tokens (BOS included) -> words of the seed's payload
WORKLOADS: dict[str, dict[str, Any]] = {
    "129 tok": {"mix": {129: 1.0}, "records": 300},
    "513 tok": {"mix": {513: 1.0}, "records": 200},
    "6401 tok": {"mix": {6401: 1.0}, "records": 16},
    "mix 85/10/5": {"mix": {129: 0.85, 513: 0.10, 6401: 0.05}, "records": 240},
}


def make_file(path: Path, mix: dict[int, float], count: int, seed: int) -> None:
    rng = random.Random(seed)
    sizes, weights = zip(*mix.items())
    with path.open("w", encoding="utf-8") as out:
        for i in range(count):
            words = WORDS[rng.choices(sizes, weights)[0]]
            record = {
                "id": i,
                "inputs": (PHRASE * (words // 8)).rstrip(),
                "parameters": {"max_new_tokens": 128, "temperature": 99},
            }
            out.write(json.dumps(record) + "\n")


def predicted(path: Path) -> dict[str, Any]:
    from sagebatch.tooling.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["estimate", str(path), "--local", "--json"])
    if code != 0:
        raise RuntimeError(f"sagebatch estimate exited {code}")
    return json.loads(buffer.getvalue())


def measured(path: Path, time_scale: float) -> dict[str, Any]:
    """`sagebatch run FILE --perf --time-scale K` (tooling/local/session.run_file)."""
    from sagebatch.observability import logger
    from sagebatch.tooling.emulator.server import EmulatorConfig
    from sagebatch.tooling.local.session import local_stack

    level = logger.log_level
    logger.setLevel("WARNING")
    try:
        with local_stack(emulator=EmulatorConfig(perf=True, time_scale=time_scale)) as run:
            started = time.monotonic()
            job_id = run.drop_file(path.read_bytes(), f"inputs/{path.name}")
            status = run.wait_for(job_id, timeout_s=900)
            manifest = run.manifest(job_id)
            manifest["_wall_s"] = time.monotonic() - started
            manifest["_status"] = status
            return manifest
    finally:
        logger.setLevel(level)


def measured_cost(manifest: dict[str, Any], k: float, shards: int) -> float:
    """The run's cost with its times in model seconds (the manifest's own is priced on the sped-up wall time)."""
    from sagebatch.domain.cost import JobCounts, job_cost

    counts = JobCounts(
        records=manifest["counts"]["total"],
        shards=shards,
        endpoint_calls=manifest["endpoint_calls"],
        output_tokens=manifest["tokens"]["output"],
        worker_seconds=manifest["worker_seconds"] * k,
    )
    return float(job_cost(manifest["endpoint_seconds"] * k, counts, manifest["cost"]["endpoint_hourly_price"])["total_usd"])


def error(pred: float, meas: float) -> str:
    return f"{100.0 * (pred - meas) / meas:+.1f}%" if meas else "-"


def compare(name: str, spec: dict[str, Any], args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    path = folder / f"{name.split()[0]}.jsonl"
    make_file(path, spec["mix"], spec["records"], args.seed)
    pred = predicted(path)
    meas = measured(path, args.time_scale)
    k = args.time_scale
    row = {
        "workload": name,
        "records": spec["records"],
        "calls": (pred["endpoint_calls"], meas["endpoint_calls"]),
        "output_tokens": (pred["output_tokens"], meas["tokens"]["output"]),
        "input_tokens": (pred["input_tokens"], meas["tokens"]["input"]),
        "busy_s": (pred["duration_s"], meas["worker_seconds"] * k),
        "endpoint_s": (pred["endpoint_seconds"], meas["endpoint_seconds"] * k),
        "job_s": meas["timings"]["duration_s"] * k,
        "cost_usd": (pred["cost"]["total_usd"], measured_cost(meas, k, pred["shards"])),
        "mean_in_flight": pred["mean_in_flight"],
        "wall_s": meas["_wall_s"],
    }
    print(
        f"  [{name}] predicted {pred['duration_s']:.1f} s busy, measured {row['busy_s'][1]:.1f} s "
        f"({error(*row['busy_s'])}); job {row['job_s']:.1f} s; {row['wall_s']:.1f} s wall",
        flush=True,
    )
    return row


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    header = (
        f"{'workload':<12} {'records':>7} {'calls p/m':>9} {'out tok p/m':>13} {'busy s pred':>11} {'meas':>6} "
        f"{'err':>7} {'endpoint s pred':>15} {'meas':>6} {'err':>7} {'cost $ pred':>11} {'meas':>8} {'err':>7} "
        f"{'job s meas':>10}"
    )
    lines = [
        f"sagebatch estimate --local vs sagebatch run --perf --time-scale {args.time_scale:g} (model seconds; "
        "callers built by each environment's first invocation)",
        "",
        header,
        "-" * len(header),
    ]
    for r in rows:
        calls = "{}/{}".format(*r["calls"])
        tokens = "{:.0f}/{}".format(*r["output_tokens"])
        lines.append(
            f"{r['workload']:<12} {r['records']:>7} {calls:>9} "
            f"{tokens:>13} {r['busy_s'][0]:>11.1f} {r['busy_s'][1]:>6.1f} "
            f"{error(*r['busy_s']):>7} {r['endpoint_s'][0]:>15.1f} {r['endpoint_s'][1]:>6.1f} {error(*r['endpoint_s']):>7} "
            f"{r['cost_usd'][0]:>11.5f} {r['cost_usd'][1]:>8.5f} {error(*r['cost_usd']):>7} {r['job_s']:>10.1f}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--time-scale", type=float, default=4.0, help="model seconds per wall second")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "estimate.txt")
    parser.add_argument("--no-save", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sagebatch-estimate-") as tmp:
        rows = [compare(name, WORKLOADS[name], args, Path(tmp)) for name in args.workloads]
    text = table(rows, args) + f"\n\nwall time {time.monotonic() - wall0:.0f} s\n"
    print()
    print(text, end="")
    if not args.no_save:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
