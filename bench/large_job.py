"""A large job's plumbing without the endpoint: intake, processing and assembly of 100k and 1M records.

Issue 12 asks that a job of a million records go through, each function staying under 512 MB, with a first result
readable within 60 s of the drop. This bench runs the real use cases (sagebatch.fakes.build_pipeline: Intake,
ShardProcessor with its RecordRunner and real tokenizer, Finalizer) over the in-memory fakes (S3, DynamoDB, SQS)
with an endpoint that answers at once ("ok", 1 token, no HTTP), so what is measured is the pipeline's own cost.

Per size, in a process of its own (so one size's garbage cannot be the next one's peak):

- drop → first result: a fresh stack, the file put under inputs/, then what happens first on AWS: intake's first
  invocation (which creates the job and sends shards) and one worker invocation on the first shard. Stopped when
  that shard's result part is in the bucket (`sagebatch results JOB --partial` can read it). Target: < 60 s.
- then the whole job, phase by phase on a second fresh stack: intake (every intake delivery, `resume_intake` ones
  included), worker (every shard), finalizer (every finalize delivery, paused assemblies resumed) — each with its
  records/s and its memory: the process's peak RSS during the phase (VmHWM, reset when the phase starts), and that
  peak above the RSS it started from ("peak above start": what the function held plus what it stored in the fake
  S3/DynamoDB/SQS, which on AWS lives outside the function — an upper bound of the function's own). Each function
  must stay < 512 MB. (tracemalloc would split the two, but slows the worker ~4x: 1M records would take 15 min.)

Plus the 10,000-record `sagebatch run` figure (moto + the emulator in its own process, bench/results of issue 11's
plumbing work), measured as the CLI runs it, unless --no-run.

Run:  make bench-large, or PYTHONPATH=shared .venv/bin/python bench/large_job.py [--quick]
      (--quick: 10k and 100k records, a few minutes; full: 100k and 1M, under 10 minutes on 2 cores;
       writes bench/results/large_job.{json,txt})
"""

from __future__ import annotations

import os
import sys

# bench/ holds scripts named like stdlib modules (tokenize.py): drop it from sys.path before importing anything else.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import gc
import json
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import sagebatch  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
LIMIT_MB = 512
FIRST_RESULT_TARGET_S = 60.0
RUN_RECORDS = 10_000
MB = 1024 * 1024


class InstantEndpoint:
    """sagebatch.ports.EndpointCaller answering every call at once with the same short output. Unlike
    fakes.FakeEndpointCaller it keeps no record of the calls: a million payloads would be the worker's peak."""

    def __init__(self) -> None:
        self.calls = 0

    def invoke(self, payload: dict[str, Any], cost_tokens: int, budget: Any = None) -> Any:
        from sagebatch.domain.generation import Generation

        if budget is not None:
            budget.check_call()
        self.calls += 1  # approximate under threads; shown only as a sanity figure
        return Generation("ok", 1, "eos_token")


def input_file(records: int) -> bytes:
    """Short prompts, as a million-line evaluation set would have them (~70 bytes a line)."""
    return b"".join(
        b'{"id": "r%d", "prompt": "Say hello number %d in one short sentence.", "parameters": {"max_new_tokens": 16}}\n' % (n, n)
        for n in range(records)
    )


def fresh_stack(records: int) -> tuple[Any, Any, Any, str]:
    """FakeAws with the file dropped, its pipeline (instant endpoint), the endpoint and the notification body."""
    from sagebatch.fakes import FakeAws, build_pipeline, s3_notification

    endpoint = InstantEndpoint()
    aws = FakeAws.create(endpoint=endpoint)  # type: ignore[arg-type]
    info = aws.objects.put(aws.settings.bucket_name, "inputs/large.jsonl", input_file(records))
    return aws, build_pipeline(aws), endpoint, s3_notification(info)


