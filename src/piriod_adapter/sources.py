"""Third-party sources (SPEC section 8): the profile document, where it comes from, and how a
profile maps a meter's own payload onto usages.

A profile is configuration, not code: it names a signature scheme and secret, where the
records are in the payload (JMESPath, the library Powertools ships, with its
`powertools_json` / `powertools_base64` / `powertools_base64_gzip` functions), how to read
each field, and how to find the subscription line. Every mapped record then goes through the
native route's rules (`models.check_*`), and everything after that is the native route's one
path.

Numbers stay exact on every path: the payload is decoded with Decimal numbers, JSON embedded
in a string is decoded the same way (`jsondoc.loads`, not Powertools' `json.loads`, which
makes binary floats), JMESPath's own functions (`sum`, `max`, `to_number`, comparisons ...)
take those Decimals as numbers, and a number literal in an expression is a Decimal too.
"""

import json
import math
import re
import threading
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import (
    ROUND_CEILING,
    ROUND_FLOOR,
    Context,
    Decimal,
    Inexact,
    InvalidOperation,
    localcontext,
)
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from piriod_adapter import jsondoc
from piriod_adapter.aggregate import Aggregate
from piriod_adapter.models import (
    MAX_BATCH,
    MAX_EVENT_ID_LENGTH,
    MAX_LINE,
    KeyKind,
    Usage,
    UsageKey,
    check_instant,
    check_line,
    check_quantity,
    parse_rfc3339,
    to_utc,
)
from piriod_adapter.validation import MAX_BODY_BYTES, FieldProblem, invalid

if TYPE_CHECKING:
    from jmespath.parser import ParsedResult
    from mypy_boto3_ssm import SSMClient

MAX_CACHE_SECONDS = 60.0
MAX_ID_LENGTH = MAX_EVENT_ID_LENGTH
MAX_METER_ID_LENGTH = 256
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SOURCE_NAME = re.compile(r"[a-z0-9-]{1,64}")
_NUMERIC_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_EXACT = Context(prec=200, traps=[Inexact, InvalidOperation])
# Year 9999 is about 2.5e17 microseconds after the epoch; more digits are out of range.
_MAX_EPOCH_MICROS_DIGITS = 18


