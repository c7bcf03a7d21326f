"""The real SAM CLI and Lambda runtime: `sam build`, `sam local invoke`, `sam local start-api`.

Needs what scripts/sam-local-setup.sh prepares (Docker engine, the offline Lambda image, the
SAM CLI in .tools/sam); `make test` and .ci/run call it first.

Nothing is left running: every `sam` runs in a process group of its own, stopped with SIGINT
first (SAM stops its Lambda containers on Ctrl-C, not when it is killed), then SIGTERM, then
SIGKILL; and the session ends by listing this checkout's Lambda containers: any that this run
started and that is still there is removed, and the run fails naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from piriod_devkit.process import stop_group
from piriod_devkit.standins import LocalStandins, local_standins

ROOT = Path(__file__).resolve().parents[2]
SAM = ROOT / ".tools" / "sam" / "bin" / "sam"
PYTHON313 = Path("/root/.pyenv/versions/3.13.0/bin")
# Debian's docker.io puts its client in /usr/bin (the setup script falls back to it too)
DOCKER = shutil.which("docker") or "/usr/bin/docker"
# The label SAM puts on every Lambda container it runs (`sam local invoke` / `start-api`)
SAM_LAMBDA_LABEL = "sam.cli.container.type=lambda"
# How `sam` is stopped: Ctrl-C, with time to stop and remove its warm containers (3 s each)
SAM_STOP_SIGNALS = ((signal.SIGINT, 60.0), (signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0))


def sam_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SAM_CLI_TELEMETRY="0",
        # SAM hands the host's credentials to the function container: give it moto's dummies
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
    )
    env.pop("AWS_PROFILE", None)
    env.pop("AWS_ENDPOINT_URL", None)  # the host's own endpoint is not the container's
    if PYTHON313.exists():
        env["PATH"] = f"{PYTHON313}:{env['PATH']}"  # sam build needs python3.13
    return env


def config_env() -> str:
    """The samconfig environment this machine's `sam local` needs (the setup script says:
    `default`, AWS's image, or `offline`, the image it built)."""
    marker = ROOT / ".tools" / "sam-config-env"
    return marker.read_text().strip() if marker.exists() else "default"


def run_sam(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`sam <args>` to its end; past `timeout` (a hang), or on Ctrl-C, its process group is
    stopped as SAM_STOP_SIGNALS says, so that a `sam local invoke` removes its container."""
    if args[:1] == ("local",):
        args = (*args, "--config-env", config_env())
    process = subprocess.Popen(
        [str(SAM), *args],
        cwd=ROOT,
        env=sam_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_group(process, SAM_STOP_SIGNALS)
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"sam {' '.join(args)} did not finish in {timeout} s: {stderr[-3000:]}"
        ) from None
    except BaseException:
        stop_group(process, SAM_STOP_SIGNALS)
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def project_containers() -> dict[str, str]:
    """This checkout's Lambda containers, in any state, by id: SAM's Lambda label, and this
    checkout's build mounted as the function's code (another project's are not listed)."""
    ids = subprocess.run(
        [DOCKER, "ps", "--all", "--quiet", "--no-trunc", "--filter", f"label={SAM_LAMBDA_LABEL}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    if not ids:
        return {}
    # (one removed since it was listed is missing from the answer, and docker exits 1)
    inspected = subprocess.run(
        [DOCKER, "inspect", *ids], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    found: dict[str, str] = {}
    for container in json.loads(inspected or "[]"):
        sources = [Path(mount.get("Source") or "/") for mount in container.get("Mounts") or []]
        if any(source.is_relative_to(ROOT) for source in sources):
            labels = container["Config"].get("Labels") or {}
            found[container["Id"]] = (
                f"{container['Id'][:12]} {labels.get('sam.cli.function.name', '?')} "
                f"({container['Config'].get('Image')}, {container['State'].get('Status')}, "
                f"created {container.get('Created')})"
            )
    return found


def docker_answers() -> bool:
    try:
        return (
            subprocess.run(
                [DOCKER, "info"], capture_output=True, timeout=60, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session", autouse=True)
def no_container_left_behind() -> Iterator[None]:
    """The session's last teardown: every Lambda container this run started is gone. One
    still there (running or stopped) is removed, as the last resort, and fails the run;
    containers that were there before the run are left alone."""
    if not docker_answers():  # `gateway` says what is missing
        yield
        return
    before = project_containers()
    if before:
        warnings.warn(
            "Lambda containers of this checkout were there before the run and are left "
            "alone: " + "; ".join(before.values()),
            stacklevel=1,
        )
    yield
    left = {id_: text for id_, text in project_containers().items() if id_ not in before}
    if left:
        subprocess.run(
            [DOCKER, "rm", "--force", *left], capture_output=True, timeout=120, check=False
        )
        pytest.fail(
            "teardown left Lambda containers of this run behind (now removed): "
            + "; ".join(left.values())
        )


@pytest.fixture(scope="session")
def gateway() -> str:
    if not SAM.exists() or shutil.which("docker") is None:
        pytest.fail("the SAM CLI or Docker is missing: run `bash scripts/sam-local-setup.sh`")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "sam-local-setup.sh"), "--print-gateway"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def built(gateway: str) -> Path:
    result = run_sam("build")
    assert result.returncode == 0, result.stdout + result.stderr
    return ROOT / ".aws-sam" / "build"


@pytest.fixture(scope="session")
def standins(gateway: str) -> Iterator[LocalStandins]:
    with local_standins(gateway) as found:
        yield found


def invoke(function: str, event: dict[str, Any] | Path, tmp_path: Path) -> dict[str, Any]:
    """`sam local invoke` with env/local.json on an event (or an event file, as it is);
    returns the function's result."""
    if isinstance(event, Path):
        path = event
    else:
        path = tmp_path / f"event-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(event))
    result = run_sam("local", "invoke", function, "-e", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.strip().startswith("{")]
    assert lines, f"no result on stdout: {result.stdout[-2000:]} {result.stderr[-2000:]}"
    payload: dict[str, Any] = json.loads(lines[-1])
    return payload


class StartApi:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.http = urllib3.PoolManager(maxsize=8)
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> StartApi:
        self.log = (ROOT / ".aws-sam" / "start-api.log").open("w")
        # its own process group: stop() interrupts SAM as Ctrl-C would
        self.process = subprocess.Popen(
            [
                str(SAM),
                "local",
                "start-api",
                "--port",
                str(self.port),
                # LAZY: a container for the functions the API calls, made on its first
                # request (EAGER makes one for every function of the template, and SAM's
                # shutdown did not always remove FlushFunction's)
                "--warm-containers",
                "LAZY",
                "--config-env",
                config_env(),
            ],
            cwd=ROOT,
            env=sam_env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            end = time.monotonic() + 120
            while time.monotonic() < end:
                assert self.process.poll() is None, (
                    ROOT / ".aws-sam" / "start-api.log"
                ).read_text()[-3000:]
                try:
                    self.http.request("GET", f"{self.url}/v1/health", retries=False, timeout=2)
                    return self
                except urllib3.exceptions.HTTPError:
                    time.sleep(0.5)
            raise AssertionError("sam local start-api did not start")
        except BaseException:
            self.stop()  # its warm containers may be up already
            raise

    def stop(self) -> None:
        """Interrupt SAM (its process group), which stops and removes its warm containers."""
        if self.process is not None:
            stop_group(self.process, SAM_STOP_SIGNALS)
            self.process = None
        self.log.close()


@pytest.fixture(scope="session")
def api(built: Path, standins: LocalStandins) -> Iterator[StartApi]:
    server = StartApi(3300).start()
    yield server
    server.stop()
