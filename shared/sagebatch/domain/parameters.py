"""Generation parameters as TGI 1.1 will accept them (protocol.md 3.1).

Policy: values that have an obvious TGI-valid meaning are *fixed* and reported; values that
cannot be made valid without changing what the user asked for are *rejected*.
- temperature 0 (TGI rejects it) means greedy decoding: drop temperature, do_sample false.
- top_p 1.0 / typical_p 1.0 (TGI rejects them) mean "off": drop them.
- more stop sequences than TGI's MAX_STOP_SEQUENCES (4), or other out-of-range values: reject.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Generation parameters TGI 1.1 understands (protocol.md 3.1). Unknown names are refused
# here rather than silently ignored by TGI, so a typo like `max_tokens` fails the record.
TGI_PARAMETERS = {
    "max_new_tokens", "temperature", "top_p", "typical_p", "top_k", "repetition_penalty",
    "do_sample", "best_of", "stop", "truncate", "seed", "watermark", "top_n_tokens",
    "decoder_input_details",
}


class Parameters(BaseModel):
    """TGI generation parameters; `None` means "not set", so job defaults can be merged under record values."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    typical_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    do_sample: bool | None = None
    best_of: int | None = None
    stop: list[str] | None = None
    truncate: int | None = None
    seed: int | None = None
    watermark: bool | None = None
    top_n_tokens: int | None = None
    decoder_input_details: bool | None = None

    def over(self, defaults: "Parameters") -> "Parameters":
        """These parameters with unset ones taken from `defaults`."""
        merged = defaults.model_dump(exclude_none=True)
        merged.update(self.model_dump(exclude_none=True))
        return Parameters(**merged)


MAX_STOP_SEQUENCES = 4
MAX_TOP_N_TOKENS = 5
MAX_BEST_OF = 2


class InvalidParameters(ValueError):
    pass


def normalize(params: Parameters) -> tuple[Parameters, list[str]]:
    """Return TGI-valid parameters and notes on what was fixed, or raise InvalidParameters."""
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
    if len(values.get("stop") or []) > MAX_STOP_SEQUENCES:
        problems.append(f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(values['stop'])}")
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
