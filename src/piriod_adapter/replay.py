"""Replay: re-post queued records through the same submit path as the webhook (SPEC 5)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from piriod_adapter.clock import Deadline
from piriod_adapter.models import FailureKind, QueuedRecord, Status
from piriod_adapter.observability import logger
from piriod_adapter.queue import FailureQueue
from piriod_adapter.submit import FailureSink, Outcome, Submission, Submitter

MAX_VISIBILITY_SECONDS = 12 * 60 * 60  # SQS's own ceiling


class Verdict(StrEnum):
    DONE = "done"  # posted, duplicate, or moved to DeadLetterQueue: delete the message
    RETRY = "retry"  # leave it in ReplayQueue and try again after a back-off


@dataclass(frozen=True)
class ReplayResult:
    verdict: Verdict
    outcome: Outcome
    message: QueuedRecord


def consumer_sink(queue: FailureQueue, last_attempt: bool) -> FailureSink:
    """ReplayFunction: rejected -> DeadLetterQueue; after the last attempt -> DeadLetterQueue as
    `exhausted`; otherwise the message simply stays in ReplayQueue for the next attempt."""

    def sink(message: QueuedRecord) -> QueuedRecord:
        if message.failure.kind is FailureKind.REJECTED:
            queue.to_dead_letter(message)
            return message
        if last_attempt:
            exhausted = message.model_copy(
                update={
                    "failure": message.failure.model_copy(update={"kind": FailureKind.EXHAUSTED})
                }
            )
            queue.to_dead_letter(exhausted)
            return exhausted
        return message

    return sink


def backoff_seconds(receive_count: int, base: float) -> int:
    """Visibility timeout before the next attempt: base, 2x, 4x ... capped at 12 hours."""
    return int(min(MAX_VISIBILITY_SECONDS, base * 2 ** max(0, receive_count - 1)))


def replay_one(
    message: QueuedRecord,
    receive_count: int,
    submitter: Submitter,
    queue: FailureQueue,
    deadline: Deadline,
    max_attempts: int,
) -> ReplayResult:
    """One ReplayQueue message. `receive_count` is SQS's ApproximateReceiveCount."""
    message = message.model_copy(update={"attempts": message.attempts + receive_count - 1})
    sink = consumer_sink(queue, last_attempt=receive_count >= max_attempts)
    outcome = submitter.submit(Submission.from_message(message), deadline, sink, replay=True)
    verdict = Verdict.DONE
    if outcome.status is None or (
        outcome.status is Status.QUEUED
        and outcome.failure is not None
        and outcome.failure.kind is not FailureKind.EXHAUSTED
    ):
        verdict = Verdict.RETRY
    logger.info(
        "replayed record",
        extra={
            "idempotency_key": message.idempotency_key,
            "status": outcome.status.value if outcome.status else "not_stored",
            "verdict": verdict.value,
            "attempts": message.attempts + 1,
            "ambiguous": outcome.ambiguous,
            "settled": outcome.settled,
            "failure_kind": outcome.failure.kind.value if outcome.failure else None,
        },
    )
    return ReplayResult(verdict, outcome, message)


def redeliver_dead_letter(
    message: QueuedRecord, submitter: Submitter, queue: FailureQueue, deadline: Deadline
) -> ReplayResult:
    """Operator replay of one DeadLetterQueue message; the caller then deletes it when DONE.
    Rejected again: a fresh dead letter with Piriod's new errors, for a person. Failed for a
    passing reason (timeout, reset, 5xx, 429): handed to ReplayQueue, where ReplayFunction
    backs off, settles an unseen post by lookup and retries, as for a webhook delivery."""
    outcome = submitter.submit(Submission.from_message(message), deadline, queue.store, replay=True)
    verdict = Verdict.DONE if outcome.status is not None else Verdict.RETRY
    return ReplayResult(verdict, outcome, message)
