"""Source profiles and their mapping, in isolation: the document's validation, each way of
reading a time, a quantity and a line, and generated payloads per time format."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from piriod_adapter.models import KeyKind
from piriod_adapter.sources import (
    Mapper,
    Profile,
    SourceCatalog,
    SourcesUnavailable,
    parse_document,
    resolve_meter_line,
)
from piriod_adapter.validation import BodyError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "sources.json"
NOW = datetime(2026, 11, 26, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A structured CloudEvent's required attributes and time; each test adds its data.
CLOUD_EVENT = {
    "specversion": "1.0",
    "id": "e1",
    "source": "urn:a",
    "type": "t",
    "time": "2026-11-01T00:00:00Z",
}


def profile(**overrides: Any) -> Profile:
    base: dict[str, Any] = {
        "signature": {"scheme": "stripe", "secret_id": "s"},
        "fields": {"date_time": "t", "quantity": "q", "event_id": "id"},
        "subscription_line": 7,
    }
    return Profile.model_validate({**base, **overrides})


def mapped(p: Profile, payload: Any) -> list[Any]:
    return Mapper("meter", p, now=NOW).usages(payload)


def problems(p: Profile, payload: Any) -> set[tuple[int | None, str]]:
    with pytest.raises(BodyError) as err:
        mapped(p, payload)
    assert err.value.status == 422
    return {(x.index, x.field) for x in err.value.problems}


def test_the_shipped_examples_validate_and_compile() -> None:
    document = parse_document(EXAMPLES.read_bytes())
    assert {"acme-storage", "ci-minutes", "fleet-telemetry"} <= set(document.sources)
    assert all(p.compiled for p in document.sources.values())
    assert document.broken == {} and document.problems == []


GOOD = json.loads(profile().model_dump_json(exclude_none=True))


def with_good(name: str, entry: Any) -> bytes:
    return json.dumps({"version": 1, "sources": {name: entry, "good": GOOD}}).encode()


def problem_of(name: str, entry: Any) -> SourcesUnavailable:
    """What a document holding this entry and a good profile says about the entry: the good
    one still validates, and the entry alone is unavailable."""
    document = parse_document(with_good(name, entry))
    assert sorted(document.sources) == ["good"]
    assert list(document.broken) == [name] and len(document.problems) == 1
    return document.broken[name]


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ({"version": 2, "sources": {}}, "field version"),
        ({"sources": {}}, "field version"),
        ({"version": 1}, "field sources: Field required"),
        ({"version": 1, "sources": []}, "field sources"),
        ({"version": 1, "sources": {}, "extra": 1}, "field extra"),
        ([], "must be a JSON object"),
    ],
)
def test_an_envelope_problem_stops_the_whole_document_and_is_named(
    document: Any, says: str
) -> None:
    # given a document whose envelope (version, sources) does not validate
    # when it is parsed, then it is refused as a whole, naming the field
    with pytest.raises(SourcesUnavailable, match=says) as err:
        parse_document(json.dumps(document).encode())
    assert err.value.source is None


def test_a_document_that_is_not_json_stops_the_whole_document() -> None:
    with pytest.raises(SourcesUnavailable, match="not valid JSON") as err:
        parse_document(b'{"version": 1, "sources": {')
    assert err.value.source is None


@pytest.mark.parametrize(
    ("name", "entry", "says"),
    [
        ("x", {"signature": {}}, "source 'x', field signature.scheme"),
        ("x", 5, "source 'x': must be a JSON object"),
        ("UPPER", GOOD, "source 'UPPER': the name must be"),
        ("a" * 65, GOOD, "source '" + "a" * 65 + "'"),
        ("", GOOD, "source '': the name must be"),
    ],
)
def test_a_broken_entry_is_kept_as_its_error_naming_the_source_and_the_field(
    name: str, entry: Any, says: str
) -> None:
    # given a document with one good profile and one entry that does not validate
    # when it is parsed, then the entry is kept as its error and the good one is usable
    problem = problem_of(name, entry)
    assert says in str(problem) and problem.source == name


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"records": "a[?"}, "field records: is not a valid JMESPath"),
        ({"quantity_factor": "1e-3x"}, "field quantity_factor: must be an exact decimal"),
        ({"quantity_factor": "0"}, "field quantity_factor: must be greater than 0"),
        ({"subscription_line": 0}, "field subscription_line"),
        ({"subscription_line": "7"}, "field subscription_line"),
        ({"lines": {"m": 2**63}}, "field lines.m"),
        ({"time_format": "iso"}, "field time_format"),
        ({"time_formt": "epoch_millis"}, "field time_formt: Extra inputs are not permitted"),
        ({"shape": "xml"}, "field shape"),
        ({"signature": {"scheme": "hmac-sha256-hex", "secret_id": "s"}}, "header is required"),
        ({"signature": {"scheme": "stripe", "secret_id": "s", "header": "X"}}, "hmac-sha256-hex"),
        ({"fields": {"quantity": "q", "event_id": "id"}}, "date_time is required"),
        ({"subscription_line": None}, "no way to find the line"),
        ({"unknown": 1}, "field unknown"),
    ],
)
def test_profile_rules(overrides: dict[str, Any], says: str) -> None:
    # given a profile that breaks one rule, next to a good one
    fields = {**GOOD, **overrides}
    entry = {k: v for k, v in fields.items() if v is not None}
    # then only that source is unavailable, and its message names it and the field
    problem = problem_of("m", entry)
    assert str(problem).startswith("sources document invalid: source 'm'")
    assert says in str(problem)


# --- mapping -----------------------------------------------------------------------------------


def test_records_may_be_a_list_or_one_record() -> None:
    p = profile(records="data")
    one = mapped(p, {"data": {"t": "2026-11-01T00:00:00Z", "q": 1, "id": "a"}})
    many = mapped(
        p, {"data": [{"t": "2026-11-01T00:00:00Z", "q": 1, "id": str(i)} for i in range(3)]}
    )
    assert len(one) == 1 and len(many) == 3
    assert one[0].key.kind is KeyKind.EVENT and one[0].key.scope == "v1/sources/meter"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"data": None}, {(None, "records")}),
        ({}, {(None, "records")}),
        ({"data": [{"q": 1, "id": "a"}] * 101}, {(None, "records")}),
        ({"data": [{"t": "2026-11-01T00:00:00Z", "q": "x", "id": "a"}]}, {(0, "quantity")}),
        ({"data": [{"t": "2026-11-01T00:00:00Z", "q": "1_000", "id": "a"}]}, {(0, "quantity")}),
        ({"data": [{"t": "2026-11-01T00:00:00Z", "q": True, "id": "a"}]}, {(0, "quantity")}),
        ({"data": [{"t": "2026-11-01T00:00:00Z", "q": "NaN", "id": "a"}]}, {(0, "quantity")}),
        ({"data": [{"t": "2026-11-01", "q": 1, "id": "a"}]}, {(0, "date_time")}),
        ({"data": [{"t": "2026-11-01T00:00:00Z", "q": 1, "id": {"x": 1}}]}, {(0, "event_id")}),
        ({"data": [{"t": "2026-11-01T00:00:00Z", "q": 1, "id": ""}]}, {(0, "event_id")}),
        ({"data": [{"t": "2026-11-01T00:00:00Z", "q": 1}]}, {(0, "event_id")}),
        ({"data": [{"t": "2027-01-01T00:00:00Z", "q": 1, "id": "a"}]}, {(0, "date_time")}),
    ],
)
def test_what_cannot_be_mapped_names_the_record_and_the_profile_field(
    payload: Any, expected: set[tuple[int | None, str]]
) -> None:
    assert problems(profile(records="data"), payload) == expected


@pytest.mark.parametrize(
    ("time_format", "value", "utc"),
    [
        ("rfc3339", "2026-11-01T10:00:00+02:00", "2026-11-01T08:00:00Z"),
        ("epoch_seconds", 1793527200, "2026-11-01T10:00:00Z"),
        ("epoch_seconds", "1793527200.5", "2026-11-01T10:00:00.500000Z"),
        ("epoch_seconds", Decimal("1793527200.000001"), "2026-11-01T10:00:00.000001Z"),
        ("epoch_millis", 1793527200123, "2026-11-01T10:00:00.123000Z"),
        ("epoch_millis", Decimal("1793527200123.456"), "2026-11-01T10:00:00.123456Z"),
        ("epoch_seconds", -62135596800, "0001-01-01T00:00:00Z"),
    ],
)
def test_times_in_each_format_are_sent_as_utc(time_format: str, value: Any, utc: str) -> None:
    [usage] = mapped(profile(time_format=time_format), {"t": value, "q": 1, "id": "a"})
    assert usage.date_time_text == utc


@pytest.mark.parametrize(
    ("time_format", "value"),
    [
        ("epoch_seconds", Decimal("1.0000001")),
        ("epoch_millis", Decimal("1.0001")),
        ("epoch_seconds", 10**12),
        ("epoch_seconds", -(10**12)),
        ("epoch_seconds", "1e400"),
        # exponents that overflow, underflow or round in decimal's default context
        ("epoch_millis", Decimal("1e999999999")),
        ("epoch_millis", Decimal("-1e999999999")),
        ("epoch_millis", Decimal("1e-999999999")),
        ("epoch_seconds", "1e-999999999"),
        ("epoch_millis", Decimal("1764130000000.0000000000000000000000001")),
        ("epoch_seconds", Decimal("1e500000")),
        ("epoch_millis", True),
        ("rfc3339", 1793527200),
    ],
)
def test_times_that_cannot_be_taken_as_they_are_are_refused(time_format: str, value: Any) -> None:
    assert problems(profile(time_format=time_format), {"t": value, "q": 1, "id": "a"}) == {
        (0, "date_time")
    }


def test_the_factor_is_exact_decimal() -> None:
    p = profile(quantity_factor="0.000000001")
    [usage] = mapped(p, {"t": "2026-11-01T00:00:00Z", "q": 1073741824, "id": "a"})
    assert usage.quantity_text == "1.073741824"
    too_fine = profile(quantity_factor="0." + "0" * 39 + "1")
    assert problems(too_fine, {"t": "2026-11-01T00:00:00Z", "q": "0.5", "id": "a"}) == {
        (0, "quantity")
    }


def test_the_line_comes_from_the_payload_the_profile_or_the_meter_lookup() -> None:
    record = {"t": "2026-11-01T00:00:00Z", "q": 1, "id": "a", "line": 9, "cust": "c1"}
    from_payload = profile(
        fields={"date_time": "t", "quantity": "q", "event_id": "id", "subscription_line": "line"}
    )
    lookup = profile(
        subscription_line=None,
        lines={"c1": 11},
        fields={"date_time": "t", "quantity": "q", "event_id": "id", "meter_id": "cust"},
    )
    assert mapped(from_payload, record)[0].subscription_line == 9
    assert mapped(profile(), record)[0].subscription_line == 7
    [found] = mapped(lookup, record)
    assert (found.subscription_line, found.meter_id) == (11, "c1")
    [unmapped] = mapped(lookup, {**record, "cust": "c2"})
    assert (unmapped.subscription_line, unmapped.meter_id) == (None, "c2")
    assert unmapped.original == {
        "event_id": "a",
        "date_time": "2026-11-01T00:00:00Z",
        "quantity": 1,
        "meter_id": "c2",
    }


def test_an_unmapped_record_is_mapped_once_its_meter_has_a_line() -> None:
    lookup = profile(
        subscription_line=None,
        lines={},
        fields={"date_time": "t", "quantity": "q", "event_id": "id", "meter_id": "cust"},
    )
    [unmapped] = mapped(lookup, {"t": "2026-11-01T00:00:00Z", "q": 1, "id": "a", "cust": "c2"})

    class Catalog:
        def __init__(self, lines: dict[str, int]) -> None:
            self.lines = lines

        def profile(self, name: str) -> Profile | None:
            return lookup.model_copy(update={"lines": self.lines}) if name == "meter" else None

    assert resolve_meter_line(unmapped, Catalog({})).subscription_line is None  # type: ignore[arg-type]
    resolved = resolve_meter_line(unmapped, Catalog({"c2": 12}))  # type: ignore[arg-type]
    assert resolved.subscription_line == 12
    assert resolved.fingerprint == unmapped.fingerprint  # the same record, now with its line


def test_cloudevents_keys_are_source_and_id_and_time_defaults_to_time() -> None:
    p = profile(shape="cloudevents", fields={"quantity": "data.q"})
    event = {**CLOUD_EVENT, "data": {"q": 2}}
    [usage] = mapped(p, event)
    assert json.loads(usage.key.text) == ["urn:a", "e1"]
    batch = mapped(p, [event, {**event, "source": "urn:b"}])
    assert len({u.key.text for u in batch}) == 2
    readings = profile(shape="cloudevents", records="data.readings", fields={"quantity": "q"})
    many = mapped(readings, {**event, "data": {"readings": [{"q": 1}, {"q": 2}]}})
    assert [json.loads(u.key.text) for u in many] == [["urn:a", "e1", 0], ["urn:a", "e1", 1]]


@pytest.mark.parametrize(
    "event",
    [
        {"specversion": "0.3", "id": "e", "source": "s", "type": "t"},
        {"specversion": "1.0", "source": "s", "type": "t"},
        {"specversion": "1.0", "id": "", "source": "s", "type": "t"},
        {"specversion": "1.0", "id": "e", "source": "s"},
        "not an event",
    ],
)
def test_what_is_not_a_cloudevent_is_422(event: Any) -> None:
    p = profile(shape="cloudevents", fields={"quantity": "data.q"})
    assert problems(p, [event]) == {(0, "event")}


def test_the_catalog_is_read_again_after_its_bound_and_keeps_a_bad_read_for_it() -> None:
    reads: list[str] = []
    logged: list[str] = []
    state = {"now": 0.0, "text": '{"version": 1, "sources": {}}'}

    class Ssm:
        def get_parameter(self, Name: str) -> dict[str, Any]:
            reads.append(Name)
            return {"Parameter": {"Value": state["text"]}}

    catalog = SourceCatalog(
        "ssm:/p",
        Ssm,  # type: ignore[arg-type]
        ttl_seconds=600,
        log=logged.append,
        clock=lambda: state["now"],  # type: ignore[arg-type,return-value]
    )
    assert catalog.profile("x") is None
    state["text"] = "{broken"
    state["now"] = 59.0
    assert catalog.profile("x") is None  # still within the bound (capped at 60 s)
    state["now"] = 60.0
    for _ in range(3):
        with pytest.raises(SourcesUnavailable):
            catalog.profile("x")
    assert reads == ["/p", "/p"] and len(logged) == 1


def test_a_broken_profile_stops_only_its_own_source_and_is_logged_once_per_period() -> None:
    # given a parameter whose "typo" profile misspells time_format, next to a good profile
    # and an entry whose name no route can address
    logged: list[str] = []
    reads: list[str] = []
    clock = {"now": 0.0}
    typo = {**GOOD, "time_formt": "epoch_millis"}
    text = json.dumps({"version": 1, "sources": {"typo": typo, "good": GOOD, "Bad_Name": GOOD}})

    class Ssm:
        def get_parameter(self, Name: str) -> dict[str, Any]:
            reads.append(Name)
            return {"Parameter": {"Value": text}}

    catalog = SourceCatalog(
        "ssm:/p",
        Ssm,  # type: ignore[arg-type]
        ttl_seconds=60,
        log=logged.append,
        clock=lambda: clock["now"],
    )
    # when each source is asked for, several times within one cache period
    for _ in range(3):
        good = catalog.profile("good")
        with pytest.raises(SourcesUnavailable) as err:
            catalog.profile("typo")
        unknown = catalog.profile("no-such-meter")
        unaddressable = catalog.profile("Bad_Name")
    # then the good source maps, the broken one alone is unavailable, an unknown source (or
    # a name no route can address) is none, and each broken entry is logged once
    assert good is not None and good.subscription_line == 7
    assert err.value.source == "typo" and "field time_formt" in str(err.value)
    assert unknown is None and unaddressable is None
    assert reads == ["/p"]
    assert len(logged) == 2
    assert "source 'typo', field time_formt" in logged[0]
    assert "source 'Bad_Name'" in logged[1]
    # and after the bound, the document is read and each problem logged once more
    clock["now"] = 60.0
    assert catalog.profile("good") is not None
    assert reads == ["/p", "/p"] and len(logged) == 4


# --- what a delivery's results carry, and a filter that keeps nothing -------------------------


def test_a_filter_that_keeps_nothing_maps_to_no_record() -> None:
    # given a profile that keeps finished builds only, and payloads with none finished
    p = profile(records="builds[?status == 'finished']")
    running = {"t": "2026-11-01T00:00:00Z", "q": 1, "id": "b1", "status": "running"}
    # when they are mapped, then there is no record and no problem
    assert Mapper("meter", p, now=NOW).map({"builds": [running]}) == []
    assert mapped(p, {"builds": []}) == []
    assert mapped(profile(), []) == []
    # but records that are not there at all are still a 422 naming records
    assert problems(p, {"other": []}) == {(None, "records")}


def test_a_cloudevents_batch_whose_filter_keeps_nothing_maps_to_no_record() -> None:
    # given a CloudEvents profile that keeps the readings above zero
    p = profile(shape="cloudevents", records="data.readings[?q > `0`]", fields={"quantity": "q"})
    event = {**CLOUD_EVENT, "data": {"readings": [{"q": 0}]}}
    # when a batch with no such reading arrives (or an empty batch), then nothing is mapped
    assert mapped(p, [event, {**event, "id": "e2"}]) == []
    assert mapped(p, []) == []


def test_more_than_the_batch_bound_is_still_a_422() -> None:
    records = [{"t": "2026-11-01T00:00:00Z", "q": 1, "id": str(i)} for i in range(101)]
    with pytest.raises(BodyError) as err:
        mapped(profile(records="r"), {"r": records})
    [problem] = err.value.problems
    assert (problem.index, problem.field) == (None, "records")
    assert "found 101 records; at most 100" in problem.message


def test_each_mapped_record_carries_its_event_id_whatever_the_filter_kept() -> None:
    # given builds of which only the second and fourth are finished
    p = profile(records="builds[?status == 'finished']")
    builds = [
        {"t": "2026-11-01T00:00:00Z", "q": 1, "id": f"b{n}", "status": status}
        for n, status in enumerate(["running", "finished", "failed", "finished"])
    ]
    # when they are mapped
    found = Mapper("meter", p, now=NOW).map({"builds": builds})
    # then each record carries the event id of the build it came from
    assert [m.event_id for m in found] == ["b1", "b3"]
    assert [m.usage.key.text for m in found] == ["b1", "b3"]


def test_an_integer_event_id_is_carried_as_text() -> None:
    [found] = Mapper("meter", profile(), now=NOW).map(
        {"t": "2026-11-01T00:00:00Z", "q": 1, "id": 42}
    )
    assert found.event_id == "42"


def test_a_cloudevent_result_carries_the_event_id_and_records_inside_one_event_share_it() -> None:
    # given a CloudEvents batch: a first event with three readings (the middle one filtered
    # out), a second event with none kept, and a third with one
    p = profile(shape="cloudevents", records="data.readings[?q > `0`]", fields={"quantity": "q"})

    def event(id: str, *quantities: int) -> dict[str, Any]:
        return {**CLOUD_EVENT, "id": id, "data": {"readings": [{"q": q} for q in quantities]}}

    batch = [event("evt-a", 1, 0, 2), event("evt-b", 0), event("evt-c", 3)]
    # when it is mapped
    found = Mapper("meter", p, now=NOW).map(batch)
    # then each record's event id is its event's id, shared by the records of one event,
    # while the key still tells them apart by their place in the event
    assert [m.event_id for m in found] == ["evt-a", "evt-a", "evt-c"]
    assert [json.loads(m.usage.key.text) for m in found] == [
        ["urn:a", "evt-a", 0],
        ["urn:a", "evt-a", 1],
        ["urn:a", "evt-c", 0],
    ]
    # and a profile that maps one record per event carries the id of each
    whole = profile(shape="cloudevents", fields={"quantity": "data.q"})
    ids = [
        m.event_id
        for m in Mapper("meter", whole, now=NOW).map(
            [
                {**CLOUD_EVENT, "id": "x1", "data": {"q": 1}},
                {**CLOUD_EVENT, "id": "x2", "data": {"q": 2}},
            ]
        )
    ]
    assert ids == ["x1", "x2"]


def _outcomes(count: int) -> tuple[list[Any], list[Any]]:
    from piriod_adapter.lifecycle import Fate, Outcome, Submission
    from piriod_adapter.models import Tenant

    usages = mapped(
        profile(records="r"),
        {"r": [{"t": "2026-11-01T00:00:00Z", "q": n, "id": f"e{n}"} for n in range(count)]},
    )
    tenant = Tenant(workspace="w", test_mode=False)
    subs = [Submission(n, u, tenant) for n, u in enumerate(usages)]
    return subs, [Outcome(Fate.POSTED, usage_id=100 + n) for n in range(count)]


def test_the_answer_for_no_records_is_a_202_with_empty_results() -> None:
    from piriod_adapter.webhook import summarize

    # given a delivery that mapped to no record
    # when it is answered
    reply = summarize("delivery", [], [], "meter", [])
    # then it is a 202 whose body holds empty results
    assert reply.status == 202
    assert json.loads(reply.to_api_gateway()["body"]) == {"results": []}


def test_results_carry_event_ids_on_the_sources_route_only() -> None:
    from piriod_adapter.webhook import summarize

    # given two posted records
    subs, outcomes = _outcomes(2)
    # when they are answered on the sources route (with event ids) and on the native route
    source = json.loads(
        summarize("d", subs, outcomes, "meter", ["e0", "e1"]).to_api_gateway()["body"]
    )
    native = json.loads(summarize("d", subs, outcomes).to_api_gateway()["body"])
    # then each source result carries its event id, and no native result has the field
    assert source["results"] == [
        {"index": 0, "status": "posted", "usage_id": 100, "event_id": "e0"},
        {"index": 1, "status": "posted", "usage_id": 101, "event_id": "e1"},
    ]
    assert [sorted(r) for r in native["results"]] == [["index", "status", "usage_id"]] * 2
    with pytest.raises(ValueError, match="one event id per record"):
        summarize("d", subs, outcomes, "meter", ["e0"])


# --- generated payloads, per time format -----------------------------------------------------

EXAMPLES_PER_FORMAT = 1000
instants = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2026, 11, 25), timezones=st.just(UTC)
)
factors = st.sampled_from(["1", "0.000000001", "0.001", "1000", "0.25", "3.6", "1e-6"])
amounts = st.one_of(
    st.integers(0, 10**12),
    st.decimals(min_value=0, max_value=10**9, places=6, allow_nan=False, allow_infinity=False),
)


def _expect(amount: Decimal | int, factor: str) -> Decimal:
    return Decimal(amount) * Decimal(factor)


@pytest.mark.parametrize("time_format", ["rfc3339", "epoch_seconds", "epoch_millis"])
def test_mapping_never_changes_a_meters_quantity_or_instant(time_format: str) -> None:
    seen: list[int] = []

    @settings(max_examples=EXAMPLES_PER_FORMAT, deadline=None, derandomize=True, database=None)
    @given(
        moment=instants,
        amount=amounts,
        factor=factors,
        as_text=st.booleans(),
        offset=st.integers(-23 * 60, 23 * 60),
    )
    def check(moment: datetime, amount: Any, factor: str, as_text: bool, offset: int) -> None:
        if time_format == "rfc3339":
            from datetime import timezone

            value: Any = moment.astimezone(timezone(timedelta(minutes=offset))).isoformat()
        else:
            micros = (moment - EPOCH) // timedelta(microseconds=1)
            value = Decimal(micros).scaleb(-6 if time_format == "epoch_seconds" else -3)
            value = str(value) if as_text else value
        quantity = str(amount) if as_text else amount
        p = profile(time_format=time_format, quantity_factor=factor)
        [usage] = mapped(p, {"t": value, "q": quantity, "id": "e"})
        assert usage.date_time == moment
        assert usage.quantity == _expect(amount, factor)
        assert Decimal(json.loads(usage.piriod_body(), parse_float=Decimal)["quantity"]) == (
            _expect(amount, factor)
        )
        seen.append(1)

    check()
    assert len(seen) >= EXAMPLES_PER_FORMAT


def test_a_cloudevents_profile_may_name_event_id_but_the_key_is_source_and_id() -> None:
    # given a cloudevents profile written from SPEC section 8's schema, event_id included
    p = profile(shape="cloudevents", fields={"quantity": "data.q", "event_id": "data.ref"})
    event = {**CLOUD_EVENT, "data": {"q": 2, "ref": "other"}}
    # then the document validates, and the key is still the event's source and id
    [usage] = mapped(p, event)
    assert json.loads(usage.key.text) == ["urn:a", "e1"]


def test_one_key_twice_in_a_delivery_is_refused_as_on_the_native_route() -> None:
    # given a meter that repeats an event id, and a CloudEvents batch that repeats source+id
    p = profile(records="r")
    same = {"t": "2026-11-01T00:00:00Z", "q": 1, "id": "dup"}
    event = {**CLOUD_EVENT, "data": {"q": 2}}
    cloud = profile(shape="cloudevents", fields={"quantity": "data.q"})
    # then each is a 422 naming the repeating record, and nothing is mapped
    assert problems(p, {"r": [same, {**same, "q": 2}, {**same, "id": "other"}]}) == {
        (1, "event_id")
    }
    assert problems(cloud, [event, {**event, "data": {"q": 3}}]) == {(1, "event")}


def test_a_cloudevent_with_data_base64_maps_through_powertools_functions() -> None:
    # given a CloudEvent whose data travels as data_base64, and the README's field path
    p = profile(
        shape="cloudevents",
        fields={"quantity": "powertools_json(powertools_base64(data_base64)).q"},
    )
    event = {**CLOUD_EVENT, "data_base64": base64.b64encode(b'{"q": "2.50"}').decode()}
    # when it is mapped, then the quantity keeps its digits and the time is the event's
    [usage] = mapped(p, event)
    assert (usage.quantity_text, usage.date_time) == ("2.50", datetime(2026, 11, 1, tzinfo=UTC))


# --- exact decimals through JMESPath's and Powertools' functions -------------------------------

LONG = "1.234567890123456789012"  # 22 significant digits: a binary float keeps 17


def test_a_long_decimal_in_data_base64_keeps_every_digit_after_the_factor() -> None:
    # given a CloudEvent whose data_base64 carries a quantity a float cannot hold
    p = profile(
        shape="cloudevents",
        quantity_factor="1000",
        fields={"quantity": "powertools_json(powertools_base64(data_base64)).quantity"},
    )
    data = b'{"quantity": ' + LONG.encode() + b"}"
    event = {**CLOUD_EVENT, "data_base64": base64.b64encode(data).decode()}
    # when it is mapped, then the quantity is exact, times the factor exactly
    [usage] = mapped(p, event)
    assert usage.quantity == Decimal(LONG) * 1000
    assert usage.quantity_text == "1234.567890123456789012000"


def test_powertools_json_on_a_string_field_keeps_every_digit() -> None:
    p = profile(fields={"date_time": "t", "quantity": "powertools_json(body).q", "event_id": "id"})
    record = {"t": "2026-11-01T00:00:00Z", "id": "a", "body": '{"q": ' + LONG + "}"}
    [usage] = mapped(p, record)
    assert usage.quantity == Decimal(LONG)
    assert usage.original["quantity"] == LONG


def test_powertools_base64_gzip_keeps_every_digit() -> None:
    import gzip

    p = profile(
        fields={
            "date_time": "t",
            "quantity": "powertools_json(powertools_base64_gzip(z)).q",
            "event_id": "id",
        }
    )
    z = base64.b64encode(gzip.compress(b'{"q": ' + LONG.encode() + b"}")).decode()
    [usage] = mapped(p, {"t": "2026-11-01T00:00:00Z", "id": "a", "z": z})
    assert usage.quantity == Decimal(LONG)


@pytest.mark.parametrize(
    "embedded",
    [
        '{"q": 1,',  # not JSON
        '{"q": 1, "q": 2}',  # a repeated key
        '{"q": NaN}',  # not a JSON number
        "[" * 100 + "]" * 100,  # deeper than the decoder's bound
        '{"q": "\ud800"}',  # a lone surrogate cannot be UTF-8
    ],
)
def test_embedded_json_that_is_not_acceptable_is_a_422_naming_the_field(embedded: str) -> None:
    p = profile(fields={"date_time": "t", "quantity": "powertools_json(body).q", "event_id": "id"})
    record = {"t": "2026-11-01T00:00:00Z", "id": "a", "body": embedded}
    assert problems(p, record) == {(0, "quantity")}


def test_the_422_for_embedded_json_says_why() -> None:
    p = profile(fields={"date_time": "t", "quantity": "powertools_json(body).q", "event_id": "id"})
    with pytest.raises(BodyError) as err:
        mapped(p, {"t": "2026-11-01T00:00:00Z", "id": "a", "body": '{"q": 1, "q": 2}'})
    [problem] = err.value.problems
    assert "powertools_json(body).q" in problem.message
    assert "powertools_json: duplicate key 'q'" in problem.message


def test_a_gzip_bomb_is_a_422_not_a_gigabyte() -> None:
    import gzip

    p = profile(
        fields={"date_time": "t", "quantity": "powertools_base64_gzip(z)", "event_id": "id"}
    )
    z = base64.b64encode(gzip.compress(b"0" * (64 * 1024 * 1024))).decode()
    assert problems(p, {"t": "2026-11-01T00:00:00Z", "id": "a", "z": z}) == {(0, "quantity")}


@pytest.mark.parametrize(
    ("records", "kept"),
    [
        ("r[?q == `0.1`]", ["a"]),
        ("r[?q >= `0.1`]", ["a", "b"]),
        ("r[?q > `0.1`]", ["b"]),
        ("r[?q < `0.1`]", []),
        ("r[?q != `0.1`]", ["b"]),
        ("r[?q == `1`]", []),
        ("r[?q > `0`] | sort_by(@, &q)", ["a", "b"]),
        ("r | [max_by(@, &q)]", ["b"]),
        ("r[?type(q) == 'number']", ["a", "b"]),
        ("r[?contains(`[0.1, 2]`, q)]", ["a"]),
    ],
)
def test_filters_and_comparisons_see_decimals_as_the_numbers_they_are(
    records: str, kept: list[str]
) -> None:
    # given records whose quantities are decimals, embedded and not
    body = '[{"t": "2026-11-01T00:00:00Z", "q": 0.1, "id": "a"}, {"t": "2026-11-01T00:00:00Z", '
    body += '"q": 1.234567890123456789012, "id": "b"}]'
    p = profile(records=records)
    embedded = profile(records=records.replace("r", "powertools_json(r)", 1))
    from piriod_adapter import jsondoc

    for each, payload in ((p, {"r": jsondoc.loads(body.encode())}), (embedded, {"r": body})):
        assert [u.key.text for u in mapped(each, payload)] == kept


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("sum(q)", "1.334567890123456789012"),
        ("max(q)", LONG),
        ("abs(neg)", "1.2345678901234567890123456789012"),
        ("to_number(text)", LONG),
        ("to_number(q[0])", "0.1"),
        ("to_number(to_string(q[1]))", LONG),
        ("avg(q)", "0.667283945061728394506"),
        ("ceil(q[0])", "1"),
        ("`0.1`", "0.1"),
    ],
)
def test_jmespath_numeric_functions_are_exact_on_decimals(quantity: str, expected: str) -> None:
    from piriod_adapter import jsondoc

    p = profile(fields={"date_time": "t", "quantity": quantity, "event_id": "id"})
    record = jsondoc.loads(
        b'{"t": "2026-11-01T00:00:00Z", "id": "a", "q": [0.1, 1.234567890123456789012],'
        b' "neg": -1.2345678901234567890123456789012, "text": "1.234567890123456789012"}'
    )
    [usage] = mapped(p, record)
    assert usage.quantity == Decimal(expected)


def test_a_literal_number_too_long_for_jmespath_is_refused_when_the_profile_loads() -> None:
    fields = {"date_time": "t", "quantity": "q", "event_id": "id"}
    document = {
        "version": 1,
        "sources": {
            "m": {
                "signature": {"scheme": "stripe", "secret_id": "s"},
                "records": "r[?q == `0.10000000000000000001`]",
                "fields": fields,
                "subscription_line": 7,
            }
        },
    }
    assert "field records: the literal" in str(
        parse_document(json.dumps(document).encode()).broken["m"]
    )
    # a raw string literal is a string, whatever digits it holds
    document["sources"]["m"]["records"] = "r[?q == '0.10000000000000000001']"  # type: ignore[index]
    assert parse_document(json.dumps(document).encode()).sources["m"]


# A path of plain fields is looked up without JMESPath's interpreter (a cost of every
# event): it must find what the interpreter finds, for any JSON value.
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3) | st.decimals(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner),
    max_leaves=12,
)


@settings(max_examples=300)
@given(data=_JSON, path=st.sampled_from(["a", "a.b", "a.b.c", '"b".a', "c.c"]))
def test_field_paths_find_what_jmespath_finds(data: Any, path: str) -> None:
    from piriod_adapter.sources import _field_path, _options, _search, compile_exact

    compiled = compile_exact(path)
    assert _field_path(compiled.parsed) is not None

    fields = SimpleNamespace(field_paths={"x": _field_path(compiled.parsed)})  # what it reads
    assert _search(fields, "x", data) == compiled.search(data, options=_options())  # type: ignore[arg-type]


def test_only_plain_field_paths_skip_the_interpreter() -> None:
    from piriod_adapter.sources import _field_path, compile_exact

    for path in ("a[0]", "a || b", "a.*", "@", "a[?b]", "to_string(a)", "a.b[0].c", "`1`"):
        assert _field_path(compile_exact(path).parsed) is None, path
    assert _field_path(compile_exact("data.object.id").parsed) == ("data", "object", "id")
