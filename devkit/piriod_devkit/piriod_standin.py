"""A Piriod stand-in: Piriod's `/usages/` API on loopback, with contract checks and faults.

It answers like Piriod (Django REST framework conventions) for `POST /usages/`,
`GET /usages/`, `GET /usages/{id}/` and `DELETE /usages/{id}/`, validates every
`POST` body against the `Usage` schema of the vendored OpenAPI file
(`openapi/piriod-usages.openapi.yaml`), records every request with the contract
violations it carried, and injects faults (latency, error statuses, connection
resets, read timeouts after the usage was stored, odd answers after storing, answers
whose body drips out byte by byte, raw error bodies, listings whose `next` never ends).
Listings can render and filter at a lower precision than was sent (`set_listing`), and
usages made elsewhere can be put straight into the ledger (`seed_usage`).

Control is a Python API (`PiriodStandin`) or, for other processes, HTTP routes
under `/_standin/` that need no Piriod credentials. Run it alone with
`python -m piriod_devkit.piriod_standin --port 8081 --token T --workspace W`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import json
import math
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from functools import cache
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Final, Self
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import jsonschema
import yaml

__all__ = ["FAULT_KINDS", "OPENAPI_PATH", "PiriodStandin", "main"]

OPENAPI_PATH: Final = Path(__file__).resolve().parent / "openapi" / "piriod-usages.openapi.yaml"
FAULT_KINDS: Final = frozenset(
    {
        "latency",
        "status",
        "reset",
        "timeout_after_store",
        "answer_after_store",
        "unauthorized",
        "drip",
        "reject_body",
        "endless_listing",
    }
)
# What an `answer_after_store` fault sends with its status, once the usage is stored.
ANSWER_BODIES: Final = frozenset({"usage", "no_id", "bad_id", "zero_id", "empty"})
# What the pages of an `endless_listing` fault hold: the first page again, or nothing.
ENDLESS_BODIES: Final = frozenset({"repeat", "empty"})
# How a `drip` fault frames its body: one byte per chunk, or a Content-Length of the whole.
DRIP_FRAMINGS: Final = frozenset({"chunked", "length"})
# How listings (GET /usages/, GET /usages/{id}/) keep what was sent: see `set_listing`.
DATE_TIME_PRECISIONS: Final = frozenset({"exact", "millis", "seconds"})
FILTER_MODES: Final = frozenset({"stored", "exact_text"})
POST_ANSWERS: Final = frozenset({"sent", "listed"})

DEFAULT_PAGE_SIZE: Final = 20
MAX_PAGE_SIZE: Final = 100
MAX_BODY_BYTES: Final = 1024 * 1024
MAX_CONTROL_BODY_BYTES: Final = 64 * 1024 * 1024  # a multi-megabyte reject_body, base64
MAX_PLACES: Final = 30
DEFAULT_STORE_TIMEOUT_DELAY: Final = 5.0
MAX_LINE_ID: Final = 2**63 - 1

NOT_PROVIDED: Final = "Authentication credentials were not provided."
INVALID_TOKEN: Final = "Invalid token."  # noqa: S105 (a message)
NO_PERMISSION: Final = "You do not have permission to perform this action."
NOT_FOUND: Final = "Not found."
REQUIRED: Final = "This field is required."
DATETIME_FORMAT: Final = (
    "Datetime has wrong format. Use one of these formats instead: "
    "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
)
WORKSPACE_HEADER: Final = "x-simple-workspace"
TEST_MODE_HEADER: Final = "x-piriod-test-mode"

_USAGE_PATH = re.compile(r"/usages/(?:(\d+)/)?")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)
_WHOLE_NUMBER = re.compile(r"[+-]?\d+")
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_PLACES = re.compile(r"places:(\d{1,2})")
_ORDERING_FIELDS = frozenset({"id", "created", "date_time"})
_LIST_METHODS = ("GET", "POST", "HEAD", "OPTIONS")
_DETAIL_METHODS = ("GET", "DELETE", "HEAD", "OPTIONS")


# --- JSON with exact numbers -----------------------------------------------------------------


class _JsonDecimal(Decimal):
    """A JSON number with a fraction or exponent, remembering the exact text it was sent as."""

    raw: str


class _JsonInt(int):
    """A JSON integer, remembering the exact text it was sent as."""

    raw: str


class RawNumber(str):
    """Text written into JSON output as a number, unquoted (the digits a client sent)."""


def _parse_float(text: str) -> Decimal:
    number = _JsonDecimal(text)
    number.raw = text
    return number


def _parse_int(text: str) -> int:
    number = _JsonInt(text)
    number.raw = text
    return number


def _reject_constant(name: str) -> Any:
    raise ValueError(f"Out of range float values are not JSON compliant: {name!r}")


def _loads_exact(text: str, duplicates: list[str]) -> Any:
    """`json.loads` keeping every number's digits (Decimal / int) and noting duplicate keys."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                duplicates.append(key)
            result[key] = value
        return result

    return json.loads(
        text,
        parse_float=_parse_float,
        parse_int=_parse_int,
        parse_constant=_reject_constant,
        object_pairs_hook=pairs,
    )


def _raw_text(number: int | Decimal) -> str:
    raw = getattr(number, "raw", None)
    return raw if isinstance(raw, str) else str(number)


def dumps(value: Any) -> str:
    """Compact JSON (as DRF renders it) where Decimal and RawNumber keep their digits."""
    if isinstance(value, RawNumber):
        return str.__str__(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"not a JSON number: {value}")
        return _raw_text(value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a JSON number: {value}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(item) for item in value) + "]"
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, Decimal | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _python_type_name(value: Any) -> str:
    """The type name DRF would print for a parsed JSON value."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, Decimal):
        return "float"
    return type(value).__name__


# --- date-times --------------------------------------------------------------------------------


def parse_rfc3339(text: str) -> datetime | None:
    """The instant of an RFC 3339 `date-time` (offset required), or None if it is not one."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    fraction = match.group(7)
    micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
    if match.group(8):
        tz: timezone = UTC
    else:
        off_h, off_m = int(match.group(10)), int(match.group(11))
        if off_h > 23 or off_m > 59:
            return None
        offset = timedelta(hours=off_h, minutes=off_m)
        tz = timezone(-offset if match.group(9) == "-" else offset)
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        return None


