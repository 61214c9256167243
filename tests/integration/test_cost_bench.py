"""bench/cost.py's counting on a tiny job: every AWS request of the run counted once, under the role that made it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import load_bench

RECORDS = 20


def _load_bench() -> ModuleType:
    return load_bench("cost")


@contextmanager
def requests_moto_answers() -> Iterator[list[int]]:
    """Count the requests moto itself answers (the endpoint emulator's are not moto's), independently of the bench."""
    from moto.core.botocore_stubber import BotocoreStubber

    original = BotocoreStubber.process_request
    answered = [0]
    lock = threading.Lock()

    def process_request(self: Any, request: Any) -> Any:
        response = original(self, request)
        if response is not None:
            with lock:
                answered[0] += 1
        return response

    BotocoreStubber.process_request = process_request  # type: ignore[method-assign]
    try:
        yield answered
    finally:
        BotocoreStubber.process_request = original  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def tiny_run() -> tuple[Any, int]:
    """A 20-record job on the fast emulator, measured by the bench, with moto's own count beside it."""
    bench = _load_bench()
    with requests_moto_answers() as answered:
        measurement = bench.measure("tiny", words=16, records=RECORDS, time_scale=1.0, perf=False)
    return measurement, answered[0]


def _calls(measurement: Any, **match: str) -> int:
    return sum(row["calls"] for row in measurement.requests if all(row[k] == v for k, v in match.items()))


def test_every_request_moto_answers_is_counted_once(tiny_run):
    # Given a tiny job run by the bench, and moto's own count of the requests it answered
    measurement, answered = tiny_run

    # When the bench's counts of every role are added up, the endpoint's calls aside (the emulator answers those)
    counted = sum(row["calls"] for row in measurement.requests if row["service"] != "sagemaker-runtime")

    # Then they are exactly moto's: no request missed, none counted twice
    assert measurement.status == "COMPLETED"
    assert counted == answered


def test_endpoint_calls_are_the_functions_and_match_the_emulator(tiny_run):
    # Given a tiny job run by the bench
    measurement, _ = tiny_run

    # When its InvokeEndpoint calls are looked up by role
    by_functions = _calls(measurement, role="functions", service="sagemaker-runtime", operation="InvokeEndpoint")
    elsewhere = _calls(measurement, service="sagemaker-runtime") - by_functions

    # Then the functions made every one of them, one per record, as the emulator saw
    assert by_functions == measurement.emulator_requests == RECORDS
    assert elsewhere == 0


def test_every_output_object_was_put_by_the_functions(tiny_run):
    # Given a tiny job run by the bench, and the objects under its outputs at the end
    measurement, _ = tiny_run
    written = measurement.objects_written

    # When the functions' S3 writes are counted (single PUTs and multipart uploads)
    puts = _calls(measurement, role="functions", service="s3", operation="PutObject")
    multipart = _calls(measurement, role="functions", service="s3", operation="CompleteMultipartUpload")

    # Then there were at least as many as objects written (results parts, results.jsonl, manifest.json)
    assert any(key.endswith("manifest.json") for key in written)
    assert puts + multipart >= len(written)


def test_the_event_source_and_the_harness_are_not_counted_as_the_functions(tiny_run):
    # Given a tiny job run by the bench
    measurement, _ = tiny_run

    # When the roles of the SQS deletes and the job-status reads are looked up
    event_source_deletes = _calls(measurement, role="event source", service="sqs", operation="DeleteMessage")
    harness_input_upload = _calls(measurement, role="harness", service="s3", operation="PutObject")

    # Then the event source deleted the messages it delivered, and the input's upload is the harness's
    assert event_source_deletes >= 2  # at least the S3 notification and one shard message
    assert harness_input_upload == 1
