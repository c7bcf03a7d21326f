"""Hostile deliveries, generated: after each one, the promise is checked against what really
happened (the Piriod stand-in's ledger, both queues, the idempotency table):

- the answer is a 4xx with nothing posted, claimed or stored, or a 202 whose every record is
  where its status says, or a 503 only while a store is down;
- never a 500;
- never a record posted twice, including after ReplayFunction drained what was queued.

Real handler, moto server and the Piriod stand-in over loopback. The example counts (at
least 2,000 in all) can be raised with HOSTILE_EXAMPLES; HOSTILE_RANDOM=1 explores new
examples instead of CI's fixed ones.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piriod_adapter.models import KeyKind, UsageKey
from piriod_adapter.queue import receive_all
from piriod_adapter.table import key_pk
from piriod_devkit.aws import client
from piriod_devkit.events import http_event, sign_event
from piriod_devkit.poller import drain
from tests.conftest import Adapter

SCALE = int(os.environ.get("HOSTILE_EXAMPLES", "1"))
PROFILE = {
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
    "database": None,
    "derandomize": os.environ.get("HOSTILE_RANDOM") != "1",
    "print_blob": True,
}
_lines = itertools.count(5_000_000)


# --- records ------------------------------------------------------------------------------------


@dataclass
class Sent:
    """A record as the generator wrote it: each field's JSON text, in the order written."""

    fields: dict[str, str]
    key: str | None = None

    @property
    def text(self) -> str:
        return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in self.fields.items()) + "}"

    @property
    def line(self) -> int:
        return int(self.fields["subscription_line"])


def _offset(minutes: int) -> str:
    if minutes == 0:
        return "Z"
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@st.composite
def instants(draw: Any) -> tuple[str, datetime]:
    """A valid RFC 3339 time in the past, in any offset, with 0 to 9 fraction digits (only
    six of them significant)."""
    moment = draw(
        st.datetimes(
            min_value=datetime(1, 1, 2), max_value=datetime(2026, 11, 1), timezones=st.just(UTC)
        )
    )
    minutes = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59))
    local = moment.astimezone(timezone(timedelta(minutes=minutes)))
    digits = draw(st.integers(0, 9))
    fraction = f"{local.microsecond:06d}".ljust(9, "0")[:digits]
    if digits < 6:
        local = local.replace(microsecond=int(fraction.ljust(6, "0")) if digits else 0)
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    text = f"{local.year:04d}" + text[text.index("-") :]
    if digits:
        text += "." + fraction
    return text + _offset(minutes), local.astimezone(UTC)


quantity_texts = st.one_of(
    st.integers(0, 10**19).map(str),
    st.decimals(
        min_value=0, max_value=Decimal("1e19") - 1, allow_nan=False, allow_infinity=False
    ).map(lambda d: str(d) if d.as_tuple().exponent >= -40 else "1"),  # type: ignore[operator]
    st.sampled_from(["1.10", "1e3", "1E+3", "1E-7", "0.0", "-0.0", "12.500", "0E+5", "1e-40"]),
)


@st.composite
def valid_record(draw: Any, *, key: str | None = None) -> Sent:
    date_text, _ = draw(instants())
    fields = {
        "subscription_line": str(next(_lines)),
        "date_time": f'"{date_text}"',
        "quantity": draw(quantity_texts),
    }
    if key is not None:
        fields["idempotency_key"] = json.dumps(key)
    order = draw(st.permutations(sorted(fields)))
    return Sent({name: fields[name] for name in order}, key)


hostile_values = {
    "subscription_line": [
        "0",
        "-1",
        "9223372036854775808",
        "9" * 45,
        "9" * 5000,
        "1.0",
        '"101"',
        "true",
        "null",
        "[]",
        "1e3",
    ],
    "date_time": [
        '"0001-01-01T00:00:00+01:00"',
        '"9999-12-31T23:59:59-01:00"',
        '"0000-01-01T00:00:00Z"',
        '"2026-11-01T10:00:00.1234567Z"',
        '"2026-11-01T10:00:00"',
        '"2026-11-01"',
        '"2999-01-01T00:00:00Z"',
        '"2026-11-01T24:00:00Z"',
        '"2026-02-30T00:00:00Z"',
        '"2026-11-01T10:00:00+24:00"',
        '"\\ud800"',
        "1761991200",
        "null",
    ],
    "quantity": [
        "-1",
        "1e20",
        "1e400",
        "1e-41",
        "1" * 5000,
        '"1.5"',
        "NaN",
        "Infinity",
        "-Infinity",
        "true",
        "null",
        "{}",
    ],
    "idempotency_key": ['""', json.dumps("k" * 256), '"bad\\nkey"', '"\\ud800"', "7"],
}


