"""The clients of one Lambda container: created lazily, once, and handed to the logic."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from piriod_adapter.settings import Settings, load_settings

if TYPE_CHECKING:
    import urllib3
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_secretsmanager import SecretsManagerClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_ssm import SSMClient

    from piriod_adapter.clock import Deadline
    from piriod_adapter.idempotency import IdempotencyStore
    from piriod_adapter.lifecycle import Outcome, Submission
    from piriod_adapter.models import Usage
    from piriod_adapter.piriod import PiriodClient
    from piriod_adapter.queue import FailureQueue
    from piriod_adapter.secrets import SecretStore
    from piriod_adapter.sources import SourceCatalog
    from piriod_adapter.submit import Submitter
    from piriod_adapter.tracing import Tracer
    from piriod_adapter.windows import WindowStore

STORE_RESERVE_SECONDS = 2.0  # time kept to store a record after its post


class Runtime:
    """Everything a handler needs. Endpoints follow boto3's own AWS_ENDPOINT_URL(_<SERVICE>)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings

    @cached_property
    def settings(self) -> Settings:
        return self._settings or load_settings()

    @cached_property
    def tracer(self) -> Tracer:
        """The adapter's tracer (piriod_adapter.tracing), on or off as the settings say
        (PIRIOD_TRACING): on, OpenTelemetry is imported and its exporter made here."""
        from piriod_adapter.tracing import tracer

        tracer.configure(self.settings)
        return tracer

    @cached_property
    def _session(self) -> Any:
        """One botocore session for every client: its loaders and caches are shared. botocore
        alone: boto3 adds nothing these clients use, and its import (s3transfer,
        multiprocessing) costs about 25 ms of a cold start."""
        from piriod_adapter.awsclients import session

        made = session()
        self.tracer.watch_aws(made)
        return made

    def _client(self, service: str) -> Any:
        from botocore.config import Config

        config = Config(
            connect_timeout=1,
            read_timeout=self.settings.aws_read_timeout,
            retries={"mode": "standard", "total_max_attempts": 2},
            max_pool_connections=max(10, self.settings.post_concurrency),
            # The requests are built here from typed values; botocore's own check of every
            # parameter costs about a tenth of the CPU of a record (measured by make bench).
            parameter_validation=False,
        )
        return self._session.create_client(service, config=config)

    @cached_property
    def sqs(self) -> SQSClient:
        client: SQSClient = self._client("sqs")
        return client

    @cached_property
    def dynamodb(self) -> DynamoDBClient:
        client: DynamoDBClient = self._client("dynamodb")
        return client

    @cached_property
    def secretsmanager(self) -> SecretsManagerClient:
        client: SecretsManagerClient = self._client("secretsmanager")
        return client

    @cached_property
    def cloudwatch(self) -> Any:
        """For the operator's status view only (the functions publish metrics as EMF logs)."""
        return self._client("cloudwatch")

    @cached_property
    def ssm(self) -> SSMClient:
        client: SSMClient = self._client("ssm")
        return client

    @cached_property
    def http(self) -> urllib3.PoolManager:
        import urllib3

        return urllib3.PoolManager(
            num_pools=4, maxsize=self.settings.post_concurrency, block=True, retries=False
        )

    @cached_property
    def secrets(self) -> SecretStore:
        from piriod_adapter.secrets import SecretStore

        return SecretStore(self.secretsmanager, ttl_seconds=self.settings.secret_cache_seconds)

    @cached_property
    def piriod(self) -> PiriodClient:
        from piriod_adapter.piriod import PiriodClient

        secret_id = self.settings.piriod_token_secret_id
        return PiriodClient(
            self.http,
            self.settings.api_url,
            token=lambda stale: self.secrets.piriod_token(secret_id, stale=stale),
            connect_timeout=self.settings.piriod_connect_timeout,
            read_timeout=self.settings.piriod_read_timeout,
        )

    @cached_property
    def store(self) -> IdempotencyStore:
        from piriod_adapter.idempotency import IdempotencyStore

        return IdempotencyStore(
            self.dynamodb, self.settings.idempotency_table, self.settings.idempotency_ttl_days
        )

    @cached_property
    def windows(self) -> WindowStore:
        from piriod_adapter.windows import WindowStore

        return WindowStore(
            self.dynamodb, self.settings.idempotency_table, self.settings.window_shards
        )

    @cached_property
    def queue(self) -> FailureQueue:
        from piriod_adapter.queue import FailureQueue

        return FailureQueue(
            lambda: self.sqs, self.settings.replay_queue_url, self.settings.dead_letter_queue_url
        )

    @cached_property
    def submitter(self) -> Submitter:
        from piriod_adapter.submit import Submitter

        settings = self.settings
        return Submitter(
            piriod=self.piriod,
            store=self.store,
            post_budget_seconds=settings.piriod_connect_timeout
            + settings.piriod_read_timeout
            + STORE_RESERVE_SECONDS,
            settle_after_seconds=settings.settle_after_seconds,
        )

    @cached_property
    def sources(self) -> SourceCatalog:
        from piriod_adapter.observability import logger
        from piriod_adapter.sources import SourceCatalog

        return SourceCatalog(
            self.settings.sources_config,
            ssm=lambda: self.ssm,
            ttl_seconds=self.settings.sources_cache_seconds,
            log=lambda problem: logger.error(problem, extra={"setting": "SOURCES_CONFIG"}),
        )

    def read_secrets_together(self) -> None:
        """What a native delivery reads from Secrets Manager (its signing secrets, then the
        Piriod token to post), read side by side when not cached: the first delivery of a
        container waits for one round trip instead of two. Each is still read, and any
        failure answered for, where it is needed. Meanwhile, on a container's first delivery,
        the DynamoDB client it needs next is made: making it is work for the CPU, and the
        reads mostly wait for Secrets Manager."""
        settings = self.settings
        made = "dynamodb" in self.__dict__  # (cached_property) a warm container
        self.secrets.prefetch(
            [settings.webhook_secret_id, settings.piriod_token_secret_id],
            meanwhile=None if made else self._make_dynamodb_client,
        )

    def _make_dynamodb_client(self) -> None:
        import contextlib

        with contextlib.suppress(Exception):  # met again, and answered, where it is used
            _ = self.dynamodb

    def prepare(self) -> None:
        """Make what every invocation needs, without a request: the settings, the AWS
        clients, the HTTP pool and the submit path (SnapStart does this before its
        snapshot)."""
        for name in (
            "settings",
            "tracer",  # with tracing on, OpenTelemetry is imported before the snapshot too
            "sqs",
            "dynamodb",
            "secretsmanager",
            "http",
            "submitter",
            "queue",
        ):
            getattr(self, name)

    def refresh(self) -> None:
        """Forget what may be stale or shared after a restore: cached secrets (a rotation
        may have happened) and open connections (their sockets are gone)."""
        if "secrets" in self.__dict__:
            self.secrets.clear()
        if "http" in self.__dict__:
            self.http.clear()
        if "tracer" in self.__dict__:
            self.tracer.clear()

    def count_event(self, sub: Submission, deadline: Deadline) -> Outcome | None:
        """An aggregating source's event counted into its window (SPEC 9: an operator's
        replay of a dead-lettered event); None when its source does not aggregate."""
        from piriod_adapter.counting import Counting, count_one
        from piriod_adapter.models import KeyKind

        usage = sub.usage
        if usage.source is None or usage.key.kind is not KeyKind.EVENT:
            return None
        profile = self.sources.profile(usage.source)
        if profile is None or profile.aggregate is None:
            return None
        counting = Counting(
            profile.aggregate,
            usage.source,
            sub.tenant,
            self.windows,
            self.submitter.place,
            self.queue.place_failed,
            self.settings.idempotency_ttl_days,
        )
        return count_one(counting, sub, deadline)

    def resolve_usage(self, usage: Usage) -> Usage:
        """A record with what can be mapped now (a meter's line, added to its profile)."""
        from piriod_adapter.sources import resolve_meter_line

        return resolve_meter_line(usage, self.sources)


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    """The container's runtime, created on first use."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime()
    return _runtime


def reset_runtime(runtime: Runtime | None = None) -> None:
    """Drop (or replace) the container's runtime: tests and the local server use this.
    Tracing is off until a runtime's settings turn it on again."""
    global _runtime
    _runtime = runtime
    from piriod_adapter.tracing import tracer

    tracer.reset()


def tracer_of(runtime: Callable[[], Runtime]) -> Tracer:
    """The runtime's tracer; when its settings cannot be read, the tracer as it is (off
    unless an earlier runtime turned it on): the handler then answers as it would without
    tracing (a 500 naming the setting), which the span must not get in the way of."""
    try:
        return runtime().tracer
    except Exception:
        from piriod_adapter.tracing import tracer

        return tracer
