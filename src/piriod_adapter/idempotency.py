"""DynamoDB: which records were already handled, and a lock so that concurrent deliveries of
the same key never both post (SPEC section 3).

One item per idempotency key (`pk = key#<scope>#<key>`), with `status`:
  in_progress  someone holds it until `lock_expires` (set past their own function timeout)
  posted       in Piriod as `usage_id`
  queued       waiting in ReplayQueue (or DeadLetterQueue after replay gave up)
  rejected     Piriod answered 400; in DeadLetterQueue
  released     a holder could neither post nor store it: free to take again
`ambiguous_since` marks an attempt whose outcome was never seen: whoever takes the key next
asks Piriod before posting. Each Piriod usage id is also claimed once (`pk = usage#<ws>#<id>`),
so that settling an ambiguous post can never attribute one usage to two records.
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
        return parse_rfc3339(self.date_time).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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

    @staticmethod
    def usage_pk(workspace: str, test_mode: bool, usage_id: int) -> str:
        return f"usage#{workspace}#{'test' if test_mode else 'live'}#{usage_id}"

    def claim(
        self, pk: str, facts: RecordFacts, deadline: Deadline, *, replay: bool = False
    ) -> Claim:
        """Take the key for one attempt. A webhook takes a new, expired or released key; a
        replay may also take a key whose record waits in a queue."""
        now = self._clock()
        token = uuid.uuid4().hex
        takeable = (
            "attribute_not_exists(pk) OR #s = :released"
            " OR (#s = :in_progress AND lock_expires < :now)"
        )
        values: dict[str, Any] = {
            ":in_progress": {"S": KeyStatus.IN_PROGRESS.value},
            ":released": {"S": KeyStatus.RELEASED.value},
            ":now": {"N": _num(now)},
            ":lock": {"N": _num(deadline.wall_at + LOCK_MARGIN_SECONDS)},
            ":token": {"S": token},
            ":fp": {"S": facts.fingerprint},
            ":line": {"N": str(facts.line)},
            ":usage_at": {"S": facts.usage_at},
            ":date_time": {"S": facts.date_time},
            ":quantity": {"S": str(facts.quantity)},
            ":expires": {"N": str(int(now + self._ttl))},
        }
        if replay:
            takeable += " OR #s IN (:queued, :rejected)"
            values[":queued"] = {"S": KeyStatus.QUEUED.value}
            values[":rejected"] = {"S": KeyStatus.REJECTED.value}
        # A key reused for a different record never takes the lock: it is a conflict.
        condition = f"({takeable}) AND (attribute_not_exists(fingerprint) OR fingerprint = :fp)"
        try:
            response = self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": pk}},
                UpdateExpression=(
                    "SET #s = :in_progress, lock_expires = :lock, lock_token = :token, "
                    "attempt_started = :now, fingerprint = :fp, "
                    "line = :line, usage_at = :usage_at, date_time = :date_time, "
                    "quantity = :quantity, expires_at = :expires"
                ),
                ConditionExpression=condition,
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_OLD",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._client.exceptions.ConditionalCheckFailedException as exc:
            item: dict[str, Any] | None = exc.response.get("Item")  # type: ignore[assignment]
            holder = KeyState.from_item(item) if item else self.get(pk)
            return Claim(token=None, previous=holder)
        except Exception as exc:
            raise StoreUnavailable(f"cannot claim key: {type(exc).__name__}") from None
        old = response.get("Attributes")
        return Claim(token=token, previous=KeyState.from_item(old) if old else None)

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

    def mark_posted(
        self, pk: str, token: str, usage_id: int, workspace: str, test_mode: bool
    ) -> bool:
        """Record the usage id for this key and claim the id for it, in one transaction.
        False when the usage id already belongs to another key (only possible when settling)."""
        now = self._clock()
        try:
            self._client.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": {"pk": {"S": pk}},
                            "UpdateExpression": (
                                "SET #s = :posted, usage_id = :id, posted_at = :now "
                                "REMOVE lock_expires, lock_token, ambiguous_since"
                            ),
                            "ConditionExpression": "lock_token = :token",
                            "ExpressionAttributeNames": {"#s": "status"},
                            "ExpressionAttributeValues": {
                                ":posted": {"S": KeyStatus.POSTED.value},
                                ":id": {"N": str(usage_id)},
                                ":now": {"N": _num(now)},
                                ":token": {"S": token},
                            },
                        }
                    },
                    {
                        "Put": {
                            "TableName": self._table,
                            "Item": {
                                "pk": {"S": self.usage_pk(workspace, test_mode, usage_id)},
                                "key_pk": {"S": pk},
                                "expires_at": {"N": str(int(now + self._ttl))},
                            },
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        except self._client.exceptions.TransactionCanceledException as exc:
            reasons = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if (
                len(reasons) > 1
                and reasons[1] == "ConditionalCheckFailed"
                and reasons[0] in (None, "None")
            ):
                return False
            raise StoreUnavailable(f"cannot record posted usage: {reasons}") from None
        except Exception as exc:
            raise StoreUnavailable(f"cannot record posted usage: {type(exc).__name__}") from None
        return True

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

    def posted_between(self, line: int, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """What the adapter recorded for a subscription line in [start, end] (for reconcile)."""
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": "by_line",
            "KeyConditionExpression": "line = :line AND usage_at BETWEEN :a AND :b",
            "ExpressionAttributeValues": {
                ":line": {"N": str(line)},
                ":a": {"S": start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
                ":b": {"S": end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
            },
        }
        while True:
            response = self._client.query(**kwargs)
            items.extend(response.get("Items", []))
            if "LastEvaluatedKey" not in response:
                return items
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]


def _num(value: float) -> str:
    return f"{value:.6f}"
