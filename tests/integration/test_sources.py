"""POST /v1/sources/{source}/usages end to end: the example profiles in an SSM parameter on
moto server, their secrets in Secrets Manager, the Piriod stand-in over loopback."""

from __future__ import annotations

import copy
import io
import json
import time
from decimal import Decimal
from typing import Any

import pytest

from piriod_devkit.aws import client
from piriod_devkit.events import http_event, load_event, sign_event
from piriod_devkit.sources import example_document, provision_sources, put_sources
from tests.conftest import Adapter


@pytest.fixture
def sources(adapter: Adapter) -> Adapter:
    """The adapter with the example profiles in an SSM parameter of its own, re-read every
    second (the deployed bound is 60 s)."""
    parameter = f"/{adapter.resources.table.removesuffix('-idempotency')}/sources"
    config = provision_sources(adapter.endpoint, parameter)
    adapter.sources_parameter = parameter
    adapter.fresh_runtime(SOURCES_CONFIG=config, SOURCES_CACHE_SECONDS="1")
    return adapter


def send(adapter: Adapter, event: dict[str, Any], **kwargs: Any) -> tuple[int, dict[str, Any]]:
    return adapter.invoke(sign_event(event, **kwargs))


def ledger(piriod: Any) -> list[tuple[int, str, str]]:
    return sorted((u["subscription_line"], u["date_time"], u["quantity"]) for u in piriod.usages())


def ops(*argv: str) -> tuple[int, str]:
    from piriod_operator.cli import main

    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), out=out, err=err), out.getvalue() + err.getvalue()


# --- the three example meters ----------------------------------------------------------------


def test_stripe_signed_meter_with_nested_records_and_a_byte_to_gb_factor(
    sources: Adapter, piriod: Any
) -> None:
    # given the Stripe-signed sample: two readings nested in data.object, in bytes
    # when it is delivered
    status, body = send(sources, load_event("source-acme-storage.json"))
    # then each reading is posted to the profile's fixed line, in GB, exactly
    assert status == 202, body
    assert [r["status"] for r in body["results"]] == ["posted", "posted"]
    assert ledger(piriod) == [
        (3001, "2026-11-01T10:00:00Z", "1.073741824"),
        (3001, "2026-11-01T11:00:00Z", "1.500000000"),
    ]
    assert piriod.violations() == []


def test_github_style_meter_with_epoch_millis_and_a_customer_lookup(
    sources: Adapter, piriod: Any
) -> None:
    # given the HMAC-signed sample: finished builds with millisecond times, per customer
    status, body = send(sources, load_event("source-ci-minutes.json"))
    # then each finished build is posted to its customer's line, at the exact instant
    assert status == 202 and [r["status"] for r in body["results"]] == ["posted", "posted"]
    assert ledger(piriod) == [
        (3101, "2026-11-01T08:30:00.123000Z", "12.5"),
        (3102, "2026-11-01T09:45:00Z", "3"),
    ]


def test_cloudevents_batch_keyed_by_source_and_id(sources: Adapter, piriod: Any) -> None:
    # given the CloudEvents batch sample, each event naming its line in data
    event = load_event("source-fleet-telemetry.json")
    status, body = send(sources, event)
    # then each event is posted with its time (in UTC), and a resend is a duplicate
    assert status == 202 and [r["status"] for r in body["results"]] == ["posted", "posted"]
    assert ledger(piriod) == [
        (3201, "2026-11-01T08:00:00.250000Z", "14.75"),
        (3202, "2026-11-01T08:10:00Z", "0.5"),
    ]
    status, again = send(sources, event, message_id="msg_fleet_resent")
    assert [r["status"] for r in again["results"]] == ["duplicate", "duplicate"]
    assert len(piriod.usages()) == 2


def test_one_cloudevent_alone_is_accepted(sources: Adapter, piriod: Any) -> None:
    event = load_event("source-fleet-telemetry.json")
    single = json.dumps(json.loads(event["body"])[0]).encode()
    status, body = send(sources, http_event("POST", event["rawPath"], single))
    assert status == 202 and body["results"][0]["status"] == "posted"


def test_event_ids_are_scoped_by_source(sources: Adapter, piriod: Any) -> None:
    # given two sources whose meters happen to use the same event id
    document = example_document()
    document["sources"]["other-storage"] = copy.deepcopy(document["sources"]["acme-storage"])
    put_sources(sources.endpoint, sources.sources_parameter, document)
    time.sleep(1.1)
    event = load_event("source-acme-storage.json")
    other = {**event, "rawPath": "/v1/sources/other-storage/usages"}
    # when both deliver
    first = send(sources, event)
    second = send(sources, other, sources=document)
    # then neither is a duplicate of the other
    assert first[0] == second[0] == 202
    assert {r["status"] for r in second[1]["results"]} == {"posted"}
    assert len(piriod.usages()) == 4


