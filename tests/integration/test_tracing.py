"""Tracing over OTLP/HTTP, end to end: the real handlers (moto server and the Piriod stand-in
over loopback) export to a real OTLP/HTTP receiver on loopback, and what arrives is decoded
with the OpenTelemetry protobuf definitions (opentelemetry-proto). The span trees of a
delivery, of a record queued and then replayed (one trace), and of a flush; and, with
tracing off, a delivery imports no OpenTelemetry module at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from piriod_devkit.sources import provision_sources
from tests.conftest import Adapter
from tests.integration.conftest import COLLECTOR_TOKEN, SECRET, profile
from tests.integration.test_aggregation import deliver as deliver_events
from tests.integration.test_aggregation import event as aggregated_event
from tests.integration.test_aggregation import run_flush
from tests.integration.test_replay import drain_replay

SENDER_TRACE = "0af7651916cd43dd8448eb211c80319c"
SENDER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{SENDER_TRACE}-{SENDER_SPAN}-01"
ROOT = Path(__file__).resolve().parents[2]
PIRIOD_POST = "Piriod POST /usages/"


# --- the receiver --------------------------------------------------------------------------


@dataclass
class Span:
    """One received span, decoded: ids as hex, attributes as Python values."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    status_code: int
    resource: dict[str, Any]


def _value(value: AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value") or "string_value")


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


@dataclass
class Receiver:
    """An OTLP/HTTP traces receiver: POST /v1/traces, application/x-protobuf, answered 200."""

    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def spans(self) -> list[Span]:
        spans: list[Span] = []
        with self.lock:
            bodies = [body for _, body in self.requests]
        for body in bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        spans.append(
                            Span(
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_id=span.parent_span_id.hex(),
                                kind=SpanProto.SpanKind.Name(span.kind),
                                attributes=_attributes(span.attributes),
                                links=[(ln.trace_id.hex(), ln.span_id.hex()) for ln in span.links],
                                status_code=span.status.code,
                                resource=resource,
                            )
                        )
        return spans

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    received = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with received.lock:
                received.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    received.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield received
    server.shutdown()
    server.server_close()


def trace_on(adapter: Adapter, receiver: Receiver) -> None:
    adapter.fresh_runtime(
        PIRIOD_TRACING="true",
        PIRIOD_TRACING_ENDPOINT=f"{receiver.url}/v1/traces",
        PIRIOD_TRACING_HEADERS=f"authorization=Bearer%20{COLLECTOR_TOKEN},x-scope=piriod",
    )


@pytest.fixture
def traced(adapter: Adapter, receiver: Receiver) -> Adapter:
    trace_on(adapter, receiver)
    return adapter


def children(spans: list[Span], parent: Span) -> list[Span]:
    return [s for s in spans if s.parent_id == parent.span_id and s.trace_id == parent.trace_id]


def names(spans: list[Span]) -> list[str]:
    return sorted(s.name for s in spans)


def only(spans: list[Span], name: str) -> Span:
    [found] = [s for s in spans if s.name == name]
    return found


def sender_event(adapter: Adapter, body: dict[str, Any], message_id: str) -> dict[str, Any]:
    event = adapter.event(body, message_id=message_id)
    event["headers"]["traceparent"] = TRACEPARENT  # not signed: the signature covers the body
    return event


# --- the tests -----------------------------------------------------------------------------


def test_a_delivery_is_one_trace_continuing_the_senders(
    traced: Adapter, receiver: Receiver, piriod: Any
) -> None:
    # given a sender whose request carries its own trace (W3C traceparent)
    body = {
        "usages": [
            {"subscription_line": 501, "date_time": "2026-11-01T10:00:00Z", "quantity": 1},
            {"subscription_line": 502, "date_time": "2026-11-01T10:00:00Z", "quantity": 2},
        ]
    }
    # when it delivers two records and Piriod takes both
    status, answer = traced.invoke(sender_event(traced, body, "msg_traced_1"))
    assert status == 202 and [r["status"] for r in answer["results"]] == ["posted", "posted"]
    # then, before the handler returned, the collector got the whole delivery as one trace,
    # continuing the sender's
    spans = receiver.spans()
    assert spans and {s.trace_id for s in spans} == {SENDER_TRACE}
    delivery = only(spans, "delivery")
    assert (delivery.parent_id, delivery.kind) == (SENDER_SPAN, "SPAN_KIND_SERVER")
    assert delivery.attributes["http.response.status_code"] == 202
    assert delivery.attributes["webhook.id"] == "msg_traced_1"
    assert delivery.resource["service.name"] == "piriod-usage-adapter"
    # under the delivery: the signing secret's read and one span per record
    under = children(spans, delivery)
    assert "SecretsManager.GetSecretValue" in names(under)
    records = [s for s in under if s.name == "record"]
    assert sorted((r.attributes["index"], r.attributes["status"]) for r in records) == [
        (0, "posted"),
        (1, "posted"),
    ]
    # the delivery's new keys are claimed together, in one transaction, by the claim step
    # of whichever record's worker came first
    claims = [s for s in spans if s.name == "claim"]
    assert claims and {s.parent_id for s in claims} <= {r.span_id for r in records}
    assert sorted(n for c in claims for n in names(children(spans, c))) == [
        "DynamoDB.TransactWriteItems"
    ]
    for record in records:
        # each record: its post (one Piriod call), and its final state written (a
        # conditional UpdateItem on the claim's lock)
        steps = children(spans, record)
        assert {"post", "DynamoDB.UpdateItem"} <= set(names(steps))
        post = only(steps, "post")
        piriod_call = only(children(spans, post), PIRIOD_POST)
        assert piriod_call.kind == "SPAN_KIND_CLIENT"
        assert piriod_call.attributes["http.response.status_code"] == 201
    aws = [s for s in spans if s.attributes.get("rpc.system") == "aws-api"]
    assert aws and all(s.kind == "SPAN_KIND_CLIENT" for s in aws)
    # and the export carried the configured headers, as OTLP/HTTP protobuf
    headers, _ = receiver.requests[0]
    assert headers["authorization"] == f"Bearer {COLLECTOR_TOKEN}"
    assert headers["x-scope"] == "piriod"
    assert headers["content-type"] == "application/x-protobuf"


def test_a_queued_then_replayed_record_is_one_trace_from_delivery_to_post(
    traced: Adapter, receiver: Receiver, piriod: Any
) -> None:
    # given a record queued because Piriod answered 503
    piriod.add_fault("status", status=503, count=1)
    record = {"subscription_line": 601, "date_time": "2026-11-01T10:00:00Z", "quantity": 3}
    status, answer = traced.invoke(sender_event(traced, record, "msg_traced_2"))
    assert (status, answer["results"][0]["status"]) == (202, "queued")
    # then its queue message carries the trace
    [message] = traced.messages("replay")
    assert message["trace"].split("-")[1] == SENDER_TRACE
    delivered = receiver.spans()
    first = only(delivered, "record")
    assert first.attributes["status"] == "queued"
    queue = only(children(delivered, first), "queue")
    assert "SQS.SendMessage" in names(children(delivered, queue))
    refused = only(children(delivered, only(children(delivered, first), "post")), PIRIOD_POST)
    assert refused.attributes["http.response.status_code"] == 503
    receiver.clear()
    # when ReplayFunction posts it
    assert drain_replay(traced).deleted == 1
    assert len(piriod.usages()) == 1
    # then the replay's record span continues the same trace, under the first attempt
    spans = receiver.spans()
    batch = only(spans, "replay")
    assert batch.kind == "SPAN_KIND_CONSUMER" and batch.trace_id != SENDER_TRACE
    replayed = only(spans, "record")
    assert (replayed.trace_id, replayed.parent_id) == (SENDER_TRACE, first.span_id)
    assert replayed.links == [(batch.trace_id, batch.span_id)]
    assert replayed.attributes["status"] == "posted"
    post = only(children(spans, replayed), "post")
    billed = only(children(spans, post), PIRIOD_POST)
    assert billed.attributes["http.response.status_code"] == 201
    # so one trace shows the record from its first delivery to the post that billed it
    whole = [s for s in delivered + spans if s.trace_id == SENDER_TRACE]
    assert {s.name for s in whole} >= {"delivery", "record", "queue", "post"}


def test_a_flush_is_one_trace_with_a_span_per_generation(
    adapter: Adapter, receiver: Receiver, piriod: Any
) -> None:
    # given an aggregating source, and events of two lines counted into a closed window
    parameter = f"/{adapter.resources.table.removesuffix('-idempotency')}/sources"
    document = {"version": 1, "sources": {"meter": profile()}}
    config = provision_sources(adapter.endpoint, parameter, document, {"agg/meter": SECRET})
    adapter.fresh_runtime(SOURCES_CONFIG=config, SOURCES_CACHE_SECONDS="0")
    trace_on(adapter, receiver)
    meters = adapter
    at = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=2)
    events = [aggregated_event("e1", 701, at), aggregated_event("e2", 702, at, "2")]
    status, _ = deliver_events(meters, events)
    assert status == 202
    receiver.clear()
    # when FlushFunction runs
    report = run_flush()
    assert report["posted"] == 2
    # then the flush run is one trace: a span per generation closed, a record per total
    spans = receiver.spans()
    flush = only(spans, "flush")
    assert flush.parent_id == "" and {s.trace_id for s in spans} == {flush.trace_id}
    assert flush.attributes["flush.posted"] == 2
    under = children(spans, flush)
    generations = [s for s in under if s.name == "generation"]
    assert sorted(g.attributes["key"].split("#")[2] for g in generations) == ["701", "702"]
    for generation in generations:  # each closed with its own DynamoDB calls
        calls = children(spans, generation)
        assert calls and all(c.name.startswith("DynamoDB.") for c in calls)
    records = [s for s in under if s.name == "record"]
    assert len(records) == 2 and {r.attributes["status"] for r in records} == {"posted"}
    for record in records:
        post = only(children(spans, record), "post")
        assert PIRIOD_POST in names(children(spans, post))


