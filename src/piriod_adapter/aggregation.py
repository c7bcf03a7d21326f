"""Aggregation windows (SPEC section 9): a source profile's `aggregate` block, counting a
delivery's events into their windows exactly once, and closing due windows into usages.

Counting (the webhook, and the operator's replay of a dead-lettered event): each mapped
event is bounded first (`check_events`: its age, its precision), then its key and its
addition to its window commit together (windows.WindowStore.count). The answer per event is
`aggregated` (window start and generation), `duplicate`, `rejected` (kept in
DeadLetterQueue: an unmapped meter, a key reused for another event, a window past its
bounds) or, when the store cannot be written, not stored (the delivery is answered 503).

Closing (FlushFunction, every minute): every generation due by now is closed (no event joins
it afterwards) and its total becomes one usage at window start + g seconds, submitted through
the one record lifecycle (submit.Submitter: claim, post, settle an unseen post by lookup,
queue), keyed by source, line, window start and generation, so that two flushers, a crash
halfway, or a replay post it once. A total of zero is not posted.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict

from piriod_adapter.clock import Deadline
from piriod_adapter.idempotency import StoreUnavailable, Taker, key_pk
from piriod_adapter.models import (
    Failure,
    FailureKind,
    KeyKind,
    QueuedRecord,
    Status,
    Tenant,
    Usage,
    UsageKey,
    utc_text,
)
from piriod_adapter.observability import logger
from piriod_adapter.submit import KEY_CONFLICT, FailureSink, Outcome, Submission
from piriod_adapter.tracing import tracer  # tracing
from piriod_adapter.validation import FieldProblem
from piriod_adapter.windows import (
    MAX_ACTIONS,
    MAX_FRACTION_DIGITS,
    ChunkResult,
    EventWrite,
    Generation,
    GenState,
    NewGeneration,
    Open,
    WindowId,
    WindowWrite,
    from_units,
    to_units,
)

DAY = 86_400
MAX_AGE_SECONDS = 35 * DAY  # the longest max_age a profile may have
MAX_FUTURE_SECONDS = 300
CONFLICT_TRIES = 12
ROUNDS = 8  # a chunk's events move on at most this many times (closed, full, conflict)
PARALLEL_CHUNKS = 2  # a delivery's first transactions run side by side
TOTAL_BOUND = (
    "would take its window's total past 10^20 (the total is kept in WindowShards counter "
    "shards, each holding at most its share of that bound); not counted"
)
FLUSH_LIMIT = 2_000  # generations one run closes at most (the rest: the next run)

# --- the profile's block -------------------------------------------------------------------

_DURATION = re.compile(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", re.ASCII)


def duration_seconds(text: str) -> int:
    """An ISO 8601 duration of days, hours, minutes and seconds (PT5M, P1D, PT1H30M)."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration such as PT5M, PT1H or P1D")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _window(text: str) -> str:
    seconds = duration_seconds(text)
    if seconds <= 0 or DAY % seconds:
        raise ValueError(f"{text} must divide a day (e.g. PT1M, PT5M, PT15M, PT1H, P1D)")
    return text


