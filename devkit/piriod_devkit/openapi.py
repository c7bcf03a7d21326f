"""The sender's contract, `openapi.yaml`: an OpenAPI 3.1 description of the adapter's routes,
generated at build time from the pydantic models the functions validate and answer with.

`piriod-local openapi` writes it; `piriod-local openapi --check` fails when the committed file
is not what the models say (a test runs it, so a field added to a model without regenerating
fails CI). The status codes below are the ones the code can answer; a test reads the code for
every status it builds and fails when one is missing here.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from piriod_devkit import checkout


def __getattr__(name: str) -> Path:
    """OPENAPI_PATH: the checkout's openapi.yaml (looked up when asked for, not at import)."""
    if name == "OPENAPI_PATH":
        return checkout.path("openapi.yaml")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


REF = "#/components/schemas/{model}"

DESCRIPTION = """\
The webhook of the Piriod usage adapter. A meter POSTs usage here; the adapter authenticates
the delivery, validates every record, posts each one to Piriod's `POST /usages/` and keeps
every record it could not post in a queue for replay. A record acknowledged with `202` is in
Piriod exactly once, or waiting in a queue: never lost, never billed twice.

**Signing (native route).** [Standard Webhooks](https://www.standardwebhooks.com/): sign
`{webhook-id}.{webhook-timestamp}.{raw body}` with HMAC-SHA256 keyed by the base64-decoded
part of your `whsec_...` secret, and send `v1,<base64 signature>` in `webhook-signature`
(several, space-separated, while secrets rotate). The timestamp (Unix seconds) must be within
300 seconds of the adapter's clock. The sender's guide (`docs/senders.md`) has code in Python,
Node.js and shell.

**Retrying.** Retry on `429`, `500`, `503` and on no answer, with the same `webhook-id` (or
the same `idempotency_key` per record) and a new timestamp and signature: records already
handled come back as `duplicate`, so a retry never bills twice. Do not retry `400`, `401`,
`404`, `413` or `422` unchanged: the delivery itself must be fixed, and nothing of it was
posted or stored.

**Idempotency.** A record's key is its `idempotency_key`, or `{webhook-id}:{index}`; it is
remembered for 35 days by default (at least 7).

**Corrections.** `POST /v1/corrections`, signed like the native route, cancels or amends
records and events already delivered, for as long as their keys are remembered, also after
they were posted or their window was flushed: each correction is applied exactly once, and is
named by its `correction_id`, so a retried delivery reports it `duplicate`
(`docs/corrections.md`).
"""

