"""Corrections (SPEC section 10): a sender cancels or amends a record or an event it delivered,
for as long as the adapter remembers its key, also after it was posted or its window flushed.

Each correction is first *accepted* on its key (one conditional write: the key's next
revision, remembered under the correction's id so that a retry is a duplicate; refused when
the key is unknown or cancelled), then *applied*, as one more transition of the record's
lifecycle:

- a record in Piriod: an attempt takes its key (submit.Submitter with Taker.CORRECTION) and
  makes Piriod hold what the record is now: the usage deleted (cancel), or deleted and posted
  again with the new quantity (amend), every lost answer settled by asking Piriod first;
- a record waiting in ReplayQueue or DeadLetterQueue: its next attempt applies it (replay
  posts the amended quantity, or answers `cancelled`): `pending`;
- a record whose key another attempt holds: that attempt ends, then this correction is
  applied (or, past one post's time, a replay message does it): `pending`;
- an event in an open generation: its key and its window's total change in one transaction;
- an event in a closed generation: the difference waits in the generation, which is due
  again: the next FlushFunction run restates its usage (`pending`).
"""

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
)

from piriod_adapter.clock import Deadline
from piriod_adapter.lifecycle import (
    CORRECTION,
    HANDED_CORRECTION,
    KeyStatus,
    Outcome,
    Submission,
    Taker,
)
from piriod_adapter.models import (
    MAX_BATCH,
    MAX_EVENT_ID_LENGTH,
    MAX_INTEGER_DIGITS,
    MAX_KEY_LENGTH,
    KeyKind,
    Tenant,
    Usage,
    UsageKey,
    check_quantity,
    plain_decimal,
)
from piriod_adapter.observability import logger
from piriod_adapter.signatures import MAX_ID_LENGTH as MAX_WEBHOOK_ID_LENGTH
from piriod_adapter.table import KeyState, StoreUnavailable, key_pk, key_text
from piriod_adapter.validation import (
    NATIVE_SCOPE,
    FieldProblem,
    _json_number,
    _printable,
    decode_json,
    invalid,
    problems_of,
)

if TYPE_CHECKING:
    from piriod_adapter.aggregate import Aggregate
    from piriod_adapter.runtime import Runtime
    from piriod_adapter.sources import Profile

ALLOWED = "action, key, source, quantity, correction_id"
# Every key the adapter holds can be corrected (SPEC 3's bounds): a record's own
# idempotency_key, `{webhook-id}:{index}` with the longest webhook-id and index, a source's
# event id.
MAX_CORRECTION_KEY_LENGTH = max(
    MAX_KEY_LENGTH,
    MAX_WEBHOOK_ID_LENGTH + len(f":{MAX_BATCH - 1}"),
    MAX_EVENT_ID_LENGTH,
)
CorrectionStatus = Literal["applied", "pending", "duplicate", "not_found", "rejected", "not_stored"]


class CorrectionEntry(BaseModel):
    """One correction: cancel or amend the record (or event) under `key`."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    action: Literal["cancel", "amend"] = Field(description="cancel or amend")
    key: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_CORRECTION_KEY_LENGTH,
            description="the record's key: its idempotency_key, or {webhook-id}:{index} (the "
            "delivery's webhook-id and the record's index); for a source's event, its event_id; "
            "printable characters, as long as any key the adapter holds",
        ),
        AfterValidator(_printable),
    ]
    source: (
        Annotated[
            str,
            Field(
                pattern=r"^[a-z0-9-]{1,64}$",
                description="the source whose event the key names (its route's {source}); "
                "absent: a record of the native route",
            ),
        ]
        | None
    ) = None
    quantity: (
        Annotated[
            Decimal,
            BeforeValidator(_json_number),
            AfterValidator(check_quantity),
            WithJsonSchema(
                {
                    "type": "number",
                    "minimum": 0,
                    "exclusiveMaximum": 10**MAX_INTEGER_DIGITS,
                    "description": "amend only, and required there: the new quantity, as "
                    "a record's (finite, >= 0, below 10^20, at most 40 decimal places, its "
                    "digits kept); for a source's event, as counted (after the profile's "
                    "quantity_factor); not allowed for an event of a count window",
                }
            ),
        ]
        | None
    ) = None
    correction_id: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_KEY_LENGTH,
            description="1 to 255 printable characters: names this correction, so that a "
            "retried delivery applies it once",
        ),
        AfterValidator(_printable),
    ]


class CorrectionBatch(BaseModel):
    """`{"corrections": [c, ...]}`, 1 to 100 entries."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    corrections: list[CorrectionEntry] = Field(min_length=1, max_length=MAX_BATCH)


