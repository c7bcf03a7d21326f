"""Meter profiles (SPEC section 8) as the operator handles them before they go live: check a
document offline (every broken source, naming the source and the field), dry-run one
source's mapping on a sample payload, and sign a payload with a profile's own scheme.

Checking and mapping use the adapter's own code (`piriod_adapter.sources`), so what passes
here is what the webhook accepts."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from piriod_adapter import jsondoc
from piriod_adapter.sources import SOURCE_NAME, Profile, SourcesDocument, SourcesUnavailable
from piriod_operator.errors import one_line


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a profile document: `source` None is the document itself."""

    source: str | None
    field: str
    message: str

    def text(self) -> str:
        where = f"source {self.source!r}" if self.source is not None else "document"
        message = one_line(self.message)
        return f"{where}: {self.field}: {message}" if self.field else f"{where}: {message}"


@dataclass
class Checked:
    """A profile document, checked source by source."""

    profiles: dict[str, Profile] = field(default_factory=dict)  # the sources that validate
    problems: list[Problem] = field(default_factory=list)

    @property
    def broken(self) -> list[str]:
        return sorted({p.source for p in self.problems if p.source is not None})


# pydantic's own words for the commonest slips, said as a profile's author thinks of them
_PLAIN = {
    "extra_forbidden": "is not a field here (misspelt, or at the wrong level?)",
    "missing": "is required",
    "string_type": "must be a string, in quotes",
    "int_type": "must be a whole number, without quotes",
    "int_from_float": "must be a whole number",
    "bool_type": "must be true or false, without quotes",
    "dict_type": "must be an object {...}",
    "model_type": "must be an object {...}",
}


def _messages(exc: ValidationError) -> list[tuple[str, str]]:
    """Every error of a pydantic validation: (field path, message)."""
    found = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"])
        message = _PLAIN.get(str(error["type"]), str(error["msg"]))
        found.append((where, message.removeprefix("Value error, ")))
    return found


def check_document(raw: bytes) -> Checked:
    """Check a profile document offline: the schema, every JMESPath, time formats, factors.
    Every broken source is reported, each problem naming the source and the field."""
    checked = Checked()
    try:
        data = jsondoc.loads(raw)
    except jsondoc.JsonError as exc:
        checked.problems.append(Problem(None, "", f"not valid JSON: {exc}"))
        return checked
    if not isinstance(data, dict):
        checked.problems.append(Problem(None, "", 'must be a JSON object {"version": 1, ...}'))
        return checked
    sources = data.get("sources", {})
    try:  # the document without its sources: version, and no unknown top-level field
        SourcesDocument.model_validate({**data, "sources": {}})
    except ValidationError as exc:
        checked.problems += [Problem(None, where, message) for where, message in _messages(exc)]
    if not isinstance(sources, dict):
        checked.problems.append(Problem(None, "sources", "must be an object of named profiles"))
        return checked
    for name, profile in sources.items():
        if not SOURCE_NAME.fullmatch(name):
            checked.problems.append(
                Problem(name, "(name)", "must be 1 to 64 characters of a-z, 0-9 and '-'")
            )
            continue
        try:
            made = Profile.model_validate(profile)
            made.compiled  # noqa: B018 (every JMESPath compiles, as at load)
        except ValidationError as exc:
            checked.problems += [
                Problem(name, where or "(profile)", message) for where, message in _messages(exc)
            ]
            continue
        except Exception as exc:  # a JMESPath the checks above let through
            checked.problems.append(Problem(name, "(profile)", f"{type(exc).__name__}: {exc}"))
            continue
        checked.profiles[name] = made
    if not checked.problems:
        try:  # the adapter's own load of the whole document must agree
            from piriod_adapter.sources import parse_document

            parse_document(raw)
        except SourcesUnavailable as exc:
            checked.problems.append(Problem(None, "", str(exc)))
    return checked


# --- sources try: a dry run of one source's mapping ------------------------------------------


@dataclass
class Row:
    """What one record of a payload becomes."""

    index: int | None  # its place among the records `records` found (None: the payload)
    outcome: str  # would post | rejected | filtered out | refused
    event_id: str = ""
    line: str = ""
    date_time: str = ""
    quantity: str = ""
    key: str = ""
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class Tried:
    source: str
    status: int  # what the webhook would answer (after a passing signature)
    rows: list[Row] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.status,
            "message": self.message,
            "records": [r.to_dict() for r in self.rows],
            "posted": False,
        }


