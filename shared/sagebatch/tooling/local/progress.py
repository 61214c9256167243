"""`sagebatch run`'s live progress line on a terminal: records done / failed / total, output tokens/s, requests in
flight, the limiter's current limit, and an ETA. Quiet when output is not a terminal (scripts, CI, tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from sagebatch.tooling.local.session import LocalRun

REFRESH_S = 0.5


def progress_line(
    done: int, failed: int, total: int | None, output_tokens: int, elapsed_s: float, in_flight: int, limit: float | None
) -> str:
    """One line of progress (pure, for the display and its test)."""
    rate = output_tokens / elapsed_s if elapsed_s > 0 else 0.0
    if total:
        eta = f"{(total - done) * elapsed_s / done:,.0f} s" if done else "?"
        head = f"{done:,}/{total:,} records ({failed:,} failed)"
    else:
        eta, head = "?", f"{done:,} records ({failed:,} failed), counting lines"
    limit_text = f"{limit:.0f}" if limit is not None else "-"
    return f"{head} · {rate:,.0f} output tok/s · {in_flight} in flight · limit {limit_text} · ETA {eta}"


def _limit() -> float | None:
    """The worker environments' limits together (None before the first worker invocation)."""
    from sagebatch.lambdas import service

    callers = service.endpoint_caller.built()
    return float(sum(caller.caller.limiter.limit for caller in callers)) if callers else None


@contextmanager
def live_progress(run: LocalRun, job_id: str, console: Console | None = None) -> Iterator[None]:
    """Show the job's progress while the block runs, on a terminal only."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield
        return
    stop = threading.Event()
    started = time.monotonic()

    def render() -> Text:
        job: Any = run.jobs.get_job(job_id)
        stats = run.stack.emulator_server.emulator.stats
        if job is None:
            return Text("starting…")
        done = job.succeeded + job.failed + job.cancelled + job.expired
        return Text(
            progress_line(
                done, job.failed, job.total_records, job.output_tokens, time.monotonic() - started, stats.in_flight, _limit()
            )
        )

    with Live(render(), console=console, refresh_per_second=4, transient=True) as live:

        def update() -> None:
            while not stop.wait(REFRESH_S):
                try:
                    live.update(render())
                except Exception:  # a display hiccup never stops the run
                    continue

        thread = threading.Thread(target=update, name="progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=2)
