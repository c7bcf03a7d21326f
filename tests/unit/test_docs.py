"""Statements in docs/ that follow from files of the repository stay true when those change."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}


def test_sources_md_counts_and_lists_every_example_profile() -> None:
    # given the example profiles
    examples = json.loads((ROOT / "examples" / "sources.json").read_text())["sources"]
    # when docs/sources.md says how many there are, and lists them in its table
    text = (ROOT / "docs" / "sources.md").read_text()
    [said] = re.findall(r"holds\s+(\w+)\s+profiles to copy", text)
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", text, re.MULTILINE)
    # then the count is theirs, and each has its row
    assert NUMBERS[said] == len(examples)
    assert sorted(rows) == sorted(examples)


def test_every_correction_status_is_explained_in_answers_and_corrections() -> None:
    # given the statuses a correction's result can have
    from typing import get_args

    from piriod_adapter.corrections import CorrectionStatus

    statuses = set(get_args(CorrectionStatus))
    # then docs/answers.md's corrections table and docs/corrections.md's each have a row for
    # every one of them, and none for another
    for doc, heading in (
        ("answers.md", "| correction `status` |"),
        ("corrections.md", "| `status` |"),
    ):
        text = (ROOT / "docs" / doc).read_text()
        table = text[text.index(heading) :].split("\n\n")[0].split("\n", 2)[2]  # no header
        rows = re.findall(r"^\| `([a-z_]+)` \|", table, re.MULTILINE)
        assert sorted(rows) == sorted(statuses), (doc, rows)


def test_events_readme_has_a_row_for_every_sample() -> None:
    # given the sample events, and the table of events/README.md
    samples = sorted(p.name for p in (ROOT / "events").glob("*.json"))
    rows = re.findall(
        r"^\| `([a-z0-9-]+\.json)` \|", (ROOT / "events" / "README.md").read_text(), re.MULTILINE
    )
    # then each sample has its row, and each row its sample
    assert sorted(rows) == samples
