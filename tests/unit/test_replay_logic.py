"""Pure pieces of the Piriod client and replay: no network."""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from piriod_adapter.lifecycle import Fate, Placement, Submission
from piriod_adapter.models import (
    Failure,
    FailureKind,
    KeyKind,
    QueuedRecord,
    Tenant,
    Usage,
    UsageKey,
)
from piriod_adapter.piriod import Answer, _error_map, _retry_after, usage_id_of
from piriod_adapter.queue import DEAD_LETTER, REPLAY
from piriod_adapter.replay import (
    MAX_VISIBILITY_SECONDS,
    Received,
    backoff_seconds,
    consumer_sink,
    settle_wait,
)


class FakeQueue:
    def __init__(self) -> None:
        self.sent: list[tuple[str, QueuedRecord, int]] = []

    def send(
        self, queue: str, message: QueuedRecord, delay: int = 0, fate: Fate = Fate.QUEUED
    ) -> Placement | None:
        self.sent.append((queue, message, delay))
        return Placement(queue, f"new-{len(self.sent)}", message, fate)


def message(
    kind: FailureKind, *, attempted: bool = True, ambiguous_since: Any = None
) -> QueuedRecord:
    now = datetime.now(UTC)
    return QueuedRecord(
        usage=Usage(
            subscription_line=1,
            date_time=datetime(2026, 11, 1, tzinfo=UTC),
            quantity=Decimal("1.10"),
            key=UsageKey(kind=KeyKind.EXPLICIT, scope="v1/usages", text="k"),
        ),
        tenant=Tenant(workspace="w", test_mode=False),
        failure=Failure(kind=kind, attempted=attempted, at=now),
        attempts=3,
        first_failure_at=now,
        ambiguous_since=ambiguous_since,
    )


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("0", 0.0), (None, None), ("soon", None), ("²", None), ("9" * 400, None)],
)
def test_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert _retry_after(header) == expected


def test_retry_after_http_date() -> None:
    header = email.utils.formatdate(time.time() + 30, usegmt=True)
    wait = _retry_after(header)
    assert wait is not None and 27 <= wait <= 31


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"subscription_line": ["Invalid pk."]}', {"subscription_line": ["Invalid pk."]}),
        (
            b'{"quantity": "A valid number is required."}',
            {"quantity": ["A valid number is required."]},
        ),
        (b"<html>oops</html>", {"non_field_errors": ["<html>oops</html>"]}),
        (b'["bad"]', {"non_field_errors": ['["bad"]']}),
        (b"[" * 10_000 + b"]" * 10_000, {"non_field_errors": ["[" * 500]}),
    ],
)
def test_piriod_400_bodies_become_field_maps_of_lists(
    body: bytes, expected: dict[str, list[str]]
) -> None:
    assert _error_map(Answer(400, {}, body)) == expected


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"id": 7}, 7),
        ({"id": 2**63 - 1}, 2**63 - 1),
        ({"id": 2**63}, None),
        ({"id": 0}, None),
        ({"id": True}, None),
        ({"id": "7"}, None),
        ({"id": Decimal("7.0")}, None),
        ([], None),
        (None, None),
    ],
)
def test_only_a_usable_usage_id_counts(document: Any, expected: int | None) -> None:
    assert usage_id_of(document) == expected


def test_backoff_grows_and_stays_below_the_sqs_ceiling_counted_from_receipt() -> None:
    assert [backoff_seconds(n, 60) for n in (1, 2, 3, 4)] == [60, 120, 240, 480]
    # given an attempt count whose back-off would pass 12 hours
    capped = backoff_seconds(30, 60)
    assert capped < MAX_VISIBILITY_SECONDS
    # then time already spent since the receive is taken off, so SQS never refuses it
    assert backoff_seconds(30, 60, since_receipt=120) == capped - 120
    assert backoff_seconds(10_000, 3600) < MAX_VISIBILITY_SECONDS


def sink_for(queue: FakeQueue, receive_count: int, delay: int = 0) -> Any:
    received = {0: Received("m-1", "{}", receive_count)}
    return consumer_sink(queue, received, 8, lambda message: delay)  # type: ignore[arg-type]


def sub() -> Submission:
    return Submission.from_message(message(FailureKind.TRANSIENT))


def test_replay_sink_keeps_tried_failures_in_place_until_the_last_attempt() -> None:
    queue = FakeQueue()
    # given a transient failure before the last attempt: the message stays where it is
    kept = sink_for(queue, 3)(sub(), message(FailureKind.TRANSIENT))
    assert kept is not None
    assert (kept.queue, kept.message_id, kept.fate) == (REPLAY, "m-1", Fate.RETRYING)
    assert queue.sent == []
    # on the last attempt it becomes an exhausted dead letter
    moved = sink_for(queue, 8)(sub(), message(FailureKind.AMBIGUOUS))
    assert moved is not None
    assert moved.queue == DEAD_LETTER and moved.message.failure.kind is FailureKind.EXHAUSTED
    assert moved.fate is Fate.EXHAUSTED
    # and a rejection always goes to the dead-letter queue as rejected
    rejected = sink_for(queue, 1)(sub(), message(FailureKind.REJECTED))
    assert rejected is not None
    assert rejected.queue == DEAD_LETTER
    assert rejected.message.failure.kind is FailureKind.REJECTED
    assert rejected.fate is Fate.REJECTED


def test_replay_sink_resends_a_record_that_was_not_tried() -> None:
    # given a record whose attempt never asked Piriod (time ran out, or too early to settle)
    queue = FakeQueue()
    # when it is stored, even on what would be the last attempt
    placed = sink_for(queue, 8, delay=42)(sub(), message(FailureKind.TRANSIENT, attempted=False))
    assert placed is not None
    # then it is a fresh ReplayQueue message, delayed, not an exhausted dead letter
    assert placed.queue == REPLAY and placed.fate is Fate.QUEUED
    assert placed.message_id.startswith("new-")
    assert queue.sent[0][0] == REPLAY and queue.sent[0][2] == 42


def test_settle_wait_counts_down_from_the_unseen_post() -> None:
    now = datetime(2026, 11, 1, tzinfo=UTC)
    pending = message(FailureKind.AMBIGUOUS, ambiguous_since=now - timedelta(seconds=20))
    assert settle_wait(pending, 60, now=now.timestamp()) == 41
    assert settle_wait(pending, 10, now=now.timestamp()) == 0
    assert settle_wait(message(FailureKind.TRANSIENT), 60) == 0


def test_queue_message_round_trips_with_exact_quantity() -> None:
    original = message(FailureKind.TRANSIENT)
    again = QueuedRecord.from_json(original.to_json())
    assert again == original and again.usage.quantity_text == "1.10"
    assert '"quantity":"1.10"' in original.to_json()
    assert '"date_time":"2026-11-01T00:00:00Z"' in original.to_json()
