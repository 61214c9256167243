"""`sagebatch run`: the whole pipeline on one machine, no AWS account (moto + the endpoint emulator)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from sagebatch.adapters.dynamodb import Table
from sagebatch.adapters.jobs import DynamoJobStore
from sagebatch.adapters.objects import S3ObjectStore
from sagebatch.adapters.results import DynamoCallCacheStore
from sagebatch.domain.job import FINISHED, JobStatus
from sagebatch.domain.layout import errors_key, manifest_key, results_key
from sagebatch.lambdas import service
from sagebatch.tooling.emulator.process import EmulatorProcess
from sagebatch.tooling.emulator.server import Emulator, EmulatorConfig
from sagebatch.tooling.local.clocks import scaled_clocks
from sagebatch.tooling.local.moto_speedups import moto_speedups
from sagebatch.tooling.local.runner import EventSourcePoller
from sagebatch.tooling.local.stack import REGION, LocalStack, moto_requests_one_at_a_time, use_fake_aws_environment
from sagebatch.tooling.local.template import default_template_path, load_template
from sagebatch.usecases.intake import S3Drop, retry_job_id
from sagebatch.usecases.parts import PartsResultStore

FINAL_STATES = FINISHED


@dataclass
class LocalRun:
    stack: LocalStack
    poller: EventSourcePoller
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    def client(self, service: str) -> Any:
        """One boto3 client per service for the run: making one costs milliseconds of Python (botocore copies its
        event hooks), and the wait loop and the progress line read the job many times a second."""
        if service not in self._clients:
            self._clients[service] = boto3.client(service, region_name=REGION)
        return self._clients[service]

    @property
    def jobs(self) -> DynamoJobStore:
        return DynamoJobStore(Table(self.client("dynamodb"), self.stack.table))

    @property
    def result_store(self) -> PartsResultStore:
        return PartsResultStore(
            S3ObjectStore(self.client("s3")),
            self.stack.bucket,
            DynamoCallCacheStore(Table(self.client("dynamodb"), self.stack.table)),
        )

    def drop_file(self, data: bytes, key: str) -> str:
        """Upload under the bucket's key (e.g. inputs/x.jsonl) and return the job id S3's notification will create."""
        response = self.client("s3").put_object(Bucket=self.stack.bucket, Key=key, Body=data)
        # moto's notifications carry no versionId (aws-reliability.md, trap 2), so intake keys the job on the
        # ETag here; on AWS the notification's versionId is used.
        return S3Drop(self.stack.bucket, key, version_id=None, etag=response["ETag"]).job_id

    def submit_job(self, spec: dict[str, Any]) -> str:
        """Send a job message to the intake queue; returns its SQS message id."""
        response = self.client("sqs").send_message(QueueUrl=self.stack.queue_url("IntakeQueue"), MessageBody=json.dumps(spec))
        return response["MessageId"]

    def cancel(self, job_id: str) -> str:
        """Send `{"action": "cancel"}` for the job to the intake queue, as `sagebatch cancel` does; returns the message id."""
        return self.submit_job({"action": "cancel", "job_id": job_id})

    def retry(self, job_id: str, client_token: str | None = None) -> str:
        """Send `{"action": "retry"}` for the job, as `sagebatch retry` does; returns the child job's id."""
        self.submit_job({"action": "retry", "job_id": job_id} | ({"client_token": client_token} if client_token else {}))
        return retry_job_id(job_id, client_token)

    def wait_for(self, job_id: str, timeout_s: float = 600) -> str:
        def done() -> bool:
            job = self.jobs.get_job(job_id)
            return job is not None and job.status in FINAL_STATES

        self.poller.run_until(done, timeout_s)
        return self.jobs.get_job(job_id).status  # type: ignore[union-attr]

    def drain(self, timeout_s: float = 600) -> None:
        """Run until every queue is empty (and stays empty for one more round)."""
        deadline = time.monotonic() + timeout_s
        idle = 0
        while idle < 3:
            if time.monotonic() > deadline:
                raise TimeoutError("queues did not drain")
            idle = idle + 1 if self.poller.poll_once() == 0 else 0

    def jobs_in_table(self) -> list[str]:
        """Ids of every job item in the table (tests use it to prove no second job was made)."""
        paginator = self.client("dynamodb").get_paginator("scan")
        ids = []
        for page in paginator.paginate(TableName=self.stack.table):
            ids += [item["job_id"]["S"] for item in page["Items"] if item["sk"]["S"] == "META"]
        return sorted(ids)

    def read(self, key: str) -> bytes:
        return self.client("s3").get_object(Bucket=self.stack.bucket, Key=key)["Body"].read()

    def results(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.read(results_key(job_id)).splitlines()]

    def manifest(self, job_id: str) -> dict[str, Any]:
        return json.loads(self.read(manifest_key(job_id)))


