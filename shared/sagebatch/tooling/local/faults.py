"""Fault injection for the local stack: AWS calls that fail the way AWS fails, a worker that dies, an endpoint
that errs, slows down or times out.

AWS faults are injected at botocore's `before-send` event (aws-reliability.md 10, trap 4), so the SDK's own
retry logic (standard mode, its attempt limit, which codes it retries) still applies to every injected attempt.
Under moto there is one subtlety: moto's stubber is itself a `before-send` handler and botocore calls *every*
`before-send` handler, so an error response returned next to it would still let moto execute the call (a write
that "failed" would be stored). `Interceptor` therefore takes moto's stubber's place on the hooked client and
calls it only for the sends it lets through: a failed attempt has no side effect, as on AWS.

Typical use, after `local_stack()` is up (the service's clients are the cached ones in `adapters.clients`)::

    with fail_calls("dynamodb", "TransactWriteItems", THROTTLED, times=3) as rule:
        ...                       # the first 3 sends get a 400 ProvisionedThroughputExceededException
    assert rule.fired == 3

`CallLog` records which calls succeeded (with their API parameters), for "written once" checks, and
`FaultyEmulator` / `emulator_faults` make the endpoint emulator slow or failing for a while.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock
from urllib.parse import unquote, urlparse

from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.exceptions import ReadTimeoutError

from sagebatch.tooling.emulator.server import Emulator, FaultConfig
from sagebatch.tooling.local.runner import SimulatedCrash

_moto_stubber: Any
try:  # moto is a test/local dependency; without it sends simply go out over the network
    from moto.core.models import botocore_stubber as _moto_stubber
except ImportError:  # pragma: no cover
    _moto_stubber = None

SERVICES = ("dynamodb", "s3", "sqs", "sagemaker-runtime")

# moto's backends are not thread-safe. Above all, moto's TransactWriteItems deep-copies the table first and
# restores that copy when the transaction is cancelled: two concurrent transactions (two workers completing the
# same shard) can wipe the winner's writes, which DynamoDB (serializable transactions) never does. Calls that go
# through an `Interceptor` are therefore handed to moto one at a time; see `serialize_moto`.
_MOTO_LOCK = threading.RLock()


class InjectedCrash(SimulatedCrash):
    """The process 'died' at this call. Not an AWS error: botocore does not retry it, nothing catches it as one."""


@dataclass(frozen=True)
class AwsError:
    """An error response as the service would send it (code, HTTP status, message)."""

    code: str
    status: int
    message: str = "injected fault"


THROTTLED = AwsError(
    "ProvisionedThroughputExceededException",
    400,
    "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level.",
)
DYNAMODB_INTERNAL = AwsError("InternalServerError", 500, "Internal server error")
S3_SLOW_DOWN = AwsError("SlowDown", 503, "Please reduce your request rate.")
S3_INTERNAL_ERROR = AwsError("InternalError", 500, "We encountered an internal error. Please try again.")
SQS_UNAVAILABLE = AwsError("ServiceUnavailable", 503, "Service is unavailable. Try again later.")


# -- the request as a hook sees it --------------------------------------------------------------------
@dataclass
class SentRequest:
    """One attempt about to be sent: service, operation and the wire request."""

    service: str
    operation: str
    request: AWSPreparedRequest

    @property
    def url(self) -> str:
        return self.request.url

    @property
    def path(self) -> str:
        return unquote(urlparse(self.request.url).path)

    @property
    def body(self) -> bytes:
        body = self.request.body
        if body is None:
            return b""
        if isinstance(body, (bytes, bytearray)):
            return bytes(body)
        if isinstance(body, str):
            return body.encode("utf-8")
        body = getattr(body, "_raw", body)  # botocore's aws-chunked (checksum) wrapper around an upload's stream
        if hasattr(body, "read") and hasattr(body, "seek") and hasattr(body, "tell"):  # S3 uploads send a stream
            position = body.tell()
            try:
                data = body.read()
            finally:
                body.seek(position)
            return data if isinstance(data, bytes) else b""
        return b""

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            return {}


def result_lines_of(sent: SentRequest) -> set[int]:
    """The input lines whose results an S3 PutObject of a shard's checkpoint or part stores (empty for any other send)."""
    if sent.service != "s3" or sent.operation != "PutObject" or "/parts/" not in sent.path:
        return set()
    return _lines_in(sent.body)


def _lines_in(body: bytes) -> set[int]:
    lines = set()
    for raw in body.split(b"\n"):
        try:
            lines.add(int(json.loads(raw)["line"]))
        except (ValueError, KeyError, TypeError):
            continue
    return lines


