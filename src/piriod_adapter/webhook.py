"""The webhook: authenticate a delivery, validate it, submit every record, answer (SPEC 3)."""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from piriod_adapter.clock import Deadline
from piriod_adapter.models import RecordResult
from piriod_adapter.observability import logger, metrics
from piriod_adapter.piriod import Tenant
from piriod_adapter.runtime import Runtime
from piriod_adapter.secrets import SecretUnavailable
from piriod_adapter.signatures import SignatureError, verify
from piriod_adapter.submit import Outcome, Submission
from piriod_adapter.validation import MAX_BODY_BYTES, BodyError, parse_native_body

NATIVE_SCOPE = "v1/usages"


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]

    def to_api_gateway(self) -> dict[str, Any]:
        return {
            "statusCode": self.status,
            "headers": {"content-type": "application/json"},
            "body": json.dumps(self.body, separators=(",", ":")),
        }


def raw_body(event: dict[str, Any]) -> bytes:
    """The body exactly as received (API Gateway may hand it over base64-encoded)."""
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except binascii.Error:
            raise BodyError(400, "body is marked base64 but is not valid base64") from None
    return body.encode("utf-8")


def lower_headers(event: dict[str, Any]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}


def receive_native(event: dict[str, Any], runtime: Runtime, deadline: Deadline) -> Reply:
    """POST /v1/usages: Standard Webhooks signature, native body, submit, 202/503."""
    try:
        raw = raw_body(event)
        if len(raw) > MAX_BODY_BYTES:
            raise BodyError(
                413, f"body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES} bytes (1 MiB)"
            )
    except BodyError as exc:
        return Reply(exc.status, exc.public())

    settings = runtime.settings
    try:
        keys = runtime.secrets.signing_keys(settings.webhook_secret_id)
    except SecretUnavailable as exc:
        logger.error(
            "webhook signing secret unavailable; refusing delivery", extra={"error": str(exc)}
        )
        return Reply(503, {"message": "signature cannot be checked right now; retry later"})
    try:
        message_id = verify(lower_headers(event), raw, keys, now=time.time())
    except SignatureError as exc:
        logger.warning("delivery refused", extra={"reason": str(exc)})
        return Reply(401, {"message": f"webhook signature verification failed: {exc}"})

    try:
        records = parse_native_body(raw)
    except BodyError as exc:
        logger.info("delivery invalid", extra={"status": exc.status, "problems": len(exc.problems)})
        return Reply(exc.status, exc.public())

    tenant = Tenant(settings.piriod_workspace_id, settings.piriod_test_mode)
    submissions = [
        Submission(
            index=index,
            line=record.subscription_line,
            date_time=record.date_time,
            quantity=record.quantity,
            key=record.idempotency_key or f"{message_id}:{index}",
            scope=NATIVE_SCOPE,
            tenant=tenant,
        )
        for index, record in enumerate(records)
    ]
    outcomes = runtime.submitter.submit_all(
        submissions, deadline, runtime.queue.store, settings.post_concurrency
    )
    return summarize(message_id, outcomes)


def summarize(message_id: str, outcomes: list[Outcome]) -> Reply:
    """202 when every record reached a state; 503 when any could be neither posted nor stored."""
    results = []
    counts: Counter[str] = Counter()
    for index, outcome in enumerate(outcomes):
        counts[outcome.status.value if outcome.status else "not_stored"] += 1
        if outcome.ambiguous:
            counts["ambiguous"] += 1
            logger.warning(
                "post outcome unseen; queued as ambiguous",
                extra={
                    "webhook_id": message_id,
                    "index": index,
                    "error": outcome.failure and outcome.failure.error,
                },
            )
        if outcome.status is not None:
            results.append(
                RecordResult(
                    index=index,
                    status=outcome.status,
                    usage_id=outcome.usage_id,
                    errors=outcome.errors,
                    ambiguous=outcome.ambiguous,
                ).public()
            )
        else:
            results.append({"index": index, "status": "not_stored", "message": outcome.reason})
    for name, count in counts.items():
        metrics.add_metric(name=f"records_{name}", unit="Count", value=count)
    logger.info("delivery handled", extra={"webhook_id": message_id, "outcomes": dict(counts)})
    if counts["not_stored"]:
        return Reply(
            503,
            {
                "message": "some records could be neither posted nor stored; retry the whole "
                "delivery (records already handled will be reported as duplicates)",
                "results": results,
            },
        )
    return Reply(202, {"results": results})
