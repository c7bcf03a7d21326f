"""The webhook: authenticate a delivery, validate it, submit every record, answer (SPEC 3).

Every answer is definite (docs/senders.md, "The answer"): a 4xx refuses the whole delivery
with nothing claimed, posted or stored; a 202 means every record is posted, a duplicate of a
stored state, queued, or rejected and kept; a 503 means a store is down and some record is in
neither Piriod nor a queue, so the sender must retry the whole delivery.
"""

import base64
import binascii
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from piriod_adapter.clock import Deadline
from piriod_adapter.lifecycle import Fate, Outcome, Submission
from piriod_adapter.models import (
    ANSWER_ERRORS_BYTES,
    Answered,
    RecordResult,
    Refusal,
    Tenant,
    Usage,
    cut_errors,
)
from piriod_adapter.observability import count_records, logger, metrics
from piriod_adapter.runtime import Runtime
from piriod_adapter.secrets import SecretUnavailable
from piriod_adapter.signatures import (
    SignatureError,
    verify_hmac_hex,
    verify_standard,
    verify_stripe,
)
from piriod_adapter.validation import BodyError, check_size, decode_json, parse_native_body

if TYPE_CHECKING:
    from piriod_adapter.aggregate import Aggregate
    from piriod_adapter.corrections import CorrectionsAnswered
    from piriod_adapter.counting import Counter as Counter_
    from piriod_adapter.counting import Place
    from piriod_adapter.lifecycle import FailureSink, Placement
    from piriod_adapter.models import QueuedRecord
    from piriod_adapter.sources import Profile


class Reply(NamedTuple):
    """An answer. Its body is one of the models that openapi.yaml is generated from, so what
    is sent is what the sender's contract describes."""

    status: int
    body: "Refusal | Answered | CorrectionsAnswered"
    cause: str | None = None  # why a 5xx was answered: logged and counted, not sent

    def to_api_gateway(self) -> dict[str, Any]:
        return {
            "statusCode": self.status,
            "headers": {"content-type": "application/json"},
            "body": self.body.model_dump_json(exclude_defaults=True),
            "isBase64Encoded": False,
        }


def refusal(status: int, message: str, cause: str | None = None) -> Reply:
    return Reply(status, Refusal(message=message), cause)


NATIVE_PATH = "/v1/usages"
CORRECTIONS_PATH = "/v1/corrections"
NOT_FOUND = "not found: POST /v1/usages, POST /v1/sources/{source}/usages or POST /v1/corrections"


def answer(event: dict[str, Any], runtime: Callable[[], Runtime], deadline: Deadline) -> Reply:
    """Route a request to its receiver and answer it; every 5xx is counted and logged with
    its cause, and an unexpected error (a defect) is a 500, never a crash."""
    try:
        reply = route(text_headers(event), runtime, deadline)
    except Exception as exc:
        logger.exception("unexpected error")
        reply = refusal(
            500, "internal error; retry the delivery", cause=f"unexpected {type(exc).__name__}"
        )
    metrics.add_metric(name=f"deliveries_{reply.status}", unit="Count", value=1)
    if reply.status >= 500:
        metrics.add_metric(name="responses_5xx", unit="Count", value=1)
        logger.error("answered 5xx", extra={"status": reply.status, "cause": reply.cause})
    return reply


def route(event: dict[str, Any], runtime: Callable[[], Runtime], deadline: Deadline) -> Reply:
    """POST /v1/usages, POST /v1/sources/{source}/usages, or 404."""
    http = (event.get("requestContext") or {}).get("http") or {}
    method = str(http.get("method") or event.get("httpMethod") or "").upper()
    path = str(event.get("rawPath") or http.get("path") or "").rstrip("/")
    parts = path.split("/")
    if method == "POST" and path == NATIVE_PATH:
        return receive_native(event, runtime(), deadline)
    if method == "POST" and path == CORRECTIONS_PATH:
        return receive_corrections(event, runtime(), deadline)
    if (
        method == "POST"
        and len(parts) == 5
        and parts[1:3] == ["v1", "sources"]
        and parts[4] == "usages"
    ):
        return receive_source(event, parts[3], runtime(), deadline)
    return refusal(404, NOT_FOUND)


def raw_body(event: dict[str, Any]) -> bytes:
    """The body exactly as received (API Gateway may hand it over base64-encoded)."""
    body = event.get("body")
    if body is None:
        return b""
    if not isinstance(body, str):
        raise BodyError(400, "body must be text (or base64 text)")
    if event.get("isBase64Encoded") is True:
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise BodyError(400, "body is marked base64 but is not valid base64") from None
    try:
        return body.encode("utf-8")
    except UnicodeEncodeError:
        raise BodyError(400, "body is not valid UTF-8 text") from None


