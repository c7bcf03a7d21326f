"""Secret parsing and bounded caching, with an in-process fake of the Secrets Manager client."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from piriod_adapter.secrets import SecretStore, SecretUnavailable


class FakeSecretsManager:
    def __init__(self, value: str) -> None:
        self.value = value
        self.calls = 0

    def get_secret_value(self, SecretId: str) -> dict[str, Any]:
        self.calls += 1
        if self.value == "!error":
            raise ConnectionError("endpoint down")
        return {"SecretString": self.value}


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("raw", ['{"api_token": "tok"}', "tok", " tok\n"])
def test_token_as_json_or_bare(raw: str) -> None:
    assert SecretStore(FakeSecretsManager(raw), 300).piriod_token("id") == "tok"  # type: ignore[arg-type]


def test_signing_secrets_as_list_or_bare() -> None:
    listed = json.dumps({"signing_secrets": ["whsec_YQ==", "whsec_Yg=="]})
    assert len(SecretStore(FakeSecretsManager(listed), 300).standard_keys("id")) == 2  # type: ignore[arg-type]
    assert len(SecretStore(FakeSecretsManager("whsec_YQ=="), 300).standard_keys("id")) == 1  # type: ignore[arg-type]


def test_cache_is_bounded_in_time() -> None:
    # given a cached token
    fake, clock = FakeSecretsManager("tok"), Clock()
    store = SecretStore(fake, 300, clock=clock)  # type: ignore[arg-type]
    store.piriod_token("id")
    # when read again within and after the TTL
    clock.now = 299
    store.piriod_token("id")
    calls_within = fake.calls
    clock.now = 301
    store.piriod_token("id")
    # then only the expired read reaches Secrets Manager
    assert (calls_within, fake.calls) == (1, 2)


def test_stale_token_forces_one_reread_only() -> None:
    # given a cached token that Piriod refused, and the secret rotated
    fake = FakeSecretsManager("old")
    store = SecretStore(fake, 300)  # type: ignore[arg-type]
    store.piriod_token("id")
    fake.value = "new"
    # when several workers report the same stale token
    tokens = [store.piriod_token("id", stale="old") for _ in range(5)]
    # then it was read again once and all got the new token
    assert tokens == ["new"] * 5 and fake.calls == 2


@pytest.mark.parametrize("raw", ["!error", '{"other": 1}', "{not json", '{"api_token": ""}'])
def test_unusable_token_secret_raises_without_the_value(raw: str) -> None:
    with pytest.raises(SecretUnavailable) as err:
        SecretStore(FakeSecretsManager(raw), 300).piriod_token("the-id")  # type: ignore[arg-type]
    assert "the-id" in str(err.value) and "not json" not in str(err.value)


class SlowSecretsManager:
    """Each read takes `seconds`; records how many were in flight at once."""

    def __init__(self, values: dict[str, str], seconds: float = 0.2) -> None:
        import threading

        self.values = values
        self.seconds = seconds
        self.in_flight = 0
        self.most = 0
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def get_secret_value(self, SecretId: str) -> dict[str, Any]:
        import time

        with self.lock:
            self.calls.append(SecretId)
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        time.sleep(self.seconds)
        with self.lock:
            self.in_flight -= 1
        if SecretId not in self.values:
            raise ConnectionError("no such secret")
        return {"SecretString": self.values[SecretId]}


def test_prefetch_reads_uncached_secrets_side_by_side_and_caches_them() -> None:
    # given two secrets, neither cached
    client = SlowSecretsManager({"hook": "whsec_YQ==", "token": '{"api_token": "tok"}'})
    store = SecretStore(client, 300)  # type: ignore[arg-type]
    # when both are prefetched
    store.prefetch(["hook", "token"])
    # then they were read at the same time, and later reads come from the cache
    assert client.most == 2 and sorted(client.calls) == ["hook", "token"]
    assert store.piriod_token("token") == "tok" and len(store.standard_keys("hook")) == 1
    assert len(client.calls) == 2


def test_prefetch_leaves_a_failure_to_the_read_that_needs_it() -> None:
    # given a token secret that cannot be read
    client = SlowSecretsManager({"hook": "whsec_YQ=="}, seconds=0)
    store = SecretStore(client, 300)  # type: ignore[arg-type]
    # when both are prefetched, then nothing is raised and the readable one is cached
    store.prefetch(["hook", "token"])
    assert len(store.standard_keys("hook")) == 1 and client.calls.count("hook") == 1
    # and the token's own read tries again and fails as it always did
    with pytest.raises(SecretUnavailable, match="token"):
        store.piriod_token("token")
    assert client.calls.count("token") == 2


def test_prefetch_reads_while_this_thread_does_its_meanwhile() -> None:
    # given one secret not cached, and a read that waits until the caller's work is done
    client = SlowSecretsManager({"hook": "whsec_YQ==", "token": "tok"}, seconds=0)
    store = SecretStore(client, 300)  # type: ignore[arg-type]
    store.piriod_token("token")
    done = threading.Event()
    real_fetch = store._fetch

    def fetch_after_meanwhile(secret_id: str) -> str:
        assert done.wait(timeout=5), "read before the caller's work was done"
        return real_fetch(secret_id)

    store._fetch = fetch_after_meanwhile  # type: ignore[method-assign]
    # when it is prefetched with work to do meanwhile
    store.prefetch(["hook", "token"], meanwhile=done.set)
    # then the work ran, the read waited for it in its own thread, and the result is cached
    assert done.is_set() and client.calls == ["token", "hook"]
    assert len(store.standard_keys("hook")) == 1 and client.calls == ["token", "hook"]


def test_prefetch_does_its_meanwhile_when_everything_is_cached() -> None:
    client = SlowSecretsManager({"hook": "whsec_YQ==", "token": "tok"}, seconds=0)
    store = SecretStore(client, 300)  # type: ignore[arg-type]
    store.prefetch(["hook", "token"])
    ran: list[bool] = []
    store.prefetch(["hook", "token"], meanwhile=lambda: ran.append(True))
    assert ran == [True] and sorted(client.calls) == ["hook", "token"]


def test_prefetch_does_nothing_when_at_most_one_is_missing() -> None:
    client = SlowSecretsManager({"hook": "whsec_YQ==", "token": "tok"}, seconds=0)
    store = SecretStore(client, 300)  # type: ignore[arg-type]
    store.piriod_token("token")
    store.prefetch(["hook", "token"])  # one missing: the caller's own read is as quick
    assert client.calls == ["token"]
