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
    assert [(r["index"], r["event_id"]) for r in body["results"]] == [
        (0, "rd_0001"),
        (1, "rd_0002"),
    ]
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
    # then each event is posted with its time (in UTC), its result carrying the event's id,
    # and a resend is a duplicate
    assert status == 202 and [r["status"] for r in body["results"]] == ["posted", "posted"]
    assert [r["event_id"] for r in body["results"]] == ["evt-fleet-0001", "evt-fleet-0002"]
    assert ledger(piriod) == [
        (3201, "2026-11-01T08:00:00.250000Z", "14.75"),
        (3202, "2026-11-01T08:10:00Z", "0.5"),
    ]
    status, again = send(sources, event, message_id="msg_fleet_resent")
    assert [r["status"] for r in again["results"]] == ["duplicate", "duplicate"]
    assert [r["event_id"] for r in again["results"]] == ["evt-fleet-0001", "evt-fleet-0002"]
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


def logged_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Each captured log line with its extra fields, as one text."""
    return [f"{r.getMessage()} {json.dumps(r.__dict__, default=str)}" for r in caplog.records]


def test_a_profile_that_does_not_validate_stops_only_its_own_source(
    sources: Adapter, piriod: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # given a profile document whose ci-minutes profile misspells time_format, read once a
    # minute as deployed
    document = example_document()
    profile = document["sources"]["ci-minutes"]
    profile["time_formt"] = profile.pop("time_format")
    put_sources(sources.endpoint, sources.sources_parameter, document)
    sources.fresh_runtime(SOURCES_CACHE_SECONDS="60")
    caplog.clear()
    # when the broken source delivers (twice), a good source delivers, and a native one
    broken = [send(sources, load_event("source-ci-minutes.json")) for _ in range(2)]
    good = send(sources, load_event("source-acme-storage.json"))
    native = sources.deliver(
        {"subscription_line": 5, "date_time": "2026-11-01T10:00:00Z", "quantity": 1}
    )
    # then the broken source alone answers 503, naming itself and not the field
    assert [status for status, _ in broken] == [503, 503]
    assert "'ci-minutes'" in broken[0][1]["message"]
    assert "time_formt" not in broken[0][1]["message"]
    # and the good source and the native route post
    assert good[0] == 202 and [r["status"] for r in good[1]["results"]] == ["posted"] * 2
    assert native[0] == 202 and native[1]["results"][0]["status"] == "posted"
    assert sorted(u["subscription_line"] for u in piriod.usages()) == [5, 3001, 3001]
    # and exactly one log line names the broken source and the field
    named = [
        line for line in logged_lines(caplog) if "'ci-minutes'" in line and "time_formt" in line
    ]
    assert len(named) == 1, named
    assert "sources document invalid: source 'ci-minutes', field time_formt" in named[0]


@pytest.mark.parametrize(
    "document",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param('{"version": 1}', id="no-sources-object"),
        pytest.param('{"version": 2, "sources": {}}', id="wrong-version"),
    ],
)
def test_a_document_that_cannot_be_read_stops_the_sources_route_only(
    sources: Adapter, piriod: Any, caplog: pytest.LogCaptureFixture, document: str
) -> None:
    # given a profile document that is not JSON, or has no sources object, or another version
    put_sources(sources.endpoint, sources.sources_parameter, document)
    sources.fresh_runtime(SOURCES_CACHE_SECONDS="60")
    caplog.clear()
    # when source deliveries arrive, and a native one
    first = send(sources, load_event("source-acme-storage.json"))
    second = send(sources, load_event("source-fleet-telemetry.json"))
    native = sources.deliver(
        {"subscription_line": 5, "date_time": "2026-11-01T10:00:00Z", "quantity": 1}
    )
    # then every source answers 503, the native route still posts, and the document's
    # problem is logged once
    assert first[0] == second[0] == 503 and native[0] == 202
    assert [u["subscription_line"] for u in piriod.usages()] == [5]
    problems = [r.getMessage() for r in caplog.records if "sources document" in r.getMessage()]
    assert len(problems) == 1, problems


@pytest.mark.parametrize(
    ("change", "source", "says"),
    [
        (
            lambda d: d["sources"]["acme-storage"]["fields"].update(quantity="data[?"),
            "acme-storage",
            "field fields.quantity: is not a valid JMESPath",
        ),
        (
            lambda d: d["sources"]["acme-storage"].update(quantity_factor=0.001),
            "acme-storage",
            "field quantity_factor",
        ),
        (
            lambda d: d["sources"]["ci-minutes"]["signature"].pop("header"),
            "ci-minutes",
            "field signature: header is required",
        ),
        (lambda d: d["sources"].update({"Bad_Name": {}}), "Bad_Name", "the name must be"),
    ],
)
def test_each_broken_profile_is_named_and_leaves_the_others(
    change: Any, source: str, says: str
) -> None:
    from piriod_adapter.sources import parse_document

    # given the example document with one profile broken
    document = example_document()
    change(document)
    # when it is parsed, then that source's problem names it and the field, and every other
    # example profile is there
    parsed = parse_document(json.dumps(document).encode())
    assert list(parsed.broken) == [source]
    assert f"source {source!r}" in str(parsed.broken[source]) and says in str(parsed.broken[source])
    assert set(parsed.sources) == set(example_document()["sources"]) - {source}


# --- what the answer says about each event --------------------------------------------------


def ci_event(builds: list[dict[str, Any]]) -> dict[str, Any]:
    event = load_event("source-ci-minutes.json")
    payload = json.loads(event["body"])
    payload["builds"] = builds
    event["body"] = json.dumps(payload)
    return event


def build(build_id: str, status: str, customer: str = "cus_acme") -> dict[str, Any]:
    finished = 1793521800000 if status == "finished" else None
    return {
        "build_id": build_id,
        "customer": customer,
        "status": status,
        "finished_at_ms": finished,
        "billable_minutes": "2",
    }


def test_a_filter_that_keeps_nothing_is_202_with_empty_results_and_nothing_posted(
    sources: Adapter, piriod: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # given a CI delivery whose builds are all still running (the profile keeps finished ones)
    event = ci_event([build("bld_1", "running"), build("bld_2", "failed")])
    # when it is delivered
    status, body = send(sources, event)
    # then it is answered 202 with empty results, and nothing was claimed, posted or queued
    assert (status, body) == (202, {"results": []})
    assert piriod.requests == [] and piriod.usages() == []
    assert sources.items() == []
    assert sources.messages("replay") == [] and sources.messages("dead_letter") == []
    # and the delivery is logged as handled with no record
    [handled] = [r for r in caplog.records if r.getMessage() == "delivery handled"]
    assert handled.__dict__["outcomes"] == {"received": 0}
    assert handled.__dict__["source"] == "ci-minutes"


def test_results_carry_event_ids_where_the_filter_made_indexes_sparse(
    sources: Adapter, piriod: Any
) -> None:
    # given builds of which the first, third and fourth are finished
    event = ci_event(
        [
            build("bld_a", "finished"),
            build("bld_b", "running"),
            build("bld_c", "finished", customer="cus_globex"),
            build("bld_d", "finished"),
        ]
    )
    # when it is delivered
    status, body = send(sources, event)
    # then each result's index counts the kept builds, and its event_id names the build
    assert status == 202, body
    assert [(r["index"], r["event_id"], r["status"]) for r in body["results"]] == [
        (0, "bld_a", "posted"),
        (1, "bld_c", "posted"),
        (2, "bld_d", "posted"),
    ]


FLEET_READINGS = {
    "signature": {"scheme": "standard-webhooks", "secret_id": "piriod/sources/fleet-telemetry"},
    "shape": "cloudevents",
    "records": "data.readings[?kwh > `0`]",
    "fields": {"quantity": "kwh"},
    "subscription_line": 3203,
}


def reading_event(event_id: str, *kwh: float) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "urn:fleet:hub:7",
        "type": "com.example.fleet.readings",
        "time": "2026-11-01T08:00:00Z",
        "data": {"readings": [{"kwh": value} for value in kwh]},
    }


def test_cloudevent_results_carry_the_event_id_in_a_filtered_batch(
    sources: Adapter, piriod: Any
) -> None:
    # given a CloudEvents profile that keeps the readings above zero inside each event
    document = example_document()
    document["sources"]["fleet-readings"] = FLEET_READINGS
    put_sources(sources.endpoint, sources.sources_parameter, document)
    sources.fresh_runtime()
    # and a batch: two readings kept of three in the first event, none in the second, one
    # in the third
    batch = [
        reading_event("evt-1", 1.5, 0, 2),
        reading_event("evt-2", 0),
        reading_event("evt-3", 3),
    ]
    body = json.dumps(batch).encode()
    event = http_event("POST", "/v1/sources/fleet-readings/usages", body)
    # when it is delivered
    status, answer = send(sources, event, sources=document)
    # then each result carries its event's id (shared by readings of one event) and the
    # index tells the records apart
    assert status == 202, answer
    assert [(r["index"], r["event_id"], r["status"]) for r in answer["results"]] == [
        (0, "evt-1", "posted"),
        (1, "evt-1", "posted"),
        (2, "evt-3", "posted"),
    ]
    assert sorted(u["quantity"] for u in piriod.usages()) == ["1.5", "2", "3"]
    # and a batch whose filter keeps nothing is a 202 with empty results, nothing posted
    empty = json.dumps([reading_event("evt-4", 0)]).encode()
    event = http_event("POST", "/v1/sources/fleet-readings/usages", empty)
    assert send(sources, event, sources=document) == (202, {"results": []})
    assert len(piriod.usages()) == 3


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
        "event_id": "bld_2001",
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
