"""FlushFunction: every minute (SPEC 9), close the aggregation windows that are due and post
each one's total once. The scheduled event's content is ignored."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from piriod_adapter.clock import Deadline
from piriod_adapter.flush import run_flush
from piriod_adapter.observability import logger, metrics
from piriod_adapter.runtime import get_runtime
from piriod_adapter.snapstart import register

DEADLINE_RESERVE_SECONDS = 5.0

register()  # SnapStart's runtime hooks (nothing outside the Lambda runtime)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return run_flush(get_runtime(), Deadline.from_context(context, DEADLINE_RESERVE_SECONDS))
