"""The two ways the pipeline runs whole: the local stack's event sources (one set of objects per execution
environment, as on Lambda) and the deployed topology the pipeline bench drives (bench/pipeline.py)."""

from __future__ import annotations

import json

import pytest

from sagebatch.fakes import fake_settings
from sagebatch.lambdas import service
from sagebatch.tooling.emulator.server import Emulator, EmulatorServer
from sagebatch.tooling.local.deployed import DeployedStack
from sagebatch.tooling.local.session import local_stack


def prompts(count: int) -> bytes:
    return "".join(json.dumps({"id": n, "prompt": f"Say {n}."}) + "\n" for n in range(1, count + 1)).encode()


def test_each_worker_environment_builds_its_own_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a job of 40 two-line shards: more than one batch of the worker's event source (BatchSize 10)
    monkeypatch.setenv("SAGEBATCH_SHARD_RECORDS", "2")
    with local_stack() as run:
        job_id = run.drop_file(prompts(80), "inputs/forty-shards.jsonl")
        # When the local stack runs it
        status = run.wait_for(job_id, timeout_s=120)
        callers = service.endpoint_caller.built()
        # Then the job completed with one result per line, and the worker's environments (WorkerMaxConcurrency, 2)
        # each built their own caller and limiter, as separate Lambda environments do
        assert status == "COMPLETED"
        assert [r["line"] for r in run.results(job_id)] == list(range(1, 81))
        assert len(callers) == 2
        assert len({id(caller.caller.limiter.store) for caller in callers}) == len(callers)


def test_the_deployed_topology_answers_every_line_once() -> None:
    # Given the emulator over HTTP and the deployed topology: two worker environments over the in-memory fakes
    emulator = Emulator(endpoint_name="mistral-7b-instruct")
    with EmulatorServer(emulator) as server:
        stack = DeployedStack(fake_settings(endpoint_name="mistral-7b-instruct", shard_records=4), server.url)
        try:
            # When a 60-line file is dropped and the job runs to the end
            job_id = stack.drop(prompts(60), "inputs/sixty.jsonl")
            job = stack.run_job(job_id, timeout_s=120)
        finally:
            stack.close()
    # Then it completed, each line reached the endpoint once and has one result, in order
    assert job.status == "COMPLETED"
    assert emulator.stats.requests == 60
    assert [result.line for result in stack.aws.results.results(job_id)] == list(range(1, 61))
    assert sum(worker.invocations for worker in stack.workers) >= 1
