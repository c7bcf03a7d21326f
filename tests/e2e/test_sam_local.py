"""Every sample event through `sam local invoke`, and the API through `sam local start-api`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from piriod_devkit.events import EVENTS, event_body, load_event, sign_event
from piriod_devkit.standins import LocalStandins
from tests.e2e.conftest import StartApi, invoke, run_sam

pytestmark = pytest.mark.e2e


SAMPLE_LINES = {101, 102, 103, 104, 999}


def lines(standins: LocalStandins) -> list[int]:
    """Piriod's usages of the sample events' lines (the fuzz run uses others)."""
    return sorted(
        u["subscription_line"]
        for u in standins.piriod.usages()
        if u["subscription_line"] in SAMPLE_LINES
    )


def test_template_validates_with_lint(gateway: str) -> None:
    result = run_sam("validate", "--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid SAM Template" in result.stdout + result.stderr


# Each function of template.yaml with the handler module it runs.
HANDLERS = {
    "WebhookFunction": "webhook",
    "ReplayFunction": "replay",
    "FlushFunction": "flush",
    "ParkFunction": "park",
}


def test_build_packages_every_function_with_its_requirements(built: Path) -> None:
    # given `sam build`'s output: its template and a directory per function
    class Loader(yaml.SafeLoader):
        """CloudFormation's short tags (!Ref, !Sub...) read as nothing."""

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    resources = yaml.load((built / "template.yaml").read_text(), Loader=Loader)["Resources"]
    functions = {
        name: resource["Properties"]["Handler"]
        for name, resource in resources.items()
        if resource["Type"] == "AWS::Serverless::Function"
    }
    # then the functions are the four, each packaged with its handler and the runtime's
    # requirements
    assert sorted(functions) == sorted(HANDLERS)
    for function, handler in HANDLERS.items():
        assert functions[function] == f"piriod_adapter.handlers.{handler}.lambda_handler"
        package = built / function
        assert (package / "piriod_adapter" / "handlers" / f"{handler}.py").is_file(), function
        assert (package / "aws_lambda_powertools").is_dir(), function
        assert (package / "pydantic").is_dir(), function


# Each sample event with the answer the README promises for it, and its effect on Piriod.
CASES = [
    ("webhook-single.json", 202, ["posted"], [101]),
    ("webhook-duplicate.json", 202, ["duplicate"], [101]),
    # the sample correction amends the single sample's record: its usage deleted, another
    # of line 101 posted at 1.25
    ("webhook-correction.json", 202, ["applied"], [101]),
    ("webhook-batch.json", 202, ["posted", "posted", "posted"], [101, 101, 102, 103]),
    ("webhook-rejected.json", 202, ["rejected"], [101, 101, 102, 103]),
    ("webhook-invalid.json", 422, None, [101, 101, 102, 103]),
    ("webhook-not-json.json", 400, None, [101, 101, 102, 103]),
    ("webhook-bad-signature.json", 401, None, [101, 101, 102, 103]),
]


@pytest.mark.parametrize(("name", "status", "outcomes", "ledger"), CASES, ids=[c[0] for c in CASES])
def test_every_webhook_event_through_sam_local_invoke(
    built: Path,
    standins: LocalStandins,
    tmp_path: Path,
    name: str,
    status: int,
    outcomes: list[str] | None,
    ledger: list[int],
) -> None:
    # given the sample event as committed (signed at env/local.json's sample time, which
    # sam local honours), when the real runtime runs the webhook function on it:
    # `sam local invoke -e events/<file>.json`, as SPEC section 7 has it
    result = invoke("WebhookFunction", EVENTS / name, tmp_path)
    # then the answer and the effect on Piriod are the documented ones
    body = json.loads(result["body"])
    assert result["statusCode"] == status, body
    if outcomes is not None:
        assert [r["status"] for r in body["results"]] == outcomes
    else:
        assert body["message"]
    assert lines(standins) == ledger


def test_replay_event_through_sam_local_invoke(
    built: Path, standins: LocalStandins, tmp_path: Path
) -> None:
    # given the sample SQS event of a queued record (line 104)
    before = lines(standins)
    # when the replay function runs on it
    result = invoke("ReplayFunction", load_event("replay-sqs.json"), tmp_path)
    # then no item failed and Piriod has the record, with its exact quantity
    assert result == {"batchItemFailures": []}
    assert lines(standins) == sorted([*before, 104])
    assert [u["quantity"] for u in standins.piriod.usages() if u["subscription_line"] == 104] == [
        "7.25"
    ]


def post(
    api: StartApi, body: bytes, *, sign: bool = True, path: str = "/v1/usages"
) -> tuple[int, Any]:
    from piriod_devkit.events import http_event

    event = http_event("POST", path, body, {"content-type": "application/json"})
    headers = sign_event(event)["headers"] if sign else event["headers"]
    response = api.http.request(
        "POST", api.url + path, body=body, headers=headers, retries=False, timeout=30
    )
    try:
        return response.status, json.loads(response.data)
    except ValueError:
        return response.status, response.data


