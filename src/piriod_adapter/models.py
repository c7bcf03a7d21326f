"""The adapter's values: one `Usage` type for a record from any route, its bounds and canonical
form, what is queued, and what is answered.

A usage is the same value from the moment it is parsed (native body or a source profile's
mapping) until Piriod has it or a queue holds it: the submit path, the idempotency store, the
queue message and the body posted to Piriod all read it, so there is one place that says what
"the same record" is and how it is written.
"""

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
)

# --- bounds (docs/senders.md), enforced before anything is claimed or posted -----------------

MAX_BATCH = 100
MAX_FUTURE = timedelta(minutes=5)
MAX_LINE = 2**63 - 1  # Piriod's ids are 64-bit integers
MAX_INTEGER_DIGITS = 20  # quantity < 10^20
MAX_FRACTION_DIGITS = 40  # quantity has at most 40 decimal places
MAX_KEY_LENGTH = 255
MAX_EVENT_ID_LENGTH = 4096  # a source's event id (SPEC 8)
MAX_NUMBER_TEXT = 100  # a quantity read back from a queue message, as text
MAX_FRACTION_INPUT = 9  # RFC 3339 fractions may be written with up to 9 digits, but must
# not carry more than Piriod stores (microseconds)

# RFC 3339 date-time with an explicit offset ("Z" or +hh:mm); no bare dates, no naive times.
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})"
    rf"(?:\.(\d{{1,{MAX_FRACTION_INPUT}}}))?([Zz]|[+-]\d{{2}}:\d{{2}})",
    re.ASCII,
)
# The same form as a JSON Schema pattern (openapi.yaml)
RFC3339_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}"
    rf"(\.[0-9]{{1,{MAX_FRACTION_INPUT}}})?([Zz]|[+-][0-9]{{2}}:[0-9]{{2}})$"
)


def parse_rfc3339(value: str) -> datetime:
    """An RFC 3339 date-time with an offset, as an aware UTC datetime (raises ValueError).

    Refused: other forms, fractions finer than microseconds, and instants that cannot be
    represented in UTC (year 1 with a positive offset, year 9999 with a negative one)."""
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(
            "must be an RFC 3339 date-time with an explicit offset, e.g. 2026-01-31T10:00:00Z"
        )
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = match.group(7) or ""
    if fraction[6:].strip("0"):
        raise ValueError("must not be more precise than microseconds (6 decimal places)")
    offset = match.group(8).upper()
    try:
        if offset == "Z":
            zone = UTC
        else:
            hours, minutes = int(offset[1:3]), int(offset[4:6])
            if minutes > 59:
                raise ValueError("offset minutes must be in 0..59")
            sign = -1 if offset[0] == "-" else 1
            zone = timezone(sign * timedelta(hours=hours, minutes=minutes))
        micro = int(fraction[:6].ljust(6, "0"))
        instant = datetime(year, month, day, hour, minute, second, micro, tzinfo=zone)
    except ValueError as exc:
        raise ValueError(f"is not a valid date-time: {exc}") from None
    return to_utc(instant)


def to_utc(instant: datetime) -> datetime:
    """The same instant in UTC (raises ValueError when UTC cannot represent it)."""
    try:
        return instant.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("cannot be represented in UTC (before year 1 or after 9999)") from None


def check_instant(instant: datetime, now: datetime | None = None) -> datetime:
    """The native rule for a usage's time: in UTC, microseconds, at most 5 minutes ahead."""
    instant = to_utc(instant)
    if instant - (now or datetime.now(UTC)) > MAX_FUTURE:
        raise ValueError("must not be more than 5 minutes in the future")
    return instant


