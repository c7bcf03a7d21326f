"""Piriod's usages API over one pooled urllib3 client (SPEC section 4).

Only a definite refusal means "not created": a connection that never reached Piriod, or a
`400`, `401`, `403`, `404`, `405` or `429` (a throttle refuses before the view runs). Every
other answer (an unexpected 2xx, a 2xx without a usable id, any 5xx, `503` with
`Retry-After` included, a 3xx, a broken or timed-out response) may have stored the usage:
it is AMBIGUOUS, and is settled by lookup before any second post. A `201` is CREATED
whatever its body says (its id is kept when the body has a usable one).

Every answer is bounded in time (the body is read against the post's own deadline, so a body
sent a byte a second cannot hold the function) and in size, and its text is cleaned (bytes
that are not UTF-8 and lone surrogates are replaced), so that nothing Piriod writes can stop
a record from being stored.
"""

import email.utils
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit, urlunsplit

import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError

from piriod_adapter import jsondoc
from piriod_adapter.clock import Deadline
from piriod_adapter.models import (
    MAX_LINE,
    FailureKind,
    Tenant,
    Usage,
    clean_text,
    parse_rfc3339,
    utc_text,
)
from piriod_adapter.tracing import tracer

CONNECT_RETRIES = 1  # only for failures where the request surely never reached Piriod
CONNECT_RETRY_PAUSE = 0.05
THROTTLE_RETRIES = 2  # 429 with a Retry-After that fits in the time left
MIN_ATTEMPT_SECONDS = 0.5
MAX_RESPONSE_BYTES = 1024 * 1024  # Piriod's answers are small; a larger one is not Piriod's
READ_CHUNK = 64 * 1024
LOOKUP_PAGES = 10  # pages of 100 a settling lookup reads; past it the record stays ambiguous
DEFINITE_REFUSALS = frozenset({401, 403, 404, 405, 429})


class PostResult(NamedTuple):
    """How one post ended: created (`failure` None), or why not, in the queue message's words
    (models.FailureKind): REJECTED (400: Piriod refused the record itself), TRANSIENT (surely
    not created: may be posted again) or AMBIGUOUS (may have been created: look it up before
    posting again)."""

    failure: FailureKind | None
    status: int | None = None
    usage_id: int | None = None
    errors: dict[str, list[str]] | None = None
    error: str | None = None
    attempted: bool = True  # False: nothing was sent (no token, no time left)
    token_refused: bool = False  # 401, or a token that cannot be sent: the token alarm counts it

    @classmethod
    def posted(cls, usage_id: int | None, status: int | None = 201) -> "PostResult":
        """Piriod has the usage (its id when known)."""
        return cls(None, status, usage_id=usage_id)

    @property
    def created(self) -> bool:
        return self.failure is None


class DeleteResult(NamedTuple):
    """How one DELETE ended: the usage is gone (`failure` None: 204, or 404, already gone),
    surely still there (TRANSIENT: a definite refusal, or never sent), or unknown (AMBIGUOUS:
    no answer, a 5xx, a 3xx; Piriod is asked before anything is sent again)."""

    failure: FailureKind | None
    status: int | None = None
    error: str | None = None
    attempted: bool = True
    token_refused: bool = False

    @property
    def gone(self) -> bool:
        return self.failure is None


class PiriodUnavailable(RuntimeError):
    """A read (lookup) could not be completed; nothing is known."""


TokenSource = Callable[[str | None], str]  # called with the refused token to force a re-read


