"""API Gateway HTTP API (payload 2.0) events, and Standard Webhooks signing of them.

Sample events in events/ carry placeholder signature headers; `sign_event` gives them a fresh
timestamp and a real signature, because a signature older than 300 s is refused.
"""

from __future__ import annotations

import base64
import copy
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from piriod_adapter.signatures import sign_standard, standard_key
from piriod_devkit import checkout


def __getattr__(name: str) -> Path:
    """EVENTS: the checkout's events/ (looked up when asked for, not at import)."""
    if name == "EVENTS":
        return checkout.path("events")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The signing secret the sample events, the local run and the tests use. Not a real secret.
LOCAL_SIGNING_SECRET = "whsec_" + base64.b64encode(b"piriod-local-signing-key-0001").decode()


# A signature that does not match (events/webhook-bad-signature.json is signed with it).
WRONG_SIGNING_SECRET = "whsec_" + base64.b64encode(b"not-the-local-signing-key-0001").decode()


def sample_signature_timestamp() -> int:
    """When the committed sample events are signed: env/local.json's setting, which the
    function honours under `sam local` only, so `sam local invoke -e events/<file>.json`
    works as committed."""
    env = json.loads(checkout.path("env", "local.json").read_text())["Parameters"]
    return int(env["SAMPLE_SIGNATURE_TIMESTAMP"])


def is_http_event(event: dict[str, Any]) -> bool:
    return "requestContext" in event and "headers" in event


def signed_sample(name: str) -> dict[str, Any]:
    """A sample event as committed: signed at the sample time with the local secret (its
    profile's, for a source), or with a wrong one for the bad-signature sample."""
    wrong = WRONG_SIGNING_SECRET if "bad-signature" in name else None
    return sign_event(load_event(name), wrong, timestamp=sample_signature_timestamp())


def sign_samples(now: float | None = None) -> list[Path]:
    """Sign every HTTP sample in events/ again at the sample time (after editing one). The
    events of an aggregating source's sample are first moved to the last few windows before
    the sample time (see `retimed`): under `sam local` an event's age is measured from the
    time its signature passed at, so the committed file keeps answering `aggregated`."""
    written = []
    for path in sorted(checkout.path("events").glob("*.json")):
        event = load_event(path.name)
        if is_http_event(event):
            if aggregating_profile(event) is not None:
                at = sample_signature_timestamp() if now is None else now
                path.write_text(json.dumps(retimed(event, at), indent=2) + "\n")
            path.write_text(json.dumps(signed_sample(path.name), indent=2) + "\n")
            written.append(path)
    return written


