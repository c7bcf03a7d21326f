"""Turn a raw native-route body into validated usage records, or a clear 400/413/422 error."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aws_lambda_powertools.utilities.parser import parse
from pydantic import ValidationError

from piriod_adapter.models import Batch, UsageRecord

MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class FieldProblem:
    index: int | None  # record index; None for problems with the delivery as a whole
    field: str
    message: str

    def public(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


@dataclass
class BodyError(Exception):
    """A delivery that cannot be accepted: nothing from it is posted or stored."""

    status: int
    message: str
    problems: list[FieldProblem] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message}
        if self.problems:
            body["errors"] = [p.public() for p in self.problems]
        return body


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def decode_json(raw: bytes) -> Any:
    """Decode JSON losslessly: decimals stay Decimal, NaN/Infinity and repeated keys are refused."""
    if len(raw) > MAX_BODY_BYTES:
        raise BodyError(
            413, f"body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES} bytes (1 MiB)"
        )
    try:
        return json.loads(
            raw.decode("utf-8"),
            parse_float=Decimal,
            parse_constant=_no_constants,
            object_pairs_hook=_no_duplicate_keys,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise BodyError(400, f"body is not valid JSON: {exc}") from None


def _problems(exc: ValidationError, batch: bool) -> list[FieldProblem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        index: int | None = 0
        if batch:
            loc = loc[1:]  # drop "usages"
            first = loc.pop(0) if loc and isinstance(loc[0], int) else None
            index = first if isinstance(first, int) else None
        name = ".".join(str(part) for part in loc) or ("usages" if batch else "body")
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = (
                "unknown field (allowed: subscription_line, date_time, quantity, idempotency_key)"
            )
        problems.append(FieldProblem(index=index, field=name, message=message))
    return problems


def parse_native_body(raw: bytes) -> list[UsageRecord]:
    """One record, or {"usages": [...]} of 1 to 100; all-or-nothing (SPEC section 3)."""
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise BodyError(
            422,
            'body must be a usage record object or {"usages": [...]}',
            [FieldProblem(None, "body", f"expected an object, got {type(data).__name__}")],
        )
    batch = "usages" in data
    try:
        records = (
            parse(event=data, model=Batch).usages
            if batch
            else [parse(event=data, model=UsageRecord)]
        )
    except ValidationError as exc:
        raise BodyError(
            422, "validation failed; nothing was posted", _problems(exc, batch)
        ) from None
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
        raise BodyError(422, "validation failed; nothing was posted", repeated)
    return records
