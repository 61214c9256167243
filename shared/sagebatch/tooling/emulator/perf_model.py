"""Pure cost formulas for Mistral 7B Instruct on TGI 1.1.0, one A10G (ml.g5.2xlarge).

Source: shared/reference/performance-model.md, sections 2 and 3. Every function here is
side-effect free; the discrete-event scheduler in ``perf.py`` calls them once per step.

Units: milliseconds of model time (i.e. GPU time on the emulated endpoint), tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class PerfParams:
    """Fitted cost-model and TGI launcher parameters (performance-model.md section 3.2).

    ``window`` is Mistral v0.1's sliding window; ``None`` means no window (v0.2 and later).
    """

    a_ms: float = 32.2  # base decode step (weights read once per forward pass)
    b_ms: float = 0.099  # per running request, per decode step
    kv_ms_per_1k: float = 0.262  # per 1,000 context tokens (windowed) per decode step
    q0_ms: float = 9.9  # fixed cost of one prefill call
    p1_ms_per_token: float = 0.3708  # per prompt token in a prefill call
    p2_ms_per_mpairs: float = 17.9  # per 10^6 causal attention pairs in a prefill call
    window: int | None = 4096
    max_batch_total_tokens: int = 52_000  # M, KV capacity in tokens (assumed)
    max_batch_prefill_tokens: int = 8_191  # assumed JumpStart value
    waiting_served_ratio: float = 1.2
    max_waiting_tokens: int = 20
    overhead_ms: float = 26.9  # SageMaker + network, once per request
    block: int = 16  # paged-attention block size in tokens


def ceil_block(n: int, block: int = 16) -> int:
    """Round ``n`` tokens up to whole KV blocks (in tokens)."""
    return -(-n // block) * block


def attention_pairs(n: int, window: int | None) -> float:
    """Causal attention (query, key) pairs of an ``n``-token prefill, with an optional sliding window."""
    if window is None or n <= window:
        return n * n / 2.0
    return window * window / 2.0 + (n - window) * window


def decode_reservation(input_tokens: int, max_new_tokens: int, window: int | None) -> int:
    """max_new' of TGI 1.1 ``queue.rs``: with a sliding window W, min(W - input, max_new) (never negative)."""
    if window is None:
        return max_new_tokens
    return max(0, min(window - input_tokens, max_new_tokens))


def reserved_tokens(input_tokens: int, max_new_tokens: int, p: PerfParams) -> int:
    """R(n) = ceil16(n) + ceil16(max(0, min(W - n, N))): KV tokens a request holds for its whole life."""
    return ceil_block(input_tokens, p.block) + ceil_block(decode_reservation(input_tokens, max_new_tokens, p.window), p.block)


def windowed_context(ctx: int, window: int | None) -> int:
    """Context tokens a decode step actually reads for one request."""
    return ctx if window is None else min(ctx, window)


def prefill_ms(input_lengths: Iterable[int], p: PerfParams) -> float:
    """t_pf = q0 + p1 * sum(n) + p2 * sum(pairs(n)) / 1e6 for one prefill call over a set of requests."""
    total = 0
    pairs = 0.0
    for n in input_lengths:
        total += n
        pairs += attention_pairs(n, p.window)
    return p.q0_ms + p.p1_ms_per_token * total + p.p2_ms_per_mpairs * pairs / 1e6


def decode_ms(batch_size: int, windowed_context_sum: int, p: PerfParams) -> float:
    """t_dec = a + b * B + kv * sum(min(ctx_i, W)) / 1000 for one decode round of the running batch."""
    return p.a_ms + p.b_ms * batch_size + p.kv_ms_per_1k * windowed_context_sum / 1000.0


def max_batch_size(input_tokens: int, max_new_tokens: int, p: PerfParams) -> int:
    """Bmax = floor(M / R(n)) for identical requests."""
    return p.max_batch_total_tokens // reserved_tokens(input_tokens, max_new_tokens, p)


@dataclass(frozen=True)
class FluidPoint:
    """Mean-value (fluid) prediction for B identical requests in flight (section 3.1)."""

    in_flight: float
    running: float
    step_ms: float
    throughput_tok_s: float
    ms_per_token: float


def fluid_point(input_tokens: int, new_tokens: int, in_flight: float, p: PerfParams) -> FluidPoint:
    """Closed-form steady state: prefills amortised over ``new_tokens``, queueing once KV binds."""
    b_run = min(in_flight, float(max_batch_size(input_tokens, new_tokens, p)))
    ctx = windowed_context(int(input_tokens + new_tokens / 2), p.window)
    per_req = p.b_ms + p.kv_ms_per_1k * ctx / 1000.0 + prefill_ms([input_tokens], p) / new_tokens
    step = p.a_ms + b_run * per_req
    return FluidPoint(
        in_flight=in_flight,
        running=b_run,
        step_ms=step,
        throughput_tok_s=1000.0 * b_run / step,
        ms_per_token=step * in_flight / b_run + p.overhead_ms / new_tokens,
    )
