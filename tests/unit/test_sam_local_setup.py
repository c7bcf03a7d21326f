"""`sam local` on an ordinary machine: AWS's image by default, the offline one by name only,
and a setup that, where Docker can pull AWS's image, installs nothing but the SAM CLI."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCAL_ONLY = {"invoke_image", "skip_pull_image"}


def test_only_the_offline_environment_names_a_local_only_image() -> None:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    for environment, commands in config.items():
        if not isinstance(commands, dict):
            continue
        for command, section in commands.items():
            named = LOCAL_ONLY & set(section.get("parameters", {}))
            if environment == "offline" and command.startswith("local_"):
                assert named == LOCAL_ONLY, (environment, command)
            else:
                assert not named, (environment, command, named)


def _stub(where: Path, name: str, body: str) -> None:
    path = where / name
    path.write_text(f'#!/bin/sh\necho {name} "$@" >> {where}/calls\n{body}\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_with_docker_that_can_pull_aws_image_setup_installs_no_package(tmp_path: Path) -> None:
    # given a checkout whose SAM CLI is there, and a Docker that answers and has AWS's image
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "sam-local-setup.sh", repo / "scripts")
    sam = repo / ".tools" / "sam" / "bin"
    sam.mkdir(parents=True)
    _stub(sam, "sam", "echo 'SAM CLI, version 1.170.0'")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "docker", "exit 0")  # info, image inspect: all fine
    # the bridge's address, as `ip` shows it (this machine may never have run dockerd)
    _stub(bin_dir, "ip", "echo '5: docker0    inet 172.17.0.1/16 brd 172.17.255.255 scope global'")
    for tool in ("apt-get", "debootstrap", "dockerd"):
        _stub(bin_dir, tool, "exit 1")
    python = shutil.which("python3.13") or str(
        Path.home() / ".pyenv/versions/3.13.0/bin/python3.13"
    )
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{Path(python).parent}:/usr/bin:/bin",
        "PYENV_PY": str(Path(python).parent.parent),
    }
    # when the setup runs
    done = subprocess.run(
        ["bash", str(repo / "scripts" / "sam-local-setup.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    # then it chose the default environment and called no package tool
    assert done.returncode == 0, done.stderr
    assert (repo / ".tools" / "sam-config-env").read_text().strip() == "default"
    assert "--config-env default" in done.stdout
    calls = (bin_dir / "calls").read_text()
    assert "apt-get" not in calls and "debootstrap" not in calls and "dockerd" not in calls