def _parse_filter_datetime(text: str) -> datetime | None:
    """A filter value: RFC 3339, or any ISO 8601 form Django accepts (naive means UTC)."""
    parsed = parse_rfc3339(text)
    if parsed is not None:
        return parsed
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _format_created(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _truncate_instant(moment: datetime, precision: str) -> datetime:
    """`moment` cut down to milliseconds or whole seconds ("exact": as it is)."""
    if precision == "millis":
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    if precision == "seconds":
        return moment.replace(microsecond=0)
    return moment


def _truncate_date_time(text: str, precision: str) -> str:
    """An RFC 3339 text with its fraction cut to 3 digits ("millis", always 3) or dropped
    ("seconds"); everything else (the offset as sent, "Z" or "+01:00") is kept."""
    match = _RFC3339.fullmatch(text)
    if match is None or precision == "exact":
        return text
    fraction = match.group(7) or ""
    kept = "." + (fraction[1:] + "000")[:3] if precision == "millis" else ""
    return text[: match.end(6)] + kept + text[match.end(6) + len(fraction) :]


# --- the contract, read from the vendored OpenAPI file ---------------------------------------


@dataclass(frozen=True)
class _Contract:
    properties: tuple[str, ...]
    read_only: frozenset[str]
    required: tuple[str, ...]
    property_schemas: dict[str, dict[str, Any]]
    validator: Any


def _resolve(document: dict[str, Any], node: Any) -> Any:
    """`node` with every local `$ref` replaced by what it points at."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            if not ref.startswith("#/"):
                raise ValueError(f"only local $ref is supported: {ref}")
            target: Any = document
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            return _resolve(document, target)
        return {key: _resolve(document, value) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(document, item) for item in node]
    return node


def _check_date_time(instance: object) -> bool:
    return not isinstance(instance, str) or parse_rfc3339(instance) is not None


@cache
def _contract() -> _Contract:
    document = yaml.safe_load(OPENAPI_PATH.read_text(encoding="utf-8"))
    operation = document["paths"]["/usages/"]["post"]
    media = operation["requestBody"]["content"]["application/json"]
    schema: dict[str, Any] = _resolve(document, media["schema"])
    properties: dict[str, dict[str, Any]] = schema["properties"]
    read_only = frozenset(name for name, prop in properties.items() if prop.get("readOnly"))
    writable = {name: prop for name, prop in properties.items() if name not in read_only}
    required = tuple(name for name in schema.get("required", ()) if name not in read_only)
    request_schema = {"type": "object", "properties": copy.deepcopy(writable)}
    checker = jsonschema.FormatChecker(formats=())
    checker.checks("date-time")(_check_date_time)
    validator = jsonschema.Draft4Validator(request_schema, format_checker=checker)
    return _Contract(
        properties=tuple(properties),
        read_only=read_only,
        required=required,
        property_schemas=writable,
        validator=validator,
    )


def _field_message(schema: dict[str, Any], value: Any, jsonschema_message: str) -> str:
    """DRF's wording for a field whose value does not fit its schema."""
    if value is None:
        return "This field may not be null."
    kind = schema.get("type")
    if kind == "integer":
        return "A valid integer is required."
    if kind == "number":
        return "A valid number is required."
    if kind == "string" and schema.get("format") == "date-time":
        return DATETIME_FORMAT
    if kind == "string":
        return "Not a valid string."
    if kind == "boolean":
        return "Must be a valid boolean."
    return jsonschema_message


# --- state -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Listing:
    """How listings keep a usage: the precision they store at, and how filters compare."""

    quantity: str = "exact"
    date_time: str = "exact"
    filters: str = "stored"
    post_answer: str = "sent"

    def __post_init__(self) -> None:
        places = _PLACES.fullmatch(self.quantity)
        if self.quantity not in ("exact", "float") and (
            places is None or int(places.group(1)) > MAX_PLACES
        ):
            raise ValueError(
                f"quantity must be 'exact', 'float' or 'places:N' (N 0..{MAX_PLACES}),"
                f" not {self.quantity!r}"
            )
        if self.date_time not in DATE_TIME_PRECISIONS:
            raise ValueError(f"date_time must be one of {sorted(DATE_TIME_PRECISIONS)}")
        if self.filters not in FILTER_MODES:
            raise ValueError(f"filters must be one of {sorted(FILTER_MODES)}")
        if self.post_answer not in POST_ANSWERS:
            raise ValueError(f"post_answer must be one of {sorted(POST_ANSWERS)}")

    def describe(self) -> dict[str, str]:
        return {
            "quantity": self.quantity,
            "date_time": self.date_time,
            "filters": self.filters,
            "post_answer": self.post_answer,
        }

    def _stored(self, number: Decimal) -> Decimal | float:
        """A quantity as a FloatField or a DecimalField(decimal_places=N) would hold it."""
        if self.quantity == "float":
            return float(number)
        places = _PLACES.fullmatch(self.quantity)
        if places is None or not number.is_finite():
            return number
        digits = max(28, number.adjusted() + int(places.group(1)) + 2)
        return number.quantize(
            Decimal(1).scaleb(-int(places.group(1))),
            rounding=ROUND_HALF_EVEN,
            context=Context(prec=digits, Emax=999999, Emin=-999999),
        )

    def quantity_value(self, text: str) -> Any:
        """What a listing renders for a quantity sent as `text`."""
        if self.quantity == "exact":
            return RawNumber(text)
        stored = self._stored(Decimal(text))
        if isinstance(stored, float):
            # a number no float can hold (1E+400) keeps its digits: there is no float to show
            return stored if math.isfinite(stored) else RawNumber(text)
        return RawNumber(format(stored, "f"))

    def quantity_matches(self, text: str, wanted: Decimal) -> bool:
        """Whether the `quantity` filter `wanted` selects a usage whose quantity was `text`."""
        if self.quantity == "exact":
            return Decimal(text) == wanted
        if self.filters == "stored":  # both sides at the stored precision
            return self._stored(Decimal(text)) == self._stored(wanted)
        shown = self.quantity_value(text)  # the stored value against the filter as typed
        return Decimal(dumps(shown)) == wanted

    def date_time_text(self, text: str) -> str:
        return _truncate_date_time(text, self.date_time)

    def instant(self, moment: datetime) -> datetime:
        """A usage's instant as stored."""
        return _truncate_instant(moment, self.date_time)

    def filter_instant(self, moment: datetime) -> datetime:
        """A date_time filter as compared: at the stored precision, or as typed."""
        return moment if self.filters == "exact_text" else self.instant(moment)


_EXACT_LISTING: Final = _Listing()


@dataclass
class _Usage:
    id: int
    workspace: str
    test_mode: bool
    subscription_line: int
    date_time: str
    instant: datetime
    quantity: str
    created: datetime
    body: bytes

    def representation(self, listing: _Listing = _EXACT_LISTING) -> dict[str, Any]:
        return {
            "id": self.id,
            "subscription_line": self.subscription_line,
            "date_time": listing.date_time_text(self.date_time),
            "quantity": listing.quantity_value(self.quantity),
            "creation_scheme": "api",
            "created": _format_created(self.created),
        }

    def ledger_entry(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subscription_line": self.subscription_line,
            "date_time": self.date_time,
            "quantity": self.quantity,
            "creation_scheme": "api",
            "created": _format_created(self.created),
            "test_mode": self.test_mode,
            "workspace": self.workspace,
            "body": self.body,
        }


@dataclass
class _Fault:
    kind: str
    count: int | None
    status: int | None
    retry_after: float | str | None
    delay: float | None
    lines: frozenset[int] | None
    methods: frozenset[str]
    body: str | bytes | None = None
    framing: str | None = None

    def matches(self, method: str, line: int | None, *, listing: bool = False) -> bool:
        if method not in self.methods:
            return False
        if self.kind == "endless_listing" and not listing:
            return False
        if self.lines is not None:
            return method == "POST" and line is not None and line in self.lines
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "count": self.count,
            "status": self.status,
            "retry_after": self.retry_after,
            "delay": self.delay,
            "lines": None if self.lines is None else sorted(self.lines),
            "methods": sorted(self.methods),
            "body": self.body if not isinstance(self.body, bytes) else f"<{len(self.body)} bytes>",
            "framing": self.framing,
        }


