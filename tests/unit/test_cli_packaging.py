"""The operator's command is packaged apart from the Lambda artifact (template.yaml's
CodeUri, src/), and runs with the runtime dependencies alone."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

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


LOCAL_EXTRA = ("moto", "yaml", "jsonschema")  # pyproject.toml's `local` extra, by import name


@pytest.mark.parametrize("blocked", [LOCAL_EXTRA, ("yaml",)], ids=["local-extra", "yaml"])
@pytest.mark.parametrize(
    "argv", [["--help"], ["openapi", "--check"], ["serve", "--print-env"], ["demo"]]
)
def test_piriod_local_without_the_dev_kit_says_how_to_install_it(
    blocked: tuple[str, ...], argv: list[str]
) -> None:
    # given a Python without the dev kit's dependencies, as after a plain `pip install .`
    program = f"""
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Missing())
from piriod_devkit.cli import main
sys.exit(main({argv!r}))
"""
    # when piriod-local is run
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    # then it says, on one line, that it runs from a checkout and what to install, and exits 2
    assert (done.returncode, done.stderr, done.stdout) == (
        2,
        "piriod-local runs from a checkout of piriod-usage-adapter, with the dev kit installed "
        'there: `pip install -e ".[local]"` (`pipx install .` installs piriod-adapter only)\n',
        "",
    )


def test_piriod_local_does_not_hide_another_missing_module() -> None:
    # given a Python where a runtime dependency (not the dev kit's) is missing
    program = """
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "boto3":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Missing())
from piriod_devkit.cli import main
sys.exit(main(["--help"]))
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    # then it is the defect it is: a traceback naming the module, not the dev kit's hint
    assert done.returncode == 1
    assert "No module named 'boto3'" in done.stderr
    assert "pip install" not in done.stderr


def test_every_directory_python_can_import_is_a_listed_package_with_its_data() -> None:
    # given the packaging config: the packages, where they are, and their data files
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages, data = set(setuptools["packages"]), setuptools["package-data"]

    def directory(package: str) -> Path:
        top, _, rest = package.partition(".")
        return ROOT / str(setuptools["package-dir"][top]) / rest.replace(".", "/")

    # when every directory inside a package that Python would import is looked for (what
    # setuptools warns about: "Package would be ignored")
    importable = {
        f"{package}.{'.'.join(sub.relative_to(directory(package)).parts)}"
        for package in packages
        for sub in directory(package).rglob("*")
        if sub.is_dir()
        and all(part.isidentifier() for part in sub.relative_to(directory(package)).parts)
        and "__pycache__" not in sub.parts
    }
    # then each is listed, and each package's data patterns name files that are there
    assert importable <= packages, sorted(importable - packages)
    for package, patterns in data.items():
        assert package in packages
        for pattern in patterns:
            assert list(directory(package).glob(pattern)), (package, pattern)


def test_make_says_what_the_first_install_is_doing_first() -> None:
    # when make is asked what the install would run (as if pyproject.toml had just changed)
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "-W", "pyproject.toml", ".venv/.installed"],
        cwd=ROOT,
        # as typed in a shell, also when the tests run under `make test`
        env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # then the first thing it does is say so, in one line
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (
        'echo "First run: creating .venv and installing the adapter, the dev kit and the test '
        'tools (about a minute; later runs skip this)"'
    )


def a_checkout(path: Path) -> Path:
    """A directory that looks like a checkout of the project: its pyproject.toml and
    template.yaml."""
    path.mkdir(parents=True)
    (path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (path / "template.yaml").write_text((ROOT / "template.yaml").read_text())
    return path


def test_the_dev_kit_reads_the_checkout_it_is_run_from_else_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from piriod_devkit import checkout

    # given the dev kit installed into a venv's site-packages (no checkout around it)
    installed = tmp_path / "venv/lib/python3.13/site-packages/piriod_devkit/checkout.py"
    monkeypatch.setattr(checkout, "__file__", str(installed))
    # when it is run from a directory inside a checkout, then it reads that checkout
    other = a_checkout(tmp_path / "other")
    (other / "docs").mkdir()
    monkeypatch.chdir(other / "docs")
    assert checkout.root() == other
    # and run from outside any checkout, it says in one line that it runs from one
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.chdir(outside)
    with pytest.raises(checkout.NotACheckout) as refused:
        checkout.root()
    assert "runs from a checkout" in str(refused.value) and "\n" not in str(refused.value)
    # and from this checkout's own module (an editable install), it is this checkout, from
    # anywhere outside another
    monkeypatch.setattr(checkout, "__file__", str(ROOT / "devkit/piriod_devkit/checkout.py"))
    assert checkout.root() == ROOT


def test_a_directory_named_like_a_checkout_of_another_project_is_not_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from piriod_devkit import checkout

    # given a directory with a template.yaml and another project's pyproject.toml
    other = tmp_path / "other"
    other.mkdir()
    (other / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    (other / "template.yaml").write_text("Resources: {}\n")
    # then it is not taken for this project's checkout
    assert not checkout.is_checkout(other)
    assert checkout.is_checkout(ROOT)


def make(*argv: str) -> subprocess.CompletedProcess[str]:
    """make in this checkout, as typed in a shell (also when the tests run under make)."""
    return subprocess.run(
        ["make", "--no-print-directory", *argv],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_make_demo_installs_the_dev_kit_and_not_the_test_tools() -> None:
    # when make is asked what `make demo` would run on a first run
    done = make("-n", "-W", "pyproject.toml", "demo")
    # then it says so first, installs the `local` extra only, then runs the demo
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith('echo "First run:') and "not the test tools" in lines[0]
    installs = [line for line in lines if "pip install" in line]
    assert installs == ['.venv/bin/python -m pip install --quiet -e ".[local]"'], installs
    assert lines[-1] == ".venv/bin/piriod-local demo"
    # and the `local` extra holds none of the test tools
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    tools = ("pytest", "hypothesis", "ruff", "mypy", "bandit", "cfn-lint", "schemathesis")
    assert not [r for r in extras["local"] if r.split("[")[0].split("=")[0].strip() in tools]


def test_make_help_lists_every_target_and_is_what_make_alone_prints() -> None:
    # given the Makefile's phony targets
    makefile = (ROOT / "Makefile").read_text()
    [phony] = [line for line in makefile.splitlines() if line.startswith(".PHONY:")]
    targets = phony.split(":", 1)[1].split()
    # when `make help`, and `make` alone, are run
    helped, alone = make("help"), make()
    # then each target has a line saying what it does, and `make` alone prints the same
    assert helped.returncode == 0 and alone.stdout == helped.stdout, helped.stderr
    listed = {line.split()[1] for line in helped.stdout.splitlines() if line.startswith("  make ")}
    assert listed == set(targets), sorted(set(targets) ^ listed)
    assert helped.stdout.index("make demo") < helped.stdout.index("make test")


def test_piriod_local_prints_its_version() -> None:
    # when the installed piriod-local is asked for its version
    done = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "piriod-local"), "--version"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # then it prints the project's, as piriod-adapter does
    from piriod_operator.cli import version

    assert (done.returncode, done.stdout) == (0, f"piriod-local {version()}\n"), done.stderr
