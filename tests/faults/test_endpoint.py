"""Endpoint faults: a 429 storm, 5xx bursts and read timeouts, against the emulator over real HTTP."""

from __future__ import annotations

from sagebatch.tooling.emulator.server import Emulator, FaultConfig
from sagebatch.tooling.local.faults import FaultyEmulator, emulator_faults, endpoint_line_of, fail_calls, forward_then_time_out
from sagebatch.usecases.batch import FINAL_ATTEMPT_RECEIVE_COUNT


def test_a_429_storm_is_retried_until_every_record_succeeds(harness):
    # Given an endpoint that admits 2 requests at a time (TGI answers 429 "Model is overloaded" to the rest)
    # and takes 50 ms per generation, and a 24-line job (6 shards) run by 4 concurrent workers
    emulator = FaultyEmulator(max_concurrent_requests=2, generation_delay_s=0.05)
    h = harness(emulator=emulator)
    job = h.drop(24)

    # When the stack runs the job
    h.wait(job)

    # Then 429s were seen and retried, and every record succeeded, generated once
    assert emulator.stats.overloaded > 0
    assert emulator.stats.max_in_flight <= 2
    h.check(job, fault="429 storm (2 slots, 50 ms)", faults_tried=emulator.stats.overloaded)


def test_a_5xx_burst_is_retried_and_loses_no_line(harness):
    # Given an endpoint whose container fails 30 % of its first 24 requests with a 5xx (ModelError with
    # OriginalStatusCode 500, FaultConfig.server_error) and then recovers, and a 24-line job
    emulator = Emulator()
    h = harness(emulator=emulator)
    job = h.drop(24)

    # When the stack runs the job through the burst
    with emulator_faults(emulator, FaultConfig(server_error=0.3, seed=7), requests=24):
        h.wait(job)

    # Then every line has one result (a line may only fail with endpoint_server_error, after the retries of its
    # final delivery), and a failed request generated nothing, so no line was generated twice
    assert emulator.stats.injected_faults > 0
    h.check(
        job,
        fault="5xx burst (30 % of 24 requests)",
        faults_tried=emulator.stats.injected_faults,
        failed_types={"endpoint_server_error"},
    )


def test_read_timeouts_are_retried_once_and_cost_one_extra_generation(harness):
    h = harness()
    # Given a 12-line job where the client's read times out on the first attempt of lines 2 and 7, after the
    # endpoint generated the answer (the GPU did the work, the caller never saw it)
    job = h.drop(12)

    def on_line(line):
        return lambda sent: endpoint_line_of(sent, job.tag) == line

    # When the stack runs the job
    with (
        fail_calls("sagemaker-runtime", "InvokeEndpoint", forward_then_time_out, match=on_line(2)) as fault_2,
        fail_calls("sagemaker-runtime", "InvokeEndpoint", forward_then_time_out, match=on_line(7)) as fault_7,
    ):
        h.wait(job)

    # Then the caller retried each once (no item failure, no redelivery): lines 2 and 7 cost exactly one extra
    # generation, every other line one, and every line succeeded
    generations = job.generations()
    assert fault_2.fired == fault_7.fired == 1
    assert generations[2] == generations[7] == 2
    assert h.run.poller.stats.item_failures == 0
    h.check(job, fault="read timeout once (retried)", faults_tried=2, allow={2: 2, 7: 2})


def test_a_line_that_always_times_out_is_retried_once_per_delivery_then_fails(harness):
    h = harness()
    # Given a 12-line job where every attempt of line 11 times out after the endpoint generated
    job = h.drop(12)

    # When the stack runs the job
    with fail_calls(
        "sagemaker-runtime",
        "InvokeEndpoint",
        forward_then_time_out,
        times=None,
        match=lambda sent: endpoint_line_of(sent, job.tag) == 11,
    ) as fault:
        h.wait(job)

    # Then each delivery tried line 11 twice (one timeout retry), the shard came back until the final delivery
    # recorded it as failed with endpoint_timeout, and no other line was generated twice
    attempts = 2 * FINAL_ATTEMPT_RECEIVE_COUNT
    assert fault.fired == job.generations()[11] == attempts
    assert h.run.poller.stats.item_failures == FINAL_ATTEMPT_RECEIVE_COUNT - 1
    result = h.run.results(job.job_id)[10]
    assert result["status"] == "failed" and result["error"]["type"] == "endpoint_timeout"
    h.check(
        job,
        fault="read timeout always (final delivery fails it)",
        faults_tried=fault.fired,
        allow={11: attempts},
        failed_types={"endpoint_timeout"},
    )
