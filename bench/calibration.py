"""Calibration benchmark: replay the published JumpStart table against the TGI 1.1 emulator.

Usage (from the repo root)::

    PYTHONPATH=shared .venv/bin/python bench/calibration.py            # in-process, ~30 s
    PYTHONPATH=shared .venv/bin/python bench/calibration.py --check    # exit 1 if a row is off by > 15%
    PYTHONPATH=shared .venv/bin/python bench/calibration.py --http http://127.0.0.1:8080 --http-time-scale 50
    PYTHONPATH=shared .venv/bin/python bench/calibration.py --http local --words 128 --concurrency 1,8,32

Client (performance-model.md section 1.1 and 4): for each prompt size (128 / 512 / 6,400 words, i.e.
129 / 513 / 6,401 input tokens, 128 output tokens) and each concurrency c, the client issues 3*c requests,
all client threads starting together at t = 0. Reported throughput = sum of output tokens / test duration,
latency = p50 of (end-to-end latency / output tokens), both in model time.

"Benchmark-client mode": the seed's client only had about 70% of its threads in flight, so the bench runs
B_eff = eta*(c-1)+1 (eta = 0.70) effective clients: floor(B_eff) threads with zero think time plus, for
the fractional part f, one thread with duty factor f (after each call it thinks for latency*(1-f)/f).
They share the pool of 3*c requests. ``--eta 1`` gives the raw burst client (c threads, zero think).

The seed client stopped a probe at its first exception; this bench keeps going and counts timeouts, and
additionally runs a raw-burst timeout probe for 6,400 words (eta = 1, c threads at t = 0), which is the
load that the reference's discrete-event model used for its timeout counts.
"""

from __future__ import annotations

import os
import sys

# bench/ holds tokenize.py, named like the standard library module; running a script from bench/ puts the folder
# first on sys.path, where it would shadow `tokenize` for everything imported below (dataclasses -> inspect).
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

import argparse
import json
import math
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sagebatch.tooling.emulator.perf import ContainerTimeout, Overloaded, PerfParams, TgiScheduler

PHRASE = "I believe the meaning of life is to "
NEW_TOKENS = 128
WORDS = (128, 512, 6400)
CONCURRENCY = (1, 2, 4, 8, 16, 32, 64, 128)

# Seed table (shared/data/seed-throughput.csv; AWS blog, Mistral 7B Instruct on ml.g5.2xlarge, TGI 1.1).
# words -> c -> (throughput tok/s, p50 ms/token); None = the run hit the 60 s timeout.
SEED: dict[int, dict[int, tuple[float, float] | None]] = {
    128: {1: (30, 32), 2: (54, 33), 4: (89, 34), 8: (166, 36), 16: (287, 41), 32: (499, 46), 64: (793, 59), 128: (1030, 88)},
    512: {1: (29, 34), 2: (50, 36), 4: (80, 39), 8: (140, 43), 16: (210, 54), 32: (315, 71), 64: (383, 112), 128: (458, 213)},
    6400: {1: (17, 57), 2: (25, 71), 4: (30, 98), 8: (35, 154), 16: None, 32: None, 64: None, 128: None},
}
# Reference DES, raw burst at 6,400 words: timeouts per run (performance-model.md section 5).
REF_BURST_TIMEOUTS = {4: "0", 8: "0", 12: "0.2", 16: "2.6", 32: "64-70"}

TOLERANCE = 0.15
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "calibration.txt"


def input_tokens(words: int) -> int:
    """The payload is the 8-word phrase repeated words/8 times: ~1 token per word, plus BOS."""
    return words + 1


# ----------------------------------------------------------------------------- drivers


class Timeout(Exception):
    pass


class Rejected(Exception):
    pass