@contextmanager
def local_stack(
    template_path: Path | None = None,
    parameters: dict[str, Any] | None = None,
    emulator: Emulator | EmulatorConfig | None = None,
    parallel: int = 4,
    emulator_process: bool = False,
) -> Iterator[LocalRun]:
    """Start moto, create the template's resources, start the emulator, point the handlers at them.

    `emulator` is a ready `Emulator`, or an `EmulatorConfig` (faults, perf model, proxy) to build one for the
    template's endpoint name; None is the plain emulator. `emulator_process` serves an `EmulatorConfig` (or the
    plain emulator) from a process of its own: the pipeline keeps this process's GIL, and the emulator's state is
    read over HTTP (`stats` only).
    """
    from moto import mock_aws

    served: Emulator | EmulatorProcess | None
    if emulator_process:
        if isinstance(emulator, Emulator):
            raise ValueError("an Emulator object lives in this process; pass an EmulatorConfig to run it in its own")
        served = EmulatorProcess(emulator or EmulatorConfig(), _endpoint_name(template_path, parameters))
    elif isinstance(emulator, EmulatorConfig):
        served = emulator.build(_endpoint_name(template_path, parameters))
    else:
        served = emulator
    use_fake_aws_environment()
    with scaled_clocks(_time_scale(emulator)), mock_aws(), moto_requests_one_at_a_time(), moto_speedups():
        stack = LocalStack(template_path, parameters, served).create()
        try:
            stack.apply_environment()
            service.reset()
            yield LocalRun(stack, EventSourcePoller(stack, parallel=parallel))
        finally:
            service.reset()
            stack.stop()


def _time_scale(emulator: Emulator | EmulatorConfig | None) -> float:
    """How much faster than the wall clock the emulated endpoint runs (1 without the performance model)."""
    if isinstance(emulator, EmulatorConfig):
        return emulator.time_scale if emulator.perf else 1.0
    scheduler = getattr(emulator, "scheduler", None)
    return float(getattr(scheduler, "time_scale", 1.0)) if scheduler is not None else 1.0


def _endpoint_name(template_path: Path | None, parameters: dict[str, Any] | None) -> str:
    """The EndpointName the stack will use, resolved as LocalStack does: override, else the template default."""
    if parameters and "EndpointName" in parameters:
        return str(parameters["EndpointName"])
    template = load_template(template_path or default_template_path())
    return str(template["Parameters"]["EndpointName"]["Default"])


def run_file(
    path: Path,
    out_dir: Path,
    timeout_s: float = 600,
    emulator: EmulatorConfig | None = None,
    watch: Callable[[LocalRun, str], AbstractContextManager[None]] | None = None,
) -> dict[str, Any]:
    """Drop FILE into the local stack's bucket, run the job to the end, copy its outputs to OUT_DIR.

    `emulator` configures the endpoint emulator (fault knobs, perf model, proxy to a real model server); `watch`,
    if given, is entered around the run (the CLI's live progress line).
    """
    with local_stack(emulator=emulator, emulator_process=True) as run:
        job_id = run.drop_file(path.read_bytes(), f"inputs/{path.name}")
        with watch(run, job_id) if watch is not None else nullcontext():
            status = run.wait_for(job_id, timeout_s)
        out_dir.mkdir(parents=True, exist_ok=True)
        manifest = run.manifest(job_id)
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if status != JobStatus.FAILED:  # COMPLETED, or CANCELLED / EXPIRED with the results done so far
            (out_dir / "results.jsonl").write_bytes(run.read(results_key(job_id)))
            if manifest.get("errors"):  # the OpenAI output format's error file
                (out_dir / "errors.jsonl").write_bytes(run.read(errors_key(job_id)))
        stats = run.stack.emulator_server.emulator.stats
        manifest["_local"] = {
            "emulator_requests": stats.requests,
            "emulator_injected_faults": stats.injected_faults,
            "emulator_slowed": stats.slowed,
            "emulator_validation_errors": stats.validation_errors,
        }
        return manifest
