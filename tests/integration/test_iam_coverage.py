"""The functions' IAM policies against the AWS calls their code makes (piriod_devkit.iam).
Every integration test is checked by the autouse fixture of conftest.py; these tests drive
each function through its main paths on purpose, and check that the recorder saw what those
paths must call, so that a recorder that sees nothing (an entry point no longer wrapped, a
thread that loses its function) cannot pass unnoticed. The last one shows that the check
fails when the template lacks a statement the code needs."""

from __future__ import annotations

import copy
import time
from datetime import timedelta
from typing import Any

from piriod_adapter.clock import Deadline
from piriod_devkit.events import load_event, sign_event
from piriod_devkit.iam import Recorder, check, named
from piriod_devkit.sources import provision_sources
from tests.conftest import Adapter
from tests.integration.test_aggregation import deliver as deliver_events
from tests.integration.test_aggregation import event, minute, run_flush
from tests.integration.test_corrections import amend, cancel, correct, held, record
from tests.integration.test_replay import drain_replay

TABLE, BY_LINE, BY_WINDOW, BY_WAITING = (
    "IdempotencyTable",
    "IdempotencyTable/index/by_line",
    "IdempotencyTable/index/by_window",
    "IdempotencyTable/index/by_waiting",
)
TOKEN, SIGNING = "!Ref PiriodTokenSecretArn", "!Ref WebhookSecretArn"


def needed(recorder: Recorder, function: str) -> set[tuple[str, str]]:
    """(action, resource as the template names it) of each call `function` made in this
    test so far."""
    return {
        (need.action, named(recorder.template, need.resource, call.deployment))
        for call in recorder.seen()
        if call.function == function
        for need in call.needs
    }


def functions_seen(recorder: Recorder) -> set[str]:
    return {call.function for call in recorder.seen()}


def test_webhook_native_route_posts_queues_and_dead_letters(
    adapter: Adapter, piriod: Any, iam_recorder: Recorder
) -> None:
    # given a fresh container (its secrets not read yet), Piriod taking the first record,
    # answering 503 to the second and refusing the third's line
    adapter.fresh_runtime()
    piriod.add_fault("status", status=503, count=1, lines=(702,))
    piriod.set_unmetered_lines(703)
    # when one delivery carries the three
    status, body = adapter.deliver(
        {
            "usages": [
                {**r, "date_time": "2026-11-01T10:00:00Z", "quantity": 1}
                for r in (
                    {"subscription_line": 701},
                    {"subscription_line": 702},
                    {"subscription_line": 703},
                )
            ]
        }
    )
    assert status == 202
    assert [r["status"] for r in body["results"]] == ["posted", "queued", "rejected"]
    # then WebhookFunction read both secrets, claimed and wrote the keys, and sent to both
    # queues (in batches: sqs:SendMessage), and no other function ran
    assert {
        ("secretsmanager:GetSecretValue", SIGNING),
        ("secretsmanager:GetSecretValue", TOKEN),
        ("dynamodb:PutItem", TABLE),
        ("dynamodb:UpdateItem", TABLE),
        ("sqs:SendMessage", "ReplayQueue"),
        ("sqs:SendMessage", "DeadLetterQueue"),
    } <= needed(iam_recorder, "WebhookFunction")
    assert functions_seen(iam_recorder) == {"WebhookFunction"}


def test_webhook_source_route_reads_its_profiles_and_their_secret(
    adapter: Adapter, piriod: Any, iam_recorder: Recorder
) -> None:
    # given the example profiles in an SSM parameter named under the stack
    parameter = f"/{adapter.resources.table.removesuffix('-idempotency')}/sources"
    adapter.fresh_runtime(SOURCES_CONFIG=provision_sources(adapter.endpoint, parameter))
    # when a Stripe-signed meter delivers
    status, body = adapter.invoke(sign_event(load_event("source-acme-storage.json")))
    assert status == 202 and {r["status"] for r in body["results"]} == {"posted"}
    # then the route read the profiles' parameter and the source's own secret (listed in
    # SourceSecretArns: its name is not the stack's)
    seen = needed(iam_recorder, "WebhookFunction")
    assert ("ssm:GetParameter", f"arn:aws:ssm:us-east-1:123456789012:parameter{parameter}") in seen
    assert any(
        a == "secretsmanager:GetSecretValue" and "piriod/sources/acme-storage" in r for a, r in seen
    ), seen