@st.composite
def hostile_record(draw: Any) -> Sent:
    """A record with one field made hostile, one left out, or one that does not exist."""
    parts = dict(draw(valid_record()).fields)
    choice = draw(st.sampled_from(["bad", "missing", "unknown"]))
    if choice == "bad":
        name = draw(st.sampled_from(sorted(hostile_values)))
        parts[name] = draw(st.sampled_from(hostile_values[name]))
    elif choice == "missing":
        del parts[draw(st.sampled_from(sorted(parts)))]
    else:
        parts[draw(st.sampled_from(["subscription_id", "qty", "x" * 300, ""]))] = "1"
    return Sent(parts)


@st.composite
def hostile_body(draw: Any) -> bytes:
    """A body that must be refused as a whole (a 4xx), in one of many ways."""
    kind = draw(
        st.sampled_from(
            [
                "record",
                "batch",
                "deep",
                "big_batch",
                "not_json",
                "shape",
                "duplicate_keys",
                "huge",
                "binary",
            ]
        )
    )
    if kind == "record":
        one: Sent = draw(hostile_record())
        return one.text.encode("utf-8", "surrogatepass")
    if kind == "batch":
        good = draw(st.lists(valid_record(), max_size=3))
        bad = draw(hostile_record())
        records = draw(st.permutations([*good, bad]))
        return ('{"usages": [' + ", ".join(r.text for r in records) + "]}").encode(
            "utf-8", "surrogatepass"
        )
    if kind == "deep":
        depth: int = draw(st.sampled_from([65, 1000, 50_000]))
        return b'{"usages": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "big_batch":
        count = draw(st.sampled_from([0, 101]))
        return ('{"usages": [' + ", ".join([draw(valid_record()).text] * count) + "]}").encode()
    if kind == "not_json":
        junk: bytes = draw(st.sampled_from([b"", b"subscription_line=1", b"{", b"\xff", b"n\x00"]))
        return junk
    if kind == "shape":
        shape: bytes = draw(st.sampled_from([b"[]", b"null", b"7", b'"x"', b'{"usages": {}}']))
        return shape
    if kind == "duplicate_keys":
        return b'{"subscription_line": 1, "subscription_line": 2}'
    if kind == "huge":
        return b'{"usages": [' + b" " * (1024 * 1024) + b"]}"
    noise: bytes = draw(st.binary(min_size=1, max_size=64))
    return noise


# --- what is checked ----------------------------------------------------------------------------


@dataclass
class World:
    """What the test knows happened, to hold the adapter to."""

    adapter: Adapter
    piriod: Any
    dead: str  # an endpoint where nothing listens, to take a store down
    delivered: int = 0
    seen: Counter[str] = field(default_factory=Counter)  # answers and record states
    sqs: Any = None
    dynamodb: Any = None
    rejected: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # pk -> messages

    def __post_init__(self) -> None:
        self.sqs = client("sqs", self.adapter.endpoint)
        self.dynamodb = client("dynamodb", self.adapter.endpoint)

    def item_count(self) -> int:
        # moto keeps ItemCount exact (AWS refreshes it every few hours; this is a test)
        table = self.dynamodb.describe_table(TableName=self.adapter.resources.table)["Table"]
        return int(table["ItemCount"])

    def queue_count(self, url: str) -> int:
        attributes = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])[
            "Attributes"
        ]
        return sum(
            int(attributes[name])
            for name in (
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            )
        )

    def snapshot(self) -> tuple[int, int, int, int]:
        return (
            len(self.piriod.requests),
            self.item_count(),
            self.queue_count(self.adapter.resources.replay_queue_url),
            self.queue_count(self.adapter.resources.dead_letter_queue_url),
        )

    def items(self, pks: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        wanted = sorted(set(pks))
        for start in range(0, len(wanted), 100):
            response = self.dynamodb.batch_get_item(
                RequestItems={
                    self.adapter.resources.table: {
                        "Keys": [{"pk": {"S": pk}} for pk in wanted[start : start + 100]],
                        "ConsistentRead": True,
                    }
                }
            )
            for item in response["Responses"][self.adapter.resources.table]:
                found[item["pk"]["S"]] = item
        return found

    def take_dead_letters(self) -> None:
        url = self.adapter.resources.dead_letter_queue_url
        for message in receive_all(self.sqs, url, hold_seconds=60, wait_seconds=0):
            body = json.loads(message["Body"])
            self.rejected.setdefault(key_pk(UsageKey(**body["usage"]["key"])), []).append(body)
            self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])

    def replay_keys(self) -> Counter[str]:
        url = self.adapter.resources.replay_queue_url
        return Counter(
            key_pk(UsageKey(**json.loads(m["Body"])["usage"]["key"]))
            for m in receive_all(self.sqs, url, wait_seconds=0)
        )

    def drain_replay(self) -> None:
        from piriod_adapter.handlers.replay import lambda_handler

        drain(self.sqs, self.adapter.resources.replay_queue_url, lambda_handler)

    def ledger_lines(self) -> Counter[int]:
        return Counter(u["subscription_line"] for u in self.piriod.usages())


