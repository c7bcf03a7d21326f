"""The lifecycle's timing seams, with fake ports: a post still in flight at the deadline, and
keys released record by record."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from piriod_adapter.clock import Deadline
from piriod_adapter.lifecycle import Fate, KeyStatus, Outcome, Submission
from piriod_adapter.models import (
    FailureKind,
    KeyKind,
    QueuedRecord,
    Tenant,
    Usage,
    UsageKey,
)
from piriod_adapter.piriod import Listed, PostResult
from piriod_adapter.queue import REPLAY
from piriod_adapter.submit import Submitter
from piriod_adapter.table import key_pk
from tests.unit.fakes import Clock, FakeKeyStore, FakeQueues

TENANT = Tenant(workspace="w", test_mode=False)


def usage(n: int) -> Usage:
    return Usage(
        subscription_line=100 + n,
        date_time=datetime(2026, 11, 30, 10, 0, tzinfo=UTC),
        quantity=Decimal("1.5"),
        key=UsageKey(kind=KeyKind.EXPLICIT, scope="v1/usages", text=f"k{n}"),
    )


class Gated:
    """Piriod answering 201 at once for every line but one, whose post waits for `gate`."""

    def __init__(self, slow_line: int) -> None:
        self.slow_line = slow_line
        self.gate = threading.Event()
        self.started = threading.Event()

    def post_usage(self, usage: Usage, tenant: Tenant, deadline: Deadline) -> PostResult:
        if usage.subscription_line == self.slow_line:
            self.started.set()
            self.gate.wait(timeout=30)
        return PostResult.posted(usage.subscription_line)

    def find_usages(self, usage: Usage, tenant: Tenant, deadline: Deadline) -> list[Listed]:
        return []

    def delete_usage(self, usage_id: int, tenant: Tenant, deadline: Deadline) -> Any:
        raise AssertionError("nothing is corrected here")

    def usage_listed(self, *args: Any) -> bool:
        raise AssertionError("nothing is corrected here")

    def recent_usages(
        self, line: int, since: float, tenant: Tenant, deadline: Deadline
    ) -> list[Listed]:
        return []


def test_a_post_still_in_flight_at_the_deadline_is_queued_ambiguous() -> None:
    # given a Piriod that does not answer one record's post before the deadline
    clock = Clock()
    piriod, store, queues = Gated(slow_line=101), FakeKeyStore(clock), FakeQueues()
    submitter = Submitter(piriod, store, 0.0, 60.0, clock=clock)
    subs = [Submission(0, usage(0), TENANT), Submission(1, usage(1), TENANT)]
    try:
        # when the delivery reaches its deadline
        outcomes = submitter.submit_all(subs, Deadline.after(0.5), queues.place_failed, 4)
    finally:
        piriod.gate.set()
    # then the answered record is posted, and the one in flight is queued, flagged ambiguous
    assert piriod.started.is_set()
    assert outcomes[0].fate is Fate.POSTED
    assert outcomes[1].fate is Fate.QUEUED and outcomes[1].ambiguous
    [message] = queues.replay
    queued = QueuedRecord.from_json(message.body)
    assert queued.failure.kind is FailureKind.AMBIGUOUS and queued.ambiguous_since is not None
    # and its key says where it waits, to be settled by lookup
    key = store.keys[key_pk(usage(1).key)]
    assert key.status is KeyStatus.QUEUED and key.waiting == REPLAY
    assert key.ambiguous_since is not None


def test_each_key_is_written_as_soon_as_its_record_is_done() -> None:
    # given a delivery of two records, one of whose posts is slow
    clock = Clock()
    piriod, store, queues = Gated(slow_line=101), FakeKeyStore(clock), FakeQueues()
    submitter = Submitter(piriod, store, 0.0, 60.0, clock=clock)
    subs = [Submission(0, usage(0), TENANT), Submission(1, usage(1), TENANT)]
    done = threading.Event()
    outcomes: list[Outcome] = []

    def deliver() -> None:
        outcomes.extend(submitter.submit_all(subs, Deadline.after(20), queues.place_failed, 4))
        done.set()

    worker = threading.Thread(target=deliver)
    worker.start()
    assert piriod.started.wait(timeout=10)
    # when the fast record is done but the slow one is still being posted
    fast = store.keys[key_pk(usage(0).key)]
    for _ in range(1000):
        if fast.status is KeyStatus.POSTED:
            break
        threading.Event().wait(0.01)
    # then the fast record's key is already final (a concurrent delivery of it would see a
    # duplicate now), while the slow one's is still held
    assert fast.status is KeyStatus.POSTED and not done.is_set()
    assert store.keys[key_pk(usage(1).key)].status is KeyStatus.IN_PROGRESS
    piriod.gate.set()
    worker.join(timeout=10)
    assert [o.fate for o in outcomes] == [Fate.POSTED, Fate.POSTED]


class Counting(FakeKeyStore):
    """The fake store, counting the claims made one key at a time."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.single = 0

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        self.single += 1
        return super().claim(*args, **kwargs)