def text_headers(event: dict[str, Any]) -> dict[str, Any]:
    """The event with every header a string, as API Gateway sends them (a hand-written event
    for `sam local invoke` may hold numbers, which Powertools' response code cannot read)."""
    headers = event.get("headers")
    if isinstance(headers, dict) and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        return {**event, "headers": {str(k): str(v) for k, v in headers.items()}}
    return event


def lower_headers(event: dict[str, Any]) -> dict[str, str]:
    headers = event.get("headers")
    if not isinstance(headers, dict):
        return {}
    return {str(k).lower(): str(v) for k, v in headers.items()}


def authenticate_native(event: dict[str, Any], runtime: Runtime) -> tuple[bytes, str] | Reply:
    """The native routes' raw body and webhook-id, once its size and its Standard Webhooks
    signature (the native signing secrets) pass; otherwise the refusal."""
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
    headers = lower_headers(event)
    try:
        message_id = first_passing(
            lambda now: verify_standard(headers, raw, keys, now=now),
            settings.signature_clocks(time.time()),
        )
    except SignatureError as exc:
        return refused(str(exc))
    return raw, message_id


def receive_native(event: dict[str, Any], runtime: Runtime, deadline: Deadline) -> Reply:
    """POST /v1/usages: Standard Webhooks signature, native body, submit, 202/503."""
    passed = authenticate_native(event, runtime)
    if isinstance(passed, Reply):
        return passed
    raw, message_id = passed
    settings = runtime.settings

    try:
        usages = parse_native_body(raw, message_id)
    except BodyError as exc:
        logger.info("delivery invalid", extra={"status": exc.status, "problems": len(exc.problems)})
        return Reply(exc.status, exc.public())
    tenant = Tenant(workspace=settings.piriod_workspace_id, test_mode=settings.piriod_test_mode)
    return submit_and_answer(runtime, usages, tenant, deadline, delivery=message_id)


def receive_corrections(event: dict[str, Any], runtime: Runtime, deadline: Deadline) -> Reply:
    """POST /v1/corrections (SPEC 10): the native route's signature, then each correction
    accepted on its key and applied (corrections.py); 202, or 503 when a store is down."""
    from piriod_adapter.corrections import (
        CorrectionsAnswered,
        apply_corrections,
        read_corrections,
    )
    from piriod_adapter.observability import count_corrections

    passed = authenticate_native(event, runtime)
    if isinstance(passed, Reply):
        return passed
    raw, message_id = passed
    try:
        entries = read_corrections(runtime, raw)
    except BodyError as exc:
        logger.info("corrections invalid", extra={"status": exc.status})
        return Reply(exc.status, exc.public())
    done = apply_corrections(runtime, entries, deadline)
    results = [
        one.result(n, entry.correction_id)
        for n, (entry, one) in enumerate(zip(entries, done, strict=True))
    ]
    counts: Counter[str] = Counter(one.status for one in done)

    count_corrections(counts)
    logger.info(
        "corrections handled", extra={"delivery": message_id[:200], "outcomes": dict(counts)}
    )
    if counts["not_stored"]:
        reasons = sorted({one.reason or "?" for one in done if one.status == "not_stored"})
        return Reply(
            503,
            CorrectionsAnswered(
                message="some corrections could be neither applied nor kept; retry the whole "
                "delivery (corrections already accepted will be reported as duplicates)",
                results=results,
            ),
            cause="corrections not stored: " + "; ".join(reasons)[:500],
        )
    return Reply(202, CorrectionsAnswered(results=results))


