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
