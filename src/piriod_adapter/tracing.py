"""Tracing: spans around each delivery, each record's lifecycle steps, each Piriod and AWS
call, each flush and replay, exported over OTLP/HTTP when tracing is on (PIRIOD_TRACING, the
template's Tracing parameter; docs/operations.md, Tracing).

Off by default. Off, every span is one shared object that does nothing, and no OpenTelemetry
module is imported at all (tests/unit/test_tracing.py shows it): the SDK and its exporter are
imported by piriod_adapter.otel, and only that module imports them, only when tracing is on.

The code uses one object, `tracer`, the same whether tracing is on or off:

    from piriod_adapter.tracing import tracer

    with tracer.span("claim", index=3) as span:  # a child of the current span
        span.set(outcome="taken")
    with tracer.span("record", parent=message.trace):  # continues a queued record's trace
        ...
    @tracer.traced("settle")  # a span around every call
    pool.submit(tracer.carry(work), item)  # runs under the current span in a pool thread
    tracer.traceparent()  # the current span as a W3C traceparent (None when off)

Handlers open the outermost span of an invocation with `tracer.invocation(...)`, which
exports the invocation's spans before the function returns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar

if TYPE_CHECKING:
    from piriod_adapter.settings import Settings

Attribute = str | bool | int | float
Kind = Literal["internal", "server", "client", "consumer", "producer"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class Span(Protocol):
    """What a block can do with its span."""

    def set(self, **attributes: Attribute | None) -> None:
        """Add attributes (None values are left out)."""

    def fail(self, reason: str) -> None:
        """Mark the span as failed (an answer that is an error, without an exception)."""


class _NoSpan:
    """The span of every block while tracing is off: a shared object that does nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def set(self, **attributes: Attribute | None) -> None:
        pass

    def fail(self, reason: str) -> None:
        pass


NO_SPAN = _NoSpan()


class Backend(Protocol):
    """What piriod_adapter.otel provides when tracing is on."""

    def span(
        self, name: str, parent: str | None, kind: Kind, attributes: Mapping[str, Any]
    ) -> AbstractContextManager[Span]: ...

    def invocation(
        self, name: str, parent: str | None, kind: Kind, attributes: Mapping[str, Any]
    ) -> AbstractContextManager[Span]: ...

    def carry(self, function: Callable[_P, _R]) -> Callable[_P, _R]: ...

    def traceparent(self) -> str | None: ...

    def watch_aws(self, session: Any) -> None: ...

    def flush(self) -> bool: ...

    def clear(self) -> None: ...

    def shutdown(self) -> None: ...


class Tracer:
    """The tracing API of the whole adapter: a no-op until `configure` turns tracing on."""

    def __init__(self) -> None:
        self._backend: Backend | None = None
        self._configured: tuple[Any, ...] | None = None

    @property
    def enabled(self) -> bool:
        return self._backend is not None

    def span(
        self,
        name: str,
        attributes: Mapping[str, Attribute | None] | None = None,
        /,
        *,
        parent: str | None = None,
        kind: Kind = "internal",
        **more: Attribute | None,
    ) -> AbstractContextManager[Span]:
        """A span around a block, a child of the current span, with `attributes` (a mapping,
        for dotted names) and `more`. With `parent` (a W3C traceparent, e.g. a queue
        message's `trace`) the span continues that trace instead, linked to the current span,
        unless the current span is already in that trace."""
        backend = self._backend
        if backend is None:
            return NO_SPAN
        return backend.span(name, parent, kind, {**(attributes or {}), **more})

    def invocation(
        self,
        name: str,
        attributes: Mapping[str, Attribute | None] | None = None,
        /,
        *,
        parent: str | None = None,
        kind: Kind = "server",
        **more: Attribute | None,
    ) -> AbstractContextManager[Span]:
        """The outermost span of a function invocation: work done in threads that do not
        carry a span (a pool's AWS calls) is placed under it, and every span of the
        invocation is exported when it ends, before the function returns."""
        backend = self._backend
        if backend is None:
            return NO_SPAN
        return backend.invocation(name, parent, kind, {**(attributes or {}), **more})

    def traced(
        self, name: str, **attributes: Attribute | None
    ) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
        """A decorator: a span named `name` around every call of the function."""

        def decorate(function: Callable[_P, _R]) -> Callable[_P, _R]:
            @functools.wraps(function)
            def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
                backend = self._backend
                if backend is None:
                    return function(*args, **kwargs)
                with backend.span(name, None, "internal", attributes):
                    return function(*args, **kwargs)

            return wrapper

        return decorate

    def carry(self, function: Callable[_P, _R]) -> Callable[_P, _R]:
        """`function`, to run in another thread under the span current here and now (a
        pool's threads start with no span). Off: `function` itself."""
        backend = self._backend
        return function if backend is None else backend.carry(function)

    def traceparent(self) -> str | None:
        """The current span as a W3C traceparent, to carry the trace in a queue message."""
        backend = self._backend
        return None if backend is None else backend.traceparent()

    def watch_aws(self, session: Any) -> None:
        """Every AWS call of clients made later from this botocore session becomes a span."""
        backend = self._backend
        if backend is not None:
            backend.watch_aws(session)

    def flush(self) -> bool:
        """Export every ended span now (False: some could not be exported; never raises)."""
        backend = self._backend
        return True if backend is None else backend.flush()

    def clear(self) -> None:
        """Drop the exporter's open connections (SnapStart: after a restore)."""
        backend = self._backend
        if backend is not None:
            backend.clear()

    def configure(self, settings: Settings) -> None:
        """Tracing as the settings say: on (the exporter made once, for the endpoint and
        headers given) or off."""
        wanted = _configuration(settings)
        if wanted == self._configured:
            return
        self.reset()
        if wanted is not None:
            from piriod_adapter.otel import OtelBackend

            self._backend = OtelBackend(settings)
        self._configured = wanted

    def reset(self) -> None:
        """Tracing off; spans not yet exported are exported first."""
        backend, self._backend, self._configured = self._backend, None, None
        if backend is not None:
            backend.shutdown()


def _configuration(settings: Settings) -> tuple[Any, ...] | None:
    if not settings.tracing:
        return None
    return (
        settings.tracing_endpoint,
        settings.tracing_headers.get_secret_value(),
        settings.tracing_timeout,
        settings.function_name,
    )


tracer = Tracer()
