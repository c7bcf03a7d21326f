"""A counting reverse proxy in front of moto: every AWS request the code under test makes
passes through it and is counted by service and action, so that round trips are counted at
the stand-in, not by the code being measured.

    python bench/aws_counter.py --port 4570 --target http://127.0.0.1:4566
    GET /__counts   -> {"total": n, "by_action": {...}};  POST /__reset -> zeroes them
"""

from __future__ import annotations

import argparse
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import urllib3

COUNTS: Counter[str] = Counter()
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    target = ""
    http = urllib3.PoolManager(maxsize=64)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _control(self) -> bool:
        if self.path == "/__counts":
            with LOCK:
                body = json.dumps({"total": sum(COUNTS.values()), "by_action": dict(COUNTS)})
            self._answer(200, body.encode(), {"content-type": "application/json"})
            return True
        if self.path == "/__reset":
            with LOCK:
                COUNTS.clear()
            self._answer(200, b"{}", {"content-type": "application/json"})
            return True
        return False

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _forward(self) -> None:
        if self._control():
            return
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        action = self.headers.get("x-amz-target") or ""
        if not action and body:
            action = parse_qs(body.decode("utf-8", "replace")).get("Action", [""])[0]
        service = (self.headers.get("authorization") or "").split("/")[3:4]
        with LOCK:
            COUNTS[f"{''.join(service)}:{action.split('.')[-1]}"] += 1
        response = self.http.request(
            self.command,
            self.target + self.path,
            body=body,
            headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
            retries=False,
            redirect=False,
        )
        self._answer(response.status, response.data, dict(response.headers))

    do_GET = _forward
    do_POST = _forward
    do_PUT = _forward
    do_DELETE = _forward


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True)
    args = parser.parse_args()
    Handler.target = args.target.rstrip("/")
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
