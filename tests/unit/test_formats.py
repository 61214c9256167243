"""Peers' formats (sagebatch.domain.formats): detection, conversion to native records, peer result lines, JSONL lines."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sagebatch.domain.formats import (
    CHAT_URL,
    COMPLETIONS_URL,
    SERVED_MODEL,
    Converted,
    FormatDetector,
    FormatError,
    detect,
    dumps_line,
    http_status,
    render,
    render_bedrock,
    render_openai,
    resolve_output_format,
    stable_id,
    to_native,
)
from sagebatch.domain.parameters import normalize
from sagebatch.domain.records import parse_record

CREATED = 1_700_000_000


def chat_line(body: dict[str, Any] | None = None, **line: Any) -> dict[str, Any]:
    """An OpenAI Batch chat line; `body` fields are added to a minimal valid body."""
    full_body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], **(body or {})}
    return {"custom_id": "req-1", "method": "POST", "url": CHAT_URL, "body": full_body, **line}


def completion_line(**body: Any) -> dict[str, Any]:
    return {"custom_id": "req-1", "method": "POST", "url": COMPLETIONS_URL, "body": {"prompt": "Once upon", **body}}


def bedrock_line(**model_input: Any) -> dict[str, Any]:
    return {"recordId": "CALL0000001", "modelInput": {"prompt": "<s>[INST] Hi [/INST]", **model_input}}


def converse_line(**model_input: Any) -> dict[str, Any]:
    return {"recordId": "CALL0000001", "modelInput": {"messages": [{"role": "user", "content": [{"text": "Hi"}]}], **model_input}}


def result(**fields: Any) -> dict[str, Any]:
    """A native ResultLine as a dict (succeeded unless told otherwise)."""
    base: dict[str, Any] = {
        "id": "req-1",
        "line": 1,
        "status": "succeeded",
        "output": "Hello!",
        "finish_reason": "eos_token",
        "usage": {"input_tokens": 12, "output_tokens": 3},
        "error": None,
        "notes": None,
    }
    return {**base, **fields}


def failed(error_type: str, message: str = "it went wrong", status: str = "failed") -> dict[str, Any]:
    return result(
        status=status,
        output=None,
        finish_reason=None,
        usage={"input_tokens": 0, "output_tokens": 0},
        error={"type": error_type, "message": message},
    )


def openai(line: dict[str, Any]) -> Converted:
    return to_native(line, "openai")


def bedrock(line: dict[str, Any]) -> Converted:
    return to_native(line, "bedrock")


# ---------------------------------------------------------------------------------------------------------------
# Detection


@pytest.mark.parametrize(
    "line",
    [{"prompt": "Hi"}, {"messages": []}, {"inputs": "[INST] Hi [/INST]"}, {"instruction": "Sum up", "document": "…"}],
)
def test_a_line_with_a_native_content_field_is_native(line: dict[str, Any]) -> None:
    # Given a line with one of the native content fields
    # When its format is detected
    # Then it is native
    assert detect(line) == "native"


def test_a_line_with_custom_id_and_body_is_openai() -> None:
    # Given an OpenAI Batch line
    # When its format is detected
    # Then it is openai
    assert detect(chat_line()) == "openai"


@pytest.mark.parametrize("line", [bedrock_line(), {"modelInput": {"prompt": "x"}}])
def test_a_line_with_model_input_is_bedrock_with_or_without_record_id(line: dict[str, Any]) -> None:
    # Given a Bedrock batch line (recordId is optional there)
    # When its format is detected
    # Then it is bedrock
    assert detect(line) == "bedrock"


@pytest.mark.parametrize("value", [[1, 2], "text", 3, None])
def test_a_line_that_is_not_an_object_has_no_format(value: object) -> None:
    # Given a JSON value that is not an object
    # When its format is detected
    # Then it is refused, naming what it is
    with pytest.raises(FormatError, match="must be a JSON object"):
        detect(value)


def test_a_line_of_no_known_format_names_the_three_formats() -> None:
    # Given an object with none of the formats' fields
    # When its format is detected
    # Then the message says what each format looks like
    with pytest.raises(FormatError, match="native .*OpenAI Batch .*Bedrock batch"):
        detect({"question": "Hi"})


def test_a_line_mixing_two_formats_is_refused() -> None:
    # Given a native prompt beside an OpenAI custom_id
    # When its format is detected
    # Then it is refused as mixed, naming the fields of both
    with pytest.raises(FormatError, match="mixes fields.*native: prompt; OpenAI Batch: custom_id"):
        detect({"custom_id": "a", "prompt": "Hi"})


def test_the_first_recognisable_line_decides_the_file() -> None:
    # Given a fresh detector
    detector = FormatDetector()
    # When an OpenAI line is fed first
    fmt = detector.feed(chat_line(), line=1)
    # Then the file is OpenAI, decided on line 1
    assert (fmt, detector.format, detector.decided_at) == ("openai", "openai", 1)


def test_a_later_line_of_another_format_fails_that_line_only() -> None:
    # Given a file decided as OpenAI by its first line
    detector = FormatDetector()
    detector.feed(chat_line(), line=1)
    # When a Bedrock line follows
    with pytest.raises(FormatError, match="Bedrock batch format, but the file is in OpenAI Batch format.*line 1"):
        detector.feed(bedrock_line(), line=2)
    # Then the file stays OpenAI and later OpenAI lines still pass
    assert detector.feed(chat_line(), line=3) == "openai"


def test_an_unrecognisable_first_line_does_not_decide() -> None:
    # Given a first line of no known format
    detector = FormatDetector()
    with pytest.raises(FormatError):
        detector.feed({"question": "Hi"}, line=1)
    # When a Bedrock line follows
    fmt = detector.feed(bedrock_line(), line=2)
    # Then that line decides
    assert (fmt, detector.format, detector.decided_at) == ("bedrock", "bedrock", 2)


def test_a_detector_given_the_decided_format_checks_every_line_against_it() -> None:
    # Given a shard worker's detector, told the format intake decided
    detector = FormatDetector("native", decided_at=1)
    # When an OpenAI line arrives
    # Then it fails, naming the deciding line
    with pytest.raises(FormatError, match="native format .*line 1"):
        detector.feed(chat_line())


@pytest.mark.parametrize(
    ("requested", "detected", "expected"),
    [(None, "openai", "openai"), ("native", "openai", "native"), ("bedrock", None, "bedrock"), (None, None, "native")],
)
def test_output_format_defaults_to_the_input_format(requested: Any, detected: Any, expected: str) -> None:
    # Given a requested output format (or none) and the detected input format (or none)
    # When the job's output format is resolved
    # Then a request wins, then the input's format, then native
    assert resolve_output_format(requested, detected) == expected


# ---------------------------------------------------------------------------------------------------------------
# OpenAI lines to native records


def test_openai_chat_line_becomes_a_native_chat_record_with_custom_id_as_id() -> None:
    # Given a chat line with a system and a user message
    line = chat_line({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]})
    # When it is converted
    converted = openai(line)
    # Then the messages and custom_id carry over
    assert converted.record["id"] == "req-1"
    assert converted.record["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_openai_generation_fields_map_to_tgi_parameters() -> None:
    # Given every OpenAI chat field with a TGI equivalent
    line = chat_line({"max_tokens": 64, "temperature": 0.7, "top_p": 0.9, "stop": ["\n\n", "END"], "seed": 7})
    # When it is converted
    parameters = openai(line).record["parameters"]
    # Then each lands on its TGI name, and a positive temperature turns sampling on
    assert parameters == {
        "max_new_tokens": 64,
        "temperature": 0.7,
        "do_sample": True,
        "top_p": 0.9,
        "stop": ["\n\n", "END"],
        "seed": 7,
    }


def test_openai_temperature_one_still_samples_on_tgi() -> None:
    # Given temperature 1.0 (OpenAI samples; TGI alone would decode greedily)
    # When it is converted
    parameters = openai(chat_line({"temperature": 1})).record["parameters"]
    # Then do_sample is set so TGI samples too
    assert parameters == {"temperature": 1.0, "do_sample": True}


def test_openai_temperature_zero_is_left_for_normalize_to_make_greedy() -> None:
    # Given temperature 0 (greedy for OpenAI; refused by TGI)
    converted = openai(chat_line({"temperature": 0}))
    # When the native parameters are normalized
    params, notes = normalize(parse_record(converted.record).parameters)
    # Then the request is greedy, with normalize's note
    assert params.do_sample is False and params.temperature is None
    assert any("greedy" in note for note in notes)


def test_openai_stop_string_becomes_a_list() -> None:
    # Given a single stop string
    # When it is converted
    # Then TGI gets a one-element list
    assert openai(chat_line({"stop": "END"})).record["parameters"]["stop"] == ["END"]


def test_openai_max_completion_tokens_maps_like_max_tokens() -> None:
    # Given the newer name for the output budget
    # When it is converted
    # Then it becomes max_new_tokens
    assert openai(chat_line({"max_completion_tokens": 32})).record["parameters"] == {"max_new_tokens": 32}


def test_openai_max_tokens_and_max_completion_tokens_must_agree() -> None:
    # Given two different output budgets
    # When it is converted
    # Then the line fails, naming both fields
    with pytest.raises(FormatError, match="body.max_tokens and body.max_completion_tokens disagree"):
        openai(chat_line({"max_tokens": 10, "max_completion_tokens": 20}))


def test_openai_text_parts_are_joined_with_newlines() -> None:
    # Given content as a list of text parts
    parts = [{"type": "text", "text": "First."}, {"type": "text", "text": "Second."}]
    # When it is converted
    messages = openai(chat_line({"messages": [{"role": "user", "content": parts}]})).record["messages"]
    # Then the model reads them as one text, one part per line
    assert messages == [{"role": "user", "content": "First.\nSecond."}]


def test_openai_image_part_fails_the_line() -> None:
    # Given an image part
    parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    # When it is converted
    # Then the line fails, pointing at the part
    with pytest.raises(FormatError, match=r"messages\[0\].content\[1\] is a \"image_url\" part"):
        openai(chat_line({"messages": [{"role": "user", "content": parts}]}))


def test_openai_developer_role_is_sent_as_system_with_a_note() -> None:
    # Given a developer message (OpenAI's newer name for the system prompt)
    line = chat_line({"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]})
    # When it is converted
    converted = openai(line)
    # Then it becomes the system message, and the line says so
    assert converted.record["messages"][0] == {"role": "system", "content": "Be brief."}
    assert any("'developer' sent as 'system'" in note for note in converted.notes)


@pytest.mark.parametrize("role", ["tool", "function"])
def test_openai_tool_messages_fail_the_line(role: str) -> None:
    # Given a tool result message
    messages = [{"role": "user", "content": "Hi"}, {"role": role, "content": "42", "tool_call_id": "c1"}]
    # When it is converted
    # Then the line fails: the model has no tool calling
    with pytest.raises(FormatError, match="no tool calling"):
        openai(chat_line({"messages": messages}))


def test_openai_model_is_ignored_with_a_note() -> None:
    # Given a body naming an OpenAI model
    # When it is converted
    notes = openai(chat_line({"model": "gpt-4o"})).notes
    # Then the note says the stack serves one model
    assert notes == ('body.model="gpt-4o" ignored: this stack serves one model, Mistral 7B Instruct',)


def test_openai_penalties_are_noted_and_ignored() -> None:
    # Given frequency and presence penalties
    converted = openai(chat_line({"model": None, "frequency_penalty": 0.5, "presence_penalty": -0.2}))
    # When it is converted
    # Then neither reaches TGI, and both are noted
    assert "parameters" not in converted.record
    assert [note.split("=")[0] for note in converted.notes] == ["body.frequency_penalty", "body.presence_penalty"]


def test_openai_zero_penalties_and_other_defaults_pass_silently() -> None:
    # Given fields set to their "off" values
    body: dict[str, Any] = {
        "model": None,
        "frequency_penalty": 0,
        "presence_penalty": 0.0,
        "n": 1,
        "stream": False,
        "tools": [],
        "logprobs": False,
        "response_format": {"type": "text"},
        "tool_choice": "none",
    }
    # When it is converted
    # Then there is nothing to note
    assert openai(chat_line(body)).notes == ()


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("n", 3, "one completion per line"),
        ("n", True, "one completion per line"),
        ("stream", True, "never streamed"),
        ("tools", [{"type": "function", "function": {"name": "f"}}], "no tool calling"),
        ("tool_choice", "required", "no tool calling"),
        ("response_format", {"type": "json_object"}, "cannot constrain output"),
        ("logit_bias", {"50256": -100}, "cannot bias"),
        ("modalities", ["text", "audio"], "text only"),
    ],
)
def test_openai_fields_that_would_change_the_answer_fail_the_line(field: str, value: Any, reason: str) -> None:
    # Given a field whose value cannot be honoured without changing what was asked
    # When it is converted
    # Then the line fails, naming the field, its value and why
    with pytest.raises(FormatError, match=f"body.{field}=.* is not supported: .*{reason}"):
        openai(chat_line({field: value}))


@pytest.mark.parametrize("field", ["logprobs", "user", "metadata", "store", "reasoning_effort"])
def test_openai_fields_without_effect_on_the_text_are_noted(field: str) -> None:
    # Given a field that changes nothing in the generated text here
    value = {"logprobs": True, "user": "u-1", "metadata": {"k": "v"}, "store": True, "reasoning_effort": "low"}[field]
    # When it is converted
    notes = openai(chat_line({"model": None, field: value})).notes
    # Then it is noted, not silently dropped
    assert len(notes) == 1 and notes[0].startswith(f"body.{field}=") and "ignored" in notes[0]


def test_openai_unknown_body_field_fails_the_line_like_openai() -> None:
    # Given a typo in the body
    # When it is converted
    # Then the line fails (OpenAI refuses unrecognized arguments too)
    with pytest.raises(FormatError, match="body.max_token is not a parameter of /v1/chat/completions"):
        openai(chat_line({"max_token": 5}))


def test_openai_unknown_line_field_is_noted() -> None:
    # Given a field beside custom_id/method/url/body
    # When it is converted
    notes = openai(chat_line({"model": None}, comment="batch 7")).notes
    # Then it is ignored with a note
    assert notes == ("comment ignored: not a field of an OpenAI Batch line",)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (chat_line(url="/v1/embeddings"), 'url "/v1/embeddings" is not supported'),
        (chat_line(method="GET"), 'method must be "POST"'),
        (chat_line(custom_id=""), "custom_id must be a non-empty string"),
        (chat_line(custom_id=7), "custom_id must be a non-empty string, got a number"),
        ({"custom_id": "a", "url": CHAT_URL, "body": "hi"}, "body must be a JSON object"),
        ({"custom_id": "a", "url": CHAT_URL, "body": {}}, "body.messages is required"),
        (chat_line({"messages": []}), "body.messages must be a non-empty array"),
        (chat_line({"max_tokens": "10"}), "body.max_tokens must be an integer, got a string"),
        (chat_line({"max_tokens": 0}), "body.max_tokens must be >= 1"),
        (chat_line({"temperature": math.nan}), "body.temperature must be a finite number"),
        (chat_line({"seed": -1}), "body.seed must be >= 0"),
        (chat_line({"stop": ["END", ""]}), "empty stop sequence"),
        (chat_line({"stop": [1]}), "body.stop must be a string or an array of strings"),
        (chat_line({"messages": [{"role": "user", "content": "Hi", "nickname": "x"}]}), "nickname is not a field"),
        (chat_line({"messages": [{"role": ["user"], "content": "Hi"}]}), "role must be one of"),
        (chat_line({"messages": [{"role": "user"}]}), r"messages\[0\].content must be a string"),
    ],
)
def test_malformed_openai_lines_fail_with_the_peer_field_named(line: dict[str, Any], message: str) -> None:
    # Given a malformed OpenAI line
    # When it is converted
    # Then the error names the OpenAI field
    with pytest.raises(FormatError, match=message):
        openai(line)


def test_openai_completion_prompt_is_sent_raw_without_the_chat_template() -> None:
    # Given a /v1/completions line (OpenAI applies no chat template there)
    # When it is converted
    converted = openai(completion_line(max_tokens=16))
    # Then the prompt becomes raw `inputs`, sent to TGI as is
    assert converted.record == {"id": "req-1", "inputs": "Once upon", "parameters": {"max_new_tokens": 16}}


def test_openai_completion_prompt_loses_a_literal_leading_bos_with_a_note() -> None:
    # Given a hand-templated prompt starting with "<s>"
    # When it is converted
    converted = openai(completion_line(prompt="<s>[INST] Hi [/INST]"))
    # Then TGI's own BOS is the only one, and the line says so
    assert converted.record["inputs"] == "[INST] Hi [/INST]"
    assert converted.notes == ("leading '<s>' removed from body.prompt: TGI adds BOS itself, a literal one would make two",)


def test_openai_completion_prompt_list_fails_the_line() -> None:
    # Given a list of prompts (one completion each, on OpenAI)
    # When it is converted
    # Then the line fails, suggesting one line per prompt
    with pytest.raises(FormatError, match="body.prompt must be a string, got an array.*one line per prompt"):
        openai(completion_line(prompt=["a", "b"]))


@pytest.mark.parametrize(("field", "value"), [("echo", True), ("suffix", "end."), ("n", 2)])
def test_openai_completion_fields_that_change_the_text_fail_the_line(field: str, value: Any) -> None:
    # Given echo, suffix or several completions
    # When it is converted
    # Then the line fails
    with pytest.raises(FormatError, match=f"body.{field}="):
        openai(completion_line(**{field: value}))


def test_openai_completion_best_of_maps_to_tgi_best_of() -> None:
    # Given best_of 2 with sampling (TGI allows up to 2 here)
    converted = openai(completion_line(best_of=2, temperature=0.8))
    # When it is converted and normalized
    params, _ = normalize(parse_record(converted.record).parameters)
    # Then TGI's best_of is 2
    assert params.best_of == 2


def test_openai_chat_fields_are_not_completion_fields() -> None:
    # Given a chat-only field on a completions line
    # When it is converted
    # Then it is unknown there
    with pytest.raises(FormatError, match="body.messages is not a parameter of /v1/completions"):
        openai(completion_line(messages=[]))


# ---------------------------------------------------------------------------------------------------------------
# Bedrock lines to native records


def test_bedrock_mistral_prompt_becomes_raw_inputs_without_the_leading_bos() -> None:
    # Given a Bedrock Mistral text-completion line with every parameter
    line = bedrock_line(max_tokens=100, temperature=0.5, top_p=0.9, top_k=50, stop=["</s>"])
    # When it is converted
    converted = bedrock(line)
    # Then recordId is the id, the prompt is raw without "<s>", and the parameters take TGI names
    assert converted.record == {
        "id": "CALL0000001",
        "inputs": "[INST] Hi [/INST]",
        "parameters": {"max_new_tokens": 100, "temperature": 0.5, "do_sample": True, "top_p": 0.9, "top_k": 50, "stop": ["</s>"]},
    }
    assert converted.notes == ("leading '<s>' removed from modelInput.prompt: TGI adds BOS itself, a literal one would make two",)


def test_bedrock_line_without_record_id_gets_no_id() -> None:
    # Given a line without recordId (Bedrock makes one up)
    # When it is converted
    record = bedrock({"modelInput": {"prompt": "[INST] Hi [/INST]"}}).record
    # Then the native default (the line number) applies
    assert record == {"inputs": "[INST] Hi [/INST]"}


def test_bedrock_extra_line_fields_are_noted() -> None:
    # Given a field beside recordId and modelInput (Bedrock ignores those)
    # When it is converted
    notes = bedrock({**bedrock_line(), "source": "crm"}).notes
    # Then it is noted
    assert "source ignored: Bedrock reads only recordId and modelInput" in notes


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (bedrock_line(max_len=5), "modelInput.max_len is not a parameter"),
        ({"recordId": "r", "modelInput": {"prompt": "x", "messages": []}}, "exactly one of 'prompt'"),
        ({"recordId": "r", "modelInput": {"max_tokens": 5}}, "exactly one of 'prompt'"),
        ({"recordId": "r", "modelInput": "hi"}, "modelInput must be a JSON object"),
        ({"recordId": 5, "modelInput": {"prompt": "x"}}, "recordId must be a non-empty string"),
        (bedrock_line(stop="END"), "modelInput.stop must be an array of strings"),
        (bedrock_line(prompt="<s>"), "modelInput.prompt is empty"),
        (bedrock_line(top_k=1.5), "modelInput.top_k must be an integer"),
    ],
)
def test_malformed_bedrock_lines_fail_with_the_peer_field_named(line: dict[str, Any], message: str) -> None:
    # Given a malformed Bedrock line
    # When it is converted
    # Then the error names the Bedrock field
    with pytest.raises(FormatError, match=message):
        bedrock(line)


def test_bedrock_mistral_chat_messages_with_string_content_become_a_chat_record() -> None:
    # Given a Mistral chat body (string contents, Mistral parameter names)
    line = {
        "recordId": "r1",
        "modelInput": {
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "max_tokens": 20,
        },
    }
    # When it is converted
    record = bedrock(line).record
    # Then it is a native chat record
    assert record == {
        "id": "r1",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "parameters": {"max_new_tokens": 20},
    }


def test_bedrock_converse_body_maps_blocks_system_and_inference_config() -> None:
    # Given a Converse body: text blocks, a system list and inferenceConfig
    line = converse_line(
        messages=[{"role": "user", "content": [{"text": "Part one."}, {"text": "Part two."}]}],
        system=[{"text": "Be brief."}],
        inferenceConfig={"maxTokens": 50, "temperature": 0.2, "topP": 0.8, "stopSequences": ["END"]},
    )
    # When it is converted
    record = bedrock(line).record
    # Then the system prompt leads, blocks are joined by newlines, and the config takes TGI names
    assert record["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Part one.\nPart two."}]
    assert record["parameters"] == {"max_new_tokens": 50, "temperature": 0.2, "do_sample": True, "top_p": 0.8, "stop": ["END"]}


def test_bedrock_converse_image_block_fails_the_line() -> None:
    # Given an image block
    line = converse_line(messages=[{"role": "user", "content": [{"text": "What?"}, {"image": {"format": "png"}}]}])
    # When it is converted
    # Then the line fails, naming the block
    with pytest.raises(FormatError, match=r"messages\[0\].content\[1\] is a 'image' block"):
        bedrock(line)


def test_bedrock_converse_cache_point_is_noted() -> None:
    # Given a cachePoint block (a caching hint, no text)
    line = converse_line(messages=[{"role": "user", "content": [{"text": "Hi"}, {"cachePoint": {"type": "default"}}]}])
    # When it is converted
    converted = bedrock(line)
    # Then the text is kept and the hint noted
    assert converted.record["messages"] == [{"role": "user", "content": "Hi"}]
    assert any("cachePoint" in note for note in converted.notes)


def test_bedrock_system_given_twice_fails_the_line() -> None:
    # Given a system field and a system message
    line = converse_line(system=[{"text": "A"}], messages=[{"role": "system", "content": "B"}, {"role": "user", "content": "Hi"}])
    # When it is converted
    # Then the line fails
    with pytest.raises(FormatError, match="give the system prompt once"):
        bedrock(line)


def test_bedrock_max_tokens_and_inference_config_must_agree() -> None:
    # Given two different output budgets
    line = converse_line(max_tokens=10, inferenceConfig={"maxTokens": 20})
    # When it is converted
    # Then the line fails, naming both
    with pytest.raises(FormatError, match="modelInput.inferenceConfig.maxTokens and modelInput.max_tokens disagree"):
        bedrock(line)


@pytest.mark.parametrize(
    "extra",
    [
        {"toolConfig": {"tools": [{"toolSpec": {"name": "f"}}]}},
        {"tools": [{"type": "function"}]},
        {"guardrailConfig": {"guardrailIdentifier": "g"}},
    ],
)
def test_bedrock_tools_and_guardrails_fail_the_line(extra: dict[str, Any]) -> None:
    # Given a tool or guardrail configuration
    # When it is converted
    # Then the line fails
    with pytest.raises(FormatError, match="is not supported"):
        bedrock(converse_line(**extra))


@pytest.mark.parametrize(
    "line",
    [
        chat_line({"max_tokens": 64, "temperature": 0.7, "top_p": 1.0, "stop": "END", "seed": 3, "presence_penalty": 1}),
        completion_line(prompt="<s>[INST] Hi [/INST]", max_tokens=8, stop=["\n"]),
        bedrock_line(max_tokens=100, temperature=0.5, top_p=0.9, top_k=50, stop=["END"]),
        converse_line(system=[{"text": "S"}], inferenceConfig={"maxTokens": 9, "temperature": 0}),
    ],
)
def test_converted_records_pass_native_validation(line: dict[str, Any]) -> None:
    # Given a valid peer line
    converted = to_native(line, detect(line))
    # When the native validation runs on the converted record
    record = parse_record(converted.record)
    normalize(record.parameters)
    # Then it is accepted, with the peer's id
    assert record.id == (line.get("custom_id") or line.get("recordId"))


def test_native_lines_are_returned_unchanged() -> None:
    # Given a native line
    line = {"id": 1, "prompt": "Hi", "parameters": {"max_new_tokens": 5}}
    # When it is "converted"
    # Then it is the same record, without notes
    assert to_native(line, "native") == Converted(line)


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
OPENAI_KEYS = st.sampled_from(["model", "messages", "prompt", "max_tokens", "temperature", "stop", "n", "tools", "seed", "x"])
BEDROCK_KEYS = st.sampled_from(["prompt", "messages", "system", "inferenceConfig", "max_tokens", "stop", "top_k", "x"])


@given(url=st.sampled_from([CHAT_URL, COMPLETIONS_URL, "/v1/embeddings"]), body=st.dictionaries(OPENAI_KEYS, JSON_VALUES))
def test_any_openai_body_converts_or_fails_with_a_format_error(url: str, body: dict[str, Any]) -> None:
    # Given an OpenAI line with arbitrary JSON in its body
    line = {"custom_id": "c", "method": "POST", "url": url, "body": body}
    # When it is converted
    # Then it either converts or fails with a FormatError, never another exception
    try:
        openai(line)
    except FormatError:
        pass


@given(model_input=st.dictionaries(BEDROCK_KEYS, JSON_VALUES))
def test_any_bedrock_model_input_converts_or_fails_with_a_format_error(model_input: dict[str, Any]) -> None:
    # Given a Bedrock line with arbitrary JSON in modelInput
    # When it is converted
    # Then it either converts or fails with a FormatError, never another exception
    try:
        bedrock({"recordId": "r", "modelInput": model_input})
    except FormatError:
        pass


@given(content=st.text())
def test_any_message_text_survives_conversion_unchanged(content: str) -> None:
    # Given any user text
    # When it is converted from an OpenAI chat line
    messages = openai(chat_line({"messages": [{"role": "user", "content": content}]})).record["messages"]
    # Then the native message holds exactly that text
    assert messages == [{"role": "user", "content": content}]


# ---------------------------------------------------------------------------------------------------------------
# Rendering OpenAI output lines


def test_openai_chat_result_has_the_chat_completion_shape() -> None:
    # Given a succeeded chat result
    # When it is rendered for an OpenAI chat line
    line = render_openai(result(), chat_line(), job_id="job-1", created=CREATED, extras=False)
    # Then it is OpenAI's batch output line around a chat.completion body
    digest = stable_id("job-1", 1)
    assert line == {
        "id": f"batch_req_{digest}",
        "custom_id": "req-1",
        "response": {
            "status_code": 200,
            "request_id": f"req_{digest}",
            "body": {
                "id": f"chatcmpl-{digest}",
                "object": "chat.completion",
                "created": CREATED,
                "model": SERVED_MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
                "system_fingerprint": None,
            },
        },
        "error": None,
    }


def test_openai_completion_result_has_the_text_completion_shape() -> None:
    # Given a succeeded result for a /v1/completions line
    # When it is rendered
    body = render_openai(result(), completion_line(), job_id="j", created=CREATED, model="m")["response"]["body"]
    # Then the body is a text_completion with the text in choices[0].text
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == "m"
    assert body["choices"] == [{"text": "Hello!", "index": 0, "logprobs": None, "finish_reason": "stop"}]


@pytest.mark.parametrize(("tgi", "openai_reason"), [("eos_token", "stop"), ("stop_sequence", "stop"), ("length", "length")])
def test_tgi_finish_reasons_map_to_openai(tgi: str, openai_reason: str) -> None:
    # Given a result ending for a TGI reason
    # When it is rendered
    body = render_openai(result(finish_reason=tgi), chat_line(), job_id="j", created=CREATED)["response"]["body"]
    # Then OpenAI's reason is reported
    assert body["choices"][0]["finish_reason"] == openai_reason


def test_a_matched_stop_sequence_is_dropped_from_the_text_as_openai_does() -> None:
    # Given TGI's output, which keeps the stop sequence it matched
    res = result(output="Paris.\nEND", finish_reason="stop_sequence")
    # When it is rendered for a line that asked for it
    line = render_openai(res, chat_line({"stop": ["\n\n", "END"]}), job_id="j", created=CREATED)
    # Then the text ends before it
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "Paris.\n"


def test_a_stop_sequence_is_kept_when_the_answer_ended_otherwise() -> None:
    # Given an answer that ends with the stop text but stopped at EOS
    res = result(output="The END", finish_reason="eos_token")
    # When it is rendered
    line = render_openai(res, chat_line({"stop": "END"}), job_id="j", created=CREATED)
    # Then the text is untouched
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "The END"


def test_job_level_stop_sequences_are_dropped_when_passed_in() -> None:
    # Given a stop sequence that came from the job's parameters, not the line
    res = result(output="Yes###", finish_reason="stop_sequence")
    # When it is rendered with the job's stops
    line = render_openai(res, chat_line(), job_id="j", created=CREATED, extra_stop=["###"])
    # Then it is dropped too
    assert line["response"]["body"]["choices"][0]["message"]["content"] == "Yes"


def test_an_invalid_line_becomes_a_400_response_with_an_openai_error_body() -> None:
    # Given a line that failed validation
    res = failed("invalid_record", "body.n=3 is not supported")
    # When it is rendered
    line = render_openai(res, chat_line({"n": 3}), job_id="j", created=CREATED)
    # Then it is an HTTP error response, as OpenAI writes to its error file, with the native type as code
    assert line["error"] is None
    assert line["response"]["status_code"] == 400
    assert line["response"]["body"] == {
        "error": {
            "message": "body.n=3 is not supported",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_record",
        }
    }


@pytest.mark.parametrize(
    ("error_type", "status", "kind"),
    [
        ("context_length_exceeded", 400, "invalid_request_error"),
        ("line_too_large", 413, "invalid_request_error"),
        ("endpoint_throttled", 429, "rate_limit_error"),
        ("endpoint_server_error", 500, "server_error"),
        ("endpoint_timeout", 504, "server_error"),
        ("something_new", 500, "server_error"),
    ],
)
def test_native_error_types_map_to_http_statuses(error_type: str, status: int, kind: str) -> None:
    # Given a failure of some native type
    # When it is rendered
    response = render_openai(failed(error_type), chat_line(), job_id="j", created=CREATED)["response"]
    # Then the status and OpenAI error type match its cause
    assert (response["status_code"], response["body"]["error"]["type"]) == (status, kind)


@pytest.mark.parametrize("status", ["expired", "cancelled"])
def test_records_a_stopped_job_never_ran_have_no_response(status: str) -> None:
    # Given a record left over when the job stopped
    res = failed(status, f"job {status} before this record started", status=status)
    # When it is rendered
    line = render_openai(res, chat_line(), job_id="j", created=CREATED)
    # Then, as OpenAI writes them, response is null and error.code is batch_<status>
    assert line["response"] is None
    assert line["error"] == {"code": f"batch_{status}", "message": f"job {status} before this record started"}


def test_ids_are_stable_per_job_and_line() -> None:
    # Given the same result rendered twice, and on another line and in another job
    first = render_openai(result(), chat_line(), job_id="j", created=CREATED)
    again = render_openai(result(), chat_line(), job_id="j", created=CREATED + 60)
    other_line = render_openai(result(line=2), chat_line(), job_id="j", created=CREATED)
    other_job = render_openai(result(), chat_line(), job_id="k", created=CREATED)
    # When their ids are compared
    # Then only the job and line change them
    assert first["id"] == again["id"] and first["response"]["request_id"] == again["response"]["request_id"]
    assert len({first["id"], other_line["id"], other_job["id"]}) == 3


def test_custom_id_falls_back_to_the_result_id_when_the_line_was_not_json() -> None:
    # Given a failed line that could not be parsed (no original object)
    res = failed("invalid_json", "line is not valid JSON")
    res["id"] = 7
    # When it is rendered
    # Then custom_id is the result's id, as a string
    assert render_openai(res, None, job_id="j", created=CREATED)["custom_id"] == "7"


def test_an_invalid_custom_id_is_echoed_as_given() -> None:
    # Given a line whose numeric custom_id made it fail
    res = failed("invalid_record", "custom_id must be a non-empty string")
    # When it is rendered
    # Then the caller's own key is echoed, so they can join on it
    assert render_openai(res, chat_line(custom_id=42), job_id="j", created=CREATED)["custom_id"] == 42


def test_native_details_travel_under_sagebatch() -> None:
    # Given a result with notes and fitting details
    res = result(notes=['body.model="gpt-4o" ignored'], strategy="truncate", truncated=True)
    # When it is rendered with and without extras
    with_extras = render_openai(res, chat_line(), job_id="j", created=CREATED)
    bare = render_openai(res, chat_line(), job_id="j", created=CREATED, extras=False)
    # Then the native fields the peer shape lacks are kept under "sagebatch", or left out on request
    assert with_extras["sagebatch"] == {
        "id": "req-1",
        "line": 1,
        "status": "succeeded",
        "finish_reason": "eos_token",
        "notes": ['body.model="gpt-4o" ignored'],
        "strategy": "truncate",
        "truncated": True,
    }
    assert "sagebatch" not in bare


def test_native_input_rendered_as_openai_uses_the_record_shape() -> None:
    # Given native raw and chat lines rendered in OpenAI form
    raw = render_openai(result(id=3), {"id": 3, "inputs": "[INST] Hi [/INST]"}, job_id="j", created=CREATED)
    chat = render_openai(result(id="a"), {"id": "a", "messages": []}, job_id="j", created=CREATED)
    # When their bodies are read
    # Then raw text gets a text_completion, chat a chat.completion, and custom_id is the native id
    assert (raw["custom_id"], raw["response"]["body"]["object"]) == ("3", "text_completion")
    assert (chat["custom_id"], chat["response"]["body"]["object"]) == ("a", "chat.completion")


# ---------------------------------------------------------------------------------------------------------------
# Rendering Bedrock output lines


def test_bedrock_prompt_result_has_the_mistral_text_completion_shape() -> None:
    # Given a succeeded result for a Mistral prompt line
    original = bedrock_line(max_tokens=100)
    # When it is rendered
    line = render_bedrock(result(id="CALL0000001"), original, extras=False)
    # Then modelInput is echoed and modelOutput is Mistral's response; there is no error key
    assert line == {
        "recordId": "CALL0000001",
        "modelInput": original["modelInput"],
        "modelOutput": {"outputs": [{"text": "Hello!", "stop_reason": "stop"}]},
    }


def test_bedrock_length_finish_is_stop_reason_length() -> None:
    # Given an answer cut by max_tokens
    # When it is rendered
    output = render_bedrock(result(finish_reason="length"), bedrock_line())["modelOutput"]
    # Then stop_reason says length
    assert output == {"outputs": [{"text": "Hello!", "stop_reason": "length"}]}


def test_bedrock_mistral_chat_result_has_the_choices_shape() -> None:
    # Given a Mistral chat body (string contents)
    original = {"recordId": "r", "modelInput": {"messages": [{"role": "user", "content": "Hi"}]}}
    # When its result is rendered
    output = render_bedrock(result(), original)["modelOutput"]
    # Then it is Mistral's chat response
    assert output == {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "stop_reason": "stop"}]}


def test_bedrock_converse_result_has_the_converse_shape() -> None:
    # Given a Converse body
    # When its result (stopped by a stop sequence) is rendered
    res = result(output="Hello!END", finish_reason="stop_sequence", latency_ms=412.4)
    output = render_bedrock(res, converse_line(inferenceConfig={"stopSequences": ["END"]}))["modelOutput"]
    # Then it is the Converse response, without the stop sequence
    assert output == {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hello!"}]}},
        "stopReason": "stop_sequence",
        "usage": {"inputTokens": 12, "outputTokens": 3, "totalTokens": 15},
        "metrics": {"latencyMs": 412},
    }


def test_bedrock_failure_replaces_model_output_with_an_error() -> None:
    # Given a failed record
    res = failed("context_length_exceeded", "9000 tokens; the budget is 8191")
    # When it is rendered
    line = render_bedrock(res, bedrock_line(), extras=False)
    # Then error replaces modelOutput, with an HTTP-like code and the native type in the message
    assert line == {
        "recordId": "CALL0000001",
        "modelInput": bedrock_line()["modelInput"],
        "error": {"errorCode": 400, "errorMessage": "context_length_exceeded: 9000 tokens; the budget is 8191"},
    }


@pytest.mark.parametrize(("status", "code"), [("expired", 408), ("cancelled", 499)])
def test_bedrock_records_a_stopped_job_never_ran_get_their_own_codes(status: str, code: int) -> None:
    # Given a record left over when the job stopped
    res = failed(status, "job stopped", status=status)
    # When it is rendered
    # Then the error code says why
    assert render_bedrock(res, bedrock_line())["error"]["errorCode"] == code


def test_bedrock_line_without_record_id_gets_an_11_character_one_from_its_line() -> None:
    # Given a line without recordId, whose result id defaulted to its line number
    # When it is rendered
    line = render_bedrock(result(id=42, line=42), {"modelInput": {"prompt": "x"}})
    # Then recordId is made up as Bedrock does, 11 characters, from the line
    assert line["recordId"] == "00000000042"


def test_native_input_rendered_as_bedrock_echoes_the_whole_line() -> None:
    # Given a native line rendered in Bedrock form
    original = {"id": "q1", "prompt": "Hi"}
    # When it is rendered
    line = render_bedrock(result(id="q1"), original)
    # Then recordId is the native id, modelInput the line, and modelOutput the text-completion shape
    assert (line["recordId"], line["modelInput"]) == ("q1", original)
    assert line["modelOutput"] == {"outputs": [{"text": "Hello!", "stop_reason": "stop"}]}


def test_render_dispatches_on_the_output_format() -> None:
    # Given one result
    res = result()
    # When it is rendered in each format
    native = render("native", res, {"prompt": "Hi"}, job_id="j", created=CREATED)
    openai_line = render("openai", res, chat_line(), job_id="j", created=CREATED)
    bedrock_out = render("bedrock", res, bedrock_line(), job_id="j", created=CREATED)
    # Then native is the result itself (a copy), and the peers get their shapes
    assert native == res and native is not res
    assert "response" in openai_line and "modelOutput" in bedrock_out


def test_http_status_of_an_unknown_type_is_500() -> None:
    # Given an error type this module does not know
    # When its status is looked up
    # Then it is a server error
    assert http_status("brand_new_failure") == 500


# ---------------------------------------------------------------------------------------------------------------
# dumps_line


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085"])
def test_unicode_line_separators_are_escaped(char: str) -> None:
    # Given text holding a character str.splitlines() breaks on but json.dumps leaves raw
    # When it is dumped
    text = dumps_line({"output": f"a{char}b"})
    # Then it is written as an escape, and the line stays one line
    assert char not in text and f"\\u{ord(char):04x}" in text
    assert text.splitlines() == [text]


def test_other_non_ascii_text_stays_readable() -> None:
    # Given accented, CJK and emoji text
    # When it is dumped
    # Then it is written as UTF-8 text, not escapes
    assert dumps_line({"output": "café 東京 😀"}) == '{"output": "café 東京 😀"}'


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_never_written(value: float) -> None:
    # Given a non-finite number
    # When it is dumped
    # Then it is refused: it is not JSON
    with pytest.raises(ValueError):
        dumps_line({"latency_ms": value})


def test_a_lone_surrogate_is_escaped_so_the_line_encodes_to_utf8() -> None:
    # Given a string holding a lone surrogate (json.loads accepts "\ud800" in input)
    value = json.loads('"x\\ud800y"')
    # When it is dumped
    text = dumps_line({"custom_id": value})
    # Then the line encodes to UTF-8 and reads back to the same string
    text.encode("utf-8")
    assert json.loads(text) == {"custom_id": value}


def test_dumps_line_has_no_trailing_newline() -> None:
    # Given any object
    # When it is dumped
    # Then the caller adds the newline
    assert not dumps_line({"a": 1}).endswith("\n")


ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()))
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=20,
)


@given(value=ANY_JSON)
def test_any_json_value_is_one_utf8_line_that_reads_back_equal(value: Any) -> None:
    # Given any JSON value, strings holding any code point (line separators and lone surrogates included)
    # When it is dumped
    text = dumps_line(value)
    # Then it is one line, encodes to UTF-8, and reads back equal
    assert len(text.splitlines()) == 1
    text.encode("utf-8")
    assert json.loads(text) == value


@given(output=ANY_TEXT, custom_id=ANY_TEXT)
def test_any_rendered_openai_line_is_one_line_and_echoes_its_custom_id(output: str, custom_id: str) -> None:
    # Given a result with any text, for a line with any non-empty custom_id
    original = chat_line(custom_id=custom_id or "c")
    # When it is rendered and dumped
    text = dumps_line(render_openai(result(output=output), original, job_id="j", created=CREATED))
    # Then it is one line that reads back with the same custom_id and text
    assert len(text.splitlines()) == 1
    line = json.loads(text)
    assert line["custom_id"] == original["custom_id"]
    assert line["response"]["body"]["choices"][0]["message"]["content"] == output
