"""In-memory fakes of every port (sagebatch.ports), for fast tests of the flows and for benchmarks too large for moto.

Each fake keeps the contract of its AWS adapter (tests/integration/test_port_contracts.py runs the same checks
against both): conditional writes happen once, status changes follow `domain.job.sources`, reads of an input are
pinned to the version (or ETag) the job saw, queues keep every message. Each fake guards its state with one lock,
because the worker stores results from a thread pool.

`FakeAws` bundles one of each; `build_pipeline` builds Intake, ShardProcessor and Finalizer over it the way
`sagebatch.lambdas.service` builds them over AWS; `drive` runs intake messages through the whole pipeline until
the queues are empty, redelivering failed messages as SQS would.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import IO, TYPE_CHECKING, Any, Self, TypeVar
from urllib.parse import quote_plus

from pydantic import BaseModel

from sagebatch.domain.budget import TokenBudget
from sagebatch.domain.events import JobStateChange
from sagebatch.domain.generation import EndpointError, ErrorKind, Generation
from sagebatch.domain.job import ACTIVE, IntakeProgress, Job, JobStatus, ShardCounts, sources
from sagebatch.domain.messages import FinalizeRequest, Shard
from sagebatch.domain.results import StopReason
from sagebatch.domain.time_budget import TimeBudget
from sagebatch.domain.tokens import MistralTokenizer, get_tokenizer
from sagebatch.ports import (
    EndpointCaller,
    InputUnreadable,
    LineSpan,
    MoveTaskUnsupported,
    NoRedriveDestination,
    ObjectInfo,
    PublishFailed,
    SendFailed,
    UploadGone,
    WorkItem,
)
from sagebatch.settings import Settings
from sagebatch.usecases.batch import FINAL_ATTEMPT_RECEIVE_COUNT
from sagebatch.usecases.finalize import Finalizer, ResultsIncomplete
from sagebatch.usecases.intake import Intake, IntakeOutcome
from sagebatch.usecases.lease import Busy
from sagebatch.usecases.parts import PartsResultStore
from sagebatch.usecases.record_runner import RecordRunner
from sagebatch.usecases.worker import ShardIncomplete, ShardProcessor

Clock = Callable[[], float]
M = TypeVar("M", bound=BaseModel)


# -- jobs ---------------------------------------------------------------------------------------
class InMemoryJobStore:
    """sagebatch.ports.JobStore over a dict (DynamoJobStore's conditions, without DynamoDB)."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._shards: dict[tuple[str, int], ShardCounts] = {}

    def put(self, job: Job) -> None:
        """Store a job as it is, unconditionally: for arranging a test, not a port method."""
        with self._lock:
            self._jobs[job.job_id] = job.model_copy(deep=True)

    def create_job(self, job: Job) -> tuple[Job, bool]:
        with self._lock:
            existing = self._jobs.get(job.job_id)
            if existing is not None:
                return existing.model_copy(deep=True), False
            self._jobs[job.job_id] = job.model_copy(deep=True)
            return job, True

    def get_job(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.model_copy(deep=True) if job is not None else None

    def _transition(
        self, job_id: str, target: JobStatus, values: dict[str, Any], when: Callable[[Job], bool] | None = None
    ) -> bool:
        """Move the job to `target` if `sources(target)` allows its status (and `when` holds); the caller holds the lock."""
        allowed = sources(target)  # raises InvalidTransition for a target no transition leads to, as the adapter does
        job = self._jobs.get(job_id)
        if job is None or job.status not in allowed or (when is not None and not when(job)):
            return False
        self._jobs[job_id] = job.model_copy(update={"status": target} | values)
        return True

    def start_job(
        self, job_id: str, total_records: int, total_shards: int, version_id: str | None = None, etag: str | None = None
    ) -> None:
        pinned = {name: value for name, value in (("version_id", version_id), ("etag", etag)) if value}
        with self._lock:
            self._transition(
                job_id,
                JobStatus.RUNNING,
                {"total_records": total_records, "total_shards": total_shards, "started_at": self._clock(), **pinned},
            )

    def save_intake_progress(self, job_id: str, progress: IntakeProgress) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status != JobStatus.CREATING:
                return False
            self._jobs[job_id] = job.model_copy(update={"intake_progress": progress.model_copy()})
            return True

    def request_stop(self, job_id: str, reason: StopReason) -> tuple[Job | None, bool]:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None, False
            if job.status in ACTIVE and job.stop_reason is None:
                job = self._jobs[job_id] = job.model_copy(update={"stop_reason": reason, "stopped_at": self._clock()})
                return job.model_copy(deep=True), True
            return job.model_copy(deep=True), False

    def fail_job(self, job_id: str, reason: str) -> None:
        with self._lock:
            self._transition(job_id, JobStatus.FAILED, {"error": reason, "finished_at": self._clock()})

    def try_begin_finalize(self, job_id: str) -> bool:
        with self._lock:
            return self._transition(job_id, JobStatus.FINALIZING, {}, when=lambda job: job.shards_done == job.total_shards)

    def complete_job(self, job_id: str, status: JobStatus = JobStatus.COMPLETED) -> bool:
        with self._lock:
            return self._transition(job_id, status, {"finished_at": self._clock()})

    def mark_finalize_requested(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                self._jobs[job_id] = job.model_copy(update={"finalize_requested": True})

    def shard_done(self, job_id: str, shard: int) -> bool:
        with self._lock:
            return (job_id, shard) in self._shards

    def complete_shard(self, job_id: str, shard: int, counts: ShardCounts) -> bool:
        with self._lock:
            if (job_id, shard) in self._shards:
                return False
            job = self._jobs.get(job_id)
            if job is None:
                raise KeyError(f"no job {job_id}")  # DynamoDB would ADD the counts to a half-made item; never wanted
            self._shards[(job_id, shard)] = counts.model_copy()
            added = {name: getattr(job, name) + getattr(counts, name) for name in ShardCounts.model_fields}
            self._jobs[job_id] = job.model_copy(update={"shards_done": job.shards_done + 1, **added})
            return True

    def list_jobs(self, status: JobStatus | None = None, since: float | None = None, limit: int = 20) -> list[Job]:
        with self._lock:
            jobs = [
                job
                for job in self._jobs.values()
                if (since is None or job.created_at >= since) and (status is None or job.status == status)
            ]
        jobs.sort(key=lambda job: job.created_at, reverse=True)
        return [job.model_copy(deep=True) for job in jobs[: max(limit, 0)]]


# -- results ------------------------------------------------------------------------------------
class InMemoryCallCacheStore:
    """sagebatch.ports.CallCacheStore over a dict (the chunk answers DynamoCallCacheStore keeps as items)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[tuple[str, int, str], Generation] = {}

    def call_cache(self, job_id: str, line: int) -> InMemoryCallCache:
        return InMemoryCallCache(self, job_id, line)

    def get_call(self, job_id: str, line: int, key: str) -> Generation | None:
        with self._lock:
            return self._calls.get((job_id, line, key))

    def put_call(self, job_id: str, line: int, key: str, result: Generation) -> None:
        # The item keeps text, token count and finish reason; the latency is not stored.
        with self._lock:
            self._calls[(job_id, line, key)] = Generation(result.text, result.generated_tokens, result.finish_reason)


class InMemoryCallCache:
    """The chunk answers of one record (sagebatch.ports.CallCache)."""

    def __init__(self, store: InMemoryCallCacheStore, job_id: str, line: int) -> None:
        self._store, self._job_id, self._line = store, job_id, line

    def get(self, key: str) -> Generation | None:
        return self._store.get_call(self._job_id, self._line, key)

    def put(self, key: str, result: Generation) -> None:
        self._store.put_call(self._job_id, self._line, key, result)


# -- leases -------------------------------------------------------------------------------------
class InMemoryLeaseStore:
    """sagebatch.ports.LeaseStore: take or renew if free, lapsed (by `clock`) or ours; release only if ours."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._leases: dict[tuple[str, str], tuple[str, float]] = {}  # (job, name) -> (owner, until)

    def lease(self, job_id: str, name: str) -> InMemoryLease:
        return InMemoryLease(self, job_id, name)

    def acquire_lease(self, job_id: str, name: str, owner: str, seconds: float) -> bool:
        with self._lock:
            now = self.clock()
            held = self._leases.get((job_id, name))
            if held is not None and held[1] >= now and held[0] != owner:
                return False
            self._leases[(job_id, name)] = (owner, now + seconds)
            return True

    def release_lease(self, job_id: str, name: str, owner: str) -> None:
        with self._lock:
            held = self._leases.get((job_id, name))
            if held is not None and held[0] == owner:
                self._leases[(job_id, name)] = (owner, 0.0)


class InMemoryLease:
    def __init__(self, store: InMemoryLeaseStore, job_id: str, name: str) -> None:
        self._store, self._job_id, self._name = store, job_id, name

    def acquire(self, owner: str, seconds: float) -> bool:
        return self._store.acquire_lease(self._job_id, self._name, owner, seconds)

    def release(self, owner: str) -> None:
        self._store.release_lease(self._job_id, self._name, owner)


# -- objects ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredObject:
    body: bytes
    version_id: str | None  # None in an unversioned bucket
    etag: str  # quoted, as S3 returns it
    content_type: str


@dataclass
class _Bucket:
    versioned: bool
    objects: dict[str, list[StoredObject | None]] = field(default_factory=dict)  # key -> versions, oldest first; None: deleted


class InMemoryObjectStore:
    """sagebatch.ports.ObjectStore over dicts, with S3's versioning and pinned reads.

    Buckets must be created first (`create_bucket`). In a versioned bucket every write is a new version and a read
    pinned to an older version still sees it; in an unversioned one a read pinned to an ETag fails once the object
    has changed (S3's IfMatch). Read failures raise InputUnreadable, as S3ObjectStore does.
    """

    MIN_PART_BYTES = 5 * 1024 * 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._versions = itertools.count(1)
        self._uploads: dict[str, tuple[str, str, str, dict[int, tuple[str, bytes]]]] = {}

    # -- arranging (not port methods) ------------------------------------------------------------
    def create_bucket(self, bucket: str, versioned: bool = True) -> None:
        with self._lock:
            self._buckets.setdefault(bucket, _Bucket(versioned))

    def put(self, bucket: str, key: str, body: bytes) -> ObjectInfo:
        """Write an object and return what `head` says about it."""
        self.put_bytes(bucket, key, body)
        return self.head(bucket, key)

    def delete(self, bucket: str, key: str, version_id: str | None = None) -> None:
        """Delete the object (a delete marker in a versioned bucket), or permanently delete one version."""
        with self._lock:
            versions = self._bucket(bucket).objects.setdefault(key, [])
            if version_id is not None:
                versions[:] = [v for v in versions if v is None or v.version_id != version_id]
            elif self._buckets[bucket].versioned:
                versions.append(None)
            else:
                versions.clear()

    def stored(self, bucket: str, key: str) -> StoredObject | None:
        """The current version (None if missing or deleted)."""
        with self._lock:
            versions = self._bucket(bucket).objects.get(key) or [None]
            return versions[-1]

    def version_count(self, bucket: str, key: str) -> int:
        with self._lock:
            return sum(v is not None for v in self._bucket(bucket).objects.get(key, []))

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(k for k, v in self._bucket(bucket).objects.items() if k.startswith(prefix) and v and v[-1] is not None)

    def _bucket(self, bucket: str) -> _Bucket:
        if bucket not in self._buckets:
            raise KeyError(f"no bucket {bucket} (create it with create_bucket)")
        return self._buckets[bucket]

    # -- reads -------------------------------------------------------------------------------------
    def _find(self, bucket: str, key: str, version_id: str | None, etag: str | None) -> StoredObject:
        """The object as a pinned GetObject sees it, or InputUnreadable with S3's error code."""
        with self._lock:
            if bucket not in self._buckets:
                code = "NoSuchBucket"
            else:
                history = self._buckets[bucket].objects.get(key) or [None]
                versions = [v for v in history if v is not None]
                latest = history[-1]
                if version_id:
                    found = next((v for v in versions if v.version_id == version_id), None)
                    if found is not None:
                        return found
                    code = "NoSuchVersion"
                elif latest is None:
                    code = "NoSuchKey"
                elif etag and latest.etag.strip('"') != etag.strip('"'):
                    code = "PreconditionFailed"
                else:
                    return latest
        raise InputUnreadable(f"cannot read s3://{bucket}/{key}: {code}")

    def head(self, bucket: str, key: str, version_id: str | None = None) -> ObjectInfo:
        try:
            found = self._find(bucket, key, version_id, None)
        except InputUnreadable:
            raise InputUnreadable(f"cannot read s3://{bucket}/{key}: 404") from None  # HeadObject has no error body
        return ObjectInfo(bucket, key, found.version_id, found.etag, len(found.body))

    def _get(self, info: ObjectInfo) -> bytes:
        # Pinned like S3ObjectStore: to the version if the bucket has one, else to the ETag.
        return self._find(info.bucket, info.key, info.version_id, None if info.version_id else info.etag).body

    def head_bytes(self, info: ObjectInfo, count: int) -> bytes:
        if info.size == 0:
            return b""
        return self._get(info)[: min(count, info.size)]

    def line_spans(self, info: ObjectInfo) -> Iterator[LineSpan]:
        for span, _ in self._split(info):
            yield span

    def lines(self, info: ObjectInfo, start: int = 0) -> Iterator[bytes]:
        for _, line in self._split(info, start):
            yield line

    def _split(self, info: ObjectInfo, start: int = 0) -> Iterator[tuple[LineSpan, bytes]]:
        # A generator, so that (as with the adapter's streamed read) a read error surfaces at the first line.
        body = self._get(info)
        while (newline := body.find(b"\n", start)) != -1:
            yield LineSpan(start, newline + 1), body[start:newline]
            start = newline + 1
        if start < len(body):  # a last line without a trailing newline
            yield LineSpan(start, len(body)), body[start:]

    def read_range(self, info: ObjectInfo, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        return self._get(info)[start:end]

    def read_bytes(self, bucket: str, key: str) -> bytes:
        """A whole object the service wrote itself (not pinned); KeyError if there is none."""
        found = self.stored(bucket, key)
        if found is None:
            raise KeyError(f"no object s3://{bucket}/{key}")
        return found.body

    # -- writes ------------------------------------------------------------------------------------
    def put_bytes(self, bucket: str, key: str, body: bytes, content_type: str = "application/x-ndjson") -> None:
        etag = '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'
        with self._lock:
            target = self._bucket(bucket)
            version = f"v{next(self._versions)}" if target.versioned else None
            versions = target.objects.setdefault(key, [])
            if not target.versioned:
                versions.clear()
            versions.append(StoredObject(bytes(body), version, etag, content_type))

    def put_json(self, bucket: str, key: str, value: Any) -> None:
        self.put_bytes(bucket, key, json.dumps(value, indent=2, ensure_ascii=False).encode("utf-8"), "application/json")

    def upload_file(self, bucket: str, key: str, fileobj: IO[bytes], content_type: str = "application/x-ndjson") -> None:
        self.put_bytes(bucket, key, fileobj.read(), content_type)

    def read_if_exists(self, bucket: str, key: str) -> bytes | None:
        found = self.stored(bucket, key)
        return None if found is None else found.body

    # -- multipart uploads (S3's rules: parts but the last >= 5 MiB, at most 10,000) -----------------
    def start_multipart(self, bucket: str, key: str, content_type: str = "application/x-ndjson") -> str:
        with self._lock:
            upload_id = f"upload-{next(self._versions)}"
            self._uploads[upload_id] = (bucket, key, content_type, {})
        return upload_id

    def upload_part(self, bucket: str, key: str, upload_id: str, number: int, body: bytes) -> str:
        if not 1 <= number <= 10_000:
            raise ValueError(f"part number {number} is outside 1..10000")
        with self._lock:
            if upload_id not in self._uploads:
                raise UploadGone(f"multipart upload {upload_id} no longer exists")
            parts = self._uploads[upload_id][3]
            etag = '"' + hashlib.md5(body, usedforsecurity=False).hexdigest() + '"'
            parts[number] = (etag, bytes(body))
        return etag

    def complete_multipart(self, bucket: str, key: str, upload_id: str, etags: list[str]) -> None:
        with self._lock:
            if upload_id not in self._uploads:
                raise UploadGone(f"multipart upload {upload_id} no longer exists")
            _, _, content_type, parts = self._uploads.pop(upload_id)
        numbers = list(range(1, len(etags) + 1))
        if [parts[n][0] if n in parts else None for n in numbers] != etags:
            raise ValueError("the ETags do not match the uploaded parts")
        for number in numbers[:-1]:
            if len(parts[number][1]) < self.MIN_PART_BYTES:
                raise ValueError(f"part {number} is {len(parts[number][1])} bytes: S3 needs 5 MiB for all but the last")
        self.put_bytes(bucket, key, b"".join(parts[n][1] for n in numbers), content_type)

    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        with self._lock:
            self._uploads.pop(upload_id, None)


# -- queues -------------------------------------------------------------------------------------
@dataclass
class Delivery:
    """One message on a queue, and how often it has been received."""

    body: str
    receive_count: int = 0


class InMemoryQueue:
    """sagebatch.ports.MessageSender: records every message (as its JSON body) in order and queues it for `receive`.

    `fail_after`: accept that many more messages, then raise SendFailed for every message after them (0: refuse
    everything; None: never fail). Messages accepted before a failure stay queued, as on SQS.
    """

    def __init__(self, url: str = "queue", fail_after: int | None = None) -> None:
        self.url = url
        self.fail_after = fail_after
        self.sent: list[str] = []  # every body ever accepted, in order
        self._pending: deque[Delivery] = deque()
        self._lock = threading.Lock()

    def send(self, message: BaseModel) -> None:
        self.send_all([message])

    def send_all(self, messages: Iterable[BaseModel]) -> int:
        sent = 0
        for message in messages:
            self.put_body(message.model_dump_json())
            sent += 1
        return sent

    def put_body(self, body: str) -> None:
        """Queue a JSON body as it is (a message sent by someone else, a redrive); honours `fail_after`."""
        with self._lock:
            if self.fail_after is not None:
                if self.fail_after <= 0:
                    raise SendFailed(f"1 messages could not be sent to {self.url}")
                self.fail_after -= 1
            self.sent.append(body)
            self._pending.append(Delivery(body))

    def messages(self, model: type[M]) -> list[M]:
        """Every message sent so far, parsed."""
        with self._lock:
            bodies = list(self.sent)
        return [model.model_validate_json(body) for body in bodies]

    def receive(self) -> Delivery | None:
        """The next pending message (its receive count raised by one), or None when the queue is empty."""
        with self._lock:
            if not self._pending:
                return None
            delivery = self._pending.popleft()
            delivery.receive_count += 1
            return delivery

    def requeue(self, delivery: Delivery) -> None:
        """A received message that was not deleted becomes visible again (at the back of the queue)."""
        with self._lock:
            self._pending.append(delivery)

    def pending(self) -> list[str]:
        with self._lock:
            return [delivery.body for delivery in self._pending]

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)


class InMemoryWorkSource:
    """sagebatch.ports.WorkSource over an InMemoryQueue: taken messages are held until done or released."""

    def __init__(self, queue: InMemoryQueue) -> None:
        self.queue = queue
        self._held: dict[str, Delivery] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def receive(self, max_items: int) -> list[WorkItem]:
        items = []
        for _ in range(max(1, max_items)):
            delivery = self.queue.receive()
            if delivery is None:
                break
            handle = f"taken-{next(self._ids)}"
            with self._lock:
                self._held[handle] = delivery
            items.append(WorkItem(handle, delivery.body, delivery.receive_count, handle))
        return items

    def done(self, item: WorkItem) -> None:
        with self._lock:
            self._held.pop(item.handle)

    def release(self, item: WorkItem) -> None:
        with self._lock:
            delivery = self._held.pop(item.handle)
        self.queue.requeue(delivery)


class InMemoryEnvironmentRegistry:
    """sagebatch.ports.EnvironmentRegistry over a dict."""

    def __init__(self) -> None:
        self._until: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def heartbeat(self, environment: str, until: float, now: float, holding: int) -> dict[str, int]:
        with self._lock:
            self._until[environment] = (until, holding)
            return {name: held for name, (expiry, held) in self._until.items() if expiry > now}

    def leave(self, environment: str) -> None:
        with self._lock:
            self._until[environment] = (0.0, 0)


class RecordingMessageSender(InMemoryQueue):
    """An InMemoryQueue used only to look at what was sent (the same class, named for what a test does with it)."""


class InMemoryDeadLetterQueues:
    """sagebatch.ports.DeadLetterQueues over InMemoryQueues found by URL. StartMessageMoveTask is unsupported by
    default, as under moto; with `move_task=True` it moves every message at once and returns a handle."""

    def __init__(self, queues: Mapping[str, InMemoryQueue], sources: Mapping[str, str], move_task: bool = False) -> None:
        self._queues = dict(queues)
        self._sources = dict(sources)  # dead-letter queue url -> the url of the queue that dead-letters into it
        self._move_task = move_task
        self._tasks = itertools.count(1)

    def start_move_task(self, dlq_url: str, destination_url: str | None = None) -> str:
        if not self._move_task:
            raise MoveTaskUnsupported("StartMessageMoveTask is not implemented here")
        self._move(dlq_url, destination_url or self.only_source(dlq_url))
        return f"task-{next(self._tasks)}"

    def only_source(self, dlq_url: str) -> str:
        source = self._sources.get(dlq_url)
        if source is None:
            raise NoRedriveDestination(f"{dlq_url} is the dead-letter queue of 0 queues; name the destination")
        return source

    def copy_messages(self, dlq_url: str, destination_url: str, wait_s: int = 1) -> int:
        return self._move(dlq_url, destination_url)

    def _move(self, dlq_url: str, destination_url: str) -> int:
        dlq, destination = self._queues[dlq_url], self._queues[destination_url]
        moved = 0
        while (delivery := dlq.receive()) is not None:
            try:
                destination.put_body(delivery.body)
            except SendFailed:
                dlq.requeue(delivery)
                raise SendFailed(f"messages could not be sent to {destination_url} ({moved} moved)") from None
            moved += 1
        return moved


# -- notifications ------------------------------------------------------------------------------
class InMemoryJobEvents:
    """sagebatch.ports.JobEvents: keeps every event published, in order. `refuse(status, times)` makes the next
    `times` publishes (of `status` only, if given) raise PublishFailed, as EventBridgeJobEvents does once PutEvents
    keeps refusing an entry."""

    def __init__(self) -> None:
        self.published: list[JobStateChange] = []
        self._refusals: list[tuple[JobStatus | None, int]] = []
        self._lock = threading.Lock()

    def refuse(self, status: JobStatus | None = None, times: int = 1) -> None:
        with self._lock:
            self._refusals.append((status, times))

    def publish(self, event: JobStateChange) -> None:
        with self._lock:
            for index, (status, times) in enumerate(self._refusals):
                if times > 0 and status in (None, event.status):
                    self._refusals[index] = (status, times - 1)
                    raise PublishFailed(f"event {event.event_id} could not be published")
            self.published.append(event)

    def of(self, job_id: str) -> list[JobStateChange]:
        """The job's events, in the order they were published."""
        with self._lock:
            return [event for event in self.published if event.job_id == job_id]

    def statuses(self, job_id: str) -> list[JobStatus]:
        return [event.status for event in self.of(job_id)]


# -- the endpoint -------------------------------------------------------------------------------
@dataclass
class EndpointCall:
    payload: dict[str, Any]
    cost_tokens: int
    error: ErrorKind | None = None  # the kind it was made to fail with, if any


@dataclass
class _Failure:
    kind: ErrorKind
    containing: str | None
    calls: frozenset[int] | None
    times: int | None
    message: str

    def matches(self, payload: dict[str, Any], number: int) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.calls is not None and number not in self.calls:
            return False
        return self.containing is None or self.containing in str(payload.get("inputs", ""))


class FakeEndpointCaller:
    """sagebatch.ports.EndpointCaller that answers at once and deterministically (the answer depends only on the
    request's `inputs`), and fails with a chosen EndpointError kind for chosen calls (`fail`)."""

    def __init__(self, answer: Callable[[dict[str, Any]], Generation] | None = None) -> None:
        self._answer = answer or self.default_answer
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self.calls: list[EndpointCall] = []  # every call, failed ones included, in the order they were made

    @staticmethod
    def default_answer(payload: dict[str, Any]) -> Generation:
        """`answer:<12 hex digits of the inputs' hash>`, 3 tokens (fewer if max_new_tokens is lower)."""
        digest = hashlib.sha256(str(payload["inputs"]).encode("utf-8")).hexdigest()[:12]
        limit = int(payload.get("parameters", {}).get("max_new_tokens", 3))
        return Generation(f"answer:{digest}", min(3, limit), "length" if limit < 3 else "eos_token")

    def fail(
        self,
        kind: ErrorKind,
        *,
        containing: str | None = None,
        calls: Iterable[int] | None = None,
        times: int | None = None,
        message: str | None = None,
    ) -> None:
        """Fail with `kind` every call whose `inputs` contain `containing` and/or whose number (1-based, in call
        order) is in `calls`; at most `times` times (None: always). The first matching rule wins."""
        with self._lock:
            self._failures.append(
                _Failure(
                    kind, containing, frozenset(calls) if calls is not None else None, times, message or f"injected {kind.value}"
                )
            )

    def invoke(self, payload: dict[str, Any], cost_tokens: int, budget: TimeBudget | None = None) -> Generation:
        if budget is not None:
            budget.check_call()  # as AdaptiveCaller: no call starts without the time for it (OutOfTime)
        with self._lock:
            number = len(self.calls) + 1
            failure = next((f for f in self._failures if f.matches(payload, number)), None)
            if failure is not None and failure.times is not None:
                failure.times -= 1
            self.calls.append(EndpointCall(payload, cost_tokens, failure.kind if failure else None))
        if failure is not None:
            raise EndpointError(failure.kind, failure.message)
        return self._answer(payload)

    @property
    def answered(self) -> int:
        with self._lock:
            return sum(call.error is None for call in self.calls)


def s3_notification(info: ObjectInfo) -> str:
    """S3's ObjectCreated notification for the object, as the intake queue receives it (key URL-encoded)."""
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "bucket": {"name": info.bucket},
            "object": {
                "key": quote_plus(info.key),
                "size": info.size,
                "eTag": info.etag.strip('"'),
                **({"versionId": info.version_id} if info.version_id else {}),
            },
        },
    }
    return json.dumps({"Records": [record]})


# -- the bundle and the pipeline ------------------------------------------------------------------
def fake_settings(**overrides: Any) -> Settings:
    """Settings with every field given (defaults plus `overrides`), so nothing comes from SAGEBATCH_* variables
    another test may have left in the environment."""
    values = {
        name: info.get_default(call_default_factory=True)
        for name, info in Settings.model_fields.items()
        if not info.is_required()
    }
    values |= {
        "table_name": "jobs",
        "bucket_name": "sagebatch-bucket",
        "work_queue_url": "work",
        "finalize_queue_url": "finalize",
    }
    return Settings(**(values | overrides))


@dataclass
class FakeAws:
    """One of each fake, like one deployed stack: the stack's bucket exists and is versioned."""

    settings: Settings
    jobs: InMemoryJobStore
    results: PartsResultStore  # the real parts store, over the fake object store
    calls: InMemoryCallCacheStore
    leases: InMemoryLeaseStore
    objects: InMemoryObjectStore
    work: InMemoryQueue
    finalize: InMemoryQueue
    work_dlq: InMemoryQueue
    finalize_dlq: InMemoryQueue
    endpoint: FakeEndpointCaller
    events: InMemoryJobEvents = field(default_factory=InMemoryJobEvents)
    # Intake's own queue, as far as intake sends to it: a long enqueue's `resume_intake` messages (`drive` runs them).
    intake: InMemoryQueue = field(default_factory=lambda: InMemoryQueue("intake"))
    _message_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def create(
        cls, settings: Settings | None = None, clock: Clock = time.time, endpoint: FakeEndpointCaller | None = None
    ) -> FakeAws:
        settings = settings or fake_settings()
        objects = InMemoryObjectStore()
        objects.create_bucket(settings.bucket_name, versioned=True)
        calls = InMemoryCallCacheStore()
        return cls(
            settings=settings,
            jobs=InMemoryJobStore(clock),
            results=PartsResultStore(objects, settings.bucket_name, calls),
            calls=calls,
            leases=InMemoryLeaseStore(clock),
            objects=objects,
            work=InMemoryQueue(settings.work_queue_url or "work"),
            finalize=InMemoryQueue(settings.finalize_queue_url or "finalize"),
            work_dlq=InMemoryQueue("work-dlq"),
            finalize_dlq=InMemoryQueue("finalize-dlq"),
            endpoint=endpoint or FakeEndpointCaller(),
        )

    def next_message_id(self) -> str:
        return f"message-{next(self._message_ids)}"

    def dead_letter_queues(self, move_task: bool = False) -> InMemoryDeadLetterQueues:
        queues = {q.url: q for q in (self.work, self.finalize, self.work_dlq, self.finalize_dlq)}
        return InMemoryDeadLetterQueues(
            queues, {self.work_dlq.url: self.work.url, self.finalize_dlq.url: self.finalize.url}, move_task
        )


@dataclass
class Pipeline:
    """The three use cases over one FakeAws, built as sagebatch.lambdas.service builds them over AWS."""

    aws: FakeAws
    intake: Intake
    worker: ShardProcessor
    finalizer: Finalizer
    runner: RecordRunner
    pools: tuple[ThreadPoolExecutor, ...]

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_runner(
    caller: EndpointCaller, settings: Settings, call_pool: ThreadPoolExecutor, tokenizer: MistralTokenizer | None = None
) -> RecordRunner:
    return RecordRunner(
        caller,
        TokenBudget(max_input_length=settings.max_input_length, max_total_tokens=settings.max_total_tokens),
        tokenizer or get_tokenizer(),
        settings.default_max_new_tokens,
        settings.max_line_bytes,
        call_pool,
    )


def build_pipeline(
    aws: FakeAws,
    settings: Settings | None = None,
    caller: EndpointCaller | None = None,
    in_flight: int | None = None,
    tokenizer: MistralTokenizer | None = None,
) -> Pipeline:
    """Intake, ShardProcessor and Finalizer over `aws` (settings default to `aws.settings`, the caller to `aws.endpoint`)."""
    settings = settings or aws.settings
    in_flight = in_flight or settings.calls_in_flight_per_worker
    call_pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="fake-call")
    record_pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="fake-record")
    runner = build_runner(caller or aws.endpoint, settings, call_pool, tokenizer)
    return Pipeline(
        aws=aws,
        intake=Intake(aws.jobs, aws.leases, aws.objects, aws.work, aws.finalize, settings, events=aws.events, resume=aws.intake),
        worker=ShardProcessor(
            aws.jobs,
            aws.results,
            aws.leases,
            aws.objects,
            aws.finalize,
            runner,
            record_pool,
            settings.stop_check_seconds,
            settings.lease_seconds,
            settings.checkpoint_seconds,
        ),
        finalizer=Finalizer(aws.jobs, aws.results, aws.objects, settings, events=aws.events),
        runner=runner,
        pools=(call_pool, record_pool),
    )


