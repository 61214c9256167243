"""Chunk answers are kept across deliveries: a map_reduce record whose combining call fails does not pay again
for the chunks it already has (idempotency on job, record and chunk)."""

from __future__ import annotations

import json
from collections import Counter

from sagebatch.tooling.local.faults import InjectedCrash, fail_calls
from sagebatch.tooling.local.session import local_stack
from tests.conftest import ROOT


def _is_combining_call(sent) -> bool:
    return b"Partial answer 1" in sent.body


def test_a_failed_combining_call_reuses_the_chunk_answers_on_redelivery():
    # Given the seed's long-context question (a passage over 8k tokens: 2 chunk calls + 1 combining call)
    data = (ROOT / "examples" / "long-context.jsonl").read_bytes().splitlines()[0] + b"\n"
    with local_stack() as run:
        job_id = run.drop_file(data, "inputs/long-context.jsonl")

        # When the combining call crashes the worker once (after both chunk answers came back)
        with fail_calls(
            "sagemaker-runtime",
            "InvokeEndpoint",
            InjectedCrash("worker died during the combining call"),
            times=1,
            match=_is_combining_call,
        ) as fault:
            status = run.wait_for(job_id)

        # Then the record still succeeds on redelivery, and each chunk was generated once, not twice
        (result,) = run.results(job_id)
        generations = Counter(run.stack.emulator_server.emulator.seen_inputs)
        assert fault.fired == 1 and status == "COMPLETED"
        assert result["status"] == "succeeded" and result["strategy"] == "map_reduce" and result["chunks"] == 2
        assert len(generations) == 3  # two chunks and one combining call
        assert all(count == 1 for count in generations.values()), json.dumps(list(generations.values()))
