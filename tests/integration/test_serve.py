"""`piriod-local serve`, run as a user runs it: its own process (group), the exports read
with `--print-env`, deliveries signed and sent over HTTP, `piriod-adapter` pointed at it from
"another shell", and Ctrl-C stopping every process it started."""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import urllib3

from piriod_devkit.aws import free_port
from piriod_devkit.events import event_body, http_event, load_event, sign_event
from piriod_devkit.process import stop_group
from piriod_devkit.sources import LOCAL_SOURCE_SECRETS, sign_source

ROOT = Path(__file__).resolve().parents[2]
PIRIOD_LOCAL = ROOT / ".venv" / "bin" / "piriod-local"
PIRIOD_ADAPTER = ROOT / ".venv" / "bin" / "piriod-adapter"
# Failure timeouts only, never a bound on speed: the machine is shared and may be slow.
STARTUP_SECONDS = 240.0
STOP_SECONDS = 120.0
REPLAY_SECONDS = 180.0


class Served:
    """One `piriod-local serve` process: its output line by line, its exports, its children."""

    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process, self.port = process, port
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=10, read=120), retries=False
        )

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)

    def wait_for(self, text: str, timeout: float) -> None:
        """Until a line of the output holds `text` (fails after `timeout`, or if it exits)."""
        end = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None and self._new.empty():
                pytest.fail(f"serve exited {self.process.returncode}: " + "\n".join(self.lines))
            if time.monotonic() > end:
                pytest.fail(f"no {text!r} in serve's output: " + "\n".join(self.lines))
            with suppress(queue.Empty):
                self._new.get(timeout=0.5)

    def print_env(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PIRIOD_LOCAL), "serve", "--port", str(self.port), "--print-env", *extra],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def env(self) -> dict[str, str]:
        """What `eval "$(piriod-local serve --print-env)"` would export, on a clean base."""
        done = self.print_env()
        assert done.returncode == 0, done.stderr
        return clean_environment() | exports(done.stdout)

    def descendants(self) -> list[int]:
        return descendants(self.process.pid)

    def ledger(self, env: dict[str, str]) -> list[dict[str, Any]]:
        answer = self.http.request("GET", env["PIRIOD_API_URL"] + "/_standin/ledger")
        usages: list[dict[str, Any]] = json.loads(answer.data)["usages"]
        return usages

    def post(self, url: str, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        headers = {k: v for k, v in event["headers"].items() if k != "content-length"}
        answer = self.http.request("POST", url, body=event_body(event), headers=headers)
        body: dict[str, Any] = json.loads(answer.data)
        return answer.status, body

    def interrupt(self) -> int:
        """Ctrl-C, as a terminal sends it: SIGINT to the whole foreground process group."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=STOP_SECONDS)


def clean_environment() -> dict[str, str]:
    """This process's environment without what would aim a command elsewhere."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "PIRIOD_", "POWERTOOLS_")) and k != "SOURCES_CONFIG"
    }


def exports(text: str) -> dict[str, str]:
    """The variables a shell's `eval` of `export NAME=value` lines sets."""
    env = {}
    for line in text.splitlines():
        words = shlex.split(line)
        assert words[0] == "export" and len(words) == 2, line
        name, _, value = words[1].partition("=")
        env[name] = value
    return env


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (read from /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def listening(url: str) -> bool:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=5):
            return True
    except OSError:
        return False


@contextmanager
def serve(*options: str, cwd: Path | None = None) -> Iterator[Served]:
    port = free_port()
    process = subprocess.Popen(
        [str(PIRIOD_LOCAL), "serve", "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_environment(),
        cwd=cwd,
        start_new_session=True,  # a process group of its own, as a shell's job
    )
    served = Served(process, port)
    try:
        served.wait_for("Ready;", STARTUP_SECONDS)
        yield served
    finally:
        stop_group(process)  # whatever the test did: nothing of it is left running


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serve() as running:
        yield running


def native_event(env: dict[str, str], line: int, quantity: str) -> dict[str, Any]:
    body = (  # the quantity as a JSON number, its digits as written
        f'{{"subscription_line": {line}, "date_time": "2026-11-01T10:00:00Z", '
        f'"quantity": {quantity}}}'
    )
    event = http_event("POST", "/v1/usages", body.encode(), {"content-type": "application/json"})
    return sign_event(event, env["PIRIOD_SIGNING_SECRET"], message_id=f"msg_{uuid.uuid4().hex}")


def adapter_cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PIRIOD_ADAPTER), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


