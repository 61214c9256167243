"""Fault-injection harness: a local stack with small shards, marked input lines and the invariant check.

The invariant every test asserts (the service's promise):
  (a) one result line per input line: lines 1..N in order, the expected ids, nothing lost or repeated;
  (b) no generation paid twice: each line was *successfully generated* by the endpoint at most once
      (`Emulator.seen_inputs`), unless the test's fault forces a re-run and says how many are allowed;
  (c) the job completed exactly once: one finalize message, results.jsonl and manifest.json written once,
      manifest counts = N.
A breach of (b) raises `Doubled` and a wrong result id `WrongIds` (both AssertionErrors, raised after every
other check), so a known bug can be marked `xfail(strict=True, raises=Doubled)` while the rest of the invariant
still fails the test if it breaks.

Each check also adds a row to the reliability table printed at the end of the run (and written as JSON to
$SAGEBATCH_FAULT_TABLE when set; bench/faults.py uses that).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from sagebatch.domain.layout import manifest_key, results_key
from sagebatch.lambdas import service
from sagebatch.tooling.local.faults import CallLog, generations_per_line, marked_records, serialize_moto
from sagebatch.tooling.local.runner import EventSourcePoller, LambdaContext, sqs_event
from sagebatch.tooling.local.session import LocalRun, local_stack
from sagebatch.tooling.local.stack import REGION
from tests.conftest import jsonl

SHARD_RECORDS = 4

ROWS: list[dict[str, Any]] = []


class Doubled(AssertionError):
    """A line was generated more often than the fault allows (invariant b)."""


class WrongIds(AssertionError):
    """A result line does not carry its input record's id (invariant a)."""


class DuplicateWork(AssertionError):
    """The service enqueued the same work more than once."""


@dataclass
class FaultJob:
    harness: Harness
    tag: str
    records: list[dict[str, Any]]
    job_id: str
    key: str

    @property
    def n(self) -> int:
        return len(self.records)

    def generations(self) -> Counter[int]:
        return generations_per_line(list(self.harness.emulator.seen_inputs), self.tag)