def sent_records(body: bytes) -> list[dict[str, Any]]:
    """The body's records, read independently of the adapter (for a 202 only)."""
    document: dict[str, Any] = json.loads(body, parse_float=Decimal)
    records: list[dict[str, Any]] = document.get("usages", [document])
    return records


def key_of(record: dict[str, Any], webhook_id: str, index: int) -> str:
    own = record.get("idempotency_key")
    if own is not None:
        return key_pk(UsageKey(kind=KeyKind.EXPLICIT, scope="v1/usages", text=own))
    return key_pk(UsageKey(kind=KeyKind.DELIVERY, scope="v1/usages", text=f"{webhook_id}:{index}"))


def is_record(usage: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether a usage in the ledger has this sent record's line, instant and value."""
    sent_at = datetime.fromisoformat(record["date_time"].upper().replace("Z", "+00:00"))
    return (
        usage["subscription_line"] == record["subscription_line"]
        and datetime.fromisoformat(usage["date_time"].replace("Z", "+00:00")) == sent_at
        and Decimal(usage["quantity"]) == Decimal(str(record["quantity"]))
    )


def check(
    world: World,
    status: int,
    answer: dict[str, Any],
    body: bytes,
    webhook_id: str,
    before: tuple[int, int, int, int] | None,
    store_down: bool,
) -> None:
    assert status != 500, answer
    assert status in (202, 400, 401, 413, 422, 503), (status, answer)
    if 400 <= status < 500:
        assert answer.get("message"), answer
        assert before is not None, f"a valid delivery was refused: {answer}"
        assert world.snapshot() == before, "a refused delivery left a trace"
        return
    if status == 503:
        assert store_down, f"503 while every store was up: {answer}"
    records = sent_records(body)
    results = answer["results"]
    assert [r["index"] for r in results] == list(range(len(records)))
    states = {r["status"] for r in results}
    ledger = {u["id"]: u for u in world.piriod.usages()}
    if "rejected" in states:
        world.take_dead_letters()
    waiting = world.replay_keys() if "queued" in states else Counter[str]()
    keys = [key_of(records[r["index"]], webhook_id, r["index"]) for r in results]
    items = world.items([k for k, r in zip(keys, results, strict=True) if r["status"] in KEPT])
    for result, pk in zip(results, keys, strict=True):
        record = records[result["index"]]
        state = result["status"]
        if state == "posted":
            sent_at = datetime.fromisoformat(record["date_time"].upper().replace("Z", "+00:00"))
            assert sent_at <= datetime.now(UTC) + timedelta(minutes=5)
            assert items[pk]["status"]["S"] == "posted"

            if "usage_id" in result:
                assert is_record(ledger[result["usage_id"]], record)
                assert int(items[pk]["usage_id"]["N"]) == result["usage_id"]
            else:  # a 201 whose body had no usable id: posted, and in the ledger
                assert "usage_id" not in items[pk]
                assert any(is_record(u, record) for u in ledger.values()), record
        elif state == "duplicate":
            assert items[pk]["status"]["S"] in ("posted", "queued", "rejected")
            if "usage_id" in result:
                assert int(items[pk]["usage_id"]["N"]) == result["usage_id"]
        elif state == "queued":
            assert waiting[pk] >= 1, f"queued but not in ReplayQueue: {record}"
        elif state == "rejected":
            assert world.rejected.get(pk), f"rejected but not in DeadLetterQueue: {record}"
            assert result.get("errors")
        else:
            assert state == "not_stored" and status == 503, result


KEPT = ("posted", "duplicate")


def deliver(
    world: World,
    body: bytes,
    webhook_id: str,
    *,
    valid: bool = False,
    store_down: bool = False,
    headers: dict[str, str] | None = None,
) -> int:
    """Sign and deliver a body (then let `headers` overwrite what was signed), and check the
    promise. For a delivery meant to be `valid`, a 4xx is itself the failure, so no snapshot
    of the stores is needed beforehand."""
    before = None if valid else world.snapshot()
    event = sign_event(
        http_event("POST", "/v1/usages", body, {"content-type": "application/json"}),
        world.adapter.secret,
        message_id=webhook_id,
    )
    event["headers"].update(headers or {})
    status, answer = world.adapter.invoke(event)
    world.delivered += 1
    world.seen[str(status)] += 1
    for result in answer.get("results", []):
        world.seen[result["status"]] += 1
    check(world, status, answer, body, webhook_id, before, store_down)
    return status


def no_second_post(world: World) -> None:
    """Let ReplayFunction take what waits (Piriod healthy), then: ReplayQueue is empty and no
    line (each generated record has its own) is in Piriod twice."""
    world.piriod.clear_faults()
    world.drain_replay()
    assert world.queue_count(world.adapter.resources.replay_queue_url) == 0
    twice = [line for line, n in world.ledger_lines().items() if n > 1]
    assert twice == [], f"posted twice: lines {twice}"


# --- the properties -----------------------------------------------------------------------------


@pytest.fixture
def world(adapter: Adapter, piriod: Any, dead_endpoint: str) -> World:
    adapter.fresh_runtime(REPLAY_BACKOFF_SECONDS="0")
    return World(adapter, piriod, dead_endpoint)


HOSTILE = 1500 * SCALE


@settings(max_examples=HOSTILE, **PROFILE)  # type: ignore[arg-type]
@given(data=st.data())
def _hostile(world: World, data: Any) -> None:
    webhook_id = data.draw(
        st.one_of(
            st.just(f"msg_{next(_lines)}"),
            st.text(min_size=1, max_size=40).filter(lambda t: t.strip() == t and t.isprintable()),
            st.just("msg_" + "é" * 1024),
        )
    )
    headers = data.draw(st.one_of(st.none(), st.sampled_from(HOSTILE_HEADERS)))
    body = data.draw(hostile_body()) if headers is None else data.draw(valid_record()).text.encode()
    deliver(world, body, webhook_id, headers=headers)


HOSTILE_HEADERS: list[dict[str, str]] = [
    {"webhook-timestamp": "9" * 400},
    {"webhook-timestamp": str(2**64)},
    {"webhook-timestamp": "-1"},
    {"webhook-timestamp": "1e9"},
    {"webhook-timestamp": "0"},
    {"webhook-signature": "v1," + "A" * 20_000},
    {"webhook-signature": " ".join(["v1,AAAA"] * 2000)},
    {"webhook-signature": "v2,whatever"},
    {"webhook-signature": ""},
    {"webhook-id": ""},
    {"webhook-id": "x" * 5000},
    {"webhook-id": "tab\there"},
    {"webhook-id": "\ud800"},
]


def test_hostile_bodies_are_refused_whole_and_leave_no_trace(world: World) -> None:
    # given bodies broken in every way the generator knows, validly signed, and valid bodies
    # under broken signature headers
    # when each is delivered, then each is checked (in `check`): a 4xx and no trace
    _hostile(world)
    # and nothing of them reached Piriod, over all the examples promised
    assert world.piriod.usages() == []
    assert world.delivered >= HOSTILE
    assert {"400", "401", "413", "422"} <= set(world.seen), world.seen


FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("status", {"status": 400}),
    ("status", {"status": 401}),
    ("status", {"status": 403}),
    ("status", {"status": 404}),
    ("status", {"status": 429, "retry_after": 120}),
    ("status", {"status": 500}),
    ("status", {"status": 502}),
    ("status", {"status": 503}),
    ("status", {"status": 503, "retry_after": 120}),
    ("status", {"status": 504}),
    ("status", {"status": 302}),
    ("answer_after_store", {"status": 200}),
    ("answer_after_store", {"status": 201, "body": "no_id"}),
    ("answer_after_store", {"status": 201, "body": "bad_id"}),
    ("answer_after_store", {"status": 502, "body": "empty"}),
    ("reset", {}),
]
MIXES = 500 * SCALE


