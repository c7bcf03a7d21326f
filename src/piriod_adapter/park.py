"""Parking dead letters (SPEC section 5): no acknowledged record expires unseen.

SQS drops a message 14 days after it was first sent: its retention counts from its first
enqueue, also for a message the redrive policy moved from ReplayQueue to DeadLetterQueue. So
nothing may rely on SQS to keep a dead letter. Every hour ParkFunction walks DeadLetterQueue:
a message first sent 10 days ago or more (`PARK_AFTER_SECONDS`) is copied whole into
IdempotencyTable (its body, message id and first-sent time), then deleted from the queue. A
parked record is listed, shown, replayed and purged by the operator's commands like one in
the queue. Each run also measures the oldest dead letter, queued or parked
(`dead_letter_oldest_seconds`): DeadLetterAgeAlarm fires when it is 3 days old.

A message is parked before it is deleted: a run that stops in between parks it again (the
same item) and deletes it the next time; for a while it may be in both places, and a replay
of either posts it once (its key decides).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from aws_lambda_powertools.metrics import MetricUnit

from piriod_adapter.clock import Deadline
from piriod_adapter.models import QueuedRecord
from piriod_adapter.observability import logger, metrics
from piriod_adapter.queue import DEAD_LETTER, Held
from piriod_adapter.runtime import Runtime
from piriod_adapter.table import StoreUnavailable, Waiting

DAY = 86_400
PARK_AFTER_SECONDS = 10 * DAY  # SQS keeps a dead letter 14 days from its first enqueue
HOLD_SECONDS = 120  # messages are held while the queue is walked (an operator sees fewer)
WALK_LIMIT = 10_000  # messages one run walks at most (the next run walks again)


class DeadLetters(Protocol):
    def walk(self, queue: str, hold_seconds: int, limit: int) -> list[Held]: ...

    def delete(self, queue: str, receipt_handle: str) -> None: ...

    def release(self, queue: str, receipt_handles: list[str]) -> None: ...


class Parking(Protocol):
    def park(self, message_id: str, body: str, first_sent: datetime) -> None: ...

    def waiting(self, queue: str) -> list[Waiting]: ...


@dataclass
class ParkReport:
    walked: int = 0
    parked: int = 0
    left: int = 0  # due for parking, but not parked this run (a store down, no time)
    held_parked: int = 0  # records parked before, still waiting for a person
    oldest_seconds: float = 0.0  # the oldest dead letter, queued or parked, since first sent


def first_sent(message: Held) -> datetime:
    """When SQS first took the message (what its retention counts from): its SentTimestamp,
    or, if earlier, the failure time in its body (a message SQS moved keeps its body)."""
    at: datetime = message.sent_at
    try:
        failed: datetime = QueuedRecord.from_json(message.body).failure.at
    except ValueError:  # an unreadable message: SQS's time alone
        return at
    return min(at, failed)


def park_dead_letters(
    queue: DeadLetters,
    store: Parking,
    deadline: Deadline,
    clock: Callable[[], float] = time.time,
) -> ParkReport:
    """Park every dead letter first sent PARK_AFTER_SECONDS ago or more, and measure the
    oldest one (see the module's text). Raises StoreUnavailable when the parked records
    cannot be read (the next run tries again)."""
    now = clock()
    report = ParkReport()
    messages = queue.walk(DEAD_LETTER, HOLD_SECONDS, WALK_LIMIT)
    report.walked = len(messages)
    keep: list[str] = []
    for message in messages:
        sent = first_sent(message)
        age = now - sent.timestamp()
        if age < PARK_AFTER_SECONDS or deadline.remaining() <= 0:
            keep.append(message.receipt_handle)
            report.oldest_seconds = max(report.oldest_seconds, age)
            report.left += age >= PARK_AFTER_SECONDS
            continue
        try:
            store.park(message.message_id, message.body, sent)
            queue.delete(DEAD_LETTER, message.receipt_handle)
        except Exception as exc:  # it stays in the queue: the next run parks it
            logger.error(
                "dead letter not parked",
                extra={"message_id": message.message_id, "error": str(exc)},
            )
            keep.append(message.receipt_handle)
            report.left += 1
            report.oldest_seconds = max(report.oldest_seconds, age)
            continue
        report.parked += 1
        logger.warning(
            "dead letter parked before SQS could drop it",
            extra={"message_id": message.message_id, "first_sent": sent.isoformat()},
        )
    queue.release(DEAD_LETTER, keep)
    parked = store.waiting("parked")
    report.held_parked = len(parked)
    for waiting in parked:
        since = datetime.strptime(waiting.since, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        report.oldest_seconds = max(report.oldest_seconds, now - since.timestamp())
    return report


def run_park(
    runtime: Runtime, deadline: Deadline, clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """ParkFunction's run: park what is due, and publish the oldest dead letter's age (the
    metric DeadLetterAgeAlarm watches) and how many records are parked."""
    try:
        report = park_dead_letters(runtime.queue, runtime.store, deadline, clock)
    except StoreUnavailable as exc:
        logger.error("cannot read parked dead letters", extra={"error": str(exc)})
        metrics.add_metric(name="dead_letters_park_failures", unit=MetricUnit.Count, value=1)
        return {"error": str(exc)}
    metrics.add_metric(name="dead_letters_parked", unit=MetricUnit.Count, value=report.parked)
    metrics.add_metric(
        name="dead_letters_held_parked", unit=MetricUnit.Count, value=report.held_parked
    )
    metrics.add_metric(
        name="dead_letter_oldest_seconds",
        unit=MetricUnit.Seconds,
        value=round(report.oldest_seconds, 3),
    )
    result = report.__dict__.copy()
    logger.info("dead letters walked", extra=result)
    return result
