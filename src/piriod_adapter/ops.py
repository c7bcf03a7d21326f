"""`piriod-adapter`: the operator's command. Find, inspect and replay failed records, and
reconcile what the adapter posted with what Piriod lists.

Where the resources are: `--stack NAME` reads them from the CloudFormation stack's outputs and
parameters; without it, the same environment variables as the functions (SPEC section 6).
AWS endpoints follow boto3's AWS_ENDPOINT_URL, so it works against local stand-ins too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from piriod_adapter.clock import Deadline
from piriod_adapter.models import QueuedRecord, parse_rfc3339
from piriod_adapter.piriod import Tenant
from piriod_adapter.queue import receive_all, release
from piriod_adapter.replay import Verdict, redeliver_dead_letter
from piriod_adapter.runtime import Runtime
from piriod_adapter.settings import Settings, load_settings

QUEUES = ("replay", "dead-letter")


@dataclass(frozen=True)
class Entry:
    """A message in one of the queues, with its parsed record."""

    queue: str
    message_id: str
    receipt_handle: str
    sent_at: datetime
    receive_count: int
    record: QueuedRecord | None
    raw: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "message_id": self.message_id,
            "kind": self.kind,
            "receive_count": self.receive_count,
            "record": json.loads(self.raw),
        }

    @property
    def kind(self) -> str:
        if self.record is None:
            return "unreadable"
        kind = self.record.failure.kind.value
        # The redrive policy moves a message unchanged: in the dead-letter queue, a record
        # that failed for a reason that may pass has run out of attempts.
        if self.queue == "dead-letter" and kind in ("transient", "ambiguous"):
            return "exhausted"
        return kind


def settings_from_stack(stack: str) -> Settings:
    import boto3

    cfn = boto3.client("cloudformation")
    [description] = cfn.describe_stacks(StackName=stack)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in description.get("Outputs", [])}
    params = {p["ParameterKey"]: p.get("ParameterValue", "") for p in description["Parameters"]}
    return load_settings(
        {
            "PIRIOD_API_URL": params.get("PiriodApiUrl", "https://api.piriod.com"),
            "PIRIOD_WORKSPACE_ID": params["PiriodWorkspaceId"],
            "PIRIOD_TEST_MODE": params.get("PiriodTestMode", "false"),
            "PIRIOD_TOKEN_SECRET_ID": params["PiriodTokenSecretArn"],
            "WEBHOOK_SECRET_ID": params["WebhookSecretArn"],
            "REPLAY_QUEUE_URL": outputs["ReplayQueueUrl"],
            "DEAD_LETTER_QUEUE_URL": outputs["DeadLetterQueueUrl"],
            "IDEMPOTENCY_TABLE": outputs["IdempotencyTableName"],
        }
    )


def queue_url(settings: Settings, queue: str) -> str:
    return settings.replay_queue_url if queue == "replay" else settings.dead_letter_queue_url


def peek(runtime: Runtime, queue: str, limit: int, hold_seconds: int = 0) -> list[Entry]:
    """Up to `limit` messages of a queue. With hold_seconds=0 they are visible to consumers
    again as soon as they are read (a look, not a take); with more, they are held invisible
    so that we can act on them."""
    entries = []
    url = queue_url(runtime.settings, queue)
    for message in receive_all(runtime.sqs, url, limit=limit, hold_seconds=hold_seconds):
        attributes = message.get("Attributes", {})
        try:
            record: QueuedRecord | None = QueuedRecord.from_json(message["Body"])
        except ValueError:
            record = None
        entries.append(
            Entry(
                queue=queue,
                message_id=message["MessageId"],
                receipt_handle=message["ReceiptHandle"],
                sent_at=datetime.fromtimestamp(
                    int(attributes.get("SentTimestamp", "0")) / 1000, UTC
                ),
                receive_count=int(attributes.get("ApproximateReceiveCount", "1")),
                record=record,
                raw=message["Body"],
            )
        )
    return entries


@dataclass(frozen=True)
class Filters:
    kind: str | None = None
    line: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    ids: frozenset[str] = frozenset()

    def match(self, entry: Entry) -> bool:
        record = entry.record
        if self.ids and entry.message_id not in self.ids:
            return False
        if self.kind and entry.kind != self.kind:
            return False
        if record is None:
            return not (self.line or self.since or self.until)
        if self.line is not None and record.subscription_line != self.line:
            return False
        instant = parse_rfc3339(record.date_time)
        if self.since and instant < self.since:
            return False
        return not (self.until and instant > self.until)


def _age(then: datetime) -> str:
    seconds = max(0, int((datetime.now(UTC) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _errors_text(record: QueuedRecord | None) -> str:
    if record is None:
        return "unreadable message body"
    failure = record.failure
    if failure.errors:
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in failure.errors.items())
    return failure.error or ""


def render_table(entries: list[Entry], out: TextIO) -> None:
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
    for e in entries:
        r = e.record
        rows.append(
            [
                e.queue,
                e.message_id[:8],
                str(r.subscription_line) if r else "?",
                r.date_time if r else "?",
                str(r.quantity) if r else "?",
                (r.idempotency_key[:28] + "…")
                if r and len(r.idempotency_key) > 29
                else (r.idempotency_key if r else "?"),
                e.kind,
                str(r.failure.status or "-") if r else "-",
                str((r.attempts if r else 0) + e.receive_count - 1),
                _age(r.first_failure_at if r else e.sent_at),
                _errors_text(r)[:60],
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


def replay_dead_letters(
    runtime: Runtime,
    filters: Filters,
    *,
    limit: int,
    dry_run: bool,
    rate: float | None,
    out: TextIO,
    err: TextIO,
    progress: bool | None = None,
) -> dict[str, int]:
    """Replay chosen DeadLetterQueue messages through the shared submit path."""
    hold = 300
    url = runtime.settings.dead_letter_queue_url
    taken = peek(runtime, "dead-letter", limit=10_000, hold_seconds=hold)
    chosen = [e for e in taken if filters.match(e)][:limit]
    picked = {e.message_id for e in chosen}
    # let everything not chosen be seen again at once
    release(runtime.sqs, url, [e.receipt_handle for e in taken if e.message_id not in picked])
    counts = {
        "chosen": len(chosen),
        "posted": 0,
        "duplicate": 0,
        "queued": 0,
        "rejected": 0,
        "not_stored": 0,
        "unreadable": 0,
    }
    if dry_run:
        render_table(chosen, out)
        out.write("dry run: nothing was replayed\n")
        release(runtime.sqs, url, [e.receipt_handle for e in chosen])
        return counts
    bar = Progress(
        len(chosen),
        err,
        enabled=progress if progress is not None else (len(chosen) > 20 and err.isatty()),
    )
    interval = 1.0 / rate if rate else 0.0
    for entry in chosen:
        started = time.monotonic()
        if entry.record is None:
            counts["unreadable"] += 1
            bar.step("unreadable")
            continue
        result = redeliver_dead_letter(
            entry.record, runtime.submitter, runtime.queue, Deadline.after(60)
        )
        status = result.outcome.status.value if result.outcome.status else "not_stored"
        counts[status] += 1
        if result.verdict is Verdict.DONE:
            # posted/duplicate: done; rejected: a fresh dead letter holds Piriod's new errors;
            # queued: ReplayQueue holds it now
            runtime.sqs.delete_message(QueueUrl=url, ReceiptHandle=entry.receipt_handle)
        else:
            runtime.sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=entry.receipt_handle, VisibilityTimeout=0
            )
        out.write(
            f"{entry.message_id[:8]}  line {entry.record.subscription_line}  {status}"
            + (f"  usage_id={result.outcome.usage_id}" if result.outcome.usage_id else "")
            + (f"  {_errors_text(entry.record) if status == 'rejected' else ''}")
            + "\n"
        )
        bar.step(status)
        if interval:
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    return counts


def reconcile(runtime: Runtime, line: int, since: datetime, until: datetime) -> dict[str, Any]:
    """Compare what the adapter recorded for a line and time range with what Piriod lists."""
    settings = runtime.settings
    tenant = Tenant(settings.piriod_workspace_id, settings.piriod_test_mode)
    items = runtime.store.posted_between(line, since, until)
    ours = {
        int(i["usage_id"]["N"]): i
        for i in items
        if i["status"]["S"] == "posted" and "usage_id" in i
    }
    waiting = [
        i for i in items if i["status"]["S"] in ("queued", "rejected", "released", "in_progress")
    ]
    theirs = {}
    for usage in runtime.piriod.list_usages(
        {"subscription_line": line}, tenant, Deadline.after(300)
    ):
        instant = (
            parse_rfc3339(str(usage["date_time"]).replace("+00:00", "Z"))
            if isinstance(usage.get("date_time"), str)
            else None
        )
        if instant is not None and since <= instant <= until:
            theirs[int(usage["id"])] = usage
    missing_in_piriod = sorted(set(ours) - set(theirs))
    not_recorded = sorted(set(theirs) - set(ours))
    return {
        "subscription_line": line,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "adapter_posted": len(ours),
        "piriod_listed": len(theirs),
        "matched": len(set(ours) & set(theirs)),
        "missing_in_piriod": [
            {
                "usage_id": uid,
                "key": ours[uid]["pk"]["S"].split("#", 2)[-1],
                "date_time": ours[uid]["date_time"]["S"],
                "quantity": ours[uid]["quantity"]["S"],
            }
            for uid in missing_in_piriod
        ],
        "not_recorded_by_adapter": [
            {
                "usage_id": uid,
                "date_time": theirs[uid].get("date_time"),
                "quantity": str(theirs[uid].get("quantity")),
                "creation_scheme": theirs[uid].get("creation_scheme"),
            }
            for uid in not_recorded
        ],
        "waiting_in_queues": len(waiting),
    }


def _instant(text: str) -> datetime:
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="piriod-adapter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--stack", help="CloudFormation stack name (default: environment variables)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--kind", choices=["transient", "ambiguous", "rejected", "exhausted", "unreadable"]
        )
        p.add_argument("--line", type=int, help="subscription line")
        p.add_argument("--since", type=_instant, help="record date_time from (RFC 3339)")
        p.add_argument("--until", type=_instant, help="record date_time until (RFC 3339)")
        p.add_argument(
            "--id", dest="ids", action="append", default=[], help="message id (repeatable)"
        )

    ls = sub.add_parser("list", help="list messages in the queues as a table")
    ls.add_argument("--queue", choices=[*QUEUES, "both"], default="both")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true", help="one JSON object per message")
    filters(ls)

    show = sub.add_parser("show", help="print one message in full")
    show.add_argument("message_id", help="message id or its first characters")
    show.add_argument("--queue", choices=[*QUEUES, "both"], default="both")

    rp = sub.add_parser("replay", help="replay DeadLetterQueue messages")
    rp.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    rp.add_argument("--limit", type=int, default=100)
    rp.add_argument("--rate", type=float, help="at most this many records per second")
    rp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    filters(rp)

    pg = sub.add_parser("purge", help="delete every message in a queue (asks first)")
    pg.add_argument("--queue", choices=QUEUES, required=True)
    pg.add_argument("--yes", action="store_true", help="confirm without asking")

    rc = sub.add_parser("reconcile", help="compare adapter records with Piriod's usages")
    rc.add_argument("--line", type=int, required=True)
    rc.add_argument("--since", type=_instant, required=True)
    rc.add_argument("--until", type=_instant, required=True)
    return parser


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = build_parser().parse_args(argv)
    runtime = Runtime(settings_from_stack(args.stack) if args.stack else None)
    if args.command in ("list", "replay"):
        chosen = Filters(args.kind, args.line, args.since, args.until, frozenset(args.ids))
    if args.command == "list":
        entries = []
        for queue in QUEUES if args.queue == "both" else (args.queue,):
            entries += [e for e in peek(runtime, queue, args.limit) if chosen.match(e)]
        if args.json:
            for e in entries:
                out.write(json.dumps(e.to_dict()) + "\n")
        else:
            render_table(entries, out)
        return 0
    if args.command == "show":
        for queue in QUEUES if args.queue == "both" else (args.queue,):
            for e in peek(runtime, queue, 10_000):
                if e.message_id.startswith(args.message_id):
                    out.write(json.dumps(e.to_dict(), indent=2) + "\n")
                    return 0
        err.write(f"no message {args.message_id!r} found\n")
        return 1
    if args.command == "replay":
        counts = replay_dead_letters(
            runtime,
            chosen,
            limit=args.limit,
            dry_run=args.dry_run,
            rate=args.rate,
            out=out,
            err=err,
            progress=args.progress,
        )
        out.write("replay: " + ", ".join(f"{k}={v}" for k, v in counts.items()) + "\n")
        return 0 if counts["not_stored"] == 0 else 2
    if args.command == "purge":
        url = queue_url(runtime.settings, args.queue)
        if not args.yes:
            if not sys.stdin.isatty():
                err.write("refusing to purge without --yes when not on a terminal\n")
                return 2
            answer = input(f"Type the queue name ({args.queue}) to delete every message in it: ")
            if answer.strip() != args.queue:
                err.write("not confirmed; nothing deleted\n")
                return 1
        runtime.sqs.purge_queue(QueueUrl=url)
        out.write(f"purged {args.queue}\n")
        return 0
    report = reconcile(runtime, args.line, args.since, args.until)
    out.write(json.dumps(report, indent=2, default=str) + "\n")
    clean = not report["missing_in_piriod"] and not report["not_recorded_by_adapter"]
    return 0 if clean else 3
