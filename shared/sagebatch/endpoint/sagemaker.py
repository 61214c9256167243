"""The SageMaker runtime adapter: one TGI request, one attempt, typed errors.

Retries and concurrency are *not* here: botocore is told to make exactly one
attempt (a read-timeout retry would silently re-send a whole generation, see
protocol.md 8.3) and the caller's `EndpointCaller` owns backoff and the limiter.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.config import Config
from botocore.exceptions import ClientError, ReadTimeoutError
from botocore.exceptions import ConnectionError as BotoConnectionError

from sagebatch.domain.generation import EndpointError, ErrorKind, Generation

# SageMaker's documented InvokeEndpoint body limit.
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024


def runtime_client_config(max_pool_connections: int = 64) -> Config:
    """botocore settings for sagemaker-runtime: one attempt, 70 s read timeout (protocol.md 8.4)."""
    return Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        read_timeout=70,
        connect_timeout=5,
        max_pool_connections=max_pool_connections,
    )


def classify_client_error(error: ClientError) -> EndpointError:
    """Map a botocore ClientError from InvokeEndpoint onto an `EndpointError`."""
    response = error.response
    code = response.get("Error", {}).get("Code", "")
    message = response.get("Error", {}).get("Message") or code or "endpoint error"
    if code == "ModelError":
        original = response.get("OriginalStatusCode")
        original = int(original) if original is not None else None
        original_message = str(response.get("OriginalMessage") or message)
        if original == 429:
            return EndpointError(ErrorKind.OVERLOADED, _tgi_error_text(original_message), original)
        if original == 0 or "timed out" in message:
            return EndpointError(ErrorKind.TIMEOUT, "invocation timed out waiting for the container", original)
        if original is not None and original >= 500:
            return EndpointError(ErrorKind.SERVER_ERROR, _tgi_error_text(original_message), original)
        if original == 422:
            return EndpointError(ErrorKind.VALIDATION, _tgi_error_text(original_message), original)
        if original == 424:  # TGI "Request failed during generation": a server-side fault
            return EndpointError(ErrorKind.SERVER_ERROR, _tgi_error_text(original_message), original)
        return EndpointError(ErrorKind.CLIENT_ERROR, _tgi_error_text(original_message), original)
    if code in {"ThrottlingException", "Throttling", "TooManyRequestsException"}:
        return EndpointError(ErrorKind.THROTTLED, message)
    if code == "ModelNotReadyException":
        return EndpointError(ErrorKind.NOT_READY, message)
    if code in {"ServiceUnavailable", "InternalFailure", "InternalDependencyException"}:
        return EndpointError(ErrorKind.SERVER_ERROR, message)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if status >= 500:
        return EndpointError(ErrorKind.SERVER_ERROR, message)
    if code == "ValidationError":
        return EndpointError(ErrorKind.VALIDATION, message)
    return EndpointError(ErrorKind.CLIENT_ERROR, f"{code}: {message}")


def _tgi_error_text(original_message: str) -> str:
    """TGI puts `{"error": ..., "error_type": ...}` in the body; keep just the error text."""
    try:
        body = json.loads(original_message)
    except (TypeError, ValueError):
        return original_message
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return original_message


def parse_generation(body: bytes) -> Generation:
    """Parse TGI's `/invocations` answer: a JSON array with one object (protocol.md 4)."""
    data = json.loads(body)
    item = data[0] if isinstance(data, list) else data
    details = item.get("details") or {}
    return Generation(
        text=item["generated_text"],
        generated_tokens=int(details.get("generated_tokens", 0)),
        finish_reason=str(details.get("finish_reason", "unknown")),
    )


class SageMakerEndpoint:
    """Single-attempt InvokeEndpoint with TGI parsing and error classification."""

    def __init__(self, client: Any, endpoint_name: str):
        self._client = client
        self._endpoint_name = endpoint_name

    def invoke_once(self, payload: dict[str, Any]) -> Generation:
        body = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
        if len(body) > MAX_PAYLOAD_BYTES:
            raise EndpointError(
                ErrorKind.PAYLOAD_TOO_LARGE, f"request body is {len(body)} bytes; SageMaker accepts at most {MAX_PAYLOAD_BYTES}"
            )
        try:
            response = self._client.invoke_endpoint(
                EndpointName=self._endpoint_name,
                ContentType="application/json",
                Accept="application/json",
                Body=body,
            )
        except ClientError as error:
            raise classify_client_error(error) from error
        except ReadTimeoutError as error:
            raise EndpointError(ErrorKind.TIMEOUT, "client read timeout") from error
        except BotoConnectionError as error:
            raise EndpointError(ErrorKind.SERVER_ERROR, f"connection error: {type(error).__name__}") from error
        return parse_generation(response["Body"].read())
