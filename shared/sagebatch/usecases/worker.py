"""ShardProcessor: run one work shard's records through the endpoint, store its results as one part, count it once.

Idempotent on business keys (job id + shard + line), not SQS message ids: results an earlier delivery kept (its
checkpoint, or the shard's part) are reused, never regenerated, and the job's counters move only when the shard's
marker item is created. While the shard runs, its answers are checkpointed at most every `checkpoint_seconds`
and whenever the delivery hands records back (usecases/parts.py).

A stopped job (cancelled, or past its deadline) is checked before each record starts: records already
in flight finish and are stored as usual, the others get a `cancelled`/`expired` result without a call,
so the shard still completes and the job still finalizes with one result per line. The check is shared by every
shard of the job running in this execution environment (one job read per interval, `StopChecks`).

The invocation's `TimeBudget` reaches every endpoint call: a call (first attempt, retry, each chunk of a split
record) starts only while the invocation has more than the reserve left. A record that finds no time left is
neither failed nor answered: it stays pending, the shard is checkpointed (chunk answers stay in the call cache)
and handed back, and a later delivery continues it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from sagebatch.domain.encoding import UTF8_BOM
from sagebatch.domain.job import ACTIVE, Job, JobStatus, ShardCounts
from sagebatch.domain.messages import Shard
from sagebatch.domain.results import ResultLine, ResultUnstorable, decode_result, encode_result, failed
from sagebatch.domain.time_budget import OutOfTime, TimeBudget
from sagebatch.observability import logger
from sagebatch.ports import (
    InputUnreadable,
    JobStore,
    LeaseStore,
    MessageSender,
    ObjectInfo,
    ObjectStore,
    ResultStore,
)
from sagebatch.usecases.control.stop import StopCheck, StopChecks
from sagebatch.usecases.finishing import begin_finalize, resume_finalize
from sagebatch.usecases.lease import Lease
from sagebatch.usecases.parts import ShardBuffer
from sagebatch.usecases.record_runner import RecordRunner, RetryLater


@dataclass
class Delivered:
    """What one delivery stored, for the worker's metrics: each result counts once, in the delivery that stored it
    (a redelivery that reuses it does not count it again). No text: statuses, error types and token counts."""

    succeeded: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # error.type -> results
    cancelled: int = 0
    expired: int = 0
    input_tokens: int = 0  # processed by the endpoint for these results (chunk answers reused: not counted again)
    output_tokens: int = 0

    @property
    def completed(self) -> int:
        return self.succeeded + sum(self.failed.values()) + self.cancelled + self.expired

    def add(self, result: ResultLine) -> None:
        if result.status == "failed":
            kind = result.error.type if result.error else "unknown"
            self.failed[kind] = self.failed.get(kind, 0) + 1
        else:
            setattr(self, result.status, getattr(self, result.status) + 1)
        self.input_tokens += result.usage.input_tokens - result.usage.reused_input_tokens
        self.output_tokens += result.usage.output_tokens - result.usage.reused_output_tokens


@dataclass(frozen=True)
class ShardOutcome:
    stored: int  # results stored by this delivery
    reused: int  # results found from an earlier delivery
    pending: int  # records to retry on a later delivery
    finalize_sent: bool = False
    delivered: Delivered = field(default_factory=Delivered, compare=False)  # for the worker's metrics


class ShardIncomplete(Exception):
    """Some records hit retryable endpoint failures; the message must come back."""

    def __init__(self, message: str, delivered: Delivered | None = None) -> None:
        super().__init__(message)
        self.delivered = delivered or Delivered()  # what this delivery stored before handing the shard back


class ShardProcessor:
    def __init__(
        self,
        jobs: JobStore,
        results: ResultStore,
        leases: LeaseStore,
        objects: ObjectStore,
        finalize: MessageSender,
        runner: RecordRunner,
        record_pool: ThreadPoolExecutor,
        stop_check_seconds: float = 1.0,
        lease_seconds: float = 60.0,
        checkpoint_seconds: float = 10.0,
        record_slots: Callable[[], int] = lambda: 1 << 30,
    ):
        self._jobs = jobs
        self._results = results
        self._leases = leases
        self._objects = objects
        self._finalize = finalize
        self._runner = runner
        self._pool = record_pool
        self._stop_checks = StopChecks(jobs, stop_check_seconds)
        self._lease_seconds = lease_seconds
        self._checkpoint_seconds = checkpoint_seconds
        self._waiting = 0  # records submitted to the record pool and not started yet
        # At most as many records past their stop check as may be in flight: a record never passes the check and
        # then waits for a slot while a cancel arrives (it would call after the cancel).
        self._gate = _Gate(record_slots)
        self._waiting_lock = threading.Lock()

    def process(self, shard: Shard, final_attempt: bool = False, budget: TimeBudget | None = None) -> ShardOutcome:
        """Process the shard within `budget` (the invocation's time; none: unlimited). On `final_attempt`, retryable
        failures are stored as failed results instead of retried (records without time left stay pending)."""
        budget = budget or TimeBudget.unlimited()
        job = self._jobs.get_job(shard.job_id)
        if job is not None and job.status == JobStatus.FINALIZING:
            # A redelivery after the switch: the finalize request may have been lost, ask again.
            return ShardOutcome(0, shard.lines, 0, resume_finalize(self._jobs, self._finalize, job))
        if job is None or job.status not in ACTIVE:
            logger.info("shard of a job that is not running", extra={"job_id": shard.job_id, "shard": shard.shard})
            return ShardOutcome(0, 0, 0)
        # Two copies of one shard (SQS delivers at least once) must not both call the endpoint: the first takes the
        # shard's lease; a second waits for it to finish (or for a dead holder's lease to lapse), else comes back.
        # Whether the shard was already counted is asked only when it may be: while the lease is held by another
        # (`done`), or once its stored results cover every line (`_run`), as a counted shard's part does.
        lease = Lease(self._leases.lease(shard.job_id, f"shard#{shard.shard:08d}"), self._lease_seconds)
        if not lease.acquire_or_wait(done=lambda: self._jobs.shard_done(shard.job_id, shard.shard), may_wait=budget.allows_call):
            # Counted by an earlier delivery, which may have failed before the switch to FINALIZING.
            return ShardOutcome(0, shard.lines, 0, begin_finalize(self._jobs, self._finalize, job.job_id))
        with lease, self._stop_checks.watching(job) as stop:
            return self._run(shard, job, final_attempt, budget, stop, lease)

    def _run(
        self,
        shard: Shard,
        job: Job,
        final_attempt: bool,
        budget: TimeBudget,
        stop: StopCheck,
        lease: Lease,
    ) -> ShardOutcome:
        job_id, last_line = shard.job_id, shard.first_line + shard.lines - 1
        known = self._results.load_shard(job_id, shard.shard)
        if len(known) >= shard.lines and self._jobs.shard_done(job_id, shard.shard):
            # Counted by an earlier delivery, which may have failed before the switch to FINALIZING.
            lease.finished()
            return ShardOutcome(0, shard.lines, 0, begin_finalize(self._jobs, self._finalize, job_id))

        def save_checkpoint(encoded: list[bytes]) -> None:
            # Once every line has its answer the part is written next, holding them all: a checkpoint would be a
            # second write of the same answers (if the part's write fails, they are checkpointed then).
            if len(encoded) < shard.lines:
                self._results.save_checkpoint(job_id, shard.shard, encoded)

        buffer = ShardBuffer(save_checkpoint, known, self._checkpoint_seconds)
        reused = sum(1 for line in range(shard.first_line, last_line + 1) if line in buffer)
        delivered = Delivered()
        try:
            lines = self._lines(shard)
        except InputUnreadable as error:
            # The input changed or vanished after intake: each line fails with the reason, none is lost.
            lines = []
            for line in range(shard.first_line, last_line + 1):
                if line not in buffer:
                    delivered.add(self._keep(buffer, shard, failed(line, shard.default_id(line), "input_unreadable", str(error))))
        todo = [(line, raw) for line, raw in lines if line not in buffer]

        def answer(line: int, raw: bytes) -> ResultLine | None:
            # A stopped job's record costs no call, so it is answered even when this invocation is out of time.
            reason = stop.reason()
            if reason is not None:
                return self._runner.not_run(line, raw, reason, shard.default_id(line))
            if budget.spent or not lease.held:  # out of time (no need to parse it), or the lease was taken over
                return None
            try:
                return self._runner.run(
                    line,
                    raw,
                    job.parameters,
                    job.fit,
                    shard.default_id(line),
                    self._results.call_cache(job_id, line),
                    input_format=shard.input_format,
                    input_format_line=shard.input_format_line,
                    budget=budget,
                )
            except OutOfTime:
                return None  # pending even on the final attempt: not the record's failure, only this invocation's
            except RetryLater as error:
                if final_attempt:
                    return failed(
                        line,
                        error.record_id,
                        f"endpoint_{error.error.kind.value}",
                        f"gave up after retries: {error.error.message}",
                    )
                return None

        def run_and_keep(item: tuple[int, bytes]) -> ResultLine | None:
            self._count_waiting(-1)
            with self._gate:
                result = answer(*item)
            return None if result is None else self._keep(buffer, shard, result)

        self._count_waiting(len(todo))
        futures = [self._pool.submit(run_and_keep, item) for item in todo]
        wait(futures)  # every record finishes (and is kept) before any error is raised
        pending = 0
        try:
            for future in futures:
                result = future.result()  # re-raises a failed checkpoint: the message comes back
                if result is None:
                    pending += 1
                else:
                    delivered.add(result)
        finally:
            if pending or any(future.exception() for future in futures):
                self._keep_for_next_delivery(job_id, shard, buffer)
        if pending:
            raise ShardIncomplete(f"{pending} of {shard.lines} records of shard {shard.shard} must be retried", delivered)

        encoded = buffer.in_line_order()
        try:
            self._results.save_part(job_id, shard.shard, encoded)
        except Exception:
            self._results.save_checkpoint(job_id, shard.shard, encoded)  # the answers outlive a failed part write
            raise
        counts = ShardCounts()
        for stored in encoded:
            counts.add(decode_result(stored))
        self._jobs.complete_shard(job_id, shard.shard, counts)
        # Counted: a later copy finds the shard done (asked while the lease is held, or from its part once the
        # lease lapsed), so the lease need not be released (one write less per shard); its item expires with the job.
        lease.finished()
        finalize_sent = begin_finalize(self._jobs, self._finalize, job_id)
        logger.info(
            "shard done",
            extra={
                "job_id": job_id,
                "shard": shard.shard,
                "stored": len(todo),
                "reused": reused,
                "not_run": counts.cancelled + counts.expired,
            },
        )
        return ShardOutcome(len(encoded) - reused, reused, 0, finalize_sent, delivered)

    def _keep_for_next_delivery(self, job_id: str, shard: Shard, buffer: ShardBuffer) -> None:
        """Checkpoint what this delivery paid for before the shard goes back. A buffer holding every line skipped its
        checkpoints (its part was to follow), so it is written whole, whatever the buffer thinks it saved."""
        encoded = buffer.in_line_order()
        if len(encoded) >= shard.lines:
            self._results.save_checkpoint(job_id, shard.shard, encoded)
        else:
            buffer.checkpoint()

    @property
    def waiting_records(self) -> int:
        """Records of running shards that no thread has started yet."""
        with self._waiting_lock:
            return self._waiting

    def _count_waiting(self, change: int) -> None:
        with self._waiting_lock:
            self._waiting += change

    def _keep(self, buffer: ShardBuffer, shard: Shard, result: ResultLine) -> ResultLine:
        """Keep one line's result in the shard's buffer. A result that cannot be stored as it is becomes the line's
        `internal_error` result instead."""
        result = _traced(shard, result)
        try:
            encoded = encode_result(result)
        except ResultUnstorable as error:
            logger.error("result could not be stored", extra={"job_id": shard.job_id, "line": result.line})
            result = _traced(
                shard,
                failed(
                    result.line,
                    result.id,
                    "internal_error",
                    f"the result could not be stored: {error}",
                    usage=result.usage,
                    calls=result.calls,
                    endpoint_seconds=result.endpoint_seconds,
                    worker_seconds=result.worker_seconds,
                ),
            )
            encoded = encode_result(result)
        buffer.add(result.line, encoded)
        return result

    def _lines(self, shard: Shard) -> list[tuple[int, bytes]]:
        """The shard's lines (without newline) numbered from `first_line`."""
        info = ObjectInfo(shard.bucket, shard.key, shard.version_id, shard.etag or "", shard.end)
        data = self._objects.read_range(info, shard.start, shard.end)
        pieces = data.split(b"\n")
        if data.endswith(b"\n"):
            pieces.pop()
        if len(pieces) != shard.lines:
            raise InputUnreadable(f"the input changed: shard {shard.shard} expected {shard.lines} lines, read {len(pieces)}")
        if shard.start == 0 and pieces and pieces[0].startswith(UTF8_BOM):
            pieces[0] = pieces[0][len(UTF8_BOM) :]  # a file saved "UTF-8 with BOM": the first record is still line 1
        return [(shard.first_line + i, piece.rstrip(b"\r")) for i, piece in enumerate(pieces)]


def _traced(shard: Shard, result: ResultLine) -> ResultLine:
    """A retry job's result names the line it had in the parent job."""
    parent_line = shard.parent_line(result.line)
    return result if parent_line is None else result.model_copy(update={"parent_line": parent_line})


class _Gate:
    """A semaphore whose size is read each time (the environment's share of the endpoint changes as it runs)."""

    def __init__(self, capacity: Callable[[], int]):
        self._capacity = capacity
        self._held = 0
        self._changed = threading.Condition()

    def __enter__(self) -> None:
        with self._changed:
            while self._held >= max(1, self._capacity()):
                self._changed.wait(0.2)  # re-read the capacity now and then: a resize does not notify
            self._held += 1

    def __exit__(self, *exc: object) -> None:
        with self._changed:
            self._held -= 1
            self._changed.notify()
