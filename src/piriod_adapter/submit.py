"""Submitting a record: the lifecycle of a native or source record and of a window's total,
whoever hands it over (the webhook, ReplayFunction, FlushFunction, the operator's dead-letter
replay). docs/lifecycle.md draws it with counting, the other way into it; in short, per
record and concurrently:

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

A failed record is placed (its queue message written by `failed`, the one failure writer,
which keeps a replayed record's history) and its key written as soon as that record is done,
so a concurrent delivery of the same key never waits longer than that record's own post. A
record that can be neither posted nor placed ends NOT_STORED with its key released (the
sender retries: a 503 for the webhook, a retried message for replay). At the deadline the
delivery is answered whatever is still in flight: a post not yet answered is queued,
flagged ambiguous."""

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

from aws_lambda_powertools.metrics import MetricUnit

from piriod_adapter.clock import Deadline
from piriod_adapter.idempotency import Claim, Identical, Result, StoreUnavailable, Suspect
from piriod_adapter.lifecycle import (
    HANDED_CORRECTION,
    HANDLED,
    KEY_STATUS,
    FailureSink,
    Fate,
    KeyStatus,
    Outcome,
    Submission,
    Taker,
)
from piriod_adapter.models import (
    Failure,
    FailureKind,
    KeyKind,
    QueuedRecord,
    Tenant,
    Usage,
    plain_decimal,
)
from piriod_adapter.models import sortable_utc as _sortable
from piriod_adapter.observability import logger, metrics
from piriod_adapter.piriod import DeleteResult, Listed, PiriodUnavailable, PostResult
from piriod_adapter.table import CORRECTING, Holding, KeyState, Waiting
from piriod_adapter.tracing import tracer

# Piriod's `created` versus our clock, when settling: a matching usage created up to this
# long before our first attempt is still taken as ours. Wider means more clock skew is
# tolerated without a second post; a usage made elsewhere with the same line, instant and
# value in that window would settle ours (under-billing one record, never over-billing).
CLOCK_SKEW_SECONDS = 300.0
CLAIM_TRIES = 3
BREAKER_FAILURES = 3  # connections refused in a row before the rest of a delivery is queued
FINISH_GRACE_SECONDS = 3.0  # a record placing itself at the deadline is waited for this long
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

    def delete_usage(self, usage_id: int, tenant: Tenant, deadline: Deadline) -> DeleteResult: ...

    def usage_listed(
        self, usage_id: int, line: int, instant: datetime, tenant: Tenant, deadline: Deadline
    ) -> bool: ...


class KeyStore(Protocol):
    def claim(
        self, usage: Usage, deadline: Deadline, taker: Taker = ..., *, settling: bool = ...
    ) -> Claim: ...

    def claim_new(self, usages: Sequence[Usage], deadline: Deadline) -> list[Claim | None]: ...

    def wait_while_locked(self, pk: str, deadline: Deadline, at_most: float) -> KeyState | None: ...

    def finish(self, result: Result) -> None: ...

    def mark_posting(self, claim: Claim, quantity: str | None = ...) -> None: ...

    def hold(self, claim: Claim, holding: Holding | None) -> None: ...

    def mark_deleting(
        self, claim: Claim, usage_id: int, correcting: Waiting | None = None
    ) -> None: ...

    def wait_on_key(self, claim: Claim, correcting: Waiting) -> None: ...

    def settle(self, claim: Claim, usage_id: int) -> None: ...

    def take_usage(self, claim: Claim, usage_id: int) -> bool: ...

    def give_back(self, claim: Claim, usage_id: int) -> None: ...

    def identical(self, claim: Claim, usage: Usage) -> Identical: ...

    def release(
        self,
        claim: Claim,
        ambiguous_since: float | None,
        deleting: int | None = ...,
        correcting: Waiting | None = ...,
    ) -> None: ...


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
        refused = (
            result.failure is FailureKind.TRANSIENT and result.status is None and result.attempted
        )
        with self._lock:
            self._refused = self._refused + 1 if refused else 0


