"""Where things live in the stack's bucket: the one module that knows the key layout.

inputs/...                       files dropped by users (S3 notifications start jobs)
jobs/<job_id>/input.jsonl        inputs intake writes itself (inline records, a retry's records)
outputs/<job_id>/results.jsonl   one result line per input line, in input order (in the job's output format)
outputs/<job_id>/errors.jsonl    OpenAI output format only: the result lines that are errors, as OpenAI's error file
outputs/<job_id>/manifest.json   counts, tokens, timings
outputs/<job_id>/parts/<shard>.jsonl             one shard's results, written once its records are all done:
                                                  readable while the job runs (`sagebatch results --partial`)
outputs/<job_id>/parts/<shard>.checkpoint.jsonl  the answers a running shard has so far (crash safety)
outputs/<job_id>/assembly.json                   where the finalizer's streamed assembly of results.jsonl is
outputs/<job_id>/assembly/ids-<n>.bin            the ids a paused assembly has seen (its duplicate-id check)
"""

from __future__ import annotations

INPUTS_PREFIX = "inputs/"


def job_input_key(job_id: str) -> str:
    return f"jobs/{job_id}/input.jsonl"


def outputs_prefix(job_id: str) -> str:
    return f"outputs/{job_id}/"


def results_key(job_id: str) -> str:
    return f"outputs/{job_id}/results.jsonl"


def errors_key(job_id: str) -> str:
    return f"outputs/{job_id}/errors.jsonl"


def manifest_key(job_id: str) -> str:
    return f"outputs/{job_id}/manifest.json"


def parts_prefix(job_id: str) -> str:
    return f"outputs/{job_id}/parts/"


def part_key(job_id: str, shard: int) -> str:
    return f"outputs/{job_id}/parts/{shard:08d}.jsonl"


def checkpoint_key(job_id: str, shard: int) -> str:
    return f"outputs/{job_id}/parts/{shard:08d}.checkpoint.jsonl"


def assembly_key(job_id: str) -> str:
    return f"outputs/{job_id}/assembly.json"


def part_key_pattern(job_id: str) -> str:
    """`part_key` as a pattern (manifest.json: a million-line job has ~31k parts, too many to list)."""
    return f"outputs/{job_id}/parts/{{shard:08d}}.jsonl"


def assembly_ids_key(job_id: str, segment: int) -> str:
    return f"outputs/{job_id}/assembly/ids-{segment:06d}.bin"


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"
