"""WebhookFunction: API Gateway HTTP API (payload 2.0) -> the delivery's answer.

Two routes only, so they are told apart here rather than by Powertools' event handler,
whose import alone costs about 100 ms of every cold start (`make bench`)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from piriod_adapter.clock import Deadline
from piriod_adapter.observability import logger, metrics
from piriod_adapter.runtime import get_runtime
from piriod_adapter.snapstart import register
from piriod_adapter.webhook import answer

DEADLINE_RESERVE_SECONDS = 5.0  # stop starting posts this long before the function times out

register()  # SnapStart's runtime hooks (nothing outside the Lambda runtime)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    deadline = Deadline.from_context(context, DEADLINE_RESERVE_SECONDS)
    return answer(event, get_runtime, deadline).to_api_gateway()
