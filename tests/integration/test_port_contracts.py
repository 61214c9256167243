"""The ports' contracts, checked the same way against the in-memory fakes (sagebatch.fakes) and the AWS adapters on
moto (tables, bucket and queues built from template.yaml by the local stack), so the fakes the flow tests run on
cannot drift from the adapters the service runs on."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from sagebatch.adapters.dynamodb import Table
from sagebatch.adapters.environments import DynamoEnvironmentRegistry
from sagebatch.adapters.jobs import DynamoJobStore
from sagebatch.adapters.leases import DynamoLeaseStore
from sagebatch.adapters.objects import S3ObjectStore
from sagebatch.adapters.queues import SqsDeadLetterQueues, SqsMessageSender
from sagebatch.adapters.results import DynamoCallCacheStore
from sagebatch.domain.generation import Generation
from sagebatch.domain.job import IntakeProgress, InvalidTransition, Job, JobStatus, ShardCounts
from sagebatch.domain.messages import FinalizeRequest
from sagebatch.domain.parameters import Parameters
from sagebatch.domain.records import FitSettings, Strategy
from sagebatch.domain.results import RecordError, ResultLine, Usage, encode_result
from sagebatch.fakes import FakeAws, InMemoryEnvironmentRegistry
from sagebatch.ports import (
    DeadLetterQueues,
    EnvironmentRegistry,
    InputUnreadable,
    JobStore,
    LeaseStore,
    LineSpan,
    MessageSender,
    MoveTaskUnsupported,
    ObjectStore,
    ResultStore,
)
from sagebatch.tooling.local.stack import REGION, LocalStack, moto_requests_one_at_a_time
from sagebatch.usecases.parts import PartMissing, PartsResultStore

PLAIN_BUCKET = "contract-unversioned"


@dataclass
class Backend:
    """One implementation of every port, plus what a test needs to arrange and observe it."""

    jobs: JobStore
    results: ResultStore
    leases: LeaseStore
    objects: ObjectStore
    bucket: str  # versioned, like the stack's bucket
    plain_bucket: str  # unversioned: reads are pinned to the ETag
    delete_object: Callable[[str, str], None]
    sender: MessageSender  # onto the work queue
    drain: Callable[[str], list[str]]  # receive and delete every message on a queue: their bodies
    dead_letters: DeadLetterQueues
    work_url: str
    work_dlq_url: str
    send_raw: Callable[[str, str], None]  # put a body on a queue (a message that dead-lettered)
    environments: EnvironmentRegistry


def _fake_backend() -> Iterator[Backend]:
    aws = FakeAws.create()
    aws.objects.create_bucket(PLAIN_BUCKET, versioned=False)
    queues = {q.url: q for q in (aws.work, aws.work_dlq)}

    def drain(url: str) -> list[str]:
        bodies = []
        while (delivery := queues[url].receive()) is not None:
            bodies.append(delivery.body)
        return bodies

    yield Backend(
        jobs=aws.jobs,
        results=aws.results,
        leases=aws.leases,
        objects=aws.objects,
        bucket=aws.settings.bucket_name,
        plain_bucket=PLAIN_BUCKET,
        delete_object=aws.objects.delete,
        sender=aws.work,
        drain=drain,
        dead_letters=aws.dead_letter_queues(),
        work_url=aws.work.url,
        work_dlq_url=aws.work_dlq.url,
        send_raw=lambda url, body: queues[url].put_body(body),
        environments=InMemoryEnvironmentRegistry(),
    )


@pytest.fixture(scope="module")
def moto() -> Iterator[None]:
    """One moto for the module (starting it is the slow part); each test gets its own stack in it."""
    with mock_aws(), moto_requests_one_at_a_time():
        yield


def _aws_backend() -> Iterator[Backend]:
    stack = LocalStack().create()  # the template's table, bucket and queues, under fresh names
    try:
        dynamodb, s3, sqs = (boto3.client(name, region_name=REGION) for name in ("dynamodb", "s3", "sqs"))
        plain_bucket = f"{PLAIN_BUCKET}-{stack.suffix}"
        s3.create_bucket(Bucket=plain_bucket)
        table = Table(dynamodb, stack.table)
        objects = S3ObjectStore(s3)

        def drain(url: str) -> list[str]:
            bodies = []
            while messages := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages"):
                for message in messages:
                    bodies.append(message["Body"])
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            return bodies

        yield Backend(
            jobs=DynamoJobStore(table),
            results=PartsResultStore(objects, stack.bucket, DynamoCallCacheStore(table)),
            leases=DynamoLeaseStore(table),
            objects=objects,
            bucket=stack.bucket,
            plain_bucket=plain_bucket,
            delete_object=lambda bucket, key: s3.delete_object(Bucket=bucket, Key=key),
            sender=SqsMessageSender(sqs, stack.queue_url("WorkQueue")),
            drain=drain,
            dead_letters=SqsDeadLetterQueues(sqs),
            work_url=stack.queue_url("WorkQueue"),
            work_dlq_url=stack.queue_url("WorkDLQ"),
            send_raw=lambda url, body: sqs.send_message(QueueUrl=url, MessageBody=body),
            environments=DynamoEnvironmentRegistry(table, "mistral"),
        )
    finally:
        stack.stop()


@pytest.fixture(params=["fake", "aws"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "fake":
        yield from _fake_backend()
    else:
        request.getfixturevalue("moto")
        yield from _aws_backend()


def new_job(job_id: str = "job-1", **values: Any) -> Job:
    return Job(job_id=job_id, source="s3://b/k", bucket="b", key="k", **values)


def started(backend: Backend, job_id: str = "job-1", shards: int = 2, records: int = 10) -> None:
    backend.jobs.create_job(new_job(job_id))
    backend.jobs.start_job(job_id, records, shards)


def result(line: int, output: str = "ok", **values: Any) -> ResultLine:
    return ResultLine(
        id=line, line=line, status="succeeded", output=output, usage=Usage(input_tokens=5, output_tokens=2), calls=1, **values
    )


# -- JobStore ------------------------------------------------------------------------------------
def test_a_job_is_created_once_and_a_second_create_returns_the_first(backend: Backend) -> None:
    # Given a job created with its settings
    first = new_job(
        parameters=Parameters(temperature=0.5), fit=FitSettings(strategy=Strategy.SPLIT), deadline_at=2e9, client_token="tok"
    )
    job, created = backend.jobs.create_job(first)
    # When the same id is created again with other values
    again, created_again = backend.jobs.create_job(new_job(client_token="other"))
    # Then the first call created it, the second did not, and both see the first job as stored
    assert (created, created_again) == (True, False)
    assert again.client_token == "tok" and again.parameters.temperature == 0.5
    assert again.fit is not None and again.fit.strategy is Strategy.SPLIT and again.deadline_at == 2e9
    assert backend.jobs.get_job("job-1") == again
    assert job.status is again.status is JobStatus.CREATING


def test_an_unknown_job_is_none(backend: Backend) -> None:
    # Given no job; When it is read; Then it is None
    assert backend.jobs.get_job("nope") is None


def test_start_job_moves_creating_to_running_once_with_totals_and_pinned_version(backend: Backend) -> None:
    # Given a CREATING job
    backend.jobs.create_job(new_job())
    # When it is started, then started again with other totals
    backend.jobs.start_job("job-1", 10, 2, version_id="v-1", etag='"abc"')
    backend.jobs.start_job("job-1", 99, 9, version_id="v-2")
    # Then the first start holds: RUNNING with its totals and the version and ETag read
    job = backend.jobs.get_job("job-1")
    assert job is not None and job.status is JobStatus.RUNNING
    assert (job.total_records, job.total_shards, job.version_id, job.etag) == (10, 2, "v-1", '"abc"')
    assert job.started_at is not None


def test_start_job_leaves_a_failed_or_missing_job_alone(backend: Backend) -> None:
    # Given a FAILED job
    backend.jobs.create_job(new_job())
    backend.jobs.fail_job("job-1", "bad input")
    # When it, and a job that does not exist, are started
    backend.jobs.start_job("job-1", 1, 1)
    backend.jobs.start_job("missing", 1, 1)
    # Then nothing changed and no job appeared
    job = backend.jobs.get_job("job-1")
    assert job is not None and job.status is JobStatus.FAILED and job.total_records is None
    assert backend.jobs.get_job("missing") is None


def test_intake_progress_is_saved_on_a_creating_job_and_read_back_with_it(backend: Backend) -> None:
    # Given a CREATING job
    backend.jobs.create_job(new_job())
    progress = IntakeProgress(version_id="v-1", etag='"abc"', size=5_000_000_000, shard_lines=256, shard_bytes=1 << 20)
    # When intake saves its progress twice, the second time further on
    first = backend.jobs.save_intake_progress("job-1", progress.after(1_000, 32))
    second = backend.jobs.save_intake_progress("job-1", progress.after(1_000, 32).after(2_000, 32))
    # Then both saves were made and the job reads back the later one, exactly
    job = backend.jobs.get_job("job-1")
    assert (first, second) == (True, True)
    assert job is not None and job.intake_progress == progress.after(1_000, 32).after(2_000, 32)
    assert (job.intake_progress.offset, job.intake_progress.next_line, job.intake_progress.next_shard) == (2_000, 65, 2)


def test_intake_progress_is_refused_once_the_job_has_started_or_for_no_job(backend: Backend) -> None:
    # Given a RUNNING job
    started(backend)
    progress = IntakeProgress(size=10, shard_lines=32, shard_bytes=1024)
    # When a late intake saves progress on it, and on a job that does not exist
    # Then neither save is made: the running job has no progress and no job appeared
    assert backend.jobs.save_intake_progress("job-1", progress) is False
    assert backend.jobs.save_intake_progress("missing", progress) is False
    job = backend.jobs.get_job("job-1")
    assert job is not None and job.intake_progress is None and backend.jobs.get_job("missing") is None


def test_fail_job_only_from_creating(backend: Backend) -> None:
    # Given a CREATING job and a RUNNING one
    backend.jobs.create_job(new_job("creating"))
    started(backend, "running")
    # When both are failed
    backend.jobs.fail_job("creating", "why")
    backend.jobs.fail_job("running", "why")
    # Then only the CREATING one is FAILED, with the reason and a finish time
    failed, running = backend.jobs.get_job("creating"), backend.jobs.get_job("running")
    assert failed is not None and failed.status is JobStatus.FAILED and failed.error == "why" and failed.finished_at
    assert running is not None and running.status is JobStatus.RUNNING and running.error is None


def test_a_stop_is_recorded_once_and_the_first_reason_stays(backend: Backend) -> None:
    # Given a running job
    started(backend)
    # When it is cancelled, then expires
    job, recorded = backend.jobs.request_stop("job-1", "cancelled")
    later, recorded_later = backend.jobs.request_stop("job-1", "expired")
    # Then the cancel was recorded and is still the reason
    assert recorded and not recorded_later
    assert job is not None and job.stop_reason == "cancelled" and job.stopped_at
    assert later is not None and later.stop_reason == "cancelled" and later.status is JobStatus.RUNNING


def test_a_stop_leaves_finishing_and_unknown_jobs_alone(backend: Backend) -> None:
    # Given a FINALIZING job
    started(backend, shards=0, records=0)
    assert backend.jobs.try_begin_finalize("job-1")
    # When it and an unknown job are cancelled
    job, recorded = backend.jobs.request_stop("job-1", "cancelled")
    missing = backend.jobs.request_stop("missing", "cancelled")
    # Then nothing is recorded: the job as it is, and None for the unknown one
    assert not recorded and job is not None and job.stop_reason is None and job.status is JobStatus.FINALIZING
    assert missing == (None, False)


def test_a_shard_completes_once_and_adds_its_counts_once(backend: Backend) -> None:
    # Given a running job of two shards
    started(backend)
    counts = ShardCounts(**{name: n for n, name in enumerate(ShardCounts.model_fields, start=1)})  # every counter
    # When shard 0 completes twice
    first, second = backend.jobs.complete_shard("job-1", 0, counts), backend.jobs.complete_shard("job-1", 0, counts)
    # Then only the first counted; the shard is done, the other is not
    assert (first, second) == (True, False)
    job = backend.jobs.get_job("job-1")
    assert job is not None and job.shards_done == 1
    assert ShardCounts.model_validate(job.model_dump(include=set(ShardCounts.model_fields))) == counts
    assert backend.jobs.shard_done("job-1", 0) and not backend.jobs.shard_done("job-1", 1)


def test_finalizing_begins_only_when_every_shard_is_done_and_only_once(backend: Backend) -> None:
    # Given a running job of two shards, one done
    started(backend)
    backend.jobs.complete_shard("job-1", 0, ShardCounts(succeeded=5))
    # When finalizing is attempted before and after the last shard
    early = backend.jobs.try_begin_finalize("job-1")
    backend.jobs.complete_shard("job-1", 1, ShardCounts(succeeded=5))
    # Then only the first attempt after the last shard wins
    assert not early
    assert [backend.jobs.try_begin_finalize("job-1") for _ in range(3)] == [True, False, False]
    job = backend.jobs.get_job("job-1")
    assert job is not None and job.status is JobStatus.FINALIZING


def test_a_sent_finalize_request_is_remembered_on_the_job(backend: Backend) -> None:
    # Given a job that has begun finalizing
    started(backend)
    backend.jobs.complete_shard("job-1", 0, ShardCounts(succeeded=5))
    backend.jobs.complete_shard("job-1", 1, ShardCounts(succeeded=5))
    backend.jobs.try_begin_finalize("job-1")
    before = backend.jobs.get_job("job-1")
    # When its finalize request is marked as sent
    backend.jobs.mark_finalize_requested("job-1")
    # Then the job says so (and did not before)
    after = backend.jobs.get_job("job-1")
    assert before is not None and not before.finalize_requested
    assert after is not None and after.finalize_requested and after.status is JobStatus.FINALIZING


def test_a_creating_job_never_begins_finalizing(backend: Backend) -> None:
    # Given a job not started yet (no totals); When finalizing is attempted; Then it is refused
    backend.jobs.create_job(new_job())
    assert not backend.jobs.try_begin_finalize("job-1")


def test_racing_workers_begin_finalizing_exactly_once(backend: Backend) -> None:
    # Given a running job of eight shards
    started(backend, shards=8)
    wins: list[bool] = []
    lock = threading.Lock()

    def worker(shard: int) -> None:
        backend.jobs.complete_shard("job-1", shard, ShardCounts(succeeded=1))
        won = backend.jobs.try_begin_finalize("job-1")
        with lock:
            wins.append(won)

    # When eight workers complete their shard and try to finalize at the same time
    threads = [threading.Thread(target=worker, args=(shard,)) for shard in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then exactly one wins and every shard counted
    assert wins.count(True) == 1
    job = backend.jobs.get_job("job-1")
    assert job is not None and job.shards_done == 8 and job.succeeded == 8


def test_complete_job_only_from_finalizing(backend: Backend) -> None:
    # Given a running job and a finalizing one
    started(backend, "running")
    started(backend, "finalizing", shards=0, records=0)
    backend.jobs.try_begin_finalize("finalizing")
    # When both are completed, and the finalizing one twice
    results = [
        backend.jobs.complete_job("running"),
        backend.jobs.complete_job("finalizing", JobStatus.CANCELLED),
        backend.jobs.complete_job("finalizing"),
    ]
    # Then only the first completion of the finalizing job happened
    assert results == [False, True, False]
    done = backend.jobs.get_job("finalizing")
    assert done is not None and done.status is JobStatus.CANCELLED and done.finished_at
    running = backend.jobs.get_job("running")
    assert running is not None and running.status is JobStatus.RUNNING


def test_complete_job_refuses_a_status_no_transition_leads_to(backend: Backend) -> None:
    # Given a finalizing job; When it is "completed" as CREATING; Then the state machine refuses
    started(backend, shards=0, records=0)
    backend.jobs.try_begin_finalize("job-1")
    with pytest.raises(InvalidTransition):
        backend.jobs.complete_job("job-1", JobStatus.CREATING)


def test_jobs_are_listed_newest_first_by_creation_time_status_and_limit(backend: Backend) -> None:
    # Given three jobs created at 100, 200 and 300, the middle one running
    for n in (1, 2, 3):
        backend.jobs.create_job(new_job(f"job-{n}", created_at=100.0 * n))
    backend.jobs.start_job("job-2", 1, 1)

    def ids(**query: Any) -> list[str]:
        return [job.job_id for job in backend.jobs.list_jobs(**query)]

    # When they are listed; Then newest first, and each filter applies
    assert ids() == ["job-3", "job-2", "job-1"]
    assert ids(limit=2) == ["job-3", "job-2"]
    assert ids(since=150.0) == ["job-3", "job-2"]
    assert ids(status=JobStatus.RUNNING) == ["job-2"]
    assert ids(limit=0) == []
    assert backend.jobs.list_jobs(status=JobStatus.RUNNING)[0].total_records == 1


# -- ResultStore (parts over the object store; chunk answers in the call cache) ---------------------------------
def encoded(*results: ResultLine) -> list[bytes]:
    return [encode_result(r) for r in results]


def test_a_shard_part_comes_back_in_line_order_and_is_what_load_finds(backend: Backend) -> None:
    # Given the part of shard 3 of a job
    backend.results.save_part("job-1", 3, encoded(result(7), result(8), result(9)))
    # When it is read, and loaded as a redelivery would
    part = backend.results.read_part("job-1", 3)
    loaded = backend.results.load_shard("job-1", 3)
    # Then both give the three results, by line
    assert [r.line for r in part] == [7, 8, 9]
    assert sorted(loaded) == [7, 8, 9]


def test_a_checkpoint_is_loaded_until_the_part_exists(backend: Backend) -> None:
    # Given a shard with a checkpoint of two answers
    backend.results.save_checkpoint("job-1", 0, encoded(result(1), result(3)))
    before = sorted(backend.results.load_shard("job-1", 0))
    # When its part is written with all three
    backend.results.save_part("job-1", 0, encoded(result(1), result(2), result(3)))
    # Then the checkpoint was loaded before, and the part after
    assert before == [1, 3]
    assert sorted(backend.results.load_shard("job-1", 0)) == [1, 2, 3]


def test_a_shard_without_part_or_checkpoint_loads_nothing_and_reads_as_missing(backend: Backend) -> None:
    # Given nothing stored for shard 5; Then a load finds nothing, and reading its part says it is missing
    assert backend.results.load_shard("job-1", 5) == {}
    with pytest.raises(PartMissing):
        backend.results.read_part("job-1", 5)


def test_the_finished_parts_of_a_job_come_back_in_line_order(backend: Backend) -> None:
    # Given parts written out of order (and a checkpoint, and another job's part)
    backend.results.save_part("job-1", 10, encoded(result(21), result(22)))
    backend.results.save_part("job-1", 2, encoded(result(5), result(6)))
    backend.results.save_checkpoint("job-1", 11, encoded(result(23)))
    backend.results.save_part("job-2", 0, encoded(result(1)))
    # When the job's results are read; Then only its parts, in shard (so line) order
    assert [r.line for r in backend.results.results("job-1")] == [5, 6, 21, 22]


def test_a_result_comes_back_as_it_was_stored(backend: Backend) -> None:
    # Given results with every kind of field: string and integer ids, an error, notes, chunk outputs, separators
    stored = [
        ResultLine(
            id="rec-7\u2028x",
            line=1,
            status="succeeded",
            output="é ü 😀 \u0085",
            finish_reason="length",
            usage=Usage(input_tokens=9, output_tokens=4),
            strategy="split",
            chunks=2,
            chunk_outputs=["a", "b"],
            calls=2,
            latency_ms=12.5,
            notes=["n"],
            parent_line=7,
            id_given=True,
        ),
        ResultLine(id=2, line=2, status="failed", error=RecordError(type="invalid_json", message="bad")),
        ResultLine(id="2", line=3, status="cancelled", error=RecordError(type="cancelled", message="not run")),
    ]
    backend.results.save_part("job-1", 0, encoded(*stored))
    # When they are read back; Then each is equal to what was stored (types of ids included)
    assert backend.results.read_part("job-1", 0) == stored


def test_a_result_of_any_size_is_stored_whole(backend: Backend) -> None:
    # Given a result of about 1 MB (a split of a long document, say)
    big = result(1, "x" * 1_000_000, chunk_outputs=["y" * 100_000])
    # When its shard's part is written and read; Then it comes back whole
    backend.results.save_part("job-1", 0, encoded(big))
    assert backend.results.read_part("job-1", 0) == [big]


def test_a_call_cache_keeps_chunk_answers_per_record(backend: Backend) -> None:
    # Given the call caches of two records
    one, two = backend.results.call_cache("job-1", 1), backend.results.call_cache("job-1", 2)
    # When an answer is kept for one of them
    one.put("k", Generation(text="part", generated_tokens=7, finish_reason="eos_token", latency_ms=42.0))
    # Then that record finds it (without its latency), the other does not
    assert one.get("k") == Generation(text="part", generated_tokens=7, finish_reason="eos_token")
    assert one.get("other") is None and two.get("k") is None


# -- LeaseStore ----------------------------------------------------------------------------------
def test_a_lease_is_held_by_one_owner_until_released(backend: Backend) -> None:
    # Given a lease taken by A
    lease = backend.leases.lease("job-1", "shard#00000000")
    assert lease.acquire("A", 30)
    # When B tries, A renews, B releases (not B's), and then A releases
    b_refused = not lease.acquire("B", 30)
    a_renews = lease.acquire("A", 30)
    lease.release("B")
    b_still_refused = not lease.acquire("B", 30)
    lease.release("A")
    # Then B gets it only after A released it
    assert b_refused and a_renews and b_still_refused
    assert lease.acquire("B", 30)


def test_a_lapsed_lease_can_be_taken_over(backend: Backend) -> None:
    # Given a lease A took for 50 ms
    lease = backend.leases.lease("job-1", "enqueue")
    assert lease.acquire("A", 0.05)
    # When it lapses
    time.sleep(0.1)
    # Then B takes it over and A can no longer renew it
    assert lease.acquire("B", 30)
    assert not lease.acquire("A", 30)


def test_leases_are_separate_per_job_and_name(backend: Backend) -> None:
    # Given a lease held by A; When B takes leases of another name and another job; Then B gets both
    assert backend.leases.lease("job-1", "shard#00000000").acquire("A", 30)
    assert backend.leases.lease("job-1", "shard#00000001").acquire("B", 30)
    assert backend.leases.lease("job-2", "shard#00000000").acquire("B", 30)


# -- ObjectStore ---------------------------------------------------------------------------------
def put(backend: Backend, bucket: str, key: str, body: bytes) -> Any:
    backend.objects.put_bytes(bucket, key, body)
    return backend.objects.head(bucket, key)


def test_head_describes_the_object_in_a_versioned_and_an_unversioned_bucket(backend: Backend) -> None:
    # Given an object in each bucket; When they are described
    versioned = put(backend, backend.bucket, "inputs/a.jsonl", b"abc\n")
    plain = put(backend, backend.plain_bucket, "a.jsonl", b"abc\n")
    # Then each has its size and quoted ETag; only the versioned one has a version id
    assert (versioned.size, plain.size) == (4, 4)
    assert versioned.etag.startswith('"') and versioned.etag == plain.etag
    assert versioned.version_id is not None and plain.version_id is None
    assert (versioned.bucket, versioned.key) == (backend.bucket, "inputs/a.jsonl")


@pytest.mark.parametrize("where", ["missing key", "missing bucket", "unknown version"])
def test_head_of_what_is_not_there_is_input_unreadable(backend: Backend, where: str) -> None:
    # Given an object; When something that does not exist is described; Then the input is unreadable
    put(backend, backend.bucket, "inputs/a.jsonl", b"abc\n")
    bucket, key, version = {
        "missing key": (backend.bucket, "inputs/none.jsonl", None),
        "missing bucket": ("no-such-bucket-here", "a.jsonl", None),
        "unknown version": (backend.bucket, "inputs/a.jsonl", "3sL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"),
    }[where]
    with pytest.raises(InputUnreadable):
        backend.objects.head(bucket, key, version)


def test_lines_and_spans_stream_every_line_with_its_byte_range(backend: Backend) -> None:
    # Given an object with CRLF, an empty line and a last line without a newline
    info = put(backend, backend.bucket, "inputs/a.jsonl", b"a\nbb\r\n\nccc")
    # When it is read line by line; Then each line is there without its newline ('\r' kept), with its span
    assert list(backend.objects.lines(info)) == [b"a", b"bb\r", b"", b"ccc"]
    assert list(backend.objects.line_spans(info)) == [LineSpan(0, 2), LineSpan(2, 6), LineSpan(6, 7), LineSpan(7, 10)]


def test_an_empty_object_has_no_lines_and_no_head_bytes(backend: Backend) -> None:
    # Given an empty object; When it is read; Then there is nothing in it
    info = put(backend, backend.bucket, "inputs/empty.jsonl", b"")
    assert list(backend.objects.lines(info)) == [] and list(backend.objects.line_spans(info)) == []
    assert backend.objects.head_bytes(info, 2) == b""


def test_ranges_and_head_bytes_read_exactly_the_bytes_asked_for(backend: Backend) -> None:
    # Given an object of ten bytes; When parts of it are read; Then exactly those bytes come back
    info = put(backend, backend.bucket, "inputs/a.jsonl", b"0123456789")
    assert backend.objects.read_range(info, 2, 5) == b"234"
    assert backend.objects.read_range(info, 5, 5) == b""
    assert backend.objects.read_range(info, 0, 10) == b"0123456789"
    assert backend.objects.head_bytes(info, 2) == b"01"
    assert backend.objects.head_bytes(info, 64) == b"0123456789"


def test_reads_pinned_to_a_version_still_see_it_after_an_overwrite(backend: Backend) -> None:
    # Given an object read by a job (versioned bucket), then overwritten
    info = put(backend, backend.bucket, "inputs/a.jsonl", b"old\n")
    newer = put(backend, backend.bucket, "inputs/a.jsonl", b"new content\n")
    # When the job reads it again; Then it reads the version it saw, and a fresh head sees the new one
    assert backend.objects.read_range(info, 0, 4) == b"old\n"
    assert list(backend.objects.lines(info)) == [b"old"]
    assert newer.version_id != info.version_id and newer.size == 12
    assert backend.objects.head(backend.bucket, "inputs/a.jsonl", info.version_id).size == 4


def test_reads_pinned_to_a_version_survive_a_delete(backend: Backend) -> None:
    # Given an object read by a job (versioned bucket), then deleted
    info = put(backend, backend.bucket, "inputs/a.jsonl", b"old\n")
    backend.delete_object(backend.bucket, "inputs/a.jsonl")
    # When the job reads it again; Then its version is still there, though the key is gone
    assert backend.objects.read_range(info, 0, 3) == b"old"
    with pytest.raises(InputUnreadable):
        backend.objects.head(backend.bucket, "inputs/a.jsonl")


@pytest.mark.parametrize("change", ["overwrite", "delete"])
def test_reads_pinned_to_an_etag_fail_once_the_object_changed(backend: Backend, change: str) -> None:
    # Given an object read by a job in an unversioned bucket
    info = put(backend, backend.plain_bucket, "a.jsonl", b"old\nlines\n")
    # When it is overwritten (or deleted)
    if change == "overwrite":
        backend.objects.put_bytes(backend.plain_bucket, "a.jsonl", b"new\nlines!\n")
    else:
        backend.delete_object(backend.plain_bucket, "a.jsonl")
    # Then every pinned read says the input is unreadable (a stream on its first line)
    with pytest.raises(InputUnreadable):
        backend.objects.read_range(info, 0, 4)
    with pytest.raises(InputUnreadable):
        backend.objects.head_bytes(info, 2)
    with pytest.raises(InputUnreadable):
        next(iter(backend.objects.lines(info)))
    with pytest.raises(InputUnreadable):
        next(iter(backend.objects.line_spans(info)))


def test_writes_are_read_back_whole(backend: Backend) -> None:
    # Given bytes, a JSON value and a file object written
    backend.objects.put_bytes(backend.bucket, "outputs/j/a.bin", b"\x00\x01")
    backend.objects.put_json(backend.bucket, "outputs/j/manifest.json", {"name": "ü", "n": [1, 2]})
    backend.objects.upload_file(backend.bucket, "outputs/j/results.jsonl", io.BytesIO(b'{"line": 1}\n'))
    # When they are read; Then they are what was written (JSON indented, not ASCII-escaped)
    assert backend.objects.read_bytes(backend.bucket, "outputs/j/a.bin") == b"\x00\x01"
    manifest = backend.objects.read_bytes(backend.bucket, "outputs/j/manifest.json")
    assert manifest == json.dumps({"name": "ü", "n": [1, 2]}, indent=2, ensure_ascii=False).encode("utf-8")
    assert backend.objects.read_bytes(backend.bucket, "outputs/j/results.jsonl") == b'{"line": 1}\n'


# -- MessageSender and DeadLetterQueues ---------------------------------------------------------------
def test_every_message_sent_arrives_once(backend: Backend) -> None:
    # Given 23 messages (more than one SQS batch) and one more sent alone
    messages = [FinalizeRequest(job_id=f"job-{n}") for n in range(23)]
    # When they are sent
    count = backend.sender.send_all(iter(messages))
    backend.sender.send(FinalizeRequest(job_id="alone"))
    # Then all were counted and each arrives once, as its JSON
    assert count == 23
    bodies = backend.drain(backend.work_url)
    assert sorted(FinalizeRequest.model_validate_json(body).job_id for body in bodies) == sorted(
        [m.job_id for m in messages] + ["alone"]
    )


def test_a_dead_letter_queue_names_its_source_and_copies_its_messages_back(backend: Backend) -> None:
    # Given two messages that dead-lettered from the work queue
    for n in range(2):
        backend.send_raw(backend.work_dlq_url, json.dumps({"job_id": f"job-{n}"}))
    # When the DLQ's source is asked for and its messages copied there
    source = backend.dead_letters.only_source(backend.work_dlq_url)
    moved = backend.dead_letters.copy_messages(backend.work_dlq_url, source, wait_s=0)
    # Then the source is the work queue, both moved, and the DLQ is empty
    assert source == backend.work_url and moved == 2
    assert sorted(backend.drain(backend.work_url)) == ['{"job_id": "job-0"}', '{"job_id": "job-1"}']
    assert backend.drain(backend.work_dlq_url) == []


def test_the_move_task_is_not_available_locally(backend: Backend) -> None:
    # Given the local stack (moto) and the fakes; When SQS's own redrive is started; Then it is reported unsupported
    with pytest.raises(MoveTaskUnsupported):
        backend.dead_letters.start_move_task(backend.work_dlq_url)


# -- EnvironmentRegistry ----------------------------------------------------------------------------------------------
def test_a_heartbeat_returns_what_every_live_environment_announced(backend: Backend) -> None:
    # Given two environments that announced what they hold, and a third whose registration lapsed
    registry = backend.environments
    registry.heartbeat("lapsed", until=105.0, now=100.0, holding=30)
    registry.heartbeat("a", until=130.0, now=100.0, holding=60)
    # When the second renews at a time the third has lapsed
    holdings = registry.heartbeat("b", until=140.0, now=110.0, holding=8)
    # Then it sees itself and the first, with their announcements
    assert holdings == {"a": 60, "b": 8}


def test_an_environment_that_left_is_not_counted(backend: Backend) -> None:
    # Given two registered environments
    registry = backend.environments
    registry.heartbeat("a", until=130.0, now=100.0, holding=60)
    registry.heartbeat("b", until=130.0, now=100.0, holding=60)
    # When one leaves
    registry.leave("b")
    # Then the other's next heartbeat sees only itself, with its new announcement
    assert registry.heartbeat("a", until=140.0, now=110.0, holding=120) == {"a": 120}
