"""Settling an ambiguous post by lookup: only a listed usage that is surely this record's,
created since (about) the first attempt, settles it; one the adapter cannot read keeps the
record ambiguous; nothing leads to a second post on a guess."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from piriod_adapter.clock import Deadline
from piriod_adapter.idempotency import Claim
from piriod_adapter.models import KeyKind, Tenant, Usage, UsageKey
from piriod_adapter.piriod import PostKind
from piriod_adapter.submit import CLOCK_SKEW_SECONDS, Submission, Submitter

FIRST_ATTEMPT = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
USAGE = Usage(
    subscription_line=42,
    date_time=datetime(2026, 11, 26, 9, 0, tzinfo=UTC),
    quantity=Decimal("1.50"),
    key=UsageKey(kind=KeyKind.EXPLICIT, scope="v1/usages", text="k"),
)


class Store:
    def __init__(self) -> None:
        self.settled: list[int] = []

    def accounted_for(self, pk: str, usage: Usage) -> tuple[set[int], bool]:
        return {7}, False  # usage 7 belongs to another, identical record of ours

    def settle(self, pk: str, token: str, usage_id: int) -> None:
        self.settled.append(usage_id)


class Piriod:
    def __init__(self, listed: list[dict[str, Any]]) -> None:
        self.listed = listed

    def find_usages(self, usage: Usage, tenant: Tenant, deadline: Deadline) -> list[Any]:
        return self.listed


def listed(usage_id: Any = 11, created: Any = "2026-11-26T10:00:01Z", **fields: Any) -> Any:
    entry = {
        "id": usage_id,
        "subscription_line": 42,
        "date_time": "2026-11-26T09:00:00Z",
        "quantity": "1.5",  # Piriod's formatting of 1.50
        "created": created,
    }
    return {**entry, **fields}


def settle(*entries: dict[str, Any]) -> tuple[Any, list[int]]:
    store = Store()
    later = FIRST_ATTEMPT.timestamp() + 120
    submitter = Submitter(Piriod(list(entries)), store, 1.0, 0.0, clock=lambda: later)  # type: ignore[arg-type]
    claim = Claim(pk="pk", token="t", previous=None)
    sub = Submission(0, USAGE, Tenant(workspace="w", test_mode=False))
    since = FIRST_ATTEMPT.timestamp()
    return submitter._settle(claim, sub, since, Deadline.after(30)), store.settled


def test_a_matching_usage_created_since_the_first_attempt_settles_it() -> None:
    result, settled = settle(listed())
    assert result is not None and result.kind is PostKind.CREATED and settled == [11]


def test_a_matching_usage_within_the_clock_skew_allowance_settles_it() -> None:
    # given Piriod's clock some minutes behind ours
    early = FIRST_ATTEMPT - timedelta(seconds=CLOCK_SKEW_SECONDS - 10)
    result, settled = settle(listed(created=early.isoformat()))
    assert result is not None and result.kind is PostKind.CREATED and settled == [11]


def test_nothing_listed_or_only_others_means_not_there() -> None:
    long_before = (FIRST_ATTEMPT - timedelta(hours=1)).isoformat()
    assert settle()[0] is None
    assert settle(listed(usage_id=7))[0] is None  # another record's usage
    assert settle(listed(created=long_before))[0] is None  # existed before our attempt
    assert settle(listed(quantity="2"))[0] is None  # surely another record
    assert settle(listed(subscription_line=43))[0] is None


@pytest.mark.parametrize(
    "entry",
    [
        listed(usage_id="11"),
        listed(usage_id=None),
        listed(created=None),
        listed(created="2026-11-26T10:00:01"),  # no offset: whose clock?
        listed(created="yesterday"),
        listed(quantity="one and a half"),
        listed(date_time=None),
    ],
)
def test_a_possible_match_the_adapter_cannot_read_keeps_the_record_ambiguous(
    entry: dict[str, Any],
) -> None:
    # when the lookup lists a usage that may be this record's but cannot be read
    result, settled = settle(entry)
    # then the record stays ambiguous (queued, looked up again), never posted on a guess
    assert result is not None and result.kind is PostKind.AMBIGUOUS and settled == []
