"""The sample events in events/ are committed signed at env/local.json's sample time, so
`sam local invoke -e events/<file>.json` works on them as they are; an edit without
`piriod-local sign --samples` fails here."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from piriod_adapter.aggregate import Aggregate
from piriod_devkit.events import (
    EVENTS,
    LambdaContext,
    aggregating_profile,
    event_body,
    fresh_sample,
    is_http_event,
    load_event,
    retimed,
    signed_sample,
)

HTTP_SAMPLES = sorted(p.name for p in EVENTS.glob("*.json") if is_http_event(load_event(p.name)))
AGGREGATING = "source-api-requests.json"


def test_every_http_sample_is_covered() -> None:
    assert {"webhook-single.json", "source-acme-storage.json", AGGREGATING} <= set(HTTP_SAMPLES)


@pytest.mark.parametrize("name", HTTP_SAMPLES)
def test_committed_sample_is_signed_at_the_sample_time(name: str) -> None:
    # given a committed sample event, when it is signed again at the sample time
    # then nothing changes: its signature is that of its body, headers and time
    assert load_event(name) == signed_sample(name)


def windows_of(event: dict[str, Any], spec: Aggregate) -> list[tuple[str, datetime]]:
    records = json.loads(event_body(event))["requests"]
    return [
        (r["api_key"], spec.window_start(datetime.fromtimestamp(r["at"] / 1000, UTC)))
        for r in records
    ]


def test_the_aggregating_sample_is_moved_to_the_windows_just_due() -> None:
    # given the aggregating meter's sample and its profile (api-requests: count, PT1M)
    event = load_event(AGGREGATING)
    profile = aggregating_profile(event)
    assert profile is not None
    spec = Aggregate.model_validate(profile["aggregate"])
    now = datetime(2031, 6, 1, 12, 30, 17, tzinfo=UTC).timestamp()
    # when it is re-timed (as `piriod-local sign --samples` does)
    moved = retimed(event, now)
    # then each event keeps its window-mates and its second in its window, moved by whole
    # windows, and the latest window is already due (end plus lateness) and within max_age
    before, after = windows_of(event, spec), windows_of(moved, spec)
    shift = after[0][1] - before[0][1]
    assert shift.total_seconds() % spec.window_seconds == 0
    assert [(key, start + shift) for key, start in before] == after
    latest = max(start for _, start in after).timestamp()
    assert latest + spec.window_seconds + spec.lateness_seconds <= now
    assert now - min(start for _, start in after).timestamp() < spec.max_age_seconds
    # two lines, two windows: five events become three usages
    assert len(set(after)) == 3
    # and everything else in the delivery is as committed
    assert {k: v for k, v in moved.items() if k != "body"} == {
        k: v for k, v in event.items() if k != "body"
    }


def test_a_fresh_sample_is_the_committed_one_signed_at_the_sample_time() -> None:
    # given the committed sample, when a fresh copy is made (the e2e test sends one)
    fresh = fresh_sample(AGGREGATING)
    # then it is signed at the sample time, like the file, and its body differs only in times
    committed = load_event(AGGREGATING)
    assert (
        fresh["headers"]["x-signature-timestamp"] == committed["headers"]["x-signature-timestamp"]
    )
    strip = [
        {k: v for k, v in r.items() if k != "at"}
        for r in json.loads(event_body(committed))["requests"]
    ]
    assert [
        {k: v for k, v in r.items() if k != "at"} for r in json.loads(event_body(fresh))["requests"]
    ] == strip


def test_retiming_refuses_a_sample_that_does_not_aggregate() -> None:
    with pytest.raises(ValueError, match="aggregating"):
        retimed(load_event("source-ci-minutes.json"))


def test_the_scheduled_event_is_ignored_by_flush_function(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given the scheduled event EventBridge Scheduler delivers to FlushFunction
    event = load_event("flush-scheduled.json")
    assert event["detail-type"] == "Scheduled Event" and not is_http_event(event)
    from piriod_adapter.handlers import flush

    seen: list[Any] = []

    def run_flush(runtime: Any, deadline: Any) -> dict[str, Any]:
        seen.append((runtime, deadline.remaining() > 0))
        return {"due": 0}

    monkeypatch.setattr(flush, "run_flush", run_flush)
    monkeypatch.setattr(flush, "get_runtime", lambda: "runtime")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    # when the handler runs on it, then it flushes, with nothing taken from the event
    assert flush.lambda_handler(event, LambdaContext(function_name="FlushFunction")) == {"due": 0}
    assert seen == [("runtime", True)]


def test_the_scheduled_event_is_ignored_by_park_function(monkeypatch: pytest.MonkeyPatch) -> None:
    # given the scheduled event EventBridge Scheduler delivers to ParkFunction every hour
    event = load_event("park-scheduled.json")
    assert event["detail-type"] == "Scheduled Event" and not is_http_event(event)
    from piriod_adapter.handlers import park

    seen: list[Any] = []

    def run_park(runtime: Any, deadline: Any) -> dict[str, Any]:
        seen.append((runtime, deadline.remaining() > 0))
        return {"parked": 0}

    monkeypatch.setattr(park, "run_park", run_park)
    monkeypatch.setattr(park, "get_runtime", lambda: "runtime")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    # when the handler runs on it, then it parks, with nothing taken from the event
    context = LambdaContext(function_name="ParkFunction", timeout_seconds=300)
    assert park.lambda_handler(event, context) == {"parked": 0}
    assert seen == [("runtime", True)]
