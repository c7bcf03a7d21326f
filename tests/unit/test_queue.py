"""The queue module's SQS batching, with botocore's Stubber (the real client, no network):
SendMessageBatch takes at most 10 messages and 256 KiB a call."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

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


@pytest.fixture
def sqs() -> Iterator[Any]:
    client: Any = boto3.client(
        "sqs", region_name="eu-west-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    with Stubber(client) as stubber:
        client.stubber = stubber
        yield client
        stubber.assert_no_pending_responses()


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


def batch_answer(sqs: Any, url: str, ids: list[int], failed: frozenset[int] = frozenset()) -> None:
    sqs.stubber.add_response(
        "send_message_batch",
        {
            "Successful": [
                {"Id": str(i), "MessageId": f"m{i}", "MD5OfMessageBody": "x"}
                for i in ids
                if i not in failed
            ],
            "Failed": [
                {"Id": str(i), "SenderFault": False, "Code": "InternalError"} for i in failed
            ],
        },
        {"QueueUrl": url, "Entries": ANY},
    )


def test_twenty_five_messages_go_ten_at_a_time_per_queue(sqs: Any) -> None:
    # given 23 records for ReplayQueue and 2 for DeadLetterQueue
    sends = [(REPLAY, message(n), 0) for n in range(23)] + [
        (DEAD_LETTER, message(n), 0) for n in range(23, 25)
    ]
    # then SQS is asked in calls of at most ten, one queue each: 10, 10, 3 and 2
    for chunk in ([*range(10)], [*range(10, 20)], [*range(20, 23)]):
        batch_answer(sqs, REPLAY_URL, chunk)
    batch_answer(sqs, DEAD_URL, [23, 24], failed=frozenset({24}))
    queue = FailureQueue(lambda: sqs, REPLAY_URL, DEAD_URL)
    # when they are sent
    placed = queue.send_all(sends)
    # and each message SQS took has its place (the one it refused has none)
    assert [p.message_id if p else None for p in placed] == [f"m{n}" for n in range(24)] + [None]
    assert {p.fate for p in placed[:23] if p} == {Fate.QUEUED}
    assert placed[23] is not None and placed[23].fate is Fate.REJECTED


def test_a_call_never_carries_more_than_the_batch_byte_limit(sqs: Any) -> None:
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
    calls: list[int] = []
    batch_answer(sqs, REPLAY_URL, [0, 1, 2])
    batch_answer(sqs, REPLAY_URL, [3, 4])
    queue = FailureQueue(lambda: sqs, REPLAY_URL, DEAD_URL)
    sqs.meta.events.register(
        "before-parameter-build.sqs.SendMessageBatch",
        lambda params, **_: calls.append(
            sum(len(e["MessageBody"].encode()) for e in params["Entries"])
        ),
    )
    placed = queue.send_all([(REPLAY, m, 0) for m in padded])
    assert all(p is not None for p in placed)
    assert len(calls) == 2 and max(calls) <= MAX_BATCH_BYTES