class _Attempt:
    """One record's attempt, shared by its worker and the delivery, which may answer for it
    at the deadline: whoever moves first (the worker to post or place it, the delivery to
    abandon it) decides, under the lock."""

    def __init__(self) -> None:
        self.claim: Claim | None = None
        self.since: float | None = None  # an earlier attempt's unseen post
        self.sent_at: float | None = None  # our own post, once sent
        self.quantity: str | None = None  # the quantity our post carries, once sent
        self.plan: _Plan | None = None  # what Piriod holds for the key, as the attempt goes on
        self.deleting: int | None = None  # a usage whose DELETE this attempt sent (until answered)
        self.left: tuple[Holding | None, int | None] | None = None  # the plan's holding and DELETE
        self.abandoned = False
        self.placing = False
        self.lock = threading.Lock()

    def unseen_since(self) -> float | None:
        return self.sent_at if self.sent_at is not None else self.since

    def start_post(self, now: float, quantity: str) -> bool:
        with self.lock:
            if self.abandoned:
                return False
            self.sent_at, self.quantity = now, quantity
            return True

    def start_placing(self) -> bool:
        with self.lock:
            if self.abandoned:
                return False
            self.placing = True
            return True

    def abandon(self) -> bool:
        """Take the record over from its worker; False when the worker is placing it. What
        the worker knew of its key is kept as it stood (`left`): from now on the worker sends
        nothing more to Piriod."""
        with self.lock:
            if self.placing:
                return False
            self.abandoned = True
            plan = self.plan
            if plan is not None:
                deleting = self.deleting if self.deleting is not None else plan.deleting
                self.left = (plan.holding, deleting)
            return True

    def start_delete(self, usage_id: int) -> bool:
        """About to DELETE a usage the key holds: False once the deadline took the record."""
        with self.lock:
            if self.abandoned:
                return False
            self.deleting = usage_id
            return True

    def holds(self, holding: Holding | None, *, deleting: bool = False) -> None:
        """What Piriod holds for the key now, as the worker learnt it (`deleting`: and the
        DELETE it asked about, or sent, is answered)."""
        assert self.plan is not None
        with self.lock:
            self.plan.holding = holding
            if deleting:
                self.plan.deleting = self.deleting = None


