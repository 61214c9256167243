"""Enqueueing a job's shards: read the input from a byte offset, cut shards, send them from a thread pool, and save
the progress on the job every so often, so that intake can stop when its time runs short and resume there.

The input is read with ranged GETs of `READ_CHUNK` bytes, the next `READ_AHEAD` fetched while the current one is
cut, and only the lines' end offsets are kept: memory stays ~5 chunks (40 MB) whatever the file. Shards go out in batches of ten
(one SendMessageBatch each) from `threads` senders; a checkpoint only ever names shards whose batches *and every
batch before them* were sent, so resuming from it loses nothing. Shards sent after the last checkpoint are sent
again by a resumed intake: harmless, since the worker counts a shard once (its lease and `shard_done`) and the job's
totals are only set when the whole input has been read.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor

from sagebatch.domain.job import IntakeProgress, Job
from sagebatch.domain.messages import Shard
from sagebatch.domain.sharding import cut_shards
from sagebatch.observability import logger
from sagebatch.ports import JobStore, MessageSender, ObjectInfo, ObjectStore, SendFailed
from sagebatch.usecases.control.retry import Lineage

READ_CHUNK = 8 * 1024 * 1024
READ_AHEAD = 4
SEND_BATCH = 10  # SQS's SendMessageBatch maximum
KeepGoing = Callable[[], bool]


class IntakeSuperseded(Exception):
    """The job is no longer CREATING: another intake started (or failed) it meanwhile."""


def line_ends(
    objects: ObjectStore, info: ObjectInfo, start: int, chunk_bytes: int = READ_CHUNK, ahead: int = READ_AHEAD
) -> Generator[int, None, None]:
    """The end offset (just past its newline) of each line from byte `start` (a line's first byte) to the end of the
    object; a last line without a newline ends at the object's size. `ahead` ranged GETs are in flight while a
    chunk is cut (one S3 stream gives ~50-100 MB/s; a few together keep up with the cutting)."""
    last_end = start
    chunk_starts = iter(range(start, info.size, chunk_bytes))
    with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="intake-read") as reader:

        def fetch() -> None:
            at = next(chunk_starts, None)
            if at is not None:
                pending.append((at, reader.submit(objects.read_range, info, at, min(at + chunk_bytes, info.size))))

        pending: deque[tuple[int, Future[bytes]]] = deque()
        for _ in range(ahead):
            fetch()
        while pending:
            chunk_start, future = pending.popleft()
            chunk = future.result()
            fetch()
            find = chunk.find
            cut = find(b"\n")
            while cut != -1:
                last_end = chunk_start + cut + 1
                yield last_end
                cut = find(b"\n", cut + 1)
    if last_end < info.size:
        yield info.size


class OrderedSends:
    """Batches of messages sent from a thread pool; `confirmed` is the progress after the longest run of batches,
    from the first, that were all sent. A failed send (SendFailed) is raised when its batch reaches the front."""

    def __init__(self, sender: MessageSender, threads: int, confirmed: IntakeProgress):
        self._sender = sender
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="intake-send")
        self._pending: deque[tuple[Future[int], IntakeProgress]] = deque()
        self._max_pending = 4 * threads  # bounds memory, and how far reading runs ahead of sending
        self.confirmed = confirmed

    def submit(self, batch: list[Shard], after: IntakeProgress) -> None:
        if len(self._pending) >= self._max_pending:
            self._settle_first()
        self._pending.append((self._pool.submit(self._sender.send_all, batch), after))
        while self._pending and self._pending[0][0].done():
            self._settle_first()

    def drain(self) -> IntakeProgress:
        while self._pending:
            self._settle_first()
        return self.confirmed

    def _settle_first(self) -> None:
        future, after = self._pending.popleft()
        future.result()
        self.confirmed = after

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class ShardEnqueuer:
    def __init__(
        self,
        objects: ObjectStore,
        work: MessageSender,
        jobs: JobStore,
        threads: int = 8,
        checkpoint_shards: int = 1000,
        checkpoint_seconds: float = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._objects = objects
        self._work = work
        self._jobs = jobs
        self._threads = threads
        self._checkpoint_shards = checkpoint_shards
        self._checkpoint_seconds = checkpoint_seconds
        self._clock = clock

    def run(self, job: Job, progress: IntakeProgress, lineage: Lineage | None, keep_going: KeepGoing) -> IntakeProgress:
        """Send the job's shards from `progress` on, until the input ends or `keep_going()` turns False; return how
        far it got (saved on the job unless complete: the caller then starts the job). Raises SendFailed,
        InputUnreadable, IntakeSuperseded."""
        info = ObjectInfo(job.bucket, job.key, progress.version_id, progress.etag or "", progress.size)
        ends = line_ends(self._objects, info, progress.offset)
        cuts = cut_shards(ends, progress.offset, progress.shard_lines, progress.shard_bytes)
        sends = OrderedSends(self._work, self._threads, progress)
        saved, saved_at = progress, self._clock()
        try:
            at, batch = progress, list[Shard]()
            for start, end, lines in cuts:
                batch.append(self._shard(job, info, at, start, end, lines, lineage))
                at = at.after(end, lines)
                if len(batch) == SEND_BATCH:
                    sends.submit(batch, at)
                    batch = []
                    if self._due(saved, saved_at, sends.confirmed):
                        saved, saved_at = self._save(job.job_id, sends.confirmed), self._clock()
                    if not keep_going() and not at.complete:
                        break
            if batch:
                sends.submit(batch, at)
            reached = sends.drain()
        except SendFailed:
            # What was surely sent is kept, so the redelivery of this message re-sends as little as possible.
            if sends.confirmed.next_shard > saved.next_shard:
                self._save(job.job_id, sends.confirmed)
            raise
        finally:
            sends.close()
            ends.close()
        if not reached.complete and reached != saved:
            self._save(job.job_id, reached)
        return reached

    def _due(self, saved: IntakeProgress, saved_at: float, confirmed: IntakeProgress) -> bool:
        fresh = confirmed.next_shard - saved.next_shard
        return fresh >= self._checkpoint_shards or (fresh > 0 and self._clock() - saved_at >= self._checkpoint_seconds)

    def _save(self, job_id: str, progress: IntakeProgress) -> IntakeProgress:
        if not self._jobs.save_intake_progress(job_id, progress):
            raise IntakeSuperseded(f"job {job_id} is no longer CREATING")
        logger.info("intake progress", extra={"job_id": job_id, "shards": progress.next_shard, "offset": progress.offset})
        return progress

    @staticmethod
    def _shard(
        job: Job, info: ObjectInfo, at: IntakeProgress, start: int, end: int, lines: int, lineage: Lineage | None
    ) -> Shard:
        parent_lines, default_ids = lineage.window(at.next_line, lines) if lineage is not None else (None, None)
        return Shard(
            job_id=job.job_id,
            shard=at.next_shard,
            bucket=info.bucket,
            key=info.key,
            version_id=info.version_id,
            etag=info.etag or None,
            start=start,
            end=end,
            first_line=at.next_line,
            lines=lines,
            parent_lines=parent_lines,
            default_ids=default_ids,
            input_format=job.input_format,
            input_format_line=job.input_format_line,
        )
