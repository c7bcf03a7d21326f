"""The Lambda's runtime dependencies are listed twice, for sam build (src/requirements.txt) and
for pip install . (pyproject.toml): the two lists say the same, boto3 aside (the Lambda
runtime has it; the package does not bundle it)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def normalised(requirement: str) -> str:
    return requirement.replace(" ", "").lower()


def test_requirements_and_pyproject_list_the_same_runtime_dependencies() -> None:
    # given both lists
    listed = [
        line.strip()
        for line in (ROOT / "src" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    # then they name the same packages with the same versions, boto3 aside
    assert sorted(map(normalised, listed)) == sorted(
        normalised(d) for d in declared if not d.startswith("boto3")
    )


def test_opentelemetry_is_pinned_to_one_release() -> None:
    # the SDK, the API, the protobuf definitions and the encoder are released together
    listed = (ROOT / "src" / "requirements.txt").read_text()
    pins = [
        line.split("==")
        for line in listed.splitlines()
        if line.startswith("opentelemetry-") and "semantic-conventions" not in line
    ]
    assert pins and all(len(pin) == 2 for pin in pins)
    assert len({version for _, version in pins}) == 1
