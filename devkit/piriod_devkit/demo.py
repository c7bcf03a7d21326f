"""The local main job: the whole adapter on loopback, no AWS account and no Docker.

moto (server mode) stands in for Secrets Manager, SQS and DynamoDB, provisioned like
template.yaml; the Piriod stand-in (or the real Piriod in test mode) takes the usages; the
webhook is served on a local port. Signed sample deliveries from events/ are sent to it over
HTTP, every outcome is printed, a Piriod outage is shown being queued, then replayed. A
high-volume meter's 5,000 events are counted into windows, and FlushFunction turns them into
a handful of usages. Corrections then cancel and amend a posted record and events of a window
already flushed, each answer shown as the sender sees it, with what Piriod holds after.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

import urllib3
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from piriod_devkit.aws import MotoServer, client, function_environment, provision
from piriod_devkit.events import (
    LOCAL_SIGNING_SECRET,
    LambdaContext,
    event_body,
    http_event,
    load_event,
    sign_event,
)
from piriod_devkit.local_api import LocalApiServer
from piriod_devkit.piriod_standin import PiriodStandin
from piriod_devkit.poller import drain
from piriod_devkit.sources import example_document, provision_sources

WORKSPACE = "acc_local_demo"
TOKEN = "local-demo-token"  # noqa: S105 (stand-in credential)
UNMETERED_LINE = 999  # the stand-in answers 400 for it, like Piriod for an unknown line
# The high-volume meter (examples/sources.json: count, PT1M windows, lateness PT1M)
AGGREGATING_SOURCE = "api-requests"
AGGREGATED_EVENTS = 5_000
PER_DELIVERY = 100
# The meter whose events are corrected after their window was flushed (examples/sources.json:
# sum of bytes x 10^-9, PT5M windows, lateness PT2M), and its line in the stand-in.
SUMMING_SOURCE = "egress-bytes"
SUMMING_LINE = 4300
SUMMING_SAMPLES = 3  # its events the demo sends (each answered aggregated)


@dataclass
class Shown:
    """What the demo's deliveries were answered: each record's status, each HTTP status."""

    outcomes: Counter[str]
    answers: Counter[int]

    def __init__(self) -> None:
        self.outcomes = Counter()
        self.answers = Counter()


class _WithoutMetrics(io.TextIOBase):
    """Standard output without the functions' metric lines: Powertools writes each metric as a
    CloudWatch EMF JSON line (`{"_aws": ...}`) on stdout, which CloudWatch reads in AWS; here
    they would only hide the outcomes. Every other line passes as it is."""

    def __init__(self, target: TextIO) -> None:
        self._target = target
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
            for line in lines:
                if not line.startswith('{"_aws":'):
                    self._target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._partial and not self._partial.startswith('{"_aws":'):
                self._target.write(self._partial)
                self._partial = ""
            self._target.flush()


@contextlib.contextmanager
def _no_metric_lines() -> Iterator[None]:
    original = sys.stdout
    sys.stdout = _WithoutMetrics(original)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = original


def _indented(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _show_exchange(url: str, event: dict[str, Any], status: int, body: dict[str, Any]) -> None:
    """One delivery in full: the request as sent (signature headers and body) and the answer's
    body, as the sender sees them."""
    print(f"  request: POST {url}{event['rawPath']}")
    for name, value in event["headers"].items():
        if name != "content-length":
            print(f"    {name}: {value}")
    print(_indented(event_body(event).decode("utf-8", "replace")))  # the bytes signed and sent
    print(f"  answer: HTTP {status}")
    print(_indented(json.dumps(body)))


def _send(http: urllib3.PoolManager, url: str, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    headers = {k: v for k, v in event["headers"].items() if k != "content-length"}
    response = http.request("POST", url + event["rawPath"], body=event_body(event), headers=headers)
    try:
        body = json.loads(response.data)
    except ValueError:
        body = {"raw": response.data.decode("utf-8", "replace")}
    return response.status, body


def _print_answer(title: str, status: int, body: dict[str, Any], shown: Shown) -> None:
    print(f"\n▶ {title}\n  HTTP {status}")
    shown.answers[status] += 1
    for result in body.get("results", []):
        shown.outcomes[result["status"]] += 1
        extra = ""
        if "usage_id" in result:
            extra = f" usage_id={result['usage_id']}"
        if "errors" in result:
            extra += f" errors={json.dumps(result['errors'])}"
        print(f"  record {result['index']}: {result['status']}{extra}")
    if "results" not in body:
        print(f"  {body.get('message')}")
        for error in body.get("errors", []):
            where = "body" if error.get("index") is None else f"record {error['index']}"
            print(f"    {where} · {error['field']}: {error['message']}")


def _show_mapping(
    payload: dict[str, Any], answer: dict[str, Any], posted: list[dict[str, Any]]
) -> None:
    """A third-party payload next to what reached Piriod: each reading as the meter sent it,
    and the usage its profile made of it (line, instant, quantity after the factor)."""
    readings = payload.get("data", {}).get("object", {}).get("readings", [])
    by_id = {usage["id"]: usage for usage in posted}
    print("  what the meter sent                                   what was posted to Piriod")
    for result in answer.get("results", []):
        reading = readings[result["index"]] if result["index"] < len(readings) else {}
        sent = f"{reading.get('id')} {reading.get('recorded_at')} bytes={reading.get('bytes')}"
        usage = by_id.get(result.get("usage_id"))
        made = (
            f"line={usage['subscription_line']} {usage['date_time']} quantity={usage['quantity']}"
            if usage is not None
            else f"{result['status']} (usage_id={result.get('usage_id')})"
        )
        print(f"  {sent:<52} ─▶ {made}")


def _substitute_line(event: dict[str, Any], line: int | None) -> dict[str, Any]:
    """Against the real Piriod, point the samples at a subscription line of the user's own."""
    if line is None:
        return event
    body = json.loads(event["body"])
    for record in body.get("usages", [body]):
        if record.get("subscription_line") != UNMETERED_LINE:
            record["subscription_line"] = line
    return {**event, "body": json.dumps(body)}


