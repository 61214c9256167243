"""What one generation call returns, or why it failed: the endpoint's contract as the domain sees it.

The SageMaker adapter (sagebatch.endpoint.sagemaker) produces these; the record runner and the fitting
strategies consume them. One type for an answer (`Generation`), one for a failure (`EndpointError`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ErrorKind(str, Enum):
    """Why a call failed; the retry policy decides per kind."""

    OVERLOADED = "overloaded"  # TGI 429 "Model is overloaded", wrapped in ModelError
    TIMEOUT = "timeout"  # SageMaker 60 s limit or client read timeout
    SERVER_ERROR = "server_error"  # container 5xx, ServiceUnavailable, InternalFailure
    THROTTLED = "throttled"  # SageMaker ThrottlingException
    NOT_READY = "not_ready"  # ModelNotReadyException
    VALIDATION = "validation"  # TGI 422 or SageMaker ValidationError: never retried
    CLIENT_ERROR = "client_error"  # other 4xx: never retried
    PAYLOAD_TOO_LARGE = "payload_too_large"


RETRYABLE_KINDS = frozenset(
    {ErrorKind.OVERLOADED, ErrorKind.TIMEOUT, ErrorKind.SERVER_ERROR, ErrorKind.THROTTLED, ErrorKind.NOT_READY}
)


class EndpointError(Exception):
    """A failed endpoint call, classified."""

    def __init__(self, kind: ErrorKind, message: str, original_status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.original_status = original_status
        # Requests sent for this logical call, retries included (set by the caller when it gives up).
        self.attempts = 1
        # Its attempts' share of the endpoint and of the worker's time, as for `Generation` (set with `attempts`).
        self.endpoint_seconds = 0.0
        self.worker_seconds = 0.0

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS


@dataclass(frozen=True)
class Generation:
    """What TGI answered for one request (`details: true`)."""

    text: str
    generated_tokens: int
    finish_reason: str
    latency_ms: float = 0.0
    # Requests sent to get this answer, retries included (0: taken from the chunk cache, not sent again).
    attempts: int = 1
    # The attempts' share of endpoint time and of the calling worker's time (sagebatch.endpoint.caller.ShareClock,
    # README "Cost"): 0 when the caller does not measure them, or the answer came from the chunk cache.
    endpoint_seconds: float = 0.0
    worker_seconds: float = 0.0
