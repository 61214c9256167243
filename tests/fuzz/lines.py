"""Hostile but realistic input lines, for the property test and the fuzz run.

Every kind of thing a line can hold: random bytes (never a newline: a line is what lies between two), random JSON
values of any type and depth, records whose fields have random types and values, and lines in the peers' formats
(OpenAI Batch, Bedrock batch) with fields of random types and values, mixed with ordinary records.
Deterministic for a seed, so a failing fuzz run can be replayed.

`lines` makes a native file (its first line is an ordinary record, so the peer lines among the others each fail
alone, in another format than the file's); `peer_lines` makes a file in one peer's format.
"""

from __future__ import annotations

import json
import random
from typing import Any

from sagebatch.domain.parameters import TGI_PARAMETERS

FIELDS = ["id", "prompt", "messages", "inputs", "document", "instruction", "system", "parameters", "fit"]
PARAMETERS = [*sorted(TGI_PARAMETERS), "max_tokens"]  # and one TGI does not know
FIT = ["strategy", "keep", "chunk_tokens", "overlap_tokens", "min_new_tokens"]
STRATEGIES = ["truncate", "split", "map_reduce", "window", "reject", "bogus"]
TEXTS = [
    "Say hello.",
    "",
    "   ",
    "\t\n",
    "\u2028",
    "\u0085x",
    "naïve café",
    "東京",
    "😀",
    "[INST] hi [/INST]",
    "</s>",
    "<s>",
    "\\ud800",
    "x" * 3000,
]
ODD_NUMBERS = [0, -1, 1, 1.5, 2**31, 2**32, 2**64, -(2**63), 1e308, float("nan"), float("inf"), True, False]
CHAT_URL, COMPLETIONS_URL = "/v1/chat/completions", "/v1/completions"
OPENAI_BODY = [
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "n",
    "stream",
    "tools",
    "tool_choice",
    "logprobs",
    "frequency_penalty",
    "presence_penalty",
    "response_format",
    "best_of",
    "echo",
    "suffix",
    "user",
    "logit_bias",
    "x",
]
BEDROCK_INPUT = [
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "system",
    "inferenceConfig",
    "additionalModelRequestFields",
    "tools",
    "guardrailConfig",
    "requestMetadata",
    "x",
]
PEER_VALUES = [
    *ODD_NUMBERS,
    "10",
    "END",
    None,
    [],
    ["a"] * 5,
    ["\n", "END"],
    {"type": "text"},
    {"maxTokens": 5},
    {"top_k": 3},
    "none",
]


def _scalar(rng: random.Random) -> Any:
    choice = rng.randrange(6)
    if choice == 0:
        return rng.choice(TEXTS)
    if choice == 1:
        return rng.choice(ODD_NUMBERS)
    if choice == 2:
        return rng.randint(-(10**30), 10**30)
    if choice == 3:
        return None
    if choice == 4:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(12)))
    return rng.random() * 10


