"""What a job costs: one dated table of us-east-1 list prices, and pure functions over a job's counts (README "Cost").

Two parts, priced separately:

- **endpoint**: the job's `endpoint_seconds` (its share of the endpoint's time, sagebatch.endpoint.share_clock) at
  the stack's `EndpointHourlyPrice` (the whole endpoint's price per hour: instance price x instance count);
- **plumbing**: the AWS requests and Lambda time the job makes, *estimated* from its counts (records, shards,
  endpoint calls, tokens, worker seconds) with the request model below; AWS bills none of it per job.

Included: Lambda (arm64 GB-seconds, requests), SQS requests, DynamoDB on-demand read and write request units, S3
PUT/GET/LIST requests, EventBridge PutEvents, CloudWatch Logs ingestion (the functions' log lines and the EMF metric
documents, which are log lines too). Not included: free tiers; storage (S3 objects until deleted, DynamoDB items
until their TTL), per-month charges (CloudWatch custom metrics from EMF, alarms, the dashboard), SageMaker data
processed, X-Ray traces, the optional SNS publish, KMS, data transfer (in-region: free).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

REGION = "us-east-1"
# When the prices below were read from the AWS pricing pages (on-demand list prices, us-east-1).
PRICES_AS_OF = "2025-06"


@dataclass(frozen=True)
class Prices:
    """US dollars per unit."""

    endpoint_hour: float = 1.515  # ml.g5.2xlarge, SageMaker real-time inference, on-demand, one instance
    lambda_gb_second: float = 0.0000133334  # arm64 (template.yaml: Architectures [arm64])
    lambda_request: float = 0.20 / 1e6
    sqs_request: float = 0.40 / 1e6  # standard queue; each 64 KB of a request is one request
    dynamodb_write_unit: float = 0.625 / 1e6  # on-demand WRU: a write of up to 1 KB (transactional: 2 per KB)
    dynamodb_read_unit: float = 0.125 / 1e6  # on-demand RRU: a strongly consistent read of up to 4 KB
    s3_put: float = 0.005 / 1000  # S3 Standard PUT, COPY, POST, LIST
    s3_get: float = 0.0004 / 1000  # S3 Standard GET and all other requests
    eventbridge_event: float = 1.00 / 1e6  # PutEvents, each 64 KB of an entry
    log_gb: float = 0.50  # CloudWatch Logs standard ingestion, per GB


PRICES = Prices()
DEFAULT_ENDPOINT_HOURLY_PRICE = PRICES.endpoint_hour
LAMBDA_MEMORY_GB = 1.0  # template.yaml Globals: MemorySize 1024 (intake, finalizer)
WORKER_MEMORY_GB = 0.5  # template.yaml WorkerFunction: MemorySize 512


# -- the request model ------------------------------------------------------------------------------------------
# What the pipeline does per job, per shard, per second a shard runs, per record and per extra endpoint call
# (usecases/intake.py, worker.py, parts.py, finalize.py as of the prices' date). Rounded up, not measured.
@dataclass(frozen=True)
class RequestModel:
    # per job: the intake and finalizer invocations; the job message and the finalize message (send, receive,
    # delete); the job item (create, lease, start, four status changes, ~2 KB: 2 WRU each) and its reads; the
    # input's head and listing reads; results.jsonl (multipart create + complete) and manifest.json; the four state
    # change events (CREATING, RUNNING, FINALIZING, final); their log lines; the two functions' own time.
    job_lambda_requests: float = 2
    job_sqs_requests: float = 5
    job_write_units: float = 16
    job_read_units: float = 6
    job_s3_puts: float = 3
    job_s3_gets: float = 3
    job_events: float = 4
    job_log_bytes: float = 8_000
    job_lambda_seconds: float = 2.0
    # per shard: its message (sent 10 to a batch; received and deleted by the event source, 10 to a batch), the
    # worker invocation (10 shards to a batch, or taken by a running invocation); the job and shard-marker reads and the lease; the shard's input range,
    # its earlier part / checkpoint probes and the finalizer's read of its part; the part itself; complete_shard
    # (a 2-item transaction: 4 WRU) and the finalize attempt; the "shard done" line, EMF documents, START/END/REPORT.
    shard_sqs_requests: float = 1.1
    shard_lambda_requests: float = 0.1
    shard_read_units: float = 3
    shard_write_units: float = 7
    shard_s3_gets: float = 4
    shard_s3_puts: float = 1
    shard_s3_lists: float = 0.001  # the finalizer lists the parts, 1,000 a page (priced as a PUT)
    shard_log_bytes: float = 3_000
    shard_lambda_seconds: float = 0.3  # reading the input, writing the part: worker time without a call in flight
    # per second the job keeps a worker environment busy (its worker_seconds): the stop check (one strongly
    # consistent read of the job item per environment each 10 s), the environment's heartbeat (a write and a query
    # each 15 s), the lease renewal (every 60 s), the checkpoint (at most every 30 s).
    shard_second_read_units: float = 1 / 10 + 1 / 15
    shard_second_write_units: float = 1 / 60 + 1 / 15
    shard_second_s3_puts: float = 1 / 30
    # per record: its bytes in results.jsonl (for the multipart parts) and the finalizer's time to stream it.
    record_result_bytes: float = 350
    result_bytes_per_output_token: float = 4
    result_part_bytes: float = 8 * 1024 * 1024
    record_lambda_seconds: float = 0.0002
    # per endpoint call beyond one per record (chunks of split / map_reduce records, retries): a chunk answer is
    # written to the call cache (~1 KB) and looked up once.
    extra_call_write_units: float = 2
    extra_call_read_units: float = 1


REQUEST_MODEL = RequestModel()


@dataclass(frozen=True)
class JobCounts:
    """What the plumbing estimate needs: the job item's counters, or an estimate's predictions."""

    records: float
    shards: float
    endpoint_calls: float
    output_tokens: float
    worker_seconds: float


@dataclass(frozen=True)
class Plumbing:
    """A job's estimated AWS requests and Lambda time."""

    lambda_requests: float
    lambda_gb_seconds: float
    sqs_requests: float
    dynamodb_write_units: float
    dynamodb_read_units: float
    s3_puts: float
    s3_gets: float
    eventbridge_events: float
    log_gb: float

    def as_dict(self) -> dict[str, float]:
        return {name: round(value, 6) for name, value in asdict(self).items()}


