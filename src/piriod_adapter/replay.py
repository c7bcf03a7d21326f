"""Replay: re-post queued records through the same submit path as the webhook (SPEC 5).

A batch of ReplayQueue messages is submitted together, concurrently, like a delivery's
records. Attempts are counted in the message (`attempts`: posts or lookups tried so far) and
by SQS (each receive of a ReplayQueue message, towards the redrive policy's
maxReceiveCount). A receive in which Piriod was not asked anything (the function's time ran
out first, an unseen post is too recent to look up, another attempt holds the key) must not
use up an attempt: the record is sent again as a fresh message, whose receive count starts
over, and the received one is deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import ValidationError

from piriod_adapter.clock import Deadline
from piriod_adapter.idempotency import Taker
from piriod_adapter.models import FailureKind, QueuedRecord, Status, Usage
from piriod_adapter.observability import logger
from piriod_adapter.queue import DEAD_LETTER, REPLAY, FailureQueue, Placement
from piriod_adapter.submit import FailureSink, Outcome, Submission, Submitter
from piriod_adapter.tracing import tracer  # tracing

# SQS refuses a visibility timeout that reaches 12 hours after the message was received.
MAX_VISIBILITY_SECONDS = 12 * 60 * 60
VISIBILITY_MARGIN_SECONDS = 5 * 60  # covers the batching window and the function's own run
BUSY_RETRY_SECONDS = 30  # another attempt holds the key: look again shortly


class Verdict(StrEnum):
    DONE = "done"  # posted, duplicate, moved to DeadLetterQueue, or re-sent: delete it
    RETRY = "retry"  # leave it in ReplayQueue and try again after a back-off


@dataclass(frozen=True)
class Received:
    """One ReplayQueue message as the event source hands it over."""

    message_id: str
    body: str
    receive_count: int  # SQS's ApproximateReceiveCount, this receive included


@dataclass(frozen=True)
class ReplayResult:
    verdict: Verdict
    outcome: Outcome | None  # None: the message could not be read as a record
    message: QueuedRecord | None  # with the attempts of earlier receives counted


def consumer_sink(
    queue: FailureQueue,
    received: dict[int, Received],
    max_attempts: int,
    resend_delay: Callable[[QueuedRecord], int],
) -> FailureSink:
    """Where ReplayFunction leaves a record that failed again: rejected -> DeadLetterQueue;
    not tried at all -> a fresh ReplayQueue message (no attempt used up); after the last
    attempt -> DeadLetterQueue as `exhausted`; otherwise it stays where it is."""

    def sink(sub: Submission, message: QueuedRecord) -> Placement | None:
        got = received[sub.index]
        if message.failure.kind is FailureKind.REJECTED:
            return queue.send(DEAD_LETTER, message)
        if not message.failure.attempted:
            placed = queue.send(REPLAY, message, resend_delay(message))
            return replace(placed, resent=True) if placed else None
        if got.receive_count >= max_attempts:
            failure = message.failure.model_copy(update={"kind": FailureKind.EXHAUSTED})
            return queue.send(DEAD_LETTER, message.model_copy(update={"failure": failure}))
        return Placement(REPLAY, got.message_id, message)

    return sink


def backoff_seconds(attempts: int, base: float, since_receipt: float = 0.0) -> int:
    """Visibility timeout before the next attempt: base, 2x, 4x ... after `attempts` tries,
    always below SQS's 12-hour ceiling counted from the receive."""
    ceiling = MAX_VISIBILITY_SECONDS - VISIBILITY_MARGIN_SECONDS - max(0.0, since_receipt)
    wanted = base * 2 ** min(max(0, attempts - 1), 40)
    return max(0, int(min(ceiling, wanted)))


def settle_wait(message: QueuedRecord, settle_after: float, now: float | None = None) -> int:
    """Seconds until an unseen post in `message` may be looked up (0 if it may now)."""
    if message.ambiguous_since is None:
        return 0
    now = datetime.now(UTC).timestamp() if now is None else now
    return max(0, int(message.ambiguous_since.timestamp() + settle_after - now) + 1)