class CorrectionResult(BaseModel):
    """One correction's outcome, in delivery order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0, le=MAX_BATCH - 1, description="the entry's place in the delivery")
    correction_id: str = Field(description="the entry's correction_id")
    status: CorrectionStatus = Field(
        description="applied, pending, duplicate, not_found or rejected; not_stored only in a 503"
    )
    revision: int | None = Field(
        default=None, ge=1, description="the key's revision this correction is (1, 2, ...)"
    )
    usage_id: int | None = Field(
        default=None, description="applied amend: the new usage's id, when Piriod gave one"
    )
    errors: dict[str, list[str]] | None = Field(
        default=None,
        description="rejected: why, by field (Piriod's error map, or ours); not_found: "
        "errors.key when the key has had the most corrections it takes",
    )
    message: str | None = Field(default=None, description="not_stored: why")


class CorrectionsAnswered(BaseModel):
    """The body of a corrections delivery's 202, or of its 503."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message: str | None = Field(default=None, description="a 503: what the sender must do")
    results: list[CorrectionResult] = Field(max_length=MAX_BATCH)


def parse_corrections(
    raw: bytes, aggregate: "Callable[[str], Aggregate | None]"
) -> list[CorrectionEntry]:
    """The body as corrections, all-or-nothing: 400 (not JSON) or 422 naming index and
    field. `aggregate(source)`: how that source counts its events into windows (None: it
    does not, or it is not configured): an amend of its event is bounded as the event was
    (a count window's is refused, a sum window's keeps at most 18 decimal places)."""
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise invalid([FieldProblem(None, "body", 'must be {"corrections": [...]}')])
    try:
        entries = CorrectionBatch.model_validate(data).corrections
    except ValidationError as exc:
        raise invalid(problems_of(exc, "corrections", ALLOWED)) from None
    problems: list[FieldProblem] = []
    first: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry.action == "amend" and entry.quantity is None:
            problems.append(FieldProblem(index, "quantity", "is required to amend"))
        if entry.action == "cancel" and entry.quantity is not None:
            problems.append(FieldProblem(index, "quantity", "is not allowed on a cancel"))
        spec = aggregate(entry.source) if entry.action == "amend" and entry.source else None
        if spec is not None and spec.function == "count":
            problems.append(
                FieldProblem(
                    index, "quantity", "cannot amend an event of a count window: cancel it"
                )
            )
        elif spec is not None and entry.quantity is not None:
            too_fine = spec.precision_problem(entry.quantity)
            if too_fine is not None:
                problems.append(FieldProblem(index, "quantity", too_fine))
        seen = first.setdefault(entry.correction_id, index)
        if seen != index:
            problems.append(
                FieldProblem(index, "correction_id", f"repeats the correction_id of {seen}")
            )
    if problems:
        raise invalid(problems)
    return entries


def keys_of(entry: CorrectionEntry) -> list[tuple[UsageKey, str]]:
    """The keys a correction may name, with their items' keys, in the order they are tried."""
    return keys_named(entry.key, entry.source)


