"""Lambda entry points: decorators plus one call each.

Importing any of them holds Python's cyclic garbage collector back until the function's
first invocation has answered (piriod_adapter/coldstart.py): a cold start makes lasting
objects, not garbage."""

from piriod_adapter import coldstart

coldstart.hold()
