"""The ports: what the use cases need from the outside world, as Protocols.

The AWS adapters (sagebatch.adapters) implement them over DynamoDB, S3 and SQS; the in-memory fakes
(sagebatch.fakes) implement them over dicts for fast tests and for benchmarks too large for moto; the endpoint
client (sagebatch.endpoint) implements `EndpointCaller`. The use cases import only this module, never an adapter.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol

from pydantic import BaseModel

from sagebatch.domain.events import JobStateChange
from sagebatch.domain.generation import Generation
from sagebatch.domain.job import IntakeProgress, Job, JobStatus, ShardCounts
from sagebatch.domain.results import ResultLine, ResultUnstorable, StopReason
from sagebatch.domain.time_budget import TimeBudget

__all__ = ["ResultUnstorable"]  # part of the ports' contract, re-exported for the use cases


# -- endpoint ---------------------------------------------------------------------------------
class EndpointCaller(Protocol):
    """One logical generation call, retried and limited as the implementation sees fit.

    `cost_tokens` lets a token-aware limiter weigh long prompts more than short ones. Raises
    `sagebatch.domain.generation.EndpointError` when the call finally fails, and
    `sagebatch.domain.time_budget.OutOfTime` when `budget` (the invocation's time) allows no attempt any more.
    """

    def invoke(self, payload: dict[str, Any], cost_tokens: int, budget: TimeBudget | None = None) -> Generation: ...


# -- jobs, shards, results ----------------------------------------------------------------------
class JobStore(Protocol):
    """The job item and its shard markers. Every status change is conditional (domain.job.sources)."""

    def create_job(self, job: Job) -> tuple[Job, bool]:
        """Create the job unless one with its id exists: (the job as stored, created by this call?)."""
        ...

    def get_job(self, job_id: str) -> Job | None: ...

    def start_job(
        self, job_id: str, total_records: int, total_shards: int, version_id: str | None = None, etag: str | None = None
    ) -> None:
        """CREATING -> RUNNING with the totals and the input version read; a no-op when already started."""
        ...

    def save_intake_progress(self, job_id: str, progress: IntakeProgress) -> bool:
        """Save how far intake enqueued a CREATING job's shards (one write on the job item); False when the job is
        not (or no longer) CREATING."""
        ...

    def request_stop(self, job_id: str, reason: StopReason) -> tuple[Job | None, bool]:
        """Record why an active job stops early, once: (the job as it now is, recorded by this call?)."""
        ...

    def fail_job(self, job_id: str, reason: str) -> None:
        """CREATING -> FAILED with the reason."""
        ...

    def try_begin_finalize(self, job_id: str) -> bool:
        """RUNNING -> FINALIZING once every shard is done. Exactly one caller ever gets True."""
        ...

    def complete_job(self, job_id: str, status: JobStatus = JobStatus.COMPLETED) -> bool:
        """FINALIZING -> a finished status."""
        ...

    def mark_finalize_requested(self, job_id: str) -> None:
        """Note that the finalize message of a FINALIZING job was sent (a redelivery need not send it again)."""
        ...

    def shard_done(self, job_id: str, shard: int) -> bool: ...

    def complete_shard(self, job_id: str, shard: int, counts: ShardCounts) -> bool:
        """Mark the shard done and add its counts to the job, atomically and at most once."""
        ...

    def list_jobs(self, status: JobStatus | None = None, since: float | None = None, limit: int = 20) -> list[Job]:
        """Jobs created at or after `since` (epoch seconds), newest first, at most `limit`, only those in `status`
        when given (`sagebatch list`)."""
        ...


class CallCache(Protocol):
    """The answers of one record's endpoint calls, kept across deliveries (chunks of split / map_reduce)."""

    def get(self, key: str) -> Generation | None: ...

    def put(self, key: str, result: Generation) -> None: ...


class CallCacheStore(Protocol):
    def call_cache(self, job_id: str, line: int) -> CallCache: ...


class ResultStore(Protocol):
    """A job's results, one part per shard (sagebatch.usecases.parts): nothing per record in the job table.

    Encoded results are `domain.results.encode_result` lines. Read and write failures are the store's (throttling,
    5xx): the caller tries again later.
    """

    def load_shard(self, job_id: str, shard: int) -> dict[int, bytes]:
        """What earlier deliveries kept of this shard, by line (its part, else its checkpoint)."""
        ...

    def save_checkpoint(self, job_id: str, shard: int, encoded: list[bytes]) -> None: ...

    def save_part(self, job_id: str, shard: int, encoded_in_line_order: list[bytes]) -> None: ...

    def read_part(self, job_id: str, shard: int) -> list[ResultLine]: ...

    def results(self, job_id: str) -> Iterator[ResultLine]:
        """The results of the job's finished shards so far, in line order."""
        ...

    def call_cache(self, job_id: str, line: int) -> CallCache: ...


class Lease(Protocol):
    """One lease item: take or renew it (conditional on it being free, lapsed or ours), or let it go."""

    def acquire(self, owner: str, seconds: float) -> bool: ...

    def release(self, owner: str) -> None: ...


class LeaseStore(Protocol):
    def lease(self, job_id: str, name: str) -> Lease:
        """The lease `name` of a job (one shard's, or the job's enqueueing)."""
        ...


# -- objects ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectInfo:
    bucket: str
    key: str
    version_id: str | None
    etag: str
    size: int


@dataclass(frozen=True)
class LineSpan:
    """Where one input line sits in the object: bytes [start, end), newline included."""

    start: int
    end: int


class InputUnreadable(Exception):
    """The job's input cannot be read (missing, access denied, changed, ...): a job-level error."""


class UploadGone(Exception):
    """A multipart upload no longer exists: completed, aborted, or expired by the bucket's lifecycle."""


class ObjectStore(Protocol):
    """Reads pinned to the version (or ETag) the job saw; writes of whole objects."""

    def head(self, bucket: str, key: str, version_id: str | None = None) -> ObjectInfo:
        """The object's identity; raises InputUnreadable."""
        ...

    def head_bytes(self, info: ObjectInfo, count: int) -> bytes: ...

    def line_spans(self, info: ObjectInfo) -> Iterator[LineSpan]:
        """Each line's byte range, streamed (bounded memory)."""
        ...

    def lines(self, info: ObjectInfo, start: int = 0) -> Iterator[bytes]:
        """Each line without its newline, streamed; from byte `start` on (a line's first byte) when given."""
        ...

    def read_range(self, info: ObjectInfo, start: int, end: int) -> bytes: ...

    def read_bytes(self, bucket: str, key: str) -> bytes: ...

    def read_if_exists(self, bucket: str, key: str) -> bytes | None:
        """A whole object the service wrote itself, or None when there is none (yet)."""
        ...

    def keys(self, bucket: str, prefix: str) -> Iterable[str]:
        """The keys under `prefix`, in key order."""
        ...

    def put_bytes(self, bucket: str, key: str, body: bytes, content_type: str = "application/x-ndjson") -> None: ...

    def put_json(self, bucket: str, key: str, value: Any) -> None: ...

    def upload_file(self, bucket: str, key: str, fileobj: IO[bytes], content_type: str = "application/x-ndjson") -> None: ...

    # A multipart upload written part by part (each but the last >= 5 MiB), resumable from its id and part ETags.
    def start_multipart(self, bucket: str, key: str, content_type: str = "application/x-ndjson") -> str: ...

    def upload_part(self, bucket: str, key: str, upload_id: str, number: int, body: bytes) -> str:
        """Upload part `number` (1-based); returns its ETag. UploadGone if the upload no longer exists (this and
        complete_multipart)."""
        ...

    def complete_multipart(self, bucket: str, key: str, upload_id: str, etags: list[str]) -> None: ...

    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        """Abort the upload; one that no longer exists is left as it is."""
        ...

    def delete(self, bucket: str, key: str) -> None:
        """Delete an object the service wrote itself (a missing one is no error)."""
        ...


# -- queues -------------------------------------------------------------------------------------
class SendFailed(Exception):
    """Messages could not be queued: the caller's own message must come back."""


class MessageSender(Protocol):
    """JSON messages onto one queue; raises SendFailed rather than dropping any."""

    def send(self, message: BaseModel) -> None: ...

    def send_all(self, messages: Iterable[BaseModel]) -> int: ...


class MoveTaskUnsupported(Exception):
    """SQS's StartMessageMoveTask is not available (moto)."""


class NoRedriveDestination(Exception):
    """A dead-letter queue's source queue cannot be determined."""


class DeadLetterQueues(Protocol):
    def start_move_task(self, dlq_url: str, destination_url: str | None = None) -> str: ...

    def only_source(self, dlq_url: str) -> str: ...

    def copy_messages(self, dlq_url: str, destination_url: str, wait_s: int = 1) -> int: ...


# -- notifications ------------------------------------------------------------------------------
class PublishFailed(Exception):
    """A job event could not be published: the caller's own message must come back (and publish it again)."""


class JobEvents(Protocol):
    """Job state-change events (domain.events) to subscribers: EventBridge, and SNS for finished jobs.

    Delivery is at least once: whoever makes a status change publishes it, and a redelivered message may publish
    the same change again (same `event_id`). Raises PublishFailed rather than dropping an event.
    """

    def publish(self, event: JobStateChange) -> None: ...


class NoJobEvents:
    """JobEvents that publishes nothing: the default of the use cases when none are given."""

    def publish(self, event: JobStateChange) -> None:
        return None


# -- the worker's environments ----------------------------------------------------------------------------
class EnvironmentRegistry(Protocol):
    """Which worker execution environments have work right now (they share the endpoint's concurrency)."""

    def heartbeat(self, environment: str, until: float, now: float, holding: int) -> dict[str, int]:
        """Register (or renew) `environment` until `until`, announcing the endpoint slots it may hold until its next
        heartbeat (`holding`); return the announced holding of every environment registered and not lapsed at
        `now`, itself included."""
        ...

    def leave(self, environment: str) -> None: ...


@dataclass(frozen=True)
class WorkItem:
    """A work message as a worker holds it: its body, how often it was received, and how to acknowledge it."""

    message_id: str
    body: str
    receive_count: int
    handle: str


class WorkSource(Protocol):
    """The work queue, for a worker that takes more shards itself while it has room (so its slots never idle
    between batches)."""

    def receive(self, max_items: int) -> list[WorkItem]: ...

    def done(self, item: WorkItem) -> None:
        """Processed: delete it."""
        ...

    def release(self, item: WorkItem) -> None:
        """Not processed (or to be retried): make it visible again soon; its receive count goes on."""
        ...
