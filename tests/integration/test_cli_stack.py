"""piriod-adapter aimed at a stack by name (`--stack`, before or after the command), against
moto server: a stack there carries the parameters and outputs `sam deploy` gives the real
one, pointing at the adapter's moto resources."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
import urllib3

from piriod_devkit.aws import client
from tests.conftest import TOKEN, WORKSPACE, Adapter

ROOT = Path(__file__).resolve().parents[2]


# The functions' own variables: the webhook run in this process reads them, the operator's
# shell has none of them (only AWS credentials and the endpoint).
FUNCTION_VARIABLES = (
    "PIRIOD_API_URL",
    "PIRIOD_WORKSPACE_ID",
    "PIRIOD_TOKEN_SECRET_ID",
    "WEBHOOK_SECRET_ID",
    "REPLAY_QUEUE_URL",
    "DEAD_LETTER_QUEUE_URL",
    "IDEMPOTENCY_TABLE",
    "SOURCES_CONFIG",
)


def cli(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    """piriod-adapter as an operator runs it: without the functions' variables."""
    from piriod_operator.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_stdin, saved_env = sys.stdin, {k: os.environ.pop(k, None) for k in FUNCTION_VARIABLES}
    sys.stdin = io.StringIO(stdin)
    try:
        code = main(list(argv), out=out, err=err)
    finally:
        sys.stdin = saved_stdin
        os.environ.update({k: v for k, v in saved_env.items() if v is not None})
    return code, out.getvalue(), err.getvalue()


