"""Shared fixtures: moto in server mode and the Piriod stand-in, both over loopback HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from piriod_adapter.queue import receive_all
from piriod_devkit.aws import MotoServer, client, free_port, function_environment, provision
from piriod_devkit.events import LOCAL_SIGNING_SECRET, LambdaContext, http_event, sign_event
from piriod_devkit.piriod_standin import PiriodStandin

TOKEN = "piriod-test-token-1"
WORKSPACE = "acc_test_workspace"

# The functions' IAM permissions that the integration tests' AWS calls used (function, Sid,
# action), and what recording and checking them cost: filled by tests/integration/conftest.py,
# merged from xdist's workers, shown at the end of the run (piriod_devkit.iam).
IAM_USED = pytest.StashKey[set[tuple[str, str, str]]]()
IAM_COST = pytest.StashKey[dict[str, float]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[IAM_USED] = set()
    config.stash[IAM_COST] = {"calls": 0, "seconds": 0.0}


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports
        used: set[tuple[str, str, str]] = session.config.stash[IAM_USED]
        workeroutput["iam_used"] = sorted(used)
        workeroutput["iam_cost"] = session.config.stash[IAM_COST]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    output = getattr(node, "workeroutput", {})
    node.config.stash[IAM_USED].update(tuple(u) for u in output.get("iam_used", []))
    for name, value in output.get("iam_cost", {}).items():
        node.config.stash[IAM_COST][name] += value


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The functions' permissions no recorded call needed: information, not a failure (a
    permission may serve a path the tests do not take, or Lambda itself)."""
    from piriod_devkit.iam import unused
    from piriod_devkit.template import load_template

    used, cost = config.stash[IAM_USED], config.stash[IAM_COST]
    if not used:
        return
    terminalreporter.section("IAM permissions no recorded AWS call needed (information)")
    for line in unused(load_template(), used) or ["none"]:
        terminalreporter.write_line(line)
    terminalreporter.write_line(
        f"({cost['calls']:.0f} AWS calls of the functions recorded and checked against "
        f"template.yaml in {cost['seconds']:.2f} s)"
    )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture(scope="session")
def standin_session() -> Iterator[PiriodStandin]:
    with PiriodStandin(tokens=(TOKEN,), workspace=WORKSPACE) as standin:
        yield standin


@pytest.fixture
def piriod(standin_session: PiriodStandin) -> Iterator[PiriodStandin]:
    standin_session.reset()
    standin_session.set_tokens(TOKEN)
    standin_session.set_unmetered_lines()
    yield standin_session
    standin_session.clear_faults()


@dataclass
class Adapter:
    """The deployed adapter, locally: real handlers, moto resources, the Piriod stand-in."""

    endpoint: str
    resources: Any
    env: dict[str, str]
    monkeypatch: pytest.MonkeyPatch
    secret: str = LOCAL_SIGNING_SECRET
    sources_parameter: str = ""  # the SSM parameter of its source profiles, once provisioned

    def fresh_runtime(self, **env: str) -> None:
        """A new container: settings and clients are created again from the environment."""
        from piriod_adapter.runtime import reset_runtime

        for name, value in env.items():
            self.monkeypatch.setenv(name, value)
        reset_runtime()

    def event(
        self,
        body: bytes | str | dict[str, Any],
        *,
        secret: str | None = None,
        message_id: str | None = None,
        timestamp: int | None = None,
        path: str = "/v1/usages",
    ) -> dict[str, Any]:
        raw = (
            body
            if isinstance(body, bytes)
            else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
        )
        event = http_event("POST", path, raw, {"content-type": "application/json"})
        return sign_event(event, secret or self.secret, message_id=message_id, timestamp=timestamp)

    def invoke(
        self, event: dict[str, Any], timeout_seconds: float = 25.0
    ) -> tuple[int, dict[str, Any]]:
        from piriod_adapter.handlers.webhook import lambda_handler

        response = lambda_handler(event, LambdaContext(timeout_seconds=timeout_seconds))
        return response["statusCode"], json.loads(response["body"])

    def deliver(
        self, body: bytes | str | dict[str, Any], **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        timeout = kwargs.pop("timeout_seconds", 25.0)
        return self.invoke(self.event(body, **kwargs), timeout_seconds=timeout)

    def messages(self, queue: str) -> list[dict[str, Any]]:
        """Every message now in 'replay' or 'dead_letter' (left visible again)."""
        sqs = client("sqs", self.endpoint)
        url = (
            self.resources.replay_queue_url
            if queue == "replay"
            else (self.resources.dead_letter_queue_url)
        )
        return [json.loads(m["Body"]) for m in receive_all(sqs, url, wait_seconds=0)]

    def items(self) -> list[dict[str, Any]]:
        dynamodb = client("dynamodb", self.endpoint)
        items: list[dict[str, Any]] = dynamodb.scan(TableName=self.resources.table)["Items"]
        return items


@pytest.fixture
def adapter(
    moto_server: MotoServer, piriod: PiriodStandin, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Adapter]:
    from piriod_adapter.runtime import reset_runtime

    resources = provision(moto_server.url, token=TOKEN, signing_secrets=[LOCAL_SIGNING_SECRET])
    env = function_environment(
        resources,
        piriod_url=piriod.url,
        workspace=WORKSPACE,
        PIRIOD_CONNECT_TIMEOUT="1",
        # Piriod's stand-in answers in milliseconds, but on a loaded machine an answer has
        # taken over a second (a 1 s timeout then made definite answers ambiguous); a test
        # that needs a post to time out sets its own timeout below its fault's delay.
        PIRIOD_READ_TIMEOUT="3",
        SETTLE_AFTER_SECONDS="0",
        AWS_CLIENT_READ_TIMEOUT="15",  # moto shares two cores with the whole suite
        POWERTOOLS_METRICS_NAMESPACE="PiriodUsageAdapter",
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    reset_runtime()
    yield Adapter(moto_server.url, resources, env, monkeypatch)
    reset_runtime()


@pytest.fixture
def dead_endpoint() -> str:
    """A loopback address where nothing listens: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"
