"""The service's logger and metrics (Powertools), shared by every module."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

if TYPE_CHECKING:
    from aws_lambda_powertools.metrics.metric import SingleMetric

SERVICE = "piriod-usage-adapter"

logger = Logger(service=SERVICE)
NAMESPACE = "PiriodUsageAdapter"
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

# The AWS SDK and the HTTP client log whole requests and answers at DEBUG: Secrets Manager's
# answers hold the Piriod token and the signing secrets. Lambda sets the root logger to the
# function's log level, so they are held at WARNING whatever LogLevel says.
for _noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


def count_records(counts: Mapping[str, int], source: str | None) -> None:
    """Records by outcome (`records_<outcome>`), for the whole service, which the alarms
    watch, and, for a third-party meter, once more with its `source` as a dimension."""
    for name, value in counts.items():
        if value:
            metrics.add_metric(name=f"records_{name}", unit=MetricUnit.Count, value=value)
    if source is None:
        return
    for name, value in counts.items():
        if value:
            with single_metric(f"records_{name}", value) as metric:
                metric.add_dimension(name="source", value=source)


def count_corrections(counts: Mapping[str, int]) -> None:
    """Corrections by status (`corrections_<status>`: applied, pending, duplicate,
    not_found, rejected, not_stored)."""
    for name, value in counts.items():
        if value:
            metrics.add_metric(name=f"corrections_{name}", unit=MetricUnit.Count, value=value)


@contextmanager
def single_metric(
    name: str, value: float, unit: MetricUnit = MetricUnit.Count
) -> Iterator[SingleMetric]:
    """One metric with dimensions of its own, printed as its own EMF document when the block
    ends; nothing is printed when metrics are disabled, as Powertools' Metrics decides it
    (POWERTOOLS_METRICS_DISABLED true, or POWERTOOLS_DEV true and it unset), which
    Powertools' own single_metric does not check."""
    from aws_lambda_powertools.metrics import single_metric as powertools_single
    from aws_lambda_powertools.metrics.functions import is_metrics_disabled

    if not is_metrics_disabled():
        with powertools_single(
            name=name,
            unit=unit,
            value=value,
            namespace=NAMESPACE,
            default_dimensions={"service": SERVICE},
        ) as metric:
            yield metric
        return
    from aws_lambda_powertools.metrics.metric import SingleMetric

    metric = SingleMetric(namespace=NAMESPACE)
    metric.add_metric(name=name, unit=unit, value=value)
    metric.add_dimension(name="service", value=SERVICE)
    yield metric
    metric.serialize_metric_set()  # the same checks as when printed; nothing is printed
