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


def _compile(package: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(COMPILE), str(package)], capture_output=True, text=True, check=False
    )


def test_every_function_is_built_by_a_target_of_the_makefile() -> None:
    # given the template's functions and the Makefile's targets
    resources = load_template()["Resources"]
    functions = [k for k, v in resources.items() if v["Type"] == "AWS::Serverless::Function"]
    makefile = (ROOT / "src" / "Makefile").read_text()
    targets = set(re.findall(r"build-(\w+)", makefile))
    # then each function is built by the Makefile, and has its target
    assert functions
    for name in functions:
        assert resources[name]["Metadata"]["BuildMethod"] == "makefile", name
        assert name in targets, name


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
