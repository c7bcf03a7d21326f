"""Serve the webhook on a local port: each HTTP request becomes an API Gateway v2 event for
the real handler, as API Gateway would build it (payload format 2.0)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from piriod_devkit.events import LambdaContext, http_event

MAX_REQUEST_BYTES = 10 * 1024 * 1024  # API Gateway's own payload limit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LocalApiServer

    def setup(self) -> None:
        super().setup()
        # headers and body go out as separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add up to 40 ms to an answer (as in the Piriod stand-in)
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_REQUEST_BYTES:
            self._send(413, {"message": "Request Entity Too Large"})
            return
        body = self.rfile.read(length)
        path, _, query = self.path.partition("?")
        event = http_event(
            "POST", path, body, {k.lower(): v for k, v in self.headers.items()}, query=query
        )
        result = self.server.invoke(event)
        payload = result.get("body", "")
        self._send(int(result["statusCode"]), payload, result.get("headers") or {})

    def do_GET(self) -> None:
        route = self.server.local_routes.get(self.path.partition("?")[0])
        if route is None:
            self._send(404, {"message": "Not Found"})
            return
        self._send(200, route())

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {"content-type": "application/json"}).items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


Answered = Callable[[dict[str, Any], dict[str, Any]], None]


class LocalApiServer(ThreadingHTTPServer):
    """`on_answer(event, response)` is told of every answer the handler gave; `local_routes`
    maps a GET path (not an API Gateway route, e.g. `/_local/env`) to its JSON body."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout_seconds: float = 25.0,
        *,
        on_answer: Answered | None = None,
        local_routes: dict[str, Callable[[], Any]] | None = None,
    ):
        super().__init__((host, port), _Handler)
        self.timeout_seconds = timeout_seconds
        self.on_answer = on_answer
        self.local_routes = local_routes if local_routes is not None else {}
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        from piriod_adapter.handlers.webhook import lambda_handler

        context = LambdaContext(timeout_seconds=self.timeout_seconds)
        response: dict[str, Any] = lambda_handler(event, context)
        if self.on_answer is not None:
            self.on_answer(event, response)
        return response

    def start(self) -> LocalApiServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
