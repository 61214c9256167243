"""One logger and one metrics object for the whole service (ids, sizes and timings only, never text)."""

from aws_lambda_powertools import Logger, Metrics

logger = Logger(service="sagebatch")
metrics = Metrics(namespace="sagebatch", service="sagebatch")