def try_profile(name: str, profile: Profile, payload: bytes, now: datetime | None = None) -> Tried:
    """What the webhook would do with `payload` on this source, once its signature passes:
    each record's line, instant, quantity after the factor and key; the records the
    `records` filter leaves out (when the expression is a filter it can read); and what
    would be rejected or refused. Nothing is claimed, posted or stored."""
    from piriod_adapter.sources import Mapper
    from piriod_adapter.validation import MAX_BODY_BYTES, BodyError

    if len(payload) > MAX_BODY_BYTES:
        return Tried(name, 413, message=f"the payload is over {MAX_BODY_BYTES} bytes")
    try:
        document = jsondoc.loads(payload)
    except jsondoc.JsonError as exc:
        return Tried(name, 400, message=f"the payload is not JSON: {exc}")
    filtered = _filtered_out(profile, document)
    try:
        usages = Mapper(name, profile, now=now or datetime.now(UTC)).usages(document)
    except BodyError as exc:
        tried = Tried(name, exc.status, message=exc.message)
        tried.rows = [
            Row(p.index, "refused", detail=f"{p.field}: {p.message}") for p in exc.problems
        ]
        tried.rows += filtered
        return tried
    tried = Tried(name, 202, message="accepted (a dry run: nothing was posted)")
    for index, usage in enumerate(usages):
        line = str(usage.subscription_line) if usage.subscription_line is not None else ""
        row = Row(
            index,
            "would post",
            event_id=str((usage.original or {}).get("event_id", "")),
            line=line or f"meter:{usage.meter_id}",
            date_time=usage.date_time_text,
            quantity=usage.quantity_text,
            key=usage.key.text,
        )
        if usage.subscription_line is None:
            row.outcome = "rejected"
            row.detail = f"meter_id: no subscription line for {usage.meter_id!r} in lines"
        tried.rows.append(row)
    tried.rows += filtered
    return tried


def _filtered_out(profile: Profile, document: Any) -> list[Row]:
    """The records a `records` filter (`list[?condition]`) leaves out, by their place in the
    list it filters; [] when the expression is not a filter of a list."""
    import jmespath
    from jmespath.visitor import TreeInterpreter

    if profile.shape != "json":
        return []
    tree = jmespath.compile(profile.records).parsed
    if tree.get("type") != "filter_projection":
        return []
    try:
        from piriod_adapter.sources import _options

        interpreter = TreeInterpreter(_options())
    except ImportError:  # pragma: no cover (the adapter's exact functions moved)
        interpreter = TreeInterpreter()
    left, _, condition = tree["children"]
    try:
        candidates = interpreter.visit(left, document)
        if not isinstance(candidates, list):
            return []
        rows = []
        for place, item in enumerate(candidates):
            if _truthy(interpreter.visit(condition, item)):
                continue
            event_id = ""
            if profile.fields.event_id:
                found = jmespath.search(profile.fields.event_id, item)
                event_id = "" if found is None else str(found)
            rows.append(
                Row(None, "filtered out", event_id=event_id, detail=f"{profile.records} [{place}]")
            )
        return rows
    except Exception:  # the filter cannot be read apart: say nothing rather than guess
        return []


def _truthy(value: Any) -> bool:
    """JMESPath's truth: false, null, and empty strings, lists and objects are false."""
    return not (value is None or value is False or value in ("", [], {}))


def render_tried(tried: Tried, out: Any) -> None:
    headers = ["record", "event_id", "line", "date_time", "quantity", "key", "outcome", "detail"]
    rows = [
        [
            "-" if r.index is None else str(r.index),
            _short(r.event_id, 24),
            _short(r.line, 24),
            r.date_time,
            _short(r.quantity, 24),
            _short(r.key, 32),
            r.outcome,
            _short(r.detail, 80),
        ]
        for r in tried.rows
    ]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    out.write("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    out.write("\n")
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    counts: dict[str, int] = {}
    for r in tried.rows:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    summary = ", ".join(f"{n} {what}" for what, n in counts.items()) or "no records"
    out.write(f"source {tried.source}: HTTP {tried.status} {tried.message}; {summary}\n")
    out.write("dry run: nothing was posted\n")


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# --- send --source: a payload signed with the profile's own scheme -----------------------------


def source_headers(
    profile: Profile,
    body: bytes,
    secrets: Sequence[str],
    now: float | None = None,
    message_id: str | None = None,
) -> dict[str, str]:
    """The headers a meter using this profile sends: its scheme's signature (one per active
    secret where the scheme lists several; the newest where it holds one) and content type.
    A standard-webhooks delivery has `message_id` as its webhook-id (default: a new one)."""
    from piriod_adapter.signatures import sign_hmac_hex, sign_standard, sign_stripe, standard_key

    timestamp = int(time.time() if now is None else now)
    signature = profile.signature
    headers = {"content-type": "application/json"}
    if profile.shape == "cloudevents":
        batch = body.lstrip()[:1] == b"["
        headers["content-type"] = (
            "application/cloudevents-batch+json" if batch else "application/cloudevents+json"
        )
    if signature.scheme == "standard-webhooks":
        message_id = message_id or f"msg_{uuid.uuid4().hex}"
        headers["webhook-id"] = message_id
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = " ".join(
            sign_standard(standard_key(s), message_id, timestamp, body) for s in secrets
        )
    elif signature.scheme == "stripe":
        parts = [sign_stripe(s, timestamp, body).split(",", 1)[1] for s in secrets]
        headers["Stripe-Signature"] = ",".join([f"t={timestamp}", *parts])
    else:
        assert signature.header is not None
        signed_at = timestamp if signature.timestamp_header else None
        headers[signature.header] = sign_hmac_hex(secrets[-1], body, signed_at)
        if signature.timestamp_header:
            headers[signature.timestamp_header] = str(timestamp)
    return headers


def source_url(url: str, name: str) -> str:
    """The source route from a base address, the native route's URL, the stack's
    SourcesUrlTemplate, or the source route itself."""
    url = url.rstrip("/")
    if "{source}" in url:
        return url.replace("{source}", name)
    if url.endswith("/usages") and "/v1/sources/" in url:
        return url
    return f"{url.removesuffix('/v1/usages')}/v1/sources/{name}/usages"
