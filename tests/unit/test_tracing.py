"""The tracing API (piriod_adapter.tracing): off, a shared no-op and no OpenTelemetry import;
on, spans that nest, continue a queued record's trace, follow work into pool threads and
export before an invocation ends, with the collector's headers never logged. The export
over real HTTP is in tests/integration/test_tracing.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from piriod_adapter.models import (
    Failure,
    FailureKind,
    KeyKind,
    QueuedRecord,
    Tenant,
    Usage,
    UsageKey,
)
from piriod_adapter.otel import OtelBackend
from piriod_adapter.settings import SettingsError, load_settings
from piriod_adapter.tracing import NO_SPAN, Tracer
from tests.unit.test_settings import REQUIRED

QUEUED_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{QUEUED_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def on(exported: InMemorySpanExporter) -> Iterator[Tracer]:
    """A tracer turned on, exporting to memory."""
    tracer = Tracer()
    tracer._backend = OtelBackend(load_settings({**REQUIRED, "PIRIOD_TRACING": "true"}), exported)
    yield tracer
    tracer.reset()


def finished(tracer: Tracer, exported: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    tracer.flush()
    return {span.name: span for span in exported.get_finished_spans()}


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


# --- off --------------------------------------------------------------------------------------


def test_off_every_span_is_the_shared_no_op() -> None:
    # given the tracer as every module gets it, before any settings turn it on
    tracer = Tracer()
    # when code uses each part of the API, then nothing is made or measured
    assert tracer.span("claim", index=1) is NO_SPAN
    assert tracer.invocation("delivery", parent=TRACEPARENT) is NO_SPAN
    with tracer.span("post") as span:
        span.set(status="posted")
        span.fail("no")

    def work(n: int) -> int:
        return n + 1

    assert tracer.carry(work) is work
    assert tracer.traced("settle")(work)(1) == 2
    assert tracer.traceparent() is None
    assert tracer.flush() is True


def test_off_no_opentelemetry_module_is_imported() -> None:
    # given a fresh interpreter with the function's settings and tracing left off
    script = """
import json, sys
from piriod_adapter.handlers import flush, replay, webhook
from piriod_adapter import aggregate, flush as flushing, submit
from piriod_adapter.runtime import Runtime
from piriod_adapter.settings import load_settings
from piriod_adapter.tracing import tracer
runtime = Runtime(load_settings())
runtime.tracer.configure(runtime.settings)
runtime.prepare()  # the AWS clients, as SnapStart makes them
with tracer.invocation("delivery", parent=sys.argv[1]):
    with tracer.span("record", index=0) as span:
        span.set(status="posted")
        tracer.carry(print)
        tracer.traceparent()
