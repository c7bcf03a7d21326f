"""Secrets Manager: the Piriod API token and the webhook signing secrets, cached for a while."""

from __future__ import annotations

import contextlib
import contextvars
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from piriod_adapter.signatures import standard_key

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient


class SecretUnavailable(RuntimeError):
    """A secret could not be read or is malformed. The message never contains the secret."""


class SecretStore:
    """Reads secrets through one boto3 client and caches each for `ttl_seconds`."""

    def __init__(
        self,
        client: SecretsManagerClient,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, str]] = {}

    def _fetch(self, secret_id: str) -> str:
        try:
            response = self._client.get_secret_value(SecretId=secret_id)
        except Exception as exc:  # botocore raises many types; all mean "not available now"
            raise SecretUnavailable(
                f"cannot read secret {secret_id!r}: {type(exc).__name__}"
            ) from None
        value = response.get("SecretString")
        if not value:
            raise SecretUnavailable(f"secret {secret_id!r} has no SecretString")
        return value

    def get(self, secret_id: str) -> str:
        """Return the secret string, from the cache while it is younger than the TTL."""
        with self._lock:
            cached = self._cache.get(secret_id)
            now = self._clock()
            if cached is not None and now - cached[0] < self._ttl:
                return cached[1]
            value = self._fetch(secret_id)
            self._cache[secret_id] = (now, value)
            return value

    def prefetch(
        self, secret_ids: Sequence[str], meanwhile: Callable[[], object] | None = None
    ) -> None:
        """Read those of `secret_ids` that are not cached, each in its own thread, while this
        thread does `meanwhile` (work for the CPU: the reads mostly wait for Secrets Manager).
        A cold start then waits for one round trip instead of one per secret, and what it
        makes meanwhile costs it nothing. A secret that cannot be read is left out; the read
        that needs it tries again and answers for it. `meanwhile` runs whatever is cached."""
        with self._lock:
            now = self._clock()
            missing = [
                secret_id
                for secret_id in dict.fromkeys(secret_ids)
                if (cached := self._cache.get(secret_id)) is None or now - cached[0] >= self._ttl
            ]
        if not missing or (len(missing) == 1 and meanwhile is None):
            if meanwhile is not None:
                meanwhile()
            return  # nothing to read, or one read alone: the caller's own read is as quick
        read: dict[str, str] = {}

        def fetch(secret_id: str) -> None:
            with contextlib.suppress(SecretUnavailable):
                read[secret_id] = self._fetch(secret_id)

        # each in the caller's context (contextvars): a span or recorder it has carries over
        readers = [
            threading.Thread(target=contextvars.copy_context().run, args=(fetch, s), daemon=True)
            for s in missing
        ]
        for thread in readers:
            thread.start()
        try:
            if meanwhile is not None:
                meanwhile()
        finally:
            for thread in readers:
                thread.join()
            with self._lock:
                for secret_id, value in read.items():
                    self._cache[secret_id] = (now, value)

    def clear(self) -> None:
        """Forget every cached secret (the next read asks Secrets Manager)."""
        with self._lock:
            self._cache.clear()

    def piriod_token(self, secret_id: str, *, stale: str | None = None) -> str:
        """SecretString is {"api_token": "..."} or the bare token. `stale` is a token Piriod
        refused: it is read again once, unless another thread already replaced it."""
        if stale is not None:
            with self._lock:
                cached = self._cache.get(secret_id)
                if cached is not None and _token(cached[1], secret_id) == stale:
                    del self._cache[secret_id]
        return _token(self.get(secret_id), secret_id)

    def signing_secrets(self, secret_id: str) -> list[str]:
        """SecretString is {"signing_secrets": ["...", ...]} or one bare secret (rotation: list
        several, any of them passes)."""
        secrets = _field(self.get(secret_id), "signing_secrets", secret_id)
        if isinstance(secrets, str):
            secrets = [secrets]
        if (
            not isinstance(secrets, list)
            or not secrets
            or not all(isinstance(s, str) and s.strip() for s in secrets)
        ):
            raise SecretUnavailable(f"secret {secret_id!r} has no usable signing_secrets")
        return [s.strip() for s in secrets]

    def standard_keys(self, secret_id: str) -> list[bytes]:
        """The HMAC keys of Standard Webhooks secrets (whsec_ followed by base64)."""
        try:
            return [standard_key(s) for s in self.signing_secrets(secret_id)]
        except ValueError as exc:
            raise SecretUnavailable(f"secret {secret_id!r}: {exc}") from None


def _token(raw: str, secret_id: str) -> str:
    token = _field(raw, "api_token", secret_id)
    if not isinstance(token, str) or not token.strip():
        raise SecretUnavailable(f"secret {secret_id!r} has no usable api_token")
    return token.strip()


def _field(raw: str, name: str, secret_id: str) -> Any:
    text = raw.strip()
    if not text.startswith("{"):
        return text
    try:
        document = json.loads(text)
    except ValueError:
        raise SecretUnavailable(f"secret {secret_id!r} is not valid JSON") from None
    if not isinstance(document, dict) or name not in document:
        raise SecretUnavailable(f"secret {secret_id!r} has no {name!r} field")
    return document[name]
