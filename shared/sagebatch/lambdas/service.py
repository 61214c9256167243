"""The composition root: builds each use case from settings and AWS clients, once per cold start."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Generic, TypeVar

from sagebatch.adapters.dynamodb import Table
from sagebatch.adapters.environments import DynamoEnvironmentRegistry
from sagebatch.adapters.events import EventBridgeJobEvents
from sagebatch.adapters.jobs import DynamoJobStore
from sagebatch.adapters.leases import DynamoLeaseStore
from sagebatch.adapters.objects import S3ObjectStore
from sagebatch.adapters.queues import SqsMessageSender, SqsWorkSource
from sagebatch.adapters.results import DynamoCallCacheStore
from sagebatch.domain.budget import TokenBudget
from sagebatch.domain.tokens import get_tokenizer
from sagebatch.endpoint.caller import make_default_caller
from sagebatch.endpoint.limiter import InMemoryLimiterStore
from sagebatch.endpoint.share import SlotShare
from sagebatch.lambdas.clients import client, runtime_client
from sagebatch.lambdas.telemetry import MeteredCaller
from sagebatch.settings import get_settings
from sagebatch.usecases.batch import WorkerInvocation
from sagebatch.usecases.finalize import Finalizer
from sagebatch.usecases.intake import Intake
from sagebatch.usecases.parts import PartsResultStore
from sagebatch.usecases.record_runner import RecordRunner
from sagebatch.usecases.worker import ShardProcessor

T = TypeVar("T")
_BUILDING = threading.RLock()
# Which Lambda execution environment the calling thread stands for. On AWS each environment is its own process and
# this is always "default"; the local stack plays several environments of a function in one process
# (tooling/local/runner.py), and each must build its own objects: its own caller, limiter and share of the endpoint.
_ENVIRONMENT: ContextVar[str] = ContextVar("sagebatch_execution_environment", default="default")


@contextmanager
def execution_environment(name: str) -> Iterator[None]:
    """Run the block as the execution environment `name`: what the builders below build is that environment's own."""
    token = _ENVIRONMENT.set(name)
    try:
        yield
    finally:
        _ENVIRONMENT.reset(token)


class _once(Generic[T]):
    """Build once per execution environment, even when several threads ask at once (lru_cache alone may build
    twice). Call it on the environment's handler thread: threads a builder starts do not carry the environment, so
    anything they need is bound when it is built."""

    def __init__(self, builder: Callable[[], T]):
        self._builder = builder
        self._built: dict[str, T] = {}
        functools.update_wrapper(self, builder)

    def __call__(self) -> T:
        environment = _ENVIRONMENT.get()
        with _BUILDING:
            if environment not in self._built:
                self._built[environment] = self._builder()
            return self._built[environment]

    def built(self) -> list[T]:
        """What every execution environment has built so far (the local progress line sums over them)."""
        with _BUILDING:
            return list(self._built.values())

    def cache_clear(self) -> None:
        with _BUILDING:
            self._built.clear()


def _table() -> Table:
    settings = get_settings()
    return Table(client("dynamodb"), settings.table_name, settings.job_ttl_days)


def jobs() -> DynamoJobStore:
    return DynamoJobStore(_table())


def results() -> PartsResultStore:
    return PartsResultStore(S3ObjectStore(client("s3")), get_settings().bucket_name, DynamoCallCacheStore(_table()))


def _sender(queue_url: str) -> SqsMessageSender:
    return SqsMessageSender(client("sqs"), queue_url)


def job_events() -> EventBridgeJobEvents:
    settings = get_settings()
    topic = settings.notification_topic_arn
    return EventBridgeJobEvents(client("events"), settings.event_bus_name, client("sns") if topic else None, topic)


