"""Record handlers shared by the thin Lambda entry points in functions/*/app.py.

Each SQS message is processed on its own; failures become `batchItemFailures`
(ReportBatchItemFailures is set on every event source in template.yaml). Each handler adds its metrics
(sagebatch.lambdas.telemetry) to its function's EMF set, which the entry point's `@log_metrics` flushes.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from sagebatch.domain.messages import FinalizeRequest, Shard
from sagebatch.lambdas import metrics as names
from sagebatch.lambdas import service, telemetry
from sagebatch.observability import function_metrics
from sagebatch.usecases.worker import ShardIncomplete

# A worker stops taking new records when it could no longer finish one endpoint call
# (60 s SageMaker limit + margin); the rest go back to the queue as item failures.
CALL_TIME_RESERVE_MS = 75_000
# maxReceiveCount is 5: on the 4th delivery retryable failures are recorded as failed results,
# leaving one spare delivery for a crash, so no record waits in the DLQ without a result.
FINAL_ATTEMPT_RECEIVE_COUNT = 4


def _process(event: dict[str, Any], context: Any, record_handler: Any) -> dict[str, Any]:
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)


def intake(event: dict[str, Any], context: Any) -> dict[str, Any]:
    metrics = function_metrics(names.INTAKE)

    def handle(record: SQSRecord) -> None:
        outcomes = service.intake().handle_message(record.body, record.message_id)
        telemetry.publish(metrics, telemetry.intake_metrics(outcomes))

    return _process(event, context, handle)


def worker(event: dict[str, Any], context: Any) -> dict[str, Any]:
    def keep_going() -> bool:
        return context is None or context.get_remaining_time_in_millis() > CALL_TIME_RESERVE_MS

    metrics = function_metrics(names.WORKER)

    def handle(record: SQSRecord) -> None:
        shard = Shard.model_validate_json(record.body)
        receives = int(record.attributes.approximate_receive_count or 1)
        started = time.monotonic()
        try:
            outcome = service.shard_processor().process(
                shard, final_attempt=receives >= FINAL_ATTEMPT_RECEIVE_COUNT, keep_going=keep_going
            )
        except ShardIncomplete as incomplete:
            telemetry.publish(metrics, telemetry.record_metrics(incomplete.delivered, time.monotonic() - started, True))
            raise
        telemetry.publish(metrics, telemetry.record_metrics(outcome.delivered, time.monotonic() - started))

    try:
        return _process(event, context, handle)
    finally:  # the endpoint's side of the whole batch, whatever became of its records
        telemetry.publish(metrics, service.endpoint_caller().take())


def finalizer(event: dict[str, Any], context: Any) -> dict[str, Any]:
    metrics = function_metrics(names.FINALIZER)

    def handle(record: SQSRecord) -> None:
        outcome = service.finalizer().finalize(FinalizeRequest.model_validate_json(record.body).job_id)
        telemetry.publish(metrics, telemetry.finalize_metrics(outcome))

    return _process(event, context, handle)