@settings(max_examples=MIXES, **PROFILE)  # type: ignore[arg-type]
@given(data=st.data())
def _mixes(world: World, data: Any) -> None:
    piriod, adapter = world.piriod, world.adapter
    # a valid batch: records with their own keys, derived keys, or a key shaped like a
    # derived one; some Piriod trouble for some of them
    webhook_id = f"msg_{next(_lines)}"
    size = data.draw(st.integers(1, 6))
    records: list[Sent] = []
    for index in range(size):
        own = data.draw(
            st.one_of(
                st.none(),
                st.just(f"key-{next(_lines)}"),
                st.just(f"{webhook_id}:{(index + 1) % size}"),
            )
        )
        records.append(data.draw(valid_record(key=own)))
    keys = [r.key for r in records if r.key is not None]
    if len(set(keys)) < len(keys):  # one key twice in a batch is a 422, covered elsewhere
        records = [r for r in records if r.key is None]
    body = ('{"usages": [' + ", ".join(r.text for r in records) + "]}").encode()
    fault = data.draw(st.one_of(st.none(), st.sampled_from(FAULTS)))
    if fault is not None:
        count = data.draw(st.one_of(st.none(), st.integers(1, 3)))
        piriod.add_fault(fault[0], count=count, **fault[1])
    store_down = data.draw(st.sampled_from([False] * 30 + [True]))
    if store_down:  # SQS unreachable: a record Piriod does not take can be stored nowhere
        adapter.fresh_runtime(AWS_ENDPOINT_URL_SQS=world.dead)
    try:
        status = deliver(world, body, webhook_id, valid=True, store_down=store_down)
    finally:  # a failing example must not leave the next ones without a queue
        if store_down:
            adapter.monkeypatch.delenv("AWS_ENDPOINT_URL_SQS")
            adapter.fresh_runtime()
        piriod.clear_faults()
    # the sender retries a delivery that was not acknowledged, or sometimes resends one that was
    if status == 503 or data.draw(st.booleans()):
        assert deliver(world, body, webhook_id, valid=True) == 202
    # a later delivery reuses one key for a different record: not posted, not dropped
    keyed = [r for r in records if r.key is not None]
    if keyed and data.draw(st.booleans()):
        reused = keyed[0]
        other = data.draw(valid_record(key=reused.key))
        assert deliver(world, other.text.encode(), f"msg_{next(_lines)}", valid=True) == 202
        assert other.line not in world.ledger_lines()
    no_second_post(world)


