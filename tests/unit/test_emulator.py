"""The endpoint emulator as boto3 sees it: fault knobs, TGI validation errors and overload, over real HTTP on
127.0.0.1 with a real `sagemaker-runtime` client (dummy credentials, one attempt per call)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sagebatch.tooling.emulator.server import Emulator, FaultConfig
from tests.conftest import serving

ENDPOINT = "mistral-7b-instruct"


def invoke(client: Any, inputs: str = "Say hello.", **parameters: Any) -> list[dict[str, Any]]:
    body = {"inputs": inputs, "parameters": {"max_new_tokens": 16, "details": True, **parameters}}
    response = client.invoke_endpoint(EndpointName=ENDPOINT, ContentType="application/json", Body=json.dumps(body))
    return json.loads(response["Body"].read())


def test_5xx_rate_one_gives_a_model_error_with_original_status_500():
    # Given an emulator that fails every request with a container 500
    with serving(Emulator(faults=FaultConfig(server_error=1.0))) as client:
        # When a request is sent
        with pytest.raises(client.exceptions.ModelError) as caught:
            invoke(client)

    # Then botocore raises ModelError (HTTP 424) carrying the container's 500
    response = caught.value.response
    assert response["Error"]["Code"] == "ModelError"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == 500
    assert "Received server error (500)" in response["Error"]["Message"]


def test_throttling_rate_one_gives_a_throttling_exception():
    # Given an emulator that throttles every request
    with serving(Emulator(faults=FaultConfig(throttling=1.0))) as client:
        # When a request is sent
        with pytest.raises(ClientError) as caught:
            invoke(client)

    # Then the error code is ThrottlingException with HTTP 400, as real-time endpoints send it
    assert caught.value.response["Error"]["Code"] == "ThrottlingException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_not_ready_rate_one_gives_a_model_not_ready_exception():
    # Given an emulator whose model is never ready
    with serving(Emulator(faults=FaultConfig(not_ready=1.0))) as client:
        # When a request is sent
        with pytest.raises(client.exceptions.ModelNotReadyException) as caught:
            invoke(client)

    # Then botocore raises the modeled ModelNotReadyException (HTTP 429)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429


def test_a_fault_at_rate_zero_never_happens_while_other_faults_do():
    # Given throttling on half the requests and the other faults at rate 0
    emulator = Emulator(faults=FaultConfig(throttling=0.5, server_error=0.0, not_ready=0.0, slow=0.0, seed=3))
    outcomes = []
    with serving(emulator) as client:
        # When 40 requests are sent
        for _ in range(40):
            try:
                invoke(client)
                outcomes.append("ok")
            except ClientError as error:
                outcomes.append(error.response["Error"]["Code"])

    # Then only successes and throttles occur (the draws did happen), never a zero-rate fault
    assert set(outcomes) == {"ok", "ThrottlingException"}
    assert emulator.stats.slowed == 0


def test_no_faults_by_default():
    # Given an emulator with the default fault configuration
    emulator = Emulator()
    with serving(emulator) as client:
        # When 30 requests are sent
        answers = [invoke(client, f"prompt {n}") for n in range(30)]

    # Then all of them are answered and nothing was injected
    assert all(answer[0]["generated_text"] for answer in answers)
    assert emulator.stats.injected_faults == 0 and emulator.stats.succeeded == 30


def test_a_slow_fault_delays_a_successful_answer():
    # Given an emulator that slows every request by 0.3 s
    with serving(Emulator(faults=FaultConfig(slow=1.0, slow_seconds=0.3))) as client:
        # When a request is sent
        started = time.monotonic()
        answer = invoke(client)
        elapsed = time.monotonic() - started

    # Then it still succeeds, after the delay
    assert answer[0]["generated_text"]
    assert elapsed >= 0.3


@pytest.mark.parametrize(
    "rates",
    [dict(server_error=0.6, slow=0.6), dict(throttling=-0.1), dict(not_ready=1.5)],
    ids=["sum-above-one", "negative", "above-one"],
)
def test_fault_rates_outside_the_unit_interval_or_summing_above_one_are_refused(rates):
    # Given / When a fault configuration with impossible rates / Then it is refused
    with pytest.raises(ValueError):
        FaultConfig(**rates)


def test_temperature_zero_comes_back_as_a_422_model_error_with_tgi_text():
    # Given the plain emulator
    with serving(Emulator()) as client:
        # When a request asks for temperature 0, which TGI 1.1 rejects
        with pytest.raises(client.exceptions.ModelError) as caught:
            invoke(client, temperature=0)

    # Then SageMaker's wrapper carries TGI's 422 and its JSON body verbatim
    response = caught.value.response
    assert response["OriginalStatusCode"] == 422
    assert json.loads(response["OriginalMessage"]) == {
        "error": "Input validation error: `temperature` must be strictly positive",
        "error_type": "validation",
    }
    assert response["Error"]["Message"].startswith("Received client error (422) from primary with message")


def test_an_input_over_the_token_limit_comes_back_as_a_422_model_error():
    # Given the plain emulator (JumpStart limits: 8191 input tokens, 8192 in total)
    with serving(Emulator()) as client:
        # When the input alone is longer than the total limit
        with pytest.raises(client.exceptions.ModelError) as caught:
            invoke(client, "hello " * 9000)

    # Then TGI's length error arrives wrapped, with its limit in the text
    response = caught.value.response
    assert response["OriginalStatusCode"] == 422
    error = json.loads(response["OriginalMessage"])["error"]
    assert "`inputs` tokens + `max_new_tokens` must be <= 8192" in error


def test_a_request_over_max_concurrent_requests_is_overloaded():
    # Given an emulator admitting one request at a time, whose requests are slow (so they hold their slot)
    emulator = Emulator(faults=FaultConfig(slow=1.0, slow_seconds=0.5), max_concurrent_requests=1)
    with serving(emulator) as client:
        first: list[Any] = []
        holder = threading.Thread(target=lambda: first.append(invoke(client, "first")))
        holder.start()
        deadline = time.monotonic() + 5
        while emulator.stats.in_flight < 1 and time.monotonic() < deadline:
            time.sleep(0.01)

        # When a second request arrives while the first is in flight
        with pytest.raises(client.exceptions.ModelError) as caught:
            invoke(client, "second")
        holder.join()

    # Then the second is refused with TGI's 429 "Model is overloaded", and the first still succeeds
    response = caught.value.response
    assert response["OriginalStatusCode"] == 429
    assert json.loads(response["OriginalMessage"]) == {"error": "Model is overloaded", "error_type": "overloaded"}
    assert first and first[0][0]["generated_text"]
    assert emulator.stats.overloaded == 1


@pytest.mark.parametrize("max_new_tokens", [4, 64, 200])
def test_generated_text_is_deterministic_and_its_token_count_matches_the_details(max_new_tokens):
    # Given the emulator and one prompt asked twice
    from sagebatch.domain.tokens import get_tokenizer

    with serving(Emulator()) as client:
        # When it answers
        first = invoke(client, "Describe the river.", max_new_tokens=max_new_tokens)[0]
        second = invoke(client, "Describe the river.", max_new_tokens=max_new_tokens)[0]

    # Then the same input gives the same text, and the text's tokens (BOS excluded) are what details report
    # (plus the EOS token TGI counts but does not print when the text ended on it)
    details = first["details"]
    text_tokens = get_tokenizer().count(first["generated_text"]) - 1
    eos = 1 if details["finish_reason"] == "eos_token" else 0
    assert first == second
    assert details["generated_tokens"] == text_tokens + eos <= max_new_tokens


def runtime_client(url: str) -> Any:
    import boto3

    from sagebatch.endpoint.sagemaker import runtime_client_config

    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=runtime_client_config(),
    )


def test_an_emulator_process_serves_its_config_and_reports_its_counters_over_http():
    # Given the emulator in a process of its own, throttling about half the requests
    from sagebatch.tooling.emulator.process import EmulatorProcess
    from sagebatch.tooling.emulator.server import EmulatorConfig

    config = EmulatorConfig(faults=FaultConfig(throttling=0.5, seed=3))
    with EmulatorProcess(config, ENDPOINT) as process:
        client = runtime_client(process.url)
        # When 20 requests are sent
        throttled = 0
        for n in range(20):
            try:
                invoke(client, f"prompt {n}")
            except ClientError as error:
                throttled += error.response["Error"]["Code"] == "ThrottlingException"
        stats = process.emulator.stats

    # Then its counters, read from this process, are the child's: every request, and the faults it injected
    assert 0 < throttled < 20
    assert stats.requests == 20 and stats.injected_faults == throttled and stats.succeeded == 20 - throttled


def test_a_stopped_emulator_process_no_longer_answers():
    # Given an emulator process that was started and stopped
    import urllib.error
    import urllib.request

    from sagebatch.tooling.emulator.process import EmulatorProcess
    from sagebatch.tooling.emulator.server import EmulatorConfig

    process = EmulatorProcess(EmulatorConfig(), ENDPOINT).start()
    url = process.url
    process.stop()

    # When its health check is asked for
    # Then nothing listens there any more
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.URLError) as caught:
        direct.open(url + "/ping", timeout=2)
    assert isinstance(caught.value.reason, ConnectionRefusedError)