# As template.yaml and sagebatch.lambdas.handlers have them: a message is dead-lettered after its 5th receive,
# and the worker's 4th delivery records retryable failures as failed results.
MAX_RECEIVE_COUNT = 5
# What a delivery may raise for its message to come back (a batch item failure); anything else is a bug here.
COMES_BACK = (ShardIncomplete, Busy, ResultsIncomplete, SendFailed, PublishFailed)


@dataclass
class DriveReport:
    intake: list[IntakeOutcome] = field(default_factory=list)
    shard_deliveries: int = 0
    finalize_deliveries: int = 0
    failures: list[tuple[str, Exception]] = field(default_factory=list)  # (queue url, what a delivery raised)


def drive(aws: FakeAws, *messages: str | Mapping[str, Any], pipeline: Pipeline | None = None, strict: bool = True) -> DriveReport:
    """Run intake on each message (a JSON body, or a dict to serialise), then deliver every queued shard to the
    worker, every finalize message to the finalizer (and every `resume_intake` intake sent itself back to intake)
    until the queues are empty.

    A delivery that raises one of COMES_BACK is received again later, as SQS would after its visibility timeout
    (the worker's 4th receive is its final attempt), and is dead-lettered after its 5th receive. With `strict`,
    anything else raised propagates (in memory there are no transient errors: it is a bug); without, it is
    treated like the others. `pipeline` defaults to a new `build_pipeline(aws)`, closed at the end.
    """
    own = pipeline is None
    use = pipeline or build_pipeline(aws)
    report = DriveReport()
    try:
        for message in messages:
            body = message if isinstance(message, str) else json.dumps(dict(message))
            report.intake += use.intake.handle_message(body, aws.next_message_id())
        while True:
            if (delivery := aws.intake.receive()) is not None:  # a long enqueue going on
                resume = partial(_run_intake, use.intake, delivery.body, aws.next_message_id(), report)
                _deliver(aws.intake, InMemoryQueue("intake-dlq"), delivery, resume, report, strict)
            elif (delivery := aws.work.receive()) is not None:
                report.shard_deliveries += 1
                shard = Shard.model_validate_json(delivery.body)
                final = delivery.receive_count >= FINAL_ATTEMPT_RECEIVE_COUNT
                _deliver(
                    aws.work, aws.work_dlq, delivery, partial(use.worker.process, shard, final_attempt=final), report, strict
                )
            elif (delivery := aws.finalize.receive()) is not None:
                report.finalize_deliveries += 1
                job_id = FinalizeRequest.model_validate_json(delivery.body).job_id
                _deliver(aws.finalize, aws.finalize_dlq, delivery, partial(use.finalizer.finalize, job_id), report, strict)
            else:
                return report
    finally:
        if own:
            use.close()


