"""The README's commands, run as written (its bash blocks, in bash):

- "Quick start": `piriod-local serve` in one shell, `eval "$(piriod-local serve
  --print-env)"`, `send` and `--unset` in another (on a free port instead of 3000, the one
  change); docs/local.md's serve block the same way;
- "Add a third-party meter" rehearsed unchanged against `piriod-local serve`, with
  STACK=piriod-local;
- against moto server, where a CloudFormation stack carries what `sam deploy` leaves
  (parameters and outputs pointing at the adapter's moto resources) and the webhook is
  served on a local port: "Add a third-party meter" (the meter's secret, validate, try,
  push, send --source), "Operate" (list, replay --dry-run, reconcile, signing-secret add),
  and Deploy's clean-up (with the AWS CLI; `sam delete` as CloudFormation's delete-stack).

The deploy steps themselves are run by tests/e2e/test_readme_deploy.py (they need sam)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from piriod_devkit.aws import client, free_port
from piriod_devkit.local_api import LocalApiServer
from piriod_devkit.process import stop_group
from tests.conftest import Adapter
from tests.integration.test_cli_stack import deploy_stack

ROOT = Path(__file__).resolve().parents[2]


def readme_blocks(heading: str) -> list[str]:
    """The bash blocks of one README section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(f"\n## {heading}\n") + 1 :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"^```bash\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)


