"""Signature schemes, in isolation: published vectors, independent implementations, tampering,
tolerance both ways, rotation, and hostile headers."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

import pytest

from piriod_adapter.signatures import (
    SignatureError,
    sign_hmac_hex,
    sign_standard,
    sign_stripe,
    standard_key,
    verify_hmac_hex,
    verify_standard,
    verify_stripe,
)

SECRET = "whsec_" + base64.b64encode(b"unit-test-key").decode()
KEY = standard_key(SECRET)
OTHER = standard_key("whsec_" + base64.b64encode(b"rotated").decode())
NOW = 1_800_000_000
BODY = b'{"a":1}'


def headers(
    body: bytes = BODY, *, key: bytes = KEY, ts: int = NOW, msg: str = "msg_1"
) -> dict[str, str]:
    return {
        "webhook-id": msg,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign_standard(key, msg, ts, body),
    }


# --- Standard Webhooks -------------------------------------------------------------------------


def test_known_vector_from_the_standard_webhooks_spec() -> None:
    # given the example secret, id, timestamp and payload published with the specification
    key = standard_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    # when it is signed
    signature = sign_standard(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    # then it equals the published signature
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_official_standard_webhooks_library_agrees() -> None:
    from datetime import UTC, datetime

    from standardwebhooks.webhooks import Webhook

    # given a delivery signed by the reference implementation
    hook = Webhook(SECRET)
    stamp = datetime.fromtimestamp(NOW, UTC)
    signature = hook.sign("msg_ref", stamp, BODY.decode())
    found = {"webhook-id": "msg_ref", "webhook-timestamp": str(NOW), "webhook-signature": signature}
    # then ours accepts it
    assert verify_standard(found, BODY, [KEY], now=NOW) == "msg_ref"


def test_valid_signature_returns_the_webhook_id() -> None:
    assert verify_standard(headers(), BODY, [KEY], now=NOW) == "msg_1"


@pytest.mark.parametrize("skew", [-300, 300])
def test_tolerance_is_300_seconds_both_ways(skew: int) -> None:
    assert verify_standard(headers(ts=NOW + skew), BODY, [KEY], now=NOW)


@pytest.mark.parametrize("skew", [-301, 301, -360])
def test_outside_tolerance_is_refused(skew: int) -> None:
    with pytest.raises(SignatureError, match="300 seconds"):
        verify_standard(headers(ts=NOW + skew), BODY, [KEY], now=NOW)


def test_any_active_key_may_match() -> None:
    # given two active keys and a delivery signed with the second
    # then it verifies against the pair
    assert verify_standard(headers(key=OTHER), BODY, [KEY, OTHER], now=NOW) == "msg_1"


def test_signature_over_another_id_is_refused() -> None:
    h = headers()
    h["webhook-id"] = "msg_2"
    with pytest.raises(SignatureError):
        verify_standard(h, BODY, [KEY], now=NOW)


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("webhook-timestamp", "9" * 400, "plausible"),
        ("webhook-timestamp", "1e9", "Unix seconds"),
        ("webhook-timestamp", "١٨٠٠٠٠٠٠٠٠", "Unix seconds"),
        ("webhook-id", "m" * 5000, "longer than"),
        ("webhook-id", "msg\x00id", "printable"),
        ("webhook-id", "msg\ud800", "printable"),
        ("webhook-signature", "v1," + "A" * 9000, "too long"),
    ],
)
def test_hostile_headers_are_refused_not_crashed_on(name: str, value: str, reason: str) -> None:
    # given a header of absurd length, digits or characters
    h = headers()
    h[name] = value
    # when it is verified
    # then it is an authentication failure that names the header
    with pytest.raises(SignatureError, match=reason):
        verify_standard(h, BODY, [KEY], now=NOW)


def test_a_two_kibibyte_webhook_id_still_verifies() -> None:
    long_id = "msg_" + "x" * 2048
    assert verify_standard(headers(msg=long_id), BODY, [KEY], now=NOW) == long_id


@pytest.mark.parametrize(
    "secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_***not-base64***", "whsec_"]
)
def test_malformed_secrets_are_rejected(secret: str) -> None:
    with pytest.raises(ValueError, match="secret"):
        standard_key(secret)


# --- Stripe ------------------------------------------------------------------------------------

STRIPE_SECRET = "whsec_stripe_example_secret"


def test_stripe_signature_matches_the_official_library() -> None:
    import stripe

    # given a header signed by ours, and one computed by Stripe's own SDK
    ours = sign_stripe(STRIPE_SECRET, NOW, BODY)
    theirs = stripe.WebhookSignature._compute_signature(f"{NOW}.{BODY.decode()}", STRIPE_SECRET)
    # then they are the same, and Stripe's verifier accepts ours
    assert ours == f"t={NOW},v1={theirs}"
    assert stripe.WebhookSignature.verify_header(BODY.decode(), ours, STRIPE_SECRET, tolerance=None)


def test_stripe_accepts_any_of_several_v1_and_a_rotated_secret() -> None:
    header = sign_stripe("whsec_new", NOW, BODY) + ",v1=" + "0" * 64 + ",v0=ignored"
    verify_stripe({"stripe-signature": header}, BODY, ["whsec_old", "whsec_new"], now=NOW)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h: h.replace("v1=", "v1=0"), "no valid"),
        (lambda h: h.replace(f"t={NOW}", f"t={NOW + 301}"), "seconds from now"),
        (lambda h: h.replace(f"t={NOW}", f"t={NOW - 301}"), "seconds from now"),
        (lambda h: h.split(",", 1)[1], "one t="),
        (lambda h: h + f",t={NOW}", "one t="),
        (lambda h: "", "one t="),
        (lambda h: h.replace(f"t={NOW}", "t=" + "9" * 50), "plausible"),
    ],
)
def test_stripe_refuses_tampering_staleness_and_malformed_headers(
    mutate: Callable[[str], str], reason: str
) -> None:
    header = mutate(sign_stripe(STRIPE_SECRET, NOW, BODY))
    with pytest.raises(SignatureError, match=reason):
        verify_stripe({"stripe-signature": header}, BODY, [STRIPE_SECRET], now=NOW)


def test_stripe_refuses_a_tampered_body_and_a_wrong_secret() -> None:
    header = {"stripe-signature": sign_stripe(STRIPE_SECRET, NOW, BODY)}
    with pytest.raises(SignatureError):
        verify_stripe(header, b'{"a":2}', [STRIPE_SECRET], now=NOW)
    with pytest.raises(SignatureError):
        verify_stripe(header, BODY, ["whsec_wrong"], now=NOW)


def test_stripe_key_is_the_secret_text_not_its_base64() -> None:
    # Stripe secrets also start with whsec_, but are used as UTF-8 bytes, unlike Standard
    # Webhooks secrets, which are base64-decoded after the prefix.
    secret = "whsec_" + base64.b64encode(b"k").decode()
    expected = hmac.new(secret.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign_stripe(secret, NOW, BODY) == f"t={NOW},v1={expected}"


# --- hmac-sha256-hex (GitHub style) ------------------------------------------------------------


def test_hmac_hex_passes_githubs_published_example() -> None:
    # given the example from GitHub's "Validating webhook deliveries"
    secret, body = "It's a Secret to Everybody", b"Hello, World!"
    expected = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    # then both the header form with the prefix and the bare hex verify
    assert sign_hmac_hex(secret, body) == f"sha256={expected}"
    for value in (f"sha256={expected}", expected, expected.upper()):
        verify_hmac_hex(
            {"x-hub-signature-256": value},
            body,
            [secret],
            now=NOW,
            header="X-Hub-Signature-256",
        )


def test_hmac_hex_with_a_timestamp_header_checks_tolerance_both_ways() -> None:
    def check(ts: int) -> None:
        verify_hmac_hex(
            {"x-signature": sign_hmac_hex("s3cret", BODY, NOW), "x-timestamp": str(ts)},
            BODY,
            ["s3cret"],
            now=NOW,
            header="X-Signature",
            timestamp_header="X-Timestamp",
            tolerance=60,
        )

    check(NOW)  # signed over "<timestamp>.<body>"
    for ts in (NOW - 61, NOW + 61):
        with pytest.raises(SignatureError, match="60 seconds"):
            check(ts)


def test_hmac_hex_timestamp_is_part_of_what_is_signed() -> None:
    # given a signature over the body alone while the profile expects a timestamp
    with pytest.raises(SignatureError, match="no valid"):
        verify_hmac_hex(
            {"x-signature": sign_hmac_hex("s3cret", BODY), "x-timestamp": str(NOW)},
            BODY,
            ["s3cret"],
            now=NOW,
            header="X-Signature",
            timestamp_header="X-Timestamp",
        )


def test_hmac_hex_refuses_tampering_wrong_secret_missing_header_and_accepts_rotation() -> None:
    good = {"x-hub-signature-256": sign_hmac_hex("new", BODY)}
    verify_hmac_hex(good, BODY, ["old", "new"], now=NOW, header="X-Hub-Signature-256")
    for h, body, secrets in (
        (good, b"{}", ["new"]),
        (good, BODY, ["old"]),
        ({}, BODY, ["new"]),
        ({"x-hub-signature-256": "sha256=zz"}, BODY, ["new"]),
    ):
        with pytest.raises(SignatureError):
            verify_hmac_hex(h, body, secrets, now=NOW, header="X-Hub-Signature-256")
