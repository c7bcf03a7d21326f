"""Function settings, read from the environment once per container (never at import time)."""

import os
import re
from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

NonEmpty = Annotated[str, Field(min_length=1)]
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)


class SettingsError(RuntimeError):
    """A required setting is missing or malformed; the message names the variable."""


class Settings(BaseModel):
    """Everything the functions read from their environment (SPEC section 6)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    # http(s)://host[:port][/path]: checked here rather than by pydantic's URL type, whose
    # import alone costs about 40 ms of a cold start.
    piriod_api_url: str = Field(
        default="https://api.piriod.com",
        alias="PIRIOD_API_URL",
        pattern=r"^https?://[A-Za-z0-9.\-\[\]:]+(:\d{1,5})?(/[^\s?#]*)?$",
    )
    piriod_workspace_id: NonEmpty = Field(alias="PIRIOD_WORKSPACE_ID")
    piriod_test_mode: bool = Field(default=False, alias="PIRIOD_TEST_MODE")
    # OpenTelemetry spans, exported over OTLP/HTTP (template parameters Tracing,
    # TracingEndpoint, TracingHeaders; docs/operations.md, Tracing). Off by default.
    tracing: bool = Field(default=False, alias="PIRIOD_TRACING")
    # Where spans are POSTed: an OTLP/HTTP traces URL. The default is the ADOT collector
    # Lambda layer's (and any local collector's) OTLP/HTTP receiver.
    tracing_endpoint: str = Field(
        default="http://localhost:4318/v1/traces",
        alias="PIRIOD_TRACING_ENDPOINT",
        pattern=r"^https?://[^\s]+$",
    )
    # Headers sent with every export, `key=value,key2=value2` (values percent-encoded), as
    # OTEL_EXPORTER_OTLP_HEADERS: they may carry a token, so they are never logged or shown.
    tracing_headers: SecretStr = Field(default=SecretStr(""), alias="PIRIOD_TRACING_HEADERS")
    # How long one export may take, retries included, before its spans are dropped.
    tracing_timeout: float = Field(default=2.0, gt=0, le=10, alias="PIRIOD_TRACING_TIMEOUT")
    # Set by Lambda; resource attributes of the spans (faas.name, cloud.region).
    function_name: str = Field(default="", alias="AWS_LAMBDA_FUNCTION_NAME")
    aws_region: str = Field(default="", alias="AWS_REGION")
    piriod_token_secret_id: NonEmpty = Field(alias="PIRIOD_TOKEN_SECRET_ID")
    webhook_secret_id: NonEmpty = Field(alias="WEBHOOK_SECRET_ID")
    replay_queue_url: NonEmpty = Field(alias="REPLAY_QUEUE_URL")
    dead_letter_queue_url: NonEmpty = Field(alias="DEAD_LETTER_QUEUE_URL")
    idempotency_table: NonEmpty = Field(alias="IDEMPOTENCY_TABLE")
    sources_config: str = Field(default="", alias="SOURCES_CONFIG")
    # How long a read of SOURCES_CONFIG is used before it is read again (SPEC: at most 60 s).
    sources_cache_seconds: float = Field(default=60.0, ge=0, le=60, alias="SOURCES_CACHE_SECONDS")

    # Counter shards per aggregation window (SPEC 9): concurrent deliveries to one line and
    # window add to different items, so that they rarely conflict; a close sums them.
    window_shards: int = Field(default=8, ge=1, le=32, alias="WINDOW_SHARDS")
    idempotency_ttl_days: int = Field(default=35, ge=7, alias="IDEMPOTENCY_TTL_DAYS")
    post_concurrency: int = Field(default=16, ge=1, le=64, alias="POST_CONCURRENCY")
    piriod_connect_timeout: float = Field(default=3.0, gt=0, le=30, alias="PIRIOD_CONNECT_TIMEOUT")
    piriod_read_timeout: float = Field(default=8.0, gt=0, le=60, alias="PIRIOD_READ_TIMEOUT")
    replay_max_attempts: int = Field(default=8, ge=1, le=1000, alias="REPLAY_MAX_ATTEMPTS")
    replay_backoff_seconds: float = Field(default=60.0, ge=0, alias="REPLAY_BACKOFF_SECONDS")
    # Read timeout of the AWS clients (DynamoDB, SQS, Secrets Manager answer in milliseconds;
    # a slow answer is a failure to store, and the caller is told to retry).
    aws_read_timeout: float = Field(default=3.0, gt=0, le=30, alias="AWS_CLIENT_READ_TIMEOUT")
    secret_cache_seconds: int = Field(default=300, ge=0, le=3600, alias="SECRET_CACHE_SECONDS")
    # An ambiguous post is looked up in Piriod only once it is at least this old, so that a
    # request still in flight inside Piriod cannot land after the lookup said "not there".
    settle_after_seconds: float = Field(default=60.0, ge=0, alias="SETTLE_AFTER_SECONDS")
    # Local only (env/local.json): the time the sample events in events/ are signed at, so
    # `sam local invoke -e events/<file>.json` works as committed. Honoured only when
    # `sam local` runs the function (it sets AWS_SAM_LOCAL=true); the template declares the
    # variable only for local testing (AwsEndpointUrl set). See `signature_clocks`.
    sample_signature_timestamp: int | None = Field(
        default=None, ge=0, le=10**11, alias="SAMPLE_SIGNATURE_TIMESTAMP"
    )
    aws_sam_local: str = Field(default="", alias="AWS_SAM_LOCAL")

    @field_validator("sources_config")
    @classmethod
    def _sources_config(cls, value: str) -> str:
        value = value.strip()
        kind, _, where = value.partition(":")
        if value and (kind not in ("ssm", "file") or not where):
            raise ValueError("must be 'ssm:<parameter name>', 'file:<path>' or empty")
        return value

    @field_validator("tracing_headers")
    @classmethod
    def _headers(cls, value: SecretStr) -> SecretStr:
        # The message names the rule, never the value (it may hold a token).
        for item in value.get_secret_value().split(","):
            key = item.partition("=")[0].strip()
            if item.strip() and ("=" not in item or not _HEADER_NAME.fullmatch(key)):
                raise ValueError("must be key=value pairs separated by commas")
        return value

    @field_validator("sample_signature_timestamp", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("piriod_test_mode", "tracing", mode="before")
    @classmethod
    def _strict_bool(cls, value: object) -> object:
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in {"true", "false"}:
                raise ValueError("must be 'true' or 'false'")
            return lowered == "true"
        return value

    @property
    def api_url(self) -> str:
        return self.piriod_api_url.rstrip("/")

    def signature_clocks(self, now: float) -> tuple[float, ...]:
        """The times a delivery's signature is checked at: now; and under `sam local` alone,
        also the sample events' signing time. A deployed function never has AWS_SAM_LOCAL, so
        there a signature is only ever checked against now."""
        sample = self.sample_signature_timestamp
        if sample is None or self.aws_sam_local != "true":
            return (now,)
        return (now, float(sample))


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from the environment; a bad or missing variable raises naming it."""
    env = os.environ if environ is None else environ
    try:
        return Settings.model_validate(dict(env))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "?"
            problems.append(f"{name}: {error['msg']}")
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from None


def tracing_headers(settings: Settings) -> dict[str, str]:
    """PIRIOD_TRACING_HEADERS as a dict: `key=value,key2=value2`, values percent-encoded
    (the form of OTEL_EXPORTER_OTLP_HEADERS); names lower-cased."""
    from urllib.parse import unquote

    headers: dict[str, str] = {}
    for item in settings.tracing_headers.get_secret_value().split(","):
        if item.strip():
            key, _, value = item.partition("=")
            headers[key.strip().lower()] = unquote(value.strip())
    return headers
