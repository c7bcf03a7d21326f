"""X-Ray subsegments for Piriod and AWS calls, without the X-Ray SDK (it would bring its own
botocore into the package). Each call's timing is sent to the function's X-Ray daemon as a
subsegment of the invocation's segment, when the invocation is sampled. Off unless
PIRIOD_TRACING is true: then nothing is measured or sent, and nothing extra is imported."""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

HEADER = b'{"format": "json", "version": 1}\n'


class Tracer:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._socket: socket.socket | None = None

    @contextmanager
    def subsegment(self, name: str, namespace: str = "remote") -> Iterator[dict[str, Any]]:
        """Time the block as a subsegment; the block may add `http` or `aws` details."""
        details: dict[str, Any] = {}
        if not self.enabled:
            yield details
            return
        started = time.time()
        try:
            yield details
        except BaseException:
            details["fault"] = True
            raise
        finally:
            self.send(name, namespace, started, time.time(), details)

    def send(
        self, name: str, namespace: str, started: float, ended: float, details: dict[str, Any]
    ) -> None:
        parent = _parent()
        if parent is None:
            return
        trace_id, parent_id = parent
        document = {
            "name": name,
            "id": secrets.token_hex(8),
            "trace_id": trace_id,
            "parent_id": parent_id,
            "start_time": started,
            "end_time": ended,
            "type": "subsegment",
            "namespace": namespace,
            **details,
        }
        host, _, port = os.environ.get("AWS_XRAY_DAEMON_ADDRESS", "127.0.0.1:2000").partition(":")
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._socket.sendto(HEADER + json.dumps(document).encode(), (host, int(port)))
        except (OSError, ValueError):
            pass  # tracing never fails a call

    def watch_aws(self, session: Any) -> None:
        """Every AWS call of clients made from this botocore session becomes a subsegment."""
        if not self.enabled:
            return

        def before(context: dict[str, Any], **_: Any) -> None:
            context["trace_started"] = time.time()

        def after(context: dict[str, Any], model: Any, http_response: Any, **_: Any) -> None:
            started = context.get("trace_started")
            if started is None:
                return
            service = model.service_model.service_id
            status = getattr(http_response, "status_code", None)
            details: dict[str, Any] = {
                "aws": {"operation": model.name},
                "http": {"response": {"status": status}},
            }
            if status is not None and status >= 500:
                details["fault"] = True
            elif status is not None and status >= 400:
                details["error"] = True
            self.send(str(service), "aws", started, time.time(), details)

        session.register("before-parameter-build", before)  # every call passes here first
        session.register("after-call", after)


def _parent() -> tuple[str, str] | None:
    """The invocation's trace and segment, when it is sampled (_X_AMZN_TRACE_ID)."""
    fields = dict(
        part.split("=", 1)
        for part in os.environ.get("_X_AMZN_TRACE_ID", "").split(";")
        if "=" in part
    )
    if fields.get("Sampled") != "1" or "Root" not in fields or "Parent" not in fields:
        return None
    return fields["Root"], fields["Parent"]
