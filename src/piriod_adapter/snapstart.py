"""SnapStart: what each function makes before its snapshot, and what a restored copy makes
again. The hooks exist only in the Lambda runtime (`snapshot_restore_py`); elsewhere
(tests, `sam local`, the local server) registering them does nothing."""

from __future__ import annotations

import random

from piriod_adapter.runtime import get_runtime


def register() -> None:
    """Register the runtime hooks, when the runtime offers them."""
    try:
        from snapshot_restore_py import (  # type: ignore[import-not-found]
            register_after_restore,
            register_before_snapshot,
        )
    except ImportError:
        return
    register_before_snapshot(before_snapshot)
    register_after_restore(after_restore)


def before_snapshot() -> None:
    """Settings, boto3 (imported) and its clients, the HTTP pool: made once, then kept in
    the snapshot. No request is made and no secret is read, so none is in the snapshot."""
    get_runtime().prepare()


def after_restore() -> None:
    """A restored copy shares its parent's memory: anything that must differ between
    copies, or may have gone stale while the snapshot waited, is made again."""
    random.seed()
    get_runtime().refresh()
