"""DeployedStack: the stack as AWS runs it, in one process, for the pipeline bench (bench/pipeline.py).

What makes it "as deployed" rather than `sagebatch run`:

- `WorkerMaxConcurrency` worker environments that share nothing in memory: each has its own caller, limiter, share
  of the endpoint (SlotShare, over one registry as over the one DynamoDB table) and thread pools, as separate Lambda
  execution environments have;
- each environment is fed as Lambda's SQS event source feeds it: it takes its next batch (`BatchSize` messages,
  within the batching window) as soon as its last invocation returned, with no rounds, and takes more shards from
  the queue itself while it has room (self-feed, as the deployed worker does);
- the AWS ports are the in-memory fakes (`sagebatch.fakes`), so the pipeline's own work costs what it costs on
  AWS's many machines, not what moto costs on one: each Lambda invocation is in its own process there, and moto
  serialises every request here;
- the endpoint is real HTTP: the SageMaker runtime client against the emulator (or any TGI behind the proxy).

The intake and the finalizer run as they do in the local stack, one invocation at a time.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import boto3

from sagebatch.domain.job import FINISHED, Job
from sagebatch.domain.messages import FinalizeRequest
from sagebatch.domain.time_budget import DEFAULT_CALL_TIME_RESERVE_S
from sagebatch.endpoint.caller import AdaptiveCaller, make_default_caller
from sagebatch.endpoint.limiter import InMemoryLimiterStore
from sagebatch.endpoint.sagemaker import runtime_client_config
from sagebatch.endpoint.share import SlotShare
from sagebatch.fakes import Delivery as FakeDelivery
from sagebatch.fakes import FakeAws, InMemoryEnvironmentRegistry, InMemoryWorkSource, build_runner, s3_notification
from sagebatch.lambdas.service import room_for_more_work
from sagebatch.observability import logger
from sagebatch.settings import Settings
from sagebatch.usecases.batch import Delivery, WorkerInvocation
from sagebatch.usecases.finalize import Finalizer
from sagebatch.usecases.intake import Intake
from sagebatch.usecases.worker import ShardProcessor


@dataclass
class WorkerEnvironment:
    """One worker execution environment: what `sagebatch.lambdas.service` builds once per cold start."""

    name: str
    caller: AdaptiveCaller
    share: SlotShare
    processor: ShardProcessor
    invocation: WorkerInvocation
    pools: tuple[ThreadPoolExecutor, ...]
    invocations: int = 0

    @property
    def store(self) -> InMemoryLimiterStore:
        store = self.caller.limiter.store
        assert isinstance(store, InMemoryLimiterStore)
        return store

    def wants_more(self) -> bool:
        return room_for_more_work(self.processor.waiting_records, self.store)


@dataclass
class DeployedStack:
    settings: Settings
    endpoint_url: str
    environments: int = 2  # WorkerMaxConcurrency
    batch_size: int = 2  # the worker event source's BatchSize
    batching_window_s: float = 0.0
    invocation_timeout_s: float = 900.0  # the worker's Timeout (bench: in wall seconds, i.e. divided by the time scale)
    call_reserve_s: float = DEFAULT_CALL_TIME_RESERVE_S  # kept for a last endpoint call (scaled like the timeout)
    aws: FakeAws = field(init=False)
    workers: list[WorkerEnvironment] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.aws = FakeAws.create(self.settings)
        self._registry = InMemoryEnvironmentRegistry()
        self._message_ids = itertools.count(1)
        self._runtime = boto3.client(
            "sagemaker-runtime",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=runtime_client_config(max_pool_connections=self.settings.endpoint_max_concurrency + 8),
        )
        self.intake = Intake(self.aws.jobs, self.aws.leases, self.aws.objects, self.aws.work, self.aws.finalize, self.settings)
        self.finalizer = Finalizer(self.aws.jobs, self.aws.results, self.aws.objects, self.settings)
        self.workers = [self._environment(f"worker#{index}") for index in range(self.environments)]

    def _environment(self, name: str) -> WorkerEnvironment:
        settings = self.settings
        caller = make_default_caller(
            self._runtime,
            settings.endpoint_name,
            endpoint_max_concurrency=settings.endpoint_max_concurrency,
            worker_max_concurrency=settings.worker_max_concurrency,
        )
        store = caller.limiter.store
        assert isinstance(store, InMemoryLimiterStore)
        share = SlotShare(
            self._registry, store, settings.endpoint_max_concurrency, refresh_s=settings.share_refresh_seconds, environment=name
        )
        slots = settings.endpoint_max_concurrency
        call_pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix=f"{name}-call")
        record_pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix=f"{name}-record")
        processor = ShardProcessor(
            self.aws.jobs,
            self.aws.results,
            self.aws.leases,
            self.aws.objects,
            self.aws.finalize,
            build_runner(caller, settings, call_pool),
            record_pool,
            settings.stop_check_seconds,
            settings.lease_seconds,
            settings.checkpoint_seconds,
            record_slots=lambda: store.settings.max_inflight,
        )
        source = InMemoryWorkSource(self.aws.work) if settings.self_feed else None
        invocation = WorkerInvocation(processor, source, settings.max_shards_in_flight, call_time_reserve_s=self.call_reserve_s)
        return WorkerEnvironment(name, caller, share, processor, invocation, (call_pool, record_pool))

    # -- driving ---------------------------------------------------------------------------------------------------
    def drop(self, data: bytes, key: str) -> str:
        """Put the file in the bucket and run intake on S3's notification, as the intake function would."""
        info = self.aws.objects.put(self.settings.bucket_name, key, data)
        outcomes = self.intake.handle_message(s3_notification(info), self.aws.next_message_id())
        job_id = outcomes[0].job_id
        assert job_id is not None, outcomes
        return job_id

    def run_job(self, job_id: str, timeout_s: float = 600, on_idle: Callable[[], None] | None = None) -> Job:
        """Run the worker environments and the finalizer until the job is finished."""
        stop = threading.Event()
        threads = [
            threading.Thread(target=self._worker_loop, args=(worker, stop), name=worker.name, daemon=True)
            for worker in self.workers
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                job = self.aws.jobs.get_job(job_id)
                assert job is not None
                if job.status in FINISHED:
                    return job
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} did not finish within {timeout_s} s")
                delivery = self.aws.finalize.receive()
                if delivery is None:
                    time.sleep(0.02)
                    continue
                try:
                    self.finalizer.finalize(FinalizeRequest.model_validate_json(delivery.body).job_id)
                except Exception:
                    self.aws.finalize.requeue(delivery)
        finally:
            stop.set()
            for thread in threads:
                thread.join()

    def close(self) -> None:
        for worker in self.workers:
            for pool in worker.pools:
                pool.shutdown(wait=True)

    def _worker_loop(self, worker: WorkerEnvironment, stop: threading.Event) -> None:
        pause = 0.01
        while not stop.is_set():
            batch = self._receive_batch()
            if not batch:
                stop.wait(pause)
                pause = min(0.1, pause * 2)
                continue
            pause = 0.01
            worker.invocations += 1
            started = time.monotonic()
            deliveries = [Delivery(f"event-{next(self._message_ids)}", d.body, d.receive_count) for d in batch]
            by_id = {delivery.message_id: message for delivery, message in zip(deliveries, batch, strict=True)}

            ends = started + self.invocation_timeout_s
            try:
                with worker.share.holding():
                    budget = worker.invocation.time_budget(partial(_left, ends))
                    report = worker.invocation.run(deliveries, budget, worker.wants_more)
                failed = report.failed_message_ids
            except Exception:  # the whole invocation failed, as Lambda sees it
                logger.exception("worker invocation failed", extra={"environment": worker.name})
                failed = set(by_id)
            for message_id, message in by_id.items():
                if message_id in failed:
                    self.aws.work.requeue(message)

    def _receive_batch(self) -> list[FakeDelivery]:
        window_ends = time.monotonic() + self.batching_window_s
        batch: list[FakeDelivery] = []
        while len(batch) < self.batch_size:
            delivery = self.aws.work.receive()
            if delivery is not None:
                batch.append(delivery)
                continue
            if time.monotonic() >= window_ends:
                break
            time.sleep(0.02)
        return batch


def _left(ends: float) -> float:
    return ends - time.monotonic()
