"""`piriod-adapter send` as a smoke test and a retry tool: it resends a delivery with
`--webhook-id`, says how a `--key` becomes a retry, exits non-zero when a record did not get
through (unless `--allow` says otherwise), refuses options it would ignore, says in one line
when nothing answers at the URL, and shows a problem of the whole body as the body's. Against
moto server, the Piriod stand-in and the webhook served on a local port."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from piriod_devkit.aws import free_port
from piriod_devkit.local_api import LocalApiServer
from tests.conftest import Adapter
from tests.integration.test_cli_stack import cli


@pytest.fixture
def url(adapter: Adapter, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The webhook's URL, and its signing secret in the environment (as after
    `eval "$(piriod-local serve --print-env)"`)."""
    from piriod_adapter.runtime import get_runtime

    get_runtime().settings  # noqa: B018 (read while the functions' variables are set)
    server = LocalApiServer().start()
    monkeypatch.setenv("PIRIOD_SIGNING_SECRET", adapter.secret)
    monkeypatch.delenv("PIRIOD_WEBHOOK_URL", raising=False)
    yield f"{server.url}/v1/usages"
    server.stop()


def webhook_id(err: str) -> str:
    """The webhook-id send printed on its POST line."""
    [line] = [x for x in err.splitlines() if x.startswith("POST ")]
    return line.rsplit("webhook-id ", 1)[1].rstrip(")")


def test_webhook_id_resends_a_delivery_whose_records_are_then_duplicates(
    url: str, piriod: Any
) -> None:
    # given one record sent, and the webhook-id send printed for it
    record = ("--line", "21", "--quantity", "2", "--date-time", "2026-11-01T10:00:00Z")
    code, out, err = cli("send", "--url", url, *record)
    assert code == 0 and "record 0: posted" in out, out + err
    first = webhook_id(err)
    # when the same body is sent again as that delivery
    code, out, err = cli("send", "--url", url, *record, "--webhook-id", first)
    # then it is a retry: its record is a duplicate, exit 0, and Piriod holds one usage
    assert code == 0 and "record 0: duplicate" in out, out + err
    assert webhook_id(err) == first
    assert [u["subscription_line"] for u in piriod.usages()] == [21]


def test_a_key_is_a_retry_with_a_fixed_date_time_and_send_says_so_without_one(
    url: str, piriod: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # when a record with a key is sent twice with the same --date-time
    fixed = ("--line", "22", "--key", "k-22", "--date-time", "2026-11-01T11:00:00Z")
    first, again = cli("send", "--url", url, *fixed), cli("send", "--url", url, *fixed)
    # then the second is a duplicate, and nothing is noted
    assert first[0] == 0 and again[0] == 0 and "record 0: duplicate" in again[1], again
    assert "note:" not in first[2]
    # when a key is sent without --date-time
    code, out, err = cli("send", "--url", url, "--line", "22", "--key", "k-now")
    # then send says that its time is now, so that a second run is not a retry
    assert code == 0, out + err
    assert "note: --key without --date-time is a new record each run" in err
    # and the help says it too
    with pytest.raises(SystemExit):
        cli("send", "--help")
    assert "only with the same --date-time" in " ".join(capsys.readouterr().out.split())


def test_a_rejected_record_exits_1_unless_allowed(url: str, piriod: Any) -> None:
    # given a line Piriod rejects
    piriod.set_unmetered_lines(999)
    # when a record for it is sent, then again with --allow rejected
    refused = cli("send", "--url", url, "--line", "999")
    allowed = cli("send", "--url", url, "--line", "999", "--allow", "rejected")
    # then the webhook answered 202 both times, and only the first exits 1, saying why
    assert refused[0] == 1 and refused[1].startswith("HTTP 202"), refused
    assert "record 0: rejected" in refused[1]
    assert "not all records got through (rejected): exit 1 (--allow rejected" in refused[1]
    assert allowed[0] == 0 and "record 0: rejected" in allowed[1], allowed


def test_a_queued_record_exits_1_unless_allowed(url: str, piriod: Any) -> None:
    # given Piriod failing
    piriod.add_fault(kind="status", status=500)
    # when a record is sent, then another with --allow queued
    refused = cli("send", "--url", url, "--line", "23")
    allowed = cli("send", "--url", url, "--line", "24", "--allow", "queued", "--allow", "rejected")
    # then both were queued, and only the first exits 1
    assert refused[0] == 1 and "record 0: queued" in refused[1], refused
    assert allowed[0] == 0 and "record 0: queued" in allowed[1], allowed


def test_options_send_would_ignore_are_refused(url: str, tmp_path: Path, piriod: Any) -> None:
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"subscription_line": 25, "date_time": "2026-11-01T10:00:00Z"}))
    for extra, says in [
        (("--line", "25"), "give --line or --file, not both"),
        (("--quantity", "3"), "--quantity go with --line"),
        (("--date-time", "2026-11-01", "--key", "k"), "--date-time, --key go with --line"),
    ]:
        # when --file is given with an option of --line
        code, out, err = cli("send", "--url", url, "--file", str(body), *extra)
        # then nothing is sent, and one line says why
        assert (code, out) == (2, ""), err
        assert says in err and len(err.strip().splitlines()) == 1, err
    assert piriod.usages() == []


def test_nothing_listening_at_the_url_is_one_line_and_exit_8(adapter: Adapter) -> None:
    # given an address where nothing listens
    dead = f"http://127.0.0.1:{free_port()}/v1/usages"
    # when a record is sent there
    code, out, err = cli(
        "send", "--url", dead, "--secret-id", adapter.resources.webhook_secret_arn, "--line", "1"
    )
    # then exit 8, with where it tried and why, on one line after the POST line
    assert (code, out) == (8, "")
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"POST {dead} ")
    assert (
        lines[1]
        == f"piriod-adapter: nothing answers at {dead} (Connection refused); nothing was sent"
    )


def test_a_problem_of_the_whole_body_is_shown_as_the_bodys(url: str, tmp_path: Path) -> None:
    # given a batch with no records (a problem of the delivery, not of a record)
    body = tmp_path / "empty.json"
    body.write_text('{"usages": []}')
    # when it is sent
    code, out, _ = cli("send", "--url", url, "--file", str(body))
    # then the 422's problem names the body, never "record None"
    assert code == 1 and out.startswith("HTTP 422"), out
    assert "  body · usages: " in out and "None" not in out