def _api_requests(now: float) -> list[dict[str, Any]]:
    """5,000 requests of two api keys, in time order (as a gateway sends them), over the three
    one-minute windows that ended 3 to 6 minutes ago: due already (end plus lateness)."""
    rng = random.Random(17)
    first = int(now // 60 * 60) - 6 * 60
    return [
        {
            "request_id": f"req_{n:05d}",
            "api_key": "key_acme" if rng.random() < 0.7 else "key_globex",
            "route": rng.choice(["GET /v1/orders", "POST /v1/orders", "GET /v1/invoices"]),
            "at": (first * 1000) + n * 180_000 // AGGREGATED_EVENTS,
        }
        for n in range(AGGREGATED_EVENTS)
    ]


def _requests_delivery(requests: list[dict[str, Any]], sources: dict[str, Any]) -> dict[str, Any]:
    """One delivery of the api-requests meter, signed the way its profile says."""
    body = json.dumps({"gateway": "edge-eu-1", "requests": requests}).encode()
    path = f"/v1/sources/{AGGREGATING_SOURCE}/usages"
    event = http_event("POST", path, body, {"content-type": "application/json"})
    return sign_event(event, sources=sources)


def _show_aggregation(
    http: urllib3.PoolManager, url: str, sources: dict[str, Any], shown: Shown
) -> None:
    """The high-volume meter: 5,000 events in deliveries of 100, counted into windows; the
    flush turns them into one usage per line and window (and a late event into generation
    1), shown as a table of what Piriod got."""
    from piriod_adapter.handlers.flush import lambda_handler as flush_handler
    from piriod_adapter.runtime import get_runtime
    from piriod_operator.windows import list_windows

    profile = sources["sources"][AGGREGATING_SOURCE]
    spec = profile["aggregate"]
    print(
        f"\n■ A high-volume meter: {AGGREGATED_EVENTS:,} API requests, counted into windows "
        f"({AGGREGATING_SOURCE}: {spec['function']}, {spec['window']} windows, lateness "
        f"{spec['lateness']})"
    )
    requests = _api_requests(time.time())
    batches = [
        _requests_delivery(requests[at : at + PER_DELIVERY], sources)
        for at in range(0, len(requests), PER_DELIVERY)
    ]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda event: _send(http, url, event), batches))
    took = time.monotonic() - started
    statuses = Counter(status for status, _ in answers)
    counted = Counter(r["status"] for _, body in answers for r in body.get("results", []))
    shown.outcomes.update(counted)
    shown.answers.update(statuses)
    keys = Counter(r["api_key"] for r in requests)
    print(
        f"  {len(batches)} deliveries of {PER_DELIVERY} (HMAC-signed: "
        f"{profile['signature']['header']} over <timestamp>.<body>), api keys "
        + ", ".join(f"{k}: {n}" for k, n in sorted(keys.items()))
        + f", in {took:.1f} s"
    )
    print(
        "  answers: "
        + ", ".join(f"HTTP {s}: {n}" for s, n in sorted(statuses.items()))
        + " · results: "
        + ", ".join(f"{k}={v}" for k, v in sorted(counted.items()))
    )
    print(f"  e.g. {json.dumps(answers[0][1]['results'][0])}")
    status, again = _send(http, url, batches[0])
    retried = Counter(r["status"] for r in again.get("results", []))
    shown.outcomes.update(retried)
    shown.answers[status] += 1
    print(
        f"  the first delivery again (the sender retries): HTTP {status}, "
        + ", ".join(f"{k}={v}" for k, v in sorted(retried.items()))
        + " (no window counts them twice)"
    )
    print("  nothing is posted yet: each window's total is posted when the window closes")

    report = flush_handler({}, LambdaContext(function_name="FlushFunction", timeout_seconds=60))
    print(
        f"\n▶ FlushFunction (every minute; run once here): {report.get('due')} window(s) due, "
        f"{report.get('posted')} posted, {report.get('queued')} queued"
    )
    late = dict(requests[0], request_id="req_late_0001")
    status, body = _send(http, url, _requests_delivery([late], sources))
    result = body.get("results", [{}])[0]
    shown.outcomes.update(str(r.get("status")) for r in body.get("results", []))
    shown.answers[status] += 1
    print(
        f"  a late request for the closed window {result.get('window_start')}: HTTP {status} "
        f"{result.get('status')}, generation {result.get('generation')}"
    )
    report = flush_handler({}, LambdaContext(function_name="FlushFunction", timeout_seconds=60))
    print(f"  the next run posts it: {report.get('posted')} posted")

    runtime = get_runtime()
    windows = list_windows(runtime.windows, runtime.store, [AGGREGATING_SOURCE], limit=100)
    print(f"\n  {AGGREGATED_EVENTS + 1:,} events became {len(windows)} usages in Piriod:")
    print(f"  {'line':>6}  {'window':<20}  {'generation':>10}  {'quantity':>8}  usage_id")
    for one in windows:
        print(
            f"  {one.line:>6}  {one.window_start:<20}  {one.generation:>10}  {one.total:>8}  "
            f"{one.usage_id if one.usage_id is not None else one.state}"
        )
    held = sum(Decimal(one.total or 0) for one in windows)
    print(f"  their quantities add up to {held:,}: every acknowledged event counted once")