class Answer(NamedTuple):
    status: int
    headers: Any
    body: bytes | None  # None: larger than MAX_RESPONSE_BYTES, or not complete in time

    def document(self) -> Any:
        """The body as JSON (bytes that are not UTF-8 replaced), or None when it is not
        (bounded) JSON."""
        if self.body is None:
            return None
        try:
            return jsondoc.loads(self.body.decode("utf-8", "replace").encode())
        except (jsondoc.JsonError, UnicodeError):
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
            total=min(self._connect_timeout + self._read_timeout, left),
            connect=min(self._connect_timeout, left),
            read=min(self._read_timeout, left),
        )

    def _request(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: Any
    ) -> Answer:
        """One request, its body read up to MAX_RESPONSE_BYTES (raises urllib3 HTTPError)."""
        if not tracer.enabled:
            return self._send(method, url, headers, body, timeout)
        parts = urlsplit(url)  # the query (a lookup's filters) and the headers stay out
        with tracer.span(
            f"Piriod {method} {parts.path}",
            {
                "http.request.method": method,
                "server.address": parts.hostname or "",
                "server.port": parts.port,
                "url.path": parts.path,
                "peer.service": "Piriod",
            },
            kind="client",
        ) as span:
            answer = self._send(method, url, headers, body, timeout)
            span.set(**{"http.response.status_code": answer.status})
            if answer.status >= 400:
                span.set(**{"error.type": str(answer.status)})
                span.fail(f"HTTP {answer.status}")
            return answer

    def _send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: Any
    ) -> Answer:
        """One request; its body is read until it is complete, MAX_RESPONSE_BYTES is passed
        or the request's own time is up (then it is None: not complete)."""
        until = time.monotonic() + (timeout.total if timeout.total is not None else 0)
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
            data = bytearray()
            complete = False
            try:
                while len(data) <= MAX_RESPONSE_BYTES and time.monotonic() < until:
                    chunk = response.read1(READ_CHUNK)
                    if not chunk:
                        complete = True
                        break
                    data += chunk
            except (HTTPError, OSError):
                pass  # the status is known; the body is not complete
            if not complete:
                response.close()  # do not reuse a connection with unread data on it
            return Answer(response.status, response.headers, bytes(data) if complete else None)
        finally:
            response.release_conn()

    def post_usage(self, usage: Usage, tenant: Tenant, deadline: Deadline) -> PostResult:
        """POST /usages/ once, with retries only where SPEC section 4 allows them."""
        body = usage.piriod_body()
        try:
            token = self._token(None)
        except Exception as exc:  # the token secret cannot be read: nothing was sent
            return PostResult(
                FailureKind.TRANSIENT, error=f"Piriod token unavailable: {exc}", attempted=False
            )
        unusable = _unsendable(token, tenant)
        if unusable is not None:
            return unusable
        token_refreshed = False
        connect_retries = CONNECT_RETRIES
        throttle_retries = THROTTLE_RETRIES
        while True:
            timeout = self._timeout(deadline)
            if timeout is None:
                return PostResult(
                    FailureKind.TRANSIENT,
                    error="no time left to post before timeout",
                    attempted=False,
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
                    FailureKind.TRANSIENT, error=f"cannot connect to Piriod: {_reason(exc)}"
                )
            except (HTTPError, OSError, ValueError) as exc:
                # timeout, reset, protocol error: it may have landed
                return PostResult(
                    FailureKind.AMBIGUOUS, error=f"no answer from Piriod: {_reason(exc)}"
                )

            status = answer.status
            if status == 201:  # created, whatever the body says (or however slowly it comes)
                return PostResult.posted(usage_id_of(answer.document()))
            if status == 400:
                return PostResult(FailureKind.REJECTED, status=400, errors=_error_map(answer))
            if status == 401 and not token_refreshed:
                token_refreshed = True
                try:
                    token = self._token(token)  # it may have been rotated: read it again, once
                except Exception as exc:
                    return PostResult(
                        FailureKind.TRANSIENT,
                        status=401,
                        error=f"token re-read failed: {exc}",
                        token_refused=True,
                    )
                unusable = _unsendable(token, tenant)
                if unusable is not None:
                    return unusable
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
                return PostResult(FailureKind.TRANSIENT, status=status, error=_detail(answer))
            if status in DEFINITE_REFUSALS:
                return PostResult(
                    FailureKind.TRANSIENT,
                    status=status,
                    error=_detail(answer),
                    token_refused=status == 401,
                )
            return PostResult(
                FailureKind.AMBIGUOUS,
                status=status,
                error=f"{_detail(answer)}: not a definite refusal, it may have been stored",
            )

    def delete_usage(self, usage_id: int, tenant: Tenant, deadline: Deadline) -> DeleteResult:
        """DELETE /usages/{id}/ once (a correction, SPEC 10), with retries only where the
        request surely never reached Piriod or Piriod said to (429 with Retry-After)."""
        try:
            token = self._token(None)
        except Exception as exc:
            return DeleteResult(
                FailureKind.TRANSIENT, error=f"Piriod token unavailable: {exc}", attempted=False
            )
        unusable = _unsendable(token, tenant)
        if unusable is not None:
            return DeleteResult(
                FailureKind.TRANSIENT,
                error=unusable.error,
                attempted=False,
                token_refused=unusable.token_refused,
            )
        refreshed, connect_retries, throttle_retries = False, CONNECT_RETRIES, THROTTLE_RETRIES
        while True:
            timeout = self._timeout(deadline)
            if timeout is None:
                return DeleteResult(
                    FailureKind.TRANSIENT, error="no time left to delete", attempted=False
                )
            url = f"{self._base}/usages/{usage_id}/"
            try:
                answer = self._request(
                    "DELETE", url, self._headers(token, tenant, body=False), None, timeout
                )
            except ConnectTimeoutError as exc:  # refused / unreachable: never reached Piriod
                if connect_retries > 0 and deadline.remaining() > self._connect_timeout:
                    connect_retries -= 1
                    self._sleep(CONNECT_RETRY_PAUSE)
                    continue
                return DeleteResult(FailureKind.TRANSIENT, error=f"cannot connect: {_reason(exc)}")
            except (HTTPError, OSError, ValueError) as exc:  # it may have been deleted
                return DeleteResult(
                    FailureKind.AMBIGUOUS, error=f"no answer from Piriod: {_reason(exc)}"
                )
            status = answer.status
            if 200 <= status < 300 or status == 404:  # deleted now, or gone already
                return DeleteResult(None, status)
            if status == 401 and not refreshed:
                refreshed = True
                try:
                    token = self._token(token)
                except Exception as exc:
                    return DeleteResult(
                        FailureKind.TRANSIENT,
                        status=401,
                        error=f"token re-read failed: {exc}",
                        token_refused=True,
                    )
                if _unsendable(token, tenant) is not None:
                    return DeleteResult(
                        FailureKind.TRANSIENT, error="token cannot be sent", token_refused=True
                    )
                continue
            wait = _retry_after(answer.headers.get("Retry-After"))
            if status == 429:
                budget = deadline.remaining() - self._connect_timeout - self._read_timeout
                if throttle_retries > 0 and wait is not None and wait <= budget:
                    throttle_retries -= 1
                    self._sleep(wait)
                    continue
            if status == 400 or status in DEFINITE_REFUSALS:
                return DeleteResult(
                    FailureKind.TRANSIENT,
                    status=status,
                    error=_detail(answer),
                    token_refused=status == 401,
                )
            return DeleteResult(
                FailureKind.AMBIGUOUS,
                status=status,
                error=f"{_detail(answer)}: not a definite refusal, it may have been deleted",
            )

    def usage_listed(
        self, usage_id: int, line: int, instant: datetime, tenant: Tenant, deadline: Deadline
    ) -> bool:
        """Whether Piriod still lists usage `usage_id` (of `line`, at `instant`): the usages
        of the line within a second of the instant (range filters, checked again here), every
        page read. Raises PiriodUnavailable, also past LOOKUP_PAGES pages: nothing is
        proven then."""
        filters = {
            "subscription_line": line,
            "date_time__gte": utc_text(instant - timedelta(seconds=1)),
            "date_time__lte": utc_text(instant + timedelta(seconds=1)),
        }
        return any(
            usage_id_of(document) == usage_id
            for document in self.list_usages(filters, tenant, deadline, LOOKUP_PAGES)
        )

    def find_usages(self, usage: Usage, tenant: Tenant, deadline: Deadline) -> "list[Listed]":
        """Usages Piriod lists for this line, instant and quantity (to settle an unseen post).
        Raises PiriodUnavailable, also past LOOKUP_PAGES pages."""
        query = {
            "subscription_line": usage.subscription_line,
            "date_time": usage.date_time_text,
            "quantity": usage.quantity_text,
        }
        return [Listed.read(u) for u in self.list_usages(query, tenant, deadline, LOOKUP_PAGES)]

    def recent_usages(
        self, line: int, since: float, tenant: Tenant, deadline: Deadline
    ) -> "list[Listed]":
        """Every usage of a line created at `since` or later, newest first (for a filter that
        may compare at a precision of its own and miss a usage). Raises PiriodUnavailable,
        also past LOOKUP_PAGES pages: nothing is proven then."""
        query = {"subscription_line": line, "ordering": "-created"}
        found: list[Listed] = []
        previous: float | None = None
        ordered = True
        for document in self.list_usages(query, tenant, deadline, LOOKUP_PAGES):
            listed = Listed.read(document)
            created = listed.created
            if created is None or (previous is not None and created > previous):
                ordered = False  # the ordering is not applied: every page must be read
            previous = created if created is not None else previous
            if ordered and created is not None and created < since:
                break  # older from here on
            found.append(listed)
        return found

    def list_usages(
        self,
        filters: dict[str, Any],
        tenant: Tenant,
        deadline: Deadline,
        max_pages: int = 10_000,
    ) -> Iterator[dict[str, Any]]:
        """Every listed usage matching `filters` (each a JSON object, as Piriod wrote it: a
        caller checks its id and fields), following pagination for at most `max_pages`
        pages. Raises PiriodUnavailable."""
        url: str | None = f"{self._base}/usages/?" + urlencode({**filters, "page_size": 100})
        try:
            token = self._token(None)
        except Exception as exc:
            raise PiriodUnavailable(f"Piriod token unavailable: {exc}") from None
        if _unsendable(token, tenant) is not None:
            raise PiriodUnavailable("Piriod token cannot be sent as a header")
        refreshed = False
        pages = 0
        while url is not None:
            if pages >= max_pages:
                raise PiriodUnavailable(f"listing usages did not end within {max_pages} pages")
            timeout = self._timeout(deadline)
            if timeout is None:
                raise PiriodUnavailable("no time left to ask Piriod")
            try:
                answer = self._request(
                    "GET", url, self._headers(token, tenant, body=False), None, timeout
                )
            except (HTTPError, OSError, ValueError) as exc:
                raise PiriodUnavailable(f"cannot list usages: {_reason(exc)}") from None
            if answer.status == 401 and not refreshed:
                refreshed = True
                try:
                    token = self._token(token)
                except Exception as exc:
                    raise PiriodUnavailable(f"Piriod token unavailable: {exc}") from None
                if _unsendable(token, tenant) is not None:
                    raise PiriodUnavailable("Piriod token cannot be sent as a header")
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

    def _same_host(self, link: Any) -> str | None:
        """The next page's path and query on our own base URL: the token goes nowhere else
        (and a proxy's http:// links do not matter)."""
        if not isinstance(link, str) or not link:
            return None
        base, parts = urlsplit(self._base), urlsplit(link)
        return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))


