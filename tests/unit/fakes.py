"""Fakes of the lifecycle's ports, for unit tests and the model-based test: the idempotency
store (the same conditions as the DynamoDB one, in memory), Piriod (a ledger that knows which
key posted each usage, lists at a chosen precision, and fails as told) and the queues.
Time is a fake clock that the tests move on."""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from piriod_adapter.clock import Deadline
from piriod_adapter.idempotency import (
    LOCK_MARGIN_SECONDS,
    Accepted,
    Claim,
    Identical,
    LockLost,
    Result,
    StoreUnavailable,
    Suspect,
)
from piriod_adapter.lifecycle import Fate, KeyStatus, Placement, Taker
from piriod_adapter.models import FailureKind, QueuedRecord, Tenant, Usage, utc_text
from piriod_adapter.piriod import DeleteResult, Listed, PiriodUnavailable, PostResult
from piriod_adapter.queue import DEAD_LETTER, REPLAY
from piriod_adapter.table import (
    ENDING,
    IDENTICAL_WITHIN,
    MAX_CORRECTIONS,
    Holding,
    KeyState,
    Waiting,
    event_alias,
    key_pk,
)
from piriod_adapter.windows import to_units


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class _Key:
    status: KeyStatus
    fingerprint: str
    line: int | None
    at: datetime
    token: str | None
    lock_expires: float | None
    attempt_started: float
    phase: str
    quantity: str
    original: str
    ambiguous_since: float | None = None
    waiting: str | None = None  # REPLAY, DEAD_LETTER or CORRECTING
    message: str | None = None  # CORRECTING: the record's message
    holding: Holding | None = None
    posted_at: float | None = None
    rev: int = 0
    applied: int = 0
    target: str | None = None
    cancelled: bool = False
    deleting: int | None = None
    corrections: dict[str, int] = field(default_factory=dict)  # correction id -> revision
    # the record as the attempt holding the key has it, written over the key at its finish
    # (as DynamoDB's finish writes its claim's record: a meter's newly mapped line)
    claimed: Usage | None = None

    @property
    def usage_id(self) -> int | None:
        """The id of the usage Piriod holds for the key, when known."""
        return self.holding.usage_id if self.holding else None

    def item(self, pk: str) -> dict[str, Any]:
        """The key as its DynamoDB item reads (the attributes KeyState reads)."""
        item: dict[str, Any] = {
            "pk": {"S": pk},
            "status": {"S": self.status.value},
            "fingerprint": {"S": self.fingerprint},
            "attempt_started": {"N": str(self.attempt_started)},
            "date_time": {"S": utc_text(self.at)},
            "quantity": {"S": self.quantity},
            "original": {"S": self.original},
            "rev": {"N": str(self.rev)},
            "applied": {"N": str(self.applied)},
        }
        if self.line is not None:
            item["line"] = {"N": str(self.line)}
        if self.lock_expires is not None:
            item["lock_expires"] = {"N": str(self.lock_expires)}
        if self.holding is not None:
            item["held"] = {"S": self.holding.quantity}
            if self.holding.usage_id is not None:
                item["usage_id"] = {"N": str(self.holding.usage_id)}
        if self.target is not None:
            item["target"] = {"S": self.target}
        if self.cancelled:
            item["cancelled"] = {"BOOL": True}
        if self.ambiguous_since is not None:
            item["ambiguous_since"] = {"N": str(self.ambiguous_since)}
        if self.phase:
            item["phase"] = {"S": self.phase}
        if self.deleting is not None:
            item["deleting"] = {"N": str(self.deleting)}
        if self.posted_at is not None:
            item["posted_at"] = {"N": str(self.posted_at)}
        return item

    def state(self) -> KeyState:
        return KeyState(
            status=self.status,
            fingerprint=self.fingerprint,
            usage_id=self.holding.usage_id if self.holding else None,
            lock_expires=self.lock_expires,
            attempt_started=self.attempt_started,
            ambiguous_since=self.ambiguous_since,
            phase=self.phase or None,
            line=self.line,
            quantity=self.quantity,
            original=self.original,
            holding=self.holding,
            rev=self.rev,
            applied=self.applied,
            target=self.target,
            cancelled=self.cancelled,
            deleting=self.deleting,
            posted_at=self.posted_at,
            at=self.at,
        )


