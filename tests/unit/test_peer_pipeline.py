"""Peers' formats wired through the use cases, on in-memory fakes: intake's format decision from the head of the
input, the record runner's reading of peer lines, and the finalizer's result files in the job's output format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydantic import ValidationError

from sagebatch.domain.budget import TokenBudget
from sagebatch.domain.formats import native_fields
from sagebatch.domain.job import Job
from sagebatch.domain.layout import errors_key, results_key
from sagebatch.domain.manifest import build_manifest
from sagebatch.domain.messages import JobSpec
from sagebatch.domain.parameters import Parameters
from sagebatch.domain.results import ResultLine, failed
from sagebatch.domain.tokens import get_tokenizer
from sagebatch.fakes import FakeEndpointCaller, InMemoryObjectStore
from sagebatch.usecases.input_format import FIRST_READ_BYTES, InputFormat, decide_input_format
from sagebatch.usecases.record_runner import RecordRunner
from sagebatch.usecases.result_files import ResultFiles, input_originals

BUCKET = "data"
MAX_LINE_BYTES = 1024 * 1024


def chat(custom_id: str = "c1", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": "Hi"}], **body},
    }


def bedrock(record_id: str = "r1", **model_input: Any) -> dict[str, Any]:
    return {"recordId": record_id, "modelInput": {"prompt": "<s>[INST] Hi [/INST]", **model_input}}


def lines(*items: object) -> bytes:
    return b"".join((item if isinstance(item, bytes) else json.dumps(item).encode()) + b"\n" for item in items)


@pytest.fixture
def objects() -> InMemoryObjectStore:
    store = InMemoryObjectStore()
    store.create_bucket(BUCKET)
    return store


@pytest.fixture
def endpoint() -> FakeEndpointCaller:
    return FakeEndpointCaller()


@pytest.fixture
def runner(endpoint: FakeEndpointCaller) -> Iterator[RecordRunner]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield RecordRunner(endpoint, TokenBudget(), get_tokenizer(), 16, MAX_LINE_BYTES, pool)


def run(runner: RecordRunner, line: object, file_format: Any, number: int = 1) -> ResultLine:
    raw = line if isinstance(line, bytes) else json.dumps(line).encode()
    return runner.run(number, raw, Parameters(), None, input_format=file_format, input_format_line=1)


# -- intake: the file's format, from the head of the object -----------------------------------------
def test_the_first_recognisable_line_decides_the_files_format(objects: InMemoryObjectStore) -> None:
    # Given a file whose first lines are not JSON, a JSON array and an object of no known format, then Bedrock lines
    info = objects.put(BUCKET, "in.jsonl", lines(b"{oops", [1], {"colour": "blue"}, bedrock(), chat()))
    # When intake decides its format
    decided = decide_input_format(objects, info, MAX_LINE_BYTES)
    # Then line 4, the first a format recognises, decided: Bedrock
    assert decided == InputFormat("bedrock", 4)


def test_a_first_line_longer_than_the_first_read_still_decides(objects: InMemoryObjectStore) -> None:
    # Given an OpenAI file whose first line is a long document, larger than intake's first read of the head
    long_line = chat(messages=[{"role": "user", "content": "word " * FIRST_READ_BYTES}])
    info = objects.put(BUCKET, "long.jsonl", lines(long_line, chat("c2")))
    # When intake decides its format; Then it read on until the line was whole
    assert decide_input_format(objects, info, MAX_LINE_BYTES) == InputFormat("openai", 1)


def test_a_file_saved_with_a_bom_and_crlf_line_ends_is_still_recognised(objects: InMemoryObjectStore) -> None:
    # Given an OpenAI file saved as "UTF-8 with BOM" with Windows line ends
    info = objects.put(BUCKET, "win.jsonl", b"\xef\xbb\xbf" + json.dumps(chat()).encode() + b"\r\n")
    # When intake decides its format; Then line 1 decided, as the workers will read it
    assert decide_input_format(objects, info, MAX_LINE_BYTES) == InputFormat("openai", 1)


def test_a_file_with_no_recognisable_line_is_read_as_native(objects: InMemoryObjectStore) -> None:
    # Given a file of lines no format recognises, and an empty file
    info = objects.put(BUCKET, "junk.jsonl", lines(b"{oops", {"colour": "blue"}, b""))
    empty = objects.put(BUCKET, "empty.jsonl", b"")
    # When intake decides their formats; Then both are native, decided by no line
    assert (
        decide_input_format(objects, info, MAX_LINE_BYTES) == decide_input_format(objects, empty, MAX_LINE_BYTES) == InputFormat()
    )


def test_a_job_message_takes_an_output_format_and_refuses_others() -> None:
    # Given job messages with a known and an unknown output_format
    spec = JobSpec.model_validate({"records": [{"prompt": "x"}], "output_format": "bedrock"})
    # When they are read; Then the known one is kept (and none means "the input's"), the unknown one refused
    assert spec.output_format == "bedrock"
    assert JobSpec.model_validate({"records": [{"prompt": "x"}]}).output_format is None
    with pytest.raises(ValidationError, match="output_format"):
        JobSpec.model_validate({"records": [{"prompt": "x"}], "output_format": "csv"})


# -- the record runner on peer lines ---------------------------------------------------------------
def test_an_openai_line_is_answered_under_its_custom_id_with_the_conversion_notes_appended(
    runner: RecordRunner, endpoint: FakeEndpointCaller
) -> None:
    # Given an OpenAI chat line with temperature 0 (fixed by normalize) and a model name (ignored by the conversion)
    result = run(runner, chat("ask-1", model="gpt-4o", temperature=0, max_tokens=5), "openai")
    # When it has run; Then it succeeded under its custom_id, with the chat template and its max_tokens
    assert (result.status, result.id, result.id_given) == ("succeeded", "ask-1", True)
    assert "[INST]" in endpoint.calls[0].payload["inputs"] and endpoint.calls[0].payload["parameters"]["max_new_tokens"] == 5
    # and the conversion's notes come after the native ones
    assert result.notes is not None and "temperature 0" in result.notes[0] and "body.model" in result.notes[-1]


def test_a_line_of_another_format_fails_alone_under_its_own_id(runner: RecordRunner, endpoint: FakeEndpointCaller) -> None:
    # Given a Bedrock line in an OpenAI file
    result = run(runner, bedrock("CALL7"), "openai")
    # When it has run; Then it failed with the formats module's message, keeping its recordId, and cost no call
    assert (result.status, result.id, result.error and result.error.type) == ("failed", "CALL7", "invalid_record")
    assert (
        result.error is not None
        and "file is in OpenAI Batch format (decided by its first record on line 1)" in result.error.message
    )
    assert endpoint.calls == []


def test_a_refused_peer_field_fails_the_line_and_keeps_its_id(runner: RecordRunner, endpoint: FakeEndpointCaller) -> None:
    # Given an OpenAI line asking for two completions
    result = run(runner, chat("two", n=2), "openai")
    # When it has run; Then it failed with the peer's field named, under its custom_id, without a call
    assert (result.status, result.id) == ("failed", "two")
    assert result.error is not None and "body.n=2 is not supported" in result.error.message
    assert endpoint.calls == []


def test_in_a_native_file_a_line_of_no_format_keeps_the_native_message(runner: RecordRunner) -> None:
    # Given a native file's line that names an id but has no content field
    result = run(runner, {"id": "x"}, "native")
    # When it has run; Then the native validation explained it, as before peer formats existed
    assert result.error is not None and "exactly one of" in result.error.message


def test_a_peer_line_a_stopped_job_never_ran_keeps_its_peer_id(runner: RecordRunner) -> None:
    # Given a Bedrock line of a job cancelled before it started
    result = runner.not_run(3, json.dumps(bedrock("CALL3")).encode(), "cancelled")
    # When its result is made; Then it carries the recordId, as the line would have had
    assert (result.id, result.id_given, result.status) == ("CALL3", True, "cancelled")


# -- the finalizer's result files --------------------------------------------------------------------
def make_job(objects: InMemoryObjectStore, data: bytes, output_format: Any, **fields: Any) -> Job:
    info = objects.put(BUCKET, "input.jsonl", data)
    return Job(
        job_id="j1",
        source="",
        bucket=BUCKET,
        key="input.jsonl",
        version_id=info.version_id,
        etag=info.etag,
        output_format=output_format,
        **fields,
    )


def write_files(objects: InMemoryObjectStore, job: Job, results: list[ResultLine]) -> list[dict[str, Any]]:
    with ResultFiles(job, input_originals(objects, job, MAX_LINE_BYTES)) as files:
        for result in results:
            files.write(result)
        files.upload(objects, BUCKET)
    return [json.loads(line) for line in objects.read_bytes(BUCKET, results_key(job.job_id)).splitlines()]


def succeeded(line: int, record_id: Any) -> ResultLine:
    return ResultLine(id=record_id, line=line, status="succeeded", output="Hello", finish_reason="eos_token")


def test_openai_results_are_rendered_from_the_input_and_errors_also_go_to_errors_jsonl(objects: InMemoryObjectStore) -> None:
    # Given an OpenAI job: a completion line that succeeded, a chat line that failed
    completion = {"custom_id": "a", "url": "/v1/completions", "body": {"prompt": "Once"}}
    job = make_job(objects, lines(completion, chat("b")), "openai")
    # When its result files are written
    results = write_files(objects, job, [succeeded(1, "a"), failed(2, "b", "invalid_record", "no")])
    # Then results.jsonl has both lines (a text completion, read from the input's url), errors.jsonl the failed one
    assert [r["custom_id"] for r in results] == ["a", "b"]
    assert results[0]["response"]["body"]["object"] == "text_completion"
    errors = [json.loads(line) for line in objects.read_bytes(BUCKET, errors_key("j1")).splitlines()]
    assert errors == [results[1]]


def test_native_results_are_written_as_stored_and_make_no_error_file(objects: InMemoryObjectStore) -> None:
    # Given a native-output job
    job = make_job(objects, lines({"prompt": "x"}), "native")
    # When its result files are written; Then results.jsonl holds the stored result as it is, and nothing else
    assert write_files(objects, job, [succeeded(1, 1)]) == [succeeded(1, 1).public_json()]
    assert objects.read_if_exists(BUCKET, errors_key("j1")) is None


def test_an_input_gone_by_finalize_renders_lines_without_it_with_ids_still_echoed(objects: InMemoryObjectStore) -> None:
    # Given a Bedrock job whose input was deleted (every version) before the finalizer ran
    job = make_job(objects, lines(bedrock("r1")), "bedrock")
    objects.delete(BUCKET, "input.jsonl", job.version_id)
    # When its result files are written; Then the line is still rendered, echoing the id its result kept
    (line,) = write_files(objects, job, [succeeded(1, "r1")])
    assert (line["recordId"], line["modelInput"], line["modelOutput"]["outputs"][0]["text"]) == ("r1", None, "Hello")


def test_an_echo_json_cannot_carry_is_left_out_of_that_line_only(objects: InMemoryObjectStore) -> None:
    # Given a native file written as Bedrock output, whose first line holds NaN (it failed: NaN is refused)
    job = make_job(objects, b'{"prompt": "x", "parameters": {"temperature": NaN}}\n' + lines({"prompt": "y"}), "bedrock")
    # When its result files are written
    results = write_files(objects, job, [failed(1, 1, "invalid_parameters", "NaN"), succeeded(2, 2)])
    # Then line 1 is written without the echo, line 2 with it
    assert results[0]["modelInput"] is None and results[1]["modelInput"] == {"prompt": "y"}


def test_native_fields_read_a_results_line_in_any_format() -> None:
    # Given a native result, and the same result rendered as an OpenAI line
    native = failed(4, 4, "invalid_json", "bad").public_json()
    openai = {"id": "batch_req_x", "custom_id": "4", "response": None, "error": None, "sagebatch": {**native}}
    # When their native fields are read; Then both give the result's id, line and status
    assert [(f["id"], f["line"], f["status"]) for f in map(native_fields, (native, openai))] == [(4, 4, "failed")] * 2


def test_the_manifest_names_the_formats_and_the_error_file_only_for_openai() -> None:
    # Given an OpenAI-output job and a Bedrock-output one
    manifests = [
        build_manifest(
            Job(job_id="j", source="", bucket="b", key="k", input_format="openai", output_format=fmt), "out", 0.0, "COMPLETED"
        )
        for fmt in ("openai", "bedrock")
    ]
    # When their manifests are built; Then only the OpenAI one lists errors.jsonl
    assert manifests[0]["errors"] == "s3://out/outputs/j/errors.jsonl" and manifests[1]["errors"] is None
    assert [(m["input_format"], m["output_format"]) for m in manifests] == [("openai", "openai"), ("openai", "bedrock")]
