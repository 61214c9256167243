"""A local SageMaker-runtime endpoint that behaves like TGI 1.1 on an ml.g5.2xlarge.

boto3 reaches it through `endpoint_url`: `POST /endpoints/<name>/invocations`. Errors come back the
way SageMaker wraps them (protocol.md 7.3-7.4): container errors as HTTP 424 `ModelError` with
`OriginalStatusCode`/`OriginalMessage` and the `x-amzn-ErrorType` header, so botocore raises the
same exception classes it raises against AWS.

`EmulatorConfig` is what the CLI builds from its flags: fault knobs (`FaultConfig`), the calibrated performance
model, or proxy mode (emulator/proxy.py), where a real TGI or OpenAI-compatible server plays the container.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sagebatch.tooling.emulator.proxy import Proxy, ProxyConfig
from sagebatch.tooling.emulator.tgi import TgiError, TgiLimits, deterministic_completion, render_response, validate

_INVOKE_PATH = re.compile(r"^/endpoints/(?P<name>[^/]+)/invocations$")
_ACCOUNT = "123456789012"
STATS_PATH = "/stats"


@dataclass(frozen=True)
class FaultConfig:
    """Probabilities of injected faults per request (0 = never).

    One random draw per request picks at most one outcome, so the four rates must add up to at most 1.
    The three errors are answered before admission (SageMaker-side, or an immediate container failure);
    a slow request is admitted first and holds its admission slot while it sleeps, like a slow generation.
    """

    server_error: float = 0.0  # container 5xx -> ModelError(OriginalStatusCode 500)
    throttling: float = 0.0  # SageMaker ThrottlingException (HTTP 400)
    not_ready: float = 0.0  # ModelNotReadyException (HTTP 429)
    slow: float = 0.0  # add `slow_seconds` before answering
    slow_seconds: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        rates = {"5xx": self.server_error, "throttling": self.throttling, "not-ready": self.not_ready, "slow": self.slow}
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate {name} must be within [0, 1], not {rate}")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise ValueError(f"fault rates must add up to at most 1, not {sum(rates.values()):g}")
        if self.slow_seconds < 0:
            raise ValueError("slow_seconds must be >= 0")


@dataclass
class EmulatorStats:
    requests: int = 0
    succeeded: int = 0
    validation_errors: int = 0
    overloaded: int = 0
    timeouts: int = 0
    injected_faults: int = 0
    slowed: int = 0
    upstream_errors: int = 0  # proxy mode: non-2xx, unreachable or timed-out upstream answers
    max_in_flight: int = 0
    in_flight: int = 0


class Emulator:
    """The endpoint's behaviour, independent of HTTP: body in, (status, headers, body) out."""

    def __init__(
        self,
        endpoint_name: str = "mistral-7b-instruct",
        limits: TgiLimits = TgiLimits(),
        faults: FaultConfig = FaultConfig(),
        scheduler: Any = None,
        max_concurrent_requests: int = 128,
        proxy: ProxyConfig | None = None,
    ):
        if proxy is not None and scheduler is not None:
            raise ValueError("proxy mode and the performance model cannot be combined: the upstream sets the timing")
        self.endpoint_name = endpoint_name
        self.limits = limits
        self.faults = faults
        self.scheduler = scheduler  # sagebatch.tooling.emulator.perf.TgiScheduler, or None to answer at once
        self.proxy = Proxy(proxy) if proxy is not None else None  # a real server plays the container
        self.max_concurrent_requests = max_concurrent_requests
        self.stats = EmulatorStats()
        self._lock = threading.Lock()
        self._random = random.Random(faults.seed)
        self.seen_inputs: list[str] = []  # for tests: what reached the "GPU"

    def stats_snapshot(self) -> dict[str, int]:
        """The counters at one instant (GET /stats)."""
        with self._lock:
            return asdict(self.stats)

    def invoke(self, endpoint_name: str, raw_body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.stats.requests += 1
            roll = self._random.random()
        if endpoint_name != self.endpoint_name:
            return _aws_error(400, "ValidationError", f"Endpoint {endpoint_name} of account {_ACCOUNT} not found.")
        fault = self._injected_fault(roll)
        if fault is not None:
            return fault
        slow = self._is_slow(roll)
        with self._lock:
            if self.scheduler is None and self.stats.in_flight >= self.max_concurrent_requests:  # else the scheduler admits
                self.stats.overloaded += 1
                return _model_error(self.endpoint_name, 429, {"error": "Model is overloaded", "error_type": "overloaded"})
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        try:
            if self.proxy is not None:
                self._sleep_if(slow)
                return self._forward(raw_body)
            return self._generate(raw_body, slow)
        finally:
            with self._lock:
                self.stats.in_flight -= 1

    def _injected_fault(self, roll: float) -> tuple[int, dict[str, str], bytes] | None:
        f = self.faults
        edges = [
            (
                f.server_error,
                lambda: _model_error(
                    self.endpoint_name, 500, {"error": "Request failed during generation: CUDA error", "error_type": "generation"}
                ),
            ),
            (f.throttling, lambda: _aws_error(400, "ThrottlingException", None)),
            (f.not_ready, lambda: _aws_error(429, "ModelNotReadyException", "Model is not ready yet")),
        ]
        edge = 0.0
        for probability, make in edges:
            edge += probability
            if roll < edge:
                with self._lock:
                    self.stats.injected_faults += 1
                return make()
        return None

    def _is_slow(self, roll: float) -> bool:
        f = self.faults
        edge = f.server_error + f.throttling + f.not_ready
        return edge <= roll < edge + f.slow

    def _sleep_if(self, slow: bool) -> None:
        if slow:
            with self._lock:
                self.stats.slowed += 1
            time.sleep(self.faults.slow_seconds)

    def _forward(self, raw_body: bytes) -> tuple[int, dict[str, str], bytes]:
        """Proxy mode: the upstream answers as the container; wrap its errors as SageMaker does."""
        assert self.proxy is not None
        status, body = self.proxy.invoke(raw_body)
        if status == 200:
            with self._lock:
                self.stats.succeeded += 1
            return 200, {"Content-Type": "application/json"}, body.encode()
        with self._lock:
            self.stats.upstream_errors += 1
            self.stats.timeouts += status == 0
        if status == 0:  # no answer within the proxy timeout: SageMaker's own timeout error
            return _timeout_error(self.endpoint_name)
        return _model_error(self.endpoint_name, status, body)

    def _generate(self, raw_body: bytes, slow: bool = False) -> tuple[int, dict[str, str], bytes]:
        permit = None
        if self.scheduler is not None:
            from sagebatch.tooling.emulator.perf import Overloaded

            try:
                permit = self.scheduler.admit()  # TGI admits before it validates
            except Overloaded:
                with self._lock:
                    self.stats.overloaded += 1
                return _model_error(self.endpoint_name, 429, {"error": "Model is overloaded", "error_type": "overloaded"})
        try:
            self._sleep_if(slow)
            try:
                body = json.loads(raw_body)
            except ValueError as error:
                return _model_error(self.endpoint_name, 400, f"Failed to parse the request body as JSON: {error}")
            try:
                request = validate(body, self.limits)
            except TgiError as error:
                with self._lock:
                    self.stats.validation_errors += 1
                return _model_error(self.endpoint_name, error.status, error.body)
            completion = deterministic_completion(request.inputs, request.max_new_tokens, eos=not request.never_eos)
            if self.scheduler is not None:
                from sagebatch.tooling.emulator.perf import ContainerTimeout

                try:
                    self.scheduler.generate(
                        permit, request.input_tokens, completion.generated_tokens, max_new_tokens=request.max_new_tokens
                    )
                    permit = None
                except ContainerTimeout:
                    permit = None
                    with self._lock:
                        self.stats.timeouts += 1
                    return _timeout_error(self.endpoint_name)
            with self._lock:
                self.stats.succeeded += 1
                self.seen_inputs.append(request.inputs)
            return 200, {"Content-Type": "application/json"}, json.dumps(render_response(request, completion)).encode()
        finally:
            if permit is not None:
                permit.release()


def _log_stream(endpoint_name: str) -> str:
    return f"arn:aws:logs:us-east-1:{_ACCOUNT}:log-group:/aws/sagemaker/Endpoints/{endpoint_name}"


def _model_error(endpoint_name: str, original_status: int, original_body: Any) -> tuple[int, dict[str, str], bytes]:
    original = original_body if isinstance(original_body, str) else json.dumps(original_body)
    side = "client" if original_status < 500 else "server"
    body = {
        "ErrorCode": "CLIENT_ERROR_FROM_MODEL" if side == "client" else "SERVER_ERROR_FROM_MODEL",
        "LogStreamArn": _log_stream(endpoint_name),
        "Message": f'Received {side} error ({original_status}) from primary with message "{original}". '
        f"See https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1#logEventViewer:group=/aws/sagemaker/Endpoints/{endpoint_name} "
        f"in account {_ACCOUNT} for more information.",
        "OriginalMessage": original,
        "OriginalStatusCode": original_status,
    }
    return 424, {"Content-Type": "application/json", "x-amzn-ErrorType": "ModelError"}, json.dumps(body).encode()


def _timeout_error(endpoint_name: str) -> tuple[int, dict[str, str], bytes]:
    message = (
        'Received server error (0) from primary with message "Your invocation timed out while waiting for a response '
        f'from container primary. Review the latency metrics for each container in Amazon CloudWatch, resolve the issue, and try again.". '
        f"See /aws/sagemaker/Endpoints/{endpoint_name} in account {_ACCOUNT} for more information."
    )
    body = {
        "ErrorCode": "INTERNAL_FAILURE_FROM_MODEL",
        "LogStreamArn": _log_stream(endpoint_name),
        "Message": message,
        "OriginalMessage": "",
        "OriginalStatusCode": 0,
    }
    return 424, {"Content-Type": "application/json", "x-amzn-ErrorType": "ModelError"}, json.dumps(body).encode()


def _aws_error(status: int, code: str, message: str | None) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", "x-amzn-ErrorType": code}, json.dumps({"message": message}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes; avoid delayed-ACK stalls
    emulator: Emulator  # set on the subclass made per server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        match = _INVOKE_PATH.match(self.path.split("?")[0])
        if not match:
            status, headers, body = _aws_error(404, "UnknownOperationException", f"no route for {self.path}")
        else:
            status, headers, body = self.emulator.invoke(match["name"], raw)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", "emulator")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == STATS_PATH:  # the counters, for a caller in another process (emulator/process.py)
            status, body = 200, json.dumps(self.emulator.stats_snapshot()).encode()
        elif self.path in ("/ping", "/health"):
            status, body = 200, b'{"status": "healthy"}'
        else:
            status, body = 404, b"{}"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep prompts and noise out of the console
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog, read when the socket starts listening (in the constructor): the default 5 drops the
    # connections of 120 callers that connect at once, which they see as connect timeouts.
    request_queue_size = 256


class EmulatorServer:
    """Serve an `Emulator` on loopback in a background thread."""

    def __init__(self, emulator: Emulator | None = None, host: str = "127.0.0.1", port: int = 0):
        self.emulator = emulator or Emulator()
        handler = type("Handler", (_Handler,), {"emulator": self.emulator})
        self._server = _Server((host, port), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="emulator", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host if isinstance(host, str) else host.decode()}:{port}"

    def start(self) -> EmulatorServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self.emulator.scheduler is not None:
            self.emulator.scheduler.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@dataclass(frozen=True)
class EmulatorConfig:
    """How to build the emulator, whatever starts it (`sagebatch emulator`, `sagebatch run`, tests).

    `perf` and `proxy` exclude each other: in proxy mode the upstream's own speed is the timing.
    `max_concurrent_requests` is TGI's admission limit (MAX_CONCURRENT_REQUESTS), in every mode.
    """

    faults: FaultConfig = FaultConfig()
    proxy: ProxyConfig | None = None
    perf: bool = False
    time_scale: float = 1.0
    max_concurrent_requests: int = 128

    def __post_init__(self) -> None:
        if self.perf and self.proxy is not None:
            raise ValueError("the performance model (--perf) and proxy mode (--proxy) cannot be combined")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        if self.max_concurrent_requests < 1:
            raise ValueError("max_concurrent_requests must be >= 1")

    def build(self, endpoint_name: str) -> Emulator:
        scheduler = None
        if self.perf:
            from sagebatch.tooling.emulator.perf import TgiScheduler

            scheduler = TgiScheduler(time_scale=self.time_scale, max_concurrent_requests=self.max_concurrent_requests)
        return Emulator(
            endpoint_name=endpoint_name,
            faults=self.faults,
            scheduler=scheduler,
            max_concurrent_requests=self.max_concurrent_requests,
            proxy=self.proxy,
        )
