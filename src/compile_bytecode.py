"""The last step of src/Makefile: copy the adapter's modules into a function's package, then
compile every module of the package to bytecode.

    python3.13 compile_bytecode.py PACKAGE_DIR [SOURCE_PACKAGE ...]

Lambda's /var/task is read-only: Python cannot write the bytecode it compiles, so a package
without it compiles each module it imports again on every cold start. The files are
unchecked-hash bytecode (PEP 552), which no import compares with its source: `sam deploy`
stamps every file of its zip 1980-01-01, so bytecode checked by time would be stale in Lambda
and compiled again, silently. A package is built whole, never edited in place, so its
bytecode cannot go stale. The paths recorded in it are /var/task's, not the build's, so the
same code builds the same zip wherever it is built (SAM names uploads and function versions
by the zip's hash). Must run on the runtime's Python (3.13)."""

from __future__ import annotations

import compileall
import py_compile
import shutil
import sys
from pathlib import Path

RUNTIME = (3, 13)
TASK_ROOT = "/var/task"  # where Lambda unpacks a function's package


def copy_modules(source: Path, package: Path) -> None:
    """The source package's modules only (no bytecode, caches or stray files), in place of
    any copy the package held."""
    target = package / source.name
    shutil.rmtree(target, ignore_errors=True)
    for module in sorted(source.rglob("*.py")):
        if "__pycache__" in module.parts:
            continue
        destination = target / module.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(module, destination)


def compile_package(package: Path) -> None:
    if sys.version_info[:2] != RUNTIME:
        raise SystemExit(f"bytecode must be made by Python {RUNTIME[0]}.{RUNTIME[1]}")
    for cache in sorted(package.rglob("__pycache__")):  # stale, or another Python's
        shutil.rmtree(cache)
    compiled = compileall.compile_dir(
        package,
        quiet=1,
        workers=0,
        stripdir=str(package),
        prependdir=TASK_ROOT,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    if not compiled:
        raise SystemExit(f"some modules under {package} did not compile")


def main(argv: list[str]) -> None:
    package = Path(argv[0])
    for source in argv[1:]:
        copy_modules(Path(source), package)
    compile_package(package)


if __name__ == "__main__":
    main(sys.argv[1:])
