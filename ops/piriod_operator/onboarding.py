"""Before and after the first deploy: the two secrets in the shapes the functions read, the
samconfig environment that names them, rotating the signing secret, and one signed test
delivery to a deployed (or local) webhook. Used by `piriod-adapter init`, `signing-secret`,
`sources secret` and `send`."""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
import tomllib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from piriod_adapter.secrets import SecretStore
from piriod_adapter.signatures import SECRET_PREFIX, sign_standard, standard_key

SIGNING_KEY_BYTES = 32


def new_signing_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SIGNING_KEY_BYTES)).decode()


@dataclass(frozen=True)
class Secrets:
    token_arn: str
    signing_arn: str
    new_signing_secret: str | None  # made by this run (shown once), None when kept


def ensure_secrets(manager: Any, name: str, token: str | None) -> Secrets:
    """Create or update `<name>/piriod-token` ({"api_token": ...}) and
    `<name>/webhook-signing-secrets` ({"signing_secrets": [...]}). Re-runnable: an existing
    token is replaced only when a token is given; existing signing secrets are kept."""
    token_arn = _existing(manager, f"{name}/piriod-token")
    if token is not None:
        value = json.dumps({"api_token": token})
        if token_arn is None:
            token_arn = manager.create_secret(
                Name=f"{name}/piriod-token",
                Description="Piriod API token of the usage adapter",
                SecretString=value,
            )["ARN"]
        else:
            manager.put_secret_value(SecretId=token_arn, SecretString=value)
    elif token_arn is None:
        raise ValueError("no Piriod token yet: give one (it is asked for, or --token-stdin)")
    signing_arn = _existing(manager, f"{name}/webhook-signing-secrets")
    made = None
    if signing_arn is None:
        made = new_signing_secret()
        signing_arn = manager.create_secret(
            Name=f"{name}/webhook-signing-secrets",
            Description="Standard Webhooks signing secrets of the usage adapter's native route",
            SecretString=json.dumps({"signing_secrets": [made]}),
        )["ARN"]
    return Secrets(token_arn, signing_arn, made)


def _existing(manager: Any, secret_id: str) -> str | None:
    try:
        arn: str = manager.describe_secret(SecretId=secret_id)["ARN"]
        return arn
    except manager.exceptions.ResourceNotFoundException:
        return None


def signing_secrets(manager: Any, secret_id: str) -> list[str]:
    """The active signing secrets, read as the functions read them (raises
    SecretUnavailable)."""
    return SecretStore(manager, ttl_seconds=0).signing_secrets(secret_id)


def add_signing_secret(manager: Any, secret_id: str) -> tuple[str, int]:
    """Rotation, step 1: a new secret next to the current ones (any of them verifies).
    Returns the new secret and how many are now active."""
    current = signing_secrets(manager, secret_id)
    made = new_signing_secret()
    manager.put_secret_value(
        SecretId=secret_id, SecretString=json.dumps({"signing_secrets": [*current, made]})
    )
    return made, len(current) + 1


def add_source_secret(
    manager: Any, secret_id: str, source: str, given: str | None = None
) -> tuple[str, int, bool]:
    """A third-party source's secret `<stack>/sources/<name>` ({"signing_secrets": [...]}):
    made with one secret when it does not exist, otherwise one more next to the current
    ones (rotation, as `signing-secret add`). The secret is `given` (a vendor's own), or
    generated. Returns the secret, how many are active, and whether the secret was made."""
    made = given or new_signing_secret()
    if _existing(manager, secret_id) is None:
        manager.create_secret(
            Name=secret_id,
            Description=f"Signing secrets of the usage adapter's source {source!r}",
            SecretString=json.dumps({"signing_secrets": [made]}),
        )
        return made, 1, True
    current = signing_secrets(manager, secret_id)
    if made in current:
        raise ValueError("that secret is already active")
    manager.put_secret_value(
        SecretId=secret_id, SecretString=json.dumps({"signing_secrets": [*current, made]})
    )
    return made, len(current) + 1, False