def _bounded(low: int, high: int, what: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if not low <= duration_seconds(text) <= high:
            raise ValueError(f"{what}")
        return text

    return check


class Aggregate(BaseModel):
    """A source's `aggregate` block (SPEC section 9)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    function: Literal["sum", "count"]
    window: Annotated[str, AfterValidator(_window)]
    lateness: Annotated[str, AfterValidator(_bounded(0, DAY, "must be PT0S to P1D"))] = "PT5M"
    max_age: Annotated[
        str, AfterValidator(_bounded(3_600, MAX_AGE_SECONDS, "must be PT1H to P35D"))
    ] = "P35D"

    @property
    def window_seconds(self) -> int:
        return duration_seconds(self.window)

    @property
    def lateness_seconds(self) -> int:
        return duration_seconds(self.lateness)

    @property
    def max_age_seconds(self) -> int:
        return duration_seconds(self.max_age)

    def window_start(self, instant: datetime) -> datetime:
        """The start of the window holding `instant`, aligned to UTC midnight."""
        instant = instant.astimezone(UTC)
        midnight = instant.replace(hour=0, minute=0, second=0, microsecond=0)
        into = int((instant - midnight).total_seconds())
        return midnight + timedelta(seconds=into - into % self.window_seconds)


def check_events(usages: Sequence[Usage], spec: Aggregate, now: datetime) -> list[FieldProblem]:
    """The bounds of an aggregating source, before anything is counted: an event older than
    `max_age` or more than 5 minutes ahead, and a quantity finer than a total can keep."""
    problems = []
    for index, usage in enumerate(usages):
        age = (now - usage.date_time).total_seconds()
        if age > spec.max_age_seconds:
            problems.append(
                FieldProblem(
                    index, "date_time", f"is older than the source's max_age ({spec.max_age})"
                )
            )
        elif -age > MAX_FUTURE_SECONDS:
            problems.append(FieldProblem(index, "date_time", "is more than 5 minutes ahead"))
        exponent = usage.quantity.normalize().as_tuple().exponent
        if spec.function == "sum" and isinstance(exponent, int) and exponent < -MAX_FRACTION_DIGITS:
            problems.append(
                FieldProblem(
                    index,
                    "quantity",
                    f"must have at most {MAX_FRACTION_DIGITS} decimal places on an "
                    "aggregating source (a window's total keeps 38 digits)",
                )
            )
    return problems


def _units(usage: Usage, spec: Aggregate) -> int:
    if spec.function == "count":
        return to_units(Decimal(1))
    return to_units(usage.quantity)


# --- counting ------------------------------------------------------------------------------


class Counter(Protocol):
    """What counting needs of the window store."""

    def open_generations(self, windows: Sequence[WindowId]) -> dict[WindowId, Open]: ...

    def reread(self, window: WindowId) -> Open: ...

    def remember(self, window: WindowId, known: Open) -> None: ...

    def shard_for(self, known: Open) -> int: ...

    def count(
        self, events: Sequence[EventWrite], windows: Sequence[WindowWrite]
    ) -> ChunkResult: ...


@dataclass(frozen=True)
class Counted:
    """How one event ended: its result's status and window, or not stored (status None)."""

    status: Status | None
    window_start: datetime | None = None
    generation: int | None = None
    errors: dict[str, list[str]] | None = None
    reason: str | None = None


class WindowFull(Exception):
    """An event would need a generation past the window's bound (one per second)."""


@dataclass
class _Event:
    index: int
    usage: Usage
    window: WindowId
    units: int


@dataclass
class Counting:
    """One delivery of an aggregating source being counted."""

    spec: Aggregate
    source: str
    tenant: Tenant
    store: Counter
    sink: FailureSink
    ttl_days: int
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    outcomes: dict[int, Counted] = field(default_factory=dict)
    singles: set[WindowId] = field(default_factory=set)  # windows whose shard is full
    bases: dict[WindowId, int] = field(default_factory=dict)  # this delivery's shard per window
    full_tries: dict[int, int] = field(default_factory=dict)  # an event's shards without room

    @property
    def series(self) -> str:
        """What this source's windows count now (windows.WindowId)."""
        mode = "-test" if self.tenant.test_mode else ""
        return f"{self.spec.function}-{self.spec.window_seconds}s{mode}"

    def run(self, usages: Sequence[Usage], deadline: Deadline) -> list[Counted]:
        """Count every event. Raises WindowFull (a 422) before anything is written when an
        event's window has had all its generations."""
        events: list[_Event] = []
        for index, usage in enumerate(usages):
            if usage.subscription_line is None:
                self._reject(index, usage, {"meter_id": [_no_line(usage)]})
                continue
            start = self.spec.window_start(usage.date_time)
            window = WindowId(self.source, usage.subscription_line, start, self.series)
            events.append(_Event(index, usage, window, _units(usage, self.spec)))
        try:
            opens = self.store.open_generations([e.window for e in events]) if events else {}
        except StoreUnavailable as exc:
            return self._finish(usages, events, str(exc))
        full = [e for e in events if opens[e.window].generation >= self.spec.window_seconds]
        if full:
            raise WindowFull([e.index for e in full])
        # By line and window, so that a chunk touches few windows (fewer shard additions).
        pending = sorted(events, key=lambda e: (e.window.line, e.window.start))
        try:
            pending = self._first_round(pending, opens, deadline)
        except StoreUnavailable as exc:
            return self._finish(usages, events, str(exc))
        rounds = 0
        while pending:
            rounds += 1
            if deadline.remaining() <= 0 or rounds > ROUNDS * (len(events) + 1):
                return self._finish(usages, pending, "function time ran out; retry")
            chunk, pending = _chunk(pending, opens, self.singles)
            try:
                left = self._count_chunk(chunk, opens, deadline)
            except StoreUnavailable as exc:
                return self._finish(usages, chunk + pending, str(exc))
            pending = left + pending
        return self._finish(usages, [], None)

    def _first_round(
        self, pending: list[_Event], opens: dict[WindowId, Open], deadline: Deadline
    ) -> list[_Event]:
        """The delivery's first chunks side by side, each its own transaction (a delivery of
        100 events needs two); what must go again is returned. Raises StoreUnavailable (what
        was committed keeps its outcome)."""
        chunks: list[list[_Event]] = []
        rest = pending
        while rest and len(chunks) < PARALLEL_CHUNKS:
            chunk, rest = _chunk(rest, opens, self.singles)
            chunks.append(chunk)
        if len(chunks) < 2:
            return chunks[0] + rest if chunks else rest
        from concurrent.futures import ThreadPoolExecutor

        # each lane with its own copy of what is known of the windows, merged afterwards
        lanes = [
            {w: Open(o.generation, o.exists, o.shards) for w, o in opens.items()} for _ in chunks
        ]
        with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
            futures = [
                pool.submit(self._count_chunk, chunk, lanes[lane], deadline, lane)
                for lane, chunk in enumerate(chunks)
            ]
            errors = [f.exception() for f in futures]
        for window in opens:  # the latest generation any lane saw, and whether it exists
            known = max(
                (lane[window] for lane in lanes),
                key=lambda o: (o.generation, o.exists),
            )
            opens[window] = Open(known.generation, known.exists, known.shards)
        for error in errors:
            if error is not None:
                raise error
        return [e for f in futures for e in f.result()] + rest

    def _count_chunk(
        self, chunk: list[_Event], opens: dict[WindowId, Open], deadline: Deadline, lane: int = 0
    ) -> list[_Event]:
        """Commit one chunk; returns the events that must go again (next generation, or
        one by one when a shard is full). Chunks side by side take different `lane`s, so
        that they add to different shards of a window they share."""
        for attempt in range(CONFLICT_TRIES):
            writes, shards = self._writes(chunk, opens, lane)  # shards: the windows, in order
            result = self.store.count(
                [
                    EventWrite(
                        key_pk(e.usage.key),
                        e.usage.fingerprint,
                        e.window,
                        e.units,
                        self._key_expiry(e.usage),
                    )
                    for e in chunk
                ],
                writes,
            )
            if result.committed:
                committed = {w.window: w.generation for w in writes}
                for window in shards:
                    if opens[window].generation == committed[window]:
                        opens[window].exists = True
                        self.store.remember(window, opens[window])
                for e in chunk:  # the generation it was written with
                    self.outcomes[e.index] = Counted(
                        Status.AGGREGATED,
                        window_start=e.window.start,
                        generation=committed[e.window],
                    )
                return []
            if result.duplicates or result.closed or result.full:
                return self._cancelled(chunk, result, writes, opens)
            if deadline.remaining() <= 0:
                raise StoreUnavailable("counting store busy until the deadline")
            # a concurrent transaction on one of the items: back off with jitter, and add to
            # another shard next time
            for window in shards:
                self.bases.pop(window, None)
            self.sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))  # noqa: S311  # nosec B311
        raise StoreUnavailable("counting store conflicts did not clear")

    def _writes(
        self, chunk: list[_Event], opens: dict[WindowId, Open], lane: int = 0
    ) -> tuple[list[WindowWrite], list[WindowId]]:
        by_window: dict[WindowId, list[_Event]] = {}
        for e in chunk:
            by_window.setdefault(e.window, []).append(e)
        writes = []
        now = self.clock()
        for window, events in by_window.items():
            known = opens[window]
            g = known.generation
            end = window.start.timestamp() + self.spec.window_seconds
            writes.append(
                WindowWrite(
                    window=window,
                    generation=g,
                    shard=(self._base(window, known) + lane) % known.shards,
                    units=sum(e.units for e in events),
                    events=len(events),
                    expires_at=self._window_expiry(window),
                    create=None
                    if known.exists
                    else NewGeneration(
                        window_seconds=self.spec.window_seconds,
                        # the window itself: at its end plus lateness; a later generation: at
                        # the next run
                        due_at=end + self.spec.lateness_seconds if g == 0 else now,
                        function=self.spec.function,
                        test_mode=self.tenant.test_mode,
                        expires_at=self._window_expiry(window),
                    ),
                )
            )
        return writes, list(by_window)

    def _base(self, window: WindowId, known: Open) -> int:
        """The shard this delivery adds to (chosen at random once; a retry after a conflict
        keeps it, lanes side by side take the next ones)."""
        if window not in self.bases:
            self.bases[window] = self.store.shard_for(known)
        return self.bases[window]

    def _cancelled(
        self,
        chunk: list[_Event],
        result: ChunkResult,
        writes: list[WindowWrite],
        opens: dict[WindowId, Open],
    ) -> list[_Event]:
        again: list[_Event] = []
        closed = {writes[w].window for w in result.closed}
        full = {writes[w].window for w in result.full}
        for window in closed:
            opens[window] = self.store.reread(window)
        for position, e in enumerate(chunk):
            if position in result.duplicates:
                if result.duplicates[position] not in (None, e.usage.fingerprint):
                    self._reject(e.index, e.usage, {"idempotency_key": [KEY_CONFLICT]})
                else:
                    self.outcomes[e.index] = Counted(Status.DUPLICATE)
            elif e.window in closed and opens[e.window].generation >= self.spec.window_seconds:
                self._reject(
                    e.index,
                    e.usage,
                    {"date_time": [_generations_bound(self.spec)]},
                )
            elif e.window in full and len(chunk) == 1:
                # alone, and its shard has no room: another shard may have; after all of
                # them, it is refused
                tried = self.full_tries[e.index] = self.full_tries.get(e.index, 0) + 1
                if tried < opens[e.window].shards:
                    self.bases.pop(e.window, None)
                    again.append(e)
                else:
                    self._reject(e.index, e.usage, {"quantity": [TOTAL_BOUND]})
            else:
                again.append(e)
        self.singles |= full  # one by one from now on, so that only what does not fit is refused
        return again

    def _reject(self, index: int, usage: Usage, errors: dict[str, list[str]]) -> None:
        """Keep an event that cannot be counted in DeadLetterQueue, with why."""
        now = datetime.now(UTC)
        try:
            message = QueuedRecord(
                usage=usage,
                tenant=self.tenant,
                failure=Failure(kind=FailureKind.REJECTED, errors=errors, attempted=False, at=now),
                attempts=0,
                first_failure_at=now,
            )
            placement = self.sink(Submission(index, usage, self.tenant), message)
        except Exception as exc:  # the sink is ours; a defect here must not lose the event
            logger.exception("storing a rejected event raised", extra={"error": str(exc)})
            placement = None
        if placement is None:
            self.outcomes[index] = Counted(
                None, reason="could not be stored in a queue (SQS unavailable); retry"
            )
        else:
            self.outcomes[index] = Counted(Status.REJECTED, errors=errors)

    def _finish(
        self, usages: Sequence[Usage], pending: Sequence[_Event], reason: str | None
    ) -> list[Counted]:
        for e in pending:
            self.outcomes.setdefault(e.index, Counted(None, reason=reason))
        return [self.outcomes.get(i, Counted(None, reason=reason)) for i in range(len(usages))]

    def _key_expiry(self, usage: Usage) -> int:
        # kept at least as long as an event this old can still arrive, whatever max_age the
        # profile is given later (at most 35 days)
        return int(
            max(
                self.clock() + self.ttl_days * DAY,
                usage.date_time.timestamp() + MAX_AGE_SECONDS + DAY,
            )
        )

    def _window_expiry(self, window: WindowId) -> int:
        # as long as an event of the window can still arrive, whatever max_age the profile
        # is given later, and then as long as a key is kept
        end = window.start.timestamp() + self.spec.window_seconds
        return int(end + MAX_AGE_SECONDS + self.ttl_days * DAY)


