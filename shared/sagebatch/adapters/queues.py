"""SqsMessageSender: JSON messages onto SQS, ten per request, failures surfaced (never silently dropped).
SqsDeadLetterQueues: redrive a dead-letter queue back to its source."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel

from sagebatch.ports import MoveTaskUnsupported, NoRedriveDestination, SendFailed, WorkItem

_SQS_BATCH = 10


class SqsMessageSender:
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


# Error codes meaning "this SQS does not offer the action", as opposed to a problem with the request.
_UNSUPPORTED = {"UnsupportedOperation", "AWS.SimpleQueueService.UnsupportedOperation", "InvalidAction"}


class SqsWorkSource:
    """The work queue as a worker takes shards from it itself (sagebatch.ports.WorkSource)."""

    def __init__(self, sqs: Any, queue_url: str, visibility_timeout_s: int, release_delay_s: int = 5):
        self._sqs = sqs
        self._queue_url = queue_url
        self._visibility_timeout_s = visibility_timeout_s
        self._release_delay_s = release_delay_s

    def receive(self, max_items: int) -> list[WorkItem]:
        response = self._sqs.receive_message(
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=max(1, min(_SQS_BATCH, max_items)),
            WaitTimeSeconds=0,
            VisibilityTimeout=self._visibility_timeout_s,
            AttributeNames=["ApproximateReceiveCount"],
        )
        return [
            WorkItem(
                m["MessageId"], m["Body"], int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)), m["ReceiptHandle"]
            )
            for m in response.get("Messages", [])
        ]

    def done(self, item: WorkItem) -> None:
        self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=item.handle)

    def release(self, item: WorkItem) -> None:
        # Visible again after a short pause (not at once: a shard handed back for a retryable endpoint failure
        # should not come straight back to the same overloaded endpoint).
        self._sqs.change_message_visibility(
            QueueUrl=self._queue_url, ReceiptHandle=item.handle, VisibilityTimeout=self._release_delay_s
        )


class SqsDeadLetterQueues:
    """Redrive: put a dead-letter queue's messages back on a queue whose consumer will process them again."""

    def __init__(self, sqs: Any):
        self._sqs = sqs

    def arn(self, queue_url: str) -> str:
        return self._sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    def start_move_task(self, dlq_url: str, destination_url: str | None = None) -> str:
        """Start SQS's own redrive (StartMessageMoveTask); returns the task handle. Without a destination SQS sends
        each message back to the queue it dead-lettered from. Moved messages are new messages (new id, new
        retention period, receive count 1)."""
        kwargs = {"SourceArn": self.arn(dlq_url)}
        if destination_url:
            kwargs["DestinationArn"] = self.arn(destination_url)
        try:
            return self._sqs.start_message_move_task(**kwargs)["TaskHandle"]
        except NotImplementedError as error:  # moto raises this for actions it does not implement
            raise MoveTaskUnsupported(str(error)) from error
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in _UNSUPPORTED:
                raise MoveTaskUnsupported(error.response["Error"].get("Message", "unsupported")) from error
            raise

    def only_source(self, dlq_url: str) -> str:
        """The one queue that dead-letters into `dlq_url` (each sagebatch DLQ serves exactly one)."""
        sources = self._sqs.list_dead_letter_source_queues(QueueUrl=dlq_url).get("queueUrls", [])
        if len(sources) != 1:
            raise NoRedriveDestination(f"{dlq_url} is the dead-letter queue of {len(sources)} queues; name the destination")
        return sources[0]

    def copy_messages(self, dlq_url: str, destination_url: str, wait_s: int = 1) -> int:
        """Move messages by hand, ten at a time: send to the destination, then delete from the DLQ. A crash between
        the two leaves a copy in both, which is harmless here: every sagebatch message is idempotent."""
        moved = 0
        while True:
            messages = self._sqs.receive_message(
                QueueUrl=dlq_url,
                MaxNumberOfMessages=_SQS_BATCH,
                WaitTimeSeconds=wait_s,
                MessageAttributeNames=["All"],
                VisibilityTimeout=60,
            ).get("Messages", [])
            if not messages:
                return moved
            entries = [{"Id": str(i), "MessageBody": m["Body"], **_attributes(m)} for i, m in enumerate(messages)]
            response = self._sqs.send_message_batch(QueueUrl=destination_url, Entries=entries)
            sent = {entry["Id"] for entry in response.get("Successful", [])}
            if sent:
                done = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages) if str(i) in sent]
                self._sqs.delete_message_batch(QueueUrl=dlq_url, Entries=done)
            moved += len(sent)
            if len(sent) < len(messages):  # the rest stay in the DLQ and become visible again
                raise SendFailed(f"{len(messages) - len(sent)} messages could not be sent to {destination_url} ({moved} moved)")


def _attributes(message: dict[str, Any]) -> dict[str, Any]:
    """A received message's attributes in the shape SendMessageBatch takes (sagebatch's own messages have none)."""
    keep = ("DataType", "StringValue", "BinaryValue")
    attributes = {
        name: {k: v for k, v in value.items() if k in keep} for name, value in message.get("MessageAttributes", {}).items()
    }
    return {"MessageAttributes": attributes} if attributes else {}


def region_of_queue_url(queue_url: str) -> str | None:
    """us-east-1 for https://sqs.us-east-1.amazonaws.com/123456789012/q (None for other URL shapes)."""
    match = re.match(r"^https?://sqs\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?/", queue_url)
    return match.group(1) if match else None