def test_a_signed_delivery_to_the_printed_url_is_posted_and_its_outcome_printed(
    served: Served,
) -> None:
    # given the exports of a running serve
    env = served.env()
    assert env["PIRIOD_WEBHOOK_URL"] == f"http://127.0.0.1:{served.port}/v1/usages"
    # when a delivery signed with the printed secret is sent to the printed URL
    status, body = served.post(env["PIRIOD_WEBHOOK_URL"], native_event(env, 101, "1.25"))
    # then it is posted, the Piriod stand-in holds the usage, and serve printed one line
    assert status == 202 and body["results"][0]["status"] == "posted", body
    usage_id = body["results"][0]["usage_id"]
    [usage] = [u for u in served.ledger(env) if u["id"] == usage_id]
    assert usage["subscription_line"] == 101 and usage["quantity"] == "1.25"
    served.wait_for("POST /v1/usages  202  posted=1", STOP_SECONDS)


def test_the_banner_names_the_routes_the_secret_and_the_exports(served: Served) -> None:
    # given a running serve (started with a --port)
    env = served.env()
    # then its first lines name both routes, the signing secret and the eval line
    text = "\n".join(served.lines)
    assert f"POST http://127.0.0.1:{served.port}/v1/usages" in text
    assert f"POST http://127.0.0.1:{served.port}/v1/sources/{{source}}/usages" in text
    assert env["PIRIOD_SIGNING_SECRET"] in text
    assert f'eval "$(piriod-local serve --port {served.port} --print-env)"' in text
    # and the exports are only `export` lines, aimed at loopback
    assert all(line.startswith("export ") for line in served.print_env().stdout.splitlines())
    assert urlsplit(env["AWS_ENDPOINT_URL"]).hostname == "127.0.0.1"


def test_piriod_adapter_send_and_status_work_with_the_printed_exports(served: Served) -> None:
    # given the exports of a running serve, as another shell would have them
    env = served.env()
    # when the operator sends a test delivery and asks for the status
    sent = adapter_cli(env, "send", "--url", env["PIRIOD_WEBHOOK_URL"], "--line", "102")
    status = adapter_cli(env, "status")
    # then both succeed against the local stand-ins
    assert sent.returncode == 0 and "record 0: posted" in sent.stdout, sent.stdout + sent.stderr
    assert any(u["subscription_line"] == 102 for u in served.ledger(env))
    assert status.returncode == 0, status.stderr
    assert "replay" in status.stdout and "dead-letter" in status.stdout


def test_a_record_queued_during_a_piriod_fault_is_replayed_once_piriod_answers(
    served: Served,
) -> None:
    # given Piriod failing for one line (the stand-in answers 500 for it)
    env = served.env()
    faults = env["PIRIOD_API_URL"] + "/_standin/faults"
    fault = {"kind": "status", "status": 500, "lines": [4242]}
    added = served.http.request("POST", faults, body=json.dumps(fault))
    assert added.status == 201
    try:
        # when a delivery for that line arrives
        status, body = served.post(env["PIRIOD_WEBHOOK_URL"], native_event(env, 4242, "7"))
        # then it is queued, not posted
        assert status == 202 and body["results"][0]["status"] == "queued", body
        assert not [u for u in served.ledger(env) if u["subscription_line"] == 4242]
    finally:
        served.http.request("DELETE", faults)
    # when Piriod answers again, then the replay posts it, once, and says so
    served.wait_for("posted=1 · DeadLetterQueue", REPLAY_SECONDS)
    posted = [u for u in served.ledger(env) if u["subscription_line"] == 4242]
    assert len(posted) == 1 and posted[0]["quantity"] == "7"
    assert any("replay" in line and "queued message(s)" in line for line in served.lines)


