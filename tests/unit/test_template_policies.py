"""The functions' secret permissions in template.yaml (SPEC section 8): besides the secrets
listed at deploy time, every secret named `<stack name>/sources/...`, and nothing wider."""

from __future__ import annotations

import re
from typing import Any

import pytest

from piriod_devkit.template import load_template

FUNCTIONS = ["WebhookFunction", "ReplayFunction"]
SOURCES_ARN = (
    "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}"
    ":secret:${AWS::StackName}/sources/*"
)
PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "123456789012",
    "AWS::StackName": "piriod-usage-adapter-staging",
}


def statements(function: str) -> list[dict[str, Any]]:
    """Every statement of the function's policies, the conditional ones included."""
    found: list[dict[str, Any]] = []
    for policy in load_template()["Resources"][function]["Properties"]["Policies"]:
        # a conditional policy: the statement given when its condition holds
        given = policy["Fn::If"][1] if "Fn::If" in policy else policy
        found += given["Statement"]
    return found


def secret_statements(function: str) -> list[dict[str, Any]]:
    return [s for s in statements(function) if "secretsmanager" in str(s["Action"])]


def readable(resource: Any, arn: str) -> bool:
    """Whether an IAM resource (a `!Sub` of pseudo parameters, with `*` wildcards) covers
    `arn`; a `!Ref` of a deploy-time parameter is not resolved (it covers no name here)."""
    if not (isinstance(resource, dict) and set(resource) == {"Fn::Sub"}):
        return False
    text = re.sub(r"\$\{([^}]+)\}", lambda m: PSEUDO[m.group(1)], resource["Fn::Sub"])
    pattern = ".*".join(re.escape(part) for part in text.split("*"))
    return re.fullmatch(pattern, arn) is not None


def arn(name: str) -> str:
    # Secrets Manager appends six random characters to a secret's name in its ARN
    return f"arn:aws:secretsmanager:eu-west-1:123456789012:secret:{name}-AbC123"


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_functions_may_read_every_source_secret_of_their_stack(function: str) -> None:
    # given the function's policies in the template
    [statement] = [s for s in statements(function) if s.get("Sid") == "StackSourceSecrets"]
    # then one statement, of its own, allows reading the stack's source secrets only
    assert statement == {
        "Sid": "StackSourceSecrets",
        "Effect": "Allow",
        "Action": "secretsmanager:GetSecretValue",
        "Resource": {"Fn::Sub": SOURCES_ARN},
    }
    stack = PSEUDO["AWS::StackName"]
    resource = statement["Resource"]
    assert readable(resource, arn(f"{stack}/sources/new-meter"))
    assert readable(resource, arn(f"{stack}/sources/ci-minutes"))
    # and not another stack's, nor the stack's other secrets
    assert not readable(resource, arn(f"{stack}-prod/sources/new-meter"))
    assert not readable(resource, arn(f"other-{stack}/sources/new-meter"))
    assert not readable(resource, arn(f"{stack}/sourcesx/new-meter"))
    assert not readable(resource, arn(f"{stack}/piriod-token"))


@pytest.mark.parametrize("function", FUNCTIONS)
def test_secret_statements_only_read_and_never_every_secret(function: str) -> None:
    # given every statement of the function that names Secrets Manager
    found = secret_statements(function)
    # then each only reads (GetSecretValue), and none covers every secret
    assert len(found) >= 2
    for statement in found:
        assert statement["Effect"] == "Allow"
        assert statement["Action"] == "secretsmanager:GetSecretValue", statement
        assert statement["Resource"] != "*"
        assert not readable(statement["Resource"], arn("someone-else/anything"))


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_secrets_key_decrypts_for_every_secret_read_through_secrets_manager(
    function: str,
) -> None:
    # given the function's kms:Decrypt on the secrets' customer-managed key (when one is set)
    [decrypt] = [
        s for s in statements(function) if s.get("Sid") == "DecryptSecretsViaSecretsManager"
    ]
    # then it is conditioned on Secrets Manager alone, not on particular secrets, so that it
    # covers the <stack name>/sources/ secrets as it covers the ones listed at deploy time
    assert decrypt["Action"] == "kms:Decrypt"
    assert decrypt["Resource"] == {"Ref": "SecretsKmsKeyArn"}
    assert list(decrypt["Condition"]) == ["StringEquals"]
    assert list(decrypt["Condition"]["StringEquals"]) == ["kms:ViaService"]
