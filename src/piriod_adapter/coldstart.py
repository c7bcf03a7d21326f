"""Python's cyclic garbage collector, held back for a cold start.

A cold start makes about a hundred thousand objects that live as long as the container
(modules, classes, pydantic's validators, botocore's models and clients) and next to no
garbage: about 400 unreachable objects once a cold start has answered (`make bench`'s
delivery). The collector would walk the young ones every 2,000 allocations: 38 collections,
about 20 ms of a cold start, for nothing. So importing any handler (handlers/__init__.py)
raises the first generation's threshold to HELD_THRESHOLD, and the function's first
invocation, once it has answered or raised, moves everything made so far to the permanent
generation (`gc.freeze`: no later collection walks it again, which warm invocations gain too)
and puts the thresholds back. The few cyclic leftovers of the cold start and of that first
call are frozen with the rest, and kept: once per container, and fewer than HELD_THRESHOLD
objects (the young generation is still collected whenever it reaches that many).

The threshold is raised, not the collector disabled: a process that imports a handler and
never calls it (a test, a tool) still collects, every HELD_THRESHOLD allocations.
"""

from __future__ import annotations

import functools
import gc
import threading
from collections.abc import Callable
from typing import TypeVar

HELD_THRESHOLD = 500_000  # a cold start allocates about 100,000 lasting objects

F = TypeVar("F", bound=Callable[..., object])

_held: tuple[int, int, int] | None = None  # the thresholds to put back
_lock = threading.Lock()  # a local server's threads may end their first calls together


def hold() -> None:
    """Raise the young generation's threshold until `release`."""
    global _held
    with _lock:
        if _held is not None:
            return
        _held = gc.get_threshold()
        gc.set_threshold(max(HELD_THRESHOLD, _held[0]), _held[1], _held[2])


def release() -> None:
    """Freeze what the cold start made and put the thresholds back (once; then nothing)."""
    global _held
    with _lock:
        if _held is None:
            return
        gc.freeze()
        gc.set_threshold(*_held)
        _held = None


def releases_after_call(handler: F) -> F:
    """A handler after whose first call, answered or raised, the collector is released."""

    @functools.wraps(handler)
    def released(*args: object, **kwargs: object) -> object:
        try:
            return handler(*args, **kwargs)
        finally:
            release()

    return released  # type: ignore[return-value]