def _chunk(
    events: list[_Event], opens: dict[WindowId, Open], singles: set[WindowId]
) -> tuple[list[_Event], list[_Event]]:
    """As many events as fit in one transaction (a key each, and per window its shard and,
    for a new generation, its item); an event of a window whose shard is full goes alone."""
    if events[0].window in singles:
        return events[:1], events[1:]
    chunk: list[_Event] = []
    windows: set[WindowId] = set()
    actions = 0
    for position, e in enumerate(events):
        cost = 1 if e.window in windows else (2 if opens[e.window].exists else 3)
        if e.window in singles or actions + cost > MAX_ACTIONS:
            return chunk, events[position:]
        chunk.append(e)
        windows.add(e.window)
        actions += cost
    return chunk, []


def _no_line(usage: Usage) -> str:
    return f"no subscription line for meter {usage.meter_id!r} in source {usage.source!r}"


def _generations_bound(spec: Aggregate) -> str:
    return (
        f"its window has had all {spec.window_seconds} generations it can have (one per "
        "second of the window); not counted"
    )


def window_full_message(spec: Aggregate) -> str:
    return _generations_bound(spec).removesuffix("; not counted")


def count_one(counting: Counting, usage: Usage, deadline: Deadline) -> Outcome:
    """One event counted alone (an operator's replay of a dead-lettered event), as the
    lifecycle's Outcome: aggregated, duplicate, rejected again (a fresh dead letter), or not
    stored (its window has had all its generations, or a store is down: it stays)."""
    try:
        [one] = counting.run([usage], deadline)
    except WindowFull:
        return Outcome(None, reason=window_full_message(counting.spec))
    if one.status is None:
        return Outcome(None, reason=one.reason)
    return Outcome(one.status, errors=one.errors)


