"""`make demo` (the README's first command runs `piriod-local demo`): it shows every outcome,
one delivery's request and answer in full, a third-party payload next to what was posted to
Piriod, corrections of a posted record and of events in a flushed window with what Piriod
holds after each, and no raw metric lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo() -> subprocess.CompletedProcess[str]:
    """What `make demo` runs, run once for the tests here."""
    return subprocess.run(
        [sys.executable, "-m", "piriod_devkit.cli", "demo"],
        cwd=ROOT,
        env={**os.environ, "PIRIOD_TOKEN": ""},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_demo_shows_a_delivery_and_a_mapping_without_metric_lines(
    demo: subprocess.CompletedProcess[str],
) -> None:
    # given what `make demo` runs, once its .venv is installed
    assert "$(BIN)/piriod-local demo" in (ROOT / "Makefile").read_text()
    # when it runs
    output = demo.stdout + demo.stderr
    # then it succeeds with every outcome seen
    assert demo.returncode == 0, output
    [seen] = re.findall(r"^Outcomes seen: (.*)$", output, re.MULTILINE)
    outcomes = dict(pair.split("=") for pair in seen.split(", "))
    assert {"duplicate", "posted", "queued", "rejected", "replayed"} <= set(outcomes), seen
    # and one delivery is shown in full: its signature headers, its body as sent, its answer
    assert "webhook-signature: v1," in output and '"quantity": 1.10}' in output, output
    assert 'answer: HTTP 202\n    {"results": [{"index": 0, "status": "posted"' in output
    # and the third-party payload next to what Piriod got for it (bytes in, GB out)
    assert re.search(r"rd_0001 \S+ bytes=1073741824 +─▶ line=3001 \S+ quantity=1.073741824", output)
    # and no metric line (Powertools' EMF JSON) reaches the terminal
    assert '"_aws"' not in output, output
    # and the summary counts every status: each aggregated event (the 5,000, the late one and
    # the samples corrected below), and every HTTP answer
    from piriod_devkit.demo import AGGREGATED_EVENTS, SUMMING_SAMPLES, UNMETERED_LINE

    assert int(outcomes["aggregated"]) == AGGREGATED_EVENTS + 1 + SUMMING_SAMPLES, seen
    [answers] = re.findall(r"^Answers: (.*)$", output, re.MULTILINE)
    assert {"HTTP 202", "HTTP 401", "HTTP 422", "HTTP 400"} <= {
        pair.split("=")[0] for pair in answers.split(", ")
    }, answers
    # and the dead letter is named: its message id, its line and why
    assert re.search(
        rf"^  message [0-9a-f-]{{36}}: line {UNMETERED_LINE}, rejected \(Piriod 400\): "
        r"subscription_line: ",
        output,
        re.MULTILINE,
    ), output


def test_the_demo_shows_corrections_as_the_sender_sees_them(
    demo: subprocess.CompletedProcess[str],
) -> None:
    # given the demo's corrections section
    assert demo.returncode == 0, demo.stdout + demo.stderr
    section = demo.stdout[demo.stdout.index("■ Corrections") :]
    shown = re.split(r"\n■ |\n▶ webhook-bad", section, maxsplit=1)[0]
    # then the amend of a posted record is applied, with the new usage's id, and Piriod holds
    # that usage alone at the new quantity
    applied = re.search(
        r'answered: HTTP 202 \{"results": \[\{"index": 0, "correction_id": "sample-amend-0001", '
        r'"status": "applied", "revision": 1, "usage_id": (\d+)\}\]\}',
        shown,
    )
    assert applied, shown
    assert (
        f"holds for line 101 at 2026-11-01T10:00:00Z: id={applied.group(1)} quantity=1.25\n"
        in shown
    )
    # and the cancel of another is applied, Piriod holds nothing of it, and its retry is a
    # duplicate
    assert '"correction_id": "demo-cancel-1", "status": "applied", "revision": 1}' in shown
    assert "holds for line 101 at 2026-11-01T11:00:00Z: nothing\n" in shown
    assert '"correction_id": "demo-cancel-1", "status": "duplicate", "revision": 1}' in shown
    # and the window flushed with 4 GB: its corrections are pending, the next run restates it
    # once, and Piriod then holds one usage of 1 + 0.5 GB for it
    [window] = re.findall(r"holds for line 4300 at (\S+): id=\d+ quantity=4\n", shown)
    assert len(re.findall(r'"status": "pending", "revision": 1\}', shown)) == 2, shown
    assert "restates the window: 1 restated" in shown
    assert re.search(rf"holds for line 4300 at {window}: id=\d+ quantity=1\.5\n", shown), shown
