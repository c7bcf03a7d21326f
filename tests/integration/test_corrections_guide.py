"""docs/corrections.md, replayed: each of its examples is run, step by step, against the real
webhook handler, FlushFunction and ReplayFunction (moto server and the Piriod stand-in over
loopback, a fresh stack and an empty Piriod per example), and every answer, every Piriod call
and every ledger the example shows must be what the adapter did.

An example starts at `<!-- example: NAME -->` (`<!-- example: NAME, after OTHER -->` runs
OTHER's steps first) and ends at the next example or section. Its steps, in order:

- an ```` ```http ```` block that starts `POST /path`: a sender's request (its headers, a blank
  line, its body), signed as the sender's guide says with the `webhook-id` shown (a source's
  request the way its profile says); ```` ```http unsigned ```` sends it without signature;
- an ```` ```http ```` block that starts `HTTP/1.1 <status>`: the answer to the request before
  it, status and JSON body;
- a ```` ```text ```` block whose first line is `FlushFunction runs:` or `ReplayFunction
  runs:` (one run of it, and what it returned), `Piriod calls:` (each call the adapter made to
  Piriod in the step before), `Piriod holds:` (Piriod's whole ledger) or `DeadLetterQueue
  holds:`;
- a ```` ```console ```` block: an operator command (`$ piriod-adapter ...`) and its output;
- `<!-- piriod: ... -->`, `<!-- down: dynamodb -->` and `<!-- up: dynamodb -->`, anywhere in
  the prose: what the prose says of Piriod (a fault of the stand-in, a line that is not
  metered, or metered again) or of a store.

To write an example from a real run: `CORRECTIONS_GUIDE_RECORD=DIR pytest
tests/integration/test_corrections_guide.py -k NAME` writes what each example did, in the
guide's form, to DIR/NAME.md, and checks nothing.

What is normalised: times (the example's date-times are moved by whole five-minute windows to
just before now, so that its windows are recent and due, and moved back in what is compared),
the signature headers (signed at the time of the run), operator output's message ids, and
FlushFunction's `lag_seconds`. Usage ids are compared as they are: each example starts with
an empty Piriod, whose ids start at 1.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from piriod_devkit.events import http_event, sign_event
from piriod_devkit.sources import provision_sources
from tests.conftest import Adapter
from tests.integration.test_aggregation import drain_replay, run_flush

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "corrections.md"
EXAMPLE = re.compile(r"^<!-- example: ([a-z0-9-]+)(?:, after ([a-z0-9-]+))? -->$", re.MULTILINE)
STEP = re.compile(
    r"<!-- (piriod|down|up): ([^>]*) -->|^```(\w+)([^\n]*)\n(.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z")
# The time the examples are written at (the guide says so); a run moves them to its own.
DOC_NOW = datetime(2026, 11, 30, 10, 15, tzinfo=UTC)
WINDOW_SECONDS = 300  # egress-bytes' windows: a whole number of them keeps each event's window
# The request bodies too long to show whole: built here, shown shortened in the guide.
BUILT: dict[str, Callable[[], str]] = {
    "too-many": lambda: json.dumps(
        {
            "corrections": [
                {"action": "cancel", "key": f"k{n}", "correction_id": f"c{n}"} for n in range(101)
            ]
        }
    ),
}


@dataclass
class Step:
    kind: str  # request, answer, flush, replay, calls, holds, dead-letters, console, piriod, down
    text: str
    options: str = ""


@dataclass
class Example:
    name: str
    after: str | None
    steps: list[Step] = field(default_factory=list)


def examples() -> dict[str, Example]:
    """The guide's examples by name, each with its steps in order."""
    text = GUIDE.read_text()
    marks = list(EXAMPLE.finditer(text))
    found: dict[str, Example] = {}
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        end = following.start() if following else text.find("\n## ", mark.end())
        example = Example(mark.group(1), mark.group(2))
        for step in STEP.finditer(text[mark.end() : end if end >= 0 else len(text)]):
            directive, argument, language, options, code = step.groups()
            if directive:
                example.steps.append(Step(directive, argument.strip()))
            else:
                example.steps.append(_block(language, options.strip(), code))
        assert mark.group(1) not in found, f"two examples named {mark.group(1)}"
        found[mark.group(1)] = example
    return found


LABELS = {
    "FlushFunction runs:": "flush",
    "ReplayFunction runs:": "replay",
    "Piriod calls:": "calls",
    "Piriod holds:": "holds",
    "DeadLetterQueue holds:": "dead-letters",
}


