"""moto, made to cost what a request costs rather than what the stack holds (`sagebatch run`, the local stack).

Two of moto's costs grow with the data, and every moto request runs under one lock (stack.moto_requests_one_at_a_time),
so at 10,000 records they were most of `sagebatch run`'s time:

- TransactWriteItems deep-copies every table it names before it starts, to be able to roll back. The jobs table
  holds a job's shards, checkpoints and leases: one `complete_shard` cost 76 ms at 10,000 records, a third of the
  run. Here the rollback keeps copies of the transaction's own items only (at most 100, one key each) and puts them
  back when moto cancels the transaction.
- ReceiveMessage computes all of a queue's attributes, approximate counts included (each a scan of every message,
  reading the clock per message), three times for every message it returns, only to read its retention period.
  Here the retention period is read from the queue.

What callers see is unchanged: the same conditions, errors, cancellation reasons and messages come from moto's own
code; only the work whose result is thrown away is skipped.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_inside = threading.local()  # set while this thread runs a patched TransactWriteItems


class _CopyExceptTables:
    """Stands in for the `copy` module inside moto.dynamodb.models: a table copy during our transactions is the
    table itself (the touched items are saved instead); everything else is copied as before."""

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)

    @staticmethod
    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        from moto.dynamodb.models.table import Table

        if getattr(_inside, "active", False) and isinstance(value, Table):
            return value
        return copy.deepcopy(value, memo)


@contextmanager
def moto_speedups() -> Iterator[None]:
    """Both patches, for the block (the local stack's lifetime)."""
    with transactions_save_touched_items_only(), sqs_retention_read_from_the_queue():
        yield


@contextmanager
def sqs_retention_read_from_the_queue() -> Iterator[None]:
    from moto.core.utils import unix_time
    from moto.sqs.models import SQSBackend

    original = SQSBackend.is_message_valid_based_on_retention_period

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        retention_period = self.get_queue(queue_name).message_retention_period
        return bool(retention_period + message.sent_timestamp / 1000 > unix_time())

    SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period  # type: ignore[method-assign]
    try:
        yield
    finally:
        SQSBackend.is_message_valid_based_on_retention_period = original  # type: ignore[method-assign]


@contextmanager
def transactions_save_touched_items_only() -> Iterator[None]:
    import moto.dynamodb.models as dynamodb_models

    backend = dynamodb_models.DynamoDBBackend
    original = backend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        saved = _touched_items(self.tables, transact_items)
        _inside.active = True
        try:
            original(self, transact_items)
        except Exception:
            _put_back(saved)
            raise
        finally:
            _inside.active = False

    dynamodb_models.copy = _CopyExceptTables()  # type: ignore[assignment]
    backend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    try:
        yield
    finally:
        backend.transact_write_items = original  # type: ignore[method-assign]
        dynamodb_models.copy = copy


_Saved = tuple[Any, Any, Any, Any]  # (table, hash value, range value or None, copy of the item or None)


def _touched_items(tables: dict[str, Any], transact_items: list[dict[str, Any]]) -> list[_Saved]:
    """A copy of every item the transaction names, as it is before the transaction (None: absent)."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    saved = []
    for entry in transact_items:
        for kind, operation in entry.items():
            table = tables.get(str(operation.get("TableName"))) if isinstance(operation, dict) else None
            if table is None:
                continue  # moto answers the unknown table itself; nothing of it can change
            key = operation.get("Item") if kind == "Put" else operation.get("Key")
            try:
                hash_value = DynamoType(key[table.hash_key_attr])
                range_value = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
            except (KeyError, TypeError):
                continue  # a malformed key: moto refuses that operation before it writes anything for it
            item = table.get_item(hash_value, range_value)
            saved.append((table, hash_value, range_value, copy.deepcopy(item) if item is not None else None))
    return saved


def _put_back(saved: list[_Saved]) -> None:
    # Reversed: when a key is named twice (moto refuses that), its first copy, the state before, is the one kept.
    for table, hash_value, range_value, item in reversed(saved):
        if range_value is None:
            if item is None:
                table.items.pop(hash_value, None)
            else:
                table.items[hash_value] = item
        elif item is None:
            table.items.get(hash_value, {}).pop(range_value, None)
        else:
            table.items[hash_value][range_value] = item
