"""Intake: one intake-queue message (an S3 drop or a job submission) becomes a job and its work shards.

Work is enqueued *by reference*: a shard message names a byte range of the (version-pinned) input
object, so a million-line file costs ~4k small messages (shards grow with the input up to 256 lines,
domain/sharding.py) and no S3 object per record. Job ids are
derived from what identifies the submission (object version, client token, message id), so a
duplicate notification or a redelivered message finds the existing job instead of making a second.

Control messages (`{"action": "cancel" | "retry" | "resume_intake", "job_id": ...}`) arrive on the same queue.
They name an existing job, so unlike a job message an invalid or pointless one never creates a FAILED job: it is
logged and acknowledged. A retry becomes a child job like any other, keyed on (parent, client_token).

A large input is enqueued over as many invocations as it takes (usecases/shard_enqueue.py): intake saves its
progress on the job every so often and, when `keep_going()` says its time is running short, sends `resume_intake`
for the job to its own queue and returns; that message (or a redelivery of the first) goes on from the progress.
The job's totals are set, and it starts RUNNING, only once the whole input has been read.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from pydantic import ValidationError

from sagebatch.domain.deadline import job_deadline_s
from sagebatch.domain.encoding import SNIFF_BYTES, sniff_problem
from sagebatch.domain.errors import describe_validation_error
from sagebatch.domain.events import state_change
from sagebatch.domain.formats import Format, native_fields, resolve_output_format
from sagebatch.domain.job import IntakeProgress, Job, JobStatus
from sagebatch.domain.layout import job_input_key, manifest_key, results_key
from sagebatch.domain.messages import CONTROL_ADAPTER, CancelRequest, JobSpec, ResumeIntake, RetryRequest
from sagebatch.domain.results import ResultLine
from sagebatch.domain.sharding import shard_lines
from sagebatch.observability import logger
from sagebatch.ports import (
    InputUnreadable,
    JobEvents,
    JobStore,
    LeaseStore,
    LineSpan,
    MessageSender,
    NoJobEvents,
    ObjectInfo,
    ObjectStore,
)
from sagebatch.settings import Settings
from sagebatch.usecases.control.cancel import cancel
from sagebatch.usecases.control.retry import Lineage, RetryRefused, retry_lineage, retryable
from sagebatch.usecases.finishing import begin_finalize, resume_finalize
from sagebatch.usecases.input_format import InputFormat, decide_input_format
from sagebatch.usecases.lease import Lease
from sagebatch.usecases.shard_enqueue import IntakeSuperseded, KeepGoing, ShardEnqueuer

_JOB_NAMESPACE = uuid.UUID("5d7f3c7e-9a53-4f0b-9d64-2a1c5b1e7a10")


def _always() -> bool:
    return True


CONTINUES = "continues"  # the reason of an outcome whose enqueue goes on in a `resume_intake` message


@dataclass(frozen=True)
class IntakeOutcome:
    job_id: str | None
    created: bool
    reason: str = ""

    @property
    def continues(self) -> bool:
        return self.reason == CONTINUES


@dataclass(frozen=True)
class S3Drop:
    bucket: str
    key: str
    version_id: str | None
    etag: str | None

    @property
    def job_id(self) -> str:
        """The same object version always maps to the same job, however often S3 notifies."""
        version = self.version_id or (self.etag or "").strip('"')
        return job_id_for(f"s3://{self.bucket}/{self.key}#{version}")


def job_id_for(identity: str) -> str:
    return str(uuid.uuid5(_JOB_NAMESPACE, identity))


def retry_job_id(parent_job_id: str, client_token: str | None = None) -> str:
    """The child a retry request makes: one per (parent, client_token), so a repeated or redelivered request
    finds it again. Without a token a job has one retry child; retry that child to go again."""
    return job_id_for(f"retry:{parent_job_id}#{client_token or ''}")


def parse_s3_drops(body: dict[str, Any]) -> list[S3Drop] | None:
    """The S3 object-created records in a notification, keys URL-decoded; None if `body` is not one.

    S3 URL-encodes keys (space as '+', '+' as '%2B'), so decode before any S3 call or id.
    Powertools' S3 model keeps keys encoded and requires fields moto omits (aws-reliability.md 10),
    hence this small tolerant parser.
    """
    if body.get("Event") == "s3:TestEvent":
        return []
    records = body.get("Records")
    if (
        not isinstance(records, list)
        or not records
        or not all(isinstance(r, dict) and r.get("eventSource") == "aws:s3" for r in records)
    ):
        return None
    drops = []
    for record in records:
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        s3 = record["s3"]
        obj = s3["object"]
        drops.append(S3Drop(s3["bucket"]["name"], unquote_plus(obj["key"]), obj.get("versionId") or None, obj.get("eTag")))
    return drops


class Intake:
    def __init__(
        self,
        jobs: JobStore,
        leases: LeaseStore,
        objects: ObjectStore,
        work: MessageSender,
        finalize: MessageSender,
        settings: Settings,
        events: JobEvents | None = None,
        resume: MessageSender | None = None,
    ):
        """`resume` is intake's own queue, for `resume_intake`; without it intake never stops before the input's end."""
        self._jobs = jobs
        self._leases = leases
        self._objects = objects
        self._work = work
        self._finalize = finalize
        self._settings = settings
        self._events = events or NoJobEvents()
        self._resume = resume
        self._enqueuer = ShardEnqueuer(
            objects,
            work,
            jobs,
            settings.intake_send_threads,
            settings.intake_checkpoint_shards,
            settings.intake_checkpoint_seconds,
        )

    def handle_message(self, body_text: str, message_id: str, keep_going: KeepGoing = _always) -> list[IntakeOutcome]:
        """Handle one intake-queue message; `keep_going()` turning False (the invocation's time running short) makes
        a long enqueue save its progress and continue in a `resume_intake` message."""
        if self._resume is None:
            keep_going = _always
        try:
            body = json.loads(body_text)
        except ValueError:
            return [self._reject(job_id_for(f"msg:{message_id}"), "the job message is not valid JSON")]
        if not isinstance(body, dict):
            return [self._reject(job_id_for(f"msg:{message_id}"), "the job message must be a JSON object")]
        if "action" in body:
            return [self.control(body, keep_going)]
        drops = parse_s3_drops(body)
        if drops is not None:
            return [self.submit_s3_drop(drop, keep_going) for drop in drops]
        return [self.submit_job(body, message_id, keep_going)]

    def submit_s3_drop(self, drop: S3Drop, keep_going: KeepGoing = _always) -> IntakeOutcome:
        job_id = drop.job_id
        # Anyone who may send to the intake queue can forge a notification: check its bucket like a job's input.
        if not self._settings.allows_input(drop.bucket, drop.key):
            return self._reject(job_id, self._not_allowed(drop.bucket, drop.key))
        job = Job(
            job_id=job_id, source=f"s3://{drop.bucket}/{drop.key}", bucket=drop.bucket, key=drop.key, version_id=drop.version_id
        )
        return self._start(self._with_formats(job), keep_going=keep_going)

    def submit_job(self, body: dict[str, Any], message_id: str, keep_going: KeepGoing = _always) -> IntakeOutcome:
        try:
            spec = JobSpec.model_validate(body)
        except ValidationError as error:
            given = body.get("job_id") if isinstance(body.get("job_id"), str) else None
            job_id = given if given and len(given) <= 64 else job_id_for(f"msg:{message_id}")
            return self._reject(job_id, "invalid job message: " + describe_validation_error(error, "message"))
        if spec.client_token:
            job_id = spec.job_id or job_id_for(f"token:{spec.client_token}")
        else:
            job_id = spec.job_id or job_id_for(f"msg:{message_id}")
        if spec.records is not None:
            bucket, key = self._settings.bucket_name, job_input_key(job_id)
            existing = self._jobs.get_job(job_id)
            if existing is None or existing.status == JobStatus.CREATING:
                payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in spec.records)
                self._objects.put_bytes(bucket, key, payload.encode("utf-8"))
        else:
            bucket, key = spec.bucket_and_key
            if not self._settings.allows_input(bucket, key):
                return self._reject(job_id, self._not_allowed(bucket, key))
        job = Job(
            job_id=job_id,
            source=f"s3://{bucket}/{key}",
            bucket=bucket,
            key=key,
            parameters=spec.parameters,
            fit=spec.fit,
            client_token=spec.client_token,
        )
        return self._start(self._with_formats(job, spec.output_format), spec.deadline_s, keep_going=keep_going)

    def control(self, body: dict[str, Any], keep_going: KeepGoing = _always) -> IntakeOutcome:
        try:
            request = CONTROL_ADAPTER.validate_python(body)
        except ValidationError as error:
            reason = "invalid control message: " + describe_validation_error(error, "message")
            logger.warning("invalid control message", extra={"reason": reason})
            return IntakeOutcome(None, False, reason)
        if isinstance(request, CancelRequest):
            return IntakeOutcome(request.job_id, False, cancel(self._jobs, request.job_id).message)
        if isinstance(request, ResumeIntake):
            return self.resume_intake(request.job_id, keep_going)
        return self.submit_retry(request, keep_going)

    def resume_intake(self, job_id: str, keep_going: KeepGoing = _always) -> IntakeOutcome:
        """Go on enqueueing a CREATING job's shards from its saved progress (or from the start, if none was saved)."""
        job = self._jobs.get_job(job_id)
        if job is None or job.status != JobStatus.CREATING:
            logger.info("nothing to resume", extra={"job_id": job_id, "status": job.status if job else None})
            return IntakeOutcome(job_id if job else None, False, "duplicate" if job else "no such job")
        lineage = None
        if job.parent_job_id is not None:  # a retry job's shards carry its lines' places in the parent
            try:
                lineage = self._parent_lineage(retryable(self._jobs.get_job(job.parent_job_id), job.parent_job_id))
            except (RetryRefused, InputUnreadable) as error:
                self._fail(job, f"cannot resume retry job {job_id}: {error}")
                return IntakeOutcome(job_id, False, str(error))
        return self._enqueue_once(job, False, lineage, keep_going)

    def submit_retry(self, request: RetryRequest, keep_going: KeepGoing = _always) -> IntakeOutcome:
        """A child job over the parent's records that did not succeed, read again from the parent's pinned input."""
        job_id = retry_job_id(request.job_id, request.client_token)
        existing = self._jobs.get_job(job_id)
        if existing is not None and existing.status != JobStatus.CREATING:
            logger.info("duplicate retry", extra={"job_id": job_id, "parent_job_id": request.job_id, "status": existing.status})
            return IntakeOutcome(job_id, False, "duplicate")
        bucket, key = self._settings.bucket_name, job_input_key(job_id)
        try:
            parent = retryable(self._jobs.get_job(request.job_id), request.job_id)
            lineage = self._write_retry_input(parent, bucket, key)
        except (RetryRefused, InputUnreadable) as error:
            reason = str(error) if isinstance(error, RetryRefused) else f"cannot retry job {request.job_id}: {error}"
            logger.warning("retry refused", extra={"parent_job_id": request.job_id, "reason": reason})
            return IntakeOutcome(None, False, reason)
        job = Job(
            job_id=job_id,
            source=f"s3://{bucket}/{key}",
            bucket=bucket,
            key=key,
            parameters=parent.parameters,
            fit=parent.fit,
            client_token=request.client_token,
            parent_job_id=parent.job_id,
            # The parent's lines in the parent's format (its deciding line is not among them), results in its shape.
            input_format=parent.input_format,
            output_format=parent.output_format,
        )
        logger.info("retry", extra={"job_id": job_id, "parent_job_id": parent.job_id, "records": len(lineage)})
        return self._start(job, request.deadline_s, lineage, keep_going)

    def _parent_lineage(self, parent: Job) -> Lineage:
        """Where each line of a retry of `parent` comes from (its results.jsonl read once, two integers kept a line)."""
        results = self._objects.head(self._settings.bucket_name, results_key(parent.job_id))
        return retry_lineage(ResultLine.model_validate(native_fields(json.loads(line))) for line in self._objects.lines(results))

    def _write_retry_input(self, parent: Job, bucket: str, key: str) -> Lineage:
        """Copy the parent's input lines that did not succeed to s3://bucket/key, in order; return where each came from.

        Streams the parent's results.jsonl and its input once each (the input pinned to the version, or ETag,
        the parent read), so neither has to fit in memory; only two integers per retried line are kept.
        """
        lineage = self._parent_lineage(parent)
        source = ObjectInfo(parent.bucket, parent.key, parent.version_id, parent.etag or "", 0)
        wanted = iter(lineage.parent_lines)
        next_line = next(wanted, None)
        with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as spool:
            if next_line is not None:
                for number, raw in enumerate(self._objects.lines(source), start=1):
                    if number == next_line:
                        spool.write(raw + b"\n")
                        next_line = next(wanted, None)
                        if next_line is None:
                            break
            if next_line is not None:
                raise InputUnreadable(f"the input s3://{parent.bucket}/{parent.key} has no line {next_line} any more")
            spool.seek(0)
            self._objects.upload_file(bucket, key, spool)
        return lineage

    def _with_formats(self, job: Job, requested: Format | None = None) -> Job:
        """The job with its input's format, decided by the first recognisable line in the head of the object (so
        that no worker decides again), and the format its results take: as requested, else the input's."""
        try:
            info = self._objects.head(job.bucket, job.key, job.version_id)
            decided = decide_input_format(self._objects, info, self._settings.max_line_bytes)
        except InputUnreadable:
            decided = InputFormat()  # the job fails at _enqueue's read, with the reason
        return job.model_copy(
            update={
                "input_format": decided.format,
                "input_format_line": decided.line,
                "output_format": resolve_output_format(requested, decided.format),
            }
        )

    def _start(
        self, job: Job, deadline_s: int | None = None, lineage: Lineage | None = None, keep_going: KeepGoing = _always
    ) -> IntakeOutcome:
        job.deadline_at = job.created_at + self._deadline_s(job, deadline_s)
        job, created = self._jobs.create_job(job)
        if not created and job.status != JobStatus.CREATING:
            logger.info("duplicate submission", extra={"job_id": job.job_id, "status": job.status})
            resume_finalize(self._jobs, self._finalize, job)  # in case this message's first try failed there
            return IntakeOutcome(job.job_id, False, "duplicate")
        return self._enqueue_once(job, created, lineage, keep_going)

    def _deadline_s(self, job: Job, requested_s: int | None) -> int:
        """The message's deadline, else the deployment's, else one derived from the input's size (domain/deadline.py)."""
        size = 0
        if not requested_s and not self._settings.default_job_deadline_s:
            try:
                size = self._objects.head(job.bucket, job.key, job.version_id).size
            except InputUnreadable:
                pass  # the job fails at _enqueue's read, with the reason
        return job_deadline_s(size, requested_s, self._settings.default_job_deadline_s)

    def _enqueue_once(self, job: Job, created: bool, lineage: Lineage | None, keep_going: KeepGoing) -> IntakeOutcome:
        # Two simultaneous deliveries of one submission both get here (the loser of create_job sees CREATING):
        # only the holder of the job's enqueue lease sends the shards; the other waits until the job has started.
        lease = Lease(self._leases.lease(job.job_id, "enqueue"), self._settings.lease_seconds)
        if not lease.acquire_or_wait(done=lambda: self._started(job.job_id), may_wait=lambda: True):
            logger.info("duplicate submission", extra={"job_id": job.job_id, "status": "started by another intake"})
            return IntakeOutcome(job.job_id, False, "duplicate")
        with lease:
            current = self._jobs.get_job(job.job_id)  # the progress an earlier intake saved, read under the lease
            if current is None or current.status != JobStatus.CREATING:
                return IntakeOutcome(job.job_id, False, "duplicate")
            return self._enqueue(current, created, lineage, keep_going)

    def _started(self, job_id: str) -> bool:
        current = self._jobs.get_job(job_id)
        return current is None or current.status != JobStatus.CREATING

    def _enqueue(self, job: Job, created: bool, lineage: Lineage | None, keep_going: KeepGoing) -> IntakeOutcome:
        progress = job.intake_progress
        if progress is None:
            # Under the enqueue lease, before the job moves on: a redelivery after a failed publish publishes it again.
            self._publish(job, JobStatus.CREATING)
        try:
            progress = progress or self._first_progress(job)
            progress = self._enqueuer.run(job, progress, lineage, keep_going)
        except InputUnreadable as error:
            self._fail(job, str(error))
            return IntakeOutcome(job.job_id, created, str(error))
        except IntakeSuperseded:
            logger.info("duplicate submission", extra={"job_id": job.job_id, "status": "started by another intake"})
            return IntakeOutcome(job.job_id, False, "duplicate")
        if not progress.complete:
            assert self._resume is not None  # keep_going is always True without it
            self._resume.send(ResumeIntake(job_id=job.job_id))
            logger.info("intake continues", extra={"job_id": job.job_id, "shards": progress.next_shard})
            return IntakeOutcome(job.job_id, created, CONTINUES)
        total_records, total_shards = progress.records, progress.next_shard
        self._publish(job, JobStatus.RUNNING, total_records=total_records)  # before the change, for the same reason
        self._jobs.start_job(job.job_id, total_records, total_shards, progress.version_id, progress.etag)
        logger.info("job started", extra={"job_id": job.job_id, "records": total_records, "shards": total_shards})
        # An empty file, or workers that finished every shard before the totals were known.
        begin_finalize(self._jobs, self._finalize, job.job_id)
        return IntakeOutcome(job.job_id, created)

    def _first_progress(self, job: Job) -> IntakeProgress:
        """The start of the enqueue: the input pinned to the version (or ETag) read now, and its shard size."""
        info = self._objects.head(job.bucket, job.key, job.version_id)
        problem = sniff_problem(self._objects.head_bytes(info, SNIFF_BYTES))
        if problem is not None:
            raise InputUnreadable(problem)
        return IntakeProgress(
            version_id=info.version_id,
            etag=info.etag,
            size=info.size,
            shard_lines=shard_lines(info.size, self._settings.shard_records),
            shard_bytes=self._settings.shard_bytes,
        )

    def _not_allowed(self, bucket: str, key: str) -> str:
        allowed = ", ".join(self._settings.allowed_input_uris)
        return f"input s3://{bucket}/{key} is outside the allowed input locations ({allowed}); see AllowedInputLocations"

    def _reject(self, job_id: str, reason: str) -> IntakeOutcome:
        """A submission that cannot become a runnable job still gets a job record saying why."""
        job, created = self._jobs.create_job(Job(job_id=job_id, source="", bucket="", key="", error=reason))
        if created or job.status == JobStatus.CREATING:
            self._publish(job, JobStatus.CREATING)
            self._fail(job, reason)
        return IntakeOutcome(job_id, created, reason)

    def _fail(self, job: Job, reason: str) -> None:
        job_id = job.job_id
        logger.warning("job failed at intake", extra={"job_id": job_id, "reason": reason})
        # Manifest and event first, the status change last: until it is made, a redelivery does all three again.
        self._objects.put_json(
            self._settings.bucket_name,
            manifest_key(job_id),
            {"job_id": job_id, "status": "FAILED", "error": reason},
        )
        self._publish(job, JobStatus.FAILED, error=reason)
        self._jobs.fail_job(job_id, reason)

    def _publish(self, job: Job, status: JobStatus, **change: Any) -> None:
        self._events.publish(state_change(job, status, time.time(), self._settings.bucket_name, **change))


def group_spans(spans: Iterator[LineSpan], max_lines: int, max_bytes: int) -> Iterator[list[LineSpan]]:
    """Consecutive lines packed into shards of at most `max_lines` lines and (unless one line is larger) `max_bytes`."""
    group: list[LineSpan] = []
    for span in spans:
        if group and (len(group) == max_lines or span.end - group[0].start > max_bytes):
            yield group
            group = []
        group.append(span)
    if group:
        yield group