def _block(language: str, options: str, code: str) -> Step:
    first, _, rest = code.partition("\n")
    if language == "http" and first.startswith("POST "):
        return Step("request", code, options)
    if language == "http" and first.startswith("HTTP/1.1 "):
        return Step("answer", code)
    if language == "text" and first in LABELS:
        return Step(LABELS[first], rest.rstrip("\n"))
    if language == "console" and first.startswith("$ piriod-adapter "):
        return Step("console", code.rstrip("\n"))
    return Step("prose", code)  # a body or a snippet the prose shows: not a step


# --- running the steps ---------------------------------------------------------------------


def moved(text: str, seconds: float) -> str:
    """Every UTC date-time in the text moved by `seconds`, written as it was (its fraction
    of a second kept)."""

    def move(match: re.Match[str]) -> str:
        found = match.group(0)
        at = datetime.fromisoformat(found.replace("Z", "+00:00")) + timedelta(seconds=seconds)
        fraction = found[19:-1]
        text = at.strftime("%Y-%m-%dT%H:%M:%S")
        if fraction:
            text += "." + f"{at.microsecond:06d}"[: len(fraction) - 1]
        return text + "Z"

    return INSTANT.sub(move, text)


@dataclass
class Run:
    """One example being replayed: what it did, to compare with what the guide shows."""

    adapter: Adapter
    piriod: Any
    shift: float
    dead_endpoint: str
    name: str = ""
    mark: int = 0  # Piriod's requests before the last step
    answer: tuple[int, Any] | None = None
    shown: list[str] = field(default_factory=list)  # the actual transcript, in guide form
    record: bool = False  # only keep the transcript (to write an example from a real run)

    def back(self, text: str) -> str:
        return moved(text, -self.shift)

    def act(self) -> None:
        self.mark = len(self.piriod.requests)

    # each step returns what the guide should show for it, or None when it shows nothing

    def request(self, step: Step) -> None:
        self.act()
        head, _, body = step.text.partition("\n\n")
        request_line, *header_lines = head.split("\n")
        path = request_line.split()[1]
        headers = dict(line.split(": ", 1) for line in header_lines if line)
        body = BUILT[self.name]() if self.name in BUILT else body.rstrip("\n")
        raw = moved(body, self.shift).encode()
        event = http_event("POST", path, raw, {"content-type": "application/json", **headers})
        if "unsigned" not in step.options.split():
            event = sign_event(event, message_id=headers.get("webhook-id"))
        self.answer = self.adapter.invoke(event)
        self.shown.append(step.text)

    def answered(self, step: Step) -> tuple[Any, Any]:
        assert self.answer is not None, "an answer with no request before it"
        status, body = self.answer
        head, _, documented = step.text.partition("\n\n")
        actual = json.loads(self.back(json.dumps(body)))
        self.shown.append(f"HTTP/1.1 {status}\n\n{json.dumps(actual)}")
        return (int(head.split()[1]), json.loads(documented)), (status, actual)

    def flush(self) -> dict[str, Any]:
        self.act()
        report = {k: v for k, v in run_flush().items() if k != "lag_seconds"}
        self.shown.append("FlushFunction runs:\n" + json.dumps(report))
        return report

    def replay(self) -> str:
        self.act()
        report = drain_replay(self.adapter)
        text = (
            f"{report.received} message(s): {report.deleted} done, {report.failed} left "
            "for a later attempt"
        )
        self.shown.append("ReplayFunction runs:\n" + text)
        return text

    def calls(self) -> str:
        lines = []
        for r in self.piriod.requests[self.mark :]:
            query = f"?{unquote(r['query_string'])}" if r["query_string"] else ""
            line = f"{r['method']} {r['path']}{query}"
            if r["method"] == "POST":
                line += " " + r["body"].decode()
            line += f" → {r['status'] if r['status'] is not None else r['fault']}"
            lines.append(self.back(line))
        text = "\n".join(lines) or "none"
        self.shown.append("Piriod calls:\n" + text)
        return text

    def holds(self) -> str:
        lines = [
            f"id={u['id']} line={u['subscription_line']} date_time={u['date_time']} "
            f"quantity={u['quantity']}"
            for u in self.piriod.usages()
        ]
        text = self.back("\n".join(lines)) or "nothing"
        self.shown.append("Piriod holds:\n" + text)
        return text

    def dead_letters(self) -> str:
        lines = []
        for message in self.adapter.messages("dead_letter"):
            usage, failure = message["usage"], message["failure"]
            lines.append(
                f"line={usage['subscription_line']} date_time={usage['date_time']} "
                f"quantity={usage['quantity']} {failure['kind']}: "
                + json.dumps(failure.get("errors"))
            )
        text = self.back("\n".join(sorted(lines))) or "nothing"
        self.shown.append("DeadLetterQueue holds:\n" + text)
        return text

    def console(self, step: Step) -> tuple[str, str]:
        from piriod_operator.cli import main

        self.act()
        command, *documented = step.text.split("\n")
        argv = shlex.split(command.removeprefix("$ piriod-adapter "))
        out = io.StringIO()
        code = main(argv, out=out, err=out)
        assert code == 0, out.getvalue()
        actual = re.sub(r"^[0-9a-f]{8}  ", "MESSAGE  ", self.back(out.getvalue()), flags=re.M)
        wanted = re.sub(r"^[0-9a-f]{8}  ", "MESSAGE  ", "\n".join(documented), flags=re.M)
        self.shown.append(f"{command}\n{out.getvalue().rstrip()}")
        return wanted.rstrip(), actual.rstrip()

    def given(self, step: Step) -> None:
        words = step.text.split()
        if step.kind == "down":
            assert words == ["dynamodb"], step.text
            self.adapter.fresh_runtime(AWS_ENDPOINT_URL_DYNAMODB=self.dead_endpoint)
        elif step.kind == "up":
            assert words == ["dynamodb"], step.text
            self.adapter.monkeypatch.delenv("AWS_ENDPOINT_URL_DYNAMODB")
            self.adapter.fresh_runtime()
        elif words[0] == "unmetered":
            self.piriod.set_unmetered_lines(*(int(w) for w in words[1:]))
        elif words[0] == "metered":
            self.piriod.set_unmetered_lines()
        elif words[0] == "fault":
            options: dict[str, Any] = {}
            for word in words[2:]:
                name, _, value = word.partition("=")
                options[name] = (
                    tuple(value.split(",")) if name == "methods" else _number_or_text(value)
                )
            self.piriod.add_fault(words[1], **options)
        else:
            raise AssertionError(f"unknown directive: {step.text}")

    def step(self, step: Step) -> None:
        """Run one step; fail, with everything the example did so far, where it differs."""
        documented: Any
        actual: Any
        if step.kind == "request":
            self.request(step)
            return
        if step.kind in ("piriod", "down", "up"):
            self.given(step)
            return
        if step.kind == "prose":
            return
        if step.kind == "answer":
            documented, actual = self.answered(step)
        elif step.kind == "flush":
            documented, actual = json.loads(step.text), self.flush()
        elif step.kind == "console":
            documented, actual = self.console(step)
        else:
            actual = {
                "replay": self.replay,
                "calls": self.calls,
                "holds": self.holds,
                "dead-letters": self.dead_letters,
            }[step.kind]()
            documented = step.text
        if self.record:
            return
        assert actual == documented, (
            f"{self.name}: the guide shows\n{documented}\nthe adapter did\n{actual}\n\n"
            "the example as run so far:\n\n" + "\n\n".join(self.shown)
        )


