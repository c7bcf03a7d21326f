"""The record lifecycle against a model: the real Submitter, webhook answer and replay code
over fake ports (tests/unit/fakes.py), driven through Piriod faults (stored then lost, lost,
throttled, refused, 201 without an id), lower-precision listings, lookalike usages, crashed
attempts, stores going down, SQS redelivering and reordering, and time passing.

After every step: nothing is posted twice, nothing acknowledged is lost, a 503 comes only
while a store is down, and a 202 tells each record's true place.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import piriod_adapter.submit as submit_module
from piriod_adapter.clock import Deadline
from piriod_adapter.corrections import CorrectionEntry, Corrector
from piriod_adapter.flush import sweep_corrections
from piriod_adapter.idempotency import StoreUnavailable
from piriod_adapter.lifecycle import Fate, KeyStatus, Submission, Taker
from piriod_adapter.models import FailureKind, KeyKind, QueuedRecord, Tenant, Usage, UsageKey
from piriod_adapter.piriod import DeleteResult
from piriod_adapter.queue import DEAD_LETTER, REPLAY
from piriod_adapter.replay import Received, redeliver_dead_letter, replay_batch
from piriod_adapter.submit import Submitter
from piriod_adapter.table import CORRECTING, key_pk
from piriod_adapter.webhook import summarize
from tests.unit.fakes import DELETE_ANSWERS, Clock, FakeKeyStore, FakePiriod, FakeQueues

RUNS = int(os.environ.get("LIFECYCLE_MODEL_RUNS", "3000"))
TENANT = Tenant(workspace="w", test_mode=False)
AT = datetime(2026, 11, 30, 10, 0, 0, 123456, tzinfo=UTC)
# Quantities whose digits a float or two places cannot keep; twins share values.
QUANTITIES = [
    Decimal("1.23456789012345678"),
    Decimal("1.23456789012345679"),
    Decimal("2.5"),
    Decimal("0.1"),
    Decimal("7.125"),
]
LINES = [11, 12]
# the key store's calls that a throttle can fail one at a time (tests/unit/fakes.py)
THROTTLED_CALLS = [
    "claim",
    "wait_while_locked",
    "finish",
    "mark_posting",
    "mark_deleting",
    "wait_on_key",
    "hold",
    "settle",
    "take_usage",
    "give_back",
    "identical",
    "release",
    "accept",
    "keys_of_event",
    "items",
    "waiting",
]
ANSWERS = ["created", "zero_id", "stored_then_lost", "lost", "throttled", "refused"]
SETTLE_AFTER = 60.0


def record(n: int, line: int, quantity: Decimal, micro: int) -> Usage:
    return Usage(
        subscription_line=line,
        date_time=AT.replace(microsecond=micro),
        quantity=quantity,
        key=UsageKey(kind=KeyKind.EXPLICIT, scope="v1/usages", text=f"key-{n}"),
    )


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.piriod = FakePiriod(self.clock)
        self.store = FakeKeyStore(self.clock)
        self.queues = FakeQueues()
        self.submitter = Submitter(self.piriod, self.store, 1.0, SETTLE_AFTER, clock=self.clock)
        self.records: dict[str, Usage] = {}  # every record ever sent, by key
        self.acknowledged: set[str] = set()
        self.corrected: set[str] = set()  # keys with a correction the sender saw accepted
        self.unanswered: list[CorrectionEntry] = []  # answered 503: the sender retries them
        self.during = 0  # corrections made during a post
        self.exchanged: dict[tuple[str, int], int] = {}
        self._follow_taken_usages()

    def _follow_taken_usages(self) -> None:
        """Which record a usage is, as anyone can tell. Piriod names no key on a usage, so two
        identical usages (line, instant, quantity) that no key knows by id are the same to
        billing: when a record's key takes its identical twin's (settling, or finding the
        usage to delete), the twin's usage becomes this record's and this record's own
        becomes the twin's, for the checks below. A take of another record's usage that is
        not such an exchange stays that record's, and the checks catch it. The fake store is
        not changed (its contract tests hold it equal to DynamoDB); only the model's ledger
        follows it."""
        take, give_back = self.store.take_usage, self.store.give_back

        def take_usage(claim: Any, usage_id: int) -> bool:
            taken = take(claim, usage_id)
            if taken:
                self._exchange(claim.pk, usage_id)
            return taken

        def give_back_usage(claim: Any, usage_id: int) -> None:
            give_back(claim, usage_id)
            own_id = self.exchanged.pop((claim.pk, usage_id), None)
            if own_id is not None:  # undo the exchange
                taken, own = self._entry(usage_id), self._entry(own_id)
                taken.key, own.key = own.key, taken.key

        self.store.take_usage = take_usage  # type: ignore[method-assign]
        self.store.give_back = give_back_usage  # type: ignore[method-assign]

    def _entry(self, usage_id: int) -> Any:
        return next(e for e in self.piriod.ledger if e.usage_id == usage_id)

    def _exchange(self, pk: str, usage_id: int) -> None:
        taken = self._entry(usage_id)
        if taken.key == pk or taken.key is None:
            return
        known = set(self.store.owners) | {
            k.usage_id for k in self.store.keys.values() if k.usage_id is not None
        }
        for own in self.piriod.ledger:
            if (
                own.key == pk
                and not own.deleted
                and own.usage_id not in known
                and (own.line, own.at, own.quantity) == (taken.line, taken.at, taken.quantity)
            ):
                own.key, taken.key = taken.key, pk
                self.exchanged[(pk, usage_id)] = own.usage_id
                return

    # --- the world -------------------------------------------------------------------------

    @rule(
        quantity=st.sampled_from(["exact", "float", "places:2", "places:0"]),
        time=st.sampled_from(["exact", "millis", "seconds"]),
        miss=st.booleans(),
    )
    def piriod_lists_at(self, quantity: str, time: str, miss: bool) -> None:
        self.piriod.quantity_precision = quantity
        self.piriod.time_precision = time
        self.piriod.filters_miss = miss

    @rule(answers=st.lists(st.sampled_from(ANSWERS), max_size=6))
    def piriod_will_answer(self, answers: list[str]) -> None:
        self.piriod.answers.extend(answers)

    @rule(answers=st.lists(st.sampled_from(DELETE_ANSWERS), max_size=4))
    def piriod_will_answer_deletes(self, answers: list[str]) -> None:
        self.piriod.delete_answers.extend(answers)

    @rule(down=st.booleans(), endless=st.booleans())
    def piriod_listing(self, down: bool, endless: bool) -> None:
        self.piriod.listing_down, self.piriod.endless = down, endless

    @rule(line=st.sampled_from(LINES), metered=st.booleans())
    def line_metering(self, line: int, metered: bool) -> None:
        if metered:
            self.piriod.unmetered.discard(line)
        else:
            self.piriod.unmetered.add(line)

    @rule(
        line=st.sampled_from(LINES),
        quantity=st.sampled_from(QUANTITIES),
        older=st.booleans(),
    )
    def usage_created_elsewhere(self, line: int, quantity: Decimal, older: bool) -> None:
        # a lookalike: an identical value created long before any attempt of ours, or one
        # clearly different at any precision
        if older:
            self.piriod.seed(line, AT, quantity, created=self.clock() - 10_000)
        else:
            self.piriod.seed(line, AT, quantity + 100, created=self.clock())

    @rule(seconds=st.sampled_from([1, 30, 61, 400]))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(store=st.booleans(), sqs=st.booleans())
    def stores(self, store: bool, sqs: bool) -> None:
        self.store.down, self.queues.down = store, sqs

    @rule()
    def piriod_finishes_late_deletes(self) -> None:
        # DELETEs whose answer timed out while they were still inside Piriod are done now
        self.piriod.finish_late_deletes()

    @rule(fails=st.booleans())
    def store_refuses_batches(self, fails: bool) -> None:
        # a delivery's new keys claimed together (one transaction) are refused, throttled or
        # invalid, while every single-key call goes through
        self.store.batch_fails = fails

    @rule(call=st.sampled_from(THROTTLED_CALLS), times=st.integers(1, 2))
    def store_throttles_a_call(self, call: str, times: int) -> None:
        # the store's next calls of one kind fail alone (throttled requests) while every other
        # call goes through: an attempt meets the store down at any one of its steps
        self.store.throttled[call] = times

    # --- deliveries ----------------------------------------------------------------------------

    @rule(
        picks=st.lists(
            st.tuples(
                st.integers(0, 7),
                st.sampled_from(LINES),
                st.sampled_from(QUANTITIES),
                st.sampled_from([123456, 123000]),
            ),
            min_size=1,
            max_size=4,
            unique_by=lambda p: p[0],
        ),
        twice=st.booleans(),
        meanwhile=st.sampled_from([None, 0, -1]),
    )
    def deliver(
        self, picks: list[tuple[int, int, Decimal, int]], twice: bool, meanwhile: int | None
    ) -> None:
        usages = []
        for n, line, quantity, micro in picks:
            usage = self.records.get(f"k#v1/usages#key-{n}") or record(n, line, quantity, micro)
            self.records[key_pk(usage.key)] = usage
            usages.append(usage)
        if twice:  # the sender repeats its first record in the same delivery
            usages.append(usages[0])
        if meanwhile is not None:
            # while the delivery's keys are claimed together, another attempt claims one of
            # them and vanishes (a concurrent delivery whose function was killed)
            def concurrent(usage: Usage = usages[meanwhile]) -> None:
                with contextlib.suppress(StoreUnavailable):
                    self.store.claim(usage, Deadline.after(5))

            self.store.before_claim_new = concurrent
        down = self._store_may_fail()
        subs = [Submission(i, u, TENANT) for i, u in enumerate(usages)]
        outcomes = self.submitter.submit_all(subs, Deadline.after(25), self.queues.place_failed, 1)
        self.store.before_claim_new = None
        reply = summarize("delivery", subs, outcomes)
        body = json.loads(reply.body.model_dump_json(exclude_defaults=True))
        # a 503 only while a store is down
        assert reply.status in (202, 503)
        assert reply.status == 202 or down, body
        if reply.status == 202:
            for sub, result in zip(subs, body["results"], strict=True):
                pk = key_pk(sub.usage.key)
                self._check_place(pk, result)
                self.acknowledged.add(pk)

    def _store_may_fail(self) -> bool:
        """A store down, or one of its calls throttled: a 503 (not stored) is then allowed."""
        return self.store.down or self.queues.down or any(self.store.throttled.values())

    def _check_place(self, pk: str, result: dict[str, Any]) -> None:
        """The 202 tells the record's true place."""
        status = result["status"]
        posted = self.piriod.usages_of(pk)
        if status == Fate.POSTED:
            assert posted or self._settled(pk), (pk, result)
            if "usage_id" in result:
                assert result["usage_id"] in [u.usage_id for u in posted] + [
                    self.store.keys[pk].usage_id
                ]
        elif status == Fate.QUEUED:
            assert pk in self.queues.keys_in(REPLAY), (pk, result)
        elif status == Fate.REJECTED:
            assert pk in self.queues.keys_in(DEAD_LETTER), (pk, result)
        else:
            assert status == Fate.DUPLICATE
            assert self._placed(pk), (pk, result)

    def _settled(self, pk: str) -> bool:
        usage_id = self.store.keys[pk].usage_id
        return usage_id is not None and any(
            e.usage_id == usage_id and e.key == pk for e in self.piriod.ledger
        )

    def _placed(self, pk: str) -> bool:
        """In Piriod, in a queue, cancelled (nothing is owed), or its correction waiting on
        its key for FlushFunction (no queue took it)."""
        stored = self.store.keys.get(pk)
        return (
            bool(self.piriod.usages_of(pk))
            or pk in (self.queues.keys_in(REPLAY) + self.queues.keys_in(DEAD_LETTER))
            # cancelled, Piriod holding none of it (above): even with the key's last write
            # lost (throttled), nothing is owed, and whoever takes the key next finishes it
            or (stored is not None and stored.cancelled)
            or (stored is not None and stored.waiting == CORRECTING)
        )

    @precondition(lambda self: self.records)
    @rule(data=st.data())
    def an_attempt_crashes(self, data: st.DataObject) -> None:
        # a Lambda that claimed a record and was killed, before or after its post landed
        pk = data.draw(st.sampled_from(sorted(self.records)))
        usage = self.records[pk]
        try:
            claim = self.store.claim(usage, Deadline.after(5))
        except StoreUnavailable:
            return
        # A real attempt posts only with no unseen post before it (else it settles first, by
        # lookup) and nothing Piriod holds for the key (else it corrects that first): one
        # that crashed before that has posted nothing.
        before = claim.previous
        unseen = before is not None and before.unsettled_since() is not None
        corrected = before is not None and (
            before.holding is not None or before.rev > 0 or before.deleting is not None
        )
        if claim.acquired and not unseen and not corrected and data.draw(st.booleans()):
            self.piriod.post_usage(usage, TENANT, Deadline.after(5))

    # --- corrections (SPEC 10) ------------------------------------------------------------------

    def corrector(self, windows: Any = None) -> Corrector:
        return Corrector(
            self.store,
            windows,
            self.submitter,
            self.queues.place_failed,
            TENANT,
            1.0,
            1,
            clock=self.clock,
        )

    @precondition(lambda self: self.records)
    @rule(
        data=st.data(),
        action=st.sampled_from(["cancel", "amend"]),
        quantity=st.sampled_from(QUANTITIES),
        attempt=st.integers(0, 2),
        deleted=st.sampled_from([None, *DELETE_ANSWERS]),
        posted=st.sampled_from([None, *ANSWERS]),
    )
    def sender_corrects(
        self,
        data: st.DataObject,
        action: str,
        quantity: Decimal,
        attempt: int,
        deleted: str | None,
        posted: str | None,
    ) -> None:
        # a sender cancels or amends a record it sent, at whatever point of its lifecycle it
        # is (before its first post, ambiguous, queued, posted, in DeadLetterQueue, held by
        # another attempt), Piriod answering its DELETE and its re-post as `deleted` and
        # `posted` say; the same correction id again is the sender's retry
        if deleted is not None:
            self.piriod.delete_answers.appendleft(deleted)
        if posted is not None:
            self.piriod.answers.appendleft(posted)
        pk = data.draw(st.sampled_from(sorted(self.records)))
        key = self.records[pk].key.text
        entry = CorrectionEntry.model_validate(
            {
                "action": action,
                "key": key,
                "quantity": quantity if action == "amend" else None,
                "correction_id": f"{key}/{action}/{quantity}/{attempt}",
            }
        )
        self._correct(entry)

    @precondition(lambda self: self.records)
    @rule(
        data=st.data(),
        action=st.sampled_from(["cancel", "amend"]),
        quantity=st.sampled_from(QUANTITIES),
    )
    def sender_corrects_during_a_post(
        self, data: st.DataObject, action: str, quantity: Decimal
    ) -> None:
        # the sender corrects a record while an attempt is posting it: its key is held, so
        # the correction cannot wait for it and is handed to ReplayQueue (pending), and the
        # attempt then ends as its post says
        pk = data.draw(st.sampled_from(sorted(self.records)))
        key = self.records[pk].key.text
        self.during += 1
        entry = CorrectionEntry.model_validate(
            {
                "action": action,
                "key": key,
                "quantity": quantity if action == "amend" else None,
                "correction_id": f"{key}/{action}/{quantity}/during-{self.during}",
            }
        )

        def during(usage: Usage) -> bool:
            if key_pk(usage.key) != pk:
                return False
            self._correct(entry)
            return True

        self.piriod.during_post = during

    def _correct(self, entry: CorrectionEntry) -> None:
        pk = next(pk for pk, usage in self.records.items() if usage.key.text == entry.key)
        down = self._store_may_fail()
        [done] = self.corrector().run([entry], Deadline.after(25))
        # a correction is answered by its fate; not stored only while a store is down
        assert done.status in (
            "applied",
            "pending",
            "duplicate",
            "not_found",
            "rejected",
            "not_stored",
        )
        assert done.status != "not_stored" or down, done
        if done.status == "not_stored":
            self.unanswered.append(entry)
        if done.status == "not_found":
            stored = self.store.keys.get(pk)
            assert stored is None or stored.cancelled, (pk, stored)
        if done.status in ("applied", "pending", "duplicate"):
            self.corrected.add(pk)
        if done.status == "applied" and self.store.keys[pk].rev == done.revision:
            # Piriod holds what the record is now (unless a later correction came meanwhile:
            # one made during this one's post, pending, checked once it is applied)
            self._holds_what_it_should(pk)

    def _should(self, pk: str) -> Decimal | None:
        """What Piriod should hold for a key: none once cancelled, else its last amend (the
        corrections in the order the store accepted them), else the record's quantity."""
        stored = self.store.keys[pk]
        if stored.cancelled:
            return None
        return Decimal(stored.target) if stored.target else self.records[pk].quantity

    def _holds_what_it_should(self, pk: str) -> None:
        held = [e.quantity for e in self.piriod.usages_of(pk)]
        should = self._should(pk)
        assert held == ([] if should is None else [should]), (pk, held, should)

    def _waits(self, pk: str) -> bool:
        return pk in self.queues.keys_in(REPLAY) + self.queues.keys_in(DEAD_LETTER)

    # --- replay --------------------------------------------------------------------------------

    @rule()
    def flush_function_sweeps(self) -> None:
        # FlushFunction applies the corrections that waited on their keys (no queue took them)
        with contextlib.suppress(StoreUnavailable):
            sweep_corrections(
                self.store, self.submitter, self.queues.place_failed, Deadline.after(25), 1
            )

    @precondition(lambda self: self.queues.replay)
    @rule(data=st.data(), crash_before_delete=st.booleans())
    def replay_function_runs(self, data: st.DataObject, crash_before_delete: bool) -> None:
        order = data.draw(st.permutations(self.queues.replay))  # SQS reorders
        batch = order[: data.draw(st.integers(1, 5))]
        for message in batch:
            message.receive_count += 1
        received = [Received(m.message_id, m.body, m.receive_count) for m in batch]
        results = replay_batch(
            received, self.submitter, cast(Any, self.queues), Deadline.after(60), 8, 1
        )
        for message, result in zip(batch, results, strict=True):
            # SQS delivers at least once: a handled message may come back
            if not result.retry and not crash_before_delete:
                self.queues.delete(REPLAY, message.message_id)

    @precondition(lambda self: self.queues.dead)
    @rule(data=st.data())
    def operator_replays_a_dead_letter(self, data: st.DataObject) -> None:
        message = data.draw(st.sampled_from(self.queues.dead))
        record_ = QueuedRecord.from_json(message.body)
        result = redeliver_dead_letter(
            record_, self.submitter, cast(Any, self.queues), Deadline.after(60)
        )
        if not result.retry:
            self.queues.delete(DEAD_LETTER, message.message_id)

    # --- the invariants ----------------------------------------------------------------------

    @invariant()
    def nothing_is_posted_twice(self) -> None:
        for pk in self.records:
            assert len(self.piriod.usages_of(pk)) <= 1, (pk, self.piriod.usages_of(pk))
        owners = list(self.store.owners.values())
        settled = [k.usage_id for k in self.store.keys.values() if k.usage_id is not None]
        assert len(settled) == len(set(settled)), "one usage settles at most one record"
        assert len(owners) == len(set(self.store.owners))

    @invariant()
    def a_cancelled_record_is_never_in_piriod_again(self) -> None:
        for pk, stored in self.store.keys.items():
            if stored.cancelled and stored.applied == stored.rev and pk in self.records:
                assert self.piriod.usages_of(pk) == [], (pk, self.piriod.usages_of(pk))

    @invariant()
    def nothing_acknowledged_is_lost(self) -> None:
        for pk in self.acknowledged:
            assert self._placed(pk), (pk, self.store.keys.get(pk))
            key = self.store.keys.get(pk)
            if key is not None and key.usage_id is not None:
                # a settled record's usage is its own, never another's
                owner = next(e for e in self.piriod.ledger if e.usage_id == key.usage_id)
                assert owner.key == pk, (pk, owner)

    def drain(self) -> None:
        """Stores up, Piriod healthy, every line metered, time moving on: every dead letter
        replayed by the operator and ReplayQueue drained, until nothing waits (or what waits
        waits for a person: twins no lookup can tell apart)."""
        self.store.down = self.queues.down = False
        self.store.throttled.clear()
        self.piriod.finish_late_deletes()
        self.piriod.answers.clear()
        self.piriod.delete_answers.clear()
        self.piriod.listing_down = self.piriod.endless = self.piriod.filters_miss = False
        self.piriod.quantity_precision = self.piriod.time_precision = "exact"
        self.piriod.unmetered.clear()
        for _ in range(12):
            self.clock.advance(400)
            unanswered, self.unanswered = self.unanswered, []
            for entry in unanswered:  # the sender retries what was answered 503
                self._correct(entry)
            sweep_corrections(
                self.store, self.submitter, self.queues.place_failed, Deadline.after(60), 1
            )
            for message in list(self.queues.dead):
                record_ = QueuedRecord.from_json(message.body)
                result = redeliver_dead_letter(
                    record_, self.submitter, cast(Any, self.queues), Deadline.after(60)
                )
                if not result.retry:
                    self.queues.delete(DEAD_LETTER, message.message_id)
            batch = list(self.queues.replay)
            received = [Received(m.message_id, m.body, 1) for m in batch]
            results = replay_batch(
                received, self.submitter, cast(Any, self.queues), Deadline.after(60), 8, 1
            )
            for message, result in zip(batch, results, strict=True):
                if not result.retry:
                    self.queues.delete(REPLAY, message.message_id)
            waiting = [k for k in self.store.keys.values() if k.waiting == CORRECTING]
            if not (self.queues.replay or self.queues.dead or self.unanswered or waiting):
                break

    def teardown(self) -> None:
        """SPEC 10's invariant once everything drained: for every record the sender saw
        acknowledged or corrected, Piriod holds one usage at its last quantity, or none once
        cancelled; or the record still waits in a queue, and Piriod holds at most one."""
        self.drain()
        for pk in sorted((self.acknowledged | self.corrected) & set(self.records)):
            if self._waits(pk):
                assert len(self.piriod.usages_of(pk)) <= 1, pk
            elif pk in self.store.keys:
                self._holds_what_it_should(pk)
        super().teardown()