def receive_source(event: dict[str, Any], name: str, runtime: Runtime, deadline: Deadline) -> Reply:
    """POST /v1/sources/{source}/usages: the source's profile says how the delivery is signed
    and how its payload maps onto usages; from there on, it is the native route's path."""
    from piriod_adapter.sources import Mapper, SourcesUnavailable

    try:
        raw = raw_body(event)
        check_size(raw)
    except BodyError as exc:
        return Reply(exc.status, exc.public())
    try:
        profile = runtime.sources.profile(name)
    except SourcesUnavailable as exc:
        if exc.source is not None:
            # Only this source's profile is at fault; the catalog logged which field, once
            # per cache period, so the cause here names the source only.
            return refusal(
                503,
                f"source {name!r} is not configured correctly; retry later",
                cause=f"source {name!r}: its profile does not validate",
            )
        return refusal(
            503, "third-party sources are not configured correctly; retry later", cause=str(exc)
        )
    if profile is None:
        return refusal(404, f"no source named {name[:64]!r} is configured")
    try:
        delivery, signed_at = authenticate_source(name, profile, lower_headers(event), raw, runtime)
    except SecretUnavailable as exc:
        return unavailable(str(exc))
    except SignatureError as exc:
        return refused(str(exc), source=name)
    try:
        mapped = Mapper(name, profile).map(decode_json(raw))
    except BodyError as exc:
        logger.info(
            "delivery invalid",
            extra={"source": name, "status": exc.status, "problems": len(exc.problems)},
        )
        return Reply(exc.status, exc.public())
    settings = runtime.settings
    tenant = Tenant(
        workspace=settings.piriod_workspace_id,
        test_mode=settings.piriod_test_mode or profile.test_mode,
    )
    if profile.aggregate is not None:  # counted into windows, posted when they close
        return count_and_answer(
            runtime.windows,
            runtime.submitter.place,
            runtime.queue.place_failed,
            runtime.settings.idempotency_ttl_days,
            [record.usage for record in mapped],
            tenant,
            deadline,
            profile.aggregate,
            delivery=delivery,
            source=name,
            event_ids=[record.event_id for record in mapped],
            now=signed_at,
        )
    # A filter that keeps no record is answered 202 with no results, on the same path.
    return submit_and_answer(
        runtime,
        [record.usage for record in mapped],
        tenant,
        deadline,
        delivery=delivery,
        source=name,
        event_ids=[record.event_id for record in mapped],
    )


def authenticate_source(
    name: str, profile: "Profile", headers: dict[str, str], raw: bytes, runtime: Runtime
) -> tuple[str, float]:
    """Check a source's delivery with its profile's scheme and secrets; return an id for the
    delivery (the webhook-id with Standard Webhooks) and the time its signature passed at
    (now; under `sam local` possibly the samples' signing time). Raises SignatureError (401)
    or SecretUnavailable (503: fail closed)."""
    scheme = profile.signature
    if scheme.scheme == "standard-webhooks":
        keys = runtime.secrets.standard_keys(scheme.secret_id)
    else:
        secrets = runtime.secrets.signing_secrets(scheme.secret_id)

    def check(now: float) -> tuple[str, float]:
        if scheme.scheme == "standard-webhooks":
            return verify_standard(headers, raw, keys, now, scheme.tolerance_seconds), now
        if scheme.scheme == "stripe":
            verify_stripe(headers, raw, secrets, now, scheme.tolerance_seconds)
        else:
            assert scheme.header is not None
            verify_hmac_hex(
                headers,
                raw,
                secrets,
                now,
                header=scheme.header,
                timestamp_header=scheme.timestamp_header,
                tolerance=scheme.tolerance_seconds,
            )
        return f"{name}@{int(now)}", now

    return first_passing(check, runtime.settings.signature_clocks(time.time()))


_T = TypeVar("_T")


def first_passing(check: Callable[[float], _T], clocks: tuple[float, ...]) -> _T:
    """The first clock the signature passes at; otherwise the refusal at the first (now)."""
    first: SignatureError | None = None
    for now in clocks:
        try:
            return check(now)
        except SignatureError as exc:
            first = first or exc
    assert first is not None
    raise first


def unavailable(cause: str) -> Reply:
    """The signature (or a source profile) cannot be checked right now: fail closed."""
    logger.error("cannot authenticate deliveries right now; refusing", extra={"error": cause})
    return refusal(503, "signature cannot be checked right now; retry later", cause=cause)


def refused(reason: str, source: str | None = None) -> Reply:
    logger.warning("delivery refused", extra={"reason": reason, "source": source})
    metrics.add_metric(name="signature_failures", unit="Count", value=1)
    return refusal(401, f"webhook signature verification failed: {reason}")


def submit_and_answer(
    runtime: Runtime,
    usages: Sequence[Usage],
    tenant: Tenant,
    deadline: Deadline,
    *,
    delivery: str,
    source: str | None = None,
    event_ids: Sequence[str] | None = None,
) -> Reply:
    """Submit every record of a valid delivery and answer for all of them (none: a 202 with
    no results, nothing claimed or posted). `event_ids`, on the sources route, are carried
    into the results, one per record."""
    submissions = [
        Submission(index=index, usage=usage, tenant=tenant) for index, usage in enumerate(usages)
    ]
    outcomes = runtime.submitter.submit_all(
        submissions, deadline, queue_sink(runtime), runtime.settings.post_concurrency
    )
    return summarize(delivery, submissions, outcomes, source, event_ids)


def queue_sink(runtime: Runtime) -> "FailureSink":
    """The failure queue's sink, its queue made when a record first needs it: a delivery
    whose records all reach Piriod never imports or makes the queue (a cold start's cost)."""

    def sink(sub: Submission, message: "QueuedRecord") -> "Placement | None":
        return runtime.queue.place_failed(sub, message)

    return sink