@dataclass
class _Request:
    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes
    base_url: str


@dataclass
class _Response:
    status: int
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # sent as is instead of the payload's JSON
    drip: float | None = None  # seconds between body bytes (None: the body at once)
    framing: str = "length"  # "chunked": Transfer-Encoding chunked, "length": Content-Length


@dataclass
class _Abort:
    """No answer: `reset` aborts the connection now, `timeout` waits `delay`, then closes."""

    kind: str
    delay: float = 0.0


@dataclass
class _PostBody:
    data: dict[str, Any] | None
    error: _Response | None
    line: int | None


def _detail(status: int, message: str, **headers: str) -> _Response:
    return _Response(status, {"detail": message}, dict(headers))


def _fault_response(status: int, method: str, retry_after: float | str | None) -> _Response:
    headers: dict[str, str] = {}
    wait: int | None = None
    if retry_after is not None:
        if isinstance(retry_after, str):
            headers["Retry-After"] = retry_after
        else:
            wait = max(0, math.ceil(retry_after))
            headers["Retry-After"] = str(wait)
    if status == 429:
        message = "Request was throttled."
        if wait is not None:
            message += f" Expected available in {wait} second{'' if wait == 1 else 's'}."
    else:
        messages = {
            400: "Malformed request.",
            401: INVALID_TOKEN,
            403: NO_PERMISSION,
            404: NOT_FOUND,
            405: f'Method "{method}" not allowed.',
            500: "A server error occurred.",
            502: "Bad gateway.",
            503: "Service temporarily unavailable, try again later.",
            504: "Gateway timeout.",
        }
        try:
            phrase = HTTPStatus(status).phrase + "."
        except ValueError:
            phrase = "Error."
        message = messages.get(status, phrase)
    if status == 401:
        headers["WWW-Authenticate"] = "Token"
    return _Response(status, {"detail": message}, headers)


def _replace_query_param(url: str, key: str, value: int | None) -> str:
    """DRF's replace_query_param / remove_query_param (value None removes it)."""
    scheme, netloc, path, query, fragment = urlsplit(url)
    params = parse_qs(query, keep_blank_values=True)
    if value is None:
        params.pop(key, None)
    else:
        params[key] = [str(value)]
    query = urlencode(sorted(params.items()), doseq=True)
    return urlunsplit((scheme, netloc, path, query, fragment))


