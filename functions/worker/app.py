"""Lambda entry point: worker. All logic lives in the sagebatch layer (shared/)."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from sagebatch.lambdas import handlers
from sagebatch.lambdas.metrics import WORKER
from sagebatch.observability import function_metrics, logger, tracer

metrics = function_metrics(WORKER)


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)  # the response is failed message ids: not worth trace space
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return handlers.worker(event, context)
