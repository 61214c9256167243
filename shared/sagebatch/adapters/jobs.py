"""JobStore: job, shard and record state in the single DynamoDB table.

Keys (one partition per job):
  pk=JOB#<id> sk=META            the job: status, counts, token totals, times, stop reason, deadline
  pk=JOB#<id> sk=SHARD#<n>       a finished shard (exists once; guards the job counters)
  pk=JOB#<id> sk=REC#<line>      a record's result (written once, as soon as it is known)

Every write that counts is conditional, so redelivered messages never count twice
(aws-reliability.md 9: atomic counters alone are not idempotent).
"""

from __future__ import annotations

import hashlib
import json
import time
from decimal import Decimal
from typing import Any, Callable, Iterator

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from sagebatch.fitting import CallResult
from sagebatch.models import FitSettings, Parameters, ResultLine, StopReason

_SER = TypeSerializer()
_DESER = TypeDeserializer()

CREATING, RUNNING, FINALIZING, COMPLETED, FAILED = "CREATING", "RUNNING", "FINALIZING", "COMPLETED", "FAILED"
# A job stopped early (sagebatch cancel, or its deadline) still finishes the normal way: every line gets a result
# and results.jsonl is written; the finalizer then closes it as CANCELLED or EXPIRED instead of COMPLETED.
CANCELLED, EXPIRED = "CANCELLED", "EXPIRED"
FINISHED = (COMPLETED, FAILED, CANCELLED, EXPIRED)


