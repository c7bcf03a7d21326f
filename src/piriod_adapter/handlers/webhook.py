"""WebhookFunction: API Gateway HTTP API (payload 2.0) -> the delivery's answer.

Two routes only, so they are told apart here rather than by Powertools' event handler,
whose import alone costs about 100 ms of every cold start (`make bench`)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from piriod_adapter.clock import Deadline
from piriod_adapter.coldstart import releases_after_call
from piriod_adapter.observability import logger, metrics
from piriod_adapter.runtime import get_runtime, tracer_of
from piriod_adapter.snapstart import register
from piriod_adapter.webhook import NATIVE_PATH, answer

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

DEADLINE_RESERVE_SECONDS = 5.0  # stop starting posts this long before the function times out

register()  # SnapStart's runtime hooks (nothing outside the Lambda runtime)


@releases_after_call  # the collector, held back for the cold start (coldstart.py)
@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    deadline = Deadline.from_context(context, DEADLINE_RESERVE_SECONDS)
    # One span per delivery, continuing the sender's trace (its W3C traceparent header).
    with tracer_of(get_runtime).invocation(
        "delivery", _request_attributes(event), parent=_header(event, "traceparent")
    ) as span:
        if _native(event):
            _read_secrets_together()
        reply = answer(event, get_runtime, deadline)
        span.set(**{"http.response.status_code": reply.status})
        if reply.status >= 500:
            span.fail(reply.cause or f"HTTP {reply.status}")
    return reply.to_api_gateway()


def _native(event: dict[str, Any]) -> bool:
    http = (event.get("requestContext") or {}).get("http") or {}
    path = str(event.get("rawPath") or http.get("path") or "").rstrip("/")
    return path == NATIVE_PATH


def _read_secrets_together() -> None:
    """The signing secrets and the Piriod token, side by side (Runtime.read_secrets_together);
    anything that fails here is met again, and answered for, by the delivery itself."""
    with contextlib.suppress(Exception):  # the delivery's own reads report it
        get_runtime().read_secrets_together()


def _header(event: dict[str, Any], name: str) -> str | None:
    headers = event.get("headers")
    if not isinstance(headers, dict):
        return None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value
    return None


def _request_attributes(event: dict[str, Any]) -> dict[str, str | None]:
    http = (event.get("requestContext") or {}).get("http") or {}
    path = event.get("rawPath") or http.get("path")
    return {
        "http.request.method": str(http.get("method") or event.get("httpMethod") or ""),
        "url.path": str(path)[:200] if path else None,
        "webhook.id": (_header(event, "webhook-id") or "")[:200] or None,
    }
