"""piriod-adapter: the operator's command for the Piriod usage adapter.

Set up the secrets (init, signing-secret), check and publish meter profiles (sources), send a
signed test delivery (send), find, inspect and replay failed records, cancel or amend a
record or event a meter sent (cancel, amend; show KEY lists a key's corrections), and
reconcile what the adapter posted with what Piriod lists. See the README for a walk through.

Which adapter: --stack NAME (before or after the command) reads everything from that
CloudFormation stack's parameters and outputs (--stack piriod-local: the local serve).
Without it, the commands that read the queues and the table take the functions' own
environment variables (docs/operations.md lists them). A flag beats the environment: send
posts to --url, else the stack's WebhookUrl, else $PIRIOD_WEBHOOK_URL. AWS endpoints follow
boto3's AWS_ENDPOINT_URL, so it works against local stand-ins too (said on a terminal).

Exit codes: 0 done; 1 show found nothing, cancel or amend found no record under the key,
not confirmed, send not answered 202 or a record of it rejected or queued (see send --allow),
sources try would not be answered 202, or sources validate found a broken source; 2 invalid
arguments or settings, or a stack or secret that does not exist; 3 reconcile found
differences; 4 AWS (SQS, DynamoDB, CloudFormation, Secrets Manager, SSM) could not be reached
or refused; 5 Piriod could not be reached or refused (an amended record rejected); 6 a
replayed record could be neither posted nor stored (run the replay again), or a correction
not applied with a store down (run it again with its --correction-id); 7 an
unexpected error (a defect); 8 send: nothing answers at the webhook's URL; 9 a question to
ask (init's token, purge's confirmation) and no terminal to ask it on; 141 standard output
was closed (`| head`): stopped quietly, as a Unix tool does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn, TextIO

from piriod_adapter.models import MAX_LINE, parse_rfc3339
from piriod_adapter.runtime import Runtime
from piriod_adapter.settings import SettingsError
from piriod_operator.errors import (
    EXIT_AWS,
    EXIT_DIFFERENCES,
    EXIT_INTERNAL,
    EXIT_NO_TERMINAL,
    EXIT_NOT_FOUND,
    EXIT_NOT_STORED,
    EXIT_OK,
    EXIT_PIRIOD,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    NO_STACK,
    CommandError,
    closed_pipe,
    one_line,
)
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
    reconciled,
    render_reconcile,
    render_status,
    render_table,
    replay_dead_letters,
    status,
)
from piriod_operator.stack import Stack, find_stack, get_stack

__all__ = ["COMMANDS", "Command", "CommandError", "Context", "build_parser", "main"]

PROG = "piriod-adapter"
MAX_LIMIT = 10_000
MIN_RATE, MAX_RATE = 0.01, 1000.0  # records per second
MAX_SSM_STANDARD = 4096  # bytes of an SSM String parameter in the standard tier
MAX_SSM_ADVANCED = 8192
STACK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,127}")  # CloudFormation's rule


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("piriod-usage-adapter")
    except PackageNotFoundError:  # pragma: no cover (run from a checkout without install)
        return "unknown"


# --- argument types ----------------------------------------------------------------------------


def _date(text: str) -> datetime | None:
    """A plain date (YYYY-MM-DD) as midnight UTC, or None when `text` is not one."""
    from datetime import UTC

    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return None
    try:
        return datetime.combine(datetime.fromisoformat(text).date(), time(), UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid date") from None


def _instant(text: str) -> datetime:
    """An RFC 3339 date-time, or a plain date (its start, UTC)."""
    day = _date(text)
    if day is not None:
        return day
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} {exc}, or a date YYYY-MM-DD") from None


def _until(text: str) -> datetime:
    """An RFC 3339 date-time, or a plain date (up to its end: the whole day, UTC)."""
    day = _date(text)
    if day is not None:
        return day + timedelta(days=1) - timedelta(microseconds=1)
    return _instant(text)


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


def _date_time_text(text: str) -> str:
    """An RFC 3339 date-time as given, or a plain date as its midnight UTC."""
    day = _date(text)
    if day is not None:
        return f"{text}T00:00:00Z"
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


def _text(what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text.strip():  # an empty shell variable must not widen a choice to everything
            raise argparse.ArgumentTypeError(f"{what} must not be empty")
        return text.strip()

    return parse


def _stack_name(text: str) -> str:
    if not STACK_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text[:40]!r} is not a stack name (a letter, then letters, digits or '-')"
        )
    return text


def _word(what: str) -> Callable[[str], str]:
    """A value written into samconfig.toml as it is: letters, digits and _ . : / -."""

    def parse(text: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:/-]{1,200}", text):
            raise argparse.ArgumentTypeError(
                f"{what} must be letters, digits and _ . : / - (not {text[:40]!r})"
            )
        return text

    return parse


def _source_name(text: str) -> str:
    from piriod_adapter.sources import SOURCE_NAME

    if not SOURCE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text[:70]!r} is not a source name (1 to 64 of a-z, 0-9 and '-')"
        )
    return text


def _file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file that can be read")
    return path


# --- the parser --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with an argument error on one line of stderr (exit 2), as every error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")

    def _print_message(self, message: str, file: Any = None) -> None:
        """As argparse's, without its silence on a failed write: a closed pipe is told to
        main, which stops quietly with its own exit code."""
        if message:
            (file or sys.stderr).write(message)


class _Help(argparse.HelpFormatter):
    """The help of every option ends with its default, unless its text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or action.required
            or "default" in text
            or default is None
            or default is argparse.SUPPRESS
            or default == []
        ):
            return text
        if default is False:
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"


class _RawHelp(argparse.RawDescriptionHelpFormatter, _Help):
    """The same, with the description kept as written (the module's docstring)."""


def _global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """--stack and --region: accepted before the command and after it (`default` SUPPRESS
    on a command, so that one given before it is not overwritten)."""
    parser.add_argument(
        "--stack",
        type=_stack_name,
        default=default,
        metavar="NAME",
        help="the adapter's CloudFormation stack (default: none; the commands that read the "
        "queues then take the functions' environment variables)",
    )
    parser.add_argument(
        "--region",
        default=default,
        metavar="R",
        help="AWS region (default: your AWS configuration's, e.g. AWS_DEFAULT_REGION)",
    )


@dataclass(frozen=True)
class Command:
    """One command: its words (`("sources", "push")`), its help, its arguments, and what it
    does. Every command is registered in COMMANDS, at the end of this module."""

    words: tuple[str, ...]
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Context], int]
    description: str | None = None


