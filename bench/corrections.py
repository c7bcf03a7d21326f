"""Corrections (SPEC section 10): what a cancel or an amend costs, in Piriod calls, DynamoDB
write units and function time (issue 23's table).

    make bench-corrections       # or: .venv/bin/python bench/corrections.py [--quick]

Every figure comes from real handler invocations in this process (the webhook handler for
`POST /v1/usages`, `POST /v1/sources/meter/usages` and `POST /v1/corrections`, FlushFunction's
handler), one at a time, against moto server and the Piriod stand-in, each in its own process
over loopback, as in bench/aggregation.py (whose lab, sender, DynamoDB meter and flush this
bench imports). Piriod's calls are counted from the stand-in's request log.

1. Posted native records: NATIVE records are posted (Piriod healthy), then half are
   cancelled and half amended, 100 corrections per delivery (cancels and amends alternate);
   each DELETE and POST Piriod received meanwhile is attributed to its record (by usage id,
   or by line and instant). Then one corrections delivery is sent again (all `duplicate`,
   no call) and 100 amended records are amended a second time.
2. A posted generation: GENERATION events are counted into one line's past window (an
   aggregating `sum` profile, PT1M), FlushFunction posts it, then GENERATION corrections of
   its events (a third cancelled, the rest amended) arrive in deliveries of 100 (all
   `pending`); FlushFunction runs once (the calls of that run are the figure: one DELETE and
   one POST expected) and once more (nothing due).
3. An open generation: OPEN events counted into another line's window, then OPEN corrections
   of them (a third cancelled) before any flush: Piriod's calls during those deliveries, and
   the DynamoDB write units they cost (priced by bench/capacity.py through botocore hooks on
   the runtime's DynamoDB client), per correction; then a flush posts the corrected total.
4. Throughput: Piriod answers every POST and DELETE in 50 ms; deliveries of 100 new native
   records and deliveries of 100 corrections of posted records (50 cancels, 50 amends)
   alternate, in a fresh stack; function time is the time inside the webhook handler. The
   figure is corrections per second of function time over records per second (median of
   the per-delivery rates, and over the totals).

Exits 1 if an invariant fails: Piriod holds exactly one usage per native key at its last
quantity (none once cancelled), each window's usages sum to its events that are not
cancelled at their last quantity (exact decimals), every answer is the status expected
(`applied`, `pending`, `duplicate`), and the stand-in saw no contract violation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
import aggregation  # bench/: the lab, the sender, the meter, the flush
from aggregation import Answer, Event, Lab, Meter, Sender, environment, flush, minute

BENCH = aggregation.BENCH
TOKEN = aggregation.TOKEN
WORKSPACE = aggregation.WORKSPACE
PER_DELIVERY = 100
LATENCY = 0.050  # Piriod's answer to every POST and DELETE, in the throughput run
NATIVE_LINES = [8_301 + n for n in range(10)]
THROUGHPUT_LINES = [8_401 + n for n in range(10)]
GENERATION_LINE = 8_201
OPEN_LINE = 8_101
T = TypeVar("T")
# issue 23
GOALS: dict[str, float] = {
    "calls_per_cancel": 1,
    "calls_per_amend": 2,
    "flush_calls_for_generation": 2,
    "open_window_calls": 0,
    "open_window_wcu_per_correction": 3,
    "throughput_ratio": 1,
}


def say(text: str) -> None:
    print(text, file=aggregation.OUT, flush=True)


# --- the native route and the corrections route ----------------------------------------------


@dataclass
class Record:
    key: str
    line: int
    at: str  # RFC 3339, one instant per record
    quantity: Decimal

    def json(self) -> str:
        return (
            f'{{"subscription_line": {self.line}, "date_time": "{self.at}", '
            f'"quantity": {self.quantity}, "idempotency_key": "{self.key}"}}'
        )


@dataclass
class Correction:
    action: str  # cancel or amend
    key: str
    correction_id: str
    quantity: Decimal | None = None
    source: str | None = None

    def json(self) -> str:
        parts = [
            f'"action": "{self.action}"',
            f'"key": {json.dumps(self.key)}',
            f'"correction_id": {json.dumps(self.correction_id)}',
        ]
        if self.quantity is not None:
            parts.append(f'"quantity": {self.quantity}')  # the digits as they are
        if self.source is not None:
            parts.append(f'"source": "{self.source}"')
        return "{" + ", ".join(parts) + "}"


def signed(path: str, raw: str) -> dict[str, Any]:
    """A request of the native signing (Standard Webhooks, the local secret)."""
    from piriod_devkit.events import http_event, sign_event

    return sign_event(http_event("POST", path, raw.encode(), {"content-type": "application/json"}))


def post_records(sender: Sender, records: list[Record]) -> Answer:
    body = '{"usages": [' + ", ".join(r.json() for r in records) + "]}"
    return sender.invoke(signed("/v1/usages", body))


def send_corrections(sender: Sender, corrections: list[Correction]) -> Answer:
    body = '{"corrections": [' + ", ".join(c.json() for c in corrections) + "]}"
    return sender.invoke(signed("/v1/corrections", body))


def quantity(rng: random.Random, places: int = 6) -> Decimal:
    return Decimal(rng.randint(1, 10**6)).scaleb(-rng.randint(0, places))


def make_records(rng: random.Random, prefix: str, count: int, lines: list[int]) -> list[Record]:
    """`count` records, each at an instant of its own in the past two hours."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    return [
        Record(
            f"{prefix}-{n:05d}",
            lines[n % len(lines)],
            (base + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            quantity(rng, 2),
        )
        for n in range(count)
    ]


