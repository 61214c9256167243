"""DynamoCallCacheStore: the chunk answers of multi-call records (split / map_reduce), one small item per answer,
kept across deliveries so a redelivery pays only for what is missing (sagebatch.ports.CallCacheStore).

Results themselves are not items: they live in one part per shard in S3 (sagebatch.usecases.parts).
"""

from __future__ import annotations

from sagebatch.adapters.dynamodb import Table, from_item, pk, to_item
from sagebatch.domain.generation import Generation


class DynamoCallCacheStore:
    def __init__(self, table: Table):
        self._table = table

    def call_cache(self, job_id: str, line: int) -> _CallItems:
        return _CallItems(self, job_id, line)

    def get_call(self, job_id: str, line: int, key: str) -> Generation | None:
        response = self._table.db.get_item(
            TableName=self._table.name, Key=to_item({"pk": pk(job_id), "sk": f"CALL#{line:012d}#{key}"}), ConsistentRead=True
        )
        if "Item" not in response:
            return None
        values = from_item(response["Item"])
        return Generation(text=values["text"], generated_tokens=values["generated_tokens"], finish_reason=values["finish_reason"])

    def put_call(self, job_id: str, line: int, key: str, result: Generation) -> None:
        self._table.db.put_item(
            TableName=self._table.name,
            Item=to_item(
                {
                    "pk": pk(job_id),
                    "sk": f"CALL#{line:012d}#{key}",
                    "text": result.text,
                    "generated_tokens": result.generated_tokens,
                    "finish_reason": result.finish_reason,
                    "expires_at": self._table.expires_at(),
                }
            ),
        )


class _CallItems:
    """The stored chunk answers of one record (sagebatch.ports.CallCache)."""

    def __init__(self, store: DynamoCallCacheStore, job_id: str, line: int):
        self._store, self._job_id, self._line = store, job_id, line

    def get(self, key: str) -> Generation | None:
        return self._store.get_call(self._job_id, self._line, key)

    def put(self, key: str, result: Generation) -> None:
        self._store.put_call(self._job_id, self._line, key, result)