@dataclass
class Context:
    """What a command runs with: its arguments, where to write, and the adapter it is aimed
    at (found lazily, so that offline commands never touch AWS)."""

    args: argparse.Namespace
    out: TextIO
    err: TextIO
    _runtime: Runtime | None = field(default=None, repr=False)
    _told_local: bool = field(default=False, repr=False)

    def _aws(self) -> None:
        """Before the first AWS call: on a terminal, say when AWS_ENDPOINT_URL aims it at a
        local stand-in (as `eval "$(piriod-local serve --print-env)"` leaves a shell)."""
        from piriod_operator.stack import UNDO_LOCAL, local_endpoint

        if self._told_local:
            return
        self._told_local = True
        local = local_endpoint()
        if local and self.err.isatty():
            self.err.write(
                f"{PROG}: AWS here is the local stand-in at {local} (AWS_ENDPOINT_URL); "
                f"`{UNDO_LOCAL}` goes back to AWS\n"
            )

    @property
    def stack_name(self) -> str | None:
        name: str | None = getattr(self.args, "stack", None)
        return name

    def require_stack(self, what: str = "this command") -> str:
        if not self.stack_name:
            raise CommandError(EXIT_USAGE, f"{what} needs a stack: give --stack NAME")
        return self.stack_name

    @cached_property
    def stack(self) -> Stack:
        name = self.require_stack()
        self._aws()
        return get_stack(name, self.args.region)

    def find_stack(self) -> Stack | None:
        """The stack, or None when it does not exist yet (init, before the first deploy)."""
        name = self.require_stack()
        self._aws()
        return find_stack(name, self.args.region)

    def client(self, service: str) -> Any:
        from piriod_operator.stack import client

        self._aws()
        return client(service, self.args.region)

    @property
    def runtime(self) -> Runtime:
        """The adapter's clients, aimed at the stack, or at the environment's variables."""
        if self._runtime is None:
            self._aws()
            if self.stack_name:
                runtime = Runtime(self.stack.settings())
            else:
                runtime = Runtime()
                try:
                    runtime.settings  # noqa: B018 (fail now, naming the setting)
                except SettingsError as exc:
                    missing = "Field required" in str(exc) and "PIRIOD_WORKSPACE_ID" in str(exc)
                    if missing:
                        raise CommandError(EXIT_USAGE, f"no stack: {NO_STACK}") from None
                    raise CommandError(EXIT_USAGE, f"{exc} ({NO_STACK})") from None
            self._runtime = runtime
        return self._runtime


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=__doc__,
        formatter_class=_RawHelp,
        epilog="Run `piriod-adapter COMMAND --help` for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    _global_options(parser, None)
    parser.set_defaults(_parser=parser, _command=None)
    groups: dict[tuple[str, ...], Any] = {}
    parsers: dict[tuple[str, ...], argparse.ArgumentParser] = {(): parser}

    def subparsers(words: tuple[str, ...]) -> Any:
        if words not in groups:
            groups[words] = parsers[words].add_subparsers(
                title="commands", metavar="COMMAND", dest="_word_" + "_".join(words)
            )
        return groups[words]

    for command in COMMANDS:
        for depth in range(1, len(command.words)):  # a group such as `sources`
            words = command.words[:depth]
            if words not in parsers:
                group = subparsers(words[:-1]).add_parser(
                    words[-1],
                    help=GROUPS.get(words, ""),
                    description=GROUPS.get(words, ""),
                    formatter_class=_Help,
                )
                _global_options(group, argparse.SUPPRESS)
                group.set_defaults(_parser=group, _command=None)
                parsers[words] = group
        leaf = subparsers(command.words[:-1]).add_parser(
            command.words[-1],
            help=command.help,
            description=command.description or command.help,
            formatter_class=_Help,
        )
        _global_options(leaf, argparse.SUPPRESS)
        command.arguments(leaf)
        leaf.set_defaults(_parser=leaf, _command=command)
        parsers[command.words] = leaf
    return parser


@contextmanager
def _region(region: str | None) -> Iterator[None]:
    """--region for every client of this run (boto3 reads it from the environment)."""
    if not region:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("AWS_DEFAULT_REGION", "AWS_REGION")}
    os.environ["AWS_DEFAULT_REGION"] = os.environ["AWS_REGION"] = region
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        try:
            code = _main(argv, out, err)
        except SystemExit:  # --help, --version, an argument error: what they wrote goes out
            out.flush()
            raise
        out.flush()
        return code
    except BrokenPipeError:  # `piriod-adapter list | head`: the reader has all it wanted
        return closed_pipe(out)


def _main(argv: list[str] | None, out: TextIO, err: TextIO) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command | None = args._command
    if command is None:  # a bare command, or a group without its command: its usage
        args._parser.print_help(out)
        return EXIT_USAGE
    _logs_to(err)
    try:
        with _region(args.region):
            return command.run(Context(args, out, err))
    except BrokenPipeError:
        raise
    except Exception as exc:
        code, message = _failure_line(exc)
        err.write(f"{PROG}: {one_line(message)}\n")
        return code


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
    if isinstance(exc, OSError) and exc.filename is not None:  # a file given, not readable
        return EXIT_USAGE, f"{exc.filename}: {exc.strerror or exc}"
    return EXIT_INTERNAL, f"unexpected error ({type(exc).__name__}): {exc}"


def _logs_to(stream: TextIO) -> None:
    """The functions' log lines go to stderr here, so stdout holds only the command's own
    output (tables, reports, --json)."""
    import logging

    from piriod_adapter.observability import logger

    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)


# --- the queues: list, show, replay, purge, reconcile, status ----------------------------------


def _filter_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kind",
        choices=["transient", "ambiguous", "rejected", "exhausted", "unreadable"],
        help="only records that failed this way (default: every kind)",
    )
    p.add_argument(
        "--line",
        type=_positive_int(MAX_LINE),
        help="only this subscription line (default: every line)",
    )
    p.add_argument(
        "--source",
        type=_text("--source"),
        help="only this third-party source (default: every source and the native route)",
    )
    p.add_argument(
        "--since",
        type=_instant,
        metavar="WHEN",
        help="only records whose date_time is at or after WHEN: RFC 3339, or a date "
        "YYYY-MM-DD (its start, UTC) (default: no bound)",
    )
    p.add_argument(
        "--until",
        type=_until,
        metavar="WHEN",
        help="only records whose date_time is at or before WHEN: RFC 3339, or a date "
        "YYYY-MM-DD (the whole day, UTC) (default: no bound)",
    )
    p.add_argument(
        "--id",
        dest="ids",
        action="append",
        default=[],
        type=_text("--id"),
        metavar="MESSAGE_ID",
        help="only this message id or its first characters; repeatable (default: any id)",
    )


def _filters(args: argparse.Namespace) -> Filters:
    if args.since and args.until and args.since > args.until:
        raise CommandError(EXIT_USAGE, "--since is after --until: nothing can match")
    return Filters(args.kind, args.line, args.source, args.since, args.until, frozenset(args.ids))


def _queues(choice: str) -> tuple[str, ...]:
    return QUEUES if choice == "both" else (choice,)


def _list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", choices=[*QUEUES, "both"], default="both", help="which queue to list")
    p.add_argument(
        "--limit", type=_positive_int(MAX_LIMIT), default=100, help="at most this many rows"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    _filter_arguments(p)


def cmd_list(ctx: Context) -> int:
    args, out, runtime = ctx.args, ctx.out, ctx.runtime
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


def _show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "message_id",
        metavar="KEY_OR_ID",
        help="a record's key (its idempotency_key, or {webhook-id}:{index}; with --source, an "
        "event's event_id): its record, what Piriod holds and its corrections; else a queue "
        "message's id, or its first characters: the message in full",
    )
    p.add_argument(
        "--source",
        type=_source_name,
        metavar="NAME",
        help="KEY_OR_ID is an event id of this third-party source (default: a native record's "
        "key, else a message id)",
    )
    p.add_argument(
        "--queue",
        choices=[*QUEUES, "both"],
        help="look for a message in this queue only, not for a key (default: a key, then a "
        "message in both queues)",
    )
    p.add_argument("--json", action="store_true", help="a key as one JSON document")


