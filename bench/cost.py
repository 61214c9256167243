"""What the plumbing costs next to the endpoint: AWS requests, Lambda GB-seconds and their price per 1,000 records.

For each workload a JSONL file is written (the seed's payload, "I believe the meaning of life is to " repeated, as
raw `inputs`, each record numbered so that the emulator's natural EOS lengths vary: 12 to 96 words, at most
max_new_tokens 128), then run through the whole local stack exactly as `sagebatch run FILE --perf --time-scale K`
runs it (tooling/local/session.run_file: moto, the handlers, the event source, the calibrated TGI 1.1 emulator,
driven at saturation by the adaptive callers). While it runs, sagebatch.tooling.local.requests counts:

- every AWS API call, by who made it (the functions; the local event source, which stands in for Lambda's SQS
  event source mapping; the harness, which uploads the input and reads the outputs and is not counted as plumbing),
  service and operation, with approximate billing units (SQS 64 KB chunks, DynamoDB read/write units from the
  items' sizes: see that module). The endpoint's own InvokeEndpoint is counted but is not an "AWS request";
- each Lambda invocation and its duration.

Conversions to what AWS would bill (model time = host time x K, the emulator's time scale):

- worker GB-seconds: its invocations' host seconds x K (its duration is the endpoint's: calls in flight) x its
  MemorySize from template.yaml (its own, else Globals). This slightly overstates: the worker's own CPU time
  (moto, tokenizing) is stretched by K too. Intake and finalizer: host seconds as measured (their time is moto and
  CPU, which K does not stretch);
- event source: Lambda's pollers long-poll each source queue whatever its traffic, so on AWS their receives scale
  with time: the receives that brought messages (counted) plus, for the rest, ESM_POLLERS long polls of
  ESM_LONG_POLL_S each per queue over the makespan (an assumption: AWS does not publish the poller count; 5 is the
  documented starting scale of a standard queue). Deletes and visibility changes are counted (one per message);
- endpoint: the job's makespan (created -> finished, from the manifest) x K, at EndpointHourlyPrice from
  template.yaml: the endpoint is billed by the hour whether it is busy or not.

Prices: `sagebatch.domain.cost.PRICES`, the project's one dated table of us-east-1 list prices (the manifest's and
`sagebatch estimate`'s too); an operation with no price there is listed as unpriced.

Run:  make bench-cost, or PYTHONPATH=shared .venv/bin/python bench/cost.py [--quick]   (about 3 minutes on 2 cores,
--quick well under one; writes bench/results/cost.{json,txt})
"""

from __future__ import annotations

import os
import sys

# bench/ holds scripts named like stdlib modules (tokenize.py): drop it from sys.path before importing anything else.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import json
import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

try:
    import sagebatch  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shared"))

from sagebatch.domain.cost import PRICES, PRICES_AS_OF, REGION, Prices
from sagebatch.tooling.local.requests import (
    EVENT_SOURCE,
    FUNCTIONS,
    RequestCounter,
    counting_requests,
    memory_mb,
    metering_lambdas,
)

RESULTS = Path(__file__).resolve().parent / "results"
PHRASE = "I believe the meaning of life is to "  # 8 words, ~1 token a word (performance-model.md 1.1)
MAX_NEW_TOKENS = 128
ENDPOINT_SERVICE = "sagemaker-runtime"
ESM_POLLERS = 5  # long-polling receives Lambda keeps open per SQS event source (see the docstring)
ESM_LONG_POLL_S = 20  # the longest SQS long poll, which the event source uses
REQUESTS_PER_RECORD_TARGET = 0.5
PLUMBING_SHARE_TARGET = 0.05

# words of the seed's payload (input tokens ~ words + BOS), records, records with --quick, default time scale
WORKLOADS: dict[str, dict[str, Any]] = {
    "129 tok": {"words": 128, "records": 2000, "quick": 300, "time_scale": 4.0},
    "6401 tok": {"words": 6400, "records": 200, "quick": 30, "time_scale": 8.0},
}

# S3 request tiers (S3 Standard): PUT, COPY, POST, LIST at `s3_put`; deletes and aborts free; the rest at `s3_get`.
S3_PUT_TIER = {
    "PutObject",
    "CopyObject",
    "PostObject",
    "ListObjects",
    "ListObjectsV2",
    "ListObjectVersions",
    "ListMultipartUploads",
    "ListParts",
    "CreateMultipartUpload",
    "UploadPart",
    "UploadPartCopy",
    "CompleteMultipartUpload",
}
S3_FREE = {"DeleteObject", "DeleteObjects", "AbortMultipartUpload"}


