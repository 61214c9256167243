"""DynamoResultStore: each record's result and the chunk answers of multi-call records
(sagebatch.ports.ResultStore over the single table; results too large for an item go to S3)."""

from __future__ import annotations

import hashlib
import time
from typing import Any, Iterator

from sagebatch.adapters.dynamodb import Table, from_item, pk, rec_sk, to_item, written
from sagebatch.domain.generation import Generation
from sagebatch.domain.layout import large_result_key
from sagebatch.domain.results import ResultLine
from sagebatch.ports import ObjectStore, ResultUnstorable


# A DynamoDB item holds at most 400 KB (names and values). A result whose JSON is larger than this (a split of a
# long document, a very long id) lives in S3 beside the job's outputs and its item holds the key.
INLINE_RESULT_BYTES = 350_000


class DynamoResultStore:
    def __init__(self, table: Table, objects: ObjectStore, bucket: str):
        self._table = table
        self._objects = objects
        self._bucket = bucket

    # -- records ----------------------------------------------------------------------------
    def put_result(self, job_id: str, result: ResultLine) -> bool:
        """Store a record's result once; False when one was already stored (keep the first)."""
        try:
            body = result.model_dump_json()
            body.encode("utf-8")
        except ValueError as error:  # pydantic's serialisation errors and UnicodeEncodeError are ValueErrors
            raise ResultUnstorable(f"{type(error).__name__}: {error}") from error
        values: dict[str, Any] = {"pk": pk(job_id), "sk": rec_sk(result.line), "expires_at": self._table.expires_at()}
        if len(body) > INLINE_RESULT_BYTES // 4 and len(body.encode("utf-8")) > INLINE_RESULT_BYTES:
            # Named by content: of two racing deliveries, the item that wins points at its own object.
            digest = hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]
            key = large_result_key(job_id, result.line).replace(".json", f"-{digest}.json")
            self._objects.put_bytes(self._bucket, key, body.encode("utf-8"), content_type="application/json")
            values["result_key"] = key
        else:
            values["result"] = body
        return written(lambda: self._table.db.put_item(
            TableName=self._table.name, Item=to_item(values), ConditionExpression="attribute_not_exists(pk)",
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
                if "result_key" in item:
                    yield ResultLine.model_validate_json(self._objects.read_bytes(self._bucket, item["result_key"]["S"]))
                else:
                    yield ResultLine.model_validate_json(item["result"]["S"])

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
