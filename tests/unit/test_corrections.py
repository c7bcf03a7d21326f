"""Reading a corrections delivery (SPEC 10): all-or-nothing validation, every bound named by
entry index and field, before anything is read or accepted."""

from __future__ import annotations

import json
from typing import Any

import pytest

from piriod_adapter.corrections import MAX_CORRECTION_KEY_LENGTH, parse_corrections
from piriod_adapter.models import MAX_BATCH
from piriod_adapter.signatures import MAX_ID_LENGTH as MAX_WEBHOOK_ID_LENGTH
from piriod_adapter.validation import BodyError


def body(*entries: dict[str, Any]) -> bytes:
    return json.dumps({"corrections": list(entries)}).encode()


def problems(raw: bytes, counting: Any = lambda source: None) -> list[tuple[int | None, str]]:
    with pytest.raises(BodyError) as caught:
        parse_corrections(raw, counting)
    assert caught.value.status == 422
    return [(p.index, p.field) for p in caught.value.problems]


def test_every_key_the_adapter_holds_can_be_named() -> None:
    # given the longest key the adapter holds: a record without an idempotency_key, the
    # last of a full batch, delivered with the longest webhook-id it accepts
    longest = "w" * MAX_WEBHOOK_ID_LENGTH + f":{MAX_BATCH - 1}"
    # when a correction names it, then it is read as it is
    [entry] = parse_corrections(
        body({"action": "cancel", "key": longest, "correction_id": "c"}), lambda s: None
    )
    assert entry.key == longest
    # and a key longer than any the adapter can hold is a 422 naming it
    too_long = "k" * (MAX_CORRECTION_KEY_LENGTH + 1)
    assert problems(body({"action": "cancel", "key": too_long, "correction_id": "c"})) == [
        (0, "key")
    ]


def test_an_amend_of_an_event_is_bounded_as_the_event_was() -> None:
    # given a source summing its events into windows (a total keeps 18 decimal places) and
    # one counting them
    from piriod_adapter.aggregate import Aggregate

    specs = {
        "sums": Aggregate(function="sum", window="PT1M"),
        "counts": Aggregate(function="count", window="PT1M"),
    }

    def amend(source: str, quantity: str) -> bytes:
        entry = {"action": "amend", "key": "e-1", "source": source, "correction_id": "c"}
        return body({**entry, "quantity": quantity}).replace(
            f'"{quantity}"'.encode(), quantity.encode()
        )

    # when an amend of a summed event has 18 decimal places, then it is read
    [entry] = parse_corrections(amend("sums", "1." + "1" * 18), specs.get)
    assert entry.quantity is not None
    # and with 19, or any amend of a counted event, it is a 422 naming quantity
    assert problems(amend("sums", "1." + "1" * 19), specs.get) == [(0, "quantity")]
    assert problems(amend("counts", "2"), specs.get) == [(0, "quantity")]
    # and a source that does not aggregate (or is not configured) bounds nothing more
    [entry] = parse_corrections(amend("plain", "1." + "1" * 19), specs.get)
    assert entry.quantity is not None


def _size(value: dict[str, Any]) -> int:
    """DynamoDB's size of an attribute value (strings in UTF-8 bytes, numbers by digits)."""
    (kind, inner), *_ = value.items()
    if kind == "S":
        return len(inner.encode("utf-8", "surrogatepass"))
    if kind == "N":
        return len(inner.lstrip("-").replace(".", "").strip("0") or "0") // 2 + 2
    if kind == "BOOL":
        return 1
    if kind == "L":
        return 3 + sum(1 + _size(v) for v in inner)
    assert kind == "M"
    return 3 + sum(1 + len(k.encode()) + _size(v) for k, v in inner.items())


def test_a_key_with_the_most_corrections_of_the_longest_ids_stays_far_below_400_kb() -> None:
    # given the most corrections a key takes, each an amend to the longest quantity with the
    # longest correction id (255 characters of 4 bytes in UTF-8), each one distinct
    from piriod_adapter import table

    quantity = "9" * 20 + "." + "9" * 18
    revisions: list[dict[str, Any]] = []
    remembered: dict[str, dict[str, Any]] = {}
    for n in range(table.MAX_CORRECTIONS):
        correction_id = f"{n:04d}" + "\U0001f600" * 251
        request = table.accept_correction("k#v1/usages#k", "amend", quantity, correction_id, 0)
        values = request["ExpressionAttributeValues"]
        revisions += values[":entry"]["L"]
        remembered[request["ExpressionAttributeNames"]["#cid"]] = {"N": str(n + 1)}
    # when they are all accepted on its item, then its list of revisions and the ids it
    # remembers take less than 300 KB of DynamoDB's 400 KB
    size = len("revisions") + _size({"L": revisions})
    size += sum(len(name) + _size(value) for name, value in remembered.items())
    assert size < 300 * 1024, size
    # and each id is told apart by its whole text (its attribute), one attribute per id
    assert len(remembered) == table.MAX_CORRECTIONS
