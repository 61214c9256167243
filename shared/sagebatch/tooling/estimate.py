"""`sagebatch estimate`: calls, tokens, duration and cost of a file before anything runs (README "Cost").

1. **Plan** (exact): every line goes through the worker's own `RecordRunner` (format detection, validation,
   parameters, the fitting strategies, the real tokenizer) with an endpoint that answers at once with an
   *expected* output instead of calling anything. Calls, their input tokens and their `max_new_tokens` are the ones
   the pipeline would send; records that fail without a call (invalid, too long under `reject`) are counted apart.
2. **Output tokens** (an assumption): `max` (default) takes every call to its `max_new_tokens`, an upper bound (real
   prompts stop at EOS); `emulator` takes the mean of the local emulator's EOS length (12-96 words, then EOS; never
   EOS at temperature >= 10, as the seed's benchmark ran); a number N takes min(N, max_new_tokens) per call.
3. **Duration**: the fitted TGI model (performance-model.md 3.1, `tooling.emulator.perf_model`) integrated over the job
   as a fluid: calls enter the workers' record threads in input order, start when the limiter admits them (its
   slow start, its in-flight cap, its long-prompt bulkhead, from `LimiterSettings.for_endpoint` as the workers build
   it), each running call advances one token per decode round, a round costs a + B_run*(b + kv*ctx + t_pf/N) with
   B_run = min(running, KV capacity M / reserved tokens), and holds its slot N*T/(B_run/B) + ovh. No 429s, timeouts
   or retries are modelled (the limiter keeps the endpoint below them).
4. **Cost**: `endpoint_seconds` as the manifest defines it (each worker environment's slice of the endpoint, split among
   its calls: README "Cost") at the hourly price, plus the plumbing estimate of `domain.cost` from the predicted
   counts.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sagebatch.domain.budget import TokenBudget
from sagebatch.domain.cost import JobCounts, job_cost
from sagebatch.domain.encoding import UTF8_BOM
from sagebatch.domain.generation import Generation
from sagebatch.domain.parameters import Parameters
from sagebatch.domain.records import FitSettings
from sagebatch.domain.tokens import get_tokenizer
from sagebatch.endpoint.limiter import LimiterSettings
from sagebatch.ports import LineSpan
from sagebatch.settings import Settings
from sagebatch.tooling.emulator.perf_model import PerfParams, prefill_ms, reserved_tokens, windowed_context
from sagebatch.usecases.input_format import head_format
from sagebatch.usecases.intake import group_spans
from sagebatch.usecases.record_runner import RecordRunner

# The local emulator's natural answer length (tooling/emulator/tgi.py deterministic_completion): uniform words, + EOS.
EMULATOR_WORDS = (12, 96)
EMULATOR_NEVER_EOS_TEMPERATURE = 10.0
FILLER_WORD = "the"  # one token in the Mistral v1 vocabulary: an expected answer of N tokens is N of these

OutputTokens = Literal["max", "emulator"] | int


# -- 1. plan -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedCall:
    input_tokens: int
    max_new_tokens: int
    output_tokens: float  # expected


@dataclass
class Plan:
    records: int = 0
    shards: int = 0
    input_format: str = "native"
    calls: list[PlannedCall] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)  # error.type -> records that fail before any call

    @property
    def input_tokens(self) -> int:
        return sum(c.input_tokens for c in self.calls)

    @property
    def output_tokens(self) -> float:
        return sum(c.output_tokens for c in self.calls)


def expected_output(max_new_tokens: int, parameters: dict[str, Any], assumption: OutputTokens) -> float:
    """Expected generated tokens of one call under the `assumption` (module docstring, 2)."""
    if assumption == "max":
        return float(max_new_tokens)
    if assumption == "emulator":
        if (parameters.get("temperature") or 1.0) >= EMULATOR_NEVER_EOS_TEMPERATURE:
            return float(max_new_tokens)
        low, high = EMULATOR_WORDS
        return sum(min(words + 1, max_new_tokens) for words in range(low, high + 1)) / (high - low + 1)
    return float(min(int(assumption), max_new_tokens))


class _PlanningEndpoint:
    """An `EndpointCaller` that records each call and answers at once with an answer of the expected length."""

    def __init__(self, assumption: OutputTokens):
        self._assumption = assumption
        self._lock = threading.Lock()
        self.calls: list[PlannedCall] = []

    def invoke(self, payload: dict[str, Any], cost_tokens: int) -> Generation:
        parameters = payload.get("parameters") or {}
        max_new = int(parameters["max_new_tokens"])
        expected = expected_output(max_new, parameters, self._assumption)
        with self._lock:
            self.calls.append(PlannedCall(cost_tokens, max_new, expected))
        tokens = max(1, round(expected))
        return Generation(text=" ".join([FILLER_WORD] * tokens), generated_tokens=tokens,
                          finish_reason="length" if tokens >= max_new else "eos_token")


def split_lines(data: bytes) -> list[bytes]:
    """The file's lines as the workers read them (a UTF-8 BOM skipped, trailing CR dropped, no empty last piece)."""
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    pieces = data.split(b"\n")
    if data.endswith(b"\n") or not data:
        pieces.pop()
    return [piece.rstrip(b"\r") for piece in pieces]


