"""How the job commands show a job: the status table, the list of jobs, and `watch`'s live progress (rich).

Everything shown is ids, counts, tokens and times, never record content.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from sagebatch.domain.job import Job, JobStatus
from sagebatch.domain.manifest import iso_time
from sagebatch.tooling.cli_args import describe_duration

_PIPED_WIDTH = 240
_STYLES = {
    JobStatus.COMPLETED: "green",
    JobStatus.FAILED: "red",
    JobStatus.CANCELLED: "yellow",
    JobStatus.EXPIRED: "yellow",
    JobStatus.RUNNING: "cyan",
    JobStatus.CREATING: "cyan",
    JobStatus.FINALIZING: "cyan",
}


def stdout_console() -> Console:
    """The console for a command's output: the terminal's width, or wide lines when piped (no folded ids)."""
    console = Console()
    return console if console.is_terminal else Console(width=_PIPED_WIDTH)


def _iso(timestamp: float | None) -> str | None:
    return iso_time(timestamp, "seconds")


def status_text(status: JobStatus) -> Text:
    return Text(str(status), style=_STYLES.get(status, ""))


def job_rows(job: Job, results_uri: str | None = None) -> list[tuple[str, str]]:
    """The job's fields as (label, value) rows, in the order `sagebatch status` shows them."""
    total = job.total_records if job.total_records is not None else "?"
    rows = [
        ("input", job.source or "-"),
        (
            "records",
            f"{total} total, {job.succeeded} succeeded, {job.failed} failed, {job.cancelled} cancelled, {job.expired} expired",
        ),
        ("shards", f"{job.shards_done}/{job.total_shards} done" if job.total_shards is not None else "not sharded yet"),
        ("tokens", f"{job.input_tokens} in, {job.output_tokens} out, {job.endpoint_calls} endpoint calls"),
        ("created", f"{_iso(job.created_at)}, deadline {_iso(job.deadline_at) or 'none'}"),
    ]
    if job.stop_reason:
        rows.append(("stopped", f"{job.stop_reason} at {_iso(job.stopped_at)}"))
    if job.parent_job_id:
        rows.append(("retry of", job.parent_job_id))
    if job.finished_at:
        rows.append(("finished", str(_iso(job.finished_at))))
    if job.error:
        rows.append(("error", job.error))
    if results_uri and job.finished and job.status != JobStatus.FAILED:
        rows.append(("results", results_uri))
    return rows


def job_table(job: Job, results_uri: str | None = None) -> RenderableType:
    """`job ID STATUS`, then the fields as a two-column table."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(min_width=9, no_wrap=True, style="bold")
    grid.add_column(overflow="fold")
    for label, value in job_rows(job, results_uri):
        grid.add_row(label, Text(value))  # Text: an error message or a key with [brackets] is not markup
    title = Text.assemble(f"job {job.job_id} ", status_text(job.status))
    return Group(title, Padding(grid, (0, 0, 0, 2), expand=False))


def jobs_table(jobs: list[Job]) -> Table:
    """`sagebatch list`: one row per job, newest first."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("JOB", no_wrap=True)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("CREATED (UTC)", no_wrap=True)
    table.add_column("DONE", justify="right", no_wrap=True)
    table.add_column("FAILED", justify="right", no_wrap=True)
    table.add_column("INPUT", overflow="ellipsis", no_wrap=True, ratio=1)
    for job in jobs:
        figures = progress_figures(job, time.time())
        total = job.total_records if job.total_records is not None else "?"
        created = (_iso(job.created_at) or "-").replace("T", " ").replace("+00:00", "")
        table.add_row(
            Text(job.job_id),
            status_text(job.status),
            created,
            f"{figures.done}/{total}",
            str(job.failed),
            Text(job.source or "-"),
        )
    return table


@dataclass(frozen=True)
class Figures:
    """What `watch` shows of a job at one moment."""

    done: int  # records with a result: succeeded, failed, cancelled or expired
    failed: int
    total: int | None
    tokens_per_s: float | None  # output tokens per second since the job started
    eta_s: float | None  # at the record rate so far
    calls: int


def progress_figures(job: Job, now: float) -> Figures:
    done = job.succeeded + job.failed + job.cancelled + job.expired
    elapsed = now - job.started_at if job.started_at else None
    if job.finished and job.finished_at and job.started_at:
        elapsed = job.finished_at - job.started_at
    rate = job.output_tokens / elapsed if elapsed and elapsed > 0 else None
    eta: float | None = None
    if job.finished:
        eta = 0.0
    elif job.total_records is not None and done and elapsed and elapsed > 0:
        eta = (job.total_records - done) * elapsed / done
    return Figures(done, job.failed, job.total_records, rate, eta, job.endpoint_calls)


def progress_line(job: Job, figures: Figures) -> str:
    """The plain-text form of the progress bar (logs, CI, a terminal-less stderr)."""
    total = figures.total if figures.total is not None else "?"
    rate = f"{figures.tokens_per_s:.0f}" if figures.tokens_per_s is not None else "-"
    return (
        f"job {job.job_id} {job.status}: {figures.done}/{total} done, {figures.failed} failed, {rate} tokens/s, "
        f"ETA {describe_duration(figures.eta_s)}, {figures.calls} endpoint calls"
    )


class WatchDisplay:
    """A live progress bar on a terminal; elsewhere, one line each time the job's counts or status change."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.time):
        self._console = console
        self._clock = clock
        self._live = console.is_terminal
        self._last: tuple[Any, ...] | None = None
        self._progress = Progress(
            TextColumn("{task.fields[status]}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.fields[of]} done"),
            TextColumn("[red]{task.fields[failed]} failed"),
            TextColumn("{task.fields[rate]} tokens/s"),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("{task.fields[calls]} endpoint calls"),
            console=console,
            transient=True,
            disable=not self._live,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> WatchDisplay:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def waiting(self, job_id: str) -> None:
        if self._last is None:
            self._last = ("waiting",)
            self._console.print(
                f"waiting for job {job_id} to appear (intake creates it within seconds)", markup=False, highlight=False
            )

    def update(self, job: Job) -> None:
        figures = progress_figures(job, self._clock())
        if self._live:
            fields: dict[str, Any] = {
                "status": job.status,
                "of": figures.total if figures.total is not None else "?",
                "failed": figures.failed,
                "rate": f"{figures.tokens_per_s:.0f}" if figures.tokens_per_s is not None else "-",
                "eta": describe_duration(figures.eta_s),
                "calls": figures.calls,
            }
            if self._task is None:
                self._task = self._progress.add_task(job.job_id, total=figures.total, completed=figures.done, **fields)
            else:
                self._progress.update(self._task, total=figures.total, completed=figures.done, **fields)
            return
        key = (job.status, figures.done, figures.failed, figures.total)
        if key != self._last:
            self._last = key
            self._console.print(progress_line(job, figures), markup=False, highlight=False, soft_wrap=True)
