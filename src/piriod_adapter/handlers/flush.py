"""FlushFunction: every minute (SPEC 9), close the aggregation windows that are due and post
each one's total once. The scheduled event's content is ignored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from piriod_adapter.clock import Deadline
from piriod_adapter.coldstart import releases_after_call
from piriod_adapter.flush import run_flush
from piriod_adapter.observability import logger, metrics
from piriod_adapter.runtime import get_runtime, tracer_of
from piriod_adapter.snapstart import register

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

DEADLINE_RESERVE_SECONDS = 5.0

register()  # SnapStart's runtime hooks (nothing outside the Lambda runtime)


@releases_after_call  # the collector, held back for the cold start (coldstart.py)
@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    with tracer_of(get_runtime).invocation("flush", kind="internal") as span:  # per flush run
        result = run_flush(get_runtime(), Deadline.from_context(context, DEADLINE_RESERVE_SECONDS))
        span.set(**{f"flush.{k}": v for k, v in result.items() if isinstance(v, int | float)})
        if "error" in result:
            span.fail(str(result["error"])[:200])
    return result
