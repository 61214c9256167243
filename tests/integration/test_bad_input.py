"""Bad input gets a clear error on the record (or job) it belongs to; one bad line never fails the others.

One job holds a good line between every bad one, so each assertion also shows that the neighbours survived.
"""

from __future__ import annotations

import gzip
import json

import pytest

from tests.conftest import jsonl

GOOD = {"prompt": "Say hello."}

# (line content, expected error type or None for "succeeds", a phrase the error message or notes must contain)
BAD_LINES: list[tuple[str | bytes, str | None, str]] = [
    ("{not json", "invalid_json", "not valid JSON"),
    (b'{"prompt": "caf\xe9"}', "invalid_utf8", "not UTF-8"),
    ("", "empty_line", "blank line"),
    ("   ", "empty_line", "blank line"),
    ('["a", "list"]', "invalid_record", "must be a JSON object"),
    ('{"id": "no-content"}', "invalid_record", "exactly one of"),
    ('{"prompt": "x", "messages": [{"role": "user", "content": "y"}]}', "invalid_record", "exactly one of"),
    ('{"prompt": "x", "colour": "blue"}', "invalid_record", "colour"),
    ('{"prompt": 42}', "invalid_record", "prompt"),
    ('{"messages": [{"role": "assistant", "content": "hi"}]}', "invalid_record", "expected 'user'"),
    ('{"messages": [{"role": "robot", "content": "hi"}]}', "invalid_record", "role"),
    ('{"prompt": "x", "parameters": {"max_tokens": 5}}', "invalid_record", "max_tokens"),
    ('{"prompt": "x", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}', "invalid_parameters", "up to 4 stop sequences"),
    ('{"prompt": "x", "parameters": {"best_of": 2}}', "invalid_parameters", "must use sampling"),
    ('{"prompt": "x", "parameters": {"top_k": 0}}', "invalid_parameters", "`top_k` must be strictly positive"),
    ('{"prompt": "x", "parameters": {"max_new_tokens": 0}}', "invalid_record", "max_new_tokens"),
    ('{"prompt": "x", "parameters": {"temperature": 0}}', None, "temperature 0 sent as greedy decoding"),
    ('{"prompt": "x", "parameters": {"top_p": 1.0}}', None, "top_p 1.0 dropped"),
    (json.dumps({"inputs": "[INST] " + "word " * 9000 + "[/INST]"}), "context_length_exceeded", "8191"),
]


@pytest.fixture(scope="module")
def bad_job_results():
    """One job: GOOD, bad 1, GOOD, bad 2, ..., GOOD; returns its result lines and the emulator's stats."""
    from sagebatch.tooling.local.session import local_stack

    lines: list[bytes] = [json.dumps(GOOD).encode()]
    for content, _, _ in BAD_LINES:
        lines.append(content if isinstance(content, bytes) else content.encode())
        lines.append(json.dumps(GOOD).encode())
    with local_stack() as run:
        job_id = run.drop_file(b"\n".join(lines) + b"\n", "inputs/bad-lines.jsonl")
        status = run.wait_for(job_id)
        yield status, run.results(job_id), run.manifest(job_id)


def test_a_job_full_of_bad_lines_still_completes_with_one_result_per_line(bad_job_results):
    # Given a file alternating good lines and every kind of bad line; When it runs
    status, results, manifest = bad_job_results
    # Then the job completes and every line has exactly one result, in order
    assert status == "COMPLETED"
    assert [r["line"] for r in results] == list(range(1, 2 * len(BAD_LINES) + 2))
    assert manifest["counts"]["total"] == len(results)


def test_every_good_neighbour_of_a_bad_line_succeeds(bad_job_results):
    # Given the same job; Then every odd line (the good ones) succeeded
    _, results, _ = bad_job_results
    assert all(r["status"] == "succeeded" for r in results[0::2])


