"""piriod_devkit.iam, without AWS: the IAM action and resource each API call is authorized
as, template.yaml's policies resolved for a deployment, and the check that compares them.
The integration tests record the functions' real calls (tests/integration/conftest.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from piriod_devkit.iam import (
    ENTRY_POINTS,
    Call,
    Deployment,
    Need,
    Recorder,
    check,
    functions,
    needs_of,
    statements,
    unused,
)
from piriod_devkit.template import load_template

REGION, ACCOUNT, STACK = "us-east-1", "123456789012", "piriod-ab12"
TABLE_ARN = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{STACK}-idempotency"
QUEUES = f"http://127.0.0.1:5000/{ACCOUNT}"
ENV = {
    "IDEMPOTENCY_TABLE": f"{STACK}-idempotency",
    "REPLAY_QUEUE_URL": f"{QUEUES}/{STACK}-replay",
    "DEAD_LETTER_QUEUE_URL": f"{QUEUES}/{STACK}-dead-letter",
    "PIRIOD_TOKEN_SECRET_ID": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:t-AbCdEf",
    "WEBHOOK_SECRET_ID": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:w-AbCdEf",
}


def needs(service: str, operation: str, response: Any = None, **params: Any) -> list[Need]:
    return needs_of(service, operation, params, response, REGION, ACCOUNT)


def actions(found: list[Need]) -> list[tuple[str, str]]:
    return [(n.action, n.resource) for n in found]


def deployment(**env: str) -> Deployment:
    return Deployment.from_environment(load_template(), {**ENV, **env}, REGION)


def call(function: str, operation: str, found: list[Need], **env: str) -> Call:
    return Call(function, operation, tuple(found), deployment(**env))


def without(template: dict[str, Any], function: str, sid: str) -> dict[str, Any]:
    changed = copy.deepcopy(template)
    for policy in changed["Resources"][function]["Properties"]["Policies"]:
        for branch in policy["Fn::If"][1:] if "Fn::If" in policy else [policy]:
            if isinstance(branch, dict) and "Statement" in branch:
                branch["Statement"] = [s for s in branch["Statement"] if s["Sid"] != sid]
    return changed


# --- operations to permissions -----------------------------------------------------------------


def test_a_transaction_needs_the_action_of_each_of_its_items() -> None:
    items = [
        {kind: {"TableName": f"{STACK}-idempotency", "Key": {}}}
        for kind in ("Put", "Update", "ConditionCheck", "Delete")
    ]
    assert actions(needs("dynamodb", "TransactWriteItems", TransactItems=items)) == [
        ("dynamodb:PutItem", TABLE_ARN),
        ("dynamodb:UpdateItem", TABLE_ARN),
        ("dynamodb:ConditionCheckItem", TABLE_ARN),
        ("dynamodb:DeleteItem", TABLE_ARN),
    ]


def test_a_query_of_an_index_needs_the_index_and_batch_reads_their_own_action() -> None:
    table = f"{STACK}-idempotency"
    assert actions(needs("dynamodb", "Query", TableName=table, IndexName="by_waiting")) == [
        ("dynamodb:Query", f"{TABLE_ARN}/index/by_waiting")
    ]
    assert actions(needs("dynamodb", "Query", TableName=table)) == [("dynamodb:Query", TABLE_ARN)]
    assert actions(needs("dynamodb", "BatchGetItem", RequestItems={table: {"Keys": []}})) == [
        ("dynamodb:BatchGetItem", TABLE_ARN)
    ]


def test_sqs_batches_need_the_action_of_one_message() -> None:
    url = f"{QUEUES}/{STACK}-replay"
    arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{STACK}-replay"
    for operation, action in [
        ("SendMessageBatch", "sqs:SendMessage"),
        ("DeleteMessageBatch", "sqs:DeleteMessage"),
        ("ChangeMessageVisibilityBatch", "sqs:ChangeMessageVisibility"),
        ("ReceiveMessage", "sqs:ReceiveMessage"),
    ]:
        assert actions(needs("sqs", operation, QueueUrl=url)) == [(action, arn)]


def test_secrets_and_parameters_are_named_by_their_arns() -> None:
    full = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:a/b-XyZ123"
    # the secret's ARN as Secrets Manager answers it, else its name and six characters
    assert actions(needs("secretsmanager", "GetSecretValue", {"ARN": full}, SecretId="a/b")) == [
        ("secretsmanager:GetSecretValue", full)
    ]
    assert needs("secretsmanager", "GetSecretValue", SecretId="a/b")[0].resource.startswith(
        f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:a/b-"
    )
    # a parameter's ARN has one slash after `parameter`, whether its name starts with one
    for name in ("/stack/sources", "stack/sources"):
        assert actions(needs("ssm", "GetParameter", Name=name)) == [
            ("ssm:GetParameter", f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/stack/sources")
        ]


def test_an_operation_not_known_needs_itself_on_every_resource() -> None:
    assert actions(needs("dynamodb", "DescribeTable")) == [("dynamodb:DescribeTable", "*")]
    assert actions(needs("sts", "GetCallerIdentity")) == [("sts:GetCallerIdentity", "*")]


# --- the template, resolved --------------------------------------------------------------------


def test_every_function_has_an_entry_point_and_a_handler() -> None:
    template = load_template()
    assert set(functions(template)) == set(ENTRY_POINTS)
    entries = Recorder(template).entry_points()
    assert entries["FlushFunction"] == [
        "piriod_adapter.handlers.flush.lambda_handler",
        "piriod_adapter.flush.run_flush",
    ]


def test_the_sources_parameter_statement_names_the_parameter_of_sources_config() -> None:
    template = load_template()
    for config, arn in [
        ("ssm:/piriod-ab12/sources", "parameter/piriod-ab12/sources"),
        ("ssm:plain-name", "parameter/plain-name"),
    ]:
        found = statements(template, "WebhookFunction", deployment(SOURCES_CONFIG=config))
        [statement] = [s for s in found if s.sid == "SourceProfilesParameter"]
        assert statement.resources == (f"arn:aws:ssm:{REGION}:{ACCOUNT}:{arn}",)
    # and without a parameter (a file, or none: the default) the statement is not there
    for config in ("file:sources.json", ""):
        found = statements(template, "WebhookFunction", deployment(SOURCES_CONFIG=config))
        assert "SourceProfilesParameter" not in {s.sid for s in found}


def test_the_stack_source_secrets_are_those_of_the_queues_stack() -> None:
    template = load_template()
    [statement] = [
        s
        for s in statements(template, "WebhookFunction", deployment())
        if s.sid == "StackSourceSecrets"
    ]
    assert statement.resources == (
        f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{STACK}/sources/*",
    )


# --- the check ---------------------------------------------------------------------------------


def test_a_query_of_by_waiting_is_denied_without_the_statement_that_names_it() -> None:
    template = load_template()
    query = needs("dynamodb", "Query", TableName=f"{STACK}-idempotency", IndexName="by_waiting")
    calls = [call("FlushFunction", "dynamodb:Query", query)]
    assert check(template, calls).denied == []
    report = check(without(template, "FlushFunction", "WaitingCorrections"), calls)
    [denial] = report.denied
    assert (denial.function, denial.need.action, denial.named) == (
        "FlushFunction",
        "dynamodb:Query",
        "IdempotencyTable/index/by_waiting",
    )
    # and by_line's statement does not stand in for it
    assert "by_line" not in report.text()


def test_a_statement_of_another_function_or_resource_allows_nothing() -> None:
    template = load_template()
    table = f"{STACK}-idempotency"
    # ParkFunction may PutItem only: no UpdateItem; ReplayFunction has no BatchGetItem
    update = needs("dynamodb", "UpdateItem", TableName=table)
    batch = needs("dynamodb", "BatchGetItem", RequestItems={table: {}})
    # WebhookFunction's sends go to its stack's queues, not another's
    other = needs("sqs", "SendMessage", QueueUrl=f"{QUEUES}/someone-else-replay")
    report = check(
        template,
        [
            call("ParkFunction", "dynamodb:UpdateItem", update),
            call("ReplayFunction", "dynamodb:BatchGetItem", batch),
            call("WebhookFunction", "sqs:SendMessage", other),
        ],
    )
    assert sorted((d.function, d.need.action) for d in report.denied) == [
        ("ParkFunction", "dynamodb:UpdateItem"),
        ("ReplayFunction", "dynamodb:BatchGetItem"),
        ("WebhookFunction", "sqs:SendMessage"),
    ]


def test_a_secret_read_needs_the_secrets_key_through_secrets_manager_once_it_is_given() -> None:
    template = load_template()
    read = needs("secretsmanager", "GetSecretValue", SecretId=ENV["PIRIOD_TOKEN_SECRET_ID"])
    calls = [call("FlushFunction", "secretsmanager:GetSecretValue", read)]
    assert check(template, calls).denied == []
    # without the conditional kms:Decrypt statement, the keyed deployment is denied
    report = check(without(template, "FlushFunction", "DecryptSecretsViaSecretsManager"), calls)
    [denial] = report.denied
    assert denial.need.action == "kms:Decrypt" and denial.need.resource.endswith("secrets-key")
    assert denial.need.context == (("kms:ViaService", f"secretsmanager.{REGION}.amazonaws.com"),)


def test_a_queue_sender_needs_the_queues_key_and_the_trigger_polls_with_the_role() -> None:
    template = load_template()
    send = needs("sqs", "SendMessageBatch", QueueUrl=ENV["REPLAY_QUEUE_URL"])
    calls = [call("ReplayFunction", "sqs:SendMessageBatch", send)]
    assert check(template, calls).denied == []
    # the key: kms:GenerateDataKey and kms:Decrypt with KmsKeyArn given
    report = check(without(template, "ReplayFunction", "QueueAndEnvironmentKey"), calls)
    assert {d.need.action for d in report.denied} == {"kms:GenerateDataKey", "kms:Decrypt"}
    # the trigger: ReceiveMessage, DeleteMessage and GetQueueAttributes on ReplayQueue
    report = check(without(template, "ReplayFunction", "ConsumeReplayQueue"), calls)
    assert {(d.need.action, d.named, d.operation) for d in report.denied} >= {
        ("sqs:ReceiveMessage", "ReplayQueue", "the template"),
        ("sqs:DeleteMessage", "ReplayQueue", "the template"),
        ("sqs:GetQueueAttributes", "ReplayQueue", "the template"),
    }


def test_a_source_secret_is_read_by_name_under_the_stack_or_listed_at_deploy_time() -> None:
    template = load_template()
    under = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{STACK}/sources/m-AbCdEf"
    listed = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:elsewhere/m-AbCdEf"
    reads = [
        call("WebhookFunction", "secretsmanager:GetSecretValue", [Need(a, r)])
        for a, r in [
            ("secretsmanager:GetSecretValue", under),
            ("secretsmanager:GetSecretValue", listed),
        ]
    ]
    report = check(template, reads)
    assert report.denied == []
    assert {sid for f, sid, a in report.used} >= {"StackSourceSecrets", "SourceSigningSecrets"}
    # and FlushFunction reads no source secret
    flush = [Call("FlushFunction", c.operation, c.needs, c.deployment) for c in reads]
    assert len(check(template, flush).denied) == 2


def test_permissions_no_call_needed_are_listed() -> None:
    template = load_template()
    lines = unused(template, {("ParkFunction", "ParkInIdempotencyTable", "dynamodb:PutItem")})
    assert "ParkFunction ParkInIdempotencyTable: dynamodb:PutItem" not in lines
    assert "ParkFunction ParkedDeadLetters: dynamodb:Query" in lines


@pytest.mark.parametrize(
    "function", ["WebhookFunction", "ReplayFunction", "FlushFunction", "ParkFunction"]
)
def test_each_statement_names_one_resource(function: str) -> None:
    # least privilege, readably: one resource per statement (a deploy-time list of secrets
    # is one parameter)
    for policy in load_template()["Resources"][function]["Properties"]["Policies"]:
        for branch in policy["Fn::If"][1:] if "Fn::If" in policy else [policy]:
            for statement in branch.get("Statement", []) if isinstance(branch, dict) else []:
                assert not isinstance(statement["Resource"], list), statement
                assert statement["Resource"] != "*", statement