def cmd_show(ctx: Context) -> int:
    from piriod_operator.corrections import key_view, render_key, where

    args, out, runtime = ctx.args, ctx.out, ctx.runtime
    text = args.message_id
    if not text.strip():
        raise CommandError(EXIT_USAGE, "give a key, or a message id (or its first characters)")
    if args.source and args.queue:
        raise CommandError(EXIT_USAGE, "--source names an event's key and --queue a message: one")
    if args.queue is None:
        view = key_view(runtime, text, args.source)
        if view is not None:
            if args.json:
                out.write(json.dumps(view, indent=2) + "\n")
            else:
                render_key(view, out)
            return EXIT_OK
        if args.source:
            raise CommandError(
                EXIT_NOT_FOUND,
                f"no key {text!r} ({where(args.source)}): never seen, or forgotten (keys are "
                "kept IdempotencyTtlDays)",
            )
    found = [
        e
        for queue in _queues(args.queue or "both")
        for e in entries(runtime, queue, MAX_LIMIT)
        if e.message_id.startswith(text)
    ]
    exact = [e for e in found if e.message_id == text]
    if len(exact) == 1 or len(found) == 1:
        out.write(json.dumps((exact or found)[0].to_dict(), indent=2) + "\n")
        return EXIT_OK
    if found:
        raise CommandError(EXIT_USAGE, f"{text!r} begins {len(found)} message ids; give more of it")
    if args.queue is None:
        raise CommandError(EXIT_NOT_FOUND, f"no key and no message {text!r} found")
    raise CommandError(EXIT_NOT_FOUND, f"no message {text!r} found")


# --- corrections: cancel, amend (SPEC 10) -----------------------------------------------------


def _correction_arguments(amend: bool) -> Callable[[argparse.ArgumentParser], None]:
    def arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "key",
            metavar="KEY",
            help="the record's key: its idempotency_key, or {webhook-id}:{index}; with "
            "--source, the event's event_id",
        )
        if amend:
            p.add_argument(
                "--quantity",
                type=_json_number,
                required=True,
                metavar="Q",
                help="the record's new quantity: a JSON number, >= 0 and below 10^20, as a "
                "record's (its digits reach Piriod as typed); not for a count window's event",
            )
        p.add_argument(
            "--source",
            type=_source_name,
            metavar="NAME",
            help="KEY is an event of this third-party source (default: a record of the "
            "native route)",
        )
        p.add_argument(
            "--correction-id",
            metavar="ID",
            help="names this correction: run again with the same id, it is applied once "
            "(default: a new id, printed on stderr)",
        )
        p.add_argument(
            "--json",
            action="store_true",
            help="the result as POST /v1/corrections answers it, one JSON object",
        )

    return arguments


def cmd_cancel(ctx: Context) -> int:
    return _correct(ctx, "cancel", None)


def cmd_amend(ctx: Context) -> int:
    return _correct(ctx, "amend", ctx.args.quantity)


def _correct(ctx: Context, action: str, quantity: str | None) -> int:
    """One correction, as a sender's: read by the route's own rules (bad input is exit 2 and
    changes nothing), accepted on the key and applied as the route applies it; the result
    is what a sender would be answered, and its status the exit code."""
    from piriod_adapter.clock import Deadline
    from piriod_adapter.corrections import aggregate_of, apply_corrections, parse_corrections
    from piriod_adapter.validation import BodyError
    from piriod_operator.corrections import correction_body, new_correction_id, where

    args, out, err = ctx.args, ctx.out, ctx.err
    correction_id = args.correction_id if args.correction_id is not None else new_correction_id()
    body = correction_body(action, args.key, args.source, quantity, correction_id)
    try:
        [entry] = parse_corrections(body, lambda name: aggregate_of(ctx.runtime, name))
    except BodyError as exc:
        problems = "; ".join(f"{p.field}: {p.message}" for p in exc.problems) or exc.message
        raise CommandError(EXIT_USAGE, f"{problems}; nothing was changed") from None
    if args.correction_id is None:
        err.write(
            f"correction id {correction_id} (to run this correction again, once: "
            f"--correction-id {correction_id})\n"
        )
    [done] = apply_corrections(ctx.runtime, [entry], Deadline.after(60))
    result = done.result(0, correction_id)
    named = f"key {args.key!r} ({where(args.source)})"
    if args.json:
        out.write(result.model_dump_json(exclude_none=True) + "\n")
    else:
        shown = {"revision": result.revision, "usage_id": result.usage_id}
        detail = "".join(f" {k}={v}" for k, v in shown.items() if v is not None)
        out.write(f"{named}: {result.status}{detail} correction_id={json.dumps(correction_id)}\n")
        meaning = _meaning(result.status, action, quantity, result.revision, bool(args.source))
        out.write(meaning + "\n")
    if result.status == "not_found" and result.errors:  # the key takes no more corrections
        raise CommandError(
            EXIT_NOT_FOUND, f"{named}: {error_map_text(result.errors)}; nothing was changed"
        )
    if result.status == "not_found":
        raise CommandError(
            EXIT_NOT_FOUND,
            f"no record under {named}: never seen, forgotten (keys are kept "
            "IdempotencyTtlDays), or cancelled; nothing was changed (`show KEY` tells which)",
        )
    if result.status == "rejected":
        errors = error_map_text(result.errors or {})
        if args.source:  # an event's correction the adapter refused: nothing was changed
            raise CommandError(EXIT_USAGE, f"{named}: {errors}; nothing was changed")
        raise CommandError(
            EXIT_PIRIOD,
            f"Piriod refused the amended record (400): {errors}; it waits in DeadLetterQueue "
            "(`piriod-adapter list --queue dead-letter`)",
        )
    if result.status == "not_stored":
        raise CommandError(
            EXIT_NOT_STORED,
            f"the correction was not applied, and may not be kept ({result.message}): run the "
            f"command again with --correction-id {correction_id}",
        )
    return EXIT_OK


def _meaning(
    status: str, action: str, quantity: str | None, revision: int | None, event: bool
) -> str:
    """What a correction's status means, in a sentence."""
    if status == "applied" and event:
        change = "taken out of" if action == "cancel" else f"counted at {quantity} in"
        return f"applied: {change} its window's open total, posted when the window closes"
    if status == "applied":
        return (
            "applied: Piriod holds nothing of it now"
            if action == "cancel"
            else f"applied: Piriod holds it at {quantity} now, in one usage"
        )
    if status == "pending" and event:
        return (
            "pending: accepted and kept; its window was flushed, and the next FlushFunction "
            "run restates its usage (`piriod-adapter show KEY --source NAME` shows it)"
        )
    if status == "pending":
        return (
            "pending: accepted and kept, not in Piriod yet: the record's next attempt "
            "applies it (ReplayFunction, or `piriod-adapter replay` for a dead letter); "
            "`piriod-adapter show KEY` shows where it waits"
        )
    if status == "duplicate":
        return (
            f"duplicate: this correction id was accepted before, as revision {revision}; "
            "nothing changed"
        )
    return f"{status}: nothing was applied"


