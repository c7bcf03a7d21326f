"""POST /v1/usages end to end: real handler, moto server and the Piriod stand-in over loopback."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from piriod_adapter.queue import receive_all
from piriod_devkit.aws import client
from piriod_devkit.events import http_event, load_event, sign_event
from tests.conftest import TOKEN, Adapter

RECORD = {"subscription_line": 101, "date_time": "2026-11-01T10:00:00Z", "quantity": 2}
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-signing-key-for-rotation").decode()


def record(line: Any = 101, quantity: Any = 2, **extra: Any) -> dict[str, Any]:
    return {
        "subscription_line": line,
        "date_time": "2026-11-01T10:00:00Z",
        "quantity": quantity,
        **extra,
    }


def batch(n: int) -> dict[str, Any]:
    return {"usages": [record(line=1000 + i, quantity=i) for i in range(n)]}


# --- posted -----------------------------------------------------------------------------------


def test_single_record_is_posted_once_with_piriods_usage_id(adapter: Adapter, piriod: Any) -> None:
    # given a signed delivery of one record
    # when it is delivered
    status, body = adapter.deliver(RECORD)
    # then Piriod holds it once and the answer carries Piriod's id
    ledger = piriod.usages()
    assert status == 202
    assert body == {"results": [{"index": 0, "status": "posted", "usage_id": ledger[0]["id"]}]}
    assert len(ledger) == 1 and ledger[0]["subscription_line"] == 101
    assert piriod.violations() == []


def test_request_to_piriod_has_exactly_the_contract_headers_and_body(
    adapter: Adapter, piriod: Any
) -> None:
    # given a record with an explicit idempotency key (which must not reach Piriod)
    # when it is delivered
    adapter.deliver(record(idempotency_key="k-1"))
    # then Piriod saw its token, the workspace, JSON content and only the three fields
    request = next(r for r in piriod.requests if r["method"] == "POST")
    assert request["headers"]["authorization"] == f"Token {TOKEN}"
    assert request["headers"]["x-simple-workspace"] == "acc_test_workspace"
    assert request["headers"]["content-type"] == "application/json"
    assert "x-piriod-test-mode" not in request["headers"]
    assert set(json.loads(request["body"])) == {"subscription_line", "date_time", "quantity"}


def test_test_mode_sends_the_test_mode_header(adapter: Adapter, piriod: Any) -> None:
    # given a container configured for test mode
    adapter.fresh_runtime(PIRIOD_TEST_MODE="true")
    # when a record is delivered
    status, _ = adapter.deliver(RECORD)
    # then it went to Piriod's test-mode data
    assert status == 202
    request = next(r for r in piriod.requests if r["method"] == "POST")
    assert request["headers"]["x-piriod-test-mode"] == "true"
    assert len(piriod.usages(test_mode=True)) == 1 and piriod.usages(test_mode=False) == []


@pytest.mark.parametrize(
    ("raw_quantity", "sent"),
    [
        ("1.10", "1.10"),
        ("0.1000000000000000055511151231257827", "0.1000000000000000055511151231257827"),
        ("1E+2", "100"),
        ("1E-7", "0.0000001"),
        ("0", "0"),
        ("12.500", "12.500"),
    ],
)
def test_quantity_digits_reach_piriod_in_plain_notation(
    adapter: Adapter, piriod: Any, raw_quantity: str, sent: str
) -> None:
    # given a body whose quantity has digits a float would change, or an exponent
    raw = (
        '{"subscription_line": 7, "date_time": "2026-11-01T10:00:00Z", '
        f'"quantity": {raw_quantity}}}'
    )
    # when it is delivered
    status, _ = adapter.deliver(raw)
    # then Piriod received exactly those digits, in plain notation
    assert status == 202
    body = next(r for r in piriod.requests if r["method"] == "POST")["body"].decode()
    assert body.endswith(f'"quantity": {sent}}}')
    assert piriod.usages()[0]["quantity"] == sent
    assert piriod.violations() == []


def test_batch_of_100_is_posted_in_order(adapter: Adapter, piriod: Any) -> None:
    # given the largest batch allowed
    # when it is delivered
    status, body = adapter.deliver(batch(100))
    # then every record is posted once, results in index order
    assert status == 202
    assert [r["index"] for r in body["results"]] == list(range(100))
    assert {r["status"] for r in body["results"]} == {"posted"}
    ledger = piriod.usages()
    assert sorted(u["subscription_line"] for u in ledger) == list(range(1000, 1100))
    assert {r["usage_id"] for r in body["results"]} == {u["id"] for u in ledger}


def test_base64_encoded_body_is_verified_over_the_decoded_bytes(
    adapter: Adapter, piriod: Any
) -> None:
    # given API Gateway handing the body over base64-encoded
    raw = json.dumps(RECORD).encode()
    event = sign_event(http_event("POST", "/v1/usages", raw, base64_body=True), adapter.secret)
    # when it is invoked
    status, _ = adapter.invoke(event)
    # then the signature matched the raw bytes and the record was posted
    assert status == 202 and len(piriod.usages()) == 1


# --- duplicates and concurrency --------------------------------------------------------------


def test_redelivery_of_the_same_webhook_is_a_duplicate(adapter: Adapter, piriod: Any) -> None:
    # given a delivered batch
    _, first = adapter.deliver(batch(3), message_id="msg_retry_1")
    # when the sender retries it with the same webhook-id
    status, second = adapter.deliver(batch(3), message_id="msg_retry_1")
    # then nothing is sent again and the same usage ids are reported
    assert status == 202
    assert [r["status"] for r in second["results"]] == ["duplicate"] * 3
    assert [r["usage_id"] for r in second["results"]] == [r["usage_id"] for r in first["results"]]
    assert len(piriod.usages()) == 3


def test_idempotency_key_deduplicates_across_webhook_ids(adapter: Adapter, piriod: Any) -> None:
    # given a record with its own key, delivered once
    adapter.deliver(record(idempotency_key="meter-7/hour-10"), message_id="msg_a")
    # when the same record comes in a different delivery
    status, body = adapter.deliver(record(idempotency_key="meter-7/hour-10"), message_id="msg_b")
    # then it is a duplicate
    assert status == 202 and body["results"][0]["status"] == "duplicate"
    assert len(piriod.usages()) == 1


def test_key_reused_for_a_different_record_is_rejected_and_kept(
    adapter: Adapter, piriod: Any
) -> None:
    # given a key already used for one record
    adapter.deliver(record(quantity=1, idempotency_key="k-conflict"), message_id="msg_a")
    # when a different record arrives with the same key
    status, body = adapter.deliver(
        record(quantity=9, idempotency_key="k-conflict"), message_id="msg_b"
    )
    # then it is not posted, and not dropped: it is rejected and waits for a person
    result = body["results"][0]
    assert status == 202 and result["status"] == "rejected"
    assert "idempotency_key" in result["errors"]
    assert len(piriod.usages()) == 1
    [dead] = adapter.messages("dead_letter")
    assert dead["usage"]["quantity"] == "9" and dead["usage"]["key"]["text"] == "k-conflict"
    assert dead["failure"]["kind"] == "rejected" and "idempotency_key" in dead["failure"]["errors"]


def test_same_record_in_another_offset_is_a_duplicate_not_a_conflict(
    adapter: Adapter, piriod: Any
) -> None:
    # given a record delivered with its time in UTC
    adapter.deliver(record(idempotency_key="k-offset"), message_id="msg_a")
    # when it is sent again with the same instant written in another offset, and 2 as 2.0
    again = {**record(idempotency_key="k-offset"), "date_time": "2026-11-01T11:00:00+01:00"}
    status, body = adapter.deliver(json.dumps(again).replace('"quantity": 2', '"quantity": 2.0'))
    # then it is the same record: a duplicate
    assert status == 202 and body["results"][0]["status"] == "duplicate"
    assert len(piriod.usages()) == 1


def test_explicit_key_shaped_like_a_derived_one_does_not_swallow_a_delivery(
    adapter: Adapter, piriod: Any
) -> None:
    # given a record whose own key looks like "<webhook-id>:0"
    adapter.deliver(record(quantity=1, idempotency_key="msg_later:0"), message_id="msg_first")
    # when a later delivery with that webhook-id carries a record without a key
    status, body = adapter.deliver(record(quantity=5), message_id="msg_later")
    # then that record is posted: the two keys live in different namespaces
    assert status == 202 and body["results"][0]["status"] == "posted"
    assert sorted(u["quantity"] for u in piriod.usages()) == ["1", "5"]


def test_ten_concurrent_deliveries_of_one_webhook_post_once(adapter: Adapter, piriod: Any) -> None:
    # given one signed delivery and a slow Piriod (slow, but well within the read timeout:
    # under a loaded machine the tests' 1 s timeout would turn some posts ambiguous)
    adapter.fresh_runtime(PIRIOD_READ_TIMEOUT="10")
    # (ten invocations share one process here, and Powertools' metric set is one per
    # process: one invocation's flush would clear another's, which Lambda never does)
    adapter.monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    piriod.add_fault("latency", delay=0.3)
    event = adapter.event(batch(5), message_id="msg_concurrent")
    # when it arrives ten times at once
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: adapter.invoke(event), range(10)))
    # then every answer is definite and agrees on each record's usage id; a delivery that
    # waited longer than a post takes (a loaded machine) may find a record handed over to
    # ReplayQueue, never posted a second time
    for status, body in answers:
        assert status == 202
        assert {r["status"] for r in body["results"]} <= {"posted", "duplicate", "queued"}
    for index in range(5):
        ids = {b["results"][index].get("usage_id") for _, b in answers} - {None}
        assert len(ids) <= 1
    from tests.integration.test_replay import drain_replay

    piriod.clear_faults()
    drain_replay(adapter)
    # and each record is in Piriod exactly once
    assert sorted(u["subscription_line"] for u in piriod.usages()) == list(range(1000, 1005))


# --- authentication ----------------------------------------------------------------------------


def test_rotated_secrets_both_verify(adapter: Adapter, piriod: Any, moto_server: Any) -> None:
    # given two active signing secrets (rotation in progress)
    secrets = client("secretsmanager", moto_server.url)
    secrets.put_secret_value(
        SecretId=adapter.resources.webhook_secret_arn,
        SecretString=json.dumps({"signing_secrets": [adapter.secret, OTHER_SECRET]}),
    )
    adapter.fresh_runtime()
    # when deliveries are signed with either
    old, _ = adapter.deliver(record(quantity=1))
    new, _ = adapter.deliver(record(quantity=2), secret=OTHER_SECRET)
    # then both pass
    assert (old, new) == (202, 202)
    assert len(piriod.usages()) == 2


def test_any_listed_signature_may_match(adapter: Adapter, piriod: Any) -> None:
    # given a header listing a wrong signature before the right one
    event = adapter.event(RECORD)
    right = event["headers"]["webhook-signature"]
    event["headers"]["webhook-signature"] = (
        "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= " + right
    )
    # when it is invoked
    status, _ = adapter.invoke(event)
    # then it passes
    assert status == 202


@pytest.mark.parametrize(
    ("case", "mutate"),
    [
        ("unknown secret", lambda a, e: a.event(RECORD, secret=OTHER_SECRET)),
        ("tampered body", lambda a, e: {**e, "body": e["body"].replace("2}", "3}")}),
        ("signed 6 minutes ago", lambda a, e: a.event(RECORD, timestamp=int(time.time()) - 360)),
        ("signed 6 minutes ahead", lambda a, e: a.event(RECORD, timestamp=int(time.time()) + 360)),
        (
            "no signature header",
            lambda a, e: {**e, "headers": {"content-type": "application/json"}},
        ),
        (
            "non-numeric timestamp",
            lambda a, e: {**e, "headers": {**e["headers"], "webhook-timestamp": "soon"}},
        ),
        (
            "v2 scheme only",
            lambda a, e: {
                **e,
                "headers": {
                    **e["headers"],
                    "webhook-signature": e["headers"]["webhook-signature"].replace("v1,", "v2,"),
                },
            },
        ),
    ],
)
def test_unauthentic_deliveries_get_401_and_nothing_is_posted_or_stored(
    adapter: Adapter, piriod: Any, case: str, mutate: Any
) -> None:
    # given a delivery that fails authentication in one way
    event = mutate(adapter, adapter.event(RECORD))
    # when it is invoked
    status, body = adapter.invoke(event)
    # then it is refused and leaves no trace
    assert status == 401, case
    assert "signature" in body["message"]
    assert piriod.requests == [] and adapter.items() == []
    assert adapter.messages("replay") == [] and adapter.messages("dead_letter") == []


def test_signed_four_minutes_ago_is_still_accepted(adapter: Adapter) -> None:
    # given a delivery within the 300 s tolerance
    status, _ = adapter.deliver(RECORD, timestamp=int(time.time()) - 240)
    # then it passes
    assert status == 202


def test_unreadable_signing_secret_fails_closed_with_503(adapter: Adapter, piriod: Any) -> None:
    # given a signing secret that cannot be read
    adapter.fresh_runtime(
        WEBHOOK_SECRET_ID="arn:aws:secretsmanager:us-east-1:123456789012:secret:missing"
    )
    # when a delivery arrives
    status, body = adapter.deliver(RECORD)
    # then it is neither passed nor processed
    assert status == 503 and "retry" in body["message"]
    assert piriod.requests == []


def test_malformed_signing_secret_fails_closed_with_503(adapter: Adapter, moto_server: Any) -> None:
    # given a secret that is not a whsec_ secret
    client("secretsmanager", moto_server.url).put_secret_value(
        SecretId=adapter.resources.webhook_secret_arn, SecretString="not-a-webhook-secret"
    )
    adapter.fresh_runtime()
    # when a delivery arrives
    status, _ = adapter.deliver(RECORD)
    # then the check fails closed
    assert status == 503


# --- body rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "index", "field"),
    [
        (record(line="101"), 0, "subscription_line"),
        (record(line=101.0), 0, "subscription_line"),
        (record(line=0), 0, "subscription_line"),
        (record(line=True), 0, "subscription_line"),
        ({**RECORD, "date_time": "2026-11-01T10:00:00"}, 0, "date_time"),
        ({**RECORD, "date_time": "2026-11-01"}, 0, "date_time"),
        ({**RECORD, "date_time": 1761991200}, 0, "date_time"),
        ({**RECORD, "date_time": "<6 minutes from now>"}, 0, "date_time"),
        (record(quantity=-1), 0, "quantity"),
        (record(quantity="1.5"), 0, "quantity"),
        (record(idempotency_key=""), 0, "idempotency_key"),
        (record(idempotency_key="x" * 256), 0, "idempotency_key"),
        (record(idempotency_key="bad\nkey"), 0, "idempotency_key"),
        ({**RECORD, "subscription_id": 5}, 0, "subscription_id"),
        ({"subscription_line": 1, "quantity": 1}, 0, "date_time"),
        ({"usages": [record(), record(quantity=-5)]}, 1, "quantity"),
        ({"usages": []}, None, "usages"),
        (batch(101), None, "usages"),
        (
            {"usages": [record(idempotency_key="a"), record(idempotency_key="a")]},
            1,
            "idempotency_key",
        ),
        ([RECORD], None, "body"),
    ],
)
def test_invalid_records_get_422_naming_index_and_field(
    adapter: Adapter, piriod: Any, body: Any, index: int | None, field: str
) -> None:
    # given a delivery with one invalid thing (a future time is computed now, not at collection)
    if isinstance(body, dict) and body.get("date_time") == "<6 minutes from now>":
        body = {**body, "date_time": (datetime.now(UTC) + timedelta(minutes=6)).isoformat()}
    # when it is delivered
    status, answer = adapter.deliver(body)
    # then it is refused whole, naming where the problem is, and nothing is posted
    assert status == 422
    assert {"index": index, "field": field} in [
        {"index": e["index"], "field": e["field"]} for e in answer["errors"]
    ]
    assert all(e["message"] for e in answer["errors"])
    assert piriod.requests == [] and adapter.items() == []


def test_every_problem_of_a_batch_is_reported(adapter: Adapter) -> None:
    # given the invalid sample event (two records, several problems)
    status, answer = adapter.invoke(sign_event(load_event("webhook-invalid.json"), adapter.secret))
    # then all of them are listed
    assert status == 422
    assert {(e["index"], e["field"]) for e in answer["errors"]} >= {
        (0, "subscription_line"),
        (0, "date_time"),
        (0, "quantity"),
        (1, "subscription_id"),
    }


@pytest.mark.parametrize(
    "raw", ["subscription_line=1", '{"quantity": NaN}', '{"a": 1, "a": 2}', "", "\xff"]
)
def test_body_that_is_not_json_gets_400(adapter: Adapter, piriod: Any, raw: str) -> None:
    # given a body that is not (acceptable) JSON
    status, answer = adapter.deliver(raw.encode("latin-1"))
    # then it is a 400 with a reason
    assert status == 400 and "JSON" in answer["message"]
    assert piriod.requests == []


def test_body_over_one_mebibyte_gets_413(adapter: Adapter, piriod: Any) -> None:
    # given a body one byte over 1 MiB
    raw = b'{"usages": [' + b" " * (1024 * 1024) + b"]}"
    # when it is delivered
    status, answer = adapter.deliver(raw)
    # then it is refused as too large
    assert status == 413 and "1 MiB" in answer["message"]
    assert piriod.requests == []


def test_unknown_route_is_404(adapter: Adapter) -> None:
    # given a path the API does not serve
    status, _ = adapter.invoke(adapter.event(RECORD, path="/v1/usage"))
    # then it is not found
    assert status == 404


# --- Piriod faults -----------------------------------------------------------------------------


def test_piriod_400_is_rejected_with_its_error_map_and_dead_lettered(
    adapter: Adapter, piriod: Any
) -> None:
    # given a subscription line Piriod does not know
    piriod.set_unmetered_lines(999)
    # when a batch with it is delivered
    status, body = adapter.deliver({"usages": [record(line=999), record(line=5)]})
    # then that record is rejected with Piriod's own errors, and waits in the dead-letter queue
    assert status == 202
    rejected, posted = body["results"]
    assert rejected["status"] == "rejected" and "subscription_line" in rejected["errors"]
    assert posted["status"] == "posted"
    [message] = adapter.messages("dead_letter")
    assert message["failure"]["kind"] == "rejected" and message["failure"]["status"] == 400
    assert message["failure"]["errors"] == rejected["errors"]
    assert message["usage"]["subscription_line"] == 999 and message["attempts"] == 1
    assert adapter.messages("replay") == []


@pytest.mark.parametrize(
    ("status_code", "retry_after", "kind"),
    [
        (403, None, "transient"),
        (404, None, "transient"),
        (405, None, "transient"),
        (429, 120, "transient"),
        (503, 120, "ambiguous"),  # a 503 does not prove the usage was not stored
        (500, None, "ambiguous"),
        (502, None, "ambiguous"),
        (503, None, "ambiguous"),
        (504, None, "ambiguous"),
        (418, None, "ambiguous"),
        (301, None, "ambiguous"),
    ],
)
def test_piriod_errors_that_may_pass_are_queued_for_replay(
    adapter: Adapter, piriod: Any, status_code: int, retry_after: int | None, kind: str
) -> None:
    # given Piriod failing with this status: a definite refusal, or an answer that does not
    # prove the usage was not stored (a gateway 502/504 may come after Piriod stored it)
    piriod.add_fault("status", status=status_code, retry_after=retry_after)
    # when a record is delivered
    status, body = adapter.deliver(RECORD, message_id=f"msg_{status_code}")
    # then it is queued with everything needed to replay it alone, flagged as it deserves
    assert status == 202 and body["results"][0]["status"] == "queued"
    [message] = adapter.messages("replay")
    assert message["failure"]["kind"] == kind and message["failure"]["status"] == status_code
    assert (message["ambiguous_since"] is not None) == (kind == "ambiguous")
    assert message["usage"]["key"] == {
        "kind": "delivery",
        "scope": "v1/usages",
        "text": f"msg_{status_code}:0",
    }
    assert message["tenant"] == {"workspace": "acc_test_workspace", "test_mode": False}
    assert message["usage"]["quantity"] == "2" and message["attempts"] == 1
    assert piriod.usages() == []


@pytest.mark.parametrize(
    ("status_code", "body", "retry_after"),
    [
        (200, "usage", None),
        (202, "empty", None),
        # a 503 with Retry-After does not prove the usage was not stored either
        (503, "empty", 0),
        (503, "empty", 1),
        (503, "empty", 3600),
    ],
)
def test_an_odd_answer_is_ambiguous_and_replay_settles_it_once(
    adapter: Adapter, piriod: Any, status_code: int, body: str, retry_after: int | None
) -> None:
    # given Piriod storing the usage but answering in a way that does not prove it
    piriod.add_fault(
        "answer_after_store", status=status_code, body=body, retry_after=retry_after, count=1
    )
    # when a record is delivered
    status, answer = adapter.deliver(
        RECORD, message_id=f"msg_odd_{status_code}_{body}_{retry_after}"
    )
    # then it is queued as ambiguous, not as surely-not-created
    assert status == 202 and answer["results"][0]["status"] == "queued"
    assert adapter.messages("replay")[0]["failure"]["kind"] == "ambiguous"
    # and when replay runs, it finds the usage instead of posting it a second time
    from tests.integration.test_replay import drain_replay

    drain_replay(adapter)
    assert len(piriod.usages()) == 1
    assert [r["method"] for r in piriod.requests].count("POST") == 1


@pytest.mark.parametrize("body", ["no_id", "bad_id", "empty"])
def test_a_201_is_posted_whatever_its_body(adapter: Adapter, piriod: Any, body: str) -> None:
    # given Piriod answering 201 with a body that has no usable usage id
    piriod.add_fault("answer_after_store", status=201, body=body, count=1)
    # when a record is delivered
    status, answer = adapter.deliver(RECORD, message_id=f"msg_201_{body}")
    # then it is posted (a 201 means created), without a usage id, and nothing is queued
    assert status == 202 and answer["results"][0] == {"index": 0, "status": "posted"}
    assert adapter.messages("replay") == [] and len(piriod.usages()) == 1


def test_429_with_a_short_retry_after_is_retried_and_posted(adapter: Adapter, piriod: Any) -> None:
    # given Piriod throttling once, asking for a 1 s pause
    piriod.add_fault("status", status=429, retry_after=1, count=1)
    # when a record is delivered
    status, body = adapter.deliver(RECORD)
    # then it is posted after the pause
    assert status == 202 and body["results"][0]["status"] == "posted"
    assert len(piriod.usages()) == 1


def test_429_with_a_retry_after_beyond_the_time_left_is_queued(
    adapter: Adapter, piriod: Any
) -> None:
    # given Piriod asking for a pause longer than the function has
    piriod.add_fault("status", status=429, retry_after=120)
    # when a record is delivered
    status, body = adapter.deliver(RECORD)
    # then it is queued rather than waited for
    assert status == 202 and body["results"][0]["status"] == "queued"
    assert adapter.messages("replay")[0]["failure"]["status"] == 429


def test_rotated_token_is_read_again_once_on_401(
    adapter: Adapter, piriod: Any, moto_server: Any
) -> None:
    # given Piriod accepting only a new token, and the secret already rotated to it
    adapter.deliver(record(quantity=1))  # the container caches the old token
    piriod.set_tokens("piriod-test-token-2")
    client("secretsmanager", moto_server.url).put_secret_value(
        SecretId=adapter.resources.token_secret_arn,
        SecretString=json.dumps({"api_token": "piriod-test-token-2"}),
    )
    # when the next record is delivered
    status, body = adapter.deliver(record(quantity=2))
    # then the 401 made it read the token again and the post went through
    assert status == 202 and body["results"][0]["status"] == "posted"
    assert len(piriod.usages()) == 2


def test_401_with_no_new_token_is_queued(adapter: Adapter, piriod: Any) -> None:
    # given Piriod refusing the token, which was not rotated
    piriod.set_tokens("some-other-token")
    # when a record is delivered
    status, body = adapter.deliver(RECORD)
    # then it waits in the replay queue, marked 401
    assert status == 202 and body["results"][0]["status"] == "queued"
    assert adapter.messages("replay")[0]["failure"]["status"] == 401


def test_read_timeout_after_arrival_is_queued_as_ambiguous(adapter: Adapter, piriod: Any) -> None:
    # given Piriod storing the usage but never answering in time
    adapter.fresh_runtime(PIRIOD_READ_TIMEOUT="1")
    piriod.add_fault("timeout_after_store", delay=3)
    # when a record is delivered
    status, body = adapter.deliver(RECORD)
    # then it is queued, flagged ambiguous, with the time of the unseen attempt
    assert status == 202 and body["results"][0]["status"] == "queued"
    [message] = adapter.messages("replay")
    assert message["failure"]["kind"] == "ambiguous" and message["ambiguous_since"]
    assert len(piriod.usages()) == 1  # it did land


def test_connection_reset_is_queued_as_ambiguous(adapter: Adapter, piriod: Any) -> None:
    # given Piriod resetting the connection mid-request
    piriod.add_fault("reset")
    # when a record is delivered
    status, body = adapter.deliver(RECORD)
    # then it is queued as ambiguous (it may have landed)
    assert status == 202 and body["results"][0]["status"] == "queued"
    assert adapter.messages("replay")[0]["failure"]["kind"] == "ambiguous"


def test_piriod_down_is_queued_as_transient(adapter: Adapter, dead_endpoint: str) -> None:
    # given nothing listening where Piriod should be
    adapter.fresh_runtime(PIRIOD_API_URL=dead_endpoint)
    # when a batch is delivered
    status, body = adapter.deliver(batch(3))
    # then every record is queued as surely-not-sent
    assert status == 202 and {r["status"] for r in body["results"]} == {"queued"}
    assert {m["failure"]["kind"] for m in adapter.messages("replay")} == {"transient"}
    assert {m["ambiguous_since"] for m in adapter.messages("replay")} == {None}


def test_records_queued_side_by_side_each_have_their_own_message(
    adapter: Adapter, dead_endpoint: str
) -> None:
    # given nothing listening where Piriod should be, so that a delivery's records fail side
    # by side and their queue messages go out together
    adapter.fresh_runtime(PIRIOD_API_URL=dead_endpoint)
    # when 40 records are delivered
    status, body = adapter.deliver(batch(40))
    assert status == 202 and {r["status"] for r in body["results"]} == {"queued"}
    # then ReplayQueue holds 40 messages, one per record
    sqs = client("sqs", adapter.endpoint)
    raw = receive_all(sqs, adapter.resources.replay_queue_url, wait_seconds=0)
    lines = sorted(json.loads(m["Body"])["usage"]["subscription_line"] for m in raw)
    assert lines == [1000 + i for i in range(40)]
    # and each record's key names the message that holds that record, and no other
    by_id = {m["MessageId"]: m["Body"] for m in raw}
    keys = [item for item in adapter.items() if "message_id" in item]
    assert len(keys) == 40 and len({k["message_id"]["S"] for k in keys}) == 40
    for key in keys:
        assert by_id[key["message_id"]["S"]] == key["message"]["S"]


def test_deadline_queues_what_remains(adapter: Adapter, piriod: Any) -> None:
    # given a function with too little time left to post
    # when a batch arrives
    status, body = adapter.deliver(batch(5), timeout_seconds=6)
    # then nothing is posted, everything is queued, and the answer comes in time
    assert status == 202 and {r["status"] for r in body["results"]} == {"queued"}
    assert piriod.usages() == []
    assert "time" in adapter.messages("replay")[0]["failure"]["error"]


# --- AWS faults --------------------------------------------------------------------------------


def test_sqs_unreachable_and_piriod_failing_is_503_then_the_retry_is_stored(
    adapter: Adapter, piriod: Any, dead_endpoint: str
) -> None:
    # given Piriod failing and SQS unreachable
    piriod.add_fault("status", status=500)
    adapter.fresh_runtime(AWS_ENDPOINT_URL_SQS=dead_endpoint)
    event = adapter.event(RECORD, message_id="msg_sqs_down")
    # when the delivery arrives
    status, body = adapter.invoke(event)
    # then the sender is told to retry, nothing is acknowledged
    assert status == 503 and body["results"][0]["status"] == "not_stored"
    # and when SQS is back and the sender retries, the record is queued (not lost)
    adapter.monkeypatch.delenv("AWS_ENDPOINT_URL_SQS")
    adapter.fresh_runtime()
    status, body = adapter.invoke(adapter.event(RECORD, message_id="msg_sqs_down"))
    assert status == 202 and body["results"][0]["status"] == "queued"
    assert len(adapter.messages("replay")) == 1


def test_sqs_unreachable_does_not_matter_when_piriod_takes_the_record(
    adapter: Adapter, piriod: Any, dead_endpoint: str
) -> None:
    # given SQS unreachable but Piriod healthy
    adapter.fresh_runtime(AWS_ENDPOINT_URL_SQS=dead_endpoint)
    # when a record is delivered
    status, body = adapter.deliver(RECORD)
    # then it is posted
    assert status == 202 and body["results"][0]["status"] == "posted"


def test_dynamodb_unreachable_is_503_and_nothing_is_posted(
    adapter: Adapter, piriod: Any, dead_endpoint: str
) -> None:
    # given the idempotency table unreachable
    adapter.fresh_runtime(AWS_ENDPOINT_URL_DYNAMODB=dead_endpoint)
    # when a record is delivered
    status, _ = adapter.deliver(RECORD)
    # then nothing is posted without its idempotency record, and the sender retries
    assert status == 503 and piriod.requests == []


def test_secrets_manager_unreachable_fails_closed(
    adapter: Adapter, piriod: Any, dead_endpoint: str
) -> None:
    # given Secrets Manager unreachable on a cold container
    adapter.fresh_runtime(AWS_ENDPOINT_URL_SECRETS_MANAGER=dead_endpoint)
    # when a delivery arrives
    status, _ = adapter.deliver(RECORD)
    # then the signature cannot be checked, so it is refused for now
    assert status == 503 and piriod.requests == []


def test_committed_samples_pass_only_under_sam_local(adapter: Adapter, piriod: Any) -> None:
    # given the committed sample (signed at env/local.json's sample time, long past) and a
    # function with that setting
    from piriod_devkit.events import sample_signature_timestamp

    event = load_event("webhook-single.json")
    adapter.fresh_runtime(SAMPLE_SIGNATURE_TIMESTAMP=str(sample_signature_timestamp()))
    # when it runs outside sam local, then the old signature is refused and nothing posted
    status, answer = adapter.invoke(event)
    assert status == 401 and "webhook-timestamp" in answer["message"]
    assert piriod.usages() == []
    # when sam local runs it (AWS_SAM_LOCAL=true), then the sample is taken as committed
    adapter.fresh_runtime(AWS_SAM_LOCAL="true")
    status, answer = adapter.invoke(event)
    assert status == 202 and [r["status"] for r in answer["results"]] == ["posted"]
    # and the bad-signature sample is still refused there
    status, answer = adapter.invoke(load_event("webhook-bad-signature.json"))
    assert status == 401 and "signature" in answer["message"]
