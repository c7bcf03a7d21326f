"""Local AWS: moto in server mode over real HTTP, provisioned like template.yaml provisions AWS."""

from __future__ import annotations

import json
import socket
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import boto3

from piriod_devkit.process import ServerProcess
from piriod_devkit.template import load_template, parameter_default, resource

REGION = "us-east-1"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class MotoServer(ServerProcess):
    """`moto.server` in its own process, listening on one address (loopback by default),
    with DynamoDB's transaction isolation (piriod_devkit.moto_isolated)."""

    name = "moto server"

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        super().__init__()
        self.host = host
        self.port = port or free_port(host)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "piriod_devkit.moto_isolated",
            "-H",
            self.host,
            "-p",
            str(self.port),
        ]

    def ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False


@dataclass(frozen=True)
class LocalResources:
    endpoint: str
    table: str
    replay_queue_url: str
    dead_letter_queue_url: str
    token_secret_arn: str
    webhook_secret_arn: str


def client(service: str, endpoint: str) -> Any:
    return boto3.session.Session().client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106
    )


def provision(
    endpoint: str,
    *,
    token: str,
    signing_secrets: list[str],
    prefix: str | None = None,
) -> LocalResources:
    """Create the table, queues and secrets with the properties template.yaml gives them."""
    template = load_template()
    prefix = prefix or f"piriod-{uuid.uuid4().hex[:8]}"
    dynamodb, sqs, secrets = (client(s, endpoint) for s in ("dynamodb", "sqs", "secretsmanager"))

    table = resource(template, "IdempotencyTable")
    name = f"{prefix}-idempotency"
    dynamodb.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=table["KeySchema"],
        AttributeDefinitions=table["AttributeDefinitions"],
        GlobalSecondaryIndexes=table.get("GlobalSecondaryIndexes", []),
    )
    ttl = table.get("TimeToLiveSpecification")
    if ttl:
        dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)

    dlq = resource(template, "DeadLetterQueue")
    dlq_url = sqs.create_queue(
        QueueName=f"{prefix}-dead-letter",
        Attributes={"MessageRetentionPeriod": str(dlq["MessageRetentionPeriod"])},
    )["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    replay = resource(template, "ReplayQueue")
    max_receive = parameter_default(template, replay["RedrivePolicy"]["maxReceiveCount"])
    replay_url = sqs.create_queue(
        QueueName=f"{prefix}-replay",
        Attributes={
            "VisibilityTimeout": str(replay["VisibilityTimeout"]),
            "MessageRetentionPeriod": str(replay["MessageRetentionPeriod"]),
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": int(max_receive)}
            ),
        },
    )["QueueUrl"]

    token_arn = secrets.create_secret(
        Name=f"{prefix}/piriod-token", SecretString=json.dumps({"api_token": token})
    )["ARN"]
    webhook_arn = secrets.create_secret(
        Name=f"{prefix}/webhook-secret",
        SecretString=json.dumps({"signing_secrets": signing_secrets}),
    )["ARN"]
    return LocalResources(endpoint, name, replay_url, dlq_url, token_arn, webhook_arn)


def function_environment(
    resources: LocalResources,
    *,
    piriod_url: str,
    workspace: str,
    test_mode: bool = False,
    endpoint: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment template.yaml gives the functions, pointed at the local stand-ins."""
    return {
        **FAKE_CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint or resources.endpoint,
        "PIRIOD_API_URL": piriod_url,
        "PIRIOD_WORKSPACE_ID": workspace,
        "PIRIOD_TEST_MODE": "true" if test_mode else "false",
        "PIRIOD_TOKEN_SECRET_ID": resources.token_secret_arn,
        "WEBHOOK_SECRET_ID": resources.webhook_secret_arn,
        "REPLAY_QUEUE_URL": resources.replay_queue_url,
        "DEAD_LETTER_QUEUE_URL": resources.dead_letter_queue_url,
        "IDEMPOTENCY_TABLE": resources.table,
        "POWERTOOLS_METRICS_NAMESPACE": "PiriodUsageAdapter",
        "POWERTOOLS_SERVICE_NAME": "piriod-usage-adapter",
        "PYDANTIC_DISABLE_PLUGINS": "__all__",
        **extra,
    }


def register_stack(
    endpoint: str, name: str, parameters: dict[str, str], outputs: dict[str, str]
) -> None:
    """A CloudFormation stack on moto that holds these parameters and outputs, as `sam deploy`
    leaves them (and nothing else), so that `piriod-adapter --stack NAME` finds the local
    stand-ins through it as it finds a deployed adapter's resources."""
    template = {
        "Parameters": {key: {"Type": "String", "Default": ""} for key in parameters},
        "Resources": {"Placeholder": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {key: {"Value": value} for key, value in outputs.items()},
    }
    client("cloudformation", endpoint).create_stack(
        StackName=name,
        TemplateBody=json.dumps(template),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items() if v],
    )
