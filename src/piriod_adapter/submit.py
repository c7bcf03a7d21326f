"""Submit records: the one lifecycle every record goes through, whoever hands it over (the
webhook, ReplayFunction, the operator's dead-letter replay). README "The record lifecycle"
draws it; in short, per record and concurrently:

    claim its key ─┬─ held / done elsewhere ──────────────▶ duplicate, or queued (ambiguous)
                   └─ taken ─┬─ an unseen post before? ──▶ settle by lookup
                             │      found, ours alone ───▶ posted
                             │      maybe, unreadable ───▶ queued (ambiguous)
                             │      proven absent ───────┐
                             └───────────────────────────┴▶ post
                                                             201 ──────────────▶ posted
                                                             400 ──────────────▶ rejected
                                                             surely not stored ▶ queued
                                                             anything else ────▶ queued (ambiguous)

A failed record is stored in its queue and its key written as soon as that record is done, so
a concurrent delivery of the same key never waits longer than that record's own post. A
record that can be neither posted nor stored ends "not stored" with its key released (the
sender retries: a 503 for the webhook, a retried message for replay). At the deadline the
delivery is answered whatever is still in flight: a post not yet answered is queued,
flagged ambiguous.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from aws_lambda_powertools.metrics import MetricUnit

from piriod_adapter.clock import Deadline
from piriod_adapter.idempotency import (
    Claim,
    Identical,
    KeyState,
    KeyStatus,
    Result,
    StoreUnavailable,
    Taker,
    Waiting,
)
from piriod_adapter.models import Failure, FailureKind, QueuedRecord, Status, Tenant, Usage
from piriod_adapter.models import sortable_utc as _sortable
from piriod_adapter.observability import logger, metrics
from piriod_adapter.piriod import Listed, PiriodUnavailable, PostKind, PostResult
from piriod_adapter.queue import Placement
from piriod_adapter.tracing import tracer  # tracing

# Piriod's `created` versus our clock, when settling: a matching usage created up to this
# long before our first attempt is still taken as ours. Wider means more clock skew is
# tolerated without a second post; a usage made elsewhere with the same line, instant and
# value in that window would settle ours (under-billing one record, never over-billing).
CLOCK_SKEW_SECONDS = 300.0
CLAIM_TRIES = 3
BREAKER_FAILURES = 3  # connections refused in a row before the rest of a delivery is queued
FINISH_GRACE_SECONDS = 3.0  # a record storing itself at the deadline is waited for this long
KEY_CONFLICT = (
    "this key was already used for a different record (another line, time or quantity); "
    "this record was not posted: send it with a key of its own"
)


# --- the ports: what the lifecycle needs of Piriod and of the idempotency store ---------------


class Piriod(Protocol):
    def post_usage(self, usage: Usage, tenant: Tenant, deadline: Deadline) -> PostResult: ...

    def find_usages(self, usage: Usage, tenant: Tenant, deadline: Deadline) -> list[Listed]: ...

    def recent_usages(
        self, line: int, since: float, tenant: Tenant, deadline: Deadline
    ) -> list[Listed]: ...


class KeyStore(Protocol):
    def claim(
        self, usage: Usage, deadline: Deadline, taker: Taker = ..., *, settling: bool = ...
    ) -> Claim: ...

    def wait_while_locked(self, pk: str, deadline: Deadline, at_most: float) -> KeyState | None: ...

    def finish(self, result: Result) -> None: ...

    def mark_posting(self, claim: Claim) -> None: ...

    def settle(self, claim: Claim, usage_id: int) -> None: ...

    def take_usage(self, claim: Claim, usage_id: int) -> bool: ...

    def give_back(self, claim: Claim, usage_id: int) -> None: ...

    def identical(self, claim: Claim, usage: Usage) -> Identical: ...

    def release(self, claim: Claim, ambiguous_since: float | None) -> None: ...


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


# Stores one failed record where it belongs and says where it went (None: not stored). The
# replay sink may leave a message where it is, send a fresh copy, or turn it into an
# `exhausted` dead letter.
FailureSink = Callable[[Submission, QueuedRecord], Placement | None]


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
class _Attempt:
    """One record's attempt, shared by its worker and the delivery, which may answer for it
    at the deadline: whoever moves first (the worker to post or store, the delivery to
    abandon it) decides, under the lock."""

    claim: Claim | None = None
    since: float | None = None  # an earlier attempt's unseen post
    sent_at: float | None = None  # our own post, once sent
    abandoned: bool = False
    storing: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def unseen_since(self) -> float | None:
        return self.sent_at if self.sent_at is not None else self.since

    def start_post(self, now: float) -> bool:
        with self.lock:
            if self.abandoned:
                return False
            self.sent_at = now
            return True

    def start_storing(self) -> bool:
        with self.lock:
            if self.abandoned:
                return False
            self.storing = True
            return True

    def abandon(self) -> bool:
        """Take the record over from its worker; False when the worker is storing it."""
        with self.lock:
            if self.storing:
                return False
            self.abandoned = True
            return True


class _Abandoned(Exception):
    """The delivery answered for this record at the deadline: its worker stops."""


@dataclass(frozen=True)
class _Failed:
    """A record that failed its attempt, to be stored."""

    sub: Submission
    claim: Claim | None  # None: the key is not ours (a conflict, or held by another)
    message: QueuedRecord
    unseen_since: float | None


@dataclass
class Submitter:
    piriod: Piriod
    store: KeyStore
    post_budget_seconds: float  # a post is started only with at least this much time left
    settle_after_seconds: float
    clock: Callable[[], float] = field(default=time.time)

    def submit(
        self,
        sub: Submission,
        deadline: Deadline,
        sink: FailureSink,
        taker: Taker = Taker.WEBHOOK,
    ) -> Outcome:
        """Submit one record and record its result."""
        return self.submit_all([sub], deadline, sink, 1, taker)[0]

    def submit_all(
        self,
        subs: Sequence[Submission],
        deadline: Deadline,
        sink: FailureSink,
        concurrency: int,
        taker: Taker = Taker.WEBHOOK,
    ) -> list[Outcome]:
        """Submit records concurrently, at most `concurrency` in flight; outcomes in order.
        Returns by the deadline: a record still in flight then is answered for here."""
        breaker = _Breaker() if taker is Taker.WEBHOOK else None
        attempts = [_Attempt() for _ in subs]

        def run(n: int) -> Outcome:
            sub = subs[n]
            # tracing: one span per record; a replayed one continues its message's trace
            trace = sub.previous.trace if sub.previous else None
            with tracer.span("record", parent=trace, index=sub.index) as span:
                outcome = self._guarded(sub, deadline, taker, breaker, attempts[n], sink)
                span.set(status=outcome.status.value if outcome.status else "not_stored")
                return outcome

        if not subs:
            return []
        pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(subs))))
        try:
            futures = [pool.submit(tracer.carry(run), n) for n in range(len(subs))]  # tracing
            pending: set[Future[Outcome]] = set(futures)
            while pending and deadline.remaining() > 0:
                _, pending = wait(
                    pending, timeout=deadline.remaining(), return_when=FIRST_COMPLETED
                )
            outcomes = []
            for n, future in enumerate(futures):
                if future in pending and attempts[n].abandon():
                    future.cancel()
                    outcomes.append(self._at_deadline(subs[n], attempts[n], sink))
                else:
                    outcomes.append(self._result(future))
            return outcomes
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _result(self, future: Future[Outcome]) -> Outcome:
        try:
            return future.result(timeout=FINISH_GRACE_SECONDS)
        except Exception as exc:  # still storing itself: its place is not known
            logger.error("record not done at the deadline", extra={"error": type(exc).__name__})
            return Outcome(None, reason="not done before the function's deadline; retry")

    def _at_deadline(self, sub: Submission, attempt: _Attempt, sink: FailureSink) -> Outcome:
        """A record whose worker is still busy at the deadline (a post not answered, a slow
        store): queued, ambiguous when a post may have been sent."""
        unseen = attempt.unseen_since()
        if unseen is not None:
            result = PostResult(
                PostKind.AMBIGUOUS, error="post still in flight at the function's deadline"
            )
        else:
            result = PostResult(
                PostKind.TRANSIENT, error="function time ran out; not posted", attempted=False
            )
        claim = attempt.claim if attempt.claim is not None and attempt.claim.acquired else None
        logger.warning(
            "record answered at the deadline", extra={"index": sub.index, "sent": unseen}
        )
        return self._store(self._failed(claim, sub, result, unseen), sink)

    # --- one record --------------------------------------------------------------------------

    def _guarded(
        self,
        sub: Submission,
        deadline: Deadline,
        taker: Taker,
        breaker: _Breaker | None,
        attempt: _Attempt,
        sink: FailureSink,
    ) -> Outcome:
        """The per-record boundary: whatever goes wrong in one record ends that record as
        "not stored" with its key released (flagged unseen, so the next holder looks it up
        in Piriod before posting), and the other records of the delivery go on."""
        try:
            return self._lifecycle(sub, deadline, taker, breaker, attempt, sink)
        except _Abandoned:
            return Outcome(None, reason="answered at the deadline")
        except Exception as exc:
            logger.exception(
                "unexpected error submitting a record; it is not stored",
                extra={"index": sub.index, "error": type(exc).__name__},
            )
            claim = attempt.claim
            if claim is not None and claim.acquired and attempt.start_storing():
                try:
                    self.store.release(claim, attempt.unseen_since())
                except Exception as release_error:
                    logger.warning(
                        "key not released", extra={"error": type(release_error).__name__}
                    )
            return Outcome(None, reason=f"unexpected error ({type(exc).__name__}); retry")

    def _lifecycle(
        self,
        sub: Submission,
        deadline: Deadline,
        taker: Taker,
        breaker: _Breaker | None,
        attempt: _Attempt,
        sink: FailureSink,
    ) -> Outcome:
        settling = sub.previous is not None and sub.previous.ambiguous_since is not None
        try:
            claim = attempt.claim = self._claim(sub, deadline, taker, settling)
            if not claim.acquired:
                handled = self._already_handled(claim, sub, deadline, taker)
                if isinstance(handled, _Failed):
                    return self._store_from(attempt, handled, sink)
                if handled is not None:
                    return handled
                claim = attempt.claim = self._claim(sub, deadline, taker, settling)  # free again
                if not claim.acquired:
                    return self._store_from(attempt, self._hand_over(sub, claim.previous), sink)
        except StoreUnavailable as exc:
            return Outcome(None, reason=str(exc))

        since = attempt.since = _unsettled_since(claim.previous, sub.previous)
        usage = sub.usage
        if usage.subscription_line is None:
            meter = f"no subscription line for meter {usage.meter_id!r} in source {usage.source!r}"
            refused = PostResult(PostKind.REJECTED, errors={"meter_id": [meter]}, attempted=False)
            return self._store_from(attempt, self._failed(claim, sub, refused, since), sink)
        if since is not None:
            settled = self._settle(claim, sub, since, deadline)
            if settled is not None:
                if settled.kind is PostKind.CREATED:
                    return Outcome(Status.POSTED, usage_id=settled.usage_id, settled=True)
                failed = self._failed(claim, sub, settled, since)
                return self._store_from(attempt, failed, sink)
            if settling:
                try:
                    self.store.mark_posting(claim)
                except StoreUnavailable as exc:
                    failed = self._failed(
                        claim, sub, PostResult(PostKind.AMBIGUOUS, error=str(exc)), since
                    )
                    return self._store_from(attempt, failed, sink)

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
        elif not attempt.start_post(self.clock()):
            raise _Abandoned
        else:
            started = self.clock()
            with tracer.span("post"):  # tracing
                result = self.piriod.post_usage(usage, sub.tenant, deadline)
            _measure(result, self.clock() - started)
            if breaker is not None:
                breaker.saw(result)
        if result.kind is PostKind.CREATED:
            if not attempt.start_storing():
                raise _Abandoned
            self._finish(Result(claim, KeyStatus.POSTED, usage_id=result.usage_id))
            return Outcome(Status.POSTED, usage_id=result.usage_id)
        # An earlier unseen post was settled above (proven absent), so only ours counts.
        unseen = attempt.sent_at if result.kind is PostKind.AMBIGUOUS else None
        return self._store_from(attempt, self._failed(claim, sub, result, unseen), sink)

    @tracer.traced("claim")  # tracing
    def _claim(self, sub: Submission, deadline: Deadline, taker: Taker, settling: bool) -> Claim:
        claim = self.store.claim(sub.usage, deadline, taker, settling=settling)
        tries = 1
        # The holder may have released the key between our try and our read: try again.
        while (
            not claim.acquired
            and tries < CLAIM_TRIES
            and (claim.previous is None or claim.previous.status is KeyStatus.RELEASED)
        ):
            claim = self.store.claim(sub.usage, deadline, taker, settling=settling)
            tries += 1
        return claim

    def _already_handled(
        self, claim: Claim, sub: Submission, deadline: Deadline, taker: Taker
    ) -> Outcome | _Failed | None:
        """The key was not taken: a duplicate of a stored state, a conflict, a key held by
        another attempt (handed over), or None when the key is free again (claim it again).
        Raises StoreUnavailable."""
        holder = claim.previous
        if holder is not None and holder.fingerprint not in (None, sub.usage.fingerprint):
            return self._conflict(sub)
        if holder is not None and holder.locked(self.clock()):
            if taker is not Taker.WEBHOOK:  # replay looks again shortly, without an attempt
                return Outcome(None, busy=True, reason="another attempt holds this key")
            # A concurrent delivery of the same key: its holder writes the key as soon as
            # that one record is done, so wait as long as one post can take.
            holder = self.store.wait_while_locked(
                claim.pk, deadline, min(deadline.remaining(), self.post_budget_seconds)
            )
            if holder is not None and holder.locked(self.clock()):
                return self._hand_over(sub, holder)
        if holder is not None and holder.status in (
            KeyStatus.POSTED,
            KeyStatus.QUEUED,
            KeyStatus.REJECTED,
            KeyStatus.AGGREGATED,  # counted into a window (the source aggregated then)
        ):
            # Done, or waiting elsewhere (a redelivered replay message of a record that was
            # rejected or dead-lettered meanwhile): nothing is sent again.
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

    # --- settling an unseen post -------------------------------------------------------------

    @tracer.traced("settle")  # tracing
    def _settle(
        self, claim: Claim, sub: Submission, since: float, deadline: Deadline
    ) -> PostResult | None:
        """An earlier attempt may have landed unseen. Ask Piriod before posting again.
        Returns CREATED (found, and taken for this record alone), a failure to store (cannot
        tell yet), or None: the lookup proves that no listed usage can be this record."""
        if self.clock() - since < self.settle_after_seconds:
            return _ambiguous("earlier attempt too recent to look up; will retry", asked=False)
        usage, tenant = sub.usage, sub.tenant
        assert usage.subscription_line is not None
        try:
            found = self._choose(
                claim, sub, since, self.piriod.find_usages(usage, tenant, deadline)
            )
            if found is None:
                # The filter may compare at a precision of its own and miss the usage: only
                # the line's usages created since the first attempt prove it absent.
                recent = self.piriod.recent_usages(
                    usage.subscription_line, since - CLOCK_SKEW_SECONDS, tenant, deadline
                )
                found = self._choose(claim, sub, since, recent)
        except PiriodUnavailable as exc:
            return _ambiguous(f"cannot ask Piriod yet: {exc}")
        except StoreUnavailable as exc:
            return _ambiguous(f"cannot settle yet: {exc}")
        if found is not None and found.kind is PostKind.CREATED:
            logger.info(
                "ambiguous post settled: found in Piriod",
                extra={"usage_id": found.usage_id, "scope": usage.key.scope, "index": sub.index},
            )
        return found

    def _choose(
        self, claim: Claim, sub: Submission, since: float, listed: list[Listed]
    ) -> PostResult | None:
        """The listed usage that is this record's, taken for it; or why none can be chosen
        yet; or None when none can be it. Raises StoreUnavailable."""
        others = self.store.identical(claim, sub.usage)
        if others.posting:  # an identical record is being posted: its usage may be listed
            return _ambiguous("an identical record is being posted; settled on replay")
        candidates: list[int] = []
        unsure = False  # a listed usage that may be this record's but cannot be read
        for entry in listed:
            same = entry.may_be(sub.usage)
            if same is False or (entry.usage_id is not None and entry.usage_id in others.held):
                continue
            if same is None or entry.usage_id is None or entry.created is None:
                unsure = True
            elif entry.created >= since - CLOCK_SKEW_SECONDS:  # else: existed before us
                candidates.append(entry.usage_id)
        if candidates and others.unknown:
            return _ambiguous("identical records were posted without a usage id; not chosen")
        if candidates and others.unseen:
            # A record identical at the listed precision has an unseen post of its own: the
            # listed usage may be that one's, and taking it would let that one post again.
            return _ambiguous("an identical record's earlier post is unseen too; not chosen")
        for usage_id in sorted(set(candidates)):
            if not self.store.take_usage(claim, usage_id):
                continue  # another identical record's usage
            again = self.store.identical(claim, sub.usage)
            if again.posting or usage_id in again.held:
                self.store.give_back(claim, usage_id)
                return _ambiguous("an identical record is being posted; settled on replay")
            self.store.settle(claim, usage_id)
            return PostResult(PostKind.CREATED, usage_id=usage_id)
        if unsure:  # it may be ours: never post again on a guess
            return _ambiguous(
                "Piriod lists a matching usage the adapter cannot read; not posted again"
            )
        return None

    # --- storing a failed record ---------------------------------------------------------------

    def _failed(
        self,
        claim: Claim | None,
        sub: Submission,
        result: PostResult,
        unseen_since: float | None,
    ) -> _Failed:
        """The queue message of a record that failed."""
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
            trace=tracer.traceparent() or (previous.trace if previous else None),  # tracing
        )
        return _Failed(sub, claim, message, unseen_since)

    def _store_from(self, attempt: _Attempt, step: _Failed, sink: FailureSink) -> Outcome:
        if not attempt.start_storing():
            raise _Abandoned
        return self._store(step, sink)

    @tracer.traced("queue")  # tracing
    def _store(self, step: _Failed, sink: FailureSink) -> Outcome:
        """Put a failed record in its queue and write its key: queued or rejected, or (a
        queue down) not stored, its key released for the retry."""
        ambiguous = step.unseen_since is not None
        try:
            placement = sink(step.sub, step.message)
        except Exception as exc:  # the sink is ours; a defect here must not lose records
            logger.exception("storing a failed record raised", extra={"error": str(exc)})
            placement = None
        claim = step.claim if step.claim is not None and step.claim.acquired else None
        if placement is None:
            if claim is not None:
                try:
                    self.store.release(claim, step.unseen_since)
                except StoreUnavailable as exc:
                    logger.warning("key not released", extra={"error": str(exc)})
            return Outcome(
                None,
                failure=step.message.failure,
                ambiguous=ambiguous,
                reason="could not be stored in a queue (SQS unavailable); retry",
            )
        failure = placement.message.failure
        rejected = failure.kind is FailureKind.REJECTED
        if claim is not None:
            waiting = Waiting(
                queue=placement.queue,
                message_id=placement.message_id,
                message=placement.message.to_json(),
                since=_sortable(failure.at),
            )
            status = KeyStatus.REJECTED if rejected else KeyStatus.QUEUED
            self._finish(Result(claim, status, ambiguous_since=step.unseen_since, waiting=waiting))
        return Outcome(
            Status.REJECTED if rejected else Status.QUEUED,
            errors=failure.errors if rejected else None,
            failure=failure,
            placement=placement,
            ambiguous=ambiguous,
        )

    def _finish(self, result: Result) -> None:
        try:
            self.store.finish(result)
        except StoreUnavailable as exc:
            # In Piriod or in a queue, but the key not updated: it stays locked until its
            # expiry, after which the next attempt settles it by lookup.
            logger.error(
                "record handled but its key not updated; a retry settles by lookup",
                extra={"status": result.status.value, "error": str(exc)},
            )


def _ambiguous(error: str, *, asked: bool = True) -> PostResult:
    return PostResult(PostKind.AMBIGUOUS, error=error, attempted=asked)


def _measure(result: PostResult, seconds: float) -> None:
    """Piriod's latency per post, and its refusals of the token (the token alarm's metric:
    a 401, or a token that cannot be sent at all). Powertools' metric store is not
    thread-safe, so threads add under one lock."""
    with _METRICS_LOCK:
        metrics.add_metric(
            name="piriod_latency", unit=MetricUnit.Milliseconds, value=seconds * 1000
        )
        if result.token_refused:
            metrics.add_metric(name="piriod_unauthorized", unit=MetricUnit.Count, value=1)


_METRICS_LOCK = threading.Lock()


def _unsettled_since(previous: KeyState | None, message: QueuedRecord | None) -> float | None:
    candidates = []
    if previous is not None and (since := previous.unsettled_since()) is not None:
        candidates.append(since)
    if message is not None and message.ambiguous_since is not None:
        candidates.append(message.ambiguous_since.timestamp())
    return min(candidates) if candidates else None