def _replay_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="show what would be replayed, only")
    p.add_argument(
        "--limit", type=_positive_int(MAX_LIMIT), default=100, help="at most this many records"
    )
    p.add_argument(
        "--rate",
        type=_rate,
        help=f"at most this many records per second, {MIN_RATE} to {MAX_RATE} "
        "(default: as fast as Piriod answers)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: on a terminal, for more than 20 records)",
    )
    _filter_arguments(p)


def cmd_replay(ctx: Context) -> int:
    args, out, err, runtime = ctx.args, ctx.out, ctx.err, ctx.runtime
    chosen = choose_dead_letters(runtime, _filters(args), args.limit)
    if args.dry_run:
        render_table(chosen, out)
        out.write("dry run: nothing was replayed\n")
        from piriod_adapter.queue import DEAD_LETTER

        runtime.queue.release(DEAD_LETTER, [e.receipt_handle for e in chosen if e.receipt_handle])
        out.write(f"replay: chosen={len(chosen)}\n")
        return EXIT_OK
    enabled = args.progress if args.progress is not None else (len(chosen) > 20 and err.isatty())
    bar = Progress(len(chosen), err, enabled=enabled)

    def report(entry: Entry, status: str, outcome: Any) -> None:
        line = f"{entry.message_id[:8]}  "
        if entry.record is not None:
            usage = entry.record.usage
            if usage.subscription_line is not None:
                line += f"line {usage.subscription_line}  "
            else:  # an unmapped meter: the line its profile gives it now, if any
                resolved = runtime.resolve_usage(usage).subscription_line
                line += f"line meter:{usage.meter_id}->{resolved or '?'}  "
        line += status
        if outcome is not None and outcome.usage_id:
            line += f"  usage_id={outcome.usage_id}"
        placement = getattr(outcome, "placement", None)
        if placement is not None and placement.message_id != entry.message_id:
            line += f"  now {placement.queue} message {placement.message_id}"
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


def _purge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--queue", choices=QUEUES, required=True, help="the queue to empty")
    p.add_argument("--yes", action="store_true", help="confirm without asking")


def cmd_purge(ctx: Context) -> int:
    args, out, runtime = ctx.args, ctx.out, ctx.runtime
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError(
                EXIT_NO_TERMINAL, "no terminal to confirm the purge on: give --yes to purge"
            )
        answer = input(f"Type the queue name ({args.queue}) to delete every message in it: ")
        if answer.strip() != args.queue:
            raise CommandError(EXIT_NOT_FOUND, "not confirmed; nothing deleted")
    runtime.queue.purge(args.queue)
    parked = 0
    if args.queue == "dead-letter":  # and the dead letters parked before SQS could drop them
        from piriod_adapter.table import PARKED

        for waiting in runtime.store.waiting(PARKED):
            runtime.store.unpark(waiting.message_id)
            parked += 1
    out.write(f"purged {args.queue}" + (f" and {parked} parked record(s)" if parked else "") + "\n")
    return EXIT_OK


def _reconcile_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--line", type=_positive_int(MAX_LINE), required=True, help="the subscription line"
    )
    p.add_argument(
        "--since",
        type=_instant,
        required=True,
        metavar="WHEN",
        help="from: RFC 3339, or a date YYYY-MM-DD (its start, UTC)",
    )
    p.add_argument(
        "--until",
        type=_until,
        required=True,
        metavar="WHEN",
        help="until: RFC 3339, or a date YYYY-MM-DD (the whole day, UTC)",
    )
    p.add_argument("--json", action="store_true", help="the report as one JSON document")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="count listed usages on stderr (default: on a terminal)",
    )


def cmd_reconcile(ctx: Context) -> int:
    args, out, err, runtime = ctx.args, ctx.out, ctx.err, ctx.runtime
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
    if args.json:
        out.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        render_reconcile(report, out)
    return EXIT_OK if reconciled(report) else EXIT_DIFFERENCES


def _windows_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source", type=_text("--source"), help="one source's windows (default: every source)"
    )
    p.add_argument(
        "--line", type=_positive_int(MAX_LINE), help="one subscription line (default: every line)"
    )
    p.add_argument(
        "--state",
        choices=["open", "closed", "posted", "queued"],
        help="one state (default: every state)",
    )
    p.add_argument(
        "--limit",
        type=_positive_int(MAX_LIMIT),
        default=1000,
        help="the newest this many that match, oldest first (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per window")


def cmd_windows(ctx: Context) -> int:
    """Aggregation windows (docs/aggregation.md): source, line, window start, generation,
    state, total and events."""
    from piriod_operator.windows import list_windows

    runtime = ctx.runtime
    try:
        names = sorted(runtime.sources.document().sources)
    except Exception:  # the profile document cannot be read: --source still works
        names = []
    args = ctx.args
    rows = list_windows(
        runtime.windows,
        runtime.store,
        names,
        source=args.source,
        line=args.line,
        state=args.state,
        limit=args.limit,
    )
    if args.json:
        for one in rows:
            ctx.out.write(json.dumps(one.to_dict()) + "\n")
        return EXIT_OK
    ctx.out.write(
        f"{'SOURCE':<16} {'LINE':>8}  {'WINDOW START':<20} {'GEN':>3}  {'STATE':<7} "
        f"{'TOTAL':>20} {'EVENTS':>7}  {'DUE AT':<20}  USAGE\n"
    )
    for one in rows:
        ctx.out.write(
            f"{one.source[:16]:<16} {one.line:>8}  {one.window_start:<20} {one.generation:>3}  "
            f"{one.state:<7} {one.total or '-':>20} "
            f"{'-' if one.events is None else one.events:>7}  {one.due_at or '-':<20}  "
            f"{one.usage_id or '-'}\n"
        )
    ctx.out.write(f"{len(rows)} window generation(s)\n")
    return EXIT_OK


def _status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON document")


def cmd_status(ctx: Context) -> int:
    report = status(ctx.runtime)
    if ctx.args.json:
        ctx.out.write(json.dumps(report, default=str) + "\n")
    else:
        render_status(report, ctx.out)
    return EXIT_OK


# --- before and after the first deploy: init, signing-secret, send -----------------------------


def _deprecated_name(p: argparse.ArgumentParser) -> None:
    """--name, as these commands took it before --stack: the same, hidden."""
    p.add_argument("--name", type=_stack_name, default=None, help=argparse.SUPPRESS)


def _stack_of(ctx: Context) -> str:
    name = getattr(ctx.args, "name", None)
    if name and ctx.stack_name and name != ctx.stack_name:
        raise CommandError(EXIT_USAGE, "--name (deprecated) and --stack name different stacks")
    if name and not ctx.stack_name:
        ctx.err.write("piriod-adapter: --name is deprecated; give --stack NAME\n")
        ctx.args.stack = name
    return ctx.require_stack()


def _init_arguments(p: argparse.ArgumentParser) -> None:
    _deprecated_name(p)
    token = p.add_mutually_exclusive_group()
    token.add_argument(
        "--token-stdin",
        action="store_true",
        help="read the Piriod token from standard input (default: asked for, not shown)",
    )
    token.add_argument("--keep-token", action="store_true", help="keep the token already stored")
    p.add_argument(
        "--workspace",
        type=_word("--workspace"),
        help="Piriod workspace id, written as PiriodWorkspaceId (default: left as it is)",
    )
    p.add_argument(
        "--test-mode",
        choices=["true", "false"],
        help="written as PiriodTestMode (default: left as it is)",
    )
    p.add_argument(
        "--config-env",
        type=_word("--config-env"),
        metavar="ENV",
        help="write stack_name, region and the parameters into this samconfig environment, "
        "made if new, with SourcesConfig=ssm:/<stack>/sources unless it names one (default: "
        "write nothing)",
    )
    p.add_argument("--samconfig", default="samconfig.toml", help="the samconfig file")