def batches(items: list[T], size: int = PER_DELIVERY) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- what Piriod received ----------------------------------------------------------------------


class Calls:
    """The stand-in's request log, read in slices: what arrived since the last mark."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.seen = len(self.all())

    def all(self) -> list[dict[str, Any]]:
        requests: list[dict[str, Any]] = self.lab.piriod._control("GET", "requests")["requests"]
        return requests

    def since_mark(self) -> list[dict[str, Any]]:
        requests = self.all()
        new, self.seen = requests[self.seen :], len(requests)
        return new


def by_method(requests: list[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(r["method"] for r in requests))


@dataclass
class Expected:
    """What Piriod must hold in the end: per native record its last quantity (None once
    cancelled), per window line its events' last quantities."""

    records: dict[str, Record] = field(default_factory=dict)
    last: dict[str, Decimal | None] = field(default_factory=dict)
    events: dict[int, dict[str, Decimal | None]] = field(default_factory=lambda: defaultdict(dict))
    problems: list[str] = field(default_factory=list)

    def posted(self, records: list[Record], answer: Answer) -> dict[int, str]:
        """Take a native delivery's answer; the usage ids Piriod gave, to their keys."""
        ids: dict[int, str] = {}
        if answer.status != 202:
            self.problems.append(f"records answered {answer.status}: {str(answer.body)[:300]}")
            return ids
        for record, result in zip(records, answer.body["results"], strict=True):
            if result["status"] != "posted":
                self.problems.append(f"{record.key} answered {result['status']}")
                continue
            self.records[record.key] = record
            self.last[record.key] = record.quantity
            if result.get("usage_id") is not None:
                ids[int(result["usage_id"])] = record.key
        return ids

    def counted(self, events: list[Event], answer: Answer) -> None:
        if answer.status != 202:
            self.problems.append(f"events answered {answer.status}: {str(answer.body)[:300]}")
            return
        for event, result in zip(events, answer.body["results"], strict=True):
            if result["status"] != "aggregated":
                self.problems.append(f"{event.id} answered {result['status']}")
                continue
            self.events[event.line][event.id] = event.q

    def corrected(
        self,
        corrections: list[Correction],
        answer: Answer,
        want: str | set[str],
        lines: dict[str, int] | None = None,
    ) -> Counter[str]:
        """Take a corrections delivery's answer: each must be `want` (or one of them); an
        applied or pending one changes what Piriod must hold."""
        wanted = {want} if isinstance(want, str) else want
        statuses: Counter[str] = Counter()
        if answer.status != 202:
            self.problems.append(f"corrections answered {answer.status}: {str(answer.body)[:300]}")
            return statuses
        for correction, result in zip(corrections, answer.body["results"], strict=True):
            status = result["status"]
            statuses[status] += 1
            if status not in wanted:
                self.problems.append(
                    f"{correction.action} {correction.key}: {status}, not {want}: {result}"
                )
            if status not in ("applied", "pending"):
                continue
            new = correction.quantity if correction.action == "amend" else None
            if lines is None:
                self.last[correction.key] = new
            else:
                self.events[lines[correction.key]][correction.key] = new
        return statuses

    def check(self, usages: list[dict[str, Any]]) -> dict[str, Any]:
        """Piriod's ledger against what it must hold (exact decimals)."""
        wrong: list[str] = []
        native_lines = {r.line for r in self.records.values()}
        held: dict[tuple[int, str], list[Decimal]] = defaultdict(list)
        window_totals: dict[int, Decimal] = defaultdict(Decimal)
        window_usages: Counter[int] = Counter()
        for usage in usages:
            line = usage["subscription_line"]
            if line in native_lines:
                held[(line, usage["date_time"])].append(Decimal(str(usage["quantity"])))
            elif line in self.events:
                window_totals[line] += Decimal(str(usage["quantity"]))
                window_usages[line] += 1
        keys = {(r.line, r.at): r.key for r in self.records.values()}
        for where, quantities in held.items():
            if where not in keys:
                wrong.append(f"line {where[0]} at {where[1]}: {quantities}, no record there")
        cancelled = 0
        for key, record in self.records.items():
            want = self.last[key]
            got = held.get((record.line, record.at), [])
            cancelled += want is None
            if (want is None and got) or (want is not None and got != [want]):
                wrong.append(f"{key}: Piriod holds {[str(q) for q in got]}, expected {want}")
        windows: dict[int, dict[str, Any]] = {}
        windows_wrong: list[str] = []
        for line, events in self.events.items():
            total = sum((q for q in events.values() if q is not None), Decimal(0))
            windows[line] = {
                "events": len(events),
                "cancelled": sum(q is None for q in events.values()),
                "expected_total": str(total),
                "piriod_total": str(window_totals.get(line, Decimal(0))),
                "piriod_usages": window_usages.get(line, 0),
            }
            if window_totals.get(line, Decimal(0)) != total:
                windows_wrong.append(
                    f"window of line {line}: Piriod {window_totals.get(line)}, events {total}"
                )
        return {
            "native_keys": len(self.records),
            "native_cancelled": cancelled,
            "windows": windows,
            "native_mismatched": wrong,
            "window_mismatched": windows_wrong,
        }


