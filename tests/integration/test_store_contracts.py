"""The fakes the model tests run on are held equal to the real stores: every test here runs
twice, once against the DynamoDB store on moto server (over loopback HTTP, the functions'
own code) and once against its fake (tests/unit/fakes.py), and asserts the same observable
behaviour of both. A fake that drifts from DynamoDB's conditions fails here, so the model
tests' proof (tests/unit/test_lifecycle_model.py, test_window_model.py) covers the stores.

The key store: claiming, takeover by who may take what, finishing, releasing, settling,
taking and giving back a usage, identical twins, a lost lock. The window store: counting,
duplicates, a closed generation, a full shard, a conflict, closing and handing over."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from piriod_adapter.clock import Deadline
from piriod_adapter.idempotency import Claim, IdempotencyStore, LockLost, Result, Suspect
from piriod_adapter.lifecycle import KeyStatus, Taker
from piriod_adapter.models import KeyKind, Usage, UsageKey
from piriod_adapter.table import CORRECTING, Holding, KeyState, Waiting, WindowId, key_pk
from piriod_adapter.windows import (
    EventWrite,
    NewGeneration,
    WindowStore,
    WindowWrite,
    from_units,
    to_units,
)
from piriod_devkit.aws import MotoServer, client, provision
from tests.conftest import TOKEN
from tests.unit.fakes import Clock, FakeKeyStore, FakeWindowStore

AT = datetime(2026, 11, 30, 10, 0, 0, 123456, tzinfo=UTC)
LIFETIME = 25.0  # the attempts' deadline: their locks outlive it


def usage(text: str, quantity: str = "1.5", line: int = 41, micro: int = 123456) -> Usage:
    return Usage(
        subscription_line=line,
        date_time=AT.replace(microsecond=micro),
        quantity=Decimal(quantity),
        key=UsageKey(kind=KeyKind.EXPLICIT, scope="v1/usages", text=text),
    )


def seen(state: KeyState | None, now: float) -> tuple[Any, ...] | None:
    """What the lifecycle reads of a key's state."""
    if state is None:
        return None
    return (
        state.status,
        state.fingerprint,
        state.usage_id,
        state.locked(now),
        state.posting(now),
        state.unsettled_since() is not None,
        state.ambiguous_since,
    )


@pytest.fixture(scope="module")
def table(moto_server: MotoServer) -> str:
    return provision(moto_server.url, token=TOKEN, signing_secrets=[]).table


@dataclass
class Keys:
    store: Any  # IdempotencyStore or FakeKeyStore
    clock: Clock
    # claim_new's next batch: something done first (another attempt claiming a key), or the
    # store refusing it (an error code: throttled, invalid)
    before_batch: Callable[[Callable[[], None]], None] = lambda hook: None
    refuse_batch: Callable[[str | None], None] = lambda code: None


@pytest.fixture(params=["dynamodb", "fake"])
def keys(request: pytest.FixtureRequest, moto_server: MotoServer, table: str) -> Keys:
    clock = Clock(time.time())
    if request.param == "fake":
        fake = FakeKeyStore(clock)
        return Keys(
            fake,
            clock,
            lambda hook: setattr(fake, "before_claim_new", hook),
            lambda code: setattr(fake, "batch_fails", code is not None),
        )
    dynamodb = client("dynamodb", moto_server.url)
    hooks: list[Callable[[], None]] = []
    refusal: list[str | None] = [None]

    def batch(params: dict[str, Any], **_: Any) -> None:
        """Before the next TransactWriteItems is sent: the hook, once; or the store's
        refusal of it, as DynamoDB answers a throttled or invalid transaction."""
        from botocore.exceptions import ClientError

        while hooks:
            hooks.pop()()
        if refusal[0] is not None:
            refused: Any = {"Error": {"Code": refusal[0], "Message": "refused"}}
            raise ClientError(refused, "TransactWriteItems")

    dynamodb.meta.events.register("before-parameter-build.dynamodb.TransactWriteItems", batch)
    return Keys(
        IdempotencyStore(dynamodb, table, 35, clock=clock, sleep=lambda _: None),
        clock,
        hooks.append,
        lambda code: refusal.__setitem__(0, code),
    )


_unique = iter(range(10**9))


def fresh(text: str) -> str:
    """A key text no other test uses (the real store's table is shared by this module)."""
    return f"{text}-{next(_unique)}-{time.time_ns()}"


def claim(keys: Keys, record: Usage, taker: Taker = Taker.WEBHOOK, **kw: Any) -> Claim:
    result: Claim = keys.store.claim(record, Deadline.after(LIFETIME), taker, **kw)
    return result


def waiting(queue: str, message_id: str = "m-1") -> Waiting:
    return Waiting(queue=queue, message_id=message_id, message="{}", since="2026-11-30T10")


# --- the key store ------------------------------------------------------------------------------


def test_a_new_key_is_taken_once_and_a_held_one_is_reported(keys: Keys) -> None:
    # given a record nobody has claimed
    record = usage(fresh("new"))
    # when two attempts claim it
    first, second = claim(keys, record), claim(keys, record)
    # then the first holds it, and the second sees it held (locked, posting)
    assert first.acquired and first.previous is None
    assert not second.acquired
    assert seen(second.previous, keys.clock()) == (
        KeyStatus.IN_PROGRESS,
        record.fingerprint,
        None,
        True,
        True,
        True,
        None,
    )


def test_a_finished_key_is_a_duplicate_for_every_taker(keys: Keys) -> None:
    # given a record posted as usage 77
    record = usage(fresh("done"))
    held = claim(keys, record)
    keys.store.finish(Result(held, KeyStatus.POSTED, usage_id=77))
    # when anyone but a correction claims it again
    for taker in set(Taker) - {Taker.CORRECTION}:
        again = claim(keys, record, taker)
        # then nobody takes it, and it says posted as 77, unlocked
        assert not again.acquired
        assert seen(again.previous, keys.clock()) == (
            KeyStatus.POSTED,
            record.fingerprint,
            77,
            False,
            False,
            False,
            None,
        )
    # and a correction of it takes it (a correction names the record, whatever it is)
    corrected = claim(keys, record, Taker.CORRECTION)
    assert corrected.acquired and corrected.previous is not None
    assert corrected.previous.status is KeyStatus.POSTED and corrected.previous.usage_id == 77


