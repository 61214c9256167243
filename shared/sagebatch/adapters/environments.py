"""DynamoEnvironmentRegistry: which worker environments have work right now (sagebatch.ports.EnvironmentRegistry).

One small item per environment under one partition (`pk = WORKERS#<endpoint>`), renewed by a heartbeat with the
slots the environment announces it may hold; an environment that stops renewing lapses by itself. Reading them is
one strongly consistent Query of a handful of items.
"""

from __future__ import annotations

from typing import Any

from sagebatch.adapters.dynamodb import Table, to_item

_ENV = "ENV#"


class DynamoEnvironmentRegistry:
    def __init__(self, table: Table, endpoint_name: str):
        self._table = table
        self._pk = f"WORKERS#{endpoint_name}"

    def heartbeat(self, environment: str, until: float, now: float, holding: int) -> dict[str, int]:
        self._table.db.put_item(
            TableName=self._table.name,
            Item=to_item(
                {
                    "pk": self._pk,
                    "sk": f"{_ENV}{environment}",
                    "until": until,
                    "holding": holding,
                    "expires_at": self._table.expires_at(until),
                }
            ),
        )
        response: dict[str, Any] = self._table.db.query(
            TableName=self._table.name,
            KeyConditionExpression="pk = :pk",
            FilterExpression="#u > :now",
            ProjectionExpression="sk, holding",
            ExpressionAttributeNames={"#u": "until"},
            ExpressionAttributeValues=to_item({":pk": self._pk, ":now": now}),
            ConsistentRead=True,
        )
        return {item["sk"]["S"].removeprefix(_ENV): int(item.get("holding", {}).get("N", "0")) for item in response["Items"]}

    def leave(self, environment: str) -> None:
        self._table.db.update_item(
            TableName=self._table.name,
            Key=to_item({"pk": self._pk, "sk": f"{_ENV}{environment}"}),
            UpdateExpression="SET #u = :zero",
            ExpressionAttributeNames={"#u": "until"},
            ExpressionAttributeValues=to_item({":zero": 0}),
        )
