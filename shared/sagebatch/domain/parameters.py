"""Generation parameters as TGI 1.1 will accept them (protocol.md 3.1).

Policy: values that have an obvious TGI-valid meaning are *fixed* and reported; values that
cannot be made valid without changing what the user asked for are *rejected*.
- temperature 0 (TGI rejects it) means greedy decoding: drop temperature, do_sample false.
- top_p 1.0 / typical_p 1.0 (TGI rejects them) mean "off": drop them.
- more stop sequences than TGI's MAX_STOP_SEQUENCES (4), or other out-of-range values: reject.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sagebatch.domain.limits import MAX_INPUT_LENGTH

# The widths of TGI's Rust types (router/src/lib.rs): a value that does not fit is a 422 there.
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1

# Generation parameters TGI 1.1 understands (protocol.md 3.1). Unknown names are refused
# here rather than silently ignored by TGI, so a typo like `max_tokens` fails the record.
TGI_PARAMETERS = {
    "max_new_tokens",
    "temperature",
    "top_p",
    "typical_p",
    "top_k",
    "repetition_penalty",
    "do_sample",
    "best_of",
    "stop",
    "truncate",
    "seed",
    "watermark",
    "top_n_tokens",
    "decoder_input_details",
}


class Parameters(BaseModel):
    """TGI generation parameters; `None` means "not set", so job defaults can be merged under record values."""

    # Strict: JSON types as TGI's serde sees them, no coercion ("10" or true is not a number); no NaN/Infinity.
    # The field bounds are the Rust types' widths; TGI's own rules (strictly positive, ...) are in `normalize`,
    # with TGI's wording.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    max_new_tokens: int | None = Field(None, ge=0, le=U32_MAX)
    temperature: float | None = None
    top_p: float | None = None
    typical_p: float | None = None
    top_k: int | None = Field(None, ge=I32_MIN, le=I32_MAX)
    repetition_penalty: float | None = None
    do_sample: bool | None = None
    best_of: int | None = Field(None, ge=0, le=U32_MAX)
    stop: list[str] | None = None
    truncate: int | None = Field(None, ge=0, le=U32_MAX)
    seed: int | None = Field(None, ge=0, le=U64_MAX)
    watermark: bool | None = None
    top_n_tokens: int | None = Field(None, ge=0, le=U32_MAX)
    decoder_input_details: bool | None = None

    def over(self, defaults: Parameters) -> Parameters:
        """These parameters with unset ones taken from `defaults`."""
        merged = defaults.model_dump(exclude_none=True)
        merged.update(self.model_dump(exclude_none=True))
        return Parameters(**merged)


_TYPE_NAMES = {
    "max_new_tokens": "u32",
    "top_k": "i32",
    "best_of": "u32",
    "truncate": "u32",
    "seed": "u64",
    "top_n_tokens": "u32",
    "temperature": "f32",
    "top_p": "f32",
    "typical_p": "f32",
    "repetition_penalty": "f32",
    "do_sample": "a boolean",
    "watermark": "a boolean",
    "decoder_input_details": "a boolean",
    "stop": "a list of strings",
}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    return {dict: "object", list: "sequence", type(None): "null"}.get(type(value), type(value).__name__)


def describe_parameter_errors(error: ValidationError, prefix: tuple[str | int, ...] = ()) -> str:
    """Type and width errors of generation parameters, worded like TGI's serde rejection ("invalid type: ...,
    expected u32") so a user sees what TGI would have said, without paying for the call."""
    parts = []
    for item in error.errors()[:5]:
        loc = item["loc"][len(prefix) :]
        name = str(loc[0]) if loc else "parameters"
        value = item.get("input")
        if item["type"] == "extra_forbidden":
            parts.append(f"unknown parameter `{name}` (TGI 1.1 knows {', '.join(sorted(TGI_PARAMETERS))})")
        elif item["type"] == "finite_number":
            parts.append(f"`{name}` must be a finite number; NaN and Infinity are not JSON numbers TGI accepts")
        elif item["type"] in ("greater_than_equal", "less_than_equal"):
            parts.append(f"`{name}`: invalid value: {_json_type(value)}, expected {_TYPE_NAMES.get(name, 'a number')}")
        else:
            parts.append(f"`{name}`: invalid type: {_json_type(value)}, expected {_TYPE_NAMES.get(name, 'a value')}")
    return "; ".join(parts)


MAX_STOP_SEQUENCES = 4
MAX_TOP_N_TOKENS = 5
MAX_BEST_OF = 2


class InvalidParameters(ValueError):
    pass


def normalize(params: Parameters, max_input_length: int = MAX_INPUT_LENGTH) -> tuple[Parameters, list[str]]:
    """Return TGI-valid parameters and notes on what was fixed, or raise InvalidParameters (TGI's wording)."""
    values = params.model_dump(exclude_none=True)
    notes: list[str] = []
    if values.get("temperature") == 0:
        del values["temperature"]
        values["do_sample"] = False
        notes.append("temperature 0 sent as greedy decoding (TGI rejects temperature 0)")
    for name in ("top_p", "typical_p"):
        if values.get(name) == 1.0:
            del values[name]
            notes.append(f"{name} 1.0 dropped (TGI rejects 1.0; it means 'off')")
    problems = []
    if "temperature" in values and values["temperature"] <= 0:
        problems.append("`temperature` must be strictly positive")
    if "repetition_penalty" in values and values["repetition_penalty"] <= 0:
        problems.append("`repetition_penalty` must be strictly positive")
    for name in ("top_p", "typical_p"):
        if name in values and not 0 < values[name] < 1:
            problems.append(f"`{name}` must be > 0.0 and < 1.0")
    if "top_k" in values and values["top_k"] <= 0:
        problems.append("`top_k` must be strictly positive")
    if values.get("max_new_tokens") == 0:
        problems.append("`max_new_tokens` must be strictly positive")
    if len(values.get("stop") or []) > MAX_STOP_SEQUENCES:
        problems.append(f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(values['stop'])}")
    if "truncate" in values and not 0 < values["truncate"] <= max_input_length:
        problems.append(f"`truncate` must be strictly positive and less than {max_input_length}. Given: {values['truncate']}")
    if "top_n_tokens" in values and not 0 <= values["top_n_tokens"] <= MAX_TOP_N_TOKENS:
        problems.append(f"`top_n_tokens` must be >= 0 and <= {MAX_TOP_N_TOKENS}")
    best_of = values.get("best_of")
    if best_of is not None and best_of != 1:
        sampling = values.get("do_sample") or any(k in values for k in ("temperature", "top_k", "top_p", "typical_p"))
        if not 0 < best_of <= MAX_BEST_OF:
            problems.append(f"`best_of` must be > 0 and <= {MAX_BEST_OF}. Given: {best_of}")
        elif not sampling:
            problems.append("you must use sampling when `best_of` is > 1")
        elif "seed" in values:
            problems.append("`seed` must not be set when `best_of` > 1")
    if problems:
        raise InvalidParameters("; ".join(problems))
    return Parameters(**values), notes
