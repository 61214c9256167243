"""`sagebatch estimate`: calls, tokens, duration and cost of a file before anything runs (README "Cost").

1. **Plan** (exact): every line goes through the worker's own `RecordRunner` (format detection, validation,
   parameters, the fitting strategies, the real tokenizer) with an endpoint that answers at once with an
   *expected* output instead of calling anything. Calls, their input tokens and their `max_new_tokens` are the ones
   the pipeline would send; records that fail without a call (invalid, too long under `reject`) are counted apart.
2. **Output tokens** (an assumption): `max` (default) takes every call to its `max_new_tokens`, an upper bound (real
   prompts stop at EOS); `emulator` takes the mean of the local emulator's EOS length (12-96 words, then EOS; never
   EOS at temperature >= 10, as the seed's benchmark ran); a number N takes min(N, max_new_tokens) per call.
3. **Duration**: the fitted TGI model (performance-model.md 3.1, `tooling.emulator.perf_model`) integrated over the job
   as a fluid (`predict`): calls start in file order when the limiters admit them, the limiters as the workers build
   them (`pipeline`: make_default_caller's store sized by SlotShare; slow start, count cap, weights, long-prompt
   bulkhead); a running call advances one token per decode round, a round costs a + B_run*(b + kv*ctx + t_pf/N)
   with B_run = min(running, what the KV capacity M holds), and the call holds its slot N*T*B/B_run + ovh. The
   workers keep their slots full while work is queued (self-feeding invocations), so shard boundaries are not
   modelled; nor are 429s, timeouts or retries (the limiters keep the endpoint below them). With several endpoint
   instances, the calls in flight spread evenly over them.
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

from sagebatch.domain import sharding
from sagebatch.domain.budget import TokenBudget
from sagebatch.domain.cost import JobCounts, job_cost
from sagebatch.domain.encoding import UTF8_BOM
from sagebatch.domain.generation import Generation
from sagebatch.domain.parameters import Parameters
from sagebatch.domain.records import FitSettings
from sagebatch.domain.time_budget import TimeBudget
from sagebatch.domain.tokens import get_tokenizer
from sagebatch.endpoint.caller import make_default_caller
from sagebatch.endpoint.limiter import InMemoryLimiterStore
from sagebatch.endpoint.share import SlotShare
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
    input_format: str = "native"
    calls: list[PlannedCall] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)  # error.type -> records that fail before any call
    line_calls: list[int] = field(default_factory=list)  # calls of each line
    shard_lines: list[int] = field(default_factory=list)  # lines of each shard, as intake cuts them

    @property
    def shards(self) -> int:
        return len(self.shard_lines)

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

    def invoke(self, payload: dict[str, Any], cost_tokens: int, budget: TimeBudget | None = None) -> Generation:
        parameters = payload.get("parameters") or {}
        max_new = int(parameters["max_new_tokens"])
        expected = expected_output(max_new, parameters, self._assumption)
        with self._lock:
            self.calls.append(PlannedCall(cost_tokens, max_new, expected))
        tokens = max(1, round(expected))
        return Generation(
            text=" ".join([FILLER_WORD] * tokens),
            generated_tokens=tokens,
            finish_reason="length" if tokens >= max_new else "eos_token",
        )


def split_lines(data: bytes) -> list[bytes]:
    """The file's lines as the workers read them (a UTF-8 BOM skipped, trailing CR dropped, no empty last piece)."""
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    pieces = data.split(b"\n")
    if data.endswith(b"\n") or not data:
        pieces.pop()
    return [piece.rstrip(b"\r") for piece in pieces]


def shard_lines(data: bytes, settings: Settings) -> list[int]:
    """Lines of each shard, as intake cuts them (usecases.intake.group_spans over the lines' byte spans)."""
    spans, start = [], 0
    while start < len(data):
        newline = data.find(b"\n", start)
        end = len(data) if newline == -1 else newline + 1
        spans.append(LineSpan(start, end))
        start = end
    max_lines = sharding.shard_lines(len(data), settings.shard_records)  # as intake sizes them by the input's bytes
    return [len(group) for group in group_spans(iter(spans), max_lines, settings.shard_bytes)]


