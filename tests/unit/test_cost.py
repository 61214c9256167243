"""Cost: the price table's functions, each attempt's share of endpoint time, and the manifest's `cost`."""

from __future__ import annotations

import pytest

from sagebatch.domain.cost import (
    DEFAULT_ENDPOINT_HOURLY_PRICE,
    LAMBDA_MEMORY_GB,
    PRICES,
    PRICES_AS_OF,
    REQUEST_MODEL,
    WORKER_MEMORY_GB,
    JobCounts,
    endpoint_cost,
    job_cost,
    plumbing_cost,
    plumbing_usage,
)
from sagebatch.domain.generation import EndpointError, ErrorKind, Generation
from sagebatch.domain.job import Job, ShardCounts
from sagebatch.domain.manifest import build_manifest
from sagebatch.domain.results import ResultLine, failed
from sagebatch.endpoint.caller import AdaptiveCaller
from sagebatch.endpoint.limiter import AdaptiveLimiter, InMemoryLimiterStore, LimiterSettings
from sagebatch.endpoint.retry import RetryBudget, RetryPolicy
from sagebatch.endpoint.share_clock import ShareClock

NO_JOB = JobCounts(records=0, shards=0, endpoint_calls=0, output_tokens=0, worker_seconds=0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- prices ----------------------------------------------------------------------------------------------------------
def test_endpoint_cost_is_the_hours_at_the_hourly_price():
    # Given an hour, and a minute and a half, of endpoint time; When priced; Then seconds / 3600 x the price
    assert endpoint_cost(3600, DEFAULT_ENDPOINT_HOURLY_PRICE) == pytest.approx(1.515)
    assert endpoint_cost(90, 2.0) == pytest.approx(0.05)
    assert endpoint_cost(0, 2.0) == 0


def test_negative_endpoint_time_or_price_is_refused():
    with pytest.raises(ValueError):
        endpoint_cost(-1, 1.0)
    with pytest.raises(ValueError):
        endpoint_cost(1, -1.0)


def test_a_job_with_nothing_in_it_costs_the_per_job_requests_only():
    # Given no records, shards, calls or worker time
    usage = plumbing_usage(NO_JOB)

    # Then the usage is the request model's per-job part, priced by the table
    assert usage.lambda_requests == REQUEST_MODEL.job_lambda_requests
    assert usage.sqs_requests == REQUEST_MODEL.job_sqs_requests
    assert usage.eventbridge_events == REQUEST_MODEL.job_events
    assert usage.dynamodb_write_units == REQUEST_MODEL.job_write_units
    cost = plumbing_cost(usage)
    assert cost["sqs"] == pytest.approx(REQUEST_MODEL.job_sqs_requests * 0.40 / 1e6)
    assert cost["eventbridge"] == pytest.approx(4 * 1.00 / 1e6)
    assert set(cost) == {"lambda", "sqs", "dynamodb", "s3", "eventbridge", "cloudwatch_logs"}


def test_plumbing_grows_with_shards_worker_time_and_extra_calls():
    # Given a job of 1,000 records in 32 shards that kept workers busy for 100 s, and the same with 200 extra calls
    base = JobCounts(records=1000, shards=32, endpoint_calls=1000, output_tokens=128_000, worker_seconds=100.0)
    chunked = JobCounts(records=1000, shards=32, endpoint_calls=1200, output_tokens=128_000, worker_seconds=100.0)

    # When their usage is estimated
    one, two = plumbing_usage(base), plumbing_usage(chunked)

    # Then Lambda time is the worker time and per-shard part (512 MB workers) plus the per-record and per-job parts
    # (1 GB intake and finalizer) ...
    m = REQUEST_MODEL
    assert one.lambda_gb_seconds == pytest.approx(
        WORKER_MEMORY_GB * (100 + 32 * m.shard_lambda_seconds)
        + LAMBDA_MEMORY_GB * (1000 * m.record_lambda_seconds + m.job_lambda_seconds)
    )
    # ... the stop checks (each 10 s) and the environment's heartbeat (each 15 s) read during worker time, and chunk
    # answers go through the call cache
    assert one.dynamodb_read_units == pytest.approx(m.job_read_units + 32 * m.shard_read_units + 100 * (1 / 10 + 1 / 15))
    assert two.dynamodb_write_units - one.dynamodb_write_units == pytest.approx(200 * m.extra_call_write_units)
    assert sum(plumbing_cost(two).values()) > sum(plumbing_cost(one).values())


def test_job_cost_adds_endpoint_and_plumbing_and_says_when_the_prices_were_read():
    # Given 7,200 endpoint seconds at $3 an hour
    counts = JobCounts(records=10, shards=1, endpoint_calls=10, output_tokens=1280, worker_seconds=10.0)

    # When the job is priced
    cost = job_cost(7200.0, counts, hourly_price=3.0)

    # Then the endpoint part is $6, the total is the sum, and the table's date and the price used are stated
    assert cost["endpoint_usd"] == pytest.approx(6.0)
    assert cost["total_usd"] == pytest.approx(cost["endpoint_usd"] + cost["plumbing_usd"], abs=1e-6)
    assert cost["plumbing_usd"] == pytest.approx(sum(cost["plumbing"].values()), abs=1e-5)
    assert cost["prices_as_of"] == PRICES_AS_OF
    assert cost["endpoint_hourly_price"] == 3.0
    assert PRICES.endpoint_hour == DEFAULT_ENDPOINT_HOURLY_PRICE


# -- shares of endpoint time -------------------------------------------------------------------------------------
def test_overlapping_attempts_split_the_time_they_share():
    # Given an environment holding a quarter of the endpoint; attempt A runs 0-10 s, attempt B 5-10 s
    clock = Clock()
    shares = ShareClock(clock, lambda: 0.25)
    a = shares.start()
    clock.now = 5.0
    b = shares.start()
    clock.now = 10.0

    # When both end
    spent_b = shares.stop(b)
    spent_a = shares.stop(a)

    # Then each had the time alone plus half the time together; the two add up to the time anything was in flight
    assert spent_a.worker_seconds == pytest.approx(7.5)
    assert spent_b.worker_seconds == pytest.approx(2.5)
    assert spent_a.endpoint_seconds + spent_b.endpoint_seconds == pytest.approx(10.0 * 0.25)


def test_idle_time_is_nobody_s():
    # Given one attempt of 2 s, then 100 s with nothing in flight, then another of 3 s
    clock = Clock()
    shares = ShareClock(clock)
    first = shares.start()
    clock.now = 2.0
    one = shares.stop(first)
    clock.now = 102.0
    second = shares.start()
    clock.now = 105.0
    two = shares.stop(second)

    # Then each is charged its own time only
    assert (one.worker_seconds, two.worker_seconds) == (pytest.approx(2.0), pytest.approx(3.0))


def _caller(clock: Clock, script: list[object], max_inflight: int = 15) -> AdaptiveCaller:
    class Endpoint:
        def invoke_once(self, payload: dict) -> Generation:
            clock.now += 2.0
            outcome = script.pop(0)
            if isinstance(outcome, BaseException):
                raise outcome
            assert isinstance(outcome, Generation)
            return outcome

    limiter = AdaptiveLimiter(
        InMemoryLimiterStore(LimiterSettings.for_endpoint(120, margin=0, sharers=120 // max_inflight)), clock=clock
    )
    return AdaptiveCaller(
        Endpoint(),
        limiter,
        RetryPolicy(max_attempts=3, budget=RetryBudget()),
        clock=clock,
        sleep=lambda s: None,
        endpoint_slots=120,
    )


def test_the_caller_charges_each_answer_its_attempts_share_of_the_endpoint():
    # Given an environment with 15 of the endpoint's 120 slots, and a call that takes a retry (2 s per attempt)
    clock = Clock()
    caller = _caller(clock, [EndpointError(ErrorKind.OVERLOADED, "busy", 429), Generation("hi", 2, "eos_token")])

    # When it is invoked
    generation = caller.invoke({"inputs": "x"}, cost_tokens=10)

    # Then both attempts count: 4 s of the worker's time, 4 s x 15/120 of the endpoint's
    assert generation.attempts == 2
    assert generation.worker_seconds == pytest.approx(4.0)
    assert generation.endpoint_seconds == pytest.approx(0.5)


def test_a_call_that_finally_fails_carries_its_share_too():
    clock = Clock()
    caller = _caller(clock, [EndpointError(ErrorKind.VALIDATION, "too long", 422)])
    with pytest.raises(EndpointError) as raised:
        caller.invoke({"inputs": "x"}, cost_tokens=10)
    assert raised.value.worker_seconds == pytest.approx(2.0)
    assert raised.value.endpoint_seconds == pytest.approx(0.25)


# -- through the job to the manifest -------------------------------------------------------------------------------
def test_shard_counts_sum_the_results_shares_which_results_jsonl_does_not_show():
    # Given a succeeded and a failed result, each with its share
    ok = ResultLine(id=1, line=1, status="succeeded", output="a", calls=1, endpoint_seconds=1.5, worker_seconds=12.0)
    bad = failed(2, 2, "endpoint_validation", "no", calls=1, endpoint_seconds=0.5, worker_seconds=4.0)

    # When a shard counts them
    counts = ShardCounts()
    counts.add(ok)
    counts.add(bad)

    # Then the shares add up, and stay out of the public result line
    assert (counts.endpoint_seconds, counts.worker_seconds) == (2.0, 16.0)
    assert "endpoint_seconds" not in ok.public_json() and "worker_seconds" not in ok.public_json()


def test_the_manifest_carries_endpoint_seconds_and_the_cost_at_the_stack_price():
    # Given a finished job that had 720 s of the endpoint
    job = Job(
        job_id="j",
        source="s3://b/k",
        bucket="b",
        key="k",
        total_records=100,
        total_shards=4,
        succeeded=100,
        endpoint_calls=100,
        output_tokens=12_800,
        endpoint_seconds=720.0,
        worker_seconds=5760.0,
    )

    # When its manifest is built with a $2.50 endpoint
    manifest = build_manifest(job, "b", finished_at=job.created_at + 800, status="COMPLETED", endpoint_hourly_price=2.5)

    # Then it shows the share and the cost: $0.50 of endpoint, the plumbing from the job's own counts
    assert manifest["endpoint_seconds"] == 720.0
    assert manifest["worker_seconds"] == 5760.0
    cost = manifest["cost"]
    assert cost["endpoint_usd"] == pytest.approx(0.5)
    assert cost["endpoint_hourly_price"] == 2.5
    assert cost["plumbing_usage"]["lambda_gb_seconds"] >= 5760.0 * WORKER_MEMORY_GB
    assert cost["total_usd"] == pytest.approx(cost["endpoint_usd"] + cost["plumbing_usd"], abs=1e-6)
