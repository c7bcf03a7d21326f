"""Settings: defaults, and failures that name the variable."""

from __future__ import annotations

import pytest

from piriod_adapter.settings import SettingsError, load_settings

REQUIRED = {
    "PIRIOD_WORKSPACE_ID": "acc_1",
    "PIRIOD_TOKEN_SECRET_ID": "tok",
    "WEBHOOK_SECRET_ID": "hook",
    "REPLAY_QUEUE_URL": "https://sqs/replay",
    "DEAD_LETTER_QUEUE_URL": "https://sqs/dlq",
    "IDEMPOTENCY_TABLE": "table",
}


def test_defaults() -> None:
    settings = load_settings(REQUIRED)
    assert settings.api_url == "https://api.piriod.com"
    assert settings.piriod_test_mode is False
    assert settings.idempotency_ttl_days >= 7


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PIRIOD_TEST_MODE", "yes"),
        ("PIRIOD_API_URL", "not a url"),
        ("IDEMPOTENCY_TTL_DAYS", "3"),
        ("POST_CONCURRENCY", "0"),
        ("PIRIOD_WORKSPACE_ID", ""),
    ],
)
def test_malformed_setting_is_named(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({**REQUIRED, name: value})


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_missing_setting_is_named(name: str) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != name}
    with pytest.raises(SettingsError, match=name):
        load_settings(env)


def test_sample_signature_time_counts_only_under_sam_local() -> None:
    # given env/local.json's sample signing time
    sample = {**REQUIRED, "SAMPLE_SIGNATURE_TIMESTAMP": "1795600800"}
    # then a function outside `sam local` checks signatures against now alone
    assert load_settings(sample).signature_clocks(2e9) == (2e9,)
    assert load_settings({**sample, "AWS_SAM_LOCAL": "1"}).signature_clocks(2e9) == (2e9,)
    # and under `sam local` (which sets AWS_SAM_LOCAL=true) against the sample time too
    local = load_settings({**sample, "AWS_SAM_LOCAL": "true"})
    assert local.signature_clocks(2e9) == (2e9, 1795600800.0)
    # and the template's empty declaration (local testing) means unset
    unset = load_settings({**REQUIRED, "SAMPLE_SIGNATURE_TIMESTAMP": "", "AWS_SAM_LOCAL": "true"})
    assert unset.signature_clocks(2e9) == (2e9,)