def count_shards(data: bytes, settings: Settings) -> int:
    """Shards as intake cuts them (usecases.intake.group_spans over the lines' byte spans)."""
    spans, start = [], 0
    while start < len(data):
        newline = data.find(b"\n", start)
        end = len(data) if newline == -1 else newline + 1
        spans.append(LineSpan(start, end))
        start = end
    return sum(1 for _ in group_spans(iter(spans), settings.shard_records, settings.shard_bytes))


def plan_file(
    data: bytes, settings: Settings, parameters: Parameters | None = None, fit: FitSettings | None = None,
    assumption: OutputTokens = "max",
) -> Plan:
    """Every line of `data` through the worker's RecordRunner, without calling anything."""
    decided, _ = head_format(data, True, settings.max_line_bytes)
    input_format, format_line = (decided.format, decided.line) if decided else ("native", None)
    endpoint = _PlanningEndpoint(assumption)
    budget = TokenBudget(max_input_length=settings.max_input_length, max_total_tokens=settings.max_total_tokens)
    plan = Plan(shards=count_shards(data, settings), input_format=input_format)
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="estimate") as pool:
        runner = RecordRunner(endpoint, budget, get_tokenizer(), settings.default_max_new_tokens,
                              settings.max_line_bytes, pool)
        for line, raw in enumerate(split_lines(data), start=1):
            result = runner.run(line, raw, parameters or Parameters(), fit, input_format=input_format,
                                input_format_line=format_line)
            plan.records += 1
            if result.status == "failed" and result.calls == 0 and result.error is not None:
                plan.failed[result.error.type] = plan.failed.get(result.error.type, 0) + 1
    plan.calls = endpoint.calls
    return plan


# -- 2. the concurrency the workers reach --------------------------------------------------------------------------
@dataclass(frozen=True)
class Concurrency:
    """What the workers let into the endpoint at once (as service.endpoint_caller and the worker build them)."""

    environments: int  # worker execution environments with work
    threads: float  # record threads holding a record (waiting for a permit, or calling), all environments
    max_in_flight: int  # the limiters' count cap, all environments
    long_in_flight: int  # the long-prompt bulkhead, all environments
    initial_limit: float  # the limiters' starting limit (slow start doubles it each round trip), all environments
    long_prompt_tokens: int
    endpoint_slice: float  # each environment's share of the endpoint (its cap / EndpointMaxConcurrency)


def concurrency(settings: Settings, shards: int, local: bool) -> Concurrency:
    """`local`: `sagebatch run`, one process whose handlers share one caller and one record pool (shards overlap in it).
    Deployed: up to WorkerMaxConcurrency environments, each running one shard at a time on its record threads, so a
    shard's last wave leaves threads idle (r records on c threads: r / ceil(r / c) busy on average)."""
    per_env = LimiterSettings.for_endpoint(settings.endpoint_max_concurrency, margin=0,
                                           sharers=settings.worker_max_concurrency)
    slots = settings.calls_in_flight_per_worker  # the worker's record and call pools (lambdas/service.py)
    environments = 1 if local else max(1, min(settings.worker_max_concurrency, shards))
    if local:
        threads = float(slots)
    else:
        records = settings.shard_records
        threads = records / math.ceil(records / slots) if records < 4 * slots else float(slots)
    cap = min(settings.endpoint_max_concurrency, environments * per_env.max_inflight)
    return Concurrency(
        environments=environments,
        threads=min(float(cap), environments * min(threads, per_env.max_inflight)),
        max_in_flight=cap,
        long_in_flight=environments * (per_env.max_long_inflight or per_env.max_inflight),
        initial_limit=environments * per_env.initial_limit,
        long_prompt_tokens=per_env.long_prompt_tokens,
        endpoint_slice=min(1.0, per_env.max_inflight / settings.endpoint_max_concurrency),
    )