def plan_file(
    data: bytes,
    settings: Settings,
    parameters: Parameters | None = None,
    fit: FitSettings | None = None,
    assumption: OutputTokens = "max",
) -> Plan:
    """Every line of `data` through the worker's RecordRunner, without calling anything."""
    decided, _ = head_format(data, True, settings.max_line_bytes)
    input_format, format_line = (decided.format, decided.line) if decided else ("native", None)
    endpoint = _PlanningEndpoint(assumption)
    budget = TokenBudget(max_input_length=settings.max_input_length, max_total_tokens=settings.max_total_tokens)
    plan = Plan(input_format=input_format, shard_lines=shard_lines(data, settings))
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="estimate") as pool:
        runner = RecordRunner(endpoint, budget, get_tokenizer(), settings.default_max_new_tokens, settings.max_line_bytes, pool)
        for line, raw in enumerate(split_lines(data), start=1):
            before = len(endpoint.calls)
            result = runner.run(
                line, raw, parameters or Parameters(), fit, input_format=input_format, input_format_line=format_line
            )
            plan.records += 1
            plan.line_calls.append(len(endpoint.calls) - before)
            if result.status == "failed" and result.calls == 0 and result.error is not None:
                plan.failed[result.error.type] = plan.failed.get(result.error.type, 0) + 1
    plan.calls = endpoint.calls
    return plan


# -- 2. how the workers feed the endpoint --------------------------------------------------------------------------
WORKER_BATCH_SHARDS = 10  # template.yaml WorkerFunction's SQS BatchSize: the shards the event source hands an invocation


@dataclass(frozen=True)
class Pipeline:
    """What the workers let into the endpoint at once, summed over the environments with work.

    Each worker execution environment sizes its limiter to its share of the endpoint (`SlotShare`: the endpoint's cap
    divided among the environments with work), and its invocation keeps that share full: its shards run together on
    one record pool and it takes more from the work queue while records are few (usecases/batch.py). So the endpoint
    sees the limiters' caps until the queue runs dry, then the job's last calls drain. Deployed, the event source
    starts an environment per batch of shards, up to WorkerMaxConcurrency, and so does `sagebatch run`.
    """

    environments: int
    max_in_flight: int  # the limiters' count caps
    long_in_flight: int  # their long-prompt bulkheads
    initial_limit: float  # their starting limits, in weight units (slow start: + a call's weight per success)
    max_limit: float  # their largest limits, in weight units
    token_unit: int  # prompt tokens per weight unit (a call weighs max(1, its input tokens / token_unit))
    long_prompt_tokens: int
    endpoint_slice: float  # each environment's share of the endpoint: its cap / EndpointMaxConcurrency

    def weight(self, input_tokens: float) -> float:
        return max(1.0, input_tokens / self.token_unit)


class _Registered:
    """An EnvironmentRegistry that always counts `environments` (to size a limiter as SlotShare does)."""

    def __init__(self, environments: int):
        self.environments = environments

    def heartbeat(self, environment: str, until: float, now: float, holding: int) -> dict[str, int]:
        # The others hold their fair share, as they do once settled.
        others = {f"other-{n}": holding for n in range(self.environments - 1)}
        return {environment: holding, **others}

    def leave(self, environment: str) -> None:
        return None


