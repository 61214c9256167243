"""What the `sagebatch` command line means, apart from how it is parsed: exit codes, usage problems, and the values
of `--param`, `--fit`, `--since` and the emulator's rates."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sagebatch.domain.errors import describe_validation_error
from sagebatch.domain.parameters import Parameters
from sagebatch.domain.records import FitSettings


class ExitCode(IntEnum):
    """The `sagebatch` exit codes (README, CLI reference)."""

    OK = 0  # done; for watch / submit --wait: the job COMPLETED
    ERROR = 1  # an AWS error, an unknown job, results not written yet, a local run that could not finish
    USAGE = 2  # the command line cannot work: bad option, unknown stack, missing file
    FAILED = 3  # the job ended FAILED (invalid message, unreadable input): no results.jsonl
    CANCELLED = 4  # the job ended CANCELLED (results.jsonl has the records done before the cancel)
    EXPIRED = 5  # the job ended EXPIRED (its deadline passed; results.jsonl as for CANCELLED)
    TIMEOUT = 6  # watch --timeout ran out while the job was still going (the job goes on)


class UsageProblem(Exception):
    """A command line that cannot work; `sagebatch` prints the message (one sentence) and exits 2."""


# https://sqs.<region>.amazonaws.com/<account>/<name>, or an endpoint of one's own (http://localhost:4566/<account>/<name>).
_QUEUE_URL = re.compile(r"^https?://[^/\s]+/\d{12}/[A-Za-z0-9_-]{1,80}(\.fifo)?$")


def queue_url(value: str | None) -> str | None:
    """A --queue-url, checked before any AWS call (a typo would otherwise surface as a botocore region error)."""
    if value is not None and not _QUEUE_URL.match(value):
        raise UsageProblem(f"--queue-url {value!r} is not an SQS queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)")
    return value


def positive_seconds(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise UsageProblem(f"--timeout must be a positive number of seconds, not {value}")
    return value


def output_directory(path: Path) -> Path:
    """--out, checked before the run starts (not after an hour of work): an existing directory we may write in,
    or one that can be created under the nearest existing directory (created only once there is something to write)."""
    if path.exists() and not path.is_dir():
        raise UsageProblem(f"--out {str(path)!r} is an existing file, not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageProblem(f"--out {str(path)!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageProblem(f"--out {str(path)!r} is not writable")
    return path


def _value(text: str) -> Any:
    """A JSON value when the text is one (7, 0.5, true, ["a"]), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """`--param KEY=VALUE ...` as TGI generation parameters, checked as the intake checks them.

    Values are JSON when they parse as JSON (`max_new_tokens=256`, `do_sample=true`, `stop=["###"]`), else strings;
    `stop` may be repeated, each one adding a stop sequence.
    """
    values: dict[str, Any] = {}
    for item in items or []:
        key, equals, text = item.partition("=")
        key = key.strip()
        if not equals or not key:
            raise UsageProblem(f"--param takes KEY=VALUE (e.g. max_new_tokens=256), not {item!r}")
        value = _value(text)
        if key == "stop":
            values.setdefault("stop", []).extend(value if isinstance(value, list) else [text])
        elif key in values:
            raise UsageProblem(f"--param {key} is given twice")
        else:
            values[key] = value
    try:
        return Parameters.model_validate(values).model_dump(exclude_none=True)
    except ValidationError as error:
        raise UsageProblem(f"bad --param: {describe_validation_error(error, 'parameters')}") from None


def parse_fit(text: str | None) -> dict[str, Any] | None:
    """`--fit strategy=map_reduce,keep=tail,chunk_tokens=2000` (or a JSON object) as the job's fit settings."""
    if text is None:
        return None
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            values = json.loads(stripped)
        except ValueError:
            raise UsageProblem(f"--fit is neither KEY=VALUE,... nor a JSON object: {text!r}") from None
    else:
        values = {}
        for part in filter(None, (p.strip() for p in stripped.split(","))):
            key, equals, value = part.partition("=")
            if not equals or not key.strip():
                raise UsageProblem(f"--fit takes KEY=VALUE,... (e.g. strategy=map_reduce,keep=tail), not {part!r}")
            values[key.strip()] = _value(value.strip())
    try:
        return FitSettings.model_validate(values).model_dump(exclude_none=True)
    except ValidationError as error:
        raise UsageProblem(f"bad --fit: {describe_validation_error(error, 'fit')}") from None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)


def parse_since(text: str | None, now: float) -> float | None:
    """`--since 24h` (s, m, h, d, w before `now`), `--since 2026-12-01` or `--since 2026-12-01T08:00` (UTC unless
    the time names its offset) as epoch seconds."""
    if text is None:
        return None
    match = _DURATION.match(text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2).lower()]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageProblem(f"--since takes a duration (30m, 24h, 7d) or a date (2026-12-01), not {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def parse_rate(value: float) -> float:
    """An emulator fault rate: a share of requests, within [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise UsageProblem(f"a rate must be within [0, 1], not {value:g}")
    return value


def describe_duration(seconds: float | None) -> str:
    """`1h 02m`, `4m 05s`, `12s` (`-` when unknown)."""
    if seconds is None:
        return "-"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"
