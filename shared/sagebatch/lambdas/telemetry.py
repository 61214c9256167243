"""What the handlers saw, as metrics (names and units: `sagebatch.lambdas.metrics`).

The use cases report what happened (`IntakeOutcome`, `ShardOutcome.delivered`, `FinalizeOutcome`); the endpoint's
counters come from the execution environment's `AdaptiveCaller` after each invocation. Only counts, token counts,
times and error types go into a metric: never an id, a key, a prompt or an output.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from sagebatch.domain.generation import Generation
from sagebatch.domain.time_budget import TimeBudget
from sagebatch.endpoint.caller import AdaptiveCaller, CallerStats
from sagebatch.lambdas import metrics as names
from sagebatch.observability import FunctionMetrics
from sagebatch.usecases.finalize import FinalizeOutcome
from sagebatch.usecases.intake import IntakeOutcome
from sagebatch.usecases.worker import Delivered

# Latencies kept between two reads (one invocation's successful requests): a bound, not a limit ever reached.
MAX_LATENCIES = 20_000


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    error_type: str | None = None  # set: published with the ErrorType dimension, in its own EMF document


def publish(metrics: FunctionMetrics, items: Iterable[Metric]) -> None:
    """Add the metrics to the function's EMF set (flushed by its entry point's `@log_metrics`)."""
    for item in items:
        unit = names.UNITS[item.name]
        if item.error_type is None:
            metrics.add_metric(name=item.name, unit=unit, value=item.value)
        else:
            metrics.emit_now(item.name, unit, item.value, **{names.ERROR_TYPE: item.error_type})


def record_metrics(delivered: Delivered, seconds: float, incomplete: bool = False) -> list[Metric]:
    """One shard delivery: its results by status (failures also by error type), tokens, duration."""
    failed = sum(delivered.failed.values())
    items = [
        Metric(names.RECORDS_SUCCEEDED, delivered.succeeded),
        Metric(names.RECORDS_FAILED, failed),
        Metric(names.RECORDS_COMPLETED, delivered.completed),
        Metric(names.INPUT_TOKENS, delivered.input_tokens),
        Metric(names.OUTPUT_TOKENS, delivered.output_tokens),
    ]
    if delivered.cancelled:
        items.append(Metric(names.RECORDS_CANCELLED, delivered.cancelled))
    if delivered.expired:
        items.append(Metric(names.RECORDS_EXPIRED, delivered.expired))
    items += [Metric(names.RECORDS_FAILED, count, error_type) for error_type, count in sorted(delivered.failed.items())]
    if incomplete:
        items.append(Metric(names.SHARDS_INCOMPLETE, 1))
    if incomplete or delivered.completed:  # a delivery that found its shard done (or leased) ran nothing
        items.append(Metric(names.SHARD_DURATION, round(seconds, 3)))
    return items


def endpoint_metrics(delta: CallerStats, latencies_ms: Sequence[float], limit: float) -> list[Metric]:
    """The endpoint's side of one invocation: requests, failures by kind, retries, latencies, the limiter's limit."""
    errors = max(0, delta.attempts - delta.successes - delta.overloaded)
    items = [
        Metric(names.ENDPOINT_ATTEMPTS, delta.attempts),
        Metric(names.ENDPOINT_ERRORS, errors),
        Metric(names.ENDPOINT_429S, delta.overloaded),
        Metric(names.ENDPOINT_TIMEOUTS, delta.timeouts),
        Metric(names.ENDPOINT_SERVER_ERRORS, delta.server_errors),
        Metric(names.ENDPOINT_RETRIES, delta.retries),
        Metric(names.LIMITER_LIMIT, round(limit, 2)),
    ]
    items += [Metric(names.ENDPOINT_LATENCY, round(ms, 1)) for ms in latencies_ms]
    return items


def intake_metrics(outcomes: Sequence[IntakeOutcome]) -> list[Metric]:
    started = sum(1 for o in outcomes if o.job_id is not None and not o.reason)
    rejected = sum(1 for o in outcomes if o.created and o.reason and not o.continues)
    return [Metric(names.JOBS_STARTED, started), Metric(names.JOBS_REJECTED, rejected)]


def finalize_metrics(outcome: FinalizeOutcome) -> list[Metric]:
    return [Metric(names.JOBS_FINISHED, 1 if outcome.results_uri else 0)]


class MeteredCaller:
    """The worker's `EndpointCaller`: the execution environment's `AdaptiveCaller`, plus what its metrics need.

    The caller's counters are cumulative for the environment; `take` returns what changed since the previous
    `take`, the latencies of the requests that succeeded meanwhile, and the limiter's current limit. In Lambda one
    invocation runs at a time, so a `take` at the end of each invocation sees exactly that invocation's requests.
    """

    def __init__(self, caller: AdaptiveCaller) -> None:
        self.caller = caller
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=MAX_LATENCIES)
        self._last = caller.stats

    def invoke(self, payload: dict[str, Any], cost_tokens: int, budget: TimeBudget | None = None) -> Generation:
        generation = self.caller.invoke(payload, cost_tokens, budget)
        with self._lock:
            self._latencies.append(generation.latency_ms)
        return generation

    def take(self) -> list[Metric]:
        with self._lock:
            now = self.caller.stats
            delta = CallerStats(**{f.name: getattr(now, f.name) - getattr(self._last, f.name) for f in fields(CallerStats)})
            self._last = now
            latencies = list(self._latencies)
            self._latencies.clear()
        return endpoint_metrics(delta, latencies, self.caller.limiter.limit)
