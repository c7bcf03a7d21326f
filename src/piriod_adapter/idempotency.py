"""DynamoDB: which records were already handled, and a lock so that concurrent deliveries of
the same key never both post (SPEC section 3). The items are table.py's; this module makes the
calls.

A key is claimed by an attempt (a conditional put for a new key, a conditional update to
take over an existing one; a webhook delivery's new keys together, `claim_new`, in one
transaction of conditional puts) with a lock that outlives the holder's own function timeout, and
is written once more when the attempt ends (`finish`: posted, waiting in a queue, rejected;
`release`: free to take again). The final state is written as soon as that record is done,
so that a concurrent delivery of the same key waits no longer than the record's own post.
While a holder only settles an unseen post by lookup (no post of its own yet), its key says
`phase = settling`; before it posts, `posting`; once it sends nothing more (a correction that
found Piriod holding what it should), `ending`. `ambiguous_since` marks an attempt whose
outcome was never seen: whoever takes the key next asks Piriod before posting.

A usage that settles an ambiguous record is taken for that record's key with one conditional
write of its owner item, so that one listed usage settles at most one record.

Why not Powertools Idempotency: it caches a handler's or function's return value per payload
hash, and a record whose post was sent but never answered would either be replayed blindly or
stay locked. Here an unseen post is remembered (`ambiguous_since`) and settled by asking
Piriod before the key is used again, identical records under other keys are told apart, and
the key's state drives which queue a record waits in.
"""

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple

from piriod_adapter import table
from piriod_adapter.clock import Deadline
from piriod_adapter.lifecycle import KeyStatus, Taker
from piriod_adapter.models import Usage, sortable_utc
from piriod_adapter.table import (
    ENDING,
    WAITING_SHARDS,
    Holding,
    KeyRecord,
    KeyState,
    StoreUnavailable,
    Waiting,
    condition_failed,
    error_code,
    key_pk,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = [
    "Accepted",
    "Claim",
    "Identical",
    "Suspect",
    "IdempotencyStore",
    "LockLost",
    "Result",
    "StoreUnavailable",
]

LOCK_MARGIN_SECONDS = 5.0
NEW_CLAIM_ROUNDS = 3  # transactions of a delivery's new keys, each without the keys refused
POLL_SECONDS = 0.2


class LockLost(StoreUnavailable):
    """An attempt's key is no longer held by it (its lock expired and another took it): what
    it would write is not written."""


class Claim(NamedTuple):
    """The result of trying to take a key (what was written stays inside the store)."""

    pk: str
    token: str | None  # set when we hold the key now
    previous: KeyState | None  # the state before (when taken) or the holder's (when not)

    @property
    def acquired(self) -> bool:
        return self.token is not None


class Suspect(NamedTuple):
    """Another key of the line, less than two seconds from a record's instant, whose usage
    Piriod may list without anyone knowing its id: posted by a 201 without one (`idless`),
    or with an earlier post of its own that nobody has seen (its usage, if it landed, may be
    listed). `at` and `quantity` are what that usage would carry (None: not recorded, so it
    may look like anything on the line)."""

    at: datetime | None
    quantity: str | None
    idless: bool

    def twin_of(self, usage: Usage) -> bool:
        """The same record as `usage` to Piriod (line aside): its usage is interchangeable."""
        return (
            self.at == usage.date_time
            and self.quantity is not None
            and Decimal(self.quantity) == usage.quantity
        )


def _may_have_posted(state: KeyState) -> bool:
    """Whether a key's unsettled attempt may have posted a usage of its own: always, unless
    the key holds one, which it then posts again only after its DELETE (flagged first) or at
    another quantity (an amend's)."""
    held = state.holding
    return held is None or state.deleting is not None or state.quantity != held.quantity


class Identical(NamedTuple):
    """What other keys of the same line, at about the same instant, account for: the usage
    ids they hold, whether one is posting now (its usage may be listed before it is
    recorded), and the suspects: those whose usage may be listed with an id nobody knows."""

    held: frozenset[int]
    posting: bool
    suspects: tuple[Suspect, ...] = ()

    @property
    def unknown(self) -> int:
        """How many were posted without a known usage id."""
        return sum(1 for s in self.suspects if s.idless)

    @property
    def unseen(self) -> int:
        """How many have an earlier post of their own that nobody has seen."""
        return sum(1 for s in self.suspects if not s.idless)


class Accepted(NamedTuple):
    """A correction's acceptance: the key as it left it, or why not (a duplicate's revision,
    or `refused`; neither: not found)."""

    state: KeyState | None
    duplicate: int | None = None
    refused: dict[str, list[str]] | None = None


class Result(NamedTuple):
    """An attempt's final state, to write over its claim."""

    claim: Claim
    status: KeyStatus  # POSTED, QUEUED, REJECTED or CANCELLED
    usage_id: int | None = None  # POSTED, when Piriod's answer had a usable id
    ambiguous_since: float | None = None  # an unseen post still to settle
    waiting: Waiting | None = None  # QUEUED / REJECTED: where, and the message
    quantity: str | None = None  # what this attempt posted, if not the claim's record's
    holding: Holding | None = None  # not POSTED: the usage Piriod still holds for the key
    applied: int | None = None  # the corrections this attempt applied, up to this revision
    deleting: int | None = None  # a usage whose DELETE went unanswered
    kept: bool = False  # POSTED: nothing was posted, the key holds its earlier usage still


class _Watch:
    """The keys a container's attempts wait on (held by concurrent deliveries), polled
    together: one BatchGetItem of all of them per poll, whichever waiter asks first, the
    others taking its answer. A delivery whose twin holds its 40 keys then asks the store a
    few times a second, not 40 times as often; in a store that queues requests, those polls
    were the queue (`make bench-load-outside`). A waiter never waits long for another's poll,
    nor fails for it: past POLL_SECONDS, or when that poll failed (a throttled key among
    them), it reads its own key alone, as it always did."""

    def __init__(
        self,
        read_all: Callable[[list[str]], dict[str, KeyState]],
        read_one: Callable[[str], KeyState | None],
        clock: Callable[[], float],
    ) -> None:
        self._read_all = read_all
        self._read_one = read_one
        self._clock = clock
        self._keys = threading.Lock()  # the keys waited on
        self._waiting: Counter[str] = Counter()
        self._poll = threading.Lock()  # one poll at a time, and what it read
        self._polled: dict[str, KeyState | None] = {}
        self._polled_at = float("-inf")

    @contextmanager
    def waiting(self, pk: str) -> Iterator[None]:
        with self._keys:
            self._waiting[pk] += 1
        try:
            yield
        finally:
            with self._keys:
                self._waiting[pk] -= 1
                if self._waiting[pk] <= 0:
                    del self._waiting[pk]

    def state(self, pk: str, since: float) -> KeyState | None:
        """The key's state as read after `since` (the waiter's last read): the last poll's,
        or a new poll of every key waited on. Raises StoreUnavailable."""
        if not self._poll.acquire(timeout=POLL_SECONDS):  # another poll is slow
            return self._read_one(pk)
        try:
            if self._polled_at > since and pk in self._polled:
                return self._polled[pk]
            with self._keys:
                pks = list(self._waiting)
            if pk not in pks:
                pks.append(pk)
            polled_at = self._clock()
            try:
                read = self._read_all(pks)
            except StoreUnavailable:
                self._polled, self._polled_at = {}, float("-inf")
                read = None
            if read is not None:
                self._polled = {key: read.get(key) for key in pks}
                self._polled_at = polled_at
                return self._polled[pk]
        finally:
            self._poll.release()
        return self._read_one(pk)  # the poll failed: this key alone (raises if the store is)


def _existing(item: dict[str, Any], found: dict[str, Any] | None, now: float) -> Claim | None:
    """A key a delivery's transaction found existing (`found`, its item): what `claim` answers
    for it when the webhook may not take it (table.take_over: neither released nor expired,
    or another record's), or None when it may, or the item is not known: that record then
    claims it alone."""
    if not found:
        return None
    state = KeyState.from_item(found)
    takeable = state.status is KeyStatus.RELEASED or (
        state.status is KeyStatus.IN_PROGRESS and (state.lock_expires or 0) < now
    )
    if takeable and state.fingerprint == item["fingerprint"]["S"]:
        return None
    return Claim(pk=item["pk"]["S"], token=None, previous=state)


class IdempotencyStore:
    def __init__(
        self,
        client: "DynamoDBClient",
        table_name: str,
        ttl_days: int,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._table = table_name
        self._ttl = timedelta(days=ttl_days).total_seconds()
        self._clock = clock
        self._sleep = sleep
        self._claims: dict[str, dict[str, Any]] = {}  # token -> the item a claim wrote
        # token -> what its attempt wrote since its claim put the key new (table.finish)
        self._fresh: dict[str, set[str]] = {}
        self._watch = _Watch(self.states, self.get, clock)

    def _call(self, operation: str, what: str, request: dict[str, Any]) -> dict[str, Any]:
        """One DynamoDB call on the table; raises StoreUnavailable, or the client's error
        for a refused condition (see table.condition_failed)."""
        method = getattr(self._client, operation)
        try:
            response: dict[str, Any] = method(TableName=self._table, **request)
        except Exception as exc:
            if condition_failed(exc):
                raise
            raise StoreUnavailable(
                f"cannot {what}: {error_code(exc) or type(exc).__name__}"
            ) from None
        return response

    def claim(
        self,
        usage: Usage,
        deadline: Deadline,
        taker: Taker = Taker.WEBHOOK,
        *,
        settling: bool = False,
    ) -> Claim:
        """Take the usage's key for one attempt (see Taker). One request in the common case:
        a conditional put for a webhook's (new) key, a conditional update for a replay's
        (existing) key; the other one only when the guess was wrong. `settling`: the attempt
        first looks an unseen post up (its item says so until `mark_posting`)."""
        pk = key_pk(usage.key)
        now = self._clock()
        token = uuid.uuid4().hex
        phase = "settling" if settling else "posting"
        lock = now + deadline.remaining() + LOCK_MARGIN_SECONDS  # past the holder's timeout
        item = table.claim_item(pk, usage, token, now, lock, phase, int(now + self._ttl))
        if taker is not Taker.WEBHOOK:
            taken = self._take_over(item, now, taker)
            if taken.acquired or taken.previous is not None:
                return taken
        try:
            self._call("put_item", "claim key", table.new_key(item))
            self._claims[token] = item
            self._fresh[token] = set()
            return Claim(pk=pk, token=token, previous=None)
        except StoreUnavailable:
            raise
        except Exception:  # the key exists
            return self._take_over(item, now, taker)

    def claim_new(self, usages: Sequence[Usage], deadline: Deadline) -> list[Claim | None]:
        """Claim a webhook delivery's new keys together, as `claim` claims one new key: one
        TransactWriteItems of conditional puts per table.MAX_TRANSACT_ITEMS distinct keys
        instead of one PutItem each. One entry per usage, in order: the claim; or, for a key
        that exists (a refused condition, with the item found: the transaction is tried
        again without it, up to NEW_CLAIM_ROUNDS times) and that the webhook may not take,
        what `claim` answers then (not acquired, with its holder's state); or None where
        that record is to claim its key alone (`claim`): a key that exists and may be taken
        (released, or its holder's lock expired), one another transaction is writing, a key
        that came earlier in `usages`, or every key of a transaction the store did not take
        (throttled, down, invalid). Fewer than two distinct keys: all None. Never raises."""
        claims: list[Claim | None] = [None] * len(usages)
        first: dict[str, int] = {}
        for n, usage in enumerate(usages):
            first.setdefault(key_pk(usage.key), n)
        if len(first) < 2:
            return claims
        now = self._clock()
        lock = now + deadline.remaining() + LOCK_MARGIN_SECONDS  # as `claim`'s
        expires = int(now + self._ttl)
        items = {
            n: table.claim_item(pk, usages[n], uuid.uuid4().hex, now, lock, "posting", expires)
            for pk, n in first.items()
        }
        todo = list(first.values())
        for start in range(0, len(todo), table.MAX_TRANSACT_ITEMS):
            chunk = todo[start : start + table.MAX_TRANSACT_ITEMS]
            for _ in range(NEW_CLAIM_ROUNDS):
                refused = self._put_new([items[n] for n in chunk])
                if refused is None:  # the store did not take it: each claims alone
                    break
                if not refused:
                    for n in chunk:
                        item = items[n]
                        token = item["lock_token"]["S"]
                        self._claims[token] = item
                        self._fresh[token] = set()
                        claims[n] = Claim(pk=item["pk"]["S"], token=token, previous=None)
                    break
                for position, found in refused.items():
                    claims[chunk[position]] = _existing(items[chunk[position]], found, now)
                chunk = [n for position, n in enumerate(chunk) if position not in refused]
                if not chunk:
                    break
        return claims

    def _put_new(self, items: list[dict[str, Any]]) -> dict[int, dict[str, Any] | None] | None:
        """One transaction of new keys' puts: empty when it committed; when it was cancelled
        for those alone, the keys that stopped it by position, each with the item it found
        (None: another transaction is writing it); None for anything else."""
        try:
            self._client.transact_write_items(
                TransactItems=table.new_keys(self._table, items)  # type: ignore[arg-type]
            )
        except Exception as exc:
            if error_code(exc) != "TransactionCanceledException":
                return None
            reasons: list[dict[str, Any]] = (
                getattr(exc, "response", {}).get("CancellationReasons") or []
            )
            refused: dict[int, dict[str, Any] | None] = {}
            for position, reason in enumerate(reasons):
                code = reason.get("Code")
                if code == "ConditionalCheckFailed":
                    refused[position] = reason.get("Item") or None
                elif code == "TransactionConflict":
                    refused[position] = None
                elif code not in (None, "None"):
                    return None  # throttled, a validation error: the store, not the keys
            return refused or None
        return {}

    def _take_over(self, item: dict[str, Any], now: float, taker: Taker) -> Claim:
        """The key exists: take it if its holder is gone, released it, or it waits where the
        taker may take it from; otherwise report the holder."""
        pk = item["pk"]["S"]
        try:
            response = self._call("update_item", "claim key", table.take_over(item, now, taker))
        except StoreUnavailable:
            raise
        except Exception as exc:  # refused: held, done, or another record's key
            held: dict[str, Any] | None = getattr(exc, "response", {}).get("Item")
            holder = KeyState.from_item(held) if held else self.get(pk)
            return Claim(pk=pk, token=None, previous=holder)
        old = response.get("Attributes") or {}
        claimed = table.taken_over(item, old)
        token = claimed["lock_token"]["S"]
        self._claims[token] = claimed
        previous = KeyState.from_item(old) if old else None
        claim = Claim(pk=pk, token=token, previous=previous)
        vanished = previous is not None and previous.status is KeyStatus.IN_PROGRESS
        if (
            vanished
            and previous is not None
            and previous.ambiguous_since is None
            and previous.phase != ENDING  # it had nothing more to send
        ):
            # Its holder vanished mid-attempt: whether its post landed is unseen, and stays
            # so if this attempt vanishes too (its start would be lost with the lock).
            since = previous.attempt_started or now
            self._held(claim, "flag unseen post", table.mark_unseen(pk, token, since))
        return claim

    def get(self, pk: str) -> KeyState | None:
        request = {"Key": {"pk": {"S": pk}}, "ConsistentRead": True}
        item = self._call("get_item", "read key", request).get("Item")
        return KeyState.from_item(item) if item else None

    def items(self, pks: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Items by their key (BatchGetItem, strongly consistent; a missing one left out).
        Raises StoreUnavailable."""
        found: dict[str, dict[str, Any]] = {}
        todo = list(dict.fromkeys(pks))
        for start in range(0, len(todo), 100):
            keys: list[dict[str, Any]] = [{"pk": {"S": pk}} for pk in todo[start : start + 100]]
            for _ in range(10):
                request = {"RequestItems": {self._table: {"Keys": keys, "ConsistentRead": True}}}
                try:
                    response: Any = self._client.batch_get_item(**request)  # type: ignore[arg-type]
                except Exception as exc:
                    raise StoreUnavailable(f"cannot read keys: {type(exc).__name__}") from None
                for item in response.get("Responses", {}).get(self._table, []):
                    found[item["pk"]["S"]] = item
                keys = response.get("UnprocessedKeys", {}).get(self._table, {}).get("Keys", [])
                if not keys:
                    break
                self._sleep(0.05)
            if keys:
                raise StoreUnavailable("cannot read keys: unprocessed keys")
        return found

    def states(self, pks: Sequence[str]) -> dict[str, KeyState]:
        """Keys' states by their item key (a key that does not exist is left out)."""
        return {pk: KeyState.from_item(item) for pk, item in self.items(pks).items()}

    def accept(self, pk: str, action: str, quantity: str | None, correction_id: str) -> Accepted:
        """Accept a correction on a record's key (SPEC 10): its next revision, in the order
        corrections arrive. Refused: the key is unknown or cancelled (not found), the
        correction was accepted before (a duplicate, with its revision), or the key has had
        table.MAX_CORRECTIONS. Raises StoreUnavailable."""
        request = table.accept_correction(pk, action, quantity, correction_id, self._clock())
        try:
            response = self._call("update_item", "accept a correction", request)
        except StoreUnavailable:
            raise
        except Exception as exc:
            old: dict[str, Any] = getattr(exc, "response", {}).get("Item") or {}
            seen = old.get(table.correction_attribute(correction_id))
            if seen is not None:
                return Accepted(None, duplicate=int(seen["N"]))
            if old and not old.get("cancelled", {}).get("BOOL") and "rev" in old:
                limit = f"has had {table.MAX_CORRECTIONS} corrections, the most a key takes"
                return Accepted(None, refused={"key": [limit]})
            return Accepted(None)
        return Accepted(KeyState.from_item(response["Attributes"]))

    def wait_while_locked(self, pk: str, deadline: Deadline, at_most: float) -> KeyState | None:
        """Poll a key held by a concurrent delivery until it settles, `at_most` seconds pass,
        or our time runs out; with every other key this container waits on (_Watch)."""
        until = self._clock() + at_most
        with self._watch.waiting(pk):
            state = self.get(pk)
            read_at = self._clock()
            while (
                state is not None
                and state.locked(self._clock())
                and deadline.remaining() > POLL_SECONDS
                and self._clock() < until
            ):
                self._sleep(POLL_SECONDS)
                state = self._watch.state(pk, read_at)
                read_at = self._clock()
        return state

    def _held(self, claim: Claim, what: str, request: dict[str, Any]) -> None:
        """A write that only the claim's holder may make."""
        written = self._fresh.get(claim.token or "")
        if written is not None:  # before it is sent: if its answer is lost, it may be there
            written.update(table.set_names(request))
        try:
            self._call("update_item", what, request)
        except StoreUnavailable:
            raise
        except Exception:
            raise LockLost(f"cannot {what}: the key is no longer held by this attempt") from None

    def finish(self, result: Result) -> None:
        """Write one attempt's final state over its claim: posted (with Piriod's id when
        known), waiting in a queue (with its message), or rejected. Raises StoreUnavailable
        (LockLost: another attempt holds the key now; nothing is written)."""
        claim = result.claim
        assert claim.token is not None, "only a claim that was taken is written over"
        claimed = self._claims.pop(claim.token, None)
        written = self._fresh.pop(claim.token, None)
        if claimed is None:  # finished or settled already (by its worker, at a deadline)
            raise LockLost("cannot record result: the claim was written over already")
        quantity = result.quantity or claimed["quantity"]["S"]
        holding = result.holding
        if result.status is KeyStatus.POSTED:
            holding = Holding(quantity, result.usage_id)
        request = table.finish(
            claim.pk,
            claim.token,
            claimed,
            result.status,
            self._clock(),
            quantity=quantity,
            holding=holding,
            applied=result.applied,
            ambiguous_since=result.ambiguous_since,
            waiting=result.waiting,
            deleting=result.deleting,
            kept=result.kept,
            written=None if written is None else frozenset(written),
        )
        self._held(claim, "record result", request)

    def mark_posting(self, claim: Claim, quantity: str | None = None) -> None:
        """An attempt is about to post: from now on identical records see it as a post in
        progress (a settling attempt's), and an unseen post of it carries `quantity` (an
        amended record's). Raises StoreUnavailable."""
        assert claim.token is not None
        self._held(claim, "update key", table.mark_posting(claim.pk, claim.token, quantity))
        claimed = self._claims.get(claim.token)
        if quantity is not None and claimed is not None:  # what finish writes by default
            claimed["quantity"] = {"S": quantity}

    def mark_deleting(self, claim: Claim, usage_id: int, correcting: Waiting | None = None) -> None:
        """An attempt is about to DELETE `usage_id`: the key flags it until a later write
        says what Piriod holds (a release keeps it); with `correcting`, the correction waits
        on the key until the attempt's finish (table.mark_deleting). Raises
        StoreUnavailable."""
        assert claim.token is not None
        request = table.mark_deleting(claim.pk, claim.token, usage_id, correcting)
        self._held(claim, "update key", request)

    def wait_on_key(self, claim: Claim, correcting: Waiting) -> None:
        """The correction this attempt applies waits on the key until the attempt's finish
        (table.wait_on_key). Raises StoreUnavailable."""
        assert claim.token is not None
        self._held(claim, "update key", table.wait_on_key(claim.pk, claim.token, correcting))

    def hold(self, claim: Claim, holding: Holding | None) -> None:
        """What Piriod holds for the key now, while the attempt goes on (a usage found by
        settling, or none once a DELETE was answered). Raises StoreUnavailable."""
        assert claim.token is not None
        self._held(claim, "update key", table.hold(claim.pk, claim.token, holding))

    def settle(self, claim: Claim, usage_id: int) -> None:
        """Record that an earlier, unseen attempt did land in Piriod as `usage_id`."""
        assert claim.token is not None
        request = table.settle(claim.pk, claim.token, usage_id, self._clock())
        self._held(claim, "record settled usage", request)
        self._claims.pop(claim.token, None)
        self._fresh.pop(claim.token, None)

    def take_usage(self, claim: Claim, usage_id: int) -> bool:
        """Take a listed usage for this claim's record: False when another key has it (one
        usage settles at most one record). Raises StoreUnavailable."""
        expires = int(self._clock() + self._ttl)
        try:
            self._call("update_item", "take usage", table.take_usage(usage_id, claim.pk, expires))
            return True
        except StoreUnavailable:
            raise
        except Exception:
            return False

    def give_back(self, claim: Claim, usage_id: int) -> None:
        """Undo `take_usage` (an identical record turned out to be posting)."""
        try:
            self._call("update_item", "give usage back", table.give_back(usage_id, claim.pk))
        except StoreUnavailable:
            raise
        except Exception:
            return  # not ours (any more)

    def identical(self, claim: Claim, usage: Usage) -> Identical:
        """Other keys of the record's line less than two seconds from its instant: any of them
        may be listed at a precision that makes it look like this record."""
        assert usage.subscription_line is not None
        now = self._clock()
        held: set[int] = set()
        suspects: list[Suspect] = []
        posting = False
        start, end = table.identical_window(usage)
        for item in self.query_line(usage.subscription_line, start, end):
            if item["pk"]["S"] == claim.pk:
                continue
            state = KeyState.from_item(item)
            if state.holding is not None:  # a usage Piriod holds for that key
                if state.holding.usage_id is not None:
                    held.add(state.holding.usage_id)
                else:
                    suspects.append(Suspect(state.at, state.holding.quantity, idless=True))
            if state.unsettled_since() is not None and _may_have_posted(state):
                suspects.append(Suspect(state.at, state.quantity, idless=False))
            posting = posting or state.posting(now)
        return Identical(frozenset(held), posting, tuple(suspects))

    def release(
        self,
        claim: Claim,
        ambiguous_since: float | None,
        deleting: int | None = None,
        correcting: Waiting | None = None,
    ) -> None:
        """Free a key we hold (an attempt that stopped on an unexpected error, or whose
        record could not be placed), keeping an unseen post (or an unanswered DELETE)
        flagged so that the next holder settles it by lookup; `correcting`: a correction
        left waiting on the key (table.release)."""
        assert claim.token is not None
        self._claims.pop(claim.token, None)
        self._fresh.pop(claim.token, None)
        request = table.release(claim.pk, claim.token, ambiguous_since, deleting, correcting)
        self._held(claim, "release key", request)

    def _query(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            response = self._call("query", "query the table", request)
            items.extend(response.get("Items", []))
            if "LastEvaluatedKey" not in response:
                return items
            request = {**request, "ExclusiveStartKey": response["LastEvaluatedKey"]}

    def query_line(self, line: int, start: str, end: str) -> list[dict[str, Any]]:
        """Every key item of a subscription line with its UTC instant in [start, end]."""
        return self._query(table.line_between(line, start, end))

    def keys_of_event(self, alias: str) -> list[str]:
        """The keys of the CloudEvents with this scope and `id` (table.event_alias), from
        index `by_event` (eventually consistent: a key put a moment ago may not be there
        yet). Raises StoreUnavailable."""
        return [item["pk"]["S"] for item in self._query(table.by_event(alias))]

    def recorded_between(self, line: int, start: datetime, end: datetime) -> list[KeyRecord]:
        """What the adapter recorded for a subscription line in [start, end] (for reconcile)."""
        items = self.query_line(line, sortable_utc(start), sortable_utc(end))
        return [KeyRecord.from_item(item) for item in items]

    def park(self, message_id: str, body: str, first_sent: datetime) -> None:
        """Keep a dead letter whole in the table (see park.py). Raises StoreUnavailable."""
        self._call(
            "put_item",
            "park a dead letter",
            table.parked(message_id, body, first_sent, self._clock()),
        )

    def unpark(self, message_id: str) -> None:
        """Forget a parked dead letter (replayed, or purged by the operator)."""
        self._call("delete_item", "delete a parked dead letter", table.parked_key(message_id))

    def waiting(self, queue: str) -> list[Waiting]:
        """What waits in `queue` ("replay", "dead-letter", or table.PARKED), oldest first, with
        its queue message: read from the table, the queue itself is not touched."""
        items = []
        for shard in range(WAITING_SHARDS):
            items += self._query(table.waiting_in(queue, shard))
        return sorted((Waiting.from_item(item) for item in items), key=lambda w: w.since)
