"""Submit records: the single path shared by the webhook and replay.

Per record, concurrently: claim the key -> settle an earlier unseen attempt -> post. Then,
for the whole delivery at once: store the records that failed (SendMessageBatch), and write
every key's final state over its claim (BatchWriteItem). Every path ends with the record
posted once, waiting in a queue, or reported as "not stored" so that whoever sent it sends
it again (a 503 for the webhook, a retried message for replay). Nothing is acknowledged that
is not in one of those places, and an unexpected error in one record ends that record as
"not stored" (its key released), never the others.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from piriod_adapter.clock import Deadline
from piriod_adapter.idempotency import (
    Claim,
    IdempotencyStore,
    KeyState,
    KeyStatus,
    Result,
    StoreUnavailable,
    Waiting,
)
from piriod_adapter.models import (
    Failure,
    FailureKind,
    QueuedRecord,
    Status,
    Tenant,
    Usage,
    parse_rfc3339,
    sortable_utc,
)
from piriod_adapter.observability import logger, metrics
from piriod_adapter.piriod import (
    PiriodClient,
    PiriodUnavailable,
    PostKind,
    PostResult,
    usage_id_of,
)
from piriod_adapter.queue import Placement

# Piriod's `created` versus our clock, when settling: a matching usage created up to this
# long before our first attempt is still taken as ours. Wider means more clock skew is
# tolerated without a second post; a usage made elsewhere with the same line, instant and
# value in that window would settle ours (under-billing one record, never over-billing).
CLOCK_SKEW_SECONDS = 300.0
CLAIM_TRIES = 3
BREAKER_FAILURES = 3  # connections refused in a row before the rest of a delivery is queued
KEY_CONFLICT = (
    "this key was already used for a different record (another line, time or quantity); "
    "this record was not posted: send it with a key of its own"
)


@dataclass(frozen=True)
class Submission:
    """One record to submit, with everything needed to submit it alone."""

    index: int
    usage: Usage
    tenant: Tenant
    previous: QueuedRecord | None = None  # the queue message, when this is a replay

    @classmethod
    def from_message(
        cls, message: QueuedRecord, usage: Usage | None = None, index: int = 0
    ) -> Submission:
        return cls(index, usage or message.usage, message.tenant, previous=message)


@dataclass(frozen=True)
class Outcome:
    """How one submission ended. `status is None`: neither posted nor stored."""

    status: Status | None
    usage_id: int | None = None
    errors: dict[str, list[str]] | None = None
    failure: Failure | None = None
    placement: Placement | None = None
    ambiguous: bool = False
    settled: bool = False  # posted by finding the earlier, unseen attempt in Piriod
    busy: bool = False  # another attempt holds the key right now
    reason: str | None = None

    @property
    def tried(self) -> bool:
        """Whether Piriod was asked anything for this record in this attempt."""
        return self.failure is None or self.failure.attempted


# Stores failed records where they belong, in one go, and says where each went (None: not
# stored). Given each record's submission with its message; the replay sink may leave a
# message where it is, send a fresh copy, or turn it into an `exhausted` dead letter.
FailureSink = Callable[[list[tuple[Submission, QueuedRecord]]], list[Placement | None]]


@dataclass(frozen=True)
class _Failed:
    """A record that failed its attempt, still to be stored (phase 2)."""

    sub: Submission
    claim: Claim | None  # None: the key is not ours (a conflict, or held by another)
    message: QueuedRecord
    unseen_since: float | None


@dataclass(frozen=True)
class _Posted:
    """A record Piriod created, its result still to be written over the claim (phase 3)."""

    claim: Claim
    usage_id: int


_Step = Outcome | _Failed | _Posted


class _Breaker:
    """Piriod refusing connections: after a few in a row, the rest of the delivery is queued
    without trying (the answer comes at once, and Piriod is not hammered)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refused = 0

    @property
    def open(self) -> bool:
        return self._refused >= BREAKER_FAILURES

    def saw(self, result: PostResult) -> None:
        refused = result.kind is PostKind.TRANSIENT and result.status is None and result.attempted
        with self._lock:
            self._refused = self._refused + 1 if refused else 0


