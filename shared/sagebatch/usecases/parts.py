"""Where a job's results live while it runs: one part per shard, in the stack's bucket, beside the job's outputs.

Results cost nothing per record in DynamoDB: a shard's results are written once, as one object, when its records
are all done (`outputs/<job>/parts/<shard>.jsonl`, readable while the job runs), and the finalizer streams the
parts into results.jsonl. Until then the answers a running shard has are kept in a checkpoint object, rewritten at
most every `checkpoint_seconds` (and whenever a delivery hands records back), so a redelivery reuses them instead
of paying for them again; a crash loses at most that interval's answers of the shards it was running.

Parts hold each result in its stored form (`encode_result`), one JSON line each, escaped like results.jsonl.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from sagebatch.domain.layout import checkpoint_key, part_key, parts_prefix
from sagebatch.domain.results import ResultLine, decode_result
from sagebatch.ports import CallCache, CallCacheStore, ObjectStore

_PART = re.compile(r"/\d{8}\.jsonl$")


class PartMissing(Exception):
    """A shard counted as done has no part: the job's results are incomplete (not finalizable yet)."""


class PartsResultStore:
    """sagebatch.ports.ResultStore over the object store (parts and checkpoints) and a call cache store."""

    def __init__(self, objects: ObjectStore, bucket: str, calls: CallCacheStore):
        self._objects = objects
        self._bucket = bucket
        self._calls = calls

    def load_shard(self, job_id: str, shard: int) -> dict[int, bytes]:
        """What earlier deliveries kept of this shard, by line: its part if written, else its checkpoint."""
        body = self._objects.read_if_exists(self._bucket, part_key(job_id, shard))
        if body is None:
            body = self._objects.read_if_exists(self._bucket, checkpoint_key(job_id, shard))
        return {decode_result(line).line: line for line in _lines(body or b"")}

    def save_checkpoint(self, job_id: str, shard: int, encoded: list[bytes]) -> None:
        self._objects.put_bytes(self._bucket, checkpoint_key(job_id, shard), _joined(encoded))

    def save_part(self, job_id: str, shard: int, encoded_in_line_order: list[bytes]) -> None:
        self._objects.put_bytes(self._bucket, part_key(job_id, shard), _joined(encoded_in_line_order))

    def read_part(self, job_id: str, shard: int) -> list[ResultLine]:
        body = self._objects.read_if_exists(self._bucket, part_key(job_id, shard))
        if body is None:
            raise PartMissing(f"job {job_id}: shard {shard} has no results part")
        return [decode_result(line) for line in _lines(body)]

    def results(self, job_id: str) -> Iterator[ResultLine]:
        """Every result of the job's finished shards, in line order (the parts written so far)."""
        keys = [key for key in self._objects.keys(self._bucket, parts_prefix(job_id)) if _PART.search(key)]
        for key in sorted(keys):
            yield from (decode_result(line) for line in _lines(self._objects.read_bytes(self._bucket, key)))

    def call_cache(self, job_id: str, line: int) -> CallCache:
        return self._calls.call_cache(job_id, line)


def _joined(lines: Iterable[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _lines(body: bytes) -> list[bytes]:
    return [line for line in body.split(b"\n") if line]


class ShardBuffer:
    """One delivery's answers of one shard: encoded results by line, checkpointed at most every `interval_s`.

    Thread-safe: the shard's records finish on a thread pool. A checkpoint is written by the thread whose result
    made it due; the others do not wait for it.
    """

    def __init__(
        self,
        save: Callable[[list[bytes]], None],
        known: dict[int, bytes],
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._save = save
        self._lines = dict(known)
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._dirty = False
        self._saved_at = clock()

    def add(self, line: int, encoded: bytes) -> None:
        with self._lock:
            if line in self._lines:
                return
            self._lines[line] = encoded
            self._dirty = True
            due = self._clock() - self._saved_at >= self._interval_s
        if due:
            self.checkpoint(wait=False)

    def checkpoint(self, wait: bool = True) -> None:
        """Write what is new since the last checkpoint. `wait=False`: leave it to a thread already writing, which
        writes again once it is done if more came in meanwhile (so with `interval_s` 0 every answer is saved)."""
        if not self._writing.acquire(blocking=wait):
            return
        try:
            while True:
                with self._lock:
                    if not self._dirty:
                        return
                    snapshot = [self._lines[line] for line in sorted(self._lines)]
                    self._dirty = False
                    self._saved_at = self._clock()
                try:
                    self._save(snapshot)
                except BaseException:
                    with self._lock:
                        self._dirty = True
                    raise
                with self._lock:
                    if not (self._dirty and self._clock() - self._saved_at >= self._interval_s):
                        return
        finally:
            self._writing.release()

    def in_line_order(self) -> list[bytes]:
        with self._lock:
            return [self._lines[line] for line in sorted(self._lines)]

    def __contains__(self, line: int) -> bool:
        with self._lock:
            return line in self._lines
