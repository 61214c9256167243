"""Record handlers shared by the thin Lambda entry points in functions/*/app.py.

Each SQS message is processed on its own; failures become `batchItemFailures`
(ReportBatchItemFailures is set on every event source in template.yaml). Each handler adds its metrics
(sagebatch.lambdas.telemetry) to its function's EMF set, which the entry point's `@log_metrics` flushes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from sagebatch.domain.messages import FinalizeRequest
from sagebatch.lambdas import metrics as names
from sagebatch.lambdas import service, telemetry
from sagebatch.observability import function_metrics
from sagebatch.usecases.batch import Delivery
from sagebatch.usecases.worker import ShardIncomplete, ShardOutcome


def _process(event: dict[str, Any], context: Any, record_handler: Any) -> dict[str, Any]:
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return dict(process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context))


# Intake stops enqueueing with this much time left: enough to finish the sends in flight, save its progress and
# send the job's `resume_intake` message (each a fraction of a second; a minute covers throttled retries).
INTAKE_TIME_RESERVE_MS = 60_000


def intake(event: dict[str, Any], context: Any) -> dict[str, Any]:
    metrics = function_metrics(names.INTAKE)

    def keep_going() -> bool:
        return context is None or context.get_remaining_time_in_millis() > INTAKE_TIME_RESERVE_MS

    def handle(record: SQSRecord) -> None:
        outcomes = service.intake().handle_message(record.body, record.message_id, keep_going)
        telemetry.publish(metrics, telemetry.intake_metrics(outcomes))

    return _process(event, context, handle)


def worker(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The event's shards run together, and the invocation takes more from the work queue while it has time and
    room (usecases/batch.py), holding this environment's share of the endpoint meanwhile (endpoint/share.py).

    Every endpoint call starts only while the invocation has more than `call_time_reserve_s` left (its worst
    case): records without time for their call go back to the queue as item failures, and the invocation returns
    before its timeout."""
    metrics = function_metrics(names.WORKER)
    deliveries = [
        Delivery(r["messageId"], r["body"], int(r.get("attributes", {}).get("ApproximateReceiveCount", 1)))
        for r in event.get("Records", [])
    ]

    def on_shard(delivery: Delivery, outcome: ShardOutcome | None, error: BaseException | None, seconds: float) -> None:
        if outcome is not None:
            telemetry.publish(metrics, telemetry.record_metrics(outcome.delivered, seconds))
        elif isinstance(error, ShardIncomplete):
            telemetry.publish(metrics, telemetry.record_metrics(error.delivered, seconds, True))

    try:
        with service.slot_share().holding():
            invocation = service.worker_invocation()
            budget = invocation.time_budget(_remaining_s(context))
            report = invocation.run(deliveries, budget, service.wants_more_work, on_shard=on_shard)
    finally:  # the endpoint's side of the whole invocation, whatever became of its records
        telemetry.publish(metrics, service.endpoint_caller().take())
    return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in sorted(report.failed_message_ids)]}


def _remaining_s(context: Any) -> Callable[[], float]:
    """The invocation's time left, read from the Lambda context each time it is asked (no context: no limit)."""
    if context is None:
        return lambda: math.inf
    return lambda: context.get_remaining_time_in_millis() / 1000


# The finalizer stops assembling results.jsonl with this much time left: enough to upload the part in hand and
# save its checkpoint (a few S3 PUTs of up to 8 MiB), then send the message that resumes it.
ASSEMBLY_TIME_RESERVE_MS = 60_000


def finalizer(event: dict[str, Any], context: Any) -> dict[str, Any]:
    metrics = function_metrics(names.FINALIZER)

    def keep_going() -> bool:
        return context is None or context.get_remaining_time_in_millis() > ASSEMBLY_TIME_RESERVE_MS

    def handle(record: SQSRecord) -> None:
        outcome = service.finalizer().finalize(FinalizeRequest.model_validate_json(record.body).job_id, keep_going)
        telemetry.publish(metrics, telemetry.finalize_metrics(outcome))

    return _process(event, context, handle)