class Listed(NamedTuple):
    """A usage as Piriod lists it, each field read at the precision Piriod wrote it with
    (None: missing or unreadable)."""

    usage_id: int | None
    subscription_line: int | None
    date_time: datetime | None
    time_digits: int  # the fraction digits of its date_time (3: milliseconds)
    quantity: Decimal | None
    created: float | None

    @classmethod
    def read(cls, document: dict[str, Any]) -> "Listed":
        line = document.get("subscription_line")
        text = document.get("date_time")
        instant: datetime | None = None
        digits = 0
        if isinstance(text, str) and len(text) <= 64:
            try:
                instant = parse_rfc3339(text)
                _, dot, rest = text.partition(".")
                digits = len(rest) - len(rest.lstrip("0123456789")) if dot else 0
            except ValueError:
                instant = None
        return cls(
            usage_id=usage_id_of(document),
            subscription_line=line
            if isinstance(line, int) and not isinstance(line, bool)
            else None,
            date_time=instant,
            time_digits=digits,
            quantity=_listed_quantity(document.get("quantity")),
            created=_created(document.get("created")),
        )

    def may_be(self, usage: Usage) -> bool | None:
        """Whether this listed usage may be `usage` posted: its line, and its instant and
        quantity equal at the precision they are listed with (a quantity as a binary float
        or with fewer places, a time in milliseconds). False: surely another record; None:
        a field cannot be read, so it may be."""
        return self.may_be_at(usage.subscription_line, usage.date_time, usage.quantity)

    def may_be_at(self, line: int | None, at: datetime, quantity: Decimal) -> bool | None:
        """`may_be` for a usage of `line` at `at` with `quantity`."""
        if self.subscription_line is None or self.date_time is None or self.quantity is None:
            return None
        if self.subscription_line != line:
            return False
        unit = Decimal(1).scaleb(-min(self.time_digits, 6))
        apart = abs(Decimal(str((self.date_time - at).total_seconds())))
        if apart != 0 and apart >= unit:
            return False
        return _same_quantity(self.quantity, quantity)


