"""Standard Webhooks signature verification (https://www.standardwebhooks.com/)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TOLERANCE_SECONDS = 300
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)


class SignatureError(Exception):
    """The delivery is not authentic: answer 401, post and store nothing."""


@dataclass(frozen=True)
class SigningKey:
    key: bytes

    @classmethod
    def from_secret(cls, secret: str) -> SigningKey:
        if not secret.startswith(SECRET_PREFIX):
            raise ValueError("signing secret must start with 'whsec_'")
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except binascii.Error:
            raise ValueError("signing secret is not valid base64 after 'whsec_'") from None
        if not key:
            raise ValueError("signing secret is empty")
        return cls(key)

    def sign(self, message_id: str, timestamp: int, body: bytes) -> str:
        content = f"{message_id}.{timestamp}.".encode() + body
        digest = hmac.new(self.key, content, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode()


def verify(headers: Mapping[str, str], body: bytes, keys: Iterable[SigningKey], now: float) -> str:
    """Check a delivery; return its webhook-id. `headers` must have lower-case names."""
    message_id = headers.get("webhook-id", "").strip()
    timestamp_text = headers.get("webhook-timestamp", "").strip()
    signatures = headers.get("webhook-signature", "")
    if not message_id or not timestamp_text or not signatures.strip():
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if not timestamp_text.isascii() or not timestamp_text.isdigit():
        raise SignatureError("webhook-timestamp must be Unix seconds")
    timestamp = int(timestamp_text)
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        raise SignatureError("webhook-timestamp is more than 300 seconds from now")
    offered = [part.encode() for part in signatures.split(" ") if part.startswith("v1,")]
    matched = False
    for key in keys:
        expected = key.sign(message_id, timestamp, body).encode()
        for candidate in offered:
            # Compare every pair in constant time; never stop early on a match.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("no valid v1 signature for this body")
    return message_id