RESPONSES: dict[str, tuple[str, str]] = {
    # status: (description, schema)
    "202": (
        "Every record reached a definite state: `posted` (in Piriod; `usage_id` returned), "
        "`duplicate` (already handled; nothing sent again), `queued` (Piriod could not take it "
        "now; it is in the replay queue and will be posted) or `rejected` (kept for a person "
        "to fix and replay; `errors` says why: Piriod's error map, `idempotency_key` for a key "
        "already used for a different record, or `meter_id` for a source meter with no "
        "subscription line). Do not send these records again.",
        "Answered",
    ),
    "400": (
        "The body is not JSON, not UTF-8 text, or nested too deep. Nothing was posted or stored.",
        "Refusal",
    ),
    "401": (
        "Signature verification failed (missing or malformed headers, no matching signature, "
        "or a timestamp more than the tolerance away). Nothing was posted or stored.",
        "Refusal",
    ),
    "404": ("No such route, or no source of that name is configured.", "Refusal"),
    "413": ("The body is over 1 MiB. Nothing was posted or stored.", "Refusal"),
    "422": (
        "Some record is invalid: `errors` lists every problem with the record `index` (null: "
        "the delivery as a whole) and `field`. Validation is all-or-nothing: nothing of the "
        "delivery was posted or stored.",
        "Refusal",
    ),
    "429": (
        "API Gateway throttled the request (the stage's rate limit). Retry later with the "
        "same webhook-id.",
        "Refusal",
    ),
    "500": (
        "An unexpected error in the adapter. Retry the whole delivery: records already "
        "handled are reported as duplicates.",
        "Refusal",
    ),
    "503": (
        "A store is down: the signing secret or the source profiles cannot be read (the check "
        "fails closed), or some record could be neither posted nor stored (then `results` "
        "says which). Retry the whole delivery: records already handled are reported as "
        "duplicates.",
        "Unavailable",
    ),
}
NATIVE_STATUSES = ["202", "400", "401", "413", "422", "429", "500", "503"]
SOURCE_STATUSES = ["202", "400", "401", "404", "413", "422", "429", "500", "503"]
CORRECTIONS_STATUSES = ["202", "400", "401", "413", "422", "429", "500", "503"]
# The corrections route's own answers where they differ from the usage routes': status:
# (component name, description, schema).
CORRECTIONS_RESPONSES: dict[str, tuple[str, str, str]] = {
    "202": (
        "CorrectionsAccepted",
        "Every correction reached a definite state, in `results` (delivery order), with the "
        "key's `revision`: `applied` (Piriod holds what it says: the usage deleted, or deleted "
        "and posted again with the new quantity, `usage_id` the new one's; for an event in an "
        "open window, the window's total changed with it), `pending` (accepted and kept: the "
        "record waits in a queue, its window is restated by the next FlushFunction run, or "
        "Piriod could not be reached), `duplicate` (this correction_id was accepted for this "
        "key before; nothing changed), `not_found` (no record under this key, or it was "
        "cancelled) or `rejected` (Piriod refused the amended quantity, in `errors`; the "
        "amended record is kept for a person). Do not send them again.",
        "CorrectionsAnswered",
    ),
    "422": (
        "CorrectionsInvalid",
        "Some correction is invalid: `errors` lists every problem with the entry's `index` "
        "(null: the delivery as a whole) and `field`: an unknown action, a quantity on a "
        "cancel or missing on an amend, an amend of a count window's event, a correction_id "
        "twice, more than 100 entries. Nothing of the delivery was accepted.",
        "Refusal",
    ),
    "503": (
        "CorrectionsUnavailable",
        "A store is down: the signing secret cannot be read (the check fails closed), or some "
        "correction could be neither applied nor kept (`not_stored` in `results`). Retry the "
        "whole delivery with the same correction_ids: those already accepted are reported as "
        "duplicates.",
        "CorrectionsUnavailable",
    ),
}


def _header(name: str, required: bool, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string", **schema},
    }


def _standard_headers(required: bool, keyed: str) -> list[dict[str, Any]]:
    return [
        _header(
            "webhook-id",
            required,
            "A unique id of the delivery, the same on every retry of it: printable ASCII, at "
            f"most 4096 characters. {keyed}",
            minLength=1,
            maxLength=4096,
            pattern="^[!-~]([ -~]*[!-~])?$",
        ),
        _header(
            "webhook-timestamp",
            required,
            "Unix seconds when this attempt was signed; within 300 seconds of now.",
            pattern="^[0-9]{1,12}$",
        ),
        _header(
            "webhook-signature",
            required,
            "Space-separated `v1,<base64 HMAC-SHA256>` signatures of "
            "`{webhook-id}.{webhook-timestamp}.{raw body}`; any one matching any active secret "
            "passes.",
            minLength=1,
            maxLength=8192,
        ),
    ]


def _schemas() -> dict[str, Any]:
    """Every model's JSON Schema, request models as validated, response models as sent
    (fields that are None are left out of a response, so they are optional, never null)."""
    from piriod_adapter.corrections import CorrectionBatch, CorrectionsAnswered
    from piriod_adapter.models import Answered, Refusal
    from piriod_adapter.validation import NativeBatch, NativeRecord

    schemas: dict[str, Any] = {}

    def add(model: type[BaseModel], mode: str) -> None:
        schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
        for name, definition in schema.pop("$defs", {}).items():
            schemas[name] = _tidy(definition, response=mode == "serialization")
        schemas[model.__name__] = _tidy(schema, response=mode == "serialization")

    add(NativeRecord, "validation")
    add(NativeBatch, "validation")
    add(Refusal, "serialization")
    add(Answered, "serialization")
    unavailable = copy.deepcopy(schemas["Answered"])
    unavailable["required"] = ["message", *unavailable["required"]]
    unavailable["title"] = "NotStored"
    unavailable["description"] = "Every record's result; some are not_stored."
    schemas["Unavailable"] = {
        "title": "Unavailable",
        "description": "The body of a 503: a message alone when nothing was claimed, or with "
        "every record's result when some record could be neither posted nor stored.",
        "anyOf": [{"$ref": REF.format(model="Refusal")}, unavailable],
    }
    add(CorrectionBatch, "validation")
    add(CorrectionsAnswered, "serialization")
    not_stored = copy.deepcopy(schemas["CorrectionsAnswered"])
    not_stored["required"] = ["message", *not_stored["required"]]
    not_stored["title"] = "CorrectionsNotStored"
    not_stored["description"] = "Every correction's result; some are not_stored."
    schemas["CorrectionsUnavailable"] = {
        "title": "CorrectionsUnavailable",
        "description": "The body of a corrections delivery's 503: a message alone when nothing "
        "was accepted, or with every correction's result when some correction could be neither "
        "applied nor kept.",
        "anyOf": [{"$ref": REF.format(model="Refusal")}, not_stored],
    }
    return dict(sorted(schemas.items()))