def test_ctrl_c_stops_every_process_and_port_and_exits_0(tmp_path: Path) -> None:
    env_file = tmp_path / "local.env"
    # given a running serve that wrote its exports to a file
    with serve("--env-file", str(env_file)) as running:
        env = clean_environment() | exports(env_file.read_text())
        # (the same exports as --print-env's, without what that shell had before them)
        assert env == {k: v for k, v in running.env().items() if k != "PIRIOD_LOCAL_BEFORE"}
        children = running.descendants()
        urls = [env["PIRIOD_WEBHOOK_URL"], env["AWS_ENDPOINT_URL"], env["PIRIOD_API_URL"]]
        assert len(children) >= 2 and all(alive(pid) for pid in children)
        assert all(listening(url) for url in urls)
        # when it gets Ctrl-C
        code = running.interrupt()
        # then it exits 0, and no process it started and no port it served is left
        assert code == 0, "\n".join(running.lines)
        assert [pid for pid in children if alive(pid)] == []
        assert [url for url in urls if listening(url)] == []
        running.wait_for("Stopped.", STOP_SECONDS)


def test_sigterm_to_serve_alone_stops_every_process_and_exits_0() -> None:
    # given a running serve and the processes it started (each in a session of its own)
    with serve() as running:
        env = running.env()
        children = running.descendants()
        assert len(children) >= 2 and all(alive(pid) for pid in children)
        # when SIGTERM is sent to serve's process only (`kill PID`)
        os.kill(running.process.pid, signal.SIGTERM)
        code = running.process.wait(timeout=STOP_SECONDS)
        # then it exits 0 and has stopped its children and ports itself
        assert code == 0, "\n".join(running.lines)
        assert [pid for pid in children if alive(pid)] == []
        assert not listening(env["AWS_ENDPOINT_URL"]) and not listening(env["PIRIOD_API_URL"])