def _run_intake(intake: Intake, body: str, message_id: str, report: DriveReport) -> None:
    report.intake.extend(intake.handle_message(body, message_id))


def _deliver(
    queue: InMemoryQueue, dlq: InMemoryQueue, delivery: Delivery, handle: Callable[[], object], report: DriveReport, strict: bool
) -> None:
    try:
        handle()
    except Exception as error:
        if strict and not isinstance(error, COMES_BACK):
            raise
        report.failures.append((queue.url, error))
        if delivery.receive_count >= MAX_RECEIVE_COUNT:
            dlq.put_body(delivery.body)
        else:
            queue.requeue(delivery)


if TYPE_CHECKING:  # the fakes implement the ports (checked by mypy, nothing at run time)
    from sagebatch import ports

    _jobs: ports.JobStore = InMemoryJobStore()
    _calls: ports.CallCacheStore = InMemoryCallCacheStore()
    _cache: ports.CallCache = InMemoryCallCache(InMemoryCallCacheStore(), "", 1)
    _leases: ports.LeaseStore = InMemoryLeaseStore()
    _lease: ports.Lease = InMemoryLease(InMemoryLeaseStore(), "", "")
    _objects: ports.ObjectStore = InMemoryObjectStore()
    _sender: ports.MessageSender = InMemoryQueue()
    _dlqs: ports.DeadLetterQueues = InMemoryDeadLetterQueues({}, {})
    _caller: ports.EndpointCaller = FakeEndpointCaller()
    _events: ports.JobEvents = InMemoryJobEvents()
    _work: ports.WorkSource = InMemoryWorkSource(InMemoryQueue())
    _registry: ports.EnvironmentRegistry = InMemoryEnvironmentRegistry()
