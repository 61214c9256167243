"""TGI 1.1 token-length rule for one request (protocol.md section 3.2).

TGI rejects a request unless, with ``input_tokens`` counted BOS included::

    input_tokens + max_new_tokens <= MAX_TOTAL_TOKENS
    input_tokens <= MAX_INPUT_LENGTH

The defaults are the JumpStart values for Mistral 7B Instruct (8191 / 8192).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sagebatch.domain.limits import MAX_INPUT_LENGTH, MAX_TOTAL_TOKENS


class TokenBudget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_input_length: int = Field(default=MAX_INPUT_LENGTH, ge=1)
    max_total_tokens: int = Field(default=MAX_TOTAL_TOKENS, ge=2)

    @model_validator(mode="after")
    def _input_below_total(self) -> TokenBudget:
        # TGI's launcher refuses MAX_INPUT_LENGTH >= MAX_TOTAL_TOKENS, so such a
        # budget describes no real endpoint.
        if self.max_input_length >= self.max_total_tokens:
            raise ValueError("max_input_length must be smaller than max_total_tokens")
        return self

    def fits(self, input_tokens: int, max_new_tokens: int) -> bool:
        """Whether TGI accepts this request."""
        return (
            max_new_tokens >= 1
            and input_tokens <= self.max_input_length
            and input_tokens + max_new_tokens <= self.max_total_tokens
        )

    def room_for_input(self, max_new_tokens: int) -> int:
        """Largest input (BOS included) that still fits with ``max_new_tokens``; may be <= 0."""
        return min(self.max_input_length, self.max_total_tokens - max_new_tokens)

    def room_for_output(self, input_tokens: int) -> int:
        """Largest ``max_new_tokens`` for this input; <= 0 when the input is too long."""
        if input_tokens > self.max_input_length:
            return 0
        return self.max_total_tokens - input_tokens

    def fit_new_tokens(self, input_tokens: int, max_new_tokens: int, min_new_tokens: int = 1) -> int:
        """``max_new_tokens``, lowered if needed so the request fits.

        Lowering stops at ``min_new_tokens`` (capped at the request's own
        ``max_new_tokens``): an answer cut to a handful of tokens is rarely what
        the caller wanted, so below that floor the input is what must shrink and
        ``BudgetExceeded`` is raised for a strategy to act on.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        floor = max(1, min(min_new_tokens, max_new_tokens))
        allowed = min(max_new_tokens, self.room_for_output(input_tokens))
        if allowed < floor:
            raise BudgetExceeded(input_tokens, max_new_tokens, self)
        return allowed


class BudgetExceeded(ValueError):
    """A request (or an irreducible part of it) does not fit the token budget."""

    def __init__(self, input_tokens: int, max_new_tokens: int, budget: TokenBudget, reason: str | None = None) -> None:
        self.input_tokens = input_tokens
        self.max_new_tokens = max_new_tokens
        self.budget = budget
        self.reason = reason
        message = (
            f"input is {input_tokens} tokens (BOS included) with max_new_tokens={max_new_tokens}; "
            f"the endpoint allows at most {budget.max_input_length} input tokens and "
            f"{budget.max_total_tokens} input + new tokens"
        )
        if reason:
            message = f"{reason}: {message}"
        super().__init__(message)

    def __reduce__(
        self,
    ) -> tuple[
        type[BudgetExceeded], tuple[int, int, TokenBudget, str | None]
    ]:  # keep the exception picklable across process pools
        return (type(self), (self.input_tokens, self.max_new_tokens, self.budget, self.reason))
