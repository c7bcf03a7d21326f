"""The operator's side of corrections (SPEC 10): `piriod-adapter cancel KEY` and `amend KEY
--quantity Q` apply a correction as POST /v1/corrections does (accepted on the key, applied
as a transition of the record's lifecycle), `show KEY` lists a key's revisions, and
`reconcile` knows what corrections deleted. Against moto server and the Piriod stand-in over
loopback; Piriod's ledger is checked after each."""

from __future__ import annotations

import io
import json
import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.conftest import Adapter
from tests.integration.test_aggregation import deliver as deliver_events
from tests.integration.test_aggregation import event, minute, run_flush, totals, utc
from tests.integration.test_corrections import held, record
from tests.integration.test_replay import drain_replay

LINE = 812
DAY = ("--since", "2026-11-01", "--until", "2026-11-01")


def run(*argv: str) -> tuple[int, str, str]:
    """`piriod-adapter ARGV`: its exit code, stdout and stderr."""
    from piriod_operator.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def deleted(piriod: Any) -> int:
    return sum(r["method"] == "DELETE" for r in piriod.requests)


def item(adapter: Adapter, pk: str) -> dict[str, Any]:
    [found] = [i for i in adapter.items() if i["pk"]["S"] == pk]
    return found


@pytest.fixture
def posted(adapter: Adapter, piriod: Any) -> Adapter:
    """Two records of line 812 posted: `pay-1` (1.10) and `pay-2` (2.5)."""
    status, _ = adapter.deliver(
        f'{{"usages": [{record("1.10", "pay-1")}, {record("2.5", "pay-2", hour=2)}]}}'
    )
    assert status == 202 and held(piriod) == ["1.10", "2.5"]
    return adapter


# --- cancel and amend of a native record ------------------------------------------------------


def test_cancel_of_a_posted_record_deletes_its_usage(posted: Adapter, piriod: Any) -> None:
    # when the operator cancels pay-1
    code, out, err = run("cancel", "pay-1", "--correction-id", "op-c1")
    # then it is applied as revision 1 with one DELETE, and Piriod holds only pay-2's usage
    assert code == 0, out + err
    assert (
        out.splitlines()[0]
        == "key 'pay-1' (native route): applied revision=1 correction_id=\"op-c1\""
    )
    assert held(piriod) == ["2.5"]
    assert [(r["method"], r["status"]) for r in piriod.requests if r["method"] != "GET"][-1:] == [
        ("DELETE", 204)
    ]
    # and the key is cancelled: a later amend of it is not found (exit 1), nothing sent
    before = len(piriod.requests)
    code, out, err = run("amend", "pay-1", "--quantity", "5", "--correction-id", "op-c2")
    assert code == 1 and "not_found" in out and "no record under key 'pay-1'" in err
    assert len(piriod.requests) == before and held(piriod) == ["2.5"]


def test_amend_of_a_posted_record_posts_its_new_quantity_as_typed(
    posted: Adapter, piriod: Any
) -> None:
    # when the operator amends pay-2 to 3.250 (as JSON, the digits kept)
    code, out, err = run("amend", "pay-2", "--quantity", "3.250", "--json", "--correction-id", "a1")
    # then the result is what a sender is answered: applied, revision 1, the new usage's id
    assert code == 0, out + err
    result = json.loads(out)
    new = [u for u in piriod.usages() if u["quantity"] == "3.250"]
    assert len(new) == 1
    assert result == {
        "index": 0,
        "correction_id": "a1",
        "status": "applied",
        "revision": 1,
        "usage_id": new[0]["id"],
    }
    # and Piriod holds one usage for the key, at the new quantity: one DELETE, one POST
    assert held(piriod) == ["1.10", "3.250"]
    assert [r["method"] for r in piriod.requests[-2:]] == ["DELETE", "POST"]


def test_a_rerun_with_the_printed_correction_id_is_a_duplicate_and_changes_nothing(
    posted: Adapter, piriod: Any
) -> None:
    # given an amend run without a correction id: a new one is printed on stderr
    code, out, err = run("amend", "pay-2", "--quantity", "4")
    assert code == 0 and "applied revision=1" in out, out + err
    [printed] = re.findall(r"--correction-id (op-[0-9a-f]{32})", err)
    assert f'correction_id="{printed}"' in out
    requests = len(piriod.requests)
    # when it is run again with that id (a retry after a lost terminal, say)
    code, out, err = run("amend", "pay-2", "--quantity", "4", "--correction-id", printed)
    # then it is a duplicate of revision 1, exit 0, and Piriod was not called
    assert code == 0, out + err
    assert out.splitlines()[0].startswith("key 'pay-2' (native route): duplicate revision=1")
    assert len(piriod.requests) == requests and held(piriod) == ["1.10", "4"]
    # and a new id (not the printed one) is a new revision
    code, out, _ = run("amend", "pay-2", "--quantity", "4.5")
    assert code == 0 and "applied revision=2" in out and held(piriod) == ["1.10", "4.5"]


