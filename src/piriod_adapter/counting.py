"""Counting an aggregating source's events into their windows (SPEC section 9), exactly once.

The webhook counts a delivery's events, the operator's replay a dead-lettered one. Each event
was bounded first (aggregate.check_events: its age, its precision); then its key and its
addition to its window's open generation commit together, in one DynamoDB transaction
(windows.WindowStore.count). Each event's outcome is the lifecycle's (lifecycle.Outcome):
AGGREGATED (with the window and generation it joined), DUPLICATE, REJECTED (placed in
DeadLetterQueue through the lifecycle's one failure writer: an unmapped meter, a key reused for
another event, a window past its bounds) or, when the store cannot be written, NOT_STORED
(the delivery is answered 503).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from piriod_adapter.aggregate import DAY, MAX_AGE_SECONDS, Aggregate
from piriod_adapter.clock import Deadline
from piriod_adapter.idempotency import StoreUnavailable
from piriod_adapter.lifecycle import FailureSink, Fate, Outcome, Submission
from piriod_adapter.models import FailureKind, Tenant
from piriod_adapter.piriod import PostResult
from piriod_adapter.submit import Failed, failed, key_conflict, no_line
from piriod_adapter.table import WindowId, key_pk
from piriod_adapter.windows import (
    MAX_ACTIONS,
    ChunkResult,
    EventWrite,
    NewGeneration,
    Open,
    WindowWrite,
)

CONFLICT_TRIES = 12
ROUNDS = 8  # a chunk's events move on at most this many times (closed, full, conflict)
PARALLEL_CHUNKS = 2  # a delivery's first transactions run side by side
TOTAL_BOUND = (
    "would take its window's total past 10^20 (the total is kept in WindowShards counter "
    "shards, each holding at most its share of that bound); not counted"
)


class Counter(Protocol):
    """What counting needs of the window store."""

    def open_generations(self, windows: Sequence[WindowId]) -> dict[WindowId, Open]: ...

    def reread(self, window: WindowId) -> Open: ...

    def remember(self, window: WindowId, known: Open) -> None: ...

    def shard_for(self, known: Open) -> int: ...

    def count(
        self, events: Sequence[EventWrite], windows: Sequence[WindowWrite]
    ) -> ChunkResult: ...


# Places a failed event through the lifecycle's one failure writer (submit.Submitter.place).
Place = Callable[[Failed, FailureSink], Outcome]


class WindowFull(Exception):
    """An event would need a generation past the window's bound (one per second)."""


@dataclass
class _Event:
    sub: Submission
    window: WindowId
    units: int

    @property
    def index(self) -> int:
        return self.sub.index


