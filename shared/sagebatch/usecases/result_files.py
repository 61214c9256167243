"""A job's result files in its output format: results.jsonl (one line per input line, in input order) and, for
the OpenAI format, errors.jsonl (the lines that are errors, as OpenAI's error file holds them).

Native results are written as they are stored. A peer's result line (domain.formats.render) needs the line's
original input: OpenAI's custom_id, url (chat or text completion) and stop sequences; Bedrock's whole
`modelInput`, which its output echoes. Rather than store each original beside its result (a line may be
megabytes, and every stored result would grow by its input), the finalizer reads the job's input again, once,
pinned to the version (or ETag) intake read, as a stream beside the stored results: both are in line order, so
one pass pairs them in bounded memory. Should the input be unreadable by then, lines render without it: ids are
still echoed (a result keeps the peer's id as its own), with the text-completion and echo details lost.
Every line, in every format, is written with `dumps_line` (no raw line separators, no NaN).

Nothing is spooled: lines go into one in-memory buffer per file, which the finalizer uploads as a multipart part
whenever it holds a part's worth (usecases.assembly), so a 10M-line job needs neither /tmp nor more than a part
of memory per file. A resumed assembly reads the input from the byte where its checkpoint stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any

from sagebatch.domain.encoding import UTF8_BOM
from sagebatch.domain.formats import dumps_line, render
from sagebatch.domain.job import Job
from sagebatch.domain.layout import errors_key, results_key
from sagebatch.domain.results import ResultLine
from sagebatch.observability import logger
from sagebatch.ports import InputUnreadable, ObjectInfo, ObjectStore
from sagebatch.usecases.record_runner import LineFailed, parse_line


class InputOriginals:
    """Each input line's parsed JSON (None for a line that is not JSON, or too large), in order, read as the workers
    read it (BOM skipped, trailing CR dropped), from byte `start` (a line's first) on; then None forever. An
    unreadable input gives None for every line. `offset`: where the line after the last one taken starts."""

    def __init__(self, objects: ObjectStore, job: Job, max_line_bytes: int, start: int = 0):
        self.offset = start
        self._originals = self._read(objects, job, max_line_bytes, start)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return next(self._originals)

    def _read(self, objects: ObjectStore, job: Job, max_line_bytes: int, start: int) -> Iterator[Any]:
        info = ObjectInfo(job.bucket, job.key, job.version_id, job.etag or "", 0)
        try:
            for raw in objects.lines(info, start):
                first = self.offset == 0
                self.offset += len(raw) + 1  # the newline (past the end after a last line without one: unused)
                if first and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM) :]
                try:
                    yield parse_line(raw.rstrip(b"\r"), max_line_bytes)
                except LineFailed:
                    yield None
        except InputUnreadable as error:
            logger.warning(
                "input unreadable at finalize: results rendered without it", extra={"job_id": job.job_id, "reason": str(error)}
            )
        while True:
            yield None


def input_originals(objects: ObjectStore, job: Job, max_line_bytes: int, start: int = 0) -> InputOriginals:
    return InputOriginals(objects, job, max_line_bytes, start)


def is_openai_error(line: dict[str, Any]) -> bool:
    """A line of OpenAI's error file: no response (never run), or an HTTP status other than 200."""
    response = line.get("response")
    return not isinstance(response, dict) or response.get("status_code") != 200


class ResultFiles:
    """A job's result lines in its output format, rendered into `results` (and, for OpenAI, `errors`): byte buffers
    that the writer's owner empties as it uploads them (the finalizer: a multipart part at a time)."""

    def __init__(self, job: Job, originals: Iterator[Any] | None):
        self._job = job
        self._format = job.output_format
        self._originals = originals if self._format != "native" else None
        self._extra_stop = tuple(job.parameters.stop or ())
        self.results = bytearray()
        self.errors: bytearray | None = bytearray() if self._format == "openai" else None
        self.error_lines = 0

    def __enter__(self) -> ResultFiles:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        return None  # nothing to close: the buffers are memory

    def write(self, result: ResultLine) -> None:
        """Add the next result (in line order)."""
        public = result.public_json()
        if self._originals is None:
            self.results += _encoded(public)
            return
        original = next(self._originals)
        try:
            line = self._render(public, original)
            text = _encoded(line)
        except ValueError:
            # An original the peer's line echoes may hold what JSON cannot (NaN, Infinity): only a line that failed
            # anyway (its parameter refused) gets here, and it is written without the echo.
            line = self._render(public, None)
            text = _encoded(line)
        self.results += text
        if self.errors is not None and is_openai_error(line):
            self.errors += text
            self.error_lines += 1

    def _render(self, public: dict[str, Any], original: Any) -> dict[str, Any]:
        return render(
            self._format,
            public,
            original,
            job_id=self._job.job_id,
            created=int(self._job.created_at),
            extra_stop=self._extra_stop,
        )

    def upload(self, objects: ObjectStore, bucket: str) -> None:
        """Put what the buffers hold as whole files (a small job's, or a tool's); the finalizer streams instead."""
        objects.put_bytes(bucket, results_key(self._job.job_id), bytes(self.results))
        if self.errors is not None:
            objects.put_bytes(bucket, errors_key(self._job.job_id), bytes(self.errors))


def _encoded(line: dict[str, Any]) -> bytes:
    return dumps_line(line).encode("utf-8") + b"\n"