class _NewKeys:
    """A webhook delivery's new keys, claimed together (KeyStore.claim_new: one transaction
    instead of a PutItem per record) by the first record's worker to need its claim; the
    others wait for it. Each claim made goes to its record's attempt before that record's
    own worker starts, so that the deadline answers for it as for a claim the worker made;
    one whose record was answered at the deadline meanwhile is released. A key found held
    or done comes as a claim not acquired, with its holder's state, as `claim` answers it;
    a record without one claims its key alone, as it always did."""

    def __init__(
        self,
        submitter: "Submitter",
        subs: Sequence[Submission],
        attempts: Sequence[_Attempt],
        deadline: Deadline,
    ) -> None:
        self._submitter = submitter
        self._subs = subs
        self._attempts = attempts
        self._deadline = deadline
        self._lock = threading.Lock()
        self._done = False

    def claim(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            claims = self._submitter._claim_new(self._subs, self._deadline)
            for attempt, claim in zip(self._attempts, claims, strict=True):
                if claim is None:
                    continue
                with attempt.lock:
                    orphan = attempt.abandoned
                    if not orphan:
                        attempt.claim = claim
                if orphan and claim.acquired:  # answered at the deadline without it
                    try:
                        self._submitter.store.release(claim, None)
                    except StoreUnavailable as exc:
                        logger.warning("key not released", extra={"error": str(exc)})


class _Abandoned(Exception):
    """The delivery answered for this record at the deadline: its worker stops."""


class Failed(NamedTuple):
    """A record that failed its attempt, to be placed: its queue message, its key when the
    attempt holds it, and what Piriod still holds for it (a correction not applied yet)."""

    sub: Submission
    claim: Claim | None  # None: the key is not ours (a conflict, held by another, an event)
    message: QueuedRecord
    unseen_since: float | None
    holding: Holding | None = None  # the usage Piriod still holds for the key
    deleting: int | None = None  # a usage whose DELETE went unanswered
    quantity: str | None = None  # what this attempt posted, if not the record's own
    correcting: bool = False  # a correction's attempt: if no queue takes it, it waits on the key


def _correction_waits(state: KeyState | None, sub: Submission, taker: Taker, now: float) -> bool:
    """A posted key with a correction Piriod does not reflect yet, free to take: a replay
    (or the operator's) applies it rather than calling the record a duplicate. Not a key
    conflict's dead letter: another record under the key is rejected again, whatever waits
    on it (its fingerprint is not compared here: a correction's message may carry the
    record as mapped, not as the key was first claimed)."""
    conflict = sub.previous is not None and "idempotency_key" in (sub.previous.failure.errors or {})
    return (
        taker in (Taker.REPLAY, Taker.OPERATOR)
        and not conflict
        and state is not None
        and state.status is KeyStatus.POSTED
        and state.pending
        and not state.locked(now)
    )


def failed(
    sub: Submission,
    result: PostResult,
    unseen_since: float | None = None,
    claim: Claim | None = None,
    **correcting: Any,
) -> Failed:
    """The queue message of a record that failed, for any route (the one writer of a failure:
    a replayed record keeps its attempts and first failure)."""
    now = datetime.now(UTC)
    failure = Failure(
        kind=result.failure or FailureKind.TRANSIENT,
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
        # the trace of this attempt, or the one the record came with (tracing on)
        trace=tracer.traceparent() or (previous.trace if previous else None),
    )
    return Failed(sub, claim, message, unseen_since, **correcting)


class Submitter:
    def __init__(
        self,
        piriod: Piriod,
        store: KeyStore,
        post_budget_seconds: float,  # a post is started only with at least this much time left
        settle_after_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.piriod = piriod
        self.store = store
        self.post_budget_seconds = post_budget_seconds
        self.settle_after_seconds = settle_after_seconds
        self.clock = clock

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
        # a webhook's keys are new but for retries: claimed together, once
        new_keys = _NewKeys(self, subs, attempts, deadline) if taker is Taker.WEBHOOK else None

        def run(n: int) -> Outcome:
            sub = subs[n]
            # tracing: one span per record; a replayed one continues its message's trace
            trace = sub.previous.trace if sub.previous else None
            with tracer.span("record", parent=trace, index=sub.index) as span:
                outcome = self._guarded(sub, deadline, taker, breaker, attempts[n], sink, new_keys)
                span.set(status=outcome.answer, fate=outcome.fate.value)
                return outcome

        if not subs:
            return []
        pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(subs))))
        try:
            futures = [pool.submit(tracer.carry(run), n) for n in range(len(subs))]
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
        except Exception as exc:  # still placing itself: its place is not known
            logger.error("record not done at the deadline", extra={"error": type(exc).__name__})
            return Outcome(Fate.NOT_STORED, reason="not done before the function's deadline; retry")

    def _at_deadline(self, sub: Submission, attempt: _Attempt, sink: FailureSink) -> Outcome:
        """A record whose worker is still busy at the deadline (a post not answered, a slow
        store): queued, ambiguous when a post may have been sent."""
        claim = attempt.claim if attempt.claim is not None and attempt.claim.acquired else None
        plan, left, unseen = attempt.plan, attempt.left, attempt.unseen_since()
        if claim is not None and left is None:
            # Taken before its worker read the key: what the key said when it was claimed (the
            # worker sends nothing to Piriod from now on).
            plan = _Plan.of(claim.previous, sub.usage)
            left = (plan.holding, plan.deleting)
            if unseen is None:
                unseen = _unsettled_since(claim.previous, sub.previous)
        if unseen is not None:
            result = PostResult(
                FailureKind.AMBIGUOUS, error="post still in flight at the function's deadline"
            )
        else:
            result = PostResult(
                FailureKind.TRANSIENT, error="function time ran out; not posted", attempted=False
            )
        logger.warning(
            "record answered at the deadline", extra={"index": sub.index, "sent": unseen}
        )
        if plan is None or not plan.correcting or claim is None or left is None:
            return self.place(failed(sub, result, unseen, claim, quantity=attempt.quantity), sink)
        # A correction's attempt keeps what Piriod may still hold for the key: its usage,
        # and a DELETE in flight (asked about before anything is sent again).
        holding, deleting = left
        return self.place(
            failed(
                sub,
                result,
                unseen,
                claim,
                holding=holding,
                deleting=deleting,
                quantity=attempt.quantity or plan.last_quantity,
                correcting=True,
            ),
            sink,
        )

    # --- one record --------------------------------------------------------------------------

    def _guarded(
        self,
        sub: Submission,
        deadline: Deadline,
        taker: Taker,
        breaker: _Breaker | None,
        attempt: _Attempt,
        sink: FailureSink,
        new_keys: _NewKeys | None = None,
    ) -> Outcome:
        """The per-record boundary: whatever goes wrong in one record ends that record as
        "not stored" with its key released (flagged unseen, so the next holder looks it up
        in Piriod before posting), and the other records of the delivery go on."""
        try:
            if new_keys is not None:
                new_keys.claim()  # the delivery's new keys, the first time a record asks
                if attempt.abandoned:  # answered at the deadline meanwhile
                    raise _Abandoned
            return self._lifecycle(sub, deadline, taker, breaker, attempt, sink)
        except _Abandoned:
            return Outcome(Fate.NOT_STORED, reason="answered at the deadline")
        except Exception as exc:
            logger.exception(
                "unexpected error submitting a record; it is not stored",
                extra={"index": sub.index, "error": type(exc).__name__},
            )
            claim = attempt.claim
            if claim is not None and claim.acquired and attempt.start_placing():
                plan = attempt.plan  # a DELETE in doubt stays flagged
                deleting = attempt.deleting or (plan.deleting if plan is not None else None)
                try:
                    self.store.release(claim, attempt.unseen_since(), deleting)
                except Exception as release_error:
                    logger.warning(
                        "key not released", extra={"error": type(release_error).__name__}
                    )
            return Outcome(
                Fate.NOT_STORED, reason=f"unexpected error ({type(exc).__name__}); retry"
            )

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
            claim = attempt.claim  # claimed with the delivery's other new keys, if it was
            if claim is None:
                claim = attempt.claim = self._claim(sub, deadline, taker, settling)
            if not claim.acquired and _correction_waits(claim.previous, sub, taker, self.clock()):
                # A correction accepted while another attempt held the key (handed to
                # ReplayQueue by the corrections route), or one its holder did not apply:
                # this attempt applies it, as a correction of the record.
                taker = Taker.CORRECTION
                claim = attempt.claim = self._claim(sub, deadline, taker, settling)
            if not claim.acquired:
                handled = self._already_handled(claim, sub, deadline, taker)
                if isinstance(handled, Failed):
                    return self._place_from(attempt, handled, sink)
                if handled is not None:
                    return handled
                claim = attempt.claim = self._claim(sub, deadline, taker, settling)  # free again
                if not claim.acquired:
                    return self._place_from(attempt, self._hand_over(sub, claim.previous), sink)
        except StoreUnavailable as exc:
            return Outcome(Fate.NOT_STORED, reason=str(exc))

        since = attempt.since = _unsettled_since(claim.previous, sub.previous)
        usage = sub.usage
        if usage.subscription_line is None:
            refused = PostResult(
                FailureKind.REJECTED, errors={"meter_id": [no_line(usage)]}, attempted=False
            )
            return self._place_from(attempt, failed(sub, refused, since, claim), sink)
        plan = attempt.plan = _Plan.of(claim.previous, usage)
        if since is not None:
            unseen = plan.unseen(usage)
            settled = self._settle(claim, sub, unseen, since, deadline, final=not plan.correcting)
            if settled is not None:
                if not settled.created:
                    return self._place_from(attempt, plan.failed(sub, settled, since, claim), sink)
                if not plan.correcting:
                    return Outcome(Fate.POSTED, usage_id=settled.usage_id, settled=True)
                attempt.holds(Holding(unseen.quantity_text, settled.usage_id))
            elif settling and not plan.correcting:
                try:
                    self.store.mark_posting(claim)
                except StoreUnavailable as exc:
                    unknown = PostResult(FailureKind.AMBIGUOUS, error=str(exc))
                    return self._place_from(attempt, failed(sub, unknown, since, claim), sink)
        if plan.correcting:  # SPEC 10: what Piriod holds for the key becomes what it should
            corrected = self._correct(claim, sub, plan, deadline, attempt, sink)
            if corrected is not None:
                return corrected
            assert plan.desired is not None
            usage = usage.model_copy(update={"quantity": plan.desired})

        if deadline.remaining() < self.post_budget_seconds:
            result = PostResult(
                FailureKind.TRANSIENT,
                error="function time running out; not posted",
                attempted=False,
            )
        elif breaker is not None and breaker.open:
            result = PostResult(
                FailureKind.TRANSIENT,
                error="Piriod refused the delivery's first connections; not tried",
                attempted=False,
            )
        elif not attempt.start_post(self.clock(), usage.quantity_text):
            raise _Abandoned
        else:
            started = self.clock()
            with tracer.span("post"):
                result = self.piriod.post_usage(usage, sub.tenant, deadline)
            _measure(result, self.clock() - started)
            if breaker is not None:
                breaker.saw(result)
        if result.created:
            if not attempt.start_placing():
                raise _Abandoned
            self._finish(
                Result(
                    claim,
                    KeyStatus.POSTED,
                    usage_id=result.usage_id,
                    quantity=usage.quantity_text,
                    applied=plan.rev if plan.correcting else None,
                )
            )
            return Outcome(Fate.POSTED, usage_id=result.usage_id)
        # An earlier unseen post was settled above (proven absent), so only ours counts.
        unseen_at = attempt.sent_at if result.failure is FailureKind.AMBIGUOUS else None
        step = failed(
            sub, result, unseen_at, claim, quantity=usage.quantity_text, correcting=plan.correcting
        )
        return self._place_from(attempt, step, sink)

    # --- corrections (SPEC 10) -----------------------------------------------------------------

    def _correct(
        self,
        claim: Claim,
        sub: Submission,
        plan: "_Plan",
        deadline: Deadline,
        attempt: _Attempt,
        sink: FailureSink,
    ) -> Outcome | None:
        """Make what Piriod holds for the key what the record should be now (its last
        amend, or nothing once cancelled): settle a DELETE whose answer was lost, delete a
        usage that is not what it should be, and finish when nothing is left to post. None:
        Piriod holds nothing and the record's quantity (`plan.desired`) is to be posted."""
        usage, line = sub.usage, sub.usage.subscription_line
        assert line is not None
        on_key = False  # this attempt listed its correction as waiting on the key
        try:
            doubted = None  # a held usage an earlier DELETE may still remove
            if plan.deleting is not None:  # asked before anything is sent again
                listed = self.piriod.usage_listed(
                    plan.deleting, line, usage.date_time, sub.tenant, deadline
                )  # not listed: the DELETE went through (of that usage, not one found since)
                ours = plan.holding is None or plan.holding.usage_id in (None, plan.deleting)
                if listed and ours and plan.holding is not None:
                    # Listed proves nothing: that DELETE may still be inside Piriod. It is
                    # sent again and seen through (a 404 is as good), and what the record
                    # should be is posted anew.
                    doubted = plan.deleting
                # a doubt stays flagged until its DELETE is sent again and seen through
                gone = not listed and ours
                attempt.holds(None if gone else plan.holding, deleting=doubted is None)
            if plan.holding is not None and (doubted is not None or not plan.holds_desired()):
                held_id = doubted if doubted is not None else plan.holding.usage_id
                if held_id is None:  # posted by a 201 without an id: found as settling finds
                    held_id = self._find_held(claim, sub, plan, deadline)
                if held_id is not None:
                    # Written before it is sent: until the key says otherwise, whoever holds
                    # it next asks Piriod whether this usage is still there (a release, a
                    # crash or a failed write after the DELETE keeps the question), and the
                    # correction waits on the key for FlushFunction until this attempt's
                    # finish: once Piriod's usage is gone, a record whose attempt stops
                    # with no queue and no key written is still finished by someone.
                    self.store.mark_deleting(claim, held_id, _waits_meanwhile(sub, plan, claim))
                    on_key = True
                    if not attempt.start_delete(held_id):  # the deadline placed it
                        raise _Abandoned
                    deleted = self.piriod.delete_usage(held_id, sub.tenant, deadline)
                    if not deleted.gone:
                        refused = PostResult(
                            deleted.failure,
                            deleted.status,
                            error=deleted.error,
                            attempted=deleted.attempted,  # never sent: no replay attempt spent
                            token_refused=deleted.token_refused,
                        )
                        unsure = deleted.failure is FailureKind.AMBIGUOUS or held_id == doubted
                        lost = held_id if unsure else None
                        step = plan.failed(sub, refused, None, claim, deleting=lost)
                        return self._place_from(attempt, step, sink)
                attempt.holds(None, deleting=True)
                if plan.desired is not None:
                    self.store.hold(claim, None)  # deleted: an amend's post may follow
            if (plan.desired is None or plan.holds_desired()) and not on_key:
                # Nothing to send: the attempt's end is its only other write. The correction
                # waits on the key until then, so that an end write that fails (or an
                # attempt that stops) leaves it for FlushFunction, not stale on the key.
                self.store.wait_on_key(claim, _waits_meanwhile(sub, plan, claim))
        except (PiriodUnavailable, _NotFound) as exc:
            unknown = PostResult(FailureKind.AMBIGUOUS, error=f"cannot correct yet: {exc}")
            return self._place_from(attempt, plan.failed(sub, unknown, None, claim), sink)
        except StoreUnavailable as exc:
            unknown = PostResult(FailureKind.AMBIGUOUS, error=f"cannot correct yet: {exc}")
            return self._place_from(attempt, plan.failed(sub, unknown, None, claim), sink)
        if (plan.desired is None or plan.holds_desired()) and not attempt.start_placing():
            raise _Abandoned
        if plan.desired is None:  # cancelled (or a window total of zero): nothing is held
            status = KeyStatus.CANCELLED if plan.cancelled else KeyStatus.POSTED
            # A window's total of zero is kept as a posted total of "0" (never posted; what
            # Piriod held for it is deleted), not at the quantity its message carried: a
            # restatement to that quantity later must post it anew, not find it held.
            quantity = usage.quantity_text if plan.cancelled else "0"
            self._finish(
                Result(claim, status, quantity=quantity, applied=plan.rev, holding=None),
                posted_nothing=True,
            )
            return Outcome(Fate.CANCELLED if plan.cancelled else Fate.POSTED)
        if plan.holding is not None:  # already what it should be
            self._finish(
                Result(
                    claim,
                    KeyStatus.POSTED,
                    usage_id=plan.holding.usage_id,
                    quantity=plan.holding.quantity,
                    applied=plan.rev,
                    kept=True,
                ),
                posted_nothing=True,
            )
            return Outcome(Fate.POSTED, usage_id=plan.holding.usage_id)
        desired = plain_decimal(plan.desired)
        if plan.last_quantity != desired:  # an unseen post of it carries this quantity
            try:
                self.store.mark_posting(claim, desired)
            except StoreUnavailable as exc:
                unknown = PostResult(FailureKind.TRANSIENT, error=str(exc), attempted=False)
                return self._place_from(attempt, plan.failed(sub, unknown, None, claim), sink)
        return None

    def _find_held(
        self, claim: Claim, sub: Submission, plan: "_Plan", deadline: Deadline
    ) -> int | None:
        """The id of the usage a record posted without one (a 201 without an id), taken for
        this record as settling takes it (one listed usage for one record). None: Piriod
        lists none that may be it (nothing to delete). Raises _NotFound when it cannot tell,
        PiriodUnavailable, StoreUnavailable."""
        assert plan.holding is not None
        held = sub.usage.model_copy(update={"quantity": Decimal(plan.holding.quantity)})
        since = plan.posted_at or self.clock()
        found = self._settle(claim, sub, held, since - 1, deadline, final=False, wait=False)
        if found is None:
            return None
        if not found.created or found.usage_id is None:
            raise _NotFound(found.error or "the usage to delete cannot be told yet")
        return found.usage_id

    @tracer.traced("claim")
    def _claim_new(self, subs: Sequence[Submission], deadline: Deadline) -> list[Claim | None]:
        return self.store.claim_new([sub.usage for sub in subs], deadline)

    @tracer.traced("claim")
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
    ) -> Outcome | Failed | None:
        """The key was not taken: a duplicate of a stored state, a conflict, a key held by
        another attempt (handed over), or None when the key is free again (claim it again).
        Raises StoreUnavailable."""
        holder = claim.previous
        mismatch = holder is not None and holder.fingerprint not in (None, sub.usage.fingerprint)
        # a correction's hand-over is the key's own record (HANDED_CORRECTION), never another
        handed = sub.previous is not None and sub.previous.failure.error == HANDED_CORRECTION
        if mismatch and taker is not Taker.CORRECTION and not handed:
            return self._conflict(sub)
        if holder is not None and holder.locked(self.clock()):
            if taker is not Taker.WEBHOOK:  # replay looks again shortly, without an attempt
                return Outcome(Fate.BUSY, reason="another attempt holds this key")
            # A concurrent delivery of the same key: its holder writes the key as soon as
            # that one record is done, so wait as long as one post can take.
            holder = self.store.wait_while_locked(
                claim.pk, deadline, min(deadline.remaining(), self.post_budget_seconds)
            )
            if holder is not None and holder.locked(self.clock()):
                return self._hand_over(sub, holder)
        if holder is not None and holder.status in HANDLED:
            # Done, or waiting elsewhere (a redelivered replay message of a record that was
            # rejected or dead-lettered meanwhile): nothing is sent again.
            return Outcome(Fate.DUPLICATE, usage_id=holder.usage_id)
        return None

    def _hand_over(self, sub: Submission, holder: KeyState | None) -> Failed:
        """Another attempt holds the key past a post's time (it is slow, or it stopped
        mid-post and its lock has not expired yet): whatever it did is unseen. The record
        waits in ReplayQueue flagged ambiguous; ReplayFunction takes the key once it is
        free and looks the record up in Piriod before posting it."""
        since = holder.attempt_started if holder is not None else None
        unseen = PostResult(
            FailureKind.AMBIGUOUS,
            error="another attempt holds this key; its outcome is settled on replay",
            attempted=False,
        )
        return failed(sub, unseen, since or self.clock())

    def _conflict(self, sub: Submission) -> Failed:
        """A key already used for a different record: this record is not posted, and not
        dropped either: it is rejected into DeadLetterQueue with the reason (the key stays
        with the record that had it first)."""
        return failed(sub, key_conflict())

    # --- settling an unseen post -------------------------------------------------------------

    @tracer.traced("settle")
    def _settle(
        self,
        claim: Claim,
        sub: Submission,
        usage: Usage,
        since: float,
        deadline: Deadline,
        *,
        final: bool = True,
        wait: bool = True,
    ) -> PostResult | None:
        """An earlier attempt may have landed unseen as `usage` (the record as that attempt
        posted it). Ask Piriod before posting again. Returns CREATED (found, and taken for
        this record alone: recorded as posted when `final`, as held otherwise), a failure to
        place (cannot tell yet), or None: the lookup proves that no listed usage can be it.
        `wait`: only once the attempt is SETTLE_AFTER old (a request still inside Piriod
        cannot land after the lookup)."""
        if wait and self.clock() - since < self.settle_after_seconds:
            return _ambiguous("earlier attempt too recent to look up; will retry", asked=False)
        tenant = sub.tenant
        assert usage.subscription_line is not None
        try:
            found = self._choose(
                claim, sub, usage, since, self.piriod.find_usages(usage, tenant, deadline), final
            )
            if found is None:
                # The filter may compare at a precision of its own and miss the usage: only
                # the line's usages created since the first attempt prove it absent.
                recent = self.piriod.recent_usages(
                    usage.subscription_line, since - CLOCK_SKEW_SECONDS, tenant, deadline
                )
                found = self._choose(claim, sub, usage, since, recent, final)
        except PiriodUnavailable as exc:
            return _ambiguous(f"cannot ask Piriod yet: {exc}")
        except StoreUnavailable as exc:
            return _ambiguous(f"cannot settle yet: {exc}")
        if found is not None and found.created:
            logger.info(
                "ambiguous post settled: found in Piriod",
                extra={"usage_id": found.usage_id, "scope": usage.key.scope, "index": sub.index},
            )
        return found

    def _choose(
        self,
        claim: Claim,
        sub: Submission,
        usage: Usage,
        since: float,
        listed: list[Listed],
        final: bool,
    ) -> PostResult | None:
        """The listed usage that is this record's (posted as `usage`), taken for it; or why
        none can be chosen yet; or None when none can be it. Raises StoreUnavailable."""
        others = self.store.identical(claim, usage)
        if others.posting:  # an identical record is being posted: its usage may be listed
            return _ambiguous("an identical record is being posted; settled on replay")
        candidates: dict[int, Listed] = {}
        unsure = False  # a listed usage that may be this record's but cannot be read
        for entry in listed:
            same = entry.may_be(usage)
            if same is False or (entry.usage_id is not None and entry.usage_id in others.held):
                continue
            if same is None or entry.usage_id is None or entry.created is None:
                unsure = True
            elif entry.created >= since - CLOCK_SKEW_SECONDS:  # else: existed before us
                candidates[entry.usage_id] = entry
        # The key already holds a known usage (its post ended and wrote it; what made this
        # look unseen was a hand-over while that post was in flight): listed, it is this
        # record's, whoever else is identical.
        own = claim.previous.usage_id if claim.previous is not None else None
        chosen = (
            [own]
            if own is not None and own in candidates
            else _unclaimed(usage, others, candidates)
        )
        if isinstance(chosen, PostResult):
            return chosen
        for usage_id in chosen:
            if not self.store.take_usage(claim, usage_id):
                continue  # another identical record's usage
            again = self.store.identical(claim, usage)
            if again.posting or usage_id in again.held:
                self.store.give_back(claim, usage_id)
                return _ambiguous("an identical record is being posted; settled on replay")
            if final:
                self.store.settle(claim, usage_id)
            else:
                self.store.hold(claim, Holding(usage.quantity_text, usage_id))
            return PostResult.posted(usage_id, status=None)
        if unsure:  # it may be ours: never post again on a guess
            return _ambiguous(
                "Piriod lists a matching usage the adapter cannot read; not posted again"
            )
        return None

    # --- placing a failed record ----------------------------------------------------------------

    def _place_from(self, attempt: _Attempt, step: Failed, sink: FailureSink) -> Outcome:
        if not attempt.start_placing():
            raise _Abandoned
        return self.place(step, sink)

    @tracer.traced("queue")
    def place(self, step: Failed, sink: FailureSink) -> Outcome:
        """Put a failed record in its queue and write its key (when the attempt holds it):
        its fate is where it went; or (a queue down) not stored, its key released for the
        retry."""
        try:
            placement = sink(step.sub, step.message)
        except Exception as exc:  # the sink is ours; a defect here must not lose records
            logger.exception("placing a failed record raised", extra={"error": str(exc)})
            placement = None
        claim = step.claim if step.claim is not None and step.claim.acquired else None
        if placement is None:
            if claim is not None:
                # a correction that no queue takes waits on its key, for FlushFunction
                waits = _waiting_on_key(step.message) if step.correcting else None
                try:
                    self.store.release(claim, step.unseen_since, step.deleting, waits)
                except StoreUnavailable as exc:
                    logger.warning("key not released", extra={"error": str(exc)})
            return Outcome(
                Fate.NOT_STORED,
                failure=step.message.failure,
                reason="could not be stored in a queue (SQS unavailable); retry",
            )
        failure = placement.message.failure
        if claim is not None:
            waiting = Waiting(
                queue=placement.queue,
                message_id=placement.message_id,
                message=placement.message.to_json(),
                since=_sortable(failure.at),
            )
            status = KEY_STATUS[placement.fate]
            self._finish(
                Result(
                    claim,
                    status,
                    ambiguous_since=step.unseen_since,
                    waiting=waiting,
                    quantity=step.quantity,
                    holding=step.holding,
                    deleting=step.deleting,
                )
            )
        return Outcome(
            placement.fate,
            errors=failure.errors if placement.fate is Fate.REJECTED else None,
            failure=failure,
            placement=placement,
        )

    def _finish(self, result: Result, *, posted_nothing: bool = False) -> None:
        """Write the attempt's end over its key. If it cannot be written, the key stays held
        until its lock expires, and the next holder settles a post of it by lookup. So an
        attempt that `posted_nothing` (a correction that sent nothing more: its correction is
        already listed on the key, `_correct`) then releases the key: there is no post to
        look up. Never after a post: a release would hide it."""
        try:
            self.store.finish(result)
        except StoreUnavailable as exc:
            # In Piriod or in a queue, but the key not updated: it stays locked until its
            # expiry, after which the next attempt settles it by lookup.
            logger.error(
                "record handled but its key not updated; a retry settles by lookup",
                extra={"status": result.status.value, "error": str(exc)},
            )
            if posted_nothing:  # the correction stays listed: FlushFunction finishes it
                try:
                    self.store.release(result.claim, result.ambiguous_since, result.deleting)
                except StoreUnavailable as again:
                    logger.error("key not released", extra={"error": str(again)})


