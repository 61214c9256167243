"""Shared fixtures. AWS is moto (through real boto3 clients), built from template.yaml; the endpoint is
the local emulator over real HTTP."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from hypothesis import settings

from sagebatch.endpoint.sagemaker import runtime_client_config
from sagebatch.tooling.emulator.server import Emulator, EmulatorServer
from sagebatch.tooling.local.session import LocalRun, local_stack
from sagebatch.tooling.local.stack import use_fake_aws_environment

ROOT = Path(__file__).resolve().parents[1]

use_fake_aws_environment()


def load_bench(name: str) -> ModuleType:
    """Import bench/<name>.py (the benches are scripts, not a package) for a test of its machinery."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# Property tests check behaviour, not speed: two xdist workers on two cores, beside moto-backed tests, can make an
# example take longer than hypothesis's 200 ms deadline without anything being wrong.
settings.register_profile("sagebatch", deadline=None)
settings.load_profile("sagebatch")


@pytest.fixture
def stack() -> Iterator[LocalRun]:
    """A fresh local stack (moto resources from template.yaml + emulator) per test."""
    with local_stack() as run:
        yield run


def jsonl(*records: object) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records).encode("utf-8")


@contextmanager
def serving(emulator: Emulator) -> Iterator[Any]:
    """Serve `emulator` on loopback; yield a sagemaker-runtime client pointed at it."""
    with EmulatorServer(emulator) as server:
        yield boto3.client(
            "sagemaker-runtime",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=runtime_client_config(),  # one attempt: botocore must not retry throttles behind our back
        )
