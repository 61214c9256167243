"""Peers' batch formats, both ways: OpenAI Batch and Bedrock batch lines in, their result lines out.

Pure code (no AWS, no I/O, no clock). Three steps, each usable on its own:

1. **Detect** a line's format from its parsed JSON object (``detect``); a file holds one format, decided by its
   first recognisable line (``FormatDetector``).
2. **Convert** a peer line into a native record dict (``to_native``), so the native validation
   (``parse_record``, ``normalize``) runs on it unchanged. Peer fields with no TGI 1.1 equivalent are either
   *noted* (ignored, listed in ``Converted.notes``, which belong in the result line's ``notes``) or *refused*
   (``FormatError``, the line fails) when ignoring them would change what the caller asked for.
3. **Render** a native result (a ``ResultLine`` dumped to a dict) as the peer's output line
   (``render_openai``, ``render_bedrock``, or ``render`` for any format), and serialise any line with
   ``dumps_line``.

Decisions (docs/formats.md has the field-by-field table):

- OpenAI ``/v1/completions`` sends its ``prompt`` to the model **as is**, with no chat template, so it maps to
  native ``inputs`` (raw), not ``prompt`` (templated). Use ``/v1/chat/completions`` to get the instruct template.
- A literal leading ``<s>`` (Bedrock Mistral prompts always start with one) is removed, with a note: TGI adds BOS
  itself, and a literal one would make two.
- ``temperature > 0`` also sets ``do_sample: true``: OpenAI and Bedrock sample at any positive temperature, while
  TGI treats ``temperature: 1.0`` without ``do_sample`` as greedy. ``temperature: 0`` is left to ``normalize``
  (greedy, with its own note).
- ``frequency_penalty`` / ``presence_penalty`` are noted and ignored, not mapped to ``repetition_penalty``: TGI 1.1's
  penalty divides the logits of every token already seen (prompt included), OpenAI's subtract from the logits of
  generated tokens only; any conversion factor would be a guess. A job-level ``repetition_penalty`` still applies.
- Unknown fields inside an OpenAI ``body`` or a Bedrock ``modelInput`` are refused, as both services refuse them;
  unknown fields beside them on the line are noted and ignored (Bedrock ignores them too).
- Peer outputs drop a matched stop sequence from the end of the text (OpenAI documents this; TGI keeps it).
- Every id in a rendered line is derived from the job id and the line number (``stable_id``); the only time value,
  OpenAI's ``created``, is passed in.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

Format = Literal["native", "openai", "bedrock"]
FORMATS: Final[tuple[Format, ...]] = ("native", "openai", "bedrock")
FORMAT_NAMES: Final[Mapping[Format, str]] = {"native": "native", "openai": "OpenAI Batch", "bedrock": "Bedrock batch"}

CHAT_URL: Final = "/v1/chat/completions"
COMPLETIONS_URL: Final = "/v1/completions"
OPENAI_URLS: Final = (CHAT_URL, COMPLETIONS_URL)
# What rendered OpenAI bodies report as `model` unless the caller passes the served model's name.
SERVED_MODEL: Final = "mistral-7b-instruct"
BOS: Final = "<s>"

# Keys whose presence marks a line's format. A line must carry keys of exactly one family.
_MARKERS: Final[Mapping[Format, frozenset[str]]] = {
    "native": frozenset({"prompt", "messages", "inputs", "document", "instruction"}),
    "openai": frozenset({"custom_id", "body"}),
    "bedrock": frozenset({"recordId", "modelInput"}),
}


class FormatError(ValueError):
    """The line cannot be read in its (or its file's) format. The message names the peer's own fields."""


# --------------------------------------------------------------------------------------------------------------
# 1. Detection


def detect(obj: object) -> Format:
    """The format of one parsed JSON line, from which keys it has.

    ``native``: one of prompt/messages/inputs/document (or instruction); ``openai``: ``custom_id`` or ``body``;
    ``bedrock``: ``modelInput`` or ``recordId``. Whether the line is *valid* in that format is ``to_native``'s
    job, so a line with ``custom_id`` but an unsupported ``url`` is still an OpenAI line (and gets an OpenAI
    error message). Raises FormatError when no family or more than one is present.
    """
    if not isinstance(obj, Mapping):
        raise FormatError(f"a record must be a JSON object, got {_json_type(obj)}")
    found = families(obj)
    if not found:
        raise FormatError(
            "not a record in any known format: expected native (one of 'prompt', 'messages', 'inputs', 'document'), "
            "OpenAI Batch ('custom_id', 'method', 'url', 'body') or Bedrock batch ('recordId', 'modelInput')"
        )
    if len(found) > 1:
        fields = "; ".join(f"{FORMAT_NAMES[fmt]}: {', '.join(sorted(_MARKERS[fmt] & set(obj)))}" for fmt in found)
        raise FormatError(f"the line mixes fields of several formats ({fields}); a line is in one format")
    return found[0]


def families(obj: object) -> list[Format]:
    """The formats whose marker keys `obj` carries, in FORMATS order (none for a value that is not an object).

    ``detect`` needs exactly one. A native reader uses this to tell a line of no known format (let the native
    validation explain it in its own terms) from one that carries a peer's fields.
    """
    if not isinstance(obj, Mapping):
        return []
    return [fmt for fmt in FORMATS if not _MARKERS[fmt].isdisjoint(obj)]


class FormatDetector:
    """One file's format: the first recognisable line decides, every later line must match it.

    Feed the parsed JSON object of each line, in file order, to ``feed``; it returns the line's format or raises
    FormatError, which fails *that line only*. Lines that never reach ``feed`` (blank, not JSON) and lines
    ``detect`` cannot place do not decide, so a bad first line does not turn a good file into errors. A line of
    another format than the decided one is an error on that line: one file, one format.

    When lines are read by several workers (shards), decide once at intake and give each worker
    ``FormatDetector(decided)``: ``feed`` then only checks each line against it.

        detector = FormatDetector()
        for number, obj in lines:          # parsed JSON, in order
            try:
                fmt = detector.feed(obj, number)
            except FormatError as error:   # this line fails; the file goes on
                ...
        detector.format                    # None if no line was recognisable
    """

    def __init__(self, decided: Format | None = None, decided_at: int | None = None) -> None:
        self._format = decided
        self._decided_at = decided_at

    @property
    def format(self) -> Format | None:
        """The file's format, once a line has decided it."""
        return self._format

    @property
    def decided_at(self) -> int | None:
        """The line number that decided the format, if ``feed`` was given line numbers."""
        return self._decided_at

    def feed(self, obj: object, line: int | None = None) -> Format:
        fmt = detect(obj)
        if self._format is None:
            self._format, self._decided_at = fmt, line
        elif fmt != self._format:
            where = f" on line {self._decided_at}" if self._decided_at is not None else ""
            raise FormatError(
                f"this line is in {FORMAT_NAMES[fmt]} format, but the file is in {FORMAT_NAMES[self._format]} format "
                f"(decided by its first record{where}); a file holds one format"
            )
        return fmt


def resolve_output_format(requested: Format | None, detected: Format | None) -> Format:
    """The job's ``output_format``: as requested, else the input's format, else native."""
    return requested or detected or "native"


# --------------------------------------------------------------------------------------------------------------
# 2. Conversion to native records


@dataclass(frozen=True)
class Converted:
    """A native record dict (feed it to ``parse_record``) and what the conversion ignored, for the line's notes."""

    record: dict[str, Any]
    notes: tuple[str, ...] = ()


def to_native(obj: Mapping[str, Any], fmt: Format) -> Converted:
    """The native record for a line already placed in ``fmt`` (a native line is returned as is).

    Raises FormatError, with the peer's field names, when the line cannot be run faithfully.
    """
    if fmt == "native":
        return Converted(dict(obj))
    if fmt == "openai":
        return _from_openai(obj)
    return _from_bedrock(obj)


@dataclass(frozen=True)
class _Unsupported:
    """A peer field with no TGI 1.1 equivalent: a no-op value passes silently, others are noted or refused."""

    noop: Callable[[Any], bool]
    refuse: bool
    why: str


def _absent(value: Any) -> bool:
    return value is None


def _falsy(value: Any) -> bool:
    """null, false, 0, "" and empty lists/objects: the peer's "not asked for"."""
    return value is None or value is False or (not isinstance(value, bool) and value in (0, "", [], {}))


def _is_one(value: Any) -> bool:
    return value is None or (type(value) is int and value == 1)


def _text_format(value: Any) -> bool:
    return value is None or (isinstance(value, Mapping) and value.get("type") == "text")


def _text_modalities(value: Any) -> bool:
    return value is None or value == ["text"]


def _no_tool_choice(value: Any) -> bool:
    return value is None or value in ("none", "auto")


_NO_TGI = "TGI 1.1 has no equivalent"
_ONE_MODEL = "this stack serves one model, Mistral 7B Instruct"
_PENALTY = (
    "TGI 1.1 has no additive penalty (its repetition_penalty is multiplicative and also counts prompt tokens); "
    "set the job's parameters.repetition_penalty if you want one"
)
_NO_TOOLS = "Mistral 7B Instruct on TGI 1.1 has no tool calling"
_BOOKKEEPING = "bookkeeping field with no effect on generation here"

# Fields both OpenAI endpoints share.
_OPENAI_COMMON: Final[Mapping[str, _Unsupported]] = {
    "model": _Unsupported(_absent, False, _ONE_MODEL),
    "n": _Unsupported(_is_one, True, "sagebatch returns one completion per line; repeat the line (new custom_id) instead"),
    "stream": _Unsupported(_falsy, True, "batch results are never streamed"),
    "stream_options": _Unsupported(_absent, False, "batch results are never streamed"),
    "frequency_penalty": _Unsupported(_falsy, False, _PENALTY),
    "presence_penalty": _Unsupported(_falsy, False, _PENALTY),
    "logit_bias": _Unsupported(_falsy, True, f"{_NO_TGI} (TGI 1.1 cannot bias or ban tokens)"),
    "user": _Unsupported(_absent, False, _BOOKKEEPING),
}
_OPENAI_CHAT_ONLY: Final[Mapping[str, _Unsupported]] = {
    "logprobs": _Unsupported(_falsy, False, "results carry no log probabilities"),
    "top_logprobs": _Unsupported(_falsy, False, "results carry no log probabilities"),
    "response_format": _Unsupported(_text_format, True, "TGI 1.1 cannot constrain output to JSON or a schema"),
    "tools": _Unsupported(_falsy, True, _NO_TOOLS),
    "functions": _Unsupported(_falsy, True, _NO_TOOLS),
    "tool_choice": _Unsupported(_no_tool_choice, True, _NO_TOOLS),
    "function_call": _Unsupported(_no_tool_choice, True, _NO_TOOLS),
    "parallel_tool_calls": _Unsupported(_absent, False, _NO_TOOLS),
    "audio": _Unsupported(_absent, True, "the model reads and writes text only"),
    "modalities": _Unsupported(_text_modalities, True, "the model reads and writes text only"),
    "web_search_options": _Unsupported(_absent, True, "the model cannot search the web"),
    "prediction": _Unsupported(_absent, False, "predicted outputs are a latency optimisation TGI 1.1 lacks"),
    "reasoning_effort": _Unsupported(_absent, False, "Mistral 7B Instruct is not a reasoning model"),
    "verbosity": _Unsupported(_absent, False, _NO_TGI),
    "metadata": _Unsupported(_absent, False, _BOOKKEEPING),
    "store": _Unsupported(_absent, False, _BOOKKEEPING),
    "service_tier": _Unsupported(_absent, False, _BOOKKEEPING),
    "prompt_cache_key": _Unsupported(_absent, False, _BOOKKEEPING),
    "safety_identifier": _Unsupported(_absent, False, _BOOKKEEPING),
}
_OPENAI_COMPLETIONS_ONLY: Final[Mapping[str, _Unsupported]] = {
    "logprobs": _Unsupported(_falsy, False, "results carry no log probabilities"),
    "echo": _Unsupported(_falsy, True, "results never repeat the prompt"),
    "suffix": _Unsupported(_falsy, True, f"{_NO_TGI} (no fill-in-the-middle)"),
}
_OPENAI_UNSUPPORTED: Final[Mapping[str, Mapping[str, _Unsupported]]] = {
    CHAT_URL: {**_OPENAI_COMMON, **_OPENAI_CHAT_ONLY},
    COMPLETIONS_URL: {**_OPENAI_COMMON, **_OPENAI_COMPLETIONS_ONLY},
}
_OPENAI_MAPPED: Final[Mapping[str, frozenset[str]]] = {
    CHAT_URL: frozenset({"messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed"}),
    COMPLETIONS_URL: frozenset({"prompt", "max_tokens", "temperature", "top_p", "stop", "seed", "best_of"}),
}
_OPENAI_LINE_KEYS: Final = frozenset({"custom_id", "method", "url", "body"})
_OPENAI_ROLES: Final[Mapping[str, str]] = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_OPENAI_MESSAGE_UNSUPPORTED: Final[Mapping[str, _Unsupported]] = {
    "name": _Unsupported(_absent, False, "the Mistral template has no participant names"),
    "refusal": _Unsupported(_absent, False, "the Mistral template has no refusals"),
    "tool_calls": _Unsupported(_falsy, True, _NO_TOOLS),
    "function_call": _Unsupported(_absent, True, _NO_TOOLS),
    "tool_call_id": _Unsupported(_absent, True, _NO_TOOLS),
    "audio": _Unsupported(_absent, True, "the model reads and writes text only"),
}


class _Params:
    """Native parameters being collected, remembering which peer field set each (to report conflicts)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self._sources: dict[str, str] = {}

    def set(self, name: str, value: Any, source: str) -> None:
        if name in self.values and self.values[name] != value:
            raise FormatError(f"{self._sources[name]} and {source} disagree ({self.values[name]!r} vs {value!r})")
        self.values[name] = value
        self._sources[name] = source

    def sampling(self, temperature: float, source: str) -> None:
        """A positive temperature means sampling for the peers; TGI needs do_sample for temperature 1.0."""
        self.set("temperature", temperature, source)
        if temperature > 0:
            self.values["do_sample"] = True


def _from_openai(obj: Mapping[str, Any]) -> Converted:
    notes: list[str] = [f"{key} ignored: not a field of an OpenAI Batch line" for key in obj if key not in _OPENAI_LINE_KEYS]
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise FormatError(f"custom_id must be a non-empty string, got {_json_type(custom_id)}")
    method = obj.get("method", "POST")
    if method != "POST":
        raise FormatError(f'method must be "POST", got {_short(method)}')
    url = obj.get("url")
    if not isinstance(url, str) or url not in OPENAI_URLS:
        raise FormatError(
            f"url {_short(url)} is not supported: this stack generates text, at {CHAT_URL!r} or {COMPLETIONS_URL!r}"
        )
    body = obj.get("body")
    if not isinstance(body, Mapping):
        raise FormatError(f"body must be a JSON object (the request body), got {_json_type(body)}")
    unsupported = _OPENAI_UNSUPPORTED[url]
    mapped = _OPENAI_MAPPED[url]
    for key in body:
        if key not in mapped and key not in unsupported:
            raise FormatError(f"body.{key} is not a parameter of {url} (OpenAI refuses unrecognized arguments too)")
    notes += _unsupported(body, unsupported, "body.")

    record: dict[str, Any] = {"id": custom_id}
    params = _Params()
    if url == CHAT_URL:
        if "messages" not in body:
            raise FormatError(f"body.messages is required for {CHAT_URL}")
        messages, message_notes = _openai_messages(body["messages"])
        record["messages"] = messages
        notes += message_notes
    else:
        if "prompt" not in body:
            raise FormatError(f"body.prompt is required for {COMPLETIONS_URL}")
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise FormatError(
                f"body.prompt must be a string, got {_json_type(prompt)}: a list asks for one completion per item, "
                "so write one line per prompt"
            )
        record["inputs"] = _strip_bos(prompt, "body.prompt", notes)
    for key in ("max_tokens", "max_completion_tokens"):
        if body.get(key) is not None:
            params.set("max_new_tokens", _int(f"body.{key}", body[key], minimum=1), f"body.{key}")
    if body.get("temperature") is not None:
        params.sampling(_number("body.temperature", body["temperature"]), "body.temperature")
    if body.get("top_p") is not None:
        params.set("top_p", _number("body.top_p", body["top_p"]), "body.top_p")
    if body.get("stop") is not None:
        stops = _stops("body.stop", body["stop"], allow_string=True)
        if stops:
            params.set("stop", stops, "body.stop")
    if body.get("seed") is not None:
        params.set("seed", _int("body.seed", body["seed"], minimum=0), "body.seed")
    if body.get("best_of") is not None:
        best_of = _int("body.best_of", body["best_of"], minimum=1)
        if best_of > 1:
            params.set("best_of", best_of, "body.best_of")
    if params.values:
        record["parameters"] = params.values
    return Converted(record, tuple(notes))


def _openai_messages(value: Any) -> tuple[list[dict[str, str]], list[str]]:
    if not isinstance(value, list) or not value:
        raise FormatError(f"body.messages must be a non-empty array, got {_json_type(value)}")
    messages: list[dict[str, str]] = []
    notes: list[str] = []
    for index, message in enumerate(value):
        path = f"body.messages[{index}]"
        if not isinstance(message, Mapping):
            raise FormatError(f"{path} must be an object, got {_json_type(message)}")
        role = message.get("role")
        if role in ("tool", "function"):
            raise FormatError(f"{path}.role {role!r} is not supported: {_NO_TOOLS}")
        if not isinstance(role, str) or role not in _OPENAI_ROLES:
            raise FormatError(f"{path}.role must be one of system, developer, user, assistant; got {_short(role)}")
        for key in message:
            if key not in ("role", "content") and key not in _OPENAI_MESSAGE_UNSUPPORTED:
                raise FormatError(f"{path}.{key} is not a field of a chat message")
        notes += _unsupported(message, _OPENAI_MESSAGE_UNSUPPORTED, f"{path}.")
        if role == "developer":
            notes.append(f"{path}.role 'developer' sent as 'system' (the Mistral template has one system prompt)")
        messages.append({"role": _OPENAI_ROLES[role], "content": _openai_content(message.get("content"), f"{path}.content")})
    return messages, notes


def _openai_content(content: Any, path: str) -> str:
    """A string, or text parts joined with newlines (as vLLM does); any other part fails the line."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise FormatError(f"{path} must be a string or an array of text parts, got {_json_type(content)}")
    texts: list[str] = []
    for index, part in enumerate(content):
        where = f"{path}[{index}]"
        if not isinstance(part, Mapping):
            raise FormatError(f"{where} must be an object, got {_json_type(part)}")
        kind = part.get("type")
        if kind != "text":
            raise FormatError(f"{where} is a {_short(kind)} part; only text parts are supported (the model reads text only)")
        text = part.get("text")
        if not isinstance(text, str):
            raise FormatError(f"{where}.text must be a string, got {_json_type(text)}")
        texts.append(text)
    return "\n".join(texts)


# Mistral's parameter names on Bedrock, in the order they are read (conflict messages name the first one set).
_BEDROCK_PARAM_NAMES: Final = ("max_tokens", "temperature", "top_p", "top_k", "stop")
_BEDROCK_PARAMS: Final = frozenset(_BEDROCK_PARAM_NAMES)
_BEDROCK_CHAT_KEYS: Final = frozenset({"messages", "system", "inferenceConfig", "additionalModelRequestFields"})
_BEDROCK_UNSUPPORTED: Final[Mapping[str, _Unsupported]] = {
    "tools": _Unsupported(_falsy, True, _NO_TOOLS),
    "tool_choice": _Unsupported(_no_tool_choice, True, _NO_TOOLS),
    "toolConfig": _Unsupported(_falsy, True, _NO_TOOLS),
    "guardrailConfig": _Unsupported(_absent, True, "sagebatch applies no guardrails; filtering would change results"),
    "promptVariables": _Unsupported(_falsy, True, "prompt templates from Bedrock Prompt Management are not available"),
    "additionalModelResponseFieldPaths": _Unsupported(_falsy, False, "no additional response fields exist"),
    "requestMetadata": _Unsupported(_absent, False, _BOOKKEEPING),
    "performanceConfig": _Unsupported(_absent, False, _BOOKKEEPING),
}
_CONVERSE_INFERENCE: Final[Mapping[str, str]] = {
    "maxTokens": "max_tokens",
    "temperature": "temperature",
    "topP": "top_p",
    "stopSequences": "stop",
}


def _from_bedrock(obj: Mapping[str, Any]) -> Converted:
    notes: list[str] = [
        f"{key} ignored: Bedrock reads only recordId and modelInput" for key in obj if key not in ("recordId", "modelInput")
    ]
    record: dict[str, Any] = {}
    record_id = obj.get("recordId")
    if record_id is not None:
        if not isinstance(record_id, str) or not record_id:
            raise FormatError(f"recordId must be a non-empty string, got {_json_type(record_id)}")
        record["id"] = record_id
    model_input = obj.get("modelInput")
    if not isinstance(model_input, Mapping):
        raise FormatError(f"modelInput must be a JSON object (the model's request body), got {_json_type(model_input)}")
    has_prompt, has_messages = "prompt" in model_input, "messages" in model_input
    if has_prompt == has_messages:
        raise FormatError("modelInput needs exactly one of 'prompt' (Mistral text completion) or 'messages' (chat)")
    allowed = _BEDROCK_PARAMS | ({"prompt"} if has_prompt else _BEDROCK_CHAT_KEYS)
    for key in model_input:
        if key not in allowed and key not in _BEDROCK_UNSUPPORTED:
            raise FormatError(f"modelInput.{key} is not a parameter of this request (Bedrock refuses extraneous keys too)")
    notes += _unsupported(model_input, _BEDROCK_UNSUPPORTED, "modelInput.")

    params = _Params()
    if has_prompt:
        prompt = model_input["prompt"]
        if not isinstance(prompt, str):
            raise FormatError(f"modelInput.prompt must be a string, got {_json_type(prompt)}")
        record["inputs"] = _strip_bos(prompt, "modelInput.prompt", notes)
    else:
        record["messages"] = _bedrock_messages(model_input, notes)
        _converse_inference(model_input.get("inferenceConfig"), params)
        extra = model_input.get("additionalModelRequestFields")
        if extra is not None:
            if not isinstance(extra, Mapping) or set(extra) - {"top_k"}:
                raise FormatError("modelInput.additionalModelRequestFields may hold only 'top_k' for this model")
            if extra.get("top_k") is not None:
                params.set(
                    "top_k",
                    _int("modelInput.additionalModelRequestFields.top_k", extra["top_k"], minimum=0),
                    "modelInput.additionalModelRequestFields.top_k",
                )
    _bedrock_params(model_input, "modelInput.", params)
    if params.values:
        record["parameters"] = params.values
    return Converted(record, tuple(notes))


def _bedrock_params(source: Mapping[str, Any], prefix: str, params: _Params, names: Mapping[str, str] | None = None) -> None:
    """Mistral's own parameter names (or Converse's, through `names`) into native parameters."""
    names = names or {name: name for name in _BEDROCK_PARAM_NAMES}
    for key, name in names.items():
        value = source.get(key)
        if value is None:
            continue
        path = prefix + key
        if name == "max_tokens":
            params.set("max_new_tokens", _int(path, value, minimum=1), path)
        elif name == "temperature":
            params.sampling(_number(path, value), path)
        elif name == "top_p":
            params.set("top_p", _number(path, value), path)
        elif name == "top_k":
            params.set("top_k", _int(path, value, minimum=0), path)
        else:
            stops = _stops(path, value, allow_string=False)
            if stops:
                params.set("stop", stops, path)


def _converse_inference(config: Any, params: _Params) -> None:
    if config is None:
        return
    if not isinstance(config, Mapping):
        raise FormatError(f"modelInput.inferenceConfig must be an object, got {_json_type(config)}")
    for key in config:
        if key not in _CONVERSE_INFERENCE:
            raise FormatError(f"modelInput.inferenceConfig.{key} is not a Converse inference parameter")
    _bedrock_params(config, "modelInput.inferenceConfig.", params, _CONVERSE_INFERENCE)


def _bedrock_messages(model_input: Mapping[str, Any], notes: list[str]) -> list[dict[str, str]]:
    value = model_input["messages"]
    if not isinstance(value, list) or not value:
        raise FormatError(f"modelInput.messages must be a non-empty array, got {_json_type(value)}")
    messages: list[dict[str, str]] = []
    system = model_input.get("system")
    if system is not None:
        messages.append({"role": "system", "content": _bedrock_content(system, "modelInput.system", notes)})
    for index, message in enumerate(value):
        path = f"modelInput.messages[{index}]"
        if not isinstance(message, Mapping):
            raise FormatError(f"{path} must be an object, got {_json_type(message)}")
        role = message.get("role")
        if role == "tool":
            raise FormatError(f"{path}.role 'tool' is not supported: {_NO_TOOLS}")
        if role not in ("system", "user", "assistant"):
            raise FormatError(f"{path}.role must be one of system, user, assistant; got {_short(role)}")
        if role == "system" and system is not None:
            raise FormatError(f"{path} is a system message, but modelInput.system is set too; give the system prompt once")
        for key in message:
            if key in ("tool_calls", "tool_call_id"):
                if not _falsy(message[key]):
                    raise FormatError(f"{path}.{key} is not supported: {_NO_TOOLS}")
            elif key not in ("role", "content"):
                raise FormatError(f"{path}.{key} is not a field of a chat message")
        messages.append({"role": role, "content": _bedrock_content(message.get("content"), f"{path}.content", notes)})
    return messages


def _bedrock_content(content: Any, path: str, notes: list[str]) -> str:
    """A string (Mistral chat) or Converse content blocks; text blocks are joined with newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise FormatError(f"{path} must be a string or an array of content blocks, got {_json_type(content)}")
    texts: list[str] = []
    for index, block in enumerate(content):
        where = f"{path}[{index}]"
        if not isinstance(block, Mapping) or len(block) != 1:
            raise FormatError(f"{where} must be a content block: an object with one key such as 'text'")
        ((kind, value),) = block.items()
        if kind == "text":
            if not isinstance(value, str):
                raise FormatError(f"{where}.text must be a string, got {_json_type(value)}")
            texts.append(value)
        elif kind == "cachePoint":
            notes.append(f"{where} (cachePoint) ignored: TGI 1.1 has no prompt caching")
        else:
            raise FormatError(f"{where} is a {kind!r} block; only text blocks are supported (the model reads text only)")
    return "\n".join(texts)


def _unsupported(source: Mapping[str, Any], table: Mapping[str, _Unsupported], prefix: str) -> list[str]:
    """Notes for fields to ignore; FormatError for the first field whose value would change the request's meaning."""
    notes: list[str] = []
    for key in source:
        rule = table.get(key)
        if rule is None or rule.noop(source[key]):
            continue
        shown = f"{prefix}{key}={_short(source[key])}"
        if rule.refuse:
            raise FormatError(f"{shown} is not supported: {rule.why}")
        notes.append(f"{shown} ignored: {rule.why}")
    return notes


def _strip_bos(prompt: str, path: str, notes: list[str]) -> str:
    """The prompt without a literal leading BOS; an empty prompt fails here, in the peer's terms."""
    if prompt.startswith(BOS):
        notes.append(f"leading '{BOS}' removed from {path}: TGI adds BOS itself, a literal one would make two")
        prompt = prompt[len(BOS) :]
    if not prompt:
        raise FormatError(f"{path} is empty")
    return prompt


def _int(path: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{path} must be an integer, got {_json_type(value)}")
    if value < minimum:
        raise FormatError(f"{path} must be >= {minimum}, got {value}")
    return value


def _number(path: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FormatError(f"{path} must be a number, got {_json_type(value)}")
    if not math.isfinite(value):
        raise FormatError(f"{path} must be a finite number, got {value}")
    return float(value)


def _stops(path: str, value: Any, allow_string: bool) -> list[str]:
    stops = [value] if allow_string and isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
        wanted = "a string or an array of strings" if allow_string else "an array of strings"
        raise FormatError(f"{path} must be {wanted}, got {_json_type(value)}")
    if "" in stops:
        raise FormatError(f"{path} holds an empty stop sequence, which would end every answer at once")
    return list(stops)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------------------------
# 3. Rendering results in the peers' shapes

# Native error types → the HTTP status a synchronous call would have got. Anything else is a 500.
_HTTP_STATUS: Final[Mapping[str, int]] = {
    "invalid_json": 400,
    "invalid_utf8": 400,
    "empty_line": 400,
    "invalid_record": 400,
    "invalid_parameters": 400,
    "context_length_exceeded": 400,
    "endpoint_validation": 400,
    "endpoint_client_error": 400,
    "line_too_large": 413,
    "endpoint_payload_too_large": 413,
    "endpoint_overloaded": 429,
    "endpoint_throttled": 429,
    "endpoint_not_ready": 503,
    "endpoint_timeout": 504,
    "endpoint_server_error": 500,
    # Records a stopped job never started. OpenAI writes these with `response: null` (codes batch_expired /
    # batch_cancelled); Bedrock needs a number: 408 (the deadline passed), 499 (the caller withdrew the request).
    "expired": 408,
    "cancelled": 499,
}
_STOPPED: Final = frozenset({"cancelled", "expired"})
# Fields a rendered line already carries in the peer's own terms; the rest of the native result goes under
# "sagebatch" (id, line, status, notes, strategy, …) unless the caller asks for the bare peer shape. The native id
# stays there too: the peer's custom_id / recordId may hold it only as a string (see ``native_fields``).
_RENDERED_FIELDS: Final = frozenset({"output", "usage", "error"})


def stable_id(job_id: str, line: int) -> str:
    """32 hex digits, the same for the same job and line on every run (no clock, no randomness)."""
    return hashlib.sha256(f"{job_id}\x00{line}".encode()).hexdigest()[:32]


def http_status(error_type: str) -> int:
    """The HTTP status matching a native error type (also ``cancelled`` / ``expired``)."""
    return _HTTP_STATUS.get(error_type, 500)


def render_openai(
    result: Mapping[str, Any],
    original: object,
    *,
    job_id: str,
    created: int,
    model: str = SERVED_MODEL,
    extra_stop: Sequence[str] = (),
    extras: bool = True,
) -> dict[str, Any]:
    """One line of an OpenAI Batch output (or error) file for a native result.

    ``original`` is the line's parsed input (any format, or None when the line was not JSON); it gives the
    ``custom_id``, the endpoint (chat.completion or text_completion body) and the stop sequences to drop from the
    text. ``extra_stop`` adds stop sequences the record got from elsewhere (the job's parameters). ``created`` is
    the Unix time to report. A failure with an HTTP-like cause becomes ``response.status_code`` 4xx/5xx with an
    OpenAI error body and ``error: null``; a record a stopped job never ran becomes ``response: null`` with
    ``error.code`` ``batch_expired`` or ``batch_cancelled``, as OpenAI writes them.
    """
    digest = stable_id(job_id, int(result["line"]))
    status = result["status"]
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    if status == "succeeded":
        response = {
            "status_code": 200,
            "request_id": f"req_{digest}",
            "body": _openai_body(result, original, digest, created, model, extra_stop),
        }
    elif status in _STOPPED:
        error = {"code": f"batch_{status}", "message": _error_message(result, status)}
    else:
        error_type = _error_type(result)
        code = http_status(error_type)
        kind = "invalid_request_error" if code < 500 else "server_error"
        if code == 429:
            kind = "rate_limit_error"
        response = {
            "status_code": code,
            "request_id": f"req_{digest}",
            "body": {"error": {"message": _error_message(result, error_type), "type": kind, "param": None, "code": error_type}},
        }
    line: dict[str, Any] = {
        "id": f"batch_req_{digest}",
        "custom_id": _custom_id(result, original),
        "response": response,
        "error": error,
    }
    if extras:
        line["sagebatch"] = _extras(result)
    return line


def render_bedrock(
    result: Mapping[str, Any],
    original: object,
    *,
    extra_stop: Sequence[str] = (),
    extras: bool = True,
) -> dict[str, Any]:
    """One line of a Bedrock batch ``.jsonl.out`` file for a native result.

    ``modelInput`` echoes the original's (or, for a line of another format, the whole original line).
    ``modelOutput`` takes the shape of the model's own response to that body: ``outputs[{text, stop_reason}]`` for a
    Mistral ``prompt`` (and for lines of other formats), ``choices[{index, message, stop_reason}]`` for a Mistral chat
    body, the Converse response for a Converse body (content blocks, ``system`` or ``inferenceConfig``). On failure
    ``error: {errorCode, errorMessage}`` replaces ``modelOutput``, as Bedrock writes it. A line without ``recordId``
    gets one, as Bedrock adds one: the result's id (for a line without one, its line number, zero-padded to 11 digits).
    """
    model_input: Any = original
    if isinstance(original, Mapping) and "modelInput" in original:
        model_input = original["modelInput"]
    line: dict[str, Any] = {"recordId": _record_id(result, original), "modelInput": model_input}
    status = result["status"]
    if status == "succeeded":
        line["modelOutput"] = _bedrock_output(result, original, extra_stop)
    else:
        error_type = status if status in _STOPPED else _error_type(result)
        line["error"] = {
            "errorCode": http_status(error_type),
            "errorMessage": f"{error_type}: {_error_message(result, error_type)}",
        }
    if extras:
        line["sagebatch"] = _extras(result)
    return line


def render(
    fmt: Format,
    result: Mapping[str, Any],
    original: object,
    *,
    job_id: str,
    created: int,
    model: str = SERVED_MODEL,
    extra_stop: Sequence[str] = (),
) -> dict[str, Any]:
    """The result line in the job's ``output_format``: native results are returned unchanged (as a new dict)."""
    if fmt == "openai":
        return render_openai(result, original, job_id=job_id, created=created, model=model, extra_stop=extra_stop)
    if fmt == "bedrock":
        return render_bedrock(result, original, extra_stop=extra_stop)
    return dict(result)


def _openai_body(
    result: Mapping[str, Any], original: object, digest: str, created: int, model: str, extra_stop: Sequence[str]
) -> dict[str, Any]:
    text = _peer_text(result, original, extra_stop)
    finish = "length" if result.get("finish_reason") == "length" else "stop"
    usage = _usage(result)
    body_usage = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": usage[0] + usage[1]}
    if _wants_text_completion(original):
        choice: dict[str, Any] = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return {
            "id": f"cmpl-{digest}",
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": body_usage,
        }
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": text, "refusal": None},
        "logprobs": None,
        "finish_reason": finish,
    }
    return {
        "id": f"chatcmpl-{digest}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": body_usage,
        "system_fingerprint": None,
    }


def _wants_text_completion(original: object) -> bool:
    """A raw prompt (OpenAI completions, Bedrock or native raw text) gets a text_completion; anything else a chat."""
    if not isinstance(original, Mapping):
        return False
    if "body" in original or "custom_id" in original:
        return original.get("url") == COMPLETIONS_URL
    model_input = original.get("modelInput")
    if isinstance(model_input, Mapping):
        return "prompt" in model_input
    return "inputs" in original


def _bedrock_output(result: Mapping[str, Any], original: object, extra_stop: Sequence[str]) -> dict[str, Any]:
    text = _peer_text(result, original, extra_stop)
    finish_reason = result.get("finish_reason")
    stop_reason = "length" if finish_reason == "length" else "stop"
    model_input = original.get("modelInput") if isinstance(original, Mapping) else None
    if not isinstance(model_input, Mapping) or "messages" not in model_input:
        return {"outputs": [{"text": text, "stop_reason": stop_reason}]}
    if not _is_converse(model_input):
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "stop_reason": stop_reason}]}
    input_tokens, output_tokens = _usage(result)
    converse_reason = {"length": "max_tokens", "stop_sequence": "stop_sequence"}.get(str(finish_reason), "end_turn")
    latency = result.get("latency_ms")
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": converse_reason,
        "usage": {"inputTokens": input_tokens, "outputTokens": output_tokens, "totalTokens": input_tokens + output_tokens},
        "metrics": {"latencyMs": round(latency) if isinstance(latency, (int, float)) else 0},
    }


