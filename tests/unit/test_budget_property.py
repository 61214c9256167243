"""Property: every call ``answer`` makes passes TGI's two length checks, or the record is rejected.

The checks are recomputed here with the real tokenizer on the exact ``inputs``
string (protocol.md 3.2): count (BOS included) <= MAX_INPUT_LENGTH and
count + max_new_tokens <= MAX_TOTAL_TOKENS.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sagebatch.domain.budget import BudgetExceeded, TokenBudget
from sagebatch.domain.fitting import SUPPORTED, Call, answer
from sagebatch.domain.generation import Generation
from sagebatch.domain.prompt import Message
from sagebatch.domain.records import ChatRecord, DocumentRecord, FitSettings, PromptRecord, RawRecord
from sagebatch.domain.tokens import get_tokenizer

TOK = get_tokenizer()

# Small budgets make chunking and recursive combining cheap to reach; the
# 1000/4000 one makes MAX_INPUT_LENGTH the binding limit.
BUDGETS = [
    TokenBudget(max_input_length=255, max_total_tokens=256),
    TokenBudget(max_input_length=511, max_total_tokens=512),
    TokenBudget(max_input_length=1000, max_total_tokens=4000),
    TokenBudget(),
]

FRAGMENTS = [
    "The committee met on Tuesday. ",
    "It rained! ",
    "Why? ",
    "\n\n",
    "\n",
    "    ",
    "\t",
    "def f(x):\n    return x * 2\n",
    '{"key": [1, 2, 3]}',
    "東京は日本の首都です。",
    "你好，世界！",
    "😀🎉",
    "👨‍👩‍👧",
    "𝔘𝔫𝔦",
    "naïve café ",
    "[INST]",
    " [/INST] ",
    "</s>",
    "<s>",
    "supercalifragilisticexpialidocious",
    "x",
    "",
]

pieces = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=12), max_size=40).map("".join)
short_texts = pieces
# Repeating a random body gives long texts cheaply (tens of thousands of tokens
# at most), so about half the records need a strategy on the small budgets.
long_texts = st.builds(
    lambda body, times: body * times,
    st.lists(st.sampled_from(FRAGMENTS) | st.text(min_size=1, max_size=12), min_size=3, max_size=40).map("".join),
    st.sampled_from([30, 100, 300, 1000]),
)
texts = st.one_of(short_texts, long_texts, long_texts)


@st.composite
def chats(draw) -> ChatRecord:
    exchanges = draw(st.integers(min_value=0, max_value=6))
    messages = []
    if draw(st.booleans()):
        messages.append(Message(role="system", content=draw(short_texts)))
    for _ in range(exchanges):
        messages.append(Message(role="user", content=draw(texts)))
        messages.append(Message(role="assistant", content=draw(short_texts)))
    messages.append(Message(role="user", content=draw(texts)))
    return ChatRecord.model_construct(messages=messages)


# Built past the models' own checks (which refuse blank texts before fitting sees them), so fitting is also
# shown to cope with whatever text reaches it.
contents = st.one_of(
    st.builds(PromptRecord.model_construct, prompt=texts),
    chats(),
    st.builds(DocumentRecord.model_construct, instruction=short_texts, document=texts, system=st.none() | short_texts),
    st.builds(RawRecord.model_construct, inputs=texts.filter(bool)),
)


class RecordingEndpoint:
    """Fake generate: answers of pseudo-random length up to max_new_tokens."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.calls: list[Call] = []

    def __call__(self, calls: Sequence[Call]) -> list[Generation]:
        self.calls.extend(calls)
        results = []
        for call in calls:
            n = self.random.randint(1, call.max_new_tokens)
            text = " ".join(self.random.choice(["answer", "part", "世界", "😀", "x"]) for _ in range(n))
            results.append(Generation(text, n, self.random.choice(["length", "eos_token"])))
        return results


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    content=contents,
    budget=st.sampled_from(BUDGETS),
    max_new_tokens=st.integers(min_value=1, max_value=9000),
    data=st.data(),
)
def test_every_call_passes_tgi_length_checks_or_the_record_is_rejected(content, budget, max_new_tokens, data) -> None:
    # Given random content, budget, max_new_tokens and a strategy that applies to the shape
    strategy = data.draw(st.none() | st.sampled_from(sorted(SUPPORTED[type(content)], key=lambda s: s.value)))
    options = FitSettings(
        strategy=strategy,
        keep=data.draw(st.sampled_from(["head", "tail"])),
        chunk_tokens=data.draw(st.none() | st.integers(min_value=32, max_value=3000)),
        overlap_tokens=data.draw(st.integers(min_value=0, max_value=300)),
        min_new_tokens=data.draw(st.integers(min_value=1, max_value=64)),
    )
    endpoint = RecordingEndpoint(data.draw(st.integers(min_value=0, max_value=2**32)))
    # When the record is answered
    try:
        outcome = answer(content, max_new_tokens, options, budget, TOK, endpoint)
    except BudgetExceeded as error:
        # Then either it was refused (allowed outcome) ...
        event(f"rejected: {error.reason}")
        return
    event(f"{type(content).__name__} answered with {outcome.strategy}, {(outcome.calls > 1 and 'several calls') or 'one call'}")
    # ... or every call passed both TGI checks, counted independently on the exact inputs
    assert endpoint.calls, "an answered record made at least one call"
    for call in endpoint.calls:
        count = TOK.count(call.inputs)
        assert call.inputs, "TGI rejects empty inputs"
        assert count == call.input_tokens
        assert count <= budget.max_input_length
        assert call.max_new_tokens >= 1 and count + call.max_new_tokens <= budget.max_total_tokens
    # And the outcome accounts for exactly those calls
    assert outcome.calls == len(endpoint.calls)
    assert outcome.input_tokens == sum(c.input_tokens for c in endpoint.calls)
    assert outcome.max_new_tokens <= max_new_tokens
