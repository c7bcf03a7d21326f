"""`piriod-local serve`: the adapter kept running on this machine, no AWS account, no Docker.

moto (server mode) stands in for AWS, provisioned as `piriod-local demo` provisions it; the
Piriod stand-in takes the usages; the real webhook handler is served on 127.0.0.1:<port>;
ReplayQueue is polled as Lambda's event source mapping would, so a record queued during a
Piriod fault is posted once Piriod answers again. Each delivery's outcome is printed on one
line. Ctrl-C (or SIGTERM) stops everything, the stand-ins' processes too.

`--print-env` asks the serve running on --port for the exports `piriod-adapter` needs in
another shell (`eval "$(piriod-local serve --print-env)"`); nothing is guessed. `--unset`
undoes them (`eval "$(piriod-local serve --unset)"`): each variable is given back the value
it had before, or unset, so that `sam deploy` and `piriod-adapter` talk to AWS again.

The serve is also a stack: `piriod-adapter --stack piriod-local ...` (sources secret add,
sources push, send, status, list, replay) finds the stand-ins through it, as it finds a
deployed adapter through its CloudFormation stack.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import json
import logging
import os
import re
import secrets
import shlex
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import urllib3
from botocore.exceptions import ClientError

from piriod_devkit.aws import (
    LocalResources,
    MotoServer,
    client,
    function_environment,
    provision,
    register_stack,
)
from piriod_devkit.events import LOCAL_SIGNING_SECRET, LambdaContext
from piriod_devkit.local_api import LocalApiServer
from piriod_devkit.sources import (
    LOCAL_SOURCE_SECRETS,
    examples_path,
    provision_sources,
    put_sources,
)
from piriod_devkit.standin_process import StandinProcess

DEFAULT_PORT = 3000
ENV_ROUTE = "/_local/env"  # GET on the served port: the exports, for --print-env
PREFIX = "piriod-local"  # the names of its resources, and its stack's
BEFORE = "PIRIOD_LOCAL_BEFORE"  # what --print-env found set, for --unset to give back
SOURCES_PARAMETER = f"/{PREFIX}/sources"
WORKSPACE = "acc_local"
TOKEN = "local-serve-token"  # noqa: S105 (stand-in credential)
UNMETERED_LINE = 999  # the stand-in answers 400 for it, like Piriod for an unknown line
REPLAY_EVERY_SECONDS = 1.0
FLUSH_EVERY_SECONDS = 60.0
SOURCES_WATCH_SECONDS = 1.0
FLUSH_MODULE = "piriod_adapter.handlers.flush"
JOB_STOP_SECONDS = 30.0  # how long a job's round in progress may take to finish at Ctrl-C
# Locally a queued record is tried again within seconds (the functions' defaults are 60 s).
LOCAL_SETTINGS = {
    "SETTLE_AFTER_SECONDS": "2",
    "REPLAY_BACKOFF_SECONDS": "2",
    "SOURCES_CACHE_SECONDS": "1",  # an edit to --sources FILE is read within a second
    "AWS_CLIENT_READ_TIMEOUT": "10",  # moto on a busy laptop is slower than AWS
}
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help="serve the webhook on 127.0.0.1:PORT (default: %(default)s)",
    )
    parser.add_argument(
        "--sources",
        metavar="FILE",
        type=Path,
        help="meter profiles (SOURCES_CONFIG=file:<its absolute path>; edits apply within "
        "a second); a missing signing secret is made and printed once "
        "(default: examples/sources.json, with its local secrets)",
    )
    parser.add_argument(
        "--print-env",
        action="store_true",
        help="print the `export NAME=value` lines for piriod-adapter, read from the serve "
        "running on --port, and exit",
    )
    parser.add_argument(
        "--unset",
        action="store_true",
        help="print the lines that undo --print-env's exports (each variable back to its "
        'value before, or unset): `eval "$(piriod-local serve --unset)"`, and exit',
    )
    parser.add_argument(
        "--env-file",
        metavar="PATH",
        type=Path,
        help="when serving: also write the export lines to PATH, to `source` in another "
        "shell; with --print-env: write them there instead of printing them",
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 0 (any free port) to 65535, not {port}")
    return port


def run(args: argparse.Namespace) -> int:
    if args.unset:
        sys.stdout.write(unset_lines(dict(os.environ)))
        return 0
    if args.print_env:
        return print_env(args.port, args.env_file)
    return Serve(args.port, args.sources, args.env_file, sys.stdout).run()


# --- the exports, for another shell -------------------------------------------------------------


def export_lines(env: dict[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(env.items()))


def print_env(port: int, env_file: Path | None) -> int:
    """Read the exports from the serve on `port` and print them (or write them to a file)."""
    url = f"http://127.0.0.1:{port}{ENV_ROUTE}"
    try:
        response = urllib3.PoolManager().request(
            "GET", url, timeout=urllib3.Timeout(connect=2, read=10), retries=False
        )
        env = json.loads(response.data) if response.status == 200 else None
    except (urllib3.exceptions.HTTPError, ValueError):
        env = None
    valid = isinstance(env, dict) and all(
        isinstance(k, str) and ENV_NAME.fullmatch(k) and isinstance(v, str) for k, v in env.items()
    )
    if not valid or not isinstance(env, dict):
        sys.stderr.write(
            f"piriod-local serve --print-env: no `piriod-local serve` answers on 127.0.0.1:{port}"
            f"; start it first (`piriod-local serve --port {port}`) and keep it running\n"
        )
        return 1
    text = export_lines(env) + before_line(env, dict(os.environ))
    if env_file is not None:
        env_file.write_text(text)
        sys.stderr.write(f"wrote {len(env)} exports to {env_file}; `source {env_file}`\n")
    else:
        sys.stdout.write(text)
    sys.stderr.write(
        "AWS_ENDPOINT_URL and AWS credentials now aim at the local stand-ins (piriod-adapter, "
        'sam, aws); `eval "$(piriod-local serve --unset)"` undoes these exports\n'
    )
    return 0


def before_line(env: dict[str, str], current: dict[str, str]) -> str:
    """`export PIRIOD_LOCAL_BEFORE=...`: the value each of `env`'s variables has now (null:
    unset), for --unset to give back. Kept as it is when the shell has it already (a second
    --print-env must not take the local values for the user's own)."""
    if BEFORE in current:
        return ""
    before = {name: current.get(name) for name in sorted(env)}
    return f"export {BEFORE}={shlex.quote(json.dumps(before))}\n"


def unset_lines(current: dict[str, str]) -> str:
    """The lines that undo --print-env in a shell whose environment is `current`: each
    variable it sets back to the value PIRIOD_LOCAL_BEFORE recorded, or unset."""
    try:
        before = json.loads(current.get(BEFORE, "{}"))
    except ValueError:
        before = {}
    if not isinstance(before, dict):
        before = {}
    names = set(exported_names()) | {n for n in before if isinstance(n, str)}
    lines = []
    for name in sorted(n for n in names if ENV_NAME.fullmatch(n)):
        value = before.get(name)
        if isinstance(value, str):
            lines.append(f"export {name}={shlex.quote(value)}\n")
        else:
            lines.append(f"unset {name}\n")
    return "".join(lines) + f"unset {BEFORE}\n"


def serve_environment(
    resources: LocalResources, piriod_url: str, sources_config: str
) -> dict[str, str]:
    """The functions' environment under the serve: the stand-ins, the local settings."""
    return (
        function_environment(
            resources,
            piriod_url=piriod_url,
            workspace=WORKSPACE,
            SOURCES_CONFIG=sources_config,
            POWERTOOLS_LOG_LEVEL="INFO",  # shown: warnings, errors, replays (LogLines)
            POWERTOOLS_METRICS_DISABLED="true",
        )
        | LOCAL_SETTINGS
    )


def exported_names() -> list[str]:
    """The names --print-env exports (whatever the serve's resources are)."""
    resources = LocalResources("", "", "", "", "", "")
    return sorted(operator_environment(serve_environment(resources, "", ""), ""))


def operator_environment(function_env: dict[str, str], webhook_url: str) -> dict[str, str]:
    """What `piriod-adapter` needs without a stack: the functions' own settings (AWS endpoint,
    fake credentials, region, resources), the local signing secret and the webhook's URL."""
    env = {k: v for k, v in function_env.items() if not k.startswith("POWERTOOLS_")}
    env["PIRIOD_SIGNING_SECRET"] = LOCAL_SIGNING_SECRET
    env["PIRIOD_WEBHOOK_URL"] = f"{webhook_url}/v1/usages"
    return env


# --- meter profiles -----------------------------------------------------------------------------


def generated_secret(scheme: Any) -> str:
    """A new local signing secret in the form the profile's scheme reads."""
    if scheme == "standard-webhooks":
        return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    if scheme == "stripe":
        return "whsec_" + secrets.token_hex(24)
    return secrets.token_hex(32)


@dataclass(frozen=True)
class MadeSecret:
    source: str
    secret_id: str
    value: str


def ensure_source_secrets(endpoint: str, document: Any) -> tuple[list[MadeSecret], list[str]]:
    """For each source whose signature.secret_id is not in the local Secrets Manager, create
    it with a generated secret. Returns what was made, and notes on what could not be."""
    made: list[MadeSecret] = []
    notes: list[str] = []
    sources = document.get("sources") if isinstance(document, dict) else None
    if not isinstance(sources, dict):
        return made, notes
    manager = client("secretsmanager", endpoint)
    for name, profile in sources.items():
        signature = profile.get("signature") if isinstance(profile, dict) else None
        secret_id = signature.get("secret_id") if isinstance(signature, dict) else None
        if not isinstance(secret_id, str) or not secret_id:
            continue
        try:
            manager.describe_secret(SecretId=secret_id)
            continue
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceNotFoundException":
                raise
        if secret_id.startswith("arn:"):
            notes.append(f"source {name}: secret {secret_id} is an ARN; give a name to have one")
            continue
        value = generated_secret(signature.get("scheme") if isinstance(signature, dict) else None)
        manager.create_secret(Name=secret_id, SecretString=json.dumps({"signing_secrets": [value]}))
        made.append(MadeSecret(str(name), secret_id, value))
    return made, notes


def profile_problems(raw: bytes) -> list[str]:
    """What the adapter will say of the document: each source that does not validate."""
    from piriod_adapter.sources import SourcesUnavailable, parse_document

    try:
        return parse_document(raw).problems
    except SourcesUnavailable as exc:
        return [str(exc)]


# --- periodic jobs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One of the functions a schedule or an event source mapping runs. `run` returns a line
    to print, or None when there is nothing to tell."""

    name: str
    every_seconds: float
    run: Callable[[], str | None]


def every(job: Job, stop: threading.Event, say: Callable[[str], None]) -> threading.Thread:
    """Run `job` every `job.every_seconds` (the first time at once) until `stop` is set, in a
    thread of its own; a round that raises is told in one line and the next one runs."""

    def loop() -> None:
        while not stop.is_set():
            try:
                line = job.run()
            except Exception as exc:  # a job's bad round must not end the serve
                line = f"{job.name}: failed ({type(exc).__name__}: {exc})"
            if line:
                say(line)
            stop.wait(job.every_seconds)

    thread = threading.Thread(target=loop, name=f"job-{job.name}", daemon=True)
    thread.start()
    return thread


def flush_job() -> Job | None:
    """FlushFunction's schedule (SPEC section 9), once its handler exists. It is imported at
    its first round, so a handler that does not import yet is told of every round."""
    if importlib.util.find_spec(FLUSH_MODULE) is None:
        return None

    def flush() -> str | None:
        handler = importlib.import_module(FLUSH_MODULE).lambda_handler
        result = handler({}, LambdaContext(FLUSH_EVERY_SECONDS, "FlushFunction"))
        return f"flush    {summary(result)}" if did_something(result) else None

    return Job("flush", FLUSH_EVERY_SECONDS, flush)


def did_something(result: Any) -> bool:
    """A flush round worth a line: one with a count that is not zero (a lag is not a count)."""
    if not isinstance(result, dict):
        return bool(result)
    return any(
        isinstance(v, int) and not isinstance(v, bool) and v and not k.endswith("_seconds")
        for k, v in result.items()
    )


def summary(result: Any) -> str:
    if isinstance(result, dict):
        return " ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, dict | list))
    return str(result)


# --- what is printed ----------------------------------------------------------------------------


class Printer:
    """One line at a time from any thread, flushed (the output may be a pipe)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._lock = threading.Lock()

    def __call__(self, line: str = "", stamp: bool = False) -> None:
        if stamp:
            line = f"{time.strftime('%H:%M:%S')}  {line}"
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()


def delivery_line(event: dict[str, Any], response: dict[str, Any]) -> str:
    """`POST /v1/usages  202  posted=1 queued=1`: the route, the status, the counts (or why
    nothing was taken)."""
    status = int(response.get("statusCode", 0))
    try:
        body = json.loads(response.get("body") or "{}")
    except ValueError:
        body = {}
    line = f"POST {event.get('rawPath', '?')}  {status}"
    if not isinstance(body, dict):
        return line
    results = body.get("results")
    if isinstance(results, list):
        counts = Counter(str(r.get("status")) for r in results if isinstance(r, dict))
        shown = " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "no records"
        line += f"  {shown}"
        for result in results:
            if isinstance(result, dict) and result.get("status") == "rejected":
                line += f"\n          record {result.get('index')} rejected: "
                line += json.dumps(result.get("errors"))
        return line
    if body.get("message"):
        line += f"  {body['message']}"
    for error in (body.get("errors") or [])[:3]:
        if isinstance(error, dict):
            index = error.get("index")
            where = "body" if index is None else f"record {index}"  # the delivery as a whole
            line += f"\n          {where} · {error.get('field')}: {error.get('message')}"
    return line


# What every one of the functions' JSON log lines carries: not shown locally.
_LOG_CONTEXT = {
    "level",
    "location",
    "message",
    "timestamp",
    "service",
    "cold_start",
    "function_name",
    "function_memory_size",
    "function_arn",
    "function_request_id",
    "function_version",
    "xray_trace_id",
    "sampling_rate",
}


def log_entry(line: str) -> dict[str, Any]:
    """One of the functions' JSON log lines, read (a line that is not JSON: as its message)."""
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    return entry if isinstance(entry, dict) else {"level": "WARNING", "message": line}


def log_details(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in _LOG_CONTEXT and v not in (None, "")}


def plain_log_line(entry: dict[str, Any]) -> str:
    """A log entry as `warning: <message> key=value ...`: why a delivery was refused, a
    profile that does not validate."""
    details = " ".join(f"{k}={v}" for k, v in log_details(entry).items())
    level = str(entry.get("level", "log")).lower()
    return f"{level}: {entry.get('message', '')} {details}".rstrip()


SHOWN_LEVELS = {"WARNING", "ERROR", "CRITICAL"}
REPLAYED = "replayed record"  # ReplayFunction's one INFO line per record, with its status


class LogLines:
    """Where the functions' log lines go. Warnings and errors are shown in plain words: a
    request's under its delivery line (held until its answer is printed), any other
    thread's at once. ReplayFunction's per-record lines are kept for the replay's line;
    other INFO lines are dropped."""

    def __init__(self, say: Printer) -> None:
        self.say = say
        self._held = threading.local()

    def write(self, text: str) -> int:
        request = "process_request" in threading.current_thread().name
        for line in text.splitlines():
            if not line.strip():
                continue
            entry = log_entry(line)
            level = str(entry.get("level", "")).upper()
            if entry.get("message") == REPLAYED or (request and level in SHOWN_LEVELS):
                self._entries().append(entry)
            elif level in SHOWN_LEVELS:
                self.say(f"          {plain_log_line(entry)}")
        return len(text)

    def flush(self) -> None:
        pass

    def _entries(self) -> list[dict[str, Any]]:
        if not hasattr(self._held, "entries"):
            self._held.entries = []
        entries: list[dict[str, Any]] = self._held.entries
        return entries

    def release(self) -> list[dict[str, Any]]:
        """The entries held for this thread, forgotten here."""
        entries = self._entries()
        self._held.entries = []
        return entries


def plain_logs(lines: LogLines) -> None:
    from piriod_adapter.observability import logger

    logger.setLevel(logging.INFO)  # for ReplayFunction's "replayed record" lines
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(lines)


def replay_line(entries: list[dict[str, Any]], received: int, dead_letters: str) -> str:
    """`replay   2 queued message(s): posted=1 still-queued=1 · DeadLetterQueue holds 0`."""
    counts = Counter(
        "still-queued" if e.get("status") == "queued" else str(e.get("status"))
        for e in entries
        if e.get("message") == REPLAYED
    )
    unreadable = received - sum(counts.values())
    if unreadable > 0:
        counts["unreadable"] += unreadable
    shown = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    return f"replay   {received} queued message(s): {shown} · DeadLetterQueue holds {dead_letters}"


# --- serve --------------------------------------------------------------------------------------


class Serve:
    def __init__(self, port: int, sources: Path | None, env_file: Path | None, out: TextIO):
        self.port, self.sources, self.env_file = port, sources, env_file
        self.say = Printer(out)
        self.logs = LogLines(self.say)
        self.stop = threading.Event()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()

    def run(self) -> int:
        # Ctrl-C reaches this process only (the stand-ins run in sessions of their own): it
        # asks for a stop, and every process started here is stopped below.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: terminal closed
            signal.signal(signum, self._on_signal)
        if self.sources is not None and not self.sources.is_file():
            sys.stderr.write(f"piriod-local serve: --sources {self.sources}: no such file\n")
            return 2
        try:
            api = LocalApiServer(port=self.port, on_answer=self._answered)
        except OSError as exc:
            sys.stderr.write(
                f"piriod-local serve: cannot listen on 127.0.0.1:{self.port} ({exc.strerror}); "
                "another serve may be running there, or give --port\n"
            )
            return 1
        with contextlib.ExitStack() as stack:
            stack.callback(api.server_close)
            for _ in self._start(api, stack):
                if self.stop.is_set():  # stopped while starting: unwind what is up
                    break
            else:
                while not self.stop.wait(0.5):
                    pass
            self.say("\nStopping…")
        self.say("Stopped.")
        return 0

    def _start(self, api: LocalApiServer, stack: contextlib.ExitStack) -> Iterator[None]:
        """Start everything, one step at a time (a stop asked between steps is honoured)."""
        self.say("Starting the AWS stand-in (moto) and the Piriod stand-in…")
        moto = stack.enter_context(MotoServer())
        yield
        resources = provision(
            moto.url, token=TOKEN, signing_secrets=[LOCAL_SIGNING_SECRET], prefix=PREFIX
        )
        made: list[MadeSecret] = []
        notes: list[str] = []
        if self.sources is None:
            sources_config = provision_sources(moto.url, SOURCES_PARAMETER)
            raw = examples_path().read_bytes()
        else:
            path = self.sources.resolve()
            sources_config = f"file:{path}"
            raw = path.read_bytes()
            try:
                document = json.loads(raw)
            except ValueError:
                document = None
            made, notes = ensure_source_secrets(moto.url, document)
        yield
        piriod = stack.enter_context(StandinProcess(token=TOKEN, workspace=WORKSPACE))
        piriod.set_unmetered_lines(UNMETERED_LINE)
        yield
        env = serve_environment(resources, piriod.url, sources_config)
        os.environ.update(env)
        from piriod_adapter.runtime import get_runtime, reset_runtime

        plain_logs(self.logs)
        reset_runtime()
        get_runtime().prepare()  # once, before the threads that share it
        shell_env = operator_environment(env, api.url)
        api.local_routes[ENV_ROUTE] = lambda: shell_env
        api.start()
        stack.callback(api.stop)
        self._register(moto.url, resources, piriod.url, api.url, sources_config)
        if self.env_file is not None:
            self.env_file.write_text(export_lines(shell_env))
        self._banner(api.url, moto.url, piriod.url, raw, made, notes)
        threads = [
            every(job, self.stop, lambda line: self.say(line, stamp=True))
            for job in self.periodic_jobs(resources.replay_queue_url, moto.url, raw)
        ]
        stack.callback(self._join, threads)
        yield

    def _register(
        self,
        aws_url: str,
        resources: LocalResources,
        piriod_url: str,
        url: str,
        sources_config: str,
    ) -> None:
        """The stack `piriod-adapter --stack piriod-local` reads: the parameters and outputs
        a deployed adapter's stack has, naming the stand-ins."""
        manager = client("secretsmanager", aws_url)
        readable = []
        if self.sources is None:  # the examples' secrets (not named piriod-local/sources/...)
            readable = [manager.describe_secret(SecretId=s)["ARN"] for s in LOCAL_SOURCE_SECRETS]
        register_stack(
            aws_url,
            PREFIX,
            {
                "PiriodApiUrl": piriod_url,
                "PiriodWorkspaceId": WORKSPACE,
                "PiriodTestMode": "false",
                "PiriodTokenSecretArn": resources.token_secret_arn,
                "WebhookSecretArn": resources.webhook_secret_arn,
                "SourcesConfig": sources_config,
                "SourceSecretArns": ",".join(readable),
            },
            {
                "WebhookUrl": f"{url}/v1/usages",
                "SourcesUrlTemplate": f"{url}/v1/sources/{{source}}/usages",
                "ReplayQueueUrl": resources.replay_queue_url,
                "DeadLetterQueueUrl": resources.dead_letter_queue_url,
                "IdempotencyTableName": resources.table,
                "WebhookSecretArn": resources.webhook_secret_arn,
            },
        )

    def periodic_jobs(self, replay_queue_url: str, aws_url: str, sources: bytes) -> list[Job]:
        """What runs every few seconds: ReplayQueue's event source mapping, FlushFunction's
        schedule once it exists, and a watch of the profiles it loaded (--sources FILE, or
        examples/sources.json into its SSM parameter). A new job is one more line."""
        jobs = [Job("replay", REPLAY_EVERY_SECONDS, self._replayer(replay_queue_url))]
        flush = flush_job()
        if flush is not None:
            jobs.append(flush)
        if self.sources is not None:
            watch = self._sources_watcher(self.sources.resolve(), aws_url, sources)
        else:
            watch = self._sources_watcher(examples_path(), aws_url, sources, SOURCES_PARAMETER)
        jobs.append(Job("sources", SOURCES_WATCH_SECONDS, watch))
        return jobs

    def _sources_watcher(
        self, path: Path, aws_url: str, seen: bytes, parameter: str | None = None
    ) -> Callable[[], str | None]:
        """An edit to the profile document: its problems, and a secret for each new source;
        with `parameter`, the document is put there again (the webhook reads it from SSM)."""
        last = [seen]

        def watch() -> str | None:
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raw = f"cannot read: {exc.strerror}".encode()
            if raw == last[0]:
                return None
            last[0] = raw
            try:
                document = json.loads(raw)
            except ValueError:
                document = None
            made, notes = ensure_source_secrets(aws_url, document)
            lines = [f"sources  {path} changed"]
            if parameter is not None and document is not None:
                put_sources(aws_url, parameter, raw.decode("utf-8", "replace"))
                lines[0] += f": put into SSM parameter {parameter}"
            lines += [
                f"          new local signing secret for source {m.source} ({m.secret_id}), "
                f"shown once: {m.value}"
                for m in made
            ]
            lines += [f"          note: {note}" for note in notes]
            lines += [f"          not valid: {problem}" for problem in profile_problems(raw)]
            return "\n".join(lines)

        return watch

    def _join(self, threads: list[threading.Thread]) -> None:
        self.stop.set()
        end = time.monotonic() + JOB_STOP_SECONDS
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))

    def _replayer(self, queue_url: str) -> Callable[[], str | None]:
        from piriod_adapter.handlers.replay import lambda_handler
        from piriod_devkit.poller import poll_once

        sqs = client("sqs", os.environ["AWS_ENDPOINT_URL"])
        dead_letters = os.environ["DEAD_LETTER_QUEUE_URL"]

        def replay() -> str | None:
            self.logs.release()
            report = poll_once(sqs, queue_url, lambda_handler)
            if not report.received:
                return None
            waiting = sqs.get_queue_attributes(
                QueueUrl=dead_letters, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]["ApproximateNumberOfMessages"]
            return replay_line(self.logs.release(), report.received, waiting)

        return replay

    def _answered(self, event: dict[str, Any], response: dict[str, Any]) -> None:
        line = delivery_line(event, response)
        for entry in self.logs.release():
            if not any(str(v) in line for v in log_details(entry).values()):  # not said yet
                line += f"\n          {plain_log_line(entry)}"
        self.say(line, stamp=True)

    def _banner(
        self,
        url: str,
        aws_url: str,
        piriod_url: str,
        raw: bytes,
        made: list[MadeSecret],
        notes: list[str],
    ) -> None:
        say = self.say
        served = int(url.rsplit(":", 1)[1])  # the port itself when --port 0 chose one
        port = "" if served == DEFAULT_PORT else f" --port {served}"
        try:
            names = ", ".join(json.loads(raw).get("sources", {})) or "none"
        except (ValueError, AttributeError):
            names = "none"
        where = self.sources.resolve() if self.sources else examples_path()
        say()
        say("The Piriod usage adapter runs on this machine (local stand-ins, no AWS account).")
        say()
        say(f"  Webhook          POST {url}/v1/usages")
        say("                   (Standard Webhooks signatures, with the signing secret below)")
        say(f"  Third-party      POST {url}/v1/sources/{{source}}/usages")
        say(f"                   sources: {names} (from {where}; edits apply within a second)")
        say(f"  Signing secret   {LOCAL_SIGNING_SECRET}   (local only)")
        say(f"  AWS stand-in     {aws_url}   (moto: Secrets Manager, SQS, DynamoDB, SSM,")
        say(f"                   CloudFormation: the stack {PREFIX})")
        say(f"  Piriod stand-in  {piriod_url}   (workspace {WORKSPACE})")
        say(f"                   every line is metered but {UNMETERED_LINE}, which Piriod rejects")
        for secret in made:
            say()
            say(f"  New local signing secret for source {secret.source} ({secret.secret_id}),")
            say(f"  shown once: {secret.value}")
        for note in notes:
            say(f"  note: {note}")
        for problem in profile_problems(raw):
            say(f"  not valid (that source answers 503 until fixed): {problem}")
        say()
        say("From another shell (it then talks to these stand-ins, not to AWS):")
        say(f'  eval "$(piriod-local serve{port} --print-env)"')
        say("  piriod-adapter send --line 101")
        if self.sources is not None:
            say(
                "  piriod-adapter send --source NAME "
                f"--config {shlex.quote(str(self.sources))} --payload PAYLOAD.json"
            )
        say(f"  piriod-adapter --stack {PREFIX} status      (this serve is the stack {PREFIX})")
        if self.env_file is not None:
            say(f"  (or `source {self.env_file}`, written now)")
        say('  eval "$(piriod-local serve --unset)"         (back to AWS, before `sam deploy`)')
        say()
        say("Make Piriod fail, to see a record queued and then replayed:")
        say(
            f"  curl -X POST {piriod_url}/_standin/faults "
            """-d '{"kind": "status", "status": 500}'"""
        )
        say(f"  curl -X DELETE {piriod_url}/_standin/faults")
        say(
            f"ReplayQueue is polled every {REPLAY_EVERY_SECONDS:g} s "
            f"(back-off {LOCAL_SETTINGS['REPLAY_BACKOFF_SECONDS']} s, doubling each attempt)."
        )
        say()
        say("Ready; Ctrl-C stops everything. Deliveries as they arrive:")