@dataclass
class Harness:
    run: LocalRun
    log: CallLog
    started: float = field(default_factory=time.monotonic)

    @property
    def emulator(self) -> Any:
        return self.run.stack.emulator_server.emulator

    @property
    def sqs(self) -> Any:
        return boto3.client("sqs", region_name=REGION)

    def queue(self, logical: str) -> str:
        return self.run.stack.queue_url(logical)

    # -- input -----------------------------------------------------------------------------------------
    def drop(self, count: int, tag: str | None = None) -> FaultJob:
        """Drop `count` marked prompt lines under inputs/ (S3 notifies the intake queue)."""
        tag = tag or f"t{uuid.uuid4().hex[:6]}"
        records = marked_records(tag, count)
        key = f"inputs/{tag}.jsonl"
        job_id = self.run.drop_file(jsonl(*records), key)
        return FaultJob(self, tag, records, job_id, key)

    # -- delivery ------------------------------------------------------------------------------------------
    def poller(self, *functions: str, parallel: int = 1) -> EventSourcePoller:
        """An event-source poller limited to `functions` (one batch at a time by default: sequential)."""
        poller = EventSourcePoller(self.run.stack, parallel=parallel)
        poller.triggers = [t for t in poller.triggers if t.function in functions]
        return poller

    def drain(self, poller: EventSourcePoller | None = None, timeout_s: float = 60) -> None:
        """Poll until every queue of `poller` (default: the stack's own) stays empty."""
        poller = poller or self.run.poller
        deadline = time.monotonic() + timeout_s
        idle = 0
        while idle < 3:
            if time.monotonic() > deadline:
                raise TimeoutError("queues did not drain")
            idle = idle + 1 if poller.poll_once() == 0 else 0

    def take(self, logical: str, contains: str = "") -> list[dict[str, Any]]:
        """Receive and delete every message of a queue; return those whose body contains `contains`."""
        url = self.queue(logical)
        taken = []
        while True:
            messages = self.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], VisibilityTimeout=30
            ).get("Messages", [])
            if not messages:
                return taken
            for message in messages:
                self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                if contains in message["Body"]:
                    taken.append(message)

    def send(self, logical: str, body: str) -> None:
        self.sqs.send_message(QueueUrl=self.queue(logical), MessageBody=body)

    def invoke(
        self, function: str, bodies: list[str], message_ids: list[str] | None = None, context: Any = None, receive_count: int = 1
    ) -> set[str]:
        """Call `function`'s handler directly with an SQS event of `bodies` (as one Lambda invocation);
        return the message ids it reported as failed (all of them when it raised)."""
        trigger = next(t for t in self.run.poller.triggers if t.function == function)
        ids = message_ids or [str(uuid.uuid4()) for _ in bodies]
        messages = [
            {
                "MessageId": mid,
                "ReceiptHandle": f"direct-{uuid.uuid4().hex}",
                "Body": body,
                "Attributes": {"ApproximateReceiveCount": str(receive_count), "SentTimestamp": str(int(time.time() * 1000))},
            }
            for mid, body in zip(ids, bodies)
        ]
        event = sqs_event(messages, self.run.stack.physical[trigger.queue]["Arn"])
        context = context or LambdaContext(function, self.run.stack.function_timeout(function))
        try:
            response = self.run.poller.handlers[function](event, context)
        except Exception:
            return set(ids)
        return {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}

    def wrap(self, function: str, wrapper: Callable[[Callable[..., Any], dict, Any], Any]) -> None:
        """Route the stack poller's invocations of `function` through `wrapper(original, event, context)`."""
        original = self.run.poller.handlers[function]
        self.run.poller.handlers[function] = lambda event, context: wrapper(original, event, context)

    def wait(self, job: FaultJob, timeout_s: float = 60) -> str:
        status = self.run.wait_for(job.job_id, timeout_s)
        self.drain()
        return status

    def depth(self, logical: str) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=self.queue(logical), AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    # -- the invariant ---------------------------------------------------------------------------------
    def check(
        self,
        job: FaultJob,
        *,
        fault: str,
        faults_tried: int,
        allow: dict[int, int] | None = None,
        failed_types: set[str] = frozenset(),
        results_writes: int = 1,
    ) -> dict[str, Any]:
        """Assert (a), (c) then (b) for `job`; `allow` maps a line to the generations its fault may cost."""
        allow = allow or {}
        n = job.n
        expected_lines = list(range(1, n + 1))
        job_state = self.run.jobs.get_job(job.job_id)
        try:
            results = self.run.results(job.job_id)
        except Exception:
            results = []
        manifest = self.run.manifest(job.job_id) if results else {}
        lines = [r["line"] for r in results]
        lost = len(set(expected_lines) - set(lines))
        repeated = len(lines) - len(set(lines))
        generations = job.generations()
        over = {line: generations[line] for line in expected_lines if generations[line] > allow.get(line, 1)}
        doubled = repeated + sum(generations[line] - allow.get(line, 1) for line in over)
        row = {
            "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0],
            "outcome": "?",
            "fault": fault,
            "faults_tried": faults_tried,
            "records": n,
            "processed": len(set(lines) & set(expected_lines)),
            "lost": lost,
            "doubled": doubled,
            "seconds": round(time.monotonic() - self.started, 1),
        }
        ROWS.append(row)

        # (a) one result line per input line, in order, with the expected ids
        assert job_state is not None and job_state.status == "COMPLETED", f"job status {job_state and job_state.status}"
        assert lines == expected_lines, f"result lines {lines}"
        wrong_ids = {r["line"]: r["id"] for r, rec in zip(results, job.records) if r["id"] != rec["id"]}
        for result in results:
            if result["status"] == "succeeded":
                assert result["output"] and generations[result["line"]] >= 1
            else:
                assert result["error"]["type"] in failed_types, f"line {result['line']} failed: {result['error']}"
        # (c) completed exactly once
        succeeded = sum(r["status"] == "succeeded" for r in results)
        assert manifest["status"] == "COMPLETED"
        counts = manifest["counts"]
        assert (counts["total"], counts["succeeded"], counts["failed"]) == (n, succeeded, n - succeeded), counts
        assert self.log.messages_sent(self.queue("FinalizeQueue"), job.job_id) == 1, "finalize messages sent"
        assert self.log.s3_writes(results_key(job.job_id)) == results_writes, "results.jsonl writes"
        assert self.log.s3_writes(manifest_key(job.job_id)) == 1, "manifest.json writes"
        # (b) nothing generated more often than the fault allows
        if over:
            raise Doubled(f"lines generated more often than allowed {allow or '(once each)'}: {over}")
        # (a, last so that a known id bug leaves everything else checked) each result carries its record's id
        if wrong_ids:
            raise WrongIds(f"result ids that are not the input record's id (line: id): {wrong_ids}")
        return row


