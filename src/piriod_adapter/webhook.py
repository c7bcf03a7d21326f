"""The webhook: authenticate a delivery, validate it, submit every record, answer (SPEC 3).

Every answer is definite (README "What each answer means"): a 4xx refuses the whole delivery
with nothing claimed, posted or stored; a 202 means every record is posted, a duplicate of a
stored state, queued, or rejected and kept; a 503 means a store is down and some record is in
neither Piriod nor a queue, so the sender must retry the whole delivery.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from piriod_adapter.clock import Deadline
from piriod_adapter.models import RecordResult, Tenant, Usage
from piriod_adapter.observability import logger, metrics
from piriod_adapter.runtime import Runtime
from piriod_adapter.secrets import SecretUnavailable
from piriod_adapter.signatures import SignatureError, verify_standard
from piriod_adapter.submit import Outcome, Submission
from piriod_adapter.validation import BodyError, check_size, parse_native_body


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    cause: str | None = None  # why a 5xx was answered: logged and counted, not sent

    def to_api_gateway(self) -> dict[str, Any]:
        return {
            "statusCode": self.status,
            "headers": {"content-type": "application/json"},
            "body": json.dumps(self.body, separators=(",", ":")),
        }


def raw_body(event: dict[str, Any]) -> bytes:
    """The body exactly as received (API Gateway may hand it over base64-encoded)."""
    body = event.get("body")
    if body is None:
        return b""
    if not isinstance(body, str):
        raise BodyError(400, "body must be text (or base64 text)")
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise BodyError(400, "body is marked base64 but is not valid base64") from None
    try:
        return body.encode("utf-8")
    except UnicodeEncodeError:
        raise BodyError(400, "body is not valid UTF-8 text") from None


def lower_headers(event: dict[str, Any]) -> dict[str, str]:
    headers = event.get("headers")
    if not isinstance(headers, dict):
        return {}
    return {str(k).lower(): str(v) for k, v in headers.items()}


def receive_native(event: dict[str, Any], runtime: Runtime, deadline: Deadline) -> Reply:
    """POST /v1/usages: Standard Webhooks signature, native body, submit, 202/503."""
    try:
        raw = raw_body(event)
        check_size(raw)
    except BodyError as exc:
        return Reply(exc.status, exc.public())

    settings = runtime.settings
    try:
        keys = runtime.secrets.standard_keys(settings.webhook_secret_id)
    except SecretUnavailable as exc:
        return unavailable(str(exc))
    try:
        message_id = verify_standard(lower_headers(event), raw, keys, now=time.time())
    except SignatureError as exc:
        return refused(str(exc))

    try:
        usages = parse_native_body(raw, message_id)
    except BodyError as exc:
        logger.info("delivery invalid", extra={"status": exc.status, "problems": len(exc.problems)})
        return Reply(exc.status, exc.public())
    tenant = Tenant(workspace=settings.piriod_workspace_id, test_mode=settings.piriod_test_mode)
    return submit_and_answer(runtime, usages, tenant, deadline, delivery=message_id)


def unavailable(cause: str) -> Reply:
    """The signature (or a source profile) cannot be checked right now: fail closed."""
    logger.error("cannot authenticate deliveries right now; refusing", extra={"error": cause})
    return Reply(
        503, {"message": "signature cannot be checked right now; retry later"}, cause=cause
    )


def refused(reason: str) -> Reply:
    logger.warning("delivery refused", extra={"reason": reason})
    metrics.add_metric(name="signature_failures", unit="Count", value=1)
    return Reply(401, {"message": f"webhook signature verification failed: {reason}"})


def submit_and_answer(
    runtime: Runtime,
    usages: Sequence[Usage],
    tenant: Tenant,
    deadline: Deadline,
    *,
    delivery: str,
) -> Reply:
    """Submit every record of a valid delivery and answer for all of them."""
    submissions = [
        Submission(index=index, usage=usage, tenant=tenant) for index, usage in enumerate(usages)
    ]
    outcomes = runtime.submitter.submit_all(
        submissions, deadline, runtime.queue.store, runtime.settings.post_concurrency
    )
    return summarize(delivery, outcomes)


def summarize(delivery: str, outcomes: list[Outcome]) -> Reply:
    """202 when every record reached a state; 503 when any could be neither posted nor stored."""
    results = []
    counts: Counter[str] = Counter()
    for index, outcome in enumerate(outcomes):
        status = outcome.status.value if outcome.status else "not_stored"
        counts[status] += 1
        if outcome.ambiguous:
            counts["ambiguous"] += 1
            logger.warning(
                "post outcome unseen; queued as ambiguous",
                extra={
                    "delivery": delivery[:200],
                    "index": index,
                    "error": outcome.failure and outcome.failure.error,
                },
            )
        results.append(
            RecordResult(
                index=index,
                status=outcome.status or "not_stored",
                usage_id=outcome.usage_id,
                errors=outcome.errors,
                message=outcome.reason if outcome.status is None else None,
            ).public()
        )
    for name, count in counts.items():
        metrics.add_metric(name=f"records_{name}", unit="Count", value=count)
    logger.info("delivery handled", extra={"delivery": delivery[:200], "outcomes": dict(counts)})
    if counts["not_stored"]:
        reasons = sorted({o.reason or "?" for o in outcomes if o.status is None})
        return Reply(
            503,
            {
                "message": "some records could be neither posted nor stored; retry the whole "
                "delivery (records already handled will be reported as duplicates)",
                "results": results,
            },
            cause="records not stored: " + "; ".join(reasons)[:500],
        )
    return Reply(202, {"results": results})
