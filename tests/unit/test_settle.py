"""Settling an ambiguous post by lookup: a listed usage that equals the record at the
precision Piriod lists it with may be it; the record is posted again only when the lookup
proves that no listed usage can be it; one listed usage settles at most one record; one the
adapter cannot read keeps the record ambiguous."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from piriod_adapter.clock import Deadline
from piriod_adapter.lifecycle import Submission
from piriod_adapter.models import FailureKind, KeyKind, Tenant, Usage, UsageKey
from piriod_adapter.piriod import Listed, PostResult
from piriod_adapter.submit import CLOCK_SKEW_SECONDS, Submitter
from tests.unit.fakes import Clock, FakeKeyStore, FakePiriod

FIRST_ATTEMPT = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
TENANT = Tenant(workspace="w", test_mode=False)


def usage(quantity: str = "1.50", micro: int = 0, text: str = "k") -> Usage:
    return Usage(
        subscription_line=42,
        date_time=datetime(2026, 11, 26, 9, 0, 0, micro, tzinfo=UTC),
        quantity=Decimal(quantity),
        key=UsageKey(kind=KeyKind.EXPLICIT, scope="v1/usages", text=text),
    )


class Listing:
    """Piriod answering a lookup with exactly these usages (both queries)."""

    def __init__(self, listed: list[dict[str, Any]]) -> None:
        self.listed = [Listed.read(u) for u in listed]

    def find_usages(self, usage: Usage, tenant: Tenant, deadline: Deadline) -> list[Listed]:
        return self.listed

    def recent_usages(
        self, line: int, since: float, tenant: Tenant, deadline: Deadline
    ) -> list[Listed]:
        return self.listed

    def post_usage(self, usage: Usage, tenant: Tenant, deadline: Deadline) -> PostResult:
        raise AssertionError("settling never posts")

    def delete_usage(self, usage_id: int, tenant: Tenant, deadline: Deadline) -> Any:
        raise AssertionError("settling never deletes")

    def usage_listed(self, *args: Any) -> bool:
        raise AssertionError("settling asks by listing")


def listed(usage_id: Any = 11, created: Any = "2026-11-26T10:00:01Z", **fields: Any) -> Any:
    entry = {
        "id": usage_id,
        "subscription_line": 42,
        "date_time": "2026-11-26T09:00:00Z",
        "quantity": "1.5",  # Piriod's formatting of 1.50
        "created": created,
    }
    return {**entry, **fields}


def settle(
    *entries: dict[str, Any], record: Usage | None = None, store: FakeKeyStore | None = None
) -> tuple[PostResult | None, FakeKeyStore]:
    clock = Clock(FIRST_ATTEMPT.timestamp() + 120)
    store = store or FakeKeyStore(clock)
    store.clock = clock
    submitter = Submitter(Listing(list(entries)), store, 1.0, 0.0, clock=clock)
    record = record or usage()
    claim = store.claim(record, Deadline.after(30), settling=True)
    sub = Submission(0, record, TENANT)
    settled = submitter._settle(claim, sub, record, FIRST_ATTEMPT.timestamp(), Deadline.after(30))
    return settled, store


def settled_ids(store: FakeKeyStore) -> list[int]:
    return [k.usage_id for k in store.keys.values() if k.usage_id is not None]


def test_a_matching_usage_created_since_the_first_attempt_settles_it() -> None:
    result, store = settle(listed())
    assert result is not None and result.created and settled_ids(store) == [11]


def test_a_matching_usage_within_the_clock_skew_allowance_settles_it() -> None:
    # given Piriod's clock some minutes behind ours
    early = FIRST_ATTEMPT - timedelta(seconds=CLOCK_SKEW_SECONDS - 10)
    result, store = settle(listed(created=early.isoformat()))
    assert result is not None and result.created and settled_ids(store) == [11]


@pytest.mark.parametrize(
    ("sent", "micro", "fields"),
    [
        # a quantity with 18 significant digits, listed as the nearest binary float
        ("1.23456789012345678", 0, {"quantity": Decimal("1.2345678901234567")}),
        # fewer decimal places, rounded or cut
        ("2.345", 0, {"quantity": "2.35"}),
        ("2.345", 0, {"quantity": "2.34"}),
        ("7.9", 0, {"quantity": 8}),
        # a time listed in milliseconds, or seconds
        ("1.50", 123456, {"date_time": "2026-11-26T09:00:00.123Z"}),
        ("1.50", 999999, {"date_time": "2026-11-26T09:00:00Z"}),
        # a time written with another offset
        ("1.50", 0, {"date_time": "2026-11-26T10:00:00+01:00"}),
    ],
)
def test_a_usage_equal_at_the_precision_it_is_listed_with_settles_it(
    sent: str, micro: int, fields: dict[str, Any]
) -> None:
    # given a record Piriod lists at a lower precision than it was sent
    # when its ambiguous post is settled
    result, store = settle(listed(**fields), record=usage(sent, micro))
    # then that usage is taken as its own: it is not posted a second time
    assert result is not None and result.created and settled_ids(store) == [11]


def test_nothing_listed_or_only_others_means_not_there() -> None:
    long_before = (FIRST_ATTEMPT - timedelta(hours=1)).isoformat()
    assert settle()[0] is None
    assert settle(listed(created=long_before))[0] is None  # existed before our attempt
    assert settle(listed(quantity="3"))[0] is None  # surely another record, at any places
    assert settle(listed(quantity="1.51"))[0] is None  # as precise as sent, and different
    assert settle(listed(date_time="2026-11-26T09:00:01Z"))[0] is None
    assert settle(listed(date_time="2026-11-26T09:00:00.001Z"))[0] is None
    assert settle(listed(subscription_line=43))[0] is None


def test_a_usage_another_key_holds_is_not_taken() -> None:
    # given an identical record under another key, posted as usage 7
    clock = Clock(FIRST_ATTEMPT.timestamp() + 120)
    store = FakeKeyStore(clock)
    twin = usage(text="twin")
    claim = store.claim(twin, Deadline.after(30))
    from piriod_adapter.idempotency import Result
    from piriod_adapter.lifecycle import KeyStatus

    store.finish(Result(claim, KeyStatus.POSTED, usage_id=7))
    # when our record's lookup lists only usage 7
    result, _ = settle(listed(usage_id=7), store=store)
    # then nothing is ours: the lookup proves it absent, and it may be posted again
    assert result is None


def test_one_listed_usage_settles_at_most_one_record() -> None:
    # given two identical records, both posted ambiguously, and one usage in Piriod
    store = FakeKeyStore(Clock())
    first, _ = settle(listed(), record=usage(text="a"), store=store)
    second, _ = settle(listed(), record=usage(text="b"), store=store)
    # then the first takes it, and the second is proven absent (posted again), not settled
    assert first is not None and first.created
    assert second is None
    # and with two usages listed, each record takes its own
    store = FakeKeyStore(Clock())
    both = [listed(usage_id=11), listed(usage_id=12)]
    one, _ = settle(*both, record=usage(text="a"), store=store)
    two, _ = settle(*both, record=usage(text="b"), store=store)
    assert one is not None and two is not None
    assert {one.usage_id, two.usage_id} == {11, 12}


def test_an_identical_record_being_posted_defers_settling() -> None:
    # given an identical record under another key with a post in progress
    clock = Clock(FIRST_ATTEMPT.timestamp() + 120)
    store = FakeKeyStore(clock)
    store.claim(usage(text="twin"), Deadline.after(30))
    # when our record is settled
    result, _ = settle(listed(), store=store)
    # then it stays ambiguous: the listed usage may be the twin's
    assert result is not None and result.failure is FailureKind.AMBIGUOUS


@pytest.mark.parametrize(
    "entry",
    [
        listed(usage_id="11"),
        listed(usage_id=None),
        listed(usage_id=0),
        listed(created=None),
        listed(created="2026-11-26T10:00:01"),  # no offset: whose clock?
        listed(created="yesterday"),
        listed(quantity="one and a half"),
        listed(date_time=None),
        listed(date_time="2026-11-26T09:00:00.000000001Z"),  # finer than we can read
        listed(subscription_line="42"),
    ],
)
def test_a_possible_match_the_adapter_cannot_read_keeps_the_record_ambiguous(
    entry: dict[str, Any],
) -> None:
    # when the lookup lists a usage that may be this record's but cannot be read
    result, store = settle(entry)
    # then the record stays ambiguous (queued, looked up again), never posted on a guess
    assert result is not None and result.failure is FailureKind.AMBIGUOUS
    assert settled_ids(store) == []


def test_a_listing_that_does_not_end_keeps_the_record_ambiguous() -> None:
    # given Piriod's listing never ending (the client gives up at its page bound)
    clock = Clock(FIRST_ATTEMPT.timestamp() + 120)
    piriod = FakePiriod(clock, endless=True)
    store = FakeKeyStore(clock)
    submitter = Submitter(piriod, store, 1.0, 0.0, clock=clock)
    claim = store.claim(usage(), Deadline.after(30), settling=True)
    # when a record is settled
    sub = Submission(0, usage(), TENANT)
    result = submitter._settle(claim, sub, sub.usage, FIRST_ATTEMPT.timestamp(), Deadline.after(30))
    # then it stays ambiguous
    assert result is not None and result.failure is FailureKind.AMBIGUOUS