def count_and_answer(
    windows: "Counter_",
    place: "Place",
    sink: "FailureSink",
    ttl_days: int,
    usages: Sequence[Usage],
    tenant: Tenant,
    deadline: Deadline,
    spec: "Aggregate",
    *,
    delivery: str,
    source: str,
    event_ids: Sequence[str],
    clock: Callable[[], float] = time.time,
    now: float | None = None,
) -> Reply:
    """An aggregating source (SPEC 9): bound every event, count each exactly once into its
    window, answer `aggregated` (window and generation), `duplicate`, `rejected` (kept in
    DeadLetterQueue), or 503 when the store could not be written (counted events then
    answer `duplicate` on the retry). An event's age is measured from `now`, the time the
    signature passed at (under `sam local`, the samples' signing time may be that)."""
    from datetime import UTC, datetime

    from piriod_adapter.aggregate import check_events
    from piriod_adapter.counting import Counting, WindowFull
    from piriod_adapter.validation import FieldProblem, invalid

    problems = check_events(
        usages, spec, datetime.fromtimestamp(clock() if now is None else now, UTC)
    )
    counting = Counting(spec, source, tenant, windows, place, sink, ttl_days, clock=clock)
    subs = [Submission(index, usage, tenant) for index, usage in enumerate(usages)]
    try:
        if problems:
            raise invalid(problems)
        try:
            outcomes = counting.run(subs, deadline)
        except WindowFull as exc:
            bound = spec.generations_bound()
            raise invalid([FieldProblem(i, "date_time", bound) for i in exc.args[0]]) from None
    except BodyError as exc:
        logger.info(
            "delivery invalid",
            extra={"source": source, "status": exc.status, "problems": len(exc.problems)},
        )
        return Reply(exc.status, exc.public())
    return summarize(delivery, subs, outcomes, source, event_ids, retry=EVENTS_NOT_COUNTED)


# A 503's message for the sender, and its cause for the log
RECORDS_NOT_STORED = (
    "some records could be neither posted nor stored; retry the whole delivery (records "
    "already handled will be reported as duplicates)",
    "records not stored",
)
EVENTS_NOT_COUNTED = (
    "some events could not be counted; retry the whole delivery (events already counted will "
    "be reported as duplicates)",
    "events not counted",
)


def summarize(
    delivery: str,
    submissions: Sequence[Submission],
    outcomes: list[Outcome],
    source: str | None = None,
    event_ids: Sequence[str] | None = None,
    retry: tuple[str, str] = RECORDS_NOT_STORED,
) -> Reply:
    """202 when every record (or event) reached a state; 503 when any could be neither
    placed nor counted. Each outcome is logged (delivery, key, source, fate) and counted.
    With `event_ids` (the sources route), each result carries its record's event id."""
    if event_ids is not None and len(event_ids) != len(submissions):
        raise ValueError("one event id per record")
    results: list[RecordResult] = []
    counts: Counter[str] = Counter({"received": len(outcomes)})
    for sub, outcome in zip(submissions, outcomes, strict=True):
        counts[outcome.answer] += 1
        counts["ambiguous"] += outcome.ambiguous
        counts["late"] += bool(outcome.generation)
        logger.info(
            "record handled",
            extra={
                "delivery": delivery[:200],
                "index": sub.index,
                "idempotency_key": sub.usage.key.text[:200],
                "source": source,
                "outcome": outcome.answer,
                "usage_id": outcome.usage_id,
                "ambiguous": outcome.ambiguous,
                "error": outcome.failure.error if outcome.failure else outcome.reason,
            },
        )
        # The error map is cut here, so that 100 records with large maps stay under 1 MiB;
        # the queue message keeps it as far as SQS takes.
        errors, omitted = cut_errors(outcome.errors, ANSWER_ERRORS_BYTES)
        results.append(
            RecordResult(
                index=sub.index,
                status=outcome.answer,
                usage_id=outcome.usage_id,
                errors=errors,
                errors_omitted=omitted or None,
                message=outcome.reason if outcome.fate is Fate.NOT_STORED else None,
                event_id=event_ids[sub.index] if event_ids is not None else None,
                window_start=outcome.window_start,
                generation=outcome.generation,
            )
        )
    count_records(counts, source)
    logger.info(
        "delivery handled",
        extra={"delivery": delivery[:200], "source": source, "outcomes": dict(counts)},
    )
    if counts["not_stored"]:
        message, cause = retry
        reasons = sorted({o.reason or "?" for o in outcomes if o.fate is Fate.NOT_STORED})
        return Reply(
            503,
            Answered(message=message, results=results),
            cause=f"{cause}: " + "; ".join(reasons)[:500],
        )
    return Reply(202, Answered(results=results))