# --- closing -------------------------------------------------------------------------------


class Closer(Protocol):
    """What flushing needs of the window store."""

    def due(self, now: float, limit: int) -> list[Generation]: ...

    def close(self, gen: Generation) -> Generation: ...

    def finish(self, gen: Generation, state: GenState, usage_id: int | None) -> None: ...


class Submits(Protocol):
    def submit_all(
        self,
        subs: Sequence[Submission],
        deadline: Deadline,
        sink: FailureSink,
        concurrency: int,
        taker: Taker = ...,
    ) -> list[Outcome]: ...


@dataclass
class FlushReport:
    """What one run of FlushFunction did."""

    due: int = 0
    posted: int = 0
    queued: int = 0
    empty: int = 0
    left: int = 0  # due generations not settled this run (busy, a store down, out of time)
    lag_seconds: float = 0.0  # how long the oldest due generation left unsettled is overdue


def window_key(window: WindowId, generation: int) -> UsageKey:
    """The idempotency key of a generation's usage: source, line, window and generation."""
    return UsageKey(
        kind=KeyKind.WINDOW,
        scope=f"v1/sources/{window.source}",
        text=f"{window.line}#{window.series}#{utc_text(window.start)}#g{generation}",
    )


def window_usage(gen: Generation) -> Usage:
    """A closed generation's total as the record the lifecycle posts."""
    assert gen.total_units is not None
    window = gen.window
    return Usage(
        subscription_line=window.line,
        date_time=gen.instant,
        quantity=from_units(gen.total_units),
        key=window_key(window, gen.generation),
        source=window.source,
        original={
            "window_start": utc_text(window.start),
            "generation": gen.generation,
            "events": gen.events,
            "function": gen.function,
        },
    )