def test_a_holder_that_vanished_is_taken_over_once_its_lock_expires(keys: Keys) -> None:
    # given a record whose attempt stopped mid-post (its lock still held)
    record = usage(fresh("vanished"))
    claim(keys, record)
    assert not claim(keys, record).acquired
    # when its lock has expired
    keys.clock.advance(LIFETIME + 10)
    again = claim(keys, record)
    # then the next attempt takes it, and learns an earlier post may be unseen
    assert again.acquired
    assert again.previous is not None and again.previous.unsettled_since() is not None


def test_who_may_take_a_queued_or_rejected_key(keys: Keys) -> None:
    # given three records: queued in ReplayQueue, exhausted into DeadLetterQueue, rejected
    replay, exhausted, rejected = (usage(fresh(n)) for n in ("replay", "exhausted", "rejected"))
    for record, status, queue in (
        (replay, KeyStatus.QUEUED, "replay"),
        (exhausted, KeyStatus.QUEUED, "dead-letter"),
        (rejected, KeyStatus.REJECTED, "dead-letter"),
    ):
        held = claim(keys, record)
        keys.store.finish(Result(held, status, waiting=waiting(queue)))
    # when the webhook, ReplayFunction and the operator try each
    taken = {
        (name, taker): claim(keys, record, taker).acquired
        for name, record in (("replay", replay), ("exhausted", exhausted), ("rejected", rejected))
        for taker in (Taker.WEBHOOK, Taker.REPLAY)
    }
    # then the webhook takes none, ReplayFunction only what waits in ReplayQueue
    assert taken == {
        ("replay", Taker.WEBHOOK): False,
        ("replay", Taker.REPLAY): True,
        ("exhausted", Taker.WEBHOOK): False,
        ("exhausted", Taker.REPLAY): False,
        ("rejected", Taker.WEBHOOK): False,
        ("rejected", Taker.REPLAY): False,
    }
    # and the operator takes what waits in DeadLetterQueue, rejected or exhausted
    assert claim(keys, exhausted, Taker.OPERATOR).acquired
    assert claim(keys, rejected, Taker.OPERATOR).acquired


def test_a_key_reused_for_another_record_is_never_taken(keys: Keys) -> None:
    # given a key released by its first record (free to take again)
    text = fresh("reused")
    held = claim(keys, usage(text, "1.5"))
    keys.store.release(held, None)
    # when a different record (another quantity) claims the same key, by any taker but a
    # correction (which carries the record as it is now, not as it was delivered)
    other = usage(text, "9")
    for taker in set(Taker) - {Taker.CORRECTION}:
        attempt = claim(keys, other, taker)
        # then it is refused, and it sees the first record's fingerprint
        assert not attempt.acquired
        assert attempt.previous is not None
        assert attempt.previous.fingerprint == usage(text, "1.5").fingerprint


def test_a_release_frees_the_key_and_keeps_an_unseen_post(keys: Keys) -> None:
    # given a record whose post went unanswered, released because no queue took it
    record = usage(fresh("released"))
    held = claim(keys, record)
    keys.store.release(held, 1234.5)
    # when the next attempt claims it
    again = claim(keys, record)
    # then it takes it, and learns when the unseen post was sent
    assert again.acquired and again.previous is not None
    assert again.previous.status is KeyStatus.RELEASED
    assert again.previous.ambiguous_since == 1234.5


def test_a_lost_lock_writes_nothing(keys: Keys) -> None:
    # given an attempt whose lock expired and another attempt that took the key over
    record = usage(fresh("lost"))
    stale = claim(keys, record)
    keys.clock.advance(LIFETIME + 10)
    current = claim(keys, record)
    assert current.acquired
    # when the stale attempt tries to write its result, release or mark it
    writes: list[Callable[[], None]] = [
        lambda: keys.store.finish(Result(stale, KeyStatus.POSTED, usage_id=5)),
        lambda: keys.store.release(stale, None),
        lambda: keys.store.mark_posting(stale),
        lambda: keys.store.settle(stale, 6),
    ]
    for write in writes:
        # then each is refused, and the key stays the current attempt's
        with pytest.raises(LockLost):
            write()
    keys.store.finish(Result(current, KeyStatus.POSTED, usage_id=7))
    again = claim(keys, record)
    assert again.previous is not None and again.previous.usage_id == 7


def test_a_settled_record_is_posted_and_one_usage_settles_one_record(keys: Keys) -> None:
    # given two records that an ambiguous post each left unsettled
    first, second = usage(fresh("settle-a")), usage(fresh("settle-b"))
    a, b = claim(keys, first, settling=True), claim(keys, second, settling=True)
    usage_id = 900_000 + next(_unique)
    # when both try to take the same listed usage
    took_a, took_b = keys.store.take_usage(a, usage_id), keys.store.take_usage(b, usage_id)
    # then only the first has it (again and again), until it gives it back
    assert (took_a, took_b, keys.store.take_usage(a, usage_id)) == (True, False, True)
    keys.store.give_back(a, usage_id)
    assert keys.store.take_usage(b, usage_id)
    # and settling writes the record posted with that usage
    keys.store.settle(b, usage_id)
    again = claim(keys, second)
    assert seen(again.previous, keys.clock())[:3] == (  # type: ignore[index]
        KeyStatus.POSTED,
        second.fingerprint,
        usage_id,
    )


def test_identical_records_account_for_each_other(keys: Keys) -> None:
    # given four twins of one line, less than a second apart: one posted as a known usage,
    # one posted without an id, one queued with an unseen post, one being settled
    line = 600 + next(_unique) % 10_000
    twins = [
        usage(fresh(f"twin{n}"), quantity=f"1.{n}", line=line, micro=100_000 * n) for n in range(5)
    ]
    known, idless, unseen, settling, me = twins
    keys.store.finish(Result(claim(keys, known), KeyStatus.POSTED, usage_id=31))
    keys.store.finish(Result(claim(keys, idless), KeyStatus.POSTED))
    keys.store.finish(
        Result(
            claim(keys, unseen), KeyStatus.QUEUED, ambiguous_since=99.0, waiting=waiting("replay")
        )
    )
    held = claim(keys, settling, settling=True)
    mine = claim(keys, me)
    # when one of them asks what the others account for
    found = keys.store.identical(mine, me)
    # then the known usage, one id-less post and two unseen posts; nobody is posting
    assert (found.held, found.unknown, found.unseen, found.posting) == (
        frozenset({31}),
        1,
        2,
        False,
    )
    # and each suspect says what its usage would be listed as: its instant and quantity
    assert sorted(found.suspects, key=lambda s: str(s.at)) == [
        Suspect(idless.date_time, idless.quantity_text, idless=True),
        Suspect(unseen.date_time, unseen.quantity_text, idless=False),
        Suspect(settling.date_time, settling.quantity_text, idless=False),
    ]
    # and once the settling one is about to post, it is posting
    keys.store.mark_posting(held)
    assert keys.store.identical(mine, me).posting


