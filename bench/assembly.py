"""The finalizer's assembly of results.jsonl at 1M-10M records: time and peak memory on the in-memory fakes, and
an estimate of the time in AWS.

Usage (from the repo root)::

    .venv/bin/python bench/assembly.py                    # 1,000,000 short results (~300 bytes a line), native
    .venv/bin/python bench/assembly.py --records 100000 --format openai

`assemble_benchmark(records)` is importable (bench/large_job.py uses it). The fakes hold the shards' parts
(32 results each, as the workers write them); the object store checksums and drops the uploaded parts, so the
peak memory is the finalizer's own (tracemalloc, in a second run: tracing slows Python down ~2x), not the fake's
copy of its output. The time is that of the first, untraced run: CPU only (the fakes answer at once).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# bench/tokenize.py would shadow the standard library's tokenize module (tracemalloc imports it): import from the
# repo, not from bench/, and before anything else.
sys.path[:] = [str(REPO / "shared")] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]

import argparse
import hashlib
import json
import resource
import time
import tracemalloc
from typing import Any

from sagebatch.domain.assembly import PART_BYTES
from sagebatch.domain.formats import dumps_line
from sagebatch.domain.job import Job, JobStatus
from sagebatch.domain.layout import assembly_key
from sagebatch.domain.results import ResultLine, Usage
from sagebatch.fakes import InMemoryCallCacheStore, InMemoryJobStore, InMemoryObjectStore, fake_settings
from sagebatch.usecases.finalize import Finalizer
from sagebatch.usecases.parts import PartsResultStore

BUCKET = "bench-bucket"
SHARD_RECORDS = 32  # settings.shard_records' default


class DroppingUploads(InMemoryObjectStore):
    """Multipart parts are counted and checksummed, then dropped: a 10M-line results.jsonl never sits in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.parts = 0
        self.uploaded = 0

    def upload_part(self, bucket: str, key: str, upload_id: str, number: int, body: bytes) -> str:
        self.parts += 1
        self.uploaded += len(body)
        return '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'

    def complete_multipart(self, bucket: str, key: str, upload_id: str, etags: list[str]) -> None:
        self.abort_multipart(bucket, key, upload_id)


def _stored_parts(objects: InMemoryObjectStore, records: int, output_format: str) -> Job:
    """A FINALIZING job of `records` short results in shards of 32, and (peer formats) its input."""
    template = ResultLine(
        id=0,
        id_given=True,
        line=0,
        status="succeeded",
        output="The answer is short: a sentence or two of text, like most batch answers are.",
        finish_reason="eos_token",
        usage=Usage(input_tokens=40, output_tokens=20),
        calls=1,
        latency_ms=812.5,
    ).model_dump(mode="json")
    results = PartsResultStore(objects, BUCKET, InMemoryCallCacheStore())
    shards = (records + SHARD_RECORDS - 1) // SHARD_RECORDS
    for shard in range(shards):
        lines = range(shard * SHARD_RECORDS + 1, min(records, (shard + 1) * SHARD_RECORDS) + 1)
        results.save_part("bench", shard, [dumps_line(template | {"id": f"r{n}", "line": n}).encode() for n in lines])
    info = None
    if output_format != "native":
        body = b"".join(b'{"custom_id": "r%d", "body": {"messages": []}}\n' % n for n in range(1, records + 1))
        info = objects.put(BUCKET, "inputs/bench.jsonl", body)
    return Job(
        job_id="bench",
        source=f"s3://{BUCKET}/inputs/bench.jsonl",
        bucket=BUCKET,
        key="inputs/bench.jsonl",
        version_id=info.version_id if info else None,
        etag=info.etag if info else None,
        output_format=output_format,  # type: ignore[arg-type]
        status=JobStatus.FINALIZING,
        total_records=records,
        total_shards=shards,
        shards_done=shards,
        succeeded=records,
    )