def calls_by_key(
    requests: list[dict[str, Any]], ids: dict[int, str], instants: dict[tuple[int, str], str]
) -> tuple[dict[str, Counter[str]], Counter[str]]:
    """Piriod's DELETEs and POSTs by the record they were for (a DELETE by its usage id, a POST
    by its line and instant); what could not be attributed, by method."""
    per_key: dict[str, Counter[str]] = defaultdict(Counter)
    other: Counter[str] = Counter()
    for request in requests:
        method = request["method"]
        key = None
        if method == "DELETE":
            usage_id = int(request["path"].rstrip("/").rsplit("/", 1)[-1])
            key = ids.get(usage_id)
        elif method == "POST" and request.get("body"):
            body = json.loads(request["body"])
            key = instants.get((body["subscription_line"], body["date_time"]))
        if key is None:
            other[method] += 1
        else:
            per_key[key][method] += 1
    return per_key, other


def drain_replay() -> dict[str, Any]:
    """ReplayFunction's real handler drains ReplayQueue (as its event source mapping would):
    what a correction left `pending` is applied there."""
    from piriod_adapter.handlers.replay import lambda_handler
    from piriod_devkit.aws import client
    from piriod_devkit.poller import drain

    url = os.environ["REPLAY_QUEUE_URL"]
    sqs = client("sqs", os.environ.get("AWS_ENDPOINT_URL", ""))
    began = time.perf_counter()
    done = drain(sqs, url, lambda_handler)
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    left = sum(
        int(attributes.get(name, 0))
        for name in (
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        )
    )
    return {
        "received": done.received,
        "deleted": done.deleted,
        "failed": done.failed,
        "left": left,
        "seconds": time.perf_counter() - began,
    }


# --- the runs ----------------------------------------------------------------------------------


