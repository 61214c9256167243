"""The TGI length rule (sagebatch.domain.budget)."""

from __future__ import annotations

import pickle

import pytest
from pydantic import ValidationError

from sagebatch.domain.budget import BudgetExceeded, TokenBudget

JUMPSTART = TokenBudget()


def test_defaults_are_the_jumpstart_values() -> None:
    # Given the default budget
    # Then it matches MAX_INPUT_LENGTH=8191, MAX_TOTAL_TOKENS=8192
    assert (JUMPSTART.max_input_length, JUMPSTART.max_total_tokens) == (8191, 8192)


@pytest.mark.parametrize(
    ("input_tokens", "max_new_tokens", "fits"),
    [
        (15, 8177, True),  # exactly the total
        (15, 8178, False),  # one over the total
        (8191, 1, True),  # longest input
        (8192, 1, False),  # over max_input_length (and total)
        (100, 0, False),  # TGI rejects max_new_tokens = 0
    ],
)
def test_fits_applies_both_tgi_checks(input_tokens: int, max_new_tokens: int, fits: bool) -> None:
    # Given an input size and a max_new_tokens
    # When checked against the JumpStart budget
    # Then the result follows input <= 8191 and input + new <= 8192
    assert JUMPSTART.fits(input_tokens, max_new_tokens) is fits


def test_input_limit_binds_when_it_is_below_total_minus_new() -> None:
    # Given a budget whose input limit is well below the total
    budget = TokenBudget(max_input_length=1000, max_total_tokens=4000)
    # When an input over the input limit asks for few new tokens
    # Then it does not fit even though the total would allow it
    assert not budget.fits(1001, 10)
    assert budget.room_for_input(10) == 1000


def test_room_for_input_is_the_largest_input_that_fits() -> None:
    # Given a max_new_tokens
    room = JUMPSTART.room_for_input(512)
    # Then that input fits and one more token does not
    assert room == 7680
    assert JUMPSTART.fits(room, 512) and not JUMPSTART.fits(room + 1, 512)


def test_fit_new_tokens_keeps_a_request_that_fits() -> None:
    # Given a request that fits
    # When fitted
    # Then max_new_tokens is unchanged
    assert JUMPSTART.fit_new_tokens(1000, 512) == 512


def test_fit_new_tokens_lowers_to_the_remaining_room() -> None:
    # Given a long input and a large max_new_tokens
    # When fitted
    # Then max_new_tokens is lowered to what remains of the total
    assert JUMPSTART.fit_new_tokens(8000, 512) == 192


def test_fit_new_tokens_lowers_down_to_the_floor_but_not_below() -> None:
    # Given an input leaving 16 tokens, then 15
    # When fitted with a floor of 16
    # Then 16 is accepted and 15 is not
    assert JUMPSTART.fit_new_tokens(8176, 512, min_new_tokens=16) == 16
    with pytest.raises(BudgetExceeded):
        JUMPSTART.fit_new_tokens(8177, 512, min_new_tokens=16)


def test_floor_never_exceeds_the_request_itself() -> None:
    # Given a request for 5 new tokens and a floor of 16
    # When there is room for exactly 5
    # Then it fits: the floor is capped at what was asked for
    assert JUMPSTART.fit_new_tokens(8187, 5, min_new_tokens=16) == 5


def test_input_over_max_input_length_cannot_be_fixed_by_lowering() -> None:
    # Given an input longer than MAX_INPUT_LENGTH
    # When fitted with a single new token
    # Then BudgetExceeded is raised
    with pytest.raises(BudgetExceeded):
        JUMPSTART.fit_new_tokens(8192, 1)


def test_budget_exceeded_message_gives_count_and_budget() -> None:
    # Given an input that cannot fit
    # When fitting fails
    with pytest.raises(BudgetExceeded) as caught:
        JUMPSTART.fit_new_tokens(9000, 256)
    # Then the message has the token count, max_new_tokens and both limits, and the fields are kept
    message = str(caught.value)
    assert "9000" in message and "256" in message and "8191" in message and "8192" in message
    assert (caught.value.input_tokens, caught.value.max_new_tokens, caught.value.budget) == (9000, 256, JUMPSTART)


def test_budget_exceeded_survives_pickling() -> None:
    # Given the exception (workers may cross process boundaries)
    error = BudgetExceeded(9000, 256, JUMPSTART, reason="why")
    # When pickled and restored
    restored = pickle.loads(pickle.dumps(error))
    # Then it is equal in content
    assert str(restored) == str(error) and restored.budget == JUMPSTART


def test_zero_max_new_tokens_is_a_caller_error() -> None:
    # Given max_new_tokens = 0 (TGI: "must be strictly positive")
    # Then fitting raises ValueError, not BudgetExceeded
    with pytest.raises(ValueError, match="max_new_tokens"):
        JUMPSTART.fit_new_tokens(10, 0)


def test_budget_must_leave_room_for_one_new_token() -> None:
    # Given max_input_length >= max_total_tokens (TGI's launcher refuses this)
    # Then the budget is invalid
    with pytest.raises(ValidationError):
        TokenBudget(max_input_length=512, max_total_tokens=512)


def test_budget_is_immutable() -> None:
    # Given a budget
    # When a field is assigned
    # Then it is refused
    with pytest.raises(ValidationError):
        JUMPSTART.max_total_tokens = 1  # type: ignore[misc]