def flush(
    store: Closer,
    submitter: Submits,
    sink: FailureSink,
    workspace: str,
    deadline: Deadline,
    concurrency: int,
    now: float | None = None,
) -> FlushReport:
    """Close every generation due by now and post its total once (see the module's text)."""
    now = time.time() if now is None else now
    report = FlushReport()
    due = store.due(now, FLUSH_LIMIT)
    report.due = len(due)
    closed: list[Generation] = []  # the due generations, closed, with a total to post
    skipped: list[Generation] = []  # not closed or not recorded this run (the next run)
    for found, gen in _close_all(store, due, deadline, concurrency):
        if gen is None:
            skipped.append(found)
            continue
        if gen.state is not GenState.CLOSED:
            continue  # posted or queued by another flusher meanwhile
        if not gen.total_units:
            try:
                store.finish(gen, GenState.POSTED, None)  # a total of zero is not posted
                report.empty += 1
            except StoreUnavailable:
                skipped.append(found)
            continue
        closed.append(gen)
    subs: list[Submission] = []
    postable = []
    for gen in closed:
        try:
            usage = window_usage(gen)
        except ValueError as exc:  # a defect: it stays due (the lag alarm), the others go on
            logger.error("window total cannot be posted", extra={"error": str(exc)[:300]})
            skipped.append(gen)
            continue
        tenant = Tenant(workspace=workspace, test_mode=gen.test_mode)
        subs.append(Submission(len(subs), usage, tenant))
        postable.append(gen)
    closed = postable
    outcomes = submitter.submit_all(subs, deadline, sink, concurrency, Taker.REPLAY)
    unsettled = {_pk(gen) for gen in skipped}
    for gen, outcome in zip(closed, outcomes, strict=True):
        state = _settled_state(outcome)
        try:
            if state is not None:
                store.finish(gen, state, outcome.usage_id)
        except StoreUnavailable:
            state = None
        if state is None:
            unsettled.add(_pk(gen))
            continue
        report.posted += state is GenState.POSTED
        report.queued += state is GenState.QUEUED
    report.left = len(unsettled)
    report.lag_seconds = max(
        (now - (g.due_at or now) for g in due if _pk(g) in unsettled), default=0.0
    )
    return report


