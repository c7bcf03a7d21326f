"""Piriod's usages API over one pooled urllib3 client (SPEC section 4).

Only a definite refusal means "not created": a connection that never reached Piriod, or a
`400`, `401`, `403`, `404`, `405` or `429` (a throttle refuses before the view runs). Every
other answer (an unexpected 2xx, a 2xx without a usable id, any 5xx, `503` with
`Retry-After` included, a 3xx, a broken or timed-out response) may have stored the usage:
it is AMBIGUOUS, and is settled by lookup before any second post.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError

from piriod_adapter import jsondoc
from piriod_adapter.clock import Deadline
from piriod_adapter.models import MAX_LINE, Tenant, Usage
from piriod_adapter.tracing import Tracer

CONNECT_RETRIES = 1  # only for failures where the request surely never reached Piriod
CONNECT_RETRY_PAUSE = 0.05
THROTTLE_RETRIES = 2  # 429 with a Retry-After that fits in the time left
MIN_ATTEMPT_SECONDS = 0.5
MAX_RESPONSE_BYTES = 1024 * 1024  # Piriod's answers are small; a larger one is not Piriod's
DEFINITE_REFUSALS = frozenset({401, 403, 404, 405, 429})


class PostKind(StrEnum):
    CREATED = "created"
    REJECTED = "rejected"  # 400: Piriod refused the record itself
    TRANSIENT = "transient"  # surely not created: may be posted again
    AMBIGUOUS = "ambiguous"  # may have been created: look it up before posting again


@dataclass(frozen=True)
class PostResult:
    kind: PostKind
    status: int | None = None
    usage_id: int | None = None
    errors: dict[str, list[str]] | None = None
    error: str | None = None
    attempted: bool = True  # False: nothing was sent (no token, no time left)


class PiriodUnavailable(RuntimeError):
    """A read (lookup) could not be completed; nothing is known."""


TokenSource = Callable[[str | None], str]  # called with the refused token to force a re-read


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Any
    body: bytes | None  # None: larger than MAX_RESPONSE_BYTES, or cut short

    def document(self) -> Any:
        """The body as JSON, or None when it is not (bounded) JSON."""
        if self.body is None:
            return None
        try:
            return jsondoc.loads(self.body)
        except jsondoc.JsonError:
            return None


class PiriodClient:
    def __init__(
        self,
        http: urllib3.PoolManager,
        base_url: str,
        token: TokenSource,
        connect_timeout: float,
        read_timeout: float,
        sleep: Callable[[float], None] = time.sleep,
        tracer: Tracer | None = None,
    ) -> None:
        self._tracer = tracer or Tracer(enabled=False)
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
            total=min(self._connect_timeout + self._read_timeout, left),
            connect=min(self._connect_timeout, left),
            read=min(self._read_timeout, left),
        )

    def _request(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: Any
    ) -> Answer:
        """One request, its body read up to MAX_RESPONSE_BYTES (raises urllib3 HTTPError)."""
        with self._tracer.subsegment("Piriod") as trace:
            trace["http"] = {"request": {"method": method, "url": url.split("?", 1)[0]}}
            answer = self._send(method, url, headers, body, timeout)
            trace["http"]["response"] = {"status": answer.status}
            if answer.status >= 500:
                trace["fault"] = True
            elif answer.status >= 400:
                trace["error"] = True
            return answer

    def _send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: Any
    ) -> Answer:
        response = self._http.request(
            method,
            url,
            body=body,
            headers=headers,
            timeout=timeout,
            retries=False,
            redirect=False,
            preload_content=False,
        )
        try:
            data = response.read(MAX_RESPONSE_BYTES + 1)
            complete = len(data) <= MAX_RESPONSE_BYTES
            if not complete:
                response.close()  # do not reuse a connection with unread data on it
            return Answer(response.status, response.headers, data if complete else None)
        finally:
            response.release_conn()

    def post_usage(self, usage: Usage, tenant: Tenant, deadline: Deadline) -> PostResult:
        """POST /usages/ once, with retries only where SPEC section 4 allows them."""
        body = usage.piriod_body()
        try:
            token = self._token(None)
        except Exception as exc:  # the token secret cannot be read: nothing was sent
            return PostResult(
                PostKind.TRANSIENT, error=f"Piriod token unavailable: {exc}", attempted=False
            )
        token_refreshed = False
        connect_retries = CONNECT_RETRIES
        throttle_retries = THROTTLE_RETRIES
        while True:
            timeout = self._timeout(deadline)
            if timeout is None:
                return PostResult(
                    PostKind.TRANSIENT, error="no time left to post before timeout", attempted=False
                )
            try:
                answer = self._request(
                    "POST",
                    f"{self._base}/usages/",
                    self._headers(token, tenant, body=True),
                    body,
                    timeout,
                )
            except ConnectTimeoutError as exc:  # refused / unreachable: never reached Piriod
                if connect_retries > 0 and deadline.remaining() > self._connect_timeout:
                    connect_retries -= 1
                    self._sleep(CONNECT_RETRY_PAUSE)
                    continue
                return PostResult(
                    PostKind.TRANSIENT, error=f"cannot connect to Piriod: {_reason(exc)}"
                )
            except (
                HTTPError,
                OSError,
            ) as exc:  # timeout, reset, protocol error: it may have landed
                return PostResult(
                    PostKind.AMBIGUOUS, error=f"no answer from Piriod: {_reason(exc)}"
                )

            status = answer.status
            if status == 201:
                usage_id = usage_id_of(answer.document())
                if usage_id is None:
                    return PostResult(
                        PostKind.AMBIGUOUS, status=201, error="201 without a usable usage id"
                    )
                return PostResult(PostKind.CREATED, status=201, usage_id=usage_id)
            if status == 400:
                return PostResult(PostKind.REJECTED, status=400, errors=_error_map(answer))
            if status == 401 and not token_refreshed:
                token_refreshed = True
                try:
                    token = self._token(token)  # it may have been rotated: read it again, once
                except Exception as exc:
                    return PostResult(
                        PostKind.TRANSIENT, status=401, error=f"token re-read failed: {exc}"
                    )
                continue
            # SPEC section 4 allows a retry on 503 with Retry-After too, but a 503 does not
            # prove the usage was not stored (a gateway may answer it while the request goes
            # on): it is ambiguous, and is settled by lookup before any second post.
            wait = _retry_after(answer.headers.get("Retry-After"))
            if status == 429:
                budget = deadline.remaining() - self._connect_timeout - self._read_timeout
                if throttle_retries > 0 and wait is not None and wait <= budget:
                    throttle_retries -= 1
                    self._sleep(wait)
                    continue
                return PostResult(PostKind.TRANSIENT, status=status, error=_detail(answer))
            if status in DEFINITE_REFUSALS:
                return PostResult(PostKind.TRANSIENT, status=status, error=_detail(answer))
            return PostResult(
                PostKind.AMBIGUOUS,
                status=status,
                error=f"{_detail(answer)}: not a definite refusal, it may have been stored",
            )

    def find_usages(self, usage: Usage, tenant: Tenant, deadline: Deadline) -> list[dict[str, Any]]:
        """Usages Piriod lists for this line, instant and quantity (to settle an unseen post)."""
        query = {
            "subscription_line": usage.subscription_line,
            "date_time": usage.date_time_text,
            "quantity": usage.quantity_text,
        }
        return list(self.list_usages(query, tenant, deadline))

    def list_usages(
        self, filters: dict[str, Any], tenant: Tenant, deadline: Deadline
    ) -> Iterator[dict[str, Any]]:
        """Every listed usage matching `filters` (each a JSON object, as Piriod wrote it: a
        caller checks its id and fields), following pagination. Raises PiriodUnavailable."""
        url: str | None = f"{self._base}/usages/?" + urlencode({**filters, "page_size": 100})
        try:
            token = self._token(None)
        except Exception as exc:
            raise PiriodUnavailable(f"Piriod token unavailable: {exc}") from None
        refreshed = False
        pages = 0
        while url is not None:
            timeout = self._timeout(deadline)
            if timeout is None:
                raise PiriodUnavailable("no time left to ask Piriod")
            try:
                answer = self._request(
                    "GET", url, self._headers(token, tenant, body=False), None, timeout
                )
            except (HTTPError, OSError) as exc:
                raise PiriodUnavailable(f"cannot list usages: {_reason(exc)}") from None
            if answer.status == 401 and not refreshed:
                refreshed = True
                try:
                    token = self._token(token)
                except Exception as exc:
                    raise PiriodUnavailable(f"Piriod token unavailable: {exc}") from None
                continue
            if answer.status != 200:
                raise PiriodUnavailable(f"listing usages answered {_detail(answer)}")
            page = answer.document()
            results = page.get("results") if isinstance(page, dict) else None
            if not isinstance(results, list):
                raise PiriodUnavailable("listing usages returned an unexpected body")
            yield from (u for u in results if isinstance(u, dict))
            url = self._same_host(page.get("next"))
            pages += 1
            if pages > 10_000:
                raise PiriodUnavailable("listing usages did not end")

    def _same_host(self, link: Any) -> str | None:
        """The next page's path and query on our own base URL: the token goes nowhere else
        (and a proxy's http:// links do not matter)."""
        if not isinstance(link, str) or not link:
            return None
        base, parts = urlsplit(self._base), urlsplit(link)
        return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))


