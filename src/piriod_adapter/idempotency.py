"""DynamoDB: which records were already handled, and a lock so that concurrent deliveries of
the same key never both post (SPEC section 3).

One item per idempotency key (`pk = key#<scope>#<key>`), with `status`:
  in_progress  someone holds it until `lock_expires` (set past their own function timeout)
  posted       in Piriod as `usage_id`
  queued       waiting in ReplayQueue (or DeadLetterQueue after replay gave up)
  rejected     Piriod answered 400; in DeadLetterQueue
  released     a holder could neither post nor store it: free to take again
`ambiguous_since` marks an attempt whose outcome was never seen: whoever takes the key next
asks Piriod before posting. Items carry the record's line and UTC instant, indexed by
`by_line`, so that settling can tell which Piriod usages other keys already account for.

The common path costs one conditional PutItem per record (the claim) and one BatchWriteItem
per 25 posted records (the result). Writing the result unconditionally is safe because the
claim's lock outlives the holder's own function timeout: nobody else can hold the key.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from piriod_adapter.clock import Deadline
from piriod_adapter.models import parse_rfc3339

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

LOCK_MARGIN_SECONDS = 5.0
POLL_SECONDS = 0.2


class StoreUnavailable(RuntimeError):
    """The idempotency table could not be read or written."""


class KeyStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    POSTED = "posted"
    QUEUED = "queued"
    REJECTED = "rejected"
    RELEASED = "released"


@dataclass(frozen=True)
class RecordFacts:
    """The parts of a record the store keeps, for conflict checks and reconciliation."""

    line: int
    date_time: str
    quantity: Decimal

    @property
    def fingerprint(self) -> str:
        text = (
            f"{self.line}|{parse_rfc3339(self.date_time).isoformat()}|{self.quantity.normalize()}"
        )
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def usage_at(self) -> str:
        """The instant in UTC, sortable as text, for the by_line index."""
        return utc_text(parse_rfc3339(self.date_time))


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
    """The result of trying to take a key."""

    token: str | None  # set when we hold the key now
    previous: KeyState | None  # the state before (when taken) or the holder's (when not)
    item: dict[str, Any] | None = None  # what we wrote, to write the result over it later

    @property
    def acquired(self) -> bool:
        return self.token is not None


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

    @staticmethod
    def key_pk(scope: str, key: str) -> str:
        return f"key#{scope}#{key}"

    def _item(
        self, pk: str, facts: RecordFacts, token: str, now: float, lock: float
    ) -> dict[str, Any]:
        return {
            "pk": {"S": pk},
            "status": {"S": KeyStatus.IN_PROGRESS.value},
            "lock_expires": {"N": _num(lock)},
            "lock_token": {"S": token},
            "attempt_started": {"N": _num(now)},
            "fingerprint": {"S": facts.fingerprint},
            "line": {"N": str(facts.line)},
            "usage_at": {"S": facts.usage_at},
            "date_time": {"S": facts.date_time},
            "quantity": {"S": str(facts.quantity)},
            "expires_at": {"N": str(int(now + self._ttl))},
        }

    def claim(
        self, pk: str, facts: RecordFacts, deadline: Deadline, *, replay: bool = False
    ) -> Claim:
        """Take the key for one attempt. A webhook takes a new, expired or released key; a
        replay may also take a key whose record waits in a queue."""
        now = self._clock()
        token = uuid.uuid4().hex
        item = self._item(pk, facts, token, now, deadline.wall_at + LOCK_MARGIN_SECONDS)
        try:  # the common case: a key never seen before
            self._client.put_item(
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
            )
            return Claim(token=token, previous=None, item=item)
        except self._client.exceptions.ConditionalCheckFailedException:
            pass
        except Exception as exc:
            raise StoreUnavailable(f"cannot claim key: {type(exc).__name__}") from None
        return self._take_over(pk, facts, item, now, replay)

    def _take_over(
        self, pk: str, facts: RecordFacts, item: dict[str, Any], now: float, replay: bool
    ) -> Claim:
        """The key exists: take it if its holder is gone, released it, or (replay) it waits
        in a queue; otherwise report the holder."""
        takeable = "#s = :released OR (#s = :in_progress AND lock_expires < :now)"
        values: dict[str, Any] = {
            ":in_progress": item["status"],
            ":released": {"S": KeyStatus.RELEASED.value},
            ":now": {"N": _num(now)},
            ":lock": item["lock_expires"],
            ":token": item["lock_token"],
            ":fp": item["fingerprint"],
            ":started": item["attempt_started"],
            ":expires": item["expires_at"],
        }
        if replay:
            takeable += " OR #s IN (:queued, :rejected)"
            values[":queued"] = {"S": KeyStatus.QUEUED.value}
            values[":rejected"] = {"S": KeyStatus.REJECTED.value}
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": pk}},
                UpdateExpression=(
                    "SET #s = :in_progress, lock_expires = :lock, lock_token = :token, "
                    "attempt_started = :started, expires_at = :expires"
                ),
                # A key reused for a different record never takes the lock: it is a conflict.
                ConditionExpression=f"({takeable}) AND fingerprint = :fp",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_OLD",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._client.exceptions.ConditionalCheckFailedException as exc:
            held: dict[str, Any] | None = exc.response.get("Item")  # type: ignore[assignment]
            holder = KeyState.from_item(held) if held else self.get(pk)
            return Claim(token=None, previous=holder)
        except Exception as exc:
            raise StoreUnavailable(f"cannot claim key: {type(exc).__name__}") from None
        old = response.get("Attributes")
        previous = KeyState.from_item(old) if old else None
        if old and "ambiguous_since" in old:
            item = {**item, "ambiguous_since": old["ambiguous_since"]}
        return Claim(token=item["lock_token"]["S"], previous=previous, item=item)

    def get(self, pk: str) -> KeyState | None:
        try:
            response = self._client.get_item(
                TableName=self._table, Key={"pk": {"S": pk}}, ConsistentRead=True
            )
        except Exception as exc:
            raise StoreUnavailable(f"cannot read key: {type(exc).__name__}") from None
        item = response.get("Item")
        return KeyState.from_item(item) if item else None

    def wait_while_locked(self, pk: str, deadline: Deadline) -> KeyState | None:
        """Poll a key held by a concurrent delivery until it settles or our time runs out."""
        state = self.get(pk)
        while (
            state is not None
            and state.locked(self._clock())
            and deadline.remaining() > POLL_SECONDS
        ):
            self._sleep(POLL_SECONDS)
            state = self.get(pk)
        return state

    def record_posted(self, posted: list[tuple[dict[str, Any], int]]) -> None:
        """Write `posted` for each (claimed item, usage id), 25 items per BatchWriteItem."""
        now = _num(self._clock())
        requests = []
        for item, usage_id in posted:
            result = {
                k: v
                for k, v in item.items()
                if k not in ("lock_expires", "lock_token", "ambiguous_since")
            }
            result.update(
                status={"S": KeyStatus.POSTED.value},
                usage_id={"N": str(usage_id)},
                posted_at={"N": now},
            )
            requests.append({"PutRequest": {"Item": result}})
        try:
            for start in range(0, len(requests), 25):
                pending: Any = {self._table: requests[start : start + 25]}
                for attempt in range(5):
                    response = self._client.batch_write_item(RequestItems=pending)
                    pending = response.get("UnprocessedItems") or {}
                    if not pending:
                        break
                    self._sleep(0.05 * 2**attempt)
                if pending:
                    raise StoreUnavailable("DynamoDB left writes unprocessed")
        except StoreUnavailable:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"cannot record posted usages: {type(exc).__name__}") from None

    def settle(self, pk: str, token: str, usage_id: int) -> None:
        """Record that an earlier, unseen attempt did land in Piriod as `usage_id`."""
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": pk}},
                UpdateExpression=(
                    "SET #s = :posted, usage_id = :id, posted_at = :now "
                    "REMOVE lock_expires, lock_token, ambiguous_since"
                ),
                ConditionExpression="lock_token = :token",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":posted": {"S": KeyStatus.POSTED.value},
                    ":id": {"N": str(usage_id)},
                    ":now": {"N": _num(self._clock())},
                    ":token": {"S": token},
                },
            )
        except Exception as exc:
            raise StoreUnavailable(f"cannot record settled usage: {type(exc).__name__}") from None

    def accounted_for(self, pk: str, facts: RecordFacts) -> tuple[set[int], bool]:
        """Usage ids that other keys with this same record already hold, and whether another
        such key is mid-attempt right now (its usage id may not be recorded yet)."""
        now = self._clock()
        held: set[int] = set()
        busy = False
        for item in self.query_line(facts.line, facts.usage_at, facts.usage_at):
            if item["pk"]["S"] == pk or item.get("fingerprint", {}).get("S") != facts.fingerprint:
                continue
            state = KeyState.from_item(item)
            if state.usage_id is not None:
                held.add(state.usage_id)
            if state.locked(now):
                busy = True
        return held, busy

    def mark_waiting(
        self, pk: str, token: str, status: KeyStatus, ambiguous_since: float | None
    ) -> None:
        """The record now waits in a queue (queued/rejected) or is free again (released).
        `ambiguous_since` is kept when an attempt's outcome is unknown, and cleared otherwise."""
        values: dict[str, Any] = {":status": {"S": status.value}, ":token": {"S": token}}
        if ambiguous_since is None:
            update = "SET #s = :status REMOVE lock_expires, lock_token, ambiguous_since"
        else:
            update = "SET #s = :status, ambiguous_since = :since REMOVE lock_expires, lock_token"
            values[":since"] = {"N": _num(ambiguous_since)}
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": pk}},
                UpdateExpression=update,
                ConditionExpression="lock_token = :token",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=values,
            )
        except Exception as exc:
            raise StoreUnavailable(f"cannot update key: {type(exc).__name__}") from None

    def query_line(self, line: int, start: str, end: str) -> list[dict[str, Any]]:
        """Every key item of a subscription line with its UTC instant in [start, end]."""
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": "by_line",
            "KeyConditionExpression": "line = :line AND usage_at BETWEEN :a AND :b",
            "ExpressionAttributeValues": {
                ":line": {"N": str(line)},
                ":a": {"S": start},
                ":b": {"S": end},
            },
        }
        try:
            while True:
                response = self._client.query(**kwargs)
                items.extend(response.get("Items", []))
                if "LastEvaluatedKey" not in response:
                    return items
                kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        except Exception as exc:
            raise StoreUnavailable(f"cannot query by line: {type(exc).__name__}") from None

    def posted_between(self, line: int, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """What the adapter recorded for a subscription line in [start, end] (for reconcile)."""
        return self.query_line(line, utc_text(start), utc_text(end))


def utc_text(instant: datetime) -> str:
    """An instant as sortable UTC text, the form `usage_at` is stored in."""
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _num(value: float) -> str:
    return f"{value:.6f}"
