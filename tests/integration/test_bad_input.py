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
    ('{"prompt": "x", "parameters": {"max_tokens": 5}}', "invalid_parameters", "unknown parameter `max_tokens`"),
    ('{"prompt": "x", "parameters": {"stop": ["a", "b", "c", "d", "e"]}}', "invalid_parameters", "up to 4 stop sequences"),
    ('{"prompt": "x", "parameters": {"best_of": 2}}', "invalid_parameters", "must use sampling"),
    ('{"prompt": "x", "parameters": {"top_k": 0}}', "invalid_parameters", "`top_k` must be strictly positive"),
    ('{"prompt": "x", "parameters": {"max_new_tokens": 0}}', "invalid_parameters", "`max_new_tokens` must be strictly positive"),
    # Strict types, no coercion: what TGI's serde would 422 costs no call.
    ('{"prompt": "x", "parameters": {"max_new_tokens": "10"}}', "invalid_parameters", "expected u32"),
    ('{"prompt": "x", "parameters": {"max_new_tokens": true}}', "invalid_parameters", "expected u32"),
    ('{"prompt": "x", "parameters": {"temperature": true}}', "invalid_parameters", "expected f32"),
    ('{"prompt": "x", "parameters": {"temperature": NaN}}', "invalid_parameters", "finite number"),
    ('{"prompt": "x", "parameters": {"top_p": Infinity}}', "invalid_parameters", "finite number"),
    ('{"prompt": "x", "parameters": {"seed": -1}}', "invalid_parameters", "expected u64"),
    ('{"prompt": "x", "parameters": {"seed": 18446744073709551616}}', "invalid_parameters", "expected u64"),
    ('{"prompt": "x", "parameters": {"top_k": 4294967296}}', "invalid_parameters", "expected i32"),
    ('{"prompt": "x", "parameters": {"truncate": 0}}', "invalid_parameters", "`truncate` must be strictly positive"),
    ('{"prompt": "x", "parameters": {"truncate": 9000}}', "invalid_parameters", "less than 8191"),
    # One-line reproductions of lines that used to stop a whole job.
    ('{"id": 1.5, "prompt": "x"}', "invalid_record", "id must be a string or an integer"),
    ('{"id": true, "prompt": "x"}', "invalid_record", "id must be a string or an integer"),
    ('{"id": {"a": 1}, "prompt": "x"}', "invalid_record", "id must be a string or an integer"),
    ('{"prompt": "\\ud800 hi"}', "invalid_json", "unpaired surrogate"),
    ('{"id": "\\udfff", "prompt": "hi"}', "invalid_json", "unpaired surrogate"),
    ('{"prompt": "short", "fit": {"strategy": "window"}}', "unsupported_strategy", "does not apply"),
    (
        '{"messages": [{"role": "user", "content": "hi"}], "fit": {"strategy": "map_reduce"}}',
        "unsupported_strategy",
        "does not apply",
    ),
    ('{"prompt": "a", "prompt": "b"}', "invalid_json", "duplicate key 'prompt'"),
    ('{"prompt": "   \\n\\t "}', "invalid_record", "prompt is empty"),
    ('{"messages": [{"role": "user", "content": " "}]}', "invalid_record", "is empty"),
    ('{"instruction": "Summarise.", "document": "  "}', "invalid_record", "document is empty"),
    ('{"inputs": " "}', "invalid_record", "inputs is empty"),
    ("[" * 100_000 + "]" * 100_000, "invalid_json", "nested too deeply"),
    ('{"prompt": "x", "fit": {"chunk_tokens": "64"}}', "invalid_record", "chunk_tokens"),
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


def test_every_repeat_of_an_id_is_flagged_with_the_first_line(stack):
    # Given an id used on lines 1, 3 and 4 (and another id on line 2)
    job_id = stack.drop_file(
        jsonl({"id": "q1", "prompt": "a"}, {"id": "q2", "prompt": "b"}, {"id": "q1", "prompt": "c"}, {"id": "q1", "prompt": "d"}),
        "inputs/dup-ids.jsonl",
    )

    # When the job runs
    stack.wait_for(job_id)

    # Then every line is answered; lines 3 and 4 name line 1, the first and the unique one carry no note
    results = stack.results(job_id)
    assert [r["status"] for r in results] == ["succeeded"] * 4
    repeat = ["duplicate id: line 1 has the same id"]
    assert [r["notes"] for r in results] == [None, None, repeat, repeat]


def test_ids_compare_by_json_type_and_a_line_without_id_never_collides(stack):
    # Given the integer id 7 and the string id "7", and on line 3 an explicit id 3 beside line 4 that has no id
    job_id = stack.drop_file(
        jsonl({"id": 7, "prompt": "a"}, {"id": "7", "prompt": "b"}, {"id": 4, "prompt": "c"}, {"prompt": "d"}),
        "inputs/typed-ids.jsonl",
    )

    # When the job runs
    stack.wait_for(job_id)

    # Then no line is flagged: 7 and "7" are different ids, and line 4's default id (its line) is not a claim
    results = stack.results(job_id)
    assert [r["id"] for r in results] == [7, "7", 4, 4]
    assert [r["notes"] for r in results] == [None] * 4


def test_a_utf8_byte_order_mark_is_skipped_and_the_first_record_keeps_its_id(stack):
    # Given a file saved as "UTF-8 with BOM"
    job_id = stack.drop_file(b"\xef\xbb\xbf" + jsonl({"id": "first", "prompt": "a"}, GOOD), "inputs/bom.jsonl")

    # When the job runs
    stack.wait_for(job_id)

    # Then both lines succeed and the first keeps its own id
    results = stack.results(job_id)
    assert [(r["id"], r["status"]) for r in results] == [("first", "succeeded"), (2, "succeeded")]


@pytest.mark.parametrize("encoding, name", [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-32", "UTF-32")])
def test_a_utf16_or_utf32_file_fails_the_job_with_one_clear_sentence(stack, encoding, name):
    # Given a JSONL file saved in another Unicode encoding
    job_id = stack.drop_file(jsonl(GOOD, GOOD).decode().encode(encoding), f"inputs/{encoding}.jsonl")

    # When intake reads it
    status = stack.wait_for(job_id)

    # Then the job failed, saying what the file looks like
    assert status == "FAILED"
    assert stack.manifest(job_id)["error"].startswith(f"input must be UTF-8 JSON Lines; this file looks like {name}")


def test_results_jsonl_splits_into_the_same_lines_however_it_is_split(stack):
    # Given prompts and ids holding U+2028, U+2029 and U+0085 (valid JSON, but line breaks to str.splitlines())
    records = [{"id": "a\u2028b", "prompt": "x\u2029y"}, {"id": "c\u0085d", "prompt": "z"}, GOOD]
    job_id = stack.drop_file(jsonl(*records), "inputs/separators.jsonl")

    # When the job runs
    stack.wait_for(job_id)

    # Then results.jsonl has exactly one line per input line under either way of splitting, ids intact
    text = stack.read(f"outputs/{job_id}/results.jsonl").decode("utf-8")
    assert len(text.splitlines()) == len(text.rstrip("\n").split("\n")) == 3
    assert [json.loads(line)["id"] for line in text.splitlines()] == ["a\u2028b", "c\u0085d", 3]