class InProcessDriver:
    """Calls the scheduler directly; all times are the scheduler's model time."""

    def __init__(self, time_scale: float, params: PerfParams) -> None:
        self.time_scale = time_scale
        self.params = params
        self.sched: TgiScheduler | None = None

    def start_probe(self) -> None:
        self.sched = TgiScheduler(self.params, time_scale=self.time_scale)

    def end_probe(self) -> None:
        assert self.sched is not None
        self.sched.close()
        self.sched = None

    def now_ms(self) -> float:
        assert self.sched is not None
        return self.sched.now_ms()

    def think(self, model_ms: float) -> None:
        time.sleep(model_ms / 1000.0 / self.time_scale)

    def call(self, words: int) -> tuple[float, int]:
        assert self.sched is not None
        try:
            permit = self.sched.admit()
        except Overloaded as exc:
            raise Rejected(str(exc)) from exc
        try:
            t = self.sched.generate(permit, input_tokens(words), NEW_TOKENS)
        except ContainerTimeout as exc:
            raise Timeout(str(exc)) from exc
        return t.total_ms, t.generated_tokens


class HttpDriver:
    """Calls an emulator endpoint through sagemaker-runtime InvokeEndpoint (boto3, dummy credentials).

    Wall-clock latencies are converted to model time with the server's ``--http-time-scale``, so the
    host's HTTP overhead is magnified by that scale, and output lengths are whatever the server's
    deterministic text produces: use this mode as an integration check, not for calibration.
    """

    def __init__(self, url: str, time_scale: float, endpoint: str) -> None:
        import boto3
        from botocore.config import Config

        self.time_scale = time_scale
        self.endpoint = endpoint
        self.client = boto3.client(
            "sagemaker-runtime",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(
                retries={"total_max_attempts": 1}, read_timeout=70 + 60 / time_scale, connect_timeout=5, max_pool_connections=256
            ),
        )
        self._t0 = time.monotonic()

    def start_probe(self) -> None:
        pass

    def end_probe(self) -> None:
        pass

    def now_ms(self) -> float:
        return (time.monotonic() - self._t0) * 1000.0 * self.time_scale

    def think(self, model_ms: float) -> None:
        time.sleep(model_ms / 1000.0 / self.time_scale)

    def call(self, words: int) -> tuple[float, int]:
        body = {
            "inputs": PHRASE * (words // 8),
            "parameters": {"max_new_tokens": NEW_TOKENS, "temperature": 99, "details": True, "return_full_text": False},
        }
        t0 = time.monotonic()
        try:
            resp = self.client.invoke_endpoint(EndpointName=self.endpoint, ContentType="application/json", Body=json.dumps(body))
        except self.client.exceptions.ModelError as exc:
            code = exc.response.get("OriginalStatusCode")
            if code == 429:
                raise Rejected(str(exc)) from exc
            raise Timeout(str(exc)) from exc
        raw = resp["Body"].read()
        latency = (time.monotonic() - t0) * 1000.0 * self.time_scale  # HTTP overhead is scaled too
        out = json.loads(raw)
        first = out[0] if isinstance(out, list) else out
        tokens = int((first.get("details") or {}).get("generated_tokens", NEW_TOKENS))
        return latency, tokens


# ----------------------------------------------------------------------------- one probe


@dataclass
class ProbeResult:
    words: int
    c: int
    b_eff: float
    tokens: int = 0
    duration_ms: float = 0.0
    latencies: list[float] = field(default_factory=list)  # ms per output token, successes only
    timeouts: int = 0
    rejected: int = 0

    @property
    def throughput(self) -> float | None:
        return self.tokens / (self.duration_ms / 1000.0) if self.tokens and self.duration_ms > 0 else None

    @property
    def p50(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None


def client_duties(b_eff: float, spread: str) -> list[float]:
    """Duty factors of the client threads that together keep ~b_eff requests in flight.

    ``split``: floor(b_eff) threads always in flight plus one thread with the fractional duty.
    ``uniform``: ceil(b_eff) threads, each in flight b_eff/ceil(b_eff) of the time.
    """
    if spread == "uniform":
        n = math.ceil(b_eff - 1e-9)
        return [b_eff / n] * n
    full = math.floor(b_eff + 1e-9)
    frac = b_eff - full
    return [1.0] * full + ([frac] if frac > 1e-6 else [])


def run_probe(driver, words: int, c: int, eta: float, spread: str = "split") -> ProbeResult:
    """c users, 3*c requests, run by B_eff = eta*(c-1)+1 effective clients that all start at t = 0."""
    b_eff = eta * (c - 1) + 1
    duties = client_duties(b_eff, spread)
    res = ProbeResult(words, c, b_eff)
    tickets = iter(range(3 * c))
    lock = threading.Lock()
    ends: list[float] = []
    driver.start_probe()
    gate = threading.Barrier(len(duties) + 1)

    def client(duty: float) -> None:
        gate.wait()
        while True:
            with lock:
                if next(tickets, None) is None:
                    return
            latency_ms = None
            try:
                latency_ms, tokens = driver.call(words)
            except Timeout:
                with lock:
                    res.timeouts += 1
            except Rejected:
                with lock:
                    res.rejected += 1
            else:
                end = driver.now_ms()
                with lock:
                    res.tokens += tokens
                    res.latencies.append(latency_ms / max(1, tokens))
                    ends.append(end)
            if duty < 0.999 and latency_ms is not None:
                driver.think(latency_ms * (1.0 - duty) / duty)

    threads = [threading.Thread(target=client, args=(d,), daemon=True) for d in duties]
    for t in threads:
        t.start()
    start = driver.now_ms()
    gate.wait()
    for t in threads:
        t.join()
    driver.end_probe()
    if ends:
        res.duration_ms = max(ends) - start
    return res


# ----------------------------------------------------------------------------- report


def pct(emulated: float | None, seed: float | None) -> float | None:
    if emulated is None or seed is None:
        return None
    return (emulated - seed) / seed * 100.0


def fmt(v: float | None, spec: str) -> str:
    if v is None:
        width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
        return "–".rjust(int(width or 0))
    return format(v, spec)


def table(results: list[ProbeResult]) -> tuple[list[str], list[float]]:
    head = (
        f"{'words':>5} {'c':>4} {'B_eff':>6} | {'seed tok/s':>10} {'emu tok/s':>9} {'Δ%':>6} | "
        f"{'seed ms/tok':>11} {'emu ms/tok':>10} {'Δ%':>6} | {'timeouts':>8}"
    )
    lines = [head, "-" * len(head)]
    errors: list[float] = []
    for r in results:
        seed = SEED.get(r.words, {}).get(r.c)
        s_thr, s_lat = seed if seed else (None, None)
        d_thr, d_lat = pct(r.throughput, s_thr), pct(r.p50, s_lat)
        errors += [abs(d) for d in (d_thr, d_lat) if d is not None]
        flag = ""
        if any(d is not None and abs(d) > TOLERANCE * 100 for d in (d_thr, d_lat)):
            flag = "  <-- off by > 15%"
        lines.append(
            f"{r.words:>5} {r.c:>4} {r.b_eff:>6.1f} | {fmt(s_thr, '10.0f')} {fmt(r.throughput, '9.0f')} "
            f"{fmt(d_thr, '+6.1f')} | {fmt(s_lat, '11.0f')} {fmt(r.p50, '10.1f')} {fmt(d_lat, '+6.1f')} | "
            f"{r.timeouts:>3}/{3 * r.c:<4}{flag}"
        )
    return lines, errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--time-scale", type=float, default=100.0, help="model seconds per wall second")
    ap.add_argument("--eta", type=float, default=0.70, help="benchmark-client duty factor (1 = raw burst)")
    ap.add_argument("--words", default=",".join(map(str, WORDS)))
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)))
    ap.add_argument(
        "--spread",
        choices=("split", "uniform"),
        default="split",
        help="how B_eff is spread over client threads (see client_duties)",
    )
    ap.add_argument("--burst-runs", type=int, default=3, help="runs per c of the 6,400-word raw-burst probe (0 = skip)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to save the table ('-' = don't)")
    ap.add_argument("--check", action="store_true", help="exit 1 if any seeded figure is off by more than 15%%")
    ap.add_argument(
        "--http", metavar="URL", help="drive an emulator endpoint over HTTP instead of in-process ('local' = start one here)"
    )
    ap.add_argument("--http-time-scale", type=float, default=50.0, help="time_scale the HTTP server runs at")
    ap.add_argument("--endpoint-name", default="mistral-7b-instruct")
    args = ap.parse_args(argv)

    sys.setswitchinterval(0.0005)  # quicker GIL hand-offs: less client jitter at a high time_scale
    params = PerfParams()
    server = None
    if args.http == "local":  # start sagebatch.tooling.emulator.server in-process, backed by a TgiScheduler
        try:
            from sagebatch.tooling.emulator.server import Emulator, EmulatorServer
        except ImportError as exc:
            print(f"--http local: sagebatch.tooling.emulator.server unavailable ({exc}); skipping", file=sys.stderr)
            return 0
        sched = TgiScheduler(params, time_scale=args.http_time_scale)
        server = EmulatorServer(Emulator(endpoint_name=args.endpoint_name, scheduler=sched)).start()
        args.http = server.url
    if args.http:
        try:
            driver = HttpDriver(args.http, args.http_time_scale, args.endpoint_name)
            driver.call(128)
        except Exception as exc:
            print(f"--http {args.http}: endpoint unavailable ({exc!r}); skipping", file=sys.stderr)
            return 0
        mode = f"HTTP {args.http} (server time_scale {args.http_time_scale:g})"
    else:
        driver = InProcessDriver(args.time_scale, params)
        mode = f"in-process TgiScheduler, time_scale {args.time_scale:g}"

    words_list = [int(w) for w in args.words.split(",")]
    conc_list = [int(c) for c in args.concurrency.split(",")]
    wall0 = time.monotonic()
    results = []
    for words in words_list:
        for c in conc_list:
            r = run_probe(driver, words, c, args.eta, args.spread)
            results.append(r)
            print(
                f"  {words} words c={c}: {fmt(r.throughput, '.0f')} tok/s, p50 {fmt(r.p50, '.1f')} ms/tok, {r.timeouts} timeouts",
                file=sys.stderr,
                flush=True,
            )

    lines = [
        "Emulator calibration against the published JumpStart table (Mistral 7B Instruct, TGI 1.1, ml.g5.2xlarge)",
        f"Driver: {mode}. Client: 3*c requests of 128 output tokens, benchmark-client mode "
        f"B_eff = {args.eta:g}*(c-1)+1. All figures in model time.",
        f"Parameters: {params}",
        "",
    ]
    tbl, errors = table(results)
    lines += tbl
    bad = [e for e in errors if e > TOLERANCE * 100]
    lines.append("")
    if errors:
        lines.append(
            f"Seeded figures compared: {len(errors)}; mean |Δ| {statistics.mean(errors):.1f}%, "
            f"max |Δ| {max(errors):.1f}%; {len(bad)} outside ±15%."
        )
    first_timeout = next((r.c for r in results if r.words == 6400 and r.timeouts), None)
    if 6400 in words_list:
        lines.append(
            f"6,400 words, benchmark-client mode: first timeouts at c = {first_timeout} (seed: '–' i.e. timeouts from c = 16)."
        )

    if args.burst_runs > 0 and 6400 in words_list:
        lines += [
            "",
            f"6,400-word raw-burst probe (eta = 1: c threads at t = 0, 3*c requests, zero think), {args.burst_runs} runs per c:",
            f"{'c':>4} | {'timeouts per run':>17} | {'mean':>5} | {'reference DES':>13} | {'longest success s':>17}",
        ]
        burst_first = None
        for c in (4, 8, 12, 16, 24, 32):
            runs = [run_probe(driver, 6400, c, 1.0) for _ in range(args.burst_runs)]
            counts = [r.timeouts for r in runs]
            longest = max((max(r.latencies) * NEW_TOKENS / 1000.0 for r in runs if r.latencies), default=None)
            if burst_first is None and any(counts):
                burst_first = c
            lines.append(
                f"{c:>4} | {' '.join(map(str, counts)):>17} | {statistics.mean(counts):>5.1f} | "
                f"{REF_BURST_TIMEOUTS.get(c, ''):>13} | {fmt(longest, '17.1f')}"
            )
        lines.append(f"Raw burst: first timeouts at c = {burst_first}.")

    if server is not None:
        server.stop()
    lines += ["", f"Wall time: {time.monotonic() - wall0:.0f} s on {mode}."]
    text = "\n".join(lines)
    print(text)
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
