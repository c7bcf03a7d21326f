"""The operator command `piriod-adapter`: inspect, replay, purge, reconcile."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import urllib3

from piriod_devkit.aws import client
from piriod_devkit.poller import drain
from tests.conftest import TOKEN, WORKSPACE, Adapter


def ops(*argv: str) -> tuple[int, str]:
    from piriod_operator.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue() + err.getvalue()


def record(line: int, hour: int, quantity: int = 1) -> dict[str, Any]:
    return {
        "subscription_line": line,
        "date_time": f"2026-11-01T{hour:02d}:00:00Z",
        "quantity": quantity,
    }


def run_replay_function(adapter: Adapter) -> None:
    """Drain ReplayQueue through ReplayFunction's handler, as its event source would."""
    from piriod_adapter.handlers.replay import lambda_handler

    drain(client("sqs", adapter.endpoint), adapter.resources.replay_queue_url, lambda_handler)


@pytest.fixture
def rejected_batch(adapter: Adapter, piriod: Any) -> Adapter:
    """Five records Piriod rejected (line 7 not metered yet) plus one posted."""
    piriod.set_unmetered_lines(7)
    adapter.deliver({"usages": [record(7, h) for h in range(5)] + [record(8, 1)]})
    assert len(adapter.messages("dead_letter")) == 5
    return adapter


def test_list_shows_each_message_as_a_row(rejected_batch: Adapter) -> None:
    # when the operator lists the dead-letter queue
    code, text = ops("list", "--queue", "dead-letter")
    # then every message is a row with its line, kind, status and Piriod's error
    assert code == 0
    rows = [line for line in text.splitlines() if line.startswith("dead-letter")]
    assert len(rows) == 5
    assert all(" 7 " in r and "rejected" in r and "400" in r and "Invalid pk" in r for r in rows)
    assert "5 message(s)" in text


def test_show_prints_one_message_in_full(rejected_batch: Adapter) -> None:
    # given a message id from the JSON listing
    _, listing = ops("list", "--json", "--queue", "dead-letter")
    message_id = json.loads(listing.splitlines()[0])["message_id"]
    # when it is shown by its first characters
    code, text = ops("show", message_id[:8])
    # then the whole record and failure are printed
    assert code == 0 and json.loads(text)["record"]["failure"]["kind"] == "rejected"


def test_dry_run_replays_nothing(rejected_batch: Adapter, piriod: Any) -> None:
    # given the cause fixed
    piriod.set_unmetered_lines()
    # when the operator asks for a dry run
    code, text = ops("replay", "--dry-run")
    # then it lists what it would replay and posts nothing
    assert code == 0 and "dry run" in text and "5 message(s)" in text
    assert len(piriod.usages()) == 1
    assert len(rejected_batch.messages("dead_letter")) == 5


def test_replay_after_the_fix_posts_each_record_once_and_a_second_replay_nothing(
    rejected_batch: Adapter, piriod: Any
) -> None:
    # given the subscription line now metered
    piriod.set_unmetered_lines()
    # when the dead-letter queue is replayed, twice
    code, text = ops("replay", "--rate", "50", "--progress")
    code2, text2 = ops("replay")
    # then each record was posted exactly once, and the queue is empty
    assert (code, code2) == (0, 0)
    assert "posted=5" in text and "chosen=0" in text2
    lines = sorted(u["subscription_line"] for u in piriod.usages())
    assert lines == [7, 7, 7, 7, 7, 8]
    assert rejected_batch.messages("dead_letter") == []
    assert "5/5" in text  # the progress bar reached the end


def test_replay_filters_and_limit(rejected_batch: Adapter, piriod: Any) -> None:
    # given the fix, and an operator replaying only two records of the early hours
    piriod.set_unmetered_lines()
    code, text = ops("replay", "--line", "7", "--until", "2026-11-01T02:30:00Z", "--limit", "2")
    # then exactly two were posted and three remain
    assert code == 0 and "posted=2" in text
    assert len(piriod.usages()) == 3
    assert len(rejected_batch.messages("dead_letter")) == 3


