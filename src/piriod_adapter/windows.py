"""Aggregation windows in DynamoDB (SPEC section 9): the calls on the window items, kept in
IdempotencyTable next to the event keys they are counted with (their layouts: table.py).

An event's key and its addition to a shard commit together in one TransactWriteItems (the
key put fails when the key exists: a duplicate; the shard update fails once the shard is
closed: the generation was closed, the event joins the next one). A delivery adds to one
shard per window, chosen at random, so that concurrent deliveries to a hot line rarely touch
the same item; the first delivery of a generation also writes the generation's item (its due
marker), in the same transaction, so that no counted event is ever without one.

Closing generation g: first the window's `open_gen` goes g -> g+1 (events that read the
window from now on join g+1), then every shard of g is marked closed, each returning its
final total, so that the sum is exact whatever committed before. Each step is conditional
or idempotent: two flushers, or a flusher that stopped halfway, get the same total. Once
the lifecycle has the total, the generation is handed over: it leaves the due index, and
where its usage is (posted, queued) is read from its key.

Totals are integers of 10^-18 units (UNITS): DynamoDB keeps 38 significant digits, so a total
below 10^20 (Piriod's bound for a quantity) with 18 decimal places is exact, and a shard
refuses an addition that would take it past its share of that bound.
"""

import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal, Inexact, InvalidOperation, localcontext
from typing import TYPE_CHECKING, Any, NamedTuple

