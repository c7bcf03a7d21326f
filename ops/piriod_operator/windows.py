"""The operator's view of aggregation windows (`piriod-adapter windows` and `status`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from piriod_adapter.flush import window_usage
from piriod_adapter.idempotency import key_pk
from piriod_adapter.lifecycle import KeyStatus
from piriod_adapter.models import utc_text
from piriod_adapter.windows import Generation, GenState, from_units


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