def deploy_stack(
    adapter: Adapter,
    name: str | None = None,
    webhook_url: str = "",
    webhook_secret_arn: str = "",
    **parameters: str,
) -> str:
    """A CloudFormation stack in moto with the adapter's parameters and outputs (what
    `sam deploy` leaves) for the adapter's resources; returns its name."""
    name = name or f"adapter-{uuid.uuid4().hex[:8]}"
    resources = adapter.resources
    webhook_secret_arn = webhook_secret_arn or resources.webhook_secret_arn
    values = {
        "PiriodApiUrl": adapter.env["PIRIOD_API_URL"],
        "PiriodWorkspaceId": WORKSPACE,
        "PiriodTestMode": "false",
        "PiriodTokenSecretArn": resources.token_secret_arn,
        "WebhookSecretArn": webhook_secret_arn,
        "SourcesConfig": "",
        "SourceSecretArns": "",
        **parameters,
    }
    outputs = {
        "WebhookUrl": webhook_url or "https://example.invalid/v1/usages",
        "ReplayQueueUrl": resources.replay_queue_url,
        "DeadLetterQueueUrl": resources.dead_letter_queue_url,
        "IdempotencyTableName": resources.table,
        "WebhookSecretArn": webhook_secret_arn,
    }
    template = {
        "Parameters": {key: {"Type": "String", "Default": ""} for key in values},
        "Resources": {"StandIn": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    client("cloudformation", adapter.endpoint).create_stack(
        StackName=name,
        TemplateBody=json.dumps(template),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in values.items() if v],
    )
    return name


@pytest.fixture
def stack(adapter: Adapter) -> str:
    """The adapter, deployed as a stack."""
    return deploy_stack(adapter)


def record(line: int, hour: int) -> dict[str, Any]:
    return {"subscription_line": line, "date_time": f"2026-11-01T{hour:02d}:00:00Z", "quantity": 1}


def test_stack_before_or_after_the_command_reads_the_same_queues(
    adapter: Adapter, piriod: Any, stack: str
) -> None:
    # given two records Piriod rejected, in the stack's dead-letter queue
    piriod.set_unmetered_lines(7)
    assert adapter.deliver({"usages": [record(7, 1), record(7, 2)]})[0] == 202
    # when the operator lists them with --stack before, then after, the command
    before = cli("--stack", stack, "list", "--queue", "dead-letter")
    after = cli("list", "--queue", "dead-letter", "--stack", stack)
    status = cli("status", "--stack", stack, "--json")
    # then both find the same two messages through the stack's outputs
    assert before[0] == after[0] == 0
    assert "2 message(s)" in before[1] and "2 message(s)" in after[1]
    assert json.loads(status[1])["queues"]["dead-letter"]["visible"] == 2


@pytest.mark.parametrize(
    "argv",
    [
        ("list",),
        ("status",),
        ("reconcile", "--line", "1", "--since", "2026-11-01", "--until", "2026-11-02"),
        ("sources", "push", str(ROOT / "examples" / "sources.json")),
        ("sources", "secret", "add", "meter"),
        ("send", "--line", "1"),
    ],
)
def test_a_stack_that_does_not_exist_is_refused_with_what_to_do(
    adapter: Adapter, argv: tuple[str, ...]
) -> None:
    # when a command is aimed at a stack that was never deployed
    code, out, err = cli(*argv, "--stack", "never-deployed")
    # then it is one line saying how to make it, exit 2, and nothing was made under it
    assert code == 2 and out == ""
    assert "no stack 'never-deployed'" in err and "--stack never-deployed init" in err
    assert len(err.strip().splitlines()) == 1
    # and, AWS being a local stand-in here (moto), it says so and how to go back to AWS
    assert f"AWS_ENDPOINT_URL points at a local stand-in, {adapter.endpoint}" in err
    assert 'eval "$(piriod-local serve --unset)"' in err


def test_the_local_stack_without_a_serve_says_to_start_one(adapter: Adapter) -> None:
    # when a command is aimed at piriod-local where no `piriod-local serve` registered it
    code, out, err = cli("status", "--stack", "piriod-local")
    # then it says that it is the local serve's stack, and how to start and reach it
    assert code == 2 and out == ""
    assert "no stack 'piriod-local'" in err and "it is the local serve's" in err
    assert "start `piriod-local serve`" in err and "--print-env" in err
    assert "sam deploy" not in err and len(err.strip().splitlines()) == 1
    names = [
        s["Name"] for s in client("secretsmanager", adapter.endpoint).list_secrets()["SecretList"]
    ]
    assert not [n for n in names if n.startswith("never-deployed/")]


def test_init_with_stack_after_the_command_makes_its_secrets_under_that_name(
    adapter: Adapter, tmp_path: Path
) -> None:
    # given the project's samconfig.toml, whose staging environment names another stack
    samconfig = tmp_path / "samconfig.toml"
    shutil.copy(ROOT / "samconfig.toml", samconfig)
    name = f"staging-{uuid.uuid4().hex[:8]}"
    # when init is told the stack after the command
    code, out, err = cli(
        "init",
        "--stack",
        name,
        "--token-stdin",
        "--config-env",
        "staging",
        "--samconfig",
        str(samconfig),
        stdin="tok\n",
    )
    # then the secrets are made under that name, and staging now deploys that stack
    assert code == 0, err
    manager = client("secretsmanager", adapter.endpoint)
    token = manager.get_secret_value(SecretId=f"{name}/piriod-token")["SecretString"]
    assert json.loads(token) == {"api_token": "tok"}
    parsed = tomllib.loads(samconfig.read_text())
    assert parsed["staging"]["global"]["parameters"]["stack_name"] == name
    assert parsed["staging"]["deploy"]["parameters"]["region"] == manager.meta.region_name
    overrides = parsed["staging"]["deploy"]["parameters"]["parameter_overrides"]
    assert f"PiriodTokenSecretArn={out.splitlines()[0].split('=', 1)[1]}" in overrides
    assert parsed["prod"] == tomllib.loads((ROOT / "samconfig.toml").read_text())["prod"]
    # and nothing was made under the default name
    default = [
        s["Name"]
        for s in manager.list_secrets()["SecretList"]
        if s["Name"].startswith("piriod-usage-adapter/")
    ]
    assert default == []


def init_into(samconfig: Path, name: str, environment: str) -> tuple[int, str, str]:
    return cli(
        "--stack",
        name,
        "init",
        "--token-stdin",
        "--config-env",
        environment,
        "--samconfig",
        str(samconfig),
        stdin="tok\n",
    )


def overrides_of(samconfig: Path, environment: str) -> list[str]:
    parsed = tomllib.loads(samconfig.read_text())
    found: list[str] = parsed[environment]["deploy"]["parameters"]["parameter_overrides"]
    return found


@pytest.mark.parametrize("environment", ["staging", "prod", "brand-new"])
def test_init_names_the_stacks_profile_parameter_so_sources_push_works_after_deploy(
    adapter: Adapter, tmp_path: Path, environment: str
) -> None:
    # given the project's samconfig.toml, whose environments name no SourcesConfig
    samconfig = tmp_path / "samconfig.toml"
    shutil.copy(ROOT / "samconfig.toml", samconfig)
    name = f"meters-{uuid.uuid4().hex[:8]}"
    # when init writes an environment, twice (it is re-runnable)
    first = init_into(samconfig, name, environment)
    again = cli(
        "--stack",
        name,
        "init",
        "--keep-token",
        "--config-env",
        environment,
        "--samconfig",
        str(samconfig),
    )
    # then the environment reads its profiles from ssm:/<stack>/sources, on one line
    assert first[0] == again[0] == 0, (first, again)
    overrides = overrides_of(samconfig, environment)
    assert [o for o in overrides if o.startswith("SourcesConfig=")] == [
        f"SourcesConfig=ssm:/{name}/sources"
    ]
    assert f"meter profiles: ssm:/{name}/sources" in again[2]
    # and a stack deployed with it takes `sources push`, with no hand edit
    [sources] = [o.split("=", 1)[1] for o in overrides if o.startswith("SourcesConfig=")]
    stack = deploy_stack(adapter, name, SourcesConfig=sources)
    document = tmp_path / "sources.json"
    document.write_text('{"version": 1, "sources": {}}')
    code, out, err = cli("--stack", stack, "sources", "push", str(document))
    assert code == 0, out + err
    parameter = client("ssm", adapter.endpoint).get_parameter(Name=f"/{name}/sources")
    assert parameter["Parameter"]["Value"] == document.read_text()


@pytest.mark.parametrize("kept", ['"SourcesConfig=file:sources.json"', '"SourcesConfig="'])
def test_init_keeps_a_sources_config_the_environment_already_names(
    adapter: Adapter, tmp_path: Path, kept: str
) -> None:
    # given a staging environment that already names where its profiles are
    samconfig = tmp_path / "samconfig.toml"
    text = (ROOT / "samconfig.toml").read_text()
    marker = '    "LogRetentionDays=14",\n'
    assert marker in text
    samconfig.write_text(text.replace(marker, f"{marker}    {kept}, # mine\n", 1))
    # when init writes that environment
    code, _, err = init_into(samconfig, f"kept-{uuid.uuid4().hex[:8]}", "staging")
    # then the line is kept as it was, and no other SourcesConfig is added
    assert code == 0, err
    assert f"    {kept}, # mine\n" in samconfig.read_text()
    overrides = overrides_of(samconfig, "staging")
    assert [o for o in overrides if o.startswith("SourcesConfig=")] == [kept.strip('"')]


def test_init_with_the_deprecated_name_still_works_and_says_so(adapter: Adapter) -> None:
    name = f"old-{uuid.uuid4().hex[:8]}"
    code, _, err = cli("init", "--name", name, "--token-stdin", stdin="tok\n")
    assert code == 0 and "--name is deprecated; give --stack NAME" in err
    client("secretsmanager", adapter.endpoint).describe_secret(SecretId=f"{name}/piriod-token")
    code, _, err = cli("init", "--name", name, "--stack", "other", "--keep-token")
    assert code == 2 and "different stacks" in err


def test_init_writes_the_region_given_and_makes_the_secrets_there(
    adapter: Adapter, tmp_path: Path
) -> None:
    samconfig = tmp_path / "samconfig.toml"
    name = f"eu-{uuid.uuid4().hex[:8]}"
    code, out, _ = cli(
        "--region",
        "eu-west-1",
        "init",
        "--stack",
        name,
        "--token-stdin",
        "--config-env",
        "eu",
        "--samconfig",
        str(samconfig),
        stdin="tok\n",
    )
    assert code == 0
    assert ":eu-west-1:" in out.splitlines()[0]
    parsed = tomllib.loads(samconfig.read_text())["eu"]
    assert parsed["global"]["parameters"]["stack_name"] == name
    assert parsed["deploy"]["parameters"]["region"] == "eu-west-1"


def test_signing_secret_rotates_the_stacks_own_secret(adapter: Adapter, stack: str) -> None:
    # when a secret is added to the stack's WebhookSecretArn, with --stack after the command
    code, new, _ = cli("signing-secret", "add", "--stack", stack)
    # then the stack's secret has two, and retiring keeps the new one
    assert code == 0 and new.startswith("whsec_")
    assert cli("--stack", stack, "signing-secret", "count")[1].startswith("2 ")
    assert cli("signing-secret", "retire", "--stack", stack)[0] == 0
    manager = client("secretsmanager", adapter.endpoint)
    value = manager.get_secret_value(SecretId=adapter.resources.webhook_secret_arn)
    assert json.loads(value["SecretString"]) == {"signing_secrets": [new.strip()]}


def test_signing_secret_of_a_stack_never_initialised_is_refused(adapter: Adapter) -> None:
    code, out, err = cli("signing-secret", "add", "--stack", "not-initialised")
    assert code == 2 and out == ""
    assert "no secret 'not-initialised/webhook-signing-secrets'" in err
    assert "--stack not-initialised init" in err


def test_reconcile_prints_a_table_and_json_for_machines(
    adapter: Adapter, piriod: Any, stack: str
) -> None:
    # given three records of line 11 posted, one of them then deleted in Piriod
    adapter.deliver({"usages": [record(11, h) for h in range(3)]})
    # (the records post side by side: the first hour's usage is found by its time)
    [first] = [u for u in piriod.usages() if u["date_time"] == "2026-11-01T00:00:00Z"]
    deleted = first["id"]
    headers = {"Authorization": f"Token {TOKEN}", "x-simple-workspace": WORKSPACE}
    gone = urllib3.PoolManager().request(
        "DELETE", f"{piriod.url}/usages/{deleted}/", headers=headers
    )
    assert gone.status == 204
    window = ("--line", "11", "--since", "2026-11-01", "--until", "2026-11-01")
    # when reconcile runs for that day, as a table and as JSON
    code, table, _ = cli("--stack", stack, "reconcile", *window)
    code_json, raw, _ = cli("reconcile", *window, "--json", "--stack", stack)
    # then the table names the missing usage, and the JSON says the same
    assert code == code_json == 3
    assert "adapter posted 3, Piriod lists 2, matched 2" in table
    [row] = [line for line in table.splitlines() if line.startswith("missing in Piriod")]
    assert f" {deleted} " in row and "2026-11-01T00:00:00Z" in row
    assert "differences: 1 missing in Piriod, 0 not recorded by adapter" in table
    assert [m["usage_id"] for m in json.loads(raw)["missing_in_piriod"]] == [deleted]


def test_replay_prints_the_new_message_of_a_record_rejected_again(
    adapter: Adapter, piriod: Any, stack: str
) -> None:
    # given a record Piriod rejected, and still rejects
    piriod.set_unmetered_lines(7)
    adapter.deliver(record(7, 1))
    [old] = [
        json.loads(line)["message_id"]
        for line in cli("list", "--json", "--stack", stack)[1].splitlines()
    ]
    # when it is replayed
    code, out, _ = cli("replay", "--stack", stack)
    # then its line shows where it went: a new dead-letter message, whose id is printed
    assert code == 0 and "rejected=1" in out
    [new] = [
        json.loads(line)["message_id"]
        for line in cli("list", "--json", "--stack", stack)[1].splitlines()
    ]
    assert new != old
    [row] = [line for line in out.splitlines() if line.startswith(old[:8])]
    assert "line 7  rejected" in row and f"now dead-letter message {new}" in row


def test_send_with_a_secret_that_does_not_exist_is_refused_before_sending(
    adapter: Adapter, piriod: Any, dead_endpoint: str
) -> None:
    code, out, err = cli(
        "send", "--url", f"{dead_endpoint}/v1/usages", "--secret-id", "missing", "--line", "1"
    )
    assert code == 2 and out == ""
    assert "no secret 'missing'" in err and len(err.strip().splitlines()) == 1
    assert piriod.usages() == []


def test_send_with_no_url_anywhere_says_what_to_give(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIRIOD_WEBHOOK_URL", raising=False)
    monkeypatch.setenv("PIRIOD_SIGNING_SECRET", "whsec_" + "A" * 32)
    code, out, err = cli("send", "--line", "1")
    assert code == 2 and out == ""
    assert "export PIRIOD_WEBHOOK_URL" in err and len(err.strip().splitlines()) == 1
    assert "--stack NAME" in err and "--url" in err