LEASE_SECONDS = 2


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Harness]]:
    """`harness(emulator=None, parallel=4, shard_records=4)`: a fresh local stack with the call log attached."""
    with ExitStack() as stack:

        def build(emulator: Any = None, parallel: int = 4, shard_records: int = SHARD_RECORDS) -> Harness:
            run = stack.enter_context(local_stack(emulator=emulator, parallel=parallel))
            # After the stack applied the template's environment, before any handler read the settings.
            monkeypatch.setenv("SAGEBATCH_SHARD_RECORDS", str(shard_records))
            # A killed worker cannot release its shard's lease; a short one lets the redelivery take over in
            # seconds (in AWS the redelivery comes after the visibility timeout, long after any lease lapsed).
            monkeypatch.setenv("SAGEBATCH_LEASE_SECONDS", str(LEASE_SECONDS))
            # Every answer checkpointed as it arrives, so "no answer is paid for twice" holds to the line here; the
            # deployed default (10 s) trades at most that long of a crashed shard's answers for fewer S3 writes.
            monkeypatch.setenv("SAGEBATCH_CHECKPOINT_SECONDS", "0")
            # Shards arrive only through the event source, so each fault meets the delivery path it is about
            # (a worker's own intake of more shards is tested on the fakes: tests/unit/flows/test_batch.py).
            monkeypatch.setenv("SAGEBATCH_SELF_FEED", "false")
            service.reset()
            serialize_moto()  # moto is not thread-safe (faults.py); DynamoDB's requests are atomic
            log = CallLog()
            stack.callback(log.close)
            return Harness(run, log)

        yield build


class Gate:
    """An action that holds each matching send until `parties` of them are waiting (or `timeout_s` passed), then
    lets them all through together: forces a race deterministically, and never deadlocks a service that avoids it."""

    def __init__(self, parties: int = 2, timeout_s: float = 10.0):
        self._barrier = threading.Barrier(parties, timeout=timeout_s)
        self.met = 0  # sends released by a full barrier
        self.timed_out = 0

    def __call__(self, _sent: Any) -> None:
        try:
            self._barrier.wait()
            self.met += 1
        except threading.BrokenBarrierError:
            self.timed_out += 1
        return None


def gate(parties: int = 2, timeout_s: float = 10.0) -> Gate:
    return Gate(parties, timeout_s)


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


_BUGS = {"Doubled": "line paid twice", "WrongIds": "wrong result id", "DuplicateWork": "work enqueued twice"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Iterator[None]:
    """Mark each table row with its test's outcome: pass, or xfail with the known bug that made it fail."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call":
        return
    if getattr(report, "wasxfail", None) is not None and report.skipped:
        status = "xfail: " + _BUGS.get(call.excinfo.typename if call.excinfo else "", "bug")
    else:
        status = {"passed": "pass", "failed": "FAIL"}.get(report.outcome, report.outcome)
    for row in ROWS:
        if row["test"] == report.nodeid:
            row["outcome"] = status


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    terminalreporter.section("reliability under injected faults")
    for line in format_table(ROWS):
        terminalreporter.write_line(line)
    target = os.environ.get("SAGEBATCH_FAULT_TABLE")
    if target:
        with open(target, "w", encoding="utf-8") as handle:
            json.dump(ROWS, handle, indent=2)


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    """The reliability table: per fault, how many faults were injected, records processed, lost and doubled."""
    total = {
        "fault": "total",
        "outcome": "",
        **{k: sum(r[k] for r in rows) for k in ("faults_tried", "processed", "records", "lost", "doubled")},
    }
    cells = [["fault", "outcome", "faults tried", "records processed", "lost", "doubled"]] + [
        [
            r["fault"],
            r["outcome"],
            str(r["faults_tried"]),
            f"{r['processed']} of {r['records']}",
            str(r["lost"]),
            str(r["doubled"]),
        ]
        for r in [*rows, total]
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = []
    for row in cells:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, lines[1])
    return lines
