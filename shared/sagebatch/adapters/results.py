"""DynamoResultStore: each record's result, the chunk answers of multi-call records and the record-id claims
(sagebatch.ports.ResultStore over the single table)."""

from __future__ import annotations

import hashlib
import time
from typing import Iterator

from sagebatch.adapters.dynamodb import Table, from_item, pk, rec_sk, to_item, written
from sagebatch.domain.generation import Generation
from sagebatch.domain.results import ResultLine


class DynamoResultStore:
    def __init__(self, table: Table):
        self._table = table

    # -- records ----------------------------------------------------------------------------
    def put_result(self, job_id: str, result: ResultLine) -> bool:
        """Store a record's result once; False when one was already stored (keep the first)."""
        return written(lambda: self._table.db.put_item(
            TableName=self._table.name,
            Item=to_item(
                {"pk": pk(job_id), "sk": rec_sk(result.line), "result": result.model_dump_json(),
                 "expires_at": int(time.time()) + self._table.ttl_seconds}
            ),
            ConditionExpression="attribute_not_exists(pk)",
        ))

    def results(self, job_id: str, first_line: int = 1, last_line: int | None = None) -> Iterator[ResultLine]:
        """Stored results in line order (a range, or the whole job)."""
        upper = rec_sk(last_line) if last_line is not None else "REC#~"
        paginator = self._table.db.get_paginator("query")
        for page in paginator.paginate(
            TableName=self._table.name,
            KeyConditionExpression="pk = :pk AND sk BETWEEN :lo AND :hi",
            ExpressionAttributeValues=to_item({":pk": pk(job_id), ":lo": rec_sk(first_line), ":hi": upper}),
            ConsistentRead=True,
        ):
            for item in page["Items"]:
                yield ResultLine.model_validate_json(item["result"]["S"])

    def claim_id(self, job_id: str, record_id: str, line: int) -> int:
        """The first line that claimed this record id in the job (`line` itself if it is the first)."""
        key = to_item({"pk": pk(job_id), "sk": "ID#" + hashlib.sha256(record_id.encode("utf-8")).hexdigest()[:32]})
        if written(lambda: self._table.db.put_item(
                TableName=self._table.name,
                Item={**key, **to_item({"line": line, "expires_at": int(time.time()) + self._table.ttl_seconds})},
                ConditionExpression="attribute_not_exists(pk)",
            )):
            return line
        item = self._table.db.get_item(TableName=self._table.name, Key=key, ConsistentRead=True)["Item"]
        return int(item["line"]["N"])

    # -- chunk answers (see records.CallCache) -------------------------------------------------
    def call_cache(self, job_id: str, line: int) -> "_CallItems":
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
            Item=to_item({"pk": pk(job_id), "sk": f"CALL#{line:012d}#{key}", "text": result.text,
                           "generated_tokens": result.generated_tokens, "finish_reason": result.finish_reason,
                           "expires_at": int(time.time()) + self._table.ttl_seconds}),
        )


class _CallItems:
    """The stored chunk answers of one record (sagebatch.ports.CallCache)."""

    def __init__(self, store: DynamoResultStore, job_id: str, line: int):
        self._store, self._job_id, self._line = store, job_id, line

    def get(self, key: str) -> Generation | None:
        return self._store.get_call(self._job_id, self._line, key)

    def put(self, key: str, result: Generation) -> None:
        self._store.put_call(self._job_id, self._line, key, result)