@pytest.mark.parametrize("index", range(len(BAD_LINES)), ids=[f"{e or 'fixed'}-{i}" for i, (_, e, _) in enumerate(BAD_LINES)])
def test_each_bad_line_gets_its_own_clear_outcome(bad_job_results, index):
    # Given bad line number `index`; When the job has run
    _, results, _ = bad_job_results
    content, expected_error, phrase = BAD_LINES[index]
    result = results[2 * index + 1]
    # Then it failed with the expected error type and a message naming the problem
    # (or, for values TGI would reject but whose meaning is clear, it succeeded with a note saying what was fixed)
    if expected_error is None:
        assert result["status"] == "succeeded"
        assert any(phrase in note for note in result["notes"])
    else:
        assert result["status"] == "failed"
        assert result["error"]["type"] == expected_error
        assert phrase in result["error"]["message"]
        assert result["output"] is None


def test_a_gzip_file_fails_the_job_with_a_reason(stack):
    # Given a gzip-compressed JSONL file dropped under inputs/
    job_id = stack.drop_file(gzip.compress(jsonl(GOOD, GOOD)), "inputs/batch.jsonl.gz")

    # When intake handles it
    status = stack.wait_for(job_id)

    # Then the job failed and the manifest says the input is gzip-compressed
    assert status == "FAILED"
    assert "gzip" in stack.manifest(job_id)["error"]


def test_a_job_pointing_at_an_unreadable_object_fails_with_a_reason(stack):
    # Given a job message naming an object that does not exist in the stack's bucket
    stack.submit_job({"job_id": "missing-input", "input": f"s3://{stack.stack.bucket}/staging/nope.jsonl"})

    # When intake handles it
    status = stack.wait_for("missing-input")

    # Then the job failed with the location and the reason, and no work was enqueued
    assert status == "FAILED"
    error = stack.manifest("missing-input")["error"]
    assert "staging/nope.jsonl" in error


def test_a_line_over_10_mib_fails_alone_with_its_size(stack):
    # Given an 11 MB prompt line between two good lines (the limit is SAGEBATCH_MAX_LINE_BYTES, 10 MiB)
    big = {"id": "huge", "prompt": "Summarise the following notes. " + "The cable hums in the dark tunnel. " * 330_000}
    job_id = stack.drop_file(jsonl(GOOD, big, GOOD), "inputs/huge.jsonl")

    # When the job runs
    status = stack.wait_for(job_id)

    # Then only the huge line failed, with its size and the limit; its neighbours succeeded
    results = stack.results(job_id)
    assert status == "COMPLETED"
    assert [r["status"] for r in results] == ["succeeded", "failed", "succeeded"]
    assert results[1]["error"]["type"] == "line_too_large"
    assert str(10 * 1024 * 1024) in results[1]["error"]["message"]


def test_a_multi_megabyte_prompt_is_answered_from_its_head(stack):
    # Given a 3.5 MB prompt line (far over 8,192 tokens, under the line limit)
    big = {"id": "long", "prompt": "Summarise the following notes. " + "The cable hums in the dark tunnel. " * 100_000}
    job_id = stack.drop_file(jsonl(big), "inputs/long.jsonl")

    # When the job runs
    stack.wait_for(job_id)

    # Then it is truncated to the context (the default for prompts) and answered
    (result,) = stack.results(job_id)
    assert result["status"] == "succeeded"
    assert result["strategy"] == "truncate" and result["truncated"] is True
    assert result["usage"]["input_tokens"] <= 8191


def test_a_duplicate_id_is_answered_and_flagged_on_the_later_line(stack):
    # Given two lines with the same id (and a third with its own)
    job_id = stack.drop_file(jsonl({"id": "q1", "prompt": "a"}, {"id": "q2", "prompt": "b"}, {"id": "q1", "prompt": "c"}),
                             "inputs/dup-ids.jsonl")

    # When the job runs
    stack.wait_for(job_id)

    # Then every line is answered, and one of the two q1 lines names the other (lines stay unique; which of the
    # two is flagged depends on which claimed the id first, as they run concurrently)
    results = stack.results(job_id)
    assert [r["status"] for r in results] == ["succeeded"] * 3
    assert results[1]["notes"] is None
    flagged = sorted((r["line"], r["notes"]) for r in (results[0], results[2]) if r["notes"])
    assert flagged in ([(1, ["duplicate id: line 3 has the same id"])], [(3, ["duplicate id: line 1 has the same id"])])
