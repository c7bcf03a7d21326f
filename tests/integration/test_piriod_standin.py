"""The Piriod stand-in itself, over real loopback HTTP: contract, answers, faults and control."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import urllib3
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from piriod_devkit.piriod_standin import OPENAPI_PATH, PiriodStandin

TOKEN = "standin-unit-token"
WORKSPACE = "acc_unit"
HEADERS = {
    "Authorization": f"Token {TOKEN}",
    "x-simple-workspace": WORKSPACE,
    "content-type": "application/json",
}
DATETIME_MESSAGE = (
    "Datetime has wrong format. Use one of these formats instead: "
    "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
)
CREATED = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


@pytest.fixture(scope="module")
def server() -> Iterator[PiriodStandin]:
    with PiriodStandin(tokens=(TOKEN,), workspace=WORKSPACE) as standin:
        yield standin


@pytest.fixture
def standin(server: PiriodStandin) -> Iterator[PiriodStandin]:
    server.reset()
    server.set_tokens(TOKEN)
    server.set_unmetered_lines()
    yield server
    server.clear_faults()


@pytest.fixture(scope="module")
def http() -> urllib3.PoolManager:
    return urllib3.PoolManager(maxsize=128, retries=False, timeout=urllib3.Timeout(2, read=2))


class Call:
    """One request to the stand-in and what came back."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        self.raw = response.data
        self.body: Any = json.loads(self.raw) if self.raw else None


def call(
    http: urllib3.PoolManager,
    standin: PiriodStandin,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str | None] | None = None,
    timeout: float | None = None,
) -> Call:
    sent = {**HEADERS, **(headers or {})}
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    response = http.request(
        method,
        standin.url + path,
        body=raw,
        headers={k: v for k, v in sent.items() if v is not None},
        timeout=timeout if timeout is not None else urllib3.Timeout(2, read=2),
    )
    return Call(response)


def usage(
    line: int | str = 7, date_time: str = "2026-11-01T10:00:00Z", quantity: str = "1"
) -> bytes:
    return (
        f'{{"subscription_line": {line}, "date_time": "{date_time}", "quantity": {quantity}}}'
    ).encode()


def post(http: urllib3.PoolManager, standin: PiriodStandin, body: bytes, **kw: Any) -> Call:
    return call(http, standin, "POST", "/usages/", body, **kw)


def control_call(
    http: urllib3.PoolManager, standin: PiriodStandin, method: str, path: str, body: Any = None
) -> Call:
    """A /_standin/ control route, without Piriod credentials (bytes: the body as is)."""
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    return call(
        http,
        standin,
        method,
        "/_standin/" + path,
        raw,
        headers={"Authorization": None, "x-simple-workspace": None},
    )


def listed(http: urllib3.PoolManager, standin: PiriodStandin, query: str = "") -> list[int]:
    """The ids GET /usages/ lists for a query."""
    answer = call(http, standin, "GET", "/usages/" + (f"?{query}" if query else ""))
    assert answer.status == 200, answer.body
    return [u["id"] for u in answer.body["results"]]


# --- the contract file -------------------------------------------------------------------------


def test_vendored_openapi_is_piriods_file() -> None:
    # given the contract Piriod publishes next to the spec (when this checkout has it)
    original = Path("/work/shared/piriod/usages.openapi.yaml")
    if not original.exists():
        pytest.skip("Piriod's original file is not on this machine")
    # then the project's copy is byte for byte the same
    assert OPENAPI_PATH.read_bytes() == original.read_bytes()


# --- POST /usages/ -----------------------------------------------------------------------------


def test_post_answers_201_with_the_usage_and_the_exact_digits(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given two valid usages, quantities with digits a float would lose
    # when they are posted
    first = post(http, standin, usage(line=7, quantity="1.10"))
    second = post(
        http, standin, usage(line=8, date_time="2026-11-01T10:00:00+01:00", quantity="1E+2")
    )
    # then each is a 201 with Piriod's shape, ids counting from 1, digits as sent
    assert first.status == 201 and second.status == 201
    assert b'"quantity":1.10,' in first.raw and b'"quantity":1E+2,' in second.raw
    assert first.body.keys() == {
        "id",
        "subscription_line",
        "date_time",
        "quantity",
        "creation_scheme",
        "created",
    }
    assert first.body["id"] == 1 and second.body["id"] == 2
    assert first.body["subscription_line"] == 7 and first.body["creation_scheme"] == "api"
    assert second.body["date_time"] == "2026-11-01T10:00:00+01:00"
    assert CREATED.fullmatch(first.body["created"])
    assert first.headers["content-type"] == "application/json"
    # and the ledger holds the exact digits and the raw body
    ledger = standin.usages()
    assert [u["quantity"] for u in ledger] == ["1.10", "1E+2"]
    assert ledger[0]["body"] == usage(line=7, quantity="1.10")
    assert standin.violations() == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            b'{"subscription_line": 7, "date_time": "2026-11-01T10:00:00Z"}',
            {"quantity": ["This field is required."]},
            id="missing-field",
        ),
        pytest.param(
            usage(line='"7"'),
            {"subscription_line": ["A valid integer is required."]},
            id="string-line",
        ),
        pytest.param(
            b'{"subscription_line": 7.0, "date_time": "2026-11-01T10:00:00Z", "quantity": 1}',
            {"subscription_line": ["A valid integer is required."]},
            id="float-line",
        ),
        pytest.param(
            b'{"subscription_line": true, "date_time": "2026-11-01T10:00:00Z", "quantity": 1}',
            {"subscription_line": ["A valid integer is required."]},
            id="bool-line",
        ),
        pytest.param(
            usage(quantity='"1.5"'),
            {"quantity": ["A valid number is required."]},
            id="string-quantity",
        ),
        pytest.param(
            usage(date_time="2026-11-01 10:00"),
            {"date_time": [DATETIME_MESSAGE]},
            id="bad-date",
        ),
        pytest.param(
            usage(date_time="2026-11-01T10:00:00"),
            {"date_time": [DATETIME_MESSAGE]},
            id="date-without-offset",
        ),
        pytest.param(
            b'{"subscription_line": 7, "date_time": "2026-11-01T10:00:00Z", "quantity": 1,'
            b' "idempotency_key": "k"}',
            {"non_field_errors": ["Unknown field(s), not in the Usage schema: idempotency_key."]},
            id="extra-field",
        ),
        pytest.param(
            b'{"id": 9, "subscription_line": 7, "date_time": "2026-11-01T10:00:00Z",'
            b' "quantity": 1}',
            {"non_field_errors": ["Read-only field(s) must not be sent: id."]},
            id="read-only-field",
        ),
        pytest.param(
            b"[1, 2]",
            {"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]},
            id="not-an-object",
        ),
    ],
)
def test_invalid_body_is_400_with_a_field_map_and_a_violation(
    http: urllib3.PoolManager, standin: PiriodStandin, body: bytes, expected: dict[str, Any]
) -> None:
    # given a body the Usage schema forbids
    # when it is posted
    answer = post(http, standin, body)
    # then Piriod's 400 error map comes back, nothing is stored, and the break is recorded
    assert answer.status == 400 and answer.body == expected
    assert standin.usages() == []
    assert standin.violations()


