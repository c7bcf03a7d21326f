"""The leak test, around every integration test: with every logger at DEBUG, each captured log
line, each metric document and each message left in the test's queues is scanned for the
secret values the suite uses. A hit fails the test that leaked it."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from piriod_devkit.events import LOCAL_SIGNING_SECRET
from piriod_devkit.iam import Recorder
from piriod_devkit.sources import LOCAL_SOURCE_SECRETS, provision_sources
from tests.conftest import IAM_COST, IAM_USED, TOKEN, Adapter
from tests.integration.test_webhook import OTHER_SECRET

COLLECTOR_TOKEN = "collector-token-1"  # a tracing header (test_tracing.py)

SECRETS = {
    TOKEN,
    "piriod-test-token-2",
    "rotated-token",
    "some-other-token",
    LOCAL_SIGNING_SECRET,
    LOCAL_SIGNING_SECRET.removeprefix("whsec_"),
    base64.b64decode(LOCAL_SIGNING_SECRET.removeprefix("whsec_")).decode(),
    OTHER_SECRET,
    OTHER_SECRET.removeprefix("whsec_"),
    *LOCAL_SOURCE_SECRETS.values(),
    "whsec_new_one",
    COLLECTOR_TOKEN,  # a tracing header (PIRIOD_TRACING_HEADERS)
}


@pytest.fixture(autouse=True)
def no_secret_leaks(
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    records = caplog.get_records("setup") + caplog.get_records("call")
    seen = [f"{r.getMessage()} {json.dumps(r.__dict__, default=str)}" for r in records]
    out = capsys.readouterr()
    seen += [out.out, out.err]  # EMF metric documents and anything printed
    adapter = request.node.funcargs.get("adapter") or request.node.funcargs.get("sources")
    if isinstance(adapter, Adapter):
        for queue in ("replay", "dead_letter"):
            seen += [json.dumps(m) for m in adapter.messages(queue)]
    leaked = sorted(s for s in SECRETS if any(s in text for text in seen))
    assert not leaked, f"secret value(s) found in logs, metrics or queue messages: {leaked}"


@pytest.fixture(scope="session")
def iam_recorder() -> Iterator[Recorder]:
    """Records every AWS call of the functions' code (piriod_devkit.iam) for the whole run."""
    recorder = Recorder()
    recorder.install()
    yield recorder
    recorder.uninstall()


@pytest.fixture(autouse=True)
def iam_policies_allow_every_call(
    request: pytest.FixtureRequest, iam_recorder: Recorder
) -> Iterator[None]:
    """The IAM test, around every integration test (moto enforces no IAM): each AWS call a
    function made during the test must be allowed by that function's statements in
    template.yaml, resolved for the test's resources. A call they deny fails the test that
    made it."""
    yield
    calls, problems = iam_recorder.take()
    report = iam_recorder.check(calls, problems)
    request.config.stash[IAM_USED].update(report.used)
    cost = request.config.stash[IAM_COST]
    cost["calls"] += len(calls)
    cost["seconds"] = iam_recorder.seconds
    assert not report.denied and not report.problems, report.text()


# --- aggregating sources (SPEC 9) ------------------------------------------------------------

SECRET = "local aggregate hmac secret"
SIGNATURE = {"scheme": "hmac-sha256-hex", "secret_id": "agg/meter", "header": "X-Signature"}


def profile(function: str = "sum", **aggregate: str) -> dict[str, Any]:
    fields = {"date_time": "at", "event_id": "id", "subscription_line": "line"}
    if function == "sum":
        fields["quantity"] = "q"
    return {
        "signature": SIGNATURE,
        "records": "events",
        "fields": fields,
        "aggregate": {"function": function, "window": "PT1M", "lateness": "PT0S", **aggregate},
    }


@pytest.fixture
def meters(adapter: Adapter) -> Adapter:
    """The adapter with three aggregating sources: `meter` sums, `counter` counts, `tick`
    sums into one-second windows."""
    parameter = f"/{adapter.resources.table.removesuffix('-idempotency')}/sources"
    sources = {"meter": profile(), "counter": profile("count"), "tick": profile(window="PT1S")}
    document = {"version": 1, "sources": sources}
    config = provision_sources(adapter.endpoint, parameter, document, {"agg/meter": SECRET})
    adapter.fresh_runtime(SOURCES_CONFIG=config, SOURCES_CACHE_SECONDS="0")
    return adapter
