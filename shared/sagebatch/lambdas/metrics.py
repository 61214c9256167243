"""Every metric sagebatch emits: names (CamelCase), in the namespace `sagebatch` with the dimensions `service`
(`sagebatch`) and `function` (one of FUNCTIONS). template.yaml's dashboard and alarms use these names, and
README "Metrics and alarms" documents them; tests/infrastructure checks that the three agree.
"""

from __future__ import annotations

from typing import Final

from aws_lambda_powertools.metrics import MetricUnit

# -- the `function` dimension ----------------------------------------------------------------------
INTAKE: Final = "intake"
WORKER: Final = "worker"
FINALIZER: Final = "finalizer"
FUNCTIONS: Final = (INTAKE, WORKER, FINALIZER)

# -- extra dimension (its own EMF document per value) ---------------------------------------------
ERROR_TYPE: Final = "ErrorType"  # a failed record's error.type (README, "error types"): a bounded set

# -- worker: records (each result counts once, in the delivery that stored it) ----------------------
RECORDS_SUCCEEDED: Final = "RecordsSucceeded"
RECORDS_FAILED: Final = "RecordsFailed"  # total; also per ErrorType
RECORDS_CANCELLED: Final = "RecordsCancelled"
RECORDS_EXPIRED: Final = "RecordsExpired"
RECORDS_COMPLETED: Final = "RecordsCompleted"  # all four: the progress the stuck-job alarm looks for
INPUT_TOKENS: Final = "InputTokens"  # prompt tokens the endpoint processed (chunk answers reused: not counted)
OUTPUT_TOKENS: Final = "OutputTokens"
SHARD_DURATION: Final = "ShardDuration"  # one value per shard delivery that ran records
SHARDS_INCOMPLETE: Final = "ShardsIncomplete"  # deliveries handed back: records must be retried later

# -- worker: the endpoint (deltas of the execution environment's caller after each invocation) -------
ENDPOINT_LATENCY: Final = "EndpointLatency"  # one value per successful request
ENDPOINT_ATTEMPTS: Final = "EndpointAttempts"  # requests sent, retries included
ENDPOINT_ERRORS: Final = "EndpointErrors"  # requests that failed for any reason but a 429
ENDPOINT_429S: Final = "Endpoint429s"  # TGI "Model is overloaded": the limiter's congestion signal
ENDPOINT_TIMEOUTS: Final = "EndpointTimeouts"
ENDPOINT_SERVER_ERRORS: Final = "EndpointServerErrors"  # 5xx
ENDPOINT_RETRIES: Final = "EndpointRetries"
LIMITER_LIMIT: Final = "LimiterLimit"  # the adaptive limit (weight units) after the invocation

# -- intake and finalizer ----------------------------------------------------------------------------
JOBS_STARTED: Final = "JobsStarted"  # submissions that became a RUNNING job (records counted, shards queued)
JOBS_REJECTED: Final = "JobsRejected"  # submissions recorded as FAILED at intake (invalid message or input)
JOBS_FINISHED: Final = "JobsFinished"  # jobs the finalizer closed (results.jsonl and manifest.json written)

UNITS: Final[dict[str, MetricUnit]] = {
    RECORDS_SUCCEEDED: MetricUnit.Count,
    RECORDS_FAILED: MetricUnit.Count,
    RECORDS_CANCELLED: MetricUnit.Count,
    RECORDS_EXPIRED: MetricUnit.Count,
    RECORDS_COMPLETED: MetricUnit.Count,
    INPUT_TOKENS: MetricUnit.Count,
    OUTPUT_TOKENS: MetricUnit.Count,
    SHARD_DURATION: MetricUnit.Seconds,
    SHARDS_INCOMPLETE: MetricUnit.Count,
    ENDPOINT_LATENCY: MetricUnit.Milliseconds,
    ENDPOINT_ATTEMPTS: MetricUnit.Count,
    ENDPOINT_ERRORS: MetricUnit.Count,
    ENDPOINT_429S: MetricUnit.Count,
    ENDPOINT_TIMEOUTS: MetricUnit.Count,
    ENDPOINT_SERVER_ERRORS: MetricUnit.Count,
    ENDPOINT_RETRIES: MetricUnit.Count,
    LIMITER_LIMIT: MetricUnit.NoUnit,
    JOBS_STARTED: MetricUnit.Count,
    JOBS_REJECTED: MetricUnit.Count,
    JOBS_FINISHED: MetricUnit.Count,
}
