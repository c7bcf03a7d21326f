"""The exit codes of everyday failures that are not defects (docs/operations.md, "Exit codes"):
a replayed record neither posted nor stored (6), a question with no terminal to ask it on (9),
and standard output closed by its reader (141, quietly). The commands run as the user runs
them, installed in .venv, where the terminal and the pipe matter; against moto server."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from piriod_devkit.aws import client
from tests.conftest import Adapter
from tests.integration.test_cli_stack import cli
from tests.integration.test_ops import ops, record

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"


def run_closed(argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[bytes]:
    """`argv` with its standard output a pipe whose reader has gone (as `| head` once it has
    its lines): every write to it fails."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            argv, stdout=write, stderr=subprocess.PIPE, cwd=cwd, timeout=120, check=False
        )
    finally:
        os.close(write)


@pytest.mark.parametrize(
    "argv",
    [
        [str(BIN / "piriod-adapter"), "completion", "bash"],
        [str(BIN / "piriod-adapter"), "--help"],
        [str(BIN / "piriod-adapter"), "sources", "validate", "examples/sources.json"],
        [str(BIN / "piriod-local"), "--help"],
        [str(BIN / "piriod-local"), "openapi", "--check"],
    ],
    ids=lambda argv: " ".join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv)),
)
def test_a_closed_pipe_stops_quietly_with_exit_141(argv: list[str]) -> None:
    # when a command's reader closes the pipe before it writes (`... | head -0`)
    done = run_closed(argv)
    # then it stops with 141 (as a shell reports a tool stopped by SIGPIPE) and says nothing
    assert done.returncode == 141, done.stderr.decode()
    assert done.stderr == b""


def test_a_pipe_closed_after_its_first_lines_is_quiet_in_a_shell() -> None:
    # when a long listing is cut by head, as a user types it
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{BIN / 'piriod-adapter'} completion bash | head -1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # then head's line is all there is: no traceback, no "Exception ignored"
    assert done.stdout.count("\n") == 1 and done.stderr == "", done.stderr
    assert done.returncode in (0, 141)  # 0 when the whole script fitted in the pipe first


def aws(adapter: Adapter) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PIRIOD_", "AWS_"))},
        "AWS_ENDPOINT_URL": adapter.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def no_terminal(argv: list[str], env: dict[str, str], stdin: str) -> tuple[int, str, str]:
    """`argv` with no controlling terminal (a session of its own, as under CI or cron) and
    `stdin` on its standard input."""
    done = subprocess.run(
        argv,
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def test_init_with_no_terminal_and_nothing_piped_is_one_line_and_exit_9(adapter: Adapter) -> None:
    # when init asks for the token with no terminal to ask on and nothing on its input
    code, out, err = no_terminal(
        [str(BIN / "piriod-adapter"), "--stack", "no-tty", "init"], aws(adapter), ""
    )
    # then exit 9, one line saying what to give, no warning from getpass, nothing made
    assert (code, out) == (9, ""), err
    assert err.startswith("piriod-adapter: no terminal to ask for the Piriod token on")
    assert "--token-stdin" in err and len(err.strip().splitlines()) == 1, err
    names = [
        s["Name"] for s in client("secretsmanager", adapter.endpoint).list_secrets()["SecretList"]
    ]
    assert not [n for n in names if n.startswith("no-tty/")]


def test_init_with_no_terminal_reads_a_piped_token(adapter: Adapter) -> None:
    # when init runs with no terminal and the token on its input (README, Deploy step 1, as
    # a script runs it)
    code, _, err = no_terminal(
        [str(BIN / "piriod-adapter"), "--stack", "piped-tty", "init"], aws(adapter), "tok-piped\n"
    )
    # then the token is stored, with no warning about echo
    assert code == 0, err
    assert "Warning" not in err and "echo" not in err
    value = client("secretsmanager", adapter.endpoint).get_secret_value(
        SecretId="piped-tty/piriod-token"
    )["SecretString"]
    assert json.loads(value) == {"api_token": "tok-piped"}


def test_purge_with_no_terminal_and_no_yes_is_exit_9(adapter: Adapter, piriod: Any) -> None:
    # given a dead letter
    piriod.set_unmetered_lines(7)
    assert adapter.deliver(record(7, 1))[0] == 202
    # when purge runs from a script without --yes
    code, text = ops("purge", "--queue", "dead-letter")
    # then it refuses with exit 9, one line, and the dead letter stays
    assert code == 9 and "give --yes" in text and len(text.strip().splitlines()) == 1
    assert len(adapter.messages("dead_letter")) == 1


def test_a_replayed_record_neither_posted_nor_stored_is_exit_6(
    adapter: Adapter, piriod: Any
) -> None:
    # given a dead letter, Piriod failing, and ReplayQueue gone (nowhere to hand it to)
    piriod.set_unmetered_lines(7)
    assert adapter.deliver(record(7, 2))[0] == 202
    piriod.set_unmetered_lines()
    piriod.add_fault(kind="status", status=500)
    adapter.fresh_runtime(REPLAY_QUEUE_URL=adapter.resources.replay_queue_url + "-gone")
    # when the operator replays it
    code, text = ops("replay")
    # then exit 6, the record said to be not stored, and it stays a dead letter
    assert code == 6, text
    assert "not_stored" in text
    assert len(adapter.messages("dead_letter")) == 1


def test_a_file_init_cannot_write_is_one_line_and_exit_2(adapter: Adapter, tmp_path: Path) -> None:
    # when init is told to write samconfig.toml into a directory that does not exist
    target = tmp_path / "missing" / "samconfig.toml"
    argv = ["init", "--stack", "no-dir", "--token-stdin", "--config-env", "dev"]
    code, out, err = cli(*argv, "--samconfig", str(target), stdin="tok\n")
    # then it says which file and why, on one line, exit 2: not a defect
    assert code == 2, out + err
    assert err.strip().splitlines()[-1] == f"piriod-adapter: {target}: No such file or directory"


def test_piriod_local_with_a_file_that_is_not_there_is_one_line_and_exit_2() -> None:
    # when piriod-local is asked to sign an event file that does not exist
    done = subprocess.run(
        [str(BIN / "piriod-local"), "sign", "no-such-event.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # then it names the file and why, on one line, exit 2: not a traceback
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("piriod-local: ") and "no-such-event.json" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