def _correct(
    http: urllib3.PoolManager,
    url: str,
    title: str,
    body: dict[str, Any] | None,
    shown: Shown,
    event: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One corrections delivery, signed now, as the sender sees it: what was sent, and the
    answer, each correction's status and revision."""
    if event is None:
        raw = json.dumps(body).encode()
        event = http_event("POST", "/v1/corrections", raw, {"content-type": "application/json"})
    event = sign_event(event)
    status, answer = _send(http, url, event)
    shown.answers[status] += 1
    print(f"\n▶ {title}")
    print(f"  sent:     POST {event['rawPath']} {event_body(event).decode()}")
    print(f"  answered: HTTP {status} {json.dumps(answer)}")
    for result in answer.get("results", []):
        shown.outcomes[result["status"]] += 1
    return answer


def _held(standin: PiriodStandin | None, line: int, instant: str | None = None) -> None:
    """What Piriod holds for a line (at one instant), from the stand-in's ledger."""
    if standin is None:
        return
    usages = [
        u
        for u in standin.usages()
        if u["subscription_line"] == line and (instant is None or u["date_time"] == instant)
    ]
    where = f"line {line}" + (f" at {instant}" if instant else "")
    print(
        f"  Piriod now holds for {where}: "
        + (", ".join(f"id={u['id']} quantity={u['quantity']}" for u in usages) or "nothing")
    )


def _show_corrections(
    http: urllib3.PoolManager,
    url: str,
    sources: dict[str, Any],
    standin: PiriodStandin | None,
    line: int | None,
    shown: Shown,
) -> None:
    """Corrections (docs/corrections.md): an amend and a cancel of records already posted
    (one DELETE, or a DELETE and a POST), then a cancel and an amend of events whose window was
    already flushed (pending, and restated once by the next FlushFunction run)."""
    from piriod_adapter.handlers.flush import lambda_handler as flush_handler

    print(
        "\n■ Corrections: the sender cancels or amends what it already sent (docs/corrections.md)"
    )
    posted_line = line or 101
    single = load_event("webhook-correction.json")
    _correct(
        http,
        url,
        "events/webhook-correction.json: amend webhook-single.json's record "
        "(key msg_sample_single_0001:0) from 1.10 to 1.25: applied, its usage deleted and "
        "posted again",
        None,
        shown,
        event=single,
    )
    _held(standin, posted_line, "2026-11-01T10:00:00Z")
    cancel = {
        "corrections": [
            {"action": "cancel", "key": "meter-7/2026-11-01T11", "correction_id": "demo-cancel-1"}
        ]
    }
    _correct(
        http,
        url,
        "cancel webhook-batch.json's first record (its idempotency_key meter-7/2026-11-01T11): "
        "applied, its usage deleted",
        cancel,
        shown,
    )
    _held(standin, posted_line, "2026-11-01T11:00:00Z")
    _correct(
        http, url, "the same cancel again (a retry): duplicate, nothing changes", cancel, shown
    )

    summing_line = line or SUMMING_LINE
    profile = sources["sources"][SUMMING_SOURCE]
    window = int(time.time()) // 300 * 300 - 600  # a PT5M window already due (lateness PT2M)
    start = datetime.fromtimestamp(window, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    samples = [
        {
            "id": f"smp_demo_{n}",
            "line": summing_line,
            "bytes": size,
            "time": datetime.fromtimestamp(window + 40 * n + 7, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        for n, size in enumerate([2_000_000_000, 1_500_000_000, 500_000_000], start=1)
    ]
    path = f"/v1/sources/{SUMMING_SOURCE}/usages"
    raw = json.dumps({"samples": samples}).encode()
    event = sign_event(
        http_event("POST", path, raw, {"content-type": "application/json"}), sources=sources
    )
    status, answer = _send(http, url, event)
    shown.answers[status] += 1
    shown.outcomes.update(r["status"] for r in answer.get("results", []))
    print(
        f"\n▶ {SUMMING_SOURCE} ({profile['aggregate']['function']} of bytes in GB, "
        f"{profile['aggregate']['window']} windows): three samples (2, 1.5 and 0.5 GB) in the "
        f"window {start}: HTTP {status} "
        + ", ".join(r["status"] for r in answer.get("results", []))
    )
    report = flush_handler({}, LambdaContext(function_name="FlushFunction", timeout_seconds=60))
    print(f"  FlushFunction: {report.get('posted')} posted")
    _held(standin, summing_line, start)
    corrections = {
        "corrections": [
            {
                "action": "cancel",
                "key": "smp_demo_1",
                "source": SUMMING_SOURCE,
                "correction_id": "demo-cancel-2",
            },
            {
                "action": "amend",
                "key": "smp_demo_2",
                "source": SUMMING_SOURCE,
                "quantity": 1,
                "correction_id": "demo-amend-2",
            },
        ]
    }
    _correct(
        http,
        url,
        "cancel the 2 GB sample and amend the 1.5 GB one to 1 GB, after their window was "
        "flushed: pending, nothing sent to Piriod yet",
        corrections,
        shown,
    )
    report = flush_handler({}, LambdaContext(function_name="FlushFunction", timeout_seconds=60))
    print(
        f"  the next FlushFunction run restates the window: {report.get('restated')} restated "
        "(one DELETE of its usage, one POST of the corrected total 1 + 0.5 at the same instant)"
    )
    _held(standin, summing_line, start)


def _show_dead_letters(sqs: Any, url: str) -> None:
    """Each dead letter by name: its message id, line, why it is there."""
    from piriod_adapter.queue import receive_all

    messages = receive_all(sqs, url, wait_seconds=0)  # a look: released at once
    print(f"DeadLetterQueue: {len(messages)} message(s) waiting for a person")
    for message in messages:
        try:
            body = json.loads(message["Body"])
            usage, failure = body["usage"], body["failure"]
            errors = "; ".join(
                f"{field}: {' '.join(texts)}"
                for field, texts in (failure.get("errors") or {}).items()
            )
            why = f"{failure['kind']} (Piriod {failure.get('status')}): "
            why += errors or str(failure.get("error"))
            line = usage.get("subscription_line") or f"meter:{usage.get('meter_id')}"
        except (ValueError, KeyError, TypeError, AttributeError):
            line, why = "?", "unreadable"
        print(f"  message {message['MessageId']}: line {line}, {why}")
    if messages:
        print(
            "  (with `piriod-local serve` running, `piriod-adapter list --queue dead-letter` lists "
            "them, and `replay` posts them once the cause is fixed)"
        )


def run(args: argparse.Namespace) -> int:
    try:
        real = real_piriod(args, os.environ, sys.stdin)
    except DemoArgumentError as exc:
        print(f"piriod-local demo: {exc}", file=sys.stderr)
        return 2
    with _no_metric_lines():
        return _run(args, real)


def _run(args: argparse.Namespace, real: RealPiriod | None) -> int:
    shown = Shown()
    with MotoServer() as moto:
        resources = provision(
            moto.url,
            token=real.token.get_secret_value() if real else TOKEN,
            signing_secrets=[LOCAL_SIGNING_SECRET],
            prefix="piriod-local",
        )
        print(f"moto server (Secrets Manager, SQS, DynamoDB, SSM) on {moto.url}")
        sources = example_document()
        if args.subscription_line is not None:  # the real Piriod: a line of the user's own
            sources["sources"]["acme-storage"]["subscription_line"] = args.subscription_line
            lines = sources["sources"][AGGREGATING_SOURCE]["lines"]
            sources["sources"][AGGREGATING_SOURCE]["lines"] = dict.fromkeys(
                lines, args.subscription_line
            )
        sources_config = provision_sources(moto.url, "/piriod-local/sources", sources)
        standin = None
        if real is not None:
            piriod_url, workspace = real.url, real.workspace
            print(f"Piriod: {piriod_url} (test mode, workspace {workspace})")
        else:
            standin = PiriodStandin(tokens=(TOKEN,), workspace=WORKSPACE).start()
            standin.set_unmetered_lines(UNMETERED_LINE)
            piriod_url, workspace = standin.url, WORKSPACE
            print(f"Piriod stand-in on {piriod_url}")
        env = function_environment(
            resources,
            piriod_url=piriod_url,
            workspace=workspace,
            test_mode=real is not None,
            SETTLE_AFTER_SECONDS="1",
            REPLAY_BACKOFF_SECONDS="0",
            POWERTOOLS_LOG_LEVEL="ERROR",
            POWERTOOLS_METRICS_DISABLED="true",
            SOURCES_CONFIG=sources_config,
        )
        os.environ.update(env)
        from piriod_adapter.handlers.replay import lambda_handler as replay_handler
        from piriod_adapter.runtime import reset_runtime

        reset_runtime()
        api = LocalApiServer(port=args.port).start()
        print(f"webhook on {api.url}/v1/usages (signing secret: events/README.md)")
        print(f"third-party meters on {api.url}/v1/sources/{{source}}/usages")
        http = urllib3.PoolManager()
        try:
            for name, title in [
                ("webhook-single.json", "one record (quantity 1.10, digits kept)"),
                ("webhook-batch.json", "a batch of three"),
                ("webhook-rejected.json", "a line Piriod does not know (rejected)"),
                ("webhook-invalid.json", "an invalid batch (422, nothing posted)"),
                ("webhook-not-json.json", "a body that is not JSON (400)"),
            ]:
                event = sign_event(_substitute_line(load_event(name), args.subscription_line))
                status, body = _send(http, api.url, event)
                _print_answer(f"{name}: {title}", status, body, shown)
                if name == "webhook-single.json":  # one delivery in full, as the sender sees it
                    _show_exchange(api.url, event, status, body)

            single = sign_event(
                _substitute_line(load_event("webhook-single.json"), args.subscription_line)
            )
            _print_answer(
                "webhook-single.json again (the sender retries)",
                *_send(http, api.url, single),
                shown,
            )

            print("\n■ A third-party meter: its own payload, signed its own way (examples/)")
            meter = sign_event(load_event("source-acme-storage.json"), sources=sources)
            before = len(standin.usages()) if standin is not None else 0
            status, body = _send(http, api.url, meter)
            _print_answer(
                "source-acme-storage.json: Stripe-signed readings in bytes, posted in GB",
                status,
                body,
                shown,
            )
            print(f"  Stripe-Signature: {meter['headers']['stripe-signature']}")
            posted = standin.usages()[before:] if standin is not None else []
            _show_mapping(json.loads(event_body(meter)), body, posted)

            _show_aggregation(http, api.url, sources, shown)
            _show_corrections(http, api.url, sources, standin, args.subscription_line, shown)

            bad = load_event("webhook-bad-signature.json")
            bad["headers"]["webhook-timestamp"] = str(int(time.time()))
            _print_answer("webhook-bad-signature.json (401)", *_send(http, api.url, bad), shown)

            print("\n■ Piriod goes down (nothing listens where it was: connection refused)")
            os.environ["PIRIOD_API_URL"] = "http://127.0.0.1:9"
            reset_runtime()
            outage_body = {
                "usages": [
                    {
                        "subscription_line": 101,
                        "date_time": f"2026-11-01T1{h}:00:00Z",
                        "quantity": h,
                    }
                    for h in (4, 5, 6)
                ]
            }
            outage_event = {**load_event("webhook-batch.json"), "body": json.dumps(outage_body)}
            outage = sign_event(
                _substitute_line(outage_event, args.subscription_line),
                message_id="msg_sample_outage_0001",
            )
            _print_answer("a batch during the outage", *_send(http, api.url, outage), shown)
            sqs = client("sqs", moto.url)
            depth = sqs.get_queue_attributes(
                QueueUrl=resources.replay_queue_url,
                AttributeNames=["ApproximateNumberOfMessages"],
            )["Attributes"]["ApproximateNumberOfMessages"]
            print(f"  ReplayQueue now holds {depth} message(s)")

            print("\n■ Piriod is back: ReplayFunction drains ReplayQueue")
            os.environ["PIRIOD_API_URL"] = piriod_url
            reset_runtime()
            report = drain(sqs, resources.replay_queue_url, replay_handler)
            print(
                f"  replayed {report.received} message(s): {report.deleted} done, "
                f"{report.failed} left for a later attempt"
            )
            shown.outcomes["replayed"] += report.deleted
            if standin is not None:
                ledger = standin.usages()
                print(f"\nPiriod stand-in ledger: {len(ledger)} usage(s)")
                for usage in ledger:
                    print(
                        f"  id={usage['id']} line={usage['subscription_line']} "
                        f"date_time={usage['date_time']} quantity={usage['quantity']}"
                    )
            _show_dead_letters(sqs, resources.dead_letter_queue_url)
        finally:
            api.stop()
            if standin is not None:
                standin.stop()
    print("\nOutcomes seen: " + ", ".join(f"{k}={v}" for k, v in sorted(shown.outcomes.items())))
    print("Answers: " + ", ".join(f"HTTP {k}={v}" for k, v in sorted(shown.answers.items())))
    wanted = {"posted", "duplicate", "queued", "rejected", "replayed", "applied", "pending"}
    missing = wanted - set(shown.outcomes)
    if missing:
        print(f"expected outcomes not seen: {sorted(missing)}", file=sys.stderr)
        return 1
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=0, help="local port for the webhook")
    parser.add_argument(
        "--piriod-url",
        default="https://api.piriod.com",
        help="the real Piriod's API, with a token (default: %(default)s)",
    )
    token = parser.add_mutually_exclusive_group()
    token.add_argument(
        "--token-stdin",
        action="store_true",
        help="read a Piriod API token from standard input: use the real Piriod in test mode "
        "(default: $PIRIOD_TOKEN when set, else the Piriod stand-in)",
    )
    token.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="read the Piriod API token from this file instead",
    )
    token.add_argument("--token", help=argparse.SUPPRESS)  # refused: a token in argv
    parser.add_argument(
        "--workspace",
        help="your Piriod workspace id, with a token (default: $PIRIOD_WORKSPACE_ID)",
    )
    parser.add_argument(
        "--subscription-line",
        type=int,
        default=None,
        help="a metered subscription line of yours, for the real Piriod",
    )


class RealPiriod(BaseModel):
    """The real Piriod in test mode, instead of the stand-in: where, whose, and its token."""

    model_config = ConfigDict(frozen=True)

    url: str
    workspace: str = Field(min_length=1)
    token: SecretStr


class DemoArgumentError(ValueError):
    """An argument of the demo that cannot be used: one line, exit 2."""


def real_piriod(
    args: argparse.Namespace, environ: Mapping[str, str], stdin: TextIO
) -> RealPiriod | None:
    """The real Piriod the demo is pointed at, or None for the stand-in. A flag beats the
    environment: the token is --token-stdin's or --token-file's, else $PIRIOD_TOKEN; the
    workspace --workspace, else $PIRIOD_WORKSPACE_ID. A token is never taken from argv."""
    if args.token is not None:
        raise DemoArgumentError(
            "--token would put the token in the command line, where ps and the shell's "
            "history show it: give it on standard input with --token-stdin, in a file "
            "with --token-file PATH, or in $PIRIOD_TOKEN"
        )
    if args.token_stdin:
        token, where = stdin.readline().strip(), "standard input"
    elif args.token_file is not None:
        try:
            token, where = args.token_file.read_text().strip(), str(args.token_file)
        except OSError as exc:
            raise DemoArgumentError(f"--token-file {args.token_file}: {exc.strerror}") from None
    else:
        token, where = environ.get("PIRIOD_TOKEN", "").strip(), "$PIRIOD_TOKEN"
        if not token:
            return None
    if not token:
        raise DemoArgumentError(f"the Piriod token read from {where} is empty")
    workspace = (args.workspace or environ.get("PIRIOD_WORKSPACE_ID", "")).strip()
    if not workspace:
        raise DemoArgumentError(
            "the real Piriod needs your workspace: give --workspace, or export PIRIOD_WORKSPACE_ID"
        )
    return RealPiriod(url=args.piriod_url, workspace=workspace, token=SecretStr(token))
