"""Intake: one intake-queue message (an S3 drop or a job submission) becomes a job and its work shards.

Work is enqueued *by reference*: a shard message names a byte range of the (version-pinned) input
object, so a million-line file costs ~30k small messages and no S3 object per record. Job ids are
derived from what identifies the submission (object version, client token, message id), so a
duplicate notification or a redelivered message finds the existing job instead of making a second.

Control messages (`{"action": "cancel" | "retry", "job_id": ...}`) arrive on the same queue. They name an
existing job, so unlike a job message an invalid or pointless one never creates a FAILED job: it is logged
and acknowledged. A retry becomes a child job like any other, keyed on (parent, client_token).
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

from sagebatch.domain.encoding import SNIFF_BYTES, sniff_problem
from sagebatch.domain.errors import describe_validation_error
from sagebatch.domain.events import state_change
from sagebatch.domain.formats import Format, native_fields, resolve_output_format
from sagebatch.domain.job import Job, JobStatus
from sagebatch.domain.layout import job_input_key, manifest_key, results_key
from sagebatch.domain.messages import CONTROL_ADAPTER, CancelRequest, JobSpec, RetryRequest, Shard
from sagebatch.domain.results import ResultLine
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

_JOB_NAMESPACE = uuid.UUID("5d7f3c7e-9a53-4f0b-9d64-2a1c5b1e7a10")


@dataclass(frozen=True)
class IntakeOutcome:
    job_id: str | None
    created: bool
    reason: str = ""


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
    ):
        self._jobs = jobs
        self._leases = leases
        self._objects = objects
        self._work = work
        self._finalize = finalize
        self._settings = settings
        self._events = events or NoJobEvents()

    def handle_message(self, body_text: str, message_id: str) -> list[IntakeOutcome]:
        try:
            body = json.loads(body_text)
        except ValueError:
            return [self._reject(job_id_for(f"msg:{message_id}"), "the job message is not valid JSON")]
        if not isinstance(body, dict):
            return [self._reject(job_id_for(f"msg:{message_id}"), "the job message must be a JSON object")]
        if "action" in body:
            return [self.control(body)]
        drops = parse_s3_drops(body)
        if drops is not None:
            return [self.submit_s3_drop(drop) for drop in drops]
        return [self.submit_job(body, message_id)]

    def submit_s3_drop(self, drop: S3Drop) -> IntakeOutcome:
        job_id = drop.job_id
        # Anyone who may send to the intake queue can forge a notification: check its bucket like a job's input.
        if not self._settings.allows_input(drop.bucket, drop.key):
            return self._reject(job_id, self._not_allowed(drop.bucket, drop.key))
        job = Job(
            job_id=job_id, source=f"s3://{drop.bucket}/{drop.key}", bucket=drop.bucket, key=drop.key, version_id=drop.version_id
        )
        return self._start(self._with_formats(job))

    def submit_job(self, body: dict[str, Any], message_id: str) -> IntakeOutcome:
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
        return self._start(self._with_formats(job, spec.output_format), spec.deadline_s)

    def control(self, body: dict[str, Any]) -> IntakeOutcome:
        try:
            request = CONTROL_ADAPTER.validate_python(body)
        except ValidationError as error:
            reason = "invalid control message: " + describe_validation_error(error, "message")
            logger.warning("invalid control message", extra={"reason": reason})
            return IntakeOutcome(None, False, reason)
        if isinstance(request, CancelRequest):
            return IntakeOutcome(request.job_id, False, cancel(self._jobs, request.job_id).message)
        return self.submit_retry(request)

    def submit_retry(self, request: RetryRequest) -> IntakeOutcome:
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
        return self._start(job, request.deadline_s, lineage)

    def _write_retry_input(self, parent: Job, bucket: str, key: str) -> Lineage:
        """Copy the parent's input lines that did not succeed to s3://bucket/key, in order; return where each came from.

        Streams the parent's results.jsonl and its input once each (the input pinned to the version, or ETag,
        the parent read), so neither has to fit in memory; only two integers per retried line are kept.
        """
        results = self._objects.head(self._settings.bucket_name, results_key(parent.job_id))
        lineage = retry_lineage(
            ResultLine.model_validate(native_fields(json.loads(line))) for line in self._objects.lines(results)
        )
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

    def _start(self, job: Job, deadline_s: int | None = None, lineage: Lineage | None = None) -> IntakeOutcome:
        job.deadline_at = job.created_at + (deadline_s or self._settings.default_job_deadline_s)
        job, created = self._jobs.create_job(job)
        if not created and job.status != JobStatus.CREATING:
            logger.info("duplicate submission", extra={"job_id": job.job_id, "status": job.status})
            resume_finalize(self._jobs, self._finalize, job)  # in case this message's first try failed there
            return IntakeOutcome(job.job_id, False, "duplicate")
        # Two simultaneous deliveries of one submission both get here (the loser of create_job sees CREATING):
        # only the holder of the job's enqueue lease sends the shards; the other waits until the job has started.
        lease = Lease(self._leases.lease(job.job_id, "enqueue"), self._settings.lease_seconds)
        if not lease.acquire_or_wait(done=lambda: self._started(job.job_id), may_wait=lambda: True):
            logger.info("duplicate submission", extra={"job_id": job.job_id, "status": "started by another intake"})
            return IntakeOutcome(job.job_id, False, "duplicate")
        with lease:
            return self._enqueue(job, created, lineage)

    def _started(self, job_id: str) -> bool:
        current = self._jobs.get_job(job_id)
        return current is None or current.status != JobStatus.CREATING

    def _enqueue(self, job: Job, created: bool, lineage: Lineage | None) -> IntakeOutcome:
        # Under the enqueue lease, before the job moves on: a redelivery after a failed publish publishes it again.
        self._publish(job, JobStatus.CREATING)
        try:
            info = self._objects.head(job.bucket, job.key, job.version_id)
            problem = sniff_problem(self._objects.head_bytes(info, SNIFF_BYTES))
            if problem is not None:
                raise InputUnreadable(problem)
            total_records, total_shards = self._enqueue_shards(job, info, lineage)
        except InputUnreadable as error:
            self._fail(job, str(error))
            return IntakeOutcome(job.job_id, created, str(error))
        self._publish(job, JobStatus.RUNNING, total_records=total_records)  # before the change, for the same reason
        self._jobs.start_job(job.job_id, total_records, total_shards, info.version_id, info.etag)
        logger.info("job started", extra={"job_id": job.job_id, "records": total_records, "shards": total_shards})
        # An empty file, or workers that finished every shard before the totals were known.
        begin_finalize(self._jobs, self._finalize, job.job_id)
        return IntakeOutcome(job.job_id, created)

    def _enqueue_shards(self, job: Job, info: ObjectInfo, lineage: Lineage | None) -> tuple[int, int]:
        lines = 0
        shards = 0

        def shard_messages() -> Iterator[Shard]:
            nonlocal lines, shards
            for group in group_spans(self._objects.line_spans(info), self._settings.shard_records, self._settings.shard_bytes):
                parent_lines, default_ids = lineage.window(lines + 1, len(group)) if lineage is not None else (None, None)
                yield Shard(
                    job_id=job.job_id,
                    shard=shards,
                    bucket=info.bucket,
                    key=info.key,
                    version_id=info.version_id,
                    etag=info.etag,
                    start=group[0].start,
                    end=group[-1].end,
                    first_line=lines + 1,
                    lines=len(group),
                    parent_lines=parent_lines,
                    default_ids=default_ids,
                    input_format=job.input_format,
                    input_format_line=job.input_format_line,
                )
                lines += len(group)
                shards += 1

        self._work.send_all(shard_messages())
        return lines, shards

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
