"""The deployed adapter as the operator's command sees it: one CloudFormation stack, named by
`--stack`, whose parameters and outputs say where everything is."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from piriod_adapter.settings import Settings, load_settings
from piriod_operator.errors import EXIT_USAGE, CommandError

LOCAL_STACK = "piriod-local"  # the stack `piriod-local serve` registers on its stand-in
UNDO_LOCAL = 'eval "$(piriod-local serve --unset)"'


def local_endpoint() -> str | None:
    """AWS_ENDPOINT_URL when it points at this machine (a local stand-in such as
    `piriod-local serve`'s), else None."""
    url = os.environ.get("AWS_ENDPOINT_URL", "").strip()
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return None
    return url if host in ("localhost", "::1") or host.startswith("127.") else None


TRACING_VARIABLES = (
    "PIRIOD_TRACING",
    "PIRIOD_TRACING_ENDPOINT",
    "PIRIOD_TRACING_HEADERS",
    "PIRIOD_TRACING_TIMEOUT",
)


def client(service: str, region: str | None = None) -> Any:
    """A boto3 client; no region anywhere is a usage error that says how to give one."""
    import boto3
    from botocore.exceptions import NoRegionError

    try:
        return boto3.client(service, region_name=region)  # type: ignore[call-overload]
    except NoRegionError:
        raise CommandError(
            EXIT_USAGE, "no AWS region: give --region R, or export AWS_DEFAULT_REGION"
        ) from None


@dataclass(frozen=True)
class Stack:
    name: str
    region: str
    status: str
    parameters: dict[str, str]
    outputs: dict[str, str]

    def output(self, key: str) -> str:
        value = self.outputs.get(key)
        if not value:
            raise CommandError(
                EXIT_USAGE,
                f"stack {self.name!r} ({self.status}) has no output {key}: is it deployed "
                "from this project's template.yaml (`sam deploy`)?",
            )
        return value

    def parameter(self, key: str) -> str:
        if key not in self.parameters:
            raise CommandError(
                EXIT_USAGE,
                f"stack {self.name!r} has no parameter {key}: is it deployed from this "
                "project's template.yaml (`sam deploy`)?",
            )
        return self.parameters[key]

    @property
    def base_url(self) -> str:
        """The API's address, without a route (from WebhookUrl)."""
        return self.output("WebhookUrl").removesuffix("/v1/usages")

    def settings(self) -> Settings:
        """The functions' settings, as the stack gives them to the functions."""
        params = self.parameters
        return load_settings(
            {
                "PIRIOD_API_URL": params.get("PiriodApiUrl", "https://api.piriod.com"),
                "PIRIOD_WORKSPACE_ID": self.parameter("PiriodWorkspaceId"),
                "PIRIOD_TEST_MODE": params.get("PiriodTestMode", "false"),
                "PIRIOD_TOKEN_SECRET_ID": self.parameter("PiriodTokenSecretArn"),
                "WEBHOOK_SECRET_ID": self.parameter("WebhookSecretArn"),
                "SOURCES_CONFIG": params.get("SourcesConfig", ""),
                "IDEMPOTENCY_TTL_DAYS": params.get("IdempotencyTtlDays", "30"),
                "REPLAY_QUEUE_URL": self.output("ReplayQueueUrl"),
                "DEAD_LETTER_QUEUE_URL": self.output("DeadLetterQueueUrl"),
                "IDEMPOTENCY_TABLE": self.output("IdempotencyTableName"),
                # Tracing is the operator's own (the functions' collector is usually on
                # their side): on when this shell turns it on (docs/operations.md, Tracing).
                **{name: os.environ[name] for name in TRACING_VARIABLES if name in os.environ},
            }
        )


def find_stack(name: str, region: str | None = None) -> Stack | None:
    """The stack named `name`, or None when there is none (in this region)."""
    from botocore.exceptions import ClientError

    cloudformation = client("cloudformation", region)
    try:
        [description] = cloudformation.describe_stacks(StackName=name)["Stacks"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ValidationError" and "does not exist" in error.get("Message", ""):
            return None
        raise
    return Stack(
        name=name,
        region=cloudformation.meta.region_name,
        status=str(description.get("StackStatus", "?")),
        parameters={
            p["ParameterKey"]: p.get("ParameterValue", "")
            for p in description.get("Parameters", [])
        },
        outputs={o["OutputKey"]: o["OutputValue"] for o in description.get("Outputs", [])},
    )


def get_stack(name: str, region: str | None = None) -> Stack:
    """The stack named `name`; none is a usage error that says how to make one."""
    found = find_stack(name, region)
    if found is None:
        where = client("cloudformation", region).meta.region_name
        local = local_endpoint()
        if name == LOCAL_STACK:
            raise CommandError(
                EXIT_USAGE,
                f"no stack {name!r} in {where}"
                + (f" at {local}" if local else "")
                + ": it is the local serve's; start `piriod-local serve`, then "
                '`eval "$(piriod-local serve --print-env)"` in this shell',
            )
        raise CommandError(
            EXIT_USAGE,
            f"no stack {name!r} in {where}: make it first (`piriod-adapter --stack {name} init "
            "--config-env ENV`, then `sam build && sam deploy --config-env ENV`), or give the "
            "right --stack NAME / --region R"
            + (
                f" (AWS_ENDPOINT_URL points at a local stand-in, {local}: `{UNDO_LOCAL}` "
                "goes back to AWS)"
                if local
                else ""
            ),
        )
    return found
