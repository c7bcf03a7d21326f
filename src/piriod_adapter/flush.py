"""One run of FlushFunction: close due windows, post their totals, and measure the lag."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from piriod_adapter.aggregation import flush
from piriod_adapter.clock import Deadline
from piriod_adapter.idempotency import StoreUnavailable
from piriod_adapter.observability import logger, metrics
from piriod_adapter.runtime import Runtime


def run_flush(runtime: Runtime, deadline: Deadline) -> dict[str, Any]:
    """Flush what is due; the counts are returned (and logged), the lag is a metric the
    flush-lag alarm watches: how long the oldest due window is neither posted nor queued."""
    settings = runtime.settings
    try:
        report = flush(
            runtime.windows,
            runtime.submitter,
            runtime.queue.store_failed,
            settings.piriod_workspace_id,
            deadline,
            settings.post_concurrency,
        )
    except StoreUnavailable as exc:  # the due index cannot be read: the next run tries again
        logger.error("cannot read due windows", extra={"error": str(exc)})
        metrics.add_metric(name="windows_flush_failures", unit=MetricUnit.Count, value=1)
        return {"error": str(exc)}
    metrics.add_metric(name="windows_flushed", unit=MetricUnit.Count, value=report.posted)
    metrics.add_metric(name="windows_queued", unit=MetricUnit.Count, value=report.queued)
    metrics.add_metric(name="windows_left", unit=MetricUnit.Count, value=report.left)
    metrics.add_metric(
        name="window_flush_lag", unit=MetricUnit.Seconds, value=round(report.lag_seconds, 3)
    )
    result = report.__dict__.copy()
    logger.info("windows flushed", extra=result)
    return result