# --- the workload -----------------------------------------------------------------------------------------------


def write_workload(path: Path, words: int, records: int) -> None:
    """The seed's payload, numbered: the number changes the emulator's natural output length (a hash of the input)."""
    body = (PHRASE * (words // 8)).rstrip()
    with path.open("w", encoding="utf-8") as out:
        for i in range(records):
            record = {"id": i, "inputs": f"{i} {body}", "parameters": {"max_new_tokens": MAX_NEW_TOKENS}}
            out.write(json.dumps(record) + "\n")


# --- one measured run --------------------------------------------------------------------------------------------


@dataclass
class LambdaUse:
    function: str
    invocations: int
    host_seconds: float
    model_seconds: float
    memory_mb: int

    @property
    def gb_seconds(self) -> float:
        return self.model_seconds * self.memory_mb / 1024


@dataclass
class Measurement:
    workload: str
    records: int
    time_scale: float
    status: str
    input_tokens: int
    output_tokens: int
    makespan_model_s: float
    endpoint_hourly_price: float
    source_queues: int
    requests: list[dict[str, Any]]  # one row per (role, service, operation)
    lambdas: list[LambdaUse]
    objects_written: list[str] = field(default_factory=list)  # keys under the job's outputs, at the end
    emulator_requests: int = 0
    wall_s: float = 0.0


def measure(name: str, words: int, records: int, time_scale: float, perf: bool = True) -> Measurement:
    """Run one workload through `run_file` with the request counter and the Lambda meter on."""
    from sagebatch.observability import logger
    from sagebatch.tooling.emulator.server import EmulatorConfig
    from sagebatch.tooling.local.session import run_file

    seen: dict[str, Any] = {}

    @contextmanager
    def watch(run: Any, job_id: str) -> Iterator[None]:
        seen["stack"] = run.stack
        yield
        seen["objects"] = _keys_under(run, f"outputs/{job_id}/")

    level = logger.log_level
    logger.setLevel("WARNING")  # logs never hold prompt or output text, but thousands of lines would drown the table
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="sagebatch-cost-") as tmp:
            path = Path(tmp) / f"{name.split()[0]}.jsonl"
            write_workload(path, words, records)
            with counting_requests() as counter, metering_lambdas() as meter:
                manifest = run_file(
                    path, Path(tmp) / "out", timeout_s=900, emulator=EmulatorConfig(perf=perf, time_scale=time_scale), watch=watch
                )
    finally:
        logger.setLevel(level)
    stack = seen["stack"]
    lambdas = [
        LambdaUse(
            function,
            use.count,
            use.seconds,
            use.seconds * (time_scale if meter.handler_of[function] == "worker" else 1.0),
            memory_mb(stack.template, function, stack.resolve),
        )
        for function, use in sorted(meter.by_function.items())
    ]
    return Measurement(
        workload=name,
        records=manifest["counts"]["total"],
        time_scale=time_scale,
        status=manifest["status"],
        input_tokens=manifest["tokens"]["input"],
        output_tokens=manifest["tokens"]["output"],
        makespan_model_s=manifest["timings"]["duration_s"] * time_scale,
        endpoint_hourly_price=float(stack.resolve({"Ref": "EndpointHourlyPrice"})),
        source_queues=_source_queues(stack.template),
        requests=_request_rows(counter),
        lambdas=lambdas,
        objects_written=seen.get("objects", []),
        emulator_requests=manifest["_local"]["emulator_requests"],
        wall_s=time.monotonic() - started,
    )


def _keys_under(run: Any, prefix: str) -> list[str]:
    import boto3

    paginator = boto3.client("s3", region_name=REGION).get_paginator("list_objects_v2")
    return [
        item["Key"] for page in paginator.paginate(Bucket=run.stack.bucket, Prefix=prefix) for item in page.get("Contents", [])
    ]


def _source_queues(template: dict[str, Any]) -> int:
    """Queues an SQS event source reads (one set of Lambda pollers each)."""
    return sum(
        1
        for resource in template["Resources"].values()
        if resource["Type"] == "AWS::Serverless::Function"
        for event in resource.get("Properties", {}).get("Events", {}).values()
        if event["Type"] == "SQS"
    )


def _request_rows(counter: RequestCounter) -> list[dict[str, Any]]:
    return [
        {"role": key.role, "service": key.service, "operation": key.operation} | asdict(tally) for key, tally in counter.rows()
    ]


# --- pricing -----------------------------------------------------------------------------------------------------


def request_price(service: str, operation: str, row: dict[str, Any], prices: Prices = PRICES) -> float | None:
    """US dollars for one (service, operation) row of counted calls; None when the table has no price for it."""
    if service == "sqs":
        return row["billed_requests"] * prices.sqs_request
    if service == "dynamodb":
        return row["read_units"] * prices.dynamodb_read_unit + row["write_units"] * prices.dynamodb_write_unit
    if service == "s3":
        if operation in S3_FREE:
            return 0.0
        return row["calls"] * (prices.s3_put if operation in S3_PUT_TIER else prices.s3_get)
    if service == "events" and operation == "PutEvents":
        return row["billed_requests"] * prices.eventbridge_event
    return None


def event_source_receives_on_aws(m: Measurement) -> float:
    """Receives Lambda's pollers would make over the makespan: the ones that brought messages, plus idle long polls."""
    counted = [r for r in m.requests if r["role"] == EVENT_SOURCE and r["operation"] == "ReceiveMessage"]
    with_messages = sum(r["calls"] - r["empty_receives"] for r in counted)
    idle_polls = m.source_queues * ESM_POLLERS * m.makespan_model_s / ESM_LONG_POLL_S
    return with_messages + idle_polls


def summarize(m: Measurement, prices: Prices = PRICES) -> dict[str, Any]:
    """Per 1,000 records: requests by service and operation, Lambda GB-s, plumbing and endpoint dollars."""
    per_k = 1000.0 / m.records
    plumbing: dict[str, float] = {}
    unpriced: dict[str, int] = {}
    requests_by_service: dict[str, float] = {}
    operations: dict[str, float] = {}
    for row in m.requests:
        service, operation = row["service"], row["operation"]
        if row["role"] != FUNCTIONS or service == ENDPOINT_SERVICE:
            continue
        requests_by_service[service] = requests_by_service.get(service, 0.0) + row["calls"] * per_k
        operations[f"{service} {operation}"] = row["calls"] * per_k
        price = request_price(service, operation, row, prices)
        if price is None:
            unpriced[f"{service} {operation}"] = row["calls"]
        else:
            plumbing[service] = plumbing.get(service, 0.0) + price * per_k
    settles = sum(r["calls"] for r in m.requests if r["role"] == EVENT_SOURCE and r["operation"] != "ReceiveMessage")
    counted_esm = sum(r["calls"] for r in m.requests if r["role"] == EVENT_SOURCE)
    esm_on_aws = event_source_receives_on_aws(m) + settles
    plumbing["sqs (event source)"] = esm_on_aws * prices.sqs_request * per_k
    invocations = sum(use.invocations for use in m.lambdas)
    gb_seconds = sum(use.gb_seconds for use in m.lambdas)
    plumbing["lambda"] = (invocations * prices.lambda_request + gb_seconds * prices.lambda_gb_second) * per_k
    endpoint_usd = m.makespan_model_s / 3600.0 * m.endpoint_hourly_price * per_k
    plumbing_usd = sum(plumbing.values())
    function_requests = sum(requests_by_service.values()) / per_k
    return {
        "workload": m.workload,
        "records": m.records,
        "status": m.status,
        "time_scale": m.time_scale,
        "input_tokens_per_record": m.input_tokens / m.records,
        "output_tokens_per_record": m.output_tokens / m.records,
        "makespan_model_s": m.makespan_model_s,
        "records_per_model_s": m.records / m.makespan_model_s if m.makespan_model_s else 0.0,
        "aws_requests_per_record": function_requests / m.records,
        "requests_per_1k_by_service": requests_by_service,
        "dynamodb_units_per_1k": {
            "read": sum(r["read_units"] for r in m.requests if r["role"] == FUNCTIONS) * per_k,
            "write": sum(r["write_units"] for r in m.requests if r["role"] == FUNCTIONS) * per_k,
        },
        "event_source_requests_per_1k": {"counted_locally": counted_esm * per_k, "on_aws_model": esm_on_aws * per_k},
        "lambda_invocations_per_1k": invocations * per_k,
        "lambda_gb_seconds_per_1k": gb_seconds * per_k,
        "lambda": [asdict(use) | {"gb_seconds": use.gb_seconds} for use in m.lambdas],
        "plumbing_usd_per_1k_by_service": plumbing,
        "plumbing_usd_per_1k": plumbing_usd,
        "endpoint_usd_per_1k": endpoint_usd,
        "plumbing_share_of_endpoint": plumbing_usd / endpoint_usd if endpoint_usd else math.inf,
        "top_operations_per_1k": sorted(operations.items(), key=lambda kv: -kv[1])[:5],
        "unpriced_calls": unpriced,
        "wall_s": m.wall_s,
    }


# --- the report --------------------------------------------------------------------------------------------------


def table(summaries: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Plumbing vs endpoint per 1,000 records: sagebatch run --perf (calibrated TGI 1.1 emulator, saturated), "
        f"us-east-1 list prices of {PRICES_AS_OF} (sagebatch.domain.cost); model seconds = host seconds x K",
        "",
    ]
    header = (
        f"{'workload':<9} {'records':>7} {'K':>3} {'in/out tok':>11} {'rec/s':>6} {'AWS req/rec':>11} {'Lambda GB-s/1k':>14} "
        f"{'plumbing $/1k':>13} {'endpoint $/1k':>13} {'plumbing %':>10}"
    )
    lines += [header, "-" * len(header)]
    for s in summaries:
        tokens = f"{s['input_tokens_per_record']:.0f}/{s['output_tokens_per_record']:.0f}"
        lines.append(
            f"{s['workload']:<9} {s['records']:>7} {s['time_scale']:>3g} {tokens:>11} {s['records_per_model_s']:>6.2f} "
            f"{s['aws_requests_per_record']:>11.3f} {s['lambda_gb_seconds_per_1k']:>14.1f} {s['plumbing_usd_per_1k']:>13.5f} "
            f"{s['endpoint_usd_per_1k']:>13.4f} {100 * s['plumbing_share_of_endpoint']:>9.2f}%"
        )
    lines.append(
        f"targets: AWS requests per record <= {REQUESTS_PER_RECORD_TARGET} (the functions' calls, InvokeEndpoint "
        f"excluded); plumbing <= {100 * PLUMBING_SHARE_TARGET:.0f}% of the endpoint"
    )
    for s in summaries:
        lines += ["", f"{s['workload']} ({s['status']}, makespan {s['makespan_model_s']:.0f} model s, {s['wall_s']:.0f} s wall)"]
        lines.append("  requests per 1,000 records by service (functions): " + _pairs(s["requests_per_1k_by_service"], "{:.0f}"))
        units = s["dynamodb_units_per_1k"]
        lines.append(f"  DynamoDB units per 1,000 records: {units['read']:.0f} read, {units['write']:.0f} write")
        esm = s["event_source_requests_per_1k"]
        lines.append(
            f"  event source SQS per 1,000 records: {esm['on_aws_model']:.0f} on AWS (model), "
            f"{esm['counted_locally']:.0f} counted locally"
        )
        lines.append(
            "  Lambda: "
            + "; ".join(
                f"{u['function']} {u['invocations']} inv, {u['model_seconds']:.1f} s x {u['memory_mb']} MB = {u['gb_seconds']:.1f} GB-s"
                for u in s["lambda"]
            )
        )
        lines.append("  plumbing $ per 1,000 records: " + _pairs(s["plumbing_usd_per_1k_by_service"], "{:.5f}"))
        lines.append("  top operations per 1,000 records: " + ", ".join(f"{op} {n:.0f}" for op, n in s["top_operations_per_1k"]))
        if s["unpriced_calls"]:
            lines.append("  unpriced (no price in the table): " + _pairs(s["unpriced_calls"], "{}"))
    return "\n".join(lines)


def _pairs(values: dict[str, Any], fmt: str) -> str:
    ordered = sorted(values.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {fmt.format(value)}" for name, value in ordered)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer records (per-job costs less amortised)")
    parser.add_argument("--time-scale", type=float, help="model seconds per wall second (default: per workload)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--no-save", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall0 = time.monotonic()
    summaries = []
    for name in args.workloads:
        spec = WORKLOADS[name]
        records = spec["quick"] if args.quick else spec["records"]
        measurement = measure(name, spec["words"], records, args.time_scale or spec["time_scale"])
        summary = summarize(measurement)
        summaries.append(summary)
        print(
            f"  [{name}] {records} records: {summary['aws_requests_per_record']:.3f} AWS requests a record, plumbing "
            f"{100 * summary['plumbing_share_of_endpoint']:.2f}% of the endpoint ({measurement.wall_s:.0f} s wall)",
            flush=True,
        )
    text = table(summaries, args) + f"\n\nwall time {time.monotonic() - wall0:.0f} s\n"
    print()
    print(text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "cost.txt").write_text(text, encoding="utf-8")
        report = {
            "prices_as_of": PRICES_AS_OF,
            "region": REGION,
            "prices": asdict(PRICES),
            "quick": args.quick,
            "workloads": summaries,
        }
        (RESULTS / "cost.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