class SourcesUnavailable(RuntimeError):
    """The profile document cannot be read, or its envelope or one source's profile does not
    validate: the sources route (or, with `source`, that source alone) answers 503, and the
    native route keeps working. The message names the source and the field."""

    def __init__(self, message: str, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source  # set when only this source's profile is at fault

    def copy(self) -> "SourcesUnavailable":
        """The same problem, to raise once more (a kept error is not raised again itself, so
        that its traceback does not grow, nor is it shared between threads)."""
        return SourcesUnavailable(str(self), self.source)


# --- the profile document ----------------------------------------------------------------------


def _compiles(expression: str) -> str:
    import jmespath

    try:
        jmespath.compile(expression)
    except Exception as exc:  # jmespath raises LexerError, ParseError, ...
        # on one line: jmespath's own message ends with the expression and a caret below it
        first = str(exc).splitlines()[0].removesuffix(":").removesuffix(", for expression")
        at = getattr(exc, "lex_position", None)
        where = f" at column {at}" if isinstance(at, int) and "column" not in first else ""
        raise ValueError(f"is not a valid JMESPath expression: {first}{where}") from None
    _check_literals(expression)
    return expression


def _check_literals(expression: str) -> None:
    """Refuse a number literal that JMESPath's lexer (json.loads: binary floats) would bend:
    every literal kept is then exactly the Decimal `_exact_tree` makes of it."""
    from jmespath.lexer import Lexer

    for token in Lexer().tokenize(expression):
        start, length = token["start"], token["end"]
        if token["type"] != "literal" or expression[start] != "`":  # not a 'raw string'
            continue
        text = expression[start + 1 : start + length - 1].replace("\\`", "`")
        try:
            exact = json.loads(text, parse_float=Decimal)
        except ValueError:
            continue  # JMESPath's deprecated unquoted string literal: no number in it
        for number in _decimals_in(exact):
            if _float_decimal(float(number)) != number:
                raise ValueError(
                    f"the literal `{text[:50]}` has more digits than a JMESPath literal keeps "
                    "(15 significant digits are always exact); map the value instead"
                )


def _decimals_in(value: Any) -> list[Decimal]:
    if isinstance(value, Decimal):
        return [value]
    if isinstance(value, list):
        return [d for item in value for d in _decimals_in(item)]
    if isinstance(value, dict):
        return [d for item in value.values() for d in _decimals_in(item)]
    return []


def _float_decimal(value: float) -> Decimal:
    """A float as the decimal it was written as (its shortest repr)."""
    return Decimal(repr(value)) if math.isfinite(value) else Decimal("NaN")


def _exact_literals(value: Any) -> Any:
    if isinstance(value, float):
        return _float_decimal(value)
    if isinstance(value, list):
        return [_exact_literals(item) for item in value]
    if isinstance(value, dict):
        return {key: _exact_literals(item) for key, item in value.items()}
    return value


def _exact_tree(node: Any) -> Any:
    """A copy of a JMESPath syntax tree whose number literals are Decimals (the parser's own
    tree is cached and shared, so it is not changed)."""
    if not isinstance(node, dict):
        return node
    copy = dict(node)
    if copy.get("type") == "literal":
        copy["value"] = _exact_literals(copy["value"])
    if isinstance(copy.get("children"), list):
        copy["children"] = [_exact_tree(child) for child in copy["children"]]
    return copy


def _field_path(node: Any) -> tuple[str, ...] | None:
    """The field names of a JMESPath tree that is only fields (`a`, `a.b.c`), else None."""
    if not isinstance(node, dict):
        return None
    if node.get("type") == "field" and isinstance(node.get("value"), str):
        return (node["value"],)
    if node.get("type") == "subexpression" and isinstance(node.get("children"), list):
        names: list[str] = []
        for child in node["children"]:
            part = _field_path(child)
            if part is None:
                return None
            names.extend(part)
        return tuple(names) or None
    return None


def compile_exact(expression: str) -> "ParsedResult":
    """A JMESPath expression compiled with its number literals as Decimals."""
    import jmespath
    from jmespath.parser import ParsedResult

    parsed = jmespath.compile(expression)
    return ParsedResult(parsed.expression, _exact_tree(parsed.parsed))


JMESPath = Annotated[str, StringConstraints(min_length=1), AfterValidator(_compiles)]
LineId = Annotated[int, Field(ge=1, le=MAX_LINE, strict=True)]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]


def _factor_text(value: Any) -> Any:
    """A factor given as a JSON number is refused in words, not as pydantic's "Input should be
    a valid string": JSON numbers are read as binary floats, which bend decimals."""
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        raise ValueError(
            f'must be a string, e.g. "{value}" in quotes: a JSON number may lose digits'
        )
    return value


def _exact_factor(value: str) -> str:
    if not _NUMERIC_TEXT.fullmatch(value):
        raise ValueError('must be an exact decimal written as a string, e.g. "0.000000001"')
    if Decimal(value) <= 0:
        raise ValueError("must be greater than 0")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SignatureProfile(_Strict):
    scheme: Literal["standard-webhooks", "stripe", "hmac-sha256-hex"]
    secret_id: NonEmpty
    header: NonEmpty | None = None
    timestamp_header: NonEmpty | None = None
    tolerance_seconds: int = Field(default=300, ge=1, le=3600, strict=True)

    @model_validator(mode="after")
    def _headers_for_hmac_only(self) -> "SignatureProfile":
        if self.scheme == "hmac-sha256-hex" and self.header is None:
            raise ValueError("header is required with scheme hmac-sha256-hex")
        if self.scheme != "hmac-sha256-hex" and (self.header or self.timestamp_header):
            raise ValueError("header and timestamp_header apply to hmac-sha256-hex only")
        return self


class FieldPaths(_Strict):
    date_time: JMESPath | None = None
    quantity: JMESPath | None = None  # required, except with aggregate function "count"
    event_id: JMESPath | None = None
    subscription_line: JMESPath | None = None
    meter_id: JMESPath | None = None