def plumbing_usage(counts: JobCounts, model: RequestModel = REQUEST_MODEL) -> Plumbing:
    """The job's requests and Lambda GB-seconds under `model`."""
    m, c = model, counts
    extra_calls = max(0.0, c.endpoint_calls - c.records)
    result_bytes = c.records * m.record_result_bytes + c.output_tokens * m.result_bytes_per_output_token
    worker_gb_seconds = WORKER_MEMORY_GB * (c.shards * m.shard_lambda_seconds + c.worker_seconds)
    other_gb_seconds = LAMBDA_MEMORY_GB * (m.job_lambda_seconds + c.records * m.record_lambda_seconds)
    return Plumbing(
        lambda_requests=m.job_lambda_requests + c.shards * m.shard_lambda_requests,
        lambda_gb_seconds=worker_gb_seconds + other_gb_seconds,
        sqs_requests=m.job_sqs_requests + c.shards * m.shard_sqs_requests,
        dynamodb_write_units=(
            m.job_write_units
            + c.shards * m.shard_write_units
            + c.worker_seconds * m.shard_second_write_units
            + extra_calls * m.extra_call_write_units
        ),
        dynamodb_read_units=(
            m.job_read_units
            + c.shards * m.shard_read_units
            + c.worker_seconds * m.shard_second_read_units
            + extra_calls * m.extra_call_read_units
        ),
        s3_puts=(
            m.job_s3_puts
            + c.shards * (m.shard_s3_puts + m.shard_s3_lists)
            + c.worker_seconds * m.shard_second_s3_puts
            + result_bytes / m.result_part_bytes
        ),
        s3_gets=m.job_s3_gets + c.shards * m.shard_s3_gets,
        eventbridge_events=m.job_events,
        log_gb=(m.job_log_bytes + c.shards * m.shard_log_bytes) / 1e9,
    )


def plumbing_cost(usage: Plumbing, prices: Prices = PRICES) -> dict[str, float]:
    """US dollars by service."""
    return {
        "lambda": usage.lambda_gb_seconds * prices.lambda_gb_second + usage.lambda_requests * prices.lambda_request,
        "sqs": usage.sqs_requests * prices.sqs_request,
        "dynamodb": usage.dynamodb_write_units * prices.dynamodb_write_unit
        + usage.dynamodb_read_units * prices.dynamodb_read_unit,
        "s3": usage.s3_puts * prices.s3_put + usage.s3_gets * prices.s3_get,
        "eventbridge": usage.eventbridge_events * prices.eventbridge_event,
        "cloudwatch_logs": usage.log_gb * prices.log_gb,
    }


def endpoint_cost(endpoint_seconds: float, hourly_price: float) -> float:
    """US dollars for `endpoint_seconds` of an endpoint billed `hourly_price` an hour."""
    if endpoint_seconds < 0 or hourly_price < 0:
        raise ValueError("endpoint seconds and the hourly price cannot be negative")
    return endpoint_seconds / 3600.0 * hourly_price


def job_cost(
    endpoint_seconds: float,
    counts: JobCounts,
    hourly_price: float = DEFAULT_ENDPOINT_HOURLY_PRICE,
    prices: Prices = PRICES,
    model: RequestModel = REQUEST_MODEL,
) -> dict[str, object]:
    """The manifest's `cost` object (also what `sagebatch estimate` prints)."""
    usage = plumbing_usage(counts, model)
    by_service = plumbing_cost(usage, prices)
    endpoint_usd = endpoint_cost(endpoint_seconds, hourly_price)
    plumbing_usd = sum(by_service.values())
    return {
        "endpoint_usd": _usd(endpoint_usd),
        "plumbing_usd": _usd(plumbing_usd),
        "total_usd": _usd(endpoint_usd + plumbing_usd),
        "currency": "USD",
        "prices_as_of": PRICES_AS_OF,
        "region": REGION,
        "endpoint_hourly_price": hourly_price,
        "plumbing": {name: _usd(value) for name, value in by_service.items()},
        "plumbing_usage": usage.as_dict(),
    }


def _usd(value: float) -> float:
    return round(value, 6)