def _number_or_text(value: str) -> Any:
    return int(value) if value.isdigit() else value


def shift_now() -> float:
    """Seconds that move the guide's time to the last whole window before now."""
    now = int(time.time()) // WINDOW_SECONDS * WINDOW_SECONDS
    return now - DOC_NOW.timestamp()


# --- the tests -------------------------------------------------------------------------------


@pytest.fixture
def with_sources(adapter: Adapter) -> Iterator[Adapter]:
    """The adapter with the example profiles of examples/sources.json (egress-bytes sums
    bytes into five-minute windows; api-requests counts)."""
    parameter = f"/{adapter.resources.table.removesuffix('-idempotency')}/sources"
    adapter.fresh_runtime(SOURCES_CONFIG=provision_sources(adapter.endpoint, parameter))
    yield adapter


ALL = examples()


@pytest.mark.parametrize("name", sorted(ALL))
def test_each_example_is_what_the_adapter_does(
    with_sources: Adapter, piriod: Any, dead_endpoint: str, name: str
) -> None:
    # given the example (and the one it follows), on a fresh stack and an empty Piriod
    chain = [ALL[name]]
    while chain[0].after is not None:
        chain.insert(0, ALL[chain[0].after])
    record = os.environ.get("CORRECTIONS_GUIDE_RECORD")
    run = Run(with_sources, piriod, shift_now(), dead_endpoint, record=bool(record))
    # when each step is run, then each is what the guide shows
    for example in chain:
        run.name = example.name
        for step in example.steps:
            run.step(step)
    if record:  # what the example did, in the guide's form, to write the guide from
        Path(record, f"{name}.md").write_text("\n\n".join(run.shown) + "\n")
        return
    # and Piriod saw nothing outside its contract
    assert piriod.violations() == []


