"""The project installed as a user installs it, into fresh virtual environments from one wheel
of this checkout (what `pip install .` builds), with its dependencies from the package index:

- `pipx install .` (the wheel alone): `piriod-adapter` works, with its help and a real
  command; `piriod-local` says in one line that it runs from a checkout, and exits 2.
- `pip install ".[local]"` (the wheel with its `local` extra): `piriod-local` works from a
  checkout (`serve`, and `piriod-adapter send` through it), and from anywhere else says in one
  line that it runs from a checkout.

pip's cache makes a second run quick; the first needs the package index."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from piriod_devkit.aws import free_port
from tests.integration.test_serve import clean_environment, exports

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SECONDS = 900  # failure timeouts only: the index may be slow
STARTUP_SECONDS = 240


def run(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        env=env if env is not None else clean_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def copy_of_checkout(target: Path) -> Path:
    """The repository's files as a fresh clone has them (no .venv, no build output)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(source.read_bytes())
    return target


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One wheel of this checkout, built from a copy (the build leaves nothing here)."""
    base = tmp_path_factory.mktemp("wheel")
    source = copy_of_checkout(base / "source")
    done = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base), str(source)],
        base,
        {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        INSTALL_SECONDS,
    )
    assert done.returncode == 0, done.stderr
    [built] = base.glob("piriod_usage_adapter-*.whl")
    return built


def fresh_install(directory: Path, requirement: str) -> Path:
    """A new virtual environment with `requirement` installed as pip installs it (with its
    dependencies); returns its bin/."""
    done = run([sys.executable, "-m", "venv", str(directory)], directory.parent)
    assert done.returncode == 0, done.stderr
    done = run(
        [str(directory / "bin" / "python"), "-m", "pip", "install", "-q", requirement],
        directory.parent,
        {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        INSTALL_SECONDS,
    )
    assert done.returncode == 0, done.stderr
    return directory / "bin"


def one_line_about_the_checkout(done: subprocess.CompletedProcess[str]) -> None:
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "piriod-local runs from a checkout" in lines[0], done.stderr
    assert 'pip install -e ".[local]"' in lines[0]


# One test per install, so that a parallel run (pytest -n) makes each environment once.


def test_pipx_install_gives_a_working_piriod_adapter_and_a_piriod_local_that_says_why_not(
    wheel: Path, tmp_path: Path
) -> None:
    # given the wheel installed alone into a fresh environment, as `pipx install .` does
    plain = fresh_install(tmp_path / "plain", str(wheel))
    # when piriod-adapter is asked for its help and its version
    helped = run([str(plain / "piriod-adapter"), "--help"], ROOT)
    version = run([str(plain / "piriod-adapter"), "--version"], ROOT)
    # then both answer
    assert helped.returncode == 0 and "Exit codes:" in helped.stdout, helped.stderr
    assert version.returncode == 0 and version.stdout.startswith("piriod-adapter 0."), version
    # when it runs a real command: a dry run of a meter's profile on its sample payload
    tried = run(
        [
            str(plain / "piriod-adapter"),
            "sources",
            "try",
            "--config",
            "examples/sources.json",
            "--source",
            "acme-storage",
            "--payload",
            "docs/examples/acme-storage.json",
        ],
        ROOT,
    )
    # then it maps both readings, bytes to GB, with the adapter's own code
    assert tried.returncode == 0, tried.stdout + tried.stderr
    assert "1.073741824" in tried.stdout and "2 would post" in tried.stdout
    # when its piriod-local (no dev kit) is run, even inside a checkout
    for argv in (["--help"], ["serve"], ["demo"]):
        done = run([str(plain / "piriod-local"), *argv], ROOT)
        # then it says in one line that it runs from a checkout with the dev kit, exit 2
        one_line_about_the_checkout(done)


def test_a_local_install_serves_and_demos_from_a_checkout_and_says_why_not_elsewhere(
    wheel: Path, tmp_path: Path
) -> None:
    # given the wheel with its `local` extra in a fresh environment (`pip install ".[local]"`,
    # what `make demo` installs: no test tools)
    local = fresh_install(tmp_path / "local", f"{wheel}[local]")
    # when its piriod-local serves from this checkout
    port = free_port()
    process = subprocess.Popen(
        [str(local / "piriod-local"), "serve", "--port", str(port)],
        cwd=ROOT,
        env=clean_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        seen: list[str] = []
        end = time.monotonic() + STARTUP_SECONDS
        for line in process.stdout:
            seen.append(line)
            if line.startswith("Ready;") or time.monotonic() > end:
                break
        assert seen and seen[-1].startswith("Ready;"), "".join(seen)
        # and a record is sent with that install's piriod-adapter, through the exports
        printed = run(
            [str(local / "piriod-local"), "serve", "--port", str(port), "--print-env"], ROOT
        )
        assert printed.returncode == 0, printed.stderr
        env = clean_environment() | exports(printed.stdout)
        sent = run([str(local / "piriod-adapter"), "send", "--line", "4242"], ROOT, env)
        # then it was posted through the local adapter
        assert sent.returncode == 0 and "record 0: posted" in sent.stdout, sent.stdout + sent.stderr
        # and Ctrl-C stops the serve, exit 0
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(timeout=120)
    # when `make demo`'s command runs there
    demo = run([str(local / "piriod-local"), "demo"], ROOT, timeout=600)
    # then it succeeds, every outcome seen
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr
    assert "Outcomes seen: " in demo.stdout and "replayed=" in demo.stdout
    # when it is run from a directory outside any checkout
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    helped = run([str(local / "piriod-local"), "--help"], outside)
    served = run([str(local / "piriod-local"), "serve"], outside)
    # then its help works, and serving says in one line that it runs from a checkout
    assert helped.returncode == 0 and "serve" in helped.stdout, helped.stderr
    one_line_about_the_checkout(served)