def keys_named(text: str, source: str | None) -> list[tuple[UsageKey, str]]:
    """The keys `text` may be, with their items' keys, in the order they are tried: a native
    record's own idempotency_key, then a key derived from its delivery; a source's event id
    (the operator's `show KEY` reads a key as a correction names it)."""
    if source is not None:
        keys = [UsageKey(kind=KeyKind.EVENT, scope=f"v1/sources/{source}", text=text)]
    else:
        keys = [
            UsageKey(kind=kind, scope=NATIVE_SCOPE, text=text)
            for kind in (KeyKind.EXPLICIT, KeyKind.DELIVERY)
        ]
    return [(key, key_pk(key)) for key in keys]


def read_corrections(runtime: "Runtime", raw: bytes) -> list[CorrectionEntry]:
    """A corrections body as the route reads it (parse_corrections, with the runtime's
    source profiles saying which sources count their events); the operator's `cancel` and
    `amend` read theirs here too. Raises BodyError (400, 422)."""
    return parse_corrections(raw, lambda name: aggregate_of(runtime, name))


def aggregate_of(runtime: "Runtime", source: str) -> "Aggregate | None":
    """How a source counts its events into windows (None: it does not, or it is not
    configured now)."""
    profile = _profile(runtime, source)
    return profile.aggregate if profile is not None else None


def apply_corrections(
    runtime: "Runtime", entries: Sequence[CorrectionEntry], deadline: Deadline
) -> "list[Corrected]":
    """Accept each correction on its key and apply it (Corrector), with the runtime's
    stores, submit path and queues: what `POST /v1/corrections` does once a delivery is
    read, and what the operator's `cancel` and `amend` do. One Corrected per entry, in
    order; `not_stored` when a store is down (never raised)."""
    settings = runtime.settings
    tenant = Tenant(workspace=settings.piriod_workspace_id, test_mode=settings.piriod_test_mode)
    # a source's records live in Piriod's test data when its profile says test_mode (as the
    # source route posts them): their DELETE and re-post go there too
    profiles = {entry.source: _profile(runtime, entry.source) for entry in entries if entry.source}
    in_test = {
        name for name, profile in profiles.items() if profile is not None and profile.test_mode
    }
    if tenant.test_mode:
        in_test = set()
    corrector = Corrector(
        runtime.store,
        runtime.windows,
        runtime.submitter,
        runtime.queue.place_failed,
        tenant,
        runtime.submitter.post_budget_seconds,
        settings.post_concurrency,
        source_tenants={
            name: tenant.model_copy(update={"test_mode": True}) for name in sorted(in_test)
        },
        cloudevents=frozenset(
            name
            for name, profile in profiles.items()
            if profile is not None and profile.shape == "cloudevents"
        ),
    )
    return corrector.run(entries, deadline)


def _profile(runtime: "Runtime", source: str) -> "Profile | None":
    """A source's profile now (None: not configured, or the configuration cannot be read)."""
    from piriod_adapter.sources import SourcesUnavailable

    try:
        return runtime.sources.profile(source)
    except SourcesUnavailable:
        return None


@dataclass
class Corrected:
    """How one correction ended."""

    status: CorrectionStatus
    revision: int | None = None
    usage_id: int | None = None
    errors: dict[str, list[str]] | None = None
    reason: str | None = None

    def result(self, index: int, correction_id: str) -> CorrectionResult:
        return CorrectionResult(
            index=index,
            correction_id=correction_id,
            status=self.status,
            revision=self.revision,
            usage_id=self.usage_id,
            errors=self.errors,
            message=self.reason if self.status == "not_stored" else None,
        )


@dataclass
class _Pending:
    """A correction accepted on a record's key, to be applied."""

    index: int
    pk: str
    key: UsageKey  # the record's key, as the correction names it
    state: KeyState  # the key as its acceptance left it
    revision: int


