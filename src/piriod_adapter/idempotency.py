"""DynamoDB: which records were already handled, and a lock so that concurrent deliveries of
the same key never both post (SPEC section 3).

One item per idempotency key, `pk = <namespace>#<scope>#<key>`: namespace `k` for a native
record's own key, `d` for a key derived from the delivery (`{webhook-id}:{index}`), `e` for a
source's event id, so that no key of one kind can take the place of another. A key that would
make `pk` longer than 1,024 bytes is hashed (namespace `kh`, `dh`, `eh`), so a 2 KiB
webhook-id works. `status` is one of:
  in_progress  someone holds it until `lock_expires` (set past their own function timeout)
  posted       in Piriod as `usage_id`
  queued       waiting in ReplayQueue (or DeadLetterQueue after replay gave up)
  rejected     refused for the record itself; in DeadLetterQueue
  released     a holder could neither post nor store it: free to take again
`ambiguous_since` marks an attempt whose outcome was never seen: whoever takes the key next
asks Piriod before posting. Items carry the record's line and UTC instant, indexed by
`by_line`, so that settling can tell which Piriod usages other keys already account for and
reconcile can compare a period. A record waiting in a queue also carries its queue message
(`waiting`, indexed by `by_waiting`), so that the operator can list ReplayQueue without
receiving from it (a receive would count towards its maxReceiveCount).

A record costs one conditional PutItem (the claim) and one PutItem (its final state: posted,
queued, rejected, released), written as soon as that record is done, so that a concurrent
delivery of the same key waits no longer than the record's own post. Writing the final state
unconditionally is safe because the claim's lock outlives the holder's own function timeout:
nobody else can hold the key. While a holder only settles an unseen post by lookup (no post of
its own yet), its item says `phase = settling`; before it posts, `posting`.

A usage that settles an ambiguous record is taken for that record's key with one conditional
write of `u#<usage id>` (its `owner`), so that one listed usage settles at most one record.

Why not Powertools Idempotency: it caches a handler's or function's return value per payload
hash, and a record whose post was sent but never answered would either be replayed blindly or
stay locked. Here an unseen post is remembered (`ambiguous_since`) and settled by asking
Piriod before the key is used again, identical records under other keys are told apart, and
the key's state drives which queue a record waits in.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from piriod_adapter.clock import Deadline
from piriod_adapter.lifecycle import KeyStatus, Taker
from piriod_adapter.models import KeyKind, Usage, UsageKey, sortable_utc

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

LOCK_MARGIN_SECONDS = 5.0
POLL_SECONDS = 0.2
MAX_PK_BYTES = 1024  # DynamoDB allows 2,048 for a partition key; hashed beyond this
WAITING_SHARDS = 8  # `waiting` spreads over this many index partitions per queue
_NAMESPACES = {
    KeyKind.EXPLICIT: "k",
    KeyKind.DELIVERY: "d",
    KeyKind.EVENT: "e",
    KeyKind.WINDOW: "a",
}


class StoreUnavailable(RuntimeError):
    """The idempotency table could not be read or written."""


def key_pk(key: UsageKey) -> str:
    """The item key of an idempotency key: its namespace, scope and text (hashed if long)."""
    tag = _NAMESPACES[key.kind]
    pk = f"{tag}#{key.scope}#{key.text}"
    if len(pk.encode("utf-8", "surrogatepass")) <= MAX_PK_BYTES:
        return pk
    digest = hashlib.sha256(key.text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{tag}h#{key.scope}#{digest}"


@dataclass(frozen=True)
class KeyState:
    status: KeyStatus
    fingerprint: str | None = None
    usage_id: int | None = None
    lock_expires: float | None = None
    attempt_started: float | None = None
    ambiguous_since: float | None = None

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> KeyState:
        def number(name: str) -> float | None:
            return float(item[name]["N"]) if name in item else None

        usage_id = number("usage_id")
        return cls(
            status=KeyStatus(item["status"]["S"]),
            fingerprint=item.get("fingerprint", {}).get("S"),
            usage_id=int(usage_id) if usage_id is not None else None,
            lock_expires=number("lock_expires"),
            attempt_started=number("attempt_started"),
            ambiguous_since=number("ambiguous_since"),
        )

    def locked(self, now: float) -> bool:
        return self.status is KeyStatus.IN_PROGRESS and (self.lock_expires or 0) > now

    def unsettled_since(self) -> float | None:
        """When an attempt whose outcome is unknown started, if there is one."""
        if self.ambiguous_since is not None:
            return self.ambiguous_since
        if self.status is KeyStatus.IN_PROGRESS:  # its holder vanished mid-attempt
            return self.attempt_started
        return None


@dataclass(frozen=True)
class Claim:
    """The result of trying to take a key (what was written stays inside the store)."""

    pk: str
    token: str | None  # set when we hold the key now
    previous: KeyState | None  # the state before (when taken) or the holder's (when not)

    @property
    def acquired(self) -> bool:
        return self.token is not None


@dataclass(frozen=True)
class Identical:
    """What other keys of the same line, at about the same instant, account for: the usage
    ids they hold, how many were posted without a known id, whether one is posting now
    (its usage may be listed before it is recorded), and how many have an earlier post of
    their own that nobody has seen (its usage, if it landed, may be the one listed)."""

    held: frozenset[int]
    unknown: int
    posting: bool
    unseen: int = 0


class IdempotencyStore:
    def __init__(
        self,
        client: DynamoDBClient,
        table: str,
        ttl_days: int,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._table = table
        self._ttl = timedelta(days=ttl_days).total_seconds()
        self._clock = clock
        self._sleep = sleep
        self._claims: dict[str, dict[str, Any]] = {}  # token -> the item a claim wrote

    def _item(
        self, pk: str, usage: Usage, token: str, now: float, lock: float, phase: str
    ) -> dict[str, Any]:
        item = {
            "pk": {"S": pk},
            "status": {"S": KeyStatus.IN_PROGRESS.value},
            "phase": {"S": phase},
            "lock_expires": {"N": _num(lock)},
            "lock_token": {"S": token},
            "attempt_started": {"N": _num(now)},
            "fingerprint": {"S": usage.fingerprint},
            "usage_at": {"S": sortable_utc(usage.date_time)},
            "date_time": {"S": usage.date_time_text},
            "quantity": {"S": usage.quantity_text},
            "expires_at": {"N": str(int(now + self._ttl))},
        }
        if usage.subscription_line is not None:  # an unmapped meter's record has no line yet
            item["line"] = {"N": str(usage.subscription_line)}
        return item

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
        item = self._item(pk, usage, token, now, deadline.wall_at + LOCK_MARGIN_SECONDS, phase)
        if taker is not Taker.WEBHOOK:
            taken = self._take_over(pk, item, now, taker)
            if taken.acquired or taken.previous is not None:
                return taken
        try:
            self._client.put_item(
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
            )
            self._claims[token] = item
            return Claim(pk=pk, token=token, previous=None)
        except Exception as exc:
            if not _condition_failed(exc):
                raise StoreUnavailable(f"cannot claim key: {type(exc).__name__}") from None
        return self._take_over(pk, item, now, taker)

    def _take_over(self, pk: str, item: dict[str, Any], now: float, taker: Taker) -> Claim:
        """The key exists: take it if its holder is gone, released it, or it waits where the
        taker may take it from; otherwise report the holder."""
        takeable = "#s = :released OR (#s = :in_progress AND lock_expires < :now)"
        values: dict[str, Any] = {
            ":in_progress": item["status"],
            ":released": {"S": KeyStatus.RELEASED.value},
            ":now": {"N": _num(now)},
            ":lock": item["lock_expires"],
            ":token": item["lock_token"],
            ":fp": item["fingerprint"],
            ":started": item["attempt_started"],
            ":phase": item["phase"],
        }
        # Only the lock: the attempt's final state is written over the whole claim later
        # (`finish`: retention, a meter's newly mapped line and the rest).
        update = (
            "SET #s = :in_progress, lock_expires = :lock, lock_token = :token, "
            "attempt_started = :started, phase = :phase"
        )
        if taker is Taker.REPLAY:  # only what waits in ReplayQueue: never a rejected record
            takeable += " OR (#s = :queued AND begins_with(waiting, :replay))"
            values[":queued"] = {"S": KeyStatus.QUEUED.value}
            values[":replay"] = {"S": "replay#"}
        elif taker is Taker.OPERATOR:
            takeable += " OR #s IN (:queued, :rejected)"
            values[":queued"] = {"S": KeyStatus.QUEUED.value}
            values[":rejected"] = {"S": KeyStatus.REJECTED.value}
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": pk}},
                UpdateExpression=update,
                # A key reused for a different record never takes the lock: it is a conflict.
                ConditionExpression=f"({takeable}) AND fingerprint = :fp",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_OLD",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except Exception as exc:
            if not _condition_failed(exc):
                raise StoreUnavailable(f"cannot claim key: {type(exc).__name__}") from None
            held: dict[str, Any] | None = getattr(exc, "response", {}).get("Item")
            holder = KeyState.from_item(held) if held else self.get(pk)
            return Claim(pk=pk, token=None, previous=holder)
        old = response.get("Attributes") or {}
        previous = KeyState.from_item(old) if old else None
        # What the new attempt must keep: an earlier attempt's unseen post, and where the
        # record waits while this attempt is on it.
        item = {**item, **{k: v for k, v in old.items() if k in _KEPT_ON_TAKE_OVER}}
        token = item["lock_token"]["S"]
        self._claims[token] = item
        return Claim(pk=pk, token=token, previous=previous)

    def get(self, pk: str) -> KeyState | None:
        try:
            response = self._client.get_item(
                TableName=self._table, Key={"pk": {"S": pk}}, ConsistentRead=True
            )
        except Exception as exc:
            raise StoreUnavailable(f"cannot read key: {type(exc).__name__}") from None
        item = response.get("Item")
        return KeyState.from_item(item) if item else None

    def wait_while_locked(self, pk: str, deadline: Deadline, at_most: float) -> KeyState | None:
        """Poll a key held by a concurrent delivery until it settles, `at_most` seconds pass,
        or our time runs out."""
        until = self._clock() + at_most
        state = self.get(pk)
        while (
            state is not None
            and state.locked(self._clock())
            and deadline.remaining() > POLL_SECONDS
            and self._clock() < until
        ):
            self._sleep(POLL_SECONDS)
            state = self.get(pk)
        return state

    def finish(self, result: Result) -> None:
        """Write one attempt's final state over its claim: posted (with Piriod's id when
        known), waiting in a queue (with its message), or released (free to take again).
        Unconditional, because the claim's lock outlives the holder's own function timeout:
        nobody else can hold the key. Raises StoreUnavailable."""
        claim = result.claim
        assert claim.token is not None, "only a claim that was taken is written over"
        written = self._claims.pop(claim.token, None)
        assert written is not None, "a claim is finished once"
        item = {k: v for k, v in written.items() if k not in _ATTEMPT_ATTRIBUTES}
        item["status"] = {"S": result.status.value}
        if result.status is KeyStatus.POSTED:
            for name in _WAIT_ATTRIBUTES:
                item.pop(name, None)
            item["posted_at"] = {"N": _num(self._clock())}
            if result.usage_id is not None:
                item["usage_id"] = {"N": str(result.usage_id)}
        elif result.ambiguous_since is not None:
            item["ambiguous_since"] = {"N": _num(result.ambiguous_since)}
        if result.waiting is not None:
            waiting = result.waiting
            item.update(
                waiting={"S": f"{waiting.queue}#{_shard(claim.pk)}"},
                waiting_since={"S": waiting.since},
                message_id={"S": waiting.message_id},
                message={"S": waiting.message},
            )
        try:
            self._client.put_item(TableName=self._table, Item=item)
        except Exception as exc:
            raise StoreUnavailable(f"cannot record result: {type(exc).__name__}") from None

    def mark_posting(self, claim: Claim) -> None:
        """A settling attempt is about to post: from now on identical records see it as a
        post in progress. Raises StoreUnavailable."""
        assert claim.token is not None
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": claim.pk}},
                UpdateExpression="SET phase = :posting",
                ConditionExpression="lock_token = :token",
                ExpressionAttributeValues={
                    ":posting": {"S": "posting"},
                    ":token": {"S": claim.token},
                },
            )
        except Exception as exc:
            raise StoreUnavailable(f"cannot update key: {type(exc).__name__}") from None

    def settle(self, claim: Claim, usage_id: int) -> None:
        """Record that an earlier, unseen attempt did land in Piriod as `usage_id`."""
        assert claim.token is not None
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": claim.pk}},
                UpdateExpression=(
                    "SET #s = :posted, usage_id = :id, posted_at = :now REMOVE "
                    + ", ".join(_TRANSIENT_ATTRIBUTES)
                ),
                ConditionExpression="lock_token = :token",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":posted": {"S": KeyStatus.POSTED.value},
                    ":id": {"N": str(usage_id)},
                    ":now": {"N": _num(self._clock())},
                    ":token": {"S": claim.token},
                },
            )
        except Exception as exc:
            raise StoreUnavailable(f"cannot record settled usage: {type(exc).__name__}") from None
        self._claims.pop(claim.token, None)

    def take_usage(self, claim: Claim, usage_id: int) -> bool:
        """Take a listed usage for this claim's record: False when another key has it (one
        usage settles at most one record). Raises StoreUnavailable."""
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": f"u#{usage_id}"}},
                UpdateExpression="SET #o = :owner, expires_at = :expires",
                ConditionExpression="attribute_not_exists(#o) OR #o = :owner",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={
                    ":owner": {"S": claim.pk},
                    ":expires": {"N": str(int(self._clock() + self._ttl))},
                },
            )
            return True
        except Exception as exc:
            if not _condition_failed(exc):
                raise StoreUnavailable(f"cannot take usage: {type(exc).__name__}") from None
            return False

    def give_back(self, claim: Claim, usage_id: int) -> None:
        """Undo `take_usage` (an identical record turned out to be posting)."""
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": f"u#{usage_id}"}},
                UpdateExpression="REMOVE #o",
                ConditionExpression="#o = :owner",
                ExpressionAttributeNames={"#o": "owner"},
                ExpressionAttributeValues={":owner": {"S": claim.pk}},
            )
        except Exception as exc:
            if not _condition_failed(exc):
                raise StoreUnavailable(f"cannot give usage back: {type(exc).__name__}") from None

    def identical(self, claim: Claim, usage: Usage) -> Identical:
        """Other keys of the record's line less than a second from its instant: any of them
        may be listed at a precision that makes it look like this record."""
        assert usage.subscription_line is not None
        now = self._clock()
        held: set[int] = set()
        unknown = unseen = 0
        posting = False
        # strictly within a second: a usage a whole second apart is told apart even when
        # listed to the second (an aggregation window's generations are one second apart)
        start = sortable_utc(usage.date_time - timedelta(seconds=1) + timedelta(microseconds=1))
        end = sortable_utc(usage.date_time + timedelta(seconds=1) - timedelta(microseconds=1))
        for item in self.query_line(usage.subscription_line, start, end):
            if item["pk"]["S"] == claim.pk:
                continue
            state = KeyState.from_item(item)
            if state.usage_id is not None:
                held.add(state.usage_id)
            elif state.status is KeyStatus.POSTED:
                unknown += 1
            elif state.unsettled_since() is not None:
                unseen += 1
            if state.locked(now) and item.get("phase", {}).get("S") != "settling":
                posting = True
        return Identical(frozenset(held), unknown, posting, unseen)

    def release(self, claim: Claim, ambiguous_since: float | None) -> None:
        """Free a key we hold (an attempt that stopped on an unexpected error, or whose
        record could not be stored), keeping an unseen post flagged so that the next holder
        settles it by lookup."""
        assert claim.token is not None
        self._claims.pop(claim.token, None)
        values: dict[str, Any] = {
            ":status": {"S": KeyStatus.RELEASED.value},
            ":token": {"S": claim.token},
        }
        if ambiguous_since is None:
            update = "SET #s = :status REMOVE lock_expires, lock_token"
        else:
            update = "SET #s = :status, ambiguous_since = :since REMOVE lock_expires, lock_token"
            values[":since"] = {"N": _num(ambiguous_since)}
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": claim.pk}},
                UpdateExpression=update,
                ConditionExpression="lock_token = :token",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=values,
            )
        except Exception as exc:
            raise StoreUnavailable(f"cannot update key: {type(exc).__name__}") from None

    def _query(self, **kwargs: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        try:
            while True:
                response = self._client.query(TableName=self._table, **kwargs)
                items.extend(response.get("Items", []))
                if "LastEvaluatedKey" not in response:
                    return items
                kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        except Exception as exc:
            raise StoreUnavailable(f"cannot query the table: {type(exc).__name__}") from None

    def query_line(self, line: int, start: str, end: str) -> list[dict[str, Any]]:
        """Every key item of a subscription line with its UTC instant in [start, end]."""
        return self._query(
            IndexName="by_line",
            KeyConditionExpression="line = :line AND usage_at BETWEEN :a AND :b",
            ExpressionAttributeValues={
                ":line": {"N": str(line)},
                ":a": {"S": start},
                ":b": {"S": end},
            },
        )

    def recorded_between(self, line: int, start: datetime, end: datetime) -> list[KeyRecord]:
        """What the adapter recorded for a subscription line in [start, end] (for reconcile)."""
        return [
            KeyRecord(
                key=item["pk"]["S"],
                status=KeyStatus(item["status"]["S"]),
                usage_id=int(item["usage_id"]["N"]) if "usage_id" in item else None,
                date_time=item["date_time"]["S"],
                quantity=item["quantity"]["S"],
            )
            for item in self.query_line(line, sortable_utc(start), sortable_utc(end))
        ]

    def waiting(self, queue: str) -> list[Waiting]:
        """What waits in `queue` ("replay" or "dead-letter"), oldest first, with its queue
        message: read from the table, the queue itself is not touched."""
        items = []
        for shard in range(WAITING_SHARDS):
            items += self._query(
                IndexName="by_waiting",
                KeyConditionExpression="waiting = :w",
                ExpressionAttributeValues={":w": {"S": f"{queue}#{shard}"}},
            )
        return sorted(
            (
                Waiting(
                    queue=queue,
                    message_id=item["message_id"]["S"],
                    message=item["message"]["S"],
                    since=item["waiting_since"]["S"],
                )
                for item in items
            ),
            key=lambda w: w.since,
        )


@dataclass(frozen=True)
class KeyRecord:
    """What the table says of one key (for reconcile)."""

    key: str
    status: KeyStatus
    usage_id: int | None
    date_time: str
    quantity: str


@dataclass(frozen=True)
class Waiting:
    """Where a record waits: the queue, its message id there and the message itself."""

    queue: str  # "replay" or "dead-letter"
    message_id: str
    message: str  # the queue message's JSON
    since: str  # when it failed, as sortable UTC text


_KEPT_ON_TAKE_OVER = (
    "ambiguous_since",
    "waiting",
    "waiting_since",
    "message_id",
    "message",
)
# Attributes of an attempt in progress, and of a wait in a queue: none of them survive a post.
_ATTEMPT_ATTRIBUTES = ("lock_expires", "lock_token", "ambiguous_since", "phase")
_WAIT_ATTRIBUTES = ("waiting", "waiting_since", "message_id", "message")
_TRANSIENT_ATTRIBUTES = _ATTEMPT_ATTRIBUTES + _WAIT_ATTRIBUTES


@dataclass(frozen=True)
class Result:
    """An attempt's final state, to write over its claim."""

    claim: Claim
    status: KeyStatus  # POSTED, QUEUED, REJECTED or RELEASED
    usage_id: int | None = None  # POSTED, when Piriod's answer had a usable id
    ambiguous_since: float | None = None  # an unseen post still to settle
    waiting: Waiting | None = None  # QUEUED / REJECTED: where, and the message


def _condition_failed(exc: Exception) -> bool:
    """A conditional write refused by its condition, told by the error code rather than by
    `client.exceptions.ConditionalCheckFailedException`: botocore builds those classes on a
    client's first error without a lock, and threads that race there can each get a copy of
    their own, so an `except` naming one copy misses another (a key claim then looked like a
    store that is down)."""
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    return isinstance(error, dict) and error.get("Code") == "ConditionalCheckFailedException"


def _shard(pk: str) -> int:
    return int(hashlib.sha256(pk.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16) % (
        WAITING_SHARDS
    )


def _num(value: float) -> str:
    return f"{value:.6f}"
