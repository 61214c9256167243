"""Worker crashes: a process killed mid-batch, a crash between the endpoint's answer and the stored result,
and a Lambda running out of time."""

from __future__ import annotations

import threading

from sagebatch.settings import Settings
from sagebatch.tooling.local.faults import InjectedCrash, ProcessKill, fail_calls, generations_per_line, result_lines_of
from sagebatch.tooling.local.runner import LambdaContext
from tests.faults.conftest import wait_until


def test_a_worker_killed_mid_batch_reuses_what_it_stored_and_runs_the_rest_once(harness):
    h = harness(parallel=1)  # one worker invocation at a time, so "the process" is well defined
    # Given a 12-line job (3 shards of 4); the worker's process dies when it is about to store line 3,
    # taking everything in flight with it (every later AWS or endpoint call of that invocation fails)
    job = h.drop(12)
    kill = ProcessKill()
    stored_before: set[int] = set()
    generated_before: list[int] = []

    def lambda_runtime(original, event, context):
        if kill.killed.is_set():  # the next invocation is a fresh process
            wait_until(lambda: h.emulator.stats.in_flight == 0)
            stored_before.update(h.log.stored_result_lines())
            generated_before.append(len(h.emulator.seen_inputs))
            kill.revive()
        response = original(event, context)
        if kill.killed.is_set():
            raise InjectedCrash("the Lambda process died: the whole batch returns to the queue")
        return response

    h.wrap("WorkerFunction", lambda_runtime)

    # When the stack runs the job (the killed batch is redelivered)
    with fail_calls(
        "s3", "PutObject", lambda sent: kill.trigger("killed while storing line 3"), match=lambda sent: 3 in result_lines_of(sent)
    ) as fault:
        h.wait(job)
    kill.close()

    # Then the batch failed as a whole once, the lines stored before the kill were reused (generated once),
    # and every other line was generated exactly once after the kill
    assert fault.fired == 1 and h.run.poller.stats.batch_failures == 1
    # (the batch's shards run together: with the template's BatchSize the batch holds all three, so any of them may
    # have stored answers before the kill)
    assert 3 not in stored_before and stored_before <= set(range(1, job.n + 1))
    after = job.generations() - generations_per_line(h.emulator.seen_inputs[: generated_before[0]], job.tag)
    assert all(after[line] == 0 for line in stored_before)
    assert all(after[line] == 1 for line in range(1, job.n + 1) if line not in stored_before)
    # the batch's unstored lines (its shards run together) may have been answered before the process died: those
    # answers died with it
    h.check(
        job,
        fault="worker killed mid-batch",
        faults_tried=1,
        allow={line: 2 for line in range(1, job.n + 1) if line not in stored_before},
    )


def test_a_crash_between_the_answer_and_the_stored_result_costs_that_record_one_call(harness):
    h = harness()
    # Given a 12-line job, and a crash of the first write that keeps line 6's result (its shard's checkpoint, once),
    # after the endpoint has answered every line of line 6's shard (lines 5-8)
    job = h.drop(12)

    def crash(sent):
        wait_until(lambda: all(job.generations()[line] for line in range(5, 9)))
        raise InjectedCrash("crashed before storing line 6")

    # When the stack runs the job
    with fail_calls("s3", "PutObject", crash, match=lambda sent: 6 in result_lines_of(sent)) as fault:
        h.wait(job)

    # Then the shard came back, line 6 cost at most one more call, and no line outside its shard was generated twice
    # (the shard's records run at once: answers of lines 5-8 that arrived while the crashing write was being made
    # were to be kept by the next one, and died with the process)
    assert fault.fired == 1 and h.run.poller.stats.item_failures >= 1
    h.check(job, fault="crash after answer, before store", faults_tried=1, allow={line: 2 for line in range(5, 9)})


def test_records_not_started_before_time_runs_out_are_handed_back_and_run_once(harness):
    h = harness(parallel=1)
    # Given a 16-line job (4 shards), and a first worker invocation whose Lambda time runs low after 3 records
    # have started (remaining time drops below the call time reserve)
    job = h.drop(16)
    first: dict = {}

    def short_on_time(original, event, context):
        if first:
            return original(event, context)
        context = RunningOutContext(context.function_name, context.timeout_s, records_with_time=3)
        first["shards"] = len(event["Records"])
        response = original(event, context)
        first["failed"] = len(response.get("batchItemFailures", []))
        first["generated"] = len(h.emulator.seen_inputs)
        return response

    h.wrap("WorkerFunction", short_on_time)

    # When the stack runs the job
    h.wait(job)

    # Then only the 3 started records reached the endpoint in that invocation, every shard of its batch (BatchSize
    # from the template) was handed back as an item failure, and on redelivery every line ran exactly once
    assert first["shards"] >= 2
    assert first == {"shards": first["shards"], "failed": first["shards"], "generated": 3}
    h.check(job, fault="Lambda time running out", faults_tried=first["shards"] * 4 - 3)


CALL_TIME_RESERVE_MS = int(Settings.model_fields["call_time_reserve_s"].default * 1000)


class RunningOutContext(LambdaContext):
    """A Lambda context with time for `records_with_time` more endpoint calls, then below the reserve."""

    def __init__(self, function_name: str, timeout_s: int, records_with_time: int):
        super().__init__(function_name, timeout_s)
        self._left = records_with_time
        self._lock = threading.Lock()  # asked from the worker's record threads

    def get_remaining_time_in_millis(self) -> int:
        with self._lock:
            self._left -= 1
            return CALL_TIME_RESERVE_MS + 1_000 if self._left >= 0 else CALL_TIME_RESERVE_MS - 1_000
