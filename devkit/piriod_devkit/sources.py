"""Third-party sources, locally: the example profiles (examples/sources.json), local secrets
for them, their SSM parameter on moto, and signing a source's sample event with its scheme.

Signatures are made here independently of the adapter's own verifiers (plain hmac/hashlib),
so that a sample signed by this tool is a test of the adapter, not of itself.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from piriod_devkit import checkout
from piriod_devkit.aws import client


def __getattr__(name: str) -> Path:
    """EXAMPLES: the checkout's examples/sources.json (looked up when asked for)."""
    if name == "EXAMPLES":
        return examples_path()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def examples_path() -> Path:
    return checkout.path("examples", "sources.json")


# Local-only secrets for the example profiles, by their secret_id. Not real secrets.
LOCAL_SOURCE_SECRETS: dict[str, str] = {
    "piriod/sources/acme-storage": "whsec_local_acme_storage_stripe_secret",
    "piriod/sources/ci-minutes": "local ci-minutes hmac secret",
    "piriod/sources/fleet-telemetry": "whsec_"
    + base64.b64encode(b"local-fleet-telemetry-key").decode(),
    "piriod/sources/api-requests": "local api-requests hmac secret",
    "piriod/sources/egress-bytes": "whsec_" + base64.b64encode(b"local-egress-bytes-key").decode(),
}


def example_document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(examples_path().read_text())
    return document


def source_of(event: dict[str, Any]) -> str | None:
    """The source name of a /v1/sources/{source}/usages event, or None."""
    parts = str(event.get("rawPath", "")).strip("/").split("/")
    if len(parts) == 4 and parts[:2] == ["v1", "sources"] and parts[3] == "usages":
        return parts[2]
    return None


def provision_sources(
    endpoint: str,
    parameter: str,
    document: dict[str, Any] | None = None,
    secrets: dict[str, str] | None = None,
) -> str:
    """Put the profile document in an SSM String parameter and each profile's secret in
    Secrets Manager (created, or updated if it exists); return SOURCES_CONFIG for it."""
    document = example_document() if document is None else document
    secrets = LOCAL_SOURCE_SECRETS if secrets is None else secrets
    manager = client("secretsmanager", endpoint)
    for secret_id, value in secrets.items():
        try:
            manager.create_secret(Name=secret_id, SecretString=value)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceExistsException":
                raise
            manager.put_secret_value(SecretId=secret_id, SecretString=value)
    put_sources(endpoint, parameter, document)
    return f"ssm:{parameter}"


def put_sources(endpoint: str, parameter: str, document: dict[str, Any] | str) -> None:
    """Write (or overwrite) the profile document's SSM parameter."""
    text = document if isinstance(document, str) else json.dumps(document, indent=2)
    client("ssm", endpoint).put_parameter(Name=parameter, Value=text, Type="String", Overwrite=True)


def _hex(key: bytes, content: bytes) -> str:
    return hmac.new(key, content, hashlib.sha256).hexdigest()


def sign_source(
    event: dict[str, Any],
    profile: dict[str, Any],
    secret: str,
    *,
    timestamp: int | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    """A copy of a source's event signed now (or at `timestamp`) the way its profile says."""
    signed = copy.deepcopy(event)
    headers = signed.setdefault("headers", {})
    body = (
        base64.b64decode(signed["body"])
        if signed.get("isBase64Encoded")
        else str(signed.get("body") or "").encode()
    )
    now = int(time.time()) if timestamp is None else timestamp
    signature = profile["signature"]
    scheme = signature["scheme"]
    if scheme == "stripe":
        headers["stripe-signature"] = (
            f"t={now},v1={_hex(secret.encode(), f'{now}.'.encode() + body)}"
        )
    elif scheme == "hmac-sha256-hex":
        stamp = signature.get("timestamp_header")
        content = f"{now}.".encode() + body if stamp else body
        headers[signature["header"].lower()] = "sha256=" + _hex(secret.encode(), content)
        if stamp:
            headers[stamp.lower()] = str(now)
    else:  # standard-webhooks
        key = base64.b64decode(secret.removeprefix("whsec_"))
        webhook_id = message_id or headers.get("webhook-id") or f"msg_{uuid.uuid4().hex}"
        digest = hmac.new(key, f"{webhook_id}.{now}.".encode() + body, hashlib.sha256).digest()
        headers["webhook-id"] = webhook_id
        headers["webhook-timestamp"] = str(now)
        headers["webhook-signature"] = "v1," + base64.b64encode(digest).decode()
    return signed