# --- refusals ---------------------------------------------------------------------------------


def test_unknown_source_is_404(sources: Adapter, piriod: Any) -> None:
    event = http_event("POST", "/v1/sources/no-such-meter/usages", b"{}")
    status, body = sources.invoke(event)
    assert status == 404 and "no-such-meter" in body["message"]
    assert piriod.requests == []


@pytest.mark.parametrize(
    "name", ["source-acme-storage.json", "source-ci-minutes.json", "source-fleet-telemetry.json"]
)
def test_each_scheme_refuses_a_tampered_body_a_wrong_secret_and_a_stale_time(
    sources: Adapter, piriod: Any, name: str
) -> None:
    event = load_event(name)
    signed = sign_event(event)
    tampered = {**signed, "body": signed["body"].replace("1", "2", 1)}
    wrong = sign_event(event, secret="whsec_" + "QUFBQUFBQUFBQUFB")
    stale = sign_event(event, timestamp=int(time.time()) - 330)
    future = sign_event(event, timestamp=int(time.time()) + 330)
    for case in (tampered, wrong, stale, future):
        status, body = sources.invoke(case)
        assert status == 401, body
    assert piriod.requests == [] and sources.items() == []


def test_a_rotated_second_secret_passes(sources: Adapter, piriod: Any) -> None:
    # given the Stripe meter's secret rotated: old and new both active
    client("secretsmanager", sources.endpoint).put_secret_value(
        SecretId="piriod/sources/acme-storage",
        SecretString=json.dumps(
            {"signing_secrets": ["whsec_local_acme_storage_stripe_secret", "whsec_new_one"]}
        ),
    )
    sources.fresh_runtime()
    # when deliveries are signed with either
    old = send(sources, load_event("source-acme-storage.json"))
    new = send(sources, load_event("source-acme-storage.json"), secret="whsec_new_one")
    # then both pass
    assert old[0] == new[0] == 202


def test_a_payload_the_profile_cannot_map_is_422_naming_record_and_field(
    sources: Adapter, piriod: Any
) -> None:
    # given a CI payload whose second finished build has no usable minutes
    event = load_event("source-ci-minutes.json")
    payload = json.loads(event["body"])
    payload["builds"][1]["billable_minutes"] = "about three"
    payload["builds"][0]["finished_at_ms"] = "soon"
    event["body"] = json.dumps(payload)
    # when it is delivered
    status, body = send(sources, event)
    # then nothing is posted, and each problem names the record and the profile field
    assert status == 422
    assert {(e["index"], e["field"]) for e in body["errors"]} == {
        (0, "date_time"),
        (1, "quantity"),
    }
    assert "finished_at_ms" in body["errors"][0]["message"]
    assert piriod.requests == [] and sources.items() == []


def test_mapped_records_obey_the_native_rules(sources: Adapter, piriod: Any) -> None:
    # given a CloudEvent whose line is a string and another with a negative quantity
    event = load_event("source-fleet-telemetry.json")
    events = json.loads(event["body"])
    events[0]["data"]["subscription_line"] = "3201"
    events[1]["data"]["energy_kwh"] = -1
    event["body"] = json.dumps(events)
    status, body = send(sources, event)
    assert status == 422
    assert {(e["index"], e["field"]) for e in body["errors"]} == {
        (0, "subscription_line"),
        (1, "quantity"),
    }


def test_an_invalid_document_is_503_on_sources_only_logged_once_with_source_and_field(
    sources: Adapter, piriod: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # given a profile document whose ci-minutes profile has an unknown time format
    document = example_document()
    document["sources"]["ci-minutes"]["time_format"] = "epoch_nanos"
    put_sources(sources.endpoint, sources.sources_parameter, document)
    sources.fresh_runtime()
    caplog.clear()
    # when source deliveries arrive, and a native one
    first = send(sources, load_event("source-acme-storage.json"))
    second = send(sources, load_event("source-fleet-telemetry.json"))
    native = sources.deliver(
        {"subscription_line": 5, "date_time": "2026-11-01T10:00:00Z", "quantity": 1}
    )
    # then the sources route answers 503, the native route still works, and one log line
    # names the source and the field
    assert first[0] == second[0] == 503 and native[0] == 202
    problems = [
        r.getMessage() for r in caplog.records if "sources document invalid" in r.getMessage()
    ]
    assert len(problems) == 1
    assert "'ci-minutes'" in problems[0] and "time_format" in problems[0]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda d: d["sources"]["acme-storage"]["fields"].update(quantity="data[?"), "JMESPath"),
        (lambda d: d["sources"]["acme-storage"].update(quantity_factor=0.001), "quantity_factor"),
        (lambda d: d["sources"]["ci-minutes"]["signature"].pop("header"), "header"),
        (lambda d: d["sources"].update({"Bad_Name": {}}), "Bad_Name"),
        (lambda d: d.update(version=2), "version"),
    ],
)
def test_invalid_documents_are_named(sources: Adapter, piriod: Any, change: Any, says: str) -> None:
    from piriod_adapter.sources import SourcesUnavailable, parse_document

    document = example_document()
    change(document)
    with pytest.raises(SourcesUnavailable, match=says):
        parse_document(json.dumps(document).encode())


