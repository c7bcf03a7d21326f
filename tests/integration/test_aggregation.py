"""Aggregation windows (SPEC section 9) end to end: profiles in an SSM parameter on moto
server, counting through the real webhook handler, FlushFunction's real handler, ReplayFunction
draining ReplayQueue, and the Piriod stand-in over loopback."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from piriod_devkit.aws import client
from piriod_devkit.events import LambdaContext, http_event
from piriod_devkit.poller import drain
from piriod_devkit.sources import provision_sources, sign_source
from tests.conftest import Adapter
from tests.integration.conftest import SECRET, SIGNATURE, profile


def minute(minutes_ago: int) -> datetime:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return now - timedelta(minutes=minutes_ago)


def event(n: str, line: int, at: datetime, q: str = "1") -> dict[str, Any]:
    return {"id": n, "line": line, "at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "q": Decimal(q)}


def deliver(adapter: Adapter, events: list[dict[str, Any]], source: str = "meter") -> Any:
    body = json.dumps({"events": events}, default=str).encode()
    request = http_event(
        "POST", f"/v1/sources/{source}/usages", body, {"content-type": "application/json"}
    )
    return adapter.invoke(sign_source(request, {"signature": SIGNATURE}, SECRET))


def run_flush() -> dict[str, Any]:
    from piriod_adapter.handlers.flush import lambda_handler

    result: dict[str, Any] = lambda_handler({}, LambdaContext(timeout_seconds=30))
    return result


def drain_replay(adapter: Adapter) -> Any:
    from piriod_adapter.handlers.replay import lambda_handler

    return drain(
        client("sqs", adapter.endpoint), adapter.resources.replay_queue_url, lambda_handler
    )


def totals(piriod: Any) -> dict[tuple[int, str], Decimal]:
    held: dict[tuple[int, str], Decimal] = {}
    for usage in piriod.usages():
        key = (usage["subscription_line"], usage["date_time"])
        held[key] = held.get(key, Decimal(0)) + Decimal(str(usage["quantity"]))
    return held


def utc(at: datetime, seconds: int = 0) -> str:
    return (at + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_three_lines_two_windows_with_redeliveries_become_six_exact_usages(
    meters: Adapter, piriod: Any
) -> None:
    # given 600 events: 3 lines x 2 past windows x 100, with quantities of many decimals
    rng = random.Random(7)
    windows = [minute(4), minute(3)]
    events = [
        event(f"ev-{line}-{w}-{n}", line, windows[w] + timedelta(seconds=n % 60), q)
        for line in (11, 12, 13)
        for w in range(2)
        for n in range(100)
        for q in [str(Decimal(rng.randint(0, 10**9)).scaleb(-rng.randint(0, 12)))]
    ]
    rng.shuffle(events)
    expected: dict[tuple[int, str], Decimal] = {}
    for e in events:
        key = (e["line"], e["at"][:16] + ":00Z")  # the minute it is in
        expected[key] = expected.get(key, Decimal(0)) + e["q"]
    # when they are delivered 100 at a time, every delivery twice
    for start in range(0, len(events), 100):
        status, body = deliver(meters, events[start : start + 100])
        assert status == 202, body
        assert {r["status"] for r in body["results"]} == {"aggregated"}
        again_status, again = deliver(meters, events[start : start + 100])
        assert again_status == 202 and {r["status"] for r in again["results"]} == {"duplicate"}
        assert all("window_start" not in r for r in again["results"])
    # then nothing is posted until the flush, which posts one usage per line and window
    assert piriod.usages() == []
    report = run_flush()
    assert (report["posted"], report["left"]) == (6, 0), report
    assert totals(piriod) == expected
    assert piriod.violations() == []
    # and a second flush posts nothing more
    assert run_flush()["due"] == 0 and len(piriod.usages()) == 6


def test_aggregated_result_names_its_window_and_generation(meters: Adapter, piriod: Any) -> None:
    # given an event in a window that is already past
    window = minute(2)
    at = window + timedelta(seconds=17, microseconds=250_000)
    # when it is delivered
    status, body = deliver(meters, [event("only", 21, at, "2.5")])
    # then its result says where it was counted
    assert status == 202
    assert body["results"] == [
        {
            "index": 0,
            "status": "aggregated",
            "event_id": "only",
            "window_start": utc(window),
            "generation": 0,
        }
    ]


def test_a_late_event_becomes_generation_one(meters: Adapter, piriod: Any) -> None:
    # given a window closed and posted with two events
    window = minute(3)
    deliver(meters, [event("a", 31, window, "1.5"), event("b", 31, window, "2")])
    run_flush()
    assert totals(piriod) == {(31, utc(window)): Decimal("3.5")}
    # when a late event for it arrives
    status, body = deliver(meters, [event("late", 31, window + timedelta(seconds=30), "4")])
    # then it joins generation 1, posted at the next run at window start + 1 s
    assert status == 202
    assert (body["results"][0]["status"], body["results"][0]["generation"]) == ("aggregated", 1)
    run_flush()
    assert totals(piriod) == {
        (31, utc(window)): Decimal("3.5"),
        (31, utc(window, 1)): Decimal("4"),
    }
    # and an event redelivered after the close is a duplicate, counted nowhere again
    _, again = deliver(meters, [event("a", 31, window, "1.5")])
    assert again["results"][0]["status"] == "duplicate"
    assert run_flush()["due"] == 0


def test_a_count_profile_counts_events_and_ignores_quantities(meters: Adapter, piriod: Any) -> None:
    # given a counting source and 250 events, 50 of them sent twice
    window = minute(2)
    events = [event(f"c{n}", 41, window + timedelta(seconds=n % 60), "7.25") for n in range(250)]
    # when they are delivered
    for start in range(0, 250, 100):
        assert deliver(meters, events[start : start + 100], "counter")[0] == 202
    assert deliver(meters, events[:50], "counter")[0] == 202
    run_flush()
    # then Piriod holds one usage of 250
    assert totals(piriod) == {(41, utc(window)): Decimal(250)}


def test_a_flush_during_a_piriod_outage_is_settled_after_recovery(
    meters: Adapter, piriod: Any
) -> None:
    # given counted events, and Piriod storing the first post but answering 503
    window = minute(3)
    deliver(meters, [event(f"o{n}", 51, window, "0.1") for n in range(30)])
    piriod.add_fault("answer_after_store", status=503, count=1)
    # when the window is flushed
    report = run_flush()
    # then it is queued (the answer proves nothing), and replay settles it by lookup
    assert report["queued"] == 1, report
    drain_replay(meters)
    assert totals(piriod) == {(51, utc(window)): Decimal("3.0")}
    assert len(piriod.usages()) == 1
    # and a flush running again posts nothing more
    assert run_flush()["due"] == 0 and len(piriod.usages()) == 1


def test_a_total_of_zero_is_not_posted(meters: Adapter, piriod: Any) -> None:
    # given only events of quantity zero in a window
    window = minute(2)
    deliver(meters, [event("z1", 61, window, "0"), event("z2", 61, window, "0.000")])
    # when it is flushed
    report = run_flush()
    # then nothing reaches Piriod and the window is done
    assert (report["empty"], piriod.usages()) == (1, [])
    assert run_flush()["due"] == 0


def test_bounds_are_422_before_anything_is_counted(meters: Adapter, piriod: Any) -> None:
    # given one fine event and one older than max_age (P35D by default), one too precise
    old = datetime.now(UTC) - timedelta(days=36)
    batch = [
        event("fine", 71, minute(2)),
        event("old", 71, old),
        event("fine-2", 71, minute(2), "0.0000000000000000001"),
    ]
    # when delivered
    status, body = deliver(meters, batch)
    # then the delivery is refused, naming each event and field, and nothing is counted
    assert status == 422
    assert [(p["index"], p["field"]) for p in body["errors"]] == [
        (1, "date_time"),
        (2, "quantity"),
    ]
    status, body = deliver(meters, [event("fine", 71, minute(2))])
    assert body["results"][0]["status"] == "aggregated"


def test_an_unmapped_meter_is_rejected_into_the_dead_letter_queue(
    adapter: Adapter, piriod: Any
) -> None:
    # given a counting profile that looks lines up by meter id, without this meter
    parameter = f"/{adapter.resources.table.removesuffix('-idempotency')}/sources"
    meter = profile("count")
    meter["fields"] = {"date_time": "at", "event_id": "id", "meter_id": "meter"}
    meter["lines"] = {"known": 81}
    config = provision_sources(
        adapter.endpoint,
        parameter,
        {"version": 1, "sources": {"meter": meter}},
        {"agg/meter": SECRET},
    )
    adapter.fresh_runtime(SOURCES_CONFIG=config, SOURCES_CACHE_SECONDS="0")
    at = minute(2)
    events = [{**event("k1", 0, at), "meter": "known"}, {**event("u1", 0, at), "meter": "new"}]
    # when delivered
    status, body = deliver(adapter, events)
    # then the known meter's event is counted and the other kept in DeadLetterQueue
    assert status == 202
    assert [r["status"] for r in body["results"]] == ["aggregated", "rejected"]
    assert "meter_id" in body["results"][1]["errors"]
    dead = adapter.messages("dead_letter")
    assert [m["usage"]["meter_id"] for m in dead] == ["new"]


def test_an_operator_replay_counts_a_dead_lettered_event_once_its_line_exists(
    adapter: Adapter, piriod: Any
) -> None:
    import io

    from piriod_operator.cli import main

    # given an unmapped meter's event in DeadLetterQueue
    parameter = f"/{adapter.resources.table.removesuffix('-idempotency')}/sources"
    meter = profile()
    meter["fields"] = {"date_time": "at", "event_id": "id", "meter_id": "meter", "quantity": "q"}
    meter["lines"] = {"known": 81}
    document = {"version": 1, "sources": {"meter": meter}}
    provision_sources(adapter.endpoint, parameter, document, {"agg/meter": SECRET})
    adapter.fresh_runtime(SOURCES_CONFIG=f"ssm:{parameter}", SOURCES_CACHE_SECONDS="0")
    window = minute(3)
    deliver(adapter, [{**event("u1", 0, window, "4.5"), "meter": "new"}])
    # when the line is added to the profile and the operator replays the dead letter
    meter["lines"] = {"known": 81, "new": 82}
    provision_sources(adapter.endpoint, parameter, document, {"agg/meter": SECRET})
    out = io.StringIO()
    code = main(["replay"], out=out, err=out)
    # then it is counted into its window, and the flush posts it once
    assert code == 0, out.getvalue()
    assert adapter.messages("dead_letter") == []
    run_flush()
    assert totals(piriod) == {(82, utc(window)): Decimal("4.5")}
    # and a second replay or a redelivery counts nothing again
    _, body = deliver(adapter, [{**event("u1", 0, window, "4.5"), "meter": "new"}])
    assert body["results"][0]["status"] == "duplicate"
    assert run_flush()["due"] == 0


def test_the_operator_sees_windows_and_the_oldest_due_one(meters: Adapter, piriod: Any) -> None:
    import io

    from piriod_operator.cli import main

    def ops(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        return main(list(argv), out=out, err=out), out.getvalue()

    # given two windows of line 91 counted, one of them flushed and posted
    first, second = minute(3), minute(2)  # read once: a minute may turn during the test
    deliver(meters, [event("w1", 91, first, "1.25"), event("w2", 91, first, "2")])
    run_flush()
    deliver(meters, [event("w3", 91, second, "5")])
    # when the operator lists the windows, as JSON and as a table
    code, text = ops("windows", "--source", "meter", "--json")
    rows = [json.loads(line) for line in text.splitlines()]
    # then each generation shows its state, total and events
    assert code == 0
    assert [(r["window_start"], r["state"], r["total"], r["events"]) for r in rows] == [
        (utc(first), "posted", "3.25", 2),
        (utc(second), "open", "5", 1),  # an open one's running total
    ]
    assert rows[1]["due_at"] == utc(second, 60) and rows[0]["due_at"] == utc(first, 60)
    assert rows[0]["usage_id"] == piriod.usages()[0]["id"]
    code, table = ops("windows", "--state", "open")
    assert code == 0 and "open" in table and "posted" not in table
    # and status names the open window that is due
    code, text = ops("status", "--json")
    windows = json.loads(text)["windows"]
    assert (windows["open"], windows["due"]) == (1, 1)
    assert windows["oldest_due"]["window_start"] == utc(second)


def test_concurrent_deliveries_to_one_line_and_window_are_all_counted_once(
    meters: Adapter, piriod: Any, monkeypatch: Any
) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from piriod_adapter.observability import metrics

    # Lambda runs one invocation at a time per process, so Powertools' metrics are one
    # global set; here ten invocations share this process: each flush is made whole (one
    # flush emptying the set between another's check and its serialization raised).
    flushing, flush = threading.Lock(), metrics.provider.flush_metrics

    def flush_whole(*args: Any, **kwargs: Any) -> None:
        with flushing:
            flush(*args, **kwargs)

    monkeypatch.setattr(metrics.provider, "flush_metrics", flush_whole)
    # given 8 senders with 100 events each for one line and window, and 2 of them resending
    # the first sender's delivery at the same time
    window = minute(3)
    batches = [
        [event(f"hot-{s}-{n}", 95, window + timedelta(seconds=n % 60), "0.5") for n in range(100)]
        for s in range(8)
    ]
    # when they all deliver at once
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda b: deliver(meters, b), [*batches, batches[0], batches[0]]))
    # then every answer is a 202, each event was counted once, and the flush posts 800 x 0.5
    assert [status for status, _ in answers] == [202] * 10
    statuses = [r["status"] for _, body in answers for r in body["results"]]
    assert statuses.count("aggregated") == 800
    assert statuses.count("duplicate") == 200
    run_flush()
    assert totals(piriod) == {(95, utc(window)): Decimal(400)}


def test_a_quantity_no_shard_can_hold_is_rejected_and_the_flush_goes_on(
    meters: Adapter, piriod: Any
) -> None:
    # given an event of 6 x 10^19 (a valid quantity, but more than one of the window's 8
    # counter shards may hold of the 10^20 bound), and a normal one, in one window
    window = minute(3)
    status, body = deliver(
        meters, [event("huge", 96, window, "60000000000000000000"), event("ok", 96, window, "2")]
    )
    # then the huge one is kept in DeadLetterQueue, naming the bound, and the other counted
    assert status == 202
    assert [r["status"] for r in body["results"]] == ["rejected", "aggregated"]
    assert "10^20" in body["results"][0]["errors"]["quantity"][0]
    assert [m["usage"]["quantity"] for m in meters.messages("dead_letter")] == [
        "60000000000000000000"
    ]
    # and the flush posts the window's total within Piriod's bound
    assert run_flush()["posted"] == 1
    assert totals(piriod) == {(96, utc(window)): Decimal(2)}


def test_a_profile_switched_to_test_mode_starts_windows_of_its_own(
    adapter: Adapter, piriod: Any
) -> None:
    # given a live aggregating profile with an event counted in a window
    parameter = f"/{adapter.resources.table.removesuffix('-idempotency')}/sources"
    meter = profile()
    document = {"version": 1, "sources": {"meter": meter}}
    provision_sources(adapter.endpoint, parameter, document, {"agg/meter": SECRET})
    adapter.fresh_runtime(SOURCES_CONFIG=f"ssm:{parameter}", SOURCES_CACHE_SECONDS="0")
    window = minute(3)
    deliver(adapter, [event("live", 97, window, "1")])
    # when the profile is switched to test mode and another event joins the same window
    meter["test_mode"] = True
    provision_sources(adapter.endpoint, parameter, document, {"agg/meter": SECRET})
    deliver(adapter, [event("test", 97, window, "5")])
    run_flush()
    # then the live event is posted live and the test event to test data, each on its own
    assert [Decimal(str(u["quantity"])) for u in piriod.usages(test_mode=False)] == [1]
    assert [Decimal(str(u["quantity"])) for u in piriod.usages(test_mode=True)] == [5]


def test_containers_with_another_shard_count_add_to_the_shards_the_window_has(
    meters: Adapter, piriod: Any
) -> None:
    from piriod_adapter.aggregate import Aggregate
    from piriod_adapter.clock import Deadline
    from piriod_adapter.counting import Counting
    from piriod_adapter.lifecycle import Fate, Submission
    from piriod_adapter.models import KeyKind, Tenant, Usage, UsageKey
    from piriod_adapter.table import WindowId
    from piriod_adapter.windows import WindowStore
    from tests.unit.fakes import placer

    # given two containers, with WindowShards 2 and 8, that both read a window before it has
    # a generation item; the 2-shard one then counts an event (and so creates the item)
    dynamodb = client("dynamodb", meters.endpoint)
    two, eight = (WindowStore(dynamodb, meters.resources.table, n) for n in (2, 8))
    spec = Aggregate(function="sum", window="PT1M", lateness="PT0S")
    tenant = Tenant(workspace="w", test_mode=False)
    at = minute(3)
    eight.open_generations([WindowId("meter", 98, at, "sum-60s")])  # cached: no item yet

    def usage(n: int) -> Usage:
        key = UsageKey(kind=KeyKind.EVENT, scope="v1/sources/meter", text=f"sh-{n}")
        return Usage(
            subscription_line=98, date_time=at, quantity=Decimal(n), key=key, source="meter"
        )

    def counting(store: WindowStore) -> Counting:
        return Counting(spec, "meter", tenant, store, placer(), lambda *_: None, 30)

    def subs(usages: list[Usage]) -> list[Submission]:
        return [Submission(n, u, tenant) for n, u in enumerate(usages)]

    [first] = counting(two).run(subs([usage(1)]), Deadline.after(10))
    assert first.fate is Fate.AGGREGATED
    # when the 8-shard container counts 20 more events with what it read before
    results = counting(eight).run(subs([usage(n) for n in range(2, 22)]), Deadline.after(10))
    # then all are counted, into the window's 2 shards, and the close sums them all
    assert [r.fate for r in results] == [Fate.AGGREGATED] * 20
    run_flush()
    assert totals(piriod) == {(98, utc(at)): Decimal(sum(range(1, 22)))}


def test_a_warm_container_refuses_an_event_for_a_window_a_flush_elsewhere_used_up(
    meters: Adapter, piriod: Any
) -> None:
    from piriod_adapter.runtime import get_runtime, reset_runtime

    # given a one-second window that this container counted an event into (so it saw
    # generation 0 open), then FlushFunction, in a container of its own, closed (its only
    # generation: a PT1S window has one per second)
    second = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=30)
    assert deliver(meters, [event("t1", 94, second)], "tick")[1]["results"][0]["generation"] == 0
    container = get_runtime()
    reset_runtime()
    assert run_flush()["posted"] == 1
    reset_runtime(container)
    # when this (warm) container, and a fresh one, each get a late event for that window
    warm = deliver(meters, [event("t2", 94, second)], "tick")
    meters.fresh_runtime()
    fresh = deliver(meters, [event("t3", 94, second)], "tick")
    # then both answer the same 422 naming date_time and the bound, and nothing is kept
    for status, body in (warm, fresh):
        assert status == 422, body
        [problem] = body["errors"]
        assert problem["field"] == "date_time" and "all 1 generations" in problem["message"]
    assert meters.messages("dead_letter") == []
    assert totals(piriod) == {(94, utc(second)): Decimal(1)}


def test_every_shard_is_tried_before_an_event_is_refused(meters: Adapter, piriod: Any) -> None:
    from piriod_adapter.aggregate import Aggregate
    from piriod_adapter.clock import Deadline
    from piriod_adapter.counting import Counting
    from piriod_adapter.lifecycle import Fate, Submission
    from piriod_adapter.models import KeyKind, Tenant, Usage, UsageKey
    from piriod_adapter.windows import WindowStore
    from tests.unit.fakes import FakeQueues, placer

    # given a window of 8 counter shards, each with room for one event of 10^19, and a
    # container whose random choice of shard always falls on the first one
    store = WindowStore(
        client("dynamodb", meters.endpoint), meters.resources.table, 8, choose=lambda n: 0
    )
    spec = Aggregate(function="sum", window="PT1M", lateness="PT0S")
    tenant = Tenant(workspace="w", test_mode=False)
    at, queues = minute(3), FakeQueues()

    def count(n: int) -> Fate:
        key = UsageKey(kind=KeyKind.EVENT, scope="v1/sources/meter", text=f"big-{n}")
        usage = Usage(
            subscription_line=93, date_time=at, quantity=Decimal(10**19), key=key, source="meter"
        )
        counting = Counting(spec, "meter", tenant, store, placer(), queues.place_failed, 30)
        [one] = counting.run([Submission(0, usage, tenant)], Deadline.after(20))
        return one.fate

    # when nine such events are counted one delivery at a time
    fates = [count(n) for n in range(9)]
    # then the first eight each find the shard with room (every shard is tried), and only
    # the ninth, for which no shard has room, is refused into DeadLetterQueue
    assert fates == [Fate.AGGREGATED] * 8 + [Fate.REJECTED]
    [refused] = [json.loads(m.body)["failure"]["errors"]["quantity"][0] for m in queues.dead]
    assert "10^20" in refused


def test_windows_filters_by_line_before_it_limits(meters: Adapter, piriod: Any) -> None:
    import io

    from piriod_operator.cli import main

    # given line 92 with three flushed generations of one window, and line 90 with many
    # newer windows of the same source
    window = minute(10)
    for n in range(3):
        deliver(meters, [event(f"l92-{n}", 92, window)])
        run_flush()
    deliver(meters, [event(f"l90-{m}", 90, minute(m)) for m in range(2, 9)])
    run_flush()
    # when the operator asks for two of line 92's windows
    out = io.StringIO()
    code = main(
        ["windows", "--source", "meter", "--line", "92", "--limit", "2", "--json"], out=out, err=out
    )
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    # then it gets the newest two of line 92's three, oldest first
    assert code == 0
    assert [(r["line"], r["generation"], r["state"]) for r in rows] == [
        (92, 1, "posted"),
        (92, 2, "posted"),
    ]
