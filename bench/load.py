"""Concurrent load benchmark: signed native deliveries from several senders to several webhook
instances (one OS process each, like a Lambda container each) and one replay instance, while
the Piriod stand-in goes through phases of faults; then a reconcile of every acknowledged
record against Piriod's ledger and both queues.

    make bench-load              # or: .venv/bin/python bench/load.py [--records N] [--quick]

It prints numbers and never asserts a timing. It exits 1 only if an acknowledged record was
lost, a record was posted twice, or the webhook answered a 5xx; it writes
bench/load-results.json and bench/load-results.md.

What runs, all over loopback:
  - moto in server mode (Secrets Manager, SQS, DynamoDB, provisioned from template.yaml) and
    the Piriod stand-in, each in its own process;
  - N webhook instances: this file with `--role webhook`, the real WebhookFunction handler
    behind devkit's local API server, one invocation at a time (as a Lambda container);
  - 1 replay instance: this file with `--role replay`, the real ReplayFunction handler fed
    ReplayQueue batches as the event source mapping does (receive up to 10, invoke with
    ApproximateReceiveCount, delete what is not in batchItemFailures); now and then it
    "crashes" before deleting, having received with a short visibility timeout, so SQS hands
    the messages over again;
  - the senders, in this process: batches of 1..100 records, each with its own
    idempotency_key, line, quantity and time (a Piriod usage maps to exactly one record). A
    delivery answered anything but 202 is sent again, as a webhook producer does; some
    acknowledged deliveries are sent again (redeliveries: every record must be `duplicate`);
    some deliveries go out twice at once, the records in opposite order (contention on keys).

Piriod's phases: healthy; usages stored but the answer lost (503, 503 with Retry-After,
500, 200 instead of 201, a read timeout after the store); read timeouts (slower than
PIRIOD_READ_TIMEOUT, stored after the adapter gave up; or a body dripping out a byte at a
time, each within the read timeout); 429 with Retry-After (some beyond the
adapter's retries); 503 (not stored; a burst hits every post); latency; healthy again, and
ReplayQueue drained until empty (bounded in time).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from queue import Queue
from typing import Any

import urllib3

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TOKEN = "load-bench-token"
WORKSPACE = "acc_load_bench"
BASE_LATENCY = 0.030  # Piriod's answer time in every phase (the faults add to it)
READ_TIMEOUT = 1.0  # PIRIOD_READ_TIMEOUT
SETTLE_AFTER = 2.0  # SETTLE_AFTER_SECONDS: longer than any post stays in flight here
FIRST_LINE = 1_000_000
ANSWERED = ("posted", "duplicate", "queued", "rejected")


# --- the plan: records, deliveries, phases ---------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A stand-in fault for the first post(s) of chosen records: `repeat` posts of each."""

    kind: str
    params: tuple[tuple[str, Any], ...] = ()
    repeat: int = 1

    @property
    def label(self) -> str:
        shown = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.kind}({shown})" + (f"x{self.repeat}" if self.repeat > 1 else "")


@dataclass(frozen=True)
class Phase:
    name: str
    share: float  # of the records
    faulty: bool  # deliveries here count as "under faults"
    record_faults: tuple[Fault, ...] = ()  # one of these for `fault_share` of the records
    fault_share: float = 0.0
    global_faults: tuple[dict[str, Any], ...] = ()  # for every post while the phase lasts


PHASES = (
    Phase("healthy", 0.30, False),
    Phase(
        "store-then-fail",
        0.14,
        True,
        (
            Fault("answer_after_store", (("status", 503),)),
            Fault("answer_after_store", (("status", 503), ("retry_after", 1))),
            Fault("answer_after_store", (("status", 500),)),
            Fault("answer_after_store", (("status", 200),)),
            Fault("timeout_after_store", (("delay", 1.5),)),
        ),
        0.4,
    ),
    Phase(
        "read timeout",
        0.12,
        True,
        (
            Fault("latency", (("delay", 1.3),)),  # stored after the adapter stopped waiting
            Fault("drip", (("delay", 0.05),)),  # stored; the answer trickles out for seconds
        ),
        0.3,
    ),
    Phase(
        "429 + Retry-After",
        0.12,
        True,
        (
            Fault("status", (("status", 429), ("retry_after", 1))),
            Fault("status", (("status", 429), ("retry_after", 1)), repeat=3),
        ),
        0.4,
    ),
    Phase(
        "503",
        0.12,
        True,
        (Fault("status", (("status", 503),)),),
        0.4,
        ({"kind": "status", "status": 503, "count": 60},),
    ),
    Phase(
        "latency",
        0.12,
        True,
        (Fault("latency", (("delay", 0.7),)),),
        0.2,
        ({"kind": "latency", "delay": 0.2},),
    ),
    Phase("healthy again", 0.08, False),
)


@dataclass
class Record:
    n: int
    key: str
    line: int
    date_time: str
    quantity: str  # JSON number text, digits as Piriod must keep them
    phase: str
    fault: Fault | None = None
    results: list[tuple[str, str]] = field(default_factory=list)  # (delivery kind, status)

    @property
    def acked(self) -> bool:
        return any(status in ANSWERED for _, status in self.results)

    def json(self) -> str:
        return (
            f'{{"subscription_line": {self.line}, "date_time": "{self.date_time}", '
            f'"quantity": {self.quantity}, "idempotency_key": "{self.key}"}}'
        )


@dataclass
class Delivery:
    webhook_id: str
    records: list[Record]
    phase: Phase
    kind: str  # "first", "twin" (the same records at once, in opposite order), "redelivery"
    bare: bool = False  # a single record sent as the body itself
    paired: bool = False  # sent at the same moment as its twin

    @property
    def raw(self) -> bytes:
        if self.bare and len(self.records) == 1:
            return self.records[0].json().encode()
        return ('{"usages": [' + ", ".join(r.json() for r in self.records) + "]}").encode()


@dataclass
class Job:
    deliveries: list[Delivery]  # two: sent at the same moment to two instances
    install: bool = True  # install the records' faults before the first send


