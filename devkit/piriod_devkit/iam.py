"""Every AWS call a Lambda function makes, checked against that function's IAM policy in
template.yaml. moto enforces no IAM: without this, code that calls what its policy does not
allow (a query of an index the statement does not name, a new operation) passes every test
and fails in AWS.

The recorder wraps botocore's `BaseClient._make_api_call` (every client, whatever its
session) and attributes each call to the function running: each function's handler
(template.yaml's `Handler`) and its logic entry point (ENTRY_POINTS, which tests also call
directly) set a context variable while they run, and the thread pools they submit work to
run it in a copy of the caller's context. A call made while no function runs (a test's own
set-up, the operator's commands, which are no Lambda function) is not recorded. Each function
runs in containers of its own in AWS, while the tests share one runtime: when a function
starts after another, the runtime's caches (secrets, source profiles) are dropped, so that
each function makes the calls it would make in its own container.

Each call becomes the IAM permissions it needs (`needs_of`): the action each operation is
authorized as (TransactWriteItems: the item action of each of its items; SendMessageBatch:
sqs:SendMessage; a Query of an index: the index's ARN), on the ARN of the resource it names.
The function's statements are then resolved as CloudFormation would resolve them for a stack
deployed with the test's resources (`Deployment`: the environment the functions get from
template.yaml's Globals names the table, queues, secrets and source profiles, so the
parameters and resources are read back from it: from the settings of the runtime that made
the client, which is the environment unless a test gave the runtime settings of its own),
conditions and `Fn::If` included, and each permission must be allowed by one statement (its
action and resource wildcards, and the StringEquals/StringLike conditions it has). Each call
is checked a second time as if the stack had both KMS parameters: a queue encrypted with
KmsKeyArn needs kms:GenerateDataKey and kms:Decrypt from its senders and kms:Decrypt from
its receivers, a secret encrypted with SecretsKmsKeyArn kms:Decrypt through Secrets Manager.
What the template's own wiring needs of a function is added too: an SQS event source mapping
polls with the function's role (ReceiveMessage, DeleteMessage, GetQueueAttributes)."""

from __future__ import annotations

import contextvars
import functools
import importlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlparse

from piriod_devkit.template import load_template

# The logic entry point of each function besides its handler: tests call these directly.
ENTRY_POINTS = {
    "WebhookFunction": "piriod_adapter.webhook.answer",
    "ReplayFunction": "piriod_adapter.replay.run_replay",
    "FlushFunction": "piriod_adapter.flush.run_flush",
    "ParkFunction": "piriod_adapter.park.run_park",
}
# Modules whose references to an entry point are replaced (those imported before install).
WRAPPED_MODULES = ("piriod_adapter", "piriod_devkit", "piriod_operator", "tests")
DEFAULT_ACCOUNT = "123456789012"  # moto's
SECRETS_KEY_PARAMETER = "SecretsKmsKeyArn"  # the key the secrets are encrypted with
# The KMS parameters of the second check (a stack deployed with both keys).
KMS_VARIANT = {
    "KmsKeyArn": "arn:aws:kms:{region}:{account}:key/test-kms-key",
    SECRETS_KEY_PARAMETER: "arn:aws:kms:{region}:{account}:key/test-secrets-key",
}
# What Lambda's SQS poller does with the function's role (the event source mapping).
SQS_TRIGGER_ACTIONS = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes")
# The IAM action of SQS's batch operations.
SQS_ACTIONS = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}
# The item action of each kind of TransactWriteItems item.
TRANSACT_ITEM_ACTIONS = {
    "ConditionCheck": "ConditionCheckItem",
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
}

_ENVIRONMENT = "_piriod_iam_environment"  # a client's attribute: see Recorder._tag_clients

_running: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "piriod_iam_function", default=None
)


KEYED = "with KmsKeyArn and SecretsKmsKeyArn given"


class Unsupported(ValueError):
    """Something of the template (or a call) this checker cannot read: extend it."""


