"""The EMF metrics of a job through the local stack (moto + the emulator over HTTP), with metrics enabled: the real
composition root, caller and limiter. No metric and no log line holds prompt or output text."""

from __future__ import annotations

import logging

from sagebatch.lambdas import metrics as names
from tests.conftest import jsonl
from tests.emf import Emf
from tests.integration.test_logging import SECRET_PROMPT


def test_a_job_through_the_local_stack_emits_its_metrics_and_no_text(stack, capfd, caplog, monkeypatch):
    # Given metrics enabled, and a job of three prompts holding a distinctive string plus one line that is not JSON
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    caplog.set_level(logging.INFO)
    records = [{"id": f"r{n}", "prompt": f"{SECRET_PROMPT} #{n}"} for n in range(3)]
    job_id = stack.drop_file(jsonl(*records, '{"prompt": "' + SECRET_PROMPT), "inputs/metrics.jsonl")

    # When the stack runs it to the end
    assert stack.wait_for(job_id) == "COMPLETED"
    outputs = [r["output"] for r in stack.results(job_id) if r["output"]]
    captured = capfd.readouterr()
    emf = Emf.parse(captured.out)

    # Then the worker counted three successes, one invalid_json failure, their tokens and one request each ...
    assert emf.total(names.RECORDS_SUCCEEDED) == 3
    assert emf.total(names.RECORDS_FAILED) == emf.total(names.RECORDS_FAILED, ErrorType="invalid_json") == 1
    assert emf.total(names.RECORDS_COMPLETED) == 4
    manifest = stack.manifest(job_id)
    assert emf.total(names.INPUT_TOKENS) == manifest["tokens"]["input"]
    assert emf.total(names.OUTPUT_TOKENS) == manifest["tokens"]["output"]
    assert emf.total(names.ENDPOINT_ATTEMPTS) == 3 and len(emf.values(names.ENDPOINT_LATENCY)) == 3
    assert all(ms > 0 for ms in emf.values(names.ENDPOINT_LATENCY))
    assert emf.values(names.LIMITER_LIMIT) and emf.values(names.SHARD_DURATION)
    # ... intake and the finalizer counted the job ...
    assert emf.total(names.JOBS_STARTED, names.INTAKE) == 1
    assert emf.total(names.JOBS_FINISHED, names.FINALIZER) == 1
    # ... and neither the prompts nor the outputs are in any metric or log line
    logs = "\n".join(repr(vars(record)) for record in caplog.records)
    assert outputs and job_id in logs
    for text in (SECRET_PROMPT, *outputs):
        assert text not in captured.out and text not in captured.err and text not in logs
