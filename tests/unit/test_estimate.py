"""`sagebatch estimate`: exact plan (calls, tokens), duration by the fitted model's own formula, cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sagebatch.domain.cost import endpoint_cost
from sagebatch.domain.tokens import get_tokenizer
from sagebatch.settings import Settings
from sagebatch.tooling.cli import main
from sagebatch.tooling.emulator.perf_model import PerfParams, prefill_ms, windowed_context
from sagebatch.tooling.estimate import PlannedCall, estimate, expected_output, pipeline, plan_file, predict

TEXT = "I believe the meaning of life is to " * 4
SETTINGS = Settings(table_name="-", bucket_name="-")


def lines(*records: object) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()


def test_the_plan_counts_calls_and_tokens_as_the_worker_would():
    # Given three raw records (one with its own max_new_tokens), a bad line and one too long for the context
    data = lines(
        {"inputs": TEXT, "parameters": {"max_new_tokens": 50}},
        {"inputs": TEXT},
        {"id": "x", "inputs": TEXT + "again"},
        "{not json",
        {"inputs": "word " * 9000, "fit": {"strategy": "reject"}},
    )

    # When it is planned with the job's max_new_tokens 64
    plan = plan_file(data, SETTINGS, parameters=None, fit=None)

    # Then the calls are the three valid records, with TGI's token counts and the max_new_tokens each would send
    count = get_tokenizer().count
    assert plan.records == 5
    assert [(c.input_tokens, c.max_new_tokens) for c in plan.calls] == [
        (count(TEXT), 50),
        (count(TEXT), SETTINGS.default_max_new_tokens),
        (count(TEXT + "again"), SETTINGS.default_max_new_tokens),
    ]
    assert plan.input_tokens == 2 * count(TEXT) + count(TEXT + "again")
    assert plan.output_tokens == 50 + 2 * SETTINGS.default_max_new_tokens  # "max": every call to its max_new_tokens
    assert plan.failed == {"invalid_json": 1, "context_length_exceeded": 1}
    assert plan.shards == 1 and plan.line_calls == [1, 1, 1, 0, 0]


def test_output_assumptions():
    assert expected_output(128, {}, "max") == 128
    assert expected_output(128, {}, 40) == 40 and expected_output(16, {}, 40) == 16
    # the emulator's answers: 12-96 words then EOS, so their mean; never EOS at temperature >= 10
    assert expected_output(512, {}, "emulator") == pytest.approx(55.0)
    assert expected_output(512, {"temperature": 99}, "emulator") == 512
    assert expected_output(20, {}, "emulator") < 20


def test_a_single_wave_lasts_what_the_fluid_model_says():
    # Given three identical calls, fewer than the limiter's starting limit, so they all run together
    n, new = 129, 128
    calls = [PlannedCall(n, new, float(new))] * 3
    pipe = pipeline(SETTINGS, shards=1, local=True)
    assert pipe.initial_limit >= 3

    # When the duration is predicted
    prediction = predict(calls, pipe)

    # Then it is one end-to-end time of performance-model.md 3.1 at B = 3 (no KV queueing): N x T(3) + ovh
    p = PerfParams()
    per_request = p.b_ms + p.kv_ms_per_1k * windowed_context(int(n + new / 2), p.window) / 1000 + prefill_ms([n], p) / new
    assert prediction.duration_s == pytest.approx((new * (p.a_ms + 3 * per_request) + p.overhead_ms) / 1000, rel=1e-6)
    assert prediction.mean_in_flight == pytest.approx(3.0)
    assert prediction.endpoint_seconds == pytest.approx(prediction.duration_s * pipe.endpoint_slice)


def test_beyond_kv_capacity_throughput_stops_growing():
    # Given 2,000 calls of 513 tokens (KV holds 79 of them), on one endpoint instance and on two
    calls = [PlannedCall(513, 128, 128.0)] * 2000
    pipe = pipeline(SETTINGS, shards=63, local=False)

    # When predicted
    one, two = predict(calls, pipe, instances=1), predict(calls, pipe, instances=2)

    # Then one instance is near the calibrated plateau (~450 tok/s, performance-model.md 7), two nearly double it
    assert 380 < one.output_tokens_per_s < 480
    assert 1.6 < two.output_tokens_per_s / one.output_tokens_per_s < 2.1


def test_estimate_prices_the_predicted_endpoint_seconds_and_instances():
    data = lines(*({"inputs": TEXT, "parameters": {"max_new_tokens": 32}} for _ in range(4)))
    result = estimate(data, SETTINGS, instances=2, local=True, instance_hourly_price=1.0)
    assert result.endpoint_calls == 4 and result.output_tokens == 128
    assert result.cost["endpoint_hourly_price"] == 2.0
    assert result.cost["endpoint_usd"] == pytest.approx(endpoint_cost(result.endpoint_seconds, 2.0), abs=1e-6)


def test_the_command_prints_json_and_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    # Given a small file
    path = tmp_path / "in.jsonl"
    path.write_bytes(lines(*({"id": i, "prompt": f"Say {i}"} for i in range(3))))

    # When estimated with --json, then as a table
    assert main(["estimate", str(path), "--json", "--param", "max_new_tokens=20", "--output-tokens", "emulator"]) == 0
    values = json.loads(capsys.readouterr().out)
    assert main(["estimate", str(path), "--endpoint-instances", "2"]) == 0
    table = capsys.readouterr().out

    # Then both say the same plan
    assert values["records"] == 3 and values["endpoint_calls"] == 3
    assert values["output_assumption"] == "emulator" and values["output_tokens"] < 60
    assert values["duration_s"] > 0 and values["cost"]["total_usd"] > values["cost"]["endpoint_usd"]
    assert "endpoint calls" in table and "total" in table


def test_a_bad_output_assumption_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "in.jsonl"
    path.write_bytes(lines({"prompt": "hi"}))
    with pytest.raises(SystemExit) as exited:
        main(["estimate", str(path), "--output-tokens", "lots"])
    assert exited.value.code == 2
    assert "--output-tokens" in capsys.readouterr().err