def _ask_token() -> str:
    """The Piriod token, asked for on the terminal without echo; with no terminal, the line
    on standard input (a pipe), and none there is a one-line error, not a traceback."""
    import getpass
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", getpass.GetPassWarning)  # no terminal: said below
        try:
            return getpass.getpass("Piriod API token (not shown): ")
        except getpass.GetPassWarning:
            pass
        except EOFError:  # Ctrl-D at the prompt
            return ""
    line = sys.stdin.readline()
    if not line:
        raise CommandError(
            EXIT_NO_TERMINAL,
            "no terminal to ask for the Piriod token on, and nothing on standard input: pipe "
            "it with --token-stdin, or give --keep-token",
        )
    return line


def cmd_init(ctx: Context) -> int:
    from piriod_operator.onboarding import ensure_secrets, write_samconfig

    args, out, err = ctx.args, ctx.out, ctx.err
    if not (args.stack or args.name):
        raise CommandError(
            EXIT_USAGE,
            "init needs the stack's name: give --stack NAME (the secrets are made under it, "
            "and `--config-env ENV` writes it into samconfig.toml)",
        )
    stack = _stack_of(ctx)
    token = None
    if args.token_stdin:
        token = sys.stdin.readline().strip()
    elif not args.keep_token:
        token = _ask_token().strip()
    if token is not None and not token:
        raise CommandError(EXIT_USAGE, "the Piriod token is empty")
    manager = ctx.client("secretsmanager")
    region: str = manager.meta.region_name
    try:
        made = ensure_secrets(manager, stack, token)
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
        # the profiles' SSM parameter, so that `sources push` works after the first deploy
        sources = {"SourcesConfig": f"ssm:/{stack}/sources"}
        written = write_samconfig(
            Path(args.samconfig), args.config_env, stack, overrides, region, sources
        )
        err.write(
            f"Wrote stack_name {stack}, region {region} and the parameters into "
            f"[{args.config_env}] of {args.samconfig} (meter profiles: "
            f"{written.get('SourcesConfig') or 'none'}); deploy with "
            f"`sam build && sam deploy --config-env {args.config_env}`.\n"
        )
    else:
        err.write(
            "Nothing was written into samconfig.toml (give --config-env ENV to); deploy with "
            f"`sam deploy --stack-name {stack}` and these parameters.\n"
        )
    return EXIT_OK


def _signing_secret_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=["add", "retire", "count"],
        help="add a new secret next to the current ones; retire all but the newest; count them",
    )
    _deprecated_name(p)
    p.add_argument(
        "--secret-id",
        help="the secret itself (default: the stack's WebhookSecretArn, or before the first "
        "deploy <stack>/webhook-signing-secrets)",
    )


def cmd_signing_secret(ctx: Context) -> int:
    from piriod_operator.onboarding import secret_exists

    args = ctx.args
    secret_id = args.secret_id
    if not secret_id:
        stack = _stack_of(ctx)
        found = ctx.find_stack()
        secret_id = (
            found.parameters.get("WebhookSecretArn") if found is not None else None
        ) or f"{stack}/webhook-signing-secrets"
    manager = ctx.client("secretsmanager")
    if not secret_exists(manager, secret_id):
        made_by = (
            f"run `piriod-adapter --stack {ctx.stack_name} init` first"
            if ctx.stack_name
            else "give the right --secret-id"
        )
        raise CommandError(EXIT_USAGE, f"no secret {secret_id!r}: {made_by}")
    return _rotate(ctx, manager, secret_id, args.action, "signing-secret", "your meters")


def _rotate(ctx: Context, manager: Any, secret_id: str, action: str, cmd: str, who: str) -> int:
    """add / retire / count on a {"signing_secrets": [...]} secret (shared by signing-secret
    and sources secret)."""
    from piriod_operator.onboarding import (
        add_signing_secret,
        retire_signing_secrets,
        signing_secrets,
    )

    out, err = ctx.out, ctx.err
    if action == "add":
        made, active = add_signing_secret(manager, secret_id)
        err.write(
            f"{active} signing secrets active; the new one, shown once (give it to {who}, "
            f"then `{cmd} retire`):\n"
        )
        out.write(f"{made}\n")
    elif action == "retire":
        retired = retire_signing_secrets(manager, secret_id)
        out.write(f"retired {retired}; the newest signing secret is the only one active\n")
    else:
        out.write(f"{len(signing_secrets(manager, secret_id))} signing secret(s) active\n")
    return EXIT_OK


SEND_STATUSES = ("posted", "duplicate", "aggregated")  # a record that got where it was sent
ALLOWABLE = ("queued", "rejected")


def _send_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        help="the webhook's URL; with --source, its base address is enough (default: the "
        "stack's WebhookUrl with --stack, else $PIRIOD_WEBHOOK_URL, which `piriod-local serve "
        "--print-env` exports)",
    )
    p.add_argument(
        "--secret-id",
        help="sign with the secrets of this Secrets Manager secret (default: the stack's "
        "WebhookSecretArn with --stack, or the profile's secret_id with --source, else "
        "$PIRIOD_SIGNING_SECRET)",
    )
    p.add_argument(
        "--line",
        type=_positive_int(MAX_LINE),
        help="send one record for this metered subscription line",
    )
    p.add_argument(
        "--quantity",
        type=_json_number,
        help="with --line: the record's quantity, a JSON number (default: 1)",
    )
    p.add_argument(
        "--date-time",
        type=_date_time_text,
        metavar="WHEN",
        help="with --line: the record's date_time: RFC 3339, or a date YYYY-MM-DD (default: "
        "now, so that each run is a new record)",
    )
    p.add_argument(
        "--key",
        help="with --line: the record's idempotency_key (default: none). Sent again, it is a "
        "retry (duplicate) only with the same --date-time and --quantity: with the default "
        "time, now, it is another record under a used key, and rejected",
    )
    p.add_argument(
        "--file",
        type=_file,
        help="send this native body as it is, instead of --line and its options",
    )
    p.add_argument(
        "--webhook-id",
        type=_text("--webhook-id"),
        metavar="ID",
        help="send as this delivery (its webhook-id): the same body with an id already sent "
        "is a retry, its records answered duplicate (default: a new id, printed)",
    )
    p.add_argument(
        "--allow",
        action="append",
        default=[],
        choices=ALLOWABLE,
        help="exit 0 even when a record is answered this (repeatable; default: exit 1 when "
        "a record is queued or rejected)",
    )
    p.add_argument(
        "--source",
        type=_source_name,
        metavar="NAME",
        help="send --payload to this third-party source, signed with its profile's scheme "
        "(default: the native route)",
    )
    p.add_argument(
        "--config",
        type=_file,
        metavar="FILE",
        help="with --source: the profile document to read it from (default: the one the "
        "stack's SourcesConfig names)",
    )
    p.add_argument(
        "--payload",
        type=_file,
        metavar="FILE",
        help="with --source: the meter's own payload to send",
    )


