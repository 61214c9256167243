"""Long inputs end to end: the seed's long-context question and a 30,000-token document, answered
under map_reduce through the local stack, with every request inside TGI's length rule as the
emulator (and a recount with the real tokenizer) sees it."""

from __future__ import annotations

import importlib.util
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sagebatch.domain.tokens import get_tokenizer
from sagebatch.tooling.cli import main as sagebatch_main
from sagebatch.tooling.emulator.server import Emulator
from sagebatch.tooling.local.session import local_stack
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"
LONG_CONTEXT = EXAMPLES / "long-context.jsonl"
LONG_DOCUMENT = EXAMPLES / "long-document.jsonl"
QUESTION = "Why does the author call cables 'the vines of the city'?"
MAX_INPUT_LENGTH, MAX_TOTAL_TOKENS = 8191, 8192  # the JumpStart values the template deploys
TGI_DEFAULT_MAX_NEW_TOKENS = 20  # what TGI 1.1 uses when a request does not say

TOK = get_tokenizer()


class RecordingEmulator(Emulator):
    """The stack's emulator, also keeping every request body it was sent (before validation)."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict[str, Any]] = []
        self._bodies_lock = threading.Lock()

    def invoke(self, endpoint_name: str, raw_body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self._bodies_lock:
            self.bodies.append(json.loads(raw_body))
        return super().invoke(endpoint_name, raw_body)


@dataclass(frozen=True)
class Ran:
    status: str
    lines: list[dict[str, Any]]  # the input records
    results: list[dict[str, Any]]
    manifest: dict[str, Any]
    bodies: list[dict[str, Any]]  # every request the endpoint received
    emulator: RecordingEmulator


def run_example(path: Path) -> Ran:
    """Drop an example file under inputs/ (as `sagebatch run` does) and run the job to the end."""
    emulator = RecordingEmulator()
    with local_stack(emulator=emulator) as run:
        data = path.read_bytes()
        job_id = run.drop_file(data, f"inputs/{path.name}")
        status = run.wait_for(job_id, timeout_s=300)
        return Ran(
            status=status,
            lines=[json.loads(line) for line in data.splitlines()],
            results=run.results(job_id),
            manifest=run.manifest(job_id),
            bodies=list(emulator.bodies),
            emulator=emulator,
        )


@pytest.fixture(scope="module")
def long_context() -> Ran:
    return run_example(LONG_CONTEXT)


@pytest.fixture(scope="module")
def long_document() -> Ran:
    return run_example(LONG_DOCUMENT)


@pytest.fixture(scope="module", params=["long_context", "long_document"])
def each_run(request: pytest.FixtureRequest) -> Ran:
    return request.getfixturevalue(request.param)


def _generator():
    spec = importlib.util.spec_from_file_location("make_long_examples", EXAMPLES / "make_long_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


# --------------------------------------------------------------------------
# The example files


def test_the_example_files_are_what_the_generator_writes():
    # Given the committed example files and their generator
    generator = _generator()

    # When the generator runs in check mode (it writes nothing)
    code = generator.main(["--check"])

    # Then the files match its output byte for byte
    assert code == 0


def test_the_seed_passage_is_about_6400_words_and_over_the_context():
    # Given the seed-shaped record of examples/long-context.jsonl
    record = json.loads(LONG_CONTEXT.read_text(encoding="utf-8").splitlines()[0])

    # When its passage is measured with the real tokenizer
    words, tokens = len(record["document"].split()), TOK.count(record["document"])

    # Then it is about 6,400 words, longer than the whole 8,192-token context, and asks the seed's question
    assert 6_300 <= words <= 6_500
    assert tokens > MAX_TOTAL_TOKENS
    assert record["instruction"] == QUESTION
    assert record["fit"] == {"strategy": "map_reduce"}


def test_the_long_document_is_at_least_30000_tokens():
    # Given the record of examples/long-document.jsonl
    (line,) = LONG_DOCUMENT.read_text(encoding="utf-8").splitlines()
    record = json.loads(line)

    # When its document is measured with the real tokenizer
    tokens = TOK.count(record["document"])

    # Then it is at least 30,000 tokens and set to map_reduce
    assert tokens >= 30_000
    assert record["fit"] == {"strategy": "map_reduce"}


# --------------------------------------------------------------------------
# Through the local stack


def test_the_seed_question_is_answered_under_map_reduce_from_several_chunks(long_context):
    # Given the seed's passage and question as a document record under map_reduce (long_context ran it)
    # When the job has run
    result = long_context.results[0]

    # Then the job completed and the record was answered from more than one chunk, plus a combining call
    assert long_context.status == "COMPLETED"
    assert result["id"] == "seed-long-context-qa"
    assert result["status"] == "succeeded" and result["error"] is None and result["output"]
    assert result["strategy"] == "map_reduce"
    assert result["chunks"] > 1
    assert result["calls"] == result["chunks"] + 1  # two partial answers always fit one combining call
    assert len(result["chunk_outputs"]) == result["chunks"]


def test_the_30000_token_document_is_summarised_under_map_reduce(long_document):
    # Given the 30,000-token document record under map_reduce (long_document ran it)
    # When the job has run
    (result,) = long_document.results

    # Then the job completed and the record was answered from at least four chunks (30,000 / ~7,650)
    assert long_document.status == "COMPLETED"
    assert result["status"] == "succeeded" and result["error"] is None and result["output"]
    assert result["strategy"] == "map_reduce"
    assert result["chunks"] >= 4
    assert result["calls"] >= result["chunks"] + 1


def test_the_same_question_as_a_plain_prompt_falls_back_to_head_truncation(long_context):
    # Given the passage as one prompt with the question first and no fit settings (long_context line 2)
    # When the job has run
    result = long_context.results[1]

    # Then the prompt default applied: one call, truncated, keeping the question at the head
    assert result["status"] == "succeeded"
    assert result["strategy"] == "truncate" and result["truncated"] is True
    assert result["chunks"] == 1 and result["calls"] == 1
    prompt_calls = [b for b in long_context.bodies if b["inputs"].startswith("[INST] Read the passage below")]
    assert len(prompt_calls) == 1
    assert QUESTION in prompt_calls[0]["inputs"]


def test_every_request_passes_tgi_validation_in_the_emulator(each_run):
    # Given a long example run through the stack (each_run: both files)
    stats = each_run.emulator.stats

    # When the emulator's counters are read
    # Then no request was refused by TGI's validation (no 422), and every request was answered
    assert stats.validation_errors == 0
    assert stats.injected_faults == 0 and stats.overloaded == 0
    assert stats.succeeded == stats.requests == len(each_run.bodies) == each_run.manifest["endpoint_calls"]
    assert len(each_run.emulator.seen_inputs) == len(each_run.bodies)


def test_every_request_fits_the_budget_when_recounted_with_the_real_tokenizer(each_run):
    # Given every request body the endpoint received for a long example
    assert each_run.bodies

    # When each `inputs` string is counted again as TGI counts it (BOS included)
    checked = [
        (TOK.count(body["inputs"]), body["parameters"].get("max_new_tokens", TGI_DEFAULT_MAX_NEW_TOKENS))
        for body in each_run.bodies
    ]

    # Then each one is within MAX_INPUT_LENGTH and, with its max_new_tokens, within MAX_TOTAL_TOKENS
    for input_tokens, max_new_tokens in checked:
        assert input_tokens <= MAX_INPUT_LENGTH
        assert input_tokens + max_new_tokens <= MAX_TOTAL_TOKENS
    # ... and the map calls used most of the room: the documents really were cut to the budget
    assert max(input_tokens + new for input_tokens, new in checked) > MAX_TOTAL_TOKENS - 600


def test_the_reported_input_tokens_are_what_the_endpoint_counted(each_run):
    # Given a long example run and every request the endpoint received
    # When the recounted inputs are added up
    recounted = sum(TOK.count(body["inputs"]) for body in each_run.bodies)

    # Then the job's results and manifest report exactly that many input tokens
    assert sum(r["usage"]["input_tokens"] for r in each_run.results) == recounted
    assert each_run.manifest["tokens"]["input"] == recounted


def test_every_map_reduce_call_carries_the_instruction(each_run):
    # Given the document records of a long example and the requests sent for them
    for line in each_run.lines:
        if "document" not in line:
            continue
        result = next(r for r in each_run.results if r["id"] == line["id"])

        # When the requests that open with the record's instruction are sorted into map and combining calls
        calls = [b["inputs"] for b in each_run.bodies if b["inputs"].startswith(f"[INST] {line['instruction']}\n\n")]
        combining = [c for c in calls if "Partial answer 1:" in c]
        mapping = [c for c in calls if "Partial answer 1:" not in c]

        # Then all of the record's calls carry it: one per chunk, then the call(s) combining the partial answers
        assert len(calls) == result["calls"]
        assert len(mapping) == result["chunks"]
        assert len(combining) == result["calls"] - result["chunks"] >= 1
        assert all(f"Partial answer {n}:" in combining[-1] for n in range(1, result["chunks"] + 1))


# --------------------------------------------------------------------------
# Through the command line


@pytest.mark.parametrize("path", [LONG_CONTEXT, LONG_DOCUMENT], ids=lambda p: p.stem)
def test_sagebatch_run_answers_the_long_examples(path, tmp_path):
    # Given a long example file
    out = tmp_path / "out"

    # When it is run with `sagebatch run FILE --out DIR`
    code = sagebatch_main(["run", str(path), "--out", str(out), "--timeout", "300"])

    # Then the command succeeds and every document record comes back answered under map_reduce
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    results = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert manifest["status"] == "COMPLETED" and manifest["counts"]["failed"] == 0
    documents = [r for r, line in zip(results, path.read_text(encoding="utf-8").splitlines()) if "document" in json.loads(line)]
    assert documents and all(r["strategy"] == "map_reduce" and r["chunks"] > 1 and r["output"] for r in documents)
