"""From nothing to a signed first delivery: `init`, `signing-secret`, `send`, against moto
server, the Piriod stand-in and the webhook served on a local port."""

from __future__ import annotations

import io
import json
import shutil
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from piriod_devkit.aws import client
from piriod_devkit.local_api import LocalApiServer
from tests.conftest import Adapter

ROOT = Path(__file__).resolve().parents[2]


def cli(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    from piriod_operator.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        code = main(list(argv), out=out, err=err)
    finally:
        sys.stdin = saved
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def name() -> str:
    return f"adapter-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def api(adapter: Adapter) -> Iterator[LocalApiServer]:
    server = LocalApiServer().start()
    yield server
    server.stop()


def secret_value(adapter: Adapter, secret_id: str) -> Any:
    manager = client("secretsmanager", adapter.endpoint)
    return json.loads(manager.get_secret_value(SecretId=secret_id)["SecretString"])


def test_init_keeping_a_token_that_does_not_exist_is_a_usage_error(
    adapter: Adapter, name: str
) -> None:
    # when the first init of a name is told to keep the token
    code, out, err = cli("init", "--stack", name, "--keep-token")
    # then it says there is none yet, exit 2, and makes nothing
    assert code == 2 and "no Piriod token yet" in err and out == ""
    with pytest.raises(Exception, match="ResourceNotFound"):
        secret_value(adapter, f"{name}/webhook-signing-secrets")


def test_init_makes_both_secrets_in_their_shapes_and_is_rerunnable(
    adapter: Adapter, name: str
) -> None:
    # when the operator runs init with a token
    code, out, err = cli("init", "--stack", name, "--token-stdin", stdin="tok-1\n")
    # then both secrets exist in the shapes the functions read, and the new signing secret
    # is shown once
    assert code == 0
    arns = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    signing = out.splitlines()[-1]
    assert secret_value(adapter, arns["PiriodTokenSecretArn"]) == {"api_token": "tok-1"}
    assert secret_value(adapter, arns["WebhookSecretArn"]) == {"signing_secrets": [signing]}
    assert signing.startswith("whsec_") and len(signing) == len("whsec_") + 44  # 32 bytes
    assert "tok-1" not in out + err
    # when it runs again, keeping the token, then with a new token
    assert cli("init", "--stack", name, "--keep-token")[0] == 0
    code, out, _ = cli("init", "--stack", name, "--token-stdin", stdin="tok-2\n")
    # then the signing secret is kept, the token replaced, the ARNs the same
    assert secret_value(adapter, arns["WebhookSecretArn"]) == {"signing_secrets": [signing]}
    assert secret_value(adapter, arns["PiriodTokenSecretArn"]) == {"api_token": "tok-2"}
    assert f"WebhookSecretArn={arns['WebhookSecretArn']}" in out
    assert "whsec_" not in out


def test_init_writes_the_arns_into_a_samconfig_environment(
    adapter: Adapter, name: str, tmp_path: Path
) -> None:
    # given the project's samconfig.toml
    samconfig = tmp_path / "samconfig.toml"
    shutil.copy(ROOT / "samconfig.toml", samconfig)
    # when init writes into the staging environment, twice, and into a new one
    for _ in range(2):
        code, out, _ = cli(
            "init",
            "--stack",
            name,
            "--token-stdin",
            "--workspace",
            "acc_9",
            "--config-env",
            "staging",
            "--samconfig",
            str(samconfig),
            stdin="tok\n",
        )
        assert code == 0
    cli(
        "init",
        "--stack",
        name,
        "--token-stdin",
        "--config-env",
        "eu",
        "--samconfig",
        str(samconfig),
        "--region",
        "eu-west-1",
        stdin="tok\n",
    )
    # then each environment names the secrets once, and the rest of the file is unchanged
    parsed = tomllib.loads(samconfig.read_text())
    overrides = parsed["staging"]["deploy"]["parameters"]["parameter_overrides"]
    arns = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert f"WebhookSecretArn={arns['WebhookSecretArn']}" in overrides
    assert "PiriodWorkspaceId=acc_9" in overrides
    assert len([o for o in overrides if o.startswith("PiriodTokenSecretArn=")]) == 1
    assert parsed["prod"] == tomllib.loads((ROOT / "samconfig.toml").read_text())["prod"]
    assert parsed["eu"]["global"]["parameters"]["stack_name"] == name
    assert parsed["eu"]["deploy"]["parameters"]["region"] == "eu-west-1"
    # and the stack goes where the secrets are: the region the secrets were made in
    # replaces staging's placeholder, and eu's secrets are in eu-west-1
    made_in = client("secretsmanager", adapter.endpoint).meta.region_name
    assert parsed["staging"]["deploy"]["parameters"]["region"] == made_in
    staging = samconfig.read_text().split("[staging.deploy.parameters]")[1].split("\n[")[0]
    assert "placeholder" not in staging
    eu_arn = dict(
        p.split("=", 1) for p in parsed["eu"]["deploy"]["parameters"]["parameter_overrides"]
    )
    assert ":eu-west-1:" in eu_arn["WebhookSecretArn"]


def test_rotation_adds_a_second_secret_then_retires_the_first(
    adapter: Adapter, piriod: Any, name: str
) -> None:
    # given a deployed adapter that reads the secret init made
    _, out, _ = cli("init", "--stack", name, "--token-stdin", stdin="tok\n")
    old = out.splitlines()[-1]
    arn = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)["WebhookSecretArn"]
    adapter.fresh_runtime(WEBHOOK_SECRET_ID=arn, SECRET_CACHE_SECONDS="0")
    record = {"subscription_line": 7, "date_time": "2026-11-01T10:00:00Z", "quantity": 1}
    # when a second secret is added
    code, new, _ = cli("signing-secret", "add", "--stack", name)
    new = new.strip()
    # then deliveries signed with either pass
    assert code == 0 and cli("signing-secret", "count", "--stack", name)[1].startswith("2 ")
    assert adapter.deliver(record, secret=old)[0] == 202
    assert adapter.deliver({**record, "quantity": 2}, secret=new)[0] == 202
    # and once the old one is retired, only the new one does
    assert cli("signing-secret", "retire", "--stack", name)[0] == 0
    assert adapter.deliver({**record, "quantity": 3}, secret=old)[0] == 401
    assert adapter.deliver({**record, "quantity": 4}, secret=new)[0] == 202


