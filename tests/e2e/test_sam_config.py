"""Which Lambda image `sam local` asks Docker for, per samconfig environment: AWS's own by
default, the offline one only with `--config-env offline`.

The real SAM CLI talks to a recording stand-in of the Docker Engine API on a Unix socket
(`DOCKER_HOST`), which answers that no image exists, so SAM shows what it would pull or build
without any registry being asked: nothing leaves the machine."""

from __future__ import annotations

import io
import json
import socketserver
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.e2e.conftest import ROOT, SAM, sam_env

pytestmark = pytest.mark.e2e

AWS_IMAGE = "public.ecr.aws/lambda/python:3.13"  # SAM adds the architecture: 3.13-x86_64
OFFLINE_IMAGE = "piriod-adapter/python3.13-lambda:offline"


class _Engine(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: DockerStandIn

    def _answer(self) -> None:
        body = self._read()
        self.server.requests.append(f"{self.command} {unquote(self.path)}")
        if "/build" in self.path:
            self.server.dockerfiles.append(_dockerfile(body))
        if self.path.endswith("/_ping"):
            status, body = 200, b"OK"
        elif self.path.endswith("/version"):
            status = 200
            body = json.dumps({"ApiVersion": "1.41", "Version": "24.0.0", "Os": "linux"}).encode()
        else:
            status, body = 404, b'{"message": "no such image"}'
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _read(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("content-length") or 0))
        chunks = []
        while size := int(self.rfile.readline().strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.read(2)
        self.rfile.readline()
        return b"".join(chunks)

    do_GET = do_POST = do_HEAD = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class DockerStandIn(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), _Engine)
        self.requests: list[str] = []
        self.dockerfiles: list[str] = []

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # SAM drops its connection once it has its answer

    def get_request(self):  # type: ignore[no-untyped-def]
        connection, _ = super().get_request()
        return connection, ("docker", 0)  # http.server wants a (host, port) peer


def _dockerfile(context: bytes) -> str:
    """The Dockerfile of a build context (a tar, maybe compressed)."""
    with tarfile.open(fileobj=io.BytesIO(context)) as archive:
        member = archive.extractfile("Dockerfile")
        return member.read().decode() if member else ""


@pytest.fixture
def docker(tmp_path: Path) -> Iterator[DockerStandIn]:
    server = DockerStandIn(tmp_path / "docker.sock")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def base_images(docker: DockerStandIn, tmp_path: Path, *config: str) -> list[str]:
    """The images that `sam local invoke` builds its function image FROM."""
    event = tmp_path / "event.json"
    event.write_text((ROOT / "events" / "webhook-single.json").read_text())
    env = {**sam_env(), "DOCKER_HOST": f"unix://{docker.server_address}"}
    subprocess.run(
        [str(SAM), "local", "invoke", "WebhookFunction", "-e", str(event), *config],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert docker.dockerfiles, "\n".join(docker.requests)
    return [
        line.split()[1]
        for dockerfile in docker.dockerfiles
        for line in dockerfile.splitlines()
        if line.upper().startswith("FROM ")
    ]


def test_default_configuration_asks_for_aws_lambda_image(
    docker: DockerStandIn, tmp_path: Path
) -> None:
    # when `sam local invoke` runs with the default samconfig environment
    images = base_images(docker, tmp_path)
    # then the function's image is built on AWS's Lambda image
    assert len(images) == 1 and images[0].startswith(AWS_IMAGE), images


def test_offline_configuration_asks_for_the_offline_image(
    docker: DockerStandIn, tmp_path: Path
) -> None:
    # when it runs with --config-env offline
    images = base_images(docker, tmp_path, "--config-env", "offline")
    # then it is built on the offline image, and nothing is pulled
    assert images == [OFFLINE_IMAGE]
    assert "pull=False" in "\n".join(docker.requests)