def test_a_claim_settled_by_its_worker_is_not_written_over_at_the_deadline(keys: Keys) -> None:
    # given an attempt that settled its record's unseen post as usage 77
    record = usage(fresh("settled-then-deadline"))
    mine = claim(keys, record, settling=True)
    keys.store.settle(mine, 77)
    # when the deadline then answers for the same attempt (queued)
    # then nothing is written: the key is no longer the attempt's
    with pytest.raises(LockLost):
        keys.store.finish(
            Result(mine, KeyStatus.QUEUED, ambiguous_since=99.0, waiting=waiting("replay"))
        )
    again = claim(keys, record)
    assert seen(again.previous, keys.clock())[:3] == (  # type: ignore[index]
        KeyStatus.POSTED,
        record.fingerprint,
        77,
    )


def test_a_delete_about_to_be_sent_stays_flagged_until_the_key_says_what_piriod_holds(
    keys: Keys,
) -> None:
    # given a key holding usage 5 whose attempt is about to DELETE it
    record = usage(fresh("deleting"))
    keys.store.finish(Result(claim(keys, record), KeyStatus.POSTED, usage_id=5))
    mine = claim(keys, record, Taker.CORRECTION)
    keys.store.mark_deleting(mine, 5)
    # when the attempt is released (nothing else written)
    keys.store.release(mine, None)
    # then the next holder sees the DELETE to ask about, and the usage still held
    again = claim(keys, record, Taker.CORRECTION)
    assert again.previous is not None
    assert (again.previous.deleting, again.previous.usage_id) == (5, 5)
    # and a usage found meanwhile (a lookup) leaves it flagged
    keys.store.hold(again, Holding("1.5", 5))
    keys.store.release(again, None)
    again = claim(keys, record, Taker.CORRECTION)
    assert again.previous is not None and again.previous.deleting == 5
    # and once a holder writes that Piriod holds nothing, the flag is gone
    keys.store.hold(again, None)
    keys.store.release(again, None)
    last = claim(keys, record, Taker.CORRECTION)
    assert last.previous is not None
    assert (last.previous.deleting, last.previous.holding) == (None, None)


def test_a_key_holding_a_usage_with_an_unseen_post_is_a_suspect_too(keys: Keys) -> None:
    # given a key holding usage 32 whose amend's post (2.5) went unseen, its key released
    line = 600 + next(_unique) % 10_000
    amended = usage(fresh("amended"), line=line)
    keys.store.finish(Result(claim(keys, amended), KeyStatus.POSTED, usage_id=32))
    mine = claim(keys, amended, Taker.CORRECTION)
    keys.store.mark_posting(mine, "2.5")
    keys.store.release(mine, 99.0)
    # when another record of the line asks what the others account for
    other = usage(fresh("other"), line=line, micro=123457)
    found = keys.store.identical(claim(keys, other), other)
    # then usage 32 is held, and the unseen post of 2.5 may be listed too
    assert found.held == frozenset({32})
    assert found.suspects == (Suspect(amended.date_time, "2.5", idless=False),)


def test_a_key_taken_over_from_a_vanished_attempt_keeps_its_unseen_post(keys: Keys) -> None:
    # given a key whose holder vanished mid-attempt (its lock expired, its post unseen)
    record = usage(fresh("vanished"))
    claim(keys, record)
    first_started = keys.clock()
    keys.clock.advance(LIFETIME + 60)
    # when another attempt takes it over and vanishes too
    claim(keys, record, Taker.REPLAY)
    keys.clock.advance(LIFETIME + 60)
    # then the next holder still sees the first attempt's post as unseen, since it began
    last = claim(keys, record, Taker.REPLAY)
    assert last.previous is not None
    assert last.previous.unsettled_since() == pytest.approx(first_started, abs=0.001)


def test_keys_less_than_two_seconds_apart_may_be_listed_alike(keys: Keys) -> None:
    # given three keys of one line posted without ids: 1.9 s, 2 s and 2.5 s from a record
    # (Piriod may list times cut to the second, and a listed time matches a record less
    # than a second from it, so usages up to two seconds apart may be listed alike)
    line = 600 + next(_unique) % 10_000
    me = usage(fresh("me"), line=line, micro=0)

    def at(text: str, seconds: float) -> Usage:
        return Usage(
            subscription_line=line,
            date_time=me.date_time + timedelta(seconds=seconds),
            quantity=Decimal("1.5"),
            key=UsageKey(kind=KeyKind.EXPLICIT, scope="v1/usages", text=fresh(text)),
        )

    near, two, far = at("near", -1.9), at("two", 2.0), at("far", 2.5)
    for record in (near, two, far):
        keys.store.finish(Result(claim(keys, record), KeyStatus.POSTED))
    # when the record asks what the others account for
    found = keys.store.identical(claim(keys, me), me)
    # then only the one less than two seconds away is a suspect
    assert found.suspects == (Suspect(near.date_time, "1.5", idless=True),)


def test_an_unseen_amend_post_is_what_the_key_says_it_carries(keys: Keys) -> None:
    # given a record delivered at 1.5 whose attempt is about to post its amend at 2.5
    line = 600 + next(_unique) % 10_000
    record = usage(fresh("amended"), quantity="1.5", line=line)
    mine = claim(keys, record)
    keys.store.mark_posting(mine, "2.5")
    # when the attempt is answered for with its post unseen and no quantity of its own (the
    # function's deadline struck while the post was in flight)
    keys.store.finish(
        Result(mine, KeyStatus.QUEUED, ambiguous_since=99.0, waiting=waiting("replay"))
    )
    # then an identical record sees its unseen post as carrying 2.5, not the delivered 1.5
    other = usage(fresh("other"), line=line, micro=123457)
    found = keys.store.identical(claim(keys, other), other)
    assert found.suspects == (Suspect(record.date_time, "2.5", idless=False),)


