"""piriod-adapter without AWS: its help, version and completion, plain dates, and the two
offline meter-profile commands (`sources validate`, `sources try`)."""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from piriod_operator import cli

ROOT = Path(__file__).resolve().parents[2]
# Three of the example meters (examples/sources.json), as the sample events in events/ sign
# and shape them.
PROFILES: dict[str, Any] = {
    "version": 1,
    "sources": {
        "acme-storage": {
            "signature": {"scheme": "stripe", "secret_id": "piriod/sources/acme-storage"},
            "records": "data.object.readings",
            "fields": {"date_time": "recorded_at", "quantity": "bytes", "event_id": "id"},
            "quantity_factor": "0.000000001",
            "subscription_line": 3001,
        },
        "ci-minutes": {
            "signature": {
                "scheme": "hmac-sha256-hex",
                "secret_id": "piriod/sources/ci-minutes",
                "header": "X-Hub-Signature-256",
                "timestamp_header": "X-Meter-Timestamp",
            },
            "records": "builds[?status == 'finished']",
            "fields": {
                "date_time": "finished_at_ms",
                "quantity": "billable_minutes",
                "event_id": "build_id",
                "meter_id": "customer",
            },
            "time_format": "epoch_millis",
            "lines": {"cus_acme": 3101, "cus_globex": 3102},
        },
        "fleet-telemetry": {
            "signature": {
                "scheme": "standard-webhooks",
                "secret_id": "piriod/sources/fleet-telemetry",
            },
            "shape": "cloudevents",
            "fields": {
                "quantity": "data.energy_kwh",
                "subscription_line": "data.subscription_line",
            },
        },
    },
}
SETTINGS = (
    "PIRIOD_WORKSPACE_ID",
    "PIRIOD_TOKEN_SECRET_ID",
    "WEBHOOK_SECRET_ID",
    "REPLAY_QUEUE_URL",
    "DEAD_LETTER_QUEUE_URL",
    "IDEMPOTENCY_TABLE",
)


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def profiles(tmp_path: Path) -> str:
    return write(tmp_path, "profiles.json", PROFILES)


