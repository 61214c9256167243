"""The composition root: builds each use case from settings and AWS clients, once per cold start."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

from sagebatch.adapters.clients import client, runtime_client
from sagebatch.adapters.jobs import JobStore
from sagebatch.adapters.objects import ObjectStore
from sagebatch.adapters.queues import MessageSender
from sagebatch.budget import TokenBudget
from sagebatch.caller import make_default_caller
from sagebatch.finalize import Finalizer
from sagebatch.intake import Intake
from sagebatch.records import RecordRunner
from sagebatch.settings import get_settings
from sagebatch.tokens import get_tokenizer
from sagebatch.worker import ShardProcessor


def _jobs() -> JobStore:
    settings = get_settings()
    return JobStore(client("dynamodb"), settings.table_name, settings.job_ttl_days)


@lru_cache(maxsize=1)
def intake() -> Intake:
    settings = get_settings()
    return Intake(
        _jobs(),
        ObjectStore(client("s3")),
        MessageSender(client("sqs"), settings.work_queue_url),
        MessageSender(client("sqs"), settings.finalize_queue_url),
        settings,
    )


@lru_cache(maxsize=1)
def shard_processor() -> ShardProcessor:
    settings = get_settings()
    in_flight = settings.calls_in_flight_per_worker
    caller = make_default_caller(
        runtime_client(),
        settings.endpoint_name,
        endpoint_max_concurrency=settings.endpoint_max_concurrency,
        worker_max_concurrency=settings.worker_max_concurrency,
    )
    runner = RecordRunner(
        caller,
        TokenBudget(max_input_length=settings.max_input_length, max_total_tokens=settings.max_total_tokens),
        get_tokenizer(),
        settings.default_max_new_tokens,
        settings.max_line_bytes,
        ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="call"),
    )
    return ShardProcessor(
        _jobs(),
        ObjectStore(client("s3")),
        MessageSender(client("sqs"), settings.finalize_queue_url),
        runner,
        ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="record"),
        settings.stop_check_seconds,
        settings.lease_seconds,
    )


@lru_cache(maxsize=1)
def finalizer() -> Finalizer:
    return Finalizer(_jobs(), ObjectStore(client("s3")), get_settings())


def reset() -> None:
    """Forget everything built from settings and clients (tests and each local run)."""
    from sagebatch.adapters.clients import reset_clients
    from sagebatch.settings import get_settings as settings_getter

    for cached in (intake, shard_processor, finalizer, settings_getter):
        cached.cache_clear()
    reset_clients()