def test_a_correction_is_accepted_once_by_its_id_in_the_order_they_come(keys: Keys) -> None:
    # given a record posted as usage 5
    record = usage(fresh("corrected"))
    keys.store.finish(Result(claim(keys, record), KeyStatus.POSTED, usage_id=5))
    pk = key_pk(record.key)
    # when it is amended, the same amend comes again, and it is cancelled
    amend = keys.store.accept(pk, "amend", "2.25", "c-1")
    again = keys.store.accept(pk, "amend", "7", "c-1")
    cancel = keys.store.accept(pk, "cancel", None, "c-2")
    # then the amend is revision 1, its repeat a duplicate of it that changes nothing, and
    # the cancel revision 2 (the key remembers the amend's quantity and that it is cancelled)
    assert amend.state is not None and (amend.state.rev, amend.state.target) == (1, "2.25")
    assert (again.state, again.duplicate, again.refused) == (None, 1, None)
    assert cancel.state is not None and (cancel.state.rev, cancel.state.cancelled) == (2, True)
    assert cancel.state.usage_id == 5 and cancel.state.status is KeyStatus.POSTED
    # and once cancelled, a new correction finds nothing, while the cancel's repeat is known
    later = keys.store.accept(pk, "amend", "1", "c-3")
    assert (later.state, later.duplicate, later.refused) == (None, None, None)
    assert keys.store.accept(pk, "cancel", None, "c-2").duplicate == 2


def test_a_correction_of_an_unknown_key_finds_nothing_and_writes_nothing(keys: Keys) -> None:
    # given a key nobody delivered
    pk = key_pk(usage(fresh("unknown")).key)
    # when it is corrected, then nothing is found, and no item is made for it
    found = keys.store.accept(pk, "cancel", None, "c-1")
    assert (found.state, found.duplicate, found.refused) == (None, None, None)
    assert keys.store.items([pk]) == {}


def test_a_correction_takes_a_held_key_only_once_its_lock_ends(keys: Keys) -> None:
    # given a record posted, then amended, and an attempt applying the amend that holds it
    record = usage(fresh("applying"))
    keys.store.finish(Result(claim(keys, record), KeyStatus.POSTED, usage_id=9))
    keys.store.accept(key_pk(record.key), "amend", "4", "c-1")
    first = claim(keys, record, Taker.CORRECTION)
    # when a second correction's attempt claims it meanwhile, and again after the lock ends
    second = claim(keys, record, Taker.CORRECTION)
    keys.clock.advance(LIFETIME + 10)
    third = claim(keys, record, Taker.CORRECTION)
    # then only the first and the third take it, and each sees the amend to apply
    assert first.acquired and not second.acquired and third.acquired
    for taken in (first, third):
        assert taken.previous is not None and taken.previous.target == "4"
        assert taken.previous.usage_id == 9


def test_a_correction_that_posts_nothing_keeps_the_time_its_usage_was_posted(
    keys: Keys,
) -> None:
    # given a record posted by a 201 without an id, and an amend to the quantity it has
    record = usage(fresh("kept"))
    keys.store.finish(Result(claim(keys, record), KeyStatus.POSTED))
    posted_at = keys.clock()
    pk = key_pk(record.key)
    keys.store.accept(pk, "amend", "1.5", "c-1")
    # when, later, the amend's attempt finds nothing to post and finishes the key as it was
    keys.clock.advance(400)
    applying = claim(keys, record, Taker.CORRECTION)
    keys.store.finish(Result(applying, KeyStatus.POSTED, quantity="1.5", applied=1, kept=True))
    # then the key still says when its usage was posted (finding it looks back from there)
    keys.store.accept(pk, "cancel", None, "c-2")
    cancelling = claim(keys, record, Taker.CORRECTION)
    assert cancelling.previous is not None and cancelling.previous.usage_id is None
    assert cancelling.previous.posted_at == pytest.approx(posted_at, abs=1)
    # and an attempt that posts anew writes its own time
    other = usage(fresh("reposted"))
    keys.store.finish(Result(claim(keys, other), KeyStatus.POSTED))
    keys.store.accept(key_pk(other.key), "amend", "2", "c-1")
    keys.clock.advance(400)
    reposting = claim(keys, other, Taker.CORRECTION)
    keys.store.finish(Result(reposting, KeyStatus.POSTED, quantity="2", applied=1))
    keys.store.accept(key_pk(other.key), "cancel", None, "c-2")
    after = claim(keys, other, Taker.CORRECTION).previous
    assert after is not None and after.posted_at == pytest.approx(keys.clock(), abs=1)


# --- a webhook delivery's new keys, claimed together (claim_new) ------------------------------


def claim_new(keys: Keys, records: list[Usage]) -> list[Claim | None]:
    result: list[Claim | None] = keys.store.claim_new(records, Deadline.after(LIFETIME))
    return result


def test_a_delivery_s_new_keys_are_claimed_together_as_one_claim_each(keys: Keys) -> None:
    # given three records nobody has claimed
    records = [usage(fresh(f"batch{n}")) for n in range(3)]
    # when a delivery claims their keys together
    claims = claim_new(keys, records)
    # then each is held by its own claim, new, and a second claim sees it held
    assert all(c is not None and c.acquired and c.previous is None for c in claims)
    assert len({c.token for c in claims if c is not None}) == 3
    for record in records:
        again = claim(keys, record)
        assert not again.acquired
        assert seen(again.previous, keys.clock()) == (
            KeyStatus.IN_PROGRESS,
            record.fingerprint,
            None,
            True,
            True,
            True,
            None,
        )
    # and each claim is finished or released as a claim of its own is
    first, second, third = claims
    assert first is not None and second is not None and third is not None
    keys.store.finish(Result(first, KeyStatus.POSTED, usage_id=41))
    keys.store.finish(Result(second, KeyStatus.QUEUED, waiting=waiting("replay")))
    keys.store.release(third, None)
    assert seen(claim(keys, records[0]).previous, keys.clock())[:3] == (  # type: ignore[index]
        KeyStatus.POSTED,
        records[0].fingerprint,
        41,
    )
    assert claim(keys, records[1], Taker.REPLAY).acquired
    released = claim(keys, records[2])
    assert released.acquired and released.previous is not None
    assert released.previous.status is KeyStatus.RELEASED