@pytest.fixture(autouse=True)
def no_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any AWS client made by these commands fails the test."""
    import boto3

    def refuse(*args: Any, **kwargs: Any) -> Any:
        pytest.fail("an offline command made an AWS client")

    monkeypatch.setattr(boto3, "client", refuse)
    monkeypatch.setattr(boto3.session.Session, "client", refuse)
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)


def body_of(event_file: str) -> bytes:
    event = json.loads((ROOT / "events" / event_file).read_text())
    return str(event["body"]).encode()


def write(tmp_path: Path, name: str, content: bytes | str | dict[str, Any]) -> str:
    path = tmp_path / name
    if isinstance(content, dict):
        content = json.dumps(content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


# --- help, version, usage ---------------------------------------------------------------------


def test_version_is_printed() -> None:
    with pytest.raises(SystemExit) as exited:
        run("--version")
    assert exited.value.code == 0


def test_version_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run("--version")
    assert capsys.readouterr().out.strip() == f"piriod-adapter {cli.version()}"
    assert cli.version() != "unknown"


@pytest.mark.parametrize(("argv", "lists"), [((), "sources"), (("sources",), "validate")])
def test_a_bare_command_prints_its_usage(argv: tuple[str, ...], lists: str) -> None:
    # when a command is run without its subcommand
    code, out, _ = run(*argv)
    # then its usage and its commands are printed, and it is not a success
    assert code == 2
    assert out.startswith("usage: piriod-adapter") and lists in out


def test_every_option_has_help_and_its_default_shown() -> None:
    for parser in parsers(cli.build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(
                action, argparse._SubParsersAction | argparse._HelpAction | argparse._VersionAction
            ):
                continue
            assert action.help, f"{parser.prog} {action.option_strings or action.dest}: no help"
            if (
                action.option_strings
                and not action.required
                and action.default
                not in (
                    None,
                    argparse.SUPPRESS,
                )
            ):
                shown = formatter._expand_help(action)
                assert "default" in shown, f"{parser.prog} {action.option_strings}: {shown}"


def test_help_points_to_the_readme_not_outside_the_repository() -> None:
    texts = [p.format_help() for p in parsers(cli.build_parser())]
    assert all("SPEC" not in t for t in texts)
    assert "README" in texts[0]


def test_stack_is_accepted_before_and_after_every_command(profiles: str) -> None:
    parser = cli.build_parser()
    for command in cli.COMMANDS:
        needed = {
            ("show",): ["abc"],
            ("cancel",): ["key-1"],
            ("amend",): ["key-1", "--quantity", "2"],
            ("purge",): ["--queue", "replay"],
            ("reconcile",): ["--line", "1", "--since", "2026-11-01", "--until", "2026-11-02"],
            ("signing-secret",): ["count"],
            ("sources", "validate"): [profiles],
            ("sources", "push"): [profiles],
            ("sources", "try"): ["--config", profiles, "--source", "a", "--payload", profiles],
            ("sources", "secret"): ["count", "a"],
            ("completion",): ["bash"],
        }.get(command.words, [])
        words = [*command.words, *needed]
        before = parser.parse_args(["--stack", "s-1", "--region", "eu-west-1", *words])
        after = parser.parse_args([*words, "--stack", "s-2", "--region", "eu-west-2"])
        assert (before.stack, before.region, before._command) == ("s-1", "eu-west-1", command)
        assert (after.stack, after.region, after._command) == ("s-2", "eu-west-2", command)


def test_init_without_a_stack_is_refused_before_anything_is_made() -> None:
    code, out, err = run("init", "--token-stdin")
    assert code == 2 and out == ""
    assert "give --stack NAME" in err and len(err.strip().splitlines()) == 1


def test_a_queue_command_without_stack_or_environment_says_what_to_give() -> None:
    code, _, err = run("list")
    assert code == 2
    assert "give --stack NAME, or export" in err and "PIRIOD_WORKSPACE_ID" in err
    assert "Field required" not in err


def test_plain_dates_are_accepted_where_date_times_are() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(
        ["reconcile", "--line", "1", "--since", "2026-11-01", "--until", "2026-11-30"]
    )
    assert args.since.isoformat() == "2026-11-01T00:00:00+00:00"
    assert args.until.isoformat() == "2026-11-30T23:59:59.999999+00:00"
    args = parser.parse_args(["list", "--since", "2026-11-01T10:00:00+02:00"])
    assert args.since.isoformat() == "2026-11-01T08:00:00+00:00"
    send = parser.parse_args(["send", "--date-time", "2026-11-01"])
    assert send.date_time == "2026-11-01T00:00:00Z"


@pytest.mark.parametrize("text", ["2026-02-30", "yesterday", "2026-11-01T10:00:00"])
def test_a_date_that_is_not_one_is_refused(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run("list", "--since", text)
    assert exited.value.code == 2 and "--since" in capsys.readouterr().err


# --- completion --------------------------------------------------------------------------------


def complete(shell_script: str, words: list[str]) -> list[str]:
    bash = shutil.which("bash")
    assert bash is not None
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"{shell_script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
        '_piriod_adapter; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        [bash, "--norc", "-c", program], capture_output=True, text=True, check=True, timeout=30
    )
    return done.stdout.split()


def test_bash_completion_offers_commands_options_and_choices() -> None:
    # given the bash script
    code, script, _ = run("completion", "bash")
    assert code == 0
    # then it completes commands, subcommands, options and the choices of an option
    assert {"list", "sources", "send", "init"} <= set(complete(script, ["piriod-adapter", ""]))
    assert {"cancel", "amend"} <= set(complete(script, ["piriod-adapter", ""]))
    assert {"--quantity", "--source", "--correction-id"} <= set(
        complete(script, ["piriod-adapter", "amend", "--"])
    )
    assert complete(script, ["piriod-adapter", "sources", ""]) == [
        "validate",
        "try",
        "push",
        "secret",
    ]
    assert complete(script, ["piriod-adapter", "--stack", "s", "sources", "secret", ""]) == [
        "add",
        "retire",
        "count",
    ]
    assert "--dry-run" in complete(script, ["piriod-adapter", "replay", "--d"])
    assert complete(script, ["piriod-adapter", "list", "--queue", ""]) == [
        "replay",
        "dead-letter",
        "both",
    ]


def test_zsh_completion_is_the_bash_script_through_bashcompinit() -> None:
    code, script, _ = run("completion", "zsh")
    assert code == 0 and "bashcompinit" in script
    assert "complete -o default -F _piriod_adapter piriod-adapter" in script


# --- sources validate --------------------------------------------------------------------------


def test_validate_accepts_the_example_profiles_with_a_short_summary(profiles: str) -> None:
    code, out, _ = run("sources", "validate", profiles)
    assert code == 0
    assert out.strip().endswith("3 source(s) valid: acme-storage, ci-minutes, fleet-telemetry")


def test_validate_names_every_broken_source_and_field(tmp_path: Path) -> None:
    # given the examples with three sources broken in different ways, one left intact
    document = json.loads(json.dumps(PROFILES))
    sources = document["sources"]
    sources["acme-storage"]["time_formt"] = "rfc3339"  # a typo
    sources["ci-minutes"]["fields"]["quantity"] = "billable_minutes[?"  # not JMESPath
    sources["ci-minutes"]["quantity_factor"] = 0.5  # a float, not a decimal string
    sources["Bad_Name"] = sources["fleet-telemetry"]
    path = write(tmp_path, "sources.json", document)
    # when it is validated
    code, out, _ = run("sources", "validate", path)
    # then each problem names its source and field, in plain words on one line, and the
    # good source is not blamed
    assert code == 1
    assert "source 'acme-storage': time_formt: is not a field here (misspelt" in out
    [jmespath] = [line for line in out.splitlines() if "fields.quantity:" in line]
    assert "is not a valid JMESPath expression: " in jmespath and "column 18" in jmespath
    assert "source 'ci-minutes': quantity_factor: must be a string, e.g. \"0.5\" in quotes" in out
    assert "Input should be" not in out
    assert "source 'Bad_Name': (name):" in out
    assert "fleet-telemetry'" not in out.replace("valid: ", "")
    assert "3 broken source(s): Bad_Name, acme-storage, ci-minutes; 1 valid" in out


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"version": 2, "sources": {}}', "document: version:"),
        (b'{"version": 1, "sources": []}', "document: sources: must be an object"),
        (b'{"version": 1, "source": {}}', "document: source: is not a field here"),
    ],
)
def test_validate_refuses_a_document_that_is_not_a_profile_document(
    tmp_path: Path, content: bytes, says: str
) -> None:
    code, out, _ = run("sources", "validate", write(tmp_path, "bad.json", content))
    assert code == 1 and says in out, out


def test_validate_of_a_file_that_is_not_there_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        run("sources", "validate", str(tmp_path / "missing.json"))
    assert exited.value.code == 2 and "not a file" in capsys.readouterr().err


# --- sources try -------------------------------------------------------------------------------


def try_source(tmp_path: Path, source: str, payload: bytes, *more: str) -> tuple[int, str]:
    path = write(tmp_path, "payload.json", payload)
    profiles = write(tmp_path, "profiles.json", PROFILES)
    code, out, err = run(
        "sources", "try", "--config", profiles, "--source", source, "--payload", path, *more
    )
    return code, out + err


def test_try_shows_what_each_event_becomes_and_what_the_filter_leaves_out(
    tmp_path: Path,
) -> None:
    # when the CI meter's sample (two finished builds, one running) is tried
    code, text = try_source(tmp_path, "ci-minutes", body_of("source-ci-minutes.json"), "--json")
    report = json.loads(text)
    # then the finished builds map to their lines, instants and quantities; the running one
    # is named as filtered out; nothing is posted
    assert code == 0 and report["status"] == 202 and report["posted"] is False
    rows = {r["event_id"]: r for r in report["records"]}
    assert rows["bld_1001"] | {"detail": ""} == {
        "index": 0,
        "outcome": "would post",
        "event_id": "bld_1001",
        "line": "3101",
        "date_time": "2026-11-01T08:30:00.123000Z",
        "quantity": "12.5",
        "key": "bld_1001",
        "detail": "",
    }
    assert (rows["bld_1002"]["line"], rows["bld_1002"]["quantity"]) == ("3102", "3")
    assert rows["bld_1003"]["outcome"] == "filtered out"
    assert "[2]" in rows["bld_1003"]["detail"]


def test_try_applies_the_quantity_factor_exactly(tmp_path: Path) -> None:
    code, text = try_source(tmp_path, "acme-storage", body_of("source-acme-storage.json"))
    assert code == 0
    assert "1.073741824" in text and "3001" in text and "would post" in text
    assert "dry run: nothing was posted" in text


def test_try_says_an_unmapped_meter_would_be_rejected(tmp_path: Path) -> None:
    code, text = try_source(
        tmp_path, "ci-minutes", body_of("source-ci-minutes-unmapped.json"), "--json"
    )
    [row] = json.loads(text)["records"]
    assert code == 0
    assert row["outcome"] == "rejected" and row["line"] == "meter:cus_initech"
    assert "no subscription line for 'cus_initech'" in row["detail"]


def test_try_says_a_payload_it_cannot_map_is_a_422_naming_the_field(tmp_path: Path) -> None:
    # given one build whose minutes are not a number
    payload = json.loads(body_of("source-ci-minutes.json"))
    payload["builds"][1]["billable_minutes"] = "three"
    code, text = try_source(tmp_path, "ci-minutes", json.dumps(payload).encode())
    # then the table says the delivery would be refused, and which record and field
    assert code == 1
    assert "HTTP 422" in text
    refused = [line for line in text.splitlines() if line[:1].isdigit() and "refused" in line]
    assert len(refused) == 1 and refused[0].startswith("1 ") and "quantity:" in refused[0]


def test_try_an_unknown_source_names_the_ones_there_are(tmp_path: Path) -> None:
    code, text = try_source(tmp_path, "nope", b"{}")
    assert code == 2
    assert "no source 'nope'" in text and "acme-storage, ci-minutes, fleet-telemetry" in text


@pytest.mark.parametrize(
    "argv",
    [
        ("init", "--stack", "s", "--config-env", 'x"]\n[y'),
        ("init", "--stack", "s", "--workspace", 'acc"1'),
        ("init", "--stack", "1starts-with-a-digit"),
        ("--stack", "has space", "list"),
    ],
)
def test_values_written_into_samconfig_are_refused_when_they_would_break_it(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        run(*argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and len(err.strip().splitlines()) == 1 and "argument" in err


# --- exit codes --------------------------------------------------------------------------------


def test_a_defect_is_one_line_and_exit_7(monkeypatch: pytest.MonkeyPatch) -> None:
    from piriod_operator import completion

    # given a command whose code fails in a way nothing expects, with a message of two lines
    def defect(*args: Any) -> str:
        raise RuntimeError("a defect\nspread over lines")

    monkeypatch.setattr(completion, "script", defect)
    # when it runs
    code, out, err = run("completion", "bash")
    # then exit 7 (please report it), and the message is one line
    assert (code, out) == (7, "")
    assert err == "piriod-adapter: unexpected error (RuntimeError): a defect spread over lines\n"


# --- status: the last hour ---------------------------------------------------------------------


class _CloudWatch:
    """CloudWatch's get_metric_statistics, at an endpoint, with one datapoint per metric."""

    def __init__(self, endpoint: str) -> None:
        self.meta = type("Meta", (), {"endpoint_url": endpoint})()

    def get_metric_statistics(self, **query: Any) -> dict[str, Any]:
        sums = {"records_received": 5.0, "records_posted": 4.0, "records_queued": 1.0}
        return {"Datapoints": [{"Sum": sums.get(query["MetricName"], 0.0)}]}


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("https://monitoring.eu-west-1.amazonaws.com", False),
        ("http://127.0.0.1:4566", True),
        ("http://localhost:4566", True),
    ],
)
def test_last_hour_is_counted_from_cloudwatch_and_not_shown_as_zeros_locally(
    endpoint: str, local: bool
) -> None:
    from datetime import UTC, datetime
    from typing import cast

    from piriod_adapter.runtime import Runtime
    from piriod_operator.operator import recent_outcomes

    # given the functions' metrics at an endpoint
    runtime = cast(Runtime, type("R", (), {"cloudwatch": _CloudWatch(endpoint)})())
    # when the last hour is asked for
    recent = recent_outcomes(runtime, datetime.now(UTC))
    # then AWS's CloudWatch gives counts; a local stand-in, which keeps no metrics, a sentence
    if local:
        assert isinstance(recent, str) and recent.startswith("not available locally")
    else:
        assert isinstance(recent, dict)
        assert (recent["received"], recent["posted"], recent["queued"]) == (5, 4, 1)


def test_every_exit_code_is_documented_in_the_help_and_operations_md() -> None:
    from piriod_operator import errors

    # given the exit codes the command has
    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    # when its help and docs/operations.md list theirs
    text = (ROOT / "docs" / "operations.md").read_text()
    paragraph = text[text.index("Exit codes: ") :].split("\n\n", 1)[0]
    documented = {int(n) for n in re.findall(r"(?:Exit codes: |; )`(\d+)`", paragraph)}
    helped = cli.__doc__ or ""
    in_help = {int(n) for n in re.findall(r"(?:;|codes:) (\d+) ", " ".join(helped.split()))}
    # then both list every one, and no other
    assert documented == codes, sorted(documented ^ codes)
    assert in_help == codes, sorted(in_help ^ codes)
