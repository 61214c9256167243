"""DynamoJobStore: the job item and its shard markers (sagebatch.ports.JobStore over the single table)."""

from __future__ import annotations

import json
import time
from typing import Any

from botocore.exceptions import ClientError

from sagebatch.adapters.dynamodb import Table, is_condition_failure, job_from_item, now_decimal, pk, to_item, written
from sagebatch.domain.job import ACTIVE, IntakeProgress, Job, JobStatus, ShardCounts, sources
from sagebatch.domain.results import StopReason

# The sparse index `sagebatch list` reads (template.yaml, JobsTable): job items only, newest first by created_at.
JOBS_INDEX = "jobs-by-created"
JOB_KIND = "JOB"
_BATCH_GET = 100


class DynamoJobStore:
    def __init__(self, table: Table):
        self._table = table

    # -- jobs -------------------------------------------------------------------------------
    def create_job(self, job: Job) -> tuple[Job, bool]:
        """Create the job unless one with its id exists; return (the job, created?)."""
        values = job.model_dump(mode="json")
        values["parameters"] = json.dumps(values["parameters"])
        values["fit"] = json.dumps(values["fit"]) if values["fit"] else None
        values.update(pk=pk(job.job_id), sk="META", expires_at=int(job.created_at) + self._table.ttl_seconds)
        values.update(kind=JOB_KIND)  # enters the sparse jobs-by-created index (its sort key is created_at)
        if written(
            lambda: self._table.db.put_item(
                TableName=self._table.name,
                Item=to_item(values),
                ConditionExpression="attribute_not_exists(pk)",
            )
        ):
            return job, True
        existing = self.get_job(job.job_id)
        assert existing is not None
        return existing, False

    def get_job(self, job_id: str) -> Job | None:
        response = self._table.db.get_item(
            TableName=self._table.name, Key=to_item({"pk": pk(job_id), "sk": "META"}), ConsistentRead=True
        )
        return job_from_item(response["Item"]) if "Item" in response else None

    def _transition(
        self,
        job_id: str,
        target: JobStatus,
        assignments: list[str],
        values: dict[str, Any],
        extra_condition: str = "",
        names: dict[str, str] | None = None,
    ) -> bool:
        """Move the job to `target` if it is in one of the statuses the state machine allows (domain.job)."""
        allowed = sorted(sources(target))
        statuses = {f":from{i}": status for i, status in enumerate(allowed)}
        condition = f"#s IN ({', '.join(statuses)})" + (f" AND {extra_condition}" if extra_condition else "")
        return written(
            lambda: self._table.db.update_item(
                TableName=self._table.name,
                Key=self._key(job_id),
                UpdateExpression="SET " + ", ".join(["#s = :target", *assignments]),
                ConditionExpression=condition,
                ExpressionAttributeNames={"#s": "status", **(names or {})},
                ExpressionAttributeValues=to_item({":target": target, **statuses, **values}),
            )
        )

    def start_job(
        self, job_id: str, total_records: int, total_shards: int, version_id: str | None = None, etag: str | None = None
    ) -> None:
        """CREATING -> RUNNING with the totals and the input version read; a no-op when a redelivered intake already did it."""
        values = {":tr": total_records, ":ts": total_shards, ":now": now_decimal(), ":v": version_id, ":e": etag}
        assignments = ["total_records = :tr", "total_shards = :ts", "started_at = :now"]
        # The version (or ETag) intake read, so a retry re-reads exactly this input later.
        assignments += [
            f"{name} = {placeholder}" for name, placeholder in (("version_id", ":v"), ("etag", ":e")) if values[placeholder]
        ]
        self._transition(job_id, JobStatus.RUNNING, assignments, {k: v for k, v in values.items() if v is not None})

    def save_intake_progress(self, job_id: str, progress: IntakeProgress) -> bool:
        """One UpdateItem on the job item (1 WCU, cheaper than an S3 PUT, and read with the job anyway), only while
        the job is CREATING: a late intake never writes over a job that has started or failed."""
        return written(
            lambda: self._table.db.update_item(
                TableName=self._table.name,
                Key=self._key(job_id),
                UpdateExpression="SET intake_progress = :p",
                ConditionExpression="#s = :creating",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=to_item({":p": progress.model_dump(), ":creating": JobStatus.CREATING}),
            )
        )

    def request_stop(self, job_id: str, reason: StopReason) -> tuple[Job | None, bool]:
        """Record why an active (CREATING or RUNNING) job stops early: (the job as it now is, recorded by this call?).

        Conditional, so the first reason recorded stays (a second cancel, or a deadline passing after a cancel,
        changes nothing) and a job that is finishing or finished is left alone.
        """
        active = {f":a{i}": status for i, status in enumerate(sorted(ACTIVE))}
        try:
            response = self._table.db.update_item(
                TableName=self._table.name,
                Key=self._key(job_id),
                UpdateExpression="SET stop_reason = :reason, stopped_at = :now",
                ConditionExpression=f"#s IN ({', '.join(active)}) AND attribute_not_exists(stop_reason)",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=to_item({":reason": reason, ":now": now_decimal(), **active}),
                ReturnValues="ALL_NEW",
            )
            return job_from_item(response["Attributes"]), True
        except ClientError as error:
            if not is_condition_failure(error):
                raise
        return self.get_job(job_id), False

    def fail_job(self, job_id: str, reason: str) -> None:
        self._transition(
            job_id,
            JobStatus.FAILED,
            ["#e = :reason", "finished_at = :now"],
            {":reason": reason, ":now": now_decimal()},
            names={"#e": "error"},
        )

    def try_begin_finalize(self, job_id: str) -> bool:
        """RUNNING -> FINALIZING once every shard is done. Exactly one caller ever gets True."""
        return self._transition(job_id, JobStatus.FINALIZING, [], {}, "shards_done = total_shards")

    def complete_job(self, job_id: str, status: JobStatus = JobStatus.COMPLETED) -> bool:
        """FINALIZING -> COMPLETED, CANCELLED or EXPIRED."""
        return self._transition(job_id, status, ["finished_at = :now"], {":now": now_decimal()})

    def mark_finalize_requested(self, job_id: str) -> None:
        self._table.db.update_item(
            TableName=self._table.name,
            Key=self._key(job_id),
            UpdateExpression="SET finalize_requested = :yes",
            ExpressionAttributeValues=to_item({":yes": True}),
        )

    def _key(self, job_id: str) -> dict[str, Any]:
        return to_item({"pk": pk(job_id), "sk": "META"})

    # -- shards -----------------------------------------------------------------------------
    def shard_done(self, job_id: str, shard: int) -> bool:
        response = self._table.db.get_item(
            TableName=self._table.name, Key=to_item({"pk": pk(job_id), "sk": f"SHARD#{shard:08d}"}), ConsistentRead=True
        )
        return "Item" in response

    def complete_shard(self, job_id: str, shard: int, counts: ShardCounts) -> bool:
        """Mark the shard done and add its counts to the job, atomically and at most once."""
        return written(
            lambda: self._table.db.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self._table.name,
                            "Item": to_item(
                                {
                                    "pk": pk(job_id),
                                    "sk": f"SHARD#{shard:08d}",
                                    **counts.model_dump(),
                                    "expires_at": int(time.time()) + self._table.ttl_seconds,
                                }
                            ),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {
                        "Update": {
                            "TableName": self._table.name,
                            "Key": to_item({"pk": pk(job_id), "sk": "META"}),
                            # Every counter of ShardCounts (float ones, e.g. endpoint_seconds, as decimals).
                            "UpdateExpression": "ADD shards_done :one, "
                            + ", ".join(f"{name} :{name}" for name in ShardCounts.model_fields),
                            "ExpressionAttributeValues": to_item(
                                {":one": 1, **{f":{name}": value for name, value in counts.model_dump().items()}}
                            ),
                        }
                    },
                ]
            )
        )

    # -- listing ----------------------------------------------------------------------------
    def list_jobs(self, status: JobStatus | None = None, since: float | None = None, limit: int = 20) -> list[Job]:
        """Jobs created at or after `since` (epoch seconds), newest first, at most `limit`; only `status` ones if given.

        Queries the sparse jobs-by-created index (keys, job_id and status), then reads the matching job items for
        their counts. A job created before the index existed has no `kind` and is not listed.
        """
        if limit < 1:
            return []
        condition = "#k = :kind" + (" AND created_at >= :since" if since is not None else "")
        values: dict[str, Any] = {":kind": JOB_KIND} | ({":since": float(since)} if since is not None else {})
        names = {"#k": "kind"}
        query: dict[str, Any] = {
            "TableName": self._table.name,
            "IndexName": JOBS_INDEX,
            "KeyConditionExpression": condition,
            "ScanIndexForward": False,
        }
        if status is not None:
            query["FilterExpression"] = "#s = :status"
            names["#s"] = "status"
            values[":status"] = str(status)
        query |= {"ExpressionAttributeNames": names, "ExpressionAttributeValues": to_item(values)}
        keys: list[dict[str, Any]] = []
        while len(keys) < limit:
            response = self._table.db.query(**query, Limit=limit - len(keys) if status is None else 100)
            keys += [{"pk": item["pk"], "sk": item["sk"]} for item in response.get("Items", [])]
            if "LastEvaluatedKey" not in response:
                break
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        keys = keys[:limit]
        jobs = self._get_jobs(keys)
        # The index is eventually consistent: a job may have moved on since; the item read is the truth.
        return [job for key in keys if (job := jobs.get(key["pk"]["S"])) and (status is None or job.status == status)]

    def _get_jobs(self, keys: list[dict[str, Any]]) -> dict[str, Job]:
        """The job items for `keys` (BatchGetItem, 100 a request, unprocessed keys asked again), by pk."""
        found: dict[str, Job] = {}
        for start in range(0, len(keys), _BATCH_GET):
            pending: dict[str, Any] = {self._table.name: {"Keys": keys[start : start + _BATCH_GET], "ConsistentRead": True}}
            while pending:
                response = self._table.db.batch_get_item(RequestItems=pending)
                for item in response.get("Responses", {}).get(self._table.name, []):
                    found[item["pk"]["S"]] = job_from_item(item)
                pending = response.get("UnprocessedKeys") or {}
                if pending:
                    time.sleep(0.05)
        return found