def test_keys_that_exist_are_left_to_their_own_claim(keys: Keys) -> None:
    # given a delivery whose second record was posted before and whose fourth is held
    records = [usage(fresh(f"mixed{n}")) for n in range(4)]
    keys.store.finish(Result(claim(keys, records[1]), KeyStatus.POSTED, usage_id=42))
    holder = claim(keys, records[3])
    # when the delivery claims its keys together
    claims = claim_new(keys, records)
    # then only the new ones are claimed; the others are answered as a claim of their own
    # is (not taken, with the holder's state: posted as 42, held and posting), and left as
    # they were
    assert [c is not None and c.acquired for c in claims] == [True, False, True, False]
    done, held = claims[1], claims[3]
    assert done is not None and held is not None
    assert seen(done.previous, keys.clock()) == seen(claim(keys, records[1]).previous, keys.clock())
    assert seen(done.previous, keys.clock())[:3] == (  # type: ignore[index]
        KeyStatus.POSTED,
        records[1].fingerprint,
        42,
    )
    assert seen(held.previous, keys.clock()) == seen(claim(keys, records[3]).previous, keys.clock())
    assert held.previous is not None and held.previous.posting(keys.clock())
    keys.store.finish(Result(holder, KeyStatus.POSTED, usage_id=43))
    # and a delivery whose keys all exist takes none
    assert [c is not None and c.acquired for c in claim_new(keys, [records[1], records[3]])] == [
        False,
        False,
    ]


def test_existing_keys_the_webhook_may_take_are_left_to_their_own_claim(keys: Keys) -> None:
    # given a delivery whose first key was released, whose second one's holder vanished
    # (its lock expired), and whose third was released by another record (another quantity)
    records = [usage(fresh(f"free{n}")) for n in range(4)]
    keys.store.release(claim(keys, records[0]), None)
    claim(keys, records[1])
    other = usage(records[2].key.text, "9")
    keys.store.release(claim(keys, other), None)
    keys.clock.advance(LIFETIME + 10)
    # when the delivery claims its keys together
    claims = claim_new(keys, records)
    # then the two it may take are left to their own claim (which takes them), the other
    # record's key is answered as not taken, with that record's fingerprint
    assert claims[0] is None and claims[1] is None
    refused = claims[2]
    assert refused is not None and not refused.acquired and refused.previous is not None
    assert refused.previous.fingerprint == other.fingerprint
    assert claims[3] is not None and claims[3].acquired
    assert claim(keys, records[0]).acquired and claim(keys, records[1]).acquired


def test_a_key_twice_in_a_delivery_is_claimed_once(keys: Keys) -> None:
    # given a delivery with one key twice (the same record, or another under its key)
    text = fresh("twice")
    records = [usage(text), usage(fresh("once")), usage(text, "9")]
    # when it claims its keys together
    claims = claim_new(keys, records)
    # then the key's first record holds it; its second claims it alone (and finds it held)
    assert [c is not None for c in claims] == [True, True, False]
    assert not claim(keys, records[2]).acquired
    # and a delivery of one key alone claims nothing together, and writes nothing
    alone = usage(fresh("alone"))
    assert claim_new(keys, [alone, alone]) == [None, None]
    assert keys.store.items([key_pk(alone.key)]) == {}


def test_a_key_claimed_meanwhile_by_another_attempt_stays_that_attempt_s(keys: Keys) -> None:
    # given a delivery, one of whose keys another attempt claims while the delivery's
    # keys are being claimed
    records = [usage(fresh(f"race{n}")) for n in range(3)]
    other: list[Claim] = []
    keys.before_batch(lambda: other.append(claim(keys, records[1])))
    # when the delivery claims its keys together
    claims = claim_new(keys, records)
    # then the others are claimed, that one is left to its own claim, and stays held by
    # the attempt that took it: only that attempt's result is written over it
    assert [c is not None and c.acquired for c in claims] == [True, False, True]
    [taken] = other
    assert taken.acquired
    assert not claim(keys, records[1]).acquired
    keys.store.finish(Result(taken, KeyStatus.POSTED, usage_id=44))
    assert claim(keys, records[1]).previous.usage_id == 44  # type: ignore[union-attr]


@pytest.mark.parametrize("code", ["ThrottlingException", "ValidationException"])
def test_a_batch_the_store_refuses_claims_nothing(keys: Keys, code: str) -> None:
    # given a store that refuses the delivery's transaction (throttled, or invalid)
    records = [usage(fresh(f"refused{n}")) for n in range(3)]
    keys.refuse_batch(code)
    # when the delivery claims its keys together
    claims = claim_new(keys, records)
    # then none is claimed, nothing is written, and each record claims its key alone
    assert claims == [None, None, None]
    assert keys.store.items([key_pk(r.key) for r in records]) == {}
    keys.refuse_batch(None)
    assert all(claim(keys, record).acquired for record in records)


def test_a_delivery_of_more_keys_than_a_transaction_takes_claims_them_all(keys: Keys) -> None:
    # given 130 records (past TransactWriteItems' 100), one of which was posted before
    records = [usage(fresh(f"many{n}")) for n in range(130)]
    keys.store.finish(Result(claim(keys, records[117]), KeyStatus.POSTED, usage_id=45))
    # when the delivery claims its keys together
    claims = claim_new(keys, records)
    # then every new key is claimed, the existing one is not
    assert [n for n, c in enumerate(claims) if c is None or not c.acquired] == [117]


def test_a_vanished_batch_claim_is_taken_over_once_its_lock_expires(keys: Keys) -> None:
    # given a delivery that claimed its keys together and stopped
    records = [usage(fresh(f"gone{n}")) for n in range(2)]
    assert all(c is not None for c in claim_new(keys, records))
    assert not claim(keys, records[0]).acquired
    # when its lock has expired
    keys.clock.advance(LIFETIME + 10)
    again = claim(keys, records[0])
    # then the next attempt takes it, and learns an earlier post may be unseen
    assert again.acquired
    assert again.previous is not None and again.previous.unsettled_since() is not None


# --- the window store -----------------------------------------------------------------------


@dataclass
class Windows:
    store: Any  # WindowStore or FakeWindowStore
    conflict: Any  # makes the next n transactions conflict


