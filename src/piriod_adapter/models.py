"""Pydantic models for what comes in (usage records), what goes out (results) and what is queued."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

MAX_FUTURE = timedelta(minutes=5)
MAX_BATCH = 100

# RFC 3339 date-time with an explicit offset ("Z" or +hh:mm); no bare dates, no naive times.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})$", re.IGNORECASE
)


def _json_number(value: Any) -> Any:
    """Accept a JSON number (int, or Decimal from a lossless decoder); refuse strings and bools."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise ValueError("must be a JSON number")
    return Decimal(value) if isinstance(value, int) else value


def parse_rfc3339(value: str) -> datetime:
    """Parse an RFC 3339 date-time with offset into an aware datetime (raises ValueError)."""
    if not _RFC3339.match(value):
        raise ValueError(
            "must be an RFC 3339 date-time with an explicit offset, e.g. 2026-01-31T10:00:00Z"
        )
    text = value.upper().replace("Z", "+00:00")
    head, _, fraction_and_offset = text.partition(".")
    if fraction_and_offset:  # datetime keeps at most microseconds: trim extra digits, keep offset
        digits = re.match(r"\d+", fraction_and_offset)
        assert digits is not None
        text = f"{head}.{digits.group()[:6].ljust(6, '0')}{fraction_and_offset[digits.end() :]}"
    return datetime.fromisoformat(text)


Quantity = Annotated[Decimal, BeforeValidator(_json_number), Field(ge=0, allow_inf_nan=False)]


class UsageRecord(BaseModel):
    """One usage as a meter sends it. Strict: no coercion, no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    subscription_line: int = Field(gt=0)
    date_time: str
    quantity: Quantity
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)

    @field_validator("date_time")
    @classmethod
    def _rfc3339_not_future(cls, value: str) -> str:
        instant = parse_rfc3339(value)
        if instant - datetime.now(UTC) > MAX_FUTURE:
            raise ValueError("must not be more than 5 minutes in the future")
        return value

    @field_validator("idempotency_key")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise ValueError("must contain printable characters only")
        return value

    @property
    def instant(self) -> datetime:
        return parse_rfc3339(self.date_time)

    def piriod_body(self) -> bytes:
        """The exact body Piriod receives: the three fields, quantity with its digits unchanged."""
        return render_usage_json(self.subscription_line, self.date_time, self.quantity)


def render_usage_json(subscription_line: int, date_time: str, quantity: Decimal) -> bytes:
    # str(Decimal) is a valid JSON number for finite values ("1.10", "1E+2", "0"): no float trip.
    return (
        f'{{"subscription_line": {int(subscription_line)}, '
        f'"date_time": {json.dumps(date_time)}, "quantity": {quantity}}}'
    ).encode()


class Batch(BaseModel):
    """The batch form: {"usages": [record, ...]} with 1 to 100 records."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    usages: list[UsageRecord] = Field(min_length=1, max_length=MAX_BATCH)


class Status(StrEnum):
    POSTED = "posted"
    DUPLICATE = "duplicate"
    QUEUED = "queued"
    REJECTED = "rejected"


class FailureKind(StrEnum):
    TRANSIENT = "transient"  # surely not in Piriod; safe to post again
    AMBIGUOUS = "ambiguous"  # sent, outcome unseen: look it up in Piriod before posting again
    REJECTED = "rejected"  # Piriod answered 400: a person has to fix something
    EXHAUSTED = "exhausted"  # replay gave up after its last attempt


class RecordResult(BaseModel):
    """The outcome of one record, as returned in the 202 body."""

    model_config = ConfigDict(frozen=True)

    index: int
    status: Status
    usage_id: int | None = None
    errors: dict[str, list[str]] | None = None
    ambiguous: bool = False

    def public(self) -> dict[str, Any]:
        body: dict[str, Any] = {"index": self.index, "status": self.status.value}
        if self.usage_id is not None:
            body["usage_id"] = self.usage_id
        if self.errors:
            body["errors"] = self.errors
        return body


class Failure(BaseModel):
    """Why a record is in a queue."""

    model_config = ConfigDict(frozen=True)

    kind: FailureKind
    status: int | None = None  # Piriod's HTTP status, when it answered
    errors: dict[str, list[str]] | None = None  # Piriod's 400 error map
    error: str | None = None  # text for everything else (timeout, reset, 503 detail...)
    at: datetime


class QueuedRecord(BaseModel):
    """A queue message: everything needed to replay the record alone (SPEC section 5)."""

    model_config = ConfigDict(frozen=True)

    version: Literal[1] = 1
    subscription_line: int
    date_time: str
    quantity: Decimal
    idempotency_key: str
    scope: str
    source: str | None = None
    workspace: str
    test_mode: bool
    failure: Failure
    attempts: int = Field(ge=1)
    first_failure_at: datetime
    ambiguous_since: datetime | None = None

    def to_json(self) -> str:
        # Quantity is written as a string so its digits survive any JSON tool on the way.
        return self.model_dump_json(exclude_none=False)

    @classmethod
    def from_json(cls, body: str) -> QueuedRecord:
        return cls.model_validate_json(body)