def assemble_benchmark(records: int, output_format: str = "native", memory: bool = True) -> dict[str, Any]:
    """Finalize a job of `records` short results on the fakes: seconds, peak MB (traced run), parts, bytes."""
    objects = DroppingUploads()
    objects.create_bucket(BUCKET)
    job = _stored_parts(objects, records, output_format)
    jobs = InMemoryJobStore()
    finalizer = Finalizer(
        jobs, PartsResultStore(objects, BUCKET, InMemoryCallCacheStore()), objects, fake_settings(bucket_name=BUCKET)
    )

    jobs.put(job)
    started = time.perf_counter()
    finalizer.finalize(job.job_id)
    seconds = time.perf_counter() - started
    parts, uploaded = objects.parts, objects.uploaded

    peak_mb = None
    if memory:  # the same again, traced
        jobs.put(job)
        objects.delete(BUCKET, assembly_key(job.job_id))
        tracemalloc.start()
        finalizer.finalize(job.job_id)
        peak_mb = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
    return {
        "records": records,
        "format": output_format,
        "seconds": round(seconds, 2),
        "records_per_s": round(records / seconds),
        "peak_mb": None if peak_mb is None else round(peak_mb, 1),
        "parts": parts,
        "bytes": uploaded,
        "bytes_per_line": round(uploaded / max(records, 1)),
        "shards": job.total_shards,
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def aws_estimate(
    records: int,
    cpu_s_per_record: float,
    bytes_per_line: int = 500,
    get_ms: float = 35.0,
    read_ahead: int = 8,
    cpu_factor: float = 1.7,
) -> dict[str, Any]:
    """Minutes the finalizer would take in AWS: the shards' GETs (`read_ahead` at a time, overlapping the CPU) and
    the CPU measured here, scaled by `cpu_factor` (a 1,024 MB arm64 Lambda has ~0.6 of a vCPU). Part uploads
    (8 MiB at ~80 MB/s, one at a time) add their own time."""
    shards = (records + SHARD_RECORDS - 1) // SHARD_RECORDS
    gets_s = shards * get_ms / 1000 / read_ahead
    serial_gets_s = shards * get_ms / 1000
    cpu_s = records * cpu_s_per_record * cpu_factor
    put_s = records * bytes_per_line / 80e6
    total_s = max(gets_s, cpu_s) + put_s
    return {
        "records": records,
        "shards": shards,
        "gets_serial_min": round(serial_gets_s / 60, 1),
        "gets_read_ahead_min": round(gets_s / 60, 1),
        "cpu_min": round(cpu_s / 60, 1),
        "total_min": round(total_s / 60, 1),
        "invocations": int(total_s // (900 - 60)) + 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--format", default="native", choices=["native", "openai", "bedrock"])
    parser.add_argument("--no-memory", action="store_true", help="skip the traced run")
    args = parser.parse_args()
    measured = assemble_benchmark(args.records, args.format, memory=not args.no_memory)
    print(json.dumps(measured), file=sys.stderr)
    print(f"\nAssembly of {measured['records']:,} results ({measured['format']}) on the fakes, part size {PART_BYTES >> 20} MiB")
    print("| records | seconds | records/s | peak MB (traced) | parts | bytes | bytes/line |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {measured['records']:,} | {measured['seconds']} | {measured['records_per_s']:,} | {measured['peak_mb']} "
        f"| {measured['parts']} | {measured['bytes']:,} | {measured['bytes_per_line']} |"
    )
    per_record = measured["seconds"] / measured["records"]
    print("\nEstimated in AWS (GET 35 ms, 8 read ahead, CPU x1.7 for a 1,024 MB Lambda, one invocation = 840 s)")
    print("| records | shards | GETs one by one (min) | GETs 8 ahead (min) | CPU (min) | total (min) | invocations |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for records in (1_000_000, 10_000_000):
        e = aws_estimate(records, per_record, measured["bytes_per_line"])
        print(
            f"| {records:,} | {e['shards']:,} | {e['gets_serial_min']} | {e['gets_read_ahead_min']} | {e['cpu_min']} "
            f"| {e['total_min']} | {e['invocations']} |"
        )


if __name__ == "__main__":
    main()
