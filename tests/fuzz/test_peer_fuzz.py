"""Peer-format lines (OpenAI Batch, Bedrock batch) keep the invariant: one result per line, whatever it holds.

A property test runs the record runner on random peer-shaped lines in files of every format; fuzz runs send a
file of each peer format through `sagebatch run` and read the results back in that format.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagebatch.domain.budget import TokenBudget
from sagebatch.domain.formats import FORMATS, native_fields
from sagebatch.domain.parameters import Parameters
from sagebatch.domain.tokens import get_tokenizer
from sagebatch.fakes import FakeEndpointCaller
from sagebatch.tooling import cli
from sagebatch.usecases.record_runner import RecordRunner
from tests.fuzz.lines import KNOWN_ERRORS, peer_line, peer_lines

FUZZ_LINES = 400


@pytest.fixture(scope="module")
def runner() -> Iterator[RecordRunner]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield RecordRunner(FakeEndpointCaller(), TokenBudget(), get_tokenizer(), 16, 64 * 1024, pool)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32), line_format=st.sampled_from(["openai", "bedrock"]), file_format=st.sampled_from(FORMATS))
def test_any_peer_line_in_any_file_gets_exactly_one_known_result(
    runner: RecordRunner, seed: int, line_format: str, file_format: Any
) -> None:
    # Given a random OpenAI or Bedrock line (fields of random types and values), in a file of any format
    raw = peer_line(random.Random(seed), line_format)
    # When the record runner answers it
    result = runner.run(5, raw, Parameters(), None, input_format=file_format, input_format_line=1)
    # Then it gives one result for that line, succeeded or failed with a known problem of the line (never our bug)
    assert result.line == 5
    assert result.status == "succeeded" or (result.error is not None and result.error.type in KNOWN_ERRORS), result


@pytest.fixture(scope="module", params=["openai", "bedrock"])
def peer_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int, list[bytes], list[str]]:
    fmt = request.param
    folder = tmp_path_factory.mktemp(f"fuzz-{fmt}")
    data = peer_lines(seed=20261203, count=FUZZ_LINES, fmt=fmt)
    source = folder / f"{fmt}.jsonl"
    source.write_bytes(b"\n".join(data) + b"\n")
    code = cli.main(["run", str(source), "--out", str(folder / "out")])
    text = Path(folder / "out" / "results.jsonl").read_text(encoding="utf-8")
    return fmt, code, data, text.splitlines()


def test_a_peer_file_of_hostile_lines_finishes_with_one_result_per_line_in_order(peer_run) -> None:
    # Given a few hundred random lines of one peer's format (some of any other kind); When `sagebatch run` ran them
    fmt, code, data, text = peer_run
    results = [json.loads(line) for line in text]
    # Then the job completed with one line per input line, in order, in the peer's shape
    assert code == 0
    assert [native_fields(r)["line"] for r in results] == list(range(1, len(data) + 1))
    assert all(("custom_id" if fmt == "openai" else "recordId") in r for r in results)


def test_every_peer_line_that_failed_failed_for_a_known_reason(peer_run) -> None:
    # Given the same runs; Then no line failed for a reason of ours (internal_error), and none was sent and refused
    # by the emulator's TGI 1.1 validation: a converted line that TGI would 422 is refused before any call
    _, _, _, text = peer_run
    results = [json.loads(line) for line in text]
    kinds = {_error_type(r) for r in results} - {None}
    assert kinds <= KNOWN_ERRORS, kinds - KNOWN_ERRORS


def _error_type(line: dict[str, Any]) -> str | None:
    """The native error type a peer result line reports, or None for a success."""
    error = line.get("error")
    if "modelInput" in line:  # Bedrock: {"errorCode", "errorMessage": "type: message"}
        return str(error["errorMessage"]).split(":", 1)[0] if error else None
    if error:  # OpenAI: a record never run
        return str(error["code"])
    body = line["response"]["body"]
    return str(body["error"]["code"]) if "error" in body else None
