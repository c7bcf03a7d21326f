"""moto server with DynamoDB's isolation: the local AWS every test, `serve`, `standins` and
the demo use.

DynamoDB runs a TransactWriteItems all or nothing and isolated from every other request to
its items, and every single-item write is atomic: a reader sees an item before or after it,
never halfway. The adapter relies on it (an event's key and its window's addition commit
together, and a window's close never interleaves with an addition). moto 5.2.5 applies a
transaction's actions one by one on the shared table, in whatever thread serves the request,
and builds an UpdateItem's new item in place (first the key alone, then each SET), so a
concurrent request, a read included, can see half a transaction or half an item: a generation
item without its `state`, for example. Here every DynamoDB request (read or write, parsed,
run and answered) is served under one lock. Also, moto backs a transaction up by deep-copying
the whole table once per action (seconds per delivery once it holds thousands of keys); here
only the items the transaction touches are backed up. Nothing else in moto is changed.

Run: `python -m piriod_devkit.moto_isolated -H 127.0.0.1 -p 4566` (moto.server's options).
"""

from __future__ import annotations

import copy
import sys
import threading
from collections.abc import Callable
from typing import Any, cast


def isolate() -> None:
    """Patch moto's DynamoDB backend in this process (idempotent)."""
    from moto.dynamodb import models
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.table import Table
    from moto.dynamodb.responses import DynamoHandler

    backend = cast(Any, models.DynamoDBBackend)
    if getattr(backend, "_isolated", False):
        return

    class _Copy:
        """`copy` for moto's DynamoDB backend: a Table is not deep-copied."""

        def __getattr__(self, name: str) -> Any:
            return getattr(copy, name)

        @staticmethod
        def deepcopy(value: Any, memo: Any = None) -> Any:
            return value if isinstance(value, Table) else copy.deepcopy(value, memo)

    cast(Any, models).copy = _Copy()
    lock = threading.RLock()
    transact = backend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> Any:
        with lock:
            saved = []
            for action in transact_items:
                _, op = next(iter(action.items()))
                try:
                    table = self.get_table(op["TableName"])
                    attrs = op.get("Item") or op.get("Key") or {}
                    hash_key = DynamoType(attrs[table.hash_key_attr])
                except Exception:  # noqa: S112 (moto's own validation answers it)
                    continue
                saved.append((table, hash_key, copy.deepcopy(table.items.get(hash_key))))
            try:
                return transact(self, transact_items)
            except BaseException:
                for table, hash_key, before in reversed(saved):
                    if before is None:
                        table.items.pop(hash_key, None)
                    else:
                        table.items[hash_key] = before
                raise

    def locked(method: Callable[..., Any]) -> Callable[..., Any]:
        def serve(self: Any, *args: Any, **kwargs: Any) -> Any:
            with lock:
                return method(self, *args, **kwargs)

        return serve

    backend.transact_write_items = transact_write_items
    handler = cast(Any, DynamoHandler)
    handler.call_action = locked(handler.call_action)  # one whole request at a time
    backend._isolated = True


def main(argv: list[str]) -> None:
    from moto.server import main as moto_main

    isolate()
    moto_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