class _NotFound(Exception):
    """The usage a correction must delete cannot be told yet."""


class _Plan:
    """What an attempt must make of what Piriod holds for its key (SPEC 10), read from the
    key when it claimed it: `desired`, the record's quantity now (its last amend; None once
    cancelled, or a window total of zero); `holding`, the usage Piriod holds for it, if any;
    `deleting`, a usage whose DELETE went unanswered; `rev`, the corrections this attempt
    applies. A record no correction touched is not `correcting`: its attempt is as before.
    `last_quantity` is the quantity of the key's last post: what an unseen post carries."""

    def __init__(
        self,
        correcting: bool,  # False: nothing but the record as delivered, to post
        rev: int,
        cancelled: bool,
        desired: Decimal | None,
        holding: Holding | None,
        deleting: int | None,
        last_quantity: str,
        posted_at: float | None,
    ) -> None:
        self.correcting = correcting
        self.rev = rev
        self.cancelled = cancelled
        self.desired = desired
        self.holding = holding
        self.deleting = deleting
        self.last_quantity = last_quantity
        self.posted_at = posted_at

    @classmethod
    def of(cls, state: KeyState | None, usage: Usage) -> "_Plan":
        window = usage.key.kind is KeyKind.WINDOW
        nothing = usage.quantity == 0 and window
        if state is None:  # a new key: its record as delivered (a window's zero: nothing)
            desired = None if nothing else usage.quantity
            return cls(nothing, 0, False, desired, None, None, usage.quantity_text, None)
        desired = Decimal(state.target) if state.target else usage.quantity
        if state.cancelled or (desired == 0 and window):
            desired = None  # nothing: cancelled, or a window total of zero
        holding = None if state.holding is None else state.holding.listed(window)
        correcting = (
            state.rev > 0
            or state.holding is not None
            or state.deleting is not None
            or desired is None
        )
        return cls(
            correcting,
            state.rev,
            state.cancelled,
            desired,
            holding,
            state.deleting,
            state.quantity or usage.quantity_text,
            state.posted_at,
        )

    def unseen(self, usage: Usage) -> Usage:
        """The record as its last, unseen post carried it."""
        if Decimal(self.last_quantity) == usage.quantity:
            return usage
        return usage.model_copy(update={"quantity": Decimal(self.last_quantity)})

    def holds_desired(self) -> bool:
        return (
            self.holding is not None
            and self.desired is not None
            and Decimal(self.holding.quantity) == self.desired
        )

    def failed(
        self,
        sub: Submission,
        result: PostResult,
        unseen_since: float | None,
        claim: Claim,
        deleting: int | None = None,
    ) -> Failed:
        """A failed record, keeping what Piriod still holds for its key: its usage, and a
        DELETE not known to be done (`deleting`, or the one the key came with, not yet asked
        about)."""
        return failed(
            sub,
            result,
            unseen_since,
            claim,
            holding=self.holding,
            deleting=deleting if deleting is not None else self.deleting,
            quantity=self.last_quantity,
            correcting=True,
        )