@_once
def intake() -> Intake:
    settings = get_settings()
    return Intake(
        jobs(),
        DynamoLeaseStore(_table()),
        S3ObjectStore(client("s3")),
        _sender(settings.work_queue_url),
        _sender(settings.finalize_queue_url),
        settings,
        events=job_events(),
        resume=_sender(settings.intake_queue_url) if settings.intake_queue_url else None,
    )


@_once
def endpoint_caller() -> MeteredCaller:
    """The execution environment's one caller (limiter + retries), shared by the worker's threads; the worker's
    handler reads its counters and limit after each invocation (sagebatch.lambdas.telemetry)."""
    settings = get_settings()
    return MeteredCaller(
        make_default_caller(
            runtime_client(),
            settings.endpoint_name,
            endpoint_max_concurrency=settings.endpoint_max_concurrency,
            worker_max_concurrency=settings.worker_max_concurrency,
        )
    )


@_once
def slot_share() -> SlotShare:
    """This environment's share of the endpoint's concurrency (sagebatch.endpoint.share)."""
    settings = get_settings()
    store = endpoint_caller().caller.limiter.store
    assert isinstance(store, InMemoryLimiterStore)
    return SlotShare(
        DynamoEnvironmentRegistry(_table(), settings.endpoint_name),
        store,
        settings.endpoint_max_concurrency,
        refresh_s=settings.share_refresh_seconds,
    )


@_once
def worker_invocation() -> WorkerInvocation:
    """Runs an invocation's shards together and takes more from the work queue while it has room."""
    settings = get_settings()
    source = SqsWorkSource(client("sqs"), settings.work_queue_url, settings.work_visibility_timeout_s)
    return WorkerInvocation(
        shard_processor(),
        source if settings.self_feed else None,
        settings.max_shards_in_flight,
        call_time_reserve_s=settings.call_time_reserve_s,
    )


def wants_more_work() -> bool:
    """Whether this environment's invocation should take another shard from the queue (`room_for_more_work`)."""
    store = endpoint_caller().caller.limiter.store
    assert isinstance(store, InMemoryLimiterStore)
    return room_for_more_work(shard_processor().waiting_records, store)


def room_for_more_work(waiting_records: int, store: InMemoryLimiterStore) -> bool:
    """Take another shard when fewer records wait for a slot than half of this environment's share: enough queued
    to fill every slot that frees up, never so many that a shard waits long for its turn (its lease and checkpoint
    run meanwhile)."""
    return waiting_records + store.waiting() < max(1, store.settings.max_inflight // 2)


@_once
def shard_processor() -> ShardProcessor:
    settings = get_settings()
    # Threads for every slot the endpoint has: an environment alone may hold the whole share (SlotShare).
    in_flight = settings.endpoint_max_concurrency
    caller = endpoint_caller()
    runner = RecordRunner(
        caller,
        TokenBudget(max_input_length=settings.max_input_length, max_total_tokens=settings.max_total_tokens),
        get_tokenizer(),
        settings.default_max_new_tokens,
        settings.max_line_bytes,
        ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="call"),
    )
    return ShardProcessor(
        jobs(),
        results(),
        DynamoLeaseStore(_table()),
        S3ObjectStore(client("s3")),
        _sender(settings.finalize_queue_url),
        runner,
        ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="record"),
        settings.stop_check_seconds,
        settings.lease_seconds,
        settings.checkpoint_seconds,
        record_slots=lambda: caller.caller.limiter.settings.max_inflight,  # read on the record threads: bound here
    )


@_once
def finalizer() -> Finalizer:
    settings = get_settings()
    return Finalizer(
        jobs(),
        results(),
        S3ObjectStore(client("s3")),
        settings,
        events=job_events(),
        finalize=_sender(settings.finalize_queue_url),
    )


def reset() -> None:
    """Forget everything built from settings and clients (tests and each local run)."""
    from sagebatch.lambdas.clients import reset_clients

    for built in (intake, endpoint_caller, shard_processor, slot_share, worker_invocation, finalizer):
        built.cache_clear()
    get_settings.cache_clear()
    reset_clients()
