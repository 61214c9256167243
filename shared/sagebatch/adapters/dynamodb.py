"""What the DynamoDB adapters share: the single table's key scheme, item (de)serialisation, conditional writes.

Keys (one partition per job):
  pk=JOB#<id> sk=META            the job: status, counts, token totals, times, stop reason, deadline
  pk=JOB#<id> sk=SHARD#<n>       a finished shard (exists once; guards the job counters)
  pk=JOB#<id> sk=REC#<line>      a record's result (written once, as soon as it is known; over 350 KB: in S3)
  pk=JOB#<id> sk=CALL#<line>#<k> a chunk answer of a multi-call record
  pk=JOB#<id> sk=LEASE#<name>    a lease (a shard's, or the job's enqueueing)

Every write that counts is conditional, so redelivered messages never count twice
(aws-reliability.md 9: atomic counters alone are not idempotent).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from sagebatch.domain.job import Job

_SER = TypeSerializer()
_DESER = TypeDeserializer()


class Table:
    """One DynamoDB table through a low-level client, with the TTL every item gets."""

    def __init__(self, dynamodb: Any, table_name: str, ttl_days: int = 30):
        self.db = dynamodb
        self.name = table_name
        self.ttl_seconds = ttl_days * 86400

    def expires_at(self, now: float | None = None) -> int:
        return int(now if now is not None else time.time()) + self.ttl_seconds


def now_decimal() -> Decimal:
    return Decimal(str(time.time()))


def pk(job_id: str) -> str:
    return f"JOB#{job_id}"


def rec_sk(line: int) -> str:
    return f"REC#{line:012d}"


def to_item(values: dict[str, Any]) -> dict[str, Any]:
    # DynamoDB numbers are decimals; boto3 refuses floats (timestamps are floats here).
    return {k: _SER.serialize(Decimal(str(v)) if isinstance(v, float) else v) for k, v in values.items() if v is not None}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    plain = {k: _DESER.deserialize(v) for k, v in item.items()}
    return {
        k: (int(v) if isinstance(v, Decimal) and v == int(v) else float(v) if isinstance(v, Decimal) else v)
        for k, v in plain.items()
    }


def job_from_item(item: dict[str, Any]) -> Job:
    values = from_item(item)
    values["parameters"] = json.loads(values.get("parameters") or "{}")
    values["fit"] = json.loads(values["fit"]) if values.get("fit") else None
    return Job.model_validate({k: v for k, v in values.items() if k in Job.model_fields})


def is_condition_failure(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code")
    if code == "ConditionalCheckFailedException":
        return True
    if code == "TransactionCanceledException":
        reasons = error.response.get("CancellationReasons", [])
        return any(r.get("Code") == "ConditionalCheckFailed" for r in reasons) or not reasons
    return False


def written(write: Callable[[], Any]) -> bool:
    """Run one conditional write: True if it happened, False if its condition failed (it was done already, or
    someone else got there first). Any other error is raised."""
    try:
        write()
        return True
    except ClientError as error:
        if is_condition_failure(error):
            return False
        raise