def _tidy(schema: dict[str, Any], response: bool) -> dict[str, Any]:
    """Drop pydantic's per-field titles; in a response, an optional field is absent rather
    than null."""
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        prop.pop("title", None)
        if response and name not in required and prop.get("default", "") is None:
            prop.pop("default")
            options = [o for o in prop.pop("anyOf", []) if o != {"type": "null"}]
            if len(options) == 1:
                prop.update(options[0])
            elif options:
                prop["anyOf"] = options
    return schema


def _operation(
    operation_id: str,
    summary: str,
    description: str,
    parameters: list[dict[str, Any]],
    statuses: list[str],
    body: dict[str, Any],
    media_types: tuple[str, ...] = ("application/json",),
    own: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One POST; `own` names the response components that replace the shared ones, by
    status."""
    names = {**RESPONSE_NAMES, **(own or {})}
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": description,
        "parameters": parameters,
        "requestBody": {"required": True, "content": dict.fromkeys(media_types, body)},
        "responses": {
            status: {"$ref": f"#/components/responses/{names[status]}"} for status in statuses
        },
    }


RESPONSE_NAMES = {
    "202": "Accepted",
    "400": "BadRequest",
    "401": "Unauthorized",
    "404": "NotFound",
    "413": "TooLarge",
    "422": "Invalid",
    "429": "Throttled",
    "500": "InternalError",
    "503": "Unavailable",
}


def document() -> dict[str, Any]:
    from piriod_adapter import __name__ as package

    native = _operation(
        "postUsages",
        "Report usage in the native format",
        'One record, or `{"usages": [...]}` with 1 to 100 records. Unknown fields are an '
        "error. Records are posted to Piriod concurrently; the answer gives each one's state.",
        _standard_headers(
            required=True, keyed="Records without an idempotency_key are keyed by it."
        ),
        NATIVE_STATUSES,
        {
            "schema": {
                "oneOf": [
                    {"$ref": REF.format(model="NativeRecord")},
                    {"$ref": REF.format(model="NativeBatch")},
                ]
            },
            "examples": {
                "one": {
                    "value": {
                        "subscription_line": 4242,
                        "date_time": "2026-11-26T10:00:00Z",
                        "quantity": 2.5,
                        "idempotency_key": "meter-7-2026-11-26T10",
                    }
                },
                "batch": {
                    "value": {
                        "usages": [
                            {
                                "subscription_line": 4242,
                                "date_time": "2026-11-26T10:00:00Z",
                                "quantity": 3,
                            },
                            {
                                "subscription_line": 4243,
                                "date_time": "2026-11-26T10:00:00+01:00",
                                "quantity": 0.25,
                            },
                        ]
                    }
                },
            },
        },
    )
    source = _operation(
        "postSourceUsages",
        "Report usage from a configured third-party meter",
        "The body is the meter's own payload (JSON or CloudEvents 1.0), mapped onto usages by "
        "the source's profile (docs/sources.md); from there on it is the "
        "native route. The signature headers depend on the profile's scheme: Standard Webhooks "
        "(the `webhook-*` headers), `Stripe-Signature`, or the profile's own header with "
        "`hmac-sha256-hex`.",
        [
            {
                "name": "source",
                "in": "path",
                "required": True,
                "description": "The source's name in the profile document.",
                "schema": {"type": "string", "pattern": "^[a-z0-9-]{1,64}$"},
            },
            *_standard_headers(
                required=False,
                keyed="Records are keyed by the profile's event_id (a CloudEvent's source and "
                "id), not by it.",
            ),
            _header(
                "Stripe-Signature",
                False,
                "scheme `stripe`: `t=<unix seconds>,v1=<hex HMAC-SHA256 of {t}.{raw body}>`",
            ),
        ],
        SOURCE_STATUSES,
        {"schema": {"description": "the meter's own payload, as its profile describes it"}},
        (
            "application/json",
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
        ),
    )
    corrections = _operation(
        "postCorrections",
        "Cancel or amend records and events already delivered",
        '`{"corrections": [...]}` with 1 to 100 entries, each naming a record (or a source\'s '
        "event) by its key: cancel it, or amend its quantity. Validation is all-or-nothing; "
        "each correction is accepted on its key (its next revision) and applied: Piriod's "
        "usage deleted, or deleted and posted again at the same instant. Line and time are "
        "never amended: cancel the record and send a new one (docs/corrections.md).",
        _standard_headers(
            required=True,
            keyed="It keys nothing here: each correction is named by its correction_id.",
        ),
        CORRECTIONS_STATUSES,
        {
            "schema": {"$ref": REF.format(model="CorrectionBatch")},
            "examples": {
                "amend": {
                    "value": {
                        "corrections": [
                            {
                                "action": "amend",
                                "key": "meter-7/2026-11-26T10",
                                "quantity": 3.25,
                                "correction_id": "fix-2026-11-27-001",
                            }
                        ]
                    }
                },
                "cancel": {
                    "value": {
                        "corrections": [
                            {
                                "action": "cancel",
                                "key": "msg_7f3a:0",
                                "correction_id": "fix-2026-11-27-002",
                            },
                            {
                                "action": "cancel",
                                "key": "smp_0002",
                                "source": "egress-bytes",
                                "correction_id": "fix-2026-11-27-003",
                            },
                        ]
                    }
                },
            },
        },
        own={status: name for status, (name, _, _) in CORRECTIONS_RESPONSES.items()},
    )
    responses = {
        RESPONSE_NAMES[status]: _response(description, schema)
        for status, (description, schema) in RESPONSES.items()
    }
    responses |= {
        name: _response(description, schema)
        for name, description, schema in CORRECTIONS_RESPONSES.values()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Piriod usage adapter",
            "version": _version(),
            "description": _paragraphs(DESCRIPTION),
            "x-generated-by": f"piriod-local openapi (from the models of {package})",
        },
        "servers": [
            {
                "url": "https://{api}.execute-api.{region}.amazonaws.com",
                "description": "The WebhookUrl output of the stack, without its path",
                "variables": {"api": {"default": "api-id"}, "region": {"default": "us-east-1"}},
            }
        ],
        "paths": {
            "/v1/usages": {"post": native},
            "/v1/sources/{source}/usages": {"post": source},
            "/v1/corrections": {"post": corrections},
        },
        "components": {"schemas": _schemas(), "responses": responses},
    }


def _response(description: str, schema: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF.format(model=schema)}}},
    }


def _paragraphs(text: str) -> str:
    """Hard-wrapped source text as one line per paragraph (Markdown renders either)."""
    return "\n\n".join(" ".join(p.split("\n")) for p in text.strip().split("\n\n")) + "\n"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("piriod-usage-adapter")
    except PackageNotFoundError:
        return "0.0.0"


class _Dumper(yaml.SafeDumper):
    """Block style for text of several lines, so the descriptions read as written; a value
    used twice is written out twice (no YAML anchors for a reader to chase)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render() -> str:
    header = (
        "# Generated by `piriod-local openapi` from the adapter's pydantic models; do not edit\n"
        "# by hand (`piriod-local openapi --check` is run by the tests).\n"
    )
    return header + yaml.dump(
        document(), Dumper=_Dumper, sort_keys=False, width=96, allow_unicode=True
    )


def main(output: str | None, check: bool) -> int:
    path = Path(output) if output else checkout.path("openapi.yaml")
    text = render()
    if check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} is out of date: run `piriod-local openapi`")
            return 1
        print(f"{path} is up to date")
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0
