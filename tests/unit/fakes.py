"""Fakes of the lifecycle's ports, for unit tests and the model-based test: the idempotency
store (the same conditions as the DynamoDB one, in memory), Piriod (a ledger that knows which
key posted each usage, lists at a chosen precision, and fails as told) and the queues.
Time is a fake clock that the tests move on."""

from __future__ import annotations

import threading
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from piriod_adapter.clock import Deadline
from piriod_adapter.idempotency import (
    LOCK_MARGIN_SECONDS,
    Claim,
    Identical,
    KeyState,
    KeyStatus,
    Result,
    StoreUnavailable,
    Taker,
    key_pk,
)
from piriod_adapter.models import QueuedRecord, Tenant, Usage, utc_text
from piriod_adapter.piriod import Listed, PiriodUnavailable, PostKind, PostResult
from piriod_adapter.queue import DEAD_LETTER, REPLAY, Placement


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
    usage_id: int | None = None
    ambiguous_since: float | None = None
    waiting: str | None = None  # REPLAY or DEAD_LETTER

    def state(self) -> KeyState:
        return KeyState(
            status=self.status,
            fingerprint=self.fingerprint,
            usage_id=self.usage_id,
            lock_expires=self.lock_expires,
            attempt_started=self.attempt_started,
            ambiguous_since=self.ambiguous_since,
        )


