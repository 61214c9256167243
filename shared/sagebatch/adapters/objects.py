"""S3ObjectStore: the S3 reads and writes the service makes (streamed, version-pinned)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from botocore.exceptions import ClientError

from sagebatch.ports import InputUnreadable, LineSpan, ObjectInfo, UploadGone

_READ_CHUNK = 1024 * 1024


class S3ObjectStore:
    def __init__(self, s3: Any):
        self._s3 = s3

    def head(self, bucket: str, key: str, version_id: str | None = None) -> ObjectInfo:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            response = self._s3.head_object(**kwargs)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            raise InputUnreadable(f"cannot read s3://{bucket}/{key}: {code or 'error'}") from error
        version = response.get("VersionId")
        return ObjectInfo(
            bucket, key, None if version in (None, "null") else version, response["ETag"], response["ContentLength"]
        )

    def _get(self, info: ObjectInfo, range_header: str | None = None) -> Any:
        kwargs: dict[str, Any] = {"Bucket": info.bucket, "Key": info.key}
        # Pin what we read to what the job saw: a version if the bucket has one, else the ETag.
        if info.version_id:
            kwargs["VersionId"] = info.version_id
        elif info.etag:
            kwargs["IfMatch"] = info.etag
        if range_header:
            kwargs["Range"] = range_header
        try:
            return self._s3.get_object(**kwargs)["Body"]
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in {"NoSuchKey", "AccessDenied", "NoSuchBucket", "PreconditionFailed", "NoSuchVersion", "403", "404"}:
                raise InputUnreadable(f"cannot read s3://{info.bucket}/{info.key}: {code}") from error
            raise

    def head_bytes(self, info: ObjectInfo, count: int) -> bytes:
        if info.size == 0:
            return b""
        return self._get(info, f"bytes=0-{min(count, info.size) - 1}").read()

    def line_spans(self, info: ObjectInfo) -> Iterator[LineSpan]:
        """Stream the object once and yield each line's byte span; never holds more than a chunk plus a line."""
        for span, _ in self._split(info, keep=False):
            yield span

    def lines(self, info: ObjectInfo, start: int = 0) -> Iterator[bytes]:
        """Stream the object once (from byte `start`, a line's first) and yield each line without its newline (a
        trailing '\\r' is kept)."""
        for _, line in self._split(info, keep=True, start=start):
            yield line

    def _split(self, info: ObjectInfo, keep: bool, start: int = 0) -> Iterator[tuple[LineSpan, bytes]]:
        try:
            body = self._get(info, f"bytes={start}-" if start else None)
        except ClientError as error:
            if start and error.response.get("Error", {}).get("Code") == "InvalidRange":  # from the very end on
                return
            raise
        offset = start  # absolute offset of the first byte of `pending`
        pending = b""
        while chunk := body.read(_READ_CHUNK):
            pending += chunk
            cut = 0
            while (newline := pending.find(b"\n", cut)) != -1:
                yield LineSpan(offset + cut, offset + newline + 1), pending[cut:newline] if keep else b""
                cut = newline + 1
            offset += cut
            pending = pending[cut:]
        if pending:  # a last line without a trailing newline
            yield LineSpan(offset, offset + len(pending)), pending

    def read_range(self, info: ObjectInfo, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        return self._get(info, f"bytes={start}-{end - 1}").read()

    def read_bytes(self, bucket: str, key: str) -> bytes:
        """A whole object the service wrote itself (not pinned: it is written once)."""
        body: bytes = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def read_if_exists(self, bucket: str, key: str) -> bytes | None:
        try:
            return self.read_bytes(bucket, key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None
            raise

    def keys(self, bucket: str, prefix: str) -> Iterator[str]:
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def start_multipart(self, bucket: str, key: str, content_type: str = "application/x-ndjson") -> str:
        upload_id: str = self._s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type)["UploadId"]
        return upload_id

    def upload_part(self, bucket: str, key: str, upload_id: str, number: int, body: bytes) -> str:
        with _upload_gone_as_such(upload_id):
            response = self._s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)
        etag: str = response["ETag"]
        return etag

    def complete_multipart(self, bucket: str, key: str, upload_id: str, etags: list[str]) -> None:
        parts = [{"PartNumber": number, "ETag": etag} for number, etag in enumerate(etags, start=1)]
        with _upload_gone_as_such(upload_id):
            self._s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})

    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            self._s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise

    def delete(self, bucket: str, key: str) -> None:
        self._s3.delete_object(Bucket=bucket, Key=key)

    def put_bytes(self, bucket: str, key: str, body: bytes, content_type: str = "application/x-ndjson") -> None:
        self._s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)

    def put_json(self, bucket: str, key: str, value: Any) -> None:
        self.put_bytes(bucket, key, json.dumps(value, indent=2, ensure_ascii=False).encode("utf-8"), "application/json")

    def upload_file(self, bucket: str, key: str, fileobj: IO[bytes], content_type: str = "application/x-ndjson") -> None:
        """Multipart upload from a file object: results.jsonl may be far larger than memory."""
        self._s3.upload_fileobj(fileobj, bucket, key, ExtraArgs={"ContentType": content_type})


@contextmanager
def _upload_gone_as_such(upload_id: str) -> Iterator[None]:
    try:
        yield
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "NoSuchUpload":
            raise UploadGone(f"multipart upload {upload_id} no longer exists") from error
        raise
