"""The Piriod stand-in itself, over real loopback HTTP: contract, answers, faults and control."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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


# --- faults ------------------------------------------------------------------------------------


def test_latency_is_concurrent(http: urllib3.PoolManager, standin: PiriodStandin) -> None:
    # given 50 ms of latency on every POST
    standin.add_fault("latency", delay=0.05)
    # when 100 usages are posted at once
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=100) as pool:
        statuses = list(
            pool.map(lambda n: post(http, standin, usage(line=n + 1)).status, range(100))
        )
    elapsed = time.perf_counter() - start
    # then all land, each delayed, and together in well under a second
    assert statuses == [201] * 100 and len(standin.usages()) == 100
    assert elapsed < 0.8, elapsed
    started = time.perf_counter()
    post(http, standin, usage())
    assert time.perf_counter() - started >= 0.05


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
