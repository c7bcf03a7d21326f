"""What the operator's command does: list what waits in the queues, replay dead letters through
the shared submit path, and reconcile the adapter's records with Piriod's usages.

Listing only observes. ReplayQueue is listed from the idempotency table (each waiting record
keeps its queue message there) plus SQS's own counts, never by receiving from it: a receive
would count towards the queue's maxReceiveCount and hide the message from ReplayFunction.
DeadLetterQueue has no redrive policy, so it is read directly (received, then released).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from pydantic import ValidationError

from piriod_adapter.clock import Deadline
from piriod_adapter.lifecycle import Fate, KeyStatus
from piriod_adapter.models import (
    FailureKind,
    KeyKind,
    QueuedRecord,
    Tenant,
    Usage,
    UsageKey,
    parse_rfc3339,
)
from piriod_adapter.observability import NAMESPACE, SERVICE
from piriod_adapter.piriod import Listed, usage_id_of
from piriod_adapter.queue import DEAD_LETTER, REPLAY
from piriod_adapter.replay import redeliver_dead_letter
from piriod_adapter.runtime import Runtime
from piriod_adapter.table import PARKED, KeyRecord

QUEUES = (REPLAY, DEAD_LETTER)
DLQ_HOLD_SECONDS = 300  # dead letters chosen for a replay are held this long


@dataclass(frozen=True)
class Entry:
    """A record waiting in one of the queues."""

    queue: str
    message_id: str
    sent_at: datetime
    record: QueuedRecord | None  # None: the message cannot be read as a record
    raw: str
    receipt_handle: str | None = None  # set for dead letters received to be replayed
    problem: str | None = None  # why the message cannot be read as a record
    parked: bool = False  # a dead letter kept in the table before SQS could drop it

    def to_dict(self) -> dict[str, Any]:
        try:  # NaN and Infinity stay text: what is printed is JSON
            body: Any = json.loads(self.raw, parse_constant=_no_constant)
        except ValueError:
            body = self.raw
        shown: dict[str, Any] = {
            "queue": self.queue,
            "message_id": self.message_id,
            "kind": self.kind,
        }
        if self.parked:
            shown["parked"] = True
        return {**shown, "record": body}

    @property
    def kind(self) -> str:
        if self.record is None:
            return "unreadable"
        kind = self.record.failure.kind
        # The redrive policy moves a message unchanged: in the dead-letter queue, a record
        # that failed for a reason that may pass has run out of attempts.
        if self.queue == DEAD_LETTER and kind in (FailureKind.TRANSIENT, FailureKind.AMBIGUOUS):
            return FailureKind.EXHAUSTED.value
        return kind.value


def _read(raw: str) -> tuple[QueuedRecord | None, str | None]:
    """The record a message body holds, or None and the first reason it is not one this
    version reads."""
    try:
        return QueuedRecord.from_json(raw), None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "record"
        return None, f"{where}: {first['msg'].removeprefix('Value error, ')}"[:300]
    except ValueError as exc:
        return None, str(exc)[:300]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def waiting_in_replay(runtime: Runtime) -> list[Entry]:
    """What waits in ReplayQueue, from the table (the queue is not touched)."""
    entries = []
    for waiting in runtime.store.waiting(REPLAY):
        record, problem = _read(waiting.message)
        at = record.failure.at if record else datetime.now(UTC)
        entries.append(
            Entry(REPLAY, waiting.message_id, at, record, waiting.message, problem=problem)
        )
    return entries


def dead_letters(runtime: Runtime, limit: int = 10_000, hold_seconds: int = 0) -> list[Entry]:
    """Dead letters: the messages in DeadLetterQueue (released again at once unless held for
    a replay), then the ones parked in the table before SQS could drop them (SPEC 5)."""
    entries = []
    for held in runtime.queue.walk(DEAD_LETTER, hold_seconds, limit):
        record, problem = _read(held.body)
        handle = held.receipt_handle if hold_seconds else None
        entries.append(
            Entry(DEAD_LETTER, held.message_id, held.sent_at, record, held.body, handle, problem)
        )
    for waiting in runtime.store.waiting(PARKED):
        record, problem = _read(waiting.message)
        sent = datetime.strptime(waiting.since, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        entries.append(
            Entry(
                DEAD_LETTER,
                waiting.message_id,
                sent,
                record,
                waiting.message,
                problem=problem,
                parked=True,
            )
        )
    return entries[:limit]


def entries(runtime: Runtime, queue: str, limit: int) -> list[Entry]:
    found = waiting_in_replay(runtime) if queue == REPLAY else dead_letters(runtime, limit)
    return found[:limit]


@dataclass(frozen=True)
class Filters:
    kind: str | None = None
    line: int | None = None
    source: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    ids: frozenset[str] = frozenset()

    def match(self, entry: Entry) -> bool:
        record = entry.record
        if self.ids and not any(entry.message_id.startswith(i) for i in self.ids):
            return False
        if self.kind and entry.kind != self.kind:
            return False
        if record is None:
            return not (self.line or self.since or self.until or self.source)
        usage = record.usage
        if self.line is not None and usage.subscription_line != self.line:
            return False
        if self.source is not None and usage.source != self.source:
            return False
        if self.since and usage.date_time < self.since:
            return False
        return not (self.until and usage.date_time > self.until)


# --- replay ------------------------------------------------------------------------------------


@dataclass
class ReplayCounts:
    chosen: int = 0
    posted: int = 0
    duplicate: int = 0
    queued: int = 0
    rejected: int = 0
    aggregated: int = 0  # an aggregating source's event, counted into its window
    cancelled: int = 0  # cancelled by its sender meanwhile (SPEC 10): never posted
    not_stored: int = 0
    unreadable: int = 0

    def text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in vars(self).items())


def choose_dead_letters(runtime: Runtime, filters: Filters, limit: int) -> list[Entry]:
    """Take (hold) the dead letters that match, up to `limit`; release the others at once."""
    taken = dead_letters(runtime, hold_seconds=DLQ_HOLD_SECONDS)
    chosen = [e for e in taken if filters.match(e)][:limit]
    picked = {e.message_id for e in chosen}
    runtime.queue.release(
        DEAD_LETTER,
        [e.receipt_handle for e in taken if e.message_id not in picked and e.receipt_handle],
    )
    return chosen


def replay_dead_letters(
    runtime: Runtime,
    chosen: list[Entry],
    *,
    rate: float | None,
    report: Callable[[Entry, str, Any], None],
    resolve: Callable[[Usage], Usage] = lambda usage: usage,
) -> ReplayCounts:
    """Replay chosen dead letters through the shared submit path, at most `rate` per second.
    Each one that reached a state (posted, duplicate, a fresh dead letter, handed to
    ReplayQueue) is deleted; one that could not be stored is released for a later replay."""
    counts = ReplayCounts(chosen=len(chosen))
    tracer = runtime.tracer  # on when the operator's settings say so: a span per replay
    interval = 1.0 / rate if rate else 0.0
    started = time.monotonic()
    for number, entry in enumerate(chosen):
        if interval and number:
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
        started = time.monotonic()
        if entry.record is None:
            counts.unreadable += 1
            if entry.receipt_handle is not None:
                runtime.queue.show_again(DEAD_LETTER, entry.receipt_handle)
            report(entry, "unreadable", None)
            continue
        result = redeliver_dead_letter(
            entry.record,
            runtime.submitter,
            runtime.queue,
            Deadline.after(60),
            resolve,
            runtime.count_event,
        )
        outcome = result.outcome
        if outcome is None:
            status = "not_stored"
        else:
            status = "cancelled" if outcome.fate is Fate.CANCELLED else outcome.answer
        setattr(counts, status, getattr(counts, status) + 1)
        if entry.parked:
            if not result.retry:  # else: it stays parked
                runtime.store.unpark(entry.message_id)
        elif not result.retry:
            assert entry.receipt_handle is not None
            runtime.queue.delete(DEAD_LETTER, entry.receipt_handle)
        else:
            assert entry.receipt_handle is not None
            runtime.queue.show_again(DEAD_LETTER, entry.receipt_handle)
        report(entry, status, result.outcome)
    tracer.flush()
    return counts


# --- reconcile ---------------------------------------------------------------------------------


def reconcile(
    runtime: Runtime,
    line: int,
    since: datetime,
    until: datetime,
    now: datetime | None = None,
    progress: Callable[[int], None] = lambda listed: None,
) -> dict[str, Any]:
    """Compare what the adapter recorded for a line and period with what Piriod lists for it
    (`date_time__gte` / `date_time__lte`). A usage the adapter has no record of is "not
    recorded" only while its keys would still be remembered: one Piriod created before the
    retention period began is reported apart, as beyond retention.

    With corrections (SPEC 10), what is compared is the usage each key holds now: an amended
    record's last one, at its last quantity (a listed usage at another quantity is reported);
    a cancelled record, or a usage a correction deleted, is expected nowhere and never
    reported missing; a usage whose DELETE went unanswered may still be listed or not; a
    correction not applied yet leaves the usage Piriod still holds expected until it is."""
    settings = runtime.settings
    now = now or datetime.now(UTC)
    retention_start = now - timedelta(days=settings.idempotency_ttl_days)
    tenant = Tenant(workspace=settings.piriod_workspace_id, test_mode=settings.piriod_test_mode)
    recorded = runtime.store.recorded_between(line, since, until)
    held = [r for r in recorded if r.expected is not None]  # one listed usage expected for each
    ours = {r.expected.usage_id: r for r in held if r.expected and r.expected.usage_id}
    deleting = {r.deleting: r for r in recorded if r.deleting is not None}
    # the usage of a key whose correction is not applied yet may be gone already (a DELETE
    # whose answer was lost, an attempt that stopped): its next attempt asks Piriod first
    going = {uid for uid, r in ours.items() if r.pending or uid in deleting}
    waiting = [r for r in recorded if r.status not in (KeyStatus.POSTED, KeyStatus.CANCELLED)]
    theirs: dict[int, dict[str, Any]] = {}
    for usage in _listed(runtime, line, since, until, tenant):
        usage_id = usage_id_of(usage)
        assert usage_id is not None
        theirs[usage_id] = usage
        progress(len(theirs))
    # a DELETE whose answer was lost: Piriod is asked before anything is sent again
    being_deleted = sorted(set(theirs) & set(deleting) - set(ours))
    unknown = sorted(set(theirs) - set(ours) - set(being_deleted))
    # A record posted by a 201 without an id is matched as settling matches: a listed usage
    # that may be it at the precision it is listed with, one usage per record.
    idless = [r for r in held if r.expected and not r.expected.usage_id]
    found = match_idless(line, idless, {u: theirs[u] for u in unknown})
    unknown = [u for u in unknown if u not in set(found.values())]
    missing: list[tuple[int | None, KeyRecord]] = [
        (uid, ours[uid]) for uid in sorted(set(ours) - set(theirs) - going)
    ]
    missing += [(None, r) for r in idless if r.key not in found and not r.pending]
    differs = [
        (uid, ours[uid])
        for uid in sorted(set(ours) & set(theirs))
        if not _same(line, ours[uid], theirs[uid])
    ]
    beyond = [u for u in unknown if _created(theirs[u]) < retention_start]
    not_recorded = [u for u in unknown if u not in set(beyond)]
    return {
        "subscription_line": line,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "retention_days": settings.idempotency_ttl_days,
        "adapter_posted": len(held),
        "piriod_listed": len(theirs),
        "matched": len(set(ours) & set(theirs)) - len(differs) + len(found),
        "missing_in_piriod": [
            {
                "usage_id": uid,
                "key": record.key,
                "date_time": record.date_time,
                "quantity": record.expected.quantity if record.expected else record.quantity,
            }
            for uid, record in missing
        ],
        "quantity_differs": [
            {
                "usage_id": uid,
                "key": record.key,
                "date_time": record.date_time,
                "quantity": record.expected.quantity if record.expected else record.quantity,
                "piriod_quantity": str(theirs[uid].get("quantity")),
            }
            for uid, record in differs
        ],
        "not_recorded_by_adapter": [_their(theirs[uid]) for uid in not_recorded],
        "beyond_retention": [_their(theirs[uid]) for uid in beyond],
        "being_deleted": [_their(theirs[uid]) for uid in being_deleted],
        "cancelled": sum(r.status is KeyStatus.CANCELLED for r in recorded),
        "corrections_pending": sum(r.pending for r in recorded),
        "waiting_in_queues": len(waiting),
    }


def _same(line: int, record: KeyRecord, listed: dict[str, Any]) -> bool:
    """Whether a listed usage is what the key holds: its line, instant and quantity (its
    last amended one) equal at the precision Piriod lists them with; unreadable: the same."""
    assert record.expected is not None
    usage = Usage.model_validate(
        {
            "subscription_line": line,
            "date_time": record.date_time,
            "quantity": record.expected.quantity,
            "key": UsageKey(kind=KeyKind.EXPLICIT, scope="reconcile", text=record.key[:255]),
        }
    )
    return Listed.read(listed).may_be(usage) is not False


def match_idless(
    line: int, records: list[KeyRecord], listed: dict[int, dict[str, Any]]
) -> dict[str, int]:
    """The listed usage each id-less record is, by key: one that may be it at the precision
    Piriod lists it with (piriod.Listed.may_be, as settling reads it), each listed usage for
    at most one record, the lowest id first."""
    readable = {uid: Listed.read(document) for uid, document in sorted(listed.items())}
    found: dict[str, int] = {}
    for record in sorted(records, key=lambda r: r.key):
        usage = Usage.model_validate(
            {
                "subscription_line": line,
                "date_time": record.date_time,
                "quantity": record.expected.quantity if record.expected else record.quantity,
                "key": UsageKey(kind=KeyKind.EXPLICIT, scope="reconcile", text=record.key[:255]),
            }
        )
        for uid, entry in readable.items():
            if uid not in found.values() and entry.may_be(usage):
                found[record.key] = uid
                break
    return found


def _listed(
    runtime: Runtime, line: int, since: datetime, until: datetime, tenant: Tenant
) -> Iterator[dict[str, Any]]:
    """Piriod's usages of a line in [since, until], by its range filters (and checked again
    here, in case a filter is not applied)."""
    filters = {
        "subscription_line": line,
        "date_time__gte": since.astimezone(UTC).isoformat(),
        "date_time__lte": until.astimezone(UTC).isoformat(),
    }
    for usage in runtime.piriod.list_usages(filters, tenant, Deadline.after(300)):
        if usage_id_of(usage) is None:
            continue  # not a usage the adapter could have recorded
        try:
            instant = parse_rfc3339(str(usage.get("date_time")))
        except ValueError:
            continue
        if since <= instant <= until:
            yield usage


def _created(usage: dict[str, Any]) -> datetime:
    try:
        return parse_rfc3339(str(usage.get("created")))
    except ValueError:
        return datetime.now(UTC)  # unknown: treat as recent, so it is reported, not excused


def _their(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "usage_id": usage_id_of(usage),
        "date_time": str(usage.get("date_time")),
        "quantity": str(usage.get("quantity")),
        "created": str(usage.get("created")),
        "creation_scheme": str(usage.get("creation_scheme")),
    }


# --- rendering ---------------------------------------------------------------------------------


def _age(then: datetime) -> str:
    seconds = max(0, int((datetime.now(UTC) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def errors_text(record: QueuedRecord | None, problem: str | None = None) -> str:
    if record is None:
        return problem or "unreadable message body"
    failure = record.failure
    if failure.errors:
        return error_map_text(failure.errors)
    return failure.error or ""


def error_map_text(errors: dict[str, list[str]]) -> str:
    """A field-keyed error map on one line: `field: message; field: message`."""
    return "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items())


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(found: list[Entry], out: TextIO) -> None:
    headers = [
        "queue",
        "message",
        "line",
        "date_time",
        "quantity",
        "key",
        "kind",
        "status",
        "attempts",
        "age",
        "errors",
    ]
    rows = []
    for e in found:
        r = e.record
        u = r.usage if r else None
        line = "?"
        if u is not None:
            line = str(u.subscription_line) if u.subscription_line else f"meter:{u.meter_id}"
        rows.append(
            [
                "parked" if e.parked else e.queue,
                e.message_id[:8],
                _short(line, 24),
                u.date_time_text if u else "?",
                _short(u.quantity_text, 24) if u else "?",
                _short(u.key.text, 29) if u else "?",
                e.kind,
                str(r.failure.status or "-") if r else "-",
                str(r.attempts) if r else "-",
                _age(r.first_failure_at if r else e.sent_at),
                _short(errors_text(r, e.problem), 60),
            ]
        )
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
        for i, h in enumerate(headers)
    ]
    out.write(
        "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n"
    )
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    out.write(f"{len(rows)} message(s)\n")


class Progress:
    """A plain progress bar on stderr, shown only for long runs on a terminal (or when asked)."""

    def __init__(self, total: int, out: TextIO, enabled: bool) -> None:
        self.total, self.out, self.enabled, self.done = total, out, enabled, 0
        self.started = time.monotonic()

    def count(self, done: int, label: str) -> None:
        """A run of unknown length: how far it got, every hundred."""
        if self.enabled and done % 100 == 0:
            rate = done / max(1e-6, time.monotonic() - self.started)
            self.out.write(f"\r{done} {label} ({rate:.0f}/s)")
            self.out.flush()

    def end(self) -> None:
        if self.enabled:
            self.out.write("\n")

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / max(1, self.total))
        rate = self.done / max(1e-6, time.monotonic() - self.started)
        self.out.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"{rate:.1f}/s {label[:30]:<30}"
        )
        self.out.flush()
        if self.done >= self.total:
            self.out.write("\n")


# --- status ------------------------------------------------------------------------------------

RECENT_OUTCOMES = ("received", "posted", "duplicate", "queued", "rejected", "not_stored")


def status(runtime: Runtime, now: datetime | None = None) -> dict[str, Any]:
    """What an on-call engineer asks first: how much waits where, for how long, why, and what
    the webhook did in the last hour (from CloudWatch, when it can be read)."""
    now = now or datetime.now(UTC)
    waiting = waiting_in_replay(runtime)
    dead = dead_letters(runtime)
    ages = {
        REPLAY: _oldest([e.record.failure.at for e in waiting if e.record]),
        DEAD_LETTER: _oldest([e.sent_at for e in dead]),
    }
    return {
        "queues": {
            queue: {**runtime.queue.counts(queue), "oldest_seconds": _seconds(ages[queue], now)}
            for queue in QUEUES
        },
        "dead_letters_by_kind": dict(sorted(Counter(e.kind for e in dead).items())),
        "replay_by_kind": dict(sorted(Counter(e.kind for e in waiting).items())),
        "last_hour": recent_outcomes(runtime, now),
        "windows": _windows(runtime, now),
    }


def _windows(runtime: Runtime, now: datetime) -> dict[str, Any] | str:
    """Open aggregation windows and the oldest due one (SPEC 9)."""
    from piriod_adapter.idempotency import StoreUnavailable
    from piriod_operator.windows import window_status

    try:
        return window_status(runtime.windows, now.timestamp())
    except StoreUnavailable as exc:
        return f"cannot be read ({exc})"


def recent_outcomes(runtime: Runtime, now: datetime) -> dict[str, int] | str:
    """Records by outcome over the last hour, from the functions' metrics; not available
    from a local stand-in, which holds no metrics (all zeros would read as an idle hour)."""
    from urllib.parse import urlsplit

    try:
        cloudwatch = runtime.cloudwatch
        host = urlsplit(str(cloudwatch.meta.endpoint_url or "")).hostname or ""
        if host in ("localhost", "::1") or host.startswith("127."):
            return (
                "not available locally (the functions' metrics go to CloudWatch; the local "
                "stand-ins keep none: `piriod-local serve` prints each outcome as it happens)"
            )
        totals = {}
        for name in RECENT_OUTCOMES:
            points = cloudwatch.get_metric_statistics(
                Namespace=NAMESPACE,
                MetricName=f"records_{name}",
                Dimensions=[{"Name": "service", "Value": SERVICE}],
                StartTime=now - timedelta(hours=1),
                EndTime=now,
                Period=3600,
                Statistics=["Sum"],
            )["Datapoints"]
            totals[name] = int(sum(p.get("Sum", 0) for p in points))
        return totals
    except Exception as exc:  # no CloudWatch (local stand-ins) or no permission
        return f"unavailable ({type(exc).__name__})"


def _oldest(moments: list[datetime]) -> datetime | None:
    return min(moments) if moments else None


def _seconds(then: datetime | None, now: datetime) -> int | None:
    return None if then is None else max(0, int((now - then).total_seconds()))


def render_status(report: dict[str, Any], out: TextIO) -> None:
    out.write("QUEUE        VISIBLE  IN_FLIGHT  DELAYED  OLDEST\n")
    for queue, c in report["queues"].items():
        oldest = "-" if c["oldest_seconds"] is None else _duration(c["oldest_seconds"])
        out.write(
            f"{queue:<12} {c['visible']:>7}  {c['in_flight']:>9}  {c['delayed']:>7}  {oldest}\n"
        )
    for title, kinds in (
        ("waiting in replay", report["replay_by_kind"]),
        ("dead letters", report["dead_letters_by_kind"]),
    ):
        text = ", ".join(f"{k}={v}" for k, v in kinds.items()) or "none"
        out.write(f"{title}: {text}\n")
    windows = report.get("windows")
    if isinstance(windows, dict):
        oldest = windows["oldest_due"]
        due = (
            f"; oldest due: {oldest['source']} line {oldest['line']} "
            f"{oldest['window_start']} g{oldest['generation']}, "
            f"{_duration(windows['oldest_due_seconds'])} overdue"
            if oldest
            else ""
        )
        out.write(
            f"aggregation windows: {windows['open']} open, {windows['closed']} closed, "
            f"{windows['due']} due{due}\n"
        )
    elif windows is not None:
        out.write(f"aggregation windows: {windows}\n")
    recent = report["last_hour"]
    if isinstance(recent, dict):
        out.write("last hour: " + ", ".join(f"{k}={v}" for k, v in recent.items()) + "\n")
    else:
        out.write(f"last hour: {recent}\n")


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def render_reconcile(report: dict[str, Any], out: TextIO) -> None:
    """The reconcile report for a person: the counts, then each usage missing on a side."""
    corrected = (
        f", cancelled {report['cancelled']}, corrections pending {report['corrections_pending']}"
        if report["cancelled"] or report["corrections_pending"]
        else ""
    )
    out.write(
        f"line {report['subscription_line']}, {report['since']} to {report['until']}: "
        f"adapter posted {report['adapter_posted']}, Piriod lists {report['piriod_listed']}, "
        f"matched {report['matched']}, waiting in the queues {report['waiting_in_queues']}"
        f"{corrected}\n"
    )
    rows = [
        [
            "missing in Piriod",
            str(m["usage_id"] or "-"),
            str(m["date_time"]),
            str(m["quantity"]),
            _short(str(m["key"]), 40),
        ]
        for m in report["missing_in_piriod"]
    ]
    rows += [
        [
            "quantity differs",
            str(m["usage_id"]),
            str(m["date_time"]),
            f"{m['piriod_quantity']} (adapter: {m['quantity']})",
            _short(str(m["key"]), 40),
        ]
        for m in report["quantity_differs"]
    ]
    for side, label in (
        ("not_recorded_by_adapter", "not recorded by adapter"),
        ("beyond_retention", f"beyond {report['retention_days']}-day retention"),
        ("being_deleted", "being deleted (DELETE unanswered)"),
    ):
        rows += [
            [label, str(u["usage_id"]), u["date_time"], u["quantity"], f"created {u['created']}"]
            for u in report[side]
        ]
    if rows:
        headers = ["difference", "usage_id", "date_time", "quantity", "key / created"]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        out.write(
            "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
            + "\n"
        )
        for row in rows:
            out.write(
                "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n"
            )
    missing, unknown = len(report["missing_in_piriod"]), len(report["not_recorded_by_adapter"])
    differs = len(report["quantity_differs"])
    if missing or unknown or differs:
        other = f", {differs} at another quantity" if differs else ""
        out.write(
            f"differences: {missing} missing in Piriod, {unknown} not recorded by adapter{other}\n"
        )
    else:
        out.write("no differences\n")


def reconciled(report: dict[str, Any]) -> bool:
    """Whether a reconcile found no difference (exit 0)."""
    return not (
        report["missing_in_piriod"]
        or report["not_recorded_by_adapter"]
        or report["quantity_differs"]
    )