class FakeKeyStore:
    """IdempotencyStore's rules over a dict. `down` makes every call fail."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.keys: dict[str, _Key] = {}
        self.owners: dict[int, str] = {}  # usage id -> the key it settled
        self.down = False
        self._lock = threading.RLock()

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("fake store down")

    def claim(
        self,
        usage: Usage,
        deadline: Deadline,
        taker: Taker = Taker.WEBHOOK,
        *,
        settling: bool = False,
    ) -> Claim:
        with self._lock:
            self._check()
            pk = key_pk(usage.key)
            now = self.clock()
            token = uuid.uuid4().hex
            lock = now + deadline.remaining() + LOCK_MARGIN_SECONDS
            phase = "settling" if settling else "posting"
            key = self.keys.get(pk)
            if key is None:
                self.keys[pk] = _Key(
                    KeyStatus.IN_PROGRESS,
                    usage.fingerprint,
                    usage.subscription_line,
                    usage.date_time,
                    token,
                    lock,
                    now,
                    phase,
                )
                return Claim(pk, token, None)
            takeable = key.status is KeyStatus.RELEASED or (
                key.status is KeyStatus.IN_PROGRESS and (key.lock_expires or 0) < now
            )
            if taker is Taker.REPLAY:
                takeable |= key.status is KeyStatus.QUEUED and key.waiting == REPLAY
            elif taker is Taker.OPERATOR:
                takeable |= key.status in (KeyStatus.QUEUED, KeyStatus.REJECTED)
            previous = key.state()
            if not takeable or key.fingerprint != usage.fingerprint:
                return Claim(pk, None, previous)
            key.status = KeyStatus.IN_PROGRESS
            key.token, key.lock_expires, key.attempt_started, key.phase = token, lock, now, phase
            key.line = usage.subscription_line
            return Claim(pk, token, previous)

    def wait_while_locked(self, pk: str, deadline: Deadline, at_most: float) -> KeyState | None:
        with self._lock:
            self._check()
            key = self.keys.get(pk)
            return key.state() if key else None

    def _held(self, claim: Claim) -> _Key:
        key = self.keys[claim.pk]
        assert key.token == claim.token, "written by a claim that no longer holds the key"
        return key

    def finish(self, result: Result) -> None:
        with self._lock:
            self._check()
            key = self.keys[result.claim.pk]
            if key.token != result.claim.token:
                return  # DynamoDB would write it over: the claim's lock made that safe
            key.status = result.status
            key.token = key.lock_expires = None
            key.phase = ""
            key.ambiguous_since = None
            if result.status is KeyStatus.POSTED:
                key.usage_id = result.usage_id
                key.waiting = None
            else:
                key.ambiguous_since = result.ambiguous_since
                key.waiting = result.waiting.queue if result.waiting else None

    def mark_posting(self, claim: Claim) -> None:
        with self._lock:
            self._check()
            self._held(claim).phase = "posting"

    def settle(self, claim: Claim, usage_id: int) -> None:
        with self._lock:
            self._check()
            key = self._held(claim)
            key.status, key.usage_id = KeyStatus.POSTED, usage_id
            key.token = key.lock_expires = key.ambiguous_since = key.waiting = None

    def take_usage(self, claim: Claim, usage_id: int) -> bool:
        with self._lock:
            self._check()
            owner = self.owners.setdefault(usage_id, claim.pk)
            return owner == claim.pk

    def give_back(self, claim: Claim, usage_id: int) -> None:
        with self._lock:
            self._check()
            if self.owners.get(usage_id) == claim.pk:
                del self.owners[usage_id]

    def identical(self, claim: Claim, usage: Usage) -> Identical:
        with self._lock:
            self._check()
            now = self.clock()
            held: set[int] = set()
            unknown = 0
            posting = False
            for pk, key in self.keys.items():
                if pk == claim.pk or key.line != usage.subscription_line:
                    continue
                if abs((key.at - usage.date_time).total_seconds()) > 1:
                    continue
                if key.usage_id is not None:
                    held.add(key.usage_id)
                elif key.status is KeyStatus.POSTED:
                    unknown += 1
                locked = key.status is KeyStatus.IN_PROGRESS and (key.lock_expires or 0) > now
                if locked and key.phase != "settling":
                    posting = True
            return Identical(frozenset(held), unknown, posting)

    def release(self, claim: Claim, ambiguous_since: float | None) -> None:
        with self._lock:
            self._check()
            key = self.keys[claim.pk]
            if key.token != claim.token:
                raise StoreUnavailable("lock lost")
            key.status = KeyStatus.RELEASED
            key.token = key.lock_expires = None
            if ambiguous_since is not None:
                key.ambiguous_since = ambiguous_since


# --- Piriod ------------------------------------------------------------------------------------


@dataclass
class Stored:
    usage_id: int
    line: int
    at: datetime
    quantity: Decimal
    created: float
    key: str | None  # the adapter's key that posted it; None: created elsewhere


@dataclass
class FakePiriod:
    """A ledger. `answers` is consumed one per post: "created", "zero_id" (201, id 0),
    "stored_then_lost" (stored, the answer lost), "lost" (nothing stored, no answer),
    "throttled" (429), "refused" (connection refused). Lines in `unmetered` are a 400.
    Listing renders quantities and times at `quantity_precision` / `time_precision`; with
    `filters_miss` the narrow filter compares exact text and misses such usages.
    `listing_down` fails lookups; `endless` makes every listing run past its page bound."""

    clock: Clock
    ledger: list[Stored] = field(default_factory=list)
    answers: deque[str] = field(default_factory=deque)
    unmetered: set[int] = field(default_factory=set)
    quantity_precision: str = "exact"  # exact | float | places:N
    time_precision: str = "exact"  # exact | millis | seconds
    filters_miss: bool = False
    listing_down: bool = False
    endless: bool = False
    posts: int = 0
    lookups: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

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
        with self._lock:
            self.posts += 1
            answer = self.answers.popleft() if self.answers else "created"
            assert usage.subscription_line is not None
            if usage.subscription_line in self.unmetered:
                return PostResult(PostKind.REJECTED, 400, errors={"subscription_line": ["no"]})
            if answer == "created":
                return PostResult(PostKind.CREATED, 201, usage_id=self._store(usage).usage_id)
            if answer == "zero_id":
                self._store(usage)
                return PostResult(PostKind.CREATED, 201, usage_id=None)
            if answer == "stored_then_lost":
                self._store(usage)
                return PostResult(PostKind.AMBIGUOUS, error="read timeout")
            if answer == "lost":
                return PostResult(PostKind.AMBIGUOUS, error="reset")
            if answer == "throttled":
                return PostResult(PostKind.TRANSIENT, 429, error="HTTP 429")
            return PostResult(PostKind.TRANSIENT, error="cannot connect")

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

    def find_usages(self, usage: Usage, tenant: Tenant, deadline: Deadline) -> list[Listed]:
        with self._lock:
            self._listing()
            found = []
            for entry in self.ledger:
                if entry.line != usage.subscription_line:
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
                if e.line == line and e.created >= since
            ]

    def usages_of(self, pk: str) -> list[Stored]:
        return [e for e in self.ledger if e.key == pk]


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

    def send(self, queue: str, message: QueuedRecord, delay: int = 0) -> Placement | None:
        with self._lock:
            if self.down:
                return None
            stored = Message(uuid.uuid4().hex, message.to_json())
            (self.replay if queue == REPLAY else self.dead).append(stored)
            return Placement(queue, stored.message_id, message)

    def store(self, message: QueuedRecord) -> Placement | None:
        from piriod_adapter.models import FailureKind

        queue = DEAD_LETTER if message.failure.kind is FailureKind.REJECTED else REPLAY
        return self.send(queue, message)

    def store_failed(self, _sub: object, message: QueuedRecord) -> Placement | None:
        return self.store(message)

    def send_all(self, sends: list[tuple[str, QueuedRecord, int]]) -> list[Placement | None]:
        return [self.send(q, m, d) for q, m, d in sends]

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


__all__ = [
    "Clock",
    "FakeKeyStore",
    "FakePiriod",
    "FakeQueues",
    "Message",
    "Stored",
    "later",
    "replace",
]