def endpoint_line_of(sent: SentRequest, tag: str) -> int | None:
    """The marked line (see `marked_records`) an InvokeEndpoint send is generating, or None."""
    if sent.service != "sagemaker-runtime":
        return None
    match = re.search(rf"\[{re.escape(tag)}#(\d+)\]", str(sent.json().get("inputs", "")))
    return int(match.group(1)) if match else None


def s3_key_endswith(suffix: str) -> Callable[[SentRequest], bool]:
    return lambda sent: sent.service == "s3" and sent.path.endswith(suffix)


# -- responses ------------------------------------------------------------------------------------------
class _Raw:
    def __init__(self, body: bytes):
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def error_response(protocol: str, request: AWSPreparedRequest, error: AwsError) -> AWSResponse:
    """`error` encoded the way a service of `protocol` encodes errors (botocore parses it into a ClientError)."""
    if protocol in ("rest-xml", "query", "ec2"):
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{error.code}</Code><Message>{error.message}</Message><RequestId>injected</RequestId></Error>"
        ).encode()
        if protocol == "query":
            body = f"<ErrorResponse><Error><Type>Sender</Type><Code>{error.code}</Code><Message>{error.message}</Message></Error></ErrorResponse>".encode()
        headers = {"Content-Type": "application/xml", "x-amz-request-id": "injected"}
    else:
        body = json.dumps({"__type": error.code, "message": error.message}).encode()
        headers = {
            "Content-Type": "application/x-amz-json-1.0" if protocol == "json" else "application/json",
            "x-amzn-ErrorType": error.code,
            "x-amzn-query-error": f"{error.code};Sender",  # SQS (awsQueryCompatible)
            "x-amzn-RequestId": "injected",
        }
    return AWSResponse(request.url, error.status, headers, _Raw(body))


@dataclass(frozen=True)
class After:
    """An action that first runs `prepare()` (e.g. waits until the endpoint answered), then does `action`."""

    prepare: Callable[[], Any]
    action: Any


Action = AwsError | BaseException | type | After | Callable[[SentRequest], Any]


@dataclass
class Rule:
    """Fail sends of `operation` (None: any) that `match`, `times` times (None: always) after `skip` matches."""

    operation: str | None
    action: Action
    times: int | None = 1
    match: Callable[[SentRequest], bool] | None = None
    skip: int = 0
    matched: int = 0  # matching sends seen
    fired: int = 0  # faults injected
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, sent: SentRequest) -> bool:
        """Whether this send gets the fault (counts it)."""
        if self.operation not in (None, "*", sent.operation):
            return False
        if self.match is not None and not self.match(sent):
            return False
        with self._lock:
            self.matched += 1
            if self.matched <= self.skip:
                return False
            if self.times is not None and self.fired >= self.times:
                return False
            self.fired += 1
            return True

    def apply(self, sent: SentRequest, protocol: str, action: Action | None = None) -> AWSResponse | None:
        action = self.action if action is None else action
        if isinstance(action, After):
            action.prepare()
            return self.apply(sent, protocol, action.action)
        if isinstance(action, AwsError):
            return error_response(protocol, sent.request, action)
        if isinstance(action, BaseException):
            raise action
        if isinstance(action, type) and issubclass(action, BaseException):
            exception_type: type[BaseException] = action
            raise exception_type(f"injected at {sent.service}.{sent.operation}")
        respond: Callable[[SentRequest], Any] = action  # the Union's last member
        return respond(sent)


class Interceptor:
    """Sits in moto's stubber's place in one client's `before-send`; applies the active rules, else delegates."""

    _ATTRIBUTE = "_sagebatch_fault_interceptor"
    _install_lock = threading.Lock()

    def __init__(self, client: Any):
        self.client = client
        self.service = client.meta.service_model.service_id.hyphenize()
        self.protocol = client.meta.service_model.protocol
        self.rules: list[Rule] = []
        self._lock = threading.Lock()

    @classmethod
    def of(cls, client: Any) -> Interceptor:
        with cls._install_lock:
            interceptor = getattr(client, cls._ATTRIBUTE, None)
            if interceptor is None:
                interceptor = cls(client)
                if _moto_stubber is not None:
                    client.meta.events.unregister("before-send", _moto_stubber)
                client.meta.events.register("before-send", interceptor._dispatch)
                setattr(client, cls._ATTRIBUTE, interceptor)
            return interceptor

    def add(self, rule: Rule) -> None:
        with self._lock:
            self.rules.append(rule)

    def remove(self, rule: Rule) -> None:
        with self._lock:
            if rule in self.rules:
                self.rules.remove(rule)

    def _dispatch(self, event_name: str, request: AWSPreparedRequest, **kwargs: Any) -> AWSResponse | None:
        sent = SentRequest(self.service, event_name.rsplit(".", 1)[-1], request)
        with self._lock:
            rules = list(self.rules)
        for rule in rules:
            if rule.take(sent):
                response = rule.apply(sent, self.protocol)
                if response is not None:
                    return response
                break  # the action did its own thing (e.g. forwarded the request) and let it through
        if _moto_stubber is None:
            return None
        if self.service == "sagemaker-runtime":  # the emulator is real HTTP: nothing for moto to do
            return _moto_stubber(event_name=event_name, request=request, **kwargs)
        with _MOTO_LOCK:
            return _moto_stubber(event_name=event_name, request=request, **kwargs)