def test_a_key_the_adapter_does_not_hold_is_not_found_and_nothing_changes(
    posted: Adapter, piriod: Any
) -> None:
    # when the operator cancels an unknown key, and pay-1 as if it were a source's event
    code, out, err = run("cancel", "no-such-key", "--correction-id", "n1")
    code2, out2, err2 = run("cancel", "pay-1", "--source", "meter", "--correction-id", "n2")
    # then both are not_found, exit 1, with one line saying why; Piriod was not called
    assert (code, code2) == (1, 1)
    assert "not_found" in out and "not_found" in out2
    assert err.startswith("piriod-adapter: no record under key 'no-such-key' (native route)")
    assert "(source meter)" in err2 and len(err2.strip().splitlines()) == 1
    assert deleted(piriod) == 0 and held(piriod) == ["1.10", "2.5"]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("amend", "pay-2", "--quantity", "-5"), "quantity: must be greater than or equal to 0"),
        (("amend", "pay-2", "--quantity", "1e20"), "quantity:"),
        (("amend", "pay-2", "--quantity", "0.1" + "0" * 40 + "1"), "decimal places"),
        (("cancel", ""), "key:"),
        (("cancel", "pay\x01-2"), "key: must contain printable characters only"),
        (("cancel", "pay-2", "--correction-id", ""), "correction_id:"),
        (("cancel", "pay-2", "--correction-id", "x" * 256), "correction_id:"),
    ],
    ids=[
        "negative",
        "too-large",
        "too-many-places",
        "empty-key",
        "control-key",
        "empty-id",
        "long-id",
    ],
)
def test_bad_input_is_one_clear_line_exit_2_and_changes_nothing(
    posted: Adapter, piriod: Any, argv: tuple[str, ...], says: str
) -> None:
    # when a correction breaks a record rule
    code, out, err = run(*argv)
    # then it is refused with exit 2, the field named, and nothing changed
    assert code == 2 and out == "", out + err
    assert says in err and "nothing was changed" in err and len(err.strip().splitlines()) == 1
    assert deleted(piriod) == 0 and held(piriod) == ["1.10", "2.5"]
    assert "rev" not in item(posted, "k#v1/usages#pay-2")