# -- 3. the fluid model --------------------------------------------------------------------------------------------
@dataclass
class _Class:
    """Calls alike enough to be one fluid: per-call means of what the round cost and KV reservation need."""

    calls: float
    output_tokens: float  # N, expected
    per_round_ms: float  # b + kv*ctx/1000 + t_pf/N: its share of each decode round (prefill amortised)
    reserved: float  # KV tokens held, R(n)
    long: bool


def _classes(calls: Sequence[PlannedCall], long_prompt_tokens: int, p: PerfParams, groups: int = 48) -> list[_Class]:
    """Calls grouped by (long?, input size quantile): exact sums of the per-call terms, so grouping loses little."""
    out: list[_Class] = []
    for long in (False, True):
        members = sorted((c for c in calls if (c.input_tokens > long_prompt_tokens) == long), key=lambda c: c.input_tokens)
        if not members:
            continue
        size = max(1, math.ceil(len(members) / groups))
        for start in range(0, len(members), size):
            chunk = members[start:start + size]
            rounds = [max(1.0, c.output_tokens) for c in chunk]
            per_round = [
                p.b_ms + p.kv_ms_per_1k * windowed_context(int(c.input_tokens + n / 2), p.window) / 1000.0
                + prefill_ms([c.input_tokens], p) / n
                for c, n in zip(chunk, rounds)
            ]
            out.append(_Class(
                calls=float(len(chunk)),
                output_tokens=sum(rounds) / len(chunk),
                # weighted by rounds: a call pays its per-round cost once per round it runs
                per_round_ms=sum(r * n for r, n in zip(per_round, rounds)) / sum(rounds),
                reserved=sum(reserved_tokens(c.input_tokens, c.max_new_tokens, p) for c in chunk) / len(chunk),
                long=long,
            ))
    return out


@dataclass(frozen=True)
class Prediction:
    duration_s: float  # first call start -> last call end (the endpoint busy with the job)
    endpoint_seconds: float  # the manifest's definition
    worker_seconds: float
    mean_running: float  # calls in flight at the endpoint, time-averaged
    output_tokens_per_s: float


def predict(calls: Sequence[PlannedCall], conc: Concurrency, instances: int = 1, p: PerfParams | None = None,
            steps: int = 6000) -> Prediction:
    """Integrate the fluid model over the job (module docstring, 3)."""
    p = p or PerfParams()
    classes = _classes(calls, conc.long_prompt_tokens, p)
    if not classes:
        return Prediction(0.0, 0.0, 0.0, 0.0, 0.0)
    queued = [k.calls for k in classes]  # not yet in a record thread
    waiting = [0.0 for _ in classes]  # in a thread, waiting for the limiter
    cohorts: list[list[list[float]]] = [[] for _ in classes]  # per class: [calls, remaining fraction of service]
    limit = max(1.0, min(conc.initial_limit, conc.max_in_flight))
    guess = _closed_form(classes, conc, instances, p)
    dt_floor = guess / steps
    now = busy_env_s = running_s = 0.0
    total = sum(queued)
    finished = 0.0
    while finished < total - 1e-6:
        # records enter free threads in input order (classes mixed as in the file)
        holding = sum(waiting) + sum(sum(c[0] for c in cs) for cs in cohorts)
        left = sum(queued)
        if left > 1e-9 and holding < conc.threads - 1e-9:
            entering = min(conc.threads - holding, left)
            for i, q in enumerate(queued):
                moved = entering * q / left
                queued[i] -= moved
                waiting[i] += moved
        # the limiter admits: the count cap and slow-start limit for all, the bulkhead for long prompts
        running = [sum(c[0] for c in cs) for cs in cohorts]
        room = max(0.0, min(limit, conc.max_in_flight) - sum(running))
        long_room = max(0.0, conc.long_in_flight - sum(r for r, k in zip(running, classes) if k.long))
        long_wants = sum(w for w, k in zip(waiting, classes) if k.long)
        long_scale = min(1.0, long_room / long_wants) if long_wants > 1e-12 else 1.0
        eligible = [w * (long_scale if k.long else 1.0) for w, k in zip(waiting, classes)]
        scale = min(1.0, room / sum(eligible)) if sum(eligible) > 1e-12 else 0.0
        for i, w in enumerate(eligible):
            started = w * scale
            if started > 1e-12:
                waiting[i] -= started
                cohorts[i].append([started, 1.0])
        running = [sum(c[0] for c in cs) for cs in cohorts]
        in_flight = sum(running)
        if in_flight <= 1e-12:  # nothing can run: only possible through rounding; let it through
            break
        # one endpoint round at this mix (per instance)
        kv = sum(r * k.reserved for r, k in zip(running, classes)) / instances
        share = min(1.0, p.max_batch_total_tokens / kv) if kv > 0 else 1.0  # B_run / B
        round_ms = p.a_ms + share * sum(r * k.per_round_ms for r, k in zip(running, classes)) / instances
        hold_ms = [k.output_tokens * round_ms / share + p.overhead_ms for k in classes]
        # step to the next cohort completion, at most a fortieth of the shortest hold, at least the floor
        to_next = min(c[1] * hold_ms[i] for i, cs in enumerate(cohorts) for c in cs) / 1000.0
        dt = max(min(to_next, min(hold_ms[i] for i, r in enumerate(running) if r > 0) / 40000.0), dt_floor, 1e-6)
        for i, cs in enumerate(cohorts):
            keep = []
            for cohort in cs:
                cohort[1] -= dt * 1000.0 / hold_ms[i]
                if cohort[1] <= 1e-9:
                    finished += cohort[0]
                    limit = min(conc.max_in_flight, limit + cohort[0])  # slow start: + one per success
                else:
                    keep.append(cohort)
            cohorts[i] = keep
        running_s += dt * in_flight
        busy_env_s += dt * min(conc.environments, max(1.0, conc.environments * (in_flight + sum(waiting)) / conc.threads))
        now += dt
    endpoint_seconds = busy_env_s * conc.endpoint_slice
    return Prediction(duration_s=now, endpoint_seconds=endpoint_seconds, worker_seconds=busy_env_s,
                      mean_running=running_s / now if now else 0.0,
                      output_tokens_per_s=sum(k.calls * k.output_tokens for k in classes) / now if now else 0.0)