class FakeKeyStore:
    """IdempotencyStore's rules over a dict (tests/integration/test_store_contracts.py holds
    the two equal). `down` makes every call fail; `batch_fails` only claim_new's."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.keys: dict[str, _Key] = {}
        self.owners: dict[int, str] = {}  # usage id -> the key it settled
        self.aliases: dict[str, str | None] = {}  # a CloudEvent key's (table.event_alias)
        self.down = False
        self.fail_next = 0  # the next calls fail alone (a throttled request), then all pass
        # a call's name -> how many of its next calls fail alone (throttled requests): a
        # named call, so that which call fails does not hang on the order of the calls
        self.throttled: dict[str, int] = {}
        self.batch_fails = False  # claim_new's transaction refused (throttled, invalid)
        self.before_claim_new: Callable[[], None] | None = None
        self.events: Any = None  # a FakeWindowStore: its event keys share this table
        self._lock = threading.RLock()

    def _check(self, call: str) -> None:
        if self.down:
            raise StoreUnavailable("fake store down")
        if self.fail_next > 0:
            self.fail_next -= 1
            raise StoreUnavailable("fake store throttled this call")
        if self.throttled.get(call, 0) > 0:
            self.throttled[call] -= 1
            raise StoreUnavailable(f"fake store throttled this {call}")

    def _new_key(
        self, pk: str, usage: Usage, token: str, lock: float, now: float, phase: str
    ) -> None:
        """A key nobody had, taken by an attempt (claim and claim_new alike)."""
        self.aliases[pk] = event_alias(usage.key)
        self.keys[pk] = _Key(
            KeyStatus.IN_PROGRESS,
            usage.fingerprint,
            usage.subscription_line,
            usage.date_time,
            token,
            lock,
            now,
            phase,
            usage.quantity_text,
            usage.quantity_text,
        )

    def claim(
        self,
        usage: Usage,
        deadline: Deadline,
        taker: Taker = Taker.WEBHOOK,
        *,
        settling: bool = False,
    ) -> Claim:
        with self._lock:
            self._check("claim")
            pk = key_pk(usage.key)
            now = self.clock()
            token = uuid.uuid4().hex
            lock = now + deadline.remaining() + LOCK_MARGIN_SECONDS
            phase = "settling" if settling else "posting"
            key = self.keys.get(pk)
            if key is None:
                self._new_key(pk, usage, token, lock, now, phase)
                return Claim(pk, token, None)
            takeable = key.status is KeyStatus.RELEASED or (
                key.status is KeyStatus.IN_PROGRESS and (key.lock_expires or 0) < now
            )
            if taker is Taker.REPLAY:
                takeable |= key.status is KeyStatus.QUEUED and key.waiting == REPLAY
            elif taker is Taker.OPERATOR:
                takeable |= key.status in (KeyStatus.QUEUED, KeyStatus.REJECTED)
            elif taker is Taker.CORRECTION:
                takeable |= key.status is KeyStatus.POSTED
            previous = key.state()
            same = taker is Taker.CORRECTION or key.fingerprint == usage.fingerprint
            if not takeable or not same:
                return Claim(pk, None, previous)
            vanished = key.status is KeyStatus.IN_PROGRESS and key.phase != ENDING
            if vanished and key.ambiguous_since is None:
                key.ambiguous_since = key.attempt_started  # its vanished holder's post
            key.status = KeyStatus.IN_PROGRESS
            key.token, key.lock_expires, key.attempt_started, key.phase = token, lock, now, phase
            key.claimed = usage
            return Claim(pk, token, previous)

    def claim_new(self, usages: Sequence[Usage], deadline: Deadline) -> list[Claim | None]:
        """IdempotencyStore.claim_new: a delivery's new keys claimed together (at least two
        distinct ones); for a key that exists and the webhook may not take, its holder's
        state (not acquired); None for one it may take, a repeat of an earlier key, or every
        key when the store is down or refuses the batch (`batch_fails`). `before_claim_new`
        runs first, once (another attempt claiming a key meanwhile)."""
        if self.before_claim_new is not None:
            hook, self.before_claim_new = self.before_claim_new, None
            hook()
        with self._lock:
            claims: list[Claim | None] = [None] * len(usages)
            first: dict[str, int] = {}
            for n, usage in enumerate(usages):
                first.setdefault(key_pk(usage.key), n)
            if len(first) < 2 or self.down or self.batch_fails:
                return claims
            now = self.clock()
            lock = now + deadline.remaining() + LOCK_MARGIN_SECONDS
            for pk, n in first.items():
                key = self.keys.get(pk)
                if key is not None:  # not new: what a claim answers, or it claims alone
                    takeable = key.status is KeyStatus.RELEASED or (
                        key.status is KeyStatus.IN_PROGRESS and (key.lock_expires or 0) < now
                    )
                    if not takeable or key.fingerprint != usages[n].fingerprint:
                        claims[n] = Claim(pk, None, key.state())
                    continue
                usage, token = usages[n], uuid.uuid4().hex
                self._new_key(pk, usage, token, lock, now, "posting")
                claims[n] = Claim(pk, token, None)
            return claims

    def wait_while_locked(self, pk: str, deadline: Deadline, at_most: float) -> KeyState | None:
        with self._lock:
            self._check("wait_while_locked")
            key = self.keys.get(pk)
            return key.state() if key else None

    def _held(self, claim: Claim) -> _Key:
        key = self.keys[claim.pk]
        if key.token != claim.token:
            raise LockLost("the key is no longer held by this attempt")
        return key

    def finish(self, result: Result) -> None:
        with self._lock:
            self._check("finish")
            key = self._held(result.claim)
            if key.claimed is not None:  # table._RECORD: the record as this attempt saw it
                usage, key.claimed = key.claimed, None
                key.fingerprint, key.at = usage.fingerprint, usage.date_time
                key.original = usage.quantity_text
                if usage.subscription_line is not None:
                    key.line = usage.subscription_line
            key.status = result.status
            key.token = key.lock_expires = None
            key.phase = ""
            key.quantity = result.quantity or key.quantity
            if result.status is KeyStatus.POSTED:
                key.holding = Holding(key.quantity, result.usage_id)
                if not result.kept:
                    key.posted_at = self.clock()
            else:
                key.holding = result.holding
            if result.applied is not None:
                key.applied = result.applied
            key.ambiguous_since = result.ambiguous_since
            key.deleting = result.deleting
            key.waiting = result.waiting.queue if result.waiting else None
            key.message = None

    def mark_posting(self, claim: Claim, quantity: str | None = None) -> None:
        with self._lock:
            self._check("mark_posting")
            key = self._held(claim)
            key.phase = "posting"
            if quantity is not None:
                key.quantity = quantity

    def mark_deleting(self, claim: Claim, usage_id: int, correcting: Waiting | None = None) -> None:
        with self._lock:
            self._check("mark_deleting")
            key = self._held(claim)
            key.deleting = usage_id
            if correcting is not None:
                key.waiting, key.message = correcting.queue, correcting.message

    def wait_on_key(self, claim: Claim, correcting: Waiting) -> None:
        with self._lock:
            self._check("wait_on_key")
            key = self._held(claim)
            key.waiting, key.message = correcting.queue, correcting.message
            key.phase = ENDING

    def hold(self, claim: Claim, holding: Holding | None) -> None:
        with self._lock:
            self._check("hold")
            key = self._held(claim)
            key.holding, key.ambiguous_since = holding, None
            if holding is None:
                key.deleting = None

    def settle(self, claim: Claim, usage_id: int) -> None:
        with self._lock:
            self._check("settle")
            key = self._held(claim)
            key.status, key.holding = KeyStatus.POSTED, Holding(key.quantity, usage_id)
            key.posted_at = self.clock()
            key.token = key.lock_expires = key.ambiguous_since = key.waiting = None
            key.message = None
            key.phase = ""

    def take_usage(self, claim: Claim, usage_id: int) -> bool:
        with self._lock:
            self._check("take_usage")
            owner = self.owners.setdefault(usage_id, claim.pk)
            return owner == claim.pk

    def give_back(self, claim: Claim, usage_id: int) -> None:
        with self._lock:
            self._check("give_back")
            if self.owners.get(usage_id) == claim.pk:
                del self.owners[usage_id]

    def identical(self, claim: Claim, usage: Usage) -> Identical:
        with self._lock:
            self._check("identical")
            now = self.clock()
            held: set[int] = set()
            suspects: list[Suspect] = []
            posting = False
            for pk, key in self.keys.items():
                if pk == claim.pk or key.line != usage.subscription_line:
                    continue
                if abs(key.at - usage.date_time) >= IDENTICAL_WITHIN:
                    continue
                if key.holding is not None:
                    if key.holding.usage_id is not None:
                        held.add(key.holding.usage_id)
                    else:
                        suspects.append(Suspect(key.at, key.holding.quantity, idless=True))
                unsettled = key.ambiguous_since is not None or (
                    key.status is KeyStatus.IN_PROGRESS and key.phase != ENDING
                )
                holds = key.holding
                posted = holds is None or key.deleting is not None or key.quantity != holds.quantity
                if unsettled and posted:
                    suspects.append(Suspect(key.at, key.quantity, idless=False))
                locked = key.status is KeyStatus.IN_PROGRESS and (key.lock_expires or 0) > now
                if locked and key.phase not in ("settling", ENDING):
                    posting = True
            return Identical(frozenset(held), posting, tuple(suspects))

    def release(
        self,
        claim: Claim,
        ambiguous_since: float | None,
        deleting: int | None = None,
        correcting: Waiting | None = None,
    ) -> None:
        with self._lock:
            self._check("release")
            key = self._held(claim)
            key.status = KeyStatus.RELEASED
            key.token = key.lock_expires = None
            if ambiguous_since is not None:
                key.ambiguous_since = ambiguous_since
            if deleting is not None:
                key.deleting = deleting
            if correcting is not None:
                key.waiting, key.message = correcting.queue, correcting.message

    def accept(self, pk: str, action: str, quantity: str | None, correction_id: str) -> Accepted:
        with self._lock:
            self._check("accept")
            key = self.keys.get(pk)
            if key is None:
                return Accepted(None)
            if correction_id in key.corrections:
                return Accepted(None, duplicate=key.corrections[correction_id])
            if key.cancelled:
                return Accepted(None)
            if key.rev >= MAX_CORRECTIONS:
                limit = f"has had {MAX_CORRECTIONS} corrections, the most a key takes"
                return Accepted(None, refused={"key": [limit]})
            key.rev += 1
            key.corrections[correction_id] = key.rev
            if action == "cancel":
                key.cancelled = True
            else:
                key.target = quantity
            return Accepted(key.state())

    def keys_of_event(self, alias: str) -> list[str]:
        """The keys (records' and counted events') whose CloudEvent alias this is."""
        with self._lock:
            self._check("keys_of_event")
            events = self.events.keys if self.events is not None else {}
            aliases = {**self.aliases, **(self.events.aliases if self.events else {})}
            return [pk for pk in [*self.keys, *events] if aliases.get(pk) == alias]

    def items(self, pks: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The keys that exist, as DynamoDB items (what the corrections route reads)."""
        with self._lock:
            self._check("items")
            found = {pk: self.keys[pk].item(pk) for pk in pks if pk in self.keys}
            events = self.events.keys if self.events is not None else {}
            for pk in pks:
                if pk in events:  # an event's key, counted into its window
                    found[pk] = {"pk": {"S": pk}, "window": {"S": events[pk][1].pk}}
            return found

    def waiting(self, queue: str) -> list[Waiting]:
        """What waits on its key (a correction no queue took): table.CORRECTING."""
        with self._lock:
            self._check("waiting")
            return [
                Waiting(queue, queue, key.message, "")
                for key in self.keys.values()
                if key.waiting == queue and key.message is not None
            ]


