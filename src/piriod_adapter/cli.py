"""`piriod-adapter`: the operator's command. Find, inspect and replay failed records, and
reconcile what the adapter posted with what Piriod lists.

Where the resources are: `--stack NAME` reads them from the CloudFormation stack's outputs and
parameters; without it, the same environment variables as the functions (SPEC section 6).
AWS endpoints follow boto3's AWS_ENDPOINT_URL, so it works against local stand-ins too.

Exit codes: 0 done; 1 nothing found or not confirmed; 2 invalid arguments or settings;
3 reconcile found differences; 4 AWS (SQS, DynamoDB, CloudFormation, Secrets Manager) could
not be reached or refused; 5 Piriod could not be reached or refused; 6 a replayed record
could be neither posted nor stored (run the replay again); 7 an unexpected error (a defect).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any, TextIO

from piriod_adapter.models import MAX_LINE, parse_rfc3339
from piriod_adapter.operator import (
    QUEUES,
    Entry,
    Filters,
    Progress,
    choose_dead_letters,
    entries,
    errors_text,
    reconcile,
    render_status,
    render_table,
    replay_dead_letters,
    status,
)
from piriod_adapter.runtime import Runtime
from piriod_adapter.settings import Settings, SettingsError, load_settings

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_DIFFERENCES = 0, 1, 2, 3
EXIT_AWS, EXIT_PIRIOD, EXIT_NOT_STORED, EXIT_INTERNAL = 4, 5, 6, 7
MAX_LIMIT = 10_000
MIN_RATE, MAX_RATE = 0.01, 1000.0  # records per second


class CommandError(Exception):
    """A one-line error for the operator, with its exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


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
            "SOURCES_CONFIG": params.get("SourcesConfig", ""),
            "IDEMPOTENCY_TTL_DAYS": params.get("IdempotencyTtlDays", "30"),
            "REPLAY_QUEUE_URL": outputs["ReplayQueueUrl"],
            "DEAD_LETTER_QUEUE_URL": outputs["DeadLetterQueueUrl"],
            "IDEMPOTENCY_TABLE": outputs["IdempotencyTableName"],
        }
    )


# --- argument types ----------------------------------------------------------------------------


def _instant(text: str) -> datetime:
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}") from None


def _positive_int(maximum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be from 1 to {maximum}, not {value}")
        return value

    return parse


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not MIN_RATE <= value <= MAX_RATE:
        raise argparse.ArgumentTypeError(f"must be from {MIN_RATE} to {MAX_RATE} per second")
    return value


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
        p.add_argument("--line", type=_positive_int(MAX_LINE), help="subscription line")
        p.add_argument("--source", help="third-party source name")
        p.add_argument("--since", type=_instant, help="record date_time from (RFC 3339)")
        p.add_argument("--until", type=_instant, help="record date_time until (RFC 3339)")
        p.add_argument(
            "--id", dest="ids", action="append", default=[], help="message id (repeatable)"
        )

    ls = sub.add_parser("list", help="list what waits in the queues, as a table")
    ls.add_argument("--queue", choices=[*QUEUES, "both"], default="both")
    ls.add_argument("--limit", type=_positive_int(MAX_LIMIT), default=100)
    ls.add_argument("--json", action="store_true", help="one JSON object per message")
    filters(ls)

    show = sub.add_parser("show", help="print one message in full")
    show.add_argument("message_id", help="message id or its first characters")
    show.add_argument("--queue", choices=[*QUEUES, "both"], default="both")

    rp = sub.add_parser("replay", help="replay DeadLetterQueue messages")
    rp.add_argument("--dry-run", action="store_true", help="show what would be replayed")
    rp.add_argument("--limit", type=_positive_int(MAX_LIMIT), default=100)
    rp.add_argument("--rate", type=_rate, help="at most this many records per second")
    rp.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    filters(rp)

    pg = sub.add_parser("purge", help="delete every message in a queue (asks first)")
    pg.add_argument("--queue", choices=QUEUES, required=True)
    pg.add_argument("--yes", action="store_true", help="confirm without asking")

    rc = sub.add_parser("reconcile", help="compare adapter records with Piriod's usages")
    rc.add_argument("--line", type=_positive_int(MAX_LINE), required=True)
    rc.add_argument("--since", type=_instant, required=True)
    rc.add_argument("--until", type=_instant, required=True)
    rc.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)

    st = sub.add_parser("status", help="queue depths, oldest records, dead letters, last hour")
    st.add_argument("--json", action="store_true", help="one JSON document")
    return parser


# --- commands ----------------------------------------------------------------------------------


def _queues(choice: str) -> tuple[str, ...]:
    return QUEUES if choice == "both" else (choice,)


def cmd_list(runtime: Runtime, args: argparse.Namespace, out: TextIO) -> int:
    chosen = _filters(args)
    found: list[Entry] = []
    counts = {}
    for queue in _queues(args.queue):
        counts[queue] = runtime.queue.counts(queue)
        found += [e for e in entries(runtime, queue, MAX_LIMIT) if chosen.match(e)]
    found = found[: args.limit]
    if args.json:
        for e in found:
            out.write(json.dumps(e.to_dict()) + "\n")
        return EXIT_OK
    render_table(found, out)
    for queue, c in counts.items():
        out.write(
            f"SQS counts for {queue}: {c['visible']} visible, {c['in_flight']} in flight or "
            f"backing off, {c['delayed']} delayed\n"
        )
    return EXIT_OK