@dataclass(frozen=True)
class _Target:
    """Where send posts, and where that came from (printed with each send)."""

    url: str
    came_from: str


def _send_url(ctx: Context) -> _Target:
    """--url; else the WebhookUrl of the stack --stack names; else $PIRIOD_WEBHOOK_URL.
    A flag (--stack too) beats the environment."""
    if ctx.args.url:
        return _Target(ctx.args.url, "--url")
    if ctx.stack_name:
        return _Target(ctx.stack.output("WebhookUrl"), f"stack {ctx.stack_name}")
    url = os.environ.get("PIRIOD_WEBHOOK_URL", "").strip()
    if url:
        return _Target(url, "$PIRIOD_WEBHOOK_URL")
    raise CommandError(
        EXIT_USAGE,
        "give --url, or --stack NAME of a deployed adapter, or export PIRIOD_WEBHOOK_URL",
    )


def cmd_send(ctx: Context) -> int:
    from piriod_operator.onboarding import one_record_delivery, signed_headers

    args = ctx.args
    if args.source:
        return _send_to_source(ctx)
    if args.payload or args.config:
        raise CommandError(EXIT_USAGE, "--payload and --config go with --source NAME")
    record_options = [
        option
        for option, value in (
            ("--quantity", args.quantity),
            ("--date-time", args.date_time),
            ("--key", args.key),
        )
        if value is not None
    ]
    if args.file is not None and args.line is not None:
        raise CommandError(EXIT_USAGE, "give --line or --file, not both (--file is sent as it is)")
    if args.file is not None and record_options:
        raise CommandError(
            EXIT_USAGE, f"{', '.join(record_options)} go with --line; --file is sent as it is"
        )
    if args.file is None and args.line is None:
        raise CommandError(EXIT_USAGE, "give --line (a metered subscription line) or --file")
    target = _send_url(ctx)
    if args.secret_id:
        secrets, signer = _secrets_of(ctx, args.secret_id), f"secret {args.secret_id}"
    elif ctx.stack_name:
        secret_id = ctx.stack.output("WebhookSecretArn")
        secrets, signer = _secrets_of(ctx, secret_id), f"stack {ctx.stack_name}'s secret"
    elif os.environ.get("PIRIOD_SIGNING_SECRET"):
        secrets, signer = [os.environ["PIRIOD_SIGNING_SECRET"]], "$PIRIOD_SIGNING_SECRET"
    else:
        raise CommandError(
            EXIT_USAGE, "give --secret-id or --stack NAME, or export PIRIOD_SIGNING_SECRET"
        )
    if args.file is not None:
        body = args.file.read_bytes()
    else:
        if args.key and not args.date_time:
            ctx.err.write(
                "note: --key without --date-time is a new record each run (its time is now); "
                "give a fixed --date-time to send it again as a retry\n"
            )
        body = one_record_delivery(args.line, args.quantity or "1", args.date_time, args.key)
    headers = signed_headers(body, secrets, args.webhook_id)
    return _post_and_show(ctx, target, body, headers, signer, headers["webhook-id"])


def _post_and_show(
    ctx: Context,
    target: _Target,
    body: bytes,
    headers: dict[str, str],
    signer: str,
    webhook_id: str | None,
) -> int:
    """Say where the delivery goes (and what came from where), post it, show the answer."""
    from piriod_operator.onboarding import Unreachable, post

    delivery = f"; webhook-id {webhook_id}" if webhook_id else ""
    ctx.err.write(f"POST {target.url} (from {target.came_from}; signed with {signer}{delivery})\n")
    try:
        status_code, answer = post(target.url, body, headers)
    except Unreachable as exc:
        raise CommandError(
            EXIT_UNREACHABLE, f"nothing answers at {target.url} ({exc}); nothing was sent"
        ) from None
    return _show_answer(ctx.out, status_code, answer, allowed=set(ctx.args.allow))


def _secrets_of(ctx: Context, secret_id: str) -> list[str]:
    """The signing secrets of a Secrets Manager secret that exists."""
    from piriod_operator.onboarding import secret_exists, signing_secrets

    manager = ctx.client("secretsmanager")
    if not secret_exists(manager, secret_id):
        raise CommandError(
            EXIT_USAGE,
            f"no secret {secret_id!r}: make it (`piriod-adapter --stack NAME init`, or "
            "`sources secret add NAME`), or give --secret-id",
        )
    return signing_secrets(manager, secret_id)


def _send_to_source(ctx: Context) -> int:
    from piriod_operator.profiles import source_headers, source_url

    args = ctx.args
    if args.payload is None:
        raise CommandError(EXIT_USAGE, "--source needs --payload FILE (the meter's own payload)")
    if args.line is not None or args.file is not None:
        raise CommandError(EXIT_USAGE, "--line and --file are for the native route, not --source")
    stack = ctx.stack if ctx.stack_name and args.config is None else None
    profile = _profile(ctx, args.source, args.config, stack)
    scheme = profile.signature.scheme
    if args.webhook_id and scheme != "standard-webhooks":
        raise CommandError(
            EXIT_USAGE,
            f"--webhook-id goes with a standard-webhooks source; {args.source!r} signs with "
            f"{scheme} (its events' event_id are their keys)",
        )
    secret_id = args.secret_id or profile.signature.secret_id
    secrets = _secrets_of(ctx, secret_id)
    target = _send_url(ctx)
    body = args.payload.read_bytes()
    try:
        headers = source_headers(profile, body, secrets, message_id=args.webhook_id)
    except ValueError as exc:  # standard-webhooks with a secret that is not whsec_...
        raise CommandError(EXIT_USAGE, f"cannot sign for {args.source!r}: {exc}") from None
    routed = _Target(source_url(target.url, args.source), target.came_from)
    return _post_and_show(
        ctx, routed, body, headers, f"{scheme}, secret {secret_id}", headers.get("webhook-id")
    )


def _profile(ctx: Context, name: str, config: Path | None, stack: Stack | None) -> Any:
    """The named source's profile, from the file given or the stack's pushed document."""
    from piriod_operator.profiles import check_document

    if config is not None:
        raw, where = config.read_bytes(), str(config)
    elif stack is not None:
        parameter = _sources_parameter(stack)
        value = ctx.client("ssm").get_parameter(Name=parameter)["Parameter"]["Value"]
        raw, where = value.encode("utf-8", "surrogatepass"), f"SSM parameter {parameter}"
    else:
        raise CommandError(EXIT_USAGE, "--source needs --config FILE, or --stack NAME")
    checked = check_document(raw)
    if name in checked.profiles:
        return checked.profiles[name]
    mine = [p.text() for p in checked.problems if p.source in (name, None)]
    if mine:
        raise CommandError(EXIT_USAGE, f"{where}: " + "; ".join(mine))
    known = ", ".join(sorted(checked.profiles)) or "none"
    raise CommandError(EXIT_USAGE, f"no source {name!r} in {where} (it has: {known})")


