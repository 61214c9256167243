"""Results of any size: a result line far larger than a DynamoDB item (400 KB) lives in its shard's part in S3 and is
written whole to results.jsonl."""

from __future__ import annotations

import json

import boto3

from sagebatch.tooling.local.stack import REGION
from tests.conftest import jsonl


def test_a_result_larger_than_a_dynamodb_item_is_written_whole(stack):
    # Given a record whose id alone is 600 KB (its result line cannot fit a 400 KB item), between two ordinary ones
    long_id = "k" * 600_000
    job_id = stack.drop_file(jsonl({"prompt": "a"}, {"id": long_id, "prompt": "b"}, {"prompt": "c"}), "inputs/long-id.jsonl")

    # When the job runs
    status = stack.wait_for(job_id)

    # Then it completes, and results.jsonl holds the whole line with its id intact
    results = stack.results(job_id)
    assert status == "COMPLETED"
    assert [r["status"] for r in results] == ["succeeded"] * 3
    assert results[1]["id"] == long_id


def test_a_large_result_lives_in_its_shards_part_not_in_the_job_table(stack):
    # Given a record whose result is 500 KB (a DynamoDB item holds 400 KB)
    long_id = "q" * 500_000
    job_id = stack.drop_file(jsonl({"id": long_id, "prompt": "b"}), "inputs/long-id-2.jsonl")

    # When the job runs
    stack.wait_for(job_id)

    # Then the result sits in the shard's part under outputs/<job>/parts/, and the result store reads it back
    keys = boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=stack.stack.bucket, Prefix=f"outputs/{job_id}/parts/")
    parts = [item["Key"] for item in keys["Contents"] if not item["Key"].endswith(".checkpoint.jsonl")]
    assert parts == [f"outputs/{job_id}/parts/00000000.jsonl"]
    assert json.loads(stack.read(parts[0]))["id"] == long_id
    assert [r.id for r in stack.result_store.results(job_id)] == [long_id]


def test_a_split_whose_chunk_outputs_pass_400_kb_is_answered_whole(stack):
    # Given a long document split into many chunks, each answered at length (the reproduction from the issue:
    # chunk_outputs adding up past a DynamoDB item's 400 KB used to make the store raise and the shard loop)
    document = "".join(f"Crate {n} hums in the dark tunnel while the night shift counts it. " for n in range(60_000))
    record = {
        "id": "big-split",
        "instruction": "Repeat the notes.",
        "document": document,
        "fit": {"strategy": "split", "chunk_tokens": 2048},
        "parameters": {"max_new_tokens": 4096},
    }
    job_id = stack.drop_file(jsonl(record, {"prompt": "ok"}), "inputs/big-split.jsonl")

    # When the job runs
    status = stack.wait_for(job_id)

    # Then the job completes and the split's result line, over 400 KB, is in results.jsonl whole
    text = stack.read(f"outputs/{job_id}/results.jsonl").decode("utf-8")
    first = text.split("\n")[0]
    result = json.loads(first)
    assert status == "COMPLETED"
    assert result["status"] == "succeeded" and result["chunks"] == len(result["chunk_outputs"]) > 1
    assert len(first.encode("utf-8")) > 400_000


def test_one_file_holding_every_reproduction_finishes_with_one_result_per_line(stack):
    # Given ordinary lines around the four reproductions in one file: a float id, a lone surrogate escape,
    # a strategy that does not apply to the shape, and a split whose chunk outputs pass 400 KB
    document = "".join(f"Crate {n} hums in the dark tunnel while the night shift counts it. " for n in range(60_000))
    split = {
        "instruction": "Repeat the notes.",
        "document": document,
        "fit": {"strategy": "split", "chunk_tokens": 2048},
        "parameters": {"max_new_tokens": 4096},
    }
    lines = [
        {"prompt": "a"},
        '{"id": 1.5, "prompt": "x"}',
        '{"prompt": "\\ud800 hi"}',
        {"prompt": "short", "fit": {"strategy": "window"}},
        split,
        {"prompt": "b"},
    ]
    job_id = stack.drop_file(jsonl(*lines), "inputs/every-reproduction.jsonl")

    # When the job runs
    status = stack.wait_for(job_id)

    # Then it completes with one result per line, the ordinary lines and the split answered
    text = stack.read(f"outputs/{job_id}/results.jsonl").decode("utf-8")
    results = [json.loads(line) for line in text.splitlines()]
    assert status == "COMPLETED" and len(text.splitlines()) == len(text.rstrip("\n").split("\n")) == 6
    assert [(r["line"], r["status"], (r["error"] or {}).get("type")) for r in results] == [
        (1, "succeeded", None),
        (2, "failed", "invalid_record"),
        (3, "failed", "invalid_json"),
        (4, "failed", "unsupported_strategy"),
        (5, "succeeded", None),
        (6, "succeeded", None),
    ]
