"""openapi.yaml, the sender's contract, stays what the code does: it is the file the models
generate, it is valid OpenAPI 3.1, and every status the code can answer is in it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate

from piriod_devkit import openapi

ROOT = Path(__file__).resolve().parents[2]
BUILDERS = {"Reply", "refusal", "BodyError"}  # every answer's status goes through one of these


def statuses_in(source: str, filename: str = "<code>") -> set[int]:
    """Every status literal passed to an answer builder; a status that is not a literal (other
    than a BodyError's own, passed on) cannot be checked, so it fails the scan."""
    found: set[int] = set()
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name not in BUILDERS:
            continue
        status = node.args[0]
        if isinstance(status, ast.Constant) and isinstance(status.value, int):
            found.add(status.value)
        elif not (
            (isinstance(status, ast.Attribute) and status.attr == "status")
            or (isinstance(status, ast.Name) and status.id == "status")
        ):
            raise AssertionError(f"{filename}:{node.lineno}: status is not a literal")
    return found


def code_statuses() -> set[int]:
    found: set[int] = set()
    for path in sorted((ROOT / "src" / "piriod_adapter").rglob("*.py")):
        found |= statuses_in(path.read_text(), str(path))
    return found


def documented_statuses(document: dict[str, object]) -> set[int]:
    paths = document["paths"]
    assert isinstance(paths, dict)
    return {
        int(status)
        for item in paths.values()
        for operation in item.values()
        for status in operation["responses"]
    }


def test_the_committed_description_is_what_the_models_generate() -> None:
    # given the committed openapi.yaml
    committed = openapi.OPENAPI_PATH.read_text()
    # when it is generated again from the models
    # then nothing differs (if this fails: run `piriod-local openapi` and commit the file)
    assert openapi.render() == committed


def test_the_description_is_valid_openapi_3_1() -> None:
    document = yaml.safe_load(openapi.OPENAPI_PATH.read_text())
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema


def test_every_status_the_code_answers_is_described() -> None:
    # given every status the adapter's code builds an answer with
    in_code = code_statuses()
    assert {202, 400, 401, 404, 413, 422, 500, 503} <= in_code  # the scan reads the code
    # then each is a documented response of the routes
    document = yaml.safe_load(openapi.OPENAPI_PATH.read_text())
    assert in_code - documented_statuses(document) == set()


def test_a_status_added_to_the_code_is_caught() -> None:
    # given code that answers a status the description does not have
    source = 'def f():\n    return refusal(409, "conflict")\n'
    # then the scan finds it, and a computed status is refused rather than skipped
    document = yaml.safe_load(openapi.OPENAPI_PATH.read_text())
    assert statuses_in(source) - documented_statuses(document) == {409}
    with pytest.raises(AssertionError, match="not a literal"):
        statuses_in("Reply(200 + 2, body)")


def test_a_field_added_to_a_model_changes_the_description(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a result model with one more field than the committed description knows
    from pydantic import create_model

    from piriod_adapter import models

    widened = create_model("RecordResult", __base__=models.RecordResult, retry_after=(int, 0))
    monkeypatch.setattr(
        models,
        "Answered",
        create_model("Answered", __base__=models.Answered, results=(list[widened], ...)),
    )
    # when the description is generated again
    # then it differs from the committed file, so the first test here fails
    rendered = openapi.render()
    assert "retry_after" in rendered and rendered != openapi.OPENAPI_PATH.read_text()
