"""Body rules and bounds of the native route, and the canonical form of a usage, in isolation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from piriod_adapter import jsondoc
from piriod_adapter.models import (
    KeyKind,
    Usage,
    UsageKey,
    check_quantity,
    parse_rfc3339,
    plain_decimal,
    sortable_utc,
)
from piriod_adapter.validation import MAX_BODY_BYTES, BodyError, parse_native_body

LINE_AND_TIME = '"subscription_line": 3, "date_time": "2026-01-01T00:00:00Z"'


def body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def one(raw: bytes | str, message_id: str = "msg_1") -> Usage:
    [usage] = parse_native_body(raw.encode() if isinstance(raw, str) else raw, message_id)
    return usage


def refused(raw: bytes | str) -> BodyError:
    with pytest.raises(BodyError) as err:
        parse_native_body(raw.encode() if isinstance(raw, str) else raw, "msg_1")
    return err.value


def test_single_record_keeps_the_exact_decimal_and_is_sent_in_utc() -> None:
    usage = one(
        '{"subscription_line": 3, "date_time": "2026-01-01T00:00:00+02:00", "quantity": 1.10}'
    )
    assert usage.quantity == Decimal("1.10")
    assert usage.piriod_body() == (
        b'{"subscription_line": 3, "date_time": "2025-12-31T22:00:00Z", "quantity": 1.10}'
    )


@pytest.mark.parametrize(
    ("raw", "sent"),
    [
        ("7", "7"),
        ("1.10", "1.10"),
        ("12.500", "12.500"),
        ("1e3", "1000"),
        ("1E+3", "1000"),
        ("1E-7", "0.0000001"),
        ("-0.0", "0.0"),
        ("0E+5", "0"),
        ("0.1000000000000000055511151231257827", "0.1000000000000000055511151231257827"),
        ("99999999999999999999", "99999999999999999999"),
    ],
)
def test_quantity_is_sent_in_plain_notation_with_its_digits(raw: str, sent: str) -> None:
    usage = one(f'{{{LINE_AND_TIME}, "quantity": {raw}}}')
    assert usage.quantity_text == sent
    assert usage.piriod_body().endswith(f'"quantity": {sent}}}'.encode())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("1e20", "less than 10^20"),
        ("100000000000000000000", "less than 10^20"),
        ("1e999999999", "less than 10^20"),
        ("1" * 5000, "less than 10^20"),
        ("1e-41", "40 decimal places"),
        ("0." + "1" * 41, "40 decimal places"),
        ("-1", "greater than or equal to 0"),
        ('"1.5"', "JSON number"),
        ("true", "JSON number"),
    ],
)
def test_quantity_bounds_are_a_422_naming_the_field(raw: str, message: str) -> None:
    error = refused(f'{{{LINE_AND_TIME}, "quantity": {raw}}}')
    assert error.status == 422
    [problem] = error.problems
    assert (problem.index, problem.field) == (0, "quantity") and message in problem.message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("9223372036854775808", "at most 9223372036854775807"),
        ("9" * 39, "at most 9223372036854775807"),
        ("9" * 5000, "at most 9223372036854775807"),
        ("0", "greater than 0"),
        ("1.0", "integer"),
        ('"101"', "integer"),
        ("true", "integer"),
    ],
)
def test_subscription_line_is_a_64_bit_positive_integer(raw: str, message: str) -> None:
    error = refused(
        f'{{"subscription_line": {raw}, "date_time": "2026-01-01T00:00:00Z", "quantity": 1}}'
    )
    [problem] = error.problems
    assert problem.field == "subscription_line" and message in problem.message


def test_largest_subscription_line_is_accepted() -> None:
    usage = one(
        f'{{"subscription_line": {2**63 - 1}, "date_time": "2026-01-01T00:00:00Z", "quantity": 1}}'
    )
    assert usage.subscription_line == 2**63 - 1


@pytest.mark.parametrize(
    ("value", "utc"),
    [
        ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
        ("2026-01-01t00:00:00z", "2026-01-01T00:00:00Z"),
        ("2026-01-01T01:30:00+01:30", "2026-01-01T00:00:00Z"),
        ("2026-01-01T00:00:00-00:00", "2026-01-01T00:00:00Z"),
        ("2026-01-01T00:00:00.5Z", "2026-01-01T00:00:00.500000Z"),
        ("2026-01-01T00:00:00.123456000Z", "2026-01-01T00:00:00.123456Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
        ("0001-01-01T10:00:00+09:59", "0001-01-01T00:01:00Z"),
    ],
)
def test_rfc3339_with_offset_is_accepted_and_sent_as_utc(value: str, utc: str) -> None:
    usage = one(f'{{"subscription_line": 3, "date_time": "{value}", "quantity": 1}}')
    assert usage.date_time_text == utc


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-01-01T00:00:00", "RFC 3339"),
        ("2026-01-01 00:00:00Z", "RFC 3339"),
        ("2026-13-01T00:00:00Z", "month"),
        ("2026-01-01T00:00Z", "RFC 3339"),
        ("2026-01-01T23:59:60Z", "second"),
        ("2026-01-01T00:00:00+24:00", "valid date-time"),
        ("2026-01-01T00:00:00+01:60", "offset minutes"),
        ("0000-01-01T00:00:00Z", "year"),
        ("0001-01-01T00:00:00+01:00", "cannot be represented in UTC"),
        ("9999-12-31T23:59:59-01:00", "cannot be represented in UTC"),
        ("2026-01-01T00:00:00.1234567Z", "microseconds"),
        ("2026-01-01T00:00:00.1234567890Z", "RFC 3339"),
        ("٢٠٢٦-01-01T00:00:00Z", "RFC 3339"),
        ("yesterday", "RFC 3339"),
    ],
)
def test_other_date_forms_are_refused(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rfc3339(value)


def test_a_time_after_9999_in_utc_is_a_422_not_a_crash() -> None:
    error = refused(
        '{"usages": [{"subscription_line": 1, "date_time": "2026-01-01T00:00:00Z", "quantity": 1},'
        '{"subscription_line": 1, "date_time": "9999-12-31T23:30:00-01:00", "quantity": 1}]}'
    )
    assert [(p.index, p.field) for p in error.problems] == [(1, "date_time")]


def test_over_one_mebibyte_is_413() -> None:
    assert refused(b" " * (MAX_BODY_BYTES + 1)).status == 413


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 65 + b"1" + b"}" * 65, b"\xff", b'{"a": NaN}'],
)
def test_deep_nesting_and_non_json_are_400(raw: bytes) -> None:
    assert refused(raw).status == 400


def test_depth_counts_brackets_outside_strings_only() -> None:
    assert jsondoc.nesting_depth(b'{"a": "[[[[[[[[[[{{{{", "b": [[1]]}', 64) == 3
    assert jsondoc.nesting_depth(b'["\\"[[[[", [[]]]', 64) == 3


def test_problems_carry_record_index_and_field() -> None:
    record = {"subscription_line": 1, "date_time": "2026-01-01T00:00:00Z", "quantity": 1}
    error = refused(body({"usages": [record, {**record, "qty": 2}]}))
    assert error.status == 422
    assert [(p.index, p.field) for p in error.problems] == [(1, "qty")]


def test_a_422_lists_at_most_100_problems_and_says_how_many() -> None:
    record = {f"x{i}": 1 for i in range(300)}
    error = refused(body(record))
    public = error.public()
    assert public.errors is not None and len(public.errors) == 100
    assert public.errors_total is not None and public.errors_total > 300


def test_unknown_batch_level_field_names_no_record() -> None:
    record = {"subscription_line": 1, "date_time": "2026-01-01T00:00:00Z", "quantity": 1}
    error = refused(body({"usages": [record], "source": "x"}))
    assert [(p.index, p.field) for p in error.problems] == [(None, "source")]


def test_keys_live_in_namespaces_of_their_own() -> None:
    record = {"subscription_line": 1, "date_time": "2026-01-01T00:00:00Z", "quantity": 1}
    derived = one(body(record), message_id="msg_a")
    explicit = one(body({**record, "idempotency_key": "msg_a:0"}))
    assert derived.key == UsageKey(kind=KeyKind.DELIVERY, scope="v1/usages", text="msg_a:0")
    assert explicit.key == UsageKey(kind=KeyKind.EXPLICIT, scope="v1/usages", text="msg_a:0")
    assert derived.key != explicit.key


def test_same_record_means_same_line_instant_and_value_not_the_same_text() -> None:
    a = one('{"subscription_line": 1, "date_time": "2026-01-01T10:00:00Z", "quantity": 1000}')
    b = one('{"subscription_line": 1, "date_time": "2026-01-01T11:00:00+01:00", "quantity": 1e3}')
    c = one('{"subscription_line": 1, "date_time": "2026-01-01T10:00:00Z", "quantity": 1000.01}')
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_piriod_body_never_contains_the_idempotency_key() -> None:
    usage = one(
        body(
            {
                "subscription_line": 1,
                "date_time": "2026-01-01T00:00:00Z",
                "quantity": 0.5,
                "idempotency_key": "k",
            }
        )
    )
    assert set(json.loads(usage.piriod_body())) == {"subscription_line", "date_time", "quantity"}


def test_canonical_helpers() -> None:
    assert plain_decimal(check_quantity(Decimal("1E+2"))) == "100"
    assert sortable_utc(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000000Z"