def aggregating_profile(
    event: dict[str, Any], sources: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The profile of a source's event when that source aggregates (SPEC 9), else None."""
    from piriod_devkit.sources import example_document, source_of

    name = source_of(event)
    profile = (sources or example_document())["sources"].get(name) if name else None
    return profile if profile is not None and "aggregate" in profile else None


def fresh_sample(name: str, now: float | None = None) -> dict[str, Any]:
    """An aggregating source's sample with its events moved to the windows just before `now`
    (default: the sample time, as the committed file), signed at the sample time as the
    committed file is (so `sam local` checks it the same way)."""
    event = retimed(load_event(name), sample_signature_timestamp() if now is None else now)
    return sign_event(event, timestamp=sample_signature_timestamp())


_TIME_UNITS = {"epoch_seconds": 1, "epoch_millis": 1000}


def retimed(
    event: dict[str, Any], now: float | None = None, sources: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A copy of an aggregating source's event whose records are moved by whole windows, so
    that each keeps its window-mates and its offset in its window, and the latest record's
    window is the last one already due at `now` (its end plus the profile's lateness, and a
    minute to spare). The profile's `records` and `fields.date_time` must be plain keys."""
    profile = aggregating_profile(event, sources)
    if profile is None:
        raise ValueError("not the event of an aggregating source")
    from piriod_adapter.aggregate import duration_seconds

    now = time.time() if now is None else now
    spec = profile["aggregate"]
    window = duration_seconds(spec["window"])
    lateness = duration_seconds(spec.get("lateness", "PT5M"))
    records_key, time_key = profile.get("records", "@"), profile["fields"]["date_time"]
    time_format = profile.get("time_format", "rfc3339")
    body = json.loads(event_body(event))
    records = body[records_key] if records_key != "@" else body
    records = records if isinstance(records, list) else [records]

    def read(value: Any) -> float:
        if time_format in _TIME_UNITS:
            return float(value) / _TIME_UNITS[time_format]
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()

    def write(instant: float, like: Any) -> Any:
        if time_format in _TIME_UNITS:
            scaled = instant * _TIME_UNITS[time_format]
            return round(scaled) if isinstance(like, int) else round(scaled, 3)
        text = datetime.fromtimestamp(instant, UTC).isoformat(timespec="milliseconds")
        return text.replace("+00:00", "Z")

    latest = max(read(r[time_key]) for r in records)
    # the latest window that is due at `now` with a minute to spare
    due_by = now - lateness - 60
    target = (due_by - window) // window * window
    shift = target - latest // window * window
    for record in records:
        record[time_key] = write(read(record[time_key]) + shift, record[time_key])
    moved = copy.deepcopy(event)
    moved["body"] = json.dumps(body)
    moved["isBase64Encoded"] = False
    return moved


def load_event(name: str) -> dict[str, Any]:
    path = Path(name) if Path(name).exists() else checkout.path("events", name)
    event: dict[str, Any] = json.loads(path.read_text())
    return event


def http_event(
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    *,
    query: str = "",
    base64_body: bool = False,
) -> dict[str, Any]:
    """An HTTP API payload 2.0 event for one request, as API Gateway builds it (a body that is
    not UTF-8 text arrives base64-encoded)."""
    now = time.time()
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        base64_body = True
    route = (
        "POST /v1/sources/{source}/usages"
        if path.startswith("/v1/sources/")
        else f"{method} {path}"
    )
    parts = path.strip("/").split("/")
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route,
        "rawPath": path,
        "rawQueryString": query,
        "headers": {k.lower(): v for k, v in (headers or {}).items()},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": "localhost",
            "domainPrefix": "localhost",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": (headers or {}).get("user-agent", "local"),
            },
            "requestId": uuid.uuid4().hex,
            "routeKey": route,
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": base64.b64encode(body).decode() if base64_body else body.decode("utf-8"),
        "isBase64Encoded": base64_body,
    }
    if len(parts) == 4 and parts[:2] == ["v1", "sources"]:
        event["pathParameters"] = {"source": parts[2]}
    return event


def event_body(event: dict[str, Any]) -> bytes:
    body = event.get("body") or ""
    return base64.b64decode(body) if event.get("isBase64Encoded") else body.encode("utf-8")


def sign_event(
    event: dict[str, Any],
    secret: str | None = None,
    *,
    message_id: str | None = None,
    timestamp: int | None = None,
    sources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return a copy of `event` signed now (or at `timestamp`). The native route is signed
    with Standard Webhooks and `secret` (default: the local one); a source's event the way
    its profile in `sources` (default: examples/sources.json) says, with `secret` or the
    local secret of that profile."""
    from piriod_devkit.sources import LOCAL_SOURCE_SECRETS, example_document, sign_source, source_of

    name = source_of(event)
    if name is not None:
        profile = (sources or example_document())["sources"][name]
        key = secret or LOCAL_SOURCE_SECRETS[profile["signature"]["secret_id"]]
        return sign_source(event, profile, key, timestamp=timestamp, message_id=message_id)
    signed = copy.deepcopy(event)
    headers = signed.setdefault("headers", {})
    message_id = message_id or headers.get("webhook-id") or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if timestamp is None else timestamp
    headers["webhook-id"] = message_id
    headers["webhook-timestamp"] = str(timestamp)
    headers["webhook-signature"] = sign_standard(
        standard_key(secret or LOCAL_SIGNING_SECRET), message_id, timestamp, event_body(signed)
    )
    return signed


@dataclass
class LambdaContext:
    """Enough of the Lambda context for the handlers (remaining time, names, request id)."""

    timeout_seconds: float = 25.0
    function_name: str = "WebhookFunction"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:local"
    aws_request_id: str = ""

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds
        self.aws_request_id = self.aws_request_id or uuid.uuid4().hex
        self.function_version = "$LATEST"
        self.log_group_name = "/aws/lambda/local"
        self.log_stream_name = "local"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