def test_with_tracing_off_a_delivery_imports_no_opentelemetry_module(
    adapter: Adapter, piriod: Any, tmp_path: Path
) -> None:
    # given the function's environment without tracing (the default) and a signed delivery
    event = adapter.event(
        {"subscription_line": 801, "date_time": "2026-11-01T10:00:00Z", "quantity": 1},
        message_id="msg_untraced",
    )
    event["headers"]["traceparent"] = TRACEPARENT
    (tmp_path / "event.json").write_text(json.dumps(event))
    script = (
        "import json, sys\n"
        "from piriod_adapter.handlers.webhook import lambda_handler\n"
        "from piriod_devkit.events import LambdaContext\n"
        f"event = json.load(open({str(tmp_path / 'event.json')!r}))\n"
        "answer = lambda_handler(event, LambdaContext())\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('opentelemetry', 'google')]\n"
        "print(json.dumps({'status': answer['statusCode'], 'loaded': loaded}))\n"
    )
    environment = {**os.environ, **adapter.env, "POWERTOOLS_METRICS_DISABLED": "true"}
    environment.pop("PIRIOD_TRACING", None)
    # when a fresh process answers it
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # then it was posted, and no OpenTelemetry (or protobuf) module was ever imported
    assert result == {"status": 202, "loaded": []}
    assert len(piriod.usages()) == 1
