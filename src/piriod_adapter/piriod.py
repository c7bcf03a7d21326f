"""Piriod's usages API over one pooled urllib3 client (SPEC section 4)."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError

from piriod_adapter.clock import Deadline
from piriod_adapter.models import render_usage_json

CONNECT_RETRIES = 2  # only for failures where the request surely never reached Piriod
THROTTLE_RETRIES = 2  # 429 / 503 with a Retry-After that fits in the time left
MIN_ATTEMPT_SECONDS = 0.5


class PostKind(StrEnum):
    CREATED = "created"
    REJECTED = "rejected"  # 400: Piriod refused the record itself
    TRANSIENT = "transient"  # surely not created (refused connection, 401/403/404/405/429/5xx)
    AMBIGUOUS = "ambiguous"  # sent, but the answer was never seen (timeout, reset)


@dataclass(frozen=True)
class PostResult:
    kind: PostKind
    status: int | None = None
    usage_id: int | None = None
    errors: dict[str, list[str]] | None = None
    error: str | None = None


class PiriodUnavailable(RuntimeError):
    """A read (lookup) could not be completed; nothing is known."""


TokenSource = Callable[[str | None], str]  # called with the refused token to force a re-read


@dataclass(frozen=True)
class Tenant:
    workspace: str
    test_mode: bool


class PiriodClient:
    def __init__(
        self,
        http: urllib3.PoolManager,
        base_url: str,
        token: TokenSource,
        connect_timeout: float,
        read_timeout: float,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._token = token
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._sleep = sleep

    def _headers(self, token: str, tenant: Tenant, *, body: bool) -> dict[str, str]:
        headers = {
            "Authorization": f"Token {token}",
            "x-simple-workspace": tenant.workspace,
            "accept": "application/json",
            "user-agent": "piriod-usage-adapter/1",
        }
        if body:
            headers["content-type"] = "application/json"
        if tenant.test_mode:
            headers["x-piriod-test-mode"] = "true"
        return headers

    def _timeout(self, deadline: Deadline) -> urllib3.Timeout | None:
        left = deadline.remaining()
        if left < MIN_ATTEMPT_SECONDS:
            return None
        return urllib3.Timeout(
            connect=min(self._connect_timeout, left), read=min(self._read_timeout, left)
        )

    def post_usage(
        self, line: int, date_time: str, quantity: Decimal, tenant: Tenant, deadline: Deadline
    ) -> PostResult:
        """POST /usages/ once, with retries only where SPEC section 4 allows them."""
        body = render_usage_json(line, date_time, quantity)
        try:
            token = self._token(None)
        except Exception as exc:  # the token secret cannot be read: nothing was sent
            return PostResult(PostKind.TRANSIENT, error=f"Piriod token unavailable: {exc}")
        token_refreshed = False
        connect_retries = CONNECT_RETRIES
        throttle_retries = THROTTLE_RETRIES
        while True:
            timeout = self._timeout(deadline)
            if timeout is None:
                return PostResult(PostKind.TRANSIENT, error="no time left to post before timeout")
            try:
                response = self._http.request(
                    "POST",
                    f"{self._base}/usages/",
                    body=body,
                    headers=self._headers(token, tenant, body=True),
                    timeout=timeout,
                    retries=False,
                    redirect=False,
                )
            except ConnectTimeoutError as exc:  # refused / unreachable: never reached Piriod
                if connect_retries > 0 and deadline.remaining() > self._connect_timeout:
                    connect_retries -= 1
                    self._sleep(0.1 * (CONNECT_RETRIES - connect_retries))
                    continue
                return PostResult(
                    PostKind.TRANSIENT, error=f"cannot connect to Piriod: {_reason(exc)}"
                )
            except HTTPError as exc:  # read timeout, reset, protocol error: it may have landed
                return PostResult(
                    PostKind.AMBIGUOUS, error=f"no answer from Piriod: {_reason(exc)}"
                )

            status = response.status
            if status == 201:
                usage_id = _usage_id(response.data)
                if usage_id is None:
                    return PostResult(
                        PostKind.AMBIGUOUS, status=201, error="201 without a usage id in the body"
                    )
                return PostResult(PostKind.CREATED, status=201, usage_id=usage_id)
            if status == 400:
                return PostResult(PostKind.REJECTED, status=400, errors=_error_map(response.data))
            if status == 401 and not token_refreshed:
                token_refreshed = True
                try:
                    token = self._token(token)  # it may have been rotated: read it again, once
                except Exception as exc:
                    return PostResult(
                        PostKind.TRANSIENT, status=401, error=f"token re-read failed: {exc}"
                    )
                continue
            if status in (429, 503) and throttle_retries > 0:
                wait = _retry_after(response.headers.get("Retry-After"))
                budget = deadline.remaining() - self._connect_timeout - self._read_timeout
                if wait is not None and wait <= budget:
                    throttle_retries -= 1
                    self._sleep(wait)
                    continue
            return PostResult(
                PostKind.TRANSIENT, status=status, error=_detail(response.data, status)
            )

    def find_usages(
        self, line: int, date_time: str, quantity: Decimal, tenant: Tenant, deadline: Deadline
    ) -> list[dict[str, Any]]:
        """Usages Piriod lists for this line, instant and quantity (to settle an ambiguous post)."""
        query = {"subscription_line": line, "date_time": date_time, "quantity": str(quantity)}
        return list(self.list_usages(query, tenant, deadline))

    def list_usages(
        self, filters: dict[str, Any], tenant: Tenant, deadline: Deadline
    ) -> Iterator[dict[str, Any]]:
        """Every usage matching `filters`, following pagination. Raises PiriodUnavailable."""
        url: str | None = f"{self._base}/usages/?" + urlencode({**filters, "page_size": 100})
        token = self._token(None)
        refreshed = False
        while url is not None:
            timeout = self._timeout(deadline)
            if timeout is None:
                raise PiriodUnavailable("no time left to ask Piriod")
            try:
                response = self._http.request(
                    "GET",
                    url,
                    headers=self._headers(token, tenant, body=False),
                    timeout=timeout,
                    retries=False,
                    redirect=False,
                )
            except HTTPError as exc:
                raise PiriodUnavailable(f"cannot list usages: {_reason(exc)}") from None
            if response.status == 401 and not refreshed:
                refreshed = True
                token = self._token(token)
                continue
            if response.status != 200:
                detail = _detail(response.data, response.status)
                raise PiriodUnavailable(f"listing usages answered {detail}")
            try:
                page = json.loads(response.data, parse_float=Decimal)
                results = page["results"]
                next_url = page.get("next")
            except (ValueError, KeyError, TypeError):
                raise PiriodUnavailable("listing usages returned an unexpected body") from None
            yield from results
            url = next_url if isinstance(next_url, str) and next_url else None


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return type(reason or exc).__name__


def _usage_id(data: bytes) -> int | None:
    try:
        value = json.loads(data).get("id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _error_map(data: bytes) -> dict[str, list[str]]:
    """Piriod's 400 body is a field-keyed map of lists; keep it, normalised to lists of text."""
    try:
        document = json.loads(data)
    except ValueError:
        return {"non_field_errors": [data[:500].decode("utf-8", "replace")]}
    if not isinstance(document, dict):
        return {"non_field_errors": [str(document)[:500]]}
    errors: dict[str, list[str]] = {}
    for field, messages in document.items():
        items = messages if isinstance(messages, list) else [messages]
        errors[str(field)] = [m if isinstance(m, str) else json.dumps(m) for m in items]
    return errors


def _detail(data: bytes, status: int) -> str:
    try:
        document = json.loads(data)
        if isinstance(document, dict) and isinstance(document.get("detail"), str):
            return f"HTTP {status}: {document['detail'][:300]}"
    except ValueError:
        pass
    return f"HTTP {status}"


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
