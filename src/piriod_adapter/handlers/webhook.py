"""WebhookFunction: API Gateway HTTP API (payload 2.0) -> receive the delivery."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.utilities.typing import LambdaContext

from piriod_adapter.clock import Deadline
from piriod_adapter.observability import logger, metrics
from piriod_adapter.runtime import get_runtime
from piriod_adapter.webhook import Reply, receive_native, receive_source, text_headers

DEADLINE_RESERVE_SECONDS = 5.0  # stop starting posts this long before the function times out

app = APIGatewayHttpResolver()


def _response(reply: Reply) -> Response[Any]:
    metrics.add_metric(name=f"deliveries_{reply.status}", unit="Count", value=1)
    if reply.status >= 500:  # every 5xx is counted and logged with its cause
        metrics.add_metric(name="responses_5xx", unit="Count", value=1)
        logger.error("answered 5xx", extra={"status": reply.status, "cause": reply.cause})
    raw = reply.to_api_gateway()
    return Response(
        status_code=raw["statusCode"], content_type="application/json", body=raw["body"]
    )


@app.post("/v1/usages")
def native_usages() -> Response[Any]:
    deadline = Deadline.from_context(app.lambda_context, DEADLINE_RESERVE_SECONDS)
    return _response(receive_native(app.current_event.raw_event, get_runtime(), deadline))


@app.post("/v1/sources/<source>/usages")
def source_usages(source: str) -> Response[Any]:
    deadline = Deadline.from_context(app.lambda_context, DEADLINE_RESERVE_SECONDS)
    return _response(receive_source(app.current_event.raw_event, source, get_runtime(), deadline))


@app.not_found
def not_found(exc: Exception) -> Response[Any]:
    return _response(
        Reply(
            404,
            {"message": "not found: POST /v1/usages or POST /v1/sources/{source}/usages"},
        )
    )


@app.exception_handler(Exception)  # type: ignore[untyped-decorator]
def unexpected(exc: Exception) -> Response[Any]:
    logger.exception("unexpected error")
    return _response(
        Reply(
            500,
            {"message": "internal error; retry the delivery"},
            cause=f"unexpected {type(exc).__name__}",
        )
    )


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(text_headers(event), context)