def native_run(
    lab: Lab, args: argparse.Namespace, rng: random.Random, expected: Expected
) -> dict[str, Any]:
    """Figure 1: Piriod calls per cancel and per amend of a posted record, over each
    correction's life: in its delivery, or (`pending`) by ReplayFunction after. No DynamoDB
    pricing here: its hooks would slow the delivery down."""
    sender = Sender(None)
    records = make_records(rng, "native", args.native, NATIVE_LINES)
    ids: dict[int, str] = {}
    for batch in batches(records):
        ids.update(expected.posted(batch, post_records(sender, batch)))
    instants = {(r.line, r.at): r.key for r in records}
    corrections = [
        Correction("cancel", r.key, f"c1-{r.key}")
        if n % 2 == 0
        else Correction("amend", r.key, f"c1-{r.key}", quantity(rng, 2))
        for n, r in enumerate(records)
    ]
    calls = Calls(lab)
    statuses: Counter[str] = Counter()
    seconds: list[float] = []
    for fixes in batches(corrections):
        answer = send_corrections(sender, fixes)
        seconds.append(answer.seconds)
        statuses += expected.corrected(fixes, answer, {"applied", "pending"})
    in_deliveries = calls.since_mark()
    replayed = drain_replay()
    by_replay = calls.since_mark()
    per_key, other = calls_by_key(in_deliveries + by_replay, ids, instants)
    cancels = [c.key for c in corrections if c.action == "cancel"]
    amends = [c.key for c in corrections if c.action == "amend"]
    cancel_calls = [sum(per_key[k].values()) for k in cancels]
    amend_calls = [sum(per_key[k].values()) for k in amends]
    odd = [f"{k}: {dict(per_key[k])}" for k in cancels if per_key[k] != Counter({"DELETE": 1})] + [
        f"{k}: {dict(per_key[k])}"
        for k in amends
        if per_key[k] != Counter({"DELETE": 1, "POST": 1})
    ]
    # the same delivery again: all duplicates, no call
    again = send_corrections(sender, batches(corrections)[0])
    redelivery = expected.corrected(batches(corrections)[0], again, "duplicate")
    redelivery_calls = by_method(calls.since_mark())
    # a second amend of 100 amended records: their usage ids are the re-posts', read from the
    # ledger by instant
    live = {(u["subscription_line"], u["date_time"]): int(u["id"]) for u in lab.piriod.usages()}
    ids.update({live[(r.line, r.at)]: r.key for r in records if (r.line, r.at) in live})
    second = [Correction("amend", k, f"c2-{k}", quantity(rng, 2)) for k in amends[:PER_DELIVERY]]
    answer = send_corrections(sender, second)
    second_statuses = expected.corrected(second, answer, {"applied", "pending"})
    second_replayed = drain_replay()
    second_keys, second_other = calls_by_key(calls.since_mark(), ids, instants)
    second_calls = [sum(second_keys[c.key].values()) for c in second]
    return {
        "records": len(records),
        "cancels": len(cancels),
        "amends": len(amends),
        "deliveries": len(batches(corrections)),
        "statuses": dict(statuses),
        "piriod_calls_in_deliveries": by_method(in_deliveries),
        "piriod_calls_by_replay": by_method(by_replay),
        "replay": replayed,
        "unattributed_calls": dict(other),
        "calls_per_cancel": sum(cancel_calls) / len(cancel_calls),
        "calls_per_amend": sum(amend_calls) / len(amend_calls),
        "max_calls_per_cancel": max(cancel_calls),
        "max_calls_per_amend": max(amend_calls),
        "unexpected_calls": odd[:20],
        "unexpected_call_count": len(odd),
        "function_seconds_per_delivery": seconds,
        "redelivery_statuses": dict(redelivery),
        "redelivery_calls": redelivery_calls,
        "second_amends": len(second),
        "second_amend_statuses": dict(second_statuses),
        "second_amend_replay": second_replayed,
        "calls_per_second_amend": sum(second_calls) / len(second_calls),
        "second_amend_unattributed": dict(second_other),
    }


def open_run(
    lab: Lab, meter: Meter, args: argparse.Namespace, rng: random.Random, expected: Expected
) -> dict[str, Any]:
    """Figures 3 and 4: corrections of events in an open generation: Piriod calls, WCU."""
    sender = Sender(meter)
    window = minute(datetime.now(UTC), 12)
    events = aggregation.make_events(rng, "open", args.open, [OPEN_LINE], [window])
    for batch in batches(events):
        expected.counted(batch, sender.deliver(batch))
    corrections = [
        Correction("cancel", e.id, f"o-{e.id}", source="meter")
        if n % 3 == 0
        else Correction("amend", e.id, f"o-{e.id}", quantity(rng), source="meter")
        for n, e in enumerate(events)
    ]
    lines = {e.id: e.line for e in events}
    calls = Calls(lab)
    wcu_before = meter.capacity.total_wcu()
    by_category_before = _wcu_by_category(meter)
    rcu_before = sum(meter.capacity.rcu.values())
    calls_before = meter.total_calls()
    statuses: Counter[str] = Counter()
    seconds = 0.0
    for fixes in batches(corrections):
        answer = send_corrections(sender, fixes)
        seconds += answer.seconds
        statuses += expected.corrected(fixes, answer, "applied", lines)
    during = calls.since_mark()
    wcu = meter.capacity.total_wcu() - wcu_before
    by_category = {
        k: v - by_category_before.get(k, 0)
        for k, v in _wcu_by_category(meter).items()
        if v != by_category_before.get(k, 0)
    }
    aws_calls = meter.total_calls() - calls_before
    rcu = sum(meter.capacity.rcu.values()) - rcu_before
    report, _ = flush(meter)
    posted = calls.since_mark()
    return {
        "events": len(events),
        "corrections": len(corrections),
        "cancels": sum(c.action == "cancel" for c in corrections),
        "statuses": dict(statuses),
        "piriod_calls": len(during),
        "piriod_calls_by_method": by_method(during),
        "wcu": wcu,
        "wcu_per_correction": wcu / len(corrections),
        "wcu_by_category": by_category,
        "rcu_per_correction": rcu / len(corrections),
        "aws_calls_per_correction": aws_calls / len(corrections),
        "function_seconds": seconds,
        "flush": report,
        "flush_calls": by_method(posted),
    }