# --- what a call needs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Need:
    """One permission: an action on a resource, with the request context its conditions
    read (kms:ViaService); `why` when no call of the code asked for it itself."""

    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()
    why: str = ""


def table_arn(name: str, region: str, account: str) -> str:
    if name.startswith("arn:"):
        return name
    return f"arn:aws:dynamodb:{region}:{account}:table/{name}"


def queue_arn(url: str, region: str) -> str:
    """A queue's ARN from its URL (https://sqs.<region>.amazonaws.com/<account>/<name>, or
    moto's http://host:port/<account>/<name>)."""
    account, _, name = urlparse(url).path.strip("/").rpartition("/")
    return f"arn:aws:sqs:{region}:{account or DEFAULT_ACCOUNT}:{name}"


def parameter_arn(name: str, region: str, account: str) -> str:
    if name.startswith("arn:"):
        return name
    return f"arn:aws:ssm:{region}:{account}:parameter/{name.lstrip('/')}"


def secret_arn(secret_id: str, region: str, account: str) -> str:
    """A secret's ARN when only its name is known: Secrets Manager appends six characters."""
    if secret_id.startswith("arn:"):
        return secret_id
    return f"arn:aws:secretsmanager:{region}:{account}:secret:{secret_id}-xxxxxx"


def key_arn(key_id: str, region: str, account: str) -> str:
    if key_id.startswith("arn:"):
        return key_id
    return f"arn:aws:kms:{region}:{account}:key/{key_id}"


def needs_of(
    service: str,
    operation: str,
    params: Mapping[str, Any],
    response: Mapping[str, Any] | None,
    region: str,
    account: str,
) -> list[Need]:
    """The permissions one API call needs. `service` is the IAM prefix (botocore's signing
    name). An operation not known here needs its own name as action on `*` (a policy that
    names resources cannot allow it: extend this)."""
    if service == "dynamodb":
        return _dynamodb_needs(operation, params, region, account)
    if service == "sqs":
        action = f"sqs:{SQS_ACTIONS.get(operation, operation)}"
        if "QueueUrl" in params:
            return [Need(action, queue_arn(params["QueueUrl"], region))]
        if "QueueName" in params:
            return [Need(action, f"arn:aws:sqs:{region}:{account}:{params['QueueName']}")]
        return [Need(action, "*")]
    if service == "secretsmanager" and "SecretId" in params:
        found = (response or {}).get("ARN")  # the secret's full ARN, when it exists
        arn = found or secret_arn(params["SecretId"], region, account)
        return [Need(f"secretsmanager:{operation}", arn)]
    if service == "ssm" and operation in ("GetParameter", "GetParameterHistory"):
        return [Need(f"ssm:{operation}", parameter_arn(params["Name"], region, account))]
    if service == "ssm" and operation == "GetParameters":
        return [
            Need("ssm:GetParameters", parameter_arn(n, region, account)) for n in params["Names"]
        ]
    if service == "kms" and "KeyId" in params:
        return [Need(f"kms:{operation}", key_arn(params["KeyId"], region, account))]
    return [Need(f"{service}:{operation}", "*")]


def _dynamodb_needs(
    operation: str, params: Mapping[str, Any], region: str, account: str
) -> list[Need]:
    def arn(name: str) -> str:
        return table_arn(name, region, account)

    if operation == "TransactWriteItems":
        needs = []
        for item in params["TransactItems"]:
            [(kind, request)] = item.items()
            needs.append(Need(f"dynamodb:{TRANSACT_ITEM_ACTIONS[kind]}", arn(request["TableName"])))
        return needs
    if operation == "TransactGetItems":
        return [
            Need("dynamodb:GetItem", arn(i["Get"]["TableName"])) for i in params["TransactItems"]
        ]
    if operation in ("BatchGetItem", "BatchWriteItem"):
        return [Need(f"dynamodb:{operation}", arn(name)) for name in params["RequestItems"]]
    if operation in ("Query", "Scan") and "IndexName" in params:
        return [
            Need(f"dynamodb:{operation}", f"{arn(params['TableName'])}/index/{params['IndexName']}")
        ]
    if "TableName" in params:
        return [Need(f"dynamodb:{operation}", arn(params["TableName"]))]
    return [Need(f"dynamodb:{operation}", "*")]


