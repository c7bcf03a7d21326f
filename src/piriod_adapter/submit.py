"""Submit one record: the single path shared by the webhook and replay.

claim the key -> settle an earlier unseen attempt -> post -> record the outcome or store the
failure. Every path ends with the record posted once, waiting in a queue, or reported as
"not stored" so that whoever sent it sends it again (a 503 for the webhook, a retried
message for replay). Nothing is acknowledged that is not in one of those places, and an
unexpected error in one record ends that record as "not stored" (its key released), never
the others.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from piriod_adapter.clock import Deadline
from piriod_adapter.idempotency import (
    Claim,
    IdempotencyStore,
    KeyState,
    KeyStatus,
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
    sortable_utc,
)
from piriod_adapter.observability import logger
from piriod_adapter.piriod import PiriodClient, PiriodUnavailable, PostKind, PostResult
from piriod_adapter.queue import Placement, QueueUnavailable

CLOCK_SKEW_SECONDS = 60.0  # Piriod's `created` versus our clock, when settling
CLAIM_TRIES = 3
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
    def from_message(cls, message: QueuedRecord, usage: Usage | None = None) -> Submission:
        return cls(0, usage or message.usage, message.tenant, previous=message)


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
    # Posted, and its result still to be written over this claim (done per batch).
    unrecorded: Claim | None = field(default=None, repr=False, compare=False)

    @property
    def tried(self) -> bool:
        """Whether Piriod was asked anything for this record in this attempt."""
        return self.failure is None or self.failure.attempted


# Stores a failed record where it belongs and says where (the replay sink may leave it where
# it is, send a fresh copy, or turn it into an `exhausted` dead letter).
FailureSink = Callable[[QueuedRecord], Placement]


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
        return self._record([self._guarded(sub, deadline, sink, replay)])[0]

    def submit_all(
        self,
        subs: Sequence[Submission],
        deadline: Deadline,
        sink: FailureSink,
        concurrency: int,
        *,
        replay: bool = False,
    ) -> list[Outcome]:
        """Submit records concurrently, at most `concurrency` in flight, results in order;
        the posted results are then written together."""
        if len(subs) <= 1 or concurrency <= 1:
            outcomes = [self._guarded(s, deadline, sink, replay) for s in subs]
        else:
            with ThreadPoolExecutor(max_workers=min(concurrency, len(subs))) as pool:
                outcomes = list(pool.map(lambda s: self._guarded(s, deadline, sink, replay), subs))
        return self._record(outcomes)

    def _record(self, outcomes: list[Outcome]) -> list[Outcome]:
        posted = [
            (o.unrecorded, o.usage_id)
            for o in outcomes
            if o.unrecorded is not None and o.usage_id is not None
        ]
        if posted:
            try:
                self.store.record_posted(posted)
            except StoreUnavailable as exc:
                # Posted but not recorded: the keys stay locked until their expiry, after
                # which the next attempt settles them by lookup instead of posting again.
                logger.error(
                    "posted but could not record it; a retry will settle by lookup",
                    extra={"records": len(posted), "error": str(exc)},
                )
        return outcomes

    def _guarded(
        self, sub: Submission, deadline: Deadline, sink: FailureSink, replay: bool
    ) -> Outcome:
        """The per-record boundary: whatever goes wrong in one record ends that record as
        "not stored" with its key released (flagged unseen, so the next holder looks it up
        in Piriod before posting), and the other records of the delivery go on."""
        attempt = _Attempt()
        try:
            return self._submit(sub, deadline, sink, replay, attempt)
        except Exception as exc:
            logger.exception(
                "unexpected error submitting a record; it is not stored",
                extra={"index": sub.index, "error": type(exc).__name__},
            )
            claim = attempt.claim
            if claim is not None and claim.token is not None:
                with contextlib.suppress(Exception):
                    self.store.mark_waiting(
                        claim.pk, claim.token, KeyStatus.RELEASED, attempt.unseen_since()
                    )
            return Outcome(None, reason=f"unexpected error ({type(exc).__name__}); retry")

    def _submit(
        self,
        sub: Submission,
        deadline: Deadline,
        sink: FailureSink,
        replay: bool,
        attempt: _Attempt,
    ) -> Outcome:
        try:
            claim = attempt.claim = self._claim(sub, deadline, replay)
            if not claim.acquired:
                handled = self._already_handled(claim, sub, deadline, sink, replay)
                if handled is not None:
                    return handled
                claim = attempt.claim = self._claim(sub, deadline, replay)  # free again
                if not claim.acquired:
                    return self._hand_over(sub, claim.previous, sink)
        except StoreUnavailable as exc:
            return Outcome(None, reason=str(exc))

        since = attempt.since = _unsettled_since(claim.previous, sub.previous)
        usage = sub.usage
        if usage.subscription_line is None:
            meter = f"no subscription line for meter {usage.meter_id!r} in source {usage.source!r}"
            refused = PostResult(PostKind.REJECTED, errors={"meter_id": [meter]}, attempted=False)
            return self._store_failure(claim, sub, refused, since, sink)
        if since is not None:
            settled = self._settle(claim, sub, since, deadline)
            if settled is not None:
                if settled.kind is PostKind.CREATED:
                    return Outcome(Status.POSTED, usage_id=settled.usage_id, settled=True)
                return self._store_failure(claim, sub, settled, since, sink)

        if deadline.remaining() < self.post_budget_seconds:
            result = PostResult(
                PostKind.TRANSIENT, error="function time running out; not posted", attempted=False
            )
        else:
            attempt.sent_at = self.clock()
            result = self.piriod.post_usage(usage, sub.tenant, deadline)
        if result.kind is PostKind.CREATED:
            return Outcome(Status.POSTED, usage_id=result.usage_id, unrecorded=claim)
        unseen = attempt.sent_at if result.kind is PostKind.AMBIGUOUS else None
        return self._store_failure(claim, sub, result, unseen, sink)

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
        self, claim: Claim, sub: Submission, deadline: Deadline, sink: FailureSink, replay: bool
    ) -> Outcome | None:
        """The key was not taken: a duplicate of a stored state, a conflict, a key held by
        another attempt (handed over), or None when the key is free again (claim it again).
        Raises StoreUnavailable."""
        holder = claim.previous
        if holder is not None and holder.fingerprint not in (None, sub.usage.fingerprint):
            return self._conflict(sub, sink)
        if holder is not None and holder.locked(self.clock()):
            if replay:  # ReplayFunction looks again shortly, without using up an attempt
                return Outcome(None, busy=True, reason="another attempt holds this key")
            # A concurrent delivery of the same key: wait as long as one post can take.
            holder = self.store.wait_while_locked(
                claim.pk, deadline, min(deadline.remaining(), self.post_budget_seconds)
            )
            if holder is not None and holder.locked(self.clock()):
                return self._hand_over(sub, holder, sink)
        if holder is not None and holder.status in (
            KeyStatus.POSTED,
            KeyStatus.QUEUED,
            KeyStatus.REJECTED,
        ):
            return Outcome(Status.DUPLICATE, usage_id=holder.usage_id)
        return None

    def _hand_over(self, sub: Submission, holder: KeyState | None, sink: FailureSink) -> Outcome:
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
        return self._store_failure(None, sub, unseen, since or self.clock(), sink)

    def _conflict(self, sub: Submission, sink: FailureSink) -> Outcome:
        """A key already used for a different record: this record is not posted, and not
        dropped either: it is rejected into DeadLetterQueue with the reason (the key stays
        with the record that had it first)."""
        refused = PostResult(
            PostKind.REJECTED, errors={"idempotency_key": [KEY_CONFLICT]}, attempted=False
        )
        return self._store_failure(None, sub, refused, None, sink)

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
        for usage in sorted(found, key=lambda u: int(u["id"])):
            usage_id = int(usage["id"])
            created = _parse_created(usage.get("created"))
            if usage_id in held or created is None or created < since - CLOCK_SKEW_SECONDS:
                continue
            try:
                self.store.settle(claim.pk, claim.token, usage_id)
            except StoreUnavailable as exc:
                return PostResult(
                    PostKind.AMBIGUOUS, error=f"found in Piriod, cannot record: {exc}"
                )
            logger.info(
                "ambiguous post settled: found in Piriod",
                extra={"usage_id": usage_id, "scope": sub.usage.key.scope, "index": sub.index},
            )
            return PostResult(PostKind.CREATED, usage_id=usage_id)
        return None

    def _store_failure(
        self,
        claim: Claim | None,
        sub: Submission,
        result: PostResult,
        unseen_since: float | None,
        sink: FailureSink,
    ) -> Outcome:
        """Put a failed record in its queue, then mark its key (when we hold it)."""
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
        ambiguous = unseen_since is not None
        try:
            placement = sink(message)
        except QueueUnavailable as exc:
            # If even this fails, the lock expires on its own and the next holder settles.
            if claim is not None and claim.token is not None:
                with contextlib.suppress(StoreUnavailable):
                    self.store.mark_waiting(claim.pk, claim.token, KeyStatus.RELEASED, unseen_since)
            return Outcome(None, failure=failure, ambiguous=ambiguous, reason=str(exc))
        stored = placement.message.failure
        rejected = stored.kind is FailureKind.REJECTED
        if claim is not None and claim.token is not None:
            waiting = Waiting(
                queue=placement.queue,
                message_id=placement.message_id,
                message=placement.message.to_json(),
                since=sortable_utc(stored.at),
            )
            status = KeyStatus.REJECTED if rejected else KeyStatus.QUEUED
            try:
                self.store.mark_waiting(claim.pk, claim.token, status, unseen_since, waiting)
            except StoreUnavailable as exc:
                logger.warning("stored in queue but key not updated", extra={"error": str(exc)})
        return Outcome(
            Status.REJECTED if rejected else Status.QUEUED,
            errors=stored.errors if rejected else None,
            failure=stored,
            placement=placement,
            ambiguous=ambiguous,
        )


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


def _parse_created(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError):
        return None
