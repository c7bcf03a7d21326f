"""The operator's command is packaged apart from the Lambda artifact (template.yaml's
CodeUri, src/), and runs with the runtime dependencies alone."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEV_ONLY = (
    "moto",
    "pytest",
    "hypothesis",
    "yaml",
    "jsonschema",
    "stripe",
    "standardwebhooks",
    "schemathesis",
    "piriod_devkit",
)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_lambda_artifact_carries_no_operator_module() -> None:
    # given the functions' code, src/
    modules = list((ROOT / "src").rglob("*.py"))
    # then no operator module is in it, and none of its modules imports one
    names = {p.name for p in modules}
    assert not names & {"cli.py", "operator.py", "onboarding.py"}
    importers = [
        p for p in modules if any(m.startswith("piriod_operator") for m in imported_modules(p))
    ]
    assert importers == []


def test_the_command_is_installed_from_its_own_package() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["piriod-adapter"] == "piriod_operator.cli:main"
    setuptools = project["tool"]["setuptools"]
    assert setuptools["package-dir"]["piriod_operator"] == "ops/piriod_operator"
    assert "piriod_operator" in setuptools["packages"]


def test_every_command_parses_and_runs_offline_without_a_dev_dependency() -> None:
    # given a Python in which every test, lint and devkit package fails to import
    program = f"""
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {DEV_ONLY!r}:
            raise ImportError("dev-only package imported: " + name)
        return None
sys.meta_path.insert(0, Refuse())
from piriod_operator import cli
cli.build_parser().format_help()
for command in cli.COMMANDS:
    assert command.run and command.arguments
sys.exit(cli.main(["completion", "bash"], out=open("/dev/null", "w")))
"""
    # when the command is imported, its parser built and an offline command run
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    # then none of them was needed
    assert done.returncode == 0, done.stderr
