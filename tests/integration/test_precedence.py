"""Where each command takes a URL or a secret from, when several places name one: a flag
beats the environment (`--url`, `--secret-id`, and `--stack NAME` for the values its stack
holds), and the environment is used only when no flag names the target. Against moto server,
with the webhook served on a local port: the place that should win points at the live
webhook and the right secret; every other place at an address where nothing listens, or a
secret the webhook refuses."""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from piriod_devkit.aws import client, free_port, function_environment, provision
from piriod_devkit.local_api import LocalApiServer
from piriod_devkit.sources import LOCAL_SOURCE_SECRETS, example_document, provision_sources
from tests.conftest import Adapter
from tests.integration.test_cli_stack import FUNCTION_VARIABLES, cli, deploy_stack
from tests.integration.test_webhook import OTHER_SECRET

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def api(adapter: Adapter) -> Iterator[LocalApiServer]:
    """The webhook on a local port, its settings read while the functions' variables are set
    (`cli` runs without them)."""
    from piriod_adapter.runtime import get_runtime

    get_runtime().settings  # noqa: B018
    server = LocalApiServer().start()
    yield server
    server.stop()


def wrong_secret(adapter: Adapter) -> str:
    """A Secrets Manager secret holding a signing secret the webhook does not accept."""
    return str(
        client("secretsmanager", adapter.endpoint).create_secret(
            Name=f"wrong-{uuid.uuid4().hex[:8]}",
            SecretString=json.dumps({"signing_secrets": [OTHER_SECRET]}),
        )["ARN"]
    )


def posted_lines(piriod: Any) -> list[int]:
    return sorted(u["subscription_line"] for u in piriod.usages())


# --- send, the native route ---------------------------------------------------------------------


@pytest.mark.parametrize("winner", ["flags", "stack", "environment"])
def test_send_takes_url_and_secret_from_its_flags_then_the_stack_then_the_environment(
    adapter: Adapter,
    piriod: Any,
    api: LocalApiServer,
    monkeypatch: pytest.MonkeyPatch,
    winner: str,
) -> None:
    # given the live webhook and its secret in one place, and a dead address and a refused
    # secret in every place that should lose
    live, dead = f"{api.url}/v1/usages", f"http://127.0.0.1:{free_port()}/v1/usages"
    good, wrong = adapter.resources.webhook_secret_arn, wrong_secret(adapter)
    stack_url, stack_secret = (live, good) if winner == "stack" else (dead, wrong)
    stack = deploy_stack(adapter, webhook_url=stack_url, webhook_secret_arn=stack_secret)
    if winner == "environment":
        monkeypatch.setenv("PIRIOD_WEBHOOK_URL", live)
        monkeypatch.setenv("PIRIOD_SIGNING_SECRET", adapter.secret)
        argv = ["send", "--line", "31"]
    else:
        monkeypatch.setenv("PIRIOD_WEBHOOK_URL", dead)
        monkeypatch.setenv("PIRIOD_SIGNING_SECRET", OTHER_SECRET)
        argv = ["send", "--stack", stack, "--line", "31"]
    if winner == "flags":
        argv += ["--url", live, "--secret-id", good]
    # when one record is sent
    code, out, err = cli(*argv)
    # then it went to the winner's URL, signed with the winner's secret, and send said so
    assert code == 0 and "record 0: posted" in out, out + err
    assert posted_lines(piriod) == [31]
    said = {
        "flags": f"POST {live} (from --url; signed with secret {good}",
        "stack": f"POST {live} (from stack {stack}; signed with stack {stack}'s secret",
        "environment": f"POST {live} (from $PIRIOD_WEBHOOK_URL; signed with $PIRIOD_SIGNING_SECRET",
    }[winner]
    assert said in err, err


