"""Where things live in the stack's bucket: the one module that knows the key layout.

    inputs/...                       files dropped by users (S3 notifications start jobs)
    jobs/<job_id>/input.jsonl        inputs intake writes itself (inline records, a retry's records)
    outputs/<job_id>/results.jsonl   one result line per input line, in input order
    outputs/<job_id>/manifest.json   counts, tokens, timings
    outputs/<job_id>/records/<line>.json   a result too large for its DynamoDB item (see ResultStore)
"""

from __future__ import annotations

INPUTS_PREFIX = "inputs/"


def job_input_key(job_id: str) -> str:
    return f"jobs/{job_id}/input.jsonl"


def outputs_prefix(job_id: str) -> str:
    return f"outputs/{job_id}/"


def results_key(job_id: str) -> str:
    return f"outputs/{job_id}/results.jsonl"


def manifest_key(job_id: str) -> str:
    return f"outputs/{job_id}/manifest.json"


def large_result_key(job_id: str, line: int) -> str:
    return f"outputs/{job_id}/records/{line:012d}.json"


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"