class Profile(_Strict):
    signature: SignatureProfile
    shape: Literal["json", "cloudevents"] = "json"
    records: JMESPath = "@"
    fields: FieldPaths
    time_format: Literal["rfc3339", "epoch_seconds", "epoch_millis"] = "rfc3339"
    quantity_factor: Annotated[
        str, BeforeValidator(_factor_text), AfterValidator(_exact_factor)
    ] = "1"
    subscription_line: LineId | None = None
    lines: dict[Annotated[str, StringConstraints(max_length=MAX_METER_ID_LENGTH)], LineId] = {}
    test_mode: bool = Field(default=False, strict=True)
    # SPEC 9: events counted into windows, one usage per line and window (None: one each)
    aggregate: Aggregate | None = None

    @model_validator(mode="after")
    def _complete(self) -> "Profile":
        if self.shape == "json":
            if self.fields.date_time is None:
                raise ValueError("fields.date_time is required with shape json")
            if self.fields.event_id is None:
                raise ValueError("fields.event_id is required with shape json")
        counting = self.aggregate is not None and self.aggregate.function == "count"
        if self.fields.quantity is None and not counting:
            raise ValueError('fields.quantity is required (except with aggregate function "count")')
        if (
            self.fields.subscription_line is None
            and self.subscription_line is None
            and self.fields.meter_id is None
        ):
            raise ValueError(
                "no way to find the line: give fields.subscription_line, "
                "subscription_line, or fields.meter_id with lines"
            )
        return self

    @cached_property
    def compiled(self) -> dict[str, Any]:
        """Every JMESPath of the profile, compiled once."""
        paths = {"records": self.records, **self.fields.model_dump(exclude_none=True)}
        if self.shape == "cloudevents":
            paths.pop("event_id", None)  # the key is the event's source and id
            paths.setdefault("date_time", "time")
        return {name: compile_exact(text) for name, text in paths.items()}

    @cached_property
    def field_paths(self) -> dict[str, tuple[str, ...] | None]:
        """For each of `compiled`, its field names when it is a path of plain fields (`id`,
        `data.object.id`), which `_search` looks up without JMESPath's interpreter (most
        profiles' fields are: the interpreter costs a tenth of an event's CPU); else None."""
        return {name: _field_path(parsed.parsed) for name, parsed in self.compiled.items()}


class SourcesDocument(_Strict):
    """The document around the profiles (`version`, `sources`): a problem here stops the
    whole sources route. Each entry of `sources` is validated on its own (SourceProfiles)."""

    version: Literal[1]
    sources: dict[str, Any]


class SourceProfiles(NamedTuple):
    """A profile document whose envelope validates: each source's profile, or, for a source
    whose profile does not validate, why (that source alone answers 503)."""

    sources: dict[str, Profile]
    broken: dict[str, SourcesUnavailable]

    def profile(self, name: str) -> Profile | None:
        """The named source's profile; None when there is no such source. A source whose
        profile does not validate raises SourcesUnavailable (its message names the field)."""
        if name in self.broken:
            raise self.broken[name].copy()
        return self.sources.get(name)

    @property
    def problems(self) -> list[str]:
        """One message per source that does not validate, in the document's order."""
        return [str(error) for error in self.broken.values()]


def parse_document(raw: bytes) -> SourceProfiles:
    """Read a profile document. A document that is not JSON, or whose envelope (`version`,
    `sources`) does not validate, raises SourcesUnavailable; each profile is then validated
    on its own, and one that does not validate is kept as its error, naming the source and
    the field, without touching the others."""
    try:
        data = jsondoc.loads(raw)
    except jsondoc.JsonError as exc:
        raise SourcesUnavailable(f"sources document is not valid JSON: {exc}") from None
    try:
        envelope = SourcesDocument.model_validate(data)
    except ValidationError as exc:
        raise SourcesUnavailable(f"sources document invalid: {_problem(exc)}") from None
    sources: dict[str, Profile] = {}
    broken: dict[str, SourcesUnavailable] = {}
    for name, entry in envelope.sources.items():
        try:
            sources[name] = _profile(name, entry)
        except SourcesUnavailable as exc:
            broken[name] = exc
    return SourceProfiles(sources=sources, broken=broken)


