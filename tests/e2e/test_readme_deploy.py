"""README "Deploy", steps 1 to 3, run exactly as written on a copy of the
repository, with moto server as AWS: `init` (the token typed at its prompt), `sam build`,
`sam validate --lint` where the README says `sam deploy` (there is no AWS here), then `send`.

What `sam deploy` would leave behind is stood in for: the webhook served on a local port with
the parameters `init` wrote into samconfig.toml, and a CloudFormation stack on moto with the
outputs `send` reads (WebhookUrl, WebhookSecretArn)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from piriod_devkit.aws import client
from piriod_devkit.local_api import LocalApiServer
from tests.conftest import Adapter
from tests.e2e.conftest import ROOT, SAM, sam_env

TOKEN = "tok-readme-first-deploy"
DEPLOY = "sam deploy --config-env staging"
VALIDATE = "sam validate --lint --config-env staging"


def readme_steps() -> list[str]:
    """The bash blocks of the README's deploy section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("\n## Deploy\n") + 1 :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"^```bash\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


def copy_of_repository(target: Path) -> Path:
    """The repository's files (as a fresh clone would have them) with this checkout's .venv."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes(source.read_bytes())
    (target / ".venv").symlink_to(ROOT / ".venv")
    return target


def shell(script: str, cwd: Path, env: dict[str, str], stdin: str = "") -> tuple[int, str]:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,  # no terminal: the token prompt reads standard input
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return copy_of_repository(tmp_path / "repo")


@pytest.fixture
def aws_env(adapter: Adapter) -> dict[str, str]:
    env = sam_env()
    env.update(AWS_ENDPOINT_URL=adapter.endpoint, PATH=f"{SAM.parent}:{env['PATH']}")
    return env


@pytest.fixture
def deployed(adapter: Adapter, piriod: Any) -> Iterator[LocalApiServer]:
    server = LocalApiServer().start()
    yield server
    server.stop()


def overrides(samconfig: Path, environment: str) -> dict[str, str]:
    document = tomllib.loads(samconfig.read_text())
    pairs = document[environment]["deploy"]["parameters"]["parameter_overrides"]
    return dict(pair.split("=", 1) for pair in pairs)


def test_readme_deploy_steps_work_as_written(
    workdir: Path,
    aws_env: dict[str, str],
    adapter: Adapter,
    piriod: Any,
    deployed: LocalApiServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given the README's steps: secrets, build and deploy, a first signed request
    secrets_step, deploy_step, send_step, *_ = readme_steps()
    assert DEPLOY in deploy_step
    [stack] = re.findall(r"^STACK=(\S+)$", secrets_step, re.MULTILINE)

    # when steps 1 and 2 run, the Piriod token typed at init's prompt
    code, output = shell(
        secrets_step + deploy_step.replace(DEPLOY, VALIDATE), workdir, aws_env, f"{TOKEN}\n"
    )
    # then the secrets exist in their shapes, samconfig's staging environment names them, the
    # template validates, and the token was never echoed
    assert code == 0, output
    assert "is a valid SAM Template" in output and TOKEN not in output
    written = overrides(workdir / "samconfig.toml", "staging")
    manager = client("secretsmanager", adapter.endpoint)
    token_secret = manager.get_secret_value(SecretId=written["PiriodTokenSecretArn"])
    assert json.loads(token_secret["SecretString"]) == {"api_token": TOKEN}
    signing = json.loads(
        manager.get_secret_value(SecretId=written["WebhookSecretArn"])["SecretString"]
    )
    assert [s[:6] for s in signing["signing_secrets"]] == ["whsec_"]
    assert signing["signing_secrets"][0] in output  # shown once, to hand to the meters
    assert written["PiriodTestMode"] == "true" and "REPLACE-ME" not in str(written)
    assert (workdir / ".aws-sam" / "build" / "template.yaml").exists()

    # given what the deploy would have made: the webhook with those parameters, and the
    # stack's outputs
    piriod.set_tokens(TOKEN)
    monkeypatch.setattr(piriod, "workspace", written["PiriodWorkspaceId"])
    adapter.fresh_runtime(
        PIRIOD_WORKSPACE_ID=written["PiriodWorkspaceId"],
        PIRIOD_TEST_MODE=written["PiriodTestMode"],
        PIRIOD_TOKEN_SECRET_ID=written["PiriodTokenSecretArn"],
        WEBHOOK_SECRET_ID=written["WebhookSecretArn"],
    )
    outputs = {
        "WebhookUrl": f"{deployed.url}/v1/usages",
        "WebhookSecretArn": written["WebhookSecretArn"],
    }
    client("cloudformation", adapter.endpoint).create_stack(
        StackName=stack,
        TemplateBody=json.dumps(
            {
                "Resources": {"StandIn": {"Type": "AWS::SQS::Queue"}},
                "Outputs": {key: {"Value": value} for key, value in outputs.items()},
            }
        ),
    )

    # when step 3 runs
    code, output = shell(f"STACK={shlex.quote(stack)}\n" + send_step, workdir, aws_env)
    # then the signed record is posted, in test mode, and the answer says so
    assert code == 0, output
    assert "HTTP 202" in output and re.search(r"record 0: posted usage_id=\d+", output), output
    [usage] = piriod.usages(test_mode=True)
    assert (usage["subscription_line"], usage["quantity"]) == (1234, "1")