def serialize_moto(services: Iterable[str | Any] = SERVICES) -> None:
    """Hand the service clients' calls to moto one at a time (each request atomic, as on AWS)."""
    for service in services:
        Interceptor.of(service_client(service))


def service_client(service: str | Any) -> Any:
    """The service's own cached client for `service` (a client object is returned as is)."""
    if not isinstance(service, str):
        return service
    from sagebatch.lambdas.clients import client, runtime_client

    return runtime_client() if service == "sagemaker-runtime" else client(service)


@contextmanager
def fail_calls(
    service: str | Any,
    operation: str | None,
    action: Action,
    *,
    times: int | None = 1,
    match: Callable[[SentRequest], bool] | None = None,
    skip: int = 0,
) -> Iterator[Rule]:
    """Inject `action` into the first `times` sends (after `skip`) of `operation` that `match`, for the block.

    `action` is an `AwsError` (an error response: the SDK may retry it), an exception (raised: the SDK does not
    retry it unless it is a botocore connection/HTTP error) or a callable(SentRequest) returning a response,
    raising, or returning None to let the send through.
    """
    rule = Rule(operation, action, times, match, skip)
    interceptor = Interceptor.of(service_client(service))
    interceptor.add(rule)
    try:
        yield rule
    finally:
        interceptor.remove(rule)


# -- a dying process --------------------------------------------------------------------------------------
class ProcessKill:
    """Simulates the worker's process dying: after `trigger()`, every send on the given clients raises
    `InjectedCrash` (nothing more reaches AWS or the endpoint) until `revive()`."""

    def __init__(self, services: Iterable[str | Any] = SERVICES):
        self.killed = threading.Event()
        self.killed_at: float | None = None
        self._rules: list[tuple[Interceptor, Rule]] = []
        for service in services:
            interceptor = Interceptor.of(service_client(service))
            rule = Rule(None, InjectedCrash("the process is dead"), times=None, match=lambda _s: self.killed.is_set())
            with interceptor._lock:
                interceptor.rules.insert(0, rule)
            self._rules.append((interceptor, rule))

    def trigger(self, reason: str = "killed") -> None:
        if not self.killed.is_set():
            self.killed_at = time.monotonic()
            self.killed.set()
        raise InjectedCrash(reason)

    def revive(self) -> None:
        self.killed.clear()

    def close(self) -> None:
        for interceptor, rule in self._rules:
            interceptor.remove(rule)