def first_result(records: int) -> dict[str, Any]:
    """Drop → intake's first invocation → the first shard's worker invocation → its result part in the bucket."""
    from sagebatch.domain.layout import part_key
    from sagebatch.domain.messages import Shard

    aws, pipeline, _, notification = fresh_stack(records)
    with pipeline:
        dropped = time.perf_counter()
        pipeline.intake.handle_message(notification, aws.next_message_id())
        intake_s = time.perf_counter() - dropped
        delivery = aws.work.receive()
        assert delivery is not None, "intake's first invocation sent no shard"
        shard = Shard.model_validate_json(delivery.body)
        pipeline.worker.process(shard)
        first_s = time.perf_counter() - dropped
        part = aws.objects.read_if_exists(aws.settings.bucket_name, part_key(shard.job_id, shard.shard))
        assert part is not None and part.count(b"\n") == shard.lines, "the first shard's result part is not readable"
    return {"first_intake_invocation_s": intake_s, "first_result_s": first_s}


def stored_mb(objects: Any) -> float:
    """Bytes the fake S3 holds (every version, and multipart uploads in progress): on AWS, outside the function."""
    with objects._lock:  # the fake's own state: the bench looks inside to tell storage from the function's memory
        versions = sum(len(v.body) for b in objects._buckets.values() for vs in b.objects.values() for v in vs if v)
        uploads = sum(len(body) for *_, parts in objects._uploads.values() for _, body in parts.values())
    return (versions + uploads) / MB


class Phase:
    """Time and memory of one phase: the process's peak RSS during it (Linux: VmHWM, reset at the start through
    /proc/self/clear_refs), that peak above the RSS the phase started from, and how much of it is the fake S3's."""

    def __init__(self, objects: Any):
        self.objects = objects

    def __enter__(self) -> Phase:
        gc.collect()
        self.stored_at_start_mb = stored_mb(self.objects)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        self.start_mb = _memory_mb("VmRSS")
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self.peak_mb = _memory_mb("VmHWM")
        self.peak_above_start_mb = self.peak_mb - self.start_mb
        self.stored_mb = stored_mb(self.objects) - self.stored_at_start_mb
        self.function_mb = self.peak_above_start_mb - self.stored_mb


