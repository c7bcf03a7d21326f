"""ReplayFunction: ReplayQueue batches, submitted concurrently, with partial batch failures
(the event source mapping's ReportBatchItemFailures response)."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.utilities.data_classes import SQSEvent
from aws_lambda_powertools.utilities.typing import LambdaContext

from piriod_adapter.clock import Deadline
from piriod_adapter.coldstart import releases_after_call
from piriod_adapter.observability import logger, metrics
from piriod_adapter.replay import run_replay
from piriod_adapter.runtime import get_runtime, tracer_of
from piriod_adapter.snapstart import register

DEADLINE_RESERVE_SECONDS = 5.0

register()  # SnapStart's runtime hooks (nothing outside the Lambda runtime)


@releases_after_call  # the collector, held back for the cold start (coldstart.py)
@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    received_at = time.monotonic()  # the batch was received just before this
    deadline = Deadline.from_context(context, DEADLINE_RESERVE_SECONDS)
    records = list(SQSEvent(event).records)
    # One span per batch; each record's own span continues the trace its message carries.
    with tracer_of(get_runtime).invocation(
        "replay",
        {"messaging.system": "aws_sqs", "messaging.batch.message_count": len(records)},
        kind="consumer",
    ):
        return run_replay(records, get_runtime(), deadline, received_at)