# --- Piriod ------------------------------------------------------------------------------------


@dataclass
class Stored:
    usage_id: int
    line: int
    at: datetime
    quantity: Decimal
    created: float
    key: str | None  # the adapter's key that posted it; None: created elsewhere
    deleted: bool = False


DELETE_ANSWERS = [
    "deleted",
    "deleted_then_lost",
    "lost",
    "late",  # no answer; Piriod deletes the usage later (FakePiriod.finish_late_deletes)
    "throttled",
    "refused",
    "server_error",
    "not_sent",  # never sent (no time left, no token): surely still there
]


@dataclass
class FakePiriod:
    """A ledger. `answers` is consumed one per post: "created", "zero_id" (201, id 0),
    "stored_then_lost" (stored, the answer lost), "lost" (nothing stored, no answer),
    "throttled" (429), "refused" (connection refused). Lines in `unmetered` are a 400.
    `delete_answers` likewise per DELETE: "deleted" (204; 404 once gone), "deleted_then_lost"
    (deleted, the answer lost), "lost" (not deleted, no answer), "throttled" (429), "refused"
    (connection refused), "server_error" (a 500, not deleted). Listing renders quantities and
    times at `quantity_precision` / `time_precision`, and never a deleted usage; with
    `filters_miss` the narrow filter compares exact text and misses such usages.
    `listing_down` fails lookups; `endless` makes every listing run past its page bound.
    `during_post` is called with the next posted record, before Piriod answers it (an
    attempt holds the record's key meanwhile); it stays armed until it returns True."""

    clock: Clock
    ledger: list[Stored] = field(default_factory=list)
    answers: deque[str] = field(default_factory=deque)
    delete_answers: deque[str] = field(default_factory=deque)
    deletes: int = 0
    unmetered: set[int] = field(default_factory=set)
    quantity_precision: str = "exact"  # exact | float | places:N
    time_precision: str = "exact"  # exact | millis | seconds
    filters_miss: bool = False
    listing_down: bool = False
    endless: bool = False
    posts: int = 0
    lookups: int = 0
    during_post: Callable[[Usage], bool] | None = None
    late_deletes: list[Stored] = field(default_factory=list)  # DELETEs still inside Piriod
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def finish_late_deletes(self) -> None:
        """Piriod gets to the DELETEs that were still inside it when their answer timed out."""
        with self._lock:
            for entry in self.late_deletes:
                entry.deleted = True
            self.late_deletes.clear()

    def _store(self, usage: Usage) -> Stored:
        assert usage.subscription_line is not None
        entry = Stored(
            len(self.ledger) + 1,
            usage.subscription_line,
            usage.date_time,
            usage.quantity,
            self.clock(),
            key_pk(usage.key),
        )
        self.ledger.append(entry)
        return entry

    def seed(self, line: int, at: datetime, quantity: Decimal, created: float) -> Stored:
        entry = Stored(len(self.ledger) + 1, line, at, quantity, created, None)
        self.ledger.append(entry)
        return entry

    def post_usage(self, usage: Usage, tenant: Tenant, deadline: Deadline) -> PostResult:
        hook = self.during_post
        if hook is not None and hook(usage):
            self.during_post = None
        with self._lock:
            self.posts += 1
            answer = self.answers.popleft() if self.answers else "created"
            assert usage.subscription_line is not None
            if usage.subscription_line in self.unmetered:
                return PostResult(FailureKind.REJECTED, 400, errors={"subscription_line": ["no"]})
            if answer == "created":
                return PostResult.posted(self._store(usage).usage_id)
            if answer == "zero_id":
                self._store(usage)
                return PostResult.posted(None)
            if answer == "stored_then_lost":
                self._store(usage)
                return PostResult(FailureKind.AMBIGUOUS, error="read timeout")
            if answer == "lost":
                return PostResult(FailureKind.AMBIGUOUS, error="reset")
            if answer == "throttled":
                return PostResult(FailureKind.TRANSIENT, 429, error="HTTP 429")
            return PostResult(FailureKind.TRANSIENT, error="cannot connect")

    def _render(self, entry: Stored) -> dict[str, Any]:
        quantity: Any = entry.quantity
        if self.quantity_precision == "float":
            quantity = Decimal(repr(float(entry.quantity)))
        elif self.quantity_precision.startswith("places:"):
            places = int(self.quantity_precision.split(":")[1])
            quantity = entry.quantity.quantize(Decimal(1).scaleb(-places), ROUND_HALF_EVEN)
        at = entry.at
        if self.time_precision == "millis":
            text = at.strftime("%Y-%m-%dT%H:%M:%S") + f".{at.microsecond // 1000:03d}Z"
        elif self.time_precision == "seconds":
            text = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            text = utc_text(at)
        return {
            "id": entry.usage_id,
            "subscription_line": entry.line,
            "date_time": text,
            "quantity": quantity,
            "created": datetime.fromtimestamp(entry.created, UTC).isoformat(),
        }

    def _listing(self) -> None:
        self.lookups += 1
        if self.listing_down:
            raise PiriodUnavailable("listing down")
        if self.endless:
            raise PiriodUnavailable("listing usages did not end within 10 pages")

    def delete_usage(self, usage_id: int, tenant: Tenant, deadline: Deadline) -> DeleteResult:
        with self._lock:
            self.deletes += 1
            answer = self.delete_answers.popleft() if self.delete_answers else "deleted"
            entry = next((e for e in self.ledger if e.usage_id == usage_id), None)
            live = entry is not None and not entry.deleted
            if answer in ("deleted", "deleted_then_lost") and live:
                assert entry is not None
                entry.deleted = True
            if answer == "deleted":
                return DeleteResult(None, 204 if live else 404)
            if answer == "late" and live:
                assert entry is not None
                self.late_deletes.append(entry)
            if answer in ("deleted_then_lost", "lost", "late"):
                return DeleteResult(FailureKind.AMBIGUOUS, error="read timeout")
            if answer == "server_error":
                return DeleteResult(FailureKind.AMBIGUOUS, 500, error="HTTP 500")
            if answer == "throttled":
                return DeleteResult(FailureKind.TRANSIENT, 429, error="HTTP 429")
            if answer == "not_sent":
                return DeleteResult(
                    FailureKind.TRANSIENT, error="no time left to delete", attempted=False
                )
            return DeleteResult(FailureKind.TRANSIENT, error="cannot connect")

    def usage_listed(
        self, usage_id: int, line: int, instant: datetime, tenant: Tenant, deadline: Deadline
    ) -> bool:
        with self._lock:
            self._listing()
            return any(e.usage_id == usage_id and not e.deleted for e in self.ledger)

    def find_usages(self, usage: Usage, tenant: Tenant, deadline: Deadline) -> list[Listed]:
        with self._lock:
            self._listing()
            found = []
            for entry in self.ledger:
                if entry.line != usage.subscription_line or entry.deleted:
                    continue
                rendered = self._render(entry)
                listed = Listed.read(rendered)
                if self.filters_miss:
                    same = (
                        rendered["date_time"] == usage.date_time_text
                        and Decimal(rendered["quantity"]) == usage.quantity
                        and str(rendered["quantity"]) == usage.quantity_text
                    )
                else:
                    same = listed.may_be(usage) is not False
                if same:
                    found.append(listed)
            return found

    def recent_usages(
        self, line: int, since: float, tenant: Tenant, deadline: Deadline
    ) -> list[Listed]:
        with self._lock:
            self._listing()
            return [
                Listed.read(self._render(e))
                for e in reversed(self.ledger)
                if e.line == line and e.created >= since and not e.deleted
            ]

    def usages_of(self, pk: str) -> list[Stored]:
        """The usages Piriod holds (not deleted) that the key's record posted."""
        return [e for e in self.ledger if e.key == pk and not e.deleted]


