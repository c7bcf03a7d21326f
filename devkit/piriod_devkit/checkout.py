"""The checkout the dev kit runs from: `piriod-local` reads the project's own files there
(template.yaml, events/, examples/, env/local.json, openapi.yaml), which an installed package
does not carry. It is the checkout around the current directory, else the one this module is
in (an editable install); a package installed on its own (`pipx install .`) has neither, and
says so in one line."""

from __future__ import annotations

import tomllib
from pathlib import Path

PROJECT = "piriod-usage-adapter"
OUTSIDE = (
    "piriod-local runs from a checkout of piriod-usage-adapter (it reads template.yaml, "
    "events/ and examples/ there): cd into one, and install it there with "
    '`pip install -e ".[local]"` (`pipx install .` installs piriod-adapter only)'
)


class NotACheckout(Exception):
    """Neither the current directory nor this module is in a checkout of the project."""

    def __init__(self) -> None:
        super().__init__(OUTSIDE)


def is_checkout(path: Path) -> bool:
    """A directory holding this project's pyproject.toml and its template.yaml."""
    try:
        project = tomllib.loads((path / "pyproject.toml").read_text())
    except (OSError, ValueError):
        return False
    named = project.get("project", {}).get("name") == PROJECT
    return named and (path / "template.yaml").is_file()


def root() -> Path:
    """The checkout: around the current directory, else this module's (raises
    NotACheckout)."""
    here = Path.cwd()
    for base in (here, *here.parents):
        if is_checkout(base):
            return base
    own = Path(__file__).resolve().parents[2]
    if is_checkout(own):
        return own
    raise NotACheckout


def path(*parts: str) -> Path:
    """A file or directory of the checkout."""
    return root().joinpath(*parts)