def test_missing_workspace_is_400_non_field_error(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given a request without x-simple-workspace
    # when it is posted
    answer = post(http, standin, usage(), headers={"x-simple-workspace": None})
    # then it is the documented 400
    assert answer.status == 400
    assert answer.body == {"non_field_errors": ["x-simple-workspace header is required."]}
    assert standin.violations() == ["POST /usages/: x-simple-workspace header missing"]


def test_unmetered_line_is_400_invalid_pk_and_not_a_contract_break(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given a subscription line whose plan is not metered
    standin.set_unmetered_lines(999)
    # when a usage for it is posted
    answer = post(http, standin, usage(line=999))
    # then it is rejected on the field, and the adapter broke no rule
    assert answer.status == 400
    assert answer.body == {"subscription_line": ['Invalid pk "999" - object does not exist.']}
    assert standin.usages() == [] and standin.violations() == []


@pytest.mark.parametrize(
    ("authorization", "detail", "is_violation"),
    [
        (None, "Authentication credentials were not provided.", True),
        ("Token not-the-token", "Invalid token.", False),
        (f"Bearer {TOKEN}", "Invalid token.", True),
    ],
)
def test_bad_credentials_are_401(
    http: urllib3.PoolManager,
    standin: PiriodStandin,
    authorization: str | None,
    detail: str,
    is_violation: bool,
) -> None:
    # given a missing, unknown or malformed Authorization header
    # when a usage is posted
    answer = post(http, standin, usage(), headers={"Authorization": authorization})
    # then it is a 401 with DRF's wording, nothing stored, no token in the violation text
    assert answer.status == 401 and answer.body == {"detail": detail}
    assert answer.headers["www-authenticate"] == "Token"
    assert standin.usages() == []
    assert bool(standin.violations()) is is_violation
    assert not any(TOKEN in v or "not-the-token" in v for v in standin.violations())


def test_other_workspace_is_403(http: urllib3.PoolManager, standin: PiriodStandin) -> None:
    # given a valid token but another workspace
    # when a usage is posted
    answer = post(http, standin, usage(), headers={"x-simple-workspace": "acc_other"})
    # then permission is denied
    assert answer.status == 403
    assert answer.body == {"detail": "You do not have permission to perform this action."}


def test_unknown_path_and_unknown_id_are_404(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given a path Piriod does not serve, and an id that does not exist
    # when they are requested
    wrong_path = call(http, standin, "POST", "/usages", usage())
    missing = call(http, standin, "GET", "/usages/42/")
    # then both are 404 Not found; only the wrong path breaks the contract
    assert wrong_path.status == 404 and wrong_path.body == {"detail": "Not found."}
    assert missing.status == 404 and missing.body == {"detail": "Not found."}
    assert standin.violations() == ["POST /usages: path /usages is not part of Piriod's usages API"]


def test_other_method_is_405(http: urllib3.PoolManager, standin: PiriodStandin) -> None:
    # given a usage
    post(http, standin, usage())
    # when it is PUT
    answer = call(http, standin, "PUT", "/usages/1/", usage())
    # then the method is not allowed
    assert answer.status == 405 and answer.body == {"detail": 'Method "PUT" not allowed.'}
    assert answer.headers["allow"] == "GET, DELETE, HEAD, OPTIONS"


def test_non_json_content_type_is_415(http: urllib3.PoolManager, standin: PiriodStandin) -> None:
    # given a JSON body labelled as form data
    # when it is posted
    answer = post(http, standin, usage(), headers={"content-type": "text/plain"})
    # then the media type is unsupported and recorded as a contract break
    assert answer.status == 415
    assert answer.body == {"detail": 'Unsupported media type "text/plain" in request.'}
    assert standin.violations() == [
        "POST /usages/: content-type 'text/plain' is not application/json"
    ]


@pytest.mark.parametrize("body", [b'{"subscription_line": 7,', usage(quantity="NaN")])
def test_body_that_is_not_json_is_400_parse_error(
    http: urllib3.PoolManager, standin: PiriodStandin, body: bytes
) -> None:
    # given a truncated body, or one with NaN (not JSON)
    # when it is posted
    answer = post(http, standin, body)
    # then DRF's parse error comes back
    assert answer.status == 400 and answer.body["detail"].startswith("JSON parse error - ")


def test_test_mode_header_selects_separate_data(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given one live and one test-mode usage, and a test-mode header that is not a boolean
    post(http, standin, usage(line=1))
    post(http, standin, usage(line=2), headers={"x-piriod-test-mode": "true"})
    bad = post(http, standin, usage(line=3), headers={"x-piriod-test-mode": "yes"})
    # when each mode is listed
    live = call(http, standin, "GET", "/usages/")
    test = call(http, standin, "GET", "/usages/", headers={"x-piriod-test-mode": "true"})
    # then each sees only its own data, and the non-boolean header was refused
    assert [u["subscription_line"] for u in live.body["results"]] == [1]
    assert [u["subscription_line"] for u in test.body["results"]] == [2]
    assert [u["subscription_line"] for u in standin.usages(test_mode=True)] == [2]
    assert bad.status == 400 and list(bad.body) == ["non_field_errors"]
    assert call(http, standin, "GET", "/usages/2/").status == 404


# --- GET and DELETE ----------------------------------------------------------------------------


def test_list_filters_by_line_instant_and_quantity(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given usages on two lines, at one instant written two ways, with 1.10 and 2
    post(http, standin, usage(line=5, date_time="2026-11-01T10:00:00+01:00", quantity="1.10"))
    post(http, standin, usage(line=5, date_time="2026-11-01T12:00:00Z", quantity="2"))
    post(http, standin, usage(line=6, date_time="2026-11-01T09:00:00Z", quantity="1.1"))

    def ids(query: str) -> list[int]:
        answer = call(http, standin, "GET", "/usages/?" + query)
        assert answer.status == 200, answer.body
        return [u["id"] for u in answer.body["results"]]

    # when it is filtered, then instants compare across offsets and 1.1 equals 1.10
    assert ids("subscription_line=5") == [1, 2]
    assert ids("date_time=" + quote("2026-11-01T09:00:00Z")) == [1, 3]
    assert ids("date_time=" + quote("2026-11-01T10:00:00+01:00")) == [1, 3]
    assert ids("quantity=1.1") == [1, 3]
    assert ids("subscription_line=5&quantity=1.10&date_time=2026-11-01T09:00:00Z") == [1]
    assert ids("date_time__gte=2026-11-01T09:30:00Z") == [2]
    assert ids("date_time__lte=2026-11-01T09:30:00Z") == [1, 3]
    assert ids("created__gte=2000-01-01T00:00:00Z") == [1, 2, 3]


def test_malformed_filter_is_400(http: urllib3.PoolManager, standin: PiriodStandin) -> None:
    # given filters that are not a number, a date-time (an unencoded + is a space), or a quantity
    # when they are used
    answer = call(
        http,
        standin,
        "GET",
        "/usages/?subscription_line=x&date_time=2026-11-01T10:00:00+01:00&quantity=lots",
    )
    # then each is reported on its field
    assert answer.status == 400
    assert answer.body == {
        "subscription_line": ["Enter a whole number."],
        "date_time": ["Enter a valid date/time."],
        "quantity": ["Enter a number."],
    }


def test_pagination_caps_page_size_at_100_and_links_pages(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given 230 usages
    for n in range(230):
        assert post(http, standin, usage(line=1000 + n)).status == 201
    # when pages are requested with a page size above the maximum
    first = call(http, standin, "GET", "/usages/?page_size=500")
    third = call(http, standin, "GET", "/usages/?page_size=500&page=3")
    default = call(http, standin, "GET", "/usages/?page=2")
    beyond = call(http, standin, "GET", "/usages/?page_size=100&page=4")
    # then pages hold 100 at most, with absolute links, and a page past the end is 404
    assert first.body["count"] == 230 and len(first.body["results"]) == 100
    assert first.body["next"] == f"{standin.url}/usages/?page=2&page_size=500"
    assert first.body["previous"] is None
    assert [u["id"] for u in third.body["results"]] == list(range(201, 231))
    assert third.body["next"] is None
    assert third.body["previous"] == f"{standin.url}/usages/?page=2&page_size=500"
    assert [u["id"] for u in default.body["results"]] == list(range(21, 41))
    assert default.body["previous"] == f"{standin.url}/usages/"
    assert beyond.status == 404 and beyond.body == {"detail": "Invalid page."}


def test_ordering(http: urllib3.PoolManager, standin: PiriodStandin) -> None:
    # given three usages whose date_times are not in id order
    for date_time in ("2026-11-02T00:00:00Z", "2026-11-01T00:00:00Z", "2026-11-03T00:00:00Z"):
        post(http, standin, usage(date_time=date_time))

    def ids(ordering: str) -> list[int]:
        answer = call(http, standin, "GET", "/usages/?ordering=" + ordering)
        return [u["id"] for u in answer.body["results"]]

    # when they are listed in each order, then the order is honoured (default: id)
    assert ids("") == [1, 2, 3]
    assert ids("-id") == [3, 2, 1]
    assert ids("date_time") == [2, 1, 3]
    assert ids("-date_time") == [3, 1, 2]
    assert ids("-created") == [3, 2, 1]


def test_get_one_and_delete(http: urllib3.PoolManager, standin: PiriodStandin) -> None:
    # given a usage
    created = post(http, standin, usage(quantity="12.500")).body
    # when it is read, deleted, then read and deleted again
    read = call(http, standin, "GET", "/usages/1/")
    deleted = call(http, standin, "DELETE", "/usages/1/")
    again = call(http, standin, "GET", "/usages/1/")
    deleted_again = call(http, standin, "DELETE", "/usages/1/")
    # then it was there once, the delete is a 204 without a body, and then it is gone
    assert read.status == 200 and read.body == created and b'"quantity":12.500' in read.raw
    assert deleted.status == 204 and deleted.raw == b""
    assert again.status == 404 and deleted_again.status == 404
    assert standin.usages() == []


# --- listing precision -------------------------------------------------------------------------


def test_listing_as_float_renders_repr_digits_and_filters_at_float_precision(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given a Piriod that stores quantities in a FloatField
    standin.set_listing(quantity="float")
    # when a quantity with more digits than a float holds is posted and listed
    created = post(http, standin, usage(quantity="1.23456789012345678"))
    listing = call(http, standin, "GET", "/usages/")
    detail = call(http, standin, "GET", "/usages/1/")
    # then the 201 renders what was sent, the list and the detail the float's repr digits
    assert b'"quantity":1.23456789012345678,' in created.raw
    assert b'"quantity":1.2345678901234567,' in listing.raw
    assert b'"quantity":1.2345678901234567,' in detail.raw
    assert standin.usages()[0]["quantity"] == "1.23456789012345678"  # the ledger is exact
    # and a filter with the exact digits (or any that round to that float) still matches
    assert listed(http, standin, "quantity=1.23456789012345678") == [1]
    assert listed(http, standin, "quantity=1.2345678901234568") == [1]
    # when filters compare the text as typed, then only the digits shown match
    standin.set_listing(quantity="float", filters="exact_text")
    assert listed(http, standin, "quantity=1.23456789012345678") == []
    assert listed(http, standin, "quantity=1.2345678901234568") == []
    assert listed(http, standin, "quantity=1.2345678901234567") == [1]


def test_listing_at_decimal_places_rounds_half_even_with_exactly_n_places(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given a Piriod whose quantity is a DecimalField(decimal_places=2)
    standin.set_listing(quantity="places:2")
    for quantity in ("1.005", "2.675", "3", "1E+2"):
        post(http, standin, usage(quantity=quantity))
    # when the usages are listed
    listing = call(http, standin, "GET", "/usages/")
    # then each quantity is rounded half to even and shown with exactly 2 places
    quantities = re.findall(rb'"quantity":([^,]+),', listing.raw)
    assert quantities == [b"1.00", b"2.68", b"3.00", b"100.00"]
    # and filters convert to 2 places first, so the digits sent match
    assert listed(http, standin, "quantity=1.005") == [1]
    assert listed(http, standin, "quantity=1") == [1]
    assert listed(http, standin, "quantity=2.675") == [2]
    # when filters compare as typed, then digits beyond the 2 stored match nothing
    standin.set_listing(quantity="places:2", filters="exact_text")
    assert listed(http, standin, "quantity=1.005") == []
    assert listed(http, standin, "quantity=1.00") == [1]
    # and places:0 shows whole numbers
    standin.set_listing(quantity="places:0")
    assert re.findall(rb'"quantity":([^,]+),', call(http, standin, "GET", "/usages/").raw) == [
        b"1",
        b"3",
        b"3",
        b"100",
    ]


def test_listing_date_times_cut_to_millis_or_seconds_keep_the_offset_sent(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given usages with microseconds, a fraction and an offset, and none
    post(http, standin, usage(date_time="2026-01-01T10:00:00.123456Z"))
    post(http, standin, usage(date_time="2026-01-01T11:00:00.5+01:00"))
    post(http, standin, usage(date_time="2026-01-01T12:00:00Z"))

    def date_times() -> list[str]:
        return [u["date_time"] for u in call(http, standin, "GET", "/usages/").body["results"]]

    # when Piriod's column holds milliseconds, then they are cut to 3 digits, offsets as sent
    standin.set_listing(date_time="millis")
    assert date_times() == [
        "2026-01-01T10:00:00.123Z",
        "2026-01-01T11:00:00.500+01:00",
        "2026-01-01T12:00:00.000Z",
    ]
    assert call(http, standin, "GET", "/usages/1/").body["date_time"] == "2026-01-01T10:00:00.123Z"
    # and a filter with the microseconds sent is cut too, so it still matches
    assert listed(http, standin, "date_time=" + quote("2026-01-01T10:00:00.123456Z")) == [1]
    assert listed(http, standin, "date_time__gte=" + quote("2026-01-01T10:00:00.123456Z")) == [
        1,
        2,
        3,
    ]
    # when filters compare as typed, then the microseconds miss the stored milliseconds
    standin.set_listing(date_time="millis", filters="exact_text")
    assert listed(http, standin, "date_time=" + quote("2026-01-01T10:00:00.123456Z")) == []
    assert listed(http, standin, "date_time=" + quote("2026-01-01T10:00:00.123Z")) == [1]
    assert listed(http, standin, "date_time__gte=" + quote("2026-01-01T10:00:00.123456Z")) == [
        2,
        3,
    ]
    # when the column holds whole seconds, then the fraction is gone
    standin.set_listing(date_time="seconds")
    assert date_times() == [
        "2026-01-01T10:00:00Z",
        "2026-01-01T11:00:00+01:00",
        "2026-01-01T12:00:00Z",
    ]
    assert listed(http, standin, "date_time=" + quote("2026-01-01T10:00:00.5Z")) == [1, 2]


def test_listing_setting_post_answer_control_route_and_reset(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given the listing precision set over the control route, the 201 rendering as listed
    set_to = {"quantity": "places:3", "date_time": "seconds", "post_answer": "listed"}
    answer = control_call(http, standin, "POST", "listing", set_to)
    assert answer.status == 200
    assert answer.body == {"listing": {**set_to, "filters": "stored"}}
    # when a usage is posted
    created = post(http, standin, usage(date_time="2026-01-01T10:00:00.9Z", quantity="0.12345"))
    # then the 201 renders it as a listing would
    assert b'"quantity":0.123,' in created.raw
    assert created.body["date_time"] == "2026-01-01T10:00:00Z"
    # and nonsense is refused, in Python and over HTTP
    with pytest.raises(ValueError, match="quantity"):
        standin.set_listing(quantity="places:x")
    with pytest.raises(ValueError, match="filters"):
        standin.set_listing(filters="fuzzy")
    assert control_call(http, standin, "POST", "listing", {"date_time": "nanos"}).status == 400
    assert control_call(http, standin, "POST", "listing", {"precision": "float"}).status == 400
    # when the stand-in is reset, then listings are exact again
    standin.reset()
    assert control_call(http, standin, "GET", "listing").body["listing"] == {
        "quantity": "exact",
        "date_time": "exact",
        "filters": "stored",
        "post_answer": "sent",
    }


# --- faults ------------------------------------------------------------------------------------


def test_latency_is_concurrent(
    http: urllib3.PoolManager, standin: PiriodStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    # given 50 ms of latency on every POST, and the stand-in's latency wait held until all
    # 100 requests are inside it (no clock is read: a stand-in serving one request at a
    # time never has 100 there, and the hold gives up after 60 s so that the count fails)
    standin.add_fault("latency", delay=0.05)
    wait, lock, all_in = standin._sleep, threading.Lock(), threading.Event()
    delays: list[float] = []
    unanswered_when_all_in: list[int] = []

    def held(seconds: float) -> None:
        if seconds > 0:
            with lock:
                delays.append(seconds)
                if len(delays) == 100:
                    requests = standin.requests
                    unanswered_when_all_in.append(sum(r["status"] is None for r in requests))
                    all_in.set()
            all_in.wait(timeout=60)
            all_in.set()
        wait(seconds)

    monkeypatch.setattr(standin, "_sleep", held)
    # when 100 usages are posted at once
    patient = urllib3.Timeout(connect=120, read=120)
    with ThreadPoolExecutor(max_workers=100) as pool:
        statuses = list(
            pool.map(
                lambda n: post(http, standin, usage(line=n + 1), timeout=patient).status,
                range(100),
            )
        )
    # then all 100 were in flight at once (received, none answered yet), each waited out
    # its latency, and all landed
    assert unanswered_when_all_in == [100]
    assert delays == [0.05] * 100
    assert statuses == [201] * 100 and len(standin.usages()) == 100
    assert [r["status"] for r in standin.requests] == [201] * 100


def test_status_fault_runs_out_after_count(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given Piriod failing twice with 503
    standin.add_fault("status", status=503, count=2)
    # when three usages are posted
    answers = [post(http, standin, usage(quantity=str(n))) for n in range(3)]
    # then two fail with a detail body and store nothing, the third lands
    assert [a.status for a in answers] == [503, 503, 201]
    assert answers[0].body == {"detail": "Service temporarily unavailable, try again later."}
    assert [u["quantity"] for u in standin.usages()] == ["2"]
    assert standin.stats() == {"503": 2, "201": 1}


def test_429_carries_retry_after(http: urllib3.PoolManager, standin: PiriodStandin) -> None:
    # given Piriod throttling once for 3 seconds
    standin.add_fault("status", status=429, retry_after=3, count=1)
    # when a usage is posted
    answer = post(http, standin, usage())
    # then it is DRF's throttle answer
    assert answer.status == 429 and answer.headers["retry-after"] == "3"
    assert answer.body == {"detail": "Request was throttled. Expected available in 3 seconds."}


def test_unauthorized_fault_and_faults_scoped_to_lines_and_methods(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given a 401 for line 7 only, and a 500 for GETs only
    standin.add_fault("unauthorized", lines=[7])
    standin.add_fault("status", status=500, methods=("GET",))
    # when lines 7 and 8 are posted and the list is read
    seven, eight = post(http, standin, usage(line=7)), post(http, standin, usage(line=8))
    listing = call(http, standin, "GET", "/usages/")
    # then only line 7 was refused, and only the GET failed
    assert seven.status == 401 and seven.body == {"detail": "Invalid token."}
    assert eight.status == 201 and listing.status == 500
    assert [u["subscription_line"] for u in standin.usages()] == [8]


def test_latency_adds_to_another_fault(http: urllib3.PoolManager, standin: PiriodStandin) -> None:
    # given latency and a 502 on the same POSTs
    standin.add_fault("latency", delay=0.1, count=1)
    standin.add_fault("status", status=502, count=1)
    # when a usage is posted
    started = time.perf_counter()
    answer = post(http, standin, usage())
    # then both applied
    assert answer.status == 502 and time.perf_counter() - started >= 0.1
    assert standin.faults() == []


def test_reset_fault_breaks_the_connection_and_stores_nothing(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given Piriod resetting the next connection
    standin.add_fault("reset", count=1)
    # when a usage is posted
    # then the client sees the connection reset, and nothing landed
    with pytest.raises(ProtocolError) as raised:
        post(http, standin, usage())
    assert isinstance(raised.value.args[1], ConnectionResetError)
    assert standin.usages() == []
    assert post(http, standin, usage()).status == 201


def test_timeout_after_store_lands_the_usage_without_an_answer(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given Piriod storing the usage, then staying silent for 1 s
    standin.add_fault("timeout_after_store", delay=1.0, count=1)
    # when a usage is posted with a 0.2 s read timeout
    # then the client times out, although the usage is in the ledger
    with pytest.raises(ReadTimeoutError):
        post(http, standin, usage(quantity="4.20"), timeout=urllib3.Timeout(1, read=0.2))
    assert [u["quantity"] for u in standin.usages()] == ["4.20"]
    assert standin.requests[0]["status"] is None and standin.requests[0]["fault"] == (
        "timeout_after_store"
    )


def test_faults_only_hit_authorised_requests(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given a 500 fault, counted once
    standin.add_fault("status", status=500, count=1)
    # when a request with a wrong token comes first
    refused = post(http, standin, usage(), headers={"Authorization": "Token wrong"})
    failed = post(http, standin, usage())
    # then the 401 did not use the fault up
    assert (refused.status, failed.status) == (401, 500)


def test_token_rotation(http: urllib3.PoolManager, standin: PiriodStandin) -> None:
    # given the token rotated to a new one
    standin.set_tokens("rotated-token")
    # when the old and the new tokens are used
    old = post(http, standin, usage())
    new = post(http, standin, usage(), headers={"Authorization": "Token rotated-token"})
    # then only the new one is accepted
    assert old.status == 401 and old.body == {"detail": "Invalid token."}
    assert new.status == 201


def test_drip_sends_headers_at_once_then_the_body_byte_by_byte(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given Piriod dripping its next answer, one byte every 4 ms
    standin.add_fault("drip", delay=0.004, count=1)
    # when a usage is posted
    started = time.perf_counter()
    response = http.request(
        "POST",
        standin.url + "/usages/",
        body=usage(quantity="4.20"),
        headers=HEADERS,
        preload_content=False,
        timeout=urllib3.Timeout(2, read=2),
    )
    stored_before_the_body = standin.usages()
    raw = response.read()
    body_after = time.perf_counter() - started
    response.release_conn()
    # then the 201 and its headers came at once, the usage was already stored,
    # and the created body (chunked, no Content-Length) took a byte per delay
    assert response.status == 201 and response.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.headers
    assert [u["quantity"] for u in stored_before_the_body] == ["4.20"]
    assert json.loads(raw)["id"] == 1 and b'"quantity":4.20,' in raw
    assert len(raw) * 0.004 * 0.8 <= body_after  # a lower bound: it cannot flake
    assert standin.requests[0]["fault"] == "drip" and standin.stats() == {"201": 1}
    # and the next answer is whole again
    assert post(http, standin, usage()).status == 201


def test_drip_with_a_content_length_defeats_a_per_read_timeout(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given a drip set over HTTP: status 200, a Content-Length of the whole body
    added = control_call(
        http,
        standin,
        "POST",
        "faults",
        {"kind": "drip", "delay": 0.02, "status": 200, "framing": "length", "count": 1},
    )
    assert added.status == 201 and added.body["faults"][0]["framing"] == "length"
    # when a usage is posted with a 1 s read timeout
    started = time.perf_counter()
    answer = post(http, standin, usage(), timeout=urllib3.Timeout(5, read=1))
    elapsed = time.perf_counter() - started
    # then no single read waited 1 s, yet the whole answer took longer than that
    assert answer.status == 200 and answer.body["id"] == 1
    assert answer.headers["content-length"] == str(len(answer.raw))
    assert "transfer-encoding" not in answer.headers
    assert elapsed > 1.5  # a lower bound (the body takes 0.02 s a byte): it cannot flake
    assert len(standin.usages()) == 1


def test_drip_applies_to_a_listing_too(http: urllib3.PoolManager, standin: PiriodStandin) -> None:
    # given a usage, and a drip on GETs
    post(http, standin, usage())
    standin.add_fault("drip", delay=0.001, methods=("GET",), count=1)
    # when the list is read, then it is the normal page, slowly
    answer = call(http, standin, "GET", "/usages/")
    assert answer.status == 200 and [u["id"] for u in answer.body["results"]] == [1]
    assert answer.headers["transfer-encoding"] == "chunked"


def test_reject_body_sends_raw_bytes_and_stores_nothing(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given error maps Piriod might send: a lone-surrogate escape, invalid UTF-8, 3 MB of map
    lone_surrogate = '{"quantity": ["\\ud800 is not a number."]}'
    invalid_utf8 = b'{"detail": "\xff\xfe broken"}'
    big = json.dumps({"quantity": ["x" * (3 * 1024 * 1024)]}).encode()
    standin.add_fault("reject_body", body=lone_surrogate, count=1)
    standin.add_fault("reject_body", status=422, body=invalid_utf8, count=1)
    added = control_call(
        http,
        standin,
        "POST",
        "faults",
        {"kind": "reject_body", "status": 502, "body_base64": base64.b64encode(big).decode()},
    )
    assert added.status == 201
    assert added.body["faults"][1]["body"] == f"<{len(invalid_utf8)} bytes>"
    assert added.body["faults"][2]["body"] == f"<{len(big)} bytes>"

    # when three usages are posted
    def raw_post() -> urllib3.BaseHTTPResponse:
        return http.request(
            "POST", standin.url + "/usages/", body=usage(), headers=HEADERS, retries=False
        )

    first, second, third = raw_post(), raw_post(), raw_post()
    # then each answer is the raw bytes given, as JSON, and nothing was stored
    assert (first.status, first.data) == (400, lone_surrogate.encode())
    assert first.data.count(b"\\ud800") == 1
    assert (second.status, second.data) == (422, invalid_utf8)
    assert third.status == 502 and third.data == big
    assert third.headers["content-length"] == str(len(big))
    assert third.headers["content-type"] == "application/json"
    assert standin.usages() == []
    assert standin.stats() == {"400": 1, "422": 1, "502": 1}
    # and a body that is not base64 is refused
    bad = control_call(
        http, standin, "POST", "faults", {"kind": "reject_body", "body_base64": "***"}
    )
    assert bad.status == 400


def test_answer_after_store_with_id_zero(http: urllib3.PoolManager, standin: PiriodStandin) -> None:
    # given Piriod answering like an OpenAPI mock server: 201 with id 0
    standin.add_fault("answer_after_store", status=201, body="zero_id", count=1)
    # when a usage is posted
    answer = post(http, standin, usage())
    # then the answer says id 0, while the ledger holds the usage under its real id
    assert answer.status == 201 and answer.body["id"] == 0
    assert [u["id"] for u in standin.usages()] == [1]


def test_endless_listing_never_runs_out_of_next_pages(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given two usages and a listing whose next link never ends
    post(http, standin, usage(line=1))
    post(http, standin, usage(line=2))
    standin.add_fault("endless_listing")
    # when a client follows next for 30 pages
    url: str | None = standin.url + "/usages/?page_size=1"
    pages = []
    for _ in range(30):
        assert url is not None
        response = http.request("GET", url, headers=HEADERS)
        assert response.status == 200
        pages.append(json.loads(response.data))
        url = pages[-1]["next"]
    # then every page pointed to one more, and repeated the first page's results
    assert url == f"{standin.url}/usages/?page=31&page_size=1"
    assert all(page["count"] == 2 for page in pages)
    assert [[u["id"] for u in page["results"]] for page in pages] == [[1]] * 30
    assert pages[4]["previous"] == f"{standin.url}/usages/?page=4&page_size=1"
    # and the GETs it served are counted, while a POST and a detail GET were not touched
    assert post(http, standin, usage(line=3)).status == 201
    assert call(http, standin, "GET", "/usages/3/").status == 200
    served = [r for r in standin.requests if r["fault"] == "endless_listing"]
    assert len(served) == 30 and standin.stats()["200"] == 31
    assert standin.faults()[0]["methods"] == ["GET"]


def test_endless_listing_with_empty_pages_runs_out_after_count(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given a usage, and empty endless pages for 3 GETs, set over HTTP
    post(http, standin, usage())
    added = control_call(
        http, standin, "POST", "faults", {"kind": "endless_listing", "body": "empty", "count": 3}
    )
    assert added.status == 201
    # when pages 1 to 4 are read
    answers = [call(http, standin, "GET", f"/usages/?page={n}") for n in range(1, 5)]
    # then three were empty with a next, and the fourth is Piriod's own answer again
    assert [a.body["results"] for a in answers[:3]] == [[], [], []]
    assert answers[2].body["next"] == f"{standin.url}/usages/?page=4"
    assert answers[3].status == 404 and answers[3].body == {"detail": "Invalid page."}


def test_new_fault_kinds_refuse_nonsense(standin: PiriodStandin) -> None:
    # given faults of the new kinds that cannot be
    # then they are refused at once
    with pytest.raises(ValueError, match="delay"):
        standin.add_fault("drip")
    with pytest.raises(ValueError, match="framing"):
        standin.add_fault("drip", delay=0.1, framing="close")
    with pytest.raises(ValueError, match="framing"):
        standin.add_fault("status", status=500, framing="length")
    with pytest.raises(ValueError, match="body"):
        standin.add_fault("reject_body")
    with pytest.raises(ValueError, match="body"):
        standin.add_fault("drip", delay=0.1, body="usage")
    with pytest.raises(ValueError, match="GET"):
        standin.add_fault("endless_listing", methods=("POST",))
    with pytest.raises(ValueError, match="body"):
        standin.add_fault("endless_listing", body="zero_id")
    assert standin.faults() == []


def test_add_fault_refuses_nonsense(standin: PiriodStandin) -> None:
    # given faults that cannot be
    # then they are refused at once
    with pytest.raises(ValueError, match="unknown fault kind"):
        standin.add_fault("explode")
    with pytest.raises(ValueError, match="status"):
        standin.add_fault("status")
    with pytest.raises(ValueError, match="delay"):
        standin.add_fault("latency")


# --- control over HTTP, records, lifecycle -----------------------------------------------------


def test_http_control_routes(http: urllib3.PoolManager, standin: PiriodStandin) -> None:
    def control(method: str, path: str, body: dict[str, Any] | None = None) -> Call:
        return call(
            http,
            standin,
            method,
            "/_standin/" + path,
            body,
            headers={"Authorization": None, "x-simple-workspace": None},
        )

    # given a stand-in driven over HTTP only (no Piriod credentials)
    assert control("GET", "health").body["status"] == "ok"
    # when a fault, tokens and unmetered lines are set through it
    added = control("POST", "faults", {"kind": "status", "status": 500, "count": 1, "lines": [3]})
    assert added.status == 201 and added.body["faults"][0]["lines"] == [3]
    assert post(http, standin, usage(line=3)).status == 500
    control("POST", "faults", {"kind": "status", "status": 504})
    assert control("DELETE", "faults").body == {"faults": []}
    assert control("POST", "unmetered", {"lines": [4]}).status == 200
    assert post(http, standin, usage(line=4)).status == 400
    assert post(http, standin, usage(line=5), headers={"x-piriod-test-mode": "true"}).status == 201
    assert control("POST", "tokens", {"tokens": ["t2"]}).status == 200
    # then they act, and the ledger, records and reset are served too
    assert post(http, standin, usage()).status == 401
    ledger = control("GET", "ledger?test_mode=true").body["usages"]
    assert [(u["subscription_line"], u["quantity"]) for u in ledger] == [(5, "1")]
    assert control("GET", "ledger?test_mode=false").body == {"usages": []}
    assert control("GET", "stats").body["stats"]["401"] == 1
    assert control("GET", "violations").body == {"violations": []}
    served = control("GET", "requests").body["requests"]
    assert served[0]["headers"]["authorization"] == "Token <redacted>"
    assert served[0]["body"] == usage(line=3).decode()
    assert control("POST", "faults", {"kind": "explode"}).status == 400
    assert control("POST", "tokens", {"tokens": "t3"}).status == 400
    assert control("GET", "tokens").status == 405
    assert control("POST", "reset").status == 200
    assert standin.usages() == [] and standin.requests == []


def test_seed_usage_puts_a_lookalike_into_the_ledger(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given a usage made elsewhere an hour ago, in Python, and a test-mode one over HTTP
    an_hour_ago = datetime(2026, 11, 1, 9, 0, tzinfo=timezone(timedelta(hours=1)))
    seeded = standin.seed_usage(7, "2026-11-01T10:00:00Z", "1.10", created=an_hour_ago)
    over_http = control_call(
        http,
        standin,
        "POST",
        "ledger",
        b'{"subscription_line": 8, "date_time": "2026-11-01T11:00:00+01:00", "quantity": 2.50,'
        b' "created": "2026-11-01T08:30:00Z", "test_mode": true}',
    )
    # when a usage is then posted, and the ledger and lists are read
    created = post(http, standin, usage(line=7, quantity="1.10"))
    detail = call(http, standin, "GET", "/usages/1/")
    test_list = call(http, standin, "GET", "/usages/", headers={"x-piriod-test-mode": "true"})
    # then the seeded usages took ids from the ledger's sequence, their digits and times kept
    assert seeded == 1 and over_http.status == 201 and over_http.body == {"id": 2}
    assert created.body["id"] == 3
    assert detail.body["created"] == "2026-11-01T08:00:00.000000Z"
    assert b'"quantity":1.10,' in detail.raw
    assert [(u["id"], u["created"]) for u in test_list.body["results"]] == [
        (2, "2026-11-01T08:30:00.000000Z")
    ]
    assert b'"quantity":2.50,' in test_list.raw
    assert [u["quantity"] for u in standin.usages()] == ["1.10", "2.50", "1.10"]
    assert listed(http, standin, "subscription_line=7&quantity=1.1") == [1, 3]
    # and a seed that is not a usage is refused
    with pytest.raises(ValueError, match="aware"):
        standin.seed_usage(7, "2026-11-01T10:00:00Z", "1", created=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="JSON number"):
        standin.seed_usage(7, "2026-11-01T10:00:00Z", "1.")
    with pytest.raises(ValueError, match="date_time"):
        standin.seed_usage(7, "2026-11-01 10:00", "1")
    bad = control_call(http, standin, "POST", "ledger", {"subscription_line": 7})
    assert bad.status == 400
    assert standin.seed_usage(9, "2026-11-01T10:00:00Z", 3, created=datetime.now(UTC)) == 4


def test_requests_and_violations_are_recorded(
    http: urllib3.PoolManager, standin: PiriodStandin
) -> None:
    # given one request by the contract and two that break it
    post(http, standin, usage(), headers={"x-piriod-test-mode": "false"})
    post(http, standin, usage(line='"7"'), headers={"x-piriod-test-mode": "1"})
    post(http, standin, usage(line='"7"'))
    # when the records are read
    [good, bad_header, bad_type] = standin.requests
    # then each request is there with what was wrong
    assert good["method"] == "POST" and good["path"] == "/usages/" and good["status"] == 201
    assert good["headers"]["authorization"] == f"Token {TOKEN}"
    assert good["body"] == usage() and good["violations"] == []
    assert bad_header["status"] == 400 and "x-piriod-test-mode" in bad_header["violations"][0]
    assert bad_type["violations"] == [
        "field 'subscription_line': '7' is not of type 'integer' (sent a JSON string)"
    ]
    assert len(standin.violations()) == 2
    assert not any(TOKEN in violation for violation in standin.violations())


def test_every_host_shares_one_port_and_one_state(http: urllib3.PoolManager) -> None:
    # given a stand-in on two loopback addresses
    try:
        standin = PiriodStandin(
            hosts=("127.0.0.1", "127.0.0.2"), tokens=(TOKEN,), workspace=WORKSPACE
        ).start()
    except OSError as error:
        pytest.skip(f"127.0.0.2 cannot be bound here: {error}")
    try:
        # when a usage is posted through the second address
        second = standin.urls[1]
        answer = http.request("POST", second + "/usages/", body=usage(), headers=HEADERS)
        # then it is served on the same port and seen through the first
        assert standin.url == f"http://127.0.0.1:{standin.port}"
        assert second == f"http://127.0.0.2:{standin.port}"
        assert answer.status == 201 and len(standin.usages()) == 1
    finally:
        standin.stop()


def test_command_line_serves_until_sigterm() -> None:
    # given the stand-in started from the command line on a free port
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "piriod_devkit.piriod_standin",
            "--port",
            "0",
            "--token",
            "cli-secret-token",
            "--workspace",
            "acc_cli",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url, line
        # when it is called
        answer = urllib3.request(
            "POST",
            url.group() + "/usages/",
            body=usage(),
            timeout=2,
            headers={
                **HEADERS,
                "Authorization": "Token cli-secret-token",
                "x-simple-workspace": "acc_cli",
            },
        )
        assert answer.status == 201
    finally:
        # then SIGTERM stops it cleanly, and the token never reached its output
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=5)
    assert process.returncode == 0
    assert "cli-secret-token" not in line + out + err
