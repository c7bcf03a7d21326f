"""A new meter from the operator's side, against moto server and the webhook on a local
port: `sources secret add`, `sources validate`, `sources try`, `sources push`, then
`send --source` signed with the profile's own scheme, and the secret's rotation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from piriod_devkit.aws import client
from piriod_devkit.local_api import LocalApiServer
from tests.conftest import Adapter
from tests.integration.test_cli_stack import cli, deploy_stack

SOURCE = "my-meter"
LINE = 4201
PAYLOAD = {
    "delivery": "d-1",
    "events": [
        {"id": "evt-1", "at": "2026-11-01T10:00:00Z", "units": "2.5"},
        {"id": "evt-2", "at": "2026-11-01T11:00:00Z", "units": 4},
    ],
}
SIGNATURES: dict[str, dict[str, Any]] = {
    "standard-webhooks": {"scheme": "standard-webhooks"},
    "stripe": {"scheme": "stripe"},
    "hmac-sha256-hex": {"scheme": "hmac-sha256-hex", "header": "X-Meter-Signature"},
    "hmac-sha256-hex+timestamp": {
        "scheme": "hmac-sha256-hex",
        "header": "X-Meter-Signature",
        "timestamp_header": "X-Meter-Timestamp",
    },
}


def profiles(stack: str, signature: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "version": 1,
        "sources": {
            SOURCE: {
                "signature": {
                    **(signature or SIGNATURES["standard-webhooks"]),
                    "secret_id": f"{stack}/sources/{SOURCE}",
                },
                "records": "events",
                "fields": {"date_time": "at", "quantity": "units", "event_id": "id"},
                "quantity_factor": "2",
                "subscription_line": LINE,
            }
        },
    }


def write(tmp_path: Path, name: str, content: dict[str, Any]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(content, indent=2))
    return str(path)


@pytest.fixture
def api(adapter: Adapter) -> Iterator[LocalApiServer]:
    server = LocalApiServer().start()
    yield server
    server.stop()


@pytest.fixture
def stack(adapter: Adapter, api: LocalApiServer) -> str:
    """The adapter deployed as a stack that reads its profiles from ssm:/<stack>/sources,
    its webhook on a local port re-reading them on every delivery."""
    name = f"meters-{adapter.resources.table.split('-')[1]}"
    deploy_stack(
        adapter, name, webhook_url=f"{api.url}/v1/usages", SourcesConfig=f"ssm:/{name}/sources"
    )
    adapter.fresh_runtime(SOURCES_CONFIG=f"ssm:/{name}/sources", SOURCES_CACHE_SECONDS="0")
    from piriod_adapter.runtime import get_runtime

    # the webhook's settings now, while its variables are set (`cli` runs without them)
    get_runtime().settings  # noqa: B018
    return name


def pushed(adapter: Adapter, stack: str) -> str | None:
    ssm = client("ssm", adapter.endpoint)
    try:
        value: str = ssm.get_parameter(Name=f"/{stack}/sources")["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        return None
    return value


def secrets_of(adapter: Adapter, secret_id: str) -> list[str]:
    manager = client("secretsmanager", adapter.endpoint)
    value = json.loads(manager.get_secret_value(SecretId=secret_id)["SecretString"])
    found: list[str] = value["signing_secrets"]
    return found


@pytest.mark.parametrize("scheme", list(SIGNATURES))
def test_a_new_meter_from_secret_to_posted_usage(
    adapter: Adapter, piriod: Any, stack: str, tmp_path: Path, scheme: str
) -> None:
    # given a profile for the meter, its payload, and a secret made for it
    document = write(tmp_path, "sources.json", profiles(stack, SIGNATURES[scheme]))
    payload = write(tmp_path, "payload.json", PAYLOAD)
    code, secret, err = cli("--stack", stack, "sources", "secret", "add", SOURCE)
    assert code == 0, err
    assert secrets_of(adapter, f"{stack}/sources/{SOURCE}") == [secret.strip()]
    # when the operator validates, tries, and pushes the profile
    validated = cli("sources", "validate", document)
    tried = cli("sources", "try", "--config", document, "--source", SOURCE, "--payload", payload)
    assert pushed(adapter, stack) is None  # nothing live before the push
    push = cli("sources", "push", document, "--stack", stack)
    # then each passes, and the document is live in the stack's parameter as written
    assert validated[0] == tried[0] == push[0] == 0, (validated, tried, push)
    assert f"1 source(s) valid: {SOURCE}" in validated[1]
    assert "evt-1" in tried[1] and "5.0" in tried[1] and "8" in tried[1]
    assert pushed(adapter, stack) == Path(document).read_text()
    assert piriod.usages() == []  # trying posted nothing
    # when the meter's payload is sent to its route, signed with its scheme
    code, out, err = cli("send", "--source", SOURCE, "--payload", payload, "--stack", stack)
    # then both events are posted to the profile's line, the quantities times the factor
    assert code == 0, out + err
    assert out.startswith("HTTP 202") and out.count(": posted usage_id=") == 2
    assert sorted((u["subscription_line"], u["quantity"]) for u in piriod.usages()) == [
        (LINE, "5.0"),
        (LINE, "8"),
    ]


def test_send_source_with_a_config_file_and_a_base_url(
    adapter: Adapter, piriod: Any, stack: str, api: LocalApiServer, tmp_path: Path
) -> None:
    # given the meter's secret and its profile pushed, with the stripe scheme
    document = write(tmp_path, "sources.json", profiles(stack, SIGNATURES["stripe"]))
    assert cli("--stack", stack, "sources", "secret", "add", SOURCE)[0] == 0
    assert cli("--stack", stack, "sources", "push", document)[0] == 0
    payload = write(tmp_path, "payload.json", PAYLOAD)
    # when it is sent with the document and the address given, without the stack
    code, out, _ = cli(
        "send", "--source", SOURCE, "--config", document, "--payload", payload, "--url", api.url
    )
    # then it reached /v1/sources/<name>/usages and was posted
    assert code == 0 and out.startswith("HTTP 202")
    assert len(piriod.usages()) == 2


def test_a_rotated_source_secret_passes_with_either_until_the_old_is_retired(
    adapter: Adapter, piriod: Any, stack: str, tmp_path: Path
) -> None:
    # given a meter whose secret has been rotated once
    secret_id = f"{stack}/sources/{SOURCE}"
    _, old, _ = cli("--stack", stack, "sources", "secret", "add", SOURCE)
    code, new, err = cli("--stack", stack, "sources", "secret", "add", SOURCE)
    assert code == 0 and "rotating: 2 secrets active" in err
    assert secrets_of(adapter, secret_id) == [old.strip(), new.strip()]
    assert cli("--stack", stack, "sources", "secret", "count", SOURCE)[1].startswith("2 ")
    document = write(tmp_path, "sources.json", profiles(stack, SIGNATURES["hmac-sha256-hex"]))
    assert cli("--stack", stack, "sources", "push", document)[0] == 0
    payload = write(tmp_path, "payload.json", PAYLOAD)
    # when a delivery is signed with the newest secret (hmac-sha256-hex holds one signature)
    code, out, _ = cli("--stack", stack, "send", "--source", SOURCE, "--payload", payload)
    assert code == 0 and out.startswith("HTTP 202")
    # and the old secret is retired
    code, out, _ = cli("--stack", stack, "sources", "secret", "retire", SOURCE)
    # then only the newest is left, and deliveries signed with it still pass
    assert code == 0 and out.startswith("retired 1")
    assert secrets_of(adapter, secret_id) == [new.strip()]
    code, out, _ = cli("--stack", stack, "send", "--source", SOURCE, "--payload", payload)
    assert code == 0 and out.startswith("HTTP 202") and out.count("duplicate") == 2


def test_a_vendors_own_secret_is_stored_from_stdin_and_not_printed(
    adapter: Adapter, stack: str
) -> None:
    code, out, err = cli(
        "--stack", stack, "sources", "secret", "add", SOURCE, "--secret-stdin", stdin="vendor-1\n"
    )
    assert code == 0 and out == "" and "vendor-1" not in err
    assert secrets_of(adapter, f"{stack}/sources/{SOURCE}") == ["vendor-1"]


def test_retiring_or_counting_a_secret_that_does_not_exist_is_refused(
    adapter: Adapter, stack: str
) -> None:
    code, out, err = cli("--stack", stack, "sources", "secret", "retire", SOURCE)
    assert code == 2 and out == ""
    assert f"no secret '{stack}/sources/{SOURCE}'" in err and "sources secret add" in err


def test_push_refuses_a_document_that_does_not_validate(
    adapter: Adapter, stack: str, tmp_path: Path
) -> None:
    # given a profile with a typo
    document = profiles(stack)
    document["sources"][SOURCE]["time_formt"] = "rfc3339"
    code, _, err = cli("--stack", stack, "sources", "push", write(tmp_path, "bad.json", document))
    # then nothing is pushed, and the source and field are named
    assert code == 2 and "does not validate; nothing was pushed" in err
    assert f"source '{SOURCE}': time_formt" in err
    assert pushed(adapter, stack) is None


def test_push_refuses_a_profile_whose_secret_does_not_exist(
    adapter: Adapter, stack: str, tmp_path: Path
) -> None:
    document = write(tmp_path, "sources.json", profiles(stack))
    code, _, err = cli("--stack", stack, "sources", "push", document)
    assert code == 2 and "nothing was pushed" in err
    assert f"--stack {stack} sources secret add {SOURCE}" in err
    assert pushed(adapter, stack) is None


def test_push_to_a_stack_that_reads_no_ssm_parameter_says_how_to_deploy_it(
    adapter: Adapter, tmp_path: Path
) -> None:
    # given a stack deployed without SourcesConfig
    name = deploy_stack(adapter)
    document = write(tmp_path, "sources.json", profiles(name))
    # when a document is pushed to it, then it says which parameter to deploy with
    code, out, err = cli("--stack", name, "sources", "push", document)
    assert code == 2 and out == ""
    assert f"SourcesConfig=ssm:/{name}/sources" in err and "sam deploy" in err


def test_send_to_a_source_the_pushed_document_does_not_have(
    adapter: Adapter, stack: str, tmp_path: Path
) -> None:
    assert cli("--stack", stack, "sources", "secret", "add", SOURCE)[0] == 0
    assert (
        cli("--stack", stack, "sources", "push", write(tmp_path, "s.json", profiles(stack)))[0] == 0
    )
    payload = write(tmp_path, "payload.json", PAYLOAD)
    code, _, err = cli("--stack", stack, "send", "--source", "other", "--payload", payload)
    assert code == 2 and "no source 'other'" in err and f"(it has: {SOURCE})" in err


def test_replay_prints_the_line_an_unmapped_meter_resolves_to(
    adapter: Adapter, piriod: Any, stack: str, tmp_path: Path
) -> None:
    # given a meter whose events name a customer the profile has no line for yet
    document = profiles(stack)
    profile = document["sources"][SOURCE]
    del profile["subscription_line"]
    profile["fields"]["meter_id"] = "'cus-9'"  # a JMESPath literal: every event is cus-9's
    profile["lines"] = {}
    assert cli("--stack", stack, "sources", "secret", "add", SOURCE)[0] == 0
    assert cli("--stack", stack, "sources", "push", write(tmp_path, "s.json", document))[0] == 0
    payload = write(tmp_path, "payload.json", PAYLOAD)
    argv = ("--stack", stack, "send", "--source", SOURCE, "--payload", payload)
    code, out, _ = cli(*argv, "--allow", "rejected")
    assert code == 0 and out.count(": rejected") == 2
    # when the line is mapped and the dead letters are replayed
    profile["lines"] = {"cus-9": 4300}
    assert cli("--stack", stack, "sources", "push", write(tmp_path, "s.json", document))[0] == 0
    code, out, _ = cli("--stack", stack, "replay")
    # then each replayed record's row shows the meter and the line it resolved to
    assert code == 0 and "posted=2" in out
    rows = [line for line in out.splitlines() if "line meter:cus-9->4300  posted" in line]
    assert len(rows) == 2
    assert sorted(u["subscription_line"] for u in piriod.usages()) == [4300, 4300]
