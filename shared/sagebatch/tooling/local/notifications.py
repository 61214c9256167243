"""Reading back what a local stack published: job events on its EventBridge bus, notifications on its SNS topic.

Each is routed into an SQS queue the way a subscriber would route it (an EventBridge rule with an SQS target; an
SNS subscription of a queue). moto delivers both during the publishing call, so once a handler has returned its
events are in the queue, in the order they were published::

    with local_stack() as run:
        events = EventCapture.on(run.stack)              # before the job: a rule only sees events put after it
        job_id = run.drop_file(data, "inputs/x.jsonl")
        run.wait_for(job_id)
        events.statuses(job_id)                          # ['CREATING', 'RUNNING', 'FINALIZING', 'COMPLETED']
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import boto3

from sagebatch.domain.events import DETAIL_TYPE, SOURCE
from sagebatch.tooling.local.stack import REGION, LocalStack


class _CaptureQueue:
    """An SQS queue read to the end on demand; everything read is kept, in arrival order."""

    def __init__(self, name: str):
        self._sqs = boto3.client("sqs", region_name=REGION)
        self.url = self._sqs.create_queue(QueueName=name)["QueueUrl"]
        self.arn = self._sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self._bodies: list[str] = []

    def bodies(self) -> list[str]:
        while True:
            messages = self._sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10).get("Messages", [])
            if not messages:
                return list(self._bodies)
            for message in messages:
                self._bodies.append(message["Body"])
                self._sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])


class EventCapture:
    """A rule on the stack's bus matching sagebatch's job events, its target an SQS queue."""

    def __init__(self, bus_name: str = "default"):
        self.bus_name = bus_name
        suffix = uuid.uuid4().hex[:8]
        self._queue = _CaptureQueue(f"sagebatch-events-{suffix}")
        events = boto3.client("events", region_name=REGION)
        rule = f"sagebatch-job-events-{suffix}"
        pattern = {"source": [SOURCE], "detail-type": [DETAIL_TYPE]}
        events.put_rule(Name=rule, EventBusName=bus_name, EventPattern=json.dumps(pattern), State="ENABLED")
        events.put_targets(Rule=rule, EventBusName=bus_name, Targets=[{"Id": "capture", "Arn": self._queue.arn}])

    @classmethod
    def on(cls, stack: LocalStack) -> EventCapture:
        return cls(stack.event_bus_name)

    def events(self) -> list[dict[str, Any]]:
        """Every event received so far (EventBridge's envelope: source, detail-type, time, detail ...), in order."""
        return [json.loads(body) for body in self._queue.bodies()]

    def details(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """The events' details (JobStateChange as JSON), of one job if given."""
        return [e["detail"] for e in self.events() if job_id is None or e["detail"]["job_id"] == job_id]

    def statuses(self, job_id: str) -> list[str]:
        return [detail["status"] for detail in self.details(job_id)]


class TopicCapture:
    """An SQS queue subscribed to the stack's notification topic (NotificationTopicArn)."""

    def __init__(self, topic_arn: str):
        self.topic_arn = topic_arn
        self._queue = _CaptureQueue(f"sagebatch-notifications-{uuid.uuid4().hex[:8]}")
        boto3.client("sns", region_name=REGION).subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=self._queue.arn)

    @classmethod
    def on(cls, stack: LocalStack) -> TopicCapture:
        if not stack.notification_topic_arn:
            raise ValueError("the stack has no NotificationTopicArn")
        return cls(stack.notification_topic_arn)

    def notifications(self) -> list[dict[str, Any]]:
        """Every SNS notification received so far (Subject, Message, MessageAttributes ...), in order."""
        return [json.loads(body) for body in self._queue.bodies()]

    def details(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """The notifications' messages (JobStateChange as JSON), of one job if given."""
        details = [json.loads(n["Message"]) for n in self.notifications()]
        return [d for d in details if job_id is None or d["job_id"] == job_id]
