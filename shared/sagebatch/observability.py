"""One logger, one tracer and one metrics object per function for the whole service (ids, counts, sizes and timings
only, never prompt or output text).

Metrics are CloudWatch EMF through Powertools, in the namespace `sagebatch` with the dimensions `service` and
`function`; their names live in `sagebatch.lambdas.metrics`, and only the Lambda layer (`sagebatch.lambdas`, the
entry points) emits them.
"""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricResolution, MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

SERVICE = "sagebatch"
NAMESPACE = "sagebatch"
FUNCTION_DIMENSION = "function"

logger = Logger(service=SERVICE)
# Only botocore is patched: each AWS call becomes a subsegment. X-Ray's botocore patch records resource names
# only (table, queue URL, object key, endpoint name), never request or response bodies.
tracer = Tracer(service=SERVICE, patch_modules=["botocore"])


class FunctionMetrics(EphemeralMetrics):
    """Powertools' EMF metrics for one function, with `function` as a default dimension beside `service`.

    Differs from the shared `Metrics` singleton in three ways, all for the local stack (which runs the three
    functions, and several invocations of each, in one process): the state is this function's own (Powertools'
    `EphemeralMetrics`), adding and flushing hold a lock, and POWERTOOLS_METRICS_DISABLED silences everything
    (Powertools 3 still prints the cold-start metric, single metrics and a full 100-value set when it is set).
    """

    def __init__(self, function: str, **dimensions: str) -> None:
        super().__init__(namespace=NAMESPACE, service=SERVICE, default_dimensions={FUNCTION_DIMENSION: function, **dimensions})
        self.function = function
        self._lock = threading.RLock()

    def add_metric(self, name: str, unit: MetricUnit | str, value: float, resolution: MetricResolution | int = 60) -> None:
        if is_metrics_disabled():
            return
        with self._lock:
            super().add_metric(name=name, unit=unit, value=value, resolution=resolution)

    def flush_metrics(self, raise_on_empty_metrics: bool = False) -> None:
        if is_metrics_disabled():
            return
        with self._lock:
            super().flush_metrics(raise_on_empty_metrics=raise_on_empty_metrics)

    def add_cold_start_metric(self, context: Any) -> None:
        if not is_metrics_disabled():
            super().add_cold_start_metric(context=context)

    def emit_now(self, name: str, unit: MetricUnit, value: float, **dimensions: str) -> None:
        """One metric with extra dimensions (e.g. ErrorType), printed now as its own EMF document."""
        single = FunctionMetrics(self.function, **dimensions)
        single.add_metric(name=name, unit=unit, value=value)
        single.flush_metrics()


@cache
def function_metrics(function: str) -> FunctionMetrics:
    """The metrics object of one function (`intake`, `worker`, `finalizer`): its entry point flushes it with
    `@log_metrics`, its handler in `sagebatch.lambdas.handlers` adds to it."""
    return FunctionMetrics(function)
