"""`piriod-adapter`: the operator's command. Set up the secrets (`init`, `signing-secret`),
send a signed test delivery (`send`), find, inspect and replay failed records, and reconcile
what the adapter posted with what Piriod lists.

Where the resources are: `--stack NAME` reads them from the CloudFormation stack's outputs and
parameters; without it, the same environment variables as the functions (SPEC section 6).
AWS endpoints follow boto3's AWS_ENDPOINT_URL, so it works against local stand-ins too.

Exit codes: 0 done; 1 `show` found nothing, not confirmed, or `send` not answered 202; 2 invalid
arguments or settings; 3 reconcile found differences; 4 AWS (SQS, DynamoDB, CloudFormation,
Secrets Manager) could not be reached or refused; 5 Piriod could not be reached or refused;
6 a replayed record could be neither posted nor stored (run the replay again); 7 an
unexpected error (a defect).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

from piriod_adapter.models import MAX_LINE, parse_rfc3339
from piriod_adapter.runtime import Runtime
from piriod_adapter.settings import Settings, SettingsError, load_settings
from piriod_operator.operator import (
    QUEUES,
    Entry,
    Filters,
    Progress,
    choose_dead_letters,
    entries,
    error_map_text,
    errors_text,
    reconcile,
    render_status,
    render_table,
    replay_dead_letters,
    status,
)

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_DIFFERENCES = 0, 1, 2, 3
EXIT_AWS, EXIT_PIRIOD, EXIT_NOT_STORED, EXIT_INTERNAL = 4, 5, 6, 7
MAX_LIMIT = 10_000
MIN_RATE, MAX_RATE = 0.01, 1000.0  # records per second


class CommandError(Exception):
    """A one-line error for the operator, with its exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _stack(stack: str) -> dict[str, Any]:
    import boto3

    [description] = boto3.client("cloudformation").describe_stacks(StackName=stack)["Stacks"]
    return dict(description)