def _is_converse(model_input: Mapping[str, Any]) -> bool:
    if "system" in model_input or "inferenceConfig" in model_input:
        return True
    messages = model_input.get("messages")
    return isinstance(messages, list) and any(isinstance(m, Mapping) and isinstance(m.get("content"), list) for m in messages)


def _peer_text(result: Mapping[str, Any], original: object, extra_stop: Sequence[str]) -> str:
    """The output, without the stop sequence TGI leaves at its end (the peers drop it)."""
    text = result.get("output") or ""
    if not isinstance(text, str):
        text = str(text)
    if result.get("finish_reason") == "stop_sequence":
        matched = [stop for stop in [*_requested_stops(original), *extra_stop] if stop and text.endswith(stop)]
        if matched:
            text = text[: -len(max(matched, key=len))]
    return text


def _requested_stops(original: object) -> list[str]:
    """Stop sequences the original line asked for, in whichever format it is; tolerant of malformed lines."""
    if not isinstance(original, Mapping):
        return []
    candidates: list[Any] = []
    body = original.get("body")
    if isinstance(body, Mapping):
        candidates.append(body.get("stop"))
    model_input = original.get("modelInput")
    if isinstance(model_input, Mapping):
        candidates.append(model_input.get("stop"))
        config = model_input.get("inferenceConfig")
        if isinstance(config, Mapping):
            candidates.append(config.get("stopSequences"))
    parameters = original.get("parameters")
    if isinstance(parameters, Mapping):
        candidates.append(parameters.get("stop"))
    return [stop for stop in _flatten_strings(candidates)]