def test_start_api_answers_as_the_spec_says(api: StartApi, standins: LocalStandins) -> None:
    record = b'{"subscription_line": 201, "date_time": "2026-11-01T10:00:00Z", "quantity": 1.10}'
    # a signed record is posted
    status, body = post(api, record)
    assert status == 202 and body["results"][0]["status"] == "posted"
    assert [u["quantity"] for u in standins.piriod.usages() if u["subscription_line"] == 201] == [
        "1.10"
    ]
    # unsigned: 401; not JSON: 400; invalid: 422 naming the field; too large: 413
    assert post(api, record, sign=False)[0] == 401
    assert post(api, b"quantity=1")[0] == 400
    status, body = post(
        api, b'{"subscription_line": "201", "date_time": "2026-11-01T10:00:00Z", "quantity": 1}'
    )
    assert status == 422 and body["errors"][0]["field"] == "subscription_line"
    assert post(api, b'{"usages": [' + b" " * (1024 * 1024) + b"]}")[0] == 413
    # the same delivery again is a duplicate (a new signature, the same webhook-id)
    status, body = post(
        api, b'{"subscription_line": 202, "date_time": "2026-11-01T10:00:00Z", "quantity": 2}'
    )
    assert status == 202
    event_again = load_event("webhook-single.json")
    first = sign_event(event_again)
    api.http.request(
        "POST", api.url + "/v1/usages", body=event_body(first), headers=first["headers"]
    )
    second = sign_event(event_again)
    response = api.http.request(
        "POST", api.url + "/v1/usages", body=event_body(second), headers=second["headers"]
    )
    assert json.loads(response.data)["results"][0]["status"] == "duplicate"


# Each third-party meter's sample, signed its own way, through the real runtime: the profiles
# come from the SSM parameter env/local.json names (provisioned on moto by the stand-ins).
SOURCE_CASES = [
    ("source-acme-storage.json", ["posted", "posted"], {3001: 2}),
    ("source-ci-minutes.json", ["posted", "posted"], {3101: 1, 3102: 1}),
    ("source-fleet-telemetry.json", ["posted", "posted"], {3201: 1, 3202: 1}),
    ("source-ci-minutes-unmapped.json", ["rejected"], {}),
]


@pytest.mark.parametrize(
    ("name", "outcomes", "posted"), SOURCE_CASES, ids=[c[0] for c in SOURCE_CASES]
)
def test_every_source_event_through_sam_local_invoke(
    built: Path,
    standins: LocalStandins,
    tmp_path: Path,
    name: str,
    outcomes: list[str],
    posted: dict[int, int],
) -> None:
    # given a third-party meter's sample event as committed (signed with its profile's
    # scheme at the sample time)
    before = Counter(u["subscription_line"] for u in standins.piriod.usages())
    # when the real runtime runs the webhook function on the file as it is
    result = invoke("WebhookFunction", EVENTS / name, tmp_path)
    # then its records are mapped and each ends where its status says
    body = json.loads(result["body"])
    assert result["statusCode"] == 202, body
    assert [r["status"] for r in body["results"]] == outcomes
    after = Counter(u["subscription_line"] for u in standins.piriod.usages())
    assert after - before == Counter(posted)


def test_an_aggregating_delivery_is_posted_by_flush_function_through_sam_local_invoke(
    built: Path, standins: LocalStandins, tmp_path: Path
) -> None:
    # given the aggregating meter's sample (api-requests: count, PT1M windows), its events in
    # the windows just before the sample time, signed at that time as the committed file is
    # (its age is measured from the time its signature passed at)
    from piriod_devkit.events import fresh_sample

    event = fresh_sample("source-api-requests.json")
    before = len(standins.piriod.usages())
    # when the real runtime counts it: every event is aggregated, with its window, and nothing
    # is posted yet
    result = invoke("WebhookFunction", event, tmp_path)
    body = json.loads(result["body"])
    assert result["statusCode"] == 202, body
    assert [r["status"] for r in body["results"]] == ["aggregated"] * 5
    assert {r["generation"] for r in body["results"]} == {0}
    starts = sorted({r["window_start"] for r in body["results"]})
    assert len(starts) == 2
    assert len(standins.piriod.usages()) == before
    # and the same delivery again is five duplicates
    again = json.loads(invoke("WebhookFunction", event, tmp_path)["body"])
    assert [r["status"] for r in again["results"]] == ["duplicate"] * 5
    # when FlushFunction runs on the scheduled event: `sam local invoke FlushFunction -e
    # events/flush-scheduled.json`
    report = invoke("FlushFunction", EVENTS / "flush-scheduled.json", tmp_path)
    # then one usage per line and window is posted, at the window's start, counted once
    assert (report["due"], report["posted"], report["left"]) == (3, 3, 0), report
    posted = {
        (u["subscription_line"], u["date_time"], str(u["quantity"]))
        for u in standins.piriod.usages()[before:]
    }
    first, second = starts
    assert posted == {(3201, first, "2"), (3201, second, "1"), (3202, second, "2")}
    # and a second run finds nothing due
    assert invoke("FlushFunction", EVENTS / "flush-scheduled.json", tmp_path)["due"] == 0
    # and ParkFunction walks DeadLetterQueue on its scheduled event (nothing is 10 days old)
    parked = invoke("ParkFunction", EVENTS / "park-scheduled.json", tmp_path)
    assert parked["parked"] == 0 and "oldest_seconds" in parked, parked
