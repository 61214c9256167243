"""Streamed, resumable assembly of a job's results.jsonl (and errors.jsonl) from its shards' parts.

The shards' parts are read in order (a few ahead, on threads: each is one S3 GET of ~10 KB, whose latency would
otherwise add up to ~20 min for a 1M-line job's 31k parts), rendered into one buffer per file (usecases.result_files)
and uploaded as a multipart part whenever a buffer holds a part's worth (domain.assembly.part_threshold, 8 MiB).
Memory: a part per file, plus the parts read ahead; nothing goes to /tmp (512 MB on Lambda: ~640k short results).

After each part uploaded, and when `keep_going` says stop, a checkpoint (domain.assembly.AssemblyCheckpoint) is
saved at the shard boundary; the next delivery goes on from it. The duplicate-id table (domain.id_table) outlives
an invocation as segments of its new entries, one per checkpoint, read back on resume. Parts are uploaded before
the checkpoint that names them: a crash in between uploads the same part (same number, same bytes) again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass

from sagebatch.domain.assembly import PART_BYTES, AssemblyCheckpoint, UploadState, part_threshold
from sagebatch.domain.id_table import FirstLines
from sagebatch.domain.job import Job
from sagebatch.domain.layout import assembly_ids_key, assembly_key, errors_key, results_key
from sagebatch.domain.results import DuplicateIds, ResultLine
from sagebatch.observability import logger
from sagebatch.ports import ObjectStore, ResultStore
from sagebatch.usecases.parts import PartMissing
from sagebatch.usecases.result_files import InputOriginals, ResultFiles

READ_AHEAD = 8


class ResultsIncomplete(Exception):
    pass


class AssemblyPaused(Exception):
    """The finalizer stopped before its time ran out; its checkpoint says where the next delivery goes on."""


@dataclass(frozen=True)
class Assembled:
    lines: int
    bytes: int
    results_parts: int  # 1 for a file small enough for a single PUT
    errors_parts: int | None
    error_lines: int
    deliveries: int


class MultipartFile:
    """One object written from `buffer` (which its writer fills) as a multipart upload, a part at a time.

    The upload starts with its first part: a file that never fills one is written with a single PUT at the end
    (an empty results.jsonl included: a multipart upload needs at least one part).
    """

    def __init__(
        self, objects: ObjectStore, bucket: str, key: str, buffer: bytearray, part_bytes: int, state: UploadState | None
    ):
        self._objects = objects
        self._bucket = bucket
        self.key = key
        self._buffer = buffer
        self._part_bytes = part_bytes
        state = state or UploadState()
        self.upload_id = state.upload_id
        self.etags = list(state.etags)
        self._uploaded_bytes = state.uploaded_bytes
        buffer += state.pending_bytes()

    @property
    def bytes_written(self) -> int:
        return self._uploaded_bytes + len(self._buffer)

    @property
    def parts(self) -> int:
        return len(self.etags) if self.upload_id is not None else 1

    def upload_if_due(self) -> bool:
        """Upload the buffer as the next part if it holds a part's worth. True if it did."""
        if len(self._buffer) < part_threshold(len(self.etags), self._part_bytes):
            return False
        self._upload_buffer()
        return True

    def _upload_buffer(self) -> None:
        if self.upload_id is None:
            self.upload_id = self._objects.start_multipart(self._bucket, self.key)
        number = len(self.etags) + 1
        self.etags.append(self._objects.upload_part(self._bucket, self.key, self.upload_id, number, bytes(self._buffer)))
        self._uploaded_bytes += len(self._buffer)
        self._buffer.clear()

    def state(self) -> UploadState:
        return UploadState.of(self.upload_id, self.etags, self._uploaded_bytes, bytes(self._buffer))

    def complete(self) -> None:
        if self.upload_id is None:
            self._objects.put_bytes(self._bucket, self.key, bytes(self._buffer))
            self._uploaded_bytes += len(self._buffer)
            self._buffer.clear()
            return
        if self._buffer:  # the last part may be any size
            self._upload_buffer()
        self._objects.complete_multipart(self._bucket, self.key, self.upload_id, self.etags)


