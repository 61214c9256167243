"""Answering records whose prompt does not fit the endpoint's token budget.

``answer`` turns one record into endpoint calls, each checked against the TGI
length rule with the real tokenizer on the exact ``inputs`` string sent, and
combines the results. The endpoint itself is behind ``generate`` (supplied by
the worker), which runs a batch of independent calls concurrently; everything
here is pure and synchronous. See docs/fitting.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sagebatch.domain.budget import BudgetExceeded, TokenBudget
from sagebatch.domain.generation import Generation
from sagebatch.domain.prompt import (
    Message,
    PromptFormatError,
    fold_system,
    render_prompt,
    render_turns,
    split_system,
    user_turn,
)
from sagebatch.domain.records import ChatRecord, DocumentRecord, FitSettings, PromptRecord, RawRecord, Strategy
from sagebatch.domain.tokens import MistralTokenizer, TokenSpans, get_tokenizer

# Record shapes: fitting works on the input record models themselves.
Content = PromptRecord | ChatRecord | RawRecord | DocumentRecord


# Which strategies make sense for which shape. Chats cannot be split (a piece of
# a conversation is not a question); raw inputs have no known structure, so only
# a TGI-style left truncation or a rejection is safe.
_TEXT_STRATEGIES = frozenset({Strategy.TRUNCATE, Strategy.SPLIT, Strategy.MAP_REDUCE, Strategy.REJECT})
SUPPORTED: dict[type, frozenset[Strategy]] = {
    PromptRecord: _TEXT_STRATEGIES,
    DocumentRecord: _TEXT_STRATEGIES,
    ChatRecord: frozenset({Strategy.WINDOW, Strategy.REJECT}),
    RawRecord: frozenset({Strategy.TRUNCATE, Strategy.REJECT}),
}

_DEFAULTS: dict[type, Strategy] = {
    # The instruction is about the whole document: answer every part, then merge.
    DocumentRecord: Strategy.MAP_REDUCE,
    # Recent turns matter most; the system prompt carries the behaviour.
    ChatRecord: Strategy.WINDOW,
    # Question and material are mixed in one text: splitting would send pieces
    # without the question, so keep the head (where instructions usually are).
    PromptRecord: Strategy.TRUNCATE,
    # Pre-templated by the caller: cutting could drop "[INST]" or a turn, so
    # refuse rather than guess.
    RawRecord: Strategy.REJECT,
}


class UnsupportedStrategy(ValueError):
    """The chosen strategy cannot be applied to this content shape."""


def default_strategy(content: Content) -> Strategy:
    return _DEFAULTS[type(content)]


# --------------------------------------------------------------------------
# Calls and outcome


@dataclass(frozen=True)
class Call:
    """One endpoint request; ``input_tokens`` is TGI's count of ``inputs``."""

    inputs: str
    input_tokens: int
    max_new_tokens: int


# Runs the calls concurrently and returns their results in the same order, or
# raises if any call fails.
Generate = Callable[[Sequence[Call]], Sequence[Generation]]


@dataclass(frozen=True)
class FitOutcome:
    output: str
    finish_reason: str
    input_tokens: int  # summed over all calls
    output_tokens: int  # summed over all calls
    strategy: Strategy | None  # None: the record fitted as is
    chunks: int
    truncated: bool
    max_new_tokens: int  # as sent (final call for map_reduce)
    max_new_tokens_lowered: bool
    calls: int
    chunk_outputs: list[str] | None = None
    dropped_messages: int = 0  # window: messages left out of the conversation


# --------------------------------------------------------------------------
# Public entry point