def batch_sizes(total: int, rng: random.Random) -> list[int]:
    """Mixed sizes 1..100, log-uniform: many small batches, some full ones."""
    sizes = []
    while total > 0:
        size = min(total, max(1, min(100, round(math.exp(rng.uniform(0, math.log(100)))))))
        sizes.append(size)
        total -= size
    return sizes


def fixed_sizes(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


def plan(
    records: int,
    rng: random.Random,
    run: str,
    phases_run: tuple[Phase, ...] = PHASES,
    batch_size: int | None = None,
    twins: float = 0.1,
) -> tuple[list[Record], list[list[Job]]]:
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    all_records: list[Record] = []
    phases: list[list[Job]] = []
    shares = sum(p.share for p in phases_run)
    counts = [int(records * p.share / shares) for p in phases_run]
    counts[0] += records - sum(counts)
    for number, (phase, count) in enumerate(zip(phases_run, counts, strict=True)):
        jobs: list[Job] = []
        sizes = batch_sizes(count, rng) if batch_size is None else fixed_sizes(count, batch_size)
        for size in sizes:
            batch = []
            for _ in range(size):
                n = len(all_records)
                record = Record(
                    n=n,
                    key=f"load-{run}-{n:06d}",
                    line=FIRST_LINE + n,
                    date_time=(base + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    quantity=f"{1 + n % 50}.{n:06d}",  # unique, trailing zeros kept
                    phase=phase.name,
                )
                if phase.record_faults and rng.random() < phase.fault_share:
                    record.fault = rng.choice(phase.record_faults)
                all_records.append(record)
                batch.append(record)
            first = Delivery(f"msg_load_{run}_p{number}_{len(jobs):04d}", batch, phase, "first")
            first.bare = size == 1 and rng.random() < 0.5
            job = Job([first])
            if rng.random() < twins:  # the same records at the same time, in opposite order
                first.paired = True
                job.deliveries.append(
                    Delivery(first.webhook_id + "_twin", batch[::-1], phase, "twin", paired=True)
                )
            jobs.append(job)
        phases.append(jobs)
    return all_records, phases


# --- the senders -----------------------------------------------------------------------------


@dataclass
class Send:
    webhook_id: str
    phase: str
    faulty: bool
    kind: str
    size: int
    paired: bool
    status: int  # 0: no answer
    seconds: float
    function_ms: float | None


class Tracker:
    """Jobs outstanding, scheduled ones included: a phase ends when none is left."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0

    def add(self) -> None:
        with self._cond:
            self._count += 1

    def done(self) -> None:
        with self._cond:
            self._count -= 1
            self._cond.notify_all()

    def wait_idle(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._count == 0)


class Senders:
    def __init__(
        self, urls: list[str], piriod: Any, senders: int, rng: random.Random, redeliver: float
    ) -> None:
        self.urls = urls
        self.piriod = piriod
        self.rng = rng
        self.redeliver = redeliver
        self.http = urllib3.PoolManager(maxsize=len(urls) * 2, retries=False)
        self.free: Queue[int] = Queue()
        for n in range(len(urls)):
            self.free.put(n)
        self.pair_lock = threading.Lock()
        self.work: Queue[Job | None] = Queue()
        self.tracker = Tracker()
        self.sends: list[Send] = []
        self.unacked: list[Delivery] = []
        self.redeliveries_not_duplicate: list[tuple[str, int, str]] = []
        self.lock = threading.Lock()
        self._timers: list[tuple[float, int, Job]] = []
        self._timer_cond = threading.Condition()
        self._stopping = False
        self.threads = [threading.Thread(target=self._sender, daemon=True) for _ in range(senders)]
        self.threads.append(threading.Thread(target=self._scheduler, daemon=True))
        for thread in self.threads:
            thread.start()

    def submit(self, job: Job, delay: float = 0.0) -> None:
        self.tracker.add()
        if delay <= 0:
            self.work.put(job)
            return
        with self._timer_cond:
            heapq.heappush(self._timers, (time.monotonic() + delay, id(job), job))
            self._timer_cond.notify()

    def _scheduler(self) -> None:
        with self._timer_cond:
            while not self._stopping:
                if not self._timers:
                    self._timer_cond.wait(0.5)
                    continue
                due = self._timers[0][0] - time.monotonic()
                if due > 0:
                    self._timer_cond.wait(due)
                    continue
                self.work.put(heapq.heappop(self._timers)[2])

    def stop(self) -> None:
        with self._timer_cond:
            self._stopping = True
            self._timer_cond.notify()
        for _ in self.threads[:-1]:
            self.work.put(None)

    def _sender(self) -> None:
        while True:
            job = self.work.get()
            if job is None:
                return
            try:
                self._run(job)
            except Exception as exc:  # a defect of the benchmark: say so, go on
                print(f"sender error: {exc!r}", file=sys.stderr)
            finally:
                self.tracker.done()

    def _install(self, records: list[Record]) -> None:
        groups: dict[Fault, list[int]] = defaultdict(list)
        for record in records:
            if record.fault is not None:
                groups[record.fault].append(record.line)
        for fault, lines in groups.items():
            self.piriod.add_fault(
                fault.kind, lines=lines, count=len(lines) * fault.repeat, **dict(fault.params)
            )

    def _run(self, job: Job) -> None:
        if job.install:
            self._install(job.deliveries[0].records)
        if len(job.deliveries) == 1:
            instance = self.free.get()
            self._until_acked(job.deliveries[0], instance)
            return
        with self.pair_lock:
            held = [self.free.get(), self.free.get()]
        start = threading.Barrier(len(job.deliveries))
        threads = [
            threading.Thread(target=self._until_acked, args=(d, n, start))
            for d, n in zip(job.deliveries, held, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _until_acked(
        self, delivery: Delivery, instance: int, start: threading.Barrier | None = None
    ) -> None:
        """Send, and send again after anything but a 202 (as a webhook producer does)."""
        for attempt in range(12):
            if attempt:
                time.sleep(min(5.0, 0.5 * attempt))
                instance = self.free.get()
            if start is not None:
                start.wait()
                start = None
            try:
                status, body = self._send(delivery, instance)
            finally:
                self.free.put(instance)
            if status == 202:
                self._acknowledged(delivery, body)
                return
        with self.lock:
            self.unacked.append(delivery)

    def _send(self, delivery: Delivery, instance: int) -> tuple[int, Any]:
        from piriod_devkit.events import http_event, sign_event

        raw = delivery.raw
        event = sign_event(http_event("POST", "/v1/usages", raw), message_id=delivery.webhook_id)
        headers = {**event["headers"], "content-type": "application/json"}
        began = time.perf_counter()
        function_ms: float | None = None
        try:
            response = self.http.request(
                "POST",
                self.urls[instance] + "/v1/usages",
                body=raw,
                headers=headers,
                timeout=urllib3.Timeout(connect=5, read=60),
                retries=False,
            )
            status, data = response.status, response.data
            header = response.headers.get("x-bench-function-ms")
            function_ms = float(header) if header else None
        except urllib3.exceptions.HTTPError:
            status, data = 0, b""
        seconds = time.perf_counter() - began
        body: Any = None
        try:
            body = json.loads(data) if data else None
        except ValueError:
            body = None
        with self.lock:
            self.sends.append(
                Send(
                    delivery.webhook_id + ("_again" if delivery.kind == "redelivery" else ""),
                    delivery.phase.name,
                    delivery.phase.faulty,
                    delivery.kind,
                    len(delivery.records),
                    delivery.paired and delivery.kind != "redelivery",
                    status,
                    seconds,
                    function_ms,
                )
            )
        return status, body

    def _acknowledged(self, delivery: Delivery, body: Any) -> None:
        results = (body or {}).get("results") or []
        by_index = {r.get("index"): r.get("status", "?") for r in results}
        with self.lock:
            for index, record in enumerate(delivery.records):
                status = by_index.get(index, "missing")
                record.results.append((delivery.kind, status))
                if delivery.kind == "redelivery" and status != "duplicate":
                    self.redeliveries_not_duplicate.append((delivery.webhook_id, index, status))
        if delivery.kind == "first" and self.rng.random() < self.redeliver:
            again = Delivery(delivery.webhook_id, delivery.records, delivery.phase, "redelivery")
            again.bare = delivery.bare
            self.submit(Job([again], install=False), delay=self.rng.uniform(0.2, 2.5))


# --- the instances (child processes) ---------------------------------------------------------


def serve_webhook(port: int) -> int:
    """--role webhook: the real handler behind the local API server, one invocation at a
    time (a Lambda container); the function's own time goes back in a header."""
    from piriod_adapter.runtime import get_runtime
    from piriod_devkit.local_api import LocalApiServer

    class Container(LocalApiServer):
        lock = threading.Lock()

        def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
            with self.lock:
                began = time.perf_counter()
                result = super().invoke(event)
                spent = time.perf_counter() - began
            headers = {
                **(result.get("headers") or {}),
                "x-bench-function-ms": f"{spent * 1000:.2f}",
            }
            return {**result, "headers": headers}

    get_runtime().prepare()  # what SnapStart makes before its snapshot
    server = Container(port=port, timeout_seconds=25.0)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server.start()
    print(f"ready {server.url}", flush=True)
    while not stop.wait(0.2):
        pass
    server.stop()
    return 0


def run_replay(stop_file: str, stats_file: str, crash_rate: float, seed: int) -> int:
    """--role replay: ReplayQueue batches through the real ReplayFunction handler, as the
    event source mapping hands them over; a "crash" leaves handled messages undeleted."""
    from piriod_adapter.handlers.replay import lambda_handler
    from piriod_adapter.runtime import get_runtime
    from piriod_devkit.aws import client
    from piriod_devkit.events import LambdaContext
    from piriod_devkit.poller import sqs_event

    rng = random.Random(seed)
    get_runtime().prepare()
    url = os.environ["REPLAY_QUEUE_URL"]
    sqs = client("sqs", os.environ["AWS_ENDPOINT_URL"])
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    stats: Counter[str] = Counter()
    in_function = 0.0
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    print("ready", flush=True)
    while not stopping.is_set() and not os.path.exists(stop_file):
        crash = rng.random() < crash_rate
        extra = {"VisibilityTimeout": 2} if crash else {}
        try:
            messages = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
                WaitTimeSeconds=1,
                **extra,
            ).get("Messages", [])
        except Exception as exc:
            stats["receive_errors"] += 1
            print(f"receive failed: {exc!r}", file=sys.stderr, flush=True)
            time.sleep(0.5)
            continue
        if not messages:
            stats["empty_receives"] += 1
            continue
        stats["batches"] += 1
        stats["received"] += len(messages)
        stats["received_again"] += sum(
            int(m["Attributes"].get("ApproximateReceiveCount", "1")) > 1 for m in messages
        )
        began = time.perf_counter()
        try:
            response = lambda_handler(
                sqs_event(messages, arn), LambdaContext(60.0, "ReplayFunction")
            )
        except Exception as exc:  # the function failed: the batch returns to the queue
            stats["invocation_errors"] += 1
            print(f"replay invocation raised: {exc!r}", file=sys.stderr, flush=True)
            continue
        finally:
            in_function += time.perf_counter() - began
        failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        stats["reported_failures"] += len(failed)
        done = [m for m in messages if m["MessageId"] not in failed]
        if crash:  # gone before deleting: some handled messages come back after 2 s
            stats["crashes"] += 1
            kept = [m for m in done if rng.random() < 0.5]
            stats["left_undeleted"] += len(done) - len(kept)
            done = kept
        for start in range(0, len(done), 10):
            chunk = done[start : start + 10]
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(chunk)
                ],
            )
        stats["deleted"] += len(done)
        Path(stats_file).write_text(json.dumps({**stats, "in_function_s": in_function}))
    cpu = time.process_time()
    Path(stats_file).write_text(json.dumps({**stats, "in_function_s": in_function, "cpu_s": cpu}))
    return 0


