"""The seams where a record changes hands (issue: exactly once at every seam), each over the
real handlers, moto server and the Piriod stand-in on loopback: a lookup that reads Piriod's
numbers at their own precision, one odd byte in an answer, a body sent a byte a second, a
huge error map, a token that cannot be a header, a 201 whose id is 0, a listing that never
ends, deliveries holding the same keys in opposite order, and SQS handing a rejected record
over again."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from piriod_devkit.aws import client
from tests.conftest import Adapter
from tests.integration.test_alarms import emf_documents
from tests.integration.test_replay import drain_replay


def record(line: int = 101, quantity: Any = 2, **extra: Any) -> dict[str, Any]:
    return {
        "subscription_line": line,
        "date_time": "2026-11-01T10:00:00Z",
        "quantity": quantity,
        **extra,
    }


def posts(piriod: Any) -> int:
    return [r["method"] for r in piriod.requests].count("POST")


# --- 1. settling at the precision Piriod lists ------------------------------------------------


@pytest.mark.parametrize(
    ("listing", "sent"),
    [
        ({"quantity": "float", "filters": "exact_text"}, record(quantity=1.23456789012345678)),
        ({"quantity": "places:2", "filters": "exact_text"}, record(quantity=2.345)),
        (
            {"date_time": "millis", "filters": "exact_text"},
            record(date_time="2026-11-01T10:00:00.123456Z"),
        ),
        ({"quantity": "float"}, record(quantity=1.23456789012345678)),
    ],
)
def test_a_usage_listed_at_lower_precision_settles_its_record(
    adapter: Adapter, piriod: Any, listing: dict[str, str], sent: dict[str, Any]
) -> None:
    # given Piriod listing usages at a lower precision than they were sent, and a post that
    # was stored but whose answer was lost
    piriod.set_listing(**listing)
    adapter.fresh_runtime(PIRIOD_READ_TIMEOUT="1")
    piriod.add_fault("timeout_after_store", count=1, delay=2)
    raw = json.dumps(sent).replace("1.2345678901234568", "1.23456789012345678")
    status, body = adapter.deliver(raw)
    assert status == 202 and body["results"][0]["status"] == "queued"
    # when ReplayFunction settles it by lookup
    drain_replay(adapter)
    # then it is found, not posted a second time
    assert len(piriod.usages()) == 1 and posts(piriod) == 1
    assert adapter.messages("replay") == [] and adapter.messages("dead_letter") == []


# --- 2. odd text from Piriod -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"quantity": ["bad \\ud800 value"], "\\udfff": ["x"]}',
        b'{"quantity": ["not utf-8 \xff\xfe here"]}',
    ],
)
def test_odd_text_in_an_error_map_touches_only_its_record(
    adapter: Adapter, piriod: Any, raw: bytes
) -> None:
    # given Piriod rejecting one record with an error map that holds text UTF-8 cannot
    # carry, and throttling the other record of the delivery
    piriod.add_fault("reject_body", body=raw, lines=[101], count=1)
    piriod.add_fault("status", status=429, lines=[102], count=1)
    # when the delivery arrives
    status, body = adapter.deliver({"usages": [record(101), record(102)]})
    # then both records are in their place: rejected with the text replaced, and queued
    assert status == 202, body
    rejected, queued = body["results"]
    assert rejected["status"] == "rejected" and "\ufffd" in json.dumps(rejected, ensure_ascii=False)
    assert queued["status"] == "queued"
    assert len(adapter.messages("dead_letter")) == 1 and len(adapter.messages("replay")) == 1


# --- 3. a body sent a byte a second -------------------------------------------------------------


def test_a_201_whose_body_drips_is_posted_in_the_post_time(adapter: Adapter, piriod: Any) -> None:
    # given Piriod sending a 201's headers at once and its body a byte a second
    piriod.add_fault("drip", delay=1.0, count=1)
    # when a record is delivered
    status, body = adapter.deliver(record())
    # then the answer came within the post's own time (the body was not waited for) and
    # the record is posted: a 201 means created, whatever the body
    assert status == 202 and body["results"][0]["status"] == "posted"
    assert len(piriod.usages()) == 1 and adapter.messages("replay") == []


# --- 4. a 202 too large for Lambda ---------------------------------------------------------------


def test_a_hundred_huge_error_maps_answer_under_one_mebibyte(adapter: Adapter, piriod: Any) -> None:
    # given Piriod rejecting every record with a 600 KB error map of escaped characters
    huge = json.dumps({f"field_{n}": ["\u0001" * 1000] * 5 for n in range(20)}).encode()
    piriod.add_fault("reject_body", body=huge)
    # when 100 records arrive
    raw = json.dumps({"usages": [record(quantity=n) for n in range(100)]})
    status, body = adapter.deliver(raw, timeout_seconds=60)
    # then every record is rejected and kept, and the answer stays under 1 MiB
    assert status == 202
    assert {r["status"] for r in body["results"]} == {"rejected"}
    assert len(json.dumps(body).encode()) < 1024 * 1024
    assert all(r.get("errors_omitted") for r in body["results"])
    # and each queue message keeps more of the error map than the answer does
    kept = adapter.messages("dead_letter")
    assert len(kept) == 100
    in_message = sum(len(v) for v in kept[0]["failure"]["errors"].values())
    in_answer = sum(len(v) for v in body["results"][0]["errors"].values())
    assert in_message > in_answer


# --- 5. a token that cannot be a header value ----------------------------------------------------


@pytest.mark.parametrize("token", ["tok\nen", "tökén"])
def test_a_token_that_cannot_be_a_header_queues_and_counts_for_the_alarm(
    adapter: Adapter, piriod: Any, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a token secret holding a value no HTTP header can carry
    secrets = client("secretsmanager", adapter.endpoint)
    secrets.put_secret_value(
        SecretId=adapter.resources.token_secret_arn, SecretString=json.dumps({"api_token": token})
    )
    adapter.fresh_runtime()
    capsys.readouterr()
    # when a delivery arrives
    status, body = adapter.deliver(record())
    # then the record is queued (not a 503 loop), nothing was sent, and the token alarm's
    # metric counts it
    assert status == 202 and body["results"][0]["status"] == "queued"
    assert posts(piriod) == 0 and len(adapter.messages("replay")) == 1
    documents = emf_documents(capsys.readouterr().out)
    assert any(d.get("piriod_unauthorized") for d in documents)


# --- 7. a 201 with id 0 --------------------------------------------------------------------------


def test_a_201_with_id_zero_is_posted(adapter: Adapter, piriod: Any) -> None:
    # given Piriod answering 201 with `id: 0` (what a mock server of its spec answers)
    piriod.add_fault("answer_after_store", status=201, body="zero_id", count=1)
    # when a record is delivered
    status, body = adapter.deliver(record())
    # then it is posted, without a usage id, and nothing waits in a queue
    assert status == 202 and body["results"][0] == {"index": 0, "status": "posted"}
    assert adapter.messages("replay") == [] and len(piriod.usages()) == 1


# --- 8. a listing that never ends ----------------------------------------------------------------


def test_a_lookup_listing_that_never_ends_reads_a_bounded_number_of_pages(
    adapter: Adapter, piriod: Any
) -> None:
    # given an ambiguous record and a Piriod listing whose `next` never ends
    piriod.add_fault("status", status=502, count=1)
    _, body = adapter.deliver(record())
    assert body["results"][0]["status"] == "queued"
    piriod.add_fault("endless_listing")
    # when ReplayFunction tries to settle it
    drain_replay(adapter, max_batches=1)
    # then it asked for a bounded number of pages, posted nothing, and the record waits
    gets = [r for r in piriod.requests if r["method"] == "GET"]
    assert 0 < len(gets) <= 20
    assert posts(piriod) == 1 and len(piriod.usages()) == 0


# --- 9. deliveries holding the same keys in opposite order ---------------------------------------


def test_deliveries_with_the_same_records_in_opposite_order_do_not_wait_on_each_other(
    adapter: Adapter, piriod: Any
) -> None:
    # given two deliveries holding the same two keyed records in opposite order, sent at
    # once while each post takes a moment
    piriod.add_fault("latency", delay=0.3)
    a = record(101, idempotency_key="key-a")
    b = record(102, idempotency_key="key-b")
    answers: list[Any] = [None, None]

    def send(n: int, usages: list[dict[str, Any]]) -> None:
        answers[n] = adapter.deliver({"usages": usages}, message_id=f"msg_order_{n}")

    threads = [
        threading.Thread(target=send, args=(0, [a, b])),
        threading.Thread(target=send, args=(1, [b, a])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then each record was posted once, and the other delivery saw it done (a duplicate):
    # no record was handed over to ReplayQueue for waiting on the other's key
    statuses = sorted(r["status"] for _, body in answers for r in body["results"])
    assert statuses == ["duplicate", "duplicate", "posted", "posted"]
    assert len(piriod.usages()) == 2 and adapter.messages("replay") == []


# --- 10. SQS handing a rejected record over again ------------------------------------------------


def test_a_redelivered_replay_message_of_a_rejected_record_is_not_posted_again(
    adapter: Adapter, piriod: Any
) -> None:
    # given a queued record that replay then finds rejected (its line is not metered)
    piriod.add_fault("status", status=429, count=1)
    adapter.deliver(record())
    [message] = adapter.messages("replay")
    piriod.set_unmetered_lines(101)
    drain_replay(adapter)
    assert len(adapter.messages("dead_letter")) == 1
    before = posts(piriod)
    # when SQS hands the same replay message over again
    sqs = client("sqs", adapter.endpoint)
    sqs.send_message(QueueUrl=adapter.resources.replay_queue_url, MessageBody=json.dumps(message))
    drain_replay(adapter)
    # then it is not posted again, and not dead-lettered twice
    assert posts(piriod) == before
    assert len(adapter.messages("dead_letter")) == 1 and adapter.messages("replay") == []
