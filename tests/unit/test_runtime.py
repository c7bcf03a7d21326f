"""The container's Runtime: what a first delivery makes while it waits for Secrets Manager."""

from __future__ import annotations

import threading
from typing import Any

from piriod_adapter.runtime import Runtime
from piriod_adapter.settings import load_settings
from tests.unit.test_settings import REQUIRED


class SlowSecretsManager:
    """Answers a read only once the DynamoDB client is made (or after 5 s), noting which."""

    def __init__(self) -> None:
        self.dynamodb_made = threading.Event()
        self.read: dict[str, bool] = {}  # secret id -> the client was made while it waited

    def get_secret_value(self, SecretId: str) -> dict[str, Any]:
        self.read[SecretId] = self.dynamodb_made.wait(timeout=5)
        return {"SecretString": '{"api_token": "tok", "signing_secrets": ["whsec_YQ=="]}'}


class LocalRuntime(Runtime):
    """A Runtime whose AWS clients are made here instead of by botocore."""

    def __init__(self, manager: SlowSecretsManager) -> None:
        super().__init__(load_settings(REQUIRED))
        self.manager = manager
        self.made: list[str] = []

    def _client(self, service: str) -> Any:
        if service == "secretsmanager":
            return self.manager
        self.made.append(service)
        if service == "dynamodb":
            self.manager.dynamodb_made.set()
        return object()


def test_a_first_delivery_makes_its_dynamodb_client_while_its_secrets_are_read() -> None:
    # given a new container, Secrets Manager answering slowly
    manager = SlowSecretsManager()
    runtime = LocalRuntime(manager)
    # when its first native delivery reads its secrets
    runtime.read_secrets_together()
    # then both secrets were read side by side, each answered while the client was made
    settings = runtime.settings
    assert manager.read == {
        settings.webhook_secret_id: True,
        settings.piriod_token_secret_id: True,
    }
    assert runtime.made == ["dynamodb"]
    # and they are cached: the delivery's own reads ask Secrets Manager nothing more
    manager.read.clear()
    runtime.secrets.piriod_token(settings.piriod_token_secret_id)
    assert manager.read == {}


def test_a_warm_container_only_reads_what_is_not_cached() -> None:
    # given a container whose DynamoDB client and secrets are made and read
    manager = SlowSecretsManager()
    runtime = LocalRuntime(manager)
    runtime.read_secrets_together()
    manager.read.clear()
    # when its next delivery reads its secrets
    runtime.read_secrets_together()
    # then nothing is made again, and nothing is read
    assert runtime.made == ["dynamodb"]
    assert manager.read == {}
