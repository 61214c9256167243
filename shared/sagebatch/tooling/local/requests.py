"""Count the AWS requests a local run makes: by who made them, service and operation, with their billing units.

Every boto3 client is tagged when it is created, by where in the code it was created:

- `functions`: built by `sagebatch.lambdas.clients` (what the Lambda functions call, InvokeEndpoint included);
- `event source`: built by the local event source (tooling/local/runner.py), which stands in for Lambda's SQS event
  source mappings. On AWS their requests are billed SQS requests too, but the receives scale with time, not records;
- `harness`: anything else (the test or bench uploading the input, waiting for the job, reading the outputs).

Each API call (`BaseClient._make_api_call`, so one per call whatever its outcome; SDK retries are not seen, and moto
never throttles) is counted under (role, service, operation) with what AWS bills for it. Those units are
approximations, since moto reports no ConsumedCapacity:

- SQS: one request per started 64 KB of payload (sent bodies; received bodies for ReceiveMessage), at least one;
- DynamoDB: write units = started KB of the item (PutItem: the item sent; UpdateItem / DeleteItem: the larger of
  the item's last known size, learned from earlier writes and reads of the same key, and the key plus the values
  sent), 2x inside TransactWriteItems; read units = started 4 KB of what was returned (GetItem, Query: the items'
  total), at least one, halved for eventually consistent reads, 2x inside TransactGetItems;
- EventBridge: one event per PutEvents entry; everything else: one per call.

Lambda invocations and their durations are measured by `LambdaMeter`, which wraps the handlers the functions'
entry points call (sagebatch.lambdas.handlers), whatever runs them.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FUNCTIONS = "functions"
EVENT_SOURCE = "event source"
HARNESS = "harness"
ROLES = (FUNCTIONS, EVENT_SOURCE, HARNESS)

_ROLE_ATTRIBUTE = "_sagebatch_request_role"
_SQS_CHUNK = 64 * 1024
_WRITE_UNIT = 1024
_READ_UNIT = 4 * 1024


@dataclass(frozen=True)
class RequestKey:
    role: str
    service: str  # botocore's service name: s3, sqs, dynamodb, events, sns, sagemaker-runtime
    operation: str


@dataclass
class Tally:
    """What the calls of one (role, service, operation) add up to."""

    calls: int = 0
    billed_requests: float = 0.0  # SQS 64 KB chunks, EventBridge entries, else = calls
    read_units: float = 0.0  # DynamoDB RRU
    write_units: float = 0.0  # DynamoDB WRU
    empty_receives: int = 0  # ReceiveMessage calls that returned no message


class RequestCounter:
    """Thread-safe tallies of the calls seen while `counting_requests` is active."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.tallies: dict[RequestKey, Tally] = {}
        self._capacity = DynamoCapacity()

    def record(self, role: str, service: str, operation: str, params: Mapping[str, Any], response: Any) -> None:
        with self._lock:
            tally = self.tallies.setdefault(RequestKey(role, service, operation), Tally())
            tally.calls += 1
            tally.billed_requests += billed_requests(service, operation, params, response)
            if service == "dynamodb":
                reads, writes = self._capacity.units(operation, params, response)
                tally.read_units += reads
                tally.write_units += writes
            if operation == "ReceiveMessage" and not (response or {}).get("Messages"):
                tally.empty_receives += 1

    def rows(self) -> list[tuple[RequestKey, Tally]]:
        with self._lock:
            return sorted(self.tallies.items(), key=lambda kv: (kv[0].role, kv[0].service, kv[0].operation))

    def total(self, role: str | None = None, service: str | None = None, operation: str | None = None) -> Tally:
        """The sum over the keys matching every given field."""
        out = Tally()
        for key, tally in self.rows():
            wanted = ((role, key.role), (service, key.service), (operation, key.operation))
            if any(want is not None and want != have for want, have in wanted):
                continue
            out.calls += tally.calls
            out.billed_requests += tally.billed_requests
            out.read_units += tally.read_units
            out.write_units += tally.write_units
            out.empty_receives += tally.empty_receives
        return out


