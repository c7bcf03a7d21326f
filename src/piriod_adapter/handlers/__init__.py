"""Lambda entry points: decorators plus one call each.

Importing any of them, before anything else is imported:
- holds Python's cyclic garbage collector back until the function's first invocation has
  answered (piriod_adapter/coldstart.py): a cold start makes lasting objects, not garbage;
- tells pydantic not to look for plugins (PYDANTIC_DISABLE_PLUGINS=__all__, unless the
  variable is set already): the search reads the metadata of every installed package, about
  10 ms of a cold start in a virtualenv's worth of packages (`make bench`), for plugins the
  functions do not use. template.yaml sets it too; this holds wherever a handler is run."""

import os

from piriod_adapter import coldstart

coldstart.hold()
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