def _closed_form(classes: Sequence[_Class], conc: Concurrency, instances: int, p: PerfParams) -> float:
    """Section 3.1 at full concurrency for the whole job's mix: a first guess, for the step size."""
    total = sum(k.calls for k in classes)
    b = min(conc.threads, conc.max_in_flight, total)
    mix = [k.calls / total for k in classes]
    kv = b * sum(f * k.reserved for f, k in zip(mix, classes)) / instances
    share = min(1.0, p.max_batch_total_tokens / kv) if kv > 0 else 1.0
    round_ms = p.a_ms + share * b * sum(f * k.per_round_ms for f, k in zip(mix, classes)) / instances
    hold_s = sum(f * (k.output_tokens * round_ms / share + p.overhead_ms) for f, k in zip(mix, classes)) / 1000.0
    return max(hold_s, total * hold_s / b)


# -- 4. all of it --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    records: int
    shards: int
    input_format: str
    failed_without_call: dict[str, int]
    endpoint_calls: int
    input_tokens: int
    output_tokens: float
    output_assumption: str
    environments: int
    max_in_flight: int
    long_in_flight: int
    endpoint_instances: int
    duration_s: float
    mean_in_flight: float
    output_tokens_per_s: float
    endpoint_seconds: float
    worker_seconds: float
    cost: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        for name in ("output_tokens", "duration_s", "mean_in_flight", "output_tokens_per_s", "endpoint_seconds",
                     "worker_seconds"):
            values[name] = round(values[name], 3)
        return values


def estimate(
    data: bytes, settings: Settings, parameters: Parameters | None = None, fit: FitSettings | None = None,
    assumption: OutputTokens = "max", instances: int = 1, local: bool = False, instance_hourly_price: float | None = None,
) -> Estimate:
    if instances < 1:
        raise ValueError("an endpoint has at least one instance")
    plan = plan_file(data, settings, parameters, fit, assumption)
    conc = concurrency(settings, plan.shards, local)
    prediction = predict(plan.calls, conc, instances)
    hourly = (settings.endpoint_hourly_price if instance_hourly_price is None else instance_hourly_price) * instances
    counts = JobCounts(records=plan.records, shards=plan.shards, endpoint_calls=len(plan.calls),
                       output_tokens=plan.output_tokens, worker_seconds=prediction.worker_seconds)
    return Estimate(
        records=plan.records, shards=plan.shards, input_format=plan.input_format, failed_without_call=plan.failed,
        endpoint_calls=len(plan.calls), input_tokens=plan.input_tokens, output_tokens=plan.output_tokens,
        output_assumption=str(assumption), environments=conc.environments, max_in_flight=conc.max_in_flight,
        long_in_flight=conc.long_in_flight, endpoint_instances=instances, duration_s=prediction.duration_s,
        mean_in_flight=prediction.mean_running, output_tokens_per_s=prediction.output_tokens_per_s,
        endpoint_seconds=prediction.endpoint_seconds, worker_seconds=prediction.worker_seconds,
        cost=job_cost(prediction.endpoint_seconds, counts, hourly),
    )