@pytest.fixture(params=["dynamodb", "fake"])
def windows(
    request: pytest.FixtureRequest, moto_server: MotoServer, table: str
) -> Iterator[Windows]:
    if request.param == "fake":
        fake = FakeWindowStore(shards=3)
        yield Windows(fake, lambda n: setattr(fake, "conflicts", n))
        return
    dynamodb = client("dynamodb", moto_server.url)
    left = [0]

    def conflict(params: dict[str, Any], **_: Any) -> None:
        """The next transactions cancelled as DynamoDB cancels one that met a concurrent
        transaction on one of its items, before anything is sent."""
        if left[0]:
            left[0] -= 1
            raise _conflict(len(params["TransactItems"]))

    dynamodb.meta.events.register("before-parameter-build.dynamodb.TransactWriteItems", conflict)
    yield Windows(WindowStore(dynamodb, table, 3), lambda n: left.__setitem__(0, n))


def _conflict(actions: int) -> Exception:
    from botocore.exceptions import ClientError

    reasons: Any = [{"Code": "None"}] * (actions - 1) + [{"Code": "TransactionConflict"}]
    return ClientError(
        {
            "Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
            "CancellationReasons": reasons,
        },
        "TransactWriteItems",
    )


def window() -> WindowId:
    start = datetime(2026, 11, 30, 10, next(_unique) % 60, tzinfo=UTC)
    return WindowId(f"contract{next(_unique)}", 51, start, "sum-60s")


def add(
    store: Any, w: WindowId, texts: list[str], units: int, *, shard: int = 0, g: int | None = None
) -> Any:
    """One chunk: events (each of `units`) added to one shard of the window's open
    generation, writing the generation's item when it is new."""
    known = store.open_generations([w])[w]
    generation = known.generation if g is None else g
    events = [
        EventWrite(key_pk(ev.key), ev, w, units, 2_000_000_000)
        for ev in (
            Usage(
                subscription_line=w.line,
                date_time=w.start,
                quantity=from_units(units),
                key=UsageKey(kind=KeyKind.EVENT, scope=f"v1/sources/{w.source}", text=text),
                source=w.source,
            )
            for text in texts
        )
    ]
    create = NewGeneration(60, w.start.timestamp() + 60, "sum", False, 2_000_000_000)
    write = WindowWrite(
        window=w,
        generation=generation,
        shard=shard,
        shards=known.shards,
        units=units * len(texts),
        events=len(texts),
        expires_at=2_000_000_000,
        create=None if known.exists else create,
    )
    return store.count(events, [write])


def test_a_chunk_commits_its_keys_and_additions_together(windows: Windows) -> None:
    # given a window nobody counted into
    w = window()
    # when a chunk of two events commits, and one of them comes again with a new one
    first = add(windows.store, w, ["a", "b"], to_units(Decimal("2.5")))
    again = add(windows.store, w, ["b", "c"], to_units(Decimal("2.5")))
    # then the first committed, the second did not (b is a duplicate, with its fingerprint)
    assert first.committed and not again.committed
    assert list(again.duplicates) == [0] and again.duplicates[0] is not None
    assert not (again.closed or again.full or again.conflict)
    # and the generation's total is the first chunk's alone
    closed = windows.store.close(next(g for g in windows.store.due(2e9, 10_000) if g.window == w))
    assert (closed.total_units, closed.events, closed.closed) == (to_units(Decimal(5)), 2, True)


def test_a_closed_generation_refuses_additions_and_sends_events_to_the_next(
    windows: Windows,
) -> None:
    # given a window whose generation 0 has an event, then is closed
    w = window()
    assert add(windows.store, w, ["a"], 10).committed
    gen = next(g for g in windows.store.due(2e9, 10_000) if g.window == w)
    windows.store.close(gen)
    # when a chunk still aimed at generation 0 comes
    late = add(windows.store, w, ["b"], 10, g=0)
    # then it is refused as closed, and the window's open generation is now 1
    assert not late.committed and late.closed == {0} and not late.duplicates
    assert windows.store.open_generations([w])[w].generation == 1
    assert add(windows.store, w, ["b"], 10).committed
    # and closing again gives the same total (two flushers agree)
    assert windows.store.close(gen).total_units == 10


def test_a_full_shard_refuses_an_addition_past_its_share(windows: Windows) -> None:
    # given a window of 3 shards, each holding at most a third of the 10^38 - 1 unit bound
    w = window()
    share = (10**38 - 1) // 3
    assert add(windows.store, w, ["a"], share - 5, shard=1).committed
    # when an addition would take shard 1 past its share, and another fits shard 2
    over = add(windows.store, w, ["b"], 6, shard=1)
    fits = add(windows.store, w, ["c"], 6, shard=2)
    # then the first is refused as full (nothing written), the second commits
    assert not over.committed and over.full == {0} and not (over.closed or over.duplicates)
    assert fits.committed


def test_a_conflict_cancels_the_whole_transaction(windows: Windows) -> None:
    # given a window, and a concurrent transaction on one of the next chunk's items
    w = window()
    windows.conflict(1)
    # when the chunk is written, then it is cancelled as a conflict, and nothing is written
    first = add(windows.store, w, ["a"], 10)
    assert not first.committed and first.conflict
    assert not (first.duplicates or first.closed or first.full)
    # and the same chunk commits on the next try (its key was not written)
    assert add(windows.store, w, ["a"], 10).committed


def test_a_handed_over_generation_leaves_the_due_generations(windows: Windows) -> None:
    # given a generation with a total, closed
    w = window()
    add(windows.store, w, ["a", "b"], 7)
    gen = windows.store.close(next(g for g in windows.store.due(2e9, 10_000) if g.window == w))
    assert any(g.window == w for g in windows.store.due(2e9, 10_000))
    # when its total is handed to the lifecycle
    windows.store.hand_over(gen)
    # then it is no longer due, and closing it again changes nothing
    assert not any(g.window == w for g in windows.store.due(2e9, 10_000))
    again = windows.store.close(gen)
    assert (again.total_units, again.handed) == (14, True)


def event_pk(w: WindowId, text: str) -> str:
    return key_pk(UsageKey(kind=KeyKind.EVENT, scope=f"v1/sources/{w.source}", text=text))


def generation_of(store: Any, w: WindowId) -> Any:
    return next(g for g in store.due(2e9, 10_000) if g.window == w)