def test_print_env_with_no_serve_on_the_port_fails_and_says_to_start_one() -> None:
    # given nothing listening on a port
    port = free_port()
    # when the exports are asked of it
    done = subprocess.run(
        [str(PIRIOD_LOCAL), "serve", "--port", str(port), "--print-env"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # then nothing is exported, and it says what to do
    assert done.returncode == 1 and done.stdout == ""
    assert f"piriod-local serve --port {port}" in done.stderr


def test_a_second_serve_on_a_port_in_use_is_refused(served: Served) -> None:
    # when another serve is started on the running one's port
    done = subprocess.run(
        [str(PIRIOD_LOCAL), "serve", "--port", str(served.port)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=clean_environment(),
    )
    # then it exits 1 saying why, and the first still answers
    assert done.returncode == 1 and "cannot listen" in done.stderr
    assert listening(served.env()["PIRIOD_WEBHOOK_URL"])


def test_a_sources_file_gets_a_secret_per_source_and_its_signed_delivery_posts(
    tmp_path: Path,
) -> None:
    # given a user's own profile document, its secrets not yet made
    profiles = tmp_path / "sources.json"
    shutil.copy(ROOT / "examples" / "sources.json", profiles)
    document = json.loads(profiles.read_text())
    with serve("--sources", str(profiles)) as running:
        env = running.env()
        # then SOURCES_CONFIG is the file, and each source's new secret was printed once
        assert env["SOURCES_CONFIG"] == f"file:{profiles.resolve()}"
        shown = {}
        for index, line in enumerate(running.lines):
            if line.strip().startswith("New local signing secret for source"):
                name = line.split("source ", 1)[1].split(" ", 1)[0]
                shown[name] = running.lines[index + 1].split("shown once: ", 1)[1]
        assert set(shown) == set(document["sources"])
        # when a delivery is signed with the printed secret, the profile's own way
        event = load_event("source-acme-storage.json")
        profile = document["sources"]["acme-storage"]
        signed = sign_source(event, profile, shown["acme-storage"])
        base = env["PIRIOD_WEBHOOK_URL"].removesuffix("/v1/usages")
        status, body = running.post(base + event["rawPath"], signed)
        # then its records are posted to the profile's line, and serve printed the route
        assert status == 202, body
        assert {r["status"] for r in body["results"]} == {"posted"}, body
        assert [u for u in running.ledger(env) if u["subscription_line"] == 3001]
        running.wait_for("POST /v1/sources/acme-storage/usages  202  posted=2", STOP_SECONDS)


def test_piriod_adapter_send_source_signs_with_the_secret_serve_made(tmp_path: Path) -> None:
    # given a serve of a one-source profile document
    profiles = tmp_path / "sources.json"
    document = json.loads((ROOT / "examples" / "sources.json").read_text())
    profile = document["sources"]["ci-minutes"]
    profile["signature"]["secret_id"] = "my-meters/ci-minutes"
    profiles.write_text(json.dumps({"version": 1, "sources": {"ci-minutes": profile}}))
    payload = tmp_path / "payload.json"
    payload.write_text(load_event("source-ci-minutes.json")["body"])
    with serve("--sources", str(profiles)) as running:
        env = running.env()
        # when the operator sends the meter's payload from another shell
        sent = adapter_cli(
            env,
            "send",
            "--url",
            env["PIRIOD_WEBHOOK_URL"],
            "--source",
            "ci-minutes",
            "--config",
            str(profiles),
            "--payload",
            str(payload),
        )
        # then it was signed with the secret serve made, and posted
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "posted" in sent.stdout
        assert any(u["subscription_line"] in (3101, 3102) for u in running.ledger(env))


def test_a_source_added_to_the_file_while_serving_gets_a_secret_and_posts(
    tmp_path: Path,
) -> None:
    # given a serve of a profile document with one source
    profiles = tmp_path / "sources.json"
    document = json.loads((ROOT / "examples" / "sources.json").read_text())
    first = document["sources"]["acme-storage"]
    profiles.write_text(json.dumps({"version": 1, "sources": {"acme-storage": first}}))
    with serve("--sources", str(profiles)) as running:
        env = running.env()
        # when the user adds a meter of their own to the file
        meter = {**document["sources"]["ci-minutes"]}
        meter["signature"] = {**meter["signature"], "secret_id": "my-meters/builds"}
        sources = {"acme-storage": first, "builds": meter}
        profiles.write_text(json.dumps({"version": 1, "sources": sources}))
        # then serve makes its secret and prints it once
        running.wait_for("new local signing secret for source builds", STOP_SECONDS)
        [line] = [x for x in running.lines if "secret for source builds" in x]
        secret = line.split("shown once: ", 1)[1]
        # and a delivery signed with it is posted on the new route
        event = load_event("source-ci-minutes.json")
        event["rawPath"] = "/v1/sources/builds/usages"
        base = env["PIRIOD_WEBHOOK_URL"].removesuffix("/v1/usages")
        status, body = running.post(base + event["rawPath"], sign_source(event, meter, secret))
        end = time.monotonic() + STOP_SECONDS
        while status == 404 and time.monotonic() < end:  # the edit is read within a second
            time.sleep(0.5)
            status, body = running.post(base + event["rawPath"], sign_source(event, meter, secret))
        assert status == 202 and body["results"], body
        assert {r["status"] for r in body["results"]} == {"posted"}, body


def test_unset_gives_back_what_the_shell_had_and_unsets_the_rest(served: Served) -> None:
    # given a shell with a region and a signing secret of its own
    shell = f"""
export AWS_DEFAULT_REGION=eu-west-1 PIRIOD_SIGNING_SECRET=mine
eval "$({PIRIOD_LOCAL} serve --port {served.port} --print-env)"
echo "during: $AWS_DEFAULT_REGION ${{AWS_ENDPOINT_URL:+local}}"
eval "$({PIRIOD_LOCAL} serve --unset)"
echo "after: $AWS_DEFAULT_REGION $PIRIOD_SIGNING_SECRET ${{AWS_ENDPOINT_URL-unset}}"
echo "left: ${{PIRIOD_WEBHOOK_URL-none}} ${{AWS_ACCESS_KEY_ID-none}} ${{PIRIOD_LOCAL_BEFORE-none}}"
"""
    # when it takes the serve's exports, then undoes them
    done = subprocess.run(
        ["bash", "-euc", shell],
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # then during, AWS is the local stand-in (print-env says how to undo it), and after, the
    # shell's own values are back and the rest unset
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "during: us-east-1 local",
        "after: eu-west-1 mine unset",
        "left: none none none",
    ]
    assert '`eval "$(piriod-local serve --unset)"` undoes these exports' in done.stderr


def test_the_serve_is_the_stack_piriod_local(served: Served) -> None:
    # given the exports of a running serve
    env = served.env()
    # when the operator aims piriod-adapter at the stack piriod-local
    sent = adapter_cli(env, "--stack", "piriod-local", "send", "--line", "103")
    status = adapter_cli(env, "--stack", "piriod-local", "status")
    # then send went to the serve's webhook, signed with its secret, and status read its queues
    assert sent.returncode == 0 and "record 0: posted" in sent.stdout, sent.stdout + sent.stderr
    assert f"POST {env['PIRIOD_WEBHOOK_URL']} (from stack piriod-local;" in sent.stderr
    assert any(u["subscription_line"] == 103 for u in served.ledger(env))
    assert status.returncode == 0, status.stderr
    # and the last hour is said to be unavailable locally, not shown as zeros
    assert "last hour: not available locally" in status.stdout, status.stdout
    assert "received=0" not in status.stdout


def test_a_command_on_a_terminal_says_aws_is_the_local_stand_in(served: Served) -> None:
    import pty

    # given the exports of a running serve
    env = served.env()
    # when status runs with its stderr on a terminal, then on a pipe
    leader, follower = pty.openpty()
    try:
        on_terminal = subprocess.run(
            [str(PIRIOD_ADAPTER), "--stack", "piriod-local", "status"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=180,
            check=False,
        )
        os.close(follower)
        said = b""
        with suppress(OSError):  # EIO once everything written has been read
            while chunk := os.read(leader, 4096):
                said += chunk
    finally:
        os.close(leader)
    on_pipe = adapter_cli(env, "--stack", "piriod-local", "status")
    # then the terminal is told where AWS is and how to go back; a script's stderr is not
    assert on_terminal.returncode == 0
    text = said.decode()
    assert f"AWS here is the local stand-in at {env['AWS_ENDPOINT_URL']}" in text, text
    assert 'eval "$(piriod-local serve --unset)"' in text
    assert on_pipe.returncode == 0 and "local stand-in" not in on_pipe.stderr


def test_a_problem_of_the_whole_body_is_printed_as_the_bodys(served: Served) -> None:
    # given a batch with no records
    env = served.env()
    event = http_event(
        "POST", "/v1/usages", b'{"usages": []}', {"content-type": "application/json"}
    )
    signed = sign_event(event, env["PIRIOD_SIGNING_SECRET"], message_id=f"msg_{uuid.uuid4().hex}")
    # when it is sent
    status, _ = served.post(env["PIRIOD_WEBHOOK_URL"], signed)
    # then serve's line names the body, not "record None"
    assert status == 422
    served.wait_for("body · usages:", STOP_SECONDS)
    assert not [line for line in served.lines if "record None" in line]


def test_the_default_serve_reloads_the_example_profiles_it_loaded(tmp_path: Path) -> None:
    # given a serve run from a checkout (a copy: its example profiles are edited below), and a
    # build of a customer its ci-minutes profile has no line for, rejected into DeadLetterQueue
    checkout = tmp_path / "checkout"
    for name in ("pyproject.toml", "template.yaml", "examples/sources.json"):
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, checkout / name)
    with serve(cwd=checkout) as running:
        env = running.env()
        event = load_event("source-ci-minutes-unmapped.json")
        document = json.loads((checkout / "examples/sources.json").read_text())
        profile = document["sources"]["ci-minutes"]
        key = LOCAL_SOURCE_SECRETS[profile["signature"]["secret_id"]]
        base = env["PIRIOD_WEBHOOK_URL"].removesuffix("/v1/usages")
        status, body = running.post(base + event["rawPath"], sign_source(event, profile, key))
        assert status == 202 and body["results"][0]["status"] == "rejected", body
        # when the customer is mapped in the example profiles
        profile["lines"]["cus_initech"] = 3103
        (checkout / "examples/sources.json").write_text(json.dumps(document, indent=2))
        # then serve puts them into its SSM parameter again, and says so
        running.wait_for("put into SSM parameter /piriod-local/sources", STOP_SECONDS)
        # and the operator's replay posts the dead letter to the new line
        replayed = adapter_cli(env, "replay")
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        assert "posted=1" in replayed.stdout, replayed.stdout
        assert [u for u in running.ledger(env) if u["subscription_line"] == 3103]