# -- endpoint faults --------------------------------------------------------------------------------------
def forward_then_time_out(sent: SentRequest) -> None:
    """Send the request to the (local) endpoint for real, then act as if the client's read timed out:
    the GPU did the work, the caller never sees the answer."""
    request = urllib.request.Request(
        sent.url,
        data=sent.body,
        method=sent.request.method,
        headers={k: v for k, v in sent.request.headers.items() if k.lower() in ("content-type", "accept")},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
    except urllib.error.HTTPError:
        pass
    raise ReadTimeoutError(endpoint_url=sent.url, error="injected read timeout")


class FaultyEmulator(Emulator):
    """The emulator, plus a generation delay held *inside* the in-flight slot (so concurrency really
    builds up and `max_concurrent_requests` answers 429 to the excess, as TGI does)."""

    def __init__(self, *args: Any, generation_delay_s: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.generation_delay_s = generation_delay_s

    def _generate(self, raw_body: bytes, *args: Any, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        if self.generation_delay_s:
            time.sleep(self.generation_delay_s)
        return super()._generate(raw_body, *args, **kwargs)


@contextmanager
def emulator_faults(
    emulator: Emulator, faults: FaultConfig, *, requests: int | None = None, seconds: float | None = None
) -> Iterator[Emulator]:
    """Make the emulator fail/slow with `faults` for the block, or only for a while (a burst): until `requests`
    more requests have arrived or `seconds` have passed, whichever comes first. Then the previous behaviour
    is back (checked every millisecond, so a burst may overrun by the odd request)."""
    import random

    previous, previous_random = emulator.faults, emulator._random
    restored = threading.Event()

    def restore() -> None:
        if not restored.is_set():
            restored.set()
            emulator.faults, emulator._random = previous, previous_random

    emulator._random = random.Random(faults.seed)
    emulator.faults = faults
    watcher = None
    if requests is not None or seconds is not None:
        first_request = emulator.stats.requests
        deadline = time.monotonic() + seconds if seconds is not None else None

        def watch() -> None:
            while not restored.is_set():
                if requests is not None and emulator.stats.requests - first_request >= requests:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                time.sleep(0.001)
            restore()

        watcher = threading.Thread(target=watch, name="emulator-fault-burst", daemon=True)
        watcher.start()
    try:
        yield emulator
    finally:
        restore()
        if watcher is not None:
            watcher.join(1)


# -- faster SDK backoff -----------------------------------------------------------------------------------
@contextmanager
def fast_sdk_backoff(scale: float = 0.01) -> Iterator[None]:
    """Shrink botocore's standard-mode retry delays by `scale` (attempt counts and retried codes unchanged),
    so a fault that exhausts 5 attempts of throttling backoff (~7.5 s expected) costs milliseconds."""
    from botocore.retries.standard import ExponentialBackoff

    original = ExponentialBackoff.delay_amount

    def scaled(self: Any, context: Any) -> float:
        return original(self, context) * scale

    with mock.patch.object(ExponentialBackoff, "delay_amount", scaled):
        yield


# -- what happened ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    service: str
    operation: str
    params: dict[str, Any]
    status: int


class CallLog:
    """Every call the given clients made, with its API parameters and final HTTP status (after SDK retries)."""

    _KEY = "sagebatch_faults_params"

    def __init__(self, services: Iterable[str | Any] = SERVICES):
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._hooks: list[tuple[Any, str, Callable[..., Any]]] = []
        for service in services:
            client = service_client(service)
            for event, hook in (("before-parameter-build", self._stash), ("after-call", self._record)):
                client.meta.events.register(event, hook)
                self._hooks.append((client, event, hook))

    def _stash(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context[self._KEY] = dict(params)

    def _record(self, http_response: Any, model: Any, context: dict[str, Any], **_: Any) -> None:
        call = Call(
            model.service_model.service_id.hyphenize(),
            model.name,
            context.get(self._KEY, {}),
            getattr(http_response, "status_code", 0),
        )
        with self._lock:
            self.calls.append(call)

    def succeeded(self, service: str, operation: str, where: Callable[[dict[str, Any]], bool] = lambda p: True) -> list[Call]:
        with self._lock:
            calls = list(self.calls)
        return [c for c in calls if c.service == service and c.operation == operation and c.status < 300 and where(c.params)]

    def s3_writes(self, key: str) -> int:
        """Successful writes of `key` (PutObject, or a completed multipart upload)."""
        return sum(
            len(self.succeeded("s3", op, lambda p: p.get("Key") == key)) for op in ("PutObject", "CompleteMultipartUpload")
        )

    def messages_sent(self, queue_url: str, contains: str = "") -> int:
        """Messages successfully sent to `queue_url` whose body contains `contains`."""
        count = len(
            self.succeeded(
                "sqs", "SendMessage", lambda p: p.get("QueueUrl") == queue_url and contains in p.get("MessageBody", "")
            )
        )
        with self._lock:
            calls = list(self.calls)
        for call in calls:
            if (
                call.service == "sqs"
                and call.operation == "SendMessageBatch"
                and call.status < 300
                and call.params.get("QueueUrl") == queue_url
            ):
                count += sum(contains in e.get("MessageBody", "") for e in call.params.get("Entries", []))
        return count

    def stored_result_lines(self) -> set[int]:
        """Lines whose result a successful PutObject of a shard's checkpoint or part stored."""
        lines: set[int] = set()
        for call in self.succeeded("s3", "PutObject"):
            body: Any = call.params.get("Body")
            if body is not None and hasattr(body, "getvalue"):  # botocore hands the upload on as a BytesIO
                body = body.getvalue()
            if "/parts/" in str(call.params.get("Key", "")) and isinstance(body, (bytes, bytearray)):
                lines |= _lines_in(bytes(body))
        return lines

    def close(self) -> None:
        for client, event, hook in self._hooks:
            client.meta.events.unregister(event, hook)


# -- marked input lines -----------------------------------------------------------------------------------
def marked_records(tag: str, count: int) -> list[dict[str, Any]]:
    """`count` prompt records whose prompts carry `[tag#n]`, so each endpoint input names its line."""
    return [{"id": f"{tag}-{n}", "prompt": f"Answer in one word [{tag}#{n}]."} for n in range(1, count + 1)]


def generations_per_line(inputs: Iterable[str], tag: str) -> Counter[int]:
    """How many successful generations each marked line got (from `Emulator.seen_inputs`)."""
    pattern = re.compile(rf"\[{re.escape(tag)}#(\d+)\]")
    counts: Counter[int] = Counter()
    for text in inputs:
        for match in set(pattern.findall(text)):
            counts[int(match)] += 1
    return counts