def test_replay_that_fails_again_keeps_one_message_with_the_new_failure(
    rejected_batch: Adapter, piriod: Any
) -> None:
    # given Piriod still refusing line 7
    # when the operator replays
    code, text = ops("replay", "--kind", "rejected")
    # then the records are still in the queue, once each, with their attempts counted
    assert code == 0 and "rejected=5" in text
    messages = rejected_batch.messages("dead_letter")
    assert len(messages) == 5 and {m["attempts"] for m in messages} == {2}


def test_replay_whose_answer_is_lost_is_handed_to_replay_queue_and_settled_once(
    rejected_batch: Adapter, piriod: Any
) -> None:
    # given the fix, and Piriod storing the next post but its answer never arriving
    adapter = rejected_batch
    adapter.fresh_runtime(
        PIRIOD_READ_TIMEOUT="1", SETTLE_AFTER_SECONDS="0", REPLAY_BACKOFF_SECONDS="0"
    )
    piriod.set_unmetered_lines()
    piriod.add_fault("timeout_after_store", delay=1.5, count=1)
    # when the operator replays the dead letters
    code, text = ops("replay")
    # then the unseen one waits in ReplayQueue flagged ambiguous, not in front of a person
    assert code == 0 and "posted=4" in text and "queued=1" in text
    assert adapter.messages("dead_letter") == []
    [waiting] = adapter.messages("replay")
    assert waiting["failure"]["kind"] == "ambiguous" and waiting["ambiguous_since"]
    assert len(piriod.usages()) == 6  # it did land: 5 of line 7 and the one of line 8
    # when ReplayFunction takes it
    run_replay_function(adapter)
    # then it is settled by lookup, not posted again, and reconcile finds both sides equal
    assert sorted(u["subscription_line"] for u in piriod.usages()) == [7, 7, 7, 7, 7, 8]
    assert adapter.messages("replay") == []
    code, text = ops(
        "reconcile",
        "--line",
        "7",
        "--since",
        "2026-11-01T00:00:00Z",
        "--until",
        "2026-11-01T23:59:59Z",
    )
    assert code == 0, text


def test_token_rotation_then_replay_posts_exhausted_records(
    adapter: Adapter, piriod: Any, moto_server: Any
) -> None:
    # given Piriod refusing our token until the operator rotates it, and replay giving up
    adapter.fresh_runtime(REPLAY_BACKOFF_SECONDS="0")
    piriod.set_tokens("rotated-token")
    adapter.deliver({"usages": [record(9, h) for h in range(3)]})
    run_replay_function(adapter)
    assert {m["failure"]["kind"] for m in adapter.messages("dead_letter")} == {"exhausted"}
    # when the token secret is rotated and the dead letters are replayed
    client("secretsmanager", moto_server.url).put_secret_value(
        SecretId=adapter.resources.token_secret_arn,
        SecretString=json.dumps({"api_token": "rotated-token"}),
    )
    adapter.fresh_runtime()
    code, text = ops("replay")
    # then every record is in Piriod once
    assert code == 0 and "posted=3" in text
    assert sorted(u["date_time"] for u in piriod.usages()) == [
        "2026-11-01T00:00:00Z",
        "2026-11-01T01:00:00Z",
        "2026-11-01T02:00:00Z",
    ]
    assert ops("replay")[1].count("chosen=0") == 1


def test_purge_needs_confirmation(rejected_batch: Adapter) -> None:
    # when the operator purges without --yes, from a script
    code, text = ops("purge", "--queue", "dead-letter")
    # then nothing is deleted (exit 9: no terminal to confirm on)
    assert code == 9 and "--yes" in text
    assert len(rejected_batch.messages("dead_letter")) == 5
    # and with --yes the queue is emptied
    assert ops("purge", "--queue", "dead-letter", "--yes")[0] == 0
    assert rejected_batch.messages("dead_letter") == []