class PiriodStandin:
    """Piriod's `/usages/` API served on loopback, shared by every bound host."""

    def __init__(
        self,
        hosts: Iterable[str] = ("127.0.0.1",),
        port: int = 0,
        tokens: Iterable[str] = ("test-token",),
        workspace: str = "acc_local",
        *,
        unmetered_lines: Iterable[int] = (),
        log_requests: bool = False,
    ) -> None:
        # a lone string is one host / one token, not a sequence of characters
        self.hosts: tuple[str, ...] = (hosts,) if isinstance(hosts, str) else tuple(hosts)
        if not self.hosts:
            raise ValueError("at least one host is needed")
        self.workspace = workspace
        self.log_requests = log_requests
        self._requested_port = port
        self._bound_port: int | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._tokens: frozenset[str] = frozenset((tokens,) if isinstance(tokens, str) else tokens)
        self._unmetered: frozenset[int] = frozenset(unmetered_lines)
        self._usages: dict[int, _Usage] = {}
        self._next_id = 1
        self._faults: list[_Fault] = []
        self._listing = _EXACT_LISTING
        self._requests: list[dict[str, Any]] = []
        self._servers: list[_Server] = []
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()
        _contract()  # fail at construction, not at the first request, if the contract is broken

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        if self._servers:
            raise RuntimeError("the stand-in is already started")
        self._stopping.clear()
        port = self._requested_port
        try:
            for host in self.hosts:
                server = _Server((host, port), self)
                self._servers.append(server)
                port = server.server_address[1]
        except BaseException:
            for server in self._servers:
                server.server_close()
            self._servers.clear()
            raise
        self._bound_port = port
        for server in self._servers:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"piriod-standin-{server.server_name}:{port}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> Self:
        return self if self._servers else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("the stand-in is not started")
        return self._bound_port

    @property
    def url(self) -> str:
        return self.url_for(self.hosts[0])

    @property
    def urls(self) -> list[str]:
        return [self.url_for(host) for host in self.hosts]

    def url_for(self, host: str) -> str:
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    # --- state and control ---------------------------------------------------------------------

    def usages(self, test_mode: bool | None = None) -> list[dict[str, Any]]:
        """The ledger in id order; quantity is the exact text sent ("1.10"), body the raw bytes."""
        with self._lock:
            return [
                usage.ledger_entry()
                for usage in sorted(self._usages.values(), key=lambda u: u.id)
                if test_mode is None or usage.test_mode is test_mode
            ]

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every Piriod API request received (control routes excluded), in arrival order."""
        with self._lock:
            return [
                {
                    **entry,
                    "headers": dict(entry["headers"]),
                    "query": dict(entry["query"]),
                    "violations": list(entry["violations"]),
                }
                for entry in self._requests
            ]

    def violations(self) -> list[str]:
        """Every contract violation seen, as "METHOD /path: what was wrong"."""
        with self._lock:
            return [
                f"{entry['method']} {entry['path']}: {violation}"
                for entry in self._requests
                for violation in entry["violations"]
            ]

    def stats(self) -> dict[str, int]:
        """Requests per status answered ("201", "400", ...), or per fault when none was."""
        with self._lock:
            counts = Counter(
                str(entry["status"]) if entry["status"] is not None else str(entry["fault"])
                for entry in self._requests
            )
        return dict(counts)

    def set_tokens(self, *tokens: str) -> None:
        """Accept only these tokens from now on (rotation: the old ones get 401)."""
        with self._lock:
            self._tokens = frozenset(tokens)

    def set_unmetered_lines(self, *lines: int) -> None:
        """Subscription lines that are not metered: a usage for them is a 400."""
        with self._lock:
            self._unmetered = frozenset(lines)

    def set_listing(
        self,
        *,
        quantity: str = "exact",
        date_time: str = "exact",
        filters: str = "stored",
        post_answer: str = "sent",
    ) -> None:
        """How listings (GET /usages/ and GET /usages/{id}/) keep usages from now on.

        `quantity`: "exact" (the digits sent), "float" (a FloatField: the JSON of
        `float(Decimal(quantity))`) or "places:N" (a DecimalField(decimal_places=N): rounded
        half-even, rendered with exactly N places). `date_time`: "exact", "millis" (cut to
        milliseconds, always 3 digits) or "seconds" (cut to whole seconds), the offset as sent.
        `filters`: "stored" (the quantity and date_time filters are converted to the stored
        precision first, as Django converts a lookup value) or "exact_text" (they are compared
        as typed with the stored value, so extra digits match nothing). `post_answer`: the 201
        of a POST renders what was "sent", or the usage as "listed". `reset()` restores all."""
        listing = _Listing(quantity, date_time, filters, post_answer)
        with self._lock:
            self._listing = listing

    def listing(self) -> dict[str, str]:
        """The listing precision in force (see `set_listing`)."""
        with self._lock:
            return self._listing.describe()

    def seed_usage(
        self,
        subscription_line: int,
        date_time: str,
        quantity: str | int | Decimal,
        *,
        created: datetime | None = None,
        test_mode: bool = False,
    ) -> int:
        """Put a usage into the ledger directly, as if made elsewhere (another client, the
        dashboard); its id comes from the ledger's sequence. `quantity` is a JSON number,
        its text kept ("1.10"); `created` is an aware datetime (default: now)."""
        if isinstance(subscription_line, bool) or not isinstance(subscription_line, int):
            raise ValueError("subscription_line must be an integer")
        if not 1 <= subscription_line <= MAX_LINE_ID:
            raise ValueError(f"subscription_line must be 1..{MAX_LINE_ID}")
        instant = parse_rfc3339(date_time) if isinstance(date_time, str) else None
        if instant is None:
            raise ValueError("date_time must be an RFC 3339 date-time with an offset")
        if isinstance(quantity, bool) or not isinstance(quantity, str | int | Decimal):
            raise ValueError("quantity must be a JSON number (text, int or Decimal)")
        subscription_line = int(subscription_line)
        text = quantity if isinstance(quantity, str) else _raw_text(quantity)
        if not _JSON_NUMBER.fullmatch(text):
            raise ValueError(f"quantity must be a JSON number, not {text!r}")
        if created is None:
            created = datetime.now(UTC)
        elif not isinstance(created, datetime) or created.utcoffset() is None:
            raise ValueError("created must be an aware datetime")
        if not isinstance(test_mode, bool):
            raise ValueError("test_mode must be true or false")
        body = dumps(
            {
                "subscription_line": subscription_line,
                "date_time": date_time,
                "quantity": RawNumber(text),
            }
        ).encode()
        with self._lock:
            usage = _Usage(
                id=self._next_id,
                workspace=self.workspace,
                test_mode=test_mode,
                subscription_line=subscription_line,
                date_time=date_time,
                instant=instant,
                quantity=text,
                created=created,
                body=body,
            )
            self._next_id += 1
            self._usages[usage.id] = usage
            return usage.id

    def add_fault(
        self,
        kind: str,
        *,
        count: int | None = None,
        status: int | None = None,
        retry_after: float | str | None = None,
        delay: float | None = None,
        lines: Iterable[int] | None = None,
        methods: Iterable[str] | None = None,
        body: str | bytes | None = None,
        framing: str | None = None,
    ) -> None:
        """Inject a fault for the next `count` matching requests (None: until cleared).

        `methods` defaults to ("POST",), for `endless_listing` to ("GET",). With
        methods=("DELETE",), `timeout_after_store` deletes the usage and never answers, and
        `answer_after_store` deletes it and answers `status` (a deleted-then-lost answer).
        `answer_after_store` stores a valid usage, then answers `status` (default 200) with
        `body`: the usage ("usage"), the usage without its id ("no_id"), with an id that is
        not an integer ("bad_id"), with id 0 ("zero_id", as a mock server answers), or
        nothing ("empty"); with `retry_after`, that header too.
        `drip` gives the normal answer (a POST stores its usage and answers `status`,
        default 201, with the created body), its headers at once, then its body one byte
        every `delay` seconds: `framing` "chunked" (default, no Content-Length) or "length"
        (a Content-Length of the whole body).
        `reject_body` stores nothing and answers `status` (default 400) with `body` as raw
        bytes (text is UTF-8, a lone surrogate as its 3 bytes), labelled application/json.
        `endless_listing` answers GET /usages/ with 200 pages whose `next` always points to
        page N+1, holding the first page again (`body` "repeat", default) or nothing
        ("empty"); `count` (default: until cleared) counts the pages it served."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(FAULT_KINDS)}")
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or count < 1
        ):
            raise ValueError("count must be a positive integer or None")
        if kind == "unauthorized":
            kind, status = "status", 401
        if kind == "answer_after_store":
            status = 200 if status is None else status
            body = body or "usage"
            if body not in ANSWER_BODIES:
                raise ValueError(f"body must be one of {sorted(ANSWER_BODIES)}")
        elif kind == "endless_listing":
            body = body or "repeat"
            if body not in ENDLESS_BODIES:
                raise ValueError(f"body must be one of {sorted(ENDLESS_BODIES)}")
        elif kind == "reject_body":
            status = 400 if status is None else status
            if not isinstance(body, str | bytes):
                raise ValueError("a 'reject_body' fault needs body=<text or bytes>")
            if isinstance(body, str):
                body.encode("utf-8", "surrogatepass")  # refuse now what could not be sent
        elif body is not None:
            raise ValueError(
                "body applies to 'answer_after_store', 'reject_body' and 'endless_listing'"
                " faults only"
            )
        if kind in ("status", "answer_after_store", "reject_body") or (
            kind == "drip" and status is not None
        ):
            if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
                raise ValueError(f"a {kind!r} fault needs status=<200..599>")
        elif status is not None:
            raise ValueError(f"status applies to 'status' faults, not {kind!r}")
        if kind == "drip":
            framing = framing or "chunked"
            if framing not in DRIP_FRAMINGS:
                raise ValueError(f"framing must be one of {sorted(DRIP_FRAMINGS)}")
        elif framing is not None:
            raise ValueError("framing applies to 'drip' faults only")
        if retry_after is not None and not isinstance(retry_after, int | float | str):
            raise ValueError("retry_after must be seconds or an HTTP date")
        if delay is not None and (
            isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0
        ):
            raise ValueError("delay must be a non-negative number of seconds")
        if kind in ("latency", "drip") and delay is None:
            raise ValueError(f"a {kind!r} fault needs delay=<seconds>")
        if kind == "timeout_after_store" and delay is None:
            delay = DEFAULT_STORE_TIMEOUT_DELAY
        line_set = None
        if lines is not None:
            line_set = frozenset(lines)
            if not all(isinstance(n, int) and not isinstance(n, bool) for n in line_set):
                raise ValueError("lines must be subscription line ids (integers)")
        if methods is None:
            methods = ("GET",) if kind == "endless_listing" else ("POST",)
        elif isinstance(methods, str):
            methods = (methods,)
        method_set = frozenset(str(m).upper() for m in methods)
        if kind == "endless_listing" and (not method_set <= {"GET", "HEAD"} or line_set):
            raise ValueError("an 'endless_listing' fault acts on GET (and HEAD) only, no lines")
        fault = _Fault(kind, count, status, retry_after, delay, line_set, method_set, body, framing)
        with self._lock:
            self._faults.append(fault)

    def faults(self) -> list[dict[str, Any]]:
        with self._lock:
            return [fault.describe() for fault in self._faults]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """Forget the ledger, recorded requests, faults and listing precision; ids start at 1
        again."""
        with self._lock:
            self._usages.clear()
            self._requests.clear()
            self._faults.clear()
            self._listing = _EXACT_LISTING
            self._next_id = 1

    # --- connections (used by the request handler) ---------------------------------------------

    def _track(self, connection: socket.socket, *, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    # --- the Piriod API ------------------------------------------------------------------------

    def _serve(self, request: _Request) -> _Response | _Abort:
        split_query = parse_qs(request.query_string, keep_blank_values=True)
        entry: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "query": {key: values[-1] for key, values in split_query.items()},
            "query_string": request.query_string,
            "headers": dict(request.headers),
            "body": request.body,
            "status": None,
            "fault": None,
            "violations": [],
        }
        with self._lock:
            self._requests.append(entry)
        violations: list[str] = []
        fault_kind: list[str] = []
        try:
            outcome = self._serve_usages(request, violations, fault_kind)
        except Exception as error:  # a bug in the stand-in: answer 500 like Django would
            traceback.print_exc()
            violations.append(f"stand-in error: {error!r}")
            outcome = _detail(500, "A server error occurred.")
        with self._lock:
            entry["violations"] = violations
            entry["fault"] = fault_kind[0] if fault_kind else None
            entry["status"] = outcome.status if isinstance(outcome, _Response) else None
        return outcome

    def _serve_usages(
        self, request: _Request, violations: list[str], fault_kind: list[str]
    ) -> _Response | _Abort:
        headers = request.headers
        # 1. authentication (DRF TokenAuthentication)
        authorization = headers.get("authorization")
        if authorization is None:
            violations.append("Authorization header missing")
            return _detail(401, NOT_PROVIDED, **{"WWW-Authenticate": "Token"})
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "token" or not token or " " in token:
            violations.append("Authorization header is not 'Token <api_token>'")
            return _detail(401, INVALID_TOKEN, **{"WWW-Authenticate": "Token"})
        if scheme != "Token":
            violations.append(f"Authorization scheme is {scheme!r}, the contract says 'Token'")
        with self._lock:
            accepted = token in self._tokens
        if not accepted:
            return _detail(401, INVALID_TOKEN, **{"WWW-Authenticate": "Token"})
        # 2. workspace
        workspace = headers.get(WORKSPACE_HEADER)
        if workspace is None:
            violations.append(f"{WORKSPACE_HEADER} header missing")
            return _Response(400, {"non_field_errors": [f"{WORKSPACE_HEADER} header is required."]})
        if workspace != self.workspace:
            return _detail(403, NO_PERMISSION)
        # 3. test mode
        test_mode_header = headers.get(TEST_MODE_HEADER)
        if test_mode_header is not None and test_mode_header not in ("true", "false"):
            violations.append(
                f"{TEST_MODE_HEADER} must be a boolean (true/false), got {test_mode_header!r}"
            )
            return _Response(
                400, {"non_field_errors": [f"{TEST_MODE_HEADER} header must be true or false."]}
            )
        test_mode = test_mode_header == "true"
        # 4. routing
        match = _USAGE_PATH.fullmatch(request.path)
        if match is None:
            violations.append(f"path {request.path} is not part of Piriod's usages API")
            return _detail(404, NOT_FOUND)
        usage_id = int(match.group(1)) if match.group(1) else None
        allowed = _LIST_METHODS if usage_id is None else _DETAIL_METHODS
        method = request.method
        if method not in allowed:
            violations.append(f"method {method} is not allowed on {request.path}")
            return _detail(405, f'Method "{method}" not allowed.', Allow=", ".join(allowed))
        if method == "OPTIONS":
            name = "Usage List" if usage_id is None else "Usage Instance"
            return _Response(
                200,
                {"name": name, "renders": ["application/json"], "parses": ["application/json"]},
                {"Allow": ", ".join(allowed)},
            )
        post = self._read_post(request, violations) if method == "POST" else None
        # faults: every matching latency adds its delay, then the first other matching fault acts
        fault = self._take_faults(method, post.line if post else None, listing=usage_id is None)
        if fault is not None:
            fault_kind.append(fault.kind)
            if fault.kind == "status":
                assert fault.status is not None
                return _fault_response(fault.status, method, fault.retry_after)
            if fault.kind == "reset":
                return _Abort("reset")
            if fault.kind == "answer_after_store" and method == "DELETE" and usage_id:
                self._answer(request, post, usage_id, workspace, test_mode, violations)
                assert fault.status is not None
                return _fault_response(fault.status, method, fault.retry_after)
            if fault.kind == "answer_after_store":
                return self._odd_answer(request, post, fault, workspace, test_mode)
            if fault.kind == "reject_body":
                assert fault.status is not None and fault.body is not None
                raw = fault.body
                if isinstance(raw, str):
                    raw = raw.encode("utf-8", "surrogatepass")
                headers = (
                    {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
                )
                return _Response(fault.status, headers=headers, raw=raw)
            if fault.kind == "endless_listing":
                assert isinstance(fault.body, str)
                return self._list(request, workspace, test_mode, violations, endless=fault.body)
            if fault.kind == "drip":
                answer = self._answer(request, post, usage_id, workspace, test_mode, violations)
                if fault.status is not None and method == "POST" and answer.status == 201:
                    answer.status = fault.status
                answer.drip = fault.delay or 0.0
                answer.framing = fault.framing or "chunked"
                return answer
            # timeout_after_store: the usage lands (or, for a DELETE, goes), the answer never
            # comes
            if post is not None and post.error is None and post.data is not None:
                self._create(request, post.data, workspace, test_mode)
            elif method == "DELETE" and usage_id:
                self._answer(request, post, usage_id, workspace, test_mode, violations)
            return _Abort("timeout", fault.delay or 0.0)
        return self._answer(request, post, usage_id, workspace, test_mode, violations)

    def _answer(
        self,
        request: _Request,
        post: _PostBody | None,
        usage_id: int | None,
        workspace: str,
        test_mode: bool,
        violations: list[str],
    ) -> _Response:
        """The answer to a routed, authorised request when no fault acts on it."""
        method = request.method
        if method == "POST":
            assert post is not None
            if post.error is not None:
                return post.error
            assert post.data is not None
            return self._create(request, post.data, workspace, test_mode)
        if usage_id is None:
            return self._list(request, workspace, test_mode, violations)
        if method == "DELETE":
            with self._lock:
                found = self._usages.get(usage_id)
                if found is None or found.workspace != workspace or found.test_mode != test_mode:
                    return _detail(404, NOT_FOUND)
                del self._usages[usage_id]
            return _Response(204)
        with self._lock:
            found = self._usages.get(usage_id)
            if found is None or found.workspace != workspace or found.test_mode != test_mode:
                return _detail(404, NOT_FOUND)
            return _Response(200, found.representation(self._listing))

    def _odd_answer(
        self,
        request: _Request,
        post: _PostBody | None,
        fault: _Fault,
        workspace: str,
        test_mode: bool,
    ) -> _Response:
        """Store the usage as a 201 would, then answer `fault.status` with `fault.body`."""
        if post is None or post.error is not None or post.data is None:
            return post.error if post is not None and post.error is not None else _Response(400)
        created = self._create(request, post.data, workspace, test_mode)
        if created.status != 201:
            return created
        assert fault.status is not None
        payload = dict(created.payload)
        headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
        if fault.body == "empty":
            return _Response(fault.status, headers=headers)
        if fault.body == "no_id":
            del payload["id"]
        elif fault.body == "bad_id":
            payload["id"] = str(payload["id"])
        elif fault.body == "zero_id":
            payload["id"] = 0
        return _Response(fault.status, payload, headers)

    def _take_faults(
        self, method: str, line: int | None, *, listing: bool = False
    ) -> _Fault | None:
        latency = 0.0
        acting: _Fault | None = None
        with self._lock:
            for fault in list(self._faults):
                if not fault.matches(method, line, listing=listing):
                    continue
                if fault.kind == "latency":
                    latency += fault.delay or 0.0
                elif acting is None:
                    acting = fault
                else:
                    continue
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
        self._sleep(latency)
        return acting

    def _read_post(self, request: _Request, violations: list[str]) -> _PostBody:
        """Parse and check a POST body: the answer it deserves if invalid, and its line."""
        content_type = request.headers.get("content-type", "")
        data: Any
        if not request.body:
            violations.append("request body is required (application/json Usage)")
            data = {}
        else:
            media_type = content_type.split(";", 1)[0].strip().lower()
            if media_type != "application/json":
                violations.append(f"content-type {content_type!r} is not application/json")
                return _PostBody(
                    None,
                    _detail(415, f'Unsupported media type "{content_type}" in request.'),
                    None,
                )
            duplicates: list[str] = []
            try:
                data = _loads_exact(request.body.decode("utf-8"), duplicates)
            except (ValueError, UnicodeDecodeError) as error:
                violations.append(f"body is not JSON: {error}")
                return _PostBody(None, _detail(400, f"JSON parse error - {error}"), None)
            if duplicates:
                violations.append(f"duplicate key(s) in the JSON body: {sorted(set(duplicates))}")
        if not isinstance(data, dict):
            violations.append(f"body is a JSON {_json_type(data)}, the contract says object")
            message = f"Invalid data. Expected a dictionary, but got {_python_type_name(data)}."
            return _PostBody(None, _Response(400, {"non_field_errors": [message]}), None)
        line = data.get("subscription_line")
        line_id = line if isinstance(line, int) and not isinstance(line, bool) else None
        errors = self._validate_usage(data, violations)
        if errors:
            return _PostBody(None, _Response(400, errors), line_id)
        return _PostBody(data, None, line_id)

    def _validate_usage(self, data: dict[str, Any], violations: list[str]) -> dict[str, list[str]]:
        contract = _contract()
        field_errors: dict[str, list[str]] = {}
        for name in contract.required:
            if name not in data:
                field_errors[name] = [REQUIRED]
                violations.append(f"required field {name!r} missing")
        writable = {k: v for k, v in data.items() if k in contract.property_schemas}
        for error in contract.validator.iter_errors(writable):
            if not error.path:
                continue
            name = str(error.path[0])
            if name in field_errors:
                continue
            value = writable[name]
            message = _field_message(contract.property_schemas[name], value, error.message)
            field_errors[name] = [message]
            violations.append(f"field {name!r}: {error.message} (sent a JSON {_json_type(value)})")
        non_field: list[str] = []
        read_only = [name for name in data if name in contract.read_only]
        if read_only:
            non_field.append(f"Read-only field(s) must not be sent: {', '.join(read_only)}.")
            violations.append(f"read-only field(s) sent: {read_only}")
        unknown = [name for name in data if name not in contract.properties]
        if unknown:
            non_field.append(f"Unknown field(s), not in the Usage schema: {', '.join(unknown)}.")
            violations.append(f"field(s) not in the Usage schema sent: {unknown}")
        errors = {name: field_errors[name] for name in contract.properties if name in field_errors}
        if non_field:
            errors["non_field_errors"] = non_field
        return errors

    def _create(
        self, request: _Request, data: dict[str, Any], workspace: str, test_mode: bool
    ) -> _Response:
        line = int(data["subscription_line"])
        date_time = str(data["date_time"])
        instant = parse_rfc3339(date_time)
        assert instant is not None
        quantity = _raw_text(data["quantity"])
        with self._lock:
            if line in self._unmetered or not 1 <= line <= MAX_LINE_ID:
                return _Response(
                    400, {"subscription_line": [f'Invalid pk "{line}" - object does not exist.']}
                )
            usage = _Usage(
                id=self._next_id,
                workspace=workspace,
                test_mode=test_mode,
                subscription_line=line,
                date_time=date_time,
                instant=instant,
                quantity=quantity,
                created=datetime.now(UTC),
                body=request.body,
            )
            self._next_id += 1
            self._usages[usage.id] = usage
            shown = self._listing if self._listing.post_answer == "listed" else _EXACT_LISTING
            return _Response(201, usage.representation(shown))

    def _list(
        self,
        request: _Request,
        workspace: str,
        test_mode: bool,
        violations: list[str],
        *,
        endless: str | None = None,
    ) -> _Response:
        """A page of the list; `endless` ("repeat", "empty"): a page that always has a next."""
        params = {
            key: values[-1]
            for key, values in parse_qs(request.query_string, keep_blank_values=True).items()
        }
        errors: dict[str, list[str]] = {}
        wanted_line: int | None = None
        datetimes: dict[str, datetime] = {}
        wanted_quantity: Decimal | None = None
        if params.get("subscription_line"):
            text = params["subscription_line"].strip()
            if _WHOLE_NUMBER.fullmatch(text):
                wanted_line = int(text)
            else:
                errors["subscription_line"] = ["Enter a whole number."]
        for name in ("date_time", "date_time__gte", "date_time__lte", "created__gte"):
            if params.get(name):
                parsed = _parse_filter_datetime(params[name].strip())
                if parsed is None:
                    errors[name] = ["Enter a valid date/time."]
                else:
                    datetimes[name] = parsed
        if params.get("quantity"):
            try:
                wanted_quantity = Decimal(params["quantity"].strip())
            except InvalidOperation:
                wanted_quantity = None
            if wanted_quantity is None or not wanted_quantity.is_finite():
                errors["quantity"] = ["Enter a number."]
        if errors:
            violations.extend(f"query parameter {name!r} malformed" for name in errors)
            return _Response(400, errors)

        with self._lock:
            listing = self._listing
            selected = [
                usage
                for usage in self._usages.values()
                if usage.workspace == workspace and usage.test_mode == test_mode
            ]
        if wanted_line is not None:
            selected = [u for u in selected if u.subscription_line == wanted_line]
        # date_time and quantity compare as stored (see set_listing); created is exact
        for name in ("date_time", "date_time__gte", "date_time__lte"):
            if name in datetimes:
                wanted = listing.filter_instant(datetimes[name])
                if name == "date_time":
                    selected = [u for u in selected if listing.instant(u.instant) == wanted]
                elif name == "date_time__gte":
                    selected = [u for u in selected if listing.instant(u.instant) >= wanted]
                else:
                    selected = [u for u in selected if listing.instant(u.instant) <= wanted]
        if "created__gte" in datetimes:
            selected = [u for u in selected if u.created >= datetimes["created__gte"]]
        if wanted_quantity is not None:
            selected = [
                u for u in selected if listing.quantity_matches(u.quantity, wanted_quantity)
            ]

        selected.sort(key=lambda u: u.id)
        terms = [
            term.strip()
            for term in params.get("ordering", "").split(",")
            if term.strip().lstrip("-") in _ORDERING_FIELDS
        ] or ["id"]
        for term in reversed(terms):
            name = term.lstrip("-")
            keys = {
                "id": lambda u: u.id,
                "created": lambda u: u.created,
                "date_time": lambda u: u.instant,
            }
            selected.sort(key=keys[name], reverse=term.startswith("-"))

        page_size = DEFAULT_PAGE_SIZE
        size_text = params.get("page_size", "")
        if size_text.isdigit() and int(size_text) > 0:
            page_size = min(int(size_text), MAX_PAGE_SIZE)
        count = len(selected)
        pages = max(1, math.ceil(count / page_size))
        page_text = params.get("page", "1") or "1"
        if endless is not None:  # every page exists, and has a next
            page = int(page_text) if page_text.isdigit() and int(page_text) >= 1 else 1
            pages = page + 1
        elif page_text == "last":
            page = pages
        elif page_text.isdigit() and 1 <= int(page_text) <= pages:
            page = int(page_text)
        else:
            return _detail(404, "Invalid page.")
        results = selected[(page - 1) * page_size : page * page_size]
        if endless is not None:
            results = selected[:page_size] if endless == "repeat" else []
        url = request.base_url + request.path
        if request.query_string:
            url += "?" + request.query_string
        next_url = _replace_query_param(url, "page", page + 1) if page < pages else None
        previous_url = None
        if page > 1:
            previous_url = _replace_query_param(url, "page", page - 1 if page > 2 else None)
        return _Response(
            200,
            {
                "count": count,
                "next": next_url,
                "previous": previous_url,
                "results": [usage.representation(listing) for usage in results],
            },
        )

    # --- control routes ------------------------------------------------------------------------

    def _control(self, request: _Request) -> _Response:
        route = request.path.rstrip("/")
        method = request.method
        routes: dict[str, tuple[str, ...]] = {
            "/_standin/health": ("GET",),
            "/_standin/faults": ("GET", "POST", "DELETE"),
            "/_standin/tokens": ("POST",),
            "/_standin/unmetered": ("POST",),
            "/_standin/listing": ("GET", "POST"),
            "/_standin/ledger": ("GET", "POST"),
            "/_standin/requests": ("GET",),
            "/_standin/violations": ("GET",),
            "/_standin/stats": ("GET",),
            "/_standin/reset": ("POST",),
        }
        if route not in routes:
            return _detail(404, NOT_FOUND)
        if method not in routes[route]:
            return _detail(405, f'Method "{method}" not allowed.', Allow=", ".join(routes[route]))
        try:
            if route == "/_standin/ledger" and request.body:  # a seeded quantity keeps its digits
                body: Any = _loads_exact(request.body.decode("utf-8"), [])
            else:
                body = json.loads(request.body) if request.body else {}
        except ValueError as error:
            return _detail(400, f"JSON parse error - {error}")
        params = {k: v[-1] for k, v in parse_qs(request.query_string).items()}
        try:
            return self._control_action(route, method, body, params)
        except (TypeError, ValueError) as error:
            return _detail(400, str(error))

    def _control_action(
        self, route: str, method: str, body: Any, params: dict[str, str]
    ) -> _Response:
        if route == "/_standin/health":
            with self._lock:
                count = len(self._usages)
            return _Response(200, {"status": "ok", "workspace": self.workspace, "usages": count})
        if route == "/_standin/faults":
            if method == "POST":
                if not isinstance(body, dict) or "kind" not in body:
                    raise ValueError('send the add_fault arguments as JSON: {"kind": ..., ...}')
                arguments = dict(body)
                kind = arguments.pop("kind")
                for name in ("lines", "methods"):
                    if isinstance(arguments.get(name), list):
                        arguments[name] = tuple(arguments[name])
                if "body_base64" in arguments:  # raw bytes for a reject_body fault
                    encoded = arguments.pop("body_base64")
                    if "body" in arguments or not isinstance(encoded, str):
                        raise ValueError("send body (text) or body_base64 (a base64 string)")
                    arguments["body"] = base64.b64decode(encoded, validate=True)
                self.add_fault(kind, **arguments)
                return _Response(201, {"faults": self.faults()})
            if method == "DELETE":
                self.clear_faults()
            return _Response(200, {"faults": self.faults()})
        if route == "/_standin/tokens":
            tokens = body.get("tokens") if isinstance(body, dict) else None
            if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                raise ValueError('send {"tokens": ["...", ...]}')
            self.set_tokens(*tokens)
            return _Response(200, {"tokens": len(tokens)})
        if route == "/_standin/unmetered":
            lines = body.get("lines") if isinstance(body, dict) else None
            if not isinstance(lines, list) or not all(
                isinstance(n, int) and not isinstance(n, bool) for n in lines
            ):
                raise ValueError('send {"lines": [<subscription line id>, ...]}')
            self.set_unmetered_lines(*lines)
            return _Response(200, {"lines": sorted(set(lines))})
        if route == "/_standin/listing":
            if method == "POST":
                if not isinstance(body, dict):
                    raise ValueError('send the set_listing arguments as JSON: {"quantity": ...}')
                self.set_listing(**body)
            return _Response(200, {"listing": self.listing()})
        if route == "/_standin/ledger" and method == "POST":
            if not isinstance(body, dict):
                raise ValueError(
                    'send the seed_usage arguments as JSON: {"subscription_line": ...}'
                )
            arguments = dict(body)
            created = arguments.get("created")
            if created is not None:
                moment = parse_rfc3339(created) if isinstance(created, str) else None
                if moment is None:
                    raise ValueError("created must be an RFC 3339 date-time with an offset")
                arguments["created"] = moment
            return _Response(201, {"id": self.seed_usage(**arguments)})
        if route == "/_standin/ledger":
            flag = params.get("test_mode")
            if flag not in (None, "", "true", "false"):
                raise ValueError("test_mode must be true or false")
            test_mode = None if not flag else flag == "true"
            entries = [
                {**entry, "body": entry["body"].decode("utf-8", "replace")}
                for entry in self.usages(test_mode)
            ]
            return _Response(200, {"usages": entries})
        if route == "/_standin/requests":
            entries = []
            for entry in self.requests:
                headers = entry["headers"]
                if "authorization" in headers:  # keep the scheme, never serve the token
                    scheme = headers["authorization"].partition(" ")[0]
                    headers["authorization"] = f"{scheme} <redacted>"
                entries.append({**entry, "body": entry["body"].decode("utf-8", "replace")})
            return _Response(200, {"requests": entries})
        if route == "/_standin/violations":
            return _Response(200, {"violations": self.violations()})
        if route == "/_standin/stats":
            return _Response(200, {"stats": self.stats()})
        self.reset()  # /_standin/reset
        return _Response(200, {"status": "reset"})


# --- HTTP plumbing -----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], standin: PiriodStandin) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.standin = standin
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (its own timeout, a reset) is normal here, not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host name (socket.getfqdn): slow, not needed.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PiriodStandin/1.0"
    sys_version = ""
    timeout = 30  # an idle keep-alive connection is closed after this
    server: _Server

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        super().setup()
        # headers and body go out as separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add ~40 ms to every answer
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.standin._track(self.connection, opened=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.standin._track(self.connection, opened=False)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.standin.log_requests:
            sys.stderr.write(f"piriod-standin {self.address_string()} {format % args}\n")

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes | None:
        """The request body (Content-Length or chunked); None if it cannot be read."""
        limit = MAX_CONTROL_BODY_BYTES if self.path.startswith("/_standin") else MAX_BODY_BYTES
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(1024)
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    return None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > limit:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            return None
        if not 0 <= length <= limit:
            return None
        return self.rfile.read(length)

    def _dispatch(self) -> None:
        standin = self.server.standin
        body = self._read_body()
        if body is None:
            self.close_connection = True
            self._send(_detail(400, "Malformed request."), head_only=False)
            return
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        split = urlsplit(self.path)
        host = headers.get("host") or f"{self.server.server_name}:{self.server.server_port}"
        request = _Request(
            method=self.command,
            path=split.path,
            query_string=split.query,
            headers=headers,
            body=body,
            base_url=f"http://{host}",
        )
        if split.path == "/_standin" or split.path.startswith("/_standin/"):
            self._send(standin._control(request), head_only=False)
            return
        outcome = standin._serve(request)
        if isinstance(outcome, _Response):
            self._send(outcome, head_only=self.command == "HEAD")
        elif outcome.kind == "reset":
            self._reset_connection()
        else:
            standin._sleep(outcome.delay)
            self.close_connection = True

    def _send(self, response: _Response, *, head_only: bool) -> None:
        if response.raw is not None:
            data = response.raw
        else:
            data = b"" if response.payload is None else dumps(response.payload).encode()
        chunked = (
            response.drip is not None and response.framing == "chunked" and response.status != 204
        )
        self.send_response(response.status)
        if response.payload is not None or response.raw is not None:
            self.send_header("Content-Type", "application/json")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif response.status != 204:
            self.send_header("Content-Length", str(len(data)))
        self.send_header("Vary", "Accept")
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if head_only:
            return
        if response.drip is not None:
            self._drip(data, response.drip, chunked=chunked)
        elif data:
            self.wfile.write(data)

    def _drip(self, data: bytes, delay: float, *, chunked: bool) -> None:
        """The body one byte every `delay` seconds (each byte its own chunk if `chunked`)."""
        standin = self.server.standin
        for index in range(len(data)):
            standin._sleep(delay)
            if standin._stopping.is_set():
                self.close_connection = True
                return
            byte = data[index : index + 1]
            self.wfile.write(b"1\r\n" + byte + b"\r\n" if chunked else byte)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _reset_connection(self) -> None:
        """Abort with RST: linger on with a zero timeout, then close without a FIN."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()  # the descriptor closes (RST) once rfile lets go, in finish()


# --- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m piriod_devkit.piriod_standin",
        description="Serve a Piriod /usages/ stand-in until SIGTERM or SIGINT.",
    )
    parser.add_argument(
        "--host", action="append", help="address to listen on (repeatable; default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8081, help="port (0: any free port)")
    parser.add_argument("--token", action="append", help="accepted API token (repeatable)")
    parser.add_argument("--workspace", default="acc_local", help="the x-simple-workspace id")
    parser.add_argument(
        "--unmetered", type=int, action="append", default=[], help="line id that is not metered"
    )
    parser.add_argument("--quiet", action="store_true", help="do not log requests to stderr")
    args = parser.parse_args(argv)

    standin = PiriodStandin(
        hosts=tuple(args.host or ["127.0.0.1"]),
        port=args.port,
        tokens=tuple(args.token or ["test-token"]),
        workspace=args.workspace,
        unmetered_lines=args.unmetered,
        log_requests=not args.quiet,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    standin.start()
    try:
        also = "".join(f" (also {url})" for url in standin.urls[1:])
        print(f"Piriod stand-in on {standin.url}{also} workspace={args.workspace}", flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