def test_corrections_of_events_in_an_open_generation_change_it_with_their_keys(
    windows: Windows,
) -> None:
    # given an open generation of two events of 10 units each
    w = window()
    assert add(windows.store, w, ["a", "b"], 10).committed
    a, b = event_pk(w, "a"), event_pk(w, "b")
    # when one is amended to 4 units, the other cancelled, and the amend comes again
    quantity = str(from_units(4))
    done = windows.store.correct_events(
        [(a, "amend", quantity, "c-1"), (b, "cancel", None, "c-2")], 2e9, Deadline.after(10)
    )
    again = windows.store.correct_events([(a, "amend", "9", "c-1")], 2e9, Deadline.after(10))
    late = windows.store.correct_events([(b, "cancel", None, "c-3")], 2e9, Deadline.after(10))
    # then both applied as revision 1, the repeat is a duplicate, the cancelled one is gone
    assert [(r.status, r.revision) for r in done] == [("applied", 1), ("applied", 1)]
    assert [(r.status, r.revision) for r in again] == [("duplicate", 1)]
    assert [r.status for r in late] == ["not_found"]
    # and the generation closes with the corrected total over the one event left
    closed = windows.store.close(generation_of(windows.store, w))
    assert (closed.total_units, closed.events) == (4, 1)


def test_a_correction_after_hand_over_makes_the_generation_due_until_the_newest_is_handed(
    windows: Windows,
) -> None:
    # given a generation of one event of 10 units, closed and handed over
    w = window()
    assert add(windows.store, w, ["a", "b"], 10).committed
    windows.store.hand_over(windows.store.close(generation_of(windows.store, w)))
    # when an event is cancelled, then the generation is due again, to be restated
    done = windows.store.correct_events(
        [(event_pk(w, "a"), "cancel", None, "c-1")], 2e9, Deadline.after(10)
    )
    assert [r.status for r in done] == ["pending"]
    read = windows.store.close(generation_of(windows.store, w))
    assert read.restating and (read.corrected_units, read.adjust_seq) == (10, 1)
    # when another correction comes before the restatement read is handed over
    windows.store.correct_events(
        [(event_pk(w, "b"), "amend", str(from_units(3)), "c-2")], 2e9, Deadline.after(10)
    )
    windows.store.hand_over(read)
    # then it stays due with both corrections, until the newest read is handed over
    newest = windows.store.close(generation_of(windows.store, w))
    assert newest.restating and (newest.corrected_units, newest.adjust_seq) == (3, 2)
    windows.store.hand_over(newest)
    assert not any(g.window == w for g in windows.store.due(2e9, 10_000))


def test_a_correction_that_would_take_a_closed_generation_past_its_bound_is_refused(
    windows: Windows,
) -> None:
    # given a closed generation of two events of 10 units
    from piriod_adapter.windows import MAX_TOTAL_UNITS

    w = window()
    assert add(windows.store, w, ["a", "b"], 10).committed
    windows.store.hand_over(windows.store.close(generation_of(windows.store, w)))
    # when one is amended to the most one event may hold, then the other too
    top = str(from_units(MAX_TOTAL_UNITS - 20))
    first = windows.store.correct_events(
        [(event_pk(w, "a"), "amend", top, "c-1")], 2e9, Deadline.after(10)
    )
    second = windows.store.correct_events(
        [(event_pk(w, "b"), "amend", top, "c-2")], 2e9, Deadline.after(10)
    )
    # then the first waits for the next flush, and the second, which would take the total
    # past what one usage holds, is refused now (a restatement could never post it)
    assert [r.status for r in first] == ["pending"]
    assert [(r.status, r.errors is not None and "quantity" in r.errors) for r in second] == [
        ("rejected", True)
    ]
    # and the generation restates the first only
    read = windows.store.close(generation_of(windows.store, w))
    assert (read.corrected_units, read.adjust_seq) == (MAX_TOTAL_UNITS - 10, 1)


def test_a_cloudevent_key_is_found_by_its_scope_and_id(keys: Keys) -> None:
    # given two CloudEvents of one adapter source with one id from two CloudEvent sources,
    # and one with an id of its own, claimed as the submit path claims them
    scope = f"v1/sources/ce{next(_unique)}"

    def cloudevent(source: str, event_id: str) -> Usage:
        text = json.dumps([source, event_id], separators=(",", ":"))
        return usage(text).model_copy(
            update={"key": UsageKey(kind=KeyKind.EVENT, scope=scope, text=text)}
        )

    twins = [cloudevent("urn:a", "e-1"), cloudevent("urn:b", "e-1")]
    alone = cloudevent("urn:a", "e-2")
    for record in [*twins, alone]:
        assert claim(keys, record).acquired
    # when each id is looked up in the source's scope
    found = {eid: keys.store.keys_of_event(f"{scope}#{eid}") for eid in ("e-1", "e-2", "e-3")}
    # then the shared id names both keys, the other its own, an unknown one none
    assert sorted(found["e-1"]) == sorted(key_pk(r.key) for r in twins)
    assert found["e-2"] == [key_pk(alone.key)]
    assert found["e-3"] == []


def test_a_usage_found_without_its_id_leaves_no_earlier_id_beside_it(keys: Keys) -> None:
    # given a key holding usage 5, whose next holder finds a usage of it listed without an id
    record = usage(fresh("found-without-id"))
    keys.store.finish(Result(claim(keys, record), KeyStatus.POSTED, usage_id=5))
    mine = claim(keys, record, Taker.CORRECTION)
    # when that holder writes what it found, and lets the key go
    keys.store.hold(mine, Holding("2.5", None))
    keys.store.release(mine, None)
    # then the next holder sees that usage, and no id for it
    again = claim(keys, record, Taker.CORRECTION)
    assert again.previous is not None
    assert (again.previous.holding, again.previous.usage_id) == (Holding("2.5", None), None)


def test_a_key_read_as_an_item_says_what_its_claim_says(keys: Keys) -> None:
    # given a posted key whose next holder is about to DELETE its usage
    record = usage(fresh("read-as-item"))
    keys.store.finish(Result(claim(keys, record), KeyStatus.POSTED, usage_id=7))
    mine = claim(keys, record, Taker.CORRECTION)
    keys.store.mark_deleting(mine, 7)
    pk = key_pk(record.key)
    # when the key is read as an item (a batch read, as the corrections read keys)
    read = KeyState.from_item(keys.store.items([pk])[pk])
    # then it says what a claim of it says: the DELETE, and when its usage was posted
    assert mine.previous is not None
    assert read.deleting == 7
    assert read.posted_at is not None
    assert read.posted_at == mine.previous.posted_at
    assert (read.status, read.usage_id, read.holding) == (
        KeyStatus.IN_PROGRESS,
        7,
        Holding("1.5", 7),
    )


