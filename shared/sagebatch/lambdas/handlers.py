"""Record handlers shared by the thin Lambda entry points in functions/*/app.py.

Each SQS message is processed on its own; failures become `batchItemFailures`
(ReportBatchItemFailures is set on every event source in template.yaml).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from sagebatch.lambdas import service
from sagebatch.domain.messages import FinalizeRequest, Shard

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
    def handle(record: SQSRecord) -> None:
        service.intake().handle_message(record.body, record.message_id)

    return _process(event, context, handle)


def worker(event: dict[str, Any], context: Any) -> dict[str, Any]:
    def keep_going() -> bool:
        return context is None or context.get_remaining_time_in_millis() > CALL_TIME_RESERVE_MS

    def handle(record: SQSRecord) -> None:
        shard = Shard.model_validate_json(record.body)
        receives = int(record.attributes.approximate_receive_count or 1)
        service.shard_processor().process(shard, final_attempt=receives >= FINAL_ATTEMPT_RECEIVE_COUNT, keep_going=keep_going)

    return _process(event, context, handle)


def finalizer(event: dict[str, Any], context: Any) -> dict[str, Any]:
    def handle(record: SQSRecord) -> None:
        service.finalizer().finalize(FinalizeRequest.model_validate_json(record.body).job_id)

    return _process(event, context, handle)