def _show_answer(out: TextIO, status_code: int, answer: Any, allowed: set[str]) -> int:
    """The answer, record by record; exit 0 only for a 202 whose every record got where it
    was sent (posted, duplicate, aggregated), or whose other statuses are `allowed`."""
    out.write(f"HTTP {status_code}\n")
    statuses: list[str] = []
    if isinstance(answer, dict):
        for result in answer.get("results", []):
            statuses.append(str(result.get("status")))
            detail = " ".join(
                f"{k}={json.dumps(v)}" for k, v in result.items() if k not in ("index", "status")
            )
            out.write(f"record {result['index']}: {result['status']} {detail}".rstrip() + "\n")
        if "results" not in answer:
            out.write(f"{answer.get('message', '')}\n")
            for problem in answer.get("errors") or []:
                out.write(f"  {_problem_text(problem)}\n")
        elif not answer["results"]:
            out.write("no records (the profile's records expression found none)\n")
    else:
        out.write(f"{answer}\n")
    if status_code != 202:
        return EXIT_NOT_FOUND
    refused = sorted({s for s in statuses if s not in SEND_STATUSES} - allowed)
    if refused:
        out.write(
            f"not all records got through ({', '.join(refused)}): exit 1 "
            f"(--allow {' --allow '.join(s for s in refused if s in ALLOWABLE) or 'STATUS'} "
            "to exit 0 all the same)\n"
        )
        return EXIT_NOT_FOUND
    return EXIT_OK


def _problem_text(problem: dict[str, Any]) -> str:
    """One problem of a 422: `record 2 · quantity: ...`, or `body · usages: ...` for the
    delivery as a whole (a problem with no record index)."""
    index = problem.get("index")
    where = "body" if index is None else f"record {index}"
    return f"{where} · {problem.get('field')}: {problem.get('message')}"


# --- sources: meter profiles -------------------------------------------------------------------


def _validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=_file, metavar="FILE", help="the profile document (JSON)")


def cmd_sources_validate(ctx: Context) -> int:
    from piriod_operator.profiles import check_document

    checked = check_document(ctx.args.file.read_bytes())
    for problem in checked.problems:
        ctx.out.write(f"{ctx.args.file}: {problem.text()}\n")
    if checked.problems:
        broken = checked.broken
        what = f"{len(broken)} broken source(s): {', '.join(broken)}" if broken else "invalid"
        ctx.out.write(f"{ctx.args.file}: {what}; {len(checked.profiles)} valid\n")
        return EXIT_NOT_FOUND
    names = ", ".join(sorted(checked.profiles)) or "none"
    ctx.out.write(f"{ctx.args.file}: {len(checked.profiles)} source(s) valid: {names}\n")
    return EXIT_OK


def _try_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=_file, required=True, metavar="FILE", help="the profile document"
    )
    p.add_argument(
        "--source", type=_source_name, required=True, metavar="NAME", help="the source to try"
    )
    p.add_argument(
        "--payload", type=_file, required=True, metavar="FILE", help="a sample of its payload"
    )
    p.add_argument("--json", action="store_true", help="the dry run as one JSON document")


def cmd_sources_try(ctx: Context) -> int:
    from piriod_operator.profiles import render_tried, try_profile

    args = ctx.args
    profile = _profile(ctx, args.source, args.config, None)
    tried = try_profile(args.source, profile, args.payload.read_bytes())
    if args.json:
        ctx.out.write(json.dumps(tried.to_dict(), indent=2) + "\n")
    else:
        render_tried(tried, ctx.out)
    return EXIT_OK if tried.status == 202 else EXIT_NOT_FOUND


def _push_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=_file, metavar="FILE", help="the profile document (JSON)")


def _sources_parameter(stack: Stack) -> str:
    config = stack.parameters.get("SourcesConfig", "").strip()
    kind, _, name = config.partition(":")
    if kind != "ssm" or not name:
        raise CommandError(
            EXIT_USAGE,
            f"stack {stack.name!r} reads its sources from {config or 'nowhere'!r}, not an SSM "
            f"parameter: deploy it with SourcesConfig=ssm:/{stack.name}/sources (`piriod-adapter "
            f"--stack {stack.name} init --keep-token --config-env ENV` writes it into "
            "samconfig.toml for `sam deploy --config-env ENV`), then `piriod-adapter sources "
            "push FILE`",
        )
    return name


def cmd_sources_push(ctx: Context) -> int:
    from piriod_operator.onboarding import secret_exists
    from piriod_operator.profiles import check_document

    args, out, err = ctx.args, ctx.out, ctx.err
    raw = args.file.read_bytes()
    checked = check_document(raw)
    if checked.problems:
        for problem in checked.problems:
            err.write(f"{args.file}: {problem.text()}\n")
        raise CommandError(EXIT_USAGE, f"{args.file} does not validate; nothing was pushed")
    stack = ctx.stack
    parameter = _sources_parameter(stack)
    manager = ctx.client("secretsmanager")
    readable = {a for a in stack.parameters.get("SourceSecretArns", "").split(",") if a}
    missing = []
    for name, profile in sorted(checked.profiles.items()):
        secret_id = profile.signature.secret_id
        if not secret_exists(manager, secret_id):
            missing.append(
                f"source {name!r}: no secret {secret_id!r} (`piriod-adapter --stack "
                f"{stack.name} sources secret add {name}` makes {stack.name}/sources/{name})"
            )
        elif not secret_id.startswith(f"{stack.name}/sources/") and secret_id not in readable:
            err.write(
                f"warning: source {name!r}: the functions may read only secrets named "
                f"{stack.name}/sources/... or listed in SourceSecretArns; {secret_id!r} is "
                "neither\n"
            )
    if missing:
        raise CommandError(EXIT_USAGE, "; ".join(missing) + "; nothing was pushed")
    text = raw.decode("utf-8")
    size = len(text.encode())
    if size > MAX_SSM_ADVANCED:
        raise CommandError(
            EXIT_USAGE, f"{args.file} is {size} bytes; an SSM parameter holds {MAX_SSM_ADVANCED}"
        )
    tier = {"Tier": "Intelligent-Tiering"} if size > MAX_SSM_STANDARD else {}
    ctx.client("ssm").put_parameter(
        Name=parameter,
        Value=text,
        Type="String",
        Overwrite=True,
        Description=f"Source profiles of the usage adapter {stack.name}",
        **tier,
    )
    names = ", ".join(sorted(checked.profiles)) or "none"
    out.write(
        f"pushed {len(checked.profiles)} source(s) ({names}) to SSM parameter {parameter} of "
        f"stack {stack.name}; the webhook reads it within 60 seconds\n"
    )
    return EXIT_OK


def _secret_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=["add", "retire", "count"],
        help="add: make the secret, or add a new one next to the current ones (rotation); "
        "retire: keep only the newest; count: how many are active",
    )
    p.add_argument("name", type=_source_name, metavar="NAME", help="the source's name")
    p.add_argument(
        "--secret-stdin",
        action="store_true",
        help="with add: store the secret read from standard input (one the meter's vendor "
        "gave you) instead of generating one",
    )


