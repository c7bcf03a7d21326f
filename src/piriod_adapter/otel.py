"""OpenTelemetry behind piriod_adapter.tracing, imported only when tracing is on.

Manual spans only (no auto-instrumentation): the OpenTelemetry SDK makes them; the official
OTLP encoder (opentelemetry-exporter-otlp-proto-common, what the OTLP/HTTP exporter sends)
writes them as an OTLP/HTTP protobuf request, POSTed here with the adapter's own urllib3.
The stock OTLPSpanExporter would bring `requests` and its dependencies, about 40 ms more of
a cold start's imports (`make bench`) for the same bytes on the wire.

A Lambda function is frozen between invocations and may be snapshotted (SnapStart), so no
thread exports in the background: the spans of an invocation are kept and exported in one
request (or a few, for very many spans) when the invocation ends, before the handler
returns. An export never fails the invocation: a collector that is down costs at most the
export timeout (PIRIOD_TRACING_TIMEOUT), and the spans are dropped with a warning. The
headers (PIRIOD_TRACING_HEADERS, which may hold a token) are sent to the endpoint and
nowhere else: never logged, never an attribute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import copy_context
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import urllib3
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, NonRecordingSpan, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from piriod_adapter.observability import SERVICE, logger
from piriod_adapter.tracing import Kind, Span

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from piriod_adapter.settings import Settings

_P = ParamSpec("_P")
_R = TypeVar("_R")

KINDS = {
    "internal": SpanKind.INTERNAL,
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "consumer": SpanKind.CONSUMER,
    "producer": SpanKind.PRODUCER,
}
MAX_SPANS = 20_000  # kept per invocation; more are dropped (counted in the export warning)
BATCH = 512  # spans per export request
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_PROPAGATOR = TraceContextTextMapPropagator()


class OtlpHttpExporter(SpanExporter):
    """Spans as one OTLP/HTTP protobuf POST (application/x-protobuf) to the endpoint."""

    def __init__(self, endpoint: str, headers: Mapping[str, str], timeout: float) -> None:
        self._endpoint = endpoint
        self._headers = {**headers, "content-type": "application/x-protobuf"}
        self._timeout = timeout
        self._http = urllib3.PoolManager(num_pools=1, maxsize=1, retries=False)
        self.failures = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        body = encode_spans(spans).SerializeToString()
        until = time.monotonic() + self._timeout
        pause = 0.1
        while True:
            left = max(until - time.monotonic(), 0.01)
            problem: str
            try:
                response = self._http.request(
                    "POST",
                    self._endpoint,
                    body=body,
                    headers=self._headers,
                    timeout=urllib3.Timeout(connect=min(1.0, left), read=left),
                    retries=False,
                    redirect=False,
                )
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                problem = type(exc).__name__
            else:
                if 200 <= response.status < 300:
                    return SpanExportResult.SUCCESS
                problem = f"HTTP {response.status}"
                if response.status not in RETRY_STATUSES:
                    break
            if until - time.monotonic() <= pause:
                break
            time.sleep(pause)
            pause *= 2
        self.failures += 1
        logger.warning("trace spans not exported", extra={"spans": len(spans), "error": problem})
        return SpanExportResult.FAILURE

    def clear(self) -> None:
        """Drop open connections (after a SnapStart restore their sockets are gone)."""
        self._http.clear()

    def shutdown(self) -> None:
        self._http.clear()


class InvocationSpanProcessor(SpanProcessor):
    """Keeps ended spans until `force_flush`, then exports them: once per invocation, in the
    invocation's own thread."""

    def __init__(self, exporter: SpanExporter, max_spans: int = MAX_SPANS) -> None:
        self._exporter = exporter
        self._max = max_spans
        self._lock = threading.Lock()
        self._spans: list[ReadableSpan] = []
        self.dropped = 0

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled:
            return
        with self._lock:
            if len(self._spans) < self._max:
                self._spans.append(span)
            else:
                self.dropped += 1

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        with self._lock:
            spans, self._spans = self._spans, []
            dropped, self.dropped = self.dropped, 0
        if dropped:
            logger.warning("trace spans dropped", extra={"spans": dropped, "kept": len(spans)})
        done = True
        for start in range(0, len(spans), BATCH):
            result = self._exporter.export(spans[start : start + BATCH])
            done = done and result is SpanExportResult.SUCCESS
        return done

    def shutdown(self) -> None:
        self.force_flush()
        self._exporter.shutdown()


class _Handle:
    """A span as tracing.Span: attributes and failure, nothing else."""

    __slots__ = ("otel",)

    def __init__(self, span: trace.Span) -> None:
        self.otel = span

    def set(self, **attributes: Any) -> None:
        self.otel.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def fail(self, reason: str) -> None:
        self.otel.set_status(Status(StatusCode.ERROR, reason))


