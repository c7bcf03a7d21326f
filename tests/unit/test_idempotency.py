"""The DynamoDB store's reading of refused conditions, with a fake client (no network)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from botocore.exceptions import ClientError

from piriod_adapter.clock import Deadline
from piriod_adapter.idempotency import IdempotencyStore, StoreUnavailable
from piriod_adapter.lifecycle import KeyStatus
from piriod_adapter.models import KeyKind, Usage, UsageKey
from piriod_adapter.table import key_pk, key_text

USAGE = Usage(
    subscription_line=1,
    date_time=datetime(2026, 11, 30, tzinfo=UTC),
    quantity=Decimal("1"),
    key=UsageKey(kind=KeyKind.EXPLICIT, scope="v1/usages", text="k"),
)


class Copy(ClientError):
    """A ConditionalCheckFailedException class built by another thread's race in botocore:
    not the class `client.exceptions` names."""


class Client:
    class exceptions:
        class ConditionalCheckFailedException(ClientError):
            pass

    def __init__(self, code: str) -> None:
        self.code = code
        self.updates = 0

    def _refuse(self, item: dict[str, Any] | None = None) -> None:
        response: Any = {"Error": {"Code": self.code, "Message": "no"}}
        if item is not None:
            response["Item"] = item
        raise Copy(response, "PutItem")

    def put_item(self, **kwargs: Any) -> None:
        self._refuse()

    def update_item(self, **kwargs: Any) -> None:
        self.updates += 1
        self._refuse({"pk": {"S": "x"}, "status": {"S": "posted"}, "usage_id": {"N": "9"}})


def test_a_refused_condition_is_read_by_its_code_whatever_its_class() -> None:
    # given DynamoDB refusing a claim's condition, raised as a copy of the exception class
    store = IdempotencyStore(Client("ConditionalCheckFailedException"), "t", 30)  # type: ignore[arg-type]
    # when the key is claimed
    claim = store.claim(USAGE, Deadline.after(10))
    # then it is a key held elsewhere (a duplicate to the caller), not a store that is down
    assert not claim.acquired and claim.previous is not None and claim.previous.usage_id == 9


def test_any_other_error_is_a_store_that_is_down() -> None:
    store = IdempotencyStore(Client("ProvisionedThroughputExceededException"), "t", 30)  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable):
        store.claim(USAGE, Deadline.after(10))


@pytest.mark.parametrize(
    ("scope", "text"),
    [("v1/sources/meter", "evt-1"), ("v1/sources/a#b", "x#y"), ("v1/sources/s", "é" * 40)],
)
def test_a_key_is_read_back_from_its_item_key(scope: str, text: str) -> None:
    # given an event's key short enough to be kept as it is
    pk = key_pk(UsageKey(kind=KeyKind.EVENT, scope=scope, text=text))
    # when its text is read back, then it is the key's own, and only for its kind and scope
    assert key_text(pk, KeyKind.EVENT, scope) == text
    assert key_text(pk, KeyKind.EXPLICIT, scope) is None
    assert key_text(pk, KeyKind.EVENT, scope + "x") is None


def test_a_key_kept_under_a_digest_is_not_read_back() -> None:
    # given an event's key too long for an item key
    key = UsageKey(kind=KeyKind.EVENT, scope="v1/sources/s", text="e" * 2000)
    pk = key_pk(key)
    # when its text is read back, then there is none: a digest is no key
    assert "e" * 100 not in pk
    assert key_text(pk, KeyKind.EVENT, key.scope) is None


class LockedKeys:
    """DynamoDB holding keys locked by another attempt until `until` (real time), each read
    of them counted."""

    def __init__(self, seconds: float) -> None:
        self.until = time.time() + seconds
        self.gets = 0
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def _item(self, pk: str) -> dict[str, Any]:
        locked = time.time() < self.until
        status = "in_progress" if locked else "posted"
        return {
            "pk": {"S": pk},
            "status": {"S": status},
            "lock_expires": {"N": str(self.until + 60 if locked else 0)},
            "usage_id": {"N": "9"},
        }

    def get_item(self, **kwargs: Any) -> dict[str, Any]:
        with self.lock:
            self.gets += 1
        return {"Item": self._item(kwargs["Key"]["pk"]["S"])}

    def batch_get_item(self, **kwargs: Any) -> dict[str, Any]:
        [(table, request)] = kwargs["RequestItems"].items()
        with self.lock:
            self.batches.append(len(request["Keys"]))
        return {"Responses": {table: [self._item(k["pk"]["S"]) for k in request["Keys"]]}}


def test_keys_waited_on_together_are_polled_together() -> None:
    # given 20 records waiting on their keys, each held by a twin for about a second
    client = LockedKeys(seconds=1.0)
    store = IdempotencyStore(client, "t", 30)  # type: ignore[arg-type]
    states: dict[str, Any] = {}

    def wait(n: int) -> None:
        states[f"k{n}"] = store.wait_while_locked(f"k{n}", Deadline.after(20), at_most=10)

    # when they wait side by side
    waiters = [threading.Thread(target=wait, args=(n,)) for n in range(20)]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join()
    # then each sees its key done once the twin finishes
    assert len(states) == 20
    assert all(s is not None and s.status is KeyStatus.POSTED for s in states.values())
    # and the store was asked each key once, then all of them together a few times a second
    # (one GetItem each every 0.2 s would be about 100 reads)
    assert client.gets == 20
    assert len(client.batches) <= 15 and max(client.batches) > 1


class HotKeys(LockedKeys):
    """As LockedKeys, freeing `done` keys at once; batch reads leave `hot` keys unprocessed
    (their partition throttled) and take `batch_seconds`."""

    def __init__(self, done: set[str], hot: set[str], batch_seconds: float = 0.0) -> None:
        super().__init__(seconds=60.0)
        self.done, self.hot, self.batch_seconds = done, hot, batch_seconds

    def _item(self, pk: str) -> dict[str, Any]:
        item = super()._item(pk)
        if pk in self.done:
            item.update(status={"S": "posted"}, lock_expires={"N": "0"})
        return item

    def batch_get_item(self, **kwargs: Any) -> dict[str, Any]:
        time.sleep(self.batch_seconds)
        [(table, request)] = kwargs["RequestItems"].items()
        keys = request["Keys"]
        return {
            "Responses": {
                table: [self._item(k["pk"]["S"]) for k in keys if k["pk"]["S"] not in self.hot]
            },
            "UnprocessedKeys": {table: {"Keys": [k for k in keys if k["pk"]["S"] in self.hot]}},
        }


def _waits(store: IdempotencyStore, pks: list[str], seconds: float) -> dict[str, Any]:
    """Each key waited on in its own thread: (its status, or the error raised; seconds)."""
    out: dict[str, Any] = {}

    def wait(pk: str) -> None:
        began = time.time()
        try:
            state = store.wait_while_locked(pk, Deadline.after(seconds), at_most=seconds)
            out[pk] = (state.status if state else None, time.time() - began)
        except StoreUnavailable as exc:
            out[pk] = (exc, time.time() - began)

    threads = [threading.Thread(target=wait, args=(pk,)) for pk in pks]
    for thread in threads:
        thread.start()
        time.sleep(0.01)
    for thread in threads:
        thread.join()
    return out


def test_a_key_whose_batch_read_is_throttled_fails_no_other_waiter() -> None:
    # given (found by a second reviewer) a waiter on a key held for good whose batch reads
    # are throttled, and another waiter on a key whose holder then finished
    client = HotKeys(done=set(), hot={"b"})
    store = IdempotencyStore(client, "t", 30, sleep=lambda _: time.sleep(0.01))  # type: ignore[arg-type]
    threading.Timer(0.2, lambda: client.done.add("a")).start()
    # when both wait, then the other sees its key done (read alone), whatever the hot key does
    out = _waits(store, ["a", "b"], seconds=1.0)
    assert out["a"][0] is KeyStatus.POSTED


def test_a_slow_poll_keeps_no_other_waiter_past_its_time() -> None:
    # given (found by a second reviewer) a poll of the keys waited on that takes 3 s
    client = HotKeys(done=set(), hot=set(), batch_seconds=3.0)
    store = IdempotencyStore(client, "t", 30)  # type: ignore[arg-type]
    threading.Timer(0.1, lambda: client.done.add("a")).start()
    # when a waiter's key is done meanwhile, then it is told within about a poll's time
    out = _waits(store, ["b", "a"], seconds=1.0)
    assert out["a"][0] is KeyStatus.POSTED and out["a"][1] < 1.5
