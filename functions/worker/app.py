"""Lambda entry point: worker. All logic lives in the sagebatch layer (shared/)."""

from sagebatch.lambdas import handlers
from sagebatch.observability import logger


@logger.inject_lambda_context
def lambda_handler(event, context):
    return handlers.worker(event, context)