class Child:
    """One instance: this file in a child process with its own environment and log file."""

    def __init__(self, role: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--role", role, *args],
            env={**os.environ, **env},
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.log.name} exited: {self.log.read_text()[-2000:]}")
            if (b"\n" + self.log.read_bytes()).find(b"\nready") >= 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.log.name} did not start")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._out.close()


# --- measuring -------------------------------------------------------------------------------


def cpu_seconds(process: Any) -> float:
    """CPU time (user and system) a child process has used so far, from /proc (Linux)."""
    popen: Any = getattr(process, "process", None) or getattr(process, "_process", None)
    try:
        fields = Path(f"/proc/{popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, ValueError, IndexError):
        return float("nan")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (NaN for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def spread(values: list[float]) -> dict[str, float | int]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values, default=float("nan")),
    }


def queue_depth(sqs: Any, url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return sum(int(v) for v in attributes.values())


def drain(sqs: Any, url: str, timeout: float, poll: float = 1.0) -> tuple[bool, float, int]:
    """Wait (bounded in time and in polls) until ReplayQueue holds nothing: visible, in flight
    or delayed, three polls in a row. Returns (empty, seconds, polls)."""
    began = time.monotonic()
    quiet = 0
    polls = 0
    while time.monotonic() - began < timeout and polls < int(timeout / poll) + 10:
        polls += 1
        quiet = quiet + 1 if queue_depth(sqs, url) == 0 else 0
        if quiet >= 3:
            return True, time.monotonic() - began, polls
        time.sleep(poll)
    return False, time.monotonic() - began, polls


def queued_records(sqs: Any, url: str) -> dict[int, list[str]]:
    """What each message left in a queue says, by subscription line: '<kind>: <error>'."""
    from piriod_adapter.queue import receive_all

    found: dict[int, list[str]] = defaultdict(list)
    for message in receive_all(sqs, url, wait_seconds=0):
        try:
            body = json.loads(message["Body"])
            line = int(body["usage"]["subscription_line"])
            failure = body.get("failure") or {}
            why = (
                f"{failure.get('kind')}: {str(failure.get('error') or failure.get('errors'))[:80]}"
            )
        except (ValueError, KeyError, TypeError):
            line, why = -1, "unreadable message"
        found[line].append(why)
    return found


def key_states(dynamodb: Any, table: str) -> dict[int, str]:
    states: dict[int, str] = {}
    for page in dynamodb.get_paginator("scan").paginate(TableName=table):
        for item in page["Items"]:
            if "line" in item:
                states[int(item["line"]["N"])] = item["status"]["S"] + (
                    " ambiguous" if "ambiguous_since" in item else ""
                )
    return states


def reconcile(
    records: list[Record],
    ledger: list[dict[str, Any]],
    waiting: dict[int, list[str]],
    dead: dict[int, list[str]],
    states: dict[int, str],
) -> dict[str, Any]:
    by_line: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for usage in ledger:
        by_line[int(usage["subscription_line"])].append(usage)
    known = {r.line for r in records}
    out: dict[str, Any] = {
        "acknowledged": 0,
        "unacknowledged": 0,
        "in_piriod_once": 0,
        "posted_twice": 0,
        "lost": 0,
        "waiting_replay": 0,
        "dead_lettered": 0,
        "posted_and_still_queued": 0,
        "wrong_value": 0,
        "unknown_usages": sum(len(v) for k, v in by_line.items() if k not in known),
        "waiting_why": Counter(),
        "dead_why": Counter(),
        "examples": defaultdict(list),
    }

    def example(kind: str, record: Record) -> None:
        if len(out["examples"][kind]) < 10:
            out["examples"][kind].append(
                {
                    "key": record.key,
                    "line": record.line,
                    "phase": record.phase,
                    "fault": record.fault.label if record.fault else None,
                    "answers": record.results,
                    "piriod_ids": [u["id"] for u in by_line[record.line]],
                    "key_state": states.get(record.line),
                    "queued": waiting.get(record.line, []) + dead.get(record.line, []),
                }
            )

    for record in records:
        usages = by_line[record.line]
        if len(usages) > 1:
            out["posted_twice"] += 1
            example("posted_twice", record)
        for usage in usages:
            if usage["quantity"] != record.quantity or usage["date_time"] != record.date_time:
                out["wrong_value"] += 1
                example("wrong_value", record)
        if usages and (record.line in waiting or record.line in dead):
            out["posted_and_still_queued"] += 1
        if not record.acked:
            out["unacknowledged"] += 1
            continue
        out["acknowledged"] += 1
        if len(usages) == 1:
            out["in_piriod_once"] += 1
        elif not usages and record.line in waiting:
            out["waiting_replay"] += 1
            out["waiting_why"].update(waiting[record.line][:1])
            example("waiting", record)
        elif not usages and record.line in dead:
            out["dead_lettered"] += 1
            out["dead_why"].update(dead[record.line][:1])
            example("dead_lettered", record)
        elif not usages:
            out["lost"] += 1
            example("lost", record)
    return out


# --- the run ---------------------------------------------------------------------------------


class StoreProxy:
    """bench/aws_counter.py in front of moto, one port per caller (the webhook instances, the
    replay instance): every AWS request counted, DynamoDB writes priced; with `serial`, one
    request served at a time, as by a store that queues its requests."""

    def __init__(self, target: str, serial: bool, priced: bool = True) -> None:
        from piriod_devkit.aws import free_port

        self.ports = {"webhook": free_port(), "replay": free_port()}
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(BENCH / "aws_counter.py"),
                "--target",
                target,
                *(
                    a
                    for caller, port in self.ports.items()
                    for a in ("--listen", f"{caller}:{port}")
                ),
                *(["--serial"] if serial else []),
                *([] if priced else ["--no-price"]),
            ]
        )
        self.http = urllib3.PoolManager()
        for _ in range(200):
            try:
                self.counts()
                return
            except urllib3.exceptions.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the AWS request counter did not start")

    def url(self, caller: str) -> str:
        return f"http://127.0.0.1:{self.ports[caller]}"

    def counts(self) -> dict[str, Any]:
        answer = self.http.request("GET", self.url("webhook") + "/__counts", retries=False)
        counts: dict[str, Any] = json.loads(answer.data)
        return counts

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def counted_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What each caller asked of AWS between two snapshots of the proxy's counts."""
    delta: dict[str, Any] = {}
    for caller, now in after.get("by_caller", {}).items():
        was = before.get("by_caller", {}).get(caller, {"total": 0, "wcu": 0, "by_action": {}})
        actions = Counter(now["by_action"])
        actions.subtract(was["by_action"])
        delta[caller] = {
            "requests": now["total"] - was["total"],
            "wcu": now["wcu"] - was["wcu"],
            "by_action": {k: v for k, v in actions.items() if v},
        }
    return delta


