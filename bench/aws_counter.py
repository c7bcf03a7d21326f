"""A counting reverse proxy in front of moto: every AWS request the code under test makes
passes through it and is counted by caller, service and action, so that round trips are
counted at the stand-in, not by the code being measured. Each DynamoDB request is also
priced in write and read capacity (bench/capacity.py: DynamoDB's rules, GSIs included).

    python bench/aws_counter.py --port 4570 --target http://127.0.0.1:4566
    python bench/aws_counter.py --listen webhook:4570 --listen replay:4571 --serial ...

    GET /__counts  -> {"total": n, "by_action": {...}, "wcu": w, "by_caller": {caller: {...}}}
    POST /__reset  -> zeroes the counts (what the table holds is remembered, to price updates)

Each --listen port is one caller (a label in the counts). With --serial the proxy serves
one DynamoDB request at a time, across all its ports, like a store that queues its requests (a
busy DynamoDB partition, a throttled table): a request waits for the one before it to be
answered. Other services pass as they come: the replay instance's SQS long polls (ReceiveMessage
waits up to a second for messages) stand in for Lambda's event source mapping, which no
function waits behind; serialised with the store, they held it about 60 s of an 86 s run.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import urllib3

COUNTS: dict[str, Counter[str]] = {}  # caller -> "service:Action" -> requests
WCU: Counter[str] = Counter()  # caller -> write units (table and GSIs)
LOCK = threading.Lock()  # the counts
PRICING = threading.Lock()  # the pricers and what they remember of the table
SERIAL = threading.Lock()  # held around each DynamoDB request with --serial


class Prices:
    """A Pricer per table, made on the table's first request."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.pricers: dict[str, Any] = {}
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            import botocore.session

            self._client = botocore.session.Session().create_client(
                "dynamodb",
                endpoint_url=self.target,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
        return self._client

    def pricer(self, table: str) -> Any:
        from capacity import Pricer, read_back_with, table_indexes

        if table not in self.pricers:
            client = self.client()
            self.pricers[table] = Pricer(
                table_indexes(client, table), read_back_with(client, table)
            )
        return self.pricers[table]

    def price(
        self, action: str, request: dict[str, Any], answer: dict[str, Any], status: int
    ) -> int:
        """The write units this request cost (its reads are kept by the pricer)."""
        tables = _tables(request)
        if len(tables) != 1:
            return 0  # no table named (ListTables), or several (not used by the adapter)
        pricer = self.pricer(tables[0])
        before = pricer.capacity.total_wcu()
        pricer.price(action, request, answer, status)
        return int(pricer.capacity.total_wcu() - before)


def _tables(request: dict[str, Any]) -> list[str]:
    if "TableName" in request:
        return [str(request["TableName"])]
    if "RequestItems" in request:
        return sorted(request["RequestItems"])
    names = set()
    for action in request.get("TransactItems", []):
        for body in action.values():
            names.add(str(body.get("TableName")))
    return sorted(names)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    target = ""
    serial = False
    prices: Prices | None = None
    callers: dict[int, str] = {}  # noqa: RUF012 (set once, before serving)
    http = urllib3.PoolManager(maxsize=64)

    def setup(self) -> None:
        # An answer is written as its head, then its body. Without TCP_NODELAY the body
        # waits for the client to acknowledge the head, which Linux delays by up to 40 ms:
        # measured, every request through the proxy took about 50 ms against 3 to 4 ms
        # straight to moto, and with --serial that was the store's whole pace.
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def caller(self) -> str:
        port = int(self.server.server_address[1])  # type: ignore[index]
        return self.callers.get(port, "all")

    def _control(self) -> bool:
        if self.path == "/__counts":
            with LOCK:
                everything: Counter[str] = Counter()
                for counts in COUNTS.values():
                    everything.update(counts)
                body = json.dumps(
                    {
                        "total": sum(everything.values()),
                        "by_action": dict(everything),
                        "wcu": sum(WCU.values()),
                        "by_caller": {
                            caller: {
                                "total": sum(counts.values()),
                                "by_action": dict(counts),
                                "wcu": WCU[caller],
                            }
                            for caller, counts in COUNTS.items()
                        },
                    }
                )
            self._answer(200, body.encode(), {"content-type": "application/json"})
            return True
        if self.path == "/__reset":
            with LOCK:
                COUNTS.clear()
                WCU.clear()
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
        target = self.headers.get("x-amz-target") or ""
        action = target.split(".")[-1]
        if not action and body:
            action = parse_qs(body.decode("utf-8", "replace")).get("Action", [""])[0]
        service = "".join((self.headers.get("authorization") or "").split("/")[3:4])
        with LOCK:
            COUNTS.setdefault(self.caller, Counter())[f"{service}:{action}"] += 1
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        if self.serial and target.startswith("DynamoDB_"):
            with SERIAL:
                status, data, answer_headers = self._send(body, headers)
        else:
            status, data, answer_headers = self._send(body, headers)
        # Priced once the store is free again: its read-back of an update is the proxy's own
        # request, no part of the store's pace (as without --serial, a write of the same item
        # in between is priced as it is then).
        wcu = self._price(body, target, action, status, data)
        if wcu:
            with LOCK:
                WCU[self.caller] += wcu
        self._answer(status, data, answer_headers)

    def _send(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        response = self.http.request(
            self.command,
            self.target + self.path,
            body=body,
            headers=headers,
            retries=False,
            redirect=False,
        )
        return response.status, response.data, dict(response.headers)

    def _price(self, body: bytes, target: str, action: str, status: int, data: bytes) -> int:
        if self.prices is None or not target.startswith("DynamoDB_"):
            return 0
        try:
            request = json.loads(body) if body else {}
            answer = json.loads(data) if data else {}
            with PRICING:  # one pricer at a time: what it remembers of the table
                return int(self.prices.price(action, request, answer, status))
        except (ValueError, KeyError, TypeError):
            return 0  # not priced (a request the pricer does not know)

    do_GET = _forward
    do_POST = _forward
    do_PUT = _forward
    do_DELETE = _forward


class Server(ThreadingHTTPServer):
    # A store queues what it cannot serve yet; it does not refuse connections. The default
    # backlog (5) would drop the connections of a burst (16 claims at once per instance).
    request_queue_size = 1024


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, help="one port, caller 'all'")
    parser.add_argument("--listen", action="append", default=[], help="CALLER:PORT, repeatable")
    parser.add_argument("--target", required=True)
    parser.add_argument("--serial", action="store_true", help="one DynamoDB request at a time")
    parser.add_argument("--no-price", action="store_true", help="count only")
    args = parser.parse_args()
    listen = [("all", args.port)] if args.port else []
    listen += [(c, int(p)) for c, p in (item.rsplit(":", 1) for item in args.listen)]
    Handler.target = args.target.rstrip("/")
    Handler.serial = args.serial
    Handler.prices = None if args.no_price else Prices(Handler.target)
    Handler.callers = {port: caller for caller, port in listen}
    servers = []
    for _, port in listen:
        server = Server(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        servers.append(server)
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
