"""EventSourcePoller: plays Lambda's SQS event source mappings against moto queues.

Like the real ESM it receives up to `BatchSize` messages (within the batching window), invokes the handler with an
SQS event in one of the function's execution environments, deletes what succeeded, and honours
`batchItemFailures` (anything else in the response, or an exception, fails the whole batch). Failed messages
become visible again after a *scaled* visibility timeout, and moto moves them to the DLQ after maxReceiveCount
receives.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3

from sagebatch.tooling.local.stack import ACCOUNT, REGION, LocalStack
from sagebatch.tooling.local.template import SqsTrigger, sqs_triggers


@dataclass
class LambdaContext:
    """The parts of the Lambda context object the handlers and Powertools use."""

    function_name: str
    timeout_s: int
    memory_limit_in_mb: int = 1024
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self.started)) * 1000))


class SimulatedCrash(BaseException):
    """A Lambda process dying mid-invocation (fault injection). A BaseException, like the SystemExit it stands for,
    so that no `except Exception` in the service mistakes it for a problem of the line being processed: the whole
    invocation fails, as Lambda sees a crash."""


class PipelineStalled(RuntimeError):
    """Nothing is left to deliver, yet what the caller waits for has not happened."""


@dataclass
class PollStats:
    invocations: int = 0
    messages: int = 0
    item_failures: int = 0
    batch_failures: int = 0


def load_handler(path: Path) -> Callable[[dict, Any], Any]:
    """Import functions/<name>/app.py as Lambda would (each under its own module name)."""
    spec = importlib.util.spec_from_file_location(f"sagebatch_fn_{path.parent.name}", path)
    assert spec and spec.loader
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lambda_handler


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {k: str(v) for k, v in m.get("Attributes", {}).items()},
                "messageAttributes": {},
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": REGION,
            }
            for m in messages
        ]
    }


class EventSourcePoller:
    """Lambda's SQS event sources for every function of the template, over the local stack's queues.

    `run_until` plays them as Lambda does: each function has up to `MaximumConcurrency` execution environments
    (at most `parallel` here), and each environment takes its next batch as soon as its last invocation returned,
    with no rounds. Each environment builds its own objects (its caller, limiter and share of the endpoint:
    `service.execution_environment`), as separate Lambda environments share nothing in memory; one that crashes is
    replaced by a new one (a cold start). `poll_once` is the step-by-step form for tests: one batch per environment,
    all awaited.
    """

    def __init__(self, stack: LocalStack, redelivery_seconds: float = 0.5, parallel: int = 4):
        self.stack = stack
        self.triggers = sqs_triggers(stack.template, stack.root, stack.resolve)
        self.handlers = {t.function: load_handler(t.handler_path) for t in self.triggers}
        self.redelivery_seconds = redelivery_seconds  # stands in for the (long) visibility timeout
        self.parallel = parallel
        self.stats = PollStats()
        self.invocation_seconds: dict[str, list[float]] = {}  # function -> each invocation's duration
        self._sqs = boto3.client("sqs", region_name=REGION)
        self._lock = threading.Lock()
        self._running = 0  # invocations in progress (run_until)
        self._generations: dict[str, int] = {}  # environment slot -> environments it has had (a crash starts anew)

    def environments(self, trigger: SqsTrigger) -> int:
        """How many execution environments the function's event source runs at once here."""
        return max(1, min(self.parallel, trigger.max_concurrency or self.parallel))

    def poll_once(self) -> int:
        """One round over every event source; returns how many messages were handled."""
        handled = 0
        for trigger in self.triggers:
            batches = []
            for _ in range(self.environments(trigger)):
                messages = self._receive(trigger, wait=False)
                if not messages:
                    break
                batches.append(messages)
            if not batches:
                continue
            with ThreadPoolExecutor(max_workers=len(batches)) as pool:
                list(pool.map(self._invoke, [trigger] * len(batches), batches, range(len(batches))))
            handled += sum(len(batch) for batch in batches)
        return handled

    def run_until(self, done: Callable[[], bool], timeout_s: float = 600) -> None:
        """Run every function's environments until `done()`. Raises `PipelineStalled` when every queue is empty and
        nothing runs, yet `done()` still is not true (e.g. the message went to a DLQ), instead of waiting out the
        timeout."""
        stop = threading.Event()
        environments = [
            threading.Thread(target=self._environment, args=(trigger, slot, stop), name=f"{trigger.function}#{slot}", daemon=True)
            for trigger in self.triggers
            for slot in range(self.environments(trigger))
        ]
        for environment in environments:
            environment.start()
        deadline = time.monotonic() + timeout_s
        idle_checks = 0
        try:
            while not done():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the local stack did not finish within {timeout_s} s")
                with self._lock:
                    running = self._running
                idle_checks = idle_checks + 1 if running == 0 else 0
                if idle_checks >= 20 and self._all_source_queues_empty():
                    with self._lock:
                        running = self._running
                    if running == 0 and not done():
                        raise PipelineStalled(
                            f"every queue is empty but the job is not finished; dead-letter queues: {dlq_depths(self.stack)}"
                        )
                time.sleep(0.05)
        finally:
            stop.set()
            for environment in environments:
                environment.join()

    def _environment(self, trigger: SqsTrigger, slot: int, stop: threading.Event) -> None:
        """One execution environment's life: take a batch, invoke, settle, again. Idle, it polls less often."""
        pause = 0.01
        while not stop.is_set():
            try:
                messages = self._receive(trigger, wait=True)
            except Exception:  # moto is in-process: a receive that fails is retried, as the event source does
                messages = []
            if not messages:
                stop.wait(pause)
                pause = min(0.2, pause * 2)
                continue
            pause = 0.01
            with self._lock:
                self._running += 1
            try:
                self._invoke(trigger, messages, slot)
            finally:
                with self._lock:
                    self._running -= 1

    def _all_source_queues_empty(self) -> bool:
        for trigger in self.triggers:
            attrs = self._sqs.get_queue_attributes(
                QueueUrl=self.stack.queue_url(trigger.queue),
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            if int(attrs["ApproximateNumberOfMessages"]) or int(attrs["ApproximateNumberOfMessagesNotVisible"]):
                return False
        return True

    def _receive(self, trigger: SqsTrigger, wait: bool) -> list[dict[str, Any]]:
        """One batch: up to `BatchSize` messages, gathered for up to the batching window (when `wait`)."""
        window_ends = time.monotonic() + (trigger.batching_window_s if wait else 0)
        messages: list[dict[str, Any]] = []
        while len(messages) < trigger.batch_size:
            response = self._sqs.receive_message(
                QueueUrl=self.stack.queue_url(trigger.queue),
                MaxNumberOfMessages=min(10, trigger.batch_size - len(messages)),
                AttributeNames=["All"],
                VisibilityTimeout=max(30, self.stack.function_timeout(trigger.function)),
            )
            messages += response.get("Messages", [])
            if time.monotonic() >= window_ends:
                break
            if len(messages) < trigger.batch_size:
                time.sleep(0.05)
        return messages

    def _invoke(self, trigger: SqsTrigger, messages: list[dict[str, Any]], slot: int = 0) -> None:
        from sagebatch.lambdas import service

        queue_url = self.stack.queue_url(trigger.queue)
        event = sqs_event(messages, self.stack.physical[trigger.queue]["Arn"])
        context = LambdaContext(trigger.function, self.stack.function_timeout(trigger.function))
        slot_name = f"{trigger.function}#{slot}"
        with self._lock:
            self.stats.invocations += 1
            self.stats.messages += len(messages)
            environment = f"{slot_name}.{self._generations.setdefault(slot_name, 0)}"
        crashed = False
        try:
            with service.execution_environment(environment):
                response = self.handlers[trigger.function](event, context)
            failed_ids = _failed_ids(response, {m["MessageId"] for m in messages})
        except (Exception, SimulatedCrash) as error:  # the whole invocation failed, as Lambda sees it
            failed_ids = {m["MessageId"] for m in messages}
            crashed = isinstance(error, SimulatedCrash)
            with self._lock:
                self.stats.batch_failures += 1
        seconds = time.monotonic() - context.started
        with self._lock:
            self.invocation_seconds.setdefault(trigger.function, []).append(seconds)
            if crashed:  # Lambda replaces a crashed environment with a new one: nothing built survives
                self._generations[slot_name] += 1
        for message in messages:
            if message["MessageId"] in failed_ids:
                with self._lock:
                    self.stats.item_failures += 1
                self._sqs.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=int(self.redelivery_seconds)
                )
            else:
                self._sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def _failed_ids(response: Any, batch_ids: set[str]) -> set[str]:
    """Lambda's rules for a partial batch response (aws-reliability.md 3): malformed means all failed."""
    if response is None:
        return set()
    if not isinstance(response, dict):
        return batch_ids
    failures = response.get("batchItemFailures")
    if failures is None or failures == []:
        return set()
    ids = set()
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not identifier or identifier not in batch_ids:
            return batch_ids
        ids.add(identifier)
    return ids


def dlq_depths(stack: LocalStack) -> dict[str, int]:
    sqs = boto3.client("sqs", region_name=REGION)
    depths = {}
    for logical, resource in stack.resources("AWS::SQS::Queue").items():
        if "RedrivePolicy" not in resource.get("Properties", {}):
            attrs = sqs.get_queue_attributes(QueueUrl=stack.queue_url(logical), AttributeNames=["ApproximateNumberOfMessages"])
            depths[logical] = int(attrs["Attributes"]["ApproximateNumberOfMessages"])
    return depths


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)
