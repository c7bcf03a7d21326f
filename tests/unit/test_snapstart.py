"""SnapStart's runtime hooks, with a stand-in for the runtime's `snapshot_restore_py`."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.unit.test_settings import REQUIRED


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Callable[[], None]]]:
    registered: dict[str, Callable[[], None]] = {}
    module: Any = types.ModuleType("snapshot_restore_py")
    module.register_before_snapshot = lambda f: registered.__setitem__("before", f)
    module.register_after_restore = lambda f: registered.__setitem__("after", f)
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", module)
    for name, value in {**REQUIRED, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    from piriod_adapter.runtime import reset_runtime
    from piriod_adapter.snapstart import register

    reset_runtime()
    register()
    yield registered
    reset_runtime()


def test_before_the_snapshot_clients_are_made_and_no_secret_is_read(
    hooks: dict[str, Callable[[], None]],
) -> None:
    from piriod_adapter.runtime import get_runtime

    # when the runtime takes its snapshot
    hooks["before"]()
    # then settings, AWS clients, the HTTP pool and the submit path exist, and no secret
    runtime = get_runtime()
    made = set(vars(runtime))
    assert {"settings", "sqs", "dynamodb", "secretsmanager", "http", "submitter"} <= made
    assert "secrets" not in made or runtime.secrets._cache == {}


def test_after_a_restore_cached_secrets_and_connections_are_dropped(
    hooks: dict[str, Callable[[], None]],
) -> None:
    from piriod_adapter.runtime import get_runtime

    # given a copy that cached a secret and holds a connection pool
    runtime = get_runtime()
    hooks["before"]()
    runtime.secrets._cache["id"] = (0.0, "a secret")
    pool = runtime.http.connection_from_url("http://127.0.0.1:9")
    assert runtime.http.pools
    # when it is restored
    hooks["after"]()
    # then the secret will be read again and the old connections are gone
    assert runtime.secrets._cache == {}
    assert not runtime.http.pools and pool is not None
