"""Property: whatever bytes the lines of a file hold, each gets exactly one result and every shard completes.

Drives the real intake, worker and finalizer on the in-memory fakes with arbitrary lines: random bytes, random JSON
values of any type and depth, and records whose fields have random types and values.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagebatch.domain.encoding import SNIFF_BYTES, sniff_problem
from sagebatch.domain.job import JobStatus
from sagebatch.domain.layout import results_key
from sagebatch.fakes import FakeAws, build_pipeline, drive, fake_settings
from tests.unit.flows.helpers import message

FIELD_NAMES = [
    "id",
    "prompt",
    "messages",
    "inputs",
    "document",
    "instruction",
    "system",
    "parameters",
    "fit",
    "role",
    "content",
    "max_new_tokens",
    "temperature",
    "seed",
    "top_k",
    "truncate",
    "strategy",
    "stop",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["", "  ", "\u2028", "\\ud800", "Say hello.", "map_reduce", "window"])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)
records = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "prompt": json_values,
        "messages": st.lists(st.fixed_dictionaries({}, optional={"role": json_values, "content": json_values}), max_size=3)
        | json_values,
        "inputs": json_values,
        "document": json_values,
        "instruction": json_values,
        "parameters": st.dictionaries(
            st.sampled_from(
                [
                    "max_new_tokens",
                    "temperature",
                    "top_p",
                    "top_k",
                    "seed",
                    "truncate",
                    "stop",
                    "best_of",
                    "do_sample",
                    "max_tokens",
                ]
            ),
            json_values,
            max_size=3,
        )
        | json_values,
        "fit": st.dictionaries(st.sampled_from(["strategy", "keep", "chunk_tokens", "overlap_tokens"]), json_values, max_size=2)
        | json_values,
    },
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


lines = st.one_of(
    st.binary(max_size=60).map(lambda raw: raw.replace(b"\n", b" ")),
    json_values.map(_dumps),
    records.map(_dumps),
    st.just(b'{"prompt": "Say hello.", "prompt": "again"}'),
    st.just(b'{"prompt": "Say hello."}'),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(lines, min_size=1, max_size=12))
def test_every_line_gets_exactly_one_result_and_the_job_completes(body: list[bytes]) -> None:
    # Given a file of arbitrary lines, sharded a few lines at a time
    aws = FakeAws.create(fake_settings(shard_records=3))
    with build_pipeline(aws, in_flight=4) as pipeline:
        aws.objects.put(aws.settings.bucket_name, "inputs/any.jsonl", b"\n".join(body) + b"\n")
        # When intake, the workers and the finalizer run it (a failure that sends a message back is a failure here)
        drive(aws, message(input=f"s3://{aws.settings.bucket_name}/inputs/any.jsonl", job_id="j"), pipeline=pipeline)

    # Then (unless the file as a whole does not look like UTF-8, which fails the job with that one sentence)
    job = aws.jobs.get_job("j")
    assert job is not None
    problem = sniff_problem((b"\n".join(body) + b"\n")[:SNIFF_BYTES])
    if problem is not None:
        assert job.status is JobStatus.FAILED and job.error == problem
        return
    # the job completed, every shard was counted, and results.jsonl has one line per input line, in order
    assert job.status is JobStatus.COMPLETED, job
    assert job.shards_done == job.total_shards
    written = aws.objects.read_bytes(aws.settings.bucket_name, results_key("j")).decode("utf-8")
    assert len(written.splitlines()) == len(written.rstrip("\n").split("\n")) == len(body)
    assert [json.loads(line)["line"] for line in written.splitlines()] == list(range(1, len(body) + 1))
    # And none failed for a reason of ours
    assert all(
        json.loads(line)["error"] is None or json.loads(line)["error"]["type"] != "internal_error"
        for line in written.splitlines()
    )
