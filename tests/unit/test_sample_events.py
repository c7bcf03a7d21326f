"""The sample events in events/ are committed signed at env/local.json's sample time, so
`sam local invoke -e events/<file>.json` works on them as they are; an edit without
`piriod-local sign --samples` fails here."""

from __future__ import annotations

import pytest

from piriod_devkit.events import EVENTS, is_http_event, load_event, signed_sample

HTTP_SAMPLES = sorted(p.name for p in EVENTS.glob("*.json") if is_http_event(load_event(p.name)))


def test_every_http_sample_is_covered() -> None:
    assert {"webhook-single.json", "source-acme-storage.json"} <= set(HTTP_SAMPLES)


@pytest.mark.parametrize("name", HTTP_SAMPLES)
def test_committed_sample_is_signed_at_the_sample_time(name: str) -> None:
    # given a committed sample event, when it is signed again at the sample time
    # then nothing changes: its signature is that of its body, headers and time
    assert load_event(name) == signed_sample(name)
