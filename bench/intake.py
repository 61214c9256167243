"""Intake of 1M and 10M lines: records/s, peak memory, and an estimate of the same on AWS.

The input is a virtual object of N identical short-prompt lines (600 bytes: the seed's 128-word prompt in its JSON,
performance-model.md 1), served by ranged reads without holding the file (10M lines are 6 GB). Intake's enqueue
(usecases/shard_enqueue.py: ranged reads, shard cutting, 8 sending threads, a checkpoint every 1,000 shards) runs
over the in-memory fakes (InMemoryQueue, InMemoryJobStore) in three ways:

- in memory: the sender returns at once, so the figure is intake's own CPU (reading, cutting, building messages);
- SQS-like: each batch of ten shards takes 20 ms (SendMessageBatch's typical latency), 8 threads, as deployed;
- SQS-like, 1 thread: as intake sent before (one batch after another).

Each size runs in its own process; peak memory is that process's high-water RSS above its RSS before the run (it
includes the InMemoryQueue, which keeps every message sent; the messages' total size is shown apart).

The AWS estimate adds what the fakes do not have: reading the input from S3 (4 ranged GETs of 8 MB in flight,
assumed 200 MB/s together; one stream gives ~50-100 MB/s) overlapped with the sends, on a Lambda of 1,024 MB
(~0.6 vCPU: the in-memory wall time x 1.7). It is max(that, read, sends) since the three run at the same time.

Run:  PYTHONPATH=shared .venv/bin/python bench/intake.py  (about 1.5 minutes on 2 cores; writes
bench/results/intake.txt)
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import json
import resource
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from sagebatch.domain.job import IntakeProgress, Job
from sagebatch.domain.sharding import SHORT_RECORD_BYTES, shard_lines
from sagebatch.fakes import InMemoryJobStore, InMemoryQueue
from sagebatch.ports import ObjectInfo
from sagebatch.usecases.shard_enqueue import SEND_BATCH, ShardEnqueuer

BATCH_LATENCY_S = 0.020
S3_READ_BYTES_PER_S = 200e6
LAMBDA_CPU_FACTOR = 1.7
SHARD_BYTES = 1024 * 1024
RESULTS = Path(__file__).resolve().parent / "results" / "intake.txt"


def line(n: int = 0) -> bytes:
    prompt = ("I believe the meaning of life is to " * 16)[: SHORT_RECORD_BYTES - 15]
    return json.dumps({"prompt": prompt}).encode()[: SHORT_RECORD_BYTES - 1] + b"\n"


class RepeatedLines:
    """The ObjectStore reads intake makes, over an object of `count` copies of one line (nothing held but the line)."""

    def __init__(self, count: int) -> None:
        self.line = line()
        self.size = count * len(self.line)
        self._block = self.line * (8 * 1024 * 1024 // len(self.line) + 2)

    def read_range(self, info: ObjectInfo, start: int, end: int) -> bytes:
        end = min(end, self.size)
        offset = start % len(self.line)
        out = bytearray()
        while len(out) < end - start:
            take = min(len(self._block) - offset, end - start - len(out))
            out += self._block[offset : offset + take]
            offset = 0
        return bytes(out)


class SlowQueue(InMemoryQueue):
    """An InMemoryQueue whose every batch takes SendMessageBatch's latency (the sleep lets other threads run)."""

    def send_all(self, messages: Iterable[BaseModel]) -> int:
        time.sleep(BATCH_LATENCY_S)
        return super().send_all(messages)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for row in status:
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) / 1024
    return 0.0


def run_one(lines: int, mode: str) -> dict[str, float]:
    objects = RepeatedLines(lines)
    jobs = InMemoryJobStore()
    job = Job(job_id="bench", source="s3://b/k", bucket="b", key="k")
    jobs.create_job(job)
    queue = SlowQueue("work") if mode.startswith("sqs") else InMemoryQueue("work")
    threads = 1 if mode == "sqs-1" else 8
    enqueuer = ShardEnqueuer(objects, queue, jobs, threads=threads)  # type: ignore[arg-type]
    progress = IntakeProgress(size=objects.size, shard_lines=shard_lines(objects.size), shard_bytes=SHARD_BYTES, etag="e")
    before = rss_mb()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    reached = enqueuer.run(job, progress, None, lambda: True)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    assert reached.complete and reached.records == lines
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "lines": lines,
        "shards": reached.next_shard,
        "shard_lines": progress.shard_lines,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_mb": peak - before,
        "queue_mb": sum(len(body) for body in queue.sent) / 1e6,
    }


def estimate_aws(row: dict[str, float]) -> float:
    read = row["lines"] * SHORT_RECORD_BYTES / S3_READ_BYTES_PER_S
    sends = row["shards"] / SEND_BATCH * BATCH_LATENCY_S / 8
    return max(row["wall_s"] * LAMBDA_CPU_FACTOR, read, sends)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", nargs=2, metavar=("LINES", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="1000000,10000000")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(int(args.one[0]), args.one[1])))
        return
    rows = []
    for lines in (int(n) for n in args.sizes.split(",")):
        for mode in ("memory", "sqs-8", "sqs-1"):
            if mode == "sqs-1" and lines > 1_000_000:
                continue  # ~80 s of sleeping for 10M: the 1M row shows the ratio
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(lines), mode], check=True, capture_output=True, text=True
            ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]) | {"mode": mode})  # after the progress logs
    header = (
        "| lines | mode | shards (lines each) | wall s | records/s | CPU s | peak RSS MB | queue MB | AWS estimate s |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    table = [header]
    for r in rows:
        aws = f"{estimate_aws(r):.0f}" if r["mode"] == "memory" else ""
        table.append(
            f"| {r['lines']:,} | {r['mode']} | {r['shards']:,} ({r['shard_lines']}) | {r['wall_s']:.1f} | "
            f"{r['lines'] / r['wall_s']:,.0f} | {r['cpu_s']:.1f} | {r['peak_mb']:.0f} | {r['queue_mb']:.0f} | {aws} |"
        )
    text = "\n".join(table)
    print(text)
    RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main()
