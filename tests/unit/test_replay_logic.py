"""Pure pieces of the Piriod client and replay: no network."""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from piriod_adapter.models import Failure, FailureKind, QueuedRecord
from piriod_adapter.piriod import _error_map, _retry_after
from piriod_adapter.replay import MAX_VISIBILITY_SECONDS, backoff_seconds, consumer_sink


class FakeQueue:
    def __init__(self) -> None:
        self.dead: list[QueuedRecord] = []

    def to_dead_letter(self, message: QueuedRecord) -> str:
        self.dead.append(message)
        return "id"


def message(kind: FailureKind) -> QueuedRecord:
    now = datetime.now(UTC)
    return QueuedRecord(
        subscription_line=1,
        date_time="2026-11-01T00:00:00Z",
        quantity=Decimal("1.10"),
        idempotency_key="k",
        scope="v1/usages",
        workspace="w",
        test_mode=False,
        failure=Failure(kind=kind, at=now),
        attempts=3,
        first_failure_at=now,
    )


@pytest.mark.parametrize(
    ("header", "expected"), [("7", 7.0), ("0", 0.0), (None, None), ("soon", None)]
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
        (b'["bad"]', {"non_field_errors": ["['bad']"]}),
    ],
)
def test_piriod_400_bodies_become_field_maps_of_lists(
    body: bytes, expected: dict[str, list[str]]
) -> None:
    assert _error_map(body) == expected


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff_seconds(n, 60) for n in (1, 2, 3, 4)] == [60, 120, 240, 480]
    assert backoff_seconds(30, 60) == MAX_VISIBILITY_SECONDS


def test_replay_sink_keeps_transient_failures_in_place_until_the_last_attempt() -> None:
    queue = FakeQueue()
    # given a transient failure before the last attempt: the message stays where it is
    kept = consumer_sink(queue, last_attempt=False)(message(FailureKind.TRANSIENT))  # type: ignore[arg-type]
    assert kept.failure.kind is FailureKind.TRANSIENT and queue.dead == []
    # on the last attempt it becomes an exhausted dead letter
    moved = consumer_sink(queue, last_attempt=True)(message(FailureKind.AMBIGUOUS))  # type: ignore[arg-type]
    assert moved.failure.kind is FailureKind.EXHAUSTED and queue.dead == [moved]
    # and a rejection always goes to the dead-letter queue as rejected
    rejected = consumer_sink(queue, last_attempt=False)(message(FailureKind.REJECTED))  # type: ignore[arg-type]
    assert rejected.failure.kind is FailureKind.REJECTED and queue.dead[-1] is rejected


def test_queue_message_round_trips_with_exact_quantity() -> None:
    original = message(FailureKind.TRANSIENT)
    again = QueuedRecord.from_json(original.to_json())
    assert again == original and str(again.quantity) == "1.10"
