"""docs/senders.md, run as written against the webhook served on a local port:

- every native signing example (Python, Node.js, shell with openssl and curl) must get 202
  and its record must reach the Piriod stand-in;
- every third-party example (one per signature scheme, each for a profile of
  examples/sources.json) likewise, on its source's route;
- the corrections example amends a record once: `applied`, then `duplicate` when run again;
- every example answer is the adapter's own: its request is sent and the answer must be the
  one shown, exactly."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import urllib3

from piriod_devkit.events import http_event, sign_event
from piriod_devkit.local_api import LocalApiServer
from piriod_devkit.sources import LOCAL_SOURCE_SECRETS, example_document, provision_sources
from tests.conftest import Adapter

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "senders.md"
RUNNERS = {"python": [sys.executable, "-c"], "js": ["node", "-e"], "sh": ["sh", "-c"]}
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
PROFILE = re.compile(r"For the ([a-z0-9-]+) profile of examples/sources\.json")
EXAMPLE = re.compile(r"^<!-- example: ([a-z-]+) -->$", re.MULTILINE)
UNMETERED_LINE = 999  # the stand-in answers 400 for it, as Piriod does for an unknown line


def snippets() -> dict[str, str]:
    """The guide's runnable native examples by language: the blocks that read the webhook
    URL."""
    found = {
        language: code
        for language, code in FENCE.findall(GUIDE.read_text())
        if "PIRIOD_WEBHOOK_URL" in code and language in RUNNERS
    }
    assert sorted(found) == ["js", "python", "sh"], sorted(found)
    return found


def source_snippets() -> dict[str, tuple[str, str]]:
    """The guide's third-party examples by the profile they are for: (language, code)."""
    found: dict[str, tuple[str, str]] = {}
    for language, code in FENCE.findall(GUIDE.read_text()):
        if "PIRIOD_SOURCE_URL" in code and language in RUNNERS:
            [name] = PROFILE.findall(code)
            found[name] = (language, code)
    schemes = {example_document()["sources"][n]["signature"]["scheme"] for n in found}
    assert schemes == {"standard-webhooks", "stripe", "hmac-sha256-hex"}, sorted(found)
    return found


def examples() -> dict[str, list[str]]:
    """Each example answer's json blocks by name: [request, answer] or [answer]."""
    text = GUIDE.read_text()
    marks = list(EXAMPLE.finditer(text))
    found: dict[str, list[str]] = {}
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        section_end = text.find("\n## ", mark.end())
        end = min(
            following.start() if following else len(text),
            section_end if section_end >= 0 else len(text),
        )
        blocks = [code for lang, code in FENCE.findall(text[mark.end() : end]) if lang == "json"]
        found[mark.group(1)] = blocks
    return found


@pytest.fixture
def served(adapter: Adapter) -> Iterator[LocalApiServer]:
    server = LocalApiServer().start()
    yield server
    server.stop()


@pytest.fixture
def with_sources(adapter: Adapter) -> Adapter:
    """The adapter with the example profiles of examples/sources.json."""
    parameter = f"/{adapter.resources.table.removesuffix('-idempotency')}/sources"
    adapter.fresh_runtime(SOURCES_CONFIG=provision_sources(adapter.endpoint, parameter))
    return adapter