def _same_quantity(listed: Decimal, sent: Decimal) -> bool:
    """`listed` is `sent` as Piriod may store it: exactly, as the nearest binary float, or
    rounded (or cut) to the places it is listed with."""
    if listed == sent:
        return True
    try:
        if float(listed) == float(sent):
            return True
    except OverflowError:
        return False
    exponent = listed.as_tuple().exponent
    sent_exponent = sent.as_tuple().exponent
    if not isinstance(exponent, int) or not isinstance(sent_exponent, int):
        return False
    if exponent <= sent_exponent:
        return False  # listed with as many places as were sent, and different
    return abs(listed - sent) < Decimal(1).scaleb(exponent)


def _listed_quantity(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | Decimal):
        number = Decimal(value)
    elif isinstance(value, str) and len(value) <= 100:
        try:
            number = Decimal(value.strip())
        except ArithmeticError:
            return None
    else:
        return None
    return number if number.is_finite() else None


def _created(value: object) -> float | None:
    """Piriod's `created`, when it is a time with an offset (a naive time is not read as
    ours or anyone's: its zone is unknown)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        return None if parsed.tzinfo is None else parsed.timestamp()
    except (ValueError, OverflowError):
        return None


def _header_safe(value: str) -> bool:
    return bool(value) and all(" " <= c <= "~" for c in value)


def _unsendable(token: str, tenant: Tenant) -> PostResult | None:
    """A token or workspace that cannot be an HTTP header value (a newline, a character
    beyond ASCII): nothing is sent; a token counts towards the token alarm."""
    if not isinstance(token, str) or not _header_safe(token):
        return PostResult(
            FailureKind.TRANSIENT,
            error="the Piriod token cannot be sent as a header value; fix the token secret",
            attempted=False,
            token_refused=True,
        )
    if not _header_safe(tenant.workspace):
        return PostResult(
            FailureKind.TRANSIENT,
            error="the workspace id cannot be sent as a header value; fix PIRIOD_WORKSPACE_ID",
            attempted=False,
        )
    return None


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
        return {"non_field_errors": [clean_text(text) or "HTTP 400 without an error map"]}
    errors: dict[str, list[str]] = {}
    for field, messages in document.items():
        items = messages if isinstance(messages, list) else [messages]
        errors[clean_text(str(field))] = [
            clean_text(m) if isinstance(m, str) else _text(m) for m in items
        ]
    return errors


def _text(value: Any) -> str:
    if isinstance(value, Decimal | int | float | bool) or value is None:
        return str(value)
    return clean_text(repr(value)[:500])


def _detail(answer: Answer) -> str:
    document = answer.document()
    if isinstance(document, dict) and isinstance(document.get("detail"), str):
        return f"HTTP {answer.status}: {clean_text(document['detail'][:300])}"
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