@dataclass
class Submitter:
    piriod: PiriodClient
    store: IdempotencyStore
    post_budget_seconds: float  # a post is started only with at least this much time left
    settle_after_seconds: float
    clock: Callable[[], float] = field(default=time.time)

    def submit(
        self, sub: Submission, deadline: Deadline, sink: FailureSink, *, replay: bool = False
    ) -> Outcome:
        """Submit one record and record its result."""
        return self.submit_all([sub], deadline, sink, 1, replay=replay)[0]

    def submit_all(
        self,
        subs: Sequence[Submission],
        deadline: Deadline,
        sink: FailureSink,
        concurrency: int,
        *,
        replay: bool = False,
    ) -> list[Outcome]:
        """Submit records concurrently, at most `concurrency` in flight; outcomes in order."""
        breaker = None if replay else _Breaker()

        def attempt(sub: Submission) -> _Step:
            return self._guarded(sub, deadline, replay, breaker)

        if len(subs) <= 1 or concurrency <= 1:
            steps = [attempt(s) for s in subs]
        else:
            with ThreadPoolExecutor(max_workers=min(concurrency, len(subs))) as pool:
                steps = list(pool.map(attempt, subs))
        return self._finish(steps, sink)

    # --- phases 2 and 3: store the failures, then write every key's state ----------------------

    def _finish(self, steps: list[_Step], sink: FailureSink) -> list[Outcome]:
        failed = [s for s in steps if isinstance(s, _Failed)]
        placements: list[Placement | None] = [None] * len(failed)
        if failed:
            try:
                placements = sink([(f.sub, f.message) for f in failed])
            except Exception as exc:  # the sink is ours; a defect here must not lose records
                logger.exception("storing failed records raised", extra={"error": str(exc)})
        stored = dict(zip(map(id, failed), placements, strict=True))
        results: list[Result] = []
        outcomes = []
        for step in steps:
            if isinstance(step, _Posted):
                results.append(Result(step.claim, KeyStatus.POSTED, usage_id=step.usage_id))
                outcomes.append(Outcome(Status.POSTED, usage_id=step.usage_id))
            elif isinstance(step, _Failed):
                outcome, result = _placed(step, stored[id(step)])
                outcomes.append(outcome)
                if result is not None:
                    results.append(result)
            else:
                outcomes.append(step)
        if results:
            try:
                self.store.record_results(results)
            except StoreUnavailable as exc:
                # In Piriod or in a queue, but the keys not updated: they stay locked until
                # their expiry, after which the next attempt settles them by lookup.
                logger.error(
                    "records handled but their keys not updated; a retry settles by lookup",
                    extra={"records": len(results), "error": str(exc)},
                )
        return outcomes

    # --- phase 1: one record's attempt -----------------------------------------------------

    def _guarded(
        self, sub: Submission, deadline: Deadline, replay: bool, breaker: _Breaker | None
    ) -> _Step:
        """The per-record boundary: whatever goes wrong in one record ends that record as
        "not stored" with its key released (flagged unseen, so the next holder looks it up
        in Piriod before posting), and the other records of the delivery go on."""
        attempt = _Attempt()
        try:
            return self._attempt(sub, deadline, replay, breaker, attempt)
        except Exception as exc:
            logger.exception(
                "unexpected error submitting a record; it is not stored",
                extra={"index": sub.index, "error": type(exc).__name__},
            )
            claim = attempt.claim
            if claim is not None and claim.token is not None:
                with contextlib.suppress(Exception):
                    self.store.release(claim.pk, claim.token, attempt.unseen_since())
            return Outcome(None, reason=f"unexpected error ({type(exc).__name__}); retry")

    def _attempt(
        self,
        sub: Submission,
        deadline: Deadline,
        replay: bool,
        breaker: _Breaker | None,
        attempt: _Attempt,
    ) -> _Step:
        try:
            claim = attempt.claim = self._claim(sub, deadline, replay)
            if not claim.acquired:
                handled = self._already_handled(claim, sub, deadline, replay)
                if handled is not None:
                    return handled
                claim = attempt.claim = self._claim(sub, deadline, replay)  # free again
                if not claim.acquired:
                    return self._hand_over(sub, claim.previous)
        except StoreUnavailable as exc:
            return Outcome(None, reason=str(exc))

        since = attempt.since = _unsettled_since(claim.previous, sub.previous)
        usage = sub.usage
        if usage.subscription_line is None:
            meter = f"no subscription line for meter {usage.meter_id!r} in source {usage.source!r}"
            refused = PostResult(PostKind.REJECTED, errors={"meter_id": [meter]}, attempted=False)
            return self._failed(claim, sub, refused, since)
        if since is not None:
            settled = self._settle(claim, sub, since, deadline)
            if settled is not None:
                if settled.kind is PostKind.CREATED:
                    return Outcome(Status.POSTED, usage_id=settled.usage_id, settled=True)
                return self._failed(claim, sub, settled, since)

        if deadline.remaining() < self.post_budget_seconds:
            result = PostResult(
                PostKind.TRANSIENT, error="function time running out; not posted", attempted=False
            )
        elif breaker is not None and breaker.open:
            result = PostResult(
                PostKind.TRANSIENT,
                error="Piriod refused the delivery's first connections; not tried",
                attempted=False,
            )
        else:
            attempt.sent_at = self.clock()
            result = self.piriod.post_usage(usage, sub.tenant, deadline)
            _measure(result, self.clock() - attempt.sent_at)
            if breaker is not None:
                breaker.saw(result)
        if result.kind is PostKind.CREATED:
            assert result.usage_id is not None
            return _Posted(claim, result.usage_id)
        unseen = attempt.sent_at if result.kind is PostKind.AMBIGUOUS else None
        return self._failed(claim, sub, result, unseen)

    def _claim(self, sub: Submission, deadline: Deadline, replay: bool) -> Claim:
        claim = self.store.claim(sub.usage, deadline, replay=replay)
        tries = 1
        # The holder may have released the key between our try and our read: try again.
        while (
            not claim.acquired
            and tries < CLAIM_TRIES
            and (claim.previous is None or claim.previous.status is KeyStatus.RELEASED)
        ):
            claim = self.store.claim(sub.usage, deadline, replay=replay)
            tries += 1
        return claim

    def _already_handled(
        self, claim: Claim, sub: Submission, deadline: Deadline, replay: bool
    ) -> _Step | None:
        """The key was not taken: a duplicate of a stored state, a conflict, a key held by
        another attempt (handed over), or None when the key is free again (claim it again).
        Raises StoreUnavailable."""
        holder = claim.previous
        if holder is not None and holder.fingerprint not in (None, sub.usage.fingerprint):
            return self._conflict(sub)
        if holder is not None and holder.locked(self.clock()):
            if replay:  # ReplayFunction looks again shortly, without using up an attempt
                return Outcome(None, busy=True, reason="another attempt holds this key")
            # A concurrent delivery of the same key: wait as long as one post can take.
            holder = self.store.wait_while_locked(
                claim.pk, deadline, min(deadline.remaining(), self.post_budget_seconds)
            )
            if holder is not None and holder.locked(self.clock()):
                return self._hand_over(sub, holder)
        if holder is not None and holder.status in (
            KeyStatus.POSTED,
            KeyStatus.QUEUED,
            KeyStatus.REJECTED,
        ):
            return Outcome(Status.DUPLICATE, usage_id=holder.usage_id)
        return None

    def _hand_over(self, sub: Submission, holder: KeyState | None) -> _Failed:
        """Another attempt holds the key past a post's time (it is slow, or it stopped
        mid-post and its lock has not expired yet): whatever it did is unseen. The record
        waits in ReplayQueue flagged ambiguous; ReplayFunction takes the key once it is
        free and looks the record up in Piriod before posting it."""
        since = holder.attempt_started if holder is not None else None
        unseen = PostResult(
            PostKind.AMBIGUOUS,
            error="another attempt holds this key; its outcome is settled on replay",
            attempted=False,
        )
        return self._failed(None, sub, unseen, since or self.clock())

    def _conflict(self, sub: Submission) -> _Failed:
        """A key already used for a different record: this record is not posted, and not
        dropped either: it is rejected into DeadLetterQueue with the reason (the key stays
        with the record that had it first)."""
        refused = PostResult(
            PostKind.REJECTED, errors={"idempotency_key": [KEY_CONFLICT]}, attempted=False
        )
        return self._failed(None, sub, refused, None)

    def _settle(
        self, claim: Claim, sub: Submission, since: float, deadline: Deadline
    ) -> PostResult | None:
        """An earlier attempt may have landed unseen. Ask Piriod before posting again.
        Returns CREATED (found), a failure to store (cannot tell yet), or None (not there)."""
        assert claim.token is not None
        if self.clock() - since < self.settle_after_seconds:
            return PostResult(
                PostKind.AMBIGUOUS,
                error="earlier attempt too recent to look up; will retry",
                attempted=False,
            )
        try:
            held, busy = self.store.accounted_for(claim.pk, sub.usage)
        except StoreUnavailable as exc:
            return PostResult(PostKind.AMBIGUOUS, error=f"cannot settle yet: {exc}")
        if busy:  # an identical record is mid-attempt: its usage may not be recorded yet
            return PostResult(PostKind.AMBIGUOUS, error="an identical record is in progress")
        try:
            found = self.piriod.find_usages(sub.usage, sub.tenant, deadline)
        except PiriodUnavailable as exc:
            return PostResult(PostKind.AMBIGUOUS, error=f"cannot ask Piriod yet: {exc}")
        ours: list[int] = []  # surely this record, created since (about) the first attempt
        unsure = False  # a listed usage that may be this record's but cannot be read
        for listed in found:
            same = _same_record(listed, sub.usage)
            usage_id = usage_id_of(listed)
            if same is False or (usage_id is not None and usage_id in held):
                continue  # another record, or another key's identical record
            created = _parse_created(listed.get("created"))
            if same is None or usage_id is None or created is None:
                unsure = True
            elif created >= since - CLOCK_SKEW_SECONDS:  # else: existed before our attempt
                ours.append(usage_id)
        if not ours:
            if unsure:  # it may be ours: never post again on a guess
                return PostResult(
                    PostKind.AMBIGUOUS,
                    error="Piriod lists a matching usage the adapter cannot read; not posted again",
                )
            return None
        usage_id = min(ours)
        try:
            self.store.settle(claim.pk, claim.token, usage_id)
        except StoreUnavailable as exc:
            return PostResult(PostKind.AMBIGUOUS, error=f"found in Piriod, cannot record: {exc}")
        logger.info(
            "ambiguous post settled: found in Piriod",
            extra={"usage_id": usage_id, "scope": sub.usage.key.scope, "index": sub.index},
        )
        return PostResult(PostKind.CREATED, usage_id=usage_id)

    def _failed(
        self,
        claim: Claim | None,
        sub: Submission,
        result: PostResult,
        unseen_since: float | None,
    ) -> _Failed:
        """The queue message of a record that failed, to be stored with the others."""
        now = datetime.now(UTC)
        kind = {
            PostKind.REJECTED: FailureKind.REJECTED,
            PostKind.AMBIGUOUS: FailureKind.AMBIGUOUS,
        }.get(result.kind, FailureKind.TRANSIENT)
        failure = Failure(
            kind=kind,
            status=result.status,
            errors=result.errors,
            error=result.error,
            attempted=result.attempted,
            at=now,
        )
        previous = sub.previous
        message = QueuedRecord(
            usage=sub.usage,
            tenant=sub.tenant,
            failure=failure,
            attempts=(previous.attempts if previous else 0) + (1 if result.attempted else 0),
            first_failure_at=previous.first_failure_at if previous else now,
            ambiguous_since=datetime.fromtimestamp(unseen_since, UTC) if unseen_since else None,
        )
        return _Failed(sub, claim, message, unseen_since)


