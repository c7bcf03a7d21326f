"""ReplayFunction and the no-loss guarantee: queued records reach Piriod exactly once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from piriod_devkit.aws import client
from piriod_devkit.poller import drain, poll_once
from tests.conftest import Adapter

RECORD = {"subscription_line": 101, "date_time": "2026-11-01T10:00:00Z", "quantity": 2}


def replay_handler() -> Any:
    from piriod_adapter.handlers.replay import lambda_handler

    return lambda_handler


def drain_replay(adapter: Adapter, **kwargs: Any) -> Any:
    sqs = client("sqs", adapter.endpoint)
    return drain(sqs, adapter.resources.replay_queue_url, replay_handler(), **kwargs)


def receive_count(adapter: Adapter) -> int:
    sqs = client("sqs", adapter.endpoint)
    attributes = sqs.get_queue_attributes(
        QueueUrl=adapter.resources.replay_queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def test_queued_record_is_posted_once_by_replay(adapter: Adapter, piriod: Any) -> None:
    # given a record queued while Piriod answered 503
    piriod.add_fault("status", status=503, count=1)
    _, body = adapter.deliver(RECORD, message_id="msg_replay_1")
    assert body["results"][0]["status"] == "queued"
    # when ReplayFunction drains the queue, twice
    first = drain_replay(adapter)
    second = drain_replay(adapter)
    # then it was posted exactly once and the queue is empty
    assert (first.deleted, second.received) == (1, 0)
    assert len(piriod.usages()) == 1
    # and the sender's retry is now a duplicate with that usage id
    _, again = adapter.deliver(RECORD, message_id="msg_replay_1")
    assert again["results"][0] == {
        "index": 0,
        "status": "duplicate",
        "usage_id": piriod.usages()[0]["id"],
    }


def test_redelivery_while_queued_is_a_duplicate_and_not_posted(
    adapter: Adapter, piriod: Any
) -> None:
    # given a record waiting in ReplayQueue
    piriod.add_fault("status", status=500, count=1)
    adapter.deliver(RECORD, message_id="msg_replay_2")
    # when the sender retries the delivery before replay ran
    _, body = adapter.deliver(RECORD, message_id="msg_replay_2")
    # then nothing is sent again; replay then posts it once
    assert body["results"][0]["status"] == "duplicate"
    assert piriod.usages() == []
    drain_replay(adapter)
    assert len(piriod.usages()) == 1


def test_ambiguous_post_that_landed_is_settled_not_posted_again(
    adapter: Adapter, piriod: Any
) -> None:
    # given a post that reached Piriod but whose answer never came back
    adapter.fresh_runtime(PIRIOD_READ_TIMEOUT="1")
    piriod.add_fault("timeout_after_store", delay=2, count=1)
    _, body = adapter.deliver(RECORD, message_id="msg_ambiguous_1")
    assert body["results"][0]["status"] == "queued"
    assert len(piriod.usages()) == 1
    # when replay runs
    drain_replay(adapter)
    # then it found the usage in Piriod instead of posting a second one
    assert len(piriod.usages()) == 1
    assert [r["method"] for r in piriod.requests].count("GET") >= 1
    _, again = adapter.deliver(RECORD, message_id="msg_ambiguous_1")
    assert again["results"][0]["usage_id"] == piriod.usages()[0]["id"]


def test_ambiguous_post_that_did_not_land_is_posted(adapter: Adapter, piriod: Any) -> None:
    # given a connection reset before Piriod stored anything
    piriod.add_fault("reset", count=1)
    _, body = adapter.deliver(RECORD, message_id="msg_ambiguous_2")
    assert body["results"][0]["status"] == "queued"
    # when replay runs
    drain_replay(adapter)
    # then the lookup found nothing and the record was posted once
    assert len(piriod.usages()) == 1


def test_settling_does_not_take_a_usage_an_identical_record_holds(
    adapter: Adapter, piriod: Any
) -> None:
    # given an identical record posted under another key, and our ambiguous post that never
    # reached Piriod
    adapter.deliver({**RECORD, "idempotency_key": "other"}, message_id="msg_other")
    piriod.add_fault("reset", count=1)
    adapter.deliver({**RECORD, "idempotency_key": "ours"}, message_id="msg_ours")
    # when replay settles ours
    drain_replay(adapter)
    # then it did not claim the other record's usage: ours was posted as a usage of its own
    assert len(piriod.usages()) == 2
    _, ours = adapter.deliver({**RECORD, "idempotency_key": "ours"}, message_id="msg_ours2")
    _, other = adapter.deliver({**RECORD, "idempotency_key": "other"}, message_id="msg_other2")
    assert ours["results"][0]["usage_id"] != other["results"][0]["usage_id"]


def test_failing_replay_backs_off_and_keeps_the_message(adapter: Adapter, piriod: Any) -> None:
    # given a queued record and Piriod still down
    adapter.fresh_runtime(REPLAY_BACKOFF_SECONDS="600")
    piriod.add_fault("status", status=502)
    adapter.deliver(RECORD)
    # when replay tries once
    sqs = client("sqs", adapter.endpoint)
    report = poll_once(sqs, adapter.resources.replay_queue_url, replay_handler())
    # then the message is reported failed, left invisible for the back-off, and not lost
    assert report.failed == 1 and report.deleted == 0
    assert report.responses[0]["batchItemFailures"]
    assert poll_once(sqs, adapter.resources.replay_queue_url, replay_handler()).received == 0
    assert receive_count(adapter) == 1


def test_last_attempt_moves_the_record_to_the_dead_letter_queue_as_exhausted(
    adapter: Adapter, piriod: Any
) -> None:
    # given Piriod down for good and no back-off
    adapter.fresh_runtime(REPLAY_BACKOFF_SECONDS="0")
    piriod.add_fault("status", status=503)
    adapter.deliver(RECORD, message_id="msg_exhaust")
    # when replay has tried as often as the queue allows
    drain_replay(adapter)
    # then the record waits in the dead-letter queue, marked exhausted, with its attempts
    assert receive_count(adapter) == 0
    [message] = adapter.messages("dead_letter")
    assert message["failure"]["kind"] == "exhausted"
    assert message["attempts"] == 1 + 8  # the webhook's and the queue's maxReceiveCount
    assert message["usage"]["key"]["text"] == "msg_exhaust:0"
    assert piriod.usages() == []


def test_rejection_during_replay_goes_to_the_dead_letter_queue(
    adapter: Adapter, piriod: Any
) -> None:
    # given a queued record whose line Piriod then refuses
    piriod.add_fault("status", status=500, count=1)
    adapter.deliver(RECORD)
    piriod.set_unmetered_lines(101)
    # when replay runs
    report = drain_replay(adapter)
    # then the record leaves ReplayQueue for the dead-letter queue with Piriod's errors
    assert report.deleted == 1
    [message] = adapter.messages("dead_letter")
    assert (
        message["failure"]["kind"] == "rejected"
        and "subscription_line" in message["failure"]["errors"]
    )


def test_the_same_message_delivered_twice_posts_once(adapter: Adapter, piriod: Any) -> None:
    # given a queued record whose message SQS delivers twice (at-least-once delivery)
    piriod.add_fault("status", status=500, count=1)
    adapter.deliver(RECORD)
    [message] = adapter.messages("replay")
    client("sqs", adapter.endpoint).send_message(
        QueueUrl=adapter.resources.replay_queue_url, MessageBody=json.dumps(message)
    )
    # when replay drains both copies
    drain_replay(adapter)
    # then Piriod has it once
    assert len(piriod.usages()) == 1
    assert receive_count(adapter) == 0


def test_replay_keeps_decimal_digits_and_test_mode(adapter: Adapter, piriod: Any) -> None:
    # given a test-mode record with digits a float would change, queued
    adapter.fresh_runtime(PIRIOD_TEST_MODE="true")
    piriod.add_fault("status", status=500, count=1)
    adapter.deliver(
        '{"subscription_line": 5, "date_time": "2026-11-01T10:00:00Z", "quantity": 1.10}'
    )
    # when it is replayed
    drain_replay(adapter)
    # then Piriod received the same digits, in test mode
    [usage] = piriod.usages(test_mode=True)
    assert usage["quantity"] == "1.10"
    assert piriod.violations() == []


def test_records_a_slow_batch_never_reached_do_not_lose_an_attempt(
    adapter: Adapter, piriod: Any
) -> None:
    # given five queued records, a Piriod that now answers in 2 s, one post at a time, and a
    # function with time for only the first two posts (13.5 s: 5 s reserve, 6 s post budget)
    adapter.fresh_runtime(PIRIOD_CONNECT_TIMEOUT="1", PIRIOD_READ_TIMEOUT="3", POST_CONCURRENCY="1")
    piriod.add_fault("status", status=403, count=5)
    adapter.deliver({"usages": [{**RECORD, "subscription_line": 60 + i} for i in range(5)]})
    piriod.add_fault("latency", delay=2)
    # when ReplayFunction takes the batch once
    sqs = client("sqs", adapter.endpoint)
    report = poll_once(
        sqs, adapter.resources.replay_queue_url, replay_handler(), timeout_seconds=13.5
    )
    # then two were posted, and the three never tried wait again as fresh messages whose
    # receive count starts over, with their attempts unchanged
    assert report.received == 5 and report.failed == 0
    assert len(piriod.usages()) == 2
    waiting = sqs.receive_message(
        QueueUrl=adapter.resources.replay_queue_url,
        MaxNumberOfMessages=10,
        AttributeNames=["All"],
        WaitTimeSeconds=0,
    )["Messages"]
    assert len(waiting) == 3
    assert {m["Attributes"]["ApproximateReceiveCount"] for m in waiting} == {"1"}
    bodies = [json.loads(m["Body"]) for m in waiting]
    assert {b["attempts"] for b in bodies} == {1}
    assert {b["failure"]["attempted"] for b in bodies} == {False}


def test_an_unseen_post_too_recent_to_look_up_waits_without_using_an_attempt(
    adapter: Adapter, piriod: Any
) -> None:
    # given an ambiguous post, and lookups allowed only 30 s after it
    adapter.fresh_runtime(SETTLE_AFTER_SECONDS="30")
    piriod.add_fault("reset", count=1)
    adapter.deliver(RECORD)
    # when ReplayFunction receives it at once
    sqs = client("sqs", adapter.endpoint)
    poll_once(sqs, adapter.resources.replay_queue_url, replay_handler())
    # then it is not retried now, nor counted: a fresh copy is delayed until the lookup may run
    attributes = sqs.get_queue_attributes(
        QueueUrl=adapter.resources.replay_queue_url, AttributeNames=["All"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessagesDelayed"] == "1"
    assert attributes["ApproximateNumberOfMessages"] == "0"
    assert [r["method"] for r in piriod.requests] == ["POST"]


def test_a_replay_queue_message_that_cannot_be_read_goes_to_a_person_at_once(
    adapter: Adapter, piriod: Any
) -> None:
    # given something in ReplayQueue that is not a record of this version
    sqs = client("sqs", adapter.endpoint)
    sqs.send_message(QueueUrl=adapter.resources.replay_queue_url, MessageBody='{"version": 1}')
    # when ReplayFunction takes it
    report = drain_replay(adapter)
    # then it is in DeadLetterQueue, unchanged, and ReplayQueue is empty
    assert report.deleted == 1 and receive_count(adapter) == 0
    assert adapter.messages("dead_letter") == [{"version": 1}]


def test_a_long_back_off_is_accepted_by_sqs(
    adapter: Adapter, piriod: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # given a back-off base so large that doubling reaches SQS's 12-hour ceiling at once
    adapter.fresh_runtime(REPLAY_BACKOFF_SECONDS="3600")
    piriod.add_fault("status", status=403)
    adapter.deliver(RECORD)
    [message] = adapter.messages("replay")
    sqs = client("sqs", adapter.endpoint)
    sqs.purge_queue(QueueUrl=adapter.resources.replay_queue_url)
    sqs.send_message(
        QueueUrl=adapter.resources.replay_queue_url,
        MessageBody=json.dumps({**message, "attempts": 20}),
    )
    # when replay fails again
    report = poll_once(sqs, adapter.resources.replay_queue_url, replay_handler())
    # then SQS took the back-off (no fallback to the queue's 360 s), and the message waits
    assert report.failed == 1
    assert "could not set back-off" not in [r.getMessage() for r in caplog.records]
    attributes = sqs.get_queue_attributes(
        QueueUrl=adapter.resources.replay_queue_url, AttributeNames=["All"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "1"


def test_a_replay_queue_record_that_breaks_a_rule_goes_to_a_person_not_to_piriod(
    adapter: Adapter, piriod: Any
) -> None:
    # given a queued record whose quantity was changed into something that is not a number
    piriod.add_fault("status", status=503)
    adapter.deliver(RECORD)
    [message] = adapter.messages("replay")
    piriod.clear_faults()
    sqs = client("sqs", adapter.endpoint)
    sqs.purge_queue(QueueUrl=adapter.resources.replay_queue_url)
    broken = {**message, "usage": {**message["usage"], "quantity": "abc"}}
    sqs.send_message(QueueUrl=adapter.resources.replay_queue_url, MessageBody=json.dumps(broken))
    # when ReplayFunction takes it
    report = drain_replay(adapter)
    # then the function does not fail; the message is in DeadLetterQueue unchanged, unposted
    assert report.deleted == 1 and receive_count(adapter) == 0
    assert adapter.messages("dead_letter") == [broken]
    assert piriod.usages() == []