def _waiting_on_key(message: QueuedRecord) -> Waiting:
    """A correction's record listed as waiting on its key (CORRECTING), for FlushFunction."""
    return Waiting(CORRECTING, CORRECTING, message.to_json(), _sortable(message.failure.at))


def _waits_meanwhile(sub: Submission, plan: _Plan, claim: Claim) -> Waiting:
    """A correction's record as it waits on its key while its attempt applies it."""
    unfinished = PostResult(
        FailureKind.TRANSIENT,
        error="its correction's attempt did not finish; FlushFunction applies it",
        attempted=False,
    )
    return _waiting_on_key(plan.failed(sub, unfinished, None, claim).message)


def _unclaimed(
    usage: Usage, others: Identical, candidates: dict[int, Listed]
) -> list[int] | PostResult:
    """The listed usages that may be taken for a record posted as `usage`, in order; or why
    none may be yet. Other keys whose usage may be listed with an id nobody knows (posted
    id-less, or with an unseen post of their own) may each own one listed usage. An exact
    twin's usage is interchangeable with this record's; a lookalike's (listed the same,
    another instant or quantity) is not. So a usage is taken only when it cannot be a
    lookalike's, and when more such usages are listed than the twins could account for."""
    twins = [s for s in others.suspects if s.twin_of(usage)]
    lookalikes = [s for s in others.suspects if not s.twin_of(usage)]
    free = sorted(
        usage_id
        for usage_id, entry in candidates.items()
        if not any(_may_own(s, entry, usage) for s in lookalikes)
    )
    if not candidates or len(free) > len(twins):
        return free
    if len(free) < len(candidates):
        return _ambiguous(
            "a record Piriod lists the same way (line, instant and quantity at the precision "
            "it lists them) was posted without a usage id, or its post is unseen; not chosen"
        )
    if any(s.idless for s in twins):
        return _ambiguous("identical records were posted without a usage id; not chosen")
    # A twin has an unseen post of its own: the listed usage may be that one's, and taking
    # it would let that one post again.
    return _ambiguous("an identical record's earlier post is unseen too; not chosen")


def _may_own(suspect: Suspect, entry: Listed, usage: Usage) -> bool:
    """Whether the listed usage may be the suspect's, as Piriod lists it."""
    if suspect.at is None or suspect.quantity is None:
        return True
    return (
        entry.may_be_at(usage.subscription_line, suspect.at, Decimal(suspect.quantity)) is not False
    )


def _ambiguous(error: str, *, asked: bool = True) -> PostResult:
    return PostResult(FailureKind.AMBIGUOUS, error=error, attempted=asked)


def key_conflict() -> PostResult:
    """A key already used for a different record (line, time or quantity)."""
    return PostResult(
        FailureKind.REJECTED, errors={"idempotency_key": [KEY_CONFLICT]}, attempted=False
    )


def no_line(usage: Usage) -> str:
    return f"no subscription line for meter {usage.meter_id!r} in source {usage.source!r}"


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
