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
    batch_get(client.stubber, [{"pk": {"S": WINDOW.pk}, "open_gen": {"N": "0"}}])
    batch_get(client.stubber, [{"pk": {"S": WINDOW.gen_pk(0)}}])
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
    batch_get(client.stubber, [])
    batch_get(client.stubber, [{"pk": {"S": WINDOW.gen_pk(0)}, "state": {"S": "closed"}}])
    store = WindowStore(client, TABLE, shards=8)
    # when a delivery asks which generation its events join
    opens = store.open_generations([WINDOW])
    # then the next one
    assert opens[WINDOW].generation == 1