tracer.flush()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("opentelemetry", "google"))))
"""
    env = {**REQUIRED, "AWS_DEFAULT_REGION": "us-east-1", "PIRIOD_TRACING": "false"}
    # when it imports every handler and runs the API
    done = subprocess.run(
        [sys.executable, "-c", script, TRACEPARENT],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    # then no OpenTelemetry module (nor protobuf) was imported
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


# --- on ---------------------------------------------------------------------------------------


def test_a_span_is_a_child_of_the_current_one(on: Tracer, exported: InMemorySpanExporter) -> None:
    # when a block runs inside another
    with on.span("record", index=2), on.span("claim") as claim:
        claim.set(outcome="taken", skipped=None)
    # then it is its child, with its attributes (None left out)
    spans = finished(on, exported)
    assert parent_of(spans["claim"]) == spans["record"].context.span_id
    assert dict(spans["claim"].attributes or {}) == {"outcome": "taken"}
    assert dict(spans["record"].attributes or {}) == {"index": 2}


def test_a_failing_block_marks_its_span(on: Tracer, exported: InMemorySpanExporter) -> None:
    with pytest.raises(ConnectionError), on.span("post"):
        raise ConnectionError("reset")
    with on.span("Piriod POST /usages/") as span:
        span.fail("HTTP 503")
    spans = finished(on, exported)
    assert not spans["post"].status.is_ok and spans["post"].events[0].name == "exception"
    assert spans["Piriod POST /usages/"].status.description == "HTTP 503"


def test_a_queued_records_trace_is_continued_and_linked_to_the_replay(
    on: Tracer, exported: InMemorySpanExporter
) -> None:
    # given a replay batch's span, and a message carrying the trace of its first delivery
    with on.invocation("replay", kind="consumer"), on.span("record", parent=TRACEPARENT):
        # when its record's span is opened, then the message's trace goes on
        assert on.traceparent() is not None
        assert on.traceparent().split("-")[1] == QUEUED_TRACE  # type: ignore[union-attr]
    spans = finished(on, exported)
    record, batch = spans["record"], spans["replay"]
    assert f"{record.context.trace_id:032x}" == QUEUED_TRACE
    assert parent_of(record) == 0x00F067AA0BA902B7
    # linked to the batch that replayed it
    assert [link.context.span_id for link in record.links] == [batch.context.span_id]


def test_a_parent_in_the_current_trace_nests_under_the_current_span(
    on: Tracer, exported: InMemorySpanExporter
) -> None:
    # given an operator replay span already continuing the record's trace
    with on.span("operator replay", parent=TRACEPARENT), on.span("record", parent=TRACEPARENT):
        pass
    # then the record's span is its child, not a sibling
    spans = finished(on, exported)
    assert parent_of(spans["record"]) == spans["operator replay"].context.span_id
    assert not spans["record"].links


def test_carried_work_runs_under_the_submitting_span_and_the_rest_under_the_invocation(
    on: Tracer, exported: InMemorySpanExporter
) -> None:
    # given an invocation that hands work to other threads, once carried, once not
    def work(name: str) -> None:
        with on.span(name):
            pass

    with on.invocation("delivery") as _, on.span("submit"):
        carried = threading.Thread(target=on.carry(work), args=("carried",))
        bare = threading.Thread(target=work, args=("bare",))
        for thread in (carried, bare):
            thread.start()
            thread.join()
    # then the carried work is under the span it was handed over from, the other under the
    # invocation's span
    spans = {s.name: s for s in exported.get_finished_spans()}  # exported when it ended
    assert parent_of(spans["carried"]) == spans["submit"].context.span_id
    assert parent_of(spans["bare"]) == spans["delivery"].context.span_id


def test_traced_functions_get_a_span_per_call(on: Tracer, exported: InMemorySpanExporter) -> None:
    @on.traced("settle")
    def settle(value: int) -> int:
        return value * 2

    assert settle(21) == 42
    assert list(finished(on, exported)) == ["settle"]


def test_an_invocation_exports_its_spans_before_it_returns(
    on: Tracer, exported: InMemorySpanExporter
) -> None:
    with on.invocation("flush", kind="internal"), on.span("generation"):
        assert exported.get_finished_spans() == ()
    assert sorted(s.name for s in exported.get_finished_spans()) == ["flush", "generation"]


def test_aws_calls_are_client_spans(on: Tracer, exported: InMemorySpanExporter) -> None:
    import botocore.session
    from botocore.stub import Stubber

    # given a client of a session the tracer watches
    session = botocore.session.get_session()
    on.watch_aws(session)
    sqs: Any = session.create_client(
        "sqs",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    stubber = Stubber(sqs)
    stubber.add_response("send_message", {"MessageId": "m-1"})
    stubber.add_client_error("send_message", "QueueDoesNotExist", http_status_code=400)
    # when one call succeeds and one fails, inside a record's span
    with stubber, on.span("queue"):
        sqs.send_message(QueueUrl="https://sqs/q", MessageBody="{}")
        with pytest.raises(sqs.exceptions.ClientError):
            sqs.send_message(QueueUrl="https://sqs/q", MessageBody="{}")
    # then each is a client span under it, the failure marked with its code
    on.flush()
    calls = [s for s in exported.get_finished_spans() if s.name == "SQS.SendMessage"]
    queue = next(s for s in exported.get_finished_spans() if s.name == "queue")
    assert len(calls) == 2 and all(parent_of(c) == queue.context.span_id for c in calls)
    assert dict(calls[0].attributes or {})["rpc.method"] == "SendMessage"
    assert calls[0].status.is_ok
    assert dict(calls[1].attributes or {})["error.type"] == "QueueDoesNotExist"


def test_an_export_that_fails_is_a_warning_that_names_no_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given a collector that refuses connections, and headers that hold a token
    from piriod_devkit.aws import free_port

    settings = load_settings(
        {
            **REQUIRED,
            "PIRIOD_TRACING": "true",
            "PIRIOD_TRACING_ENDPOINT": f"http://127.0.0.1:{free_port()}/v1/traces",
            "PIRIOD_TRACING_HEADERS": "authorization=Bearer%20tok-secret-9",
            "PIRIOD_TRACING_TIMEOUT": "0.2",
        }
    )
    tracer = Tracer()
    tracer.configure(settings)
    caplog.set_level(logging.DEBUG)
    # when an invocation ends, then it ends normally
    with tracer.invocation("delivery"):
        pass
    assert tracer.flush() is True  # nothing left to export
    tracer.reset()
    # and the failure is logged, without the headers or their token
    warnings = [r for r in caplog.records if r.getMessage() == "trace spans not exported"]
    assert warnings
    logged = " ".join(
        f"{r.getMessage()} {json.dumps(r.__dict__, default=str)}" for r in caplog.records
    )
    assert "tok-secret-9" not in logged and "authorization" not in logged.lower()


def test_headers_that_do_not_parse_are_refused_without_showing_them() -> None:
    with pytest.raises(SettingsError, match="PIRIOD_TRACING_HEADERS") as refused:
        load_settings({**REQUIRED, "PIRIOD_TRACING_HEADERS": "Bearer tok-secret-9"})
    assert "tok-secret-9" not in str(refused.value)
    settings = load_settings({**REQUIRED, "PIRIOD_TRACING_HEADERS": "x-api-key=tok-secret-9"})
    assert "tok-secret-9" not in repr(settings) and "tok-secret-9" not in str(settings)


def message(trace: object = None) -> QueuedRecord:
    now = datetime.now(UTC)
    return QueuedRecord.model_validate(
        {
            "usage": Usage(
                subscription_line=7,
                date_time=datetime(2026, 11, 1, tzinfo=UTC),
                quantity=Decimal("1.10"),
                key=UsageKey(kind=KeyKind.DELIVERY, scope="native", text="m:0"),
            ),
            "tenant": Tenant(workspace="acc_1", test_mode=False),
            "failure": Failure(kind=FailureKind.TRANSIENT, at=now),
            "attempts": 1,
            "first_failure_at": now,
            "trace": trace,
        }
    )


@pytest.mark.parametrize("trace", [None, "", "not a trace", f"00-{'0' * 32}-00f067aa0ba902b7-01"])
def test_a_queue_message_without_a_valid_trace_reads_as_before(trace: Any) -> None:
    # a message is never unreadable because of its trace, and without one it is written
    # exactly as before tracing existed
    written = message(trace).to_json()
    assert "trace" not in json.loads(written)
    assert QueuedRecord.from_json(written).trace is None


def test_a_queue_message_carries_its_trace() -> None:
    assert QueuedRecord.from_json(message(TRACEPARENT).to_json()).trace == TRACEPARENT