# --- queues ------------------------------------------------------------------------------------


@dataclass
class Message:
    message_id: str
    body: str
    receive_count: int = 0


@dataclass
class FakeQueues:
    """ReplayQueue and DeadLetterQueue (FailureQueue's interface). `down` refuses sends."""

    replay: list[Message] = field(default_factory=list)
    dead: list[Message] = field(default_factory=list)
    down: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def send(
        self, queue: str, message: QueuedRecord, delay: int = 0, fate: Fate = Fate.QUEUED
    ) -> Placement | None:
        with self._lock:
            if self.down:
                return None
            stored = Message(uuid.uuid4().hex, message.to_json())
            (self.replay if queue == REPLAY else self.dead).append(stored)
            return Placement(queue, stored.message_id, message, fate)

    def place(self, message: QueuedRecord) -> Placement | None:
        if message.failure.kind is FailureKind.REJECTED:
            return self.send(DEAD_LETTER, message, fate=Fate.REJECTED)
        return self.send(REPLAY, message)

    def place_failed(self, _sub: object, message: QueuedRecord) -> Placement | None:
        return self.place(message)

    def send_all(self, sends: list[tuple[str, QueuedRecord, int]]) -> list[Placement | None]:
        return [
            self.send(q, m, d, Fate.QUEUED if q == REPLAY else Fate.REJECTED) for q, m, d in sends
        ]

    def send_raw(self, queue: str, body: str, kind: str) -> str:
        with self._lock:
            stored = Message(uuid.uuid4().hex, body)
            (self.replay if queue == REPLAY else self.dead).append(stored)
            return stored.message_id

    def delete(self, queue: str, message_id: str) -> None:
        with self._lock:
            kept = self.replay if queue == REPLAY else self.dead
            kept[:] = [m for m in kept if m.message_id != message_id]

    def keys_in(self, queue: str) -> list[str]:
        kept = self.replay if queue == REPLAY else self.dead
        return [key_pk(QueuedRecord.from_json(m.body).usage.key) for m in kept]


