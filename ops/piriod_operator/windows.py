"""The operator's view of aggregation windows (`piriod-adapter windows` and `status`).

A generation is `open` (events join it; its running total is the sum of its shards now),
`closed` (its total is final and not handed to the lifecycle yet, or a zero total that is not
posted), then `posted` or `queued`, which its key says (a queued total that replay has posted
since shows as posted). Rows are filtered first and cut after: the newest `limit` rows that
match are shown, oldest first, however many generations a source has.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from piriod_adapter.flush import window_key
from piriod_adapter.lifecycle import KeyStatus
from piriod_adapter.models import utc_text
from piriod_adapter.table import Generation, KeyState, key_pk
from piriod_adapter.windows import from_units


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

    def handed_pages(self, source: str, line: int | None) -> Iterator[list[Generation]]: ...

    def running(self, gens: Sequence[Generation]) -> dict[str, tuple[int, int]]: ...


class KeyReader(Protocol):
    def states(self, pks: Sequence[str]) -> dict[str, KeyState]: ...


def list_windows(
    store: Lister,
    keys: KeyReader,
    sources: Sequence[str],
    *,
    source: str | None = None,
    line: int | None = None,
    state: str | None = None,
    limit: int = 1000,
) -> list[WindowRow]:
    """The newest `limit` generations that match `source`, `line` and `state`, oldest
    first: every open and closed one (the due part of the index), and the handed-over ones
    of each source, read newest first until enough match."""
    rows = [
        one
        for one in _rows(store, keys, store.unsettled(100_000))
        if _match(one, source, line, state)
    ]
    for name in [source] if source else sources:
        found: list[WindowRow] = []
        for page in store.handed_pages(name, line):
            found += [one for one in _rows(store, keys, page) if _match(one, None, None, state)]
            if len(found) >= limit:
                break
        rows += found[:limit]
    rows.sort(key=lambda r: (r.window_start, r.source, r.line, r.generation), reverse=True)
    return sorted(rows[:limit], key=lambda r: (r.window_start, r.source, r.line, r.generation))


def _match(row_: WindowRow, source: str | None, line: int | None, state: str | None) -> bool:
    return (
        (source is None or row_.source == source)
        and (line is None or row_.line == line)
        and (state is None or row_.state == state)
    )


def _rows(store: Lister, keys: KeyReader, gens: Sequence[Generation]) -> list[WindowRow]:
    """Rows for generations: an open one's running total, a handed one's place (its key)."""
    running = store.running([g for g in gens if not g.closed])
    handed = [key_pk(window_key(g.window, g.generation)) for g in gens if g.handed]
    states = keys.states(handed) if handed else {}
    rows = []
    for gen in gens:
        total, events = running.get(gen.window.gen_pk(gen.generation), (None, None))
        key = states.get(key_pk(window_key(gen.window, gen.generation))) if gen.handed else None
        rows.append(row(gen, _state(gen, key), total, events, key.usage_id if key else None))
    return rows


def _state(gen: Generation, key: KeyState | None) -> str:
    if not gen.closed:
        return "open"
    if not gen.handed or key is None:  # not handed yet, or a zero total (nothing posted)
        return "closed"
    if key.status is KeyStatus.POSTED:
        return "posted"
    if key.status in (KeyStatus.QUEUED, KeyStatus.REJECTED):
        return "queued"
    return "closed"  # being posted right now


def window_status(store: Lister, now: float, limit: int = 10_000) -> dict[str, Any]:
    """For `status`: how many generations are open and closed, and the oldest due one."""
    unsettled = store.unsettled(limit)
    due = [g for g in unsettled if g.due_at is not None and g.due_at <= now]
    oldest = min(due, key=lambda g: g.due_at or now, default=None)
    return {
        "open": sum(not g.closed for g in unsettled),
        "closed": sum(g.closed for g in unsettled),
        "due": len(due),
        "oldest_due": None if oldest is None else row(oldest).to_dict(),
        "oldest_due_seconds": None if oldest is None else int(now - (oldest.due_at or now)),
    }


def row(
    gen: Generation,
    state: str | None = None,
    total_units: int | None = None,
    events: int | None = None,
    usage_id: int | None = None,
) -> WindowRow:
    units = gen.total_units if total_units is None else total_units
    total = from_units(units) if units is not None else None
    return WindowRow(
        source=gen.window.source,
        line=gen.window.line,
        window_start=utc_text(gen.window.start),
        generation=gen.generation,
        state=state or ("closed" if gen.closed else "open"),
        total="" if total is None else format(total, "f"),
        events=gen.events if events is None else events,
        usage_id=usage_id,
        due_at=utc_text(datetime.fromtimestamp(gen.due_at, UTC)) if gen.due_at else None,
    )
