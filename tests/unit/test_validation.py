"""Body rules of the native route, in isolation."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from piriod_adapter.models import UsageRecord, parse_rfc3339
from piriod_adapter.validation import MAX_BODY_BYTES, BodyError, parse_native_body


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_single_record_keeps_the_exact_decimal() -> None:
    [record] = parse_native_body(
        b'{"subscription_line": 3, "date_time": "2026-01-01T00:00:00+02:00", "quantity": 1.10}'
    )
    assert record.quantity == Decimal("1.10") and str(record.quantity) == "1.10"
    assert record.piriod_body() == (
        b'{"subscription_line": 3, "date_time": "2026-01-01T00:00:00+02:00", "quantity": 1.10}'
    )


def test_integer_quantity_is_a_number() -> None:
    [record] = parse_native_body(
        body({"subscription_line": 3, "date_time": "2026-01-01T00:00:00Z", "quantity": 7})
    )
    assert record.quantity == 7 and b'"quantity": 7}' in record.piriod_body()


@pytest.mark.parametrize(
    "value", ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00.123456789-03:30", "2026-01-01t00:00:00z"]
)
def test_rfc3339_with_offset_is_accepted(value: str) -> None:
    assert parse_rfc3339(value).tzinfo is not None


@pytest.mark.parametrize(
    "value",
    [
        "2026-01-01T00:00:00",
        "2026-01-01 00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-01-01T00:00Z",
        "yesterday",
    ],
)
def test_other_date_forms_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match=r"RFC 3339|month|range"):
        parse_rfc3339(value)


def test_over_one_mebibyte_is_413() -> None:
    with pytest.raises(BodyError) as err:
        parse_native_body(b" " * (MAX_BODY_BYTES + 1))
    assert err.value.status == 413


def test_problems_carry_record_index_and_field() -> None:
    with pytest.raises(BodyError) as err:
        parse_native_body(
            body(
                {
                    "usages": [
                        {
                            "subscription_line": 1,
                            "date_time": "2026-01-01T00:00:00Z",
                            "quantity": 1,
                        },
                        {
                            "subscription_line": 1,
                            "date_time": "2026-01-01T00:00:00Z",
                            "quantity": 1,
                            "qty": 2,
                        },
                    ]
                }
            )
        )
    assert err.value.status == 422
    assert [(p.index, p.field) for p in err.value.problems] == [(1, "qty")]


def test_piriod_body_never_contains_the_idempotency_key() -> None:
    record = UsageRecord.model_validate(
        {
            "subscription_line": 1,
            "date_time": "2026-01-01T00:00:00Z",
            "quantity": Decimal("0.5"),
            "idempotency_key": "k",
        }
    )
    assert set(json.loads(record.piriod_body())) == {"subscription_line", "date_time", "quantity"}