def later(at: datetime, seconds: float) -> datetime:
    return at + timedelta(seconds=seconds)


def placer(store: FakeKeyStore | None = None) -> Any:
    """The lifecycle's failure writer (Submitter.place) over fake ports, for counting."""
    from piriod_adapter.submit import Submitter

    clock = Clock()
    return Submitter(FakePiriod(clock), store or FakeKeyStore(clock), 1.0, 60.0).place


def subs(usages: Sequence[Usage], tenant: Tenant | None = None) -> list[Any]:
    """Usages as the lifecycle's submissions, in order."""
    from piriod_adapter.lifecycle import Submission

    tenant = tenant or Tenant(workspace="w", test_mode=False)
    return [Submission(index, usage, tenant) for index, usage in enumerate(usages)]


__all__ = [
    "Clock",
    "FakeKeyStore",
    "FakePiriod",
    "FakeQueues",
    "Message",
    "Stored",
    "later",
    "placer",
    "subs",
]


# --- aggregation windows -----------------------------------------------------------------------


@dataclass
class _Gen:
    state: str
    due_at: float
    shards: int
    window_seconds: int
    function: str
    total: int | None = None
    events: int | None = None
    handed: bool = False
    adjust: int = 0  # corrections of its events after it closed
    adjust_events: int = 0
    adjust_seq: int = 0
    handed_seq: int = 0