def answer(
    content: Content,
    max_new_tokens: int,
    options: FitSettings | None = None,
    budget: TokenBudget | None = None,
    tokenizer: MistralTokenizer | None = None,
    generate: Generate | None = None,
) -> FitOutcome:
    """Answer one record within the budget, or raise ``BudgetExceeded``.

    Also raises ``PromptFormatError`` for a malformed chat or empty raw input,
    ``UnsupportedStrategy`` for a strategy that does not apply to the shape
    (checked up front so a misconfigured job fails on every record alike).
    """
    if generate is None:
        raise TypeError("answer() needs a generate callable")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    options = options or FitSettings()
    strategy = options.strategy or default_strategy(content)
    if strategy not in SUPPORTED[type(content)]:
        raise UnsupportedStrategy(
            f"strategy {strategy.value!r} does not apply to {content.kind} content; "
            f"use one of {sorted(s.value for s in SUPPORTED[type(content)])}"
        )
    run = _Run(budget or TokenBudget(), tokenizer or get_tokenizer(), options, generate)
    return run.answer(content, max_new_tokens, strategy)


# --------------------------------------------------------------------------
# Templates for document parts

# Smallest slice of document worth a call (see _Run.capacity).
MIN_CONTENT_TOKENS = 32
# Room kept per partial answer for its "Partial answer N:" label and separator.
_LABEL_TOKENS = 12
_SEPARATOR = "\n\n"
_REDUCE_NOTE = (
    "The text above was too long to read at once, so it was split into parts and "
    "the request was answered for each part separately. Combine the partial answers "
    "below into one answer to the request. Do not mention the parts."
)
_REDUCE_NOTE_NO_REQUEST = (
    "A request was too long to read at once, so it was split into parts and each part "
    "was answered separately. Combine the partial answers below into one answer. "
    "Do not mention the parts."
)


def _join(*parts: str) -> str:
    return _SEPARATOR.join(p for p in parts if p)


@dataclass(frozen=True)
class _Frame:
    """How a piece of the "document part" of a record becomes a request.

    Plain prompts have no instruction: the whole text is the part. Documents keep
    the instruction whole and only the document is cut.
    """

    instruction: str | None
    system: str | None

    def render(self, part: str, strip: bool = True) -> str:
        # Chunk edges are arbitrary, so whitespace around a piece only costs
        # tokens; a record sent whole keeps its text exactly.
        user = _join(self.instruction or "", part.strip() if strip else part)
        return render_prompt(user, self.system)

    def render_reduce(self, partials: Sequence[str]) -> str:
        blocks = _join(*(_label(i, text) for i, text in enumerate(partials)))
        note = _REDUCE_NOTE if self.instruction else _REDUCE_NOTE_NO_REQUEST
        return render_prompt(_join(self.instruction or "", note, blocks), self.system)


def _label(index: int, text: str) -> str:
    return f"Partial answer {index + 1}:\n{text.strip()}"


def _frame_of(content: PromptRecord | DocumentRecord) -> tuple[_Frame, str]:
    if isinstance(content, DocumentRecord):
        return _Frame(content.instruction, content.system), content.document
    return _Frame(None, None), content.prompt


# --------------------------------------------------------------------------
# The work for one record


