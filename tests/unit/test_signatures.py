"""Standard Webhooks verification, in isolation."""

from __future__ import annotations

import base64

import pytest

from piriod_adapter.signatures import SignatureError, SigningKey, verify

SECRET = "whsec_" + base64.b64encode(b"unit-test-key").decode()
KEY = SigningKey.from_secret(SECRET)
NOW = 1_800_000_000


def headers(
    body: bytes, *, key: SigningKey = KEY, ts: int = NOW, msg: str = "msg_1"
) -> dict[str, str]:
    return {
        "webhook-id": msg,
        "webhook-timestamp": str(ts),
        "webhook-signature": key.sign(msg, ts, body),
    }


def test_known_vector_from_the_standard_webhooks_spec() -> None:
    # given the example secret, id, timestamp and payload published with the specification
    key = SigningKey.from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    # when it is signed
    signature = key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    # then it equals the published signature
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_valid_signature_returns_the_webhook_id() -> None:
    body = b'{"a":1}'
    assert verify(headers(body), body, [KEY], now=NOW) == "msg_1"


@pytest.mark.parametrize("skew", [-300, 300])
def test_tolerance_is_300_seconds_both_ways(skew: int) -> None:
    body = b"{}"
    assert verify(headers(body, ts=NOW + skew), body, [KEY], now=NOW)


@pytest.mark.parametrize("skew", [-301, 301, -360])
def test_outside_tolerance_is_refused(skew: int) -> None:
    body = b"{}"
    with pytest.raises(SignatureError, match="300 seconds"):
        verify(headers(body, ts=NOW + skew), body, [KEY], now=NOW)


def test_any_active_key_may_match() -> None:
    # given two active keys and a delivery signed with the second
    other = SigningKey(b"rotated")
    body = b"{}"
    # then it verifies against the pair
    assert verify(headers(body, key=other), body, [KEY, other], now=NOW) == "msg_1"


def test_signature_over_another_id_is_refused() -> None:
    body = b"{}"
    h = headers(body)
    h["webhook-id"] = "msg_2"
    with pytest.raises(SignatureError):
        verify(h, body, [KEY], now=NOW)


@pytest.mark.parametrize(
    "secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_***not-base64***", "whsec_"]
)
def test_malformed_secrets_are_rejected(secret: str) -> None:
    with pytest.raises(ValueError, match="secret"):
        SigningKey.from_secret(secret)