def generation_run(
    lab: Lab, meter: Meter, args: argparse.Namespace, rng: random.Random, expected: Expected
) -> dict[str, Any]:
    """Figure 2: Piriod calls at the next flush for corrections to one posted generation."""
    sender = Sender(meter)
    window = minute(datetime.now(UTC), 14)
    events = aggregation.make_events(rng, "gen", args.generation, [GENERATION_LINE], [window])
    for batch in batches(events):
        expected.counted(batch, sender.deliver(batch))
    calls = Calls(lab)
    first_flush, _ = flush(meter)
    first = calls.since_mark()
    corrections = [
        Correction("cancel", e.id, f"g-{e.id}", source="meter")
        if n % 3 == 0
        else Correction("amend", e.id, f"g-{e.id}", quantity(rng), source="meter")
        for n, e in enumerate(events)
    ]
    lines = {e.id: e.line for e in events}
    statuses: Counter[str] = Counter()
    seconds = 0.0
    for fixes in batches(corrections):
        answer = send_corrections(sender, fixes)
        seconds += answer.seconds
        statuses += expected.corrected(fixes, answer, "pending", lines)
    during = calls.since_mark()
    restating, restate_seconds = flush(meter)
    restated = calls.since_mark()
    after, _ = flush(meter)
    last = calls.since_mark()
    return {
        "events": len(events),
        "corrections": len(corrections),
        "cancels": sum(c.action == "cancel" for c in corrections),
        "deliveries": len(batches(corrections)),
        "statuses": dict(statuses),
        "first_flush": first_flush,
        "first_flush_calls": by_method(first),
        "calls_during_corrections": by_method(during),
        "restating_flush": restating,
        "restating_flush_calls": by_method(restated),
        "restating_flush_call_count": len(restated),
        "restating_flush_requests": [
            f"{r['method']} {r['path']} → {r['status']}" for r in restated[:10]
        ],
        "restating_flush_seconds": restate_seconds,
        "next_flush": after,
        "next_flush_calls": by_method(last),
        "function_seconds": seconds,
    }