@dataclass
class FakeWindowStore:
    """Window items as windows.WindowStore keeps them, in memory, with the same atomicity:
    a chunk's transaction writes every key and addition or nothing; a close moves the head
    first, then closes every shard, then marks the generation. `down` fails every call;
    `conflicts` cancels that many transactions as conflicting; `before_count` runs just
    before the next transaction (a concurrent flusher between a delivery's read and write).
    """

    shards: int = 3
    heads: dict[str, int] = field(default_factory=dict)
    gens: dict[tuple[Any, int], _Gen] = field(default_factory=dict)
    counters: dict[tuple[Any, int, int], list[int]] = field(default_factory=dict)
    closed: set[tuple[Any, int, int]] = field(default_factory=set)
    keys: dict[str, tuple[str, Any, int]] = field(default_factory=dict)  # fp, window, gen
    aliases: dict[str, str | None] = field(default_factory=dict)  # a CloudEvent key's
    units: dict[str, int] = field(default_factory=dict)  # an event's units now
    revisions: dict[str, dict[str, int]] = field(default_factory=dict)  # correction id -> rev
    cancelled: set[str] = field(default_factory=set)
    down: bool = False
    conflicts: int = 0
    before_count: Callable[[], None] | None = None
    room: int = 10**38 - 1
    _turn: int = 0

    def _check(self) -> None:
        from piriod_adapter.idempotency import StoreUnavailable

        if self.down:
            raise StoreUnavailable("window store down")

    def open_generations(self, windows: Sequence[Any]) -> dict[Any, Any]:
        from piriod_adapter.windows import Open

        self._check()
        found = {}
        for window in windows:
            g = self.heads.get(window.pk, 0)
            gen = self.gens.get((window, g))
            if gen is not None and gen.state != "open":
                found[window] = Open(g + 1, False, self.shards)
            else:
                found[window] = Open(g, gen is not None, gen.shards if gen else self.shards)
        return found

    def reread(self, window: Any) -> Any:
        return self.open_generations([window])[window]

    def remember(self, window: Any, known: Any) -> None:
        pass

    def shard_for(self, known: Any) -> int:
        self._turn += 1
        return int(self._turn % known.shards)

    def count(self, events: Sequence[Any], windows: Sequence[Any]) -> Any:
        from piriod_adapter.windows import ChunkResult

        if self.before_count is not None:
            hook, self.before_count = self.before_count, None
            hook()
        self._check()
        if self.conflicts:
            self.conflicts -= 1
            return ChunkResult(committed=False, conflict=True)
        result = ChunkResult(committed=False)
        for n, e in enumerate(events):
            if e.pk in self.keys:
                result.duplicates[n] = self.keys[e.pk][0]
        for n, w in enumerate(windows):
            shard = (w.window, w.generation, w.shard)
            gen = self.gens.get((w.window, w.generation))
            if shard in self.closed or (gen is not None and gen.state != "open"):
                result.closed.add(n)
            elif self.counters.get(shard, [0, 0])[0] + w.units > self.room // self.shards:
                result.full.add(n)
            elif gen is None and w.create is None:
                raise AssertionError("a generation's first addition must write its item")
        if result.duplicates or result.closed or result.full:
            return result
        for w in windows:
            shard = (w.window, w.generation, w.shard)
            counter = self.counters.setdefault(shard, [0, 0])
            counter[0] += w.units
            counter[1] += w.events
            if w.create is not None and (w.window, w.generation) not in self.gens:
                self.gens[(w.window, w.generation)] = _Gen(
                    "open", w.create.due_at, self.shards, w.create.window_seconds, w.create.function
                )
        for e in events:
            g = next(w.generation for w in windows if w.window == e.window)
            self.keys[e.pk] = (e.usage.fingerprint, e.window, g)
            self.aliases[e.pk] = event_alias(e.usage.key)
            self.units[e.pk] = e.units
        return ChunkResult(committed=True)

    def due(self, now: float, limit: int) -> list[Any]:
        self._check()
        found = [
            self._generation(window, g)
            for (window, g), gen in sorted(self.gens.items(), key=lambda kv: kv[1].due_at)
            if (not gen.handed or gen.adjust_seq > gen.handed_seq) and gen.due_at <= now
        ]
        return found[:limit]

    def _generation(self, window: Any, g: int) -> Any:
        from piriod_adapter.table import Generation

        gen = self.gens[(window, g)]
        return Generation(
            window=window,
            generation=g,
            closed=gen.state == "closed",
            window_seconds=gen.window_seconds,
            due_at=gen.due_at,
            shards=gen.shards,
            function=gen.function,
            test_mode=False,
            total_units=gen.total,
            events=gen.events,
            handed=gen.handed,
            adjust_units=gen.adjust,
            adjust_events=gen.adjust_events,
            adjust_seq=gen.adjust_seq,
            handed_seq=gen.handed_seq,
        )

    def close(self, found: Any) -> Any:
        window, g = found.window, found.generation
        self._check()
        if self.heads.get(window.pk, 0) == g:
            self.heads[window.pk] = g + 1
        total = events = 0
        for shard in range(found.shards):
            self.closed.add((window, g, shard))
            counter = self.counters.get((window, g, shard), [0, 0])
            total, events = total + counter[0], events + counter[1]
        gen = self.gens[(window, g)]
        gen.state, gen.total, gen.events = "closed", total, events
        return self._generation(window, g)

    def hand_over(self, found: Any) -> None:
        self._check()
        gen = self.gens[(found.window, found.generation)]
        if gen.state == "closed" and gen.adjust_seq == found.adjust_seq:
            gen.handed, gen.handed_seq = True, found.adjust_seq

    def correct_events(
        self, corrections: Sequence[tuple[str, str, str | None, str]], now: float, deadline: Any
    ) -> list[Any]:
        """windows.WindowStore.correct_events' rules over the dicts above."""
        from piriod_adapter.windows import MAX_TOTAL_UNITS, PAST_BOUND, EventCorrected

        self._check()
        results = []
        for pk, action, quantity, correction_id in corrections:
            if pk not in self.keys:
                results.append(EventCorrected("not_found"))
                continue
            seen = self.revisions.setdefault(pk, {})
            if correction_id in seen:
                results.append(EventCorrected("duplicate", seen[correction_id]))
                continue
            if pk in self.cancelled:
                results.append(EventCorrected("not_found"))
                continue
            _, window, g = self.keys[pk]
            if action == "amend" and window.series.startswith("count"):
                reason = "cannot amend an event of a count window: cancel it"
                results.append(EventCorrected("rejected", errors={"quantity": [reason]}))
                continue
            new = 0 if action == "cancel" else to_units(Decimal(str(quantity)))
            delta, events = new - self.units[pk], -1 if action == "cancel" else 0
            gen = self.gens[(window, g)]
            if gen.state != "open" and (gen.total or 0) + gen.adjust + delta > MAX_TOTAL_UNITS:
                results.append(EventCorrected("rejected", errors={"quantity": [PAST_BOUND]}))
                continue
            if gen.state == "open":
                counter = self.counters.setdefault((window, g, 0), [0, 0])
                counter[0] += delta
                counter[1] += events
            else:
                gen.adjust += delta
                gen.adjust_events += events
                gen.adjust_seq += 1
                gen.due_at = now
            self.units[pk] = new
            seen[correction_id] = len(seen) + 1
            if action == "cancel":
                self.cancelled.add(pk)
            results.append(
                EventCorrected("applied" if gen.state == "open" else "pending", len(seen))
            )
        return results

    def counted(self, window: Any, g: int) -> int:
        return sum(c[0] for (w, gg, _), c in self.counters.items() if w == window and gg == g)