def check_line(value: Any) -> int:
    """A subscription line id: an integer (not a string, float or bool), 1 to 2^63-1."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, Decimal) and value.as_tuple().exponent == 0 and value > MAX_LINE:
            raise ValueError(f"must be at most {MAX_LINE}")  # an integer too long to decode
        raise ValueError("must be an integer")
    if value <= 0:
        raise ValueError("must be greater than 0")
    if value > MAX_LINE:
        raise ValueError(f"must be at most {MAX_LINE}")
    return value


def check_quantity(value: Decimal) -> Decimal:
    """A quantity: finite, >= 0, below 10^20, at most 40 decimal places (its digits kept)."""
    if not value.is_finite():
        raise ValueError("must be a finite number")
    if value < 0:
        raise ValueError("must be greater than or equal to 0")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent < -MAX_FRACTION_DIGITS:
        raise ValueError(f"must have at most {MAX_FRACTION_DIGITS} decimal places")
    if value.is_zero():
        return value if exponent <= 0 else Decimal(0)  # 0E+5 is 0
    if value.adjusted() >= MAX_INTEGER_DIGITS:
        raise ValueError(f"must be less than 10^{MAX_INTEGER_DIGITS}")
    return value


def plain_decimal(value: Decimal) -> str:
    """A bounded quantity in plain notation with its digits: 1.10 -> "1.10", 1E+3 -> "1000",
    1E-7 -> "0.0000001", -0 -> "0"."""
    if value.is_zero():
        value = value.copy_abs()
    return format(value, "f")


def utc_text(instant: datetime) -> str:
    """The canonical RFC 3339 UTC form sent to Piriod and used in lookups:
    2026-11-01T10:00:00Z, or 2026-11-01T10:00:00.250000Z (microseconds, as Piriod renders)."""
    instant = instant.astimezone(UTC)
    text = (
        f"{instant.year:04d}-{instant.month:02d}-{instant.day:02d}T"
        f"{instant.hour:02d}:{instant.minute:02d}:{instant.second:02d}"
    )
    if instant.microsecond:
        text += f".{instant.microsecond:06d}"
    return text + "Z"


def sortable_utc(instant: datetime) -> str:
    """An instant as fixed-width UTC text that sorts like time (the table's `usage_at`)."""
    instant = instant.astimezone(UTC)
    return f"{instant.year:04d}-{instant.strftime('%m-%dT%H:%M:%S')}.{instant.microsecond:06d}Z"


# --- the usage value ---------------------------------------------------------------------------


class KeyKind(StrEnum):
    """Namespaces of idempotency keys: a key of one kind never matches a key of another."""

    EXPLICIT = "explicit"  # a native record's own idempotency_key
    DELIVERY = "delivery"  # "{webhook-id}:{index}", derived when a native record has none
    EVENT = "event"  # a source record's event id (CloudEvents: its source and id)
    WINDOW = "window"  # an aggregation window's total: "{line}#{window start}#g{generation}"


class UsageKey(BaseModel):
    """An idempotency key in its namespace and scope (route, and source)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: KeyKind
    scope: str
    text: str


def _utc_datetime(value: Any) -> Any:
    return parse_rfc3339(value) if isinstance(value, str) else value


def _decimal_text(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if len(value) > MAX_NUMBER_TEXT:
        raise ValueError(f"must be a decimal number of at most {MAX_NUMBER_TEXT} characters")
    try:
        return Decimal(value)
    except ArithmeticError:  # decimal's InvalidOperation: pydantic would not catch it
        raise ValueError("must be a decimal number") from None


UtcInstant = Annotated[
    datetime,
    BeforeValidator(_utc_datetime),
    PlainSerializer(utc_text, return_type=str, when_used="json"),
]
PlainDecimal = Annotated[
    Decimal,
    BeforeValidator(_decimal_text),
    PlainSerializer(plain_decimal, return_type=str, when_used="json"),
]


class Usage(BaseModel):
    """One usage record, from any route, bounded and canonical.

    `subscription_line` is None only for a source record whose meter has no line in the
    profile yet (it is rejected into DeadLetterQueue with `meter_id`, and mapped on replay).
    `meter_id` is set when the line is (to be) looked up from the profile's `lines`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The native bounds hold for every Usage, also one read back from a queue message (a
    # dead letter edited by hand is checked again before it is replayed).
    subscription_line: Annotated[int, Field(strict=True), AfterValidator(check_line)] | None
    date_time: UtcInstant
    quantity: Annotated[PlainDecimal, AfterValidator(check_quantity)]
    key: UsageKey
    source: str | None = None
    meter_id: str | None = None
    original: dict[str, Any] | None = None  # a source record's own values, for a person

    @property
    def date_time_text(self) -> str:
        return utc_text(self.date_time)

    @property
    def quantity_text(self) -> str:
        return plain_decimal(self.quantity)

    @property
    def fingerprint(self) -> str:
        """What "the same record" means: the same line (or, for a line looked up from a
        meter id, the same meter), the same instant and the same decimal value (a window's
        total: any value, since a restated generation keeps its key)."""
        who = f"meter:{self.meter_id}" if self.meter_id is not None else self.subscription_line
        value = plain_decimal(self.quantity.normalize()) if not self.quantity.is_zero() else "0"
        if self.key.kind is KeyKind.WINDOW:
            value = "window"
        text = f"{who}|{sortable_utc(self.date_time)}|{value}"
        return hashlib.sha256(text.encode()).hexdigest()

    def piriod_body(self) -> bytes:
        """Exactly what Piriod receives: the three fields, the quantity's digits unchanged."""
        assert self.subscription_line is not None, "an unmapped record is never posted"
        return (
            f'{{"subscription_line": {self.subscription_line}, '
            f'"date_time": "{self.date_time_text}", "quantity": {self.quantity_text}}}'
        ).encode()


# --- outcomes ----------------------------------------------------------------------------------


# A record's status in its result (docs/answers.md): lifecycle.ANSWER says which fate reads
# as which.
AnswerStatus = Literal["posted", "duplicate", "queued", "rejected", "aggregated", "not_stored"]


class FailureKind(StrEnum):
    TRANSIENT = "transient"  # surely not in Piriod; safe to post again
    AMBIGUOUS = "ambiguous"  # may be in Piriod: look it up before posting again
    REJECTED = "rejected"  # refused for the record itself: a person has to fix something
    EXHAUSTED = "exhausted"  # replay gave up after its last attempt


class RecordResult(BaseModel):
    """The outcome of one record, as returned in the 202 (or 503) body."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0, le=MAX_BATCH - 1, description="the record's place in the delivery")
    status: AnswerStatus = Field(
        description="posted, duplicate, queued, rejected, or aggregated (a source that "
        "aggregates: counted into `window_start`'s generation `generation`); not_stored only "
        "in a 503"
    )
    usage_id: int | None = Field(
        default=None, description="Piriod's usage id (posted; duplicate when known)"
    )
    errors: dict[str, list[str]] | None = Field(
        default=None,
        description="rejected: why, by field (Piriod's error map, idempotency_key or meter_id)",
    )
    errors_omitted: int | None = Field(
        default=None,
        description="rejected: how many of Piriod's messages were left out of `errors` to "
        "keep the answer small (the queue message keeps them)",
    )
    message: str | None = Field(default=None, description="not_stored: why")
    event_id: str | None = Field(
        default=None,
        description="sources route only: the record's event id as the profile maps it (for "
        "CloudEvents the event's `id`; records found inside one event share it), so that "
        "results can be matched to events whatever `records` kept",
    )
    window_start: UtcInstant | None = Field(
        default=None,
        description="aggregated: the start of the window the event was counted in (UTC)",
    )
    generation: int | None = Field(
        default=None,
        ge=0,
        le=86_399,
        description="aggregated: the window's generation the event was counted in (0 the "
        "window itself, 1, 2 ... for late events); its usage is posted at window_start plus "
        "this many seconds",
    )


class Problem(BaseModel):
    """One problem of a refused delivery: the record's index (null: the delivery as a whole),
    the field, and what is wrong."""

    # cold start: its schema is built on first use (a delivery that passes needs none)
    model_config = ConfigDict(defer_build=True, frozen=True, extra="forbid")

    index: int | None = Field(description="the record's index; null: the delivery as a whole")
    field: str = Field(max_length=200)
    message: str = Field(max_length=500)


class Refusal(BaseModel):
    """The body of every answer without per-record results: a 4xx refuses the whole delivery
    (nothing claimed, posted or stored); a 5xx asks for the whole delivery again."""

    # cold start: its schema is built on first use (a delivery that passes needs none)
    model_config = ConfigDict(defer_build=True, frozen=True, extra="forbid")

    message: str
    errors: list[Problem] | None = Field(
        default=None, max_length=100, description="a 422: each problem (at most 100)"
    )
    errors_total: int | None = Field(
        default=None, description="a 422 with more than 100 problems: how many there were"
    )


class Answered(BaseModel):
    """The body of a 202, or of a 503 when some record could be neither posted nor stored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message: str | None = Field(default=None, description="a 503: what the sender must do")
    results: list[RecordResult] = Field(
        max_length=MAX_BATCH,
        description="one per record, in delivery order (empty when a source's `records` "
        "expression kept no record)",
    )


# Error maps (Piriod's 400 bodies) are cut by their size as JSON: a queue message keeps as
# much as SQS takes (256 KiB a message, with the record and attributes beside it), an answer
# keeps a few KiB per record so that 100 rejected records stay far below 1 MiB.
MESSAGE_ERRORS_BYTES = 128 * 1024
ANSWER_ERRORS_BYTES = 8 * 1024
MAX_ERROR_TEXT = 500  # the free text of a failure (a timeout's reason, a 5xx detail)
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(value: str) -> str:
    """Text from outside as text that always encodes: lone surrogates become U+FFFD."""
    return _SURROGATE.sub("\ufffd", value)


def _json_size(text: str) -> int:
    # An upper bound of its UTF-8 JSON size (ASCII escapes are never shorter).
    return len(json.dumps(text))


def cut_errors(
    errors: dict[str, list[str]] | None, budget: int
) -> tuple[dict[str, list[str]] | None, int]:
    """An error map in order, cut to `budget` bytes of JSON, its text cleaned; and how many
    messages were left out (a message cut short counts as kept)."""
    if errors is None:
        return None, 0
    kept: dict[str, list[str]] = {}
    left = budget - 2
    omitted = 0
    for name, messages in errors.items():
        field = clean_text(str(name))[:200]
        cost = _json_size(field) + 4
        if left - cost < 8:
            omitted += len(messages)
            continue
        left -= cost
        out: list[str] = []
        for message in messages:
            text = clean_text(str(message))
            size = _json_size(text) + 1
            if size > left:
                room = (left - 8) // 6  # every character may take a 6-byte escape
                if room < 16:
                    omitted += 1
                    continue
                text = text[:room] + "…"
                size = _json_size(text) + 1
            out.append(text)
            left -= size
        kept[field] = out
    return kept, omitted


def bounded_errors(errors: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
    """An error map cut to what a queue message carries."""
    return cut_errors(errors, MESSAGE_ERRORS_BYTES)[0]


class Failure(BaseModel):
    """Why a record is in a queue."""

    # cold start: its schema is built on first use (a delivery that passes needs none)
    model_config = ConfigDict(defer_build=True, frozen=True)

    kind: FailureKind
    status: int | None = None  # Piriod's HTTP status, when it answered
    errors: dict[str, list[str]] | None = None  # Piriod's 400 error map, or the adapter's own
    error: str | None = None  # text for everything else (timeout, reset, 503 detail...)
    attempted: bool = True  # False: Piriod was not asked (time ran out, too early to settle)
    at: datetime

    @field_validator("errors")
    @classmethod
    def _bounded(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        return bounded_errors(value)

    @field_validator("error")
    @classmethod
    def _short(cls, value: str | None) -> str | None:
        return clean_text(value[:MAX_ERROR_TEXT]) if value is not None else None


class Tenant(BaseModel):
    """Where in Piriod a record goes: the workspace, and test-mode data or not."""

    model_config = ConfigDict(frozen=True)

    workspace: str
    test_mode: bool


# tracing: a W3C traceparent (version 00), the trace a queued record continues on replay.
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def _traceparent(value: object) -> str | None:
    """A well-formed traceparent, or None: a trace never makes a message unreadable."""
    return value if isinstance(value, str) and _TRACEPARENT.fullmatch(value) else None


class QueuedRecord(BaseModel):
    """A queue message: everything needed to replay the record alone (SPEC section 5)."""

    # cold start: its schema is built on first use (a delivery that passes needs none)
    model_config = ConfigDict(defer_build=True, frozen=True)

    version: Literal[2] = 2
    usage: Usage
    tenant: Tenant
    failure: Failure
    attempts: int = Field(ge=0)  # posts (or lookups) tried so far
    first_failure_at: datetime
    ambiguous_since: datetime | None = None
    # tracing: the trace of the attempt that queued it (tracing on); written only when set
    trace: Annotated[str | None, BeforeValidator(_traceparent)] = None

    @field_validator("usage")
    @classmethod
    def _not_ahead(cls, usage: Usage) -> Usage:
        # It was at most 5 minutes ahead when it came in, so it is at most that now.
        try:
            check_instant(usage.date_time)
        except ValueError as exc:
            raise ValueError(f"date_time {exc}") from None
        return usage

    def to_json(self) -> str:
        # Quantity is written as a string so its digits survive any JSON tool on the way.
        omit = None if self.trace else {"trace"}  # tracing: as before when it is off
        try:
            return self.model_dump_json(exclude=omit)
        except ValueError:  # text that UTF-8 cannot carry (a lone surrogate): escape it
            return json.dumps(self.model_dump(mode="json", exclude=omit), ensure_ascii=True)

    @classmethod
    def from_json(cls, body: str) -> "QueuedRecord":
        return cls.model_validate_json(body)
