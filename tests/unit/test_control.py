"""Unit tests for job control's pure parts: the worker's stop check, the final status, retry lineage, redrive."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
from pydantic import ValidationError

from sagebatch.adapters.queues import region_of_queue_url
from sagebatch.domain.job import Job, final_status
from sagebatch.domain.limits import MAX_JOB_DEADLINE_S
from sagebatch.domain.messages import CONTROL_ADAPTER
from sagebatch.domain.results import RecordError, ResultLine
from sagebatch.ports import MoveTaskUnsupported
from sagebatch.usecases.control.redrive import redrive
from sagebatch.usecases.control.report import describe
from sagebatch.usecases.control.retry import RetryRefused, retry_lineage, retryable
from sagebatch.usecases.control.stop import StopCheck, StopChecks


class FakeJobs:
    """A JobStore with one job: counts reads, records the first stop reason like the conditional update."""

    def __init__(self, job: Job):
        self.job = job
        self.reads = 0
        self.stop_requests = 0

    def get_job(self, job_id: str) -> Job:
        self.reads += 1
        return self.job

    def request_stop(self, job_id: str, reason: str) -> tuple[Job, bool]:
        self.stop_requests += 1
        if self.job.stop_reason is not None:
            return self.job, False
        self.job = self.job.model_copy(update={"stop_reason": reason})
        return self.job, True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def job(**values) -> Job:
    return Job(job_id="j", source="s3://b/k", bucket="b", key="k", created_at=900.0, **values)


def result(line: int, status: str, record_id: str | int | None = None) -> ResultLine:
    error = None if status == "succeeded" else RecordError(type=status, message="x")
    return ResultLine(id=record_id if record_id is not None else line, line=line, status=status, error=error)


# -- the worker's stop check ------------------------------------------------------------------
def test_the_stop_check_reads_the_job_at_most_once_per_interval():
    # Given a running job and a stop check with a 1 s interval
    jobs, clock = FakeJobs(job()), Clock()
    check = StopCheck(jobs, jobs.job, interval_s=1.0, clock=clock)

    # When 32 records ask within half a second, and one more after the interval
    answers = [check.reason() for _ in range(32)]
    clock.now += 0.5
    answers.append(check.reason())
    jobs.job = jobs.job.model_copy(update={"stop_reason": "cancelled"})
    clock.now += 0.6
    answers.append(check.reason())

    # Then only the last one read the job, and it saw the cancel
    assert jobs.reads == 1
    assert answers[:-1] == [None] * 33 and answers[-1] == "cancelled"


def test_the_stop_check_records_the_deadline_once_without_reading():
    # Given a job whose deadline is 10 s after the check starts
    jobs, clock = FakeJobs(job(deadline_at=1010.0)), Clock()
    check = StopCheck(jobs, jobs.job, interval_s=3600, clock=clock)

    # When records ask before and after it
    before = check.reason()
    clock.now = 1010.0
    after = [check.reason() for _ in range(5)]

    # Then the first past it recorded `expired` on the job, and the rest knew without asking again
    assert before is None and after == ["expired"] * 5
    assert jobs.stop_requests == 1 and jobs.reads == 0
    assert jobs.job.stop_reason == "expired"


def test_a_cancel_recorded_before_the_deadline_stays_the_reason():
    # Given a job cancelled (by another worker's view) whose deadline has also passed
    jobs, clock = FakeJobs(job(deadline_at=1000.0)), Clock()
    check = StopCheck(jobs, jobs.job, interval_s=3600, clock=clock)
    jobs.job = jobs.job.model_copy(update={"stop_reason": "cancelled"})

    # When a record asks; Then the recorded cancel wins over the local deadline
    assert check.reason() == "cancelled"


def test_shards_of_one_job_share_one_stop_check_in_an_environment():
    # Given an environment's stop checks with a 1 s interval, and sixteen shards of one job running at once
    jobs, clock = FakeJobs(job()), Clock()
    checks = StopChecks(jobs, interval_s=1.0, clock=clock)
    with ExitStack() as running:
        shards = [running.enter_context(checks.watching(jobs.job)) for _ in range(16)]

        # When every shard's records ask, over three intervals
        for _ in range(3):
            clock.now += 1.0
            answers = {check.reason() for check in shards for _ in range(4)}

        # Then the job was read once per interval, not once per shard
        assert jobs.reads == 3 and answers == {None}
        assert len({id(check) for check in shards}) == 1


def test_a_shared_stop_check_is_dropped_when_its_jobs_last_shard_ends():
    # Given a job's stop check used by two shards
    jobs = FakeJobs(job())
    checks = StopChecks(jobs, interval_s=1.0, clock=Clock())
    with checks.watching(jobs.job):
        with checks.watching(jobs.job):
            pass
        # When one shard ends, the other still holds it; when both ended, nothing is kept
        assert len(checks) == 1
    assert len(checks) == 0


def test_a_shard_starting_with_a_cancelled_job_tells_the_shared_check():
    # Given a job's shared check that has not read the job for a while, and a cancel recorded meanwhile
    jobs, clock = FakeJobs(job()), Clock()
    checks = StopChecks(jobs, interval_s=3600, clock=clock)
    with checks.watching(jobs.job) as first:
        cancelled = jobs.job.model_copy(update={"stop_reason": "cancelled"})

        # When another shard of the job starts, having read the job as it now is
        with checks.watching(cancelled):
            # Then the shards already running see the cancel without a read of their own
            assert first.reason() == "cancelled" and jobs.reads == 0


# -- the final status -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "status"),
    [
        ({}, "COMPLETED"),
        ({"stop_reason": "cancelled", "cancelled": 3}, "CANCELLED"),
        ({"stop_reason": "expired", "expired": 1}, "EXPIRED"),
        ({"stop_reason": "cancelled"}, "COMPLETED"),  # the cancel came after every record had started
    ],
)
def test_the_final_status_follows_the_stop_reason_only_if_records_were_stopped(values, status):
    assert final_status(job(**values)) == status


# -- retry ------------------------------------------------------------------------------------
def test_retry_lineage_takes_every_record_that_did_not_succeed_in_order():
    # Given a parent's results: succeeded, failed, cancelled, succeeded, expired
    results = [
        result(1, "succeeded"),
        result(2, "failed", "b"),
        result(3, "cancelled"),
        result(4, "succeeded"),
        result(5, "expired", 17),
    ]

    # When the retry's lineage is built
    lineage = retry_lineage(results)

    # Then the child's lines are parent lines 2, 3 and 5; a numeric id is inherited as the default id (it may be
    # an original line number), a string id is not (the record names it itself)
    assert len(lineage) == 3
    assert lineage.window(1, 3) == ([2, 3, 5], [2, 3, 17])
    assert lineage.window(2, 2) == ([3, 5], [3, 17])


@pytest.mark.parametrize(
    ("parent", "phrase"),
    [
        (None, "no job j"),
        (job(status="RUNNING"), "is RUNNING"),
        (job(status="FINALIZING"), "is FINALIZING"),
        (job(status="FAILED", error="input missing"), "submit it again"),
    ],
)
def test_only_a_finished_job_with_results_can_be_retried(parent, phrase):
    with pytest.raises(RetryRefused, match=phrase):
        retryable(parent, "j")


@pytest.mark.parametrize("status", ["COMPLETED", "CANCELLED", "EXPIRED"])
def test_completed_cancelled_and_expired_jobs_can_be_retried(status):
    parent = job(status=status)
    assert retryable(parent, "j") is parent


# -- control messages -------------------------------------------------------------------------
def test_an_unknown_action_names_the_valid_ones():
    with pytest.raises(ValidationError) as error:
        CONTROL_ADAPTER.validate_python({"action": "pause", "job_id": "j"})
    assert "'cancel', 'retry'" in str(error.value)


def test_a_retry_deadline_cannot_outlive_the_queue_retention():
    with pytest.raises(ValidationError):
        CONTROL_ADAPTER.validate_python({"action": "retry", "job_id": "j", "deadline_s": MAX_JOB_DEADLINE_S + 1})


# -- redrive ----------------------------------------------------------------------------------
class FakeQueues:
    def __init__(self, supports_move_task: bool):
        self.supports_move_task = supports_move_task
        self.copied: list[tuple[str, str]] = []

    def start_move_task(self, dlq_url: str, destination_url: str | None = None) -> str:
        if not self.supports_move_task:
            raise MoveTaskUnsupported("not implemented")
        return "handle-1"

    def only_source(self, dlq_url: str) -> str:
        return "source-url"

    def copy_messages(self, dlq_url: str, destination_url: str) -> int:
        self.copied.append((dlq_url, destination_url))
        return 3


def test_redrive_uses_the_message_move_task_where_sqs_has_it():
    queues = FakeQueues(supports_move_task=True)
    outcome = redrive(queues, "dlq-url")  # type: ignore[arg-type]
    assert (outcome.method, outcome.task_handle, queues.copied) == ("move-task", "handle-1", [])


def test_redrive_copies_to_the_only_source_queue_where_sqs_has_no_move_task():
    queues = FakeQueues(supports_move_task=False)
    outcome = redrive(queues, "dlq-url")  # type: ignore[arg-type]
    assert (outcome.method, outcome.moved, queues.copied) == ("copy", 3, [("dlq-url", "source-url")])
    assert "not available" in outcome.note


def test_redrive_copies_to_the_named_queue_when_asked_to():
    queues = FakeQueues(supports_move_task=True)
    outcome = redrive(queues, "dlq-url", "other-url", copy=True)  # type: ignore[arg-type]
    assert (outcome.method, queues.copied, outcome.note) == ("copy", [("dlq-url", "other-url")], "")


@pytest.mark.parametrize(
    ("url", "region"),
    [
        ("https://sqs.eu-west-1.amazonaws.com/123456789012/sagebatch-WorkDLQ", "eu-west-1"),
        ("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q", "cn-north-1"),
        ("http://localhost:4566/000000000000/q", None),
    ],
)
def test_the_region_is_read_from_a_queue_url(url, region):
    assert region_of_queue_url(url) == region


def test_describe_shows_status_counts_stop_and_parent():
    lines = describe(
        job(
            status="CANCELLED",
            total_records=6,
            total_shards=3,
            shards_done=3,
            succeeded=4,
            cancelled=2,
            stop_reason="cancelled",
            stopped_at=950.0,
            parent_job_id="p",
        )
    )
    assert lines[0] == "job j CANCELLED"
    assert "6 total, 4 succeeded, 0 failed, 2 cancelled, 0 expired" in lines[2]
    assert "3/3 done" in lines[3]
    assert any(line.startswith("  stopped   cancelled") for line in lines)
    assert "  retry of  p" in lines
