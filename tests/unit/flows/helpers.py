"""What the flow tests share: input files, intake messages, and reading what a job wrote."""

from __future__ import annotations

import json
from typing import Any

from sagebatch.domain.job import Job
from sagebatch.domain.layout import manifest_key, results_key
from sagebatch.domain.messages import Shard
from sagebatch.fakes import FakeAws


def jsonl(*records: object) -> bytes:
    """One line per record: strings as they are, anything else as JSON."""
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records).encode("utf-8")


def prompts(count: int, start: int = 1) -> list[dict[str, Any]]:
    return [{"prompt": f"question {n}"} for n in range(start, start + count)]


def message(**spec: Any) -> str:
    """A job (or control) message's body."""
    return json.dumps(spec)


def job_of(aws: FakeAws, job_id: str | None) -> Job:
    assert job_id is not None
    job = aws.jobs.get_job(job_id)
    assert job is not None, f"no job {job_id}"
    return job


def queued_shards(aws: FakeAws) -> list[Shard]:
    """Receive (and so take off the work queue) every shard message waiting there."""
    shards = []
    while (delivery := aws.work.receive()) is not None:
        shards.append(Shard.model_validate_json(delivery.body))
    return shards


def results_of(aws: FakeAws, job_id: str) -> list[dict[str, Any]]:
    """The job's results.jsonl, parsed line by line."""
    body = aws.objects.read_bytes(aws.settings.bucket_name, results_key(job_id))
    return [json.loads(line) for line in body.decode("utf-8").splitlines()]


def manifest_of(aws: FakeAws, job_id: str) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(aws.objects.read_bytes(aws.settings.bucket_name, manifest_key(job_id)))
    return manifest
