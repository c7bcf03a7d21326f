"""Secret parsing and bounded caching, with an in-process fake of the Secrets Manager client."""

from __future__ import annotations

import json
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
