"""`make demo` (the README's first command runs `piriod-local demo`): it shows every outcome,
one delivery's request and answer in full, a third-party payload next to what was posted to
Piriod, and no raw metric lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_shows_a_delivery_and_a_mapping_without_metric_lines() -> None:
    # given what `make demo` runs, once its .venv is installed
    assert "$(BIN)/piriod-local demo" in (ROOT / "Makefile").read_text()
    # when it runs
    done = subprocess.run(
        [sys.executable, "-m", "piriod_devkit.cli", "demo"],
        cwd=ROOT,
        env={**os.environ, "PIRIOD_TOKEN": ""},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    # then it succeeds with every outcome seen
    assert done.returncode == 0, output
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
    # and the summary counts every status: each aggregated event (the 5,000 and the late one),
    # and every HTTP answer
    from piriod_devkit.demo import AGGREGATED_EVENTS, UNMETERED_LINE

    assert int(outcomes["aggregated"]) == AGGREGATED_EVENTS + 1, seen
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