def test_a_quantity_that_is_not_a_number_is_an_argument_error(
    posted: Adapter, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        run("amend", "pay-2", "--quantity", "ten")
    assert exited.value.code == 2 and "must be a JSON number" in capsys.readouterr().err


def test_with_the_store_down_it_exits_6_and_a_rerun_with_its_id_applies_it_once(
    posted: Adapter, piriod: Any, dead_endpoint: str
) -> None:
    # given DynamoDB unreachable
    posted.fresh_runtime(AWS_ENDPOINT_URL_DYNAMODB=dead_endpoint)
    # when the operator cancels pay-1
    code, out, err = run("cancel", "pay-1", "--correction-id", "down-1")
    # then it is not_stored, exit 6, one line saying to run it again with its id; Piriod
    # was not called
    assert code == 6, out + err
    assert "not_stored" in out and "Traceback" not in err
    assert (
        err.strip().splitlines()[-1].endswith("run the command again with --correction-id down-1")
    )
    assert deleted(piriod) == 0 and held(piriod) == ["1.10", "2.5"]
    # when the store is back and it is run again with the same id
    posted.fresh_runtime(AWS_ENDPOINT_URL_DYNAMODB=posted.endpoint)
    code, out, _ = run("cancel", "pay-1", "--correction-id", "down-1")
    # then it is applied, once
    assert code == 0 and "applied revision=1" in out
    assert held(piriod) == ["2.5"] and deleted(piriod) == 1


def test_a_cancel_while_piriod_refuses_deletes_is_pending_then_applied_by_replay(
    posted: Adapter, piriod: Any
) -> None:
    # given Piriod failing every DELETE with a 500
    piriod.add_fault("status", status=500, methods=("DELETE",))
    # when the operator cancels pay-1
    code, out, _ = run("cancel", "pay-1", "--correction-id", "p1")
    # then it is pending (exit 0: accepted and kept), and Piriod still holds the usage
    assert code == 0 and "pending revision=1" in out and "pending: accepted and kept" in out
    assert held(piriod) == ["1.10", "2.5"]
    # and show says so: revision 1 pending, waiting in replay, Piriod holding the old usage
    code, shown, _ = run("show", "pay-1", "--json")
    view = json.loads(shown)
    assert code == 0 and view["revisions"][0]["state"] == "pending"
    assert view["waiting"]["queue"] == "replay" and view["piriod_holds"]["quantity"] == "1.10"
    # and once Piriod deletes again, ReplayFunction applies it
    piriod.clear_faults()
    drain_replay(posted)
    assert held(piriod) == ["2.5"]
    view = json.loads(run("show", "pay-1", "--json")[1])
    assert view["revisions"][0]["state"] == "applied" and view["piriod_holds"] is None


def test_an_amend_piriod_refuses_is_rejected_exit_5_and_waits_in_the_dead_letter_queue(
    posted: Adapter, piriod: Any
) -> None:
    # given Piriod refusing line 812 from now on (a 400 on its POST)
    piriod.set_unmetered_lines(LINE)
    # when the operator amends pay-2
    code, out, err = run("amend", "pay-2", "--quantity", "7", "--correction-id", "r1")
    # then it is rejected with Piriod's errors, exit 5, and the amended record is a dead letter
    assert code == 5, out + err
    assert "rejected revision=1" in out and "Piriod refused the amended record (400)" in err
    [dead] = posted.messages("dead_letter")
    assert dead["usage"]["key"]["text"] == "pay-2" and dead["failure"]["kind"] == "rejected"


# --- events --------------------------------------------------------------------------------


def test_cancel_and_amend_of_events_in_an_open_window_change_its_total(
    meters: Adapter, piriod: Any
) -> None:
    # given three events of 2.5 counted into an open window of line 94
    window = minute(3)
    deliver_events(meters, [event(f"ev{n}", 94, window, "2.5") for n in range(3)])
    # when the operator cancels one and amends another, naming their source
    cancelled = run("cancel", "ev0", "--source", "meter", "--correction-id", "e1")
    amended = run("amend", "ev1", "--source", "meter", "--quantity", "10", "--correction-id", "e2")
    # then both are applied (in the window's open generation), and Piriod was not called
    assert cancelled[0] == amended[0] == 0, cancelled + amended
    assert "key 'ev0' (source meter): applied revision=1" in cancelled[1]
    assert "key 'ev1' (source meter): applied revision=1" in amended[1]
    assert piriod.requests == []
    # and show lists the amend as applied in an open generation
    view = json.loads(run("show", "ev1", "--source", "meter", "--json")[1])
    assert view["window"]["state"] == "open" and view["quantity_now"] == "10"
    assert [(r["action"], r["quantity"], r["state"]) for r in view["revisions"]] == [
        ("amend", "10", "applied")
    ]
    # and the flush posts the corrected total: 10 + 2.5
    run_flush()
    assert totals(piriod) == {(94, utc(window)): Decimal("12.5")}


def test_corrections_of_events_in_a_flushed_window_are_pending_until_the_next_flush(
    meters: Adapter, piriod: Any
) -> None:
    # given a window of 10 events of 1, flushed: Piriod holds one usage of 10
    window = minute(3)
    deliver_events(
        meters, [event(f"w{n}", 93, window + timedelta(seconds=n), "1") for n in range(10)]
    )
    run_flush()
    assert totals(piriod) == {(93, utc(window)): Decimal(10)}
    # when the operator cancels one and amends another to 3.5
    cancelled = run("cancel", "w0", "--source", "meter", "--correction-id", "f1")
    amended = run("amend", "w1", "--source", "meter", "--quantity", "3.5", "--correction-id", "f2")
    # then both are pending: the generation waits for the next flush; Piriod still holds 10
    assert cancelled[0] == amended[0] == 0
    assert "pending revision=1" in cancelled[1] and "pending revision=1" in amended[1]
    assert totals(piriod) == {(93, utc(window)): Decimal(10)}
    view = json.loads(run("show", "w1", "--source", "meter", "--json")[1])
    assert view["window"]["state"] == "restating"
    assert [r["state"] for r in view["revisions"]] == ["pending"]
    assert view["piriod_holds"]["quantity"] == "10"
    # when FlushFunction runs: it restates the generation, once
    assert run_flush()["restated"] == 1
    # then Piriod holds the corrected total (10 - 1 - 1 + 3.5), and show says applied
    assert totals(piriod) == {(93, utc(window)): Decimal("11.5")}
    view = json.loads(run("show", "w1", "--source", "meter", "--json")[1])
    assert view["window"]["state"] == "posted" and view["piriod_holds"]["quantity"] == "11.5"
    assert [r["state"] for r in view["revisions"]] == ["applied"]
    # and a rerun of the cancel with its id is a duplicate: nothing to restate
    assert (
        "duplicate revision=1"
        in run("cancel", "w0", "--source", "meter", "--correction-id", "f1")[1]
    )
    assert run_flush()["restated"] == 0


def test_an_amend_of_a_count_window_event_is_refused_and_changes_nothing(
    meters: Adapter, piriod: Any
) -> None:
    deliver_events(meters, [event("c1", 92, minute(3))], "counter")
    code, out, err = run("amend", "c1", "--source", "counter", "--quantity", "2")
    assert code == 2 and out == ""
    assert "cannot amend an event of a count window" in err and "nothing was changed" in err
    assert "rev" not in item(meters, "e#v1/sources/counter#c1")


# --- show KEY ------------------------------------------------------------------------------


def test_show_lists_a_keys_revisions_and_what_piriod_holds(posted: Adapter, piriod: Any) -> None:
    # given pay-2 amended twice, then cancelled
    for argv in (
        ("amend", "pay-2", "--quantity", "3", "--correction-id", "s1"),
        ("amend", "pay-2", "--quantity", "3.75", "--correction-id", "s2"),
    ):
        assert run(*argv)[0] == 0
    code, shown, _ = run("show", "pay-2")
    # when the operator shows the key (before the cancel): its record, what Piriod holds now,
    # and each revision, applied
    assert code == 0, shown
    [usage] = [u for u in piriod.usages() if u["quantity"] == "3.75"]
    assert "key 'pay-2' (native route, idempotency_key): posted" in shown
    assert "record: line 812, 2026-11-01T02:00:00Z, quantity 2.5 as delivered" in shown
    assert f"Piriod holds: usage {usage['id']}, quantity 3.75" in shown
    rows = [line.split() for line in shown.splitlines() if re.match(r"\d+\s+amend", line)]
    assert [(r[0], r[1], r[2], r[3], r[-1]) for r in rows] == [
        ("1", "amend", "3", "s1", "applied"),
        ("2", "amend", "3.75", "s2", "applied"),
    ]
    # and after a cancel, the third revision, and nothing held
    assert run("cancel", "pay-2", "--correction-id", "s3")[0] == 0
    view = json.loads(run("show", "pay-2", "--json")[1])
    assert view["status"] == "cancelled" and view["piriod_holds"] is None
    assert [
        (r["revision"], r["action"], r["correction_id"], r["state"]) for r in view["revisions"]
    ] == [
        (1, "amend", "s1", "applied"),
        (2, "amend", "s2", "applied"),
        (3, "cancel", "s3", "applied"),
    ]
    assert all(r["at"].startswith("20") for r in view["revisions"])
    assert held(piriod) == ["1.10"]


def test_show_of_a_key_with_no_correction_and_of_nothing(posted: Adapter) -> None:
    code, shown, _ = run("show", "pay-1")
    assert code == 0 and "revisions: none" in shown and "quantity now: 1.10" in shown
    code, _, err = run("show", "nothing-by-this-name")
    assert code == 1 and "no key and no message 'nothing-by-this-name' found" in err
    code, _, err = run("show", "pay-1", "--source", "meter")
    assert code == 1 and "no key 'pay-1' (source meter)" in err


# --- reconcile -----------------------------------------------------------------------------


def reconcile(*extra: str) -> tuple[int, dict[str, Any]]:
    code, out, err = run("reconcile", "--line", str(LINE), *DAY, "--json", *extra)
    return code, json.loads(out) if out else {"err": err}


def test_reconcile_after_a_cancel_and_an_amend_finds_no_difference(
    posted: Adapter, piriod: Any
) -> None:
    # given pay-1 cancelled and pay-2 amended (its first usage deleted, a new one posted)
    assert run("cancel", "pay-1", "--correction-id", "rc1")[0] == 0
    assert run("amend", "pay-2", "--quantity", "9.90", "--correction-id", "rc2")[0] == 0
    assert held(piriod) == ["9.90"]
    # when the operator reconciles the line
    code, report = reconcile()
    # then the deleted usages are not missing, the cancelled record is not waiting, and the
    # amended one matches at its last quantity
    assert code == 0, json.dumps(report)
    assert report["missing_in_piriod"] == [] and report["not_recorded_by_adapter"] == []
    assert report["quantity_differs"] == []
    assert (report["adapter_posted"], report["piriod_listed"], report["matched"]) == (1, 1, 1)
    assert (report["cancelled"], report["waiting_in_queues"], report["corrections_pending"]) == (
        1,
        0,
        0,
    )
    # and the table says so for a person
    code, text, _ = run("reconcile", "--line", str(LINE), *DAY)
    assert code == 0 and "cancelled 1, corrections pending 0" in text and "no differences" in text


def test_reconcile_while_a_cancel_is_pending_expects_the_usage_still_held(
    posted: Adapter, piriod: Any
) -> None:
    # given a cancel of pay-1 pending: Piriod refused its DELETE
    piriod.add_fault("status", status=500, methods=("DELETE",))
    assert "pending" in run("cancel", "pay-1", "--correction-id", "rp1")[1]
    # when the operator reconciles
    code, report = reconcile()
    # then the usage Piriod still holds is matched, not "not recorded", and the pending
    # correction is counted
    assert code == 0, json.dumps(report)
    assert report["matched"] == 2 and report["corrections_pending"] == 1
    assert report["waiting_in_queues"] == 1
    # and once replay has applied it, the usage is gone and nothing is missing
    piriod.clear_faults()
    drain_replay(posted)
    code, report = reconcile()
    assert code == 0, json.dumps(report)
    assert (report["matched"], report["cancelled"], report["missing_in_piriod"]) == (1, 1, [])


def test_reconcile_after_a_delete_whose_answer_was_lost(posted: Adapter, piriod: Any) -> None:
    # given Piriod deleting pay-1's usage on a cancel, but its answer lost
    posted.fresh_runtime(PIRIOD_READ_TIMEOUT="1")
    piriod.add_fault("timeout_after_store", methods=("DELETE",), delay=2, count=1)
    code, out, _ = run("cancel", "pay-1", "--correction-id", "lost-1")
    assert code == 0 and "pending" in out and held(piriod) == ["2.5"]
    # when the operator reconciles before replay settles it
    code, report = reconcile()
    # then the usage the adapter deleted is not reported missing
    assert code == 0, json.dumps(report)
    assert report["missing_in_piriod"] == [] and report["matched"] == 1


def test_reconcile_of_a_window_restated_to_zero(meters: Adapter, piriod: Any) -> None:
    # given a flushed window of line 95 whose every event is then cancelled and restated
    window = minute(3)
    deliver_events(meters, [event(f"z{n}", 95, window, "2") for n in range(2)])
    run_flush()
    for n in range(2):
        assert run("cancel", f"z{n}", "--source", "meter", "--correction-id", f"z{n}")[0] == 0
    run_flush()
    assert totals(piriod) == {}
    # when the operator reconciles that line
    day = window.strftime("%Y-%m-%d")
    code, out, _ = run("reconcile", "--line", "95", "--since", day, "--until", day, "--json")
    # then the deleted total is not missing
    report = json.loads(out)
    assert code == 0, json.dumps(report)
    assert report["missing_in_piriod"] == [] and report["piriod_listed"] == 0


def test_an_amend_neither_posted_nor_queued_exits_6_and_waits_on_its_key(
    posted: Adapter, piriod: Any
) -> None:
    # given Piriod failing every POST with a 500 (its DELETE goes through), and ReplayQueue gone
    piriod.add_fault("status", status=500)
    posted.fresh_runtime(REPLAY_QUEUE_URL=posted.resources.replay_queue_url + "-gone")
    # when the operator amends pay-2
    code, out, err = run("amend", "pay-2", "--quantity", "6", "--correction-id", "w1")
    # then it is not_stored, exit 6, with what to do: run it again with its id
    assert code == 6 and "not_stored" in out, out + err
    assert err.strip().splitlines()[-1].endswith("run the command again with --correction-id w1")
    # and show says it waits on its key, Piriod holding nothing for it meanwhile
    code, shown, _ = run("show", "pay-2")
    assert "waits on its key" in shown and "Piriod holds: nothing for this key" in shown
    assert re.search(r"^1 +amend +6 +w1 .* pending$", shown, re.MULTILINE), shown
    # when Piriod and the queue are back and FlushFunction runs
    piriod.clear_faults()
    posted.fresh_runtime(REPLAY_QUEUE_URL=posted.resources.replay_queue_url)
    run_flush()
    # then the amend is applied, once; the operator's rerun with its id is a duplicate
    assert held(piriod) == ["1.10", "6"]
    code, out, _ = run("amend", "pay-2", "--quantity", "6", "--correction-id", "w1")
    assert code == 0 and "duplicate revision=1" in out
    assert held(piriod) == ["1.10", "6"]