def secret_exists(manager: Any, secret_id: str) -> bool:
    return _existing(manager, secret_id) is not None


def retire_signing_secrets(manager: Any, secret_id: str) -> int:
    """Rotation, step 2, once every sender signs with the newest: keep only that one.
    Returns how many were retired."""
    current = signing_secrets(manager, secret_id)
    manager.put_secret_value(
        SecretId=secret_id, SecretString=json.dumps({"signing_secrets": current[-1:]})
    )
    return len(current) - 1


# --- samconfig.toml ----------------------------------------------------------------------------


def write_samconfig(
    path: Path,
    environment: str,
    stack: str,
    overrides: dict[str, str],
    region: str | None,
    defaults: dict[str, str] | None = None,
) -> dict[str, str]:
    """Put these parameter overrides, the region and the stack name into one samconfig
    environment (made when it is new), and each of `defaults` whose key has no override
    there yet; other lines are kept. Returns the environment's overrides as written."""
    text = path.read_text() if path.exists() else "version = 0.1\n"
    header = f"[{environment}.deploy.parameters]"
    if header not in text:
        text = text.rstrip("\n") + "\n\n" + _new_environment(environment, stack, region)
    start = text.index(header)
    end = _section_end(text, start + len(header))
    section = text[start:end]
    block = re.search(r"parameter_overrides = \[(.*?)^\]", section, re.DOTALL | re.MULTILINE)
    if block is None:
        section = section.rstrip("\n") + "\nparameter_overrides = [\n]\n\n"
        block = re.search(r"parameter_overrides = \[(.*?)^\]", section, re.DOTALL | re.MULTILINE)
        assert block is not None
    body = block.group(1)
    given = [(key, value, True) for key, value in overrides.items()]
    given += [(key, value, False) for key, value in (defaults or {}).items()]
    for key, value, replace in given:  # a line per key; its comment, if any, is kept
        line = re.compile(rf'^(\s*)"{key}=(?:[^"\\]|\\.)*"', re.MULTILINE)
        found = line.search(body)
        if found and not replace:
            continue
        if found:
            new = f'{found.group(1)}"{key}={value}"'
            body = body[: found.start()] + new + body[found.end() :]
        else:
            body = body.rstrip(" ") + f'    "{key}={value}",\n'
    section = section[: block.start(1)] + body + section[block.end(1) :]
    if region:  # the region the secrets were made in, so the stack goes there too
        line = re.compile(r"^region = .*$", re.MULTILINE)
        if line.search(section):
            section = line.sub(lambda _: f'region = "{region}"', section, count=1)
        else:
            section = section.replace(
                "parameter_overrides = [", f'region = "{region}"\nparameter_overrides = [', 1
            )
    text = text[:start] + section + text[end:]
    text = _with_stack_name(text, environment, stack)
    parsed = tomllib.loads(text)  # never leave a file sam cannot read
    written = parsed[environment]["deploy"]["parameters"]["parameter_overrides"]
    assert written
    assert _stack_name_of(parsed, environment) == stack
    path.write_text(text)
    items = written.split() if isinstance(written, str) else written
    pairs = [str(item).partition("=") for item in items]
    return {key: value for key, _, value in pairs}


def _with_stack_name(text: str, environment: str, stack: str) -> str:
    """The environment's stack_name (in its global parameters, and in its deploy parameters
    when it is written there too) set to `stack`: `sam deploy --config-env` then deploys the
    stack that the other commands are told of with --stack."""
    line = re.compile(r"^stack_name = .*$", re.MULTILINE)
    for table in ("global", "deploy"):
        header = f"[{environment}.{table}.parameters]"
        if header not in text:
            if table == "deploy":
                continue
            deploy = text.index(f"[{environment}.deploy.parameters]")
            text = text[:deploy] + f'{header}\nstack_name = "{stack}"\n\n' + text[deploy:]
            continue
        start = text.index(header)
        end = _section_end(text, start + len(header))
        section = text[start:end]
        if line.search(section):
            section = line.sub(lambda _: f'stack_name = "{stack}"', section, count=1)
        elif table == "global":
            section = section.replace(header, f'{header}\nstack_name = "{stack}"', 1)
        text = text[:start] + section + text[end:]
    return text