# --- the deployment the tests stand for ----------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """A stack deployed with the test's resources: its region, account, parameter values
    (those the functions' environment carries; the others keep their defaults) and what a
    `Ref` of its resources gives (queue URLs, the table's name)."""

    region: str
    account: str
    parameters: tuple[tuple[str, str], ...]
    refs: tuple[tuple[str, str], ...]

    @classmethod
    def from_environment(
        cls, template: Mapping[str, Any], env: Mapping[str, str], region: str
    ) -> Deployment:
        """Read back from the functions' environment, as template.yaml's Globals make it
        (`VARIABLE: !Ref Parameter` or `!Ref Resource`)."""
        variables = template.get("Globals", {}).get("Function", {}).get("Environment", {})
        parameters: dict[str, str] = {}
        refs: dict[str, str] = {}
        for variable, value in variables.get("Variables", {}).items():
            if not (isinstance(value, dict) and set(value) == {"Ref"}) or variable not in env:
                continue
            name = value["Ref"]
            if name in template.get("Parameters", {}):
                parameters[name] = env[variable]
            elif name in template["Resources"]:
                refs[name] = env[variable]
        account = DEFAULT_ACCOUNT
        for ref in refs.values():
            if ref.startswith(("http://", "https://")):  # a queue URL names its account
                account = urlparse(ref).path.strip("/").partition("/")[0] or account
        return cls(region, account, tuple(sorted(parameters.items())), tuple(sorted(refs.items())))

    def with_parameters(self, **values: str) -> Deployment:
        merged = {**dict(self.parameters), **values}
        return replace(self, parameters=tuple(sorted(merged.items())))

    def with_kms_keys(self) -> Deployment:
        """The same stack with KmsKeyArn and SecretsKmsKeyArn given."""
        keys = {
            k: v.format(region=self.region, account=self.account) for k, v in KMS_VARIANT.items()
        }
        return self.with_parameters(**keys)


_NO_VALUE = object()  # AWS::NoValue: its list entry or property is dropped


class Resolver:
    """CloudFormation's intrinsic functions over a template, for one deployment: the ones
    template.yaml's policies and conditions use (Ref, GetAtt, Sub, Join, Select, Split, If,
    Equals, Not, And, Or, Condition). Anything else raises Unsupported."""

    def __init__(self, template: Mapping[str, Any], deployment: Deployment) -> None:
        self.template = template
        self.deployment = deployment
        self.parameters = dict(deployment.parameters)
        self.refs = dict(deployment.refs)
        self._conditions: dict[str, bool] = {}

    # names

    def stack_name(self) -> str:
        """The stack's name, as the queues' names carry it (QueueName: ${AWS::StackName}-...)."""
        for logical, ref in self.refs.items():
            properties = self.template["Resources"][logical].get("Properties", {})
            name = properties.get("QueueName")
            if not (isinstance(name, dict) and isinstance(name.get("Fn::Sub"), str)):
                continue
            pattern = re.escape(name["Fn::Sub"]).replace(re.escape("${AWS::StackName}"), "(.+)")
            found = re.fullmatch(pattern, urlparse(ref).path.rpartition("/")[2])
            if found:
                return found.group(1)
        return "unknown-stack"

    def ref(self, name: str) -> Any:
        pseudo = {
            "AWS::Region": self.deployment.region,
            "AWS::AccountId": self.deployment.account,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }
        if name in pseudo:
            return pseudo[name]
        if name == "AWS::StackName":
            return self.stack_name()
        if name == "AWS::NoValue":
            return _NO_VALUE
        parameters = self.template.get("Parameters", {})
        if name in parameters:
            value = self.parameters.get(name, parameters[name].get("Default", ""))
            if parameters[name]["Type"] == "CommaDelimitedList":
                return str(value).split(",")
            return str(value)
        if name in self.refs:
            return self.refs[name]
        return f"<unresolved {name}>"  # a resource the tests do not stand for: matches nothing

    def get_att(self, logical: str, attribute: str) -> str:
        resource = self.template["Resources"].get(logical)
        if resource is None or logical not in self.refs:
            return f"<unresolved {logical}.{attribute}>"
        kind, ref = resource["Type"], self.refs[logical]
        region, account = self.deployment.region, self.deployment.account
        if kind == "AWS::SQS::Queue" and attribute == "Arn":
            return queue_arn(ref, region)
        if kind == "AWS::SQS::Queue" and attribute == "QueueName":
            return urlparse(ref).path.rpartition("/")[2]
        if kind == "AWS::DynamoDB::Table" and attribute == "Arn":
            return table_arn(ref, region, account)
        raise Unsupported(f"!GetAtt {logical}.{attribute} ({kind})")

    def sub(self, text: str, variables: Mapping[str, Any]) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in variables:
                return str(variables[name])
            if "." in name and not name.startswith("AWS::"):
                return self.get_att(*name.split(".", 1))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", one, text)

    # values

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = bool(self.value(self.template["Conditions"][name]))
        return self._conditions[name]

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self.value(item) for item in node]
            return [v for v in items if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            [(key, argument)] = node.items()
            if key == "Ref" or key.startswith("Fn::") or key == "Condition":
                return self.intrinsic(key, argument)
        values = {k: self.value(v) for k, v in node.items()}
        return {k: v for k, v in values.items() if v is not _NO_VALUE}

    def intrinsic(self, key: str, argument: Any) -> Any:
        if key == "Ref":
            return self.ref(argument)
        if key == "Condition":
            return self.condition(argument)
        if key == "Fn::GetAtt":
            logical, attribute = (
                argument.split(".", 1) if isinstance(argument, str) else self.value(argument)
            )
            return self.get_att(logical, attribute)
        if key == "Fn::Sub":
            if isinstance(argument, str):
                return self.sub(argument, {})
            text, variables = argument
            return self.sub(text, self.value(variables))
        if key == "Fn::If":
            name, yes, no = argument
            return self.value(yes if self.condition(name) else no)
        args = self.value(argument)
        if key == "Fn::Join":
            separator, items = args
            return separator.join(str(i) for i in items)
        if key == "Fn::Select":
            index, items = args
            return items[int(index)]
        if key == "Fn::Split":
            separator, text = args
            return str(text).split(separator)
        if key == "Fn::Equals":
            return args[0] == args[1]
        if key == "Fn::Not":
            return not args[0]
        if key == "Fn::And":
            return all(args)
        if key == "Fn::Or":
            return any(args)
        raise Unsupported(f"intrinsic function {key}")


# --- the policies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    sid: str
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: tuple[tuple[str, str, tuple[str, ...]], ...]  # (operator, key, values)

    def allows(self, need: Need) -> str | None:
        """The action entry of this statement that `need` matches, when its resource and
        conditions match too; else None."""
        action = next((a for a in self.actions if _wildcard(a, need.action, fold=True)), None)
        if action is None or not any(_wildcard(r, need.resource) for r in self.resources):
            return None
        context = dict(need.context)
        for operator, key, values in self.conditions:
            if key not in context:
                return None
            if operator == "StringEquals" and context[key] not in values:
                return None
            if operator == "StringLike" and not any(_wildcard(v, context[key]) for v in values):
                return None
        return action


def _wildcard(pattern: str, text: str, *, fold: bool = False) -> bool:
    """IAM's matching: `*` any run of characters, `?` one; actions are case-insensitive."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.IGNORECASE if fold else 0) is not None


def functions(template: Mapping[str, Any]) -> list[str]:
    return sorted(
        name
        for name, resource in template["Resources"].items()
        if resource["Type"] in ("AWS::Serverless::Function", "AWS::Lambda::Function")
    )


def _strings(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    return tuple(str(v) for v in items)


def statements(
    template: Mapping[str, Any], function: str, deployment: Deployment
) -> list[Statement]:
    """The function's statements as the deployment would have them (conditional policies
    whose condition does not hold are gone)."""
    resolver = Resolver(template, deployment)
    raw = template["Resources"][function]["Properties"].get("Policies", [])
    found: list[Statement] = []
    for number, policy in enumerate(resolver.value(raw if isinstance(raw, list) else [raw])):
        if not (isinstance(policy, dict) and "Statement" in policy):
            raise Unsupported(f"{function}: policy {number} is not an inline policy: {policy!r}")
        for index, statement in enumerate(policy["Statement"]):
            if "NotAction" in statement or "NotResource" in statement:
                raise Unsupported(f"{function}: NotAction/NotResource ({statement})")
            conditions = []
            for operator, keys in statement.get("Condition", {}).items():
                if operator not in ("StringEquals", "StringLike"):
                    raise Unsupported(f"{function}: condition operator {operator}")
                conditions += [(operator, k, _strings(v)) for k, v in keys.items()]
            found.append(
                Statement(
                    sid=statement.get("Sid", f"#{number}.{index}"),
                    effect=statement["Effect"],
                    actions=_strings(statement["Action"]),
                    resources=_strings(statement["Resource"]),
                    conditions=tuple(conditions),
                )
            )
    return found


def declared_permissions(template: Mapping[str, Any], function: str) -> list[tuple[str, str]]:
    """(Sid, action) of every Allow statement of the function, conditional ones included."""
    found = []
    for policy in template["Resources"][function]["Properties"].get("Policies", []):
        branches = (
            policy["Fn::If"][1:] if isinstance(policy, dict) and "Fn::If" in policy else [policy]
        )
        for branch in branches:
            if not (isinstance(branch, dict) and "Statement" in branch):
                continue
            for statement in branch["Statement"]:
                if statement.get("Effect") == "Allow":
                    sid = statement.get("Sid", "?")
                    found += [(sid, action) for action in _strings(statement["Action"])]
    return found


def trigger_needs(template: Mapping[str, Any], function: str, deployment: Deployment) -> list[Need]:
    """What the template's SQS event source mappings of the function poll with its role."""
    resolver = Resolver(template, deployment)
    needs = []
    for logical, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Lambda::EventSourceMapping":
            continue
        target = resource["Properties"]["FunctionName"]
        name = target.get("Ref", "") if isinstance(target, dict) else str(target)
        if name.split(".")[0] != function:
            continue
        source = resolver.value(resource["Properties"]["EventSourceArn"])
        if ":sqs:" in source:
            needs += [Need(a, source, why=f"{logical} polls") for a in SQS_TRIGGER_ACTIONS]
    return needs


def implied_key_needs(
    template: Mapping[str, Any], need: Need, deployment: Deployment
) -> list[Need]:
    """What the KMS keys of the deployment add to a permission: a queue encrypted with a
    customer-managed key (its KmsMasterKeyId) takes kms:GenerateDataKey and kms:Decrypt from
    its senders and kms:Decrypt from its receivers; a secret read with SecretsKmsKeyArn
    given takes kms:Decrypt, through Secrets Manager."""
    resolver = Resolver(template, deployment)
    region = deployment.region
    if need.action in ("sqs:SendMessage", "sqs:ReceiveMessage"):
        for logical, resource in template["Resources"].items():
            if resource["Type"] != "AWS::SQS::Queue" or logical not in resolver.refs:
                continue
            if resolver.get_att(logical, "Arn") != need.resource:
                continue
            key = resolver.value(
                resource.get("Properties", {}).get("KmsMasterKeyId", {"Ref": "AWS::NoValue"})
            )
            if not isinstance(key, str) or not key:
                return []
            actions = ["kms:Decrypt"] + (["kms:GenerateDataKey"] if "Send" in need.action else [])
            via = (("kms:ViaService", f"sqs.{region}.amazonaws.com"),)
            return [Need(a, key, via, why=f"{logical}'s key") for a in actions]
    if need.action == "secretsmanager:GetSecretValue":
        key = resolver.ref(SECRETS_KEY_PARAMETER)
        if isinstance(key, str) and key:
            via = (("kms:ViaService", f"secretsmanager.{region}.amazonaws.com"),)
            return [Need("kms:Decrypt", key, via, why="the secrets' key")]
    return []


class Policies:
    """Each function's statements per deployment, and what they allow (cached)."""

    def __init__(self, template: Mapping[str, Any]) -> None:
        self.template = template
        self._statements: dict[tuple[str, Deployment], list[Statement]] = {}
        self._lock = threading.Lock()

    def of(self, function: str, deployment: Deployment) -> list[Statement]:
        with self._lock:
            key = (function, deployment)
            if key not in self._statements:
                self._statements[key] = statements(self.template, function, deployment)
            return self._statements[key]

    def allowed_by(
        self, function: str, need: Need, deployment: Deployment
    ) -> list[tuple[str, str]]:
        """(Sid, action entry) of each statement that allows `need`; none when none does or
        when a Deny matches."""
        found = []
        for statement in self.of(function, deployment):
            action = statement.allows(need)
            if action is None:
                continue
            if statement.effect == "Deny":
                return []
            found.append((statement.sid, action))
        return found


# --- recording --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One AWS call a function made: its operation, the permissions it needs, and the
    deployment the environment stood for when it was made."""

    function: str
    operation: str  # e.g. dynamodb:TransactWriteItems
    needs: tuple[Need, ...]
    deployment: Deployment


@dataclass(frozen=True)
class Denial:
    function: str
    operation: str
    need: Need
    variant: str  # "" or what the deployment adds (the KMS keys)
    named: str  # the resource as the template names it


@dataclass
class Report:
    denied: list[Denial] = field(default_factory=list)
    used: set[tuple[str, str, str]] = field(default_factory=set)  # (function, Sid, action)
    problems: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = ["AWS calls of the functions that their IAM policies in template.yaml deny:"]
        for d in sorted(set(self.denied), key=lambda d: (d.function, d.need.action, d.named)):
            why = f" ({d.need.why})" if d.need.why else ""
            variant = f", {d.variant}" if d.variant else ""
            lines.append(
                f"  {d.function}: {d.need.action} on {d.named}{why}, made by {d.operation}{variant}"
            )
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class Recorder:
    """Records the AWS calls of the functions while installed (see the module's text)."""

    def __init__(self, template: Mapping[str, Any] | None = None) -> None:
        self.template = template if template is not None else load_template()
        self.policies = Policies(self.template)
        self._calls: list[Call] = []
        self._problems: list[str] = []
        self._lock = threading.Lock()
        self._undo: list[Callable[[], None]] = []
        self.seconds = 0.0  # spent recording and checking (the cost of all this)

    # installing

    def install(self) -> None:
        self._wrap_api_calls()
        self._tag_clients()
        self._wrap_entry_points()
        self._propagate_to_pools()

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        original = getattr(owner, name)
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, original))

    def _wrap_api_calls(self) -> None:
        from botocore.client import BaseClient

        original = BaseClient._make_api_call  # type: ignore[attr-defined]
        recorder = self

        def _make_api_call(client: Any, operation: str, params: dict[str, Any]) -> Any:
            function = _running.get()
            if function is None:
                return original(client, operation, params)
            response = None
            try:
                response = original(client, operation, params)
                return response
            finally:
                recorder._record(function, client, operation, params, response)

        self._patch(BaseClient, "_make_api_call", _make_api_call)

    def _tag_clients(self) -> None:
        """Each AWS client a Runtime makes carries the environment of that runtime's settings:
        the deployment its calls stand for (a runtime may be given settings of its own)."""
        from piriod_adapter.runtime import Runtime

        original = Runtime._client

        def _client(runtime: Runtime, service: str) -> Any:
            client = original(runtime, service)
            setattr(client, _ENVIRONMENT, environment_of(runtime.settings))
            return client

        self._patch(Runtime, "_client", _client)

    def entry_points(self) -> dict[str, list[str]]:
        """Each function's handler (template.yaml) and logic entry point (ENTRY_POINTS)."""
        found = {}
        for function in functions(self.template):
            if function not in ENTRY_POINTS:
                raise Unsupported(f"{function} has no logic entry point in iam.ENTRY_POINTS")
            handler = self.template["Resources"][function]["Properties"]["Handler"]
            found[function] = [handler, ENTRY_POINTS[function]]
        return found

    def _wrap_entry_points(self) -> None:
        wrappers: dict[int, tuple[Any, Any]] = {}
        for function, paths in self.entry_points().items():
            for path in paths:
                module_name, _, name = path.rpartition(".")
                original = getattr(importlib.import_module(module_name), name)
                wrappers[id(original)] = (original, _attributed(function, original))
        # every reference already taken (`from module import name`) is replaced too
        for module_name, module in list(sys.modules.items()):
            if not module_name.startswith(WRAPPED_MODULES):
                continue
            for name, value in list(vars(module).items()):
                pair = wrappers.get(id(value))
                if pair is not None and pair[0] is value:
                    self._patch(module, name, pair[1])

    def _propagate_to_pools(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        original = ThreadPoolExecutor.submit

        def submit(pool: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            if _running.get() is None:
                return original(pool, fn, *args, **kwargs)
            return original(pool, contextvars.copy_context().run, fn, *args, **kwargs)

        self._patch(ThreadPoolExecutor, "submit", submit)

    # recording

    def _record(
        self,
        function: str,
        client: Any,
        operation: str,
        params: Mapping[str, Any],
        response: Mapping[str, Any] | None,
    ) -> None:
        started = time.perf_counter()
        try:
            region = client.meta.region_name
            service = client.meta.service_model.signing_name
            env = getattr(client, _ENVIRONMENT, None) or os.environ
            deployment = Deployment.from_environment(self.template, env, region)
            needs = needs_of(service, operation, params, response, region, deployment.account)
            call = Call(function, f"{service}:{operation}", tuple(needs), deployment)
        except Exception as exc:  # never fail the function under test: report it instead
            with self._lock:
                self._problems.append(f"{function}: {operation} not understood: {exc!r}")
            return
        with self._lock:
            self._calls.append(call)
            self.seconds += time.perf_counter() - started

    def seen(self) -> list[Call]:
        """The calls recorded since the last take()."""
        with self._lock:
            return list(self._calls)

    def take(self) -> tuple[list[Call], list[str]]:
        with self._lock:
            calls, problems = self._calls, self._problems
            self._calls, self._problems = [], []
        return calls, problems

    # checking

    def check(self, calls: Iterable[Call], problems: Iterable[str] = ()) -> Report:
        started = time.perf_counter()
        report = check(self.template, calls, problems, self.policies)
        with self._lock:
            self.seconds += time.perf_counter() - started
        return report


_last = {"function": ""}
_last_lock = threading.Lock()


def _own_container(function: str) -> None:
    """Lambda runs each function in containers of its own, so what one function cached (a
    secret, the source profiles) another reads itself; the tests share one runtime. When a
    function starts after another, those caches are dropped, as if its container were
    another (never the connections: the other function may still be using them)."""
    with _last_lock:
        switched, _last["function"] = _last["function"] != function, function
    from piriod_adapter import runtime as module

    runtime = module._runtime
    if not switched or runtime is None:
        return
    if "secrets" in runtime.__dict__:
        runtime.secrets.clear()
    runtime.__dict__.pop("sources", None)


def environment_of(settings: Any) -> dict[str, str]:
    """The environment variables a function's settings were read from (their aliases)."""
    env = {}
    for name, info in type(settings).model_fields.items():
        value = getattr(settings, name)
        if info.alias and value is not None:
            env[info.alias] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _attributed(function: str, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run_as_function(*args: Any, **kwargs: Any) -> Any:
        if _running.get() is None:
            _own_container(function)
        token = _running.set(function)
        try:
            return original(*args, **kwargs)
        finally:
            _running.reset(token)

    return run_as_function


# --- checking ----------------------------------------------------------------------------------


def _deployment_for(template: Mapping[str, Any], call: Call, need: Need) -> Deployment:
    """The deployment a source secret is read under: a secret that is neither the token's
    nor the signing secrets' is a source profile's, and one not named <stack>/sources/...
    is listed in SourceSecretArns (as `piriod-adapter sources push` asks of the operator)."""
    deployment = call.deployment
    if need.action != "secretsmanager:GetSecretValue":
        return deployment
    resolver = Resolver(template, deployment)
    own = {resolver.ref("PiriodTokenSecretArn"), resolver.ref("WebhookSecretArn")}
    name = need.resource.partition(":secret:")[2]
    if need.resource in own or name.startswith(f"{resolver.stack_name()}/sources/"):
        return deployment
    return deployment.with_parameters(SourceSecretArns=need.resource)


def named(template: Mapping[str, Any], resource: str, deployment: Deployment) -> str:
    """A resource as the template names it (IdempotencyTable/index/by_waiting,
    !Ref PiriodTokenSecretArn), or its ARN."""
    resolver = Resolver(template, deployment)
    for logical in resolver.refs:
        kind = template["Resources"][logical]["Type"]
        if kind not in ("AWS::SQS::Queue", "AWS::DynamoDB::Table"):
            continue
        arn = resolver.get_att(logical, "Arn")
        if resource == arn or resource.startswith(arn + "/"):
            return logical + resource[len(arn) :]
    for name, value in resolver.parameters.items():
        if value and resource == value:
            return f"!Ref {name}"
    return resource


def check(
    template: Mapping[str, Any],
    calls: Iterable[Call],
    problems: Iterable[str] = (),
    policies: Policies | None = None,
) -> Report:
    """Every need of every call (and of the template's wiring of the functions that made
    them) against the function's statements, under the test's deployment and under the same
    deployment with both KMS keys."""
    policies = policies or Policies(template)
    report = Report(problems=list(problems))
    checked: set[tuple[str, Need, Deployment]] = set()
    wiring: set[tuple[str, Deployment]] = set()
    for call in calls:
        work = [(call.operation, need) for need in call.needs]
        if (call.function, call.deployment) not in wiring:
            wiring.add((call.function, call.deployment))
            work += [
                ("the template", need)
                for need in trigger_needs(template, call.function, call.deployment)
            ]
        for operation, need in work:
            base = _deployment_for(template, call, need)
            keyed = base.with_kms_keys()
            cases = [("", base, need)]
            cases += [(KEYED, keyed, n) for n in implied_key_needs(template, need, keyed)]
            for variant, deployment, wanted in cases:
                if (call.function, wanted, deployment) in checked:
                    continue
                checked.add((call.function, wanted, deployment))
                try:
                    allowed = policies.allowed_by(call.function, wanted, deployment)
                except Unsupported as exc:
                    report.problems.append(f"{call.function}: {exc}")
                    continue
                if not allowed:
                    report.denied.append(
                        Denial(
                            call.function,
                            operation,
                            wanted,
                            variant,
                            named(template, wanted.resource, deployment),
                        )
                    )
                report.used.update((call.function, sid, action) for sid, action in allowed)
    return report


def unused(template: Mapping[str, Any], used: Iterable[tuple[str, str, str]]) -> list[str]:
    """The permissions of each function that no checked call needed (information)."""
    seen = {(f, s, a.lower()) for f, s, a in used}
    lines = []
    for function in functions(template):
        for sid, action in declared_permissions(template, function):
            if (function, sid, action.lower()) not in seen:
                lines.append(f"{function} {sid}: {action}")
    return lines