# --- configuration only --------------------------------------------------------------------


def test_a_new_meter_is_added_by_editing_the_parameter_while_running(
    sources: Adapter, piriod: Any
) -> None:
    # given a running container that does not know "new-meter"
    body = json.dumps({"kwh": "2.5", "at": 1793527200, "id": "n-1"}).encode()
    event = http_event("POST", "/v1/sources/new-meter/usages", body)
    document = example_document()
    profile = {
        "signature": {
            "scheme": "hmac-sha256-hex",
            "secret_id": "piriod/sources/ci-minutes",
            "header": "X-Signature",
        },
        "fields": {"date_time": "at", "quantity": "kwh", "event_id": "id"},
        "time_format": "epoch_seconds",
        "subscription_line": 3301,
    }
    assert sources.invoke(event)[0] == 404
    # when an operator adds its profile to the SSM parameter (no deploy, no restart)
    document["sources"]["new-meter"] = profile
    put_sources(sources.endpoint, sources.sources_parameter, document)
    time.sleep(1.1)  # the cache bound in this test (60 s deployed)
    status, answer = send(sources, event, sources=document)
    # then the next delivery within the bound is mapped and posted
    assert status == 202 and answer["results"][0]["status"] == "posted"
    assert ledger(piriod) == [(3301, "2026-11-01T10:00:00Z", "2.5")]


def test_unmapped_meter_is_dead_lettered_then_replayed_once_after_the_mapping_is_added(
    sources: Adapter, piriod: Any
) -> None:
    # given a build of a customer with no line in the profile
    event = load_event("source-ci-minutes-unmapped.json")
    status, body = send(sources, event)
    # then it is rejected, not dropped: in DeadLetterQueue with source, meter id and values
    assert status == 202 and body["results"][0]["status"] == "rejected"
    assert "meter_id" in body["results"][0]["errors"]
    [dead] = sources.messages("dead_letter")
    assert dead["usage"]["source"] == "ci-minutes" and dead["usage"]["meter_id"] == "cus_initech"
    assert dead["usage"]["subscription_line"] is None
    assert dead["usage"]["original"]["quantity"] == "7.25"
    assert piriod.usages() == []
    # when the operator maps the customer, and replays the dead letters (twice)
    document = example_document()
    document["sources"]["ci-minutes"]["lines"]["cus_initech"] = 3103
    put_sources(sources.endpoint, sources.sources_parameter, document)
    time.sleep(1.1)
    first = ops("replay")
    second = ops("replay")
    # then it is posted once to the new line, and the second replay finds nothing to do
    assert first[0] == 0 and "posted=1" in first[1], first
    assert "chosen=0" in second[1]
    assert ledger(piriod) == [(3103, "2026-11-01T10:15:00Z", "7.25")]
    # and the meter resending the same build is a duplicate of it
    status, again = send(sources, event)
    assert again["results"][0] == {
        "index": 0,
        "status": "duplicate",
        "usage_id": piriod.usages()[0]["id"],
    }


def test_a_source_with_test_mode_posts_to_piriods_test_data(sources: Adapter, piriod: Any) -> None:
    document = example_document()
    document["sources"]["acme-storage"]["test_mode"] = True
    put_sources(sources.endpoint, sources.sources_parameter, document)
    time.sleep(1.1)
    assert send(sources, load_event("source-acme-storage.json"))[0] == 202
    assert len(piriod.usages(test_mode=True)) == 2 and piriod.usages(test_mode=False) == []


def test_quantities_keep_their_decimal_value_through_the_factor(
    sources: Adapter, piriod: Any
) -> None:
    event = load_event("source-acme-storage.json")
    payload = json.loads(event["body"])
    payload["data"]["object"]["readings"] = [
        {"id": "rd_x", "recorded_at": "2026-11-01T10:00:00Z", "bytes": "999999999999"}
    ]
    event["body"] = json.dumps(payload)
    assert send(sources, event)[0] == 202
    assert Decimal(piriod.usages()[0]["quantity"]) == Decimal("999.999999999")