def test_reconcile_is_clean_then_reports_each_side(adapter: Adapter, piriod: Any) -> None:
    # given three records of line 11 posted through the adapter
    adapter.deliver({"usages": [record(11, h) for h in range(3)]})
    window = ("--line", "11", "--since", "2026-11-01T00:00:00Z", "--until", "2026-11-01T23:59:59Z")
    code, text = ops("reconcile", *window, "--json")
    report = json.loads(text)
    assert code == 0 and report["matched"] == 3
    assert report["missing_in_piriod"] == [] and report["not_recorded_by_adapter"] == []
    # when one usage is deleted in Piriod and another created there directly
    http = urllib3.PoolManager()
    headers = {
        "Authorization": f"Token {TOKEN}",
        "x-simple-workspace": WORKSPACE,
        "content-type": "application/json",
    }
    deleted = piriod.usages()[0]["id"]
    assert http.request("DELETE", f"{piriod.url}/usages/{deleted}/", headers=headers).status == 204
    created = http.request(
        "POST",
        f"{piriod.url}/usages/",
        headers=headers,
        body=json.dumps(
            {"subscription_line": 11, "date_time": "2026-11-01T05:00:00Z", "quantity": 4}
        ),
    )
    assert created.status == 201
    code, text = ops("reconcile", *window, "--json")
    report = json.loads(text)
    # then reconcile names both, and fails
    assert code == 3
    assert [m["usage_id"] for m in report["missing_in_piriod"]] == [deleted]
    assert [m["usage_id"] for m in report["not_recorded_by_adapter"]] == [
        json.loads(created.data)["id"]
    ]


def test_reconcile_matches_usages_created_by_a_201_without_an_id(
    adapter: Adapter, piriod: Any
) -> None:
    # given two twin records of line 12 (same instant and quantity, two keys) posted by 201s
    # without a usage id (an OpenAPI mock's answer), Piriod listing quantities as floats and
    # times in milliseconds, and a third record posted normally
    piriod.set_listing(quantity="float", date_time="millis")
    piriod.add_fault("answer_after_store", status=201, body="no_id", count=2)
    twin = (
        '{"subscription_line": 12, "date_time": "2026-11-01T01:00:00Z", '
        '"quantity": 1.23456789012345678}'
    )
    adapter.deliver(f'{{"usages": [{twin}, {twin}]}}', message_id="msg_idless")
    adapter.deliver({"usages": [record(12, 3)]}, message_id="msg_with_id")
    window = ("--line", "12", "--since", "2026-11-01T00:00:00Z", "--until", "2026-11-01T23:59:59Z")
    # when the operator reconciles the line
    code, text = ops("reconcile", *window, "--json")
    report = json.loads(text)
    # then each id-less record is matched to a usage of its own: none is "not recorded"
    assert code == 0, report
    assert (report["adapter_posted"], report["piriod_listed"], report["matched"]) == (3, 3, 3)
    assert report["not_recorded_by_adapter"] == [] and report["missing_in_piriod"] == []
    # and once one of the twins' usages is gone from Piriod, one twin is missing, by key
    http = urllib3.PoolManager()
    headers = {"Authorization": f"Token {TOKEN}", "x-simple-workspace": WORKSPACE}
    first = min(u["id"] for u in piriod.usages())
    assert http.request("DELETE", f"{piriod.url}/usages/{first}/", headers=headers).status == 204
    code, text = ops("reconcile", *window, "--json")
    report = json.loads(text)
    assert code == 3 and report["matched"] == 2
    [missing] = report["missing_in_piriod"]
    assert missing["usage_id"] is None
    assert missing["key"] in ("d#v1/usages#msg_idless:0", "d#v1/usages#msg_idless:1")


def test_list_shows_every_message_and_leaves_them_visible(adapter: Adapter, piriod: Any) -> None:
    # given 25 records in the dead-letter queue (more than one receive returns)
    piriod.set_unmetered_lines(*range(300, 325))
    adapter.deliver({"usages": [record(line, 1) for line in range(300, 325)]})
    # when the operator lists it
    code, text = ops("list", "--queue", "dead-letter")
    # then every message is a row, and a look is not a take: all are still there for replay
    assert code == 0 and "25 message(s)" in text
    assert len(adapter.messages("dead_letter")) == 25
    assert "chosen=25" in ops("replay", "--dry-run")[1]


# --- an operator's tools only observe ----------------------------------------------------------