def _outage_once(world: World) -> None:
    """One certain outage, so the mix below never depends on drawing it: Piriod refuses and
    SQS is unreachable, so the record is `not_stored` and the answer `503`; the sender's retry,
    with everything up, is `202`."""
    webhook_id = f"msg_{next(_lines)}"
    record = Sent(
        {
            "subscription_line": str(next(_lines)),
            "date_time": '"2026-01-01T00:00:00Z"',
            "quantity": "1",
        }
    )
    body = ('{"usages": [' + record.text + "]}").encode()
    world.piriod.add_fault("status", status=503)
    world.adapter.fresh_runtime(AWS_ENDPOINT_URL_SQS=world.dead)
    try:
        status = deliver(world, body, webhook_id, valid=True, store_down=True)
    finally:
        world.adapter.monkeypatch.delenv("AWS_ENDPOINT_URL_SQS")
        world.adapter.fresh_runtime()
        world.piriod.clear_faults()
    assert status == 503
    assert deliver(world, body, webhook_id, valid=True) == 202
    no_second_post(world)


def test_valid_mixes_with_piriod_and_store_faults_keep_every_record_once(world: World) -> None:
    # given batches with every kind of key, Piriod answering oddly, stores going down,
    # senders retrying and reusing keys
    # when each is delivered, then checked (in `check` and `no_second_post`)
    _outage_once(world)
    _mixes(world)
    # and every usage in Piriod belongs to exactly one generated record
    assert world.piriod.usages() and max(world.ledger_lines().values()) == 1
    assert world.delivered >= MIXES
    wanted = {"202", "503", "posted", "duplicate", "queued", "rejected", "not_stored"}
    assert wanted <= set(world.seen), world.seen
