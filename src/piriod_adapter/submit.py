"""Submit one record: the single path shared by the webhook and replay.

claim the key -> settle an earlier unseen attempt -> post -> record the outcome or store the
failure. Every path ends with the record posted once, waiting in a queue, or reported as
"not stored" so that whoever sent it sends it again (a 503 for the webhook, a retried
message for replay). Nothing is acknowledged that is not in one of those places.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from piriod_adapter.clock import Deadline
from piriod_adapter.idempotency import (
    Claim,
    IdempotencyStore,
    KeyState,
    KeyStatus,
    RecordFacts,
    StoreUnavailable,
)
from piriod_adapter.models import Failure, FailureKind, QueuedRecord, Status
from piriod_adapter.observability import logger
from piriod_adapter.piriod import PiriodClient, PiriodUnavailable, PostKind, PostResult, Tenant
from piriod_adapter.queue import QueueUnavailable

CLOCK_SKEW_SECONDS = 60.0  # Piriod's `created` versus our clock, when settling
CLAIM_TRIES = 3


@dataclass(frozen=True)
class Submission:
    """One record to submit, with everything needed to submit it alone."""

    index: int
    line: int
    date_time: str
    quantity: Decimal
    key: str
    scope: str
    tenant: Tenant
    source: str | None = None
    previous: QueuedRecord | None = None  # the queue message, when this is a replay

    @property
    def facts(self) -> RecordFacts:
        return RecordFacts(self.line, self.date_time, self.quantity)

    @classmethod
    def from_message(cls, message: QueuedRecord, index: int = 0) -> Submission:
        return cls(
            index=index,
            line=message.subscription_line,
            date_time=message.date_time,
            quantity=message.quantity,
            key=message.idempotency_key,
            scope=message.scope,
            tenant=Tenant(message.workspace, message.test_mode),
            source=message.source,
            previous=message,
        )


@dataclass(frozen=True)
class Outcome:
    """How one submission ended. `status is None`: neither posted nor stored."""

    status: Status | None
    usage_id: int | None = None
    errors: dict[str, list[str]] | None = None
    failure: Failure | None = None
    ambiguous: bool = False
    settled: bool = False  # posted by finding the earlier, unseen attempt in Piriod
    busy: bool = False  # another attempt holds the key right now
    reason: str | None = None
    # Posted, and its result still to be written over this claimed item (done per batch).
    unrecorded: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def stored(self) -> bool:
        return self.status is not None


# Stores a failed record where it belongs and returns the message as stored (the replay
# sink may leave it where it is, or turn it into an `exhausted` dead letter).
FailureSink = Callable[[QueuedRecord], QueuedRecord]


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
        return self._record([self._submit(sub, deadline, sink, replay)])[0]

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
            outcomes = [self._submit(s, deadline, sink, replay) for s in subs]
        else:
            with ThreadPoolExecutor(max_workers=min(concurrency, len(subs))) as pool:
                outcomes = list(pool.map(lambda s: self._submit(s, deadline, sink, replay), subs))
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

    def _submit(
        self, sub: Submission, deadline: Deadline, sink: FailureSink, replay: bool
    ) -> Outcome:
        pk = self.store.key_pk(sub.scope, sub.key)
        try:
            claim = self._claim(pk, sub, deadline, replay)
        except StoreUnavailable as exc:
            return Outcome(None, reason=str(exc))
        if not claim.acquired:
            return self._already_handled(pk, sub.facts, claim.previous, deadline, replay)
        assert claim.token is not None and claim.item is not None
        token = claim.token
        attempt_started = self.clock()

        since = _unsettled_since(claim.previous, sub.previous)
        if since is not None:
            settled = self._settle(pk, token, sub, since, deadline)
            if settled is not None:
                if settled.kind is PostKind.CREATED:
                    return Outcome(Status.POSTED, usage_id=settled.usage_id, settled=True)
                return self._store_failure(pk, token, sub, settled, since, sink)

        if deadline.remaining() < self.post_budget_seconds:
            result = PostResult(PostKind.TRANSIENT, error="function time running out; not posted")
        else:
            result = self.piriod.post_usage(
                sub.line, sub.date_time, sub.quantity, sub.tenant, deadline
            )
        if result.kind is PostKind.CREATED:
            return Outcome(Status.POSTED, usage_id=result.usage_id, unrecorded=claim.item)
        unseen_since = attempt_started if result.kind is PostKind.AMBIGUOUS else None
        return self._store_failure(pk, token, sub, result, unseen_since, sink)

    def _claim(self, pk: str, sub: Submission, deadline: Deadline, replay: bool) -> Claim:
        claim = self.store.claim(pk, sub.facts, deadline, replay=replay)
        tries = 1
        # The holder may have released the key between our try and our read: try again.
        while (
            not claim.acquired
            and tries < CLAIM_TRIES
            and (claim.previous is None or claim.previous.status is KeyStatus.RELEASED)
        ):
            claim = self.store.claim(pk, sub.facts, deadline, replay=replay)
            tries += 1
        return claim

    def _already_handled(
        self, pk: str, facts: RecordFacts, holder: KeyState | None, deadline: Deadline, replay: bool
    ) -> Outcome:
        if holder is not None and holder.fingerprint not in (None, facts.fingerprint):
            return Outcome(
                Status.DUPLICATE,
                errors={
                    "idempotency_key": [
                        "already used for a different record; this record was not posted"
                    ]
                },
            )
        if holder is not None and holder.locked(self.clock()):
            if replay:
                return Outcome(None, busy=True, reason="another attempt holds this key")
            try:  # a concurrent delivery of the same key: wait for it to finish
                holder = self.store.wait_while_locked(pk, deadline)
            except StoreUnavailable as exc:
                return Outcome(None, reason=str(exc))
            if holder is not None and holder.locked(self.clock()):
                return Outcome(
                    None, busy=True, reason="a concurrent delivery of this key is still in progress"
                )
        if holder is None or holder.status in (KeyStatus.RELEASED, KeyStatus.IN_PROGRESS):
            return Outcome(None, busy=True, reason="key changed hands while claiming; retry")
        return Outcome(Status.DUPLICATE, usage_id=holder.usage_id)

    def _settle(
        self, pk: str, token: str, sub: Submission, since: float, deadline: Deadline
    ) -> PostResult | None:
        """An earlier attempt may have landed unseen. Ask Piriod before posting again.
        Returns CREATED (found), a failure to store (cannot tell yet), or None (not there)."""
        if self.clock() - since < self.settle_after_seconds:
            return PostResult(
                PostKind.AMBIGUOUS, error="earlier attempt too recent to look up; will retry"
            )
        try:
            held, busy = self.store.accounted_for(pk, sub.facts)
        except StoreUnavailable as exc:
            return PostResult(PostKind.AMBIGUOUS, error=f"cannot settle yet: {exc}")
        if busy:  # an identical record is mid-attempt: its usage may not be recorded yet
            return PostResult(PostKind.AMBIGUOUS, error="an identical record is in progress")
        try:
            found = self.piriod.find_usages(
                sub.line, sub.date_time, sub.quantity, sub.tenant, deadline
            )
        except PiriodUnavailable as exc:
            return PostResult(PostKind.AMBIGUOUS, error=f"cannot ask Piriod yet: {exc}")
        for usage in sorted(found, key=lambda u: int(u.get("id", 0))):
            created = _parse_created(usage.get("created"))
            usage_id = usage.get("id")
            if not isinstance(usage_id, int) or usage_id in held:
                continue
            if created is None or created < since - CLOCK_SKEW_SECONDS:
                continue
            try:
                self.store.settle(pk, token, usage_id)
            except StoreUnavailable as exc:
                return PostResult(
                    PostKind.AMBIGUOUS, error=f"found in Piriod, cannot record: {exc}"
                )
            logger.info(
                "ambiguous post settled: found in Piriod",
                extra={"usage_id": usage_id, "scope": sub.scope, "index": sub.index},
            )
            return PostResult(PostKind.CREATED, usage_id=usage_id)
        return None

    def _store_failure(
        self,
        pk: str,
        token: str,
        sub: Submission,
        result: PostResult,
        unseen_since: float | None,
        sink: FailureSink,
    ) -> Outcome:
        now = datetime.now(UTC)
        kind = {
            PostKind.REJECTED: FailureKind.REJECTED,
            PostKind.AMBIGUOUS: FailureKind.AMBIGUOUS,
        }.get(result.kind, FailureKind.TRANSIENT)
        failure = Failure(
            kind=kind, status=result.status, errors=result.errors, error=result.error, at=now
        )
        previous = sub.previous
        message = QueuedRecord(
            subscription_line=sub.line,
            date_time=sub.date_time,
            quantity=sub.quantity,
            idempotency_key=sub.key,
            scope=sub.scope,
            source=sub.source,
            workspace=sub.tenant.workspace,
            test_mode=sub.tenant.test_mode,
            failure=failure,
            attempts=previous.attempts + 1 if previous else 1,
            first_failure_at=previous.first_failure_at if previous else now,
            ambiguous_since=datetime.fromtimestamp(unseen_since, UTC) if unseen_since else None,
        )
        try:
            stored = sink(message)
        except QueueUnavailable as exc:
            # If even this fails, the lock expires on its own and the next holder settles.
            with contextlib.suppress(StoreUnavailable):
                self.store.mark_waiting(pk, token, KeyStatus.RELEASED, unseen_since)
            return Outcome(
                None, failure=failure, ambiguous=unseen_since is not None, reason=str(exc)
            )
        status = (
            KeyStatus.REJECTED if stored.failure.kind is FailureKind.REJECTED else KeyStatus.QUEUED
        )
        try:
            self.store.mark_waiting(pk, token, status, unseen_since)
        except StoreUnavailable as exc:
            logger.warning("stored in queue but key not updated", extra={"error": str(exc)})
        return Outcome(
            Status.REJECTED if status is KeyStatus.REJECTED else Status.QUEUED,
            errors=stored.failure.errors if status is KeyStatus.REJECTED else None,
            failure=stored.failure,
            ambiguous=unseen_since is not None,
        )


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
    except ValueError:
        return None