def json_value(rng: random.Random, depth: int = 0) -> Any:
    if depth > 4 or rng.random() < 0.45:
        return _scalar(rng)
    if rng.random() < 0.5:
        return [json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(FIELDS + ["x", "role", "content"]): json_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def record(rng: random.Random) -> dict[str, Any]:
    """A record-shaped object whose fields have random types and values."""
    shape = rng.choice(["prompt", "messages", "inputs", "document"])
    obj: dict[str, Any] = {}
    if shape == "messages":
        obj["messages"] = (
            [
                {"role": rng.choice(["system", "user", "assistant", "robot", 3]), "content": rng.choice([*TEXTS, 7, None])}
                for _ in range(rng.randrange(0, 4))
            ]
            if rng.random() < 0.8
            else json_value(rng)
        )
    elif shape == "document":
        obj["instruction"] = rng.choice([*TEXTS, json_value(rng)])
        obj["document"] = rng.choice([*TEXTS, json_value(rng)])
    else:
        obj[shape] = rng.choice([*TEXTS, json_value(rng)]) if rng.random() < 0.7 else "Say hello."
    if rng.random() < 0.5:
        obj["id"] = rng.choice([rng.randrange(100), str(rng.randrange(100)), _scalar(rng), json_value(rng)])
    if rng.random() < 0.5:
        obj["parameters"] = {
            rng.choice(PARAMETERS): rng.choice([*ODD_NUMBERS, "10", [], ["a"] * 6, None]) for _ in range(rng.randrange(3))
        }
    if rng.random() < 0.3:
        obj["fit"] = {
            rng.choice(FIT): rng.choice([*STRATEGIES, "head", "tail", 64, "64", -1, None]) for _ in range(rng.randrange(3))
        }
    if rng.random() < 0.1:
        obj[rng.choice(["colour", "Prompt", "prompt "])] = 1
    return obj


def _messages(rng: random.Random, roles: list[Any]) -> Any:
    if rng.random() < 0.15:
        return json_value(rng)
    return [
        {
            "role": rng.choice(roles),
            "content": rng.choice([*TEXTS, 7, None, [{"type": "text", "text": "hi"}], [{"text": "hi"}], [{"image": {}}]]),
        }
        for _ in range(rng.randrange(0, 4))
    ] or [{"role": "user", "content": "Say hello."}]


def openai_record(rng: random.Random) -> dict[str, Any]:
    """An OpenAI Batch line: mostly well formed, with body fields of random types and values."""
    url = rng.choice([CHAT_URL, COMPLETIONS_URL]) if rng.random() < 0.9 else rng.choice(["/v1/embeddings", json_value(rng)])
    body: dict[str, Any] = {}
    if url == COMPLETIONS_URL:
        body["prompt"] = rng.choice([*TEXTS, json_value(rng)]) if rng.random() < 0.5 else "<s>[INST] Say hello. [/INST]"
    elif rng.random() < 0.95:
        body["messages"] = _messages(rng, ["system", "developer", "user", "assistant", "tool", "robot", 3])
    for _ in range(rng.randrange(3)):
        body[rng.choice(OPENAI_BODY)] = rng.choice([*PEER_VALUES, json_value(rng)])
    custom_id = f"req-{rng.randrange(100)}" if rng.random() < 0.9 else rng.choice(["", 3, None, json_value(rng)])
    obj: dict[str, Any] = {"custom_id": custom_id, "method": "POST" if rng.random() < 0.95 else "GET", "url": url, "body": body}
    if rng.random() < 0.1:
        obj[rng.choice(["id", "prompt", "recordId", "extra"])] = 1
    return obj


def bedrock_record(rng: random.Random) -> dict[str, Any]:
    """A Bedrock batch line (Mistral prompt, chat or Converse body) with parameters of random types and values."""
    model_input: dict[str, Any] = {}
    if rng.random() < 0.6:
        model_input["prompt"] = rng.choice([*TEXTS, json_value(rng)]) if rng.random() < 0.5 else "<s>[INST] Hi [/INST]"
    else:
        model_input["messages"] = _messages(rng, ["system", "user", "assistant", "tool", 3])
    for _ in range(rng.randrange(3)):
        model_input[rng.choice(BEDROCK_INPUT)] = rng.choice([*PEER_VALUES, json_value(rng)])
    obj: dict[str, Any] = {"modelInput": model_input if rng.random() < 0.95 else json_value(rng)}
    if rng.random() < 0.95:
        obj["recordId"] = f"CALL{rng.randrange(10**7):07d}" if rng.random() < 0.9 else rng.choice(["", 3, None])
    if rng.random() < 0.1:
        obj[rng.choice(["id", "custom_id", "extra"])] = 1
    return obj


def line(rng: random.Random) -> bytes:
    """One line's bytes (no newline)."""
    kind = rng.random()
    if kind < 0.04:
        return json.dumps(rng.choice([openai_record, bedrock_record])(rng)).encode("utf-8", "surrogatepass")
    if kind < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40))).replace(b"\n", b" ")
    if kind < 0.2:
        return json.dumps(json_value(rng)).encode()
    if kind < 0.3:
        text = json.dumps(record(rng))
        cut = rng.randrange(len(text))
        return text[:cut].encode()  # truncated JSON
    if kind < 0.35:
        return b'{"prompt": "a", "prompt": "b"}'
    if kind < 0.75:
        return json.dumps(record(rng)).encode("utf-8", "surrogatepass")
    return json.dumps({"prompt": f"Say hello {rng.randrange(1000)}.", "parameters": {"max_new_tokens": 16}}).encode()


def lines(seed: int, count: int) -> list[bytes]:
    """A native file: an ordinary record first (it decides the format), then `count - 1` lines of any kind."""
    rng = random.Random(seed)
    first = json.dumps({"prompt": "Say hello.", "parameters": {"max_new_tokens": 16}}).encode()
    return [first, *(line(rng) for _ in range(count - 1))]


def peer_line(rng: random.Random, fmt: str) -> bytes:
    """A line of a file in the peer format `fmt` ("openai" or "bedrock"): mostly its own format, sometimes anything."""
    if rng.random() < 0.15:
        return line(rng)
    return json.dumps((openai_record if fmt == "openai" else bedrock_record)(rng)).encode("utf-8", "surrogatepass")


def peer_lines(seed: int, count: int, fmt: str) -> list[bytes]:
    """A file in the peer format `fmt`: a well-formed line first (it decides the format), then any peer lines."""
    rng = random.Random(seed)
    if fmt == "openai":
        first = {
            "custom_id": "first",
            "method": "POST",
            "url": CHAT_URL,
            "body": {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16},
        }
    else:
        first = {"recordId": "first", "modelInput": {"prompt": "<s>[INST] Say hello. [/INST]", "max_tokens": 16}}
    return [json.dumps(first).encode(), *(peer_line(rng, fmt) for _ in range(count - 1))]


# What a line may fail as when nothing is wrong on our side: every error a line itself can cause, before any call.
KNOWN_ERRORS = frozenset(
    {
        "invalid_json",
        "invalid_utf8",
        "empty_line",
        "line_too_large",
        "invalid_record",
        "invalid_parameters",
        "unsupported_strategy",
        "context_length_exceeded",
    }
)
