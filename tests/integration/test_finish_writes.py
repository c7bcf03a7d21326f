"""An attempt's end on a key its claim put new writes only what changed (table.finish with
`written`): on DynamoDB (moto), the item it leaves is the item the whole end write leaves,
whatever the attempt wrote before it and whatever corrections were accepted meanwhile."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piriod_adapter.clock import Deadline
from piriod_adapter.idempotency import IdempotencyStore, Result
from piriod_adapter.lifecycle import KeyStatus, Taker
from piriod_adapter.models import KeyKind, Usage, UsageKey
from piriod_adapter.table import CORRECTING, Holding, Waiting, key_pk
from piriod_devkit.aws import MotoServer, client, provision
from tests.conftest import TOKEN
from tests.unit.fakes import Clock

_unique = iter(range(10**9))

holdings = st.one_of(
    st.none(),
    st.builds(Holding, st.sampled_from(["1.5", "2"]), st.one_of(st.none(), st.integers(1, 99))),
)
waitings = st.builds(
    Waiting,
    st.sampled_from(["replay", "dead-letter", CORRECTING]),
    st.sampled_from(["m-1", "m-2"]),
    st.just('{"record": 1}'),
    st.just("2026-11-30T10"),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("mark_posting"), st.sampled_from([None, "2.5"])),
        st.tuples(st.just("mark_deleting"), st.integers(1, 99), st.one_of(st.none(), waitings)),
        st.tuples(st.just("wait_on_key"), waitings),
        st.tuples(st.just("hold"), holdings),
        st.tuples(st.just("accept"), st.sampled_from(["cancel", "amend"])),
    ),
    max_size=4,
)
ends = st.fixed_dictionaries(
    {
        "status": st.sampled_from(
            [KeyStatus.POSTED, KeyStatus.QUEUED, KeyStatus.REJECTED, KeyStatus.CANCELLED]
        ),
        "usage_id": st.one_of(st.none(), st.integers(1, 99)),
        "ambiguous_since": st.one_of(st.none(), st.just(1_800_000_001.5)),
        "waiting": st.one_of(st.none(), waitings),
        "quantity": st.sampled_from([None, "2.5"]),
        "holding": holdings,
        "applied": st.one_of(st.none(), st.integers(0, 3)),
        "deleting": st.one_of(st.none(), st.integers(1, 99)),
        "kept": st.booleans(),
    }
)


@pytest.fixture(scope="module")
def stores(moto_server: MotoServer) -> tuple[IdempotencyStore, Any, str]:
    table = provision(moto_server.url, token=TOKEN, signing_secrets=[]).table
    dynamodb = client("dynamodb", moto_server.url)
    store = IdempotencyStore(dynamodb, table, 35, clock=Clock(1_800_000_000.0))
    return store, dynamodb, table


def _record(text: str) -> Usage:
    return Usage(
        subscription_line=41,
        date_time=datetime(2026, 11, 30, 10, tzinfo=UTC),
        quantity=Decimal("1.5"),
        key=UsageKey(kind=KeyKind.EXPLICIT, scope="v1/usages", text=text),
    )


def _attempt(store: IdempotencyStore, text: str, history: list[Any], end: dict[str, Any]) -> None:
    claim = store.claim(_record(text), _deadline(), Taker.WEBHOOK)
    assert claim.acquired
    for step in history:
        name, *args = step
        if name == "accept":
            quantity = None if args[0] == "cancel" else "3"
            store.accept(claim.pk, args[0], quantity, f"c-{next(_unique)}")
        else:
            getattr(store, name)(claim, *args)
    store.finish(Result(claim, **end))


def _deadline() -> Deadline:
    return Deadline.after(25.0)


def _item(dynamodb: Any, table: str, text: str) -> dict[str, Any]:
    item: dict[str, Any] = dynamodb.get_item(
        TableName=table, Key={"pk": {"S": key_pk(_record(text).key)}}, ConsistentRead=True
    )["Item"]
    # the key's own text, and the correction ids (each accepted once, with an id of its own)
    ignored = {"pk", "fingerprint", "revisions", *(k for k in item if k.startswith("cid_"))}
    kept = {k: v for k, v in item.items() if k not in ignored}
    if "waiting" in kept:  # its queue, without the shard its key's digest picks
        kept["waiting"] = {"S": kept["waiting"]["S"].split("#")[0]}
    return kept


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=steps, end=ends)
def test_an_end_written_over_a_new_key_leaves_the_item_the_whole_end_write_leaves(
    stores: tuple[IdempotencyStore, Any, str], history: list[Any], end: dict[str, Any]
) -> None:
    # given two new keys, each claimed by an attempt that writes the same things before its end
    store, dynamodb, table = stores
    slim, whole = f"slim-{next(_unique)}-{time.time_ns()}", f"whole-{next(_unique)}"
    # when one attempt's end writes what changed, and the other's writes everything
    _attempt(store, slim, history, end)
    forget = store._fresh  # the store then knows nothing of the second claim's item
    store._fresh = _Forgetful()
    try:
        _attempt(store, whole, history, end)
    finally:
        store._fresh = forget
    # then both keys hold the same
    assert _item(dynamodb, table, slim) == _item(dynamodb, table, whole)


class _Forgetful(dict[str, set[str]]):
    """A store's record of fresh claims that records none (every end is written whole)."""

    def __setitem__(self, key: str, value: set[str]) -> None:
        pass


def test_a_fresh_claims_end_write_is_the_smaller_one(
    stores: tuple[IdempotencyStore, Any, str],
) -> None:
    # given a new key claimed and posted (the common case)
    store, _, _ = stores
    sent: list[dict[str, Any]] = []
    real = store._call

    def recording(operation: str, what: str, request: dict[str, Any]) -> dict[str, Any]:
        sent.append(request)
        return real(operation, what, request)

    store._call = recording  # type: ignore[method-assign]
    try:
        text = f"posted-{next(_unique)}"
        claim = store.claim(_record(text), _deadline(), Taker.WEBHOOK)
        store.finish(Result(claim, KeyStatus.POSTED, usage_id=7))
    finally:
        del store._call
    # then its end sets only what the post changed, and removes only the attempt's lock
    update = sent[-1]["UpdateExpression"]
    assert update.count(" = ") == 5 and update.endswith("REMOVE lock_expires, lock_token, phase")
