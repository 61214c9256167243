"""Reliability table: the fault-injection suite (tests/faults) run end to end on the local stack, one row per fault.

Each row is one job run through moto + the endpoint emulator while the fault is injected (duplicates, a killed
worker, DynamoDB throttling, S3 errors, 429 storms, 5xx bursts, timeouts, poison messages, a completion race),
and says how many faults were injected, how many records got their one result line, how many were lost
(no result line) and how many were doubled (a repeated result line, or a generation paid more often than the
fault forces). `xfail` rows are known bugs kept visible by strict xfail tests (see each test's reason).

Run:  .venv/bin/python bench/faults.py [extra pytest args, e.g. -k throttling]
      (--out FILE also writes the table to FILE)
"""

from __future__ import annotations

import os
import sys

# bench/ is sys.path[0] and holds scripts named like stdlib modules (tokenize.py): drop it before any import.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import json
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(_HERE).parent


def main(argv: list[str]) -> int:
    out = None
    if "--out" in argv:
        index = argv.index("--out")
        out = Path(argv[index + 1])
        argv = argv[:index] + argv[index + 2 :]
    sys.path.insert(0, str(ROOT))
    from tests.faults.conftest import format_table

    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "faults.json"
        env = dict(os.environ, SAGEBATCH_FAULT_TABLE=str(table))
        started = time.monotonic()
        process = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/faults", *argv],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        elapsed = time.monotonic() - started
        rows = json.loads(table.read_text()) if table.exists() else []
    summary = next(
        (line for line in reversed(process.stdout.splitlines()) if " in " in line and ("passed" in line or "failed" in line)), ""
    )
    if not rows or process.returncode != 0:
        sys.stdout.write(process.stdout[-20000:] + process.stderr[-5000:])
    if not rows:
        return process.returncode or 1
    lines = format_table(rows)
    lines.append("")
    lines.append(f"tests/faults: {summary.strip('= ')} (wall {elapsed:.0f} s)")
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if out:
        out.write_text(text, encoding="utf-8")
    return process.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