def deleting_ahead(keys: Keys, text: str) -> tuple[Usage, Claim, str]:
    """A posted key (usage 9) whose correction's attempt wrote its DELETE to the key before
    sending it, the correction listed as waiting on the key: the record, the attempt's claim
    and the message listed."""
    record = usage(fresh(text))
    keys.store.finish(Result(claim(keys, record), KeyStatus.POSTED, usage_id=9))
    mine = claim(keys, record, Taker.CORRECTION)
    message = json.dumps({"key": record.key.text})
    keys.store.mark_deleting(mine, 9, Waiting(CORRECTING, CORRECTING, message, "2026-11-30T10"))
    return record, mine, message


def listed_ahead(keys: Keys, text: str, usage_id: int) -> tuple[Usage, Claim, str]:
    """A posted key (`usage_id`) whose correction's attempt, sending nothing, listed the
    correction as waiting on the key before its end: the record, the attempt's claim and the
    message listed."""
    record = usage(fresh(text))
    keys.store.finish(Result(claim(keys, record), KeyStatus.POSTED, usage_id=usage_id))
    mine = claim(keys, record, Taker.CORRECTION)
    message = json.dumps({"key": record.key.text})
    keys.store.wait_on_key(mine, Waiting(CORRECTING, CORRECTING, message, "2026-11-30T11"))
    return record, mine, message


def correcting(keys: Keys) -> list[str]:
    """The messages of the corrections listed as waiting on their keys."""
    return [w.message for w in keys.store.waiting(CORRECTING)]


def test_a_correction_waits_on_its_key_from_its_delete_until_its_attempt_finishes(
    keys: Keys,
) -> None:
    # given a posted key whose correction's attempt is about to DELETE its usage
    # when the DELETE is written to the key before it is sent
    _, mine, message = deleting_ahead(keys, "delete-ahead")
    # then the correction is listed as waiting on the key, with its record's message
    assert message in correcting(keys)
    # and once the attempt finishes, it is not
    keys.store.finish(Result(mine, KeyStatus.CANCELLED, quantity="1.5", applied=1))
    assert message not in correcting(keys)


def test_a_correction_waits_on_its_key_when_its_attempt_stops_after_its_delete(
    keys: Keys,
) -> None:
    # given a correction's attempt that wrote its DELETE ahead
    record, mine, message = deleting_ahead(keys, "delete-ahead-released")
    # when it is released with nothing more said
    keys.store.release(mine, None)
    # then the correction still waits on the key, its DELETE still to be asked about
    assert message in correcting(keys)
    again = claim(keys, record, Taker.CORRECTION)
    assert again.previous is not None and again.previous.deleting == 9


def test_a_correction_listed_on_its_key_without_a_delete_waits_until_its_attempt_finishes(
    keys: Keys,
) -> None:
    # given a posted key whose correction's attempt sends nothing (what Piriod holds is
    # already right)
    # when the correction is listed on the key before the attempt's end
    record, mine, message = listed_ahead(keys, "listed-ahead", 4)
    # then it waits on the key, which says nothing else changed
    assert message in correcting(keys)
    again = claim(keys, record, Taker.CORRECTION)
    assert again.previous is not None and not again.acquired
    assert (again.previous.status, again.previous.usage_id) == (KeyStatus.IN_PROGRESS, 4)
    assert again.previous.deleting is None
    # and once the attempt finishes, it does not
    keys.store.finish(Result(mine, KeyStatus.POSTED, usage_id=4, applied=1, kept=True))
    assert message not in correcting(keys)


def test_an_attempt_that_vanishes_after_listing_its_correction_left_no_unseen_post(
    keys: Keys,
) -> None:
    # given a posted key whose correction's attempt listed itself (it sends nothing more) and
    # then vanished
    record, _, _ = listed_ahead(keys, "listed-vanished", 6)
    # when the next attempt takes the key once the lock has expired
    keys.clock.advance(LIFETIME + 60)
    again = claim(keys, record, Taker.CORRECTION)
    # then it finds no post of the vanished attempt to look up, and no one sees it posting
    assert again.acquired and again.previous is not None
    assert again.previous.unsettled_since() is None
    assert not again.previous.posting(keys.clock())
    third = claim(keys, record, Taker.CORRECTION)  # refused: the second holds it
    assert third.previous is not None and third.previous.ambiguous_since is None


def test_a_correction_listed_on_its_key_by_another_s_attempt_is_refused(keys: Keys) -> None:
    # given a key whose attempt's lock expired and was taken over by another attempt
    record = usage(fresh("listed-late"))
    keys.store.finish(Result(claim(keys, record), KeyStatus.POSTED, usage_id=5))
    first = claim(keys, record, Taker.CORRECTION)
    keys.store.release(first, None)
    claim(keys, record, Taker.CORRECTION)
    # when the first attempt lists its correction, then the store refuses it (not its key)
    with pytest.raises(LockLost):
        keys.store.wait_on_key(first, Waiting(CORRECTING, CORRECTING, "{}", "2026-11-30T12"))
    assert "{}" not in correcting(keys)


def test_a_meters_record_keeps_the_line_it_was_posted_with(keys: Keys) -> None:
    # given a record of a meter with no line yet, rejected into DeadLetterQueue
    text = fresh("meter-mapped")
    unmapped = usage(text).model_copy(update={"subscription_line": None, "meter_id": "m-1"})
    keys.store.finish(
        Result(claim(keys, unmapped), KeyStatus.REJECTED, waiting=waiting("dead-letter"))
    )
    # when the operator replays it once the meter has its line, and it is posted
    mapped = unmapped.model_copy(update={"subscription_line": 77})
    mine = claim(keys, mapped, Taker.OPERATOR)
    assert mine.acquired
    keys.store.finish(Result(mine, KeyStatus.POSTED, usage_id=3))
    # then the key says the line it was posted with
    again = claim(keys, mapped, Taker.CORRECTION)
    assert again.previous is not None
    assert (again.previous.line, again.previous.usage_id) == (77, 3)