def _stack_name_of(parsed: dict[str, Any], environment: str) -> str | None:
    tables = parsed[environment]
    for table in ("deploy", "global"):
        name = tables.get(table, {}).get("parameters", {}).get("stack_name")
        if name is not None:
            return str(name)
    return None


def _section_end(text: str, after: int) -> int:
    following = re.search(r"^\[", text[after:], re.MULTILINE)
    return after + following.start() if following else len(text)


def _new_environment(environment: str, stack: str, region: str | None) -> str:
    return (
        f"[{environment}.global.parameters]\n"
        f'stack_name = "{stack}"\n\n'
        f"[{environment}.deploy.parameters]\n"
        'capabilities = "CAPABILITY_IAM"\n'
        "confirm_changeset = true\n"
        "resolve_s3 = true\n"
        f's3_prefix = "{stack}"\n'
        + (f'region = "{region}"\n' if region else "")
        + "parameter_overrides = [\n]\n"
    )


# --- one signed test delivery ---------------------------------------------------------------


JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def one_record_delivery(line: int, quantity: str, date_time: str | None, key: str | None) -> bytes:
    """The body of `send --line`: one record, `quantity` (the text of a JSON number, see
    JSON_NUMBER) with exactly the digits given."""
    record: dict[str, Any] = {
        "subscription_line": line,
        "date_time": date_time
        or datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "quantity": "__QUANTITY__",
    }
    if key:
        record["idempotency_key"] = key
    return json.dumps(record).replace('"__QUANTITY__"', quantity).encode()


def signed_headers(
    body: bytes, secrets: Sequence[str], message_id: str | None = None
) -> dict[str, str]:
    """Standard Webhooks headers, one signature per secret (during a rotation the webhook
    may still hold only the old list, or already only the new one)."""
    webhook_id = message_id or f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time())
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            sign_standard(standard_key(secret), webhook_id, timestamp, body) for secret in secrets
        ),
    }


class Unreachable(Exception):
    """Nothing answered at the webhook's URL (refused, no such host, no answer in time)."""


def post(url: str, body: bytes, headers: dict[str, str], timeout: float = 30.0) -> tuple[int, Any]:
    """POST one signed delivery; the answer's status and body (JSON when it is). Raises
    Unreachable, with why in a few words, when nothing answers."""
    import urllib3
    from urllib3.exceptions import HTTPError, LocationValueError

    try:
        response = urllib3.PoolManager().request(
            "POST",
            url,
            body=body,
            headers=headers,
            timeout=urllib3.Timeout(connect=10, read=timeout),
            retries=False,
        )
    except LocationValueError as exc:
        raise Unreachable(f"{url!r} is not a URL ({exc})") from None
    except HTTPError as exc:
        raise Unreachable(_why(exc, timeout)) from None
    try:
        return response.status, json.loads(response.data)
    except ValueError:
        return response.status, response.data.decode("utf-8", "replace")


def _why(exc: Exception, timeout: float) -> str:
    """A urllib3 failure in a few words: `Connection refused`, `no answer in 30 s`, ..."""
    from urllib3.exceptions import (
        ConnectTimeoutError,
        NameResolutionError,
        NewConnectionError,
        ReadTimeoutError,
    )

    if isinstance(exc, NameResolutionError):
        return "no such host"
    if isinstance(exc, NewConnectionError):  # "...: Failed to establish ...: [Errno 111] ..."
        reason = str(exc).rsplit("]", 1)[-1].strip() if "[Errno" in str(exc) else str(exc)
        return reason or "no connection"
    if isinstance(exc, ConnectTimeoutError):  # (NewConnectionError is one too: checked first)
        return "no connection within 10 s"
    if isinstance(exc, ReadTimeoutError):
        return f"no answer within {timeout:g} s"
    return f"{type(exc).__name__}: {exc}"
