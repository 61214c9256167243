"""Cost through the whole pipeline: `sagebatch run` writes endpoint_seconds and the cost into manifest.json, and the
stack's EndpointHourlyPrice reaches the functions' environment and the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sagebatch.domain.cost import DEFAULT_ENDPOINT_HOURLY_PRICE, PRICES_AS_OF
from sagebatch.tooling.cli import main
from sagebatch.tooling.local.session import local_stack
from sagebatch.tooling.local.template import load_template
from tests.conftest import ROOT, jsonl

RECORDS = [{"id": i, "prompt": f"Name a river, number {i}.", "parameters": {"max_new_tokens": 48}} for i in range(6)]


def test_a_run_s_manifest_has_its_endpoint_seconds_and_cost(tmp_path: Path):
    # Given a file, and the calibrated endpoint model sped up 20 times (so calls take measurable time)
    source = tmp_path / "rivers.jsonl"
    source.write_bytes(jsonl(*RECORDS))

    # When it runs through the local pipeline
    assert main(["run", str(source), "--out", str(tmp_path / "out"), "--perf", "--time-scale", "20"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())

    # Then the manifest carries the job's share of the endpoint and its cost at the default price
    assert manifest["endpoint_seconds"] > 0
    assert manifest["worker_seconds"] >= manifest["endpoint_seconds"]
    # every call was in flight inside the job's life, so its share of the endpoint cannot exceed that life
    assert manifest["worker_seconds"] <= manifest["timings"]["duration_s"] + 0.01
    cost = manifest["cost"]
    assert cost["endpoint_hourly_price"] == DEFAULT_ENDPOINT_HOURLY_PRICE
    assert cost["prices_as_of"] == PRICES_AS_OF
    assert cost["endpoint_usd"] == pytest.approx(manifest["endpoint_seconds"] / 3600 * DEFAULT_ENDPOINT_HOURLY_PRICE, abs=1e-5)
    assert cost["plumbing_usd"] > 0
    assert cost["total_usd"] == pytest.approx(cost["endpoint_usd"] + cost["plumbing_usd"], abs=1e-6)
    # and results.jsonl keeps its shape: the per-record shares stay in the stored results
    first = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[0])
    assert "endpoint_seconds" not in first


def test_the_template_default_is_the_price_table_s_and_every_function_gets_it():
    template = load_template(ROOT / "template.yaml")
    assert template["Parameters"]["EndpointHourlyPrice"]["Default"] == DEFAULT_ENDPOINT_HOURLY_PRICE
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["SAGEBATCH_ENDPOINT_HOURLY_PRICE"] == {"Ref": "EndpointHourlyPrice"}


def test_the_stack_parameter_reaches_the_functions_and_the_manifest():
    # Given a stack deployed with EndpointHourlyPrice 4.04 (two instances of something)
    with local_stack(parameters={"EndpointHourlyPrice": 4.04}) as run:
        # Then the finalizer's environment carries it
        assert run.stack.environment("FinalizerFunction")["SAGEBATCH_ENDPOINT_HOURLY_PRICE"] == "4.04"

        # When a job runs, Then its manifest is priced with it
        job_id = run.drop_file(jsonl(*RECORDS[:2]), "inputs/priced.jsonl")
        assert run.wait_for(job_id) == "COMPLETED"
        cost = run.manifest(job_id)["cost"]
    assert cost["endpoint_hourly_price"] == 4.04
