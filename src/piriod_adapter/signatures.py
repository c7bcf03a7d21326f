"""Webhook signature schemes: pure functions of (headers, raw body, secrets, now).

- Standard Webhooks (https://www.standardwebhooks.com/): the native route, and sources that
  use `standard-webhooks`;
- `stripe`: `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`;
- `hmac-sha256-hex`: GitHub-style `sha256=<hex>` (or bare hex) of the raw body, optionally
  with a timestamp header signed as `<timestamp>.<raw body>`.

Every scheme tries every offered signature against every active secret (rotation) with a
constant-time compare and no early exit, and checks timestamps within a tolerance both ways.
Header names are lower case. A failure raises SignatureError, whose message names the header
but never echoes a signature or a secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

TOLERANCE_SECONDS = 300
# A prefix, not a secret.
SECRET_PREFIX = "whsec_"  # noqa: S105  # nosec B105
MAX_ID_LENGTH = 4096  # a webhook-id this long still works: long keys are hashed to fit
MAX_TIMESTAMP_DIGITS = 12
MAX_SIGNATURES = 32  # signatures looked at in one header (rotation needs two or three)
MAX_SIGNATURE_HEADER = 8192


class SignatureError(Exception):
    """The delivery is not authentic: answer 401, post and store nothing."""


def standard_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64 after `whsec_` (raises ValueError)."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("signing secret must start with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        raise ValueError("signing secret is not valid base64 after 'whsec_'") from None
    if not key:
        raise ValueError("signing secret is empty")
    return key


def sign_standard(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    content = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def sign_stripe(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def sign_hmac_hex(secret: str, body: bytes, timestamp: int | None = None) -> str:
    content = body if timestamp is None else f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), content, hashlib.sha256).hexdigest()


def _timestamp(text: str, header: str, now: float, tolerance: int) -> int:
    text = text.strip()
    if not text or not text.isascii() or not text.isdigit():
        raise SignatureError(f"{header} must be Unix seconds")
    if len(text) > MAX_TIMESTAMP_DIGITS:
        raise SignatureError(f"{header} is not a plausible Unix time")
    timestamp = int(text)
    if abs(int(now) - timestamp) > tolerance:
        raise SignatureError(f"{header} is more than {tolerance} seconds from now")
    return timestamp


def _any_match(expected: Sequence[bytes], offered: Sequence[bytes]) -> bool:
    matched = False
    for mine in expected:
        for theirs in offered:
            matched |= hmac.compare_digest(mine, theirs)  # every pair, no early exit
    return matched


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name, "")
    if len(value) > MAX_SIGNATURE_HEADER:
        raise SignatureError(f"{name} header is too long")
    return value


def verify_standard(
    headers: Mapping[str, str],
    body: bytes,
    keys: Sequence[bytes],
    now: float,
    tolerance: int = TOLERANCE_SECONDS,
) -> str:
    """Check a Standard Webhooks delivery; return its webhook-id."""
    message_id = _header(headers, "webhook-id").strip()
    timestamp_text = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    if not message_id or not timestamp_text.strip() or not signatures.strip():
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if len(message_id) > MAX_ID_LENGTH:
        raise SignatureError(f"webhook-id is longer than {MAX_ID_LENGTH} characters")
    if not message_id.isprintable():
        raise SignatureError("webhook-id must be printable text")
    try:
        message_id.encode("utf-8")
    except UnicodeEncodeError:
        raise SignatureError("webhook-id must be UTF-8 text") from None
    timestamp = _timestamp(timestamp_text, "webhook-timestamp", now, tolerance)
    offered = [
        part.encode("ascii", "replace")
        for part in signatures.split(" ")[:MAX_SIGNATURES]
        if part.startswith("v1,")
    ]
    expected = [sign_standard(key, message_id, timestamp, body).encode() for key in keys]
    if not _any_match(expected, offered):
        raise SignatureError("no valid v1 signature in webhook-signature for this body")
    return message_id


def _hex_signature(text: str) -> bytes:
    return text.strip().lower().encode("ascii", "replace")


def verify_stripe(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    now: float,
    tolerance: int = TOLERANCE_SECONDS,
) -> None:
    """Check `Stripe-Signature: t=...,v1=...`: HMAC-SHA256 keyed with the secret's UTF-8
    bytes over `<t>.<raw body>`, any v1 against any secret."""
    header = _header(headers, "stripe-signature")
    timestamps, offered = [], []
    for part in header.split(",")[: MAX_SIGNATURES + 1]:
        name, _, value = part.strip().partition("=")
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            offered.append(_hex_signature(value))
    if len(timestamps) != 1 or not offered:
        raise SignatureError("Stripe-Signature must hold one t= and at least one v1=")
    timestamp = _timestamp(timestamps[0], "Stripe-Signature t", now, tolerance)
    expected = [
        sign_stripe(secret, timestamp, body).split("v1=", 1)[1].encode() for secret in secrets
    ]
    if not _any_match(expected, offered):
        raise SignatureError("no valid v1 signature in Stripe-Signature for this body")


def verify_hmac_hex(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    now: float,
    *,
    header: str,
    timestamp_header: str | None = None,
    tolerance: int = TOLERANCE_SECONDS,
) -> None:
    """Check `<header>: sha256=<hex>` (or bare hex) of HMAC-SHA256 keyed with the secret's
    UTF-8 bytes over the raw body, or over `<timestamp>.<raw body>` with a timestamp header."""
    header = header.lower()
    value = _header(headers, header).strip()
    if not value:
        raise SignatureError(f"missing {header} header")
    offered = [_hex_signature(value.removeprefix("sha256="))]
    timestamp = None
    if timestamp_header is not None:
        timestamp_header = timestamp_header.lower()
        timestamp = _timestamp(_header(headers, timestamp_header), timestamp_header, now, tolerance)
    expected = [
        sign_hmac_hex(secret, body, timestamp).removeprefix("sha256=").encode()
        for secret in secrets
    ]
    if not _any_match(expected, offered):
        raise SignatureError(f"no valid signature in {header} for this body")
