"""Generated deliveries against `sam local start-api`: no 5xx, every 4xx says why."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import StartApi
from tests.e2e.test_sam_local import post

pytestmark = pytest.mark.e2e
EXAMPLES = 1000
seen: list[int] = []

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
lines = st.one_of(st.integers(min_value=1000, max_value=10**9), scalars)  # not the samples' lines
dates = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "2026-11-01T10:00:00Z",
            "2026-11-01T10:00:00",
            "2026-11-01",
            "tomorrow",
            "2026-13-01T00:00:00Z",
            "2999-01-01T00:00:00+00:00",
        ]
    ),
    scalars,
)
quantities = st.one_of(
    st.floats(min_value=-1, max_value=1e9, allow_nan=False),
    st.integers(min_value=-5, max_value=10**6),
    scalars,
)
records = st.fixed_dictionaries(
    {},
    optional={
        "subscription_line": lines,
        "date_time": dates,
        "quantity": quantities,
        "idempotency_key": st.text(max_size=300),
        "subscription_id": scalars,
    },
)
valid = st.fixed_dictionaries(
    {
        "subscription_line": st.integers(min_value=1000, max_value=10**9),
        "date_time": st.datetimes(
            max_value=__import__("datetime").datetime(2026, 1, 1), timezones=st.timezones()
        ).map(lambda d: d.isoformat()),
        "quantity": st.one_of(
            st.integers(min_value=0, max_value=10**6), st.floats(min_value=0, max_value=1e6)
        ),
    }
)
bodies = st.one_of(
    valid.map(json.dumps),
    st.lists(valid, min_size=1, max_size=20).map(lambda usages: json.dumps({"usages": usages})),
    records.map(json.dumps),
    st.lists(records, max_size=105).map(lambda usages: json.dumps({"usages": usages})),
    st.recursive(
        scalars,
        lambda inner: st.lists(inner) | st.dictionaries(st.text(max_size=10), inner),
        max_leaves=10,
    ).map(json.dumps),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
)
@given(body=bodies)
def _fuzz(api: StartApi, body: str) -> None:
    status, answer = post(api, body.encode("utf-8", "surrogatepass"))
    seen.append(status)
    assert status < 500, (status, answer, body[:300])
    if 400 <= status < 500:
        assert isinstance(answer, dict) and answer.get("message"), (status, answer)
    else:
        assert status == 202 and isinstance(answer, dict) and answer["results"]


def test_generated_deliveries_never_get_a_5xx(api: StartApi) -> None:
    # given signed deliveries of generated bodies, valid and not
    # when each is sent to the API served by sam local start-api
    _fuzz(api)
    # then none got a 5xx (checked per request) and at least EXAMPLES were sent
    assert len(seen) >= EXAMPLES
    assert {202, 422}.issubset(set(seen)), sorted(set(seen))