def _profile(name: str, entry: Any) -> Profile:
    """One source's profile, validated and compiled; a problem raises SourcesUnavailable
    naming the source and the field."""
    shown = f"source {name[:100]!r}"
    if not SOURCE_NAME.fullmatch(name):
        raise SourcesUnavailable(
            f"sources document invalid: {shown}: the name must be 1 to 64 characters of "
            "a-z, 0-9 and -",
            source=name,
        )
    try:
        profile = Profile.model_validate(entry)
    except ValidationError as exc:
        problem = _problem(exc)
        where = f"{shown}, {problem}" if problem.startswith("field ") else f"{shown}: {problem}"
        raise SourcesUnavailable(f"sources document invalid: {where}", source=name) from None
    profile.compiled  # noqa: B018 (compile every JMESPath now, at load)
    return profile


def _problem(exc: ValidationError) -> str:
    """The first problem of a validation error: `field <path>: <why>`, or `<why>` alone
    when it concerns the whole value."""
    error = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(part) for part in error["loc"])
    if error["type"] == "model_type":  # "... or instance of <the model's class name>"
        message = "must be a JSON object"
    else:
        message = error["msg"].removeprefix("Value error, ")
    return f"field {loc}: {message}" if loc else message


# --- where the document comes from, cached with a bound ----------------------------------------


