"""ParkFunction: every hour (SPEC 5), park the dead letters SQS would drop within days, and
measure the oldest dead letter. The scheduled event's content is ignored."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from piriod_adapter.clock import Deadline
from piriod_adapter.coldstart import releases_after_call
from piriod_adapter.observability import logger, metrics
from piriod_adapter.park import run_park
from piriod_adapter.runtime import get_runtime
from piriod_adapter.snapstart import register

DEADLINE_RESERVE_SECONDS = 10.0

register()  # SnapStart's runtime hooks (nothing outside the Lambda runtime)


@releases_after_call  # the collector, held back for the cold start (coldstart.py)
@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return run_park(get_runtime(), Deadline.from_context(context, DEADLINE_RESERVE_SECONDS))
