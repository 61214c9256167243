"""A fuzz run through `sagebatch run`: a few thousand hostile lines, one finished job, one result per line."""

from __future__ import annotations

import json

import pytest

from sagebatch.tooling import cli
from tests.fuzz.lines import KNOWN_ERRORS, lines

FUZZ_LINES = 2000


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[bytes], str, dict]:
    folder = tmp_path_factory.mktemp("fuzz")
    data = lines(seed=20261202, count=FUZZ_LINES)
    source = folder / "fuzz.jsonl"
    source.write_bytes(b"\n".join(data) + b"\n")
    code = cli.main(["run", str(source), "--out", str(folder / "out")])
    text = (folder / "out" / "results.jsonl").read_text(encoding="utf-8") if (folder / "out" / "results.jsonl").exists() else ""
    manifest = json.loads((folder / "out" / "manifest.json").read_text(encoding="utf-8"))
    return code, data, text, manifest


def test_the_job_finishes_with_one_result_per_line_in_order(fuzz_run) -> None:
    # Given a few thousand random lines (bytes, JSON of any shape, records with fields of random types)
    code, data, text, manifest = fuzz_run
    # When `sagebatch run` has run them
    results = [json.loads(line) for line in text.splitlines()]
    # Then the job completed, and there is exactly one result per input line, in order
    assert code == 0 and manifest["status"] == "COMPLETED"
    assert [r["line"] for r in results] == list(range(1, len(data) + 1))
    assert manifest["counts"]["total"] == len(data) == manifest["counts"]["succeeded"] + manifest["counts"]["failed"]


def test_every_failure_is_a_known_problem_of_its_line(fuzz_run) -> None:
    # Given the same run; Then no line failed for a reason of ours (internal_error), and none was sent and refused
    # by the emulator's TGI 1.1 validation (endpoint_validation): what TGI would 422 is refused before any call
    _, _, text, _ = fuzz_run
    kinds = {json.loads(line)["error"]["type"] for line in text.splitlines() if json.loads(line)["error"]}
    assert kinds <= KNOWN_ERRORS, kinds - KNOWN_ERRORS


def test_results_split_the_same_with_splitlines_and_newlines(fuzz_run) -> None:
    # Given the same run; Then line-based readers see one line per result, however they split
    _, data, text, _ = fuzz_run
    assert len(text.splitlines()) == len(text.rstrip("\n").split("\n")) == len(data)
