"""EventBridgeJobEvents: job state-change events (sagebatch.ports.JobEvents) onto an EventBridge bus, and finished
jobs onto an optional SNS topic.

PutEvents answers 200 even when it did not take an entry: `FailedEntryCount` says so. A failed entry is sent again
(twice at most, after a short pause), then PublishFailed is raised so the caller's message comes back and its
step publishes the change again (delivery is at least once; subscribers dedupe on the detail's `event_id`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sagebatch.domain.events import DETAIL_TYPE, NOTIFIED, SOURCE, JobStateChange
from sagebatch.ports import PublishFailed

# SNS subjects: printable ASCII, no line breaks, fewer than 100 characters.
_SUBJECT_UNSAFE = re.compile(r"[^\x20-\x7e]")
_SUBJECT_MAX = 99


class EventBridgeJobEvents:
    def __init__(
        self,
        events: Any,
        bus_name: str = "default",
        sns: Any = None,
        topic_arn: str | None = None,
        attempts: int = 3,
        pause_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if topic_arn and sns is None:
            raise ValueError("a notification topic needs an SNS client")
        self._events = events
        self._bus_name = bus_name
        self._sns = sns
        self._topic_arn = topic_arn or None
        self._attempts = max(1, attempts)
        self._pause_s = pause_s
        self._sleep = sleep

    def publish(self, event: JobStateChange) -> None:
        detail = event.detail_json()
        self._put_event(event, detail)
        if self._topic_arn and event.status in NOTIFIED:
            self._sns.publish(
                TopicArn=self._topic_arn,
                Subject=subject(event),
                Message=detail,
                # For subscription filter policies, e.g. {"status": ["FAILED"]}.
                MessageAttributes={
                    "status": {"DataType": "String", "StringValue": str(event.status)},
                    "job_id": {"DataType": "String", "StringValue": event.job_id},
                },
            )

    def _put_event(self, event: JobStateChange, detail: str) -> None:
        entry = {
            "Source": SOURCE,
            "DetailType": DETAIL_TYPE,
            "Detail": detail,
            "EventBusName": self._bus_name,
            "Time": datetime.fromisoformat(event.time),
        }
        failure: dict[str, Any] = {}
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(self._pause_s * 2 ** (attempt - 1))
            response = self._events.put_events(Entries=[entry])
            if not response.get("FailedEntryCount"):
                return
            failure = (response.get("Entries") or [{}])[0]
        raise PublishFailed(
            f"event {event.event_id} not accepted by bus {self._bus_name} after {self._attempts} attempts: "
            f"{failure.get('ErrorCode', 'unknown error')} {failure.get('ErrorMessage', '')}".rstrip()
        )


def subject(event: JobStateChange) -> str:
    """`sagebatch job COMPLETED: <job id>`, made safe for SNS (printable ASCII, under 100 characters)."""
    text = _SUBJECT_UNSAFE.sub("?", f"sagebatch job {event.status}: {event.job_id}")
    return text if len(text) <= _SUBJECT_MAX else text[: _SUBJECT_MAX - 3] + "..."
