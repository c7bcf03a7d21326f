"""Replay: re-post queued records through the same submit path as the webhook (SPEC 5).

Attempts are counted in the message (`attempts`: posts or lookups tried so far) and by SQS
(each receive of a ReplayQueue message, towards the redrive policy's maxReceiveCount). A
receive in which Piriod was not asked anything (the function's time ran out first, or an
unseen post is too recent to look up) must not use up an attempt: the record is sent again
as a fresh message, whose receive count starts over, and the received one is deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum

from piriod_adapter.clock import Deadline
from piriod_adapter.models import FailureKind, QueuedRecord, Status, Usage
from piriod_adapter.observability import logger
from piriod_adapter.queue import DEAD_LETTER, REPLAY, FailureQueue, Placement, QueueUnavailable
from piriod_adapter.submit import FailureSink, Outcome, Submission, Submitter

# SQS refuses a visibility timeout that reaches 12 hours after the message was received.
MAX_VISIBILITY_SECONDS = 12 * 60 * 60
VISIBILITY_MARGIN_SECONDS = 5 * 60  # covers the batching window and the function's own run
BUSY_RETRY_SECONDS = 30  # another attempt holds the key: look again shortly


class Verdict(StrEnum):
    DONE = "done"  # posted, duplicate, moved to DeadLetterQueue, or re-sent: delete it
    RETRY = "retry"  # leave it in ReplayQueue and try again after a back-off


@dataclass(frozen=True)
class ReplayResult:
    verdict: Verdict
    outcome: Outcome
    message: QueuedRecord


def consumer_sink(
    queue: FailureQueue, message_id: str, last_attempt: bool, resend_delay: Callable[[], int]
) -> FailureSink:
    """Where ReplayFunction leaves a record that failed again: rejected -> DeadLetterQueue; not
    tried at all -> a fresh ReplayQueue message (no attempt used up); after the last attempt
    -> DeadLetterQueue as `exhausted`; otherwise it stays where it is (`message_id`)."""

    def sink(message: QueuedRecord) -> Placement:
        if message.failure.kind is FailureKind.REJECTED:
            return queue.send(DEAD_LETTER, message)
        if not message.failure.attempted:
            placement = queue.send(REPLAY, message, delay_seconds=resend_delay())
            return Placement(placement.queue, placement.message_id, message, resent=True)
        if last_attempt:
            exhausted = message.model_copy(
                update={
                    "failure": message.failure.model_copy(update={"kind": FailureKind.EXHAUSTED})
                }
            )
            return queue.send(DEAD_LETTER, exhausted)
        return Placement(REPLAY, message_id, message)

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


def replay_one(
    message: QueuedRecord,
    message_id: str,
    receive_count: int,
    submitter: Submitter,
    queue: FailureQueue,
    deadline: Deadline,
    max_attempts: int,
) -> ReplayResult:
    """One ReplayQueue message. `receive_count` is SQS's ApproximateReceiveCount: earlier
    receives of this very message each tried once."""
    message = message.model_copy(update={"attempts": message.attempts + receive_count - 1})
    sink = consumer_sink(
        queue,
        message_id,
        last_attempt=receive_count >= max_attempts,
        resend_delay=lambda: settle_wait(message, submitter.settle_after_seconds),
    )
    outcome = submitter.submit(Submission.from_message(message), deadline, sink, replay=True)
    verdict = Verdict.DONE
    if outcome.busy:  # another attempt holds the key: look again soon, no attempt used up
        try:
            placement = queue.send(REPLAY, message, delay_seconds=BUSY_RETRY_SECONDS)
            outcome = replace(outcome, placement=replace(placement, resent=True))
        except QueueUnavailable:
            verdict = Verdict.RETRY
    elif outcome.status is None or (
        outcome.status is Status.QUEUED
        and outcome.placement is not None
        and outcome.placement.queue == REPLAY
        and not outcome.placement.resent
    ):
        verdict = Verdict.RETRY
    logger.info(
        "replayed record",
        extra={
            "scope": message.usage.key.scope,
            "status": outcome.status.value if outcome.status else "not_stored",
            "verdict": verdict.value,
            "attempts": message.attempts + (1 if outcome.tried else 0),
            "tried": outcome.tried,
            "ambiguous": outcome.ambiguous,
            "settled": outcome.settled,
            "failure_kind": outcome.failure.kind.value if outcome.failure else None,
        },
    )
    return ReplayResult(verdict, outcome, message)


def redeliver_dead_letter(
    message: QueuedRecord,
    submitter: Submitter,
    queue: FailureQueue,
    deadline: Deadline,
    resolve: Callable[[Usage], Usage] = lambda usage: usage,
) -> ReplayResult:
    """Operator replay of one DeadLetterQueue message; the caller then deletes it when DONE.
    `resolve` maps what can be mapped now (a meter's line added to its source profile).
    Rejected again: a fresh dead letter with the new errors, for a person. Failed for a
    passing reason (timeout, reset, 5xx, 429): handed to ReplayQueue, where ReplayFunction
    backs off, settles an unseen post by lookup and retries, as for a webhook delivery."""
    usage = resolve(message.usage)
    outcome = submitter.submit(
        Submission.from_message(message, usage), deadline, queue.store, replay=True
    )
    verdict = Verdict.DONE if outcome.status is not None else Verdict.RETRY
    return ReplayResult(verdict, outcome, message)
