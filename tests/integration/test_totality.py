"""Every delivery gets a definite answer: regression tests for each class of input or answer
that once ended in a 500, a 503 forever, a dropped record or a second post.

Real handler, moto server and the Piriod stand-in over loopback, as in test_webhook.py.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from piriod_adapter.piriod import PiriodClient
from piriod_devkit.aws import client
from piriod_devkit.events import http_event, sign_event
from tests.conftest import Adapter

RECORD = {"subscription_line": 101, "date_time": "2026-11-01T10:00:00Z", "quantity": 2}


def record(line: int = 101, **extra: Any) -> dict[str, Any]:
    return {**RECORD, "subscription_line": line, **extra}


def nothing_happened(adapter: Adapter, piriod: Any) -> bool:
    return (
        piriod.requests == []
        and adapter.items() == []
        and adapter.messages("replay") == []
        and adapter.messages("dead_letter") == []
    )


# --- 1. inputs that raised ---------------------------------------------------------------------


def test_a_webhook_timestamp_of_hundreds_of_digits_is_a_401(adapter: Adapter, piriod: Any) -> None:
    # given a delivery whose timestamp header has 400 digits
    event = adapter.event(RECORD)
    event["headers"]["webhook-timestamp"] = "9" * 400
    # when it is invoked
    status, body = adapter.invoke(event)
    # then it is refused as unauthentic, naming the header, and nothing happened
    assert status == 401 and "webhook-timestamp" in body["message"]
    assert nothing_happened(adapter, piriod)


def test_json_nested_tens_of_thousands_deep_is_a_400(adapter: Adapter, piriod: Any) -> None:
    # given a validly signed body nested 50,000 levels deep
    raw = b'{"usages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    # when it is delivered
    status, body = adapter.deliver(raw)
    # then it is refused as unacceptable JSON, not a crash
    assert status == 400 and "nested deeper" in body["message"]
    assert nothing_happened(adapter, piriod)


@pytest.mark.parametrize(
    "date_time", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-00:01", "0000-01-01T00:00:00Z"]
)
def test_a_time_outside_utc_is_a_422_and_poisons_nothing(
    adapter: Adapter, piriod: Any, date_time: str
) -> None:
    # given a batch of three valid records and one whose time UTC cannot represent
    batch = {"usages": [record(1), record(2), record(3), record(4, date_time=date_time)]}
    # when it is delivered
    status, body = adapter.deliver(batch)
    # then the whole delivery is refused, naming the record and field, and nothing is posted
    assert status == 422
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(3, "date_time")]
    assert nothing_happened(adapter, piriod)


# --- 2. a poison record inside a batch ---------------------------------------------------------


def test_an_unexpected_error_in_one_record_leaves_the_others_in_place(
    adapter: Adapter, piriod: Any
) -> None:
    # given a defect that makes the post of one record of a batch raise
    real = PiriodClient.post_usage

    def flawed(self: PiriodClient, usage: Any, *args: Any) -> Any:
        if usage.subscription_line == 13:
            raise RuntimeError("a defect")
        return real(self, usage, *args)

    adapter.monkeypatch.setattr(PiriodClient, "post_usage", flawed)
    batch = {"usages": [record(11), record(12), record(13), record(14)]}
    # when the batch is delivered
    status, body = adapter.deliver(batch, message_id="msg_poison")
    # then the others are posted and recorded, that one is "not stored" with its key released,
    # and the sender is told to retry
    assert status == 503
    assert [r["status"] for r in body["results"]] == ["posted", "posted", "not_stored", "posted"]
    states = {i["pk"]["S"]: i["status"]["S"] for i in adapter.items()}
    assert sorted(states.values()) == ["posted", "posted", "posted", "released"]
    # and when the defect is gone and the sender retries, each record ends in Piriod once
    adapter.monkeypatch.setattr(PiriodClient, "post_usage", real)
    status, body = adapter.deliver(batch, message_id="msg_poison")
    assert status == 202
    assert [r["status"] for r in body["results"]] == [
        "duplicate",
        "duplicate",
        "posted",
        "duplicate",
    ]
    assert sorted(u["subscription_line"] for u in piriod.usages()) == [11, 12, 13, 14]


# --- 3. validly signed deliveries that got 503 forever -----------------------------------------


def test_a_two_kibibyte_webhook_id_is_posted_and_then_a_duplicate(
    adapter: Adapter, piriod: Any
) -> None:
    # given a delivery whose webhook-id alone is 2 KiB (its derived key exceeds DynamoDB's)
    long_id = "msg_" + "é" * 1024
    # when it is delivered twice
    first = adapter.deliver(RECORD, message_id=long_id)
    second = adapter.deliver(RECORD, message_id=long_id)
    # then it is posted once, and the retry is recognised
    assert first[0] == 202 and first[1]["results"][0]["status"] == "posted"
    assert second[0] == 202 and second[1]["results"][0]["status"] == "duplicate"
    assert len(piriod.usages()) == 1


def test_a_subscription_line_with_too_many_digits_is_a_422(adapter: Adapter, piriod: Any) -> None:
    # given a line with more digits than DynamoDB's numbers (38) or Piriod's ids hold
    raw = (
        '{"subscription_line": '
        + "9" * 45
        + ', "date_time": "2026-11-01T10:00:00Z", "quantity": 1}'
    )
    # when it is delivered
    status, body = adapter.deliver(raw)
    # then it is refused naming the field, never retried forever
    assert status == 422 and body["errors"][0]["field"] == "subscription_line"
    assert nothing_happened(adapter, piriod)


# --- 5. the webhook's 5xx are counted and explained --------------------------------------------


def test_every_5xx_is_counted_in_a_metric_and_logged_with_its_cause(
    adapter: Adapter,
    piriod: Any,
    dead_endpoint: str,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # given Piriod failing and SQS unreachable, so a record can be neither posted nor stored
    piriod.add_fault("status", status=503)
    adapter.fresh_runtime(AWS_ENDPOINT_URL_SQS=dead_endpoint)
    capsys.readouterr()
    # when a delivery arrives
    status, _ = adapter.deliver(RECORD)
    # then the 503 shows up in the EMF metrics and in an error log line with its cause
    assert status == 503
    out = capsys.readouterr().out
    metrics = [json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"')]
    assert any(d.get("responses_5xx") == [1.0] for d in metrics)
    [logged] = [r for r in caplog.records if r.getMessage() == "answered 5xx"]
    assert logged.levelname == "ERROR"
    assert "SQS" in logged.cause  # type: ignore[attr-defined]


# --- hostile events ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate",
    [
        lambda e: {**e, "body": "\ud800"},
        lambda e: {**e, "body": 12},
        lambda e: {**e, "body": "%%%", "isBase64Encoded": True},
        lambda e: {**e, "headers": None},
    ],
)
def test_malformed_events_get_a_4xx(adapter: Adapter, piriod: Any, mutate: Any) -> None:
    # given an event API Gateway would never build, but a test harness might
    event = mutate(sign_event(http_event("POST", "/v1/usages", b"{}"), adapter.secret))
    # when it is invoked
    status, _ = adapter.invoke(event)
    # then it is refused without a trace
    assert 400 <= status < 500
    assert nothing_happened(adapter, piriod)


def test_base64_body_signed_over_the_decoded_bytes_with_non_utf8_is_a_400(
    adapter: Adapter, piriod: Any
) -> None:
    raw = b'{"subscription_line": 1, "x": "\xff"}'
    event = sign_event(http_event("POST", "/v1/usages", raw, base64_body=True), adapter.secret)
    assert base64.b64decode(event["body"]) == raw
    status, body = adapter.invoke(event)
    assert status == 400 and "JSON" in body["message"]


def test_a_key_item_can_be_listed_while_its_record_waits(adapter: Adapter, piriod: Any) -> None:
    # given a record queued while Piriod refused it
    piriod.add_fault("status", status=403)
    adapter.deliver(RECORD, message_id="msg_wait")
    # then its key item carries the queue message, for the operator's listing
    [item] = adapter.items()
    assert item["status"]["S"] == "queued" and item["waiting"]["S"].startswith("replay#")
    assert json.loads(item["message"]["S"])["usage"]["key"]["text"] == "msg_wait:0"
    [message] = adapter.messages("replay")
    assert message == json.loads(item["message"]["S"])
    sqs = client("sqs", adapter.endpoint)
    assert (
        sqs.get_queue_attributes(
            QueueUrl=adapter.resources.replay_queue_url, AttributeNames=["All"]
        )["Attributes"]["ApproximateNumberOfMessages"]
        == "1"
    )


# --- a key held by an attempt that is slow, or gone ----------------------------------------------


def test_a_key_held_by_a_stopped_attempt_is_queued_not_503(adapter: Adapter, piriod: Any) -> None:
    from piriod_adapter.clock import Deadline
    from piriod_adapter.idempotency import LOCK_MARGIN_SECONDS
    from piriod_adapter.runtime import get_runtime
    from piriod_adapter.validation import parse_native_body
    from tests.integration.test_replay import drain_replay

    # given an attempt that claimed a record's key and then stopped (its Lambda was killed),
    # leaving the key locked for longer than a delivery waits for one (one post's time)
    raw = json.dumps(RECORD).encode()
    [usage] = parse_native_body(raw, "msg_orphan")
    orphan = get_runtime().store.claim(usage, Deadline.after(8))
    assert orphan.acquired
    lock_ends = time.time() + 8 + LOCK_MARGIN_SECONDS
    # when the sender retries the delivery while every store is up
    status, body = adapter.deliver(RECORD, message_id="msg_orphan")
    # then the record is not refused with a 503: it waits in ReplayQueue, flagged unseen
    assert status == 202 and body["results"][0]["status"] == "queued"
    [waiting] = adapter.messages("replay")
    assert waiting["failure"]["kind"] == "ambiguous" and waiting["ambiguous_since"]
    # and once the lock has expired, ReplayFunction settles it: posted exactly once
    time.sleep(max(0.0, lock_ends - time.time()) + 0.5)
    drain_replay(adapter)
    assert len(piriod.usages()) == 1 and adapter.messages("replay") == []
    status, again = adapter.deliver(RECORD, message_id="msg_orphan")
    assert again["results"][0] == {
        "index": 0,
        "status": "duplicate",
        "usage_id": piriod.usages()[0]["id"],
    }


def test_a_post_recorded_nowhere_is_settled_not_posted_twice(adapter: Adapter, piriod: Any) -> None:
    from piriod_adapter.idempotency import IdempotencyStore, StoreUnavailable
    from tests.integration.test_replay import drain_replay

    # given DynamoDB failing just when a posted record's result is written
    real = IdempotencyStore.finish

    def blip(self: IdempotencyStore, posted: Any) -> None:
        raise StoreUnavailable("blip")

    adapter.monkeypatch.setattr(IdempotencyStore, "finish", blip)
    first = adapter.deliver(RECORD, message_id="msg_blip", timeout_seconds=12)
    adapter.monkeypatch.setattr(IdempotencyStore, "finish", real)
    # when the sender resends it while the key is still locked
    status, body = adapter.deliver(RECORD, message_id="msg_blip")
    # then it was posted once, the resend waits in ReplayQueue, and replay settles it by lookup
    assert first[1]["results"][0]["status"] == "posted"
    assert status == 202 and body["results"][0]["status"] == "queued"
    time.sleep(8.5)  # the first attempt's lock (its 12 s function timeout) expires
    drain_replay(adapter)
    assert len(piriod.usages()) == 1 and adapter.messages("replay") == []
    assert [r["method"] for r in piriod.requests].count("POST") == 1


def test_header_values_that_are_numbers_are_read_as_text(adapter: Adapter, piriod: Any) -> None:
    # given a hand-written event whose timestamp header is a JSON number
    event = adapter.event(RECORD)
    event["headers"]["webhook-timestamp"] = int(event["headers"]["webhook-timestamp"])
    event["headers"]["x-count"] = 3
    # when it is invoked
    status, body = adapter.invoke(event)
    # then it is handled like its text form
    assert status == 202 and body["results"][0]["status"] == "posted"


def test_debug_logging_never_writes_a_secret(
    adapter: Adapter, piriod: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from tests.conftest import TOKEN

    # given the root logger at DEBUG, as Lambda sets it for LogLevel=DEBUG (staging, sam local)
    caplog.set_level(logging.DEBUG)
    adapter.fresh_runtime()
    # when deliveries are handled (secrets read, Piriod called, a failure queued)
    adapter.deliver(RECORD)
    piriod.add_fault("status", status=500, count=1)
    adapter.deliver({**RECORD, "quantity": 3})
    # then no log line holds the Piriod token or the signing secret
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert len(caplog.records) > 3
    assert TOKEN not in text and adapter.secret not in text
    assert adapter.secret.removeprefix("whsec_") not in text