@dataclass
class Counting:
    """One delivery of an aggregating source being counted."""

    spec: Aggregate
    source: str
    tenant: Tenant
    store: Counter
    place: Place
    sink: FailureSink
    ttl_days: int
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    singles: set[WindowId] = field(default_factory=set)  # windows whose shard is full
    bases: dict[WindowId, int] = field(default_factory=dict)  # this delivery's shard per window
    no_room: dict[int, set[int]] = field(default_factory=dict)  # an event's shards without room
    out_of_generations: list[_Event] = field(default_factory=list)  # closed under the delivery

    def run(self, subs: Sequence[Submission], deadline: Deadline) -> list[Outcome]:
        """Count every event (`subs[i].index` is i). Raises WindowFull (a 422) before
        anything is written or placed when an event's window has had all its generations
        (read now, whatever this container saw before)."""
        events: list[_Event] = []
        unmapped: list[Submission] = []
        series = self.spec.series(self.tenant.test_mode)
        for sub in subs:
            line = sub.usage.subscription_line
            if line is None:
                unmapped.append(sub)
                continue
            start = self.spec.window_start(sub.usage.date_time)
            window = WindowId(self.source, line, start, series)
            events.append(_Event(sub, window, self.spec.units(sub.usage)))
        failed_read: str | None = None
        try:
            opens = self.store.open_generations([e.window for e in events]) if events else {}
        except StoreUnavailable as exc:
            opens, failed_read = {}, str(exc)
        else:
            full = [e for e in events if opens[e.window].generation >= self.spec.window_seconds]
            if full:
                raise WindowFull([e.index for e in full])
        for sub in unmapped:  # kept in DeadLetterQueue until the meter has a line
            self._reject(sub, {"meter_id": [no_line(sub.usage)]})
        if failed_read is not None:
            return self._finish(subs, events, failed_read)
        # By line and window, so that a chunk touches few windows (fewer shard additions).
        pending = sorted(events, key=lambda e: (e.window.line, e.window.start))
        try:
            pending = self._first_round(pending, opens, deadline)
            self._out_of_generations()
        except StoreUnavailable as exc:
            return self._finish(subs, events, str(exc))
        rounds = 0
        while pending:
            rounds += 1
            if deadline.remaining() <= 0 or rounds > ROUNDS * (len(events) + 1):
                return self._finish(subs, pending, "function time ran out; retry")
            chunk, pending = _chunk(pending, opens, self.singles)
            try:
                left = self._count_chunk(chunk, opens, deadline)
                self._out_of_generations()
            except StoreUnavailable as exc:
                return self._finish(subs, chunk + pending, str(exc))
            pending = left + pending
        return self._finish(subs, [], None)

    def _out_of_generations(self) -> None:
        """Events whose window ran out of generations while this delivery was counted (a
        flush closed its last one between the read and the write): the delivery is refused
        as a whole (WindowFull, a 422) while nothing of it is counted; once something is,
        they are rejected into DeadLetterQueue, with why."""
        if not self.out_of_generations:
            return
        late, self.out_of_generations = self.out_of_generations, []
        if not any(o.fate is Fate.AGGREGATED for o in self.outcomes.values()):
            raise WindowFull(sorted(e.index for e in late))
        bound = self.spec.generations_bound() + "; not counted"
        for e in late:
            self._reject(e.sub, {"date_time": [bound]})

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
                        key_pk(e.sub.usage.key),
                        e.sub.usage,
                        e.window,
                        e.units,
                        self._key_expiry(e),
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
                    self.outcomes[e.index] = Outcome(
                        Fate.AGGREGATED,
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
                    shards=known.shards,
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
                if result.duplicates[position] not in (None, e.sub.usage.fingerprint):
                    self.outcomes[e.index] = self.place(failed(e.sub, key_conflict()), self.sink)
                else:
                    self.outcomes[e.index] = Outcome(Fate.DUPLICATE)
            elif e.window in closed and opens[e.window].generation >= self.spec.window_seconds:
                self.out_of_generations.append(e)
            elif e.window in full and len(chunk) == 1:
                # alone, and its shard has no room: the next shard may have; after every
                # one of them, it is refused
                shards = opens[e.window].shards
                tried = self.no_room.setdefault(e.index, set())
                tried.add(self.bases.get(e.window, 0) % shards)
                untried = [s for s in range(shards) if s not in tried]
                if untried:
                    self.bases[e.window] = untried[0]
                    again.append(e)
                else:
                    self._reject(e.sub, {"quantity": [TOTAL_BOUND]})
            else:
                again.append(e)
        self.singles |= full  # one by one from now on, so that only what does not fit is refused
        return again

    def _reject(self, sub: Submission, errors: dict[str, list[str]]) -> None:
        """Keep an event that cannot be counted in DeadLetterQueue, with why."""
        refused = PostResult(FailureKind.REJECTED, errors=errors, attempted=False)
        self.outcomes[sub.index] = self.place(failed(sub, refused), self.sink)

    def _finish(
        self, subs: Sequence[Submission], pending: Sequence[_Event], reason: str | None
    ) -> list[Outcome]:
        for e in pending:
            self.outcomes.setdefault(e.index, Outcome(Fate.NOT_STORED, reason=reason))
        return [
            self.outcomes.get(sub.index, Outcome(Fate.NOT_STORED, reason=reason)) for sub in subs
        ]

    def _key_expiry(self, e: _Event) -> int:
        # kept at least as long as an event this old can still arrive, whatever max_age the
        # profile is given later (at most 35 days)
        return int(
            max(
                self.clock() + self.ttl_days * DAY,
                e.sub.usage.date_time.timestamp() + MAX_AGE_SECONDS + DAY,
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


def count_one(counting: Counting, sub: Submission, deadline: Deadline) -> Outcome:
    """One event counted alone (an operator's replay of a dead-lettered event): aggregated,
    duplicate, rejected again (a fresh dead letter that keeps its history), or not stored
    (its window has had all its generations, or a store is down: it stays)."""
    try:
        [one] = counting.run([Submission(0, sub.usage, sub.tenant, sub.previous)], deadline)
    except WindowFull:
        return Outcome(Fate.NOT_STORED, reason=counting.spec.generations_bound())
    return one
