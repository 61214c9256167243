"""What TGI 1.1.0 does with a `/invocations` body: validate it, then produce deterministic text.

Validation follows TGI's own order and wording (protocol.md 3.1-3.2) so that an error the
emulator returns is the error the real endpoint would return.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from sagebatch.domain.limits import MAX_INPUT_LENGTH, MAX_TOTAL_TOKENS
from sagebatch.domain.tokens import get_tokenizer

# Words that the Mistral v1 tokenizer encodes as exactly one token each (checked at import),
# so the generated text's token count equals `details.generated_tokens`.
_WORDS = [
    "the",
    "model",
    "reads",
    "each",
    "prompt",
    "and",
    "writes",
    "a",
    "short",
    "answer",
    "about",
    "data",
    "time",
    "work",
    "city",
    "river",
    "light",
    "system",
    "value",
    "result",
    "number",
    "question",
    "reason",
    "example",
    "paper",
    "world",
    "water",
    "house",
    "story",
    "field",
]


class TgiError(Exception):
    """An error TGI answers with: HTTP status plus its JSON body."""

    def __init__(self, status: int, error: str, error_type: str):
        super().__init__(error)
        self.status = status
        self.body = {"error": error, "error_type": error_type}


@dataclass(frozen=True)
class TgiLimits:
    max_input_length: int = MAX_INPUT_LENGTH
    max_total_tokens: int = MAX_TOTAL_TOKENS
    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5


@dataclass(frozen=True)
class ValidRequest:
    inputs: str
    input_tokens: int
    max_new_tokens: int
    return_full_text: bool
    details: bool
    stop: list[str] = field(default_factory=list)
    # At a very high sampling temperature EOS is practically never drawn (the seed's benchmark used
    # temperature 99 to force exactly max_new_tokens), so the emulator generates to the limit.
    never_eos: bool = False


def _fail(message: str) -> TgiError:
    return TgiError(422, f"Input validation error: {message}", "validation")


def validate(body: Any, limits: TgiLimits) -> ValidRequest:
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
        raise TgiError(422, "Failed to deserialize the JSON body into the target type: inputs: invalid type", "validation")
    p = body.get("parameters") or {}
    if not isinstance(p, dict):
        raise TgiError(422, "Failed to deserialize the JSON body into the target type: parameters", "validation")
    sampling = bool(p.get("do_sample")) or any(p.get(k) is not None for k in ("temperature", "top_k", "top_p", "typical_p"))
    best_of = p.get("best_of")
    if best_of is not None and best_of > 1 and not sampling:
        raise _fail("you must use sampling when `best_of` is > 1")
    if p.get("temperature") is not None and p["temperature"] <= 0:
        raise _fail("`temperature` must be strictly positive")
    if p.get("repetition_penalty") is not None and p["repetition_penalty"] <= 0:
        raise _fail("`repetition_penalty` must be strictly positive")
    for name in ("top_p", "typical_p"):
        if p.get(name) is not None and not 0 < p[name] < 1:
            raise _fail(f"`{name}` must be > 0.0 and < 1.0")
    if p.get("top_k") is not None and p["top_k"] <= 0:
        raise _fail("`top_k` must be strictly positive")
    max_new_tokens = p.get("max_new_tokens", 20)  # TGI 1.1.0's default
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise TgiError(422, "Failed to deserialize the JSON body into the target type: parameters.max_new_tokens", "validation")
    if max_new_tokens == 0:
        raise _fail("`max_new_tokens` must be strictly positive")
    stop = p.get("stop") or []
    if len(stop) > limits.max_stop_sequences:
        raise _fail(f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(stop)}")
    if best_of is not None and best_of > 1 and p.get("seed") is not None:
        raise _fail("`seed` must not be set when `best_of` > 1")
    top_n = p.get("top_n_tokens")
    if top_n is not None and not 0 <= top_n <= limits.max_top_n_tokens:
        raise _fail(f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {top_n}")
    if body["inputs"] == "":
        raise _fail("`inputs` cannot be empty")
    truncate = p.get("truncate")
    if truncate is not None and not 0 < truncate <= limits.max_input_length:
        raise _fail(f"`truncate` must be strictly positive and less than {limits.max_input_length}. Given: {truncate}")
    input_tokens = get_tokenizer().count(body["inputs"])
    if truncate is not None:
        input_tokens = min(input_tokens, truncate)
    if input_tokens + max_new_tokens > limits.max_total_tokens:
        raise _fail(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_tokens} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
        )
    if input_tokens > limits.max_input_length:
        raise _fail(f"`inputs` must have less than {limits.max_input_length} tokens. Given: {input_tokens}")
    if best_of is not None and not 0 < best_of <= limits.max_best_of:
        raise _fail(f"`best_of` must be > 0 and <= {limits.max_best_of}. Given: {best_of}")
    return ValidRequest(
        inputs=body["inputs"],
        input_tokens=input_tokens,
        max_new_tokens=max_new_tokens,
        return_full_text=bool(p.get("return_full_text", False)),
        details=bool(p.get("details", False)),
        stop=list(stop),
        never_eos=(p.get("temperature") or 1.0) >= 10,
    )


@dataclass(frozen=True)
class Completion:
    text: str
    generated_tokens: int  # includes EOS when the text ended on it, as TGI counts
    finish_reason: str


def deterministic_completion(
    inputs: str, max_new_tokens: int, natural_tokens: tuple[int, int] = (12, 96), eos: bool = True
) -> Completion:
    """The same input always gives the same text; its length is chosen by a hash, capped by max_new_tokens."""
    digest = hashlib.sha256(inputs.encode("utf-8")).digest()
    low, high = natural_tokens
    natural = low + int.from_bytes(digest[:4], "big") % (high - low + 1)
    if eos and natural + 1 <= max_new_tokens:  # the text ends on EOS, which TGI counts but does not print
        words, generated, reason = natural, natural + 1, "eos_token"
    else:
        words, generated, reason = max_new_tokens, max_new_tokens, "length"
    picks = [_WORDS[(digest[i % len(digest)] + i * 7) % len(_WORDS)] for i in range(words)]
    return Completion(" ".join(picks), generated, reason)


def render_response(request: ValidRequest, completion: Completion) -> list[dict[str, Any]]:
    text = request.inputs + completion.text if request.return_full_text else completion.text
    item: dict[str, Any] = {"generated_text": text}
    if request.details:
        item["details"] = {
            "finish_reason": completion.finish_reason,
            "generated_tokens": completion.generated_tokens,
            "seed": None,
            "prefill": [],
            "tokens": [],
        }
    return [item]
