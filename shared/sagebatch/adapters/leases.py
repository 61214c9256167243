"""DynamoLeaseStore: lease items (one per shard being worked on, one per job being enqueued); see usecases/lease.py."""

from __future__ import annotations

import time

from sagebatch.adapters.dynamodb import Table, pk, to_item, written


class DynamoLeaseStore:
    def __init__(self, table: Table):
        self._table = table

    # -- leases (see sagebatch.usecases.lease) --------------------------------------------------------
    def lease(self, job_id: str, name: str) -> ItemLease:
        """The lease item `name` of a job (e.g. one shard's, or the job's enqueueing)."""
        return ItemLease(self, job_id, name)

    def acquire_lease(self, job_id: str, name: str, owner: str, seconds: float) -> bool:
        """Take or renew the lease unless another owner holds it and it has not lapsed."""
        now = time.time()
        return written(
            lambda: self._table.db.update_item(
                TableName=self._table.name,
                Key=to_item({"pk": pk(job_id), "sk": f"LEASE#{name}"}),
                UpdateExpression="SET lease_owner = :me, lease_until = :until, expires_at = :ttl",
                ConditionExpression="attribute_not_exists(pk) OR lease_until < :now OR lease_owner = :me",
                ExpressionAttributeValues=to_item(
                    {":me": owner, ":until": now + seconds, ":now": now, ":ttl": int(now) + self._table.ttl_seconds}
                ),
            )
        )

    def release_lease(self, job_id: str, name: str, owner: str) -> None:
        """Let the lease lapse now (only if still ours), so a redelivery need not wait for its expiry."""
        written(
            lambda: self._table.db.update_item(
                TableName=self._table.name,
                Key=to_item({"pk": pk(job_id), "sk": f"LEASE#{name}"}),
                UpdateExpression="SET lease_until = :zero",
                ConditionExpression="lease_owner = :me",
                ExpressionAttributeValues=to_item({":zero": 0, ":me": owner}),
            )
        )


class ItemLease:
    """One lease item of a job, in the shape `sagebatch.usecases.lease.Lease` expects."""

    def __init__(self, store: DynamoLeaseStore, job_id: str, name: str):
        self._store, self._job_id, self._name = store, job_id, name

    def acquire(self, owner: str, seconds: float) -> bool:
        return self._store.acquire_lease(self._job_id, self._name, owner, seconds)

    def release(self, owner: str) -> None:
        self._store.release_lease(self._job_id, self._name, owner)