def _close_all(
    store: Closer, due: list[Generation], deadline: Deadline, concurrency: int
) -> list[tuple[Generation, Generation | None]]:
    """Close the due generations, `concurrency` at a time; None: not closed this run (out of
    time, or the store down)."""
    from concurrent.futures import ThreadPoolExecutor

    def close(found: Generation) -> tuple[Generation, Generation | None]:
        if deadline.remaining() <= 0:
            return found, None
        with tracer.span("generation", key=_pk(found)):  # tracing: a span per generation
            try:
                return found, store.close(found)
            except StoreUnavailable as exc:
                logger.warning("window not closed", extra={"error": str(exc)})
                return found, None

    if not due:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(due)))) as pool:
        return list(pool.map(tracer.carry(close), due))  # tracing: carry


def _pk(gen: Generation) -> str:
    return gen.window.gen_pk(gen.generation)


def _settled_state(outcome: Outcome) -> GenState | None:
    """Where a generation's usage is now: posted, waiting in a queue, or not known yet."""
    if outcome.status is Status.POSTED:
        return GenState.POSTED
    if outcome.status in (Status.QUEUED, Status.REJECTED):
        return GenState.QUEUED
    if outcome.status is Status.DUPLICATE:  # handled before (a flusher that stopped halfway)
        return GenState.POSTED if outcome.usage_id is not None else GenState.QUEUED
    return None  # busy, or neither posted nor stored: due again at the next run


# --- the operator's view -------------------------------------------------------------------


@dataclass(frozen=True)
class WindowRow:
    source: str
    line: int
    window_start: str
    generation: int
    state: str
    total: str
    events: int | None
    usage_id: int | None
    due_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Lister(Protocol):
    def unsettled(self, limit: int) -> list[Generation]: ...

    def settled(self, source: str, limit: int) -> list[Generation]: ...


def list_windows(
    store: Lister,
    key_state: Callable[[str], Any],
    sources: Sequence[str],
    *,
    source: str | None = None,
    line: int | None = None,
    state: str | None = None,
    limit: int = 1000,
) -> list[WindowRow]:
    """The operator's view: open and closed generations (the due part of the index), then
    posted and queued ones of each source; a queued total that replay has posted since
    shows as posted (its key says so)."""
    from piriod_adapter.idempotency import KeyStatus

    found = store.unsettled(limit)
    for name in [source] if source else sources:
        found += store.settled(name, limit)
    rows = []
    for stored in found:
        gen = stored
        if (source and gen.window.source != source) or (line and gen.window.line != line):
            continue
        if gen.state is GenState.QUEUED:
            key = key_state(key_pk(window_usage(gen).key))
            if key is not None and key.status is KeyStatus.POSTED:
                update = {"state": GenState.POSTED, "usage_id": key.usage_id}
                gen = Generation(**{**gen.__dict__, **update})
        if state and gen.state.value != state:
            continue
        rows.append(row(gen))
    rows.sort(key=lambda r: (r.window_start, r.source, r.line, r.generation))
    return rows[:limit]


def window_status(store: Lister, now: float, limit: int = 10_000) -> dict[str, Any]:
    """For `status`: how many generations are open and closed, and the oldest due one."""
    unsettled = store.unsettled(limit)
    due = [g for g in unsettled if g.due_at is not None and g.due_at <= now]
    oldest = min(due, key=lambda g: g.due_at or now, default=None)
    return {
        "open": sum(g.state is GenState.OPEN for g in unsettled),
        "closed": sum(g.state is GenState.CLOSED for g in unsettled),
        "due": len(due),
        "oldest_due": None if oldest is None else row(oldest).to_dict(),
        "oldest_due_seconds": None if oldest is None else int(now - (oldest.due_at or now)),
    }


def row(gen: Generation) -> WindowRow:
    total = from_units(gen.total_units) if gen.total_units is not None else None
    return WindowRow(
        source=gen.window.source,
        line=gen.window.line,
        window_start=utc_text(gen.window.start),
        generation=gen.generation,
        state=gen.state.value,
        total="" if total is None else format(total, "f"),
        events=gen.events,
        usage_id=gen.usage_id,
        due_at=utc_text(datetime.fromtimestamp(gen.due_at, UTC)) if gen.due_at else None,
    )
