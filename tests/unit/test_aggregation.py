"""The aggregate block, the bounds of an aggregating source, and counting's answers to each
way a transaction ends (tests/unit/fakes.py FakeWindowStore; no network)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from piriod_adapter.aggregate import Aggregate, check_events
from piriod_adapter.clock import Deadline
from piriod_adapter.counting import Counting, WindowFull
from piriod_adapter.lifecycle import Fate
from piriod_adapter.models import KeyKind, QueuedRecord, Tenant, Usage, UsageKey
from piriod_adapter.sources import parse_document
from piriod_adapter.windows import from_units, to_units
from tests.unit.fakes import FakeQueues, FakeWindowStore, placer, subs

# about now: a queue message refuses a record more than 5 minutes ahead of the wall clock
NOW = datetime.now(UTC).replace(second=30, microsecond=0) - timedelta(minutes=1)
TENANT = Tenant(workspace="w", test_mode=False)


def usage(n: int, at: datetime, quantity: str = "1", line: int | None = 7) -> Usage:
    return Usage(
        subscription_line=line,
        date_time=at,
        quantity=Decimal(quantity),
        key=UsageKey(kind=KeyKind.EVENT, scope="v1/sources/m", text=f"e{n}"),
        source="m",
        meter_id=None if line else "unknown",
    )


def counting(store: FakeWindowStore, queues: FakeQueues | None = None, **spec: str) -> Counting:
    aggregate = Aggregate(**{"function": "sum", "window": "PT1M", **spec})  # type: ignore[arg-type]
    return Counting(
        aggregate,
        "m",
        TENANT,
        store,
        placer(),
        (queues or FakeQueues()).place_failed,
        30,
        clock=NOW.timestamp,
        sleep=lambda _: None,
    )


# --- the block -----------------------------------------------------------------------------


@pytest.mark.parametrize("window", ["PT1M", "PT5M", "PT15M", "PT1H", "P1D", "PT30M", "PT1S"])
def test_a_window_that_divides_a_day_is_accepted(window: str) -> None:
    assert Aggregate(function="count", window=window).window == window


@pytest.mark.parametrize("window", ["PT7M", "PT0S", "P2D", "1 minute", "PT", "P", "PT1.5M", ""])
def test_a_window_that_does_not_divide_a_day_is_refused(window: str) -> None:
    with pytest.raises(ValidationError):
        Aggregate(function="count", window=window)


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("lateness", "PT0S", True),
        ("lateness", "P1D", True),
        ("lateness", "PT24H1S", False),
        ("max_age", "PT1H", True),
        ("max_age", "P35D", True),
        ("max_age", "PT59M", False),
        ("max_age", "P36D", False),
    ],
)
def test_lateness_and_max_age_bounds(field: str, value: str, ok: bool) -> None:
    arguments: dict[str, Any] = {"function": "sum", "window": "PT1M", field: value}
    if ok:
        assert getattr(Aggregate(**arguments), field) == value
    else:
        with pytest.raises(ValidationError):
            Aggregate(**arguments)


def test_defaults_are_five_minutes_late_and_35_days_old() -> None:
    spec = Aggregate(function="sum", window="PT5M")
    assert (spec.lateness_seconds, spec.max_age_seconds) == (300, 35 * 86400)


def test_windows_are_aligned_to_utc_midnight() -> None:
    spec = Aggregate(function="sum", window="PT15M")
    assert spec.window_start(datetime(2026, 12, 3, 10, 29, 59, tzinfo=UTC)) == datetime(
        2026, 12, 3, 10, 15, tzinfo=UTC
    )


def test_a_profile_with_a_broken_aggregate_names_the_field() -> None:
    # given a profile whose aggregate block has a typo
    document = (
        b'{"version": 1, "sources": {"m": {"signature": {"scheme": "stripe", "secret_id": "s"},'
        b'"fields": {"date_time": "t", "event_id": "i"}, "subscription_line": 1,'
        b'"aggregate": {"function": "count", "windw": "PT1M"}}}}'
    )
    # when it is read
    parsed = parse_document(document)
    # then that source is kept as its error, naming the source and the field
    assert "m" not in parsed.sources
    assert "'m'" in str(parsed.broken["m"]) and "field aggregate.window" in str(parsed.broken["m"])


# --- bounds of an aggregating source -------------------------------------------------------


def test_too_old_too_far_ahead_and_too_precise_are_named() -> None:
    spec = Aggregate(function="sum", window="PT1M", max_age="PT1H")
    problems = check_events(
        [
            usage(0, NOW - timedelta(minutes=61)),
            usage(1, NOW + timedelta(minutes=6)),
            usage(2, NOW, "0.0000000000000000001"),
            usage(3, NOW - timedelta(minutes=59), "0.100000000000000000000"),
        ],
        spec,
        NOW,
    )
    assert [(p.index, p.field) for p in problems] == [
        (0, "date_time"),
        (1, "date_time"),
        (2, "quantity"),
    ]


def test_units_are_exact_to_38_digits() -> None:
    largest = Decimal("99999999999999999999.999999999999999999")
    assert from_units(to_units(largest)) == largest
    assert len(str(to_units(largest))) == 38
    with pytest.raises(ValueError, match="decimal places"):
        to_units(Decimal("1E-19"))


# --- counting ------------------------------------------------------------------------------


def test_conflicts_are_retried_and_then_counted() -> None:
    # given a store whose next three transactions conflict
    store = FakeWindowStore(conflicts=3)
    # when a delivery is counted
    [one] = counting(store).run(subs([usage(1, NOW)]), Deadline.after(10))
    # then it is counted once
    assert (one.fate, one.generation) == (Fate.AGGREGATED, 0)
    assert len(store.keys) == 1


def test_conflicts_that_never_clear_are_not_stored() -> None:
    store = FakeWindowStore(conflicts=100)
    [one] = counting(store).run(subs([usage(1, NOW)]), Deadline.after(10))
    assert one.fate is Fate.NOT_STORED and store.keys == {}


def test_a_window_closed_under_a_delivery_sends_it_to_the_next_generation() -> None:
    # given a window whose generation 0 a flusher closes between the read and the write
    store = FakeWindowStore()
    first = counting(store)
    first.run(subs([usage(1, NOW - timedelta(minutes=2))]), Deadline.after(10))
    gen = store.due(NOW.timestamp() + 3600, 10)[0]
    store.before_count = lambda: store.close(gen)
    # when a late event is counted
    [late] = counting(store).run(subs([usage(2, NOW - timedelta(minutes=2))]), Deadline.after(10))
    # then it is in generation 1, and generation 0's total is unchanged
    assert (late.fate, late.generation) == (Fate.AGGREGATED, 1)
    window = store.keys["e#v1/sources/m#e1"][1]
    assert (store.counted(window, 0), store.counted(window, 1)) == (10**18, 10**18)


def test_a_duplicate_carries_no_window_and_a_reused_key_is_rejected() -> None:
    store, queues = FakeWindowStore(), FakeQueues()
    counting(store, queues).run(subs([usage(1, NOW)]), Deadline.after(10))
    again = counting(store, queues).run(subs([usage(1, NOW)]), Deadline.after(10))
    assert again[0].fate is Fate.DUPLICATE and again[0].generation is None
    [reused] = counting(store, queues).run(subs([usage(1, NOW, "5")]), Deadline.after(10))
    assert reused.fate is Fate.REJECTED and reused.errors is not None
    assert "idempotency_key" in reused.errors
    assert [QueuedRecord.from_json(m.body).usage.quantity for m in queues.dead] == [Decimal(5)]


def test_a_window_past_its_generations_is_refused_before_anything_is_counted() -> None:
    # given a PT1S window that has had its one generation
    store = FakeWindowStore()
    at = NOW - timedelta(minutes=2)
    counting(store, window="PT1S").run(subs([usage(1, at)]), Deadline.after(10))
    store.close(store.due(NOW.timestamp() + 3600, 10)[0])
    # when another event for it arrives, then it is a 422 and nothing is written
    with pytest.raises(WindowFull):
        counting(store, window="PT1S").run(subs([usage(2, at), usage(3, NOW)]), Deadline.after(10))
    assert list(store.keys) == ["e#v1/sources/m#e1"]


def test_a_window_used_up_by_a_flush_during_the_delivery_is_a_422_while_nothing_counted() -> None:
    # given a PT1S window with its one generation open, and a flusher that closes it between
    # this delivery's read and its write
    store, queues = FakeWindowStore(), FakeQueues()
    at = NOW - timedelta(minutes=2)
    counting(store, window="PT1S").run(subs([usage(1, at)]), Deadline.after(10))
    gen = store.due(NOW.timestamp() + 3600, 10)[0]
    store.before_count = lambda: store.close(gen)
    # when another event for it arrives, then it is a 422 as if the read had seen the close,
    # and nothing is written or kept
    with pytest.raises(WindowFull):
        counting(store, queues, window="PT1S").run(subs([usage(2, at)]), Deadline.after(10))
    assert list(store.keys) == ["e#v1/sources/m#e1"] and queues.dead == []


def test_a_window_used_up_after_part_of_the_delivery_counted_rejects_only_its_events() -> None:
    # given a PT1S window with its one generation open, and a flusher that closes it just
    # before the delivery's second transaction (its first one, for another window, committed)
    store, queues = FakeWindowStore(), FakeQueues()
    at = NOW - timedelta(minutes=2)
    counting(store, window="PT1S").run(subs([usage(1, at)]), Deadline.after(10))
    gen = store.due(NOW.timestamp() + 3600, 10)[0]
    original = store.count

    def count(*args: Any) -> Any:
        if "e#v1/sources/m#e3" in [e.pk for e in args[0]]:
            store.close(gen)
        return original(*args)

    store.count = count  # type: ignore[method-assign,assignment]
    deliver = counting(store, queues, window="PT1S")
    # (each event in a transaction of its own, as when a window's shard is full)
    deliver.singles.add(next(w for (w, _) in store.gens))
    # when a delivery of an event for another window, and one for the used-up window, comes
    other = usage(2, at + timedelta(seconds=5))
    results = deliver.run(subs([other, usage(3, at)]), Deadline.after(10))
    # then the first is counted, and the second, no longer countable, is kept in
    # DeadLetterQueue naming the bound (the delivery cannot be refused: part of it counted)
    assert [r.fate for r in results] == [Fate.AGGREGATED, Fate.REJECTED]
    assert "generations" in (results[1].errors or {}).get("date_time", [""])[0]
    assert len(queues.dead) == 1


def test_a_full_window_rejects_only_what_does_not_fit() -> None:
    # given 3 shards with room for 2 units of 10^-18 each
    store, queues = FakeWindowStore(room=3 * 2), FakeQueues()
    events = [usage(n, NOW, "0.000000000000000001") for n in range(8)]
    # when 8 are counted
    results = counting(store, queues).run(subs(events), Deadline.after(10))
    # then what fits is counted, and the rest is kept in DeadLetterQueue
    counted = [r for r in results if r.fate is Fate.AGGREGATED]
    rejected = [r for r in results if r.fate is Fate.REJECTED]
    assert len(counted) + len(rejected) == 8 and rejected
    assert len(queues.dead) == len(rejected)
    assert sum(store.counted(w, g) for (_, w, g) in store.keys.values()) >= len(counted)


def test_a_store_down_answers_not_stored_and_keeps_what_was_counted() -> None:
    # given a delivery of two chunks whose second transaction fails
    store = FakeWindowStore()
    events = [usage(n, NOW - timedelta(minutes=n % 3)) for n in range(120)]
    calls = {"n": 0}
    original = store.count

    def count(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            store.down = True
        return original(*args)

    store.count = count  # type: ignore[method-assign,assignment]
    results = counting(store).run(subs(events), Deadline.after(10))
    # then the first chunk's events are aggregated, the rest not stored
    statuses = {r.fate for r in results}
    assert statuses == {Fate.AGGREGATED, Fate.NOT_STORED}
    assert len(store.keys) == sum(r.fate is Fate.AGGREGATED for r in results)


def test_an_unmapped_meter_is_rejected_and_queued_without_a_key() -> None:
    store, queues = FakeWindowStore(), FakeQueues()
    [one] = counting(store, queues).run(subs([usage(1, NOW, line=None)]), Deadline.after(10))
    assert one.fate is Fate.REJECTED and one.errors and "meter_id" in one.errors
    assert store.keys == {} and len(queues.dead) == 1


def test_an_event_key_outlives_any_max_age_the_profile_may_be_given() -> None:
    # given a source with max_age PT1H and a key TTL of 30 days
    store = FakeWindowStore()
    seen: list[Any] = []
    original = store.count

    def count(events: Any, windows: Any) -> Any:
        seen.extend(events)
        return original(events, windows)

    store.count = count  # type: ignore[method-assign]
    # when an event is counted
    counting(store, max_age="PT1H").run(subs([usage(1, NOW)]), Deadline.after(10))
    # then its key is kept 35 days (the longest max_age) and a day after its date_time
    assert seen[0].expires_at >= NOW.timestamp() + 36 * 86400


def test_a_profile_edit_starts_windows_of_their_own() -> None:
    # given one event counted by a PT1M sum profile
    store = FakeWindowStore()
    counting(store).run(subs([usage(1, NOW)]), Deadline.after(10))
    # when the profile becomes a PT5M count, and another event of the same minute arrives
    [other] = Counting(
        Aggregate(function="count", window="PT5M"),
        "m",
        TENANT,
        store,
        placer(),
        FakeQueues().place_failed,
        30,
        clock=NOW.timestamp,
    ).run(subs([usage(2, NOW)]), Deadline.after(10))
    # then it is counted in a window of its own series, not added to the PT1M sum
    assert other.fate is Fate.AGGREGATED
    series = sorted({window.series for (_, window, _) in store.keys.values()})
    assert series == ["count-300s", "sum-60s"]
