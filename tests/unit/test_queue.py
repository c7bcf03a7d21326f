"""The queue module's SQS batching, against a fake SQS client (no network):
SendMessageBatch takes at most 10 messages and 256 KiB a call."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from piriod_adapter.lifecycle import Fate
from piriod_adapter.models import (
    Failure,
    FailureKind,
    KeyKind,
    QueuedRecord,
    Tenant,
    Usage,
    UsageKey,
)
from piriod_adapter.queue import DEAD_LETTER, MAX_BATCH_BYTES, REPLAY, FailureQueue

REPLAY_URL, DEAD_URL = "https://sqs/replay", "https://sqs/dead"


class FakeSQS:
    """SendMessageBatch as SQS answers it, from any thread (the queue sends its calls side by
    side, so the order they arrive in is not fixed): every entry is taken but those whose Id
    is in `failed`; each call is recorded with its queue and entries."""

    def __init__(self, failed: frozenset[int] = frozenset()) -> None:
        self.failed = failed
        self.calls: list[tuple[str, list[dict[str, Any]]]] = []
        self._lock = threading.Lock()

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        assert 1 <= len(Entries) <= 10, "SQS takes 1 to 10 entries a call"
        with self._lock:
            self.calls.append((QueueUrl, Entries))
        return {
            "Successful": [
                {"Id": e["Id"], "MessageId": f"m{e['Id']}", "MD5OfMessageBody": "x"}
                for e in Entries
                if int(e["Id"]) not in self.failed
            ],
            "Failed": [
                {"Id": e["Id"], "SenderFault": False, "Code": "InternalError"}
                for e in Entries
                if int(e["Id"]) in self.failed
            ],
        }


def message(n: int, error: str = "") -> QueuedRecord:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    return QueuedRecord(
        usage=Usage(
            subscription_line=1 + n,
            date_time=now,
            quantity=Decimal(1),
            key=UsageKey(kind=KeyKind.EXPLICIT, scope="v1/usages", text=f"k{n}"),
        ),
        tenant=Tenant(workspace="w", test_mode=False),
        failure=Failure(kind=FailureKind.TRANSIENT, error=error or None, at=now),
        attempts=1,
        first_failure_at=now,
    )


def test_twenty_five_messages_go_ten_at_a_time_per_queue() -> None:
    # given 23 records for ReplayQueue and 2 for DeadLetterQueue, and an SQS that refuses one
    sends = [(REPLAY, message(n), 0) for n in range(23)] + [
        (DEAD_LETTER, message(n), 0) for n in range(23, 25)
    ]
    sqs = FakeSQS(failed=frozenset({24}))
    queue = FailureQueue(lambda: cast(Any, sqs), REPLAY_URL, DEAD_URL)
    # when they are sent
    placed = queue.send_all(sends)
    # then SQS is asked in calls of at most ten, one queue each: 10, 10, 3 and 2
    sizes = sorted((url, len(entries)) for url, entries in sqs.calls)
    assert sizes == [(DEAD_URL, 2), (REPLAY_URL, 3), (REPLAY_URL, 10), (REPLAY_URL, 10)]
    sent = sorted(int(e["Id"]) for url, entries in sqs.calls for e in entries if url == REPLAY_URL)
    assert sent == list(range(23))
    # and each message SQS took has its place (the one it refused has none)
    assert [p.message_id if p else None for p in placed] == [f"m{n}" for n in range(24)] + [None]
    assert {p.fate for p in placed[:23] if p} == {Fate.QUEUED}
    assert placed[23] is not None and placed[23].fate is Fate.REJECTED


def test_a_call_never_carries_more_than_the_batch_byte_limit() -> None:
    # given 5 records of about 60 KiB each (long error texts, as a 5xx detail can be)
    big = [message(n, error="x" * 400) for n in range(5)]
    padded = [
        m.model_copy(
            update={"usage": m.usage.model_copy(update={"original": {"pad": "y" * 60_000}})}
        )
        for m in big
    ]
    sizes = [len(m.to_json().encode()) for m in padded]
    assert all(50_000 < size < 70_000 for size in sizes)
    # then they are split so that no call passes 200 KiB of bodies: 3 and 2
    sqs = FakeSQS()
    queue = FailureQueue(lambda: cast(Any, sqs), REPLAY_URL, DEAD_URL)
    placed = queue.send_all([(REPLAY, m, 0) for m in padded])
    assert all(p is not None for p in placed)
    calls = [sum(len(e["MessageBody"].encode()) for e in entries) for _, entries in sqs.calls]
    assert len(calls) == 2 and max(calls) <= MAX_BATCH_BYTES