class SourceCatalog:
    """The profile document named by SOURCES_CONFIG: `ssm:<parameter name>` (an SSM String
    parameter), `file:<path>` (relative to the function's code, or absolute), or empty (no
    sources). Read at most once per `ttl_seconds` (at most 60), good or bad, so that an edit
    takes effect without a deploy, and a broken document, or each source whose profile does
    not validate, is logged once per period."""

    def __init__(
        self,
        config: str,
        ssm: "Callable[[], SSMClient]",
        ttl_seconds: float,
        log: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config.strip()
        self._ssm = ssm
        self._ttl = min(ttl_seconds, MAX_CACHE_SECONDS)
        self._log = log
        self._clock = clock
        self._lock = threading.Lock()
        self._loaded: tuple[float, SourceProfiles | SourcesUnavailable] | None = None

    def document(self) -> SourceProfiles:
        with self._lock:
            now = self._clock()
            if self._loaded is None or now - self._loaded[0] >= self._ttl:
                result: SourceProfiles | SourcesUnavailable
                try:
                    result = parse_document(self._read())
                except SourcesUnavailable as exc:
                    self._log(str(exc))
                    result = exc
                else:
                    for problem in result.problems:  # each broken source, once a period
                        self._log(problem)
                self._loaded = (now, result)
            found = self._loaded[1]
        if isinstance(found, SourcesUnavailable):
            raise found.copy()
        return found

    def profile(self, name: str) -> Profile | None:
        """The named source's profile, or None when there is no such source (or the name
        cannot be one). Raises SourcesUnavailable when the document cannot be read, or when
        this source's profile does not validate (then with its `source` set)."""
        if not SOURCE_NAME.fullmatch(name):
            return None
        return self.document().profile(name)

    def _read(self) -> bytes:
        config = self._config
        if not config:
            return b'{"version": 1, "sources": {}}'
        kind, _, where = config.partition(":")
        if kind == "file" and where:
            path = Path(where)
            if not path.is_absolute():
                path = Path(__file__).resolve().parent.parent / path  # the function's code
            try:
                return path.read_bytes()
            except OSError as exc:
                raise SourcesUnavailable(
                    f"cannot read SOURCES_CONFIG file {where!r}: {exc}"
                ) from None
        if kind == "ssm" and where:
            try:
                response = self._ssm().get_parameter(Name=where)
            except Exception as exc:
                raise SourcesUnavailable(
                    f"cannot read SSM parameter {where!r}: {type(exc).__name__}"
                ) from None
            value: str = response["Parameter"]["Value"]
            return value.encode("utf-8", "surrogatepass")
        raise SourcesUnavailable(
            "SOURCES_CONFIG must be 'ssm:<parameter name>', 'file:<path>' or empty"
        )


# --- mapping ----------------------------------------------------------------------------------


class _Unmappable(ValueError):
    """One field of one record cannot be mapped."""


def _search(profile: Profile, name: str, data: Any) -> Any:
    path = profile.field_paths[name]
    if path is not None:  # plain fields: looked up as JMESPath's interpreter looks them up
        for key in path:
            try:
                data = data.get(key)
            except AttributeError:  # a field of anything but an object is null
                return None
            if data is None:
                return None
        return data
    try:
        return profile.compiled[name].search(data, options=_options())
    except jsondoc.JsonError as exc:  # from powertools_json: says why, never echoes the text
        raise _Unmappable(f"could not be evaluated: {exc}") from None
    except Exception as exc:  # a function given the wrong type, bad base64 ...
        raise _Unmappable(f"could not be evaluated: {type(exc).__name__}") from None


@cache
def _options() -> Any:
    """JMESPath options with the exact functions (stateless, so made once)."""
    import jmespath

    return jmespath.Options(custom_functions=_exact_functions()())


@cache
def _exact_functions() -> type:
    """Powertools' JMESPath functions, exact: `powertools_json` decodes with the project's
    bounded lossless decoder (Decimal numbers, depth bound, repeated keys refused) instead of
    `json.loads`; `powertools_base64_gzip` stops at MAX_BODY_BYTES; and JMESPath's own
    functions take a Decimal as a number and keep its digits (built lazily: importing
    jmespath and Powertools' functions is left to the first mapping)."""
    from aws_lambda_powertools.utilities.jmespath_utils import PowertoolsFunctions
    from jmespath.functions import REVERSE_TYPES_MAP, TYPES_MAP, signature

    def python_types(name: str) -> tuple[str, ...]:
        return REVERSE_TYPES_MAP[name] + (("Decimal",) if name == "number" else ())

    class ExactFunctions(PowertoolsFunctions):
        @signature({"types": ["string"]})
        def _func_powertools_json(self, value: str) -> Any:
            try:
                raw = value.encode("utf-8")
            except UnicodeEncodeError:
                raise jsondoc.JsonError("powertools_json: text is not valid Unicode") from None
            try:
                return jsondoc.loads(raw)
            except jsondoc.JsonError as exc:
                raise jsondoc.JsonError(f"powertools_json: {exc}") from None

        @signature({"types": ["string"]})
        def _func_powertools_base64_gzip(self, value: str) -> str:
            import base64

            return _gunzip(base64.b64decode(value), MAX_BODY_BYTES).decode()

        # JMESPath's type checks name Python types; a Decimal is a number.
        def _get_allowed_pytypes(self, types: list[str]) -> tuple[list[str], list[tuple[str, ...]]]:
            allowed: list[str] = []
            subtypes: list[tuple[str, ...]] = []
            for written in types:
                kind, _, subtype = written.partition("-")
                if subtype:
                    subtypes.append(python_types(subtype))
                allowed.extend(python_types(kind))
            return allowed, subtypes

        def _convert_to_jmespath_type(self, pyobject: str) -> str:
            return "number" if pyobject == "Decimal" else TYPES_MAP.get(pyobject, "unknown")

        @signature({"types": []})
        def _func_type(self, arg: Any) -> str:
            if isinstance(arg, bool):
                return "boolean"
            if isinstance(arg, int | float | Decimal):
                return "number"
            return self._convert_to_jmespath_type(type(arg).__name__)

        @signature({"types": []})
        def _func_to_number(self, arg: Any) -> Any:
            if isinstance(arg, bool) or arg is None or isinstance(arg, list | dict):
                return None
            if isinstance(arg, int | float | Decimal):
                return arg
            text = str(arg).strip()
            if not _NUMERIC_TEXT.fullmatch(text):
                return None
            if text.lstrip("+-").isdigit() and len(text) <= jsondoc.MAX_INT_DIGITS:
                return int(text)
            return Decimal(text)

        @signature({"types": []})
        def _func_to_string(self, arg: Any) -> str:
            return arg if isinstance(arg, str) else _json_text(arg)

        @signature({"types": ["number"]})
        def _func_abs(self, arg: Any) -> Any:
            with localcontext(_EXACT):
                return abs(arg)

        @signature({"types": ["number"]})
        def _func_ceil(self, arg: Any) -> Any:
            if isinstance(arg, Decimal):  # no int of a huge exponent's digits
                return arg.to_integral_value(rounding=ROUND_CEILING)
            return math.ceil(arg)

        @signature({"types": ["number"]})
        def _func_floor(self, arg: Any) -> Any:
            if isinstance(arg, Decimal):
                return arg.to_integral_value(rounding=ROUND_FLOOR)
            return math.floor(arg)

        @signature({"types": ["array-number"]})
        def _func_sum(self, arg: list[Any]) -> Any:
            with localcontext(_EXACT):
                return sum(arg)

        @signature({"types": ["array-number"]})
        def _func_avg(self, arg: list[Any]) -> Any:
            if not arg:
                return None
            with localcontext(_EXACT):
                return Decimal(sum(arg)) / len(arg)

    return ExactFunctions


def _gunzip(data: bytes, limit: int) -> bytes:
    """gzip.decompress (every member), refusing more than `limit` bytes of output."""
    out = bytearray()
    while True:
        stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        out += stream.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise ValueError(f"decompresses to more than {limit} bytes")
        if not stream.eof:
            raise ValueError("is not a complete gzip stream")
        data = stream.unused_data
        if not data:
            return bytes(out)


def _json_text(value: Any) -> str:
    """JSON text for `to_string`, a Decimal written as the number it is."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list):
        return "[" + ",".join(_json_text(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (json.dumps(key) + ":" + _json_text(item) for key, item in value.items())
        return "{" + ",".join(items) + "}"
    return json.dumps(value, separators=(",", ":"), default=str)


def _number(value: Any) -> Decimal:
    """A JSON number or a numeric string, exactly (no float, no underscores, no NaN)."""
    if isinstance(value, bool):
        raise _Unmappable("must be a number, not a boolean")
    if isinstance(value, int | Decimal):
        return Decimal(value)
    if isinstance(value, float):  # none of the functions makes one; kept as it is written
        return Decimal(repr(value))
    if isinstance(value, str) and _NUMERIC_TEXT.fullmatch(value.strip()):
        return Decimal(value.strip())
    raise _Unmappable("must be a number or a numeric string")


def _instant(value: Any, time_format: str) -> datetime:
    if time_format == "rfc3339":
        if not isinstance(value, str):
            raise _Unmappable("must be an RFC 3339 string")
        return parse_rfc3339(value)
    number = _number(value)
    try:  # exactly: an exponent that overflows, underflows or rounds is refused, not bent
        with localcontext(_EXACT):
            micros = number.scaleb(3 if time_format == "epoch_millis" else 6)
            if micros != micros.to_integral_value():
                raise _Unmappable("must not be more precise than microseconds")
    except (Inexact, InvalidOperation):
        raise _Unmappable("must be an epoch time no finer than microseconds") from None
    if micros.adjusted() > _MAX_EPOCH_MICROS_DIGITS:  # far beyond year 9999: no big int
        raise _Unmappable("cannot be represented in UTC (before year 1 or after 9999)")
    try:
        return to_utc(EPOCH + timedelta(microseconds=int(micros)))
    except OverflowError:
        raise _Unmappable("cannot be represented in UTC (before year 1 or after 9999)") from None


def _identifier(value: Any, name: str, limit: int) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Unmappable(f"{name} must be a string or an integer")
    text = str(value)
    if not text or len(text) > limit or not text.isprintable():
        raise _Unmappable(f"{name} must be 1 to {limit} printable characters")
    return text


def _original(value: Any) -> Any:
    """A meter's own value, kept for a person (bounded, JSON-safe)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, str):
        return value[:256]
    if value is None or isinstance(value, bool | int | float):
        return value
    return json.dumps(value, default=str)[:256]


class Mapper:
    """Maps one delivery's payload onto usages with one source's profile."""

    def __init__(self, name: str, profile: Profile, now: datetime | None = None) -> None:
        self.name = name
        self.profile = profile
        self.scope = f"v1/sources/{name}"
        self.now = now or datetime.now(UTC)

    def usages(self, document: Any) -> list[Usage]:
        """Every record of the payload as a Usage (see `map`)."""
        return [record.usage for record in self.map(document)]

    def map(self, document: Any) -> "list[Mapped]":
        """Every record of the payload as a Usage with its event id, in the order found. A
        `records` expression that finds an empty list (a filter that keeps nothing) maps to
        no record; any problem, or more than MAX_BATCH records, is a 422 naming the record
        index and the profile field, and nothing is posted."""
        found, problems = self._records(document)
        if not problems and len(found) > MAX_BATCH:
            problems.append(
                FieldProblem(
                    None, "records", f"found {len(found)} records; at most {MAX_BATCH} are accepted"
                )
            )
        if problems:
            raise invalid(problems)
        mapped: list[Mapped] = []
        first_of: dict[UsageKey, int] = {}
        for index, one in enumerate(found):
            try:
                usage = self._usage(one)
            except _FieldError as exc:
                problems.append(FieldProblem(index, exc.field, exc.message))
                continue
            event_id = usage.key.text if one.event is None else one.event["id"]
            mapped.append(Mapped(usage, event_id))
            # one key twice in a delivery is refused, as on the native route
            first = first_of.setdefault(usage.key, index)
            if first != index:
                field = "event_id" if one.key_text is None else "event"
                what = "event id" if one.key_text is None else "CloudEvent source and id"
                problems.append(FieldProblem(index, field, f"repeats the {what} of record {first}"))
        if problems:
            raise invalid(problems)
        return mapped

    def _records(self, document: Any) -> "tuple[list[_Found], list[FieldProblem]]":
        """Each record in the payload, with its key text when the shape decides it."""
        problems: list[FieldProblem] = []
        if self.profile.shape == "json":
            records, _ = self._select(document, None, problems)
            return [_Found(r) for r in records], problems
        # CloudEvents: one event, or a batch (a JSON array); `records` is found in each
        # event, and the key is the event's source and id (and the record's place in it,
        # when `records` finds a list inside an event).
        events = document if isinstance(document, list) else [document]
        found: list[_Found] = []
        for position, event in enumerate(events):
            problem = _cloudevent_problem(event)
            if problem is not None:
                problems.append(FieldProblem(position, "event", problem))
                continue
            records, single = self._select(event, position, problems)
            for number, record in enumerate(records):
                parts = [event["source"], event["id"]] + ([] if single else [number])
                found.append(_Found(record, json.dumps(parts, separators=(",", ":")), event))
        return found, problems

    def _select(
        self, data: Any, position: int | None, problems: list[FieldProblem]
    ) -> tuple[list[Any], bool]:
        """The records `records` finds in `data`, and whether it found one (not a list)."""
        try:
            selected = _search(self.profile, "records", data)
        except _Unmappable as exc:
            problems.append(FieldProblem(position, "records", f"{self.profile.records}: {exc}"))
            return [], True
        if selected is None:
            problems.append(FieldProblem(position, "records", f"{self.profile.records}: no value"))
            return [], True
        if isinstance(selected, list):
            return selected, False
        return [selected], True

    def _raw(self, record: Any, name: str) -> Any:
        """The value a field's JMESPath finds in the record (a problem if none)."""
        try:
            value = _search(self.profile, name, record)
        except _Unmappable as exc:
            raise _FieldError(name, f"{self.profile.compiled[name].expression}: {exc}") from None
        if value is None:
            raise _FieldError(name, f"{self.profile.compiled[name].expression}: no value")
        return value

    def _field(self, name: str, raw: Any, convert: Callable[[Any], Any]) -> Any:
        try:
            return convert(raw)
        except ValueError as exc:  # _Unmappable, and the native rules' own ValueError
            raise _FieldError(name, f"{self.profile.compiled[name].expression}: {exc}") from None

    def _usage(self, found: "_Found") -> Usage:
        profile, record, key_text = self.profile, found.record, found.key_text
        # A CloudEvent's own `time` is the default, wherever `records` points inside it.
        in_event = found.event is not None and profile.fields.date_time is None
        raw_time = self._raw(found.event if in_event else record, "date_time")
        instant = self._field(
            "date_time",
            raw_time,
            lambda v: check_instant(_instant(v, profile.time_format), self.now),
        )
        if "quantity" in profile.compiled:
            raw_quantity = self._raw(record, "quantity")
            quantity = self._field("quantity", raw_quantity, self._quantity)
        else:  # a counting source: each event counts one
            raw_quantity, quantity = None, Decimal(1)
        if key_text is None:
            key_text = self._field(
                "event_id",
                self._raw(record, "event_id"),
                lambda v: _identifier(v, "event_id", MAX_ID_LENGTH),
            )
        meter_id: str | None = None
        line: int | None
        if "subscription_line" in profile.compiled:
            line = self._field(
                "subscription_line", self._raw(record, "subscription_line"), check_line
            )
        elif profile.subscription_line is not None:
            line = profile.subscription_line
        else:
            meter_id = self._field(
                "meter_id",
                self._raw(record, "meter_id"),
                lambda v: _identifier(v, "meter_id", MAX_METER_ID_LENGTH),
            )
            line = profile.lines.get(meter_id)
        original = {
            "event_id": key_text[:256],
            "date_time": _original(raw_time),
            "quantity": _original(raw_quantity),
        }
        if meter_id is not None:
            original["meter_id"] = meter_id
        # Every field is checked above by the rules Usage's own validators apply (check_line,
        # check_instant, check_quantity), so the record is made without validating it again
        # (a tenth of an aggregated event's CPU).
        return Usage.model_construct(
            subscription_line=line,
            date_time=instant,
            quantity=quantity,
            key=UsageKey.model_construct(kind=KeyKind.EVENT, scope=self.scope, text=key_text),
            source=self.name,
            meter_id=meter_id,
            original=original,
        )

    def _quantity(self, value: Any) -> Decimal:
        number = _number(value)
        try:
            with localcontext(_EXACT):
                scaled = number * Decimal(self.profile.quantity_factor)
        except (Inexact, InvalidOperation):
            raise _Unmappable("times quantity_factor is not exact") from None
        return check_quantity(scaled)


class Mapped(NamedTuple):
    """One mapped record, and the event id its result carries so that a sender can match
    results to its events whatever `records` kept: the profile's `event_id` (shape json) or
    the CloudEvent's `id` (several records of one event share it; `index` tells them apart)."""

    usage: Usage
    event_id: str


class _Found(NamedTuple):
    record: Any
    key_text: str | None = None  # set when the shape decides the key (CloudEvents)
    event: Any = None  # the CloudEvent the record came from


class _FieldError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _cloudevent_problem(event: Any) -> str | None:
    """Why `event` is not a structured CloudEvents 1.0 event, or None."""
    if not isinstance(event, dict):
        return "must be a CloudEvents object"
    if event.get("specversion") != "1.0":
        return 'specversion must be "1.0"'
    for attribute in ("id", "source", "type"):
        value = event.get(attribute)
        if not isinstance(value, str) or not value or len(value) > 1024:
            return f"{attribute} must be a non-empty string (at most 1024 characters)"
    return None


def resolve_meter_line(usage: Usage, catalog: SourceCatalog) -> Usage:
    """An unmapped meter's record with its line, once the source's profile maps it."""
    if usage.subscription_line is not None or usage.source is None or usage.meter_id is None:
        return usage
    profile = catalog.profile(usage.source)
    line = profile.lines.get(usage.meter_id) if profile is not None else None
    return usage if line is None else usage.model_copy(update={"subscription_line": line})
