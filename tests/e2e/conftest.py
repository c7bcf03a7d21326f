"""The real SAM CLI and Lambda runtime: `sam build`, `sam local invoke`, `sam local start-api`.

Needs what scripts/sam-local-setup.sh prepares (Docker engine, the offline Lambda image, the
SAM CLI in .tools/sam); `make test` and .ci/run call it first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from piriod_devkit.standins import LocalStandins, local_standins

ROOT = Path(__file__).resolve().parents[2]
SAM = ROOT / ".tools" / "sam" / "bin" / "sam"
PYTHON313 = Path("/root/.pyenv/versions/3.13.0/bin")


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
    if args[:1] == ("local",):
        args = (*args, "--config-env", config_env())
    return subprocess.run(
        [str(SAM), *args],
        cwd=ROOT,
        env=sam_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
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
        self.process = subprocess.Popen(
            [
                str(SAM),
                "local",
                "start-api",
                "--port",
                str(self.port),
                "--warm-containers",
                "EAGER",
                "--config-env",
                config_env(),
            ],
            cwd=ROOT,
            env=sam_env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        end = time.monotonic() + 120
        while time.monotonic() < end:
            assert self.process.poll() is None, (ROOT / ".aws-sam" / "start-api.log").read_text()[
                -3000:
            ]
            try:
                self.http.request("GET", f"{self.url}/v1/health", retries=False, timeout=2)
                return self
            except urllib3.exceptions.HTTPError:
                time.sleep(0.5)
        raise AssertionError("sam local start-api did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


@pytest.fixture(scope="session")
def api(built: Path, standins: LocalStandins) -> Iterator[StartApi]:
    server = StartApi(3300).start()
    yield server
    server.stop()
