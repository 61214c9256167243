"""`sagebatch run`'s progress line: what it says, and that it stays quiet when output is not a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from sagebatch.tooling.local.progress import live_progress, progress_line


def test_the_line_says_done_failed_total_rate_in_flight_limit_and_eta() -> None:
    # Given 500 of 2,000 records done (3 failed) in 10 s with 12,000 output tokens, 64 in flight, limit 96
    line = progress_line(500, 3, 2000, 12_000, 10.0, 64, 96.0)
    # Then the line says each of those, and an ETA from the rate so far (1,500 left at 50 records/s)
    assert line == "500/2,000 records (3 failed) · 1,200 output tok/s · 64 in flight · limit 96 · ETA 30 s"


def test_before_intake_has_counted_the_lines_there_is_no_eta() -> None:
    # Given no total yet; Then the line says so and gives no ETA
    assert (
        progress_line(0, 0, None, 0, 0.0, 0, None)
        == "0 records (0 failed), counting lines · 0 output tok/s · 0 in flight · limit - · ETA ?"
    )


def test_nothing_is_shown_when_output_is_not_a_terminal() -> None:
    # Given a console writing to a file (a script, CI)
    out = io.StringIO()
    console = Console(file=out, force_terminal=False)
    # When the progress context runs (it would read the job if it showed anything: None would fail)
    with live_progress(None, "job", console):  # type: ignore[arg-type]
        pass
    # Then nothing was written
    assert out.getvalue() == ""
