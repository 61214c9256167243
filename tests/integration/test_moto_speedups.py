"""The local stack's moto speedups keep moto's answers: TransactWriteItems (only the touched items saved for a
rollback) stays all-or-nothing, ReceiveMessage (retention read from the queue) still drops expired messages."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from sagebatch.tooling.local.moto_speedups import moto_speedups
from sagebatch.tooling.local.stack import ACCOUNT, REGION

TABLE = "jobs"


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with mock_aws(), moto_speedups():
        client = boto3.client("dynamodb", region_name=REGION)
        client.create_table(
            TableName=TABLE,
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            BillingMode="PAY_PER_REQUEST",
        )
        for shard in range(50):  # items the transactions below do not touch
            client.put_item(TableName=TABLE, Item={"pk": {"S": "JOB#j"}, "sk": {"S": f"SHARD#{shard:08d}"}})
        client.put_item(TableName=TABLE, Item={"pk": {"S": "JOB#j"}, "sk": {"S": "META"}, "done": {"N": "0"}})
        yield client


def complete_shard(shard: str) -> dict[str, Any]:
    """The shape of DynamoJobStore.complete_shard: put the shard marker if absent, add one to the job's count."""
    return {
        "TransactItems": [
            {
                "Put": {
                    "TableName": TABLE,
                    "Item": {"pk": {"S": "JOB#j"}, "sk": {"S": shard}},
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            {
                "Update": {
                    "TableName": TABLE,
                    "Key": {"pk": {"S": "JOB#j"}, "sk": {"S": "META"}},
                    "UpdateExpression": "ADD done :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}},
                }
            },
        ]
    }


def done(client: Any) -> int:
    item = client.get_item(TableName=TABLE, Key={"pk": {"S": "JOB#j"}, "sk": {"S": "META"}})["Item"]
    return int(item["done"]["N"])


def test_a_transaction_whose_conditions_hold_writes_every_item(dynamodb: Any) -> None:
    # Given a shard not yet marked done
    # When the transaction marks it and counts it
    dynamodb.transact_write_items(**complete_shard("SHARD#new"))

    # Then both writes are there
    assert done(dynamodb) == 1
    assert "Item" in dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "JOB#j"}, "sk": {"S": "SHARD#new"}})


def test_a_cancelled_transaction_leaves_its_other_items_as_they_were(dynamodb: Any) -> None:
    # Given a shard already marked done (its Put's condition fails), listed after the job's update
    request = complete_shard("SHARD#00000007")
    request["TransactItems"].reverse()  # moto applies the update before it reaches the failing put

    # When the transaction is sent
    with pytest.raises(dynamodb.exceptions.TransactionCanceledException):
        dynamodb.transact_write_items(**request)

    # Then the job's count is not touched
    assert done(dynamodb) == 0


def test_a_cancelled_transaction_removes_an_item_it_created(dynamodb: Any) -> None:
    # Given a transaction whose first write creates an item and whose second fails its condition
    request = {
        "TransactItems": [
            {"Put": {"TableName": TABLE, "Item": {"pk": {"S": "JOB#j"}, "sk": {"S": "SHARD#fresh"}}}},
            {
                "ConditionCheck": {
                    "TableName": TABLE,
                    "Key": {"pk": {"S": "JOB#j"}, "sk": {"S": "META"}},
                    "ConditionExpression": "done = :ten",
                    "ExpressionAttributeValues": {":ten": {"N": "10"}},
                }
            },
        ]
    }

    # When the transaction is sent
    with pytest.raises(dynamodb.exceptions.TransactionCanceledException):
        dynamodb.transact_write_items(**request)

    # Then the created item is gone again
    assert "Item" not in dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": "JOB#j"}, "sk": {"S": "SHARD#fresh"}})


@pytest.fixture
def sqs() -> Iterator[tuple[Any, str]]:
    with mock_aws(), moto_speedups():
        client = boto3.client("sqs", region_name=REGION)
        url = client.create_queue(QueueName="work", Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
        yield client, url


def age_every_message(seconds: int) -> None:
    """Make the queue's messages look `seconds` older (moto's clock cannot be moved for one queue)."""
    from moto.sqs.models import sqs_backends

    for message in sqs_backends[ACCOUNT][REGION].queues["work"]._messages:
        message.sent_timestamp -= seconds * 1000


def test_a_message_within_its_retention_period_is_received(sqs: tuple[Any, str]) -> None:
    # Given a message sent 59 s ago to a queue that keeps messages 60 s
    client, url = sqs
    client.send_message(QueueUrl=url, MessageBody="shard 1")
    age_every_message(59)

    # When the queue is read
    messages = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])

    # Then the message comes back
    assert [m["Body"] for m in messages] == ["shard 1"]


def test_a_message_past_its_retention_period_is_not_received(sqs: tuple[Any, str]) -> None:
    # Given a message sent 61 s ago to a queue that keeps messages 60 s
    client, url = sqs
    client.send_message(QueueUrl=url, MessageBody="shard 1")
    age_every_message(61)

    # When the queue is read
    messages = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])

    # Then nothing comes back
    assert messages == []
