"""Hostile but realistic input lines, for the property test and the fuzz run.

Every kind of thing a line can hold: random bytes (never a newline: a line is what lies between two), random JSON
values of any type and depth, and records whose fields have random types and values, mixed with ordinary records.
Deterministic for a seed, so a failing fuzz run can be replayed.
"""

from __future__ import annotations

import json
import random
from typing import Any

FIELDS = ["id", "prompt", "messages", "inputs", "document", "instruction", "system", "parameters", "fit"]
PARAMETERS = ["max_new_tokens", "temperature", "top_p", "typical_p", "top_k", "repetition_penalty", "do_sample",
              "best_of", "stop", "truncate", "seed", "watermark", "top_n_tokens", "decoder_input_details", "max_tokens"]
FIT = ["strategy", "keep", "chunk_tokens", "overlap_tokens", "min_new_tokens"]
STRATEGIES = ["truncate", "split", "map_reduce", "window", "reject", "bogus"]
TEXTS = ["Say hello.", "", "   ", "\t\n", "\u2028", "\u0085x", "naïve café", "東京", "😀", "[INST] hi [/INST]", "</s>", "<s>",
         "\\ud800", "x" * 3000]
ODD_NUMBERS = [0, -1, 1, 1.5, 2**31, 2**32, 2**64, -(2**63), 1e308, float("nan"), float("inf"), True, False]


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
        obj["messages"] = [
            {"role": rng.choice(["system", "user", "assistant", "robot", 3]), "content": rng.choice([*TEXTS, 7, None])}
            for _ in range(rng.randrange(0, 4))
        ] if rng.random() < 0.8 else json_value(rng)
    elif shape == "document":
        obj["instruction"] = rng.choice([*TEXTS, json_value(rng)])
        obj["document"] = rng.choice([*TEXTS, json_value(rng)])
    else:
        obj[shape] = rng.choice([*TEXTS, json_value(rng)]) if rng.random() < 0.7 else "Say hello."
    if rng.random() < 0.5:
        obj["id"] = rng.choice([rng.randrange(100), str(rng.randrange(100)), _scalar(rng), json_value(rng)])
    if rng.random() < 0.5:
        obj["parameters"] = {rng.choice(PARAMETERS): rng.choice([*ODD_NUMBERS, "10", [], ["a"] * 6, None])
                             for _ in range(rng.randrange(3))}
    if rng.random() < 0.3:
        obj["fit"] = {rng.choice(FIT): rng.choice([*STRATEGIES, "head", "tail", 64, "64", -1, None])
                      for _ in range(rng.randrange(3))}
    if rng.random() < 0.1:
        obj[rng.choice(["colour", "Prompt", "prompt "])] = 1
    return obj


def line(rng: random.Random) -> bytes:
    """One line's bytes (no newline)."""
    kind = rng.random()
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
    rng = random.Random(seed)
    return [line(rng) for _ in range(count)]
