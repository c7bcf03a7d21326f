"""Every signing example in docs/senders.md, run as written (Python, Node.js, shell with
openssl and curl) against the webhook served on a local port: each must get 202 and its
record must reach the Piriod stand-in."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from piriod_devkit.local_api import LocalApiServer
from tests.conftest import Adapter

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "senders.md"
RUNNERS = {"python": [sys.executable, "-c"], "js": ["node", "-e"], "sh": ["sh", "-c"]}
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def snippets() -> dict[str, str]:
    """The guide's runnable examples by language: the blocks that read the webhook URL."""
    found = {
        language: code
        for language, code in FENCE.findall(GUIDE.read_text())
        if "PIRIOD_WEBHOOK_URL" in code and language in RUNNERS
    }
    assert sorted(found) == ["js", "python", "sh"], sorted(found)
    return found


@pytest.fixture
def served(adapter: Adapter) -> Iterator[LocalApiServer]:
    server = LocalApiServer().start()
    yield server
    server.stop()


@pytest.mark.parametrize("language", sorted(RUNNERS))
def test_each_example_in_the_guide_gets_202(
    served: LocalApiServer, adapter: Adapter, piriod: Any, language: str
) -> None:
    # given the guide's example in this language, and the tools it needs on this machine
    code = snippets()[language]
    runner = RUNNERS[language]
    assert shutil.which(runner[0]), f"{runner[0]} is needed to run the guide's {language} example"
    env = {
        **os.environ,
        "PIRIOD_WEBHOOK_URL": f"{served.url}/v1/usages",
        "PIRIOD_SIGNING_SECRET": adapter.secret,
    }
    # when it is run as written
    done = subprocess.run(
        [*runner, code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    # then it printed a 202 with its record posted, and Piriod has that record
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(r"(^|\n)202\b|\b202\n?$", output.strip()), output
    assert '"status":"posted"' in output, output
    assert len(piriod.usages()) == 1 and piriod.violations() == []
