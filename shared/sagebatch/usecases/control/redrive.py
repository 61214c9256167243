"""Redrive: send a dead-letter queue's messages back for processing."""

from __future__ import annotations

from dataclasses import dataclass

from sagebatch.ports import DeadLetterQueues, MoveTaskUnsupported


@dataclass(frozen=True)
class RedriveOutcome:
    method: str  # "move-task": SQS moves the messages asynchronously; "copy": moved here, one batch at a time
    task_handle: str | None = None
    moved: int = 0
    note: str = ""


def redrive(queues: DeadLetterQueues, dlq_url: str, destination_url: str | None = None, copy: bool = False) -> RedriveOutcome:
    """Send a dead-letter queue's messages back for processing: SQS's StartMessageMoveTask where it exists (the
    documented way), else (or with `copy`) a receive / send / delete loop to `destination_url`, or to the DLQ's
    only source queue."""
    note = ""
    if not copy:
        try:
            return RedriveOutcome("move-task", task_handle=queues.start_move_task(dlq_url, destination_url))
        except MoveTaskUnsupported as error:
            note = f"StartMessageMoveTask is not available here ({error}); copied the messages instead"
    destination = destination_url or queues.only_source(dlq_url)
    return RedriveOutcome("copy", moved=queues.copy_messages(dlq_url, destination), note=note)