from piriod_adapter import table
from piriod_adapter.models import Usage
from piriod_adapter.table import (
    CLOSED,
    DUE,
    OPEN,
    Generation,
    StoreUnavailable,
    WindowId,
    condition_failed,
    error_code,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

UNITS = 10**18  # a total is kept as an integer number of 10^-18
MAX_FRACTION_DIGITS = 18
MAX_TOTAL_UNITS = 10**38 - 1  # 38 digits: a total below 10^20 with 18 decimal places
MAX_ACTIONS = 100  # TransactWriteItems' own bound
_CACHE_SIZE = 10_000


_EXACT = Context(prec=80, traps=[Inexact, InvalidOperation])


def to_units(quantity: Decimal) -> int:
    """A quantity (at most 18 decimal places, below 10^20) as 10^-18 units, exactly."""
    with localcontext(_EXACT):
        scaled = quantity.scaleb(MAX_FRACTION_DIGITS)
        if scaled != scaled.to_integral_value():
            raise ValueError(f"has more than {MAX_FRACTION_DIGITS} decimal places")
        return int(scaled)


def from_units(units: int) -> Decimal:
    """10^-18 units as the decimal they are, without trailing zeros."""
    if not units:
        return Decimal(0)
    with localcontext(_EXACT):
        return Decimal(units).scaleb(-MAX_FRACTION_DIGITS).normalize()


@dataclass
class Open:
    """What a delivery knows of a window: the generation events join, whether that
    generation's item exists (else the first delivery writes it) and its shard count."""

    generation: int
    exists: bool
    shards: int


class NewGeneration(NamedTuple):
    """The attributes of a generation's item, written by its first delivery."""

    window_seconds: int
    due_at: float
    function: str
    test_mode: bool
    expires_at: int


class EventWrite(NamedTuple):
    """One event's key, to be written with its addition."""

    pk: str
    usage: Usage
    window: WindowId
    units: int
    expires_at: int


class WindowWrite(NamedTuple):
    """One window's share of a chunk: the generation, the shard, and what is added."""

    window: WindowId
    generation: int
    shard: int
    shards: int  # the generation's shard count
    units: int
    events: int
    expires_at: int
    create: NewGeneration | None  # set when the generation's item is not known to exist


@dataclass
class ChunkResult:
    """How a chunk's transaction ended: committed, or cancelled and why."""

    committed: bool
    conflict: bool = False  # a concurrent transaction touched an item: retry
    duplicates: dict[int, str | None] = field(default_factory=dict)  # event -> fingerprint
    closed: set[int] = field(default_factory=set)  # window writes whose generation closed
    full: set[int] = field(default_factory=set)  # window writes whose shard has no room


class WindowStore:
    """Window items in IdempotencyTable (see the module's description)."""

    def __init__(
        self,
        client: "DynamoDBClient",
        table: str,
        shards: int,
        clock: Callable[[], float] = time.time,
        choose: Callable[[int], int] | None = None,
    ) -> None:
        self._client = client
        self._table = table
        self._shards = shards
        self._clock = clock
        self._choose = choose or random.randrange  # spreading, not secrecy
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, int] = OrderedDict()  # window pk -> generation

    # --- counting ------------------------------------------------------------------------------

    def open_generations(self, windows: Sequence[WindowId]) -> dict[WindowId, Open]:
        """The generation each window's events join now, read for every delivery (what a
        container saw may be stale: another function may have closed a generation since).
        One BatchGetItem: each window's head, and the generation this container last saw it
        at (a guess); another one only for a window whose head moved past the guess."""
        windows = list(dict.fromkeys(windows))
        with self._lock:
            guess = {w: self._seen.get(w.pk, 0) for w in windows}
        items = self._get_many([w.pk for w in windows] + [w.gen_pk(guess[w]) for w in windows])
        heads = {w: int(items.get(w.pk, {}).get("open_gen", {}).get("N", "0")) for w in windows}
        moved = [w for w in windows if heads[w] != guess[w]]
        if moved:
            items.update(self._get_many([w.gen_pk(heads[w]) for w in moved]))
        found: dict[WindowId, Open] = {}
        for window in windows:
            head = heads[window]
            item = items.get(window.gen_pk(head)) or {}
            state = item.get("state", {}).get("S")
            shards = int(item["shards"]["N"]) if "shards" in item else self._shards
            # Only a state that says closed means closed: an item read without its state
            # is one being created (its creator's transaction, seen halfway by a store
            # that is not isolated); its events join it, and the write says if it closed.
            if state == CLOSED:  # closed under us: the next one
                found[window] = Open(head + 1, False, self._shards)
            else:
                found[window] = Open(head, state == OPEN, shards)
            self.remember(window, found[window])
        return found

    def reread(self, window: WindowId) -> Open:
        """The window read again (its generation was closed under a delivery)."""
        return self.open_generations([window])[window]

    def remember(self, window: WindowId, known: Open) -> None:
        """The generation a delivery saw the window at: the next delivery's guess."""
        with self._lock:
            self._seen[window.pk] = known.generation
            self._seen.move_to_end(window.pk)
            while len(self._seen) > _CACHE_SIZE:
                self._seen.popitem(last=False)

    def shard_for(self, known: Open) -> int:
        return self._choose(known.shards)

    def count(self, events: Sequence[EventWrite], windows: Sequence[WindowWrite]) -> ChunkResult:
        """One transaction: every event's key and every window's addition, or nothing.
        Raises StoreUnavailable for anything but a cancellation or a conflict."""
        too_big = {n for n, w in enumerate(windows) if w.units > self.share(w)}
        if too_big:  # more than a shard may ever hold (and past DynamoDB's 38 digits)
            return ChunkResult(committed=False, full=too_big)
        # An event key records its generation: the same for every event of a window here.
        generation = {w.window: w.generation for w in windows}
        actions = [
            table.event_key(e.pk, e.usage, e.window, generation[e.window], e.units, e.expires_at)
            for e in events
        ]
        actions += [
            table.add_to_shard(
                w.window, w.generation, w.shard, w.units, w.events, self.share(w), w.expires_at
            )
            for w in windows
        ]
        creates = [n for n, w in enumerate(windows) if w.create is not None]
        for n in creates:
            w, new = windows[n], windows[n].create
            assert new is not None
            actions.append(
                table.create_generation(
                    w.window,
                    w.generation,
                    shards=w.shards,
                    window_seconds=new.window_seconds,
                    due_at=new.due_at,
                    function=new.function,
                    test_mode=new.test_mode,
                    expires_at=new.expires_at,
                )
            )
        assert len(actions) <= MAX_ACTIONS
        for action in actions:
            next(iter(action.values()))["TableName"] = self._table
        try:
            self._client.transact_write_items(TransactItems=actions)  # type: ignore[arg-type]
        except Exception as exc:
            return cancelled(exc, len(events), len(windows), creates)
        return ChunkResult(committed=True)

    def share(self, w: WindowWrite) -> int:
        """The most one shard of the window may hold: its share of the total's bound."""
        return MAX_TOTAL_UNITS // w.shards

    # --- closing -------------------------------------------------------------------------------

    def due(self, now: float, limit: int) -> list[Generation]:
        """Generations due by `now`, oldest first (the sparse index, never a Scan)."""
        return self._query(DUE, table.due_sort(now, "~"), limit)

    def unsettled(self, limit: int) -> list[Generation]:
        """Every generation not handed to the lifecycle yet (open or closed), oldest due
        first."""
        return self._query(DUE, None, limit)

    def handed_pages(self, source: str, line: int | None = None) -> Iterator[list[Generation]]:
        """A source's generations handed to the lifecycle, newest window first, a page at a
        time (of `line` only, when given: filtered in the store, so every page is read)."""
        request = table.generations(f"done#{source}", None, 1000, newest_first=True, line=line)
        while True:
            page = self._call_query(request)
            yield [Generation.from_item(item) for item in page.get("Items", [])]
            if not page.get("LastEvaluatedKey"):
                return
            request = {**request, "ExclusiveStartKey": page["LastEvaluatedKey"]}

    def running(self, gens: Sequence[Generation]) -> dict[str, tuple[int, int]]:
        """Open generations' totals and event counts so far (their shards summed), by the
        generation's item key."""
        pks = [g.window.shard_pk(g.generation, s) for g in gens for s in range(g.shards)]
        shards = self._get_many(pks)
        found: dict[str, tuple[int, int]] = {}
        for gen in gens:
            total = events = 0
            for s in range(gen.shards):
                item = shards.get(gen.window.shard_pk(gen.generation, s), {})
                total += int(item.get("total", {}).get("N", "0"))
                events += int(item.get("events", {}).get("N", "0"))
            found[gen.window.gen_pk(gen.generation)] = (total, events)
        return found

    def _query(self, part: str, high: str | None, limit: int) -> list[Generation]:
        found: list[Generation] = []
        request = table.generations(part, high, min(1000, limit))
        while len(found) < limit:
            page = self._call_query(request)
            found += [Generation.from_item(item) for item in page.get("Items", [])]
            if not page.get("LastEvaluatedKey"):
                break
            request = {
                **request,
                "ExclusiveStartKey": page["LastEvaluatedKey"],
                "Limit": min(1000, limit - len(found)),
            }
        return found[:limit]

    def _call_query(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            page: Any = self._client.query(TableName=self._table, **request)
        except Exception as exc:
            raise StoreUnavailable(f"cannot read windows: {type(exc).__name__}") from None
        return dict(page)

    def close(self, gen: Generation) -> Generation:
        """Close the generation: no event joins it afterwards. Returns it with its exact
        total and event count. Idempotent, so two flushers get the same answer."""
        window, g = gen.window, gen.generation
        # the window's items go when its generations do (TTL)
        expires = gen.expires_at or int(self._clock() + 400 * 86_400)
        try:
            try:
                self._update(table.advance_head(window, g, expires))
            except Exception as exc:
                if not condition_failed(exc):  # else: moved on already (another flusher)
                    raise
            total = events = 0
            for shard in range(gen.shards):
                response = self._update(table.close_shard(window, g, shard, expires))
                item = response.get("Attributes", {})
                total += int(item.get("total", {}).get("N", "0"))
                events += int(item.get("events", {}).get("N", "0"))
            closed = self._update(table.close_generation(window, g, total, events))
        except Exception as exc:
            code = error_code(exc) or type(exc).__name__
            raise StoreUnavailable(f"cannot close window: {code}") from None
        return Generation.from_item(closed["Attributes"])

    def hand_over(self, gen: Generation) -> None:
        """The lifecycle has the generation's total (posted, queued, or a zero total that is
        not posted): it leaves the due part of the index."""
        try:
            self._update(table.hand_over(gen, self._clock()))
        except Exception as exc:
            if condition_failed(exc):
                return
            raise StoreUnavailable(f"cannot record window: {type(exc).__name__}") from None

    def correct_events(
        self, corrections: Sequence[tuple[str, str, str | None, str]], now: float, deadline: Any
    ) -> "list[EventCorrected]":
        """Corrections of counted events (SPEC 10): see `_correct_events`."""
        return _correct_events(self, corrections, now, deadline)

    def _update(self, request: dict[str, Any]) -> dict[str, Any]:
        response: Any = self._client.update_item(TableName=self._table, **request)
        return dict(response)

    def generation(self, window: WindowId, g: int) -> Generation | None:
        items = self._get_many([window.gen_pk(g)])
        item = items.get(window.gen_pk(g))
        return Generation.from_item(item) if item else None

    def _get_many(self, pks: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Items by key, read strongly consistent (BatchGetItem, 100 keys a call)."""
        found: dict[str, dict[str, Any]] = {}
        todo = list(dict.fromkeys(pks))
        try:
            for start in range(0, len(todo), 100):
                keys: list[dict[str, Any]] = [{"pk": {"S": pk}} for pk in todo[start : start + 100]]
                for _ in range(10):
                    response = self._client.batch_get_item(
                        RequestItems={self._table: {"Keys": keys, "ConsistentRead": True}}
                    )
                    for item in response.get("Responses", {}).get(self._table, []):
                        found[item["pk"]["S"]] = item
                    unprocessed: dict[str, Any] = dict(response.get("UnprocessedKeys") or {})
                    keys = list(unprocessed.get(self._table, {}).get("Keys", []))
                    if not keys:
                        break
                    time.sleep(0.05)
                if keys:
                    raise RuntimeError("unprocessed keys")
        except Exception as exc:
            raise StoreUnavailable(f"cannot read windows: {type(exc).__name__}") from None
        return found


def cancelled(exc: Exception, events: int, windows: int, creates: list[int]) -> ChunkResult:
    """Why a count's transaction did not commit, from its cancellation reasons, which come in
    the order of its actions: the events' keys, then one shard addition per window, then one
    generation item per window that creates one (`creates`: those windows' positions). A
    refused key is a duplicate (with the fingerprint it holds); a refused shard is closed
    (its item says so) or full; a refused generation item is closed. Raises StoreUnavailable
    for anything but a cancellation or a conflict."""
    code = error_code(exc)
    if code == "TransactionConflictException":
        return ChunkResult(committed=False, conflict=True)
    if code != "TransactionCanceledException":
        raise StoreUnavailable(f"cannot count events: {code or type(exc).__name__}") from None
    response: dict[str, Any] = getattr(exc, "response", {})
    reasons = response.get("CancellationReasons") or []
    result = ChunkResult(committed=False)
    for position, reason in enumerate(reasons):
        reason_code = reason.get("Code")
        if reason_code in (None, "None"):
            continue
        if reason_code == "TransactionConflict":
            result.conflict = True
            continue
        if reason_code != "ConditionalCheckFailed":
            # throttled, a validation error, a service error: the store, not the events
            raise StoreUnavailable(f"cannot count events: {reason_code}")
        item = reason.get("Item") or {}
        if position < events:
            result.duplicates[position] = item.get("fingerprint", {}).get("S")
        elif position < events + windows:
            w = position - events
            (result.closed if "closed" in item else result.full).add(w)
        elif position - events - windows < len(creates):
            result.closed.add(creates[position - events - windows])
    if not (result.conflict or result.duplicates or result.closed or result.full):
        result.conflict = True  # cancelled without a reason we know: try again
    return result


# --- corrections of counted events (SPEC 10) ---------------------------------------------------

PAST_BOUND = "would take its window's total past 10^20"
CORRECTION_ROUNDS = 6  # a correction that met another of its event's is tried this many times


class EventCorrected(NamedTuple):
    """How a correction of a counted event ended: applied (its window's open generation
    changed with it), pending (its generation is closed: restated by the next flush),
    duplicate, not_found or rejected (`errors`)."""

    status: str
    revision: int | None = None
    errors: dict[str, list[str]] | None = None


def _count_series(window_pk: str) -> bool:
    """Whether a window counts events (`win#<source>#<line>#<series>#<start>`)."""
    parts = window_pk.split("#")
    return len(parts) > 3 and parts[3].startswith("count")


def _correct_events(
    store: WindowStore,
    corrections: Sequence[tuple[str, str, str | None, str]],
    now: float,
    deadline: Any,
) -> list[EventCorrected]:
    """Corrections (event key, action, new quantity, correction id) of counted events, one
    per event: each accepted on its key and its difference added to its generation in one
    transaction per generation (an open one's shard; a closed one's `adjust`, which makes it
    due again). Raises StoreUnavailable."""
    results: dict[int, EventCorrected] = {}
    todo = list(range(len(corrections)))
    for _ in range(CORRECTION_ROUNDS):
        if not todo or deadline.remaining() <= 0:
            break
        keys = store._get_many([corrections[n][0] for n in todo])
        plans: dict[str, list[tuple[int, dict[str, Any], int, int]]] = {}
        for n in todo:
            pk, action, quantity, correction_id = corrections[n]
            item = keys.get(pk)
            seen = item.get(table.correction_attribute(correction_id)) if item else None
            if item is None or "units" not in item:
                results[n] = EventCorrected("not_found")
            elif seen is not None:
                results[n] = EventCorrected("duplicate", int(seen["N"]))
            elif item.get("cancelled", {}).get("BOOL"):
                results[n] = EventCorrected("not_found")
            elif action == "amend" and _count_series(item["window"]["S"]):
                reason = "cannot amend an event of a count window: cancel it"
                results[n] = EventCorrected("rejected", errors={"quantity": [reason]})
            else:
                if action == "cancel":
                    new, events = 0, -1
                else:
                    assert quantity is not None
                    try:
                        new, events = to_units(Decimal(quantity)), 0
                    except ValueError as exc:
                        results[n] = EventCorrected("rejected", errors={"quantity": [str(exc)]})
                        continue
                gen_pk = f"{item['window']['S']}#g{item['generation']['N']}"
                plans.setdefault(gen_pk, []).append((n, item, new, events))
        gens = store._get_many(list(plans))
        todo = []
        for gen_pk, planned in plans.items():
            gen = gens.get(gen_pk)
            for chunk_start in range(0, len(planned), MAX_ACTIONS - 1):
                chunk = planned[chunk_start : chunk_start + MAX_ACTIONS - 1]
                todo += _commit(store, gen_pk, gen, chunk, corrections, results, now)
    for n in todo:
        results.setdefault(n, EventCorrected("not_stored"))
    return [results[n] for n in range(len(corrections))]


def _commit(
    store: WindowStore,
    gen_pk: str,
    gen: dict[str, Any] | None,
    chunk: list[tuple[int, dict[str, Any], int, int]],
    corrections: Sequence[tuple[str, str, str | None, str]],
    results: dict[int, EventCorrected],
    now: float,
) -> list[int]:
    """One generation's corrections in one transaction; returns the ones to try again."""
    if gen is None:  # an event counted without its generation: cannot be
        for n, *_ in chunk:
            results[n] = EventCorrected("rejected", errors={"key": ["its window is gone"]})
        return []
    generation = int(gen_pk.rpartition("#g")[2])
    closed = gen.get("state", {}).get("S") == CLOSED
    actions = []
    for n, item, new, _ in chunk:
        pk, action, quantity, correction_id = corrections[n]
        actions.append(
            table.correct_event(
                pk,
                action,
                quantity,
                new,
                correction_id,
                now,
                seen_units=int(item["units"]["N"]),
                seen_rev=int(item.get("rev", {}).get("N", "0")),
                generation=generation,
            )
        )
    delta = sum(new - int(item["units"]["N"]) for _, item, new, _ in chunk)
    events = sum(change for *_, change in chunk)
    read = Generation.from_item(gen)
    window = read.window
    if closed:
        if read.corrected_units + delta > MAX_TOTAL_UNITS:
            for n, *_ in chunk:  # its restated usage could never be posted: refused now
                results[n] = EventCorrected("rejected", errors={"quantity": [PAST_BOUND]})
            return []
        actions.append(
            table.adjust_generation(
                window, generation, delta, events, now, seen_seq=read.adjust_seq
            )
        )
    else:
        shards = int(gen.get("shards", {}).get("N", "1"))
        shard = store.shard_for(Open(generation, True, shards))
        room = MAX_TOTAL_UNITS // shards
        actions.append(table.adjust_shard(window, generation, shard, delta, events, room))
    for step in actions:
        for operation in step.values():
            operation["TableName"] = store._table
    try:
        store._client.transact_write_items(TransactItems=actions)  # type: ignore[arg-type]
    except Exception as exc:
        return _refused(exc, chunk, results)
    for n, item, _, _ in chunk:
        revision = int(item.get("rev", {}).get("N", "0")) + 1
        results[n] = EventCorrected("pending" if closed else "applied", revision)
    return []


def _refused(
    exc: Exception,
    chunk: list[tuple[int, dict[str, Any], int, int]],
    results: dict[int, EventCorrected],
) -> list[int]:
    """A cancelled correction transaction: the corrections to read again and try again
    (another correction of their event came, their generation closed under them, or a
    conflict), or rejected when an open shard has no room for the difference. Raises
    StoreUnavailable for anything but those."""
    code = error_code(exc)
    if code == "TransactionConflictException":
        return [n for n, *_ in chunk]
    if code != "TransactionCanceledException":
        raise StoreUnavailable(f"cannot correct events: {code or type(exc).__name__}") from None
    reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
    for reason in reasons:
        if reason.get("Code") not in (
            None,
            "None",
            "ConditionalCheckFailed",
            "TransactionConflict",
        ):
            raise StoreUnavailable(f"cannot correct events: {reason.get('Code')}")
    adjusted = reasons[len(chunk)] if len(reasons) > len(chunk) else {}
    item = adjusted.get("Item") or {}
    if (
        adjusted.get("Code") == "ConditionalCheckFailed"
        and "total" in item
        and "closed" not in item
        and "state" not in item  # a shard's item, not its generation's
    ):
        for n, *_ in chunk:  # an open shard without room for the difference
            results[n] = EventCorrected("rejected", errors={"quantity": [PAST_BOUND]})
        return []
    return [n for n, *_ in chunk]  # read again: a duplicate, cancelled, changed or closed