def _measure(result: PostResult, seconds: float) -> None:
    """Piriod's latency per post, and its refusals of the token (the token alarm's metric).
    Powertools' metric store is not thread-safe, so threads add under one lock."""
    with _METRICS_LOCK:
        metrics.add_metric(
            name="piriod_latency", unit=MetricUnit.Milliseconds, value=seconds * 1000
        )
        if result.status == 401:
            metrics.add_metric(name="piriod_unauthorized", unit=MetricUnit.Count, value=1)


_METRICS_LOCK = threading.Lock()


def _placed(step: _Failed, placement: Placement | None) -> tuple[Outcome, Result | None]:
    """A failed record's outcome once stored (or not), and its key's final state."""
    ambiguous = step.unseen_since is not None
    claim = step.claim if step.claim is not None and step.claim.token is not None else None
    if placement is None:
        outcome = Outcome(
            None,
            failure=step.message.failure,
            ambiguous=ambiguous,
            reason="could not be stored in a queue (SQS unavailable); retry",
        )
        if claim is None:
            return outcome, None
        return outcome, Result(claim, KeyStatus.RELEASED, ambiguous_since=step.unseen_since)
    failure = placement.message.failure
    rejected = failure.kind is FailureKind.REJECTED
    outcome = Outcome(
        Status.REJECTED if rejected else Status.QUEUED,
        errors=failure.errors if rejected else None,
        failure=failure,
        placement=placement,
        ambiguous=ambiguous,
    )
    if claim is None:
        return outcome, None
    waiting = Waiting(
        queue=placement.queue,
        message_id=placement.message_id,
        message=placement.message.to_json(),
        since=sortable_utc(failure.at),
    )
    status = KeyStatus.REJECTED if rejected else KeyStatus.QUEUED
    return outcome, Result(claim, status, ambiguous_since=step.unseen_since, waiting=waiting)


