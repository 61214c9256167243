"""Peers' formats through the local stack: OpenAI Batch and Bedrock batch files in, results in the same shape out.

The round trips go through `sagebatch run` (moto + the TGI emulator), as a user coming from OpenAI or Bedrock
would; the job-message cases (output_format, retry) go through the intake queue. Field-by-field mapping:
docs/formats.md (unit tests: tests/unit/test_formats.py).
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import boto3
import pytest

from sagebatch.domain.formats import native_fields
from sagebatch.tooling import cli
from tests.conftest import jsonl

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def chat(custom_id: str, text: str, **body: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": text}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 12, **body},
    }


def completion(custom_id: str, prompt: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": COMPLETIONS,
        "body": {"model": "gpt-3.5-turbo-instruct", "prompt": prompt, "max_tokens": 12, **body},
    }


def bedrock(record_id: str | None, **model_input: Any) -> dict[str, Any]:
    line: dict[str, Any] = {"modelInput": {"max_tokens": 12, **model_input}}
    return line if record_id is None else {"recordId": record_id, **line}


# An OpenAI Batch file of 40 lines (two shards of 32 lines at most): chat and completion lines, lines with fields
# OpenAI has and TGI does not (noted, or refused), and one native line (another format than the file's).
OPENAI_SPECIAL: dict[int, dict[str, Any]] = {
    1: chat(
        "chat-1",
        "Say hello.",
        temperature=0.7,
        top_p=0.9,
        stop=["\n\n"],
        seed=7,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}],
    ),
    2: completion("cmpl-2", "[INST] Count to three. [/INST]", stop="\n"),
    3: chat("chat-3", "", messages=[{"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}]),
    4: completion("cmpl-4", "<s>[INST] Name a fruit. [/INST]"),
    5: chat("chat-5", "Two answers please.", n=2),
    6: chat("chat-6", "Say hi.", frequency_penalty=0.5),
    7: chat("chat-7", "Say hi.", colour="blue"),
    8: {"id": "native-8", "prompt": "I am a native line."},
}
OPENAI_LINES = [
    OPENAI_SPECIAL.get(n) or (chat(f"chat-{n}", f"Question {n}?") if n % 2 else completion(f"cmpl-{n}", f"Text {n}"))
    for n in range(1, 41)
]
OPENAI_FAILED = {5, 7, 8}

BEDROCK_LINES = [
    bedrock("CALL0000001", prompt="<s>[INST] Say hello. [/INST]", temperature=0.5, top_p=0.9, top_k=50),
    bedrock("CALL0000002", prompt="<s>[INST] Name a colour. [/INST]", stop=["."]),
    bedrock(None, prompt="<s>[INST] No record id here. [/INST]"),
    {
        "recordId": "CALL0000004",
        "modelInput": {
            "system": [{"text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
            "inferenceConfig": {"maxTokens": 10, "temperature": 0.2},
        },
    },
    bedrock("CALL0000005", messages=[{"role": "user", "content": "Hello there"}]),
    chat("openai-6", "I am an OpenAI line."),
    bedrock("CALL0000007", prompt="<s>[INST] Hi [/INST]", guardrailConfig={"guardrailIdentifier": "g"}),
    bedrock("CALL0000008", prompt="<s>[INST] Say bye. [/INST]"),
]
BEDROCK_FAILED = {6, 7}


def sagebatch_run(folder: Path, name: str, lines: list[dict[str, Any]]) -> tuple[int, Path]:
    source = folder / name
    source.write_bytes(jsonl(*lines))
    out = folder / "out"
    with redirect_stdout(io.StringIO()):
        code = cli.main(["run", str(source), "--out", str(out)])
    return code, out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def openai_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    code, out = sagebatch_run(tmp_path_factory.mktemp("openai"), "batch_input.jsonl", OPENAI_LINES)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return code, read_jsonl(out / "results.jsonl"), read_jsonl(out / "errors.jsonl"), manifest


@pytest.fixture(scope="module")
def bedrock_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[dict[str, Any]], dict[str, Any], Path]:
    code, out = sagebatch_run(tmp_path_factory.mktemp("bedrock"), "records.jsonl", BEDROCK_LINES)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    return code, read_jsonl(out / "results.jsonl"), manifest, out


# -- OpenAI Batch, both ways ----------------------------------------------------------------------
def test_an_openai_batch_file_comes_back_as_openai_results_with_every_custom_id_in_input_order(openai_run):
    # Given an OpenAI Batch file of chat and completion lines, over two shards; When `sagebatch run` ran it
    code, results, _, manifest = openai_run
    # Then every line has its OpenAI output line, in input order, each echoing its custom_id
    assert code == 0 and manifest["status"] == "COMPLETED"
    # (the native line on line 8 echoes its own id: the result's id, as a string)
    assert [r["custom_id"] for r in results] == [line.get("custom_id", line.get("id")) for line in OPENAI_LINES]
    assert [native_fields(r)["line"] for r in results] == list(range(1, 41))
    assert all(r["id"].startswith("batch_req_") for r in results)


def test_openai_succeeded_lines_carry_a_chat_or_text_completion_body_with_usage(openai_run):
    # Given the same run; When its succeeded lines are read
    _, results, _, _ = openai_run
    succeeded = [(line, r) for line, r in zip(OPENAI_LINES, results, strict=True) if r["response"]["status_code"] == 200]
    # Then chat lines have a chat.completion body, completion lines a text_completion one, each with its usage
    assert len(succeeded) == 40 - len(OPENAI_FAILED)
    for line, r in succeeded:
        body = r["response"]["body"]
        if line["url"] == CHAT:
            assert body["object"] == "chat.completion" and isinstance(body["choices"][0]["message"]["content"], str)
        else:
            assert body["object"] == "text_completion" and isinstance(body["choices"][0]["text"], str)
        usage = body["usage"]
        assert usage["prompt_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert r["error"] is None and body["choices"][0]["finish_reason"] in ("stop", "length")


def test_openai_errors_file_holds_exactly_the_lines_that_did_not_get_a_200(openai_run):
    # Given the same run; When errors.jsonl is read
    _, results, errors, _ = openai_run
    # Then it holds the failed lines (as they are in results.jsonl), in input order, each with a 4xx response
    assert [e["custom_id"] for e in errors] == ["chat-5", "chat-7", "native-8"]
    assert errors == [results[n - 1] for n in sorted(OPENAI_FAILED)]
    assert {e["response"]["status_code"] for e in errors} == {400}
    assert all(e["response"]["body"]["error"]["code"] == "invalid_record" for e in errors)


def test_the_manifest_lists_both_openai_files_and_the_formats(openai_run):
    # Given the same run; When the manifest is read
    _, _, _, manifest = openai_run
    # Then it names results.jsonl and errors.jsonl, and the input and output formats
    assert manifest["results"].endswith("/results.jsonl") and manifest["errors"].endswith("/errors.jsonl")
    assert (manifest["input_format"], manifest["output_format"]) == ("openai", "openai")
    assert manifest["counts"] == {"total": 40, "succeeded": 37, "failed": 3}


def test_openai_fields_tgi_lacks_are_noted_or_refused_as_the_formats_module_decides(openai_run):
    # Given the same run: `model` and `frequency_penalty` (no effect TGI can give: noted), `n: 2` (would change
    # what comes back: refused) and an unknown body field (OpenAI refuses it too)
    _, results, _, _ = openai_run
    notes = {n: native_fields(results[n - 1])["notes"] or [] for n in (1, 6)}
    refused = {n: results[n - 1]["response"]["body"]["error"]["message"] for n in (5, 7)}
    # Then the noted fields are named in the line's notes and the line succeeded; the refused ones failed alone
    assert any("body.model" in note for note in notes[1]) and any("frequency_penalty" in note for note in notes[6])
    assert results[5]["response"]["status_code"] == 200
    assert "body.n=2 is not supported" in refused[5]
    assert "body.colour is not a parameter" in refused[7]


def test_a_line_of_another_format_fails_alone(openai_run):
    # Given the same run, whose line 8 is a native record in an OpenAI Batch file
    _, results, _, _ = openai_run
    # Then that line failed, saying the file's format and the line that decided it; its neighbours succeeded
    message = results[7]["response"]["body"]["error"]["message"]
    assert "native format, but the file is in OpenAI Batch format" in message and "line 1" in message
    assert results[6 - 1]["response"]["status_code"] == results[9 - 1]["response"]["status_code"] == 200


# -- Bedrock batch, both ways ----------------------------------------------------------------------
def test_a_bedrock_file_comes_back_as_bedrock_output_with_every_record_id_in_input_order(bedrock_run):
    # Given a Bedrock batch file (Mistral prompts, a chat and a Converse body, one line without recordId)
    code, results, manifest, out = bedrock_run
    # When `sagebatch run` ran it; Then each line's recordId and modelInput are echoed, in input order
    assert code == 0 and manifest["status"] == "COMPLETED"
    expected_ids = [line.get("recordId") or line.get("custom_id") for line in BEDROCK_LINES]
    expected_ids[2] = "00000000003"  # Bedrock's own invention for a line without one: its number, 11 digits
    assert [r["recordId"] for r in results] == expected_ids
    assert [r["modelInput"] for r in results] == [line.get("modelInput", line) for line in BEDROCK_LINES]
    assert (manifest["input_format"], manifest["output_format"], manifest["errors"]) == ("bedrock", "bedrock", None)
    assert not (out / "errors.jsonl").exists()


def test_bedrock_outputs_take_the_shape_of_the_models_own_response(bedrock_run):
    # Given the same run; When the succeeded lines' modelOutput is read
    _, results, _, _ = bedrock_run
    outputs = {n: results[n - 1].get("modelOutput") for n in (1, 2, 3, 4, 5, 8)}
    # Then a Mistral prompt gets outputs[{text, stop_reason}], a Mistral chat body choices[], a Converse body the
    # Converse response with usage
    assert all(isinstance(outputs[n]["outputs"][0]["text"], str) for n in (1, 2, 3, 8))
    assert outputs[5]["choices"][0]["message"]["role"] == "assistant"
    assert outputs[4]["output"]["message"]["content"][0]["text"] and outputs[4]["usage"]["inputTokens"] > 0
    assert all("error" not in results[n - 1] for n in outputs)


def test_bedrock_failures_replace_model_output_with_an_error(bedrock_run):
    # Given the same run: an OpenAI line (another format than the file's) and a guardrail (refused)
    _, results, _, _ = bedrock_run
    failed = {n: results[n - 1] for n in sorted(BEDROCK_FAILED)}
    # Then each failed alone, with Bedrock's error shape in place of modelOutput
    assert all("modelOutput" not in r and r["error"]["errorCode"] == 400 for r in failed.values())
    assert "OpenAI Batch format, but the file is in Bedrock batch format" in failed[6]["error"]["errorMessage"]
    assert "modelInput.guardrailConfig" in failed[7]["error"]["errorMessage"]
    assert results[7]["modelOutput"]["outputs"][0]["text"]


# -- job messages ----------------------------------------------------------------------------------
def put_input(stack, key: str, *lines: object) -> str:
    boto3.client("s3").put_object(Bucket=stack.stack.bucket, Key=key, Body=jsonl(*lines))
    return f"s3://{stack.stack.bucket}/{key}"


def test_a_job_message_can_ask_for_native_results_over_an_openai_file(stack):
    # Given an OpenAI Batch file and a job message asking for native output
    uri = put_input(stack, "staging/openai.jsonl", chat("a", "Say hello."), completion("b", "Once upon", presence_penalty=1))
    stack.submit_job({"job_id": "openai-as-native", "input": uri, "output_format": "native"})

    # When it runs
    assert stack.wait_for("openai-as-native") == "COMPLETED"

    # Then results.jsonl holds native result lines under the custom_ids, the conversion's notes with the others
    results = stack.results("openai-as-native")
    assert [(r["id"], r["line"], r["status"]) for r in results] == [("a", 1, "succeeded"), ("b", 2, "succeeded")]
    assert any("presence_penalty" in note for note in results[1]["notes"])
    manifest = stack.manifest("openai-as-native")
    assert (manifest["input_format"], manifest["output_format"], manifest["errors"]) == ("openai", "native", None)


def test_a_native_file_can_be_written_as_openai_results(stack):
    # Given a native file and a job message asking for OpenAI output
    uri = put_input(stack, "staging/native.jsonl", {"id": "q1", "prompt": "Say hello."}, {"inputs": "[INST] Hi [/INST]"})
    stack.submit_job({"job_id": "native-as-openai", "input": uri, "output_format": "openai"})

    # When it runs
    assert stack.wait_for("native-as-openai") == "COMPLETED"

    # Then each line is an OpenAI output line whose custom_id is the record's id (its line number without one)
    results = stack.results("native-as-openai")
    assert [r["custom_id"] for r in results] == ["q1", "2"]
    assert [r["response"]["body"]["object"] for r in results] == ["chat.completion", "text_completion"]


def test_an_unknown_output_format_fails_the_job_with_a_reason(stack):
    # Given a job message asking for a format sagebatch does not write
    stack.submit_job({"job_id": "csv-please", "records": [{"prompt": "x"}], "output_format": "csv"})

    # When intake handles it; Then the job failed, naming the field
    assert stack.wait_for("csv-please") == "FAILED"
    assert "output_format" in stack.manifest("csv-please")["error"]


def test_the_first_recognisable_line_decides_even_after_lines_that_are_not_records(stack):
    # Given a Bedrock file whose first line is not JSON and second is a JSON value of no known format
    job_id = stack.drop_file(b"{oops\n[1, 2]\n" + jsonl(bedrock("r3", prompt="<s>[INST] Hi [/INST]")), "inputs/late.jsonl")

    # When it runs
    assert stack.wait_for(job_id) == "COMPLETED"

    # Then line 3 decided: the file is Bedrock, the first two lines failed alone in Bedrock's shape
    results = stack.results(job_id)
    assert [r["recordId"] for r in results] == ["00000000001", "00000000002", "r3"]
    assert [("error" in r, "modelOutput" in r) for r in results] == [(True, False), (True, False), (False, True)]
    assert stack.manifest(job_id)["input_format"] == "bedrock"


def test_a_retry_of_an_openai_job_reruns_its_failed_lines_in_openai_shape(stack):
    # Given a finished OpenAI job whose line 2 failed (an endpoint it does not serve)
    uri = put_input(stack, "staging/retry.jsonl", chat("a", "Hi"), {**chat("b", "Hi"), "url": "/v1/embeddings"}, chat("c", "Yo"))
    stack.submit_job({"job_id": "openai-parent", "input": uri})
    assert stack.wait_for("openai-parent") == "COMPLETED"

    # When it is retried
    child = stack.retry("openai-parent")
    assert stack.wait_for(child) == "COMPLETED"

    # Then the child ran just that line, read from the parent's OpenAI results, and answers in OpenAI's shape
    (result,) = stack.results(child)
    assert result["custom_id"] == "b" and result["response"]["status_code"] == 400
    assert native_fields(result)["parent_line"] == 2
    assert stack.manifest(child)["output_format"] == "openai"