def _flatten_strings(values: Iterable[Any]) -> Iterable[str]:
    for value in values:
        if isinstance(value, str):
            yield value
        elif isinstance(value, list):
            yield from (item for item in value if isinstance(item, str))


def _given_id(original: object, key: str) -> str | int | None:
    """The id the input line gave under `key`, echoed as given (even when it was not valid there)."""
    value = original.get(key) if isinstance(original, Mapping) else None
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def _custom_id(result: Mapping[str, Any], original: object) -> str | int | None:
    given = _given_id(original, "custom_id")
    if given is not None:
        return given
    record_id = result.get("id")
    return None if record_id is None else str(record_id)


def _record_id(result: Mapping[str, Any], original: object) -> str | int:
    given = _given_id(original, "recordId")
    if given is not None:
        return given
    record_id = result.get("id")
    if isinstance(record_id, str) and record_id:
        return record_id
    number = record_id if isinstance(record_id, int) and not isinstance(record_id, bool) else result["line"]
    return f"{int(number):011d}"


def _error_type(result: Mapping[str, Any]) -> str:
    error = result.get("error")
    if isinstance(error, Mapping) and isinstance(error.get("type"), str):
        return str(error["type"])
    return "unknown_error"


def _error_message(result: Mapping[str, Any], fallback: str) -> str:
    error = result.get("error")
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        return str(error["message"])
    return fallback


