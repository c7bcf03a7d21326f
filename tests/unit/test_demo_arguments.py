"""`piriod-local demo` pointed at the real Piriod: where its token and workspace come from (a
flag beats the environment; a token never comes from the command line)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from piriod_devkit import demo

TOKEN = "tok-from-somewhere-1"


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="piriod-local demo")
    demo.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_without_a_token_anywhere_the_demo_uses_the_stand_in() -> None:
    assert demo.real_piriod(parsed(), {}, io.StringIO()) is None


def test_a_token_on_standard_input_beats_the_environments(tmp_path: Path) -> None:
    # given PIRIOD_TOKEN and PIRIOD_WORKSPACE_ID set, and another token on standard input
    environ = {"PIRIOD_TOKEN": "tok-env", "PIRIOD_WORKSPACE_ID": "acc_env"}
    # when the demo is given --token-stdin and --workspace
    real = demo.real_piriod(
        parsed("--token-stdin", "--workspace", "acc_flag"), environ, io.StringIO(TOKEN + "\n")
    )
    # then the flags' values are used
    assert real is not None
    assert (real.token.get_secret_value(), real.workspace) == (TOKEN, "acc_flag")


def test_a_token_file_beats_the_environments(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    real = demo.real_piriod(
        parsed("--token-file", str(path)),
        {"PIRIOD_TOKEN": "tok-env", "PIRIOD_WORKSPACE_ID": "acc_env"},
        io.StringIO(),
    )
    assert real is not None
    assert (real.token.get_secret_value(), real.workspace) == (TOKEN, "acc_env")


def test_the_environment_gives_a_token_when_no_flag_does() -> None:
    real = demo.real_piriod(
        parsed(), {"PIRIOD_TOKEN": TOKEN, "PIRIOD_WORKSPACE_ID": "acc_env"}, io.StringIO()
    )
    assert real is not None and real.token.get_secret_value() == TOKEN
    assert real.url == "https://api.piriod.com" and TOKEN not in repr(real)


def test_a_token_in_argv_is_refused_without_repeating_it() -> None:
    # when a token is given on the command line, as the demo once took it
    with pytest.raises(demo.DemoArgumentError) as refused:
        demo.real_piriod(parsed("--token", TOKEN), {}, io.StringIO())
    # then it is refused, saying the ways that keep it out of argv, and not printed back
    message = str(refused.value)
    assert "--token-stdin" in message and "--token-file" in message and "PIRIOD_TOKEN" in message
    assert TOKEN not in message


@pytest.mark.parametrize(
    ("argv", "stdin", "environ", "says"),
    [
        (("--token-stdin",), "\n", {}, "read from standard input is empty"),
        (("--token-stdin",), TOKEN, {}, "needs your workspace"),
        (("--token-file", "/nonexistent/token"), "", {}, "--token-file /nonexistent/token"),
    ],
)
def test_a_token_that_cannot_be_used_is_one_line(
    argv: tuple[str, ...], stdin: str, environ: dict[str, str], says: str
) -> None:
    with pytest.raises(demo.DemoArgumentError) as refused:
        demo.real_piriod(parsed(*argv), environ, io.StringIO(stdin))
    assert says in str(refused.value) and "\n" not in str(refused.value)