class OtelBackend:
    """tracing.Backend on the OpenTelemetry SDK."""

    def __init__(self, settings: Settings, exporter: SpanExporter | None = None) -> None:
        from piriod_adapter.settings import tracing_headers

        resource = Resource.create(
            {
                "service.name": SERVICE,
                "cloud.provider": "aws",
                "cloud.platform": "aws_lambda",
                **({"faas.name": settings.function_name} if settings.function_name else {}),
                **({"cloud.region": settings.aws_region} if settings.aws_region else {}),
            }
        )
        self.exporter = exporter or OtlpHttpExporter(
            settings.tracing_endpoint, tracing_headers(settings), settings.tracing_timeout
        )
        self.processor = InvocationSpanProcessor(self.exporter)
        # The sampler is the SDK's default, parent-based: a sender's traceparent that is not
        # sampled is not recorded (OTEL_TRACES_SAMPLER and its argument may change that).
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.provider.add_span_processor(self.processor)
        self._tracer = self.provider.get_tracer("piriod_adapter")
        self._root: trace.Span | None = None  # the invocation's span (one at a time)

    # --- spans ------------------------------------------------------------------------------

    def _parent(self, parent: str | None) -> tuple[Context | None, list[Link]]:
        current = trace.get_current_span().get_span_context()
        if parent:
            remote = trace.get_current_span(
                _PROPAGATOR.extract({"traceparent": parent})
            ).get_span_context()
            if remote.is_valid and not (current.is_valid and current.trace_id == remote.trace_id):
                links = [Link(current)] if current.is_valid else []
                return trace.set_span_in_context(NonRecordingSpan(remote)), links
        if current.is_valid:
            return None, []
        root = self._root
        return (trace.set_span_in_context(root) if root is not None else None), []

    def start(
        self, name: str, parent: str | None, kind: Kind, attributes: Mapping[str, Any]
    ) -> trace.Span:
        context, links = self._parent(parent)
        return self._tracer.start_span(
            name,
            context=context,
            kind=KINDS[kind],
            attributes={k: v for k, v in attributes.items() if v is not None},
            links=links,
        )

    @contextmanager
    def span(
        self, name: str, parent: str | None, kind: Kind, attributes: Mapping[str, Any]
    ) -> Iterator[Span]:
        span = self.start(name, parent, kind, attributes)
        with trace.use_span(span, end_on_exit=True):
            yield _Handle(span)

    @contextmanager
    def invocation(
        self, name: str, parent: str | None, kind: Kind, attributes: Mapping[str, Any]
    ) -> Iterator[Span]:
        try:
            span = self.start(name, parent, kind, attributes)
            with trace.use_span(span, end_on_exit=True):
                saved, self._root = self._root, span
                try:
                    yield _Handle(span)
                finally:
                    self._root = saved
        finally:
            self.flush()

    def carry(self, function: Callable[_P, _R]) -> Callable[_P, _R]:
        captured = copy_context()

        def carried(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            return captured.copy().run(function, *args, **kwargs)

        return carried

    def traceparent(self) -> str | None:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return carrier.get("traceparent")

    # --- AWS calls --------------------------------------------------------------------------

    def watch_aws(self, session: Any) -> None:
        """botocore's own events on the session (its clients copy them when made): a span
        from before-call to after-call (or after-call-error), in the request's context."""
        # First among the handlers of before-call: one that answers the call itself (a stub)
        # ends the event there, and the call would have no span.
        events = session.get_component("event_emitter")
        events.register_first("before-call.*.*", self._aws_started)
        events.register("after-call.*.*", self._aws_answered)
        events.register("after-call-error.*.*", self._aws_failed)

    def _aws_started(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        service = str(model.service_model.service_id).replace(" ", "")  # "SecretsManager"
        context["piriod_span"] = self.start(
            f"{service}.{model.name}",
            None,
            "client",
            {"rpc.system": "aws-api", "rpc.service": service, "rpc.method": model.name},
        )

    def _aws_answered(
        self, http_response: Any, parsed: Any, context: dict[str, Any], **_: Any
    ) -> None:
        span: trace.Span | None = context.pop("piriod_span", None)
        if span is None:
            return
        status = getattr(http_response, "status_code", None)
        metadata = parsed.get("ResponseMetadata", {}) if isinstance(parsed, dict) else {}
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if metadata.get("RequestId"):
            span.set_attribute("aws.request_id", metadata["RequestId"])
        if status is not None and status >= 400:
            code = (parsed.get("Error") or {}).get("Code") if isinstance(parsed, dict) else None
            span.set_attribute("error.type", str(code or status))
            span.set_status(Status(StatusCode.ERROR, str(code or status)))
        span.end()

    def _aws_failed(self, exception: BaseException, context: dict[str, Any], **_: Any) -> None:
        span: trace.Span | None = context.pop("piriod_span", None)
        if span is None:
            return
        span.set_attribute("error.type", type(exception).__name__)
        span.record_exception(exception)
        span.set_status(Status(StatusCode.ERROR, type(exception).__name__))
        span.end()

    # --- export -----------------------------------------------------------------------------

    def flush(self) -> bool:
        try:
            return self.provider.force_flush()
        except Exception as exc:  # tracing never fails an invocation
            logger.warning("trace export failed", extra={"error": type(exc).__name__})
            return False

    def clear(self) -> None:
        if isinstance(self.exporter, OtlpHttpExporter):
            self.exporter.clear()

    def shutdown(self) -> None:
        self.flush()
        self.exporter.shutdown()