def run(args: argparse.Namespace) -> int:
    from piriod_devkit.aws import MotoServer, client, free_port, function_environment, provision
    from piriod_devkit.events import LOCAL_SIGNING_SECRET
    from piriod_devkit.standin_process import StandinProcess

    rng = random.Random(args.seed)
    run_id = f"{int(time.time()):x}"
    phases_run = tuple(p for p in PHASES if p.name in args.phases)
    records, phases = plan(args.records, rng, run_id, phases_run, args.batch, args.twins)
    logs = Path(tempfile.mkdtemp(prefix="piriod-load-"))
    began = time.monotonic()
    children: list[Child] = []
    with MotoServer() as moto, StandinProcess(token=TOKEN, workspace=WORKSPACE) as piriod:
        resources = provision(moto.url, token=TOKEN, signing_secrets=[LOCAL_SIGNING_SECRET])
        env = function_environment(
            resources,
            piriod_url=piriod.url,
            workspace=WORKSPACE,
            PIRIOD_CONNECT_TIMEOUT="1",
            PIRIOD_READ_TIMEOUT=str(READ_TIMEOUT),
            SETTLE_AFTER_SECONDS=str(SETTLE_AFTER),
            REPLAY_BACKOFF_SECONDS="1",
            # moto on a busy 2-core machine is far slower than DynamoDB and SQS: a slow
            # answer would be a 503 (store unavailable), which is not what is measured here
            AWS_CLIENT_READ_TIMEOUT="10",
            POWERTOOLS_LOG_LEVEL="WARNING",
            POWERTOOLS_METRICS_DISABLED="true",
        )
        # The outside shape's store does nothing but serve requests: the proxy's read-back of
        # each update to price it would be moto's work too (write units: make bench-load).
        proxy = StoreProxy(moto.url, args.serial_store, priced=args.shape != "outside")
        try:
            ports = [free_port() for _ in range(args.instances)]
            for n, port in enumerate(ports):
                children.append(
                    Child(
                        "webhook",
                        ["--port", str(port)],
                        {**env, "AWS_ENDPOINT_URL": proxy.url("webhook")},
                        logs / f"webhook-{n}.log",
                    )
                )
            stop_file, stats_file = logs / "replay.stop", logs / "replay-stats.json"
            replay = Child(
                "replay",
                [
                    "--stop-file",
                    str(stop_file),
                    "--stats-file",
                    str(stats_file),
                    "--crash-rate",
                    str(args.crash_rate),
                    "--seed",
                    str(args.seed),
                ],
                {**env, "AWS_ENDPOINT_URL": proxy.url("replay")},
                logs / "replay.log",
            )
            children.append(replay)
            for child in children:
                child.wait_ready()
            started = time.monotonic()
            print(
                f"{len(records)} records, {sum(len(p) for p in phases)} jobs; "
                f"{args.instances} webhook instances, 1 replay instance; logs in {logs}",
                flush=True,
            )
            senders = Senders(
                [f"http://127.0.0.1:{p}" for p in ports], piriod, args.senders, rng, args.redeliver
            )
            phase_seconds: dict[str, float] = {}
            phase_aws: dict[str, dict[str, Any]] = {}
            for phase, jobs in zip(phases_run, phases, strict=True):
                piriod.clear_faults()
                piriod.add_fault("latency", delay=BASE_LATENCY)
                for fault in phase.global_faults:
                    piriod.add_fault(**fault)
                phase_began = time.monotonic()
                counts_before = proxy.counts()
                for job in jobs:
                    senders.submit(job)
                senders.tracker.wait_idle()
                phase_seconds[phase.name] = time.monotonic() - phase_began
                phase_aws[phase.name] = counted_between(counts_before, proxy.counts())
                print(
                    f"  phase {phase.name!r}: {sum(len(j.deliveries[0].records) for j in jobs)} "
                    f"records in {phase_seconds[phase.name]:.1f} s",
                    flush=True,
                )
            senders.stop()
            sending = time.monotonic() - started
            piriod.clear_faults()
            piriod.add_fault("latency", delay=BASE_LATENCY)
            sqs = client("sqs", moto.url)
            empty, drain_seconds, polls = drain(sqs, resources.replay_queue_url, args.drain_timeout)
            print(
                f"  drain: ReplayQueue {'empty' if empty else 'NOT empty'} after "
                f"{drain_seconds:.1f} s ({polls} polls)",
                flush=True,
            )
            stop_file.write_text("stop")
            try:
                replay.process.wait(90)
            except subprocess.TimeoutExpired:
                replay.stop()
            wall = time.monotonic() - began
            end_to_end = time.monotonic() - started
            cpu = {
                "moto": cpu_seconds(moto),
                "Piriod stand-in": cpu_seconds(piriod),
                "webhook instances": sum(cpu_seconds(c) for c in children if c is not replay),
                "replay instance": float(
                    json.loads(stats_file.read_text()).get("cpu_s", "nan")
                    if stats_file.exists()
                    else "nan"
                ),
                "senders": time.process_time(),
            }
            replay_stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}
            waiting = queued_records(sqs, resources.replay_queue_url)
            dead = queued_records(sqs, resources.dead_letter_queue_url)
            states = key_states(client("dynamodb", moto.url), resources.table)
            ledger = piriod.usages()
            piriod_stats = piriod._control("GET", "stats")["stats"]
            violations = piriod.violations()
        finally:
            for child in children:
                child.stop()
            proxy.stop()
    tally = reconcile(records, ledger, waiting, dead, states)
    log_lines = Counter[str]()
    for log in logs.glob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if '"answered 5xx"' in line:
                log_lines["answered 5xx"] += 1
            if '"level":"ERROR"' in line:
                log_lines["ERROR lines"] += 1
            if "Traceback" in line:
                log_lines["tracebacks"] += 1
    return report(
        args=args,
        records=records,
        phases_run=phases_run,
        phase_aws=phase_aws,
        senders=senders,
        tally=tally,
        replay_stats=replay_stats,
        piriod_stats=piriod_stats,
        violations=violations,
        phase_seconds=phase_seconds,
        sending=sending,
        drain=(empty, drain_seconds, polls),
        wall=wall,
        end_to_end=end_to_end,
        ledger=len(ledger),
        log_lines=dict(log_lines),
        cpu=cpu,
        logs=logs,
        dead_total=sum(len(v) for v in dead.values()),
        waiting_total=sum(len(v) for v in waiting.values()),
    )