def cmd_sources_secret(ctx: Context) -> int:
    from piriod_operator.onboarding import add_source_secret, secret_exists

    args, out, err = ctx.args, ctx.out, ctx.err
    stack = ctx.stack  # the secret is named after a stack that exists
    secret_id = f"{stack.name}/sources/{args.name}"
    manager = ctx.client("secretsmanager")
    if args.action != "add":
        if args.secret_stdin:
            raise CommandError(EXIT_USAGE, "--secret-stdin goes with add")
        if not secret_exists(manager, secret_id):
            raise CommandError(
                EXIT_USAGE,
                f"no secret {secret_id!r}: run `piriod-adapter --stack {stack.name} sources "
                f"secret add {args.name}` first",
            )
        return _rotate(ctx, manager, secret_id, args.action, "sources secret", "the meter")
    given = None
    if args.secret_stdin:
        given = sys.stdin.readline().strip()
        if not given:
            raise CommandError(EXIT_USAGE, "the secret read from standard input is empty")
    try:
        made, active, created = add_source_secret(manager, secret_id, args.name, given)
    except ValueError as exc:
        raise CommandError(EXIT_USAGE, str(exc)) from None
    if created:
        err.write(
            f"{secret_id} made; name it as the profile's signature.secret_id, then "
            "`piriod-adapter sources push FILE`\n"
        )
    else:
        err.write(
            f"{secret_id}: rotating: {active} secrets active; once the meter signs with the "
            f"new one, `piriod-adapter --stack {stack.name} sources secret retire {args.name}`\n"
        )
    if given is None:
        err.write("The new secret, shown once; give it to the meter:\n")
        out.write(f"{made}\n")
    return EXIT_OK


# --- shell completion ----------------------------------------------------------------------------


def _completion_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")


def cmd_completion(ctx: Context) -> int:
    from piriod_operator.completion import script

    ctx.out.write(script(build_parser(), ctx.args.shell))
    return EXIT_OK


# --- the command table: one entry per command --------------------------------------------------
# A new command is a function that adds its arguments, a `cmd_` function that runs it with a
# Context (ctx.runtime, ctx.stack, ctx.client(...), ctx.out), and one entry below; --stack,
# --region, help and completion come with the entry. A group of commands (`sources ...`)
# gets its help line in GROUPS.

CORRECTION_HELP = (
    "A correction, applied as POST /v1/corrections applies a sender's: accepted on the key "
    "(its next revision), then applied to the record wherever it is (posted: its usage deleted, "
    "or deleted and posted again with the new quantity; waiting in a queue: its next attempt "
    "applies it; an event: its window's total, or the next FlushFunction run restates its "
    "flushed window). Prints the result a sender would get: applied, pending, duplicate (this "
    "--correction-id was accepted before; nothing changed), not_found or rejected, with the "
    "key's revision and the new usage's id. Exit 0 applied, pending or duplicate; 1 not_found "
    "(never seen, forgotten, or cancelled); 2 bad input (nothing changed); 5 Piriod refused "
    "the amended record (it waits in DeadLetterQueue); 6 not applied, a store being down: run "
    "again with the same --correction-id (applied once)."
)

GROUPS: dict[tuple[str, ...], str] = {
    ("sources",): "third-party meter profiles: validate, try, push, and their secrets",
}

COMMANDS: list[Command] = [
    Command(("list",), "list what waits in the queues, as a table", _list_arguments, cmd_list),
    Command(
        ("show",),
        "a record's key (its corrections, what Piriod holds), or one queued message in full",
        _show_arguments,
        cmd_show,
    ),
    Command(
        ("cancel",),
        "take back a record or event a meter sent: Piriod no longer holds it",
        _correction_arguments(amend=False),
        cmd_cancel,
        description=CORRECTION_HELP,
    ),
    Command(
        ("amend",),
        "change the quantity of a record or event a meter sent",
        _correction_arguments(amend=True),
        cmd_amend,
        description=CORRECTION_HELP,
    ),
    Command(
        ("replay",),
        "replay DeadLetterQueue messages (each one's new message id and line are printed)",
        _replay_arguments,
        cmd_replay,
    ),
    Command(
        ("purge",), "delete every message in a queue (asks first)", _purge_arguments, cmd_purge
    ),
    Command(
        ("reconcile",),
        "compare what the adapter posted for a line with Piriod's usages",
        _reconcile_arguments,
        cmd_reconcile,
    ),
    Command(
        ("status",),
        "queue depths, oldest records, dead letters, last hour, aggregation windows",
        _status_arguments,
        cmd_status,
    ),
    Command(
        ("windows",),
        "aggregation windows: source, line, window start, generation, state, total, events",
        _windows_arguments,
        cmd_windows,
    ),
    Command(
        ("init",),
        "create or update the stack's two secrets (and name them in a samconfig environment)",
        _init_arguments,
        cmd_init,
        description='Creates <stack>/piriod-token ({"api_token": ...}, asked for without '
        "echo) and <stack>/webhook-signing-secrets (a new whsec_ secret, shown once). "
        "Re-runnable: the signing secrets are kept, the token replaced when given. "
        "With --config-env, writes stack_name, region and the parameters into samconfig.toml, "
        "and SourcesConfig=ssm:/<stack>/sources (where `sources push` writes the meter "
        "profiles) unless that environment already names a SourcesConfig.",
    ),
    Command(
        ("signing-secret",),
        "rotate the webhook signing secret: add a new one, then retire the old",
        _signing_secret_arguments,
        cmd_signing_secret,
    ),
    Command(
        ("send",),
        "send one signed test delivery and show its outcome",
        _send_arguments,
        cmd_send,
        description="Native route: --line (or --file), signed with Standard Webhooks. "
        "A source: --source NAME --payload FILE, signed with the profile's own scheme "
        "(standard-webhooks, stripe or hmac-sha256-hex). A flag beats the environment: the "
        "URL is --url, else the WebhookUrl of the stack --stack names, else "
        "$PIRIOD_WEBHOOK_URL (`piriod-local serve --print-env` exports it); the secret is "
        "--secret-id, else the stack's (a source: its profile's secret_id), else "
        "$PIRIOD_SIGNING_SECRET. Where it posts, and what came from where, is printed on "
        "stderr. Exit 0 when answered 202 with every record posted, duplicate or aggregated; "
        "1 otherwise (--allow queued, --allow rejected: exit 0 for those too); 8 when nothing "
        "answers at the URL.",
    ),
    Command(
        ("sources", "validate"),
        "check a profile document offline, every source (no AWS)",
        _validate_arguments,
        cmd_sources_validate,
        description="Checks the schema, compiles every JMESPath, and checks time formats and "
        "factors. Every problem names its source and field; exit 1 when any source is "
        "broken. Nothing is read from or sent to AWS.",
    ),
    Command(
        ("sources", "try"),
        "dry run: what each event of a payload becomes (nothing is posted, no AWS)",
        _try_arguments,
        cmd_sources_try,
        description="For each record: its line, instant, quantity after the factor and key, "
        "or why it would be rejected or refused (422, naming the field); and the records "
        "the profile's records filter leaves out. The signature is not checked. Exit 1 "
        "when the webhook would not answer 202.",
    ),
    Command(
        ("sources", "push"),
        "validate a profile document, then write it to the stack's SourcesConfig parameter",
        _push_arguments,
        cmd_sources_push,
    ),
    Command(
        ("sources", "secret"),
        "a source's signing secret <stack>/sources/<NAME>: add (make or rotate), retire, count",
        _secret_arguments,
        cmd_sources_secret,
    ),
    Command(
        ("completion",),
        'print a shell completion script: eval "$(piriod-adapter completion bash)"',
        _completion_arguments,
        cmd_completion,
    ),
]