class _Run:
    def __init__(self, budget: TokenBudget, tokenizer: MistralTokenizer, options: FitSettings, generate: Generate) -> None:
        self.budget = budget
        self.tok = tokenizer
        self.options = options
        self._generate = generate
        self.sent: list[Call] = []
        self.received: list[Generation] = []

    # -- calls -------------------------------------------------------------

    def call(self, inputs: str, max_new_tokens: int, min_new_tokens: int | None = None) -> Call | None:
        """A call for ``inputs`` that TGI will accept, or None.

        ``max_new_tokens`` may be lowered down to ``min_new_tokens`` (default:
        not at all). The count is of the exact string sent, never of pieces.
        """
        if self.tok.min_tokens(inputs) > self.budget.max_input_length:
            return None  # far too long: skip tokenizing megabytes
        count = self.tok.count(inputs)
        floor = max_new_tokens if min_new_tokens is None else min_new_tokens
        try:
            new_tokens = self.budget.fit_new_tokens(count, max_new_tokens, floor)
        except BudgetExceeded:
            return None
        return Call(inputs, count, new_tokens)

    def generate(self, calls: Sequence[Call]) -> list[Generation]:
        for c in calls:
            # Construction guarantees this; the check keeps a bug from reaching TGI as a 422.
            if not self.budget.fits(c.input_tokens, c.max_new_tokens):
                raise RuntimeError(f"internal error: call over budget ({c.input_tokens} + {c.max_new_tokens})")
        results = list(self._generate(list(calls)))
        if len(results) != len(calls):
            raise RuntimeError(f"generate returned {len(results)} results for {len(calls)} calls")
        self.sent.extend(calls)
        self.received.extend(results)
        return results

    def outcome(
        self, output: str, finish_reason: str, strategy: Strategy | None, requested: int, sent: int, **extra: Any
    ) -> FitOutcome:
        return FitOutcome(
            output=output,
            finish_reason=finish_reason,
            input_tokens=sum(c.input_tokens for c in self.sent),
            output_tokens=sum(r.generated_tokens for r in self.received),
            strategy=strategy,
            chunks=extra.pop("chunks", 1),
            truncated=extra.pop("truncated", False),
            max_new_tokens=sent,
            max_new_tokens_lowered=sent < requested,
            calls=len(self.sent),
            **extra,
        )

    def target_new_tokens(self, max_new_tokens: int) -> int:
        """New tokens per call once the input has to shrink.

        Capped at half the context so the input keeps at least the other half;
        a strategy that is left a sliver of input would only produce noise.
        """
        return min(max_new_tokens, self.budget.max_total_tokens // 2)

    # -- dispatch ----------------------------------------------------------

    def answer(self, content: Content, max_new_tokens: int, strategy: Strategy) -> FitOutcome:
        whole = self.render_whole(content)
        call = self.call(whole, max_new_tokens, self.options.min_new_tokens)
        if call is not None:
            (result,) = self.generate([call])
            return self.outcome(result.text, result.finish_reason, None, max_new_tokens, call.max_new_tokens)
        if strategy is Strategy.REJECT:
            raise BudgetExceeded(self.tok.count(whole), max_new_tokens, self.budget, reason="record does not fit")
        if isinstance(content, RawRecord):
            return self.truncate_raw(content.inputs, max_new_tokens)
        if isinstance(content, ChatRecord):
            return self.window(content.messages, max_new_tokens)
        frame, part = _frame_of(content)
        if strategy is Strategy.TRUNCATE:
            return self.truncate(frame, part, max_new_tokens)
        if strategy is Strategy.SPLIT:
            return self.split(frame, part, max_new_tokens)
        return self.map_reduce(frame, part, max_new_tokens)

    @staticmethod
    def render_whole(content: Content) -> str:
        if isinstance(content, RawRecord):
            if not content.inputs:
                raise PromptFormatError("raw inputs are empty (TGI rejects empty `inputs`)")
            return content.inputs
        if isinstance(content, ChatRecord):
            system, turns = split_system(content.messages)
            return render_turns(system, turns)
        frame, part = _frame_of(content)
        return frame.render(part, strip=False)

    # -- cutting text by tokens -------------------------------------------

    def fit_piece(
        self,
        render: Callable[[str], str],
        spans: TokenSpans,
        start: int,
        stop: int,
        max_new_tokens: int,
        cut_from: Literal["head", "tail"] = "tail",
    ) -> tuple[Call, int, int]:
        """Render tokens [start, stop) and shrink from one end until the call fits.

        Token counts of a slice are an estimate of the count inside the template
        (protocol.md 9: joining text can merge or split pieces), so the rendered
        call is counted once and cut by the excess. The extra cut grows
        geometrically, so this ends after a few counts.
        """
        room = self.budget.room_for_input(max_new_tokens)
        extra = 0
        while stop > start:
            inputs = render(spans.text(start, stop))
            count = self.tok.count(inputs)
            if self.budget.fits(count, max_new_tokens):
                return Call(inputs, count, max_new_tokens), start, stop
            cut = count - room + extra
            extra = extra * 2 + 1
            if cut_from == "tail":
                stop = max(start, stop - cut)
            else:
                start = min(stop, start + cut)
        raise BudgetExceeded(
            self.tok.count(render("")),
            max_new_tokens,
            self.budget,
            reason="the fixed part of the request leaves no room for content",
        )

    def capacity(self, frame: _Frame, max_new_tokens: int) -> int:
        """Tokens of document part that fit beside the frame, or BudgetExceeded.

        A few dozen tokens of document per call would only buy many useless calls,
        so an instruction that leaves less than that is refused.
        """
        fixed = self.tok.count(frame.render("")) + (2 if frame.instruction else 0)
        capacity = self.budget.room_for_input(max_new_tokens) - fixed
        if capacity < MIN_CONTENT_TOKENS:
            raise BudgetExceeded(
                fixed,
                max_new_tokens,
                self.budget,
                reason=f"the instruction alone leaves fewer than {MIN_CONTENT_TOKENS} tokens for the document",
            )
        if self.options.chunk_tokens is not None:
            capacity = min(capacity, self.options.chunk_tokens)
        return capacity

    # -- strategies ------------------------------------------------------------

    def truncate(self, frame: _Frame, part: str, max_new_tokens: int) -> FitOutcome:
        new_tokens = self.target_new_tokens(max_new_tokens)
        capacity = self.capacity(frame, new_tokens)
        spans = self.tok.spans(part)
        n = len(spans)
        if self.options.keep == "head":
            call, _, _ = self.fit_piece(frame.render, spans, 0, min(n, capacity), new_tokens, cut_from="tail")
        else:
            call, _, _ = self.fit_piece(frame.render, spans, max(0, n - capacity), n, new_tokens, cut_from="head")
        (result,) = self.generate([call])
        return self.outcome(result.text, result.finish_reason, Strategy.TRUNCATE, max_new_tokens, new_tokens, truncated=True)

    def truncate_raw(self, inputs: str, max_new_tokens: int) -> FitOutcome:
        # Like TGI's own `truncate` parameter: keep the last tokens, because a
        # templated prompt ends with the turn to be answered.
        new_tokens = self.target_new_tokens(max_new_tokens)
        spans = self.tok.spans(inputs)
        room = self.budget.room_for_input(new_tokens) - 1  # BOS
        start = max(0, len(spans) - room)
        call, _, _ = self.fit_piece(lambda text: text, spans, start, len(spans), new_tokens, cut_from="head")
        (result,) = self.generate([call])
        return self.outcome(result.text, result.finish_reason, Strategy.TRUNCATE, max_new_tokens, new_tokens, truncated=True)

    def chunk_calls(self, frame: _Frame, part: str, max_new_tokens: int) -> list[Call]:
        """Cut the part into chunk calls at paragraph, sentence or token boundaries.

        One tokenization of the part, then index arithmetic; each chunk's call is
        counted once more (plus a rare shrink), so the cost is linear.
        """
        capacity = self.capacity(frame, max_new_tokens)
        spans = self.tok.spans(part)
        n = len(spans)
        # A chunk is at least half full before a natural boundary is preferred,
        # and overlap stays below that so every step moves forward.
        min_fill = max(1, capacity // 2)
        overlap = min(self.options.overlap_tokens, min_fill - 1)
        calls: list[Call] = []
        start = 0
        while start < n:
            stop = min(n, start + capacity)
            if stop < n:
                stop = _natural_cut(spans, start + min_fill, stop)
            call, start, stop = self.fit_piece(frame.render, spans, start, stop, max_new_tokens)
            if spans.text(start, stop).strip() or (not calls and stop >= n):
                calls.append(call)
            if stop >= n:
                break
            start = _word_start(spans, stop - overlap, start + 1) if overlap else stop
        return calls

    def split(self, frame: _Frame, part: str, max_new_tokens: int) -> FitOutcome:
        new_tokens = self.target_new_tokens(max_new_tokens)
        calls = self.chunk_calls(frame, part, new_tokens)
        results = self.generate(calls)
        outputs = [r.text for r in results]
        finish = "length" if any(r.finish_reason == "length" for r in results) else results[-1].finish_reason
        return self.outcome(
            _join(*(o.strip() for o in outputs)),
            finish,
            Strategy.SPLIT,
            max_new_tokens,
            new_tokens,
            chunks=len(calls),
            chunk_outputs=outputs,
        )

    def map_reduce(self, frame: _Frame, part: str, max_new_tokens: int) -> FitOutcome:
        final_new = self.target_new_tokens(max_new_tokens)
        final_room = self.budget.room_for_input(final_new) - self.tok.count(frame.render_reduce([]))
        # Partial answers are capped so that any two of them fit one combining
        # call: every reduce level then at least halves their number.
        map_new = min(final_new, final_room // 2 - 2 * _LABEL_TOKENS)
        if map_new < min(final_new, self.options.min_new_tokens):
            raise BudgetExceeded(
                self.tok.count(frame.render_reduce([])),
                final_new,
                self.budget,
                reason="the instruction leaves no room to combine partial answers",
            )
        calls = self.chunk_calls(frame, part, map_new)
        chunk_outputs = [r.text for r in self.generate(calls)]
        if len(calls) == 1:  # the part fitted in one chunk after all
            result = self.received[-1]
            return self.outcome(
                result.text,
                result.finish_reason,
                Strategy.MAP_REDUCE,
                max_new_tokens,
                map_new,
                chunks=1,
                chunk_outputs=chunk_outputs,
            )
        partials, truncated = list(chunk_outputs), False
        while True:
            final = self.call(frame.render_reduce(partials), final_new, self.options.min_new_tokens)
            if final is not None:
                (result,) = self.generate([final])
                return self.outcome(
                    result.text,
                    result.finish_reason,
                    Strategy.MAP_REDUCE,
                    max_new_tokens,
                    final.max_new_tokens,
                    chunks=len(calls),
                    truncated=truncated,
                    chunk_outputs=chunk_outputs,
                )
            groups, clipped = self.pack_partials(frame, partials, map_new)
            if len(groups) >= len(partials):  # cannot happen by the sizing above; never loop
                raise RuntimeError("map_reduce made no progress combining partial answers")
            truncated = truncated or clipped
            partials = [r.text for r in self.generate(groups)]

    def pack_partials(self, frame: _Frame, partials: list[str], max_new_tokens: int) -> tuple[list[Call], bool]:
        """Group partial answers into combining calls of at least two each."""
        room = self.budget.room_for_input(max_new_tokens) - self.tok.count(frame.render_reduce([]))
        per_block = room // 2 - _LABEL_TOKENS
        blocks: list[tuple[str, int]] = []
        clipped = False
        for text in partials:
            size = self.tok.count_after_newline(text) + _LABEL_TOKENS
            if size > per_block:  # only if the model outran its own max_new_tokens
                spans = self.tok.spans(text)
                text = spans.text(0, max(0, per_block - _LABEL_TOKENS))
                size, clipped = self.tok.count_after_newline(text) + _LABEL_TOKENS, True
            blocks.append((text, size))
        calls: list[Call] = []
        group: list[str] = []
        used = 0
        pending = list(reversed(blocks))
        while pending:
            text, size = pending[-1]
            if group and used + size > room:
                # _reduce_call may push blocks back on top of `pending`, in order.
                calls.append(self._reduce_call(frame, group, max_new_tokens, pending))
                group, used = [], 0
                continue
            pending.pop()
            group.append(text)
            used += size
        if group:
            calls.append(self._reduce_call(frame, group, max_new_tokens, pending))
        return calls, clipped

    def _reduce_call(self, frame: _Frame, group: list[str], max_new_tokens: int, pending: list[tuple[str, int]]) -> Call:
        # Sizes are additive estimates; if the rendered group is still too long,
        # move its last blocks back to the queue (a pair always fits by design).
        while True:
            call = self.call(frame.render_reduce(group), max_new_tokens)
            if call is not None:
                return call
            if len(group) == 1:
                raise BudgetExceeded(
                    self.tok.count(frame.render_reduce(group)),
                    max_new_tokens,
                    self.budget,
                    reason="a partial answer does not fit a combining call",
                )
            text = group.pop()
            pending.append((text, self.tok.count_after_newline(text) + _LABEL_TOKENS))

    def window(self, messages: Sequence[Message], max_new_tokens: int) -> FitOutcome:
        system, turns = split_system(messages)
        new_tokens = self.target_new_tokens(max_new_tokens)
        room = self.budget.room_for_input(new_tokens)
        # Exchanges (user turn + its answer + EOS) are separate TGI segments
        # after each "</s>", so their token counts simply add up.
        exchanges = [turns[i : i + 2] for i in range(0, len(turns), 2)]
        costs = [self.tok.count(render_turns(None, ex)) - 1 for ex in exchanges]
        after = [0] * (len(exchanges) + 1)
        for i in range(len(exchanges) - 1, -1, -1):
            after[i] = after[i + 1] + costs[i]
        for first in range(len(exchanges)):
            with_system = self.tok.count(render_turns(system, exchanges[first])) - 1
            if 1 + with_system + after[first + 1] > room:
                continue
            kept = [m for ex in exchanges[first:] for m in ex]
            call = self.call(render_turns(system, kept), new_tokens)
            if call is not None:
                (result,) = self.generate([call])
                return self.outcome(
                    result.text,
                    result.finish_reason,
                    Strategy.WINDOW,
                    max_new_tokens,
                    new_tokens,
                    dropped_messages=len(turns) - len(kept),
                )
        # Even system + last user turn is too long: cut that turn's content.
        last = turns[-1].content
        spans = self.tok.spans(last)
        render = lambda text: user_turn(fold_system(system, text))  # noqa: E731
        n = len(spans)
        if self.options.keep == "head":
            call, _, _ = self.fit_piece(render, spans, 0, n, new_tokens, cut_from="tail")
        else:
            call, _, _ = self.fit_piece(render, spans, 0, n, new_tokens, cut_from="head")
        (result,) = self.generate([call])
        return self.outcome(
            result.text,
            result.finish_reason,
            Strategy.WINDOW,
            max_new_tokens,
            new_tokens,
            truncated=True,
            dropped_messages=len(turns) - 1,
        )


# Boundaries, strongest first. Cutting right after the punctuation leaves the
# following space on the next token ("▁Word"), which is a clean token edge.
_PARAGRAPH_ENDS = (b"\n\n",)
_SENTENCE_ENDS = (b". ", b"? ", b"! ", b".\n", "。".encode(), "！".encode(), "？".encode(), b"\n")


def _natural_cut(spans: TokenSpans, lowest: int, stop: int) -> int:
    """Best token index in [lowest, stop] to end a chunk: paragraph, sentence, else stop."""
    low, high = spans.offset(lowest), spans.offset(stop)
    for ends in (_PARAGRAPH_ENDS, _SENTENCE_ENDS):
        best = -1
        for end in ends:
            at = spans.data.rfind(end, low, high)
            if at >= 0:
                # after "\n\n" / "\n" / CJK marks the cut follows the mark;
                # after ". " it falls before the space.
                cut = at + (len(end) if end.endswith(b"\n") or not end.endswith(b" ") else len(end) - 1)
                best = max(best, cut)
        if best > low:
            return min(stop, spans.index_at(best))
    return stop


def _word_start(spans: TokenSpans, index: int, lowest: int) -> int:
    """Nudge a chunk start back to the start of a word (a token starting with a space), if near."""
    index = max(index, lowest)
    for candidate in range(index, max(lowest, index - 8) - 1, -1):
        offset = spans.offset(candidate)
        if offset < len(spans.data) and spans.data[offset : offset + 1] in (b" ", b"\n"):
            return candidate
    return index