@contextmanager
def counting_requests(event_source_modules: Iterable[str] = ("sagebatch.tooling.local.runner",)) -> Iterator[RequestCounter]:
    """Count every API call of every boto3 client created inside the block (clients created before it count as
    `harness`). `event_source_modules` name the modules whose clients are the event source's."""
    from botocore.client import BaseClient, ClientCreator

    from sagebatch.lambdas import clients

    counter = RequestCounter()
    functions_file = _source_file(clients.__name__)
    event_source_files = {_source_file(name) for name in event_source_modules}
    original_create = ClientCreator.create_client
    original_call = BaseClient._make_api_call

    def create_client(self: Any, *args: Any, **kwargs: Any) -> Any:
        made = original_create(self, *args, **kwargs)
        setattr(made, _ROLE_ATTRIBUTE, _creator_role(functions_file, event_source_files))
        return made

    def make_api_call(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        response = None
        try:
            response = original_call(self, operation_name, api_params)
            return response
        finally:  # a failed call (a condition not met, a cancelled transaction) is billed too
            role = getattr(self, _ROLE_ATTRIBUTE, HARNESS)
            counter.record(role, self.meta.service_model.service_name, operation_name, api_params, response)

    ClientCreator.create_client = create_client
    BaseClient._make_api_call = make_api_call
    try:
        yield counter
    finally:
        ClientCreator.create_client = original_create
        BaseClient._make_api_call = original_call


def _source_file(module: str) -> str:
    __import__(module)
    return str(Path(sys.modules[module].__file__ or "").resolve())


def _creator_role(functions_file: str, event_source_files: set[str]) -> str:
    """The role of the code creating a client, decided by the innermost frame outside the SDK: the functions' client
    factory, the event source's module, or anything else (a harness callback run by the event source is harness)."""
    frame = sys._getframe(2)
    while frame is not None and _in_sdk(frame.f_code.co_filename):
        frame = frame.f_back  # type: ignore[assignment]
    path = str(Path(frame.f_code.co_filename).resolve()) if frame is not None else ""
    if path == functions_file:
        return FUNCTIONS
    if path in event_source_files:
        return EVENT_SOURCE
    return HARNESS


_SDK_PACKAGES = tuple(f"{os.sep}{name}{os.sep}" for name in ("boto3", "botocore", "s3transfer"))


def _in_sdk(filename: str) -> bool:
    return any(package in filename for package in _SDK_PACKAGES) or filename == __file__


# -- billing units ----------------------------------------------------------------------------------------------


def billed_requests(service: str, operation: str, params: Mapping[str, Any], response: Any) -> float:
    """Requests as the service bills them: SQS per started 64 KB, EventBridge per entry, else one per call."""
    if service == "sqs":
        return float(max(1, math.ceil(_sqs_payload_bytes(operation, params, response) / _SQS_CHUNK)))
    if service == "events" and operation == "PutEvents":
        return float(len(params.get("Entries", [])))
    return 1.0


def _sqs_payload_bytes(operation: str, params: Mapping[str, Any], response: Any) -> int:
    if operation == "SendMessage":
        return _utf8(params.get("MessageBody", ""))
    if operation == "SendMessageBatch":
        return sum(_utf8(entry.get("MessageBody", "")) for entry in params.get("Entries", []))
    if operation == "ReceiveMessage":
        return sum(_utf8(message.get("Body", "")) for message in (response or {}).get("Messages", []))
    return 0


def _utf8(text: str) -> int:
    return len(text.encode("utf-8"))


def attribute_size(value: Mapping[str, Any]) -> int:
    """Bytes DynamoDB counts for one typed attribute value (its name not included)."""
    ((kind, inner),) = value.items()
    if kind == "S":
        return _utf8(inner)
    if kind == "N":
        return (len(str(inner).lstrip("-").replace(".", "")) + 1) // 2 + 1
    if kind == "B":
        return len(inner)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(_utf8(s) for s in inner)
    if kind == "NS":
        return sum(attribute_size({"N": n}) for n in inner)
    if kind == "BS":
        return sum(len(b) for b in inner)
    if kind == "L":
        return 3 + sum(1 + attribute_size(v) for v in inner)
    if kind == "M":
        return 3 + sum(1 + _utf8(k) + attribute_size(v) for k, v in inner.items())
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def item_size(item: Mapping[str, Mapping[str, Any]]) -> int:
    """Bytes of a typed item: each attribute's name plus its value."""
    return sum(_utf8(name) + attribute_size(value) for name, value in item.items())


@dataclass
class DynamoCapacity:
    """Approximate read and write units per call (see the module docstring), remembering items' sizes by key."""

    key_names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # table -> key attribute names, learned
    sizes: dict[tuple[str, str], int] = field(default_factory=dict)  # (table, key) -> last known item size

    def units(self, operation: str, params: Mapping[str, Any], response: Any) -> tuple[float, float]:
        """(read units, write units) of one call."""
        response = response or {}
        table = str(params.get("TableName", ""))
        if operation == "PutItem":
            return 0.0, self._put(table, params["Item"])
        if operation in ("UpdateItem", "DeleteItem"):
            return 0.0, self._keyed_write(table, params)
        if operation == "GetItem":
            return self._get(table, params, response.get("Item")), 0.0
        if operation in ("Query", "Scan"):
            return self._query(table, params, response.get("Items", [])), 0.0
        if operation == "TransactWriteItems":
            return 0.0, 2 * sum(self._transact_write(entry) for entry in params.get("TransactItems", []))
        if operation == "TransactGetItems":
            gets = [entry["Get"] for entry in params.get("TransactItems", [])]
            found = [r.get("Item") for r in response.get("Responses", [{}] * len(gets))]
            return 2 * sum(self._get(g["TableName"], g | {"ConsistentRead": True}, item) for g, item in zip(gets, found)), 0.0
        if operation == "BatchWriteItem":
            writes = 0.0
            for name, requests in params.get("RequestItems", {}).items():
                for request in requests:
                    put = request.get("PutRequest")
                    writes += self._put(name, put["Item"]) if put else self._keyed_write(name, request["DeleteRequest"])
            return 0.0, writes
        if operation == "BatchGetItem":
            reads = 0.0
            for name, items in response.get("Responses", {}).items():
                consistent = bool(params.get("RequestItems", {}).get(name, {}).get("ConsistentRead"))
                reads += sum(_read_units(item_size(item), consistent) for item in items)
            return reads, 0.0
        return 0.0, 0.0  # control-plane calls (CreateTable, DescribeTable, ...): not request units

    def _put(self, table: str, item: Mapping[str, Any]) -> float:
        size = item_size(item)
        key = self._key_of(table, item)
        if key is not None:
            self.sizes[(table, key)] = size
        return _write_units(size)

    def _keyed_write(self, table: str, params: Mapping[str, Any]) -> float:
        key_values = params["Key"]
        self.key_names.setdefault(table, tuple(sorted(key_values)))
        key = _key_text(key_values)
        sent = item_size(key_values) + sum(attribute_size(v) for v in params.get("ExpressionAttributeValues", {}).values())
        size = max(self.sizes.get((table, key), 0), sent)
        self.sizes[(table, key)] = size
        return _write_units(size)

    def _transact_write(self, entry: Mapping[str, Any]) -> float:
        ((kind, body),) = entry.items()
        if kind == "Put":
            return self._put(body["TableName"], body["Item"])
        return self._keyed_write(body["TableName"], body)  # Update, Delete, ConditionCheck

    def _get(self, table: str, params: Mapping[str, Any], item: Mapping[str, Any] | None) -> float:
        self.key_names.setdefault(table, tuple(sorted(params["Key"])))
        size = 0
        if item is not None:
            size = item_size(item)
            self.sizes[(table, _key_text(params["Key"]))] = size
        return _read_units(size, bool(params.get("ConsistentRead")))

    def _query(self, table: str, params: Mapping[str, Any], items: list[Mapping[str, Any]]) -> float:
        total = 0
        for item in items:
            size = item_size(item)
            total += size
            key = self._key_of(table, item)
            if key is not None:
                self.sizes[(table, key)] = size
        return _read_units(total, bool(params.get("ConsistentRead")))

    def _key_of(self, table: str, item: Mapping[str, Any]) -> str | None:
        names = self.key_names.get(table)
        if not names or not all(name in item for name in names):
            return None
        return _key_text({name: item[name] for name in names})


def _key_text(key: Mapping[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, default=str)


def _write_units(size: int) -> float:
    return float(max(1, math.ceil(size / _WRITE_UNIT)))


def _read_units(size: int, consistent: bool) -> float:
    units = float(max(1, math.ceil(size / _READ_UNIT)))
    return units if consistent else units / 2


# -- Lambda invocations -------------------------------------------------------------------------------------------


@dataclass
class Invocations:
    """One function's invocations and their summed duration (host seconds)."""

    count: int = 0
    seconds: float = 0.0


class LambdaMeter:
    """Times each handler invocation, keyed by the function name in its Lambda context."""

    HANDLERS = ("intake", "worker", "finalizer")  # sagebatch.lambdas.handlers, one per function entry point

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.by_function: dict[str, Invocations] = {}
        self.handler_of: dict[str, str] = {}  # function name -> the handler it ran (intake, worker, finalizer)

    def wrap(self, handler_name: str, handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def timed(event: Any, context: Any) -> Any:
            started = self._clock()
            try:
                return handler(event, context)
            finally:
                self._add(str(getattr(context, "function_name", handler_name)), handler_name, self._clock() - started)

        return timed

    def _add(self, function: str, handler_name: str, seconds: float) -> None:
        with self._lock:
            invocations = self.by_function.setdefault(function, Invocations())
            invocations.count += 1
            invocations.seconds += seconds
            self.handler_of[function] = handler_name


@contextmanager
def metering_lambdas(clock: Callable[[], float] = time.monotonic) -> Iterator[LambdaMeter]:
    """Wrap the handlers of sagebatch.lambdas.handlers (the entry points look them up at each call)."""
    from sagebatch.lambdas import handlers

    meter = LambdaMeter(clock)
    originals = {name: getattr(handlers, name) for name in LambdaMeter.HANDLERS}
    for name, handler in originals.items():
        setattr(handlers, name, meter.wrap(name, handler))
    try:
        yield meter
    finally:
        for name, handler in originals.items():
            setattr(handlers, name, handler)


def memory_mb(template: Mapping[str, Any], function: str, resolve: Callable[[Any], Any] = lambda v: v) -> int:
    """The function's MemorySize from the template: its own, else Globals, else Lambda's default (128)."""
    props = template["Resources"][function].get("Properties", {})
    value = props.get("MemorySize", template.get("Globals", {}).get("Function", {}).get("MemorySize", 128))
    return int(resolve(value))
