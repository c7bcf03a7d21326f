"""A delivery's body into usages, or a clear 400/413/422 that names what is wrong.

The native route's records are validated here (SPEC section 3); a source's mapped records go
through the same rules (`models.check_*`). Validation is all-or-nothing: any problem and
nothing of the delivery is claimed, posted or stored.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
)

from piriod_adapter import jsondoc
from piriod_adapter.models import (
    MAX_BATCH,
    MAX_INTEGER_DIGITS,
    MAX_KEY_LENGTH,
    MAX_LINE,
    RFC3339_PATTERN,
    KeyKind,
    Problem,
    Refusal,
    Usage,
    UsageKey,
    check_instant,
    check_line,
    check_quantity,
    parse_rfc3339,
)

MAX_BODY_BYTES = 1024 * 1024
MAX_PROBLEMS = 100  # a 422 lists at most this many problems (and says how many there were)
NATIVE_SCOPE = "v1/usages"


@dataclass(frozen=True)
class FieldProblem:
    index: int | None  # record index; None for problems with the delivery as a whole
    field: str
    message: str

    def public(self) -> Problem:
        return Problem(index=self.index, field=self.field[:200], message=self.message[:500])


class BodyError(Exception):
    """A delivery that cannot be accepted: nothing from it is posted or stored."""

    def __init__(self, status: int, message: str, problems: list[FieldProblem] | None = None):
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.problems = problems if problems is not None else []

    def public(self) -> Refusal:
        return Refusal(
            message=self.message,
            errors=[p.public() for p in self.problems[:MAX_PROBLEMS]] or None,
            errors_total=len(self.problems) if len(self.problems) > MAX_PROBLEMS else None,
        )


def invalid(problems: list[FieldProblem]) -> BodyError:
    return BodyError(422, "validation failed; nothing was posted", problems)


def check_size(raw: bytes) -> None:
    if len(raw) > MAX_BODY_BYTES:
        raise BodyError(
            413, f"body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES} bytes (1 MiB)"
        )


def decode_json(raw: bytes) -> Any:
    """The body as JSON, within bounds (size, depth, exact numbers), or a 413/400."""
    check_size(raw)
    try:
        return jsondoc.loads(raw)
    except jsondoc.JsonError as exc:
        raise BodyError(400, f"body is not valid JSON: {exc}") from None


# --- the native record -------------------------------------------------------------------------


def _json_number(value: Any) -> Decimal:
    """A JSON number (int, or Decimal from the lossless decoder); strings and bools refused."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise ValueError("must be a JSON number")
    return Decimal(value)


def _rfc3339_text(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("must be a string (RFC 3339 date-time)")
    return check_instant(parse_rfc3339(value))


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must contain printable characters only")
    return value


class NativeRecord(BaseModel):
    """One usage as a meter sends it to the native route. Strict: no coercion, no unknown
    fields; every bound checked (docs/senders.md)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # WithJsonSchema: what openapi.yaml tells senders (the validators are the rule).
    subscription_line: Annotated[
        int,
        BeforeValidator(check_line),
        WithJsonSchema(
            {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_LINE,
                "description": "Piriod subscription line id; a string or float is refused",
            }
        ),
    ]
    date_time: Annotated[
        datetime,
        BeforeValidator(_rfc3339_text),
        WithJsonSchema(
            {
                "type": "string",
                "format": "date-time",
                "pattern": RFC3339_PATTERN,
                "description": "RFC 3339 with an explicit offset (Z or +hh:mm), at most "
                "microsecond precision, at most 5 minutes in the future",
            }
        ),
    ]
    quantity: Annotated[
        Decimal,
        BeforeValidator(_json_number),
        AfterValidator(check_quantity),
        WithJsonSchema(
            {
                "type": "number",
                "minimum": 0,
                "exclusiveMaximum": 10**MAX_INTEGER_DIGITS,
                "description": "finite, >= 0, below 10^20, at most 40 decimal places; its "
                "digits reach Piriod unchanged (1.10 is sent as 1.10); a string is refused",
            }
        ),
    ]
    idempotency_key: (
        Annotated[
            str,
            Field(
                min_length=1,
                max_length=MAX_KEY_LENGTH,
                description="optional; 1 to 255 printable characters. Without it the key is "
                "{webhook-id}:{index}",
            ),
            AfterValidator(_printable),
        ]
        | None
    ) = None


class NativeBatch(BaseModel):
    """The batch form: {"usages": [record, ...]} with 1 to 100 records."""

    # cold start: its schema is built on first use (a one-record body needs none)
    model_config = ConfigDict(defer_build=True, extra="forbid", strict=True, frozen=True)

    usages: list[NativeRecord] = Field(min_length=1, max_length=MAX_BATCH)


ALLOWED = "subscription_line, date_time, quantity, idempotency_key"


def problems_of(
    exc: ValidationError, batch: str | None = None, allowed: str = ALLOWED
) -> list[FieldProblem]:
    """pydantic's errors as (record index, field, message). With `batch` (the name of the list
    of records), a location inside that list gives the record index; any other location is a
    problem of the delivery as a whole (index None). `allowed`: a record's fields, named when
    one is unknown."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        loc: list[int | str] = list(error["loc"])
        index: int | None = 0
        whole = "body"
        if batch is not None:
            index = None
            if loc[:1] == [batch]:
                whole, rest = batch, loc[1:]
                if rest and isinstance(rest[0], int):
                    index, rest = rest[0], rest[1:]
                loc = rest
        name = ".".join(str(part) for part in loc) or whole
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            known = batch if batch is not None and index is None else allowed
            message = f"unknown field (allowed: {known})"
        problems.append(FieldProblem(index=index, field=name, message=message))
    return problems


def parse_native_body(raw: bytes, message_id: str) -> list[Usage]:
    """One record, or {"usages": [...]} of 1 to 100; all-or-nothing (SPEC section 3). A record
    without its own key gets "{webhook-id}:{index}", in a namespace of its own."""
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise BodyError(
            422,
            'body must be a usage record object or {"usages": [...]}',
            [FieldProblem(None, "body", f"expected an object, got {_json_type(data)}")],
        )
    batch = "usages" in data
    try:
        records = (
            NativeBatch.model_validate(data).usages
            if batch
            else [NativeRecord.model_validate(data)]
        )
    except ValidationError as exc:
        raise invalid(problems_of(exc, "usages" if batch else None)) from None
    seen: dict[str, int] = {}
    repeated = []
    for index, record in enumerate(records):
        key = record.idempotency_key
        if key is not None:
            if key in seen:
                repeated.append(
                    FieldProblem(index, "idempotency_key", f"repeats the key of record {seen[key]}")
                )
            seen.setdefault(key, index)
    if repeated:
        raise invalid(repeated)
    return [
        Usage(
            subscription_line=record.subscription_line,
            date_time=record.date_time,
            quantity=record.quantity,
            key=(
                UsageKey(kind=KeyKind.EXPLICIT, scope=NATIVE_SCOPE, text=record.idempotency_key)
                if record.idempotency_key is not None
                else UsageKey(
                    kind=KeyKind.DELIVERY, scope=NATIVE_SCOPE, text=f"{message_id}:{index}"
                )
            ),
        )
        for index, record in enumerate(records)
    ]


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, Decimal)):
        return "number"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else type(value).__name__