def _memory_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def whole_job(records: int) -> dict[str, Any]:
    """Every phase to the end, one after the other, on the fakes."""
    from sagebatch.domain.messages import FinalizeRequest, Shard

    aws, pipeline, endpoint, notification = fresh_stack(records)
    phases: dict[str, dict[str, Any]] = {}
    with pipeline:
        with Phase(aws.objects) as intake:
            outcomes = pipeline.intake.handle_message(notification, aws.next_message_id())
            intake_deliveries = 1
            while (delivery := aws.intake.receive()) is not None:  # resume_intake: a long enqueue goes on
                outcomes += pipeline.intake.handle_message(delivery.body, aws.next_message_id())
                intake_deliveries += 1
        job_id = outcomes[0].job_id
        phases["intake"] = {"deliveries": intake_deliveries, **_phase(intake, records)}

        with Phase(aws.objects) as worker:
            shards = 0
            while (delivery := aws.work.receive()) is not None:
                pipeline.worker.process(Shard.model_validate_json(delivery.body))
                shards += 1
        phases["worker"] = {"deliveries": shards, **_phase(worker, records)}

        with Phase(aws.objects) as finalizer:
            deliveries = 0
            while (delivery := aws.finalize.receive()) is not None:
                pipeline.finalizer.finalize(FinalizeRequest.model_validate_json(delivery.body).job_id)
                deliveries += 1
        phases["finalizer"] = {"deliveries": deliveries, **_phase(finalizer, records)}
    job = aws.jobs.get_job(job_id)
    return {
        "records": records,
        "job_status": str(job.status.value if job else None),
        "succeeded": job.succeeded if job else 0,
        "endpoint_calls": endpoint.calls,
        "phases": phases,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _phase(phase: Phase, records: int) -> dict[str, Any]:
    return {
        "seconds": phase.seconds,
        "records_per_s": records / phase.seconds if phase.seconds else 0.0,
        "peak_rss_mb": phase.peak_mb,
        "peak_above_start_mb": phase.peak_above_start_mb,
        "stored_in_s3_mb": phase.stored_mb,
        "function_mb": phase.function_mb,
    }


def one_size(records: int) -> dict[str, Any]:
    """Both measurements of one size (run in a child process of its own)."""
    from sagebatch.observability import logger

    logger.setLevel("WARNING")  # a million "shard done" lines would be the bench
    return first_result(records) | whole_job(records)


def in_child(records: int) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, __file__, "--child", str(records)], check=True, capture_output=True, text=True, env=_env()
    ).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def sagebatch_run(records: int) -> dict[str, Any]:
    """`sagebatch run` on `records` short prompts with the instant emulator, as a user runs it."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.jsonl"
        path.write_bytes(input_file(records))
        started = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, "-m", "sagebatch.tooling.cli", "run", str(path), "--out", str(Path(folder) / "out")],
            capture_output=True,
            text=True,
            env=_env(),
        )
        seconds = time.perf_counter() - started
        manifest = json.loads((Path(folder) / "out" / "manifest.json").read_text()) if completed.returncode == 0 else {}
    return {
        "records": records,
        "seconds": seconds,
        "records_per_s": records / seconds,
        "status": manifest.get("status", f"exit {completed.returncode}: {completed.stderr[-300:]}"),
        "load_average": os.getloadavg()[0],
    }


def _env() -> dict[str, str]:
    shared = str(ROOT / "shared")
    return os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [shared, os.environ.get("PYTHONPATH", "")]))}


def table(sizes: list[dict[str, Any]], run: dict[str, Any] | None) -> str:
    lines = [
        "A large job on the in-memory fakes, instant endpoint (bench/large_job.py)",
        "",
        f"{'records':>9}  {'phase':<10} {'deliveries':>10} {'seconds':>8} {'records/s':>10} "
        f"{'peak RSS MB':>11} {'peak>start':>10} {'S3 growth':>9} {'function':>8}  {'< 512 MB':>8}",
    ]
    for size in sizes:
        for name, phase in size["phases"].items():
            ok = "yes" if phase["function_mb"] < LIMIT_MB else "NO"
            lines.append(
                f"{size['records']:>9,}  {name:<10} {phase['deliveries']:>10,} {phase['seconds']:>8.1f} "
                f"{phase['records_per_s']:>10,.0f} {phase['peak_rss_mb']:>11.0f} {phase['peak_above_start_mb']:>10.0f} "
                f"{phase['stored_in_s3_mb']:>9.0f} {phase['function_mb']:>8.0f}  {ok:>8}"
            )
        first_ok = "yes" if size["first_result_s"] < FIRST_RESULT_TARGET_S else "NO"
        lines.append(
            f"{size['records']:>9,}  drop -> first result part {size['first_result_s']:.2f} s "
            f"(intake's first invocation {size['first_intake_invocation_s']:.2f} s; < {FIRST_RESULT_TARGET_S:.0f} s: {first_ok}); "
            f"job {size['job_status']}, {size['succeeded']:,} succeeded, process ru_maxrss {size['ru_maxrss_mb']:.0f} MB"
        )
    if run is not None:
        lines.append(
            f"{run['records']:>9,}  sagebatch run (moto + emulator process, instant): {run['seconds']:.1f} s, "
            f"{run['records_per_s']:,.0f} records/s, {run['status']} (load average {run['load_average']:.1f} on "
            f"{os.cpu_count()} cores)"
        )
    lines += [
        "",
        "peak RSS: the bench process's peak RSS during the phase (interpreter, tokenizer, and everything the fakes hold:",
        "the input, results parts, results.jsonl), MB. peak>start: that peak above the RSS the phase started from.",
        "S3 growth: bytes the phase added to the fake S3 (on AWS outside the function). function = peak>start - S3",
        "growth: the function's own memory above its baseline (DynamoDB/SQS fakes' growth still counted: small).",
        "'< 512 MB' checks function < 512 MB; a Lambda adds its baseline (interpreter, tokenizer: ~80 MB, the 10k intake's RSS).",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10k and 100k records instead of 100k and 1M")
    parser.add_argument("--sizes", type=int, nargs="*", help="record counts (overrides --quick)")
    parser.add_argument("--no-run", action="store_true", help="skip the 10k-record `sagebatch run`")
    parser.add_argument("--out", type=Path, default=RESULTS / "large_job.txt")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(one_size(args.child)))
        return 0
    sizes = args.sizes or ([10_000, 100_000] if args.quick else [100_000, 1_000_000])
    measured = []
    for records in sizes:
        print(f"{records:,} records …", file=sys.stderr, flush=True)
        measured.append(in_child(records))
    run = None if args.no_run else sagebatch_run(RUN_RECORDS)
    text = table(measured, run)
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps({"sizes": measured, "sagebatch_run": run}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