def test_send_with_url_and_stack_takes_the_url_from_the_flag_and_the_secret_from_the_stack(
    adapter: Adapter, piriod: Any, api: LocalApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a stack whose URL is dead but whose secret is right, and an environment of
    # neither
    stack = deploy_stack(adapter, webhook_url=f"http://127.0.0.1:{free_port()}/v1/usages")
    monkeypatch.setenv("PIRIOD_WEBHOOK_URL", f"http://127.0.0.1:{free_port()}/v1/usages")
    monkeypatch.setenv("PIRIOD_SIGNING_SECRET", OTHER_SECRET)
    # when --url names the live webhook
    code, out, err = cli("send", "--stack", stack, "--url", f"{api.url}/v1/usages", "--line", "32")
    # then each value came from the most specific flag that names it
    assert code == 0 and "record 0: posted" in out, out + err
    assert f"(from --url; signed with stack {stack}'s secret" in err
    assert posted_lines(piriod) == [32]


# --- send --source ------------------------------------------------------------------------------


@pytest.fixture
def sources_file(adapter: Adapter, tmp_path: Path) -> Path:
    """The example profiles in a file, and their local secrets in moto."""
    provision_sources(adapter.endpoint, f"/precedence-{uuid.uuid4().hex[:8]}/sources")
    path = tmp_path / "sources.json"
    path.write_text(json.dumps(example_document()))
    return path


@pytest.mark.parametrize("winner", ["flags", "stack", "environment"])
def test_send_source_takes_the_url_as_the_native_route_does_and_its_profiles_secret(
    adapter: Adapter,
    piriod: Any,
    api: LocalApiServer,
    sources_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    winner: str,
) -> None:
    # given the webhook reading the example profiles from the file, the live base address in
    # one place and a dead one in the others, and $PIRIOD_SIGNING_SECRET (the native route's)
    # refused by the source
    adapter.fresh_runtime(SOURCES_CONFIG=f"file:{sources_file}")
    from piriod_adapter.runtime import get_runtime

    get_runtime().settings  # noqa: B018
    live, dead = f"{api.url}/v1/usages", f"http://127.0.0.1:{free_port()}/v1/usages"
    stack = deploy_stack(adapter, webhook_url=live if winner == "stack" else dead)
    monkeypatch.setenv("PIRIOD_WEBHOOK_URL", live if winner == "environment" else dead)
    monkeypatch.setenv("PIRIOD_SIGNING_SECRET", OTHER_SECRET)
    payload = sources_file.parent / "payload.json"
    payload.write_text((ROOT / "docs" / "examples" / "acme-storage.json").read_text())
    argv = ["send", "--source", "acme-storage", "--config", str(sources_file)]
    argv += ["--payload", str(payload)]
    if winner != "environment":
        argv += ["--stack", stack]
    if winner == "flags":
        argv += ["--url", api.url]
    # when the meter's payload is sent
    code, out, err = cli(*argv)
    # then it went to the source route of the winner's address, signed with the profile's
    # secret, never the native route's
    assert code == 0 and "record 0: posted" in out, out + err
    where = {"flags": "--url", "stack": f"stack {stack}", "environment": "$PIRIOD_WEBHOOK_URL"}
    assert f"POST {api.url}/v1/sources/acme-storage/usages (from {where[winner]};" in err
    assert "secret piriod/sources/acme-storage" in err
    assert set(posted_lines(piriod)) == {3001}


def test_send_source_signs_with_secret_id_over_the_profiles(
    adapter: Adapter,
    piriod: Any,
    api: LocalApiServer,
    sources_file: Path,
) -> None:
    # given the webhook reading the example profiles, a copy of the meter's secret under
    # another name, and the operator's profile file naming a secret that does not exist
    adapter.fresh_runtime(SOURCES_CONFIG=f"file:{sources_file}")
    from piriod_adapter.runtime import get_runtime

    get_runtime().settings  # noqa: B018
    document = example_document()
    document["sources"]["acme-storage"]["signature"]["secret_id"] = "nowhere/acme-storage"
    mine = sources_file.parent / "mine.json"
    mine.write_text(json.dumps(document))
    copy = client("secretsmanager", adapter.endpoint).create_secret(
        Name=f"copy-{uuid.uuid4().hex[:8]}",
        SecretString=json.dumps(
            {"signing_secrets": [LOCAL_SOURCE_SECRETS["piriod/sources/acme-storage"]]}
        ),
    )["ARN"]
    payload = sources_file.parent / "payload.json"
    payload.write_text((ROOT / "docs" / "examples" / "acme-storage.json").read_text())
    base = ["send", "--url", api.url, "--source", "acme-storage", "--config", str(mine)]
    # when it is sent with the profile's secret, then with --secret-id
    missing = cli(*base, "--payload", str(payload))
    given = cli(*base, "--payload", str(payload), "--secret-id", copy)
    # then the profile's is used without the flag (and does not exist), the flag's with it
    assert missing[0] == 2 and "no secret 'nowhere/acme-storage'" in missing[2]
    assert given[0] == 0 and f"secret {copy})" in given[2], given
    assert set(posted_lines(piriod)) == {3001}


# --- signing-secret -----------------------------------------------------------------------------


def test_signing_secret_rotates_the_secret_id_given_over_the_stacks(
    adapter: Adapter,
) -> None:
    # given a stack, and another signing secret named with --secret-id
    stack = deploy_stack(adapter)
    other = wrong_secret(adapter)
    # when a secret is added with both
    code, new, _ = cli("signing-secret", "add", "--stack", stack, "--secret-id", other)
    # then the flag's secret has two, the stack's still one
    assert code == 0 and new.startswith("whsec_")
    manager = client("secretsmanager", adapter.endpoint)

    def count(secret_id: str) -> int:
        value = manager.get_secret_value(SecretId=secret_id)["SecretString"]
        return len(json.loads(value)["signing_secrets"])

    assert count(other) == 2 and count(adapter.resources.webhook_secret_arn) == 1


# --- the queue commands -------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [("list", "--queue", "dead-letter"), ("status", "--json")])
def test_queue_commands_read_the_stack_given_over_the_functions_variables(
    adapter: Adapter,
    piriod: Any,
    monkeypatch: pytest.MonkeyPatch,
    argv: tuple[str, ...],
) -> None:
    # given two records in the stack's dead-letter queue, and the functions' variables of
    # another adapter (empty) in the environment, as `piriod-local serve --print-env` leaves
    piriod.set_unmetered_lines(7)
    record = {"subscription_line": 7, "date_time": "2026-11-01T01:00:00Z", "quantity": 1}
    assert adapter.deliver({"usages": [record, {**record, "quantity": 2}]})[0] == 202
    stack = deploy_stack(adapter)
    other = provision(adapter.endpoint, token="x", signing_secrets=[OTHER_SECRET])
    environment = function_environment(other, piriod_url=piriod.url, workspace="acc_other")
    # when the operator runs the command with --stack, in that environment
    saved = {k: environment[k] for k in FUNCTION_VARIABLES if k in environment}
    code, out, err = cli_with(saved, *argv, "--stack", stack)
    # then it read the stack's queues, not the environment's
    assert code == 0, err
    if argv[0] == "list":
        assert "2 message(s)" in out
    else:
        assert json.loads(out)["queues"]["dead-letter"]["visible"] == 2
    # and without --stack, the environment's (empty) queues
    code, out, err = cli_with(saved, *argv)
    assert code == 0, err
    if argv[0] == "list":
        assert "0 message(s)" in out
    else:
        assert json.loads(out)["queues"]["dead-letter"]["visible"] == 0


def cli_with(environment: dict[str, str], *argv: str) -> tuple[int, str, str]:
    """piriod-adapter run with these of the functions' variables set (`cli` removes them)."""
    from piriod_operator.cli import main

    saved = {k: os.environ.get(k) for k in environment}
    os.environ.update(environment)
    out, err = io.StringIO(), io.StringIO()
    try:
        code = main(list(argv), out=out, err=err)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return code, out.getvalue(), err.getvalue()


def test_region_given_beats_the_environments(
    adapter: Adapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a stack in us-east-1, and AWS_DEFAULT_REGION naming it
    stack = deploy_stack(adapter)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # when the operator names another region with --region
    code, out, err = cli("--region", "eu-west-1", "status", "--stack", stack)
    # then the stack is looked for there (and is not there), not in the environment's
    assert code == 2 and out == ""
    assert f"no stack '{stack}' in eu-west-1" in err
    assert cli("status", "--stack", stack)[0] == 0