def bash(script: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.fixture
def served(adapter: Adapter) -> Iterator[LocalApiServer]:
    server = LocalApiServer().start()
    yield server
    server.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory where the README's relative paths resolve as in a clone (docs/, examples/
    and .venv/ of this checkout), and where what the commands write stays."""
    for name in ("docs", "examples", ".venv"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def shell_env(adapter: Adapter, stack: str) -> dict[str, str]:
    """The operator's shell: AWS (moto) and STACK, as the README's deploy section sets it."""
    return {
        **os.environ,
        "AWS_ENDPOINT_URL": adapter.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "STACK": stack,
    }


def test_readme_add_a_meter_works_as_written(
    adapter: Adapter, piriod: Any, served: LocalApiServer, workdir: Path
) -> None:
    # given a deployed stack that reads its profiles from SSM, as the README asks
    stack = f"readme-meter-{uuid.uuid4().hex[:8]}"
    parameter = f"ssm:/{stack}/sources"
    deploy_stack(adapter, stack, webhook_url=f"{served.url}/v1/usages", SourcesConfig=parameter)
    adapter.fresh_runtime(SOURCES_CONFIG=parameter, SOURCES_CACHE_SECONDS="1")
    [steps] = readme_blocks("Add a third-party meter")
    # when the README's steps run
    code, out, err = bash(steps, workdir, shell_env(adapter, stack))
    # then the meter's secret was made under the stack and shown once, the profile went to
    # the stack's parameter, and the meter's payload was posted in GB with its event ids
    assert code == 0, out + err
    secret = client("secretsmanager", adapter.endpoint).get_secret_value(
        SecretId=f"{stack}/sources/acme-storage"
    )["SecretString"]
    [made] = [line for line in out.splitlines() if line and line in secret]
    assert out.count(made) == 1
    assert "2 would post" in out and "dry run: nothing was posted" in out
    assert "HTTP 202" in out and 'event_id="rd_0001"' in out, out
    ledger = sorted((u["subscription_line"], u["quantity"]) for u in piriod.usages())
    assert ledger == [(3001, "1.073741824"), (3001, "1.500000000")]
    assert piriod.violations() == []


def test_readme_operate_works_as_written(
    adapter: Adapter, piriod: Any, served: LocalApiServer, workdir: Path
) -> None:
    # given a deployed stack
    stack = deploy_stack(adapter, f"readme-ops-{uuid.uuid4().hex[:8]}", f"{served.url}/v1/usages")
    [steps] = readme_blocks("Operate")
    # when the README's operator commands run
    code, out, err = bash(steps, workdir, shell_env(adapter, stack))
    # then each one did its job: both queues listed, a dry run, a reconcile with nothing
    # missing on either side, and a second signing secret added for the rotation
    assert code == 0, out + err
    assert "replay" in out and "dead-letter" in out
    assert re.search(r"\bwhsec_\S+", out), out
    secrets = client("secretsmanager", adapter.endpoint).get_secret_value(
        SecretId=adapter.resources.webhook_secret_arn
    )["SecretString"]
    assert secrets.count("whsec_") == 2


def two_shells(block: str, workdir: Path) -> tuple[int, str, str]:
    """A block whose first line serves (`piriod-local serve`) and whose other lines run in
    another shell once it answers (on a free port instead of 3000, the one change)."""
    serve, *other_shell = block.strip().splitlines()
    assert "piriod-local serve" in serve and "--print-env" in other_shell[0]
    port = free_port()

    def on_port(line: str) -> str:
        return line.replace("piriod-local serve", f"piriod-local serve --port {port}")

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "PIRIOD_", "POWERTOOLS_")) and k != "SOURCES_CONFIG"
    }
    # the first shell serves, and the second runs its lines once it answers
    server = subprocess.Popen(
        ["bash", "-c", on_port(serve)],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while bash(on_port(other_shell[0]), workdir, env)[0] != 0:
            assert server.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(1)
        return bash("\n".join(map(on_port, other_shell)), workdir, env)
    finally:
        stop_group(server)


def test_readme_quick_start_serve_and_send_work_as_written(workdir: Path) -> None:
    # given the Quick start's second block: serve in one shell, the exports, send and the
    # undo in another
    [_, block] = readme_blocks("Quick start")
    # when it runs
    code, out, err = two_shells(block, workdir)
    # then the record was posted through the local adapter
    assert code == 0, out + err
    assert "HTTP 202" in out and re.search(r"record 0: posted usage_id=\d+", out), out


def test_local_md_serve_block_works_as_written(workdir: Path) -> None:
    # given docs/local.md's serve block: serve in one shell; the exports, send, status through
    # the stack piriod-local, a dry run and a third-party send, and the undo in another
    text = (ROOT / "docs" / "local.md").read_text()
    section = text[text.index("## `piriod-local serve`") :]
    [block] = re.findall(r"^```bash\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)[:1]
    # when it runs
    code, out, err = two_shells(block, workdir)
    # then each command did its job against the serve
    assert code == 0, out + err
    assert re.search(r"record 0: posted usage_id=\d+", out), out
    assert "QUEUE" in out and "last hour: not available locally" in out
    assert "2 would post" in out and "dry run: nothing was posted" in out
    assert 'event_id="rd_0001"' in out


def test_readme_add_a_meter_rehearses_unchanged_against_the_local_serve(workdir: Path) -> None:
    from tests.integration.test_serve import serve

    # given a running `piriod-local serve`, and a shell with its exports and STACK=piriod-local,
    # as the README's rehearsal says
    [steps] = readme_blocks("Add a third-party meter")
    with serve() as running:
        env = running.env() | {"STACK": "piriod-local"}
        # when the README's steps run, unchanged
        code, out, err = bash(steps, workdir, env)
        # then the meter's secret was made in the serve's stand-in and shown once, the
        # profile pushed to the serve's parameter, and the payload posted in GB to its line
        assert code == 0, out + err
        secret = client("secretsmanager", env["AWS_ENDPOINT_URL"]).get_secret_value(
            SecretId="piriod-local/sources/acme-storage"
        )["SecretString"]
        [made] = [line for line in out.splitlines() if line and line in secret]
        assert out.count(made) == 1
        assert "pushed 1 source(s) (acme-storage) to SSM parameter /piriod-local/sources" in out
        assert "HTTP 202" in out and 'event_id="rd_0001"' in out, out
        posted = sorted(
            u["quantity"] for u in running.ledger(env) if u["subscription_line"] == 3001
        )
        assert posted == ["1.073741824", "1.500000000"]


def test_readme_clean_up_removes_what_the_steps_made(adapter: Adapter, workdir: Path) -> None:
    # given what Deploy and "Add a third-party meter" leave: the stack, its two secrets, a
    # meter's secret, the pushed profiles, and another stack's secret that must stay
    if shutil.which("aws") is None:
        pytest.skip("the AWS CLI is not installed (README, Prerequisites)")
    stack = f"readme-clean-{uuid.uuid4().hex[:8]}"
    manager = client("secretsmanager", adapter.endpoint)
    for name in ("piriod-token", "webhook-signing-secrets", "sources/acme-storage"):
        manager.create_secret(Name=f"{stack}/{name}", SecretString="{}")
    manager.create_secret(Name=f"{stack}-other/piriod-token", SecretString="{}")
    ssm = client("ssm", adapter.endpoint)
    ssm.put_parameter(Name=f"/{stack}/sources", Value="{}", Type="String")
    deploy_stack(adapter, stack)
    [steps] = readme_blocks("Deploy")[-1:]
    assert steps.startswith('sam delete --stack-name "$STACK"\n')
    # when the clean-up runs (`sam delete` as CloudFormation's own delete: no sam here)
    script = steps.replace(
        'sam delete --stack-name "$STACK"', 'aws cloudformation delete-stack --stack-name "$STACK"'
    )
    code, out, err = bash(script, workdir, shell_env(adapter, stack))
    # then nothing of the stack is left, and the other stack's secret is
    assert code == 0, out + err
    pages = manager.get_paginator("list_secrets").paginate(
        Filters=[{"Key": "name", "Values": [stack]}]
    )  # the session's moto holds more than a page of other tests' secrets
    left = [s["Name"] for page in pages for s in page["SecretList"] if stack in s["Name"]]
    assert left == [f"{stack}-other/piriod-token"]
    assert not ssm.get_parameters(Names=[f"/{stack}/sources"])["Parameters"]
    stacks = client("cloudformation", adapter.endpoint).list_stacks()["StackSummaries"]
    assert {s["StackStatus"] for s in stacks if s["StackName"] == stack} <= {"DELETE_COMPLETE"}
    # and run again, with nothing left to delete, it still succeeds
    assert bash(script, workdir, shell_env(adapter, stack))[0] == 0