def test_a_delivery_s_new_keys_are_claimed_together_and_the_others_alone() -> None:
    # given a delivery of four records, the third of which was posted before
    clock = Clock()
    store, queues = Counting(clock), FakeQueues()
    submitter = Submitter(Gated(slow_line=-1), store, 0.0, 60.0, clock=clock)
    submitter.submit_all(
        [Submission(0, usage(2), TENANT)], Deadline.after(20), queues.place_failed, 4
    )
    store.single = 0
    subs = [Submission(n, usage(n), TENANT) for n in range(4)]
    # when it is submitted
    outcomes = submitter.submit_all(subs, Deadline.after(20), queues.place_failed, 4)
    # then the new ones are posted on the claims made together, and the one that existed
    # is a duplicate from what the batch found of it: no record claims its key alone
    assert [o.fate for o in outcomes] == [Fate.POSTED, Fate.POSTED, Fate.DUPLICATE, Fate.POSTED]
    assert store.single == 0
    # and with the batch refused, every record claims alone, with the same outcomes
    store.batch_fails, store.single = True, 0
    again = [Submission(n, usage(n + 10), TENANT) for n in range(3)]
    outcomes = submitter.submit_all(again, Deadline.after(20), queues.place_failed, 4)
    assert [o.fate for o in outcomes] == [Fate.POSTED] * 3 and store.single == 3


def test_a_record_not_started_at_the_deadline_writes_its_batch_claim_as_queued() -> None:
    # given a delivery of two records claimed together, one worker, and a first post that
    # does not answer before the deadline (the second record's worker never starts)
    clock = Clock()
    piriod, store, queues = Gated(slow_line=100), FakeKeyStore(clock), FakeQueues()
    submitter = Submitter(piriod, store, 0.0, 60.0, clock=clock)
    subs = [Submission(0, usage(0), TENANT), Submission(1, usage(1), TENANT)]
    try:
        # when the delivery reaches its deadline
        outcomes = submitter.submit_all(subs, Deadline.after(0.5), queues.place_failed, 1)
    finally:
        piriod.gate.set()
    # then the first is queued ambiguous, the second queued as not tried, and both keys
    # say where they wait (as a record that claimed alone and then stopped)
    assert outcomes[0].fate is Fate.QUEUED and outcomes[0].ambiguous
    assert outcomes[1].fate is Fate.QUEUED and not outcomes[1].ambiguous
    for n in (0, 1):
        key = store.keys[key_pk(usage(n).key)]
        assert key.status is KeyStatus.QUEUED and key.waiting == REPLAY
    assert store.keys[key_pk(usage(1).key)].ambiguous_since is None


def test_keys_claimed_together_after_the_deadline_answered_are_released() -> None:
    # given a store whose batch of new keys is answered only after the deadline
    clock = Clock()
    store, queues = FakeKeyStore(clock), FakeQueues()
    submitter = Submitter(Gated(slow_line=-1), store, 0.0, 60.0, clock=clock)
    gate = threading.Event()

    def slow() -> None:
        gate.wait(timeout=30)

    store.before_claim_new = slow
    subs = [Submission(0, usage(0), TENANT), Submission(1, usage(1), TENANT)]
    try:
        # when the delivery reaches its deadline
        outcomes = submitter.submit_all(subs, Deadline.after(0.5), queues.place_failed, 2)
    finally:
        gate.set()
    # then both are answered queued, not tried
    assert [o.fate for o in outcomes] == [Fate.QUEUED, Fate.QUEUED]
    assert not any(o.ambiguous for o in outcomes)
    # and the keys claimed after that are released, free for replay (nothing was posted)
    pks = [key_pk(usage(n).key) for n in (0, 1)]
    for _ in range(1000):
        if all(pk in store.keys and store.keys[pk].status is KeyStatus.RELEASED for pk in pks):
            break
        threading.Event().wait(0.01)
    assert [store.keys[pk].status for pk in pks] == [KeyStatus.RELEASED] * 2
    assert all(store.keys[pk].ambiguous_since is None for pk in pks)