def cmd_show(runtime: Runtime, args: argparse.Namespace, out: TextIO) -> int:
    if not args.message_id.strip():
        raise CommandError(EXIT_USAGE, "give a message id (or its first characters)")
    for queue in _queues(args.queue):
        for e in entries(runtime, queue, MAX_LIMIT):
            if e.message_id.startswith(args.message_id):
                out.write(json.dumps(e.to_dict(), indent=2) + "\n")
                return EXIT_OK
    raise CommandError(EXIT_NOT_FOUND, f"no message {args.message_id!r} found")


def cmd_replay(runtime: Runtime, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    chosen = choose_dead_letters(runtime, _filters(args), args.limit)
    if args.dry_run:
        render_table(chosen, out)
        out.write("dry run: nothing was replayed\n")
        from piriod_adapter.queue import DEAD_LETTER, release

        release(
            runtime.sqs,
            runtime.queue.url(DEAD_LETTER),
            [e.receipt_handle for e in chosen if e.receipt_handle],
        )
        out.write(f"replay: chosen={len(chosen)}\n")
        return EXIT_OK
    enabled = args.progress if args.progress is not None else (len(chosen) > 20 and err.isatty())
    bar = Progress(len(chosen), err, enabled=enabled)

    def report(entry: Entry, status: str, outcome: Any) -> None:
        line = f"{entry.message_id[:8]}  "
        if entry.record is not None:
            usage = entry.record.usage
            line += f"line {usage.subscription_line or 'meter:' + str(usage.meter_id)}  "
        line += status
        if outcome is not None and outcome.usage_id:
            line += f"  usage_id={outcome.usage_id}"
        if status == "rejected":
            line += f"  {errors_text(entry.record)}"
        out.write(line + "\n")
        bar.step(status)

    counts = replay_dead_letters(
        runtime, chosen, rate=args.rate, report=report, resolve=runtime.resolve_usage
    )
    out.write("replay: " + counts.text() + "\n")
    return EXIT_OK if counts.not_stored == 0 else EXIT_NOT_STORED


def cmd_purge(runtime: Runtime, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError(EXIT_USAGE, "refusing to purge without --yes when not on a terminal")
        answer = input(f"Type the queue name ({args.queue}) to delete every message in it: ")
        if answer.strip() != args.queue:
            raise CommandError(EXIT_NOT_FOUND, "not confirmed; nothing deleted")
    runtime.sqs.purge_queue(QueueUrl=runtime.queue.url(args.queue))
    out.write(f"purged {args.queue}\n")
    return EXIT_OK


def cmd_reconcile(runtime: Runtime, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.since > args.until:
        raise CommandError(EXIT_USAGE, "--since is after --until: the period is empty")
    bar = Progress(0, err, enabled=args.progress if args.progress is not None else err.isatty())
    report = reconcile(
        runtime,
        args.line,
        args.since,
        args.until,
        progress=lambda listed: bar.count(listed, "usages listed"),
    )
    bar.end()
    out.write(json.dumps(report, indent=2, default=str) + "\n")
    clean = not report["missing_in_piriod"] and not report["not_recorded_by_adapter"]
    return EXIT_OK if clean else EXIT_DIFFERENCES


def _filters(args: argparse.Namespace) -> Filters:
    if args.since and args.until and args.since > args.until:
        raise CommandError(EXIT_USAGE, "--since is after --until: nothing can match")
    return Filters(args.kind, args.line, args.source, args.since, args.until, frozenset(args.ids))


def _failure_line(exc: Exception) -> tuple[int, str]:
    """One line and an exit code for anything that went wrong outside the command's logic."""
    from piriod_adapter.idempotency import StoreUnavailable
    from piriod_adapter.piriod import PiriodUnavailable
    from piriod_adapter.queue import QueueUnavailable
    from piriod_adapter.secrets import SecretUnavailable
    from piriod_adapter.sources import SourcesUnavailable

    if isinstance(exc, CommandError):
        return exc.code, str(exc)
    if isinstance(exc, SettingsError | SourcesUnavailable):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, PiriodUnavailable):
        return EXIT_PIRIOD, f"Piriod: {exc}"
    if isinstance(exc, (StoreUnavailable, QueueUnavailable, SecretUnavailable)):
        return EXIT_AWS, f"AWS: {exc}"
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return EXIT_AWS, f"AWS refused: {error.get('Code', '?')}: {error.get('Message', '')}"
    if isinstance(exc, BotoCoreError):
        return EXIT_AWS, f"AWS unreachable: {type(exc).__name__}: {exc}"
    return EXIT_INTERNAL, f"unexpected error ({type(exc).__name__}): {exc}"


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = build_parser().parse_args(argv)
    try:
        runtime = Runtime(settings_from_stack(args.stack) if args.stack else None)
        runtime.settings  # noqa: B018 (fail now, with the setting's name, if one is wrong)
        if args.command == "list":
            return cmd_list(runtime, args, out)
        if args.command == "show":
            return cmd_show(runtime, args, out)
        if args.command == "replay":
            return cmd_replay(runtime, args, out, err)
        if args.command == "purge":
            return cmd_purge(runtime, args, out, err)
        if args.command == "status":
            report = status(runtime)
            if args.json:
                out.write(json.dumps(report, default=str) + "\n")
            else:
                render_status(report, out)
            return EXIT_OK
        return cmd_reconcile(runtime, args, out, err)
    except Exception as exc:
        code, message = _failure_line(exc)
        err.write(f"piriod-adapter: {message}\n")
        return code
