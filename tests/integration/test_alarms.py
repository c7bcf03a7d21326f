"""Operations: what the template alarms on is what the functions emit."""

from __future__ import annotations

import json
from typing import Any

import pytest

from piriod_devkit.template import load_template
from tests.conftest import Adapter

RECORD = {"subscription_line": 101, "date_time": "2026-11-01T10:00:00Z", "quantity": 2}


def emf_documents(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"_aws"')]


def alarms_on(metric: str) -> list[dict[str, Any]]:
    resources = load_template()["Resources"]
    return [
        r["Properties"]
        for r in resources.values()
        if r["Type"] == "AWS::CloudWatch::Alarm" and r["Properties"]["MetricName"] == metric
    ]


def fires(alarm: dict[str, Any], document: dict[str, Any], metric: str) -> bool:
    """Whether this EMF document's value of `metric` would breach the alarm: same namespace,
    the alarm's dimensions among the document's, and the value beyond the threshold."""
    [directive] = document["_aws"]["CloudWatchMetrics"]
    if directive["Namespace"] != alarm["Namespace"]:
        return False
    names = {m["Name"] for m in directive["Metrics"]}
    dimension_sets = [set(d) for d in directive["Dimensions"]]
    wanted = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
    if metric not in names or set(wanted) not in dimension_sets:
        return False
    if any(document.get(name) != value for name, value in wanted.items()):
        return False
    values = document[metric] if isinstance(document[metric], list) else [document[metric]]
    assert alarm["Statistic"] == "Sum" and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    return bool(sum(values) > alarm["Threshold"])


def test_a_5xx_from_an_unexpected_exception_fires_the_5xx_alarm(
    adapter: Adapter, piriod: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from piriod_adapter import webhook

    # given a defect that raises while a delivery is handled
    def defect(*args: Any) -> Any:
        raise RuntimeError("a defect")

    adapter.monkeypatch.setattr(webhook, "parse_native_body", defect)
    capsys.readouterr()
    # when a delivery arrives
    status, body = adapter.deliver(RECORD)
    # then the answer is a 500, and its metric document breaches the template's 5xx alarm
    assert status == 500 and "internal error" in body["message"]
    documents = emf_documents(capsys.readouterr().out)
    [alarm] = alarms_on("responses_5xx")
    assert any(fires(alarm, d, "responses_5xx") for d in documents)


@pytest.mark.parametrize(
    ("metric", "setup"),
    [
        ("records_not_stored", "sqs_down"),
        ("piriod_unauthorized", "token_refused"),
        ("signature_failures", "bad_signature"),
    ],
)
def test_each_adapter_alarm_watches_a_metric_the_functions_emit(
    adapter: Adapter,
    piriod: Any,
    dead_endpoint: str,
    capsys: pytest.CaptureFixture[str],
    metric: str,
    setup: str,
) -> None:
    # given the condition the alarm is for
    event = adapter.event(RECORD)
    if setup == "sqs_down":
        piriod.add_fault("status", status=500)
        adapter.fresh_runtime(AWS_ENDPOINT_URL_SQS=dead_endpoint)
    elif setup == "token_refused":
        piriod.set_tokens("another-token")
    else:
        event["headers"]["webhook-signature"] = "v1,AAAA"
    capsys.readouterr()
    # when a delivery arrives
    adapter.invoke(event)
    # then the metric the alarm watches is emitted, and its value breaches the threshold
    # where the alarm's threshold is the default of a parameter, that default is used
    [alarm] = alarms_on(metric)
    if isinstance(alarm["Threshold"], dict):
        parameter = load_template()["Parameters"][alarm["Threshold"]["Ref"]]
        alarm = {**alarm, "Threshold": 0}
        assert parameter["Default"] >= 1  # a spike, not one failure, pages someone
    documents = emf_documents(capsys.readouterr().out)
    assert any(fires(alarm, d, metric) for d in documents)


def test_every_alarm_has_a_runbook_line() -> None:
    from pathlib import Path

    operations = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    runbook = operations[operations.index("## Monitoring, alarms and runbook") :]
    alarms = [
        name
        for name, r in load_template()["Resources"].items()
        if r["Type"] == "AWS::CloudWatch::Alarm"
    ]
    assert len(alarms) >= 12
    assert [a for a in alarms if f"`{a}`" not in runbook] == []