def pipeline(settings: Settings, shards: int, local: bool) -> Pipeline:
    # Deployed and local alike (the local stack plays the template's event sources): an environment per batch of
    # shards, up to WorkerMaxConcurrency.
    environments = max(1, min(settings.worker_max_concurrency, math.ceil(shards / WORKER_BATCH_SHARDS)))
    # The limiter as an environment builds it (lambdas/service.py), then sized by its SlotShare.
    caller = make_default_caller(
        None,
        settings.endpoint_name,
        endpoint_max_concurrency=settings.endpoint_max_concurrency,
        worker_max_concurrency=settings.worker_max_concurrency,
    )
    store = caller.limiter.store
    assert isinstance(store, InMemoryLimiterStore)
    clock = [0.0]
    share = SlotShare(_Registered(environments), store, settings.endpoint_max_concurrency, clock=lambda: clock[0])
    for _ in range(2):  # a newcomer first, then the settled share
        share.refresh()
        clock[0] += share.refresh_s
    limiter = store.settings
    return Pipeline(
        environments=environments,
        max_in_flight=environments * limiter.max_inflight,
        long_in_flight=environments * min(limiter.max_inflight, limiter.max_long_inflight or limiter.max_inflight),
        initial_limit=environments * store.snapshot().limit,
        max_limit=environments * limiter.max_limit,
        token_unit=limiter.token_unit,
        long_prompt_tokens=limiter.long_prompt_tokens,
        endpoint_slice=min(1.0, limiter.max_inflight / settings.endpoint_max_concurrency),
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
    weight: float  # in the limiter's units


def _classes(calls: Sequence[PlannedCall], pipe: Pipeline, p: PerfParams, groups: int = 12) -> list[_Class]:
    """Calls grouped by (long?, input size quantile), with exact means of the per-call terms."""
    out: list[_Class] = []
    for long in (False, True):
        members = sorted((c for c in calls if (c.input_tokens > pipe.long_prompt_tokens) == long), key=lambda c: c.input_tokens)
        size = max(1, math.ceil(len(members) / groups))
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            rounds = [max(1.0, c.output_tokens) for c in chunk]
            per_round = [
                p.b_ms
                + p.kv_ms_per_1k * windowed_context(int(c.input_tokens + n / 2), p.window) / 1000.0
                + prefill_ms([c.input_tokens], p) / n
                for c, n in zip(chunk, rounds)
            ]
            out.append(
                _Class(
                    calls=float(len(chunk)),
                    output_tokens=sum(rounds) / len(chunk),
                    per_round_ms=sum(r * n for r, n in zip(per_round, rounds)) / sum(rounds),  # paid once per round run
                    reserved=sum(reserved_tokens(c.input_tokens, c.max_new_tokens, p) for c in chunk) / len(chunk),
                    long=long,
                    weight=sum(pipe.weight(c.input_tokens) for c in chunk) / len(chunk),
                )
            )
    return out


@dataclass(frozen=True)
class Prediction:
    duration_s: float  # first call start -> last call end: the endpoint busy with the job
    endpoint_seconds: float  # the manifest's definition
    worker_seconds: float
    mean_in_flight: float  # calls at the endpoint, time-averaged
    output_tokens_per_s: float


def predict(
    calls: Sequence[PlannedCall], pipe: Pipeline, instances: int = 1, p: PerfParams | None = None, max_calls: int = 3000
) -> Prediction:
    """Integrate the fluid model over the job (module docstring, 3).

    A job of more than `max_calls` calls is simulated on `max_calls` of the same mix and extrapolated at the rate of
    their second half (the steady state); the ramp and the drain are simulated either way.
    """
    p = p or PerfParams()
    classes = _classes(calls, pipe, p)
    if not classes:
        return Prediction(0.0, 0.0, 0.0, 0.0, 0.0)
    total = sum(k.calls for k in classes)
    simulated = min(total, float(max(max_calls, 20 * pipe.max_in_flight)))
    queued = [k.calls * simulated / total for k in classes]  # not started: in input order, classes mixed as in the file
    waiting = [0.0 for _ in classes]  # long prompts parked by a full bulkhead
    cohorts: list[list[list[float]]] = [[] for _ in classes]  # per class: [calls, service left (1 -> 0)]
    limit = max(1.0, pipe.initial_limit)
    now = in_flight_s = 0.0
    done = 0.0
    half_at: float | None = None
    while done < simulated - 1e-6:
        # the limiters admit in order: the limit (weight units, slow start) and the count cap for all, the bulkhead
        # for long prompts (a call heavier than the limit runs alone)
        running = [sum(c[0] for c in cs) for cs in cohorts]
        left = sum(queued)
        if left > 1e-12:
            mean_weight = sum(q * c.weight for q, c in zip(queued, classes)) / left
            weight_room = limit - sum(r * c.weight for r, c in zip(running, classes))
            room = min(pipe.max_in_flight - sum(running), weight_room / mean_weight)
            if sum(running) <= 1e-12:
                room = max(room, 1.0)
            taken = min(max(0.0, room), left)
            for k, q in enumerate(queued):
                moved = taken * q / left
                queued[k] -= moved
                waiting[k] += moved
        long_room = max(0.0, pipe.long_in_flight - sum(r for r, c in zip(running, classes) if c.long))
        long_waiting = sum(w for w, c in zip(waiting, classes) if c.long)
        long_scale = min(1.0, long_room / long_waiting) if long_waiting > 1e-12 else 1.0
        for k, c in enumerate(classes):
            started = waiting[k] * (long_scale if c.long else 1.0)
            if started > 1e-12:
                waiting[k] -= started
                cohorts[k].append([started, 1.0])
        running = [sum(c[0] for c in cs) for cs in cohorts]
        in_flight = sum(running)
        if in_flight <= 1e-12:
            break  # only rounding is left
        # one decode round at this mix, on each instance
        kv = sum(r * c.reserved for r, c in zip(running, classes)) / instances
        share = min(1.0, p.max_batch_total_tokens / kv) if kv > 0 else 1.0  # B_run / B once KV binds
        round_ms = p.a_ms + share * sum(r * c.per_round_ms for r, c in zip(running, classes)) / instances
        hold_s = [(c.output_tokens * round_ms / share + p.overhead_ms) / 1000.0 for c in classes]
        shortest = min(hold_s[k] for k, r in enumerate(running) if r > 0)
        to_next = min(cohort[1] * hold_s[k] for k, cs in enumerate(cohorts) for cohort in cs)
        dt = max(min(to_next, shortest / 10.0), shortest / 50.0)
        for k, cs in enumerate(cohorts):
            kept = []
            for cohort in cs:
                cohort[1] -= dt / hold_s[k]
                if cohort[1] <= 1e-9:
                    done += cohort[0]
                    limit = min(pipe.max_limit, limit + cohort[0] * classes[k].weight)  # slow start: + weight per success
                else:
                    kept.append(cohort)
            cohorts[k] = kept
        in_flight_s += dt * in_flight
        now += dt
        if half_at is None and done >= simulated / 2:
            half_at = now
    if simulated < total and half_at is not None and now > half_at:
        extra = (total - simulated) * (now - half_at) / (simulated / 2)  # at the steady second half's rate
        in_flight_s += extra * in_flight_s / now
        now += extra
    # Every environment is busy while the job runs (each keeps its share full), so each slice accrues all along.
    worker_seconds = now * pipe.environments
    output = sum(c.output_tokens for c in calls)
    return Prediction(
        duration_s=now,
        endpoint_seconds=worker_seconds * pipe.endpoint_slice,
        worker_seconds=worker_seconds,
        mean_in_flight=in_flight_s / now if now else 0.0,
        output_tokens_per_s=output / now if now else 0.0,
    )


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
        for name in (
            "output_tokens",
            "duration_s",
            "mean_in_flight",
            "output_tokens_per_s",
            "endpoint_seconds",
            "worker_seconds",
        ):
            values[name] = round(values[name], 3)
        return values


def estimate(
    data: bytes,
    settings: Settings,
    parameters: Parameters | None = None,
    fit: FitSettings | None = None,
    assumption: OutputTokens = "max",
    instances: int = 1,
    local: bool = False,
    instance_hourly_price: float | None = None,
) -> Estimate:
    if instances < 1:
        raise ValueError("an endpoint has at least one instance")
    plan = plan_file(data, settings, parameters, fit, assumption)
    pipe = pipeline(settings, plan.shards, local)
    prediction = predict(plan.calls, pipe, instances)
    hourly = (settings.endpoint_hourly_price if instance_hourly_price is None else instance_hourly_price) * instances
    counts = JobCounts(
        records=plan.records,
        shards=plan.shards,
        endpoint_calls=len(plan.calls),
        output_tokens=plan.output_tokens,
        worker_seconds=prediction.worker_seconds,
    )
    return Estimate(
        records=plan.records,
        shards=plan.shards,
        input_format=plan.input_format,
        failed_without_call=plan.failed,
        endpoint_calls=len(plan.calls),
        input_tokens=plan.input_tokens,
        output_tokens=plan.output_tokens,
        output_assumption=str(assumption),
        environments=pipe.environments,
        max_in_flight=pipe.max_in_flight,
        long_in_flight=pipe.long_in_flight,
        endpoint_instances=instances,
        duration_s=prediction.duration_s,
        mean_in_flight=prediction.mean_in_flight,
        output_tokens_per_s=prediction.output_tokens_per_s,
        endpoint_seconds=prediction.endpoint_seconds,
        worker_seconds=prediction.worker_seconds,
        cost=job_cost(prediction.endpoint_seconds, counts, hourly),
    )