def replay_queue_receive_counts(adapter: Adapter) -> dict[str, int]:
    """Receive every ReplayQueue message once (visibility 0) and read its receive count."""
    sqs = client("sqs", adapter.endpoint)
    found: dict[str, int] = {}
    for _ in range(5):
        for m in sqs.receive_message(
            QueueUrl=adapter.resources.replay_queue_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=0,
            AttributeNames=["All"],
        ).get("Messages", []):
            found.setdefault(m["MessageId"], int(m["Attributes"]["ApproximateReceiveCount"]))
    return found


def test_ten_listings_leave_replay_queue_receive_counts_and_visibility_unchanged(
    adapter: Adapter, piriod: Any
) -> None:
    # given three records waiting in ReplayQueue, never received by anyone
    piriod.add_fault("status", status=403)
    adapter.deliver({"usages": [record(31, h) for h in range(3)]})
    # when the operator lists the queue ten times, and shows one message
    for _ in range(10):
        code, text = ops("list", "--queue", "replay")
        assert code == 0 and "3 message(s)" in text
        assert "SQS counts for replay: 3 visible, 0 in flight" in text
    _, listing = ops("list", "--json", "--queue", "replay")
    assert ops("show", json.loads(listing.splitlines()[0])["message_id"][:10])[0] == 0
    # then every message is still visible, and this first receive is its first
    assert list(replay_queue_receive_counts(adapter).values()) == [1, 1, 1]


def test_a_message_waiting_out_a_back_off_is_still_listed_and_shown(
    adapter: Adapter, piriod: Any
) -> None:
    # given a record whose replay failed and now waits out a long back-off (invisible in SQS)
    adapter.fresh_runtime(REPLAY_BACKOFF_SECONDS="600")
    piriod.add_fault("status", status=403)
    adapter.deliver(record(32, 1))
    from piriod_adapter.handlers.replay import lambda_handler
    from piriod_devkit.poller import poll_once

    assert (
        poll_once(
            client("sqs", adapter.endpoint), adapter.resources.replay_queue_url, lambda_handler
        ).failed
        == 1
    )
    # when the operator lists and shows ReplayQueue
    code, text = ops("list", "--queue", "replay")
    _, listing = ops("list", "--json", "--queue", "replay")
    [entry] = [json.loads(line) for line in listing.splitlines()]
    shown = ops("show", entry["message_id"])
    # then it is there, with its attempts, and the counts say it is in flight
    assert code == 0 and "1 message(s)" in text and " 32 " in text
    assert "0 visible, 1 in flight or backing off" in text
    assert entry["record"]["attempts"] == 2
    assert shown[0] == 0 and json.loads(shown[1])["record"]["usage"]["subscription_line"] == 32


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (("list",), 4, "AWS"),
        (("replay", "--dry-run"), 4, "AWS"),
        (("show", "abc"), 4, "AWS"),
    ],
)
def test_aws_unreachable_is_one_line_and_its_own_exit_code(
    adapter: Adapter, dead_endpoint: str, argv: tuple[str, ...], code: int, says: str
) -> None:
    # given SQS and DynamoDB unreachable
    adapter.fresh_runtime(
        AWS_ENDPOINT_URL_SQS=dead_endpoint, AWS_ENDPOINT_URL_DYNAMODB=dead_endpoint
    )
    # when the operator runs a command
    got, text = ops(*argv)
    # then it fails with one clear line, no traceback
    assert got == code and says in text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1