def code_version() -> str:
    """The commit measured, and whether src/ or devkit/ had uncommitted changes."""
    if os.environ.get("LOAD_BENCH_CODE"):
        return os.environ["LOAD_BENCH_CODE"]

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], check=False, capture_output=True, text=True, cwd=ROOT)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "src", "devkit")
    return commit + (" with uncommitted changes in src/ or devkit/" if dirty else "")


def _ms(value: float) -> str:
    return "—" if math.isnan(value) else f"{value * 1000:.0f}"


def report(
    *,
    args: argparse.Namespace,
    records: list[Record],
    phases_run: tuple[Phase, ...],
    phase_aws: dict[str, dict[str, Any]],
    senders: Senders,
    tally: dict[str, Any],
    replay_stats: dict[str, Any],
    piriod_stats: dict[str, int],
    violations: list[str],
    phase_seconds: dict[str, float],
    sending: float,
    drain: tuple[bool, float, int],
    wall: float,
    end_to_end: float,
    ledger: int,
    log_lines: dict[str, int],
    cpu: dict[str, float],
    logs: Path,
    dead_total: int,
    waiting_total: int,
) -> int:
    sends = senders.sends
    answers = Counter(s.status for s in sends)
    five_xx = sum(n for status, n in answers.items() if status >= 500)
    kinds = Counter(kind for kind, _ in {(s.kind, s.webhook_id) for s in sends})
    results = Counter(status for r in records for kind, status in r.results if kind != "redelivery")
    redelivered = Counter(
        status for r in records for kind, status in r.results if kind == "redelivery"
    )
    accepted = [s for s in sends if s.status == 202]
    groups: list[tuple[str, list[Send]]] = [
        ("Piriod healthy", [s for s in accepted if s.phase == "healthy"]),
        ("Piriod under faults", [s for s in accepted if s.faulty]),
        (
            "Piriod healthy again, replay draining",
            [s for s in accepted if s.phase == "healthy again"],
        ),
        (
            "healthy, a delivery alone (no twin, not a redelivery)",
            [s for s in accepted if s.phase == "healthy" and s.kind == "first" and not s.paired],
        ),
        (
            "under faults, a delivery alone",
            [s for s in accepted if s.faulty and s.kind == "first" and not s.paired],
        ),
        (
            "twins: the same records at once, reversed (any phase)",
            [s for s in accepted if s.paired],
        ),
        ("redeliveries (any phase)", [s for s in accepted if s.kind == "redelivery"]),
    ]
    latency: dict[str, dict[str, Any]] = {
        name: {
            **spread([s.seconds for s in group]),
            "in_function": spread(
                [s.function_ms / 1000 for s in group if s.function_ms is not None]
            ),
            "mean_records": sum(s.size for s in group) / len(group) if group else float("nan"),
        }
        for name, group in groups
    }
    side = side_by_side(phases_run, phase_aws, sends, priced=args.shape != "outside")
    lost, twice = tally["lost"], tally["posted_twice"]
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores",
        "python": sys.version.split()[0],
        "commit": code_version(),
        "command": "bench/load.py " + " ".join(sys.argv[1:]),
        "seed": args.seed,
        "settings": {
            "PIRIOD_READ_TIMEOUT": READ_TIMEOUT,
            "SETTLE_AFTER_SECONDS": SETTLE_AFTER,
            "REPLAY_BACKOFF_SECONDS": 1,
            "Piriod latency (every phase)": BASE_LATENCY,
            "senders": args.senders,
            "redelivered share": args.redeliver,
            "replay crash rate": args.crash_rate,
            "twins share": args.twins,
            "records per delivery": args.batch or "1 to 100, log-uniform",
            "store": "one DynamoDB request at a time (a proxy serialises moto)"
            if args.serial_store
            else "moto, concurrent requests",
            "phases": [p.name for p in phases_run],
        },
    }
    rows: list[tuple[str, str]] = [
        ("records (unique key, line, quantity, time)", f"{len(records):,}"),
        (
            "deliveries (first / twins at once, reversed / redeliveries)",
            f"{kinds['first']:,} / {kinds['twin']:,} / {kinds['redelivery']:,} sent; "
            f"{len(sends):,} HTTP requests with re-sends",
        ),
        ("webhook instances (processes) / replay instances", f"{args.instances} / 1"),
        (
            "answers by status",
            ", ".join(f"{k or 'no answer'}: {v:,}" for k, v in sorted(answers.items())),
        ),
        (
            "record results (first deliveries and twins)",
            ", ".join(f"{k}: {v:,}" for k, v in results.most_common()),
        ),
        (
            "redelivered records answered `duplicate`",
            f"{redelivered['duplicate']:,} of {sum(redelivered.values()):,}"
            + (
                " (others: "
                + ", ".join(f"{k}: {v}" for k, v in redelivered.items() if k != "duplicate")
                + ")"
                if sum(redelivered.values()) - redelivered["duplicate"]
                else ""
            ),
        ),
        (
            "acknowledged records",
            f"{tally['acknowledged']:,} (never acknowledged: {tally['unacknowledged']:,})",
        ),
        ("in Piriod exactly once", f"{tally['in_piriod_once']:,} (ledger: {ledger:,} usages)"),
        ("**lost**", f"{lost:,}"),
        ("**posted twice**", f"{twice:,}"),
        ("**5xx answers**", f"{five_xx:,}"),
        (
            "still in ReplayQueue after the drain",
            f"{tally['waiting_replay']:,}"
            + (
                f" ({', '.join(f'{k}: {v}' for k, v in tally['waiting_why'].most_common(3))})"
                if tally["waiting_why"]
                else ""
            ),
        ),
        (
            "dead-lettered",
            f"{tally['dead_lettered']:,}"
            + (
                f" ({', '.join(f'{k}: {v}' for k, v in tally['dead_why'].most_common(3))})"
                if tally["dead_why"]
                else ""
            )
            + f"; DeadLetterQueue holds {dead_total:,} messages",
        ),
        ("posted with a wrong line, time or quantity", f"{tally['wrong_value']:,}"),
        (
            "posted but a message still queued / usages of no record",
            f"{tally['posted_and_still_queued']:,} / {tally['unknown_usages']:,}",
        ),
        ("Piriod contract violations", f"{len(violations):,}"),
        (
            "Piriod answers (stand-in)",
            ", ".join(f"{k}: {v:,}" for k, v in sorted(piriod_stats.items())),
        ),
        (
            "replay instance",
            f"{replay_stats.get('batches', 0):,} batches, {replay_stats.get('received', 0):,} messages "
            f"({replay_stats.get('received_again', 0):,} handed over again by SQS), "
            f"{replay_stats.get('crashes', 0):,} crashes before deleting "
            f"({replay_stats.get('left_undeleted', 0):,} left undeleted), "
            f"{replay_stats.get('invocation_errors', 0):,} invocation errors",
        ),
    ]
    acknowledged = tally["acknowledged"]
    rows += [
        (
            "ReplayQueue drained",
            f"{'empty' if drain[0] else '**not empty**'} {drain[1]:.1f} s after the last delivery",
        ),
        (
            "sending time (all phases)",
            f"{sending:.1f} s ("
            + ", ".join(f"{k} {v:.0f} s" for k, v in phase_seconds.items())
            + ")",
        ),
        ("total wall time (stand-ins and instances started and stopped)", f"{wall:.1f} s"),
        (
            "throughput",
            f"{acknowledged / sending:.0f} records/s acknowledged while sending; "
            f"{tally['in_piriod_once'] / end_to_end:.0f} records/s into Piriod end to end (drain included)",
        ),
    ]
    rows.append(
        (
            "CPU seconds by process (2 cores: at most 2 s per second)",
            ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()) + f" (wall {wall:.0f} s)",
        )
    )
    if log_lines:
        rows.append(("instance log lines", ", ".join(f"{k}: {v}" for k, v in log_lines.items())))
    header = (
        f"Measured {meta['date']} on {meta['machine']}; Python {meta['python']}; "
        f"commit {meta['commit']}; `{meta['command'].strip()}`."
    )
    timing = [
        "| latency per delivery (202 answers) | deliveries | records each (mean) | p50 | p95 | p99 | in the function p50 / p95 / p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in latency.items():
        f = v["in_function"]
        timing.append(
            f"| {name} | {v['n']:,} | {v['mean_records']:.1f} | {_ms(v['p50'])} ms | {_ms(v['p95'])} ms "
            f"| {_ms(v['p99'])} ms | {_ms(f['p50'])} / {_ms(f['p95'])} / {_ms(f['p99'])} ms |"
        )
    table = "\n".join(
        [
            header,
            "",
            "| figure | value |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in rows),
            "",
            *side_by_side_table(side),
            "",
            *timing,
        ]
    )
    name = "load-outside-results" if args.shape == "outside" else "load-results"
    (BENCH / f"{name}.md").write_text(table + "\n")
    document = {
        "meta": meta,
        "table": dict(rows),
        "answers": {str(k): v for k, v in answers.items()},
        "record_results": dict(results),
        "redelivered_results": dict(redelivered),
        "redeliveries_not_duplicate": senders.redeliveries_not_duplicate[:50],
        "reconcile": {
            **{k: v for k, v in tally.items() if k not in ("examples", "waiting_why", "dead_why")},
            "waiting_why": dict(tally["waiting_why"]),
            "dead_why": dict(tally["dead_why"]),
            "examples": dict(tally["examples"]),
        },
        "five_xx": five_xx,
        "per_phase": side,
        "latency_s": latency,
        "slowest": [vars(x) for x in sorted(sends, key=lambda x: -x.seconds)[:15]],
        "phase_seconds": phase_seconds,
        "sending_s": sending,
        "drain": {"empty": drain[0], "seconds": drain[1], "polls": drain[2]},
        "wall_s": wall,
        "cpu_s": cpu,
        "replay": replay_stats,
        "piriod_answers": piriod_stats,
        "violations": violations[:20],
        "instance_log_lines": log_lines,
        "logs": str(logs),
        "queues_at_end": {"replay_messages": waiting_total, "dead_letter_messages": dead_total},
        "unacknowledged_deliveries": [d.webhook_id for d in senders.unacked][:50],
    }
    (BENCH / f"{name}.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    publish()
    print()
    print(table)
    for kind in ("lost", "posted_twice", "wrong_value", "waiting", "dead_lettered"):
        for example in tally["examples"].get(kind, [])[:3]:
            print(f"{kind}: {json.dumps(example, default=str)}")
    bad = lost + twice + five_xx
    if bad:
        print(f"\nFAILED: {lost} lost, {twice} posted twice, {five_xx} 5xx answers (logs: {logs})")
    return 1 if bad else 0


GOALS = {"round_trips": 1.2, "p99_s": 3.0}  # issue 25, with Piriod healthy


def publish() -> None:
    """docs/benchmarks.md and README.md from the results just written (bench/pages.py)."""
    sys.path.insert(0, str(BENCH))
    import pages

    for page in pages.update():
        print(f"updated {page}")


def naive_wcu_per_record() -> float | None:
    """The naive baseline's write units per record, as `make bench` last measured them."""
    try:
        measured = json.loads((BENCH / "results.json").read_text())["per_delivery"]
        return float(measured["naive"]["wcu_per_record"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def side_by_side(
    phases_run: tuple[Phase, ...],
    phase_aws: dict[str, dict[str, Any]],
    sends: list[Send],
    *,
    priced: bool = True,
) -> list[dict[str, Any]]:
    """Per phase: the webhook instances' AWS round trips and DynamoDB write units per record
    sent (every record of every HTTP request, re-sends, twins and redeliveries included;
    none when not `priced`), and the p99 per delivery answered 202; each with its ratio to
    its goal or baseline."""
    baseline = naive_wcu_per_record()
    rows = []
    for phase in phases_run:
        sent = [s for s in sends if s.phase == phase.name]
        records = sum(s.size for s in sent)
        aws = phase_aws.get(phase.name, {})
        webhook = aws.get("webhook", {"requests": 0, "wcu": 0, "by_action": {}})
        replay = aws.get("replay", {"requests": 0, "wcu": 0, "by_action": {}})
        p99 = percentile([s.seconds for s in sent if s.status == 202], 99)
        round_trips = webhook["requests"] / records if records else float("nan")
        wcu = webhook["wcu"] / records if records and priced else float("nan")
        rows.append(
            {
                "phase": phase.name,
                "records_sent": records,
                "deliveries_answered_202": sum(1 for s in sent if s.status == 202),
                "round_trips_per_record": round_trips,
                "round_trips_to_goal": round_trips / GOALS["round_trips"],
                "wcu_per_record": wcu,
                "wcu_to_naive": wcu / baseline if baseline and priced else None,
                "naive_wcu_per_record": baseline,
                "p99_s": p99,
                "p99_to_goal": p99 / GOALS["p99_s"],
                "webhook_requests": webhook["by_action"],
                "replay_instance_requests": replay["requests"],
                "replay_instance_wcu": replay["wcu"],
            }
        )
    return rows


def side_by_side_table(side: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| per phase (webhook instances; per record sent) | AWS round trips per record "
        "| DynamoDB write units per record | p99 per delivery (202) |",
        "|---|---|---|---|",
        f"| goal (Piriod healthy) | ≤ {GOALS['round_trips']} | — (the naive baseline of "
        f"`make bench`: {_number(side[0]['naive_wcu_per_record']) if side else '—'}) "
        f"| ≤ {GOALS['p99_s']:.0f} s |",
    ]
    for row in side:
        wcu_ratio = row["wcu_to_naive"]
        lines.append(
            f"| {row['phase']} ({row['records_sent']:,} records) "
            f"| {row['round_trips_per_record']:.2f} ({row['round_trips_to_goal']:.2f}× the goal) "
            f"| {_number(row['wcu_per_record'])}"
            + (f" ({wcu_ratio:.2f}× naive)" if wcu_ratio is not None else "")
            + ("" if math.isfinite(row["wcu_per_record"]) else " (not priced here: bench-load)")
            + f" | {row['p99_s']:.2f} s ({row['p99_to_goal']:.2f}× the goal) |"
        )
    return lines


def _number(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=None, help="records to send (5,000)")
    parser.add_argument("--quick", action="store_true", help="600 records: a smoke run")
    parser.add_argument("--instances", type=int, default=4, help="webhook instances (4)")
    parser.add_argument("--senders", type=int, default=6, help="concurrent senders (6)")
    parser.add_argument("--redeliver", type=float, default=0.1, help="share sent again (0.1)")
    parser.add_argument("--crash-rate", type=float, default=0.1, help="replay batches (0.1)")
    parser.add_argument("--drain-timeout", type=float, default=None, help="seconds (240)")
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument(
        "--batch", type=int, default=None, help="records per delivery (default: 1 to 100)"
    )
    parser.add_argument("--twins", type=float, default=0.1, help="share sent twice at once (0.1)")
    parser.add_argument(
        "--serial-store",
        action="store_true",
        help="the store serves one DynamoDB request at a time (a proxy serialises moto)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(p.name for p in PHASES),
        help="the phases to run, by name, comma-separated (all)",
    )
    parser.add_argument(
        "--shape",
        choices=("outside",),
        help="outside: the outside load check's shape: 5 webhook instances, a store that "
        "serves one request at a time, 40 records per delivery, 2,000 records, Piriod healthy",
    )
    parser.add_argument("--role", choices=("webhook", "replay"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stop-file", help=argparse.SUPPRESS)
    parser.add_argument("--stats-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "webhook":
        return serve_webhook(args.port)
    if args.role == "replay":
        return run_replay(args.stop_file, args.stats_file, args.crash_rate, args.seed)
    if args.shape == "outside":
        args.instances, args.senders, args.batch, args.serial_store = 5, 5, 40, True
        args.records = args.records or 2000
        args.phases = "healthy"
    args.phases = tuple(name.strip() for name in args.phases.split(","))
    unknown = set(args.phases) - {p.name for p in PHASES}
    if unknown or not args.phases:
        parser.error(f"--phases: unknown {sorted(unknown)}; known: {[p.name for p in PHASES]}")
    if args.records is None:
        args.records = 600 if args.quick else 5000
    if args.drain_timeout is None:
        args.drain_timeout = 120.0 if args.quick else 240.0
    if args.instances < 2:
        parser.error("--instances: at least 2 (twins go to two instances at once)")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
