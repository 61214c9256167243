"""Worker invocations return before their Lambda timeout, on the local stack (moto + the emulator over HTTP).

Scaled down: a 6 s Lambda timeout, a 3 s call reserve, emulated calls of 2 s and a context so small that each
document is answered by map_reduce in four stages of calls one after another (8 s at least). An invocation
handed a shard of four documents cannot finish them: it must stop calling in time and hand them back, with the
chunk answers it paid for kept for the next delivery. Every invocation is timed around the worker's handler.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from sagebatch.lambdas import service
from sagebatch.tooling.emulator.server import EmulatorConfig, FaultConfig
from sagebatch.tooling.local.runner import LambdaContext
from sagebatch.tooling.local.session import LocalRun, local_stack
from tests.conftest import jsonl

WORKER = "WorkerFunction"
TIMEOUT_S = 6  # the worker's Lambda timeout here (900 s deployed)
RESERVE_S = 3.0  # one call's worst case here: the 2 s call, plus 1 s to store and hand back (90 s deployed)
CALL_S = 2.0
DOCUMENTS = 4


@dataclass
class TimedWorker:
    """Wraps the worker's handler: gives each invocation a TIMEOUT_S context and notes how long it ran."""

    original: Any
    durations: list[float] = field(default_factory=list)
    handed_back: int = 0  # shards returned as batch item failures
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        started = time.monotonic()
        response = self.original(event, LambdaContext(WORKER, TIMEOUT_S))
        with self._lock:
            self.durations.append(time.monotonic() - started)
            self.handed_back += len((response or {}).get("batchItemFailures", []))
        return response


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalRun]:
    slow = EmulatorConfig(faults=FaultConfig(slow=1.0, slow_seconds=CALL_S))
    with local_stack(emulator=slow, parallel=1) as run:
        # After the stack applied the template's environment, before any handler read the settings.
        monkeypatch.setenv("SAGEBATCH_CALL_TIME_RESERVE_S", str(RESERVE_S))
        monkeypatch.setenv("SAGEBATCH_SHARD_RECORDS", str(DOCUMENTS))
        monkeypatch.setenv("SAGEBATCH_MAX_INPUT_LENGTH", "160")
        monkeypatch.setenv("SAGEBATCH_MAX_TOTAL_TOKENS", "200")
        monkeypatch.setenv("SAGEBATCH_LEASE_SECONDS", "2")
        service.reset()
        yield run


def document(n: int) -> dict[str, Any]:
    """A document fourteen chunks long in this context: its partial answers are combined in rounds, four stages of
    calls or more (8 s at least)."""
    text = " ".join(f"Paragraph {p} of document {n} says something short about the number {p}." for p in range(60))
    return {"id": f"doc-{n}", "instruction": "Summarise the passage.", "document": text, "parameters": {"max_new_tokens": 8}}


def test_every_worker_invocation_returns_within_its_timeout_and_the_job_finishes(stack: LocalRun) -> None:
    # Given a shard of four documents, each needing at least four 2 s calls one after another, and workers with
    # 6 s invocations that may start a call only while more than 3 s are left
    timed = TimedWorker(stack.poller.handlers[WORKER])
    stack.poller.handlers[WORKER] = timed
    job_id = stack.drop_file(jsonl(*(document(n) for n in range(1, DOCUMENTS + 1))), "inputs/documents.jsonl")

    # When the local stack runs the job to the end
    status = stack.wait_for(job_id, timeout_s=180)

    # Then every worker invocation returned before its timeout, and the first had to hand its shard back to do so
    assert timed.durations and max(timed.durations) < TIMEOUT_S, sorted(timed.durations)
    assert timed.handed_back >= 1 and len(timed.durations) >= 2
    # And the job completed with one result per line, in several calls each
    assert status == "COMPLETED"
    results = stack.results(job_id)
    assert [r["line"] for r in results] == list(range(1, DOCUMENTS + 1))
    assert all(r["status"] == "succeeded" and r["calls"] + r["reused_calls"] >= 4 for r in results), results
    # And no request was generated twice: chunk answers paid for before a hand-back were reused
    generated = Counter(stack.stack.emulator_server.emulator.seen_inputs)
    assert max(generated.values()) == 1