TestLifecycle = Lifecycle.TestCase
TestLifecycle.settings = settings(
    max_examples=RUNS,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class _Drawn:
    """`data` for a rule called by hand: every draw is the given value."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def draw(self, *_: Any, **__: Any) -> Any:
        return self.value


class _Sequence:
    """`data` for a rule called by hand: each draw is the next value given."""

    def __init__(self, *values: Any) -> None:
        self.values = list(values)

    def draw(self, *_: Any, **__: Any) -> Any:
        return self.values.pop(0)


def test_a_cancel_handed_over_mid_post_deletes_its_own_usage_not_an_identical_one() -> None:
    # given (found by the model in CI) a record posted by a 201 without an id, and an
    # identical one (line, instant, quantity) of another key being posted when its sender
    # cancels it: the cancel is handed to ReplayQueue flagged as if the post were unseen
    q = QUANTITIES[0]
    state = Lifecycle()
    state.stores(sqs=False, store=True)  # the record is sent once while the store is down
    state.deliver(meanwhile=None, picks=[(3, 12, q, 123000)], twice=False)
    state.stores(sqs=False, store=False)
    state.piriod_will_answer(answers=["zero_id"])
    state.deliver(meanwhile=None, picks=[(1, 12, q, 123000)], twice=False)
    state.sender_corrects_during_a_post(
        action="cancel", data=cast(Any, _Drawn("k#v1/usages#key-3")), quantity=q
    )
    # when that post ends with the usage's id, and ReplayQueue is drained
    state.deliver(meanwhile=None, picks=[(3, 12, q, 123000)], twice=False)
    state.teardown()
    # then the cancel deleted the usage its key holds, and the id-less twin keeps its own
    assert [e.quantity for e in state.piriod.usages_of("k#v1/usages#key-1")] == [q]
    assert state.piriod.usages_of("k#v1/usages#key-3") == []


def test_a_cancel_may_delete_an_identical_records_usage_when_neither_has_an_id() -> None:
    # given (found by the window model) two identical records (line, instant, quantity),
    # each posted by a 201 without an id: nothing tells their usages apart
    q = QUANTITIES[0]
    state = Lifecycle()
    state.piriod_will_answer(answers=["zero_id", "zero_id"])
    state.deliver(meanwhile=None, picks=[(3, 12, q, 123000), (4, 12, q, 123000)], twice=False)
    assert [e.key for e in state.piriod.ledger] == ["k#v1/usages#key-3", "k#v1/usages#key-4"]
    # when the second is cancelled, and everything drains
    _corrects(state, "k#v1/usages#key-4", "cancel", q)
    state.teardown()
    # then Piriod holds one of the two usages, for the record not cancelled: the cancel
    # took the first one listed (the other record's post), and the other is now that
    # record's (the model's ledger follows the exchange)
    alive = [e for e in state.piriod.ledger if not e.deleted]
    assert [(e.usage_id, e.key, e.quantity) for e in alive] == [(2, "k#v1/usages#key-3", q)]


def _lookalikes_posted_without_ids(
    time: str, quantity: str, first: tuple[Decimal, int], second: tuple[Decimal, int]
) -> Lifecycle:
    """Two records of one line, each posted by a 201 without an id, that Piriod lists the
    same way (`time` and `quantity`: the precision it lists them at) but are not the same."""
    state = Lifecycle()
    state.piriod_lists_at(quantity=quantity, time=time, miss=False)
    state.piriod_will_answer(answers=["zero_id", "zero_id"])
    picks = [(3, 12, first[0], first[1]), (4, 12, second[0], second[1])]
    state.deliver(meanwhile=None, picks=picks, twice=False)
    assert [e.key for e in state.piriod.ledger] == ["k#v1/usages#key-3", "k#v1/usages#key-4"]
    return state


def _corrects(
    state: Lifecycle,
    pk: str,
    action: str,
    quantity: Decimal,
    *,
    attempt: int = 0,
    deleted: str | None = None,
    posted: str | None = None,
) -> None:
    """The sender corrects the record under `pk` (the model's rule, called by hand)."""
    state.sender_corrects(
        action=action,
        attempt=attempt,
        data=cast(Any, _Drawn(pk)),
        deleted=deleted,
        posted=posted,
        quantity=quantity,
    )


def _cancel(state: Lifecycle, pk: str) -> None:
    _corrects(state, pk, "cancel", QUANTITIES[0])


@pytest.mark.parametrize(
    ("time", "quantity", "first", "second"),
    [
        # 456 µs apart, listed to the millisecond (found by the window model at 3,000 runs)
        ("millis", "exact", (QUANTITIES[0], 123000), (QUANTITIES[0], 123456)),
        # two quantities listed with two places: 1.23 both
        ("exact", "places:2", (Decimal("1.231"), 123000), (Decimal("1.234"), 123000)),
    ],
)
def test_a_cancel_never_guesses_between_lookalikes_posted_without_ids(
    time: str, quantity: str, first: tuple[Decimal, int], second: tuple[Decimal, int]
) -> None:
    # given two records Piriod lists the same way, not the same record, both posted by
    # 201s without ids: no lookup can tell which usage is whose
    state = _lookalikes_posted_without_ids(time, quantity, first, second)
    # when the second is cancelled
    _cancel(state, "k#v1/usages#key-4")
    # then nothing is deleted on a guess: the cancel waits in ReplayQueue
    assert [e.deleted for e in state.piriod.ledger] == [False, False]
    assert state._waits("k#v1/usages#key-4")
    # and once Piriod lists them apart (everything drains at its exact precision), the
    # cancel deletes its own record's usage and the other record keeps its own
    state.teardown()
    alive = [e for e in state.piriod.ledger if not e.deleted]
    assert [(e.usage_id, e.key) for e in alive] == [(1, "k#v1/usages#key-3")]


def test_lookalikes_no_listing_tells_apart_wait_for_a_person() -> None:
    # given two records one binary float apart (Piriod may store a quantity as a float, so
    # even its exact listing cannot tell them apart), both posted by 201s without ids
    state = _lookalikes_posted_without_ids(
        "exact", "exact", (QUANTITIES[0], 123000), (QUANTITIES[1], 123000)
    )
    # when the second is cancelled, and everything drains
    _cancel(state, "k#v1/usages#key-4")
    state.teardown()
    # then nothing was deleted on a guess: the cancel still waits (for an operator), with
    # its reason, and each record still has its usage
    assert [e.deleted for e in state.piriod.ledger] == [False, False]
    assert state._waits("k#v1/usages#key-4")
    [message] = state.queues.replay + state.queues.dead
    assert "lists the same way" in json.loads(message.body)["failure"]["error"]


def test_a_cancel_never_guesses_a_lookalike_up_to_two_seconds_away() -> None:
    # given Piriod lists times to the second, and two records of one quantity 1.7 s apart
    # (10:00:00.9 listed as 10:00:00, which matches 09:59:59.2 too), both posted by 201s
    # without ids (found by a second reviewer: the other key was not looked at)
    q = QUANTITIES[2]
    state = Lifecycle()
    state.piriod_lists_at(quantity="exact", time="seconds", miss=False)
    state.piriod_will_answer(answers=["zero_id", "zero_id"])
    later = record(4, 12, q, 0).model_copy(
        update={"date_time": datetime(2026, 11, 30, 10, 0, 0, 900000, tzinfo=UTC)}
    )
    earlier = record(3, 12, q, 0).model_copy(
        update={"date_time": datetime(2026, 11, 30, 9, 59, 59, 200000, tzinfo=UTC)}
    )
    state.records.update({"k#v1/usages#key-4": later, "k#v1/usages#key-3": earlier})
    state.deliver(meanwhile=None, picks=[(4, 12, q, 0), (3, 12, q, 0)], twice=False)
    assert [e.key for e in state.piriod.ledger] == ["k#v1/usages#key-4", "k#v1/usages#key-3"]
    # when the earlier one is cancelled
    _cancel(state, "k#v1/usages#key-3")
    # then the cancel deletes its own record's usage: the other's, listed 10:00:00, may be
    # either record's, but the one listed 09:59:59 cannot be the later record's
    assert [e.deleted for e in state.piriod.ledger] == [False, True]
    state.teardown()
    assert [e.deleted for e in state.piriod.ledger] == [False, True]


def test_a_cancel_whose_delete_is_in_flight_at_the_deadline_keeps_the_usage_it_holds() -> None:
    # given a record posted as usage 1 (found by a second reviewer)
    state = Lifecycle()
    state.deliver(meanwhile=None, picks=[(3, 12, Decimal("2.5"), 123000)], twice=False)
    pk = "k#v1/usages#key-3"
    assert state.store.keys[pk].usage_id == 1
    delete, answered = state.piriod.delete_usage, threading.Event()

    def slow_then_refused(*args: Any, **kwargs: Any) -> Any:
        answered.wait(5)  # still in flight when the function's deadline answers
        state.piriod.delete_answers.appendleft("refused")
        return delete(*args, **kwargs)

    state.piriod.delete_usage = slow_then_refused  # type: ignore[method-assign]
    entry = CorrectionEntry.model_validate(
        {"action": "cancel", "key": "key-3", "quantity": None, "correction_id": "c1"}
    )
    # when its cancel's DELETE is still unanswered at the deadline, and is then refused
    [done] = state.corrector().run([entry], Deadline.after(0.3))
    answered.set()
    # then the cancel waits, and the key still knows usage 1 (its DELETE unanswered)
    assert done.status == "pending"
    key = state.store.keys[pk]
    assert key.holding is not None and key.holding.usage_id == 1
    assert key.deleting == 1
    # and once everything drains, usage 1 is deleted and the record is cancelled
    state.piriod.delete_usage = delete  # type: ignore[method-assign]
    state.teardown()
    assert [e.deleted for e in state.piriod.ledger] == [True]
    assert state.store.keys[pk].cancelled


def test_a_correction_s_worker_sends_nothing_once_the_deadline_answered_for_it() -> None:
    # given a record of 2.5 posted by a 201 without an id (found by a second reviewer)
    state = Lifecycle()
    state.piriod_will_answer(answers=["zero_id"])
    state.deliver(meanwhile=None, picks=[(3, 12, Decimal("2.5"), 123000)], twice=False)
    pk = "k#v1/usages#key-3"
    placing, deleted = threading.Event(), threading.Event()
    find, delete, sink = (
        state.piriod.find_usages,
        state.piriod.delete_usage,
        state.queues.place_failed,
    )

    def slow_find(*args: Any, **kwargs: Any) -> Any:  # the lookup of the usage to delete
        placing.wait(5)  # answers only once the deadline is placing the record
        return find(*args, **kwargs)

    def delete_usage(*args: Any, **kwargs: Any) -> Any:
        deleted.set()
        return delete(*args, **kwargs)

    def slow_sink(sub: Any, message: Any) -> Any:  # the deadline's queue send
        placing.set()
        deleted.wait(1)  # a DELETE sent now would land before the key is written
        return sink(sub, message)

    state.piriod.find_usages = slow_find  # type: ignore[method-assign]
    state.piriod.delete_usage = delete_usage  # type: ignore[method-assign]
    state.queues.place_failed = slow_sink  # type: ignore[method-assign,assignment]

    def amend(quantity: str, correction_id: str, seconds: float) -> str:
        entry = CorrectionEntry.model_validate(
            {
                "action": "amend",
                "key": "key-3",
                "quantity": Decimal(quantity),
                "correction_id": correction_id,
            }
        )
        [done] = state.corrector().run([entry], Deadline.after(seconds))
        return done.status

    # when it is amended to 7.125 and the deadline answers while its usage is looked up
    assert amend("7.125", "c1", 0.3) == "pending"
    # then the worker, once its lookup returns, sends no DELETE: Piriod still holds 2.5
    assert not deleted.is_set()
    assert [e.quantity for e in state.piriod.usages_of(pk)] == [Decimal("2.5")]
    # and amended back to 2.5, once everything drains, Piriod holds the one usage of 2.5
    state.piriod.find_usages = find  # type: ignore[method-assign]
    state.queues.place_failed = sink  # type: ignore[method-assign]
    amend("2.5", "c2", 25)
    state.teardown()
    key = state.store.keys[pk]
    assert (key.status.value, key.applied, key.rev) == ("posted", 2, 2)
    assert [e.quantity for e in state.piriod.usages_of(pk)] == [Decimal("2.5")]


def test_a_correction_answered_at_the_deadline_before_its_key_was_read_keeps_the_usage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a record posted as usage 1 (found by a second reviewer)
    state = Lifecycle()
    state.deliver(meanwhile=None, picks=[(3, 12, Decimal("2.5"), 123000)], twice=False)
    pk = "k#v1/usages#key-3"
    placed = threading.Event()
    unsettled_since = submit_module._unsettled_since

    def worker_stalls(*args: Any) -> Any:  # the worker took the key but has not read it
        if threading.current_thread() is not threading.main_thread():
            placed.wait(5)
        return unsettled_since(*args)

    monkeypatch.setattr(submit_module, "_unsettled_since", worker_stalls)
    entry = CorrectionEntry.model_validate(
        {"action": "cancel", "key": "key-3", "quantity": None, "correction_id": "c1"}
    )
    # when the deadline answers for its cancel right after the key was claimed
    [done] = state.corrector().run([entry], Deadline.after(0.3))
    placed.set()
    # then the key still holds usage 1
    assert done.status == "pending"
    key = state.store.keys[pk]
    assert key.holding is not None and key.holding.usage_id == 1
    # and once everything drains, usage 1 is deleted and the record is cancelled
    monkeypatch.setattr(submit_module, "_unsettled_since", unsettled_since)
    state.teardown()
    assert [e.deleted for e in state.piriod.ledger] == [True]
    assert state.store.keys[pk].cancelled


def test_a_delete_found_done_leaves_a_usage_found_since(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a record posted as usage 1, amended to 7.125 while SQS is down: its DELETE went
    # through unanswered, and FlushFunction, finding it done, posted the amend, stored but
    # unanswered (usage 2), then released the key again (found by a second reviewer)
    state = Lifecycle()
    state.deliver(meanwhile=None, picks=[(3, 12, Decimal("2.5"), 123000)], twice=False)
    pk = "k#v1/usages#key-3"
    state.queues.down = True
    state.piriod.delete_answers.append("deleted_then_lost")
    entry = CorrectionEntry.model_validate(
        {"action": "amend", "key": "key-3", "quantity": Decimal("7.125"), "correction_id": "c1"}
    )
    state.corrector().run([entry], Deadline.after(25))
    state.piriod.answers.append("stored_then_lost")
    state.flush_function_sweeps()
    assert [(e.usage_id, e.deleted) for e in state.piriod.ledger] == [(1, True), (2, False)]
    # when FlushFunction sweeps again once SQS is back
    state.queues.down = False
    state.clock.advance(400)
    state.flush_function_sweeps()
    state.teardown()
    # then the amend's usage found by lookup is kept, not posted again
    assert [e.quantity for e in state.piriod.usages_of(pk)] == [Decimal("7.125")]


def test_a_delete_not_yet_asked_about_stays_flagged_while_piriod_cannot_be_asked() -> None:
    # given (found by the model at 6,000 runs) a record posted as usage 1 and amended: its
    # DELETE went through but the answer was lost, so the key flags it
    state = Lifecycle()
    state.deliver(meanwhile=None, picks=[(0, 12, Decimal("2.5"), 123456)], twice=False)
    pk = "k#v1/usages#key-0"
    _corrects(state, pk, "amend", QUANTITIES[0], deleted="deleted_then_lost")
    assert state.store.keys[pk].deleting == 1
    # when ReplayFunction cannot ask Piriod about it (its listing never ends)
    state.piriod_listing(down=False, endless=True)
    messages = list(state.queues.replay)
    state.replay_function_runs(crash_before_delete=False, data=cast(Any, _Sequence(messages, 4)))
    # then the DELETE is still flagged
    assert state.store.keys[pk].deleting == 1
    # and amended back to 2.5, once everything drains, Piriod holds a usage of 2.5 again
    _corrects(state, pk, "amend", Decimal("2.5"))
    state.teardown()
    assert [e.quantity for e in state.piriod.usages_of(pk)] == [Decimal("2.5")]


def _amend(state: Lifecycle, quantity: str, correction_id: str, seconds: float = 25) -> str:
    entry = CorrectionEntry.model_validate(
        {"action": "amend", "key": "key-3", "quantity": Decimal(quantity)}
        | {"correction_id": correction_id}
    )
    [done] = state.corrector().run([entry], Deadline.after(seconds))
    return done.status


@pytest.mark.parametrize("fault", ["key write throttled, SQS down", "unexpected error"])
def test_a_delete_that_landed_is_asked_about_whatever_fails_after_it(fault: str) -> None:
    # given a record posted as usage 1 (found by a second reviewer)
    state = Lifecycle()
    state.deliver(meanwhile=None, picks=[(3, 12, Decimal("2.5"), 123000)], twice=False)
    pk = "k#v1/usages#key-3"
    hold, delete = state.store.hold, state.piriod.delete_usage
    if fault == "unexpected error":

        def delete_then_raise(*args: Any, **kwargs: Any) -> Any:
            delete(*args, **kwargs)  # Piriod deleted it
            raise RuntimeError("unexpected error reading the answer")

        state.piriod.delete_usage = delete_then_raise  # type: ignore[method-assign]
    else:
        throttled = [StoreUnavailable("throttled")]

        def hold_throttled_once(claim: Any, holding: Any) -> None:
            if throttled:
                raise throttled.pop()
            hold(claim, holding)

        state.store.hold = hold_throttled_once  # type: ignore[method-assign]
        state.queues.down = True
    # when it is amended to 7.125: its DELETE lands, then the fault before the key says so
    _amend(state, "7.125", "c1")
    assert [e.deleted for e in state.piriod.ledger] == [True]
    # then the key still asks about usage 1 before anything is sent again
    assert state.store.keys[pk].deleting == 1
    # and amended back to 2.5, once everything drains, Piriod holds a usage of 2.5
    state.piriod.delete_usage, state.queues.down = delete, False  # type: ignore[method-assign]
    _amend(state, "2.5", "c2")
    state.teardown()
    assert [e.quantity for e in state.piriod.usages_of(pk)] == [Decimal("2.5")]


def test_an_amend_found_by_lookup_after_its_delete_is_not_posted_twice() -> None:
    # given (found by the lifecycle model in a fresh-clone CI; fixed by 3744297) two
    # identical records, SQS down, and one amended: its DELETE lands unanswered, so the
    # key is released with the DELETE flagged
    q = QUANTITIES[0]
    state = Lifecycle()
    state.stores(sqs=True, store=False)
    state.deliver(meanwhile=None, picks=[(0, 11, q, 123456), (1, 11, q, 123456)], twice=False)
    state.piriod_will_answer(answers=["stored_then_lost"])
    _corrects(state, "k#v1/usages#key-0", "amend", QUANTITIES[1], deleted="deleted_then_lost")
    # when FlushFunction applies it (its post stored, the answer lost) and all drains
    state.flush_function_sweeps()
    state.teardown()
    # then the amend is posted once
    assert [e.quantity for e in state.piriod.usages_of("k#v1/usages#key-0")] == [QUANTITIES[1]]


@pytest.mark.parametrize("sqs", ["down: applied at once", "up: applied by ReplayFunction"])
def test_a_delete_still_inside_piriod_when_asked_about_is_seen_through(sqs: str) -> None:
    # given a record posted as usage 1 (2.5), amended to 7.125: its DELETE times out while
    # the request is still inside Piriod, so the key flags usage 1 (found by a reviewer)
    state = Lifecycle()
    state.deliver(meanwhile=None, picks=[(3, 12, Decimal("2.5"), 123000)], twice=False)
    pk = "k#v1/usages#key-3"
    state.piriod.delete_answers.append("late")
    state.queues.down = sqs.startswith("down")
    _amend(state, "7.125", "c1")
    assert state.store.keys[pk].deleting == 1
    state.queues.down = False
    # when it is amended back to 2.5 while usage 1 is still listed
    _amend(state, "2.5", "c2")
    if state.queues.replay:
        messages = list(state.queues.replay)
        state.replay_function_runs(
            crash_before_delete=False, data=cast(Any, _Sequence(messages, len(messages)))
        )
    # and the DELETE inside Piriod is then done (a 404 to it, if it was deleted meanwhile)
    state.piriod.finish_late_deletes()
    state.teardown()
    # then Piriod holds the record's one usage of 2.5
    assert [e.quantity for e in state.piriod.usages_of(pk)] == [Decimal("2.5")]


@pytest.mark.parametrize("fault", ["key write throttled", "deadline"])
def test_a_doubted_delete_stays_flagged_until_it_is_seen_through(fault: str) -> None:
    # given a record posted as usage 1 (2.5), amended to 7.125 with SQS down: its DELETE
    # timed out while the request was still inside Piriod, so the key flags usage 1 (found
    # by a second reviewer)
    state = Lifecycle()
    state.deliver(meanwhile=None, picks=[(3, 12, Decimal("2.5"), 123000)], twice=False)
    pk = "k#v1/usages#key-3"
    mark = state.store.mark_deleting
    state.piriod.delete_answers.append("late")
    state.queues.down = True
    _amend(state, "7.125", "c1")
    state.queues.down = False
    seconds = 25.0
    if fault == "deadline":
        seconds = 0.3

        def slow_mark(*args: Any) -> None:  # the flag's write outlasts the deadline
            time.sleep(0.6)
            mark(*args)

        state.store.mark_deleting = slow_mark  # type: ignore[method-assign,assignment]
    else:

        def throttled(*args: Any) -> None:
            raise StoreUnavailable("throttled")

        state.store.mark_deleting = throttled  # type: ignore[method-assign,assignment]
    # when it is amended back to 2.5 while usage 1 is still listed, and the fault strikes
    # before the DELETE is sent again
    _amend(state, "2.5", "c2", seconds)
    time.sleep(0.7 if fault == "deadline" else 0)
    # then the key still flags usage 1
    assert state.store.keys[pk].deleting == 1
    # and once the DELETE inside Piriod is done and everything drains, Piriod holds 2.5
    state.store.mark_deleting = mark  # type: ignore[method-assign]
    state.piriod.finish_late_deletes()
    state.teardown()
    assert [e.quantity for e in state.piriod.usages_of(pk)] == [Decimal("2.5")]


def test_a_lookalike_never_settles_on_another_key_s_unseen_amend_post() -> None:
    # given (found by a second reviewer) Piriod listing quantities with two places, and A
    # posted at 2.5, amended to 1.231 with SQS down: its DELETE lands unanswered, then
    # FlushFunction's post of 1.231 is stored unanswered (A holds 2.5 by id, and an unseen
    # post)
    state = Lifecycle()
    a = "k#v1/usages#key-0"
    state.piriod_lists_at(quantity="places:2", time="exact", miss=False)
    state.stores(sqs=True, store=False)
    state.deliver(meanwhile=None, picks=[(0, 11, Decimal("2.5"), 123456)], twice=False)
    _corrects(state, a, "amend", Decimal("1.231"), deleted="deleted_then_lost")
    state.piriod_will_answer(answers=["stored_then_lost"])
    state.flush_function_sweeps()
    # when B, of the same line and instant at 1.234 (listed 1.23 as A's post), is delivered
    # with SQS back, its post lost, and replayed
    state.stores(sqs=False, store=False)
    state.piriod_will_answer(answers=["lost"])
    state.deliver(meanwhile=None, picks=[(1, 11, Decimal("1.234"), 123456)], twice=False)
    state.time_passes(seconds=61)
    messages = list(state.queues.replay)
    state.replay_function_runs(crash_before_delete=False, data=cast(Any, _Sequence(messages, 1)))
    # then B did not take A's usage, and once all drains each is billed once
    state.nothing_acknowledged_is_lost()
    state.teardown()
    live = sorted(e.quantity for e in state.piriod.ledger if not e.deleted)
    assert live == [Decimal("1.231"), Decimal("1.234")]


def test_a_doubted_delete_survives_a_lookup_and_an_unexpected_error() -> None:
    # given (found by a second reviewer) a record posted as usage 1 (2.5), amended to 7.125:
    # its DELETE times out inside Piriod, and it is amended back meanwhile (handed over)
    state = Lifecycle()
    state.deliver(meanwhile=None, picks=[(3, 12, Decimal("2.5"), 123000)], twice=False)
    pk = "k#v1/usages#key-3"
    inside: list[int] = []
    delete, listed = state.piriod.delete_usage, state.piriod.usage_listed

    def delete_times_out(usage_id: int, *args: Any, **kwargs: Any) -> DeleteResult:
        inside.append(usage_id)
        if len(inside) == 1:
            assert _amend(state, "2.5", "c2") == "pending"
        return DeleteResult(FailureKind.AMBIGUOUS, error="read timeout")

    def listing_raises(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("unexpected error reading the listing")

    state.piriod.delete_usage = delete_times_out  # type: ignore[method-assign]
    _amend(state, "7.125", "c1")
    state.piriod.delete_usage = delete  # type: ignore[method-assign]
    assert state.store.keys[pk].deleting == 1
    # when ReplayFunction takes the handed-over amend: its lookup takes usage 1 as the
    # key's own, then an unexpected error strikes before the DELETE is asked about
    handed = [m for m in state.queues.replay if '"ambiguous_since":null' not in m.body]
    state.clock.advance(61)
    state.piriod.usage_listed = listing_raises  # type: ignore[method-assign]
    state.replay_function_runs(crash_before_delete=False, data=cast(Any, _Sequence(handed, 1)))
    state.piriod.usage_listed = listed  # type: ignore[method-assign]
    # then the DELETE in doubt is still flagged
    assert state.store.keys[pk].deleting == 1
    # and once that DELETE is done inside Piriod and everything drains, Piriod holds 2.5
    for entry in state.piriod.ledger:
        entry.deleted = entry.deleted or entry.usage_id in inside
    state.teardown()
    assert [e.quantity for e in state.piriod.usages_of(pk)] == [Decimal("2.5")]


def test_an_operator_replay_of_a_key_conflict_never_applies_the_key_s_correction() -> None:
    # given (found by a second reviewer) a record of key-3 (line 12, 2.5) whose post was
    # lost; another record under key-3 (line 11) rejected into DeadLetterQueue as a key
    # conflict; and an amend of key-3 to 0.1 made while ReplayFunction posts the record
    state = Lifecycle()
    pk = "k#v1/usages#key-3"
    state.piriod_will_answer(answers=["lost"])
    state.deliver(meanwhile=None, picks=[(3, 12, Decimal("2.5"), 123000)], twice=False)
    other = record(3, 11, Decimal("7.125"), 500000)
    [out] = state.submitter.submit_all(
        [Submission(0, other, TENANT)], Deadline.after(25), state.queues.place_failed, 1
    )
    assert out.fate is Fate.REJECTED
    state.sender_corrects_during_a_post(
        action="amend", data=cast(Any, _Drawn(pk)), quantity=Decimal("0.1")
    )
    state.clock.advance(400)
    messages = list(state.queues.replay)
    state.replay_function_runs(
        crash_before_delete=False, data=cast(Any, _Sequence(messages, len(messages)))
    )
    # when the operator replays the conflict's dead letter
    [message] = state.queues.dead
    result = redeliver_dead_letter(
        QueuedRecord.from_json(message.body),
        state.submitter,
        cast(Any, state.queues),
        Deadline.after(60),
    )
    # then it is rejected again, and the amend is billed on the key's own record
    assert result.outcome is not None and result.outcome.fate is Fate.REJECTED
    state.queues.dead.clear()  # the operator's decision, not replayed again
    state.teardown()
    live = [(e.line, e.at.microsecond, e.quantity) for e in state.piriod.ledger if not e.deleted]
    assert live == [(12, 123000, Decimal("0.1"))]


def _queued_source_record_amended(state: Lifecycle, meter: bool) -> tuple[str, CorrectionEntry]:
    """A source record (mapped by its meter, or by its line) whose post was lost, waiting in
    ReplayQueue, and an amend of it to 7.125 (not run yet): its key and the amend."""
    usage = Usage(
        subscription_line=12,
        date_time=AT,
        quantity=Decimal("2.5"),
        key=UsageKey(kind=KeyKind.EVENT, scope="v1/sources/s", text="ev-1"),
        source="s",
        meter_id="m-1" if meter else None,
    )
    pk = key_pk(usage.key)
    state.records[pk] = usage
    state.piriod.answers.append("lost")
    [out] = state.submitter.submit_all(
        [Submission(0, usage, TENANT)], Deadline.after(25), state.queues.place_failed, 1
    )
    assert out.fate is Fate.QUEUED
    state.acknowledged.add(pk)
    entry = CorrectionEntry.model_validate(
        {"action": "amend", "key": "ev-1", "source": "s", "quantity": Decimal("7.125")}
        | {"correction_id": "c1"}
    )
    return pk, entry


@pytest.mark.parametrize("meter", [True, False])
def test_a_source_record_s_amend_handed_over_mid_post_is_applied(meter: bool) -> None:
    # given (found by a second reviewer) a source record, mapped by its meter or by its
    # line, whose post was lost, amended to 7.125 while ReplayFunction posts it: the key is
    # held, so the amend is handed to ReplayQueue (its message carries the record as
    # mapped, not as the key was first claimed)
    state = Lifecycle()
    pk, entry = _queued_source_record_amended(state, meter)
    answers: list[str] = []

    def during(_: Usage) -> bool:
        [done] = state.corrector().run([entry], Deadline.after(25))
        answers.append(done.status)
        return True

    state.piriod.during_post = during
    state.clock.advance(61)
    messages = list(state.queues.replay)
    state.replay_function_runs(crash_before_delete=False, data=cast(Any, _Sequence(messages, 1)))
    assert answers == ["pending"]
    # when ReplayFunction takes the handed-over amend, and everything drains
    state.clock.advance(400)
    state.teardown()
    # then the amend is billed: one usage of 7.125
    assert [e.quantity for e in state.piriod.usages_of(pk)] == [Decimal("7.125")]


def test_a_cancel_and_a_twin_s_unseen_post_never_wait_on_each_other() -> None:
    # given (found by a second reviewer) K1 posted as usage 1; later K2, an identical record
    # of another key, posted with its answer lost (usage 2); K1 cancelled, the corrections
    # Lambda killed right after claiming its key, and the sender retrying the cancel
    q = Decimal("2.5")
    state = Lifecycle()
    k1, k2 = "k#v1/usages#key-3", "k#v1/usages#key-4"
    state.deliver(meanwhile=None, picks=[(3, 12, q, 123000)], twice=False)
    state.clock.advance(400)
    state.piriod_will_answer(answers=["stored_then_lost"])
    state.deliver(meanwhile=None, picks=[(4, 12, q, 123000)], twice=False)
    assert state.store.accept(k1, "cancel", None, "key-3/cancel").state is not None
    state.store.claim(state.records[k1], Deadline.after(5), Taker.CORRECTION)
    state.corrected.add(k1)
    state.clock.advance(100)
    entry = CorrectionEntry.model_validate(
        {"action": "cancel", "key": "key-3", "quantity": None, "correction_id": "key-3/cancel"}
    )
    state.corrector().run([entry], Deadline.after(25))
    # when everything drains
    state.drain()
    # then neither waits: K1 is cancelled and K2 billed once
    assert [state._waits(k) for k in (k1, k2)] == [False, False]
    assert [(e.usage_id, e.key) for e in state.piriod.ledger if not e.deleted] == [(2, k2)]


def test_a_cloudevent_kept_under_a_digest_is_never_corrected_as_another_record() -> None:
    # given (found by a second reviewer) a CloudEvent whose source and id are longer than
    # an item key takes (kept under a digest), posted as usage 1
    state = Lifecycle()
    text = json.dumps(["https://example.com/" + "s" * 1100, "id-1"], separators=(",", ":"))
    usage = Usage(
        subscription_line=12,
        date_time=AT,
        quantity=Decimal("2.5"),
        key=UsageKey(kind=KeyKind.EVENT, scope="v1/sources/ce", text=text),
        source="ce",
    )
    assert key_pk(usage.key).startswith("eh#")
    [out] = state.submitter.submit_all(
        [Submission(0, usage, TENANT)], Deadline.after(25), state.queues.place_failed, 1
    )
    assert out.fate is Fate.POSTED
    # when the sender cancels it by its CloudEvent id
    entry = CorrectionEntry.model_validate(
        {"action": "cancel", "key": "id-1", "source": "ce", "correction_id": "c1"}
    )
    corrector = Corrector(
        state.store,
        None,
        state.submitter,
        state.queues.place_failed,
        TENANT,
        1.0,
        1,
        clock=state.clock,
        cloudevents=frozenset({"ce"}),
    )
    [done] = corrector.run([entry], Deadline.after(25))
    # then the correction is rejected with the reason, and nothing else is posted: it was
    # answered applied while a new key posted the record a second time
    assert done.status == "rejected" and done.errors is not None
    assert [e.usage_id for e in state.piriod.ledger if not e.deleted] == [1]


def test_a_handed_over_amend_replayed_while_its_key_is_held_is_applied() -> None:
    # given (found by a second reviewer) a meter-mapped source record whose post was lost,
    # amended while ReplayFunction posts it: the amend is handed to ReplayQueue (its message
    # carries the line, not the meter, so not the key's first fingerprint), and
    # ReplayFunction takes that message while the holder is still posting
    state = Lifecycle()
    pk, entry = _queued_source_record_amended(state, meter=True)
    state.clock.advance(61)
    first = list(state.queues.replay)

    def during(_: Usage) -> bool:
        state.piriod.during_post = None
        [done] = state.corrector().run([entry], Deadline.after(25))
        assert done.status == "pending"
        handed = [m for m in state.queues.replay if m not in first]
        state.replay_function_runs(crash_before_delete=False, data=cast(Any, _Sequence(handed, 1)))
        return True

    state.piriod.during_post = during
    state.replay_function_runs(crash_before_delete=False, data=cast(Any, _Sequence(first, 1)))
    # when everything drains
    state.clock.advance(400)
    state.teardown()
    # then the amend is billed (it was never taken for a key conflict)
    assert state.queues.dead == []
    assert [e.quantity for e in state.piriod.usages_of(pk)] == [Decimal("7.125")]


def test_an_unseen_post_survives_an_attempt_that_vanished_over_it() -> None:
    # given (found by the lifecycle model with a rule that throttles single store calls,
    # not in CI yet: its runs are not yet reproducible) a record posted while the write of
    # its key's final state was throttled: the key stays held until its lock expires, its
    # post unseen
    q = QUANTITIES[0]
    state = Lifecycle()
    state.store.fail_next = 1
    state.deliver(meanwhile=None, picks=[(1, 11, q, 123456), (0, 11, q, 123456)], twice=False)
    assert state.store.fail_next == 0
    state.time_passes(seconds=400)
    # when the record is delivered again while another attempt takes its key and vanishes
    state.deliver(meanwhile=0, picks=[(1, 11, q, 123456)], twice=False)
    state.time_passes(seconds=61)
    messages = list(state.queues.replay)
    state.replay_function_runs(
        crash_before_delete=False, data=cast(Any, _Sequence(messages, len(messages)))
    )
    state.teardown()
    # then the record is posted once (the first attempt's post is looked up, not forgotten)
    assert [e.quantity for e in state.piriod.usages_of("k#v1/usages#key-1")] == [q]


def test_a_cancel_whose_last_write_is_throttled_is_finished_by_the_next_attempt() -> None:
    # given (found by the window model with single store calls throttled) a posted record
    # cancelled while the key's final write is throttled: Piriod's usage is deleted, and the
    # key still says the DELETE was sent, the cancel not applied
    q = QUANTITIES[0]
    state = Lifecycle()
    state.deliver(meanwhile=None, picks=[(0, 11, q, 123456)], twice=False)
    pk = "k#v1/usages#key-0"
    state.store_throttles_a_call(call="finish", times=1)
    _cancel(state, pk)
    assert state.store.throttled["finish"] == 0
    assert state.piriod.usages_of(pk) == []
    assert state.store.keys[pk].applied < state.store.keys[pk].rev
    # when the sender delivers the record again once the key's lock has expired
    state.time_passes(seconds=400)
    state.deliver(meanwhile=None, picks=[(0, 11, q, 123456)], twice=False)
    # then nothing is posted again, and the key says the cancel is applied
    assert state.piriod.usages_of(pk) == []
    key = state.store.keys[pk]
    assert key.cancelled and key.applied == key.rev and key.deleting is None


def test_an_amend_whose_attempt_stops_after_its_delete_is_finished_by_flush_function() -> None:
    # given (found by the lifecycle model with single store calls throttled) a posted record
    # amended while SQS is down: its usage is deleted, the new one's post is lost, and the
    # key's release is throttled, so the sender is answered not stored
    old, new = QUANTITIES[0], QUANTITIES[1]
    state = Lifecycle()
    state.deliver(meanwhile=None, picks=[(0, 11, old, 123456)], twice=False)
    pk = "k#v1/usages#key-0"
    state.stores(sqs=True, store=False)
    state.store_throttles_a_call(call="release", times=1)
    _corrects(state, pk, "amend", new, posted="lost")
    assert len(state.unanswered) == 1
    assert state.piriod.usages_of(pk) == []
    # when SQS is back and FlushFunction sweeps once the key's lock has expired, the sender
    # never retrying
    state.stores(sqs=False, store=False)
    state.time_passes(seconds=400)
    state.flush_function_sweeps()
    # then Piriod holds the record once, at its amended quantity
    assert [e.quantity for e in state.piriod.usages_of(pk)] == [new]


@pytest.mark.parametrize(("deleted", "attempts"), [("not_sent", 0), ("refused", 1)])
def test_a_delete_never_sent_spends_no_replay_attempt(deleted: str, attempts: int) -> None:
    # given a posted record whose cancel's DELETE is never sent (no time left), or refused
    state = Lifecycle()
    state.deliver(meanwhile=None, picks=[(0, 11, QUANTITIES[0], 123456)], twice=False)
    pk = "k#v1/usages#key-0"
    # when the sender cancels it
    _corrects(state, pk, "cancel", QUANTITIES[0], deleted=deleted)
    # then the correction waits in ReplayQueue, an attempt counted only for a DELETE sent
    [message] = state.queues.replay
    assert QueuedRecord.from_json(message.body).attempts == attempts
    assert len(state.piriod.usages_of(pk)) == 1


def _key_is_finished(state: Lifecycle, pk: str) -> None:
    key = state.store.keys[pk]
    assert key.status is not KeyStatus.IN_PROGRESS, key
    assert key.applied == key.rev and key.waiting is None, key


def test_an_amend_to_the_held_quantity_whose_end_is_throttled_is_finished_by_flush() -> None:
    # given (found by a second reviewer) a posted record amended to the quantity it holds:
    # nothing is sent to Piriod, and the key's final write is throttled
    pk = "k#v1/usages#key-0"
    state = Lifecycle()
    state.deliver(meanwhile=None, picks=[(0, 11, QUANTITIES[2], 123456)], twice=False)
    state.store_throttles_a_call(call="finish", times=1)
    _corrects(state, "k#v1/usages#key-0", "amend", QUANTITIES[2])
    # then the correction waits on its key
    assert state.store.keys[pk].waiting == CORRECTING
    # when FlushFunction sweeps once the key's lock is free
    state.time_passes(seconds=400)
    state.flush_function_sweeps()
    # then the key says the amend is applied, and Piriod holds the record once
    _key_is_finished(state, pk)
    assert [e.quantity for e in state.piriod.usages_of(pk)] == [QUANTITIES[2]]


def test_an_amend_to_the_held_quantity_whose_end_and_release_fail_is_finished_by_flush() -> None:
    # given (found by a second reviewer) a posted record amended to the quantity it holds:
    # nothing is sent to Piriod, and the key's final write and a release after it both fail
    pk = "k#v1/usages#key-0"
    state = Lifecycle()
    state.deliver(meanwhile=None, picks=[(0, 11, QUANTITIES[2], 123456)], twice=False)
    state.store_throttles_a_call(call="finish", times=1)
    state.store_throttles_a_call(call="release", times=1)
    _corrects(state, pk, "amend", QUANTITIES[2])
    # when FlushFunction sweeps once the key's lock has expired, the sender never retrying
    state.time_passes(seconds=400)
    state.flush_function_sweeps()
    # then the key says the amend is applied (it was listed before the attempt's end)
    _key_is_finished(state, pk)
    assert [e.quantity for e in state.piriod.usages_of(pk)] == [QUANTITIES[2]]


@pytest.mark.parametrize(
    "failing",
    [["finish"], ["finish", "release"]],
    ids=["its end write fails", "it vanishes: its end write and the release after it fail"],
)
def test_a_cancel_of_a_record_never_posted_whose_attempt_ends_unwritten_looks_nothing_up(
    failing: list[str],
) -> None:
    # given (found by a second reviewer) a record never posted (a 429: it waits in
    # ReplayQueue), cancelled; ReplayFunction's attempt lists the cancel on the key, and its
    # end write fails (with the release after it, too, as when its function is killed), and a
    # lookalike usage made elsewhere appears shortly after
    pk = "k#v1/usages#key-0"
    state = Lifecycle()
    state.piriod_will_answer(answers=["throttled"])
    state.deliver(meanwhile=None, picks=[(0, 11, QUANTITIES[2], 123456)], twice=False)
    _cancel(state, pk)
    for call in failing:
        state.store_throttles_a_call(call=call, times=1)
    state.time_passes(seconds=1)
    state.replay_function_runs(
        data=cast(Any, _Sequence(list(state.queues.replay), 5)), crash_before_delete=False
    )
    foreign = state.piriod.seed(11, AT.replace(microsecond=123456), QUANTITIES[2], state.clock())
    # when FlushFunction sweeps once the key's lock has expired
    state.time_passes(seconds=400)
    state.flush_function_sweeps()
    # then the cancel is applied without taking the lookalike for a post of the record
    _key_is_finished(state, pk)
    assert not foreign.deleted


def test_an_amend_whose_listing_on_its_key_is_throttled_waits_in_replay_queue() -> None:
    # given a posted record amended to the quantity it holds while the key's write that
    # lists the correction on it (before the attempt's end) is throttled
    pk = "k#v1/usages#key-0"
    state = Lifecycle()
    state.deliver(meanwhile=None, picks=[(0, 11, QUANTITIES[2], 123456)], twice=False)
    state.store_throttles_a_call(call="wait_on_key", times=1)
    _corrects(state, pk, "amend", QUANTITIES[2])
    # then nothing was applied yet: the correction waits in ReplayQueue
    assert len(state.queues.replay) == 1
    # and when ReplayFunction applies it, the key is finished and Piriod holds the record once
    state.time_passes(seconds=400)
    state.replay_function_runs(
        data=cast(Any, _Sequence(list(state.queues.replay), 5)), crash_before_delete=False
    )
    _key_is_finished(state, pk)
    assert [e.quantity for e in state.piriod.usages_of(pk)] == [QUANTITIES[2]]


def test_a_cancel_applied_by_replay_whose_end_is_throttled_is_finished_by_flush() -> None:
    # given (found by a second reviewer) a posted record amended, its new post throttled
    # into ReplayQueue (its usage deleted), then cancelled while it waits there
    pk = "k#v1/usages#key-0"
    state = Lifecycle()
    state.deliver(meanwhile=None, picks=[(0, 11, QUANTITIES[0], 123456)], twice=False)
    _corrects(state, "k#v1/usages#key-0", "amend", QUANTITIES[1], posted="throttled")
    assert state.store.keys[pk].status is KeyStatus.QUEUED
    _corrects(state, "k#v1/usages#key-0", "cancel", QUANTITIES[0], attempt=1)
    # when ReplayFunction applies the cancel (nothing to DELETE) and its key's final write
    # is throttled
    state.store_throttles_a_call(call="finish", times=1)
    state.time_passes(seconds=61)
    state.replay_function_runs(
        data=cast(Any, _Sequence(list(state.queues.replay), 5)), crash_before_delete=False
    )
    assert state.queues.replay == []
    # then FlushFunction finishes the key's bookkeeping once its lock is free
    state.time_passes(seconds=400)
    state.flush_function_sweeps()
    _key_is_finished(state, pk)
    assert state.piriod.usages_of(pk) == []


def test_an_amend_posted_by_replay_whose_end_is_throttled_is_not_posted_again() -> None:
    # given (found by the lifecycle model) a posted record amended, its DELETE answered late
    # (the usage deleted, the correction pending in ReplayQueue)
    state = Lifecycle()
    state.piriod_will_answer_deletes(answers=["deleted_then_lost"])
    state.deliver(
        meanwhile=None,
        picks=[(0, 11, QUANTITIES[0], 123456), (5, 12, Decimal("7.125"), 123000)],
        twice=False,
    )
    pk = "k#v1/usages#key-5"
    _corrects(state, pk, "amend", QUANTITIES[0])
    # when ReplayFunction posts the amend and the key's final write is throttled, and then
    # FlushFunction sweeps
    state.store_throttles_a_call(call="finish", times=1)
    state.replay_function_runs(
        data=cast(Any, _Sequence(list(state.queues.replay), 2)), crash_before_delete=False
    )
    state.flush_function_sweeps()
    state.teardown()
    # then Piriod holds the amended record once
    assert [e.quantity for e in state.piriod.usages_of(pk)] == [QUANTITIES[0]]
