"""The stand-ins env/local.json points at, for `sam local invoke` and `sam local start-api`:
moto on :4566 and the Piriod stand-in on :8081, reachable from the function containers at the
Docker bridge's gateway address (which SAM maps to host.docker.internal)."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from piriod_devkit import checkout
from piriod_devkit.aws import LocalResources, MotoServer, provision
from piriod_devkit.events import LOCAL_SIGNING_SECRET
from piriod_devkit.sources import provision_sources
from piriod_devkit.standin_process import StandinProcess

MOTO_PORT = 4566
PIRIOD_PORT = 8081
TOKEN = "local-token"  # noqa: S105 (stand-in credential)
UNMETERED_LINE = 999


@dataclass
class LocalStandins:
    moto: MotoServer
    piriod: StandinProcess
    resources: LocalResources


def local_env() -> dict[str, str]:
    env: dict[str, str] = json.loads(checkout.path("env", "local.json").read_text())["Parameters"]
    return env


@contextmanager
def local_standins(gateway: str | None) -> Iterator[LocalStandins]:
    """Start both stand-ins as env/local.json expects them, provisioned, and stop them after.
    `gateway`: the Docker bridge address to serve containers on (None: loopback only)."""
    env = local_env()
    # (Docker Desktop reaches this machine's loopback itself: there the gateway is 127.0.0.1)
    hosts = ("127.0.0.1", gateway) if gateway and gateway != "127.0.0.1" else ("127.0.0.1",)
    # moto serves one address: the gateway when containers need it (this machine reaches it too)
    with MotoServer(host=gateway or "127.0.0.1", port=MOTO_PORT) as moto:
        prefix = env["IDEMPOTENCY_TABLE"].removesuffix("-idempotency")
        resources = provision(
            moto.url, token=TOKEN, signing_secrets=[LOCAL_SIGNING_SECRET], prefix=prefix
        )
        # the example source profiles, where env/local.json's SOURCES_CONFIG points
        provision_sources(moto.url, env["SOURCES_CONFIG"].removeprefix("ssm:"))
        with StandinProcess(
            token=TOKEN, workspace=env["PIRIOD_WORKSPACE_ID"], hosts=hosts, port=PIRIOD_PORT
        ) as piriod:
            piriod.set_unmetered_lines(UNMETERED_LINE)
            yield LocalStandins(moto, piriod, resources)


def serve(gateway: str | None) -> int:
    with local_standins(gateway) as standins:
        print(f"moto (Secrets Manager, SQS, DynamoDB): {standins.moto.url}")
        urls = ", ".join(f"http://{h}:{PIRIOD_PORT}" for h in standins.piriod.hosts)
        print(f"Piriod stand-in: {urls}")
        print("For tools on this machine:")
        print(
            f"  export AWS_ENDPOINT_URL={standins.moto.url} AWS_ACCESS_KEY_ID=testing "
            "AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1"
        )
        print("Ready; Ctrl-C stops.", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass
    return 0
