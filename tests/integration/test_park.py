"""Dead letters never expire unseen (SPEC section 5): ParkFunction's run, with an injected
clock, parks a dead letter 10 days after SQS first took it, before SQS's 14 days could drop
it; the operator lists, shows, replays and purges a parked record as one in the queue; and
the oldest dead letter's age breaches DeadLetterAgeAlarm at 3 days."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest

from piriod_adapter.clock import Deadline
from piriod_devkit.template import load_template
from tests.conftest import Adapter
from tests.integration.test_alarms import emf_documents

DAY = 86_400
RECORD = '{"subscription_line": 707, "date_time": "2026-11-01T10:00:00Z", "quantity": 2.50}'


def ops(*argv: str) -> tuple[int, str]:
    from piriod_operator.cli import main

    out = io.StringIO()
    return main(list(argv), out=out, err=out), out.getvalue()


def park_run(days_later: float) -> dict[str, Any]:
    """ParkFunction's run, its clock `days_later` days from now; its metrics printed as the
    handler's decorator prints them."""
    from piriod_adapter.observability import metrics
    from piriod_adapter.park import run_park
    from piriod_adapter.runtime import get_runtime

    later = time.time() + days_later * DAY
    report = run_park(get_runtime(), Deadline.after(60), clock=lambda: later)
    metrics.flush_metrics()
    return report


def breaches_age_alarm(documents: list[dict[str, Any]]) -> bool:
    """Whether a metric document's `dead_letter_oldest_seconds` breaches DeadLetterAgeAlarm,
    read from the template: same namespace and dimensions, at or past its threshold."""
    alarm = load_template()["Resources"]["DeadLetterAgeAlarm"]["Properties"]
    assert alarm["Statistic"] == "Maximum"
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["Threshold"] == 3 * DAY
    wanted = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
    for document in documents:
        [directive] = document["_aws"]["CloudWatchMetrics"]
        if alarm["MetricName"] not in {m["Name"] for m in directive["Metrics"]}:
            continue
        assert directive["Namespace"] == alarm["Namespace"]
        assert all(document.get(name) == value for name, value in wanted.items())
        values = document[alarm["MetricName"]]
        values = values if isinstance(values, list) else [values]
        if max(values) >= alarm["Threshold"]:
            return True
    return False


@pytest.fixture
def dead_letter(adapter: Adapter, piriod: Any) -> Adapter:
    """One record Piriod rejected (line 707 not metered), waiting in DeadLetterQueue."""
    piriod.set_unmetered_lines(707)
    status, body = adapter.deliver(RECORD, message_id="msg_parked")
    assert status == 202 and body["results"][0]["status"] == "rejected"
    assert len(adapter.messages("dead_letter")) == 1
    return adapter


def test_a_dead_letter_is_parked_at_ten_days_and_replayed_once(
    dead_letter: Adapter, piriod: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # given the dead letter 9 days after SQS took it: it stays, and its age pages someone
    capsys.readouterr()
    early = park_run(9)
    assert (early["parked"], early["walked"]) == (0, 1)
    assert breaches_age_alarm(emf_documents(capsys.readouterr().out))
    assert len(dead_letter.messages("dead_letter")) == 1
    # when ParkFunction runs 10 days after it
    report = park_run(10)
    # then the record is parked whole in the table and gone from SQS, before SQS's 14 days
    assert (report["parked"], report["held_parked"]) == (1, 1)
    assert dead_letter.messages("dead_letter") == []
    [item] = [i for i in dead_letter.items() if i["pk"]["S"].startswith("park#")]
    assert json.loads(item["message"]["S"])["usage"]["quantity"] == "2.50"
    assert "expires_at" not in item  # a parked record never expires
    # and the age alarm still fires (a parked dead letter is a dead letter)
    assert breaches_age_alarm(emf_documents(capsys.readouterr().out))
    # and the operator sees it like one in the queue
    code, text = ops("list", "--queue", "dead-letter", "--json")
    [row] = [json.loads(line) for line in text.splitlines()]
    assert code == 0 and row["parked"] is True and row["kind"] == "rejected"
    assert row["record"]["usage"]["subscription_line"] == 707
    code, shown = ops("show", row["message_id"][:8])
    assert code == 0 and json.loads(shown)["parked"] is True
    # when the line is metered and the operator replays the dead letters, twice
    piriod.set_unmetered_lines()
    code, text = ops("replay")
    assert code == 0 and "posted=1" in text, text
    code, text = ops("replay")
    # then it is posted once, and no longer parked
    assert code == 0 and "chosen=0" in text
    assert [u["quantity"] for u in piriod.usages()] == ["2.50"]
    assert [i for i in dead_letter.items() if i["pk"]["S"].startswith("park#")] == []
    # and the next run finds no dead letter: the alarm clears
    assert park_run(10)["oldest_seconds"] == 0
    assert not breaches_age_alarm(emf_documents(capsys.readouterr().out))


def test_a_parked_record_is_purged_with_the_queue(dead_letter: Adapter, piriod: Any) -> None:
    # given a parked dead letter
    assert park_run(11)["parked"] == 1
    # when the operator purges DeadLetterQueue
    code, text = ops("purge", "--queue", "dead-letter", "--yes")
    # then the parked record goes too
    assert code == 0 and "1 parked record(s)" in text
    assert ops("list", "--queue", "dead-letter", "--json")[1] == ""