def test_send_delivers_one_signed_record_and_shows_its_outcome(
    adapter: Adapter,
    piriod: Any,
    api: LocalApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"{api.url}/v1/usages"
    # when the operator sends a test record with the signing secret from Secrets Manager
    code, out, _ = cli(
        "send",
        "--url",
        url,
        "--secret-id",
        adapter.resources.webhook_secret_arn,
        "--line",
        "42",
        "--quantity",
        "1.50",
        "--date-time",
        "2026-11-01T10:00:00Z",
    )
    # then it is posted, and the answer is shown record by record
    assert code == 0 and out.startswith("HTTP 202")
    assert f"record 0: posted usage_id={piriod.usages()[0]['id']}" in out
    assert piriod.usages()[0]["quantity"] == "1.50"
    # and with a wrong secret (from the environment) the refusal is shown, exit 1
    monkeypatch.setenv("PIRIOD_SIGNING_SECRET", "whsec_" + "QUFBQUFBQUFBQUFBQUFBQQ==")
    code, out, _ = cli("send", "--url", url, "--line", "42")
    assert code == 1 and out.startswith("HTTP 401") and "signature" in out
    # and a quantity that is not a JSON number is refused before anything is sent
    with pytest.raises(SystemExit) as exited:
        cli("send", "--url", url, "--line", "44", "--quantity", ".5")
    assert exited.value.code == 2 and "JSON number" in capsys.readouterr().err
    assert [u["subscription_line"] for u in piriod.usages()].count(44) == 0
    # while a secret named on the command line wins over the environment's
    code, out, _ = cli(
        "send", "--url", url, "--secret-id", adapter.resources.webhook_secret_arn, "--line", "43"
    )
    assert code == 0 and out.startswith("HTTP 202")