def test_piriod_unreachable_during_reconcile_is_one_line_and_exit_5(
    adapter: Adapter, dead_endpoint: str
) -> None:
    adapter.fresh_runtime(PIRIOD_API_URL=dead_endpoint)
    code, text = ops(
        "reconcile",
        "--line",
        "5",
        "--since",
        "2026-11-01T00:00:00Z",
        "--until",
        "2026-11-02T00:00:00Z",
    )
    assert code == 5 and text.startswith("piriod-adapter: Piriod:")
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ("replay", "--limit", "-1"),
        ("replay", "--limit", "0"),
        ("list", "--limit", "ten"),
        ("replay", "--rate", "0"),
        ("replay", "--rate", "1e-300"),
        ("replay", "--rate", "nan"),
        ("list", "--line", "0"),
        ("reconcile", "--line", "1", "--since", "yesterday", "--until", "2026-11-01T00:00:00Z"),
        ("replay", "--id", ""),  # an empty shell variable must not mean "every dead letter"
        ("list", "--source", " "),
        ("list", "--no-such-flag"),
    ],
)
def test_invalid_arguments_are_refused_before_anything_is_done(
    adapter: Adapter, argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    # when the command is given an argument it cannot take
    with pytest.raises(SystemExit) as exited:
        ops(*argv)
    # then it exits 2 with one line on stderr that names the argument
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "argument" in err, err


def test_a_period_that_ends_before_it_begins_is_refused(adapter: Adapter) -> None:
    code, text = ops(
        "reconcile",
        "--line",
        "5",
        "--since",
        "2026-11-02T00:00:00Z",
        "--until",
        "2026-11-01T00:00:00Z",
    )
    assert code == 2 and "--since is after --until" in text
    code, text = ops("replay", "--since", "2026-11-02T00:00:00Z", "--until", "2026-11-01T00:00:00Z")
    assert code == 2


# --- reconcile: the period, and what retention cannot tell -------------------------------------


def test_reconcile_asks_piriod_for_the_period_only(adapter: Adapter, piriod: Any) -> None:
    # given usages of line 41 on two days
    adapter.deliver(
        {"usages": [record(41, 1), {**record(41, 1), "date_time": "2026-10-01T01:00:00Z"}]}
    )
    # when one day is reconciled
    code, text = ops(
        "reconcile",
        "--line",
        "41",
        "--since",
        "2026-11-01T00:00:00Z",
        "--until",
        "2026-11-01T23:59:59Z",
        "--json",
    )
    # then Piriod was asked for that period, and only that day's usage is compared
    assert code == 0 and json.loads(text)["piriod_listed"] == 1
    [listing] = [r for r in piriod.requests if r["method"] == "GET"]
    assert listing["query"]["date_time__gte"].startswith("2026-11-01T00:00:00")
    assert listing["query"]["date_time__lte"].startswith("2026-11-01T23:59:59")


def test_reconcile_tells_beyond_retention_apart_from_missing(adapter: Adapter, piriod: Any) -> None:
    from datetime import UTC, datetime, timedelta

    from piriod_adapter.runtime import get_runtime
    from piriod_operator.operator import reconcile

    # given usages the adapter posted, whose keys have since expired from the table
    adapter.deliver({"usages": [record(42, h) for h in range(3)]})
    dynamodb = client("dynamodb", adapter.endpoint)
    for item in adapter.items():
        dynamodb.delete_item(TableName=adapter.resources.table, Key={"pk": item["pk"]})
    day = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 1, 23, 59, 59, tzinfo=UTC))
    # when reconcile runs a day past the keys' retention
    days = get_runtime().settings.idempotency_ttl_days + 1
    later = reconcile(get_runtime(), 42, *day, now=datetime.now(UTC) + timedelta(days=days))
    # then they are "beyond retention", not "not recorded"; today they would be not recorded
    assert len(later["beyond_retention"]) == 3 and later["not_recorded_by_adapter"] == []
    today = reconcile(get_runtime(), 42, *day)
    assert len(today["not_recorded_by_adapter"]) == 3 and today["beyond_retention"] == []


def test_status_shows_depths_ages_and_dead_letters_by_kind(adapter: Adapter, piriod: Any) -> None:
    # given two records waiting in ReplayQueue and one rejected into DeadLetterQueue
    piriod.set_unmetered_lines(51)
    piriod.add_fault("status", status=403, lines=[52, 53])
    adapter.deliver({"usages": [record(51, 1), record(52, 1), record(53, 1)]})
    # when the operator asks for the status, as a table and as JSON
    code, text = ops("status")
    code_json, raw = ops("status", "--json")
    report = json.loads(raw)
    # then each queue's depth and oldest record, and the dead letters' kinds, are shown
    assert code == code_json == 0
    assert report["queues"]["replay"]["visible"] == 2
    assert report["queues"]["dead-letter"]["visible"] == 1
    assert report["queues"]["replay"]["oldest_seconds"] is not None
    assert report["dead_letters_by_kind"] == {"rejected": 1}
    assert report["replay_by_kind"] == {"transient": 2}
    assert "replay" in text and "dead letters: rejected=1" in text
    # and looking did not take anything
    assert len(adapter.messages("replay")) == 2 and len(adapter.messages("dead_letter")) == 1


