"""Aggregation windows against a model (SPEC section 9): the record lifecycle's state machine
(tests/unit/test_lifecycle_model.py, every rule of it) extended with deliveries and
redeliveries to an aggregating source, late events, flushes (also two at once, and one
between a delivery's read and its write), conflicts and a counting store going down, Piriod
faults during a flush (stored then lost, lost, throttled, refused), SQS redelivering the
queued totals, and a meter without a line rejected into DeadLetterQueue and counted by the
operator's replay once it has one. The real code runs: the webhook's count_and_answer,
Counting, flush and the Submitter; only the stores and Piriod are fakes
(tests/unit/fakes.py).

After every step: an event's key and its addition are together (each counted event is in
exactly one generation's total, and every total is its events' sum); an `aggregated` result
names the generation that holds the event; nothing is posted twice. After draining (every
due window flushed, ReplayQueue empty): for every line and window, Piriod's quantities at
the window's instants sum to the acknowledged events' quantities (SPEC 9's invariant).
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from piriod_adapter.aggregate import Aggregate
from piriod_adapter.clock import Deadline
from piriod_adapter.corrections import CorrectionEntry
from piriod_adapter.counting import Counting, count_one
from piriod_adapter.flush import flush, window_key
from piriod_adapter.idempotency import StoreUnavailable
from piriod_adapter.lifecycle import Outcome, Submission
from piriod_adapter.models import KeyKind, QueuedRecord, Tenant, Usage, UsageKey
from piriod_adapter.queue import DEAD_LETTER, REPLAY
from piriod_adapter.replay import Received, redeliver_dead_letter, replay_batch
from piriod_adapter.table import WindowId, key_pk
from piriod_adapter.webhook import count_and_answer
from piriod_adapter.windows import from_units
from tests.unit import fakes
from tests.unit.fakes import FakeWindowStore
from tests.unit.test_lifecycle_model import Lifecycle, _Drawn

RUNS = int(os.environ.get("WINDOW_MODEL_RUNS", "600"))
SOURCE = "meter"
SPEC = Aggregate(function="sum", window="PT1M", lateness="PT30S", max_age="PT1H")
WINDOW_LINES = [31, 32, 0]  # 0: a meter the profile has no line for (until it gets 33)
NEW_METER_LINE = 33
EVENT_QUANTITIES = [Decimal("0.000000000000000001"), Decimal("2.5"), Decimal("7"), Decimal(0)]
TENANT = Tenant(workspace="w", test_mode=False)
# A delivery's events: (event number, line, window, second in it, quantity), one per number.
PICKS = st.lists(
    st.tuples(
        st.integers(0, 15),
        st.sampled_from(WINDOW_LINES),
        st.integers(0, 3),
        st.integers(0, 59),
        st.sampled_from(EVENT_QUANTITIES),
    ),
    min_size=1,
    max_size=5,
    unique_by=lambda p: p[0],
)


class Windows(Lifecycle):
    def __init__(self) -> None:
        super().__init__()
        self.windows = FakeWindowStore()
        self.store.events = self.windows  # event keys live in the same table
        # about now: a queue message refuses a record more than 5 minutes ahead of the wall
        self.clock.now = float(int(time.time()))
        base = datetime.fromtimestamp(self.clock(), UTC).replace(second=0, microsecond=0)
        self.starts = [base - timedelta(minutes=m) for m in (3, 2, 1, 0)]
        self.events: dict[str, Usage] = {}  # every event ever sent, by key
        self.acknowledged_events: set[str] = set()
        self.acknowledged_rejected: set[str] = set()  # answered rejected: in DeadLetterQueue
        self.mapped = False  # whether the new meter has its line yet
        self.window_keys: set[str] = set()
        self.during = 0  # corrections made during a post

    def _event(self, n: int, line: int, window: int, second: int, quantity: Decimal) -> Usage:
        text = f"ev-{n}"
        known = self.events.get(f"e#v1/sources/{SOURCE}#{text}")
        if known is not None:  # a redelivery: the same event
            return known
        usage = Usage(
            subscription_line=line or None,
            date_time=self.starts[window] + timedelta(seconds=second, microseconds=n),
            quantity=quantity,
            key=UsageKey(kind=KeyKind.EVENT, scope=f"v1/sources/{SOURCE}", text=text),
            source=SOURCE,
            meter_id=None if line else "new-meter",
        )
        self.events[key_pk(usage.key)] = usage
        return usage

    def _resolve(self, usage: Usage) -> Usage:
        """The event as the profile maps it now (the new meter's line, once it has one)."""
        if usage.meter_id == "new-meter" and self.mapped:
            return usage.model_copy(update={"subscription_line": NEW_METER_LINE})
        return usage

    # --- the world -----------------------------------------------------------------------------

    @rule()
    def the_new_meter_gets_its_line(self) -> None:
        self.mapped = True

    @rule(down=st.booleans(), conflicts=st.integers(0, 3))
    def window_store(self, down: bool, conflicts: int) -> None:
        self.windows.down, self.windows.conflicts = down, conflicts

    # --- deliveries ----------------------------------------------------------------------------

    @rule(picks=PICKS, flush_between=st.booleans())
    def deliver_events(self, picks: list[Any], flush_between: bool) -> None:
        if flush_between:  # a flusher closes windows between this delivery's read and write
            self.windows.before_count = self._flush
        self._deliver(picks)

    @rule(first=PICKS, second=PICKS)
    def deliveries_at_once(self, first: list[Any], second: list[Any]) -> None:
        # two deliveries of the first events of a generation (a window's first, or the one
        # after a close): the second runs whole between the first's read and its write, so
        # both read the generation as new and both write its item with their additions
        self.windows.before_count = lambda: self._deliver(second)
        self._deliver(first)

    def _deliver(self, picks: list[Any]) -> None:
        seen = [u for u in self.events.values()]
        usages = [self._resolve(self._event(*pick)) for pick in picks]
        down = self.windows.down or self.queues.down or any(self.store.throttled.values())
        reply = count_and_answer(
            self.windows,
            self.submitter.place,
            self.queues.place_failed,
            30,
            usages,
            TENANT,
            Deadline.after(25),
            SPEC,
            delivery="d",
            source=SOURCE,
            event_ids=[u.key.text for u in usages],
            clock=self.clock,
        )
        body = json.loads(reply.body.model_dump_json(exclude_defaults=True))
        if reply.status == 422:  # too old by now, or a window had all its generations
            assert {p["field"] for p in body["errors"]} == {"date_time"}, body
            assert not any(key_pk(u.key) in self.windows.keys for u in usages if u not in seen)
            return
        assert reply.status in (202, 503), body
        assert reply.status == 202 or down, body  # a 503 only while a store is down
        for usage, result in zip(usages, body["results"], strict=True):
            pk = key_pk(usage.key)
            if result["status"] == "aggregated":
                # it is in the generation its result names, and nowhere else
                _, window, g = self.windows.keys[pk]
                assert result["generation"] == g
                assert result["window_start"] == window.start.strftime("%Y-%m-%dT%H:%M:%SZ")
            elif result["status"] == "duplicate":
                assert pk in self.windows.keys
            elif result["status"] == "rejected":  # the new meter, without its line yet
                assert usage.subscription_line is None, result
                assert pk in self.queues.keys_in(DEAD_LETTER), result
            if reply.status == 202:
                assert result["status"] in ("aggregated", "duplicate", "rejected"), result
                if result["status"] == "rejected":
                    self.acknowledged_rejected.add(pk)
                else:
                    self.acknowledged_events.add(pk)

    # --- corrections of events (SPEC 10) ----------------------------------------------------

    @precondition(lambda self: self.windows.keys)
    @rule(
        data=st.data(),
        action=st.sampled_from(["cancel", "amend"]),
        quantity=st.sampled_from(EVENT_QUANTITIES),
        attempt=st.integers(0, 2),
    )
    def sender_corrects_events(
        self, data: st.DataObject, action: str, quantity: Decimal, attempt: int
    ) -> None:
        # a sender cancels or amends events it sent, in an open, closed or posted generation
        # (the same correction id again is its retry)
        picks = data.draw(st.lists(st.sampled_from(sorted(self.windows.keys)), max_size=3))
        self._correct_events(picks, action, quantity, attempt)

    @precondition(lambda self: self.windows.keys)
    @rule(
        data=st.data(),
        action=st.sampled_from(["cancel", "amend"]),
        quantity=st.sampled_from(EVENT_QUANTITIES),
    )
    def sender_corrects_events_during_a_post(
        self, data: st.DataObject, action: str, quantity: Decimal
    ) -> None:
        # a sender corrects events while a flush (or a replay) posts a window's total: its
        # generation is closed, its total not handed over yet
        picks = data.draw(st.lists(st.sampled_from(sorted(self.windows.keys)), max_size=3))
        self.during += 1

        def during(_: Usage) -> bool:
            self._correct_events(picks, action, quantity, 10 + self.during)
            return True

        self.piriod.during_post = during

    def _correct_events(
        self, picks: list[str], action: str, quantity: Decimal, attempt: int
    ) -> None:
        entries = [
            CorrectionEntry.model_validate(
                {
                    "action": action,
                    "key": self.events[pk].key.text,
                    "source": SOURCE,
                    "quantity": quantity if action == "amend" else None,
                    "correction_id": f"{pk}/{action}/{quantity}/{attempt}",
                }
            )
            for pk in dict.fromkeys(picks)
        ]
        if not entries:
            return
        down = self.windows.down or self.store.down or any(self.store.throttled.values())
        done = self.corrector(self.windows).run(entries, Deadline.after(25))
        for one in done:
            assert one.status in ("applied", "pending", "duplicate", "not_found", "not_stored")
            assert one.status != "not_stored" or down, one
        for entry, one in zip(entries, done, strict=True):  # a counted event is never forgotten
            pk = f"e#v1/sources/{SOURCE}#{entry.key}"
            assert one.status != "not_found" or pk in self.windows.cancelled, one

    # --- the operator --------------------------------------------------------------------------

    def _count(self, sub: Submission, deadline: Deadline) -> Outcome | None:
        """runtime.count_event for this source: an event counted into its window."""
        usage = sub.usage
        if usage.source != SOURCE or usage.key.kind is not KeyKind.EVENT:
            return None
        counting = Counting(
            SPEC,
            SOURCE,
            TENANT,
            self.windows,
            self.submitter.place,
            self.queues.place_failed,
            30,
            clock=self.clock,
        )
        return count_one(counting, sub, deadline)

    @precondition(lambda self: self.queues.dead)
    @rule(data=st.data())
    def operator_replays_a_dead_letter(self, data: st.DataObject) -> None:
        message = data.draw(st.sampled_from(self.queues.dead))
        self._operator_replay(message)

    def _operator_replay(self, message: Any) -> None:
        record_ = QueuedRecord.from_json(message.body)
        result = redeliver_dead_letter(
            record_,
            self.submitter,
            cast(Any, self.queues),
            Deadline.after(60),
            self._resolve,
            self._count,
        )
        if not result.retry:
            self.queues.delete(DEAD_LETTER, message.message_id)

    # --- flushing ------------------------------------------------------------------------------

    def _flush(self) -> Any:
        try:
            report = flush(
                self.windows,
                self.submitter,
                self.queues.place_failed,
                "w",
                Deadline.after(25),
                1,
                now=self.clock(),
                keys=self.store,
            )
        except StoreUnavailable:  # the due index cannot be read: the next run tries again
            return None
        for gen in self.windows.gens:
            window, g = gen
            self.window_keys.add(key_pk(window_key(window, g)))
        return report

    @rule()
    def flush_function_runs(self) -> None:
        self._flush()

    @rule()
    def two_flushers_at_once(self) -> None:
        # the second one runs in full while the first is closing its first window
        original = self.windows.close
        nested: list[bool] = []

        def close(found: Any) -> Any:
            closed = original(found)
            if not nested:
                nested.append(True)
                self.windows.close = original  # type: ignore[method-assign]
                self._flush()
            return closed

        self.windows.close = close  # type: ignore[method-assign]
        try:
            self._flush()
        finally:
            self.windows.close = original  # type: ignore[method-assign]

    # --- the invariants ------------------------------------------------------------------------

    @invariant()
    def an_event_and_its_addition_commit_together(self) -> None:
        # each generation holds its events' units now (a correction's difference is in its
        # shards while it is open, in its adjust once closed)
        held: dict[tuple[WindowId, int], int] = {}
        for pk, (_, window, g) in self.windows.keys.items():
            held[(window, g)] = held.get((window, g), 0) + self.windows.units[pk]
        counted = {
            (w, g): self.windows.counted(w, g) + self.windows.gens[(w, g)].adjust
            for (w, g) in {(w, g) for (w, g, _) in self.windows.counters}
        }
        assert {k: v for k, v in held.items() if v} == {k: v for k, v in counted.items() if v}
        for pk in self.acknowledged_events:
            assert pk in self.windows.keys, pk
        for pk in self.acknowledged_rejected:  # waits in DeadLetterQueue, or counted since
            assert pk in self.windows.keys or pk in self.queues.keys_in(DEAD_LETTER), pk

    @invariant()
    def a_window_total_is_posted_once(self) -> None:
        for pk in self.window_keys:
            assert len(self.piriod.usages_of(pk)) <= 1, (pk, self.piriod.usages_of(pk))

    def teardown(self) -> None:
        """Drain: stores up, Piriod healthy, every window due and flushed, ReplayQueue
        empty; then SPEC 9's invariant for every line and window."""
        self.windows.down = self.store.down = self.queues.down = False
        self.windows.conflicts = 0
        self.store.throttled.clear()
        self.piriod.answers.clear()
        self.piriod.listing_down = self.piriod.endless = self.piriod.filters_miss = False
        self.piriod.quantity_precision = self.piriod.time_precision = "exact"
        self.piriod.unmetered.clear()
        self.mapped = True  # the operator adds the meter's line and replays its dead letters
        for message in list(self.queues.dead):
            if f'"source":"{SOURCE}"' in message.body and '"kind":"event"' in message.body:
                self._operator_replay(message)
        for _ in range(40):
            self.clock.advance(120)
            self._flush()
            if self.queues.replay:
                batch = list(self.queues.replay)
                received = [Received(m.message_id, m.body, 1) for m in batch]
                results = replay_batch(
                    received, self.submitter, cast(Any, self.queues), Deadline.after(60), 8, 1
                )
                for message, result in zip(batch, results, strict=True):
                    if not result.retry:
                        self.queues.delete(REPLAY, message.message_id)
            due = self.windows.due(self.clock(), 1000)
            if not due and not self.queues.replay:
                break
        assert not self.windows.due(self.clock(), 1000), "a due window was left"
        window_replays = [m for m in self.queues.replay if '"kind":"window"' in m.body]
        assert not window_replays, "ReplayQueue did not drain"
        # SPEC 9: Piriod's quantities at a window's instants == the acknowledged events'
        expected: dict[tuple[int, datetime], Decimal] = {}
        counted: dict[tuple[int, datetime], Decimal] = {}
        for pk, usage in self.events.items():
            line = usage.subscription_line or NEW_METER_LINE
            key = (line, SPEC.window_start(usage.date_time))
            # an event at its last amended quantity, nothing once cancelled (SPEC 10)
            now = from_units(self.windows.units[pk]) if pk in self.windows.units else None
            if pk in self.acknowledged_events | self.acknowledged_rejected:
                expected[key] = expected.get(key, Decimal(0)) + (
                    usage.quantity if now is None else now
                )
            if now is not None:
                counted[key] = counted.get(key, Decimal(0)) + now
        held: dict[tuple[int, datetime], Decimal] = {}
        for entry in self.piriod.ledger:
            if entry.key is None or not entry.key.startswith("a#") or entry.deleted:
                continue
            start = entry.at.replace(second=0, microsecond=0)
            held[(entry.line, start)] = held.get((entry.line, start), Decimal(0)) + entry.quantity
        nonzero = {k: v for k, v in counted.items() if v}
        assert held == nonzero, (held, nonzero)
        for key, total in expected.items():  # every acknowledged event is in Piriod's total
            assert held.get(key, Decimal(0)) >= total, (key, total)
        super().teardown()


def _text(window: WindowId) -> str:
    return window.start.strftime("%Y-%m-%dT%H:%M:%SZ")


TestWindows = Windows.TestCase
TestWindows.settings = settings(
    max_examples=RUNS,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_a_total_restated_to_zero_then_back_is_posted_again() -> None:
    # given (found by the model in CI) a window of two events whose total's post is stored
    # but its answer lost, and both events amended to zero while that post is in flight
    events = ["e#v1/sources/meter#ev-0", "e#v1/sources/meter#ev-1"]
    tiny = Decimal("1E-18")
    state = Windows()
    state.deliver_events(flush_between=False, picks=[(0, 31, 0, 0, tiny), (1, 31, 0, 0, tiny)])
    state.piriod_will_answer(answers=["stored_then_lost"])
    state.sender_corrects_events_during_a_post(
        action="amend", data=cast(Any, _Drawn(events)), quantity=Decimal(0)
    )
    state.deliver(meanwhile=0, picks=[(0, 11, Decimal("1.5"), 123456)], twice=False)
    state.flush_function_runs()
    # when, while ReplayQueue settles that total and deletes its usage, both events are
    # amended back to their first quantity (teardown drains it, and checks SPEC 9)
    state.sender_corrects_events_during_a_post(
        action="amend", data=cast(Any, _Drawn(events)), quantity=tiny
    )
    state.teardown()
    # then the first usage is deleted and the total posted anew: one usage of 2E-18
    window = [e for e in state.piriod.ledger if e.key and e.key.startswith("a#")]
    assert [(e.quantity, e.deleted) for e in window] == [(2 * tiny, True), (2 * tiny, False)]


def test_a_restatement_past_the_key_s_correction_limit_is_never_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given (found by a second reviewer) a flushed generation whose window key takes two
    # corrections (standing for the store's 1,000)
    monkeypatch.setattr(fakes, "MAX_CORRECTIONS", 2)
    state = Windows()
    state.deliver_events(flush_between=False, picks=[(0, 31, 0, 0, Decimal("2.5"))])
    state.flush_function_runs()
    # when its event is amended three times, FlushFunction running after each
    for n, quantity in enumerate(["7", "2.5", "7"]):
        state._correct_events(["e#v1/sources/meter#ev-0"], "amend", Decimal(quantity), n)
        state.flush_function_runs()
    # then the third restatement, refused by the key, is not marked done: the generation
    # stays due (for an operator), and Piriod holds the last total it could restate
    live = [e.quantity for e in state.piriod.ledger if e.key and e.key.startswith("a#")]
    assert live[-1:] == [Decimal("2.5")]
    assert state.windows.due(state.clock() + 10_000, 100)
