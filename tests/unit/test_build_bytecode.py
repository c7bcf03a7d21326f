"""`sam build` ships bytecode (src/Makefile, src/compile_bytecode.py): every function is built
by the Makefile, and every module of a package gets an unchecked-hash .pyc that Python loads
without compiling (Lambda's /var/task is read-only: whatever is not shipped is compiled on
every cold start)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from piriod_devkit.template import load_template

ROOT = Path(__file__).resolve().parents[2]
COMPILE = ROOT / "src" / "compile_bytecode.py"


def _runtime() -> tuple[int, int]:
    """compile_bytecode.RUNTIME (a build script beside the package, not a module of it)."""
    spec = importlib.util.spec_from_file_location("compile_bytecode", COMPILE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(module.RUNTIME)


def _compile(package: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(COMPILE), str(package)], capture_output=True, text=True, check=False
    )


def _dry_run(function: str) -> str:
    """What `sam build` would run for the function (make's dry run, as SAM calls it)."""
    result = subprocess.run(
        ["make", "-n", "-C", str(ROOT / "src"), f"build-{function}", "ARTIFACTS_DIR=/tmp/p"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_function_is_built_by_the_makefile_for_the_templates_runtime() -> None:
    # given the template's functions, runtime and architecture
    template = load_template()
    resources = template["Resources"]
    functions = [k for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"]
    runtime = template["Globals"]["Function"]["Runtime"]
    (architecture,) = template["Globals"]["Function"]["Architectures"]
    machine = {"x86_64": "x86_64", "arm64": "aarch64"}[architecture]
    assert functions
    assert runtime == "python{}.{}".format(*_runtime())
    for name in functions:
        assert "Runtime" not in resources[name]["Properties"], name
        assert "Architectures" not in resources[name]["Properties"], name
        # then the Makefile builds it, for that Python and that architecture only
        assert resources[name]["Metadata"]["BuildMethod"] == "makefile", name
        commands = _dry_run(name)
        assert f"--python-version {runtime.removeprefix('python')} " in commands
        platforms = re.findall(r"--platform (\S+)", commands)
        assert platforms and all(p.endswith(f"_{machine}") for p in platforms), platforms


def test_the_same_code_builds_the_same_bytes_wherever_it_is_built(tmp_path: Path) -> None:
    # given one package in two directories
    for where in ("one", "two"):
        (tmp_path / where / "pkg").mkdir(parents=True)
        (tmp_path / where / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    # when each is compiled
    for where in ("one", "two"):
        assert _compile(tmp_path / where).returncode == 0
    # then the bytecode is the same, and names /var/task, not the build's directory
    one, two = (
        (tmp_path / w / "pkg" / "__pycache__" / "mod.cpython-313.pyc").read_bytes()
        for w in ("one", "two")
    )
    assert one == two
    assert b"/var/task/pkg/mod.py" in one
    assert str(tmp_path).encode() not in one


def test_only_the_adapters_modules_are_copied(tmp_path: Path) -> None:
    # given a source package with a module, bytecode, a cache and a stray file, and a package
    # that holds an older copy of it
    source = tmp_path / "adapter"
    (source / "__pycache__").mkdir(parents=True)
    (source / "handlers").mkdir()
    (source / "__init__.py").write_text("")
    (source / "handlers" / "hook.py").write_text("X = 1\n")
    (source / "__pycache__" / "gone.cpython-313.pyc").write_bytes(b"old")
    (source / ".DS_Store").write_bytes(b"junk")
    package = tmp_path / "package"
    (package / "adapter").mkdir(parents=True)
    (package / "adapter" / "removed.py").write_text("")
    # when the package is finished with it
    result = subprocess.run(
        [sys.executable, str(COMPILE), str(package), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    # then it holds the modules and their new bytecode, and nothing else
    assert result.returncode == 0, result.stderr
    files = sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file())
    assert files == [
        "adapter/__init__.py",
        "adapter/__pycache__/__init__.cpython-313.pyc",
        "adapter/handlers/__pycache__/hook.cpython-313.pyc",
        "adapter/handlers/hook.py",
    ]


def test_every_module_gets_bytecode_that_no_import_checks(tmp_path: Path) -> None:
    # given a package with a module, a subpackage, and stale bytecode of another Python
    package = tmp_path / "package"
    (package / "pkg" / "sub").mkdir(parents=True)
    (package / "pkg" / "__init__.py").write_text("")
    (package / "pkg" / "sub" / "__init__.py").write_text("")
    (package / "pkg" / "sub" / "mod.py").write_text("VALUE = 41 + 1\n")
    stale = package / "pkg" / "__pycache__" / "old.cpython-312.pyc"
    stale.parent.mkdir()
    stale.write_bytes(b"stale")
    # when it is compiled
    result = _compile(package)
    # then every module has bytecode made by this Python, with the unchecked-hash flags
    # (PEP 552: bit 0 hash-based, bit 1 check_source not set), and the stale file is gone
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    sources = sorted(package.rglob("*.py"))
    assert len(sources) == 3
    for source in sources:
        cached = Path(importlib.util.cache_from_source(str(source)))
        data = cached.read_bytes()
        assert data[:4] == importlib.util.MAGIC_NUMBER, source
        assert int.from_bytes(data[4:8], "little") == 0b01, source
    # and Python loads it without the source being read: a changed source is not seen
    (package / "pkg" / "sub" / "mod.py").write_text("VALUE = 0\n")
    loaded = subprocess.run(
        [sys.executable, "-c", "import pkg.sub.mod as m; print(m.VALUE)"],
        capture_output=True,
        text=True,
        check=False,
        cwd=package,
        env={"PYTHONDONTWRITEBYTECODE": "1", "PATH": ""},
    )
    assert loaded.stdout.strip() == "42", loaded.stderr


def test_a_module_that_does_not_compile_fails_the_build(tmp_path: Path) -> None:
    # given a package with a syntax error
    (tmp_path / "broken.py").write_text("def (:\n")
    # when it is compiled, then the build fails and names the package
    result = _compile(tmp_path)
    assert result.returncode != 0
    assert str(tmp_path) in result.stderr