def test_reconcile_shows_its_progress_when_asked(adapter: Adapter, piriod: Any) -> None:
    adapter.deliver({"usages": [record(61, h % 24, quantity=h) for h in range(100)]})
    code, text = ops(
        "reconcile",
        "--line",
        "61",
        "--since",
        "2026-11-01T00:00:00Z",
        "--until",
        "2026-11-01T23:59:59Z",
        "--progress",
    )
    assert code == 0 and "100 usages listed" in text


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("quantity", "-5", "usage.quantity"),
        ("quantity", "1e60", "usage.quantity"),
        ("quantity", "abc", "usage.quantity"),
        ("subscription_line", "4004", "usage.subscription_line"),
        ("subscription_line", 0, "usage.subscription_line"),
        ("date_time", "2099-01-01T00:00:00Z", "5 minutes in the future"),
    ],
)
def test_a_dead_letter_edited_outside_the_rules_is_not_replayed(
    rejected_batch: Adapter, piriod: Any, field: str, value: Any, says: str
) -> None:
    # given the dead letters, one of them edited by hand to break a record rule
    sqs = client("sqs", rejected_batch.endpoint)
    url = rejected_batch.resources.dead_letter_queue_url
    [first, *_] = rejected_batch.messages("dead_letter")
    sqs.purge_queue(QueueUrl=url)
    edited = {**first, "usage": {**first["usage"], field: value}}
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(edited))
    piriod.set_unmetered_lines()  # whatever Piriod would take now
    before = len(piriod.usages())
    # when the operator lists it, then replays everything
    listed = ops("list", "--queue", "dead-letter")[1]
    code, text = ops("replay")
    # then it is shown as unreadable with the rule it breaks, nothing is posted, and it stays
    assert "unreadable" in listed
    assert code == 0 and "unreadable=1" in text and says in text
    assert len(piriod.usages()) == before
    assert rejected_batch.messages("dead_letter") == [edited]


def test_list_json_and_show_print_json_even_for_a_body_with_nan(adapter: Adapter) -> None:
    # given a dead letter whose body holds NaN and Infinity (not JSON)
    sqs = client("sqs", adapter.endpoint)
    sent = sqs.send_message(
        QueueUrl=adapter.resources.dead_letter_queue_url,
        MessageBody='{"usage": NaN, "x": -Infinity}',
    )

    def strict(text: str) -> Any:
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} printed"))

    # when it is listed as JSON and shown, then each output is JSON, with the body as text
    code, text = ops("list", "--queue", "dead-letter", "--json")
    [entry] = [strict(line) for line in text.splitlines() if line.startswith("{")]
    assert code == 0 and entry["kind"] == "unreadable" and "NaN" in entry["record"]
    code, text = ops("show", sent["MessageId"])
    assert code == 0 and strict(text)["record"] == '{"usage": NaN, "x": -Infinity}'


def test_show_refuses_an_id_prefix_that_begins_several_messages(
    adapter: Adapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given two messages whose ids begin alike (and one that is exactly the other's prefix)
    from datetime import UTC, datetime

    from piriod_operator import cli
    from piriod_operator.operator import Entry

    at = datetime(2026, 11, 1, tzinfo=UTC)
    found = [Entry("dead-letter", i, at, None, f'"{i}"') for i in ("abc", "abc1", "abc2")]
    monkeypatch.setattr(cli, "entries", lambda runtime, queue, limit: found)
    # when show is given the common prefix, then it says so (exit 2) instead of picking one
    code, text = ops("show", "ab", "--queue", "dead-letter")
    assert code == 2 and "begins 3 message ids" in text
    # and an exact id, or a prefix of one message only, is shown
    assert ops("show", "abc", "--queue", "dead-letter")[0] == 0
    code, text = ops("show", "abc2", "--queue", "dead-letter")
    assert code == 0 and '"message_id": "abc2"' in text
