"""Billing units of counted AWS requests (sagebatch.tooling.local.requests) and the cost bench's per-record view."""

from __future__ import annotations

from types import ModuleType

from sagebatch.tooling.local.requests import DynamoCapacity, billed_requests, memory_mb
from tests.conftest import load_bench


def _item(size_of_text: int) -> dict:
    return {"pk": {"S": "JOB#1"}, "sk": {"S": "META"}, "text": {"S": "x" * size_of_text}}


def test_an_sqs_batch_is_billed_per_started_64_kb_of_bodies():
    # Given a batch of two 40 KB messages (80 KB: two 64 KB chunks)
    entries = [{"Id": str(i), "MessageBody": "x" * 40_000} for i in range(2)]

    # When its billed requests are counted
    billed = billed_requests("sqs", "SendMessageBatch", {"Entries": entries}, None)

    # Then it is two requests, not one
    assert billed == 2


def test_an_update_is_billed_on_the_item_size_last_seen():
    # Given an item of about 3 KB read earlier
    capacity = DynamoCapacity()
    key = {"pk": {"S": "JOB#1"}, "sk": {"S": "META"}}
    capacity.units("GetItem", {"TableName": "t", "Key": key, "ConsistentRead": True}, {"Item": _item(3000)})

    # When a small counter update is made to it
    _, writes = capacity.units(
        "UpdateItem", {"TableName": "t", "Key": key, "ExpressionAttributeValues": {":one": {"N": "1"}}}, {}
    )

    # Then it costs the whole item's write units (3 KB: 3), not one
    assert writes == 3


def test_a_transaction_doubles_its_write_units():
    # Given a transaction of two small puts
    items = [{"Put": {"TableName": "t", "Item": _item(10) | {"sk": {"S": f"SHARD#{n}"}}}} for n in range(2)]

    # When its units are counted
    reads, writes = DynamoCapacity().units("TransactWriteItems", {"TransactItems": items}, {})

    # Then each item costs 2 write units
    assert (reads, writes) == (0, 4)


def test_an_eventually_consistent_read_costs_half_a_unit():
    # Given a read of a small item without ConsistentRead
    key = {"pk": {"S": "JOB#1"}, "sk": {"S": "META"}}

    # When its units are counted
    reads, _ = DynamoCapacity().units("GetItem", {"TableName": "t", "Key": key}, {"Item": _item(10)})

    # Then it is half a read unit
    assert reads == 0.5


def test_a_function_memory_size_overrides_the_globals():
    # Given a template with a global MemorySize and one function that sets its own
    template = {
        "Globals": {"Function": {"MemorySize": 1024}},
        "Resources": {"Worker": {"Properties": {"MemorySize": 512}}, "Intake": {"Properties": {}}},
    }

    # When each function's memory is read
    sizes = (memory_mb(template, "Worker"), memory_mb(template, "Intake"))

    # Then the worker's own wins and the intake takes the global
    assert sizes == (512, 1024)


def _load_bench() -> ModuleType:
    return load_bench("cost")


def test_only_the_functions_calls_count_as_aws_requests_per_record():
    # Given a run of 10 records whose functions made 4 DynamoDB calls and 10 endpoint calls, and whose harness and
    # event source made many more
    bench = _load_bench()
    row = {"billed_requests": 0.0, "read_units": 0.0, "write_units": 0.0, "empty_receives": 0}
    requests = [
        {"role": "functions", "service": "dynamodb", "operation": "GetItem", "calls": 4} | row,
        {"role": "functions", "service": "sagemaker-runtime", "operation": "InvokeEndpoint", "calls": 10} | row,
        {"role": "harness", "service": "dynamodb", "operation": "GetItem", "calls": 50} | row,
        {"role": "event source", "service": "sqs", "operation": "ReceiveMessage", "calls": 70} | row,
    ]
    measurement = bench.Measurement("w", 10, 1.0, "COMPLETED", 1290, 500, 60.0, 1.515, 3, requests, [])

    # When it is summarized
    summary = bench.summarize(measurement)

    # Then AWS requests per record are the functions' 4 calls over 10 records
    assert summary["aws_requests_per_record"] == 0.4
