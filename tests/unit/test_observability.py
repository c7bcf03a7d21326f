"""Metrics with dimensions of their own (a source's records) follow the same switch as the
service's Metrics: POWERTOOLS_METRICS_DISABLED, and POWERTOOLS_DEV when it is unset."""

from __future__ import annotations

import json
import warnings

import pytest
from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit, MetricValueError

from piriod_adapter.observability import NAMESPACE, SERVICE, count_records, single_metric

SWITCHES = ("POWERTOOLS_METRICS_DISABLED", "POWERTOOLS_DEV")


def powertools_prints(capsys: pytest.CaptureFixture[str]) -> bool:
    """Whether Powertools' own Metrics prints a metric under the current environment."""
    metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
    metrics.add_metric(name="probe", unit=MetricUnit.Count, value=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics.flush_metrics()
    metrics.clear_metrics()
    return bool(capsys.readouterr().out.strip())


@pytest.mark.parametrize(
    ("disabled", "dev", "printed"),
    [
        (None, None, True),
        ("true", None, False),
        ("false", None, True),
        (None, "true", False),
        ("false", "true", True),
        ("true", "true", False),
    ],
)
def test_single_metric_prints_exactly_when_powertools_metrics_would(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    disabled: str | None,
    dev: str | None,
    printed: bool,
) -> None:
    # given the two switches as set
    for name, value in zip(SWITCHES, (disabled, dev), strict=True):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    capsys.readouterr()
    # when one metric with a dimension of its own is recorded
    with single_metric("records_posted", 2) as metric:
        metric.add_dimension(name="source", value="acme-storage")
    lines = capsys.readouterr().out.splitlines()
    # then it is printed when, and only when, Powertools' Metrics prints
    assert bool(lines) is printed
    assert powertools_prints(capsys) is printed
    if printed:
        [document] = [json.loads(line) for line in lines]
        assert document["records_posted"] == [2.0]
        assert document["source"] == "acme-storage" and document["service"] == SERVICE
        assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == NAMESPACE


def test_a_sources_records_print_no_metric_line_when_metrics_are_disabled(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # given metrics disabled, as piriod-local serve runs the webhook
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    capsys.readouterr()
    # when a third-party source's records are counted
    count_records({"posted": 3, "rejected": 1}, "acme-storage")
    # then no raw metric line is printed
    assert capsys.readouterr().out == ""


def test_a_disabled_metric_is_still_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # given metrics disabled
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    # when a metric that CloudWatch would refuse is recorded, then it fails as when printed
    with (
        pytest.raises(MetricValueError, match="not a valid number"),
        single_metric("records_posted", "x"),  # type: ignore[arg-type]
    ):
        pass
