"""boto3 clients, created lazily once per execution environment and shared across threads.

Lazy creation matters for tests: moto must start before any client exists.
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any

import boto3
from botocore.config import Config

from sagebatch.endpoint.sagemaker import runtime_client_config
from sagebatch.settings import get_settings

# S3/SQS/DynamoDB keep the SDK's throttle retries (standard mode, explicit attempts, protocol.md 8.4).
_AWS_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": 5}, max_pool_connections=64)


@cache
def client(service: str) -> Any:
    return boto3.client(service, config=_AWS_CONFIG)


@lru_cache(maxsize=1)
def runtime_client() -> Any:
    settings = get_settings()
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=settings.endpoint_url,
        # A connection for every slot the environment may hold: alone, it holds the endpoint's whole cap (SlotShare).
        config=runtime_client_config(max_pool_connections=settings.endpoint_max_concurrency + 8),
    )


def reset_clients() -> None:
    """Forget cached clients (tests and the local stack start a fresh moto per run)."""
    client.cache_clear()
    runtime_client.cache_clear()
