"""Replay: re-post queued records through the same submit path as the webhook (SPEC 5).

A batch of ReplayQueue messages is submitted together, concurrently, like a delivery's
records. Attempts are counted in the message (`attempts`: posts or lookups tried so far) and
by SQS (each receive of a ReplayQueue message, towards the redrive policy's
maxReceiveCount). A receive in which Piriod was not asked anything (the function's time ran
out first, an unseen post is too recent to look up, another attempt holds the key) must not
use up an attempt: the record is sent again as a fresh message, whose receive count starts
over, and the received one is deleted.
"""

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import ValidationError

from piriod_adapter.clock import Deadline
from piriod_adapter.lifecycle import (
    FailureSink,
    Fate,
    Outcome,
    Placement,
    Submission,
    Taker,
    metric_name,
)
from piriod_adapter.models import FailureKind, QueuedRecord, Usage
from piriod_adapter.observability import logger, metrics
from piriod_adapter.queue import DEAD_LETTER, REPLAY, FailureQueue
from piriod_adapter.runtime import Runtime
from piriod_adapter.submit import Submitter
from piriod_adapter.tracing import tracer

# SQS refuses a visibility timeout that reaches 12 hours after the message was received.
MAX_VISIBILITY_SECONDS = 12 * 60 * 60
VISIBILITY_MARGIN_SECONDS = 5 * 60  # covers the batching window and the function's own run
BUSY_RETRY_SECONDS = 30  # another attempt holds the key: look again shortly


class Received(NamedTuple):
    """One ReplayQueue message as the event source hands it over."""

    message_id: str
    body: str
    receive_count: int  # SQS's ApproximateReceiveCount, this receive included


class ReplayResult(NamedTuple):
    """One message's replay: its outcome (None: it could not be read as a record) and
    whether it is left in ReplayQueue for another try."""

    retry: bool
    outcome: Outcome | None
    message: QueuedRecord | None  # with the attempts of earlier receives counted


def run_replay(
    records: Sequence[Any], runtime: Runtime, deadline: Deadline, received_at: float
) -> dict[str, Any]:
    """ReplayFunction's batch (the SQS event source's records): replay it, back off what is
    tried again, count each outcome, and answer the partial batch failures."""
    batch = [
        Received(r.message_id, r.body, int(r.attributes.approximate_receive_count or 1))
        for r in records
    ]
    settings = runtime.settings
    results = replay_batch(
        batch,
        runtime.submitter,
        runtime.queue,
        deadline,
        settings.replay_max_attempts,
        settings.post_concurrency,
    )
    retry_later(
        runtime.queue,
        [(r.receipt_handle, result) for r, result in zip(records, results, strict=True)],
        settings.replay_backoff_seconds,
        time.monotonic() - received_at,
    )
    for result in results:
        outcome = result.outcome
        if outcome is None:
            metrics.add_metric(name="replay_unreadable", unit=MetricUnit.Count, value=1)
            continue
        if outcome.tried:
            metrics.add_metric(name="replay_attempts", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name=metric_name("replay", outcome.fate), unit=MetricUnit.Count, value=1)
        if outcome.ambiguous:
            metrics.add_metric(name="replay_ambiguous", unit=MetricUnit.Count, value=1)
    return {
        "batchItemFailures": [
            {"itemIdentifier": got.message_id}
            for got, result in zip(batch, results, strict=True)
            if result.retry
        ]
    }


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
            return queue.send(DEAD_LETTER, message, fate=Fate.REJECTED)
        if not message.failure.attempted:
            return queue.send(REPLAY, message, resend_delay(message))
        if got.receive_count >= max_attempts:
            failure = message.failure.model_copy(update={"kind": FailureKind.EXHAUSTED})
            exhausted = message.model_copy(update={"failure": failure})
            return queue.send(DEAD_LETTER, exhausted, fate=Fate.EXHAUSTED)
        return Placement(REPLAY, got.message_id, message, Fate.RETRYING)

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
    busy = [(s, o) for s, o in zip(subs, outcomes, strict=True) if o.fate is Fate.BUSY]
    resent = queue.send_all(
        [(REPLAY, s.previous, BUSY_RETRY_SECONDS) for s, _ in busy if s.previous]
    )
    # a busy record sent again as a fresh message waits there: this one is done
    again = {s.index: placed for (s, _), placed in zip(busy, resent, strict=True) if placed}
    for sub, outcome in zip(subs, outcomes, strict=True):
        placed = again.get(sub.index)
        again_as = outcome._replace(fate=Fate.QUEUED, placement=placed) if placed else outcome
        results[sub.index] = _result(sub, again_as)
    return [results[i] for i in range(len(batch))]


def _result(sub: Submission, outcome: Outcome) -> ReplayResult:
    message = sub.previous
    assert message is not None
    logger.info(
        "replayed record",
        extra={
            "scope": message.usage.key.scope,
            "status": outcome.answer,
            "fate": outcome.fate.value,
            "retry": outcome.retry,
            "attempts": message.attempts + (1 if outcome.tried else 0),
            "tried": outcome.tried,
            "ambiguous": outcome.ambiguous,
            "settled": outcome.settled,
            "failure_kind": outcome.failure.kind.value if outcome.failure else None,
        },
    )
    return ReplayResult(outcome.retry, outcome, message)


def _unreadable(got: Received, queue: FailureQueue) -> ReplayResult:
    """Not a record this version can read: a person must look at it, now rather than after
    every attempt has failed the same way."""
    try:
        queue.send_raw(DEAD_LETTER, got.body, kind="unreadable")
    except Exception as exc:
        logger.error("unreadable message not moved; it stays", extra={"error": str(exc)})
        return ReplayResult(True, None, None)
    logger.error("unreadable ReplayQueue message moved to DeadLetterQueue")
    return ReplayResult(False, None, None)


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
    with tracer.span("operator replay", parent=message.trace):  # the record's trace
        outcome = count(sub, deadline) or submitter.submit(
            sub, deadline, queue.place_failed, Taker.OPERATOR
        )
    return ReplayResult(outcome.retry, outcome, message)


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
        if result.retry
    ]
    failed = queue.hide(REPLAY, receipts)
    if failed:
        logger.warning("could not set back-off", extra={"messages": failed})
