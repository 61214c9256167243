"""MessageSender: JSON messages onto SQS, ten per request, failures surfaced (never silently dropped)."""

from __future__ import annotations

from typing import Any, Iterable

from pydantic import BaseModel

_SQS_BATCH = 10


class SendFailed(Exception):
    pass


class MessageSender:
    def __init__(self, sqs: Any, queue_url: str):
        self._sqs = sqs
        self._queue_url = queue_url

    def send(self, message: BaseModel) -> None:
        self.send_all([message])

    def send_all(self, messages: Iterable[BaseModel]) -> int:
        sent = 0
        batch: list[BaseModel] = []
        for message in messages:
            batch.append(message)
            if len(batch) == _SQS_BATCH:
                sent += self._send_batch(batch)
                batch = []
        if batch:
            sent += self._send_batch(batch)
        return sent

    def _send_batch(self, batch: list[BaseModel]) -> int:
        entries = [{"Id": str(i), "MessageBody": m.model_dump_json()} for i, m in enumerate(batch)]
        response = self._sqs.send_message_batch(QueueUrl=self._queue_url, Entries=entries)
        failed = response.get("Failed", [])
        if failed:
            # Retry the failed entries once, then raise so the caller's message is redelivered.
            retry = [e for e in entries if e["Id"] in {f["Id"] for f in failed}]
            response = self._sqs.send_message_batch(QueueUrl=self._queue_url, Entries=retry)
            if response.get("Failed"):
                raise SendFailed(f"{len(response['Failed'])} messages could not be sent to {self._queue_url}")
        return len(entries)
