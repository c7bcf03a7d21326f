"""The sender's contract (openapi.yaml) against the adapter served on a local port: schemathesis
generates deliveries from the description, valid and invalid, a `before_call` hook signs each
one the way its route (or source profile) says, and every answer must be one the description
allows, never a 5xx. Behind the webhook: moto server and the Piriod stand-in over loopback."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from piriod_devkit.events import LOCAL_SIGNING_SECRET
from piriod_devkit.local_api import LocalApiServer
from piriod_devkit.sources import LOCAL_SOURCE_SECRETS, example_document, provision_sources
from tests.conftest import Adapter

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = schemathesis.openapi.from_path(ROOT / "openapi.yaml")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = 100  # per operation and mode; the property suite goes much further on the body

PROFILES: dict[str, dict[str, Any]] = example_document()["sources"]
NATIVE = {"signature": {"scheme": "standard-webhooks"}}


class Signer(requests.auth.AuthBase):
    """Signs the request exactly as it goes out (the prepared body's bytes), with the scheme of
    the route's profile; the webhook-id that schemathesis generated is kept when there is one,
    so that odd ids are exercised with valid signatures."""

    def __init__(self, profile: dict[str, Any], secret: str) -> None:
        self.profile, self.secret = profile, secret

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        from piriod_devkit.sources import sign_source

        body = request.body or b""
        raw = body.encode() if isinstance(body, str) else body
        assert isinstance(raw, bytes), "a generated body is sent whole, never streamed"
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower() == "webhook-id"}
        event = {
            "headers": headers,
            "body": base64.b64encode(raw).decode(),
            "isBase64Encoded": True,
        }
        signed = sign_source(event, self.profile, self.secret)
        request.headers.update(signed["headers"])
        return request


SIGNERS: dict[str | None, Signer] = {None: Signer(NATIVE, LOCAL_SIGNING_SECRET)}
for _name, _profile in PROFILES.items():
    SIGNERS[_name] = Signer(_profile, LOCAL_SOURCE_SECRETS[_profile["signature"]["secret_id"]])


@schemathesis.hook
def before_call(context: Any, case: schemathesis.Case[Any], kwargs: dict[str, Any]) -> None:
    """Sign every generated delivery: the native route with the adapter's secret, a source's
    route with that source's scheme and secret (an unknown source is left unsigned: 404)."""
    source = (case.path_parameters or {}).get("source")
    signer = SIGNERS.get(source) if source is not None else SIGNERS[None]
    if signer is not None:
        kwargs["auth"] = signer


@pytest.fixture
def served(adapter: Adapter) -> Iterator[LocalApiServer]:
    """The webhook on a local port, with the example source profiles configured."""
    parameter = f"/{adapter.resources.table.removesuffix('-idempotency')}/sources"
    adapter.fresh_runtime(SOURCES_CONFIG=provision_sources(adapter.endpoint, parameter))
    server = LocalApiServer().start()
    yield server
    server.stop()


def run(
    served: LocalApiServer,
    path: str,
    mode: GenerationMode,
    inspect: Callable[[Response], None] | None = None,
    **fixed: Any,
) -> Counter[int]:
    """Generate EXAMPLES deliveries for one operation, send each signed, check each answer
    against the description (and with `inspect`, if given); return how often each status
    was seen."""
    seen: Counter[int] = Counter()
    operation = SCHEMA[path]["POST"]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    def deliver(case: schemathesis.Case[Any]) -> None:
        response = case.call_and_validate(base_url=served.url, checks=CHECKS)
        if inspect is not None:
            inspect(response)
        seen[response.status_code] += 1

    deliver()
    return seen


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_native_route_answers_only_as_described(
    served: LocalApiServer, piriod: Any, mode: GenerationMode
) -> None:
    # given deliveries generated from the description, each signed with the adapter's secret
    results: list[dict[str, Any]] = []

    def keep_results(response: Response) -> None:
        if response.status_code == 202:
            results.extend(response.json()["results"])

    # when each is sent to the served webhook
    seen = run(served, "/v1/usages", mode, keep_results)
    # then no answer was a 5xx or outside the description (checked per delivery), and the
    # run reached the adapter's own answers, not only the signature check
    assert not any(status >= 500 for status in seen), seen
    expected = {202} if mode is GenerationMode.POSITIVE else {422}
    assert expected & set(seen), seen
    # and no native result carries an event id (that field is the sources route's)
    assert results or mode is GenerationMode.NEGATIVE
    assert not any("event_id" in r for r in results), results
    assert piriod.violations() == []


@pytest.mark.parametrize("source", sorted(PROFILES))
def test_source_route_answers_only_as_described(
    served: LocalApiServer, piriod: Any, source: str
) -> None:
    # given payloads generated for a configured source, signed with that source's scheme
    # when each is sent to the source's route
    seen = run(
        served,
        "/v1/sources/{source}/usages",
        GenerationMode.POSITIVE,
        path_parameters={"source": source},
    )
    # then every answer is described and none is a 5xx; the signature passed, so the answers
    # are the mapping's (202, also with empty results when no record is found, or 422), not
    # 401
    assert not any(status >= 500 for status in seen), seen
    assert set(seen) <= {202, 400, 422}, seen


def test_unknown_sources_are_404_as_described(served: LocalApiServer) -> None:
    # given any source name the description allows, none of them configured
    seen = run(served, "/v1/sources/{source}/usages", GenerationMode.POSITIVE)
    # then each answer is described (checked per delivery), none is a 5xx, and unknown names
    # are 404
    assert not any(status >= 500 for status in seen), seen
    assert 404 in seen, seen