def usage_id_of(document: Any) -> int | None:
    """A usage's id, when it is a usable one: an integer from 1 to 2^63-1."""
    value = document.get("id") if isinstance(document, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LINE:
        return None
    return value


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return type(reason or exc).__name__


def _error_map(answer: Answer) -> dict[str, list[str]]:
    """Piriod's 400 body is a field-keyed map of lists; keep it, as lists of text."""
    document = answer.document()
    if not isinstance(document, dict):
        text = (answer.body or b"")[:500].decode("utf-8", "replace")
        return {"non_field_errors": [text or "HTTP 400 without an error map"]}
    errors: dict[str, list[str]] = {}
    for field, messages in document.items():
        items = messages if isinstance(messages, list) else [messages]
        errors[str(field)] = [m if isinstance(m, str) else _text(m) for m in items]
    return errors


def _text(value: Any) -> str:
    if isinstance(value, Decimal | int | float | bool) or value is None:
        return str(value)
    return repr(value)[:500]


def _detail(answer: Answer) -> str:
    document = answer.document()
    if isinstance(document, dict) and isinstance(document.get("detail"), str):
        return f"HTTP {answer.status}: {document['detail'][:300]}"
    return f"HTTP {answer.status}"


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value) if len(value) <= 9 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except OverflowError:
        return None