@dataclass
class Corrector:
    """One corrections delivery being accepted and applied (the ports: the key store, the
    window store, the submit path and the failure sink)."""

    store: Any  # idempotency.IdempotencyStore (items, accept, wait_while_locked)
    windows: Any  # windows.WindowStore (correct_events)
    submitter: Any  # submit.Submitter
    sink: Any  # lifecycle.FailureSink
    tenant: Tenant
    post_budget_seconds: float
    concurrency: int
    clock: Callable[[], float] = time.time
    source_tenants: dict[str, Tenant] = field(default_factory=dict)  # else `tenant`
    cloudevents: frozenset[str | None] = frozenset()  # sources whose events are CloudEvents
    done: dict[int, Corrected] = field(default_factory=dict)

    def _tenant(self, usage: Usage) -> Tenant:
        """Where in Piriod the record lives: its source's tenant (a test-mode profile's test
        data), else the adapter's."""
        return self.source_tenants.get(usage.source, self.tenant) if usage.source else self.tenant

    def run(self, entries: Sequence[CorrectionEntry], deadline: Deadline) -> list[Corrected]:
        try:
            items = self.store.items([pk for entry in entries for _, pk in keys_of(entry)])
        except StoreUnavailable as exc:
            return [Corrected("not_stored", reason=str(exc)) for _ in entries]
        records: list[tuple[int, UsageKey, str]] = []
        events: list[tuple[int, str]] = []
        for index, entry in enumerate(entries):
            found = next(((key, pk) for key, pk in keys_of(entry) if pk in items), None)
            if found is None and entry.source in self.cloudevents:
                try:
                    found = self._cloudevent(index, entry, items)
                except StoreUnavailable as exc:
                    self.done[index] = Corrected("not_stored", reason=str(exc))
                    continue
                if index in self.done:
                    continue
            if found is None:
                self.done[index] = Corrected("not_found")
            elif "window" in items[found[1]]:
                events.append((index, found[1]))
            else:
                records.append((index, *found))
        if records:
            self._records(entries, records, items, deadline)
        if events:
            self._events(entries, events, deadline)
        return [self.done[index] for index in range(len(entries))]

    def _cloudevent(
        self, index: int, entry: CorrectionEntry, items: dict[str, dict[str, Any]]
    ) -> tuple[UsageKey, str] | None:
        """The key of the CloudEvent a correction names by its `id` (the `event_id` of its
        result; its key is its `source` and `id` together): found by that id in its adapter
        source, when exactly one event of the source has it. Two (two CloudEvent sources
        used one id): rejected, naming the keys to use instead. Raises StoreUnavailable."""
        assert entry.source is not None
        scope = f"v1/sources/{entry.source}"
        pks = self.store.keys_of_event(f"{scope}#{entry.key}")
        if not pks:
            return None
        if len(pks) > 1:
            named = sorted(pk.split("#", 2)[2] for pk in pks)
            self.done[index] = Corrected(
                "rejected",
                errors={"key": [f"names {len(pks)} CloudEvents; name one by its key: {named}"]},
            )
            return None
        text = key_text(pks[0], KeyKind.EVENT, scope)
        if text is None:
            # Kept under a digest (its key is longer than an item key takes): the key cannot
            # be rebuilt from it, and a key rebuilt wrong would be a new record, posted.
            self.done[index] = Corrected(
                "rejected",
                errors={
                    "key": [
                        "this CloudEvent's source and id are too long to find it by its id; "
                        'name it by its key, the JSON array ["<source>","<id>"]'
                    ]
                },
            )
            return None
        items.update(self.store.items(pks))
        if pks[0] not in items:
            return None
        return UsageKey(kind=KeyKind.EVENT, scope=scope, text=text), pks[0]

    # --- records ---------------------------------------------------------------------------

    def _records(
        self,
        entries: Sequence[CorrectionEntry],
        named: list[tuple[int, UsageKey, str]],
        items: dict[str, dict[str, Any]],
        deadline: Deadline,
    ) -> None:
        """Accept each record correction (in delivery order, so that two of one key are two
        revisions), then apply each key's corrections where this delivery applies them, the
        keys concurrently. A duplicate whose key still has a correction to apply (its first
        delivery was answered 503, or stopped) drives it again."""
        accepted: dict[str, list[_Pending]] = defaultdict(list)
        drive: dict[str, _Pending] = {}  # per key, the correction to apply
        for index, key, pk, outcome in self._accept_all(entries, named):
            if isinstance(outcome, StoreUnavailable):
                self.done[index] = Corrected("not_stored", reason=str(outcome))
                continue
            if outcome.duplicate is not None:
                self.done[index] = Corrected("duplicate", revision=outcome.duplicate)
                state = KeyState.from_item(items[pk]) if "status" in items[pk] else None
                if state is not None and state.pending and pk not in drive:
                    drive[pk] = _Pending(index, pk, key, state, outcome.duplicate)
            elif outcome.state is None:
                self.done[index] = Corrected("not_found", errors=outcome.refused)
            else:
                pending = _Pending(index, pk, key, outcome.state, outcome.state.rev)
                accepted[pk].append(pending)
                drive[pk] = pending
        todo = [pending for pending in drive.values() if self._apply_now(pending, deadline)]
        subs = [Submission(n, u, self._tenant(u)) for n, u in enumerate(map(_record, todo))]
        outcomes: list[Outcome] = (
            self.submitter.submit_all(subs, deadline, self.sink, self.concurrency, Taker.CORRECTION)
            if subs
            else []
        )
        applied = {p.pk: self._applied(p, o) for p, o in zip(todo, outcomes, strict=True)}
        for pk, driven in drive.items():
            result = applied.get(pk)
            if result is not None and result.status == "not_stored":
                for index, _, named_pk in named:  # retried whole: every correction of it
                    if named_pk == pk and self.done.get(index, result).status != "not_found":
                        self.done[index] = Corrected("not_stored", reason=result.reason)
                continue
            for pending in accepted.get(pk, []):
                if pending.index in self.done:  # could not be queued for the key's holder
                    continue
                self.done[pending.index] = Corrected(
                    result.status if result is not None else "pending",
                    revision=pending.revision,
                    usage_id=result.usage_id if result and pending is driven else None,
                    errors=result.errors if result is not None else None,
                )

    def _accept_all(
        self, entries: Sequence[CorrectionEntry], named: list[tuple[int, UsageKey, str]]
    ) -> list[tuple[int, UsageKey, str, Any]]:
        """Each correction accepted on its key: one key's in delivery order (they are its
        revisions), the keys side by side. In delivery order: (index, key, pk, what the
        store answered, or the StoreUnavailable it raised)."""
        by_key: dict[str, list[tuple[int, UsageKey, str]]] = defaultdict(list)
        for one in named:
            by_key[one[2]].append(one)

        def accept(of_key: list[tuple[int, UsageKey, str]]) -> list[Any]:
            answers: list[Any] = []
            for index, _, pk in of_key:
                entry = entries[index]
                try:
                    answers.append(
                        self.store.accept(pk, entry.action, _text(entry), entry.correction_id)
                    )
                except StoreUnavailable as exc:
                    answers.append(exc)
            return answers

        groups = list(by_key.values())
        if len(groups) == 1 or self.concurrency <= 1:
            answered = [accept(group) for group in groups]
        else:
            from concurrent.futures import ThreadPoolExecutor

            from piriod_adapter.tracing import tracer

            workers = max(1, min(self.concurrency, len(groups)))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                answered = list(pool.map(tracer.carry(accept), groups))
        found = {
            one[0]: answer
            for group, answers in zip(groups, answered, strict=True)
            for one, answer in zip(group, answers, strict=True)
        }
        return [(index, key, pk, found[index]) for index, key, pk in named]

    def _apply_now(self, pending: _Pending, deadline: Deadline) -> bool:
        """Whether this delivery applies the correction itself: its record is in Piriod (or
        its key free), or its key's holder ends within one post's time; a record waiting in
        a queue is corrected by its next attempt."""
        state = pending.state
        if state.status is KeyStatus.IN_PROGRESS and state.locked(self.clock()):
            wait = min(deadline.remaining(), self.post_budget_seconds)
            try:
                state = self.store.wait_while_locked(pending.pk, deadline, wait) or state
            except StoreUnavailable:
                return self._hand_to_replay(pending)
            pending.state = state
            if state.locked(self.clock()):
                return self._hand_to_replay(pending)
        return state.status in (KeyStatus.POSTED, KeyStatus.RELEASED, KeyStatus.IN_PROGRESS)

    def _hand_to_replay(self, pending: _Pending) -> bool:
        """Another attempt holds the key past one post's time: a ReplayQueue message applies
        the correction once the key is free (its attempt reads the key, and settles the
        holder's post first). Never applies it now."""
        from datetime import UTC, datetime

        from piriod_adapter.models import Failure, FailureKind, QueuedRecord
        from piriod_adapter.tracing import tracer

        now = datetime.now(UTC)
        started = pending.state.attempt_started or now.timestamp()
        message = QueuedRecord(
            usage=_record(pending),
            tenant=self._tenant(_record(pending)),
            failure=Failure(
                kind=FailureKind.AMBIGUOUS,
                error=HANDED_CORRECTION,
                attempted=False,
                at=now,
            ),
            attempts=0,
            first_failure_at=now,
            ambiguous_since=datetime.fromtimestamp(started, UTC),
            trace=tracer.traceparent(),
        )
        placed = self.sink(Submission(0, message.usage, message.tenant), message)
        if placed is None:
            self.done[pending.index] = Corrected(
                "not_stored", reason="could not be queued (SQS unavailable); retry"
            )
        return False

    def _applied(self, pending: _Pending, outcome: Outcome) -> Corrected:
        status = CORRECTION[outcome.fate]
        if status == "not_stored":
            return Corrected("not_stored", reason=outcome.reason)
        logger.info(
            "correction handled",
            extra={"key": pending.pk[:200], "status": status, "revision": pending.revision},
        )
        return Corrected(
            status,  # type: ignore[arg-type]
            revision=pending.revision,
            usage_id=outcome.usage_id if status == "applied" else None,
            errors=outcome.errors,
        )

    # --- events ------------------------------------------------------------------------------

    def _events(
        self, entries: Sequence[CorrectionEntry], named: list[tuple[int, str]], deadline: Deadline
    ) -> None:
        """Counted events: per window and generation, their keys and the difference in one
        transaction (a later correction of the same event in the same delivery goes in a
        transaction after)."""
        rounds: dict[str, list[int]] = defaultdict(list)
        for index, pk in named:
            rounds[pk].append(index)
        while rounds:
            batch = {pk: indexes.pop(0) for pk, indexes in rounds.items()}
            rounds = {pk: indexes for pk, indexes in rounds.items() if indexes}
            try:
                results = self.windows.correct_events(
                    [
                        (
                            pk,
                            entries[index].action,
                            _text(entries[index]),
                            entries[index].correction_id,
                        )
                        for pk, index in batch.items()
                    ],
                    self.clock(),
                    deadline,
                )
            except StoreUnavailable as exc:
                for index in batch.values():
                    self.done[index] = Corrected("not_stored", reason=str(exc))
                continue
            for index, result in zip(batch.values(), results, strict=True):
                self.done[index] = Corrected(
                    result.status, revision=result.revision, errors=result.errors
                )


def _text(entry: CorrectionEntry) -> str | None:
    return None if entry.quantity is None else plain_decimal(entry.quantity)


def _record(pending: _Pending) -> Usage:
    """The record a correction names, as its key remembers it (its quantity as delivered, so
    that it is the record whose key this is)."""
    state, key = pending.state, pending.key
    assert state.line is not None and state.at is not None
    return Usage(
        subscription_line=state.line,
        date_time=state.at,
        quantity=Decimal(state.original or "0"),
        key=key,
        source=key.scope.removeprefix("v1/sources/") if key.kind is KeyKind.EVENT else None,
    )