class ShardCounts(BaseModel):
    """Record outcomes and usage: one shard's, or (summed once per shard) the whole job's."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    expired: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    endpoint_calls: int = 0

    def add(self, result: ResultLine) -> None:
        setattr(self, result.status, getattr(self, result.status) + 1)
        self.input_tokens += result.usage.input_tokens
        self.output_tokens += result.usage.output_tokens
        self.endpoint_calls += result.calls


class Job(ShardCounts):
    """The job item as the service sees it."""

    job_id: str
    status: str = CREATING
    source: str
    bucket: str
    key: str
    version_id: str | None = None
    etag: str | None = None  # of the input as intake read it: pins a retry's re-read in an unversioned bucket
    parameters: Parameters = Field(default_factory=Parameters)
    fit: FitSettings | None = None
    client_token: str | None = None
    parent_job_id: str | None = None  # set on a retry job: the job whose unsucceeded records it runs again
    created_at: float = Field(default_factory=time.time)
    deadline_at: float | None = None
    stop_reason: StopReason | None = None  # set once, by a cancel or by the first worker past the deadline
    stopped_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    total_records: int | None = None
    total_shards: int | None = None
    shards_done: int = 0
    error: str | None = None


def _pk(job_id: str) -> str:
    return f"JOB#{job_id}"


def _rec_sk(line: int) -> str:
    return f"REC#{line:012d}"


def _to_item(values: dict[str, Any]) -> dict[str, Any]:
    # DynamoDB numbers are decimals; boto3 refuses floats (timestamps are floats here).
    return {k: _SER.serialize(Decimal(str(v)) if isinstance(v, float) else v) for k, v in values.items() if v is not None}


def _from_item(item: dict[str, Any]) -> dict[str, Any]:
    plain = {k: _DESER.deserialize(v) for k, v in item.items()}
    return {k: (int(v) if isinstance(v, Decimal) and v == int(v) else float(v) if isinstance(v, Decimal) else v) for k, v in plain.items()}


def _job(item: dict[str, Any]) -> Job:
    values = _from_item(item)
    values["parameters"] = json.loads(values.get("parameters") or "{}")
    values["fit"] = json.loads(values["fit"]) if values.get("fit") else None
    return Job.model_validate({k: v for k, v in values.items() if k in Job.model_fields})


def _is_condition_failure(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code")
    if code == "ConditionalCheckFailedException":
        return True
    if code == "TransactionCanceledException":
        reasons = error.response.get("CancellationReasons", [])
        return any(r.get("Code") == "ConditionalCheckFailed" for r in reasons) or not reasons
    return False


def _written(write: Callable[[], Any]) -> bool:
    """Run one conditional write: True if it happened, False if its condition failed (it was done already, or
    someone else got there first). Any other error is raised."""
    try:
        write()
        return True
    except ClientError as error:
        if _is_condition_failure(error):
            return False
        raise


class JobStore:
    def __init__(self, dynamodb: Any, table_name: str, ttl_days: int = 30):
        self._db = dynamodb
        self._table = table_name
        self._ttl_seconds = ttl_days * 86400

    # -- jobs -------------------------------------------------------------------------------
    def create_job(self, job: Job) -> tuple[Job, bool]:
        """Create the job unless one with its id exists; return (the job, created?)."""
        values = job.model_dump(mode="json")
        values["parameters"] = json.dumps(values["parameters"])
        values["fit"] = json.dumps(values["fit"]) if values["fit"] else None
        values.update(pk=_pk(job.job_id), sk="META", expires_at=int(job.created_at) + self._ttl_seconds)
        if _written(lambda: self._db.put_item(
                TableName=self._table,
                Item=_to_item(values),
                ConditionExpression="attribute_not_exists(pk)",
            )):
            return job, True
        existing = self.get_job(job.job_id)
        assert existing is not None
        return existing, False

    def get_job(self, job_id: str) -> Job | None:
        response = self._db.get_item(
            TableName=self._table, Key=_to_item({"pk": _pk(job_id), "sk": "META"}), ConsistentRead=True
        )
        return _job(response["Item"]) if "Item" in response else None

    def start_job(
        self, job_id: str, total_records: int, total_shards: int, version_id: str | None = None, etag: str | None = None
    ) -> None:
        """CREATING -> RUNNING with the totals and the input version read; a no-op when a redelivered intake already did it."""
        values = {":running": RUNNING, ":creating": CREATING, ":tr": total_records, ":ts": total_shards,
                  ":now": Decimal(str(time.time())), ":v": version_id, ":e": etag}
        assignments = ["#s = :running", "total_records = :tr", "total_shards = :ts", "started_at = :now"]
        # The version (or ETag) intake read, so a retry re-reads exactly this input later.
        assignments += [f"{name} = {placeholder}" for name, placeholder in (("version_id", ":v"), ("etag", ":e"))
                        if values[placeholder]]
        _written(lambda: self._db.update_item(
            TableName=self._table,
            Key=_to_item({"pk": _pk(job_id), "sk": "META"}),
            UpdateExpression="SET " + ", ".join(assignments),
            ConditionExpression="#s = :creating",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=_to_item(values),
        ))

    def request_stop(self, job_id: str, reason: StopReason) -> tuple[Job | None, bool]:
        """Record why a CREATING or RUNNING job stops early: (the job as it now is, recorded by this call?).

        Conditional, so the first reason recorded stays (a second cancel, or a deadline passing after a cancel,
        changes nothing) and a job that is finishing or finished is left alone.
        """
        try:
            response = self._db.update_item(
                TableName=self._table,
                Key=_to_item({"pk": _pk(job_id), "sk": "META"}),
                UpdateExpression="SET stop_reason = :reason, stopped_at = :now",
                ConditionExpression="#s IN (:creating, :running) AND attribute_not_exists(stop_reason)",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=_to_item(
                    {":reason": reason, ":now": Decimal(str(time.time())), ":creating": CREATING, ":running": RUNNING}
                ),
                ReturnValues="ALL_NEW",
            )
            return _job(response["Attributes"]), True
        except ClientError as error:
            if not _is_condition_failure(error):
                raise
        return self.get_job(job_id), False

    def fail_job(self, job_id: str, reason: str) -> None:
        self._db.update_item(
            TableName=self._table,
            Key=_to_item({"pk": _pk(job_id), "sk": "META"}),
            UpdateExpression="SET #s = :failed, #e = :reason, finished_at = :now",
            ExpressionAttributeNames={"#s": "status", "#e": "error"},
            ExpressionAttributeValues=_to_item({":failed": FAILED, ":reason": reason, ":now": Decimal(str(time.time()))}),
        )

    def try_begin_finalize(self, job_id: str) -> bool:
        """RUNNING -> FINALIZING once every shard is done. Exactly one caller ever gets True."""
        return _written(lambda: self._db.update_item(
            TableName=self._table,
            Key=_to_item({"pk": _pk(job_id), "sk": "META"}),
            UpdateExpression="SET #s = :finalizing",
            ConditionExpression="#s = :running AND shards_done = total_shards",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=_to_item({":finalizing": FINALIZING, ":running": RUNNING}),
        ))

    def complete_job(self, job_id: str, status: str = COMPLETED) -> bool:
        return _written(lambda: self._db.update_item(
            TableName=self._table,
            Key=_to_item({"pk": _pk(job_id), "sk": "META"}),
            UpdateExpression="SET #s = :done, finished_at = :now",
            ConditionExpression="#s = :finalizing",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues=_to_item({":done": status, ":finalizing": FINALIZING, ":now": Decimal(str(time.time()))}),
        ))

    # -- shards -----------------------------------------------------------------------------
    def shard_done(self, job_id: str, shard: int) -> bool:
        response = self._db.get_item(
            TableName=self._table, Key=_to_item({"pk": _pk(job_id), "sk": f"SHARD#{shard:08d}"}), ConsistentRead=True
        )
        return "Item" in response

    def complete_shard(self, job_id: str, shard: int, counts: ShardCounts) -> bool:
        """Mark the shard done and add its counts to the job, atomically and at most once."""
        return _written(lambda: self._db.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": _to_item(
                            {"pk": _pk(job_id), "sk": f"SHARD#{shard:08d}", **counts.model_dump(),
                             "expires_at": int(time.time()) + self._ttl_seconds}
                        ),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": _to_item({"pk": _pk(job_id), "sk": "META"}),
                        "UpdateExpression": "ADD shards_done :one, succeeded :s, failed :f, cancelled :c, expired :x, "
                        "input_tokens :it, output_tokens :ot, endpoint_calls :ec",
                        "ExpressionAttributeValues": _to_item(
                            {":one": 1, ":s": counts.succeeded, ":f": counts.failed, ":c": counts.cancelled,
                             ":x": counts.expired, ":it": counts.input_tokens, ":ot": counts.output_tokens,
                             ":ec": counts.endpoint_calls}
                        ),
                    }
                },
            ]
        ))

    def claim_id(self, job_id: str, record_id: str, line: int) -> int:
        """The first line that claimed this record id in the job (`line` itself if it is the first)."""
        key = _to_item({"pk": _pk(job_id), "sk": "ID#" + hashlib.sha256(record_id.encode("utf-8")).hexdigest()[:32]})
        if _written(lambda: self._db.put_item(
                TableName=self._table,
                Item={**key, **_to_item({"line": line, "expires_at": int(time.time()) + self._ttl_seconds})},
                ConditionExpression="attribute_not_exists(pk)",
            )):
            return line
        item = self._db.get_item(TableName=self._table, Key=key, ConsistentRead=True)["Item"]
        return int(item["line"]["N"])

    # -- chunk answers (see records.CallCache) -------------------------------------------------
    def call_cache(self, job_id: str, line: int) -> "CallItems":
        return CallItems(self, job_id, line)

    def get_call(self, job_id: str, line: int, key: str) -> CallResult | None:
        response = self._db.get_item(
            TableName=self._table, Key=_to_item({"pk": _pk(job_id), "sk": f"CALL#{line:012d}#{key}"}), ConsistentRead=True
        )
        if "Item" not in response:
            return None
        values = _from_item(response["Item"])
        return CallResult(text=values["text"], generated_tokens=values["generated_tokens"], finish_reason=values["finish_reason"])

    def put_call(self, job_id: str, line: int, key: str, result: CallResult) -> None:
        self._db.put_item(
            TableName=self._table,
            Item=_to_item({"pk": _pk(job_id), "sk": f"CALL#{line:012d}#{key}", "text": result.text,
                           "generated_tokens": result.generated_tokens, "finish_reason": result.finish_reason,
                           "expires_at": int(time.time()) + self._ttl_seconds}),
        )

    # -- leases (see sagebatch.lease) --------------------------------------------------------
    def lease(self, job_id: str, name: str) -> "ItemLease":
        """The lease item `name` of a job (e.g. one shard's, or the job's enqueueing)."""
        return ItemLease(self, job_id, name)

    def acquire_lease(self, job_id: str, name: str, owner: str, seconds: float) -> bool:
        """Take or renew the lease unless another owner holds it and it has not lapsed."""
        now = time.time()
        return _written(lambda: self._db.update_item(
            TableName=self._table,
            Key=_to_item({"pk": _pk(job_id), "sk": f"LEASE#{name}"}),
            UpdateExpression="SET lease_owner = :me, lease_until = :until, expires_at = :ttl",
            ConditionExpression="attribute_not_exists(pk) OR lease_until < :now OR lease_owner = :me",
            ExpressionAttributeValues=_to_item(
                {":me": owner, ":until": now + seconds, ":now": now, ":ttl": int(now) + self._ttl_seconds}
            ),
        ))

    def release_lease(self, job_id: str, name: str, owner: str) -> None:
        """Let the lease lapse now (only if still ours), so a redelivery need not wait for its expiry."""
        _written(lambda: self._db.update_item(
            TableName=self._table,
            Key=_to_item({"pk": _pk(job_id), "sk": f"LEASE#{name}"}),
            UpdateExpression="SET lease_until = :zero",
            ConditionExpression="lease_owner = :me",
            ExpressionAttributeValues=_to_item({":zero": 0, ":me": owner}),
        ))

    # -- records ----------------------------------------------------------------------------
    def put_result(self, job_id: str, result: ResultLine) -> bool:
        """Store a record's result once; False when one was already stored (keep the first)."""
        return _written(lambda: self._db.put_item(
            TableName=self._table,
            Item=_to_item(
                {"pk": _pk(job_id), "sk": _rec_sk(result.line), "result": result.model_dump_json(),
                 "expires_at": int(time.time()) + self._ttl_seconds}
            ),
            ConditionExpression="attribute_not_exists(pk)",
        ))

    def results(self, job_id: str, first_line: int = 1, last_line: int | None = None) -> Iterator[ResultLine]:
        """Stored results in line order (a range, or the whole job)."""
        upper = _rec_sk(last_line) if last_line is not None else "REC#~"
        paginator = self._db.get_paginator("query")
        for page in paginator.paginate(
            TableName=self._table,
            KeyConditionExpression="pk = :pk AND sk BETWEEN :lo AND :hi",
            ExpressionAttributeValues=_to_item({":pk": _pk(job_id), ":lo": _rec_sk(first_line), ":hi": upper}),
            ConsistentRead=True,
        ):
            for item in page["Items"]:
                yield ResultLine.model_validate_json(item["result"]["S"])


class ItemLease:
    """One lease item of a job, in the shape `sagebatch.lease.Lease` expects."""

    def __init__(self, jobs: JobStore, job_id: str, name: str):
        self._jobs, self._job_id, self._name = jobs, job_id, name

    def acquire(self, owner: str, seconds: float) -> bool:
        return self._jobs.acquire_lease(self._job_id, self._name, owner, seconds)

    def release(self, owner: str) -> None:
        self._jobs.release_lease(self._job_id, self._name, owner)


class CallItems:
    """The stored chunk answers of one record, in the shape `records.CallCache` expects."""

    def __init__(self, jobs: JobStore, job_id: str, line: int):
        self._jobs, self._job_id, self._line = jobs, job_id, line

    def get(self, key: str) -> CallResult | None:
        return self._jobs.get_call(self._job_id, self._line, key)

    def put(self, key: str, result: CallResult) -> None:
        self._jobs.put_call(self._job_id, self._line, key, result)