def test_webhook_counts_events_and_applies_corrections(
    meters: Adapter, adapter: Adapter, piriod: Any, iam_recorder: Recorder
) -> None:
    # given events counted into an open window (aggregating source), and a posted record
    status, _ = deliver_events(meters, [event(f"iam{n}", 96, minute(3)) for n in range(3)])
    assert status == 202
    adapter.deliver(record("1.5", "iam-posted"))
    # when the sender cancels one event and amends the record
    status, body = correct(
        meters, cancel("iam0", "iam-c1", source="meter"), amend("iam-posted", "2", "iam-c2")
    )
    assert status == 202 and [r["status"] for r in body["results"]] == ["applied", "applied"]
    assert held(piriod) == ["2"]
    # then counting read the keys in batches and wrote each event with its window in one
    # transaction (its items' actions), and the corrections updated the keys
    assert {
        ("dynamodb:BatchGetItem", TABLE),
        ("dynamodb:PutItem", TABLE),
        ("dynamodb:UpdateItem", TABLE),
    } <= needed(iam_recorder, "WebhookFunction")
    operations = {c.operation for c in iam_recorder.seen() if c.function == "WebhookFunction"}
    assert "dynamodb:TransactWriteItems" in operations


def test_replay_posts_what_waits_in_replay_queue(
    adapter: Adapter, piriod: Any, iam_recorder: Recorder
) -> None:
    # given a record queued while Piriod answered 503
    piriod.add_fault("status", status=503, count=1)
    adapter.deliver(record("3", "iam-replayed"))
    # when ReplayFunction drains ReplayQueue
    assert drain_replay(adapter).deleted == 1
    # then it read the token itself (its own container) and took the record's key
    assert held(piriod) == ["3"]
    assert {
        ("secretsmanager:GetSecretValue", TOKEN),
        ("dynamodb:UpdateItem", TABLE),
    } <= needed(iam_recorder, "ReplayFunction")


def test_flush_restates_a_corrected_window_and_applies_waiting_corrections(
    meters: Adapter, piriod: Any, dead_endpoint: str, iam_recorder: Recorder
) -> None:
    # given a flushed window, one of whose events is then cancelled (pending: closed)
    window = minute(3)
    deliver_events(meters, [event(f"fw{n}", 95, window + timedelta(seconds=n)) for n in range(4)])
    run_flush()
    _, body = correct(meters, cancel("fw0", "fw-c", source="meter"))
    assert [r["status"] for r in body["results"]] == ["pending"]
    # and a record whose amend deleted its usage, then could neither post it (Piriod 500)
    # nor queue it (SQS down): the correction waits on its key
    meters.deliver(record("5", "iam-sweep"))
    piriod.add_fault("status", status=500, methods=("POST",))
    meters.fresh_runtime(AWS_ENDPOINT_URL_SQS=dead_endpoint)
    correct(meters, amend("iam-sweep", "7", "sw-1"))
    piriod.clear_faults()
    meters.monkeypatch.delenv("AWS_ENDPOINT_URL_SQS")
    meters.fresh_runtime()
    # when FlushFunction runs
    report = run_flush()
    # then it restated the window and applied the waiting amend
    assert report["restated"] == 1 and report["corrections_applied"] == 1, report
    assert held(piriod) == ["7"]
    # having queried the due windows and the waiting corrections, and read the token
    assert {
        ("dynamodb:Query", BY_WINDOW),
        ("dynamodb:Query", BY_WAITING),
        ("dynamodb:UpdateItem", TABLE),
        ("secretsmanager:GetSecretValue", TOKEN),
    } <= needed(iam_recorder, "FlushFunction")


def test_park_parks_an_old_dead_letter(
    adapter: Adapter, piriod: Any, iam_recorder: Recorder
) -> None:
    from piriod_adapter.park import run_park
    from piriod_adapter.runtime import get_runtime

    # given a dead letter (line not metered)
    piriod.set_unmetered_lines(704)
    adapter.deliver(record("2", "iam-dead", line=704))
    # when ParkFunction runs 11 days later
    later = time.time() + 11 * 86_400
    report = run_park(get_runtime(), Deadline.after(60), clock=lambda: later)
    # then it walked DeadLetterQueue, parked the letter and listed the parked ones
    assert report["parked"] == 1, report
    assert {
        ("sqs:ReceiveMessage", "DeadLetterQueue"),
        ("sqs:DeleteMessage", "DeadLetterQueue"),
        ("dynamodb:PutItem", TABLE),
        ("dynamodb:Query", BY_WAITING),
    } <= needed(iam_recorder, "ParkFunction")


def test_the_check_fails_without_a_statement_the_code_needs(
    meters: Adapter, piriod: Any, iam_recorder: Recorder
) -> None:
    # given FlushFunction's calls of one run
    run_flush()
    calls = [c for c in iam_recorder.seen() if c.function == "FlushFunction"]
    assert not check(iam_recorder.template, calls).denied
    # when its WaitingCorrections statement is removed from (a copy of) the template
    template = copy.deepcopy(iam_recorder.template)
    [policy] = [
        p
        for p in template["Resources"]["FlushFunction"]["Properties"]["Policies"]
        if "Statement" in p
    ]
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != "WaitingCorrections"]
    # then its query of by_waiting is denied, and nothing else
    report = check(template, calls)
    assert {(d.function, d.need.action, d.named) for d in report.denied} == {
        ("FlushFunction", "dynamodb:Query", BY_WAITING)
    }
    assert "FlushFunction: dynamodb:Query on IdempotencyTable/index/by_waiting" in report.text()
