"""The one-attempt SageMaker adapter: payload limit, error classification, TGI response parsing."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from sagebatch.domain.generation import EndpointError, ErrorKind
from sagebatch.endpoint.sagemaker import MAX_PAYLOAD_BYTES, SageMakerEndpoint, classify_client_error, parse_generation


class RecordingClient:
    def __init__(self) -> None:
        self.calls = 0

    def invoke_endpoint(self, **kwargs):  # pragma: no cover - must not be reached in the payload test
        self.calls += 1
        raise AssertionError("the request should not have been sent")


def test_a_payload_over_sagemakers_6_mib_is_refused_without_being_sent():
    # Given a payload one byte over InvokeEndpoint's documented body limit
    client = RecordingClient()
    endpoint = SageMakerEndpoint(client, "mistral-7b-instruct")
    filler = "x" * (MAX_PAYLOAD_BYTES - len(json.dumps({"inputs": ""})) + 1)

    # When it is invoked; Then it fails as payload_too_large (never retried) and nothing was sent
    with pytest.raises(EndpointError) as raised:
        endpoint.invoke_once({"inputs": filler})
    assert raised.value.kind is ErrorKind.PAYLOAD_TOO_LARGE and not raised.value.retryable
    assert client.calls == 0


@pytest.mark.parametrize(
    "response, kind",
    [
        (
            {
                "Error": {"Code": "ModelError", "Message": "x"},
                "OriginalStatusCode": 429,
                "OriginalMessage": '{"error": "Model is overloaded", "error_type": "overloaded"}',
            },
            ErrorKind.OVERLOADED,
        ),
        (
            {
                "Error": {"Code": "ModelError", "Message": "x"},
                "OriginalStatusCode": 422,
                "OriginalMessage": '{"error": "Input validation error: ...", "error_type": "validation"}',
            },
            ErrorKind.VALIDATION,
        ),
        ({"Error": {"Code": "ModelError", "Message": "Your invocation timed out"}, "OriginalStatusCode": 0}, ErrorKind.TIMEOUT),
        (
            {"Error": {"Code": "ModelError", "Message": "x"}, "OriginalStatusCode": 500, "OriginalMessage": "boom"},
            ErrorKind.SERVER_ERROR,
        ),
        ({"Error": {"Code": "ThrottlingException", "Message": None}}, ErrorKind.THROTTLED),
        ({"Error": {"Code": "ModelNotReadyException", "Message": "loading"}}, ErrorKind.NOT_READY),
        (
            {"Error": {"Code": "ValidationError", "Message": "bad"}, "ResponseMetadata": {"HTTPStatusCode": 400}},
            ErrorKind.VALIDATION,
        ),
    ],
    ids=["tgi-429", "tgi-422", "timeout", "container-500", "throttling", "not-ready", "validation"],
)
def test_sagemaker_errors_are_classified_as_botocore_reports_them(response, kind):
    # Given a ClientError as botocore raises it for InvokeEndpoint; When it is classified; Then the kind is right
    assert classify_client_error(ClientError(response, "InvokeEndpoint")).kind is kind


def test_tgis_list_answer_is_parsed_with_its_details():
    # Given TGI's /invocations answer (a list with one object, details requested)
    body = json.dumps([{"generated_text": "Canada", "details": {"finish_reason": "eos_token", "generated_tokens": 3}}])
    # When it is parsed; Then text, token count and finish reason come through
    generation = parse_generation(body.encode())
    assert (generation.text, generation.generated_tokens, generation.finish_reason) == ("Canada", 3, "eos_token")
