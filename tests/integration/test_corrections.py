"""Corrections (SPEC section 10) end to end: POST /v1/corrections through the real webhook
handler, the records and events it corrects in every state they can be in, Piriod's
DELETE and POST through the stand-in over loopback (with its faults), ReplayFunction and
FlushFunction draining what waits. After each, Piriod's ledger is checked with exact
decimals: one usage per record at its last quantity, none once cancelled, and each window's
usages summing to its events that are not cancelled."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from piriod_devkit.events import load_event, sign_event
from piriod_devkit.sources import provision_sources
from tests.conftest import Adapter
from tests.integration.conftest import SECRET, SIGNATURE
from tests.integration.test_aggregation import (
    deliver as deliver_events,
)
from tests.integration.test_aggregation import (
    event,
    minute,
    run_flush,
    totals,
    utc,
)
from tests.integration.test_replay import drain_replay

LINE = 812


def record(quantity: str, key: str, hour: int = 1, line: int = LINE) -> str:
    return (
        f'{{"subscription_line": {line}, "date_time": "2026-11-01T{hour:02d}:00:00Z", '
        f'"quantity": {quantity}, "idempotency_key": "{key}"}}'
    )


def correct(
    adapter: Adapter, *corrections: dict[str, Any], message_id: str | None = None, **kw: Any
) -> Any:
    """A signed corrections delivery; a Decimal quantity is written as the JSON number it
    is, its digits kept."""
    body = json.dumps({"corrections": list(corrections)}, default=lambda d: f"@@{d}@@")
    body = re.sub(r'"@@([^@]*)@@"', r"\1", body)
    return adapter.deliver(body, path="/v1/corrections", message_id=message_id, **kw)


def amend(key: str, quantity: str, cid: str, **extra: Any) -> dict[str, Any]:
    return {
        "action": "amend",
        "key": key,
        "quantity": Decimal(quantity),
        "correction_id": cid,
        **extra,
    }


def cancel(key: str, cid: str, **extra: Any) -> dict[str, Any]:
    return {"action": "cancel", "key": key, "correction_id": cid, **extra}


def held(piriod: Any, line: int = LINE) -> list[str]:
    """The quantities Piriod holds for a line, as Piriod keeps them."""
    return sorted(str(u["quantity"]) for u in piriod.usages() if u["subscription_line"] == line)


def statuses(body: dict[str, Any]) -> list[tuple[str, int | None]]:
    return [(r["status"], r.get("revision")) for r in body["results"]]


def test_cancel_and_amend_a_posted_record(adapter: Adapter, piriod: Any) -> None:
    # given two records posted (Piriod answered 201 with their ids)
    status, body = adapter.deliver(
        f'{{"usages": [{record("1.10", "pay-1")}, {record("2.5", "pay-2", hour=2)}]}}'
    )
    assert status == 202 and held(piriod) == ["1.10", "2.5"]
    first, second = (r["usage_id"] for r in body["results"])
    # when the sender cancels the first and amends the second
    status, body = correct(adapter, cancel("pay-1", "c-1"), amend("pay-2", "3.25", "c-2"))
    # then both are applied: Piriod holds one usage of 3.25 and nothing of the first
    assert status == 202, body
    assert statuses(body) == [("applied", 1), ("applied", 1)]
    assert held(piriod) == ["3.25"]
    assert body["results"][1]["usage_id"] == piriod.usages()[0]["id"]
    # and a cancel costs one Piriod call, an amend two; the two keys are corrected side by
    # side, so only each key's own order is fixed: the amended usage's DELETE before its POST
    calls = [(r["method"], r["path"], r["status"]) for r in piriod.requests[-3:]]
    delete_first = ("DELETE", f"/usages/{first}/", 204)
    delete_second = ("DELETE", f"/usages/{second}/", 204)
    post = ("POST", "/usages/", 201)
    assert sorted(calls) == sorted([delete_first, delete_second, post]), calls
    assert calls.index(delete_second) < calls.index(post), calls
    # and the same delivery again changes nothing: duplicates with their revisions
    status, again = correct(adapter, cancel("pay-1", "c-1"), amend("pay-2", "3.25", "c-2"))
    assert status == 202 and statuses(again) == [("duplicate", 1), ("duplicate", 1)]
    # and a cancel is final: a later amend of that key is not found
    status, later = correct(adapter, amend("pay-1", "9", "c-3"))
    assert statuses(later) == [("not_found", None)]
    assert held(piriod) == ["3.25"]


def test_corrections_of_one_key_apply_in_order_and_the_last_amend_wins(
    adapter: Adapter, piriod: Any
) -> None:
    # given a posted record
    adapter.deliver(record("1", "order-1"))
    # when three amends of it come in one delivery, then one more in another
    status, body = correct(
        adapter,
        amend("order-1", "2", "o-1"),
        amend("order-1", "3", "o-2"),
        amend("order-1", "4", "o-3"),
    )
    assert status == 202 and statuses(body) == [("applied", 1), ("applied", 2), ("applied", 3)]
    status, body = correct(adapter, amend("order-1", "5.50", "o-4"))
    # then they are revisions 1 to 4, and Piriod holds the last one only
    assert statuses(body) == [("applied", 4)]
    assert held(piriod) == ["5.50"]


def test_a_record_posted_without_an_id_is_found_before_it_is_deleted(
    adapter: Adapter, piriod: Any
) -> None:
    # given a record posted by a 201 without a usage id, listed at millisecond precision
    piriod.set_listing(date_time="millis")
    piriod.add_fault("answer_after_store", status=201, body="no_id", count=1)
    adapter.deliver(record("7", "idless"))
    # when the sender amends it
    status, body = correct(adapter, amend("idless", "8", "i-1"))
    # then its usage is found by the lookup, deleted, and the new quantity posted
    assert status == 202 and statuses(body) == [("applied", 1)]
    assert held(piriod) == ["8"]


def test_a_delete_whose_answer_is_lost_is_settled_by_asking_first(
    adapter: Adapter, piriod: Any
) -> None:
    # given a posted record, and Piriod deleting it but losing the DELETE's answer
    adapter.fresh_runtime(PIRIOD_READ_TIMEOUT="1")
    adapter.deliver(record("4", "lost-delete"))
    piriod.add_fault("timeout_after_store", methods=("DELETE",), delay=2, count=1)
    # when the sender amends it
    status, body = correct(adapter, amend("lost-delete", "6", "l-1"))
    # then the amend is pending (it waits in ReplayQueue), nothing was posted yet
    assert status == 202 and statuses(body) == [("pending", 1)]
    assert held(piriod) == []
    # and ReplayFunction asks Piriod whether the usage is gone before anything else, then
    # posts the new quantity: one usage, never two
    drain_replay(adapter)
    assert held(piriod) == ["6"]
    deletes = [r for r in piriod.requests if r["method"] == "DELETE"]
    assert len(deletes) == 1  # not sent again: the listing proved it gone


def test_a_correction_during_a_piriod_outage_waits_in_replay_queue(
    adapter: Adapter, piriod: Any
) -> None:
    # given a posted record, and Piriod failing every DELETE with a 500
    adapter.deliver(record("10", "outage"))
    piriod.add_fault("status", status=500, methods=("DELETE",))
    # when the sender cancels it
    _, body = correct(adapter, cancel("outage", "x-1"))
    # then the cancel is pending, and Piriod still holds the usage
    assert statuses(body) == [("pending", 1)]
    assert held(piriod) == ["10"]
    # and once Piriod answers again, replay deletes it, once
    piriod.clear_faults()
    drain_replay(adapter)
    assert held(piriod) == []


def test_a_queued_record_is_posted_with_its_amend_or_never_once_cancelled(
    adapter: Adapter, piriod: Any
) -> None:
    # given two records Piriod could not take (a 503), waiting in ReplayQueue
    piriod.add_fault("status", status=429, count=2)
    adapter.deliver(f'{{"usages": [{record("1", "q-1")}, {record("2", "q-2", hour=2)}]}}')
    assert held(piriod) == [] and len(adapter.messages("replay")) == 2
    # when the sender amends one and cancels the other
    _, body = correct(adapter, amend("q-1", "1.5", "qa"), cancel("q-2", "qc"))
    # then both are pending: each waits where it is
    assert statuses(body) == [("pending", 1), ("pending", 1)]
    # and replay posts the amended quantity, and answers the cancelled one cancelled
    drain_replay(adapter)
    assert held(piriod) == ["1.5"]
    assert adapter.messages("replay") == []


def test_a_dead_letter_cancelled_is_never_posted_by_the_operator_replay(
    adapter: Adapter, piriod: Any
) -> None:
    import io

    from piriod_operator.cli import main

    # given a record Piriod rejected (its line not metered), waiting in DeadLetterQueue
    piriod.set_unmetered_lines(LINE)
    adapter.deliver(record("3", "dead"))
    assert len(adapter.messages("dead_letter")) == 1
    # when the sender cancels it, and the operator later replays the dead letters
    _, body = correct(adapter, cancel("dead", "d-1"))
    assert statuses(body) == [("pending", 1)]
    piriod.set_unmetered_lines()
    out = io.StringIO()
    assert main(["replay"], out=out, err=out) == 0
    # then it is answered cancelled, removed, and never posted
    assert "cancelled=1" in out.getvalue(), out.getvalue()
    assert adapter.messages("dead_letter") == [] and held(piriod) == []


def test_unknown_keys_are_not_found_and_nothing_changes(adapter: Adapter, piriod: Any) -> None:
    adapter.deliver(record("1", "known"))
    status, body = correct(
        adapter, cancel("unknown", "u-1"), cancel("known", "u-2", source="meter")
    )
    assert status == 202 and statuses(body) == [("not_found", None), ("not_found", None)]
    assert held(piriod) == ["1"]


@pytest.mark.parametrize(
    ("corrections", "index", "field"),
    [
        ([{"action": "undo", "key": "k", "correction_id": "1"}], 0, "action"),
        ([{"action": "cancel", "key": "k", "quantity": 1, "correction_id": "1"}], 0, "quantity"),
        ([{"action": "amend", "key": "k", "correction_id": "1"}], 0, "quantity"),
        ([{"action": "cancel", "key": "k"}], 0, "correction_id"),
        ([{"action": "amend", "key": "k", "quantity": "2", "correction_id": "1"}], 0, "quantity"),
        ([{"action": "amend", "key": "k", "quantity": -1, "correction_id": "1"}], 0, "quantity"),
        ([{"action": "cancel", "key": "k", "correction_id": "1", "extra": 1}], 0, "extra"),
        ([{"action": "cancel", "key": "", "correction_id": "1"}], 0, "key"),
        (
            [
                {"action": "cancel", "key": "a", "correction_id": "same"},
                {"action": "cancel", "key": "b", "correction_id": "same"},
            ],
            1,
            "correction_id",
        ),
    ],
)
def test_bad_corrections_are_a_422_naming_index_and_field(
    adapter: Adapter, piriod: Any, corrections: list[dict[str, Any]], index: int, field: str
) -> None:
    # given a posted record
    adapter.deliver(record("1", "k"))
    # when a delivery holds a correction that breaks a rule
    status, body = adapter.deliver(json.dumps({"corrections": corrections}), path="/v1/corrections")
    # then it is a 422 naming the correction's index and field, and nothing changed
    assert status == 422, body
    assert {"index": index, "field": field} in [
        {"index": p["index"], "field": p["field"]} for p in body["errors"]
    ]
    assert held(piriod) == ["1"]


def test_a_batch_of_more_than_100_or_none_or_not_json(adapter: Adapter, piriod: Any) -> None:
    many = [cancel(f"k{n}", f"c{n}") for n in range(101)]
    assert correct(adapter, *many)[0] == 422
    assert adapter.deliver('{"corrections": []}', path="/v1/corrections")[0] == 422
    assert adapter.deliver("not json", path="/v1/corrections")[0] == 400
    assert adapter.deliver('{"corrections": [', path="/v1/corrections")[0] == 400


def test_an_unsigned_correction_is_refused(adapter: Adapter, piriod: Any) -> None:
    adapter.deliver(record("1", "signed"))
    event = adapter.event(
        json.dumps({"corrections": [cancel("signed", "s")]}), path="/v1/corrections"
    )
    event["headers"]["webhook-signature"] = "v1,AAAA"
    status, _ = adapter.invoke(event)
    assert status == 401 and held(piriod) == ["1"]


# --- events --------------------------------------------------------------------------------


def test_an_event_in_an_open_window_is_corrected_with_its_total(
    meters: Adapter, piriod: Any
) -> None:
    # given three events counted into an open window of line 94
    window = minute(3)
    deliver_events(meters, [event(f"ev{n}", 94, window, "2.5") for n in range(3)])
    # when the sender cancels one and amends another
    status, body = correct(
        meters,
        cancel("ev0", "e-1", source="meter"),
        amend("ev1", "10", "e-2", source="meter"),
    )
    # then both are applied (in the window's open generation), and Piriod was not called
    assert status == 202 and statuses(body) == [("applied", 1), ("applied", 1)]
    assert piriod.requests == []
    # and the flush posts the corrected total: 10 + 2.5
    run_flush()
    assert totals(piriod) == {(94, utc(window)): Decimal("12.5")}


def test_events_of_a_flushed_window_are_restated_once_at_the_next_flush(
    meters: Adapter,
    piriod: Any,
) -> None:
    # given a window of 100 events of 1, flushed: Piriod holds one usage of 100
    window = minute(3)
    events = [event(f"w{n}", 93, window + timedelta(seconds=n % 60), "1") for n in range(100)]
    deliver_events(meters, events)
    run_flush()
    assert totals(piriod) == {(93, utc(window)): Decimal(100)}
    calls_before = len(piriod.requests)
    # when the sender cancels 30 of them and amends 20 to 3, in two deliveries
    first = correct(meters, *[cancel(f"w{n}", f"x{n}", source="meter") for n in range(30)])
    second = correct(meters, *[amend(f"w{n}", "3", f"y{n}", source="meter") for n in range(30, 50)])
    # then each is pending: the generation is closed, and waits for the next flush
    for status, body in (first, second):
        assert status == 202 and {r["status"] for r in body["results"]} == {"pending"}
    # and the next flush restates it once: one DELETE and one POST, at the same instant
    report = run_flush()
    assert report["restated"] == 1, report
    calls = [(r["method"], r["status"]) for r in piriod.requests[calls_before:]]
    assert [c for c in calls if c[0] != "GET"] == [("DELETE", 204), ("POST", 201)]
    assert totals(piriod) == {(93, utc(window)): Decimal(70 - 20 + 60)}
    # and a flush after that changes nothing
    assert run_flush()["restated"] == 0
    assert totals(piriod) == {(93, utc(window)): Decimal(110)}


def test_an_amend_of_a_count_window_is_a_422(meters: Adapter, piriod: Any) -> None:
    deliver_events(meters, [event("c1", 92, minute(3))], "counter")
    status, body = correct(meters, amend("c1", "2", "c-1", source="counter"))
    assert status == 422 and body["errors"][0]["field"] == "quantity"


def test_an_amend_handed_to_replay_while_the_first_post_is_in_flight_is_applied(
    adapter: Adapter, piriod: Any
) -> None:
    # given a record whose first post Piriod answers slowly (4 s, then 201)
    adapter.fresh_runtime(PIRIOD_READ_TIMEOUT="8")
    piriod.add_fault("latency", delay=4, count=1)
    poster = ThreadPoolExecutor(max_workers=1)
    posted = poster.submit(adapter.deliver, record("1", "slow-first"))
    wait_until(lambda: any(i["pk"]["S"] == "k#v1/usages#slow-first" for i in adapter.items()))
    # when the sender amends it meanwhile, from a function with too little time left to wait
    # for the key: the correction is handed to ReplayQueue (pending)
    status, body = correct(adapter, amend("slow-first", "5", "sf-1"), timeout_seconds=7)
    assert posted.result()[0] == 202
    poster.shutdown()
    assert status == 202 and statuses(body) == [("pending", 1)], body
    # and ReplayFunction drains it after the first post ended posted
    drain_replay(adapter)
    # then Piriod holds one usage for the key, at its amended quantity, and nothing waits
    assert held(piriod) == ["5"]
    assert adapter.messages("replay") == [] and adapter.messages("dead_letter") == []


def wait_until(ready: Any, seconds: float = 10) -> None:
    until = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < until, "never ready"
        time.sleep(0.05)


def test_corrections_that_arrive_while_a_flush_posts_the_window_are_restated(
    meters: Adapter, piriod: Any
) -> None:
    # given a due window of ten events of 1, and a flush whose POST of its total Piriod
    # answers slowly (2 s)
    window = minute(3)
    deliver_events(meters, [event(f"cl{n}", 98, window) for n in range(10)])
    piriod.add_fault("latency", delay=2, count=1)
    flusher = ThreadPoolExecutor(max_workers=1)
    flushed = flusher.submit(run_flush)
    wait_until(
        lambda: any(
            item.get("line_id", {}).get("N") == "98" and item.get("state", {}).get("S") == "closed"
            for item in meters.items()
        )
    )
    # when, the generation closed and its total being posted, the sender amends five events
    # to 3
    status, body = correct(
        meters, *[amend(f"cl{n}", "3", f"cl-{n}", source="meter") for n in range(5)]
    )
    flushed.result()
    flusher.shutdown()
    assert status == 202 and {r["status"] for r in body["results"]} == {"pending"}, body
    # and FlushFunction runs again
    report = run_flush()
    # then the generation was restated once: Piriod holds the corrected sum, 5 x 3 + 5 x 1
    assert report["restated"] == 1
    assert totals(piriod) == {(98, utc(window)): Decimal(20)}


def test_a_cancel_of_one_of_two_identical_records_posted_without_ids_is_applied(
    adapter: Adapter, piriod: Any
) -> None:
    # given two records under two keys, same line, instant and quantity, each posted by a
    # 201 without a usage id: Piriod lists two identical usages, one for each key
    adapter.fresh_runtime(REPLAY_BACKOFF_SECONDS="0", REPLAY_MAX_ATTEMPTS="3")
    piriod.add_fault("answer_after_store", status=201, body="no_id", count=2)
    adapter.deliver(f'{{"usages": [{record("7", "twin-1")}, {record("7", "twin-2")}]}}')
    assert held(piriod) == ["7", "7"]
    # when the sender cancels one of them, and ReplayFunction drains what waits
    status, body = correct(adapter, cancel("twin-1", "tw-c"))
    assert status == 202, body
    for _ in range(4):
        drain_replay(adapter)
    # then one listed usage is deleted for that record (SPEC 10: one listed usage is deleted
    # for at most one record): Piriod holds the other key's usage only, nothing is dead-lettered
    assert held(piriod) == ["7"]
    assert adapter.messages("dead_letter") == []
    # and a cancel of the other deletes the last one, not the same one twice
    status, body = correct(adapter, cancel("twin-2", "tw-c2"))
    assert status == 202, body
    for _ in range(4):
        drain_replay(adapter)
    assert held(piriod) == []
    assert adapter.messages("dead_letter") == []


# --- keys ------------------------------------------------------------------------------------


def test_a_record_keyed_by_a_long_webhook_id_can_be_cancelled(
    adapter: Adapter, piriod: Any
) -> None:
    # given a record without an idempotency_key, delivered with a webhook-id of 3,000
    # characters (the adapter accepts up to 4,096): its key is "{webhook-id}:0"
    webhook_id = "w" * 3000
    status, body = adapter.deliver(
        '{"subscription_line": 812, "date_time": "2026-11-01T01:00:00Z", "quantity": 1}',
        message_id=webhook_id,
    )
    assert status == 202 and body["results"][0]["status"] == "posted"
    # when the sender cancels it by that key (SPEC 10: "key: the record's key as in section
    # 3 (its idempotency_key, or {webhook-id}:{index})")
    status, body = correct(adapter, cancel(f"{webhook_id}:0", "long-c"))
    # then the cancel is applied and Piriod holds nothing
    assert status == 202 and statuses(body) == [("applied", 1)], body
    assert held(piriod) == []


def test_an_amend_of_an_event_too_precise_for_its_window_is_a_422_and_changes_nothing(
    meters: Adapter, piriod: Any
) -> None:
    # given two events of 1 counted into an open window of a summing source
    window = minute(3)
    deliver_events(meters, [event("pe0", 95, window), event("pe1", 95, window)])
    # when one delivery cancels the first and amends the second to a quantity of 19 decimal
    # places (valid by SPEC 3, but a window sums at most 18: counting such an event is a 422)
    status, body = correct(
        meters,
        cancel("pe0", "p-1", source="meter"),
        amend("pe1", "1.0000000000000000001", "p-2", source="meter"),
    )
    # then it is a 422 naming index 1 and quantity, and nothing changed (SPEC 10: "Validation
    # is all-or-nothing, as on the native route (422 naming index and field)")
    assert status == 422, body
    assert {"index": 1, "field": "quantity"} in [
        {"index": p["index"], "field": p["field"]} for p in body["errors"]
    ]
    run_flush()
    assert totals(piriod) == {(95, utc(window)): Decimal(2)}


def plain_profile(**extra: Any) -> dict[str, Any]:
    """A source whose events each become a usage (no aggregation)."""
    return {
        "signature": SIGNATURE,
        "records": "events",
        "fields": {
            "date_time": "at",
            "event_id": "id",
            "subscription_line": "line",
            "quantity": "q",
        },
        **extra,
    }


@pytest.fixture
def plain(adapter: Adapter) -> Adapter:
    """The adapter with two plain sources: `live` and `sandbox` (its profile in test mode)."""
    parameter = f"/{adapter.resources.table.removesuffix('-idempotency')}/sources"
    profiles = {"live": plain_profile(), "sandbox": plain_profile(test_mode=True)}
    config = provision_sources(
        adapter.endpoint, parameter, {"version": 1, "sources": profiles}, {"agg/meter": SECRET}
    )
    adapter.fresh_runtime(SOURCES_CONFIG=config, SOURCES_CACHE_SECONDS="0")
    return adapter


def test_a_record_of_a_test_mode_source_is_amended_in_test_mode(
    plain: Adapter, piriod: Any
) -> None:
    # given a record of a source whose profile says test_mode: posted in Piriod's test data
    status, body = deliver_events(
        plain, [{"id": "sb-1", "line": LINE, "at": "2026-11-01T01:00:00Z", "q": 2}], "sandbox"
    )
    assert status == 202 and body["results"][0]["status"] == "posted", body
    assert [u["quantity"] for u in piriod.usages(test_mode=True)] == ["2"]
    # when the sender amends it to 3
    status, body = correct(plain, amend("sb-1", "3", "sb-a", source="sandbox"))
    assert status == 202 and statuses(body) == [("applied", 1)], body
    drain_replay(plain)
    # then Piriod's test data holds one usage of 3, and its live data nothing (SPEC 8: the
    # profile's test_mode; SPEC 10: one usage per key at its last quantity)
    assert [str(u["quantity"]) for u in piriod.usages(test_mode=True)] == ["3"]
    assert piriod.usages(test_mode=False) == []


@pytest.fixture
def examples(adapter: Adapter) -> Adapter:
    """The adapter with the example profiles (examples/sources.json), fleet-telemetry's
    CloudEvents among them."""
    parameter = f"/{adapter.resources.table.removesuffix('-idempotency')}/sources"
    config = provision_sources(adapter.endpoint, parameter)
    adapter.fresh_runtime(SOURCES_CONFIG=config, SOURCES_CACHE_SECONDS="0")
    return adapter


def test_a_cloudevent_is_corrected_by_the_event_id_its_result_carries(
    examples: Adapter, piriod: Any
) -> None:
    # given the CloudEvents sample posted: two usages, each result naming its event_id
    status, body = examples.invoke(sign_event(load_event("source-fleet-telemetry.json")))
    assert status == 202 and [r["status"] for r in body["results"]] == ["posted", "posted"]
    event_id = body["results"][0]["event_id"]
    assert event_id == "evt-fleet-0001"
    # when the sender cancels the first by that event_id and its source (SPEC 10: "for a
    # source's event, its event_id")
    status, body = correct(examples, cancel(event_id, "ce-1", source="fleet-telemetry"))
    # then it is applied, and Piriod holds only the other event's usage
    assert status == 202 and statuses(body) == [("applied", 1)], body
    assert sorted(str(u["quantity"]) for u in piriod.usages()) == ["0.5"]
