"""Compile every module of a built function package to bytecode (src/Makefile's last step).

    python3.13 compile_bytecode.py PACKAGE_DIR

Lambda's /var/task is read-only: Python cannot write the bytecode it compiles, so a package
without it compiles each module it imports again on every cold start. The files are checked by
nothing at import (PEP 552's unchecked hash): a zip keeps file times only to two seconds, and
a timestamp check that failed would compile again, silently. A package is built whole, never
edited in place, so its bytecode cannot go stale. Must run on the runtime's Python (3.13)."""

from __future__ import annotations

import compileall
import py_compile
import shutil
import sys
from pathlib import Path

RUNTIME = (3, 13)


def compile_package(root: Path) -> None:
    if sys.version_info[:2] != RUNTIME:
        raise SystemExit(f"bytecode must be made by Python {RUNTIME[0]}.{RUNTIME[1]}")
    for cache in sorted(root.rglob("__pycache__")):  # stale, or another Python's
        shutil.rmtree(cache)
    compiled = compileall.compile_dir(
        root,
        quiet=1,
        workers=0,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    if not compiled:
        raise SystemExit(f"some modules under {root} did not compile")


if __name__ == "__main__":
    compile_package(Path(sys.argv[1]))