def test_the_guide_has_an_example_per_state_and_answer() -> None:
    names = set(ALL)
    assert {
        "posted-cancel",
        "posted-amend",
        "idless",
        "queued",
        "dead-letter",
        "open-window",
        "flushed-window",
        "duplicate",
        "not-found",
        "rejected",
        "unknown-action",
        "quantity-on-cancel",
        "amend-count-window",
        "missing-correction-id",
        "too-many",
        "not-json",
        "correction-id-twice",
        "unsigned",
        "store-down",
    } <= names, sorted(names)
    # each example sends corrections, and its title names the status of their first answer
    text = GUIDE.read_text()
    for example in ALL.values():
        steps = example.steps
        first = next(
            n
            for n, s in enumerate(steps)
            if s.kind == "request" and s.text.startswith("POST /v1/corrections")
        )
        answer = next(s for s in steps[first:] if s.kind == "answer")
        title = text[text.index(f"<!-- example: {example.name}") :].split("\n")[1]
        assert f"`{answer.text.split()[1]}`" in title, (example.name, title)
    # the shortened bodies say what the test builds
    assert "101" in text[text.index("<!-- example: too-many") :].split("<!-- example:")[1]
    # and the time the examples are written at is the one the guide names
    assert DOC_NOW.strftime("%Y-%m-%d %H:%M UTC") in text


def test_the_examples_are_what_openapi_yaml_describes() -> None:
    # given the sender's contract, and the guide's corrections requests and their answers
    import yaml
    from jsonschema import Draft202012Validator

    from piriod_devkit import openapi

    contract = yaml.safe_load(openapi.OPENAPI_PATH.read_text())
    operation = contract["paths"]["/v1/corrections"]["post"]
    responses = contract["components"]["responses"]

    def validator(ref: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": ref, "components": contract["components"]})

    request = validator(operation["requestBody"]["content"]["application/json"]["schema"]["$ref"])
    checked = set()
    for example in ALL.values():
        for before, step in zip(example.steps, example.steps[1:], strict=False):
            if not (before.kind == "request" and before.text.startswith("POST /v1/corrections")):
                continue
            status, _, body = step.text.partition("\n\n")
            code = status.split()[1]
            # then each answer is one of the route's documented responses, in its schema
            assert code in operation["responses"], (example.name, code)
            name = operation["responses"][code]["$ref"].rsplit("/", 1)[1]
            schema = responses[name]["content"]["application/json"]["schema"]["$ref"]
            validator(schema).validate(json.loads(body))
            # and each request answered 202 is a CorrectionBatch
            if code == "202" and example.name not in BUILT:
                request.validate(json.loads(before.text.partition("\n\n")[2]))
            checked.add(code)
    assert checked == {"202", "400", "401", "422", "503"}, checked


def test_the_sample_correction_amends_the_single_sample_under_sam_local(
    adapter: Adapter, piriod: Any
) -> None:
    # given the committed samples (signed at env/local.json's sample time), run as `sam local
    # invoke WebhookFunction -e events/<file>` runs them
    from piriod_devkit.events import load_event, sample_signature_timestamp

    adapter.fresh_runtime(
        SAMPLE_SIGNATURE_TIMESTAMP=str(sample_signature_timestamp()), AWS_SAM_LOCAL="true"
    )
    correction = load_event("webhook-correction.json")
    # when the correction comes before the record it names, then that key is not found
    status, body = adapter.invoke(correction)
    assert (status, [r["status"] for r in body["results"]]) == (202, ["not_found"]), body
    # when webhook-single.json's record is posted, then the correction amends it: its usage
    # deleted, and one usage of line 101 posted at the new quantity
    assert adapter.invoke(load_event("webhook-single.json"))[0] == 202
    status, body = adapter.invoke(correction)
    [result] = body["results"]
    assert (status, result["status"], result["revision"]) == (202, "applied", 1), body
    assert [(u["id"], u["subscription_line"], u["quantity"]) for u in piriod.usages()] == [
        (result["usage_id"], 101, "1.25")
    ]
    # and the same file again is a duplicate, and changes nothing
    status, body = adapter.invoke(correction)
    assert [(r["status"], r["revision"]) for r in body["results"]] == [("duplicate", 1)]
    assert [u["quantity"] for u in piriod.usages()] == ["1.25"]
