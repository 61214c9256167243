"""Shared fixtures. AWS is moto (through real boto3 clients), built from template.yaml; the endpoint is
the local emulator over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from sagebatch.local.session import LocalRun, local_stack
from sagebatch.local.stack import use_fake_aws_environment

ROOT = Path(__file__).resolve().parents[1]

use_fake_aws_environment()


@pytest.fixture
def stack() -> Iterator[LocalRun]:
    """A fresh local stack (moto resources from template.yaml + emulator) per test."""
    with local_stack() as run:
        yield run


def jsonl(*records: object) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records).encode("utf-8")
