"""The handlers' EMF metrics: the three entry points (functions/*/app.py) run on the in-memory fakes, with the real
AdaptiveCaller in front of a scripted endpoint, and their stdout is read back as CloudWatch EMF documents."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sagebatch.domain.generation import EndpointError, ErrorKind, Generation
from sagebatch.endpoint.caller import AdaptiveCaller
from sagebatch.endpoint.limiter import AdaptiveLimiter, InMemoryLimiterStore
from sagebatch.endpoint.retry import RetryBudget, RetryPolicy
from sagebatch.endpoint.share import SlotShare
from sagebatch.fakes import FakeAws, InMemoryEnvironmentRegistry, Pipeline, build_pipeline, fake_settings
from sagebatch.lambdas import metrics as names
from sagebatch.lambdas import service
from sagebatch.lambdas.telemetry import MeteredCaller
from sagebatch.tooling.local.runner import LambdaContext, load_handler, sqs_event
from sagebatch.usecases.batch import WorkerInvocation
from tests.conftest import ROOT, jsonl
from tests.emf import Emf

SECRET_PROMPT = "the launch code is tangerine-4471"
SECRET_OUTPUT = "the vault opens at dawn 9123"
HANDLERS = {name: load_handler(ROOT / "functions" / name / "app.py") for name in names.FUNCTIONS}


class ScriptedEndpoint:
    """A SingleAttemptEndpoint: the n-th request (1-based) fails with `failures[n]`, if any, else answers."""

    def __init__(self, failures: dict[int, ErrorKind] | None = None, always: ErrorKind | None = None) -> None:
        self.failures = failures or {}
        self.always = always
        self.requests = 0
        self._lock = threading.Lock()

    def invoke_once(self, payload: dict[str, Any]) -> Generation:
        with self._lock:
            self.requests += 1
            kind = self.always or self.failures.get(self.requests)
        if kind is not None:
            raise EndpointError(kind, f"scripted {kind.value}")
        return Generation(SECRET_OUTPUT, 4, "eos_token")


@dataclass
class Lambdas:
    """The fakes wired into sagebatch.lambdas.service, and a way to deliver their queues to the entry points."""

    pipeline: Pipeline
    caller: MeteredCaller

    @property
    def aws(self) -> FakeAws:
        return self.pipeline.aws

    def invoke(self, function: str, bodies: list[str], receive_count: int = 1) -> dict[str, Any]:
        messages = [
            {
                "MessageId": f"m-{n}",
                "ReceiptHandle": f"r-{n}",
                "Body": body,
                "Attributes": {"ApproximateReceiveCount": str(receive_count)},
            }
            for n, body in enumerate(bodies)
        ]
        event = sqs_event(messages, f"arn:aws:sqs:us-east-1:123456789012:{function}")
        return HANDLERS[function](event, LambdaContext(f"{function}-fn", 900))

    def drain(self, queue: Any) -> list[str]:
        bodies = []
        while (delivery := queue.receive()) is not None:
            bodies.append(delivery.body)
        return bodies


@pytest.fixture
def lambdas(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[ScriptedEndpoint], Lambdas]]:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    made: list[Pipeline] = []

    def make(endpoint: ScriptedEndpoint) -> Lambdas:
        limiter = AdaptiveLimiter(InMemoryLimiterStore())
        caller = MeteredCaller(AdaptiveCaller(endpoint, limiter, RetryPolicy(budget=RetryBudget()), sleep=lambda _: None))
        pipeline = build_pipeline(FakeAws.create(fake_settings()), caller=caller, in_flight=2)
        made.append(pipeline)
        monkeypatch.setattr(service, "intake", lambda: pipeline.intake)
        monkeypatch.setattr(service, "shard_processor", lambda: pipeline.worker)
        monkeypatch.setattr(service, "finalizer", lambda: pipeline.finalizer)
        monkeypatch.setattr(service, "endpoint_caller", lambda: caller)
        invocation = WorkerInvocation(pipeline.worker, None)
        share = SlotShare(InMemoryEnvironmentRegistry(), limiter.store, 120)
        monkeypatch.setattr(service, "worker_invocation", lambda: invocation)
        monkeypatch.setattr(service, "slot_share", lambda: share)
        return Lambdas(pipeline, caller)

    yield make
    for pipeline in made:
        pipeline.close()


def run_job(lambdas: Lambdas, data: bytes) -> None:
    """Intake, worker and finalizer entry points, each on what the previous one queued."""
    aws = lambdas.aws
    aws.objects.put(aws.settings.bucket_name, "inputs/secret.jsonl", data)
    message = json.dumps({"job_id": "j", "input": f"s3://{aws.settings.bucket_name}/inputs/secret.jsonl"})
    assert lambdas.invoke(names.INTAKE, [message]) == {"batchItemFailures": []}
    assert lambdas.invoke(names.WORKER, lambdas.drain(aws.work)) == {"batchItemFailures": []}
    assert lambdas.invoke(names.FINALIZER, lambdas.drain(aws.finalize)) == {"batchItemFailures": []}


def test_a_small_batch_emits_its_records_tokens_and_endpoint_metrics(lambdas, capfd) -> None:
    # Given a job of two good prompts and a line that is not JSON, on an endpoint whose first request gets a 429 and
    # whose second times out (both retried by the caller)
    run = lambdas(ScriptedEndpoint({1: ErrorKind.OVERLOADED, 2: ErrorKind.TIMEOUT}))
    data = jsonl({"id": "a", "prompt": SECRET_PROMPT}, '{"prompt": "' + SECRET_PROMPT, {"id": "c", "prompt": SECRET_PROMPT})

    # When intake, worker and finalizer run it through their entry points
    run_job(run, data)
    emf = Emf.parse(capfd.readouterr().out)

    # Then the worker's EMF (namespace sagebatch, dimensions service + function) counts the records by outcome ...
    worker_docs = [d for d in emf.documents if d.get("function") == names.WORKER]
    assert worker_docs and all(d["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "sagebatch" for d in worker_docs)
    assert all(d["service"] == "sagebatch" for d in worker_docs)
    assert emf.total(names.RECORDS_SUCCEEDED) == 2
    assert emf.total(names.RECORDS_FAILED) == 1
    assert emf.total(names.RECORDS_FAILED, ErrorType="invalid_json") == 1
    assert emf.total(names.RECORDS_COMPLETED) == 3
    # ... the tokens (two 4-token answers) and the shard's duration ...
    assert emf.total(names.INPUT_TOKENS) > 0
    assert emf.total(names.OUTPUT_TOKENS) == 8
    assert len(emf.values(names.SHARD_DURATION)) == 1 and emf.unit(names.SHARD_DURATION) == "Seconds"
    # ... and the endpoint's side: 4 requests, one 429, one timeout, two retries, two latencies, the current limit
    assert emf.total(names.ENDPOINT_ATTEMPTS) == 4
    assert emf.total(names.ENDPOINT_429S) == 1
    assert emf.total(names.ENDPOINT_TIMEOUTS) == 1
    assert emf.total(names.ENDPOINT_ERRORS) == 1  # the timeout: a 429 is the limiter's signal, not an error
    assert emf.total(names.ENDPOINT_RETRIES) == 2
    assert len(emf.values(names.ENDPOINT_LATENCY)) == 2 and emf.unit(names.ENDPOINT_LATENCY) == "Milliseconds"
    assert emf.values(names.LIMITER_LIMIT) == [round(run.caller.caller.limiter.limit, 2)]
    # ... while intake and the finalizer count the job they started and closed
    assert emf.total(names.JOBS_STARTED, names.INTAKE) == 1 and emf.total(names.JOBS_REJECTED, names.INTAKE) == 0
    assert emf.total(names.JOBS_FINISHED, names.FINALIZER) == 1


def test_a_delivery_handed_back_still_reports_what_it_did(lambdas, capfd) -> None:
    # Given a job of two prompts on an endpoint that answers every request with a 429
    run = lambdas(ScriptedEndpoint(always=ErrorKind.OVERLOADED))
    aws = run.aws
    aws.objects.put(aws.settings.bucket_name, "inputs/busy.jsonl", jsonl({"prompt": "a"}, {"prompt": "b"}))
    run.invoke(names.INTAKE, [json.dumps({"job_id": "busy", "input": f"s3://{aws.settings.bucket_name}/inputs/busy.jsonl"})])
    capfd.readouterr()

    # When the worker's first delivery gives up on both records after the caller's retries
    response = run.invoke(names.WORKER, run.drain(aws.work))
    emf = Emf.parse(capfd.readouterr().out)

    # Then the shard comes back, counted as incomplete with nothing completed, and every 429 and retry is counted
    assert response == {"batchItemFailures": [{"itemIdentifier": "m-0"}]}
    assert emf.total(names.SHARDS_INCOMPLETE) == 1
    assert emf.total(names.RECORDS_COMPLETED) == 0
    assert len(emf.values(names.SHARD_DURATION)) == 1
    attempts = emf.total(names.ENDPOINT_ATTEMPTS)
    assert attempts >= 2 and emf.total(names.ENDPOINT_429S) == attempts
    assert emf.total(names.ENDPOINT_RETRIES) == attempts - 2
    assert emf.total(names.ENDPOINT_ERRORS) == 0 and emf.values(names.ENDPOINT_LATENCY) == []


def test_on_the_final_delivery_retryable_failures_are_counted_by_error_type(lambdas, capfd) -> None:
    # Given a one-record job on an endpoint that always times out, delivered for the 4th time
    run = lambdas(ScriptedEndpoint(always=ErrorKind.TIMEOUT))
    aws = run.aws
    aws.objects.put(aws.settings.bucket_name, "inputs/slow.jsonl", jsonl({"prompt": "a"}))
    run.invoke(names.INTAKE, [json.dumps({"job_id": "slow", "input": f"s3://{aws.settings.bucket_name}/inputs/slow.jsonl"})])
    capfd.readouterr()

    # When the worker gives up on it
    run.invoke(names.WORKER, run.drain(aws.work), receive_count=4)
    emf = Emf.parse(capfd.readouterr().out)

    # Then it is one failed record of type endpoint_timeout, and the timeouts are endpoint errors
    assert emf.total(names.RECORDS_FAILED) == 1
    assert emf.total(names.RECORDS_FAILED, ErrorType="endpoint_timeout") == 1
    assert emf.total(names.ENDPOINT_TIMEOUTS) == emf.total(names.ENDPOINT_ERRORS) == emf.total(names.ENDPOINT_ATTEMPTS) > 0


def test_no_metric_or_log_line_holds_prompt_or_output_text(lambdas, capfd, caplog) -> None:
    # Given a job whose prompts and answers hold distinctive strings, and the service logging at INFO
    caplog.set_level(logging.INFO)
    run = lambdas(ScriptedEndpoint({1: ErrorKind.OVERLOADED}))
    data = jsonl({"id": "a", "prompt": SECRET_PROMPT}, '{"prompt": "' + SECRET_PROMPT, {"id": "c", "prompt": SECRET_PROMPT})

    # When the job runs through the three entry points
    run_job(run, data)
    captured = capfd.readouterr()
    logs = "\n".join(repr(vars(record)) for record in caplog.records)

    # Then the answers exist, metrics and logs were written, and neither text is in any of them
    assert SECRET_OUTPUT in run.aws.objects.read_bytes(run.aws.settings.bucket_name, "outputs/j/results.jsonl").decode()
    assert Emf.parse(captured.out).documents and "job_id" in logs
    for text in (SECRET_PROMPT, SECRET_OUTPUT):
        assert text not in captured.out and text not in captured.err and text not in logs


def test_with_metrics_disabled_nothing_is_printed(lambdas, capfd, monkeypatch) -> None:
    # Given POWERTOOLS_METRICS_DISABLED, as in the tests and the local stack
    run = lambdas(ScriptedEndpoint())
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")

    # When a job runs through the entry points
    run_job(run, jsonl({"prompt": "a"}))

    # Then no EMF document is printed (not even the cold-start metric) and none is left to print later
    assert Emf.parse(capfd.readouterr().out).documents == []
    assert not any(service_metrics.metric_set for service_metrics in _function_metrics())


def _function_metrics() -> list[Any]:
    from sagebatch.observability import function_metrics

    return [function_metrics(name) for name in names.FUNCTIONS]
