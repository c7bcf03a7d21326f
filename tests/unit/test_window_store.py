"""The DynamoDB window store's reading of what DynamoDB answers, with botocore's Stubber (the
real client's request and response handling, no network)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from piriod_adapter.table import WindowId
from piriod_adapter.windows import WindowStore

TABLE = "keys"
WINDOW = WindowId("meter", 7, datetime(2026, 12, 1, 10, 0, tzinfo=UTC), "sum-60s")


@pytest.fixture
def client() -> Iterator[Any]:
    client: Any = boto3.client(
        "dynamodb", region_name="eu-west-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    with Stubber(client) as stubber:
        client.stubber = stubber
        yield client
        stubber.assert_no_pending_responses()


def batch_get(stubber: Stubber, items: list[dict[str, Any]]) -> None:
    stubber.add_response("batch_get_item", {"Responses": {TABLE: items}, "UnprocessedKeys": {}})


def test_a_generation_item_read_without_its_state_is_not_taken_as_closed(client: Any) -> None:
    # given the window's head says generation 0, and generation 0's item is read halfway
    # through its creation by another delivery's transaction: its key, not yet its state
    # (what moto's UpdateItem showed a concurrent reader; DynamoDB never does, but the code
    # must not depend on it)
    batch_get(
        client.stubber,
        [{"pk": {"S": WINDOW.pk}, "open_gen": {"N": "0"}}, {"pk": {"S": WINDOW.gen_pk(0)}}],
    )
    store = WindowStore(client, TABLE, shards=8)
    # when a delivery asks which generation its events join
    opens = store.open_generations([WINDOW])
    # then it is generation 0, still open (only a state that says closed means closed); the
    # delivery writes the generation's item with its events (if it is not there yet)
    assert opens[WINDOW].generation == 0
    assert opens[WINDOW].exists is False


def test_a_generation_that_says_closed_sends_events_to_the_next(client: Any) -> None:
    # given generation 0 closed (its head already moved on is the usual case; here only the
    # generation's own state says so)
    batch_get(client.stubber, [{"pk": {"S": WINDOW.gen_pk(0)}, "state": {"S": "closed"}}])
    store = WindowStore(client, TABLE, shards=8)
    # when a delivery asks which generation its events join
    opens = store.open_generations([WINDOW])
    # then the next one
    assert opens[WINDOW].generation == 1


def _cancel(stubber: Stubber, reasons: list[dict[str, Any]]) -> None:
    stubber.add_client_error(
        "transact_write_items",
        service_error_code="TransactionCanceledException",
        http_status_code=400,
        response_meta={},
        modeled_fields={"CancellationReasons": reasons},
    )


def _chunk(store: WindowStore, windows: list[WindowId], events: int, create: list[bool]) -> Any:
    """A chunk of `events` events of the first window, and one addition per window (a new
    generation's item for those `create` says)."""
    from decimal import Decimal

    from piriod_adapter.models import KeyKind, Usage, UsageKey
    from piriod_adapter.windows import EventWrite, NewGeneration, WindowWrite

    new = NewGeneration(60, 1.0, "sum", False, 2_000_000_000)
    usages = [
        Usage(
            subscription_line=7,
            date_time=windows[0].start,
            quantity=Decimal(1),
            key=UsageKey(kind=KeyKind.EVENT, scope="v1/sources/meter", text=f"e{n}"),
        )
        for n in range(events)
    ]
    return store.count(
        [EventWrite(f"e#{n}", u, windows[0], 10**18, 1) for n, u in enumerate(usages)],
        [
            WindowWrite(w, 0, 0, 8, 10**18 * events, events, 1, new if make else None)
            for w, make in zip(windows, create, strict=True)
        ],
    )


NONE, REFUSED = {"Code": "None"}, {"Code": "ConditionalCheckFailed"}


def test_a_cancelled_transaction_is_read_by_the_position_of_each_reason(client: Any) -> None:
    # given a chunk of 3 events and 3 windows, the first and third writing a new generation:
    # actions 0-2 the event keys, 3-5 one shard addition per window, 6-7 the two new items
    a, b, c = (
        WindowId("meter", 7, datetime(2026, 12, 1, 10, minute, tzinfo=UTC), "sum-60s")
        for minute in (1, 2, 3)
    )
    store = WindowStore(client, TABLE, shards=8)
    # when DynamoDB refuses event 1 (it exists, as another record's), the shard of window b
    # (closed), the shard of window c (no room), and the new item of window c (closed)
    _cancel(
        client.stubber,
        [
            NONE,
            {**REFUSED, "Item": {"fingerprint": {"S": "theirs"}}},
            NONE,
            NONE,
            {**REFUSED, "Item": {"closed": {"BOOL": True}}},
            {**REFUSED, "Item": {"total": {"N": "5"}}},
            NONE,
            REFUSED,
        ],
    )
    result = _chunk(store, [a, b, c], 3, [True, False, True])
    # then each reason is taken for what stands at its position
    assert not result.committed and not result.conflict
    assert result.duplicates == {1: "theirs"}
    assert result.closed == {1, 2}  # window b's shard; window c's new item (its 2nd create)
    assert result.full == {2}


def test_a_cancellation_for_a_conflict_or_an_unknown_reason_is_tried_again(client: Any) -> None:
    store = WindowStore(client, TABLE, shards=8)
    # given a chunk whose transaction met another on one item, or was cancelled without a
    # reason the store knows
    _cancel(client.stubber, [NONE, {"Code": "TransactionConflict"}, NONE])
    _cancel(client.stubber, [NONE, NONE, NONE])
    # then both are conflicts (try again), with nothing else said
    for _ in range(2):
        result = _chunk(store, [WINDOW], 1, [True])
        assert (result.committed, result.conflict) == (False, True)
        assert not (result.duplicates or result.closed or result.full)


def test_a_throttled_transaction_is_a_store_that_is_down(client: Any) -> None:
    from piriod_adapter.table import StoreUnavailable

    # given a transaction cancelled because a request was throttled
    _cancel(client.stubber, [{"Code": "ThrottlingError"}, NONE, NONE])
    store = WindowStore(client, TABLE, shards=8)
    # then it is not read as the events' fault: the store is unavailable (a 503)
    with pytest.raises(StoreUnavailable):
        _chunk(store, [WINDOW], 1, [True])
