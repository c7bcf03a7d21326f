"""ReplayFunction: SQS (ReplayQueue) batches with partial batch failures."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from piriod_adapter.clock import Deadline
from piriod_adapter.models import QueuedRecord
from piriod_adapter.observability import logger, metrics
from piriod_adapter.queue import DEAD_LETTER
from piriod_adapter.replay import Verdict, backoff_seconds, replay_one
from piriod_adapter.runtime import get_runtime

DEADLINE_RESERVE_SECONDS = 5.0

# Every record failing is still a partial-batch answer (all listed), not a function error.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
_invocation_started = time.monotonic()


class RetryLater(Exception):
    """Leave this message in ReplayQueue; SQS delivers it again after its visibility timeout."""


def _record_handler(record: SQSRecord) -> str:
    runtime = get_runtime()
    settings = runtime.settings
    try:
        message = QueuedRecord.from_json(record.body)
    except (ValidationError, ValueError):
        # Not a record this version can read: a person must look at it, now rather than after
        # every attempt has failed the same way.
        runtime.queue.send_raw(DEAD_LETTER, record.body, kind="unreadable")
        logger.error("unreadable ReplayQueue message moved to DeadLetterQueue")
        metrics.add_metric(name="replay_unreadable", unit="Count", value=1)
        return "unreadable"
    receive_count = int(record.attributes.approximate_receive_count or 1)
    deadline = Deadline.from_context(processor.lambda_context, DEADLINE_RESERVE_SECONDS)
    result = replay_one(
        message,
        record.message_id,
        receive_count,
        runtime.submitter,
        runtime.queue,
        deadline,
        settings.replay_max_attempts,
    )
    outcome = result.outcome
    metrics.add_metric(
        name=f"replay_{outcome.status.value if outcome.status else 'not_stored'}",
        unit="Count",
        value=1,
    )
    if outcome.ambiguous:
        metrics.add_metric(name="replay_ambiguous", unit="Count", value=1)
    if result.verdict is Verdict.RETRY:
        delay = backoff_seconds(
            result.message.attempts,
            settings.replay_backoff_seconds,
            since_receipt=time.monotonic() - _invocation_started,
        )
        try:
            runtime.sqs.change_message_visibility(
                QueueUrl=settings.replay_queue_url,
                ReceiptHandle=record.receipt_handle,
                VisibilityTimeout=delay,
            )
        except Exception as exc:  # the queue's own visibility timeout applies instead
            logger.warning("could not set back-off", extra={"error": type(exc).__name__})
        raise RetryLater(outcome.reason or (outcome.failure.error if outcome.failure else "retry"))
    return outcome.status.value if outcome.status else "done"


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    global _invocation_started
    _invocation_started = time.monotonic()  # the batch was received just before this
    return process_partial_response(
        event=event, record_handler=_record_handler, processor=processor, context=context
    )