def _usage(result: Mapping[str, Any]) -> tuple[int, int]:
    usage = result.get("usage")
    if not isinstance(usage, Mapping):
        return 0, 0
    return int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)


def _extras(result: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in result.items() if key not in _RENDERED_FIELDS}


def native_fields(line: Mapping[str, Any]) -> dict[str, Any]:
    """The native result fields (id, line, status, parent_line, notes, …) of a results.jsonl line in any output format.

    A rendered peer line keeps them under ``"sagebatch"``; a native line is its own. Readers that select lines by
    status (a retry, ``--failed-only``) go through this, so they work whatever the job's ``output_format``.
    """
    extras = line.get("sagebatch")
    return dict(extras) if isinstance(extras, Mapping) and "status" in extras else dict(line)


# --------------------------------------------------------------------------------------------------------------
# 4. Serialising a line

# Characters str.splitlines() (and many JSONL readers) treat as line ends that json.dumps(ensure_ascii=False)
# leaves raw: NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR. Lone surrogates (JSON input may hold "\ud800") are
# escaped too, so the line always encodes to UTF-8. Every other control character json.dumps escapes itself.
_UNSAFE: Final = re.compile("[\u0085\u2028\u2029\ud800-\udfff]")


def dumps_line(obj: Any) -> str:
    """One JSON line (no trailing newline): UTF-8 text kept readable, but never a character that splits a line.

    NaN and Infinity are refused (ValueError): they are not JSON and most readers reject them.
    """
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return _UNSAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