@dataclass
class _Attempt:
    """What one submission has done so far, for the per-record boundary."""

    claim: Claim | None = None
    since: float | None = None  # an earlier attempt's unseen post
    sent_at: float | None = None  # our own post, once sent

    def unseen_since(self) -> float | None:
        return self.sent_at if self.sent_at is not None else self.since


def _unsettled_since(previous: KeyState | None, message: QueuedRecord | None) -> float | None:
    candidates = []
    if previous is not None and (since := previous.unsettled_since()) is not None:
        candidates.append(since)
    if message is not None and message.ambiguous_since is not None:
        candidates.append(message.ambiguous_since.timestamp())
    return min(candidates) if candidates else None


def _same_record(listed: dict[str, Any], usage: Usage) -> bool | None:
    """Whether a listed usage has this record's line, instant and value: False when it
    surely differs, None when a field cannot be read (it may be this record)."""
    try:
        line = listed.get("subscription_line")
        instant = parse_rfc3339(str(listed.get("date_time")))
        quantity = Decimal(str(listed.get("quantity")))
    except (ValueError, ArithmeticError):
        return None
    if isinstance(line, bool) or not isinstance(line, int) or not quantity.is_finite():
        return None
    return (
        line == usage.subscription_line
        and instant == usage.date_time
        and quantity == usage.quantity
    )


def _parse_created(value: object) -> float | None:
    """Piriod's `created`, when it is a time with an offset (a naive time is not read as
    ours or anyone's: its zone is unknown)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        return None if parsed.tzinfo is None else parsed.timestamp()
    except (ValueError, OverflowError):
        return None