def _outputs(description: dict[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in description.get("Outputs", [])}


def settings_from_stack(stack: str) -> Settings:
    description = _stack(stack)
    outputs = _outputs(description)
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


def _json_number(text: str) -> str:
    from piriod_operator.onboarding import JSON_NUMBER

    if not JSON_NUMBER.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be a JSON number, not {text[:40]!r}")
    return text


def _rfc3339_text(text: str) -> str:
    _instant(text)
    return text


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not MIN_RATE <= value <= MAX_RATE:
        raise argparse.ArgumentTypeError(f"must be from {MIN_RATE} to {MAX_RATE} per second")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with an argument error on one line of stderr (exit 2), as every error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def _text(what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text.strip():  # an empty shell variable must not widen a choice to everything
            raise argparse.ArgumentTypeError(f"{what} must not be empty")
        return text.strip()

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
        p.add_argument("--source", type=_text("--source"), help="third-party source name")
        p.add_argument("--since", type=_instant, help="record date_time from (RFC 3339)")
        p.add_argument("--until", type=_instant, help="record date_time until (RFC 3339)")
        p.add_argument(
            "--id",
            dest="ids",
            action="append",
            default=[],
            type=_text("--id"),
            help="message id (repeatable)",
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

    init = sub.add_parser(
        "init",
        help="create or update the two secrets (and name them in a samconfig environment)",
        description='Creates <name>/piriod-token ({"api_token": ...}, asked for without '
        "echo) and <name>/webhook-signing-secrets (a new whsec_ secret, shown once). "
        "Re-runnable: the signing secrets are kept, the token replaced when given.",
    )
    init.add_argument("--name", default="piriod-usage-adapter", help="the stack's name")
    token = init.add_mutually_exclusive_group()
    token.add_argument(
        "--token-stdin", action="store_true", help="read the Piriod token from standard input"
    )
    token.add_argument("--keep-token", action="store_true", help="keep the stored token")
    init.add_argument("--workspace", help="Piriod workspace id (PiriodWorkspaceId)")
    init.add_argument("--test-mode", choices=["true", "false"], help="PiriodTestMode")
    init.add_argument("--config-env", help="write the parameters into this samconfig environment")
    init.add_argument("--samconfig", default="samconfig.toml", help="(default: %(default)s)")
    init.add_argument(
        "--region",
        help="where the secrets go, written into the samconfig environment too "
        "(default: your AWS configuration's region)",
    )

    rotate = sub.add_parser(
        "signing-secret",
        help="rotate the webhook signing secret: add a new one, then retire the old",
    )
    rotate.add_argument("action", choices=["add", "retire", "count"])
    rotate.add_argument("--name", default="piriod-usage-adapter", help="the stack's name")
    rotate.add_argument("--secret-id", help="the secret itself (default: <name>/webhook-...)")

    send = sub.add_parser(
        "send",
        help="send one signed test delivery and show its outcome",
        description="With --stack, the URL and the signing secret come from the stack's "
        "outputs (WebhookUrl, WebhookSecretArn). The secret is, in this order: --secret-id, "
        "the stack's, $PIRIOD_SIGNING_SECRET.",
    )
    send.add_argument("--url", help="the webhook's URL (default: the stack's WebhookUrl)")
    send.add_argument(
        "--secret-id", help="read the signing secret from this Secrets Manager secret"
    )
    send.add_argument("--line", type=_positive_int(MAX_LINE), help="a metered subscription line")
    send.add_argument("--quantity", type=_json_number, default="1", help="(default: %(default)s)")
    send.add_argument("--date-time", type=_rfc3339_text, help="(default: now)")
    send.add_argument("--key", help="an idempotency_key")
    send.add_argument("--file", type=Path, help="send this body as it is instead")
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
    found = [
        e
        for queue in _queues(args.queue)
        for e in entries(runtime, queue, MAX_LIMIT)
        if e.message_id.startswith(args.message_id)
    ]
    exact = [e for e in found if e.message_id == args.message_id]
    if len(exact) == 1 or len(found) == 1:
        out.write(json.dumps((exact or found)[0].to_dict(), indent=2) + "\n")
        return EXIT_OK
    if found:
        raise CommandError(
            EXIT_USAGE, f"{args.message_id!r} begins {len(found)} message ids; give more of it"
        )
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
        if status == "rejected" and outcome is not None and outcome.errors:
            # this attempt's errors: a record rejected again may be rejected for a new reason
            line += f"  {error_map_text(outcome.errors)}"
        elif status in ("rejected", "unreadable"):
            line += f"  {errors_text(entry.record, entry.problem)}"
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


def cmd_init(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import getpass

    from piriod_operator.onboarding import ensure_secrets, write_samconfig

    token = None
    if args.token_stdin:
        token = sys.stdin.readline().strip()
    elif not args.keep_token:
        token = getpass.getpass("Piriod API token (not shown): ").strip()
    if token is not None and not token:
        raise CommandError(EXIT_USAGE, "the Piriod token is empty")
    manager = _secrets_manager(args.region)
    region: str = manager.meta.region_name
    try:
        made = ensure_secrets(manager, args.name, token)
    except ValueError as exc:  # --keep-token before there is a token
        raise CommandError(EXIT_USAGE, str(exc)) from None
    out.write(f"PiriodTokenSecretArn={made.token_arn}\nWebhookSecretArn={made.signing_arn}\n")
    if made.new_signing_secret:
        err.write(
            "New webhook signing secret, shown once; give it to your meters "
            "(`signing-secret add` rotates it):\n"
        )
        out.write(f"{made.new_signing_secret}\n")
    else:
        err.write("The webhook signing secrets were kept (`signing-secret add` rotates them).\n")
    if args.config_env:
        overrides = {"PiriodTokenSecretArn": made.token_arn, "WebhookSecretArn": made.signing_arn}
        if args.workspace:
            overrides["PiriodWorkspaceId"] = args.workspace
        if args.test_mode:
            overrides["PiriodTestMode"] = args.test_mode
        write_samconfig(Path(args.samconfig), args.config_env, args.name, overrides, region)
        err.write(
            f"Wrote them and region {region} into [{args.config_env}.deploy.parameters] "
            f"of {args.samconfig}.\n"
        )
    return EXIT_OK


def cmd_signing_secret(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from piriod_operator.onboarding import (
        add_signing_secret,
        retire_signing_secrets,
        signing_secrets,
    )

    manager = _secrets_manager()
    secret_id = args.secret_id or f"{args.name}/webhook-signing-secrets"
    if args.action == "add":
        made, active = add_signing_secret(manager, secret_id)
        err.write(
            f"{active} signing secrets active; the new one, shown once (give it to your "
            "meters, then `signing-secret retire`):\n"
        )
        out.write(f"{made}\n")
    elif args.action == "retire":
        retired = retire_signing_secrets(manager, secret_id)
        out.write(f"retired {retired}; the newest signing secret is the only one active\n")
    else:
        out.write(f"{len(signing_secrets(manager, secret_id))} signing secret(s) active\n")
    return EXIT_OK


def cmd_send(args: argparse.Namespace, out: TextIO) -> int:
    import os

    from piriod_operator.onboarding import one_record_delivery, send, signing_secrets

    outputs = _outputs(_stack(args.stack)) if args.stack else {}
    url = args.url or outputs.get("WebhookUrl")
    if not url:
        raise CommandError(EXIT_USAGE, "give --url, or --stack of a deployed adapter")
    # The secret the command is told of wins: --secret-id, then the stack's, then the
    # environment's (a local secret, for a local URL).
    secret_id = args.secret_id or outputs.get("WebhookSecretArn")
    if secret_id:
        secrets = signing_secrets(_secrets_manager(), secret_id)
    elif os.environ.get("PIRIOD_SIGNING_SECRET"):
        secrets = [os.environ["PIRIOD_SIGNING_SECRET"]]
    else:
        raise CommandError(EXIT_USAGE, "give --secret-id or --stack, or set PIRIOD_SIGNING_SECRET")
    if args.file is not None:
        body = args.file.read_bytes()
    elif args.line is not None:
        body = one_record_delivery(args.line, args.quantity, args.date_time, args.key)
    else:
        raise CommandError(EXIT_USAGE, "give --line (a metered subscription line) or --file")
    status_code, answer = send(url, body, secrets)
    out.write(f"HTTP {status_code}\n")
    if isinstance(answer, dict):
        for result in answer.get("results", []):
            detail = " ".join(
                f"{k}={json.dumps(v)}" for k, v in result.items() if k not in ("index", "status")
            )
            out.write(f"record {result['index']}: {result['status']} {detail}".rstrip() + "\n")
        if "results" not in answer:
            out.write(f"{answer.get('message', '')}\n")
            for problem in answer.get("errors", []):
                out.write(
                    f"  record {problem['index']} · {problem['field']}: {problem['message']}\n"
                )
    else:
        out.write(f"{answer}\n")
    return EXIT_OK if status_code == 202 else EXIT_NOT_FOUND


def _secrets_manager(region: str | None = None) -> Any:
    import boto3
    from botocore.exceptions import NoRegionError

    try:
        return boto3.client("secretsmanager", region_name=region)
    except NoRegionError:
        raise CommandError(
            EXIT_USAGE, "no AWS region: give --region, or set AWS_DEFAULT_REGION"
        ) from None


def _logs_to(stream: TextIO) -> None:
    """The functions' log lines go to stderr here, so stdout holds only the command's own
    output (tables, reports, --json)."""
    import logging

    from piriod_adapter.observability import logger

    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    args = build_parser().parse_args(argv)
    _logs_to(err)
    try:
        if args.command == "init":
            return cmd_init(args, out, err)
        if args.command == "signing-secret":
            return cmd_signing_secret(args, out, err)
        if args.command == "send":
            return cmd_send(args, out)
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