class ResultsAssembly:
    """One job's assembly: `run` goes on from the checkpoint (if any) until done, or until `keep_going` says stop."""

    def __init__(
        self,
        job: Job,
        results: ResultStore,
        objects: ObjectStore,
        bucket: str,
        max_line_bytes: int,
        part_bytes: int = PART_BYTES,
        read_ahead: int = READ_AHEAD,
    ):
        self._job = job
        self._results = results
        self._objects = objects
        self._bucket = bucket
        self._max_line_bytes = max_line_bytes
        self._part_bytes = part_bytes
        self._read_ahead = max(1, read_ahead)

    def checkpoint(self) -> AssemblyCheckpoint | None:
        body = self._objects.read_if_exists(self._bucket, assembly_key(self._job.job_id))
        return None if body is None else AssemblyCheckpoint.model_validate_json(body)

    def discard(self, checkpoint: AssemblyCheckpoint | None) -> None:
        """Abort the checkpoint's uploads (gone ones included) so that the next `run` starts over."""
        if checkpoint is None:
            return
        for key, upload in (
            (results_key(self._job.job_id), checkpoint.results),
            (errors_key(self._job.job_id), checkpoint.errors),
        ):
            if upload is not None and upload.upload_id is not None:
                self._objects.abort_multipart(self._bucket, key, upload.upload_id)
        self._objects.delete(self._bucket, assembly_key(self._job.job_id))

    def clean_up(self, checkpoint: AssemblyCheckpoint | None) -> None:
        """Delete the checkpoint and its id segments (once the job is closed)."""
        if checkpoint is None:
            return
        for segment in range(checkpoint.id_segments):
            self._objects.delete(self._bucket, assembly_ids_key(self._job.job_id, segment))
        self._objects.delete(self._bucket, assembly_key(self._job.job_id))

    def run(self, checkpoint: AssemblyCheckpoint | None, keep_going: Callable[[], bool]) -> Assembled:
        """Write the files from `checkpoint` on (None: from the start). Raises AssemblyPaused once `keep_going` is
        false with shards left (after at least one shard), ResultsIncomplete, and UploadGone (the checkpoint's
        upload no longer exists: `discard` it and run again)."""
        job = self._job
        if checkpoint is not None and checkpoint.completed:
            return _assembled(checkpoint)
        start = checkpoint or AssemblyCheckpoint(next_shard=0, lines=0, bytes=0, deliveries=0, results=UploadState())
        ids = FirstLines()
        for segment in range(start.id_segments):
            ids.load(self._objects.read_bytes(self._bucket, assembly_ids_key(job.job_id, segment)))
        originals = None
        if job.output_format != "native":
            originals = InputOriginals(self._objects, job, self._max_line_bytes, start.input_offset or 0)
        files = ResultFiles(job, originals)
        uploads = [
            MultipartFile(self._objects, self._bucket, results_key(job.job_id), files.results, self._part_bytes, start.results)
        ]
        if files.errors is not None:
            uploads.append(
                MultipartFile(self._objects, self._bucket, errors_key(job.job_id), files.errors, self._part_bytes, start.errors)
            )
        files.error_lines = start.error_lines
        saved = _Saved(start.id_segments, start.deliveries + 1)
        duplicates = DuplicateIds(ids)
        lines = start.lines
        total_shards = job.total_shards or 0

        def save(next_shard: int, completed: bool = False) -> None:
            new_ids = ids.take_new()
            if new_ids:
                key = assembly_ids_key(job.job_id, saved.id_segments)
                self._objects.put_bytes(self._bucket, key, new_ids, "application/octet-stream")
                saved.id_segments += 1
            state = AssemblyCheckpoint(
                deliveries=saved.deliveries,
                completed=completed,
                next_shard=next_shard,
                lines=lines,
                bytes=uploads[0].bytes_written,
                error_lines=files.error_lines,
                input_offset=originals.offset if originals is not None else None,
                id_segments=saved.id_segments,
                results=uploads[0].state(),
                errors=uploads[1].state() if len(uploads) > 1 else None,
            )
            self._objects.put_bytes(self._bucket, assembly_key(job.job_id), state.model_dump_json().encode(), "application/json")
            saved.any = True

        with closing(self._parts(start.next_shard, total_shards)) as parts:
            for shard, results in parts:
                for result in results:
                    lines += 1
                    if result.line != lines:
                        raise ResultsIncomplete(f"job {job.job_id}: no result for line {lines}")
                    files.write(duplicates.flag(result))
                uploaded = [upload.upload_if_due() for upload in uploads]  # every file, not the first due only
                pausing = shard + 1 < total_shards and not keep_going()
                if any(uploaded) or pausing:
                    save(shard + 1)
                if pausing:
                    logger.info(
                        "assembly paused",
                        extra={"job_id": job.job_id, "next_shard": shard + 1, "of": total_shards, "lines": lines},
                    )
                    raise AssemblyPaused(f"job {job.job_id}: paused before shard {shard + 1} of {total_shards}")
        if lines != (job.total_records or 0):
            raise ResultsIncomplete(f"job {job.job_id}: {lines} results for {job.total_records} lines")
        for upload in uploads:
            upload.complete()
        if checkpoint is not None or saved.any:  # a crash before the job is closed need not assemble it again
            save(total_shards, completed=True)
        return Assembled(
            lines=lines,
            bytes=uploads[0].bytes_written,
            results_parts=uploads[0].parts,
            errors_parts=uploads[1].parts if len(uploads) > 1 else None,
            error_lines=files.error_lines,
            deliveries=saved.deliveries,
        )

    def _parts(self, first: int, end: int) -> Generator[tuple[int, list[ResultLine]], None, None]:
        """Each shard's results from `first` on, in shard order, `read_ahead` of them read at once."""
        with ThreadPoolExecutor(self._read_ahead, thread_name_prefix="assembly-read") as pool:
            pending: deque[tuple[int, Future[list[ResultLine]]]] = deque()
            shard = first
            try:
                while pending or shard < end:
                    while shard < end and len(pending) < self._read_ahead:
                        pending.append((shard, pool.submit(self._results.read_part, self._job.job_id, shard)))
                        shard += 1
                    number, future = pending.popleft()
                    try:
                        yield number, future.result()
                    except PartMissing as error:
                        raise ResultsIncomplete(str(error)) from error
            finally:
                for _, future in pending:
                    future.cancel()


@dataclass
class _Saved:
    id_segments: int
    deliveries: int
    any: bool = False


def _assembled(checkpoint: AssemblyCheckpoint) -> Assembled:
    def parts(upload: UploadState) -> int:
        return len(upload.etags) if upload.upload_id is not None else 1

    return Assembled(
        lines=checkpoint.lines,
        bytes=checkpoint.bytes,
        results_parts=parts(checkpoint.results),
        errors_parts=parts(checkpoint.errors) if checkpoint.errors is not None else None,
        error_lines=checkpoint.error_lines,
        deliveries=checkpoint.deliveries,
    )
