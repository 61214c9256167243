"""Which format an input file is in (native, OpenAI Batch, Bedrock batch), decided once, at intake, from its head.

A file holds one format, decided by its first recognisable line (domain.formats.FormatDetector). Intake reads
only the head of the object: 64 KiB first, four times more while no complete line in what was read is
recognisable, up to `MAX_HEAD_BYTES` (a first line may be a multi-megabyte document). Lines are read as the
workers read them (a UTF-8 BOM skipped, a trailing CR dropped, parse_line's strict JSON), so a line that
cannot decide here is one that fails on its own there. A file with no recognisable line in its head is read as
native: each of its lines then fails, or succeeds, on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from sagebatch.domain.encoding import UTF8_BOM
from sagebatch.domain.formats import Format, FormatDetector, FormatError
from sagebatch.ports import ObjectInfo, ObjectStore
from sagebatch.usecases.record_runner import LineFailed, parse_line

FIRST_READ_BYTES = 64 * 1024
MAX_HEAD_BYTES = 16 * 1024 * 1024
MAX_HEAD_LINES = 1000


@dataclass(frozen=True)
class InputFormat:
    """The file's format and the line that decided it (None: no recognisable line in the head, read as native)."""

    format: Format = "native"
    line: int | None = None


def decide_input_format(objects: ObjectStore, info: ObjectInfo, max_line_bytes: int) -> InputFormat:
    """The format of the object `info`, from its first recognisable line; raises InputUnreadable."""
    count = min(info.size, FIRST_READ_BYTES)
    while count > 0:
        whole = count >= info.size
        decided, lines_seen = head_format(objects.head_bytes(info, count), whole, max_line_bytes)
        if decided is not None or whole or lines_seen >= MAX_HEAD_LINES or count >= MAX_HEAD_BYTES:
            return decided or InputFormat()
        count = min(info.size, count * 4, MAX_HEAD_BYTES)
    return InputFormat()


def head_format(head: bytes, whole: bool, max_line_bytes: int) -> tuple[InputFormat | None, int]:
    """The format decided by the complete lines of `head` (the last piece counts only when `head` is the whole
    object), and how many lines were looked at."""
    if head.startswith(UTF8_BOM):
        head = head[len(UTF8_BOM) :]
    pieces = head.split(b"\n")
    if not whole or head.endswith(b"\n"):
        pieces.pop()  # cut short by the read (or the empty piece after the last newline)
    detector = FormatDetector()
    for number, raw in enumerate(pieces[:MAX_HEAD_LINES], start=1):
        try:
            fmt = detector.feed(parse_line(raw.rstrip(b"\r"), max_line_bytes), number)
        except (LineFailed, FormatError):
            continue
        return InputFormat(fmt, number), number
    return None, min(len(pieces), MAX_HEAD_LINES)
