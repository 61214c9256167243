"""The finalizer's streamed assembly of results.jsonl (and errors.jsonl): where it is, saved in assembly.json.

A large job's results.jsonl is written as S3 multipart uploads, part after part, in line order, reading the
shards' parts one after the other; no invocation need finish it. The checkpoint is taken at a shard boundary, so
it says exactly where to go on: the shard to read next and, per file, the upload, the ETags of its parts, and the
bytes written since its last part (less than one part: S3 takes no part under 5 MiB but the last, so they are kept
in the checkpoint itself, and one PUT saves a consistent state). Pure: no I/O.
"""

from __future__ import annotations

import base64

from pydantic import BaseModel, ConfigDict, Field

# S3 takes parts of 5 MiB at least (but the last); at most 10,000 parts an upload.
PART_BYTES = 8 * 1024 * 1024
MAX_PARTS = 10_000
# Parts grow by one `PART_BYTES` every this many, so 10,000 parts hold 55 x 1,000 x 8 MiB = 440 GB, and a
# small job's parts (and memory) stay at 8 MiB.
_PARTS_PER_STEP = 1_000


def part_threshold(uploaded_parts: int, base: int = PART_BYTES) -> int:
    """Bytes to gather before uploading the next part of an upload that has `uploaded_parts` parts."""
    return base * (1 + uploaded_parts // _PARTS_PER_STEP)


class UploadState(BaseModel):
    """One file's multipart upload: None until its first part is due (a file under one part is a single PUT)."""

    model_config = ConfigDict(extra="forbid")

    upload_id: str | None = None
    etags: list[str] = Field(default_factory=list)  # part n's ETag at index n - 1
    uploaded_bytes: int = 0
    pending: str = ""  # base64 of the bytes written since the last part

    def pending_bytes(self) -> bytes:
        return base64.b64decode(self.pending)

    @staticmethod
    def of(upload_id: str | None, etags: list[str], uploaded_bytes: int, pending: bytes) -> UploadState:
        return UploadState(
            upload_id=upload_id,
            etags=list(etags),
            uploaded_bytes=uploaded_bytes,
            pending=base64.b64encode(pending).decode("ascii"),
        )


class AssemblyCheckpoint(BaseModel):
    """assembly.json: where a paused assembly goes on. Taken after every part uploaded, and when pausing."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    deliveries: int = 1  # finalize deliveries that worked on it (this one included)
    completed: bool = False  # both uploads completed: only the manifest and the job's close are left
    next_shard: int  # the shard (results part) to read next
    lines: int  # result lines written so far (the last line number)
    bytes: int  # bytes of results.jsonl so far (uploaded and pending)
    error_lines: int = 0  # lines of errors.jsonl so far (OpenAI output)
    input_offset: int | None = None  # peer formats: where the next input line starts (its original is re-read)
    id_segments: int = 0  # duplicate-id entries saved so far, as segments 0 .. id_segments - 1
    results: UploadState
    errors: UploadState | None = None  # OpenAI output only

    @property
    def uploads(self) -> list[UploadState]:
        return [self.results] + ([self.errors] if self.errors is not None else [])