def replay_batch(
    batch: list[Received],
    submitter: Submitter,
    queue: FailureQueue,
    deadline: Deadline,
    max_attempts: int,
    concurrency: int,
) -> list[ReplayResult]:
    """A batch of ReplayQueue messages, submitted together; one result per message."""
    results: dict[int, ReplayResult] = {}
    subs: list[Submission] = []
    for index, got in enumerate(batch):
        try:
            message = QueuedRecord.from_json(got.body)
        except (ValidationError, ValueError):
            results[index] = _unreadable(got, queue)
            continue
        # earlier receives of this very message each tried once
        message = message.model_copy(update={"attempts": message.attempts + got.receive_count - 1})
        subs.append(Submission.from_message(message, index=index))
    sink = consumer_sink(
        queue,
        dict(enumerate(batch)),
        max_attempts,
        lambda message: settle_wait(message, submitter.settle_after_seconds),
    )
    outcomes = submitter.submit_all(subs, deadline, sink, concurrency, Taker.REPLAY)
    busy = [(s, o) for s, o in zip(subs, outcomes, strict=True) if o.busy]
    resent = queue.send_all(
        [(REPLAY, s.previous, BUSY_RETRY_SECONDS) for s, _ in busy if s.previous]
    )
    again = {s.index: placed for (s, _), placed in zip(busy, resent, strict=True)}
    for sub, outcome in zip(subs, outcomes, strict=True):
        placed = again.get(sub.index)
        results[sub.index] = _verdict(
            sub, replace(outcome, placement=placed) if placed else outcome
        )
    return [results[i] for i in range(len(batch))]


def _verdict(sub: Submission, outcome: Outcome) -> ReplayResult:
    placement = outcome.placement
    waits_here = placement is not None and placement.queue == REPLAY and not placement.resent
    resent_busy = outcome.busy and placement is not None
    if (outcome.status is None and not resent_busy) or (
        outcome.status is Status.QUEUED and waits_here
    ):
        verdict = Verdict.RETRY
    else:
        verdict = Verdict.DONE
    message = sub.previous
    assert message is not None
    logger.info(
        "replayed record",
        extra={
            "scope": message.usage.key.scope,
            "status": outcome.status.value if outcome.status else "not_stored",
            "verdict": verdict.value,
            "attempts": message.attempts + (1 if outcome.tried and not outcome.busy else 0),
            "tried": outcome.tried and not outcome.busy,
            "ambiguous": outcome.ambiguous,
            "settled": outcome.settled,
            "failure_kind": outcome.failure.kind.value if outcome.failure else None,
        },
    )
    return ReplayResult(verdict, outcome, message)


def _unreadable(got: Received, queue: FailureQueue) -> ReplayResult:
    """Not a record this version can read: a person must look at it, now rather than after
    every attempt has failed the same way."""
    try:
        queue.send_raw(DEAD_LETTER, got.body, kind="unreadable")
    except Exception as exc:
        logger.error("unreadable message not moved; it stays", extra={"error": str(exc)})
        return ReplayResult(Verdict.RETRY, None, None)
    logger.error("unreadable ReplayQueue message moved to DeadLetterQueue")
    return ReplayResult(Verdict.DONE, None, None)


def redeliver_dead_letter(
    message: QueuedRecord,
    submitter: Submitter,
    queue: FailureQueue,
    deadline: Deadline,
    resolve: Callable[[Usage], Usage] = lambda usage: usage,
    count: Callable[[Submission, Deadline], Outcome | None] = lambda sub, deadline: None,
) -> ReplayResult:
    """Operator replay of one DeadLetterQueue message; the caller then deletes it when DONE.
    `resolve` maps what can be mapped now (a meter's line added to its source profile);
    `count` counts an aggregating source's event into its window's open generation (None:
    the record is not such an event, and is submitted).
    Rejected again: a fresh dead letter with the new errors, for a person. Failed for a
    passing reason (timeout, reset, 5xx, 429): handed to ReplayQueue, where ReplayFunction
    backs off, settles an unseen post by lookup and retries, as for a webhook delivery."""
    sub = Submission.from_message(message, resolve(message.usage))
    with tracer.span("operator replay", parent=message.trace):  # tracing: the record's trace
        outcome = count(sub, deadline) or submitter.submit(
            sub, deadline, queue.store_failed, Taker.OPERATOR
        )
    verdict = Verdict.DONE if outcome.status is not None else Verdict.RETRY
    return ReplayResult(verdict, outcome, message)


def retry_later(
    queue: FailureQueue,
    handled: list[tuple[str, ReplayResult]],
    base_seconds: float,
    since_receipt: float,
) -> None:
    """Hide each message to retry for its back-off; where SQS does not take it, the queue's
    own visibility timeout applies instead."""
    receipts = [
        (
            receipt,
            backoff_seconds(
                result.message.attempts if result.message else 1, base_seconds, since_receipt
            ),
        )
        for receipt, result in handled
        if result.verdict is Verdict.RETRY
    ]
    failed = queue.hide(REPLAY, receipts)
    if failed:
        logger.warning("could not set back-off", extra={"messages": failed})