def run(language: str, code: str, env: dict[str, str]) -> str:
    runner = RUNNERS[language]
    assert shutil.which(runner[0]), f"{runner[0]} is needed to run the guide's {language} example"
    done = subprocess.run(
        [*runner, code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


@pytest.mark.parametrize("language", sorted(RUNNERS))
def test_each_example_in_the_guide_gets_202(
    served: LocalApiServer, adapter: Adapter, piriod: Any, language: str
) -> None:
    # given the guide's example in this language, and the tools it needs on this machine
    code = snippets()[language]
    # when it is run as written
    output = run(
        language,
        code,
        {"PIRIOD_WEBHOOK_URL": f"{served.url}/v1/usages", "PIRIOD_SIGNING_SECRET": adapter.secret},
    )
    # then it printed a 202 with its record posted, and Piriod has that record
    assert re.search(r"(^|\n)202\b|\b202\n?$", output.strip()), output
    assert '"status":"posted"' in output, output
    assert len(piriod.usages()) == 1 and piriod.violations() == []


@pytest.mark.parametrize("source", ["acme-storage", "ci-minutes", "fleet-telemetry"])
def test_each_third_party_example_gets_202_on_its_route(
    served: LocalApiServer, with_sources: Adapter, piriod: Any, source: str
) -> None:
    # given the guide's example for this example profile, and that profile's local secret
    language, code = source_snippets()[source]
    profile = example_document()["sources"][source]
    secret = LOCAL_SOURCE_SECRETS[profile["signature"]["secret_id"]]
    # when it is run as written against that source's route
    output = run(
        language,
        code,
        {
            "PIRIOD_SOURCE_URL": f"{served.url}/v1/sources/{source}/usages",
            "PIRIOD_SOURCE_SECRET": secret,
        },
    )
    # then it printed a 202 with its record posted and its event id, and Piriod has it
    assert re.search(r"(^|\n)202\b|\b202\n?$", output.strip()), output
    assert '"status":"posted"' in output and '"event_id":' in output, output
    assert len(piriod.usages()) == 1 and piriod.violations() == []


def correction_snippet() -> str:
    """The guide's corrections example: the block that reads the corrections URL."""
    [code] = [
        code
        for language, code in FENCE.findall(GUIDE.read_text())
        if "PIRIOD_CORRECTIONS_URL" in code and language == "python"
    ]
    return str(code)


def test_the_corrections_example_amends_a_record_once(
    served: LocalApiServer, adapter: Adapter, piriod: Any
) -> None:
    # given a record posted with an idempotency_key
    record = {
        "subscription_line": 4242,
        "date_time": "2026-11-26T10:00:00Z",
        "quantity": 3,
        "idempotency_key": "meter-7/2026-11-26T10",
    }
    status, _ = adapter.deliver(record)
    assert status == 202 and [u["quantity"] for u in piriod.usages()] == ["3"]
    env = {
        "PIRIOD_CORRECTIONS_URL": f"{served.url}/v1/corrections",
        "PIRIOD_SIGNING_SECRET": adapter.secret,
        "PIRIOD_RECORD_KEY": "meter-7/2026-11-26T10",
        "PIRIOD_CORRECTION_ID": "refund-4711",
    }
    # when the guide's corrections example is run as written
    output = run("python", correction_snippet(), env)
    # then it printed a 202 with the amend applied, and Piriod holds the new quantity alone
    assert output.startswith("202 ") and '"status":"applied"' in output, output
    assert [(u["quantity"]) for u in piriod.usages()] == ["1.25"]
    # and run again (a retry: the same correction_id, signed anew), it is a duplicate of
    # revision 1, and nothing changes
    again = run("python", correction_snippet(), env)
    assert again.startswith("202 ") and '"status":"duplicate","revision":1' in again, again
    assert [(u["quantity"]) for u in piriod.usages()] == ["1.25"]
    assert piriod.violations() == []


class _ThrottleOnce(BaseHTTPRequestHandler):
    """In front of the adapter: the first request is answered 429 with `Retry-After: 3`, the
    next ones are passed on. Each request's arrival time and webhook-id are kept."""

    protocol_version = "HTTP/1.1"
    upstream = ""
    seen: ClassVar[list[tuple[float, str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append((time.monotonic(), self.headers.get("webhook-id", "")))
        if len(self.seen) == 1:
            status, data, extra = 429, b'{"message":"Too Many Requests"}', {"Retry-After": "3"}
        else:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            answer = urllib3.PoolManager().request(
                "POST", self.upstream, body=body, headers=headers
            )
            status, data, extra = answer.status, answer.data, {}
        self.send_response(status)
        for name, value in {"content-type": "application/json", **extra}.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_python_example_honours_retry_after(
    served: LocalApiServer, adapter: Adapter, piriod: Any
) -> None:
    # given a proxy in front of the adapter that throttles the first attempt, asking for 3 s
    # (longer than the example's own first back-off, at most 2 s)
    class Throttle(_ThrottleOnce):
        upstream = f"{served.url}/v1/usages"
        seen: ClassVar[list[tuple[float, str]]] = []

    handler = Throttle
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        # when the guide's Python example sends through it
        output = run(
            "python",
            snippets()["python"],
            {
                "PIRIOD_WEBHOOK_URL": f"http://127.0.0.1:{proxy.server_address[1]}/v1/usages",
                "PIRIOD_SIGNING_SECRET": adapter.secret,
            },
        )
    finally:
        proxy.shutdown()
        proxy.server_close()
    # then it waited at least as long as Retry-After said, sent the same delivery again (same
    # webhook-id, signed anew) and got 202 with its record posted once
    (first, first_id), (second, second_id) = handler.seen
    assert second - first >= 3.0 and first_id == second_id
    assert output.startswith("202 ") and '"status":"posted"' in output, output
    assert len(piriod.usages()) == 1


def windows_moved(body: dict[str, Any], millis: int) -> dict[str, Any]:
    """A 202 whose results' window_start are moved by `millis` (written as the adapter does)."""

    def moved(start: str) -> str:
        when = datetime.fromisoformat(start) + timedelta(milliseconds=millis)
        return when.isoformat().replace("+00:00", "Z")

    return {
        **body,
        "results": [
            {**r, "window_start": moved(r["window_start"])} if "window_start" in r else r
            for r in body["results"]
        ],
    }


def ids_apart(body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[int]]:
    """A 202's results without their usage ids, and the ids in order."""
    results = [{k: v for k, v in r.items() if k != "usage_id"} for r in body["results"]]
    return results, sorted(r["usage_id"] for r in body["results"])


def _post(server: LocalApiServer, event: dict[str, Any]) -> tuple[int, Any]:
    headers = {k: v for k, v in event["headers"].items() if k != "content-length"}
    response = urllib3.PoolManager().request(
        "POST", server.url + event["rawPath"], body=event["body"].encode(), headers=headers
    )
    return response.status, json.loads(response.data)


def test_the_example_answers_are_the_adapters_own(
    served: LocalApiServer,
    with_sources: Adapter,
    piriod: Any,
    dead_endpoint: str,
) -> None:
    # given the guide's examples, and a stand-in where one line is not metered
    shown = examples()
    piriod.set_unmetered_lines(UNMETERED_LINE)
    answers: dict[str, tuple[int, Any]] = {}

    def native(body: str, **sign: Any) -> dict[str, Any]:
        event = http_event(
            "POST", "/v1/usages", body.encode(), {"content-type": "application/json"}
        )
        return sign_event(event, **sign)

    def corrections(body: str) -> dict[str, Any]:
        event = http_event(
            "POST", "/v1/corrections", body.encode(), {"content-type": "application/json"}
        )
        return sign_event(event)

    def source(name: str, body: str) -> dict[str, Any]:
        path = f"/v1/sources/{name}/usages"
        return sign_event(
            http_event("POST", path, body.encode(), {"content-type": "application/json"})
        )

    # when each request is sent as the guide says
    batch = shown["batch"][0]
    answers["batch"] = _post(served, native(batch, message_id="msg_guide_batch"))
    answers["batch-again"] = _post(served, native(batch, message_id="msg_guide_batch"))
    answers["invalid"] = _post(served, native(shown["invalid"][0]))
    other = "whsec_" + "b3RoZXItc2VjcmV0LW5vdC10aGUtYWRhcHRlcnM="
    answers["bad-signature"] = _post(served, native(batch, secret=other))
    payload = (ROOT / "docs" / "examples" / "acme-storage.json").read_text()
    answers["source"] = _post(served, source("acme-storage", payload))
    answers["source-filtered"] = _post(served, source("ci-minutes", shown["source-filtered"][0]))
    counted = json.loads(shown["source-aggregated"][0])  # moved to the last minutes
    shift = (int(time.time()) // 60 - 3) * 60_000 - min(r["at"] for r in counted["requests"])
    shift -= shift % 60_000  # whole minutes: each event stays in its window
    for request in counted["requests"]:
        request["at"] += shift
    answers["source-aggregated"] = _post(served, source("api-requests", json.dumps(counted)))
    correction = shown["correction"][0]
    answers["correction"] = _post(served, corrections(correction))
    answers["correction-again"] = _post(served, corrections(correction))
    with_sources.fresh_runtime(
        PIRIOD_API_URL=dead_endpoint,
        REPLAY_QUEUE_URL=with_sources.resources.replay_queue_url + "-gone",
    )
    answers["stores-down"] = _post(served, native(shown["stores-down"][0]))

    # then each answer is the one the guide shows, status and body
    status_of = {
        "batch": 202,
        "batch-again": 202,
        "invalid": 422,
        "bad-signature": 401,
        "source": 202,
        "source-filtered": 202,
        "source-aggregated": 202,
        "correction": 202,
        "correction-again": 202,
        "stores-down": 503,
    }
    assert sorted(shown) == sorted(status_of)
    for name, (status, body) in answers.items():
        documented: Any = json.loads(shown[name][-1])
        answered: Any = body
        if name == "source":  # its two records are posted concurrently: ids in either order
            documented, answered = ids_apart(documented), ids_apart(body)
        if name == "source-aggregated":  # its windows moved with its events
            answered = windows_moved(body, -shift)
        assert (status, answered) == (status_of[name], documented), (
            f"{name}: the adapter answered {status} {json.dumps(body)}"
        )
    # and the statuses are the ones the guide names in each example's title
    text = GUIDE.read_text()
    for name, status in status_of.items():
        title = text[text.index(f"<!-- example: {name} -->") :].split("\n")[1]
        assert f"`{status}`" in title, (name, title)