class AwsCalls:
    """Counts the runtime's AWS requests (no pricing: the throughput run's time stays the
    handler's)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.attached: set[int] = set()

    def attach(self) -> None:
        from piriod_adapter.runtime import get_runtime

        runtime = get_runtime()
        for name in ("dynamodb", "sqs", "secretsmanager", "ssm"):
            client = getattr(runtime, name)
            if id(client) not in self.attached:
                self.attached.add(id(client))
                client.meta.events.register("before-call", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        self.calls[model.name] += 1

    def total(self) -> int:
        return sum(self.calls.values())


def throughput_run(
    lab: Lab, args: argparse.Namespace, rng: random.Random, expected: Expected
) -> dict[str, Any]:
    """Figure 5: corrections per second of function time against new records per second,
    100 a delivery, Piriod at 50 ms on POST and DELETE; the two kinds alternate."""
    env, _ = lab.environment({"version": 1, "sources": {"meter": aggregation.profile(True)}}, "tp")
    lab.piriod.add_fault("latency", delay=LATENCY, methods=["POST", "DELETE"])
    sender = Sender(None)
    count = AwsCalls()
    records = make_records(rng, "tp", (args.throughput + 1) * PER_DELIVERY, THROUGHPUT_LINES)
    warm, records = records[:PER_DELIVERY], records[PER_DELIVERY:]
    post_times: list[float] = []
    post_cpu: list[float] = []
    post_calls: list[int] = []
    fix_times: list[float] = []
    fix_cpu: list[float] = []
    fix_calls: list[int] = []
    statuses: Counter[str] = Counter()
    calls = Calls(lab)
    with environment(env):
        # a warm container: one delivery of each kind first, not counted
        expected.posted(warm, post_records(sender, warm))
        count.attach()
        warm_fix = [Correction("amend", r.key, f"w-{r.key}", quantity(rng, 2)) for r in warm]
        expected.corrected(warm_fix, send_corrections(sender, warm_fix), {"applied", "pending"})
        calls.since_mark()
        pending: list[list[Record]] = []
        piriod_posting: Counter[str] = Counter()
        piriod_correcting: Counter[str] = Counter()

        def correct(batch: list[Record]) -> None:
            fixes = [
                Correction("cancel", r.key, f"t-{r.key}")
                if n % 2 == 0
                else Correction("amend", r.key, f"t-{r.key}", quantity(rng, 2))
                for n, r in enumerate(batch)
            ]
            before = count.total()
            answer = send_corrections(sender, fixes)
            fix_times.append(answer.seconds)
            fix_cpu.append(answer.cpu_seconds)
            fix_calls.append(count.total() - before)
            statuses.update(expected.corrected(fixes, answer, {"applied", "pending"}))
            piriod_correcting.update(by_method(calls.since_mark()))

        for batch in batches(records):
            before = count.total()
            answer = post_records(sender, batch)
            post_times.append(answer.seconds)
            post_cpu.append(answer.cpu_seconds)
            post_calls.append(count.total() - before)
            expected.posted(batch, answer)
            piriod_posting.update(by_method(calls.since_mark()))
            pending.append(batch)
            if len(pending) > 1:
                correct(pending.pop(0))
        for batch in pending:
            correct(batch)
        replayed = drain_replay()
    lab.piriod.clear_faults()
    n = len(records)
    records_rates = [PER_DELIVERY / s for s in post_times]
    fix_rates = [PER_DELIVERY / s for s in fix_times]
    return {
        "deliveries_each": len(post_times),
        "records": n,
        "corrections": n,
        "statuses": dict(statuses),
        "replay": replayed,
        "records_per_second_median": statistics.median(records_rates),
        "corrections_per_second_median": statistics.median(fix_rates),
        "records_per_second_total": n / sum(post_times),
        "corrections_per_second_total": n / sum(fix_times),
        "ratio_median": statistics.median(fix_rates) / statistics.median(records_rates),
        "ratio_total": sum(post_times) / sum(fix_times),
        "seconds_per_delivery_records": post_times,
        "seconds_per_delivery_corrections": fix_times,
        "cpu_ms_per_record": sum(post_cpu) / n * 1000,
        "cpu_ms_per_correction": sum(fix_cpu) / n * 1000,
        "aws_calls_per_record": sum(post_calls) / n,
        "aws_calls_per_correction": sum(fix_calls) / n,
        "piriod_calls_posting": dict(piriod_posting),
        "piriod_calls_correcting": dict(piriod_correcting),
        "aws_calls_by_action": dict(count.calls),
    }


def _wcu_by_category(meter: Meter) -> dict[str, int]:
    cap = meter.capacity
    return {k: cap.wcu.get(k, 0) + cap.gsi_wcu.get(k, 0) for k in set(cap.wcu) | set(cap.gsi_wcu)}


def category(pk: str, flushing: bool) -> str:
    """What a DynamoDB write is for (bench/aggregation.py's names; a key is a record's or an
    event's)."""
    return aggregation.category(pk, flushing).replace("event keys", "keys")


# --- the report -----------------------------------------------------------------------------


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def report(
    args: argparse.Namespace,
    native: dict[str, Any],
    gen: dict[str, Any],
    open_: dict[str, Any],
    tp: dict[str, Any],
    check: dict[str, Any],
    violations: list[str],
    problems: list[str],
    wall: float,
) -> int:
    cancel, amend = native["calls_per_cancel"], native["calls_per_amend"]
    unattributed = sum(native["unattributed_calls"].values())
    flush_calls = gen["restating_flush_call_count"]
    open_calls = open_["piriod_calls"]
    wcu = open_["wcu_per_correction"]
    ratio = tp["ratio_median"]
    figures: list[tuple[str, str, str, str, str, str]] = [
        (
            "Piriod calls per correction of a posted native record",
            f"{native['records']:,} records posted, then {native['cancels']:,} cancelled and "
            f"{native['amends']:,} amended, {PER_DELIVERY} per delivery; calls attributed to "
            "each record at the stand-in",
            f"cancel **{cancel:.2f}**, amend **{amend:.2f}** (max {native['max_calls_per_cancel']}"
            f" and {native['max_calls_per_amend']}; {unattributed} not attributed); answered "
            f"{native['statuses']}, the pending ones applied by ReplayFunction after "
            f"({native['replay']['received']} messages): calls in the deliveries "
            f"{native['piriod_calls_in_deliveries']}, by ReplayFunction "
            f"{native['piriod_calls_by_replay'] or 'none'}",
            "cancel 1, amend 2",
            f"{max(cancel / GOALS['calls_per_cancel'], amend / GOALS['calls_per_amend']):.2f}",
            met(cancel <= 1 and amend <= 2 and unattributed == 0),
        ),
        (
            f"Piriod calls at the next flush for {gen['corrections']:,} corrections to one "
            "posted generation",
            f"{gen['events']:,} events in one line's window, flushed; {gen['cancels']:,} "
            f"cancelled and {gen['corrections'] - gen['cancels']:,} amended in "
            f"{gen['deliveries']} deliveries (answered {gen['statuses']}); one FlushFunction run",
            f"**{flush_calls}** ({gen['restating_flush_calls'] or 'none'}); "
            f"{sum(gen['calls_during_corrections'].values())} during the deliveries, "
            f"{sum(gen['next_flush_calls'].values())} at the flush after",
            "≤ 2",
            f"{flush_calls / GOALS['flush_calls_for_generation']:.2f}",
            met(flush_calls <= 2),
        ),
        (
            "Piriod calls for corrections to events in an open generation",
            f"{open_['events']:,} events counted into one line's window, then {open_['corrections']:,} "
            f"corrections of them ({open_['cancels']:,} cancels), before any flush",
            f"**{open_calls}**",
            "0",
            "—",
            met(open_calls == 0),
        ),
        (
            "DynamoDB write units per correction of an event in an open window",
            f"the same {open_['corrections']:,} corrections, {PER_DELIVERY} per delivery; WCU "
            "(table + GSI) priced from the requests made",
            f"**{wcu:.3f} WCU** ({open_['wcu']:,} WCU); reads {open_['rcu_per_correction']:.3f} RCU, "
            f"{open_['aws_calls_per_correction']:.3f} AWS calls per correction",
            "≤ 3",
            f"{wcu / GOALS['open_window_wcu_per_correction']:.2f}",
            met(wcu <= 3),
        ),
        (
            f"corrections per second of function time, {PER_DELIVERY} per delivery, against "
            f"posting {PER_DELIVERY} new records",
            f"{tp['deliveries_each']} deliveries of each kind, alternating; corrections half "
            f"cancels, half amends of posted records (answered {tp['statuses']}); Piriod "
            f"answers POST and DELETE in {LATENCY * 1000:.0f} ms",
            f"**{ratio:.2f}×**: {tp['corrections_per_second_median']:,.0f} corrections/s against "
            f"{tp['records_per_second_median']:,.0f} records/s (medians per delivery; over the "
            f"totals {tp['corrections_per_second_total']:,.0f} against "
            f"{tp['records_per_second_total']:,.0f}, {tp['ratio_total']:.2f}×)",
            "≥ 1×",
            f"{ratio / GOALS['throughput_ratio']:.2f}",
            met(ratio >= 1),
        ),
    ]
    secondary = [
        "| also measured | corrections | new records |",
        "|---|---|---|",
        f"| function CPU per item, throughput run | {tp['cpu_ms_per_correction']:.3f} ms | "
        f"{tp['cpu_ms_per_record']:.3f} ms |",
        f"| AWS calls per item, throughput run | {tp['aws_calls_per_correction']:.2f} | "
        f"{tp['aws_calls_per_record']:.2f} |",
        f"| Piriod calls, throughput run | {tp['piriod_calls_correcting']} | "
        f"{tp['piriod_calls_posting']} |",
        f"| a corrections delivery sent again ({PER_DELIVERY}) | answered "
        f"{native['redelivery_statuses']}, Piriod calls {native['redelivery_calls'] or 'none'} | — |",
        f"| a second amend of {native['second_amends']} amended records | "
        f"{native['calls_per_second_amend']:.2f} Piriod calls each (answered "
        f"{native['second_amend_statuses']}) | — |",
        "| open-window WCU by what was written | "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(open_["wcu_by_category"].items()))
        + " | — |",
    ]
    invariants = {
        "Piriod holds one usage per native key at its last quantity, none once cancelled": not check[
            "native_mismatched"
        ],
        "each window's usages sum to its events that are not cancelled (exact decimals)": not check[
            "window_mismatched"
        ],
        "the posted generation restated once, then nothing due": gen["restating_flush"].get(
            "restated"
        )
        == 1
        and gen["next_flush"].get("restated") == 0
        and not gen["next_flush_calls"],
        "every answer as expected (applied, pending, duplicate)": not problems,
        "the stand-in saw no contract violation": not violations,
    }
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores",
        "python": sys.version.split()[0],
        "commit": aggregation.code_version(),
        "command": "bench/corrections.py " + " ".join(sys.argv[1:]),
        "parameters": {
            "native records": args.native,
            "generation events and corrections": args.generation,
            "open-window events and corrections": args.open,
            "throughput deliveries of each kind": args.throughput,
            "per delivery": PER_DELIVERY,
            "Piriod latency, throughput run (s)": LATENCY,
            "seed": args.seed,
        },
        "wall_seconds": round(wall, 1),
    }
    header = (
        f"Measured {meta['date']} on {meta['machine']}; Python {meta['python']}; commit "
        f"{meta['commit']}; `{meta['command'].strip()}`; {wall:.0f} s in all."
    )
    table = "\n".join(
        [
            header,
            "",
            "| figure | what ran | measured | goal | ÷ goal | met |",
            "|---|---|---|---|---|---|",
            *(f"| {' | '.join(row)} |" for row in figures),
            "",
            *secondary,
            "",
            "| invariant | held |",
            "|---|---|",
            *(f"| {k} | {'yes' if v else '**NO**'} |" for k, v in invariants.items()),
        ]
    )
    (BENCH / "corrections-results.md").write_text(table + "\n")
    document = {
        "meta": meta,
        "native": native,
        "generation": gen,
        "open_window": open_,
        "throughput": tp,
        "ledger_check": check,
        "figures": {
            "calls_per_cancel": cancel,
            "calls_per_amend": amend,
            "unattributed_calls": unattributed,
            "flush_calls_for_generation": flush_calls,
            "generation_corrections": gen["corrections"],
            "open_window_calls": open_calls,
            "open_window_wcu_per_correction": wcu,
            "corrections_per_second": tp["corrections_per_second_median"],
            "records_per_second": tp["records_per_second_median"],
            "throughput_ratio": ratio,
            "throughput_ratio_totals": tp["ratio_total"],
            "goals": GOALS,
            "met": {row[0]: row[5] == "yes" for row in figures},
        },
        "invariants": invariants,
        "problems": problems[:50],
        "violations": violations[:50],
    }
    (BENCH / "corrections-results.json").write_text(
        json.dumps(document, indent=2, default=str) + "\n"
    )
    import pages  # bench/ is on sys.path

    for page in pages.update():
        print(f"updated {page}")
    print()
    print("Parameters: " + json.dumps(meta["parameters"]))
    print(table)
    for problem in problems[:20]:
        print(f"problem: {problem}")
    for wrong in (check["native_mismatched"] + check["window_mismatched"])[:20]:
        print(f"mismatch: {wrong}")
    for violation in violations[:20]:
        print(f"violation: {violation}")
    for odd in native["unexpected_calls"][:10]:
        print(f"unexpected Piriod calls: {odd}")
    failed = [k for k, v in invariants.items() if not v]
    if failed:
        print("\nFAILED: " + "; ".join(failed))
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--native", type=int, default=None, help="native records (400)")
    parser.add_argument(
        "--generation", type=int, default=None, help="events of the posted generation (1,000)"
    )
    parser.add_argument("--open", type=int, default=None, help="events of the open window (500)")
    parser.add_argument("--throughput", type=int, default=None, help="deliveries of each kind (8)")
    parser.add_argument("--quick", action="store_true", help="100, 200, 100 and 2")
    parser.add_argument("--seed", type=int, default=20261208)
    args = parser.parse_args()
    for name, full, quick in (
        ("native", 400, 100),
        ("generation", 1_000, 200),
        ("open", 500, 100),
        ("throughput", 8, 2),
    ):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    rng = random.Random(args.seed)
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    from piriod_devkit.standin_process import StandinProcess

    began = time.perf_counter()
    print(
        f"corrections bench: {args.native:,} native records, a generation of "
        f"{args.generation:,} events, an open window of {args.open:,}, "
        f"{args.throughput} throughput deliveries of each kind",
        flush=True,
    )
    expected = Expected()
    with (
        aggregation.moto_server() as moto,
        StandinProcess(token=TOKEN, workspace=WORKSPACE) as piriod,
        open(os.devnull, "w") as quiet,
        contextlib.redirect_stdout(quiet),  # the handlers' EMF metric documents
    ):
        lab = Lab(moto, piriod)
        piriod.reset()
        piriod.set_tokens(TOKEN)
        document = {"version": 1, "sources": {"meter": aggregation.profile(True)}}
        env, table = lab.environment(document, "corrections")
        with environment(env):
            meter = Meter(moto.url, table)
            meter.pricer.category = lambda pk: category(pk, meter.flushing)
            say("posted native records ...")
            native = native_run(lab, args, rng, expected)
            say("an open window ...")
            open_ = open_run(lab, meter, args, rng, expected)
            say("a posted generation ...")
            gen = generation_run(lab, meter, args, rng, expected)
        say("throughput ...")
        tp = throughput_run(lab, args, rng, expected)
        check = expected.check(piriod.usages())
        violations = piriod.violations()
    return report(
        args,
        native,
        gen,
        open_,
        tp,
        check,
        violations,
        expected.problems,
        time.perf_counter() - began,
    )


if __name__ == "__main__":
    raise SystemExit(main())
