"""ReplayFunction: ReplayQueue batches, submitted concurrently, with partial batch failures
(the event source mapping's ReportBatchItemFailures response)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.data_classes import SQSEvent

from piriod_adapter.clock import Deadline
from piriod_adapter.observability import logger, metrics
from piriod_adapter.replay import Received, Verdict, replay_batch, retry_later
from piriod_adapter.runtime import Runtime, get_runtime, tracer_of
from piriod_adapter.snapstart import register

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

DEADLINE_RESERVE_SECONDS = 5.0

register()  # SnapStart's runtime hooks (nothing outside the Lambda runtime)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    received_at = time.monotonic()  # the batch was received just before this
    runtime = get_runtime()
    records = list(SQSEvent(event).records)
    # One span per batch; each record's own span continues the trace its message carries.
    with tracer_of(get_runtime).invocation(
        "replay",
        {"messaging.system": "aws_sqs", "messaging.batch.message_count": len(records)},
        kind="consumer",
    ):
        return _replay(runtime, records, context, received_at)


def _replay(
    runtime: Runtime, records: list[SQSRecord], context: LambdaContext, received_at: float
) -> dict[str, Any]:
    batch = [
        Received(r.message_id, r.body, int(r.attributes.approximate_receive_count or 1))
        for r in records
    ]
    results = replay_batch(
        batch,
        runtime.submitter,
        runtime.queue,
        Deadline.from_context(context, DEADLINE_RESERVE_SECONDS),
        runtime.settings.replay_max_attempts,
        runtime.settings.post_concurrency,
    )
    retry_later(
        runtime.queue,
        [(r.receipt_handle, result) for r, result in zip(records, results, strict=True)],
        runtime.settings.replay_backoff_seconds,
        time.monotonic() - received_at,
    )
    for result in results:
        outcome = result.outcome
        if outcome is not None and outcome.tried and not outcome.busy:
            metrics.add_metric(name="replay_attempts", unit="Count", value=1)
        status = outcome.status.value if outcome and outcome.status else "not_stored"
        metrics.add_metric(
            name=f"replay_{status if outcome else 'unreadable'}", unit="Count", value=1
        )
        if outcome is not None and outcome.ambiguous:
            metrics.add_metric(name="replay_ambiguous", unit="Count", value=1)
    return {
        "batchItemFailures": [
            {"itemIdentifier": r.message_id}
            for r, result in zip(records, results, strict=True)
            if result.verdict is Verdict.RETRY
        ]
    }
