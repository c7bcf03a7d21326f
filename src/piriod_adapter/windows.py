"""Aggregation windows in DynamoDB (SPEC section 9): the one module that writes and reads the
window items, kept in IdempotencyTable next to the event keys they are counted with.

    win#<source>#<line>#<series>#<start>            the window: `open_gen`, the generation
                                                    events join
    win#<source>#<line>#<series>#<start>#g<g>       generation g: state, due marker, total
    win#<source>#<line>#<series>#<start>#g<g>#s<s>  one shard of generation g's counter

An event's key and its addition to a shard commit together in one TransactWriteItems (the
key put fails when the key exists: a duplicate; the shard update fails once the shard is
closed: the generation was closed, the event joins the next one). A delivery adds to one
shard per window, chosen at random, so that concurrent deliveries to a hot line rarely touch
the same item; the first delivery of a generation also writes the generation's item (its due
marker), in the same transaction, so that no counted event is ever without one.

Closing generation g: first the window's `open_gen` goes g -> g+1 (events that read the
window from now on join g+1), then every shard of g is marked closed, each returning its
final total, so that the sum is exact whatever committed before. Each step is conditional
or idempotent: two flushers, or a flusher that stopped halfway, get the same total.

Totals are integers of 10^-18 units (UNITS): DynamoDB keeps 38 significant digits, so a total
below 10^20 (Piriod's bound for a quantity) with 18 decimal places is exact, and a shard
refuses an addition that would take it past its share of that bound.

A generation's item is in the sparse index `by_window` under `due` (ordered by due time)
until it is posted or queued, then under `done#<source>` (ordered by window), so that the
flusher finds due windows without a Scan and the operator lists them by source.
"""

from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, Inexact, InvalidOperation, localcontext
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from piriod_adapter.idempotency import StoreUnavailable, _condition_failed
from piriod_adapter.models import sortable_utc, utc_text

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

UNITS = 10**18  # a total is kept as an integer number of 10^-18
MAX_FRACTION_DIGITS = 18
MAX_TOTAL_UNITS = 10**38 - 1  # 38 digits: a total below 10^20 with 18 decimal places
MAX_ACTIONS = 100  # TransactWriteItems' own bound
INDEX = "by_window"
DUE = "due"
_CACHE_SIZE = 10_000


class GenState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    POSTED = "posted"
    QUEUED = "queued"


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


@dataclass(frozen=True)
class WindowId:
    """One line's window of one source. `series` is what the window counts: the function,
    the window's length and the mode ("sum-60s", "count-300s-test"), so that a profile edited
    while windows are open starts windows of its own instead of changing those."""

    source: str
    line: int
    start: datetime  # UTC, aligned to the window
    series: str

    @property
    def pk(self) -> str:
        return f"win#{self.source}#{self.line}#{self.series}#{utc_text(self.start)}"

    def gen_pk(self, generation: int) -> str:
        return f"{self.pk}#g{generation}"

    def shard_pk(self, generation: int, shard: int) -> str:
        return f"{self.gen_pk(generation)}#s{shard}"


@dataclass
class Open:
    """What a delivery knows of a window: the generation events join, whether that
    generation's item exists (else the first delivery writes it) and its shard count."""

    generation: int
    exists: bool
    shards: int


@dataclass(frozen=True)
class NewGeneration:
    """The attributes of a generation's item, written by its first delivery."""

    window_seconds: int
    due_at: float
    function: str
    test_mode: bool
    expires_at: int


@dataclass(frozen=True)
class EventWrite:
    """One event's key, to be written with its addition."""

    pk: str
    fingerprint: str
    window: WindowId
    units: int
    expires_at: int


@dataclass(frozen=True)
class WindowWrite:
    """One window's share of a chunk: the generation, the shard, and what is added."""

    window: WindowId
    generation: int
    shard: int
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


@dataclass(frozen=True)
class Generation:
    """A generation's item, as the flusher and the operator read it."""

    window: WindowId
    generation: int
    state: GenState
    window_seconds: int
    due_at: float | None
    shards: int
    function: str
    test_mode: bool
    total_units: int | None = None
    events: int | None = None
    usage_id: int | None = None
    expires_at: int | None = None

    @property
    def instant(self) -> datetime:
        """The usage's date_time: window start plus g seconds."""
        return self.window.start + timedelta(seconds=self.generation)


class WindowStore:
    """Window items in IdempotencyTable (see the module's description)."""

    def __init__(
        self,
        client: DynamoDBClient,
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
        self._cache: OrderedDict[str, Open] = OrderedDict()

    # --- counting ------------------------------------------------------------------------------

    def open_generations(self, windows: Sequence[WindowId]) -> dict[WindowId, Open]:
        """The generation each window's events join now. A cached answer is safe: a closed
        generation refuses the addition, and the window is read again."""
        found: dict[WindowId, Open] = {}
        missing = []
        with self._lock:
            for window in dict.fromkeys(windows):
                cached = self._cache.get(window.pk)
                if cached is not None:
                    found[window] = Open(cached.generation, cached.exists, cached.shards)
                else:
                    missing.append(window)
        if missing:
            heads = self._get_many([w.pk for w in missing])
            gens = {w: int(heads.get(w.pk, {}).get("open_gen", {}).get("N", "0")) for w in missing}
            items = self._get_many([w.gen_pk(g) for w, g in gens.items()])
            for window, head in gens.items():
                item = items.get(window.gen_pk(head)) or {}
                state = item.get("state", {}).get("S")
                shards = int(item["shards"]["N"]) if "shards" in item else self._shards
                # Only a state that says closed means closed: an item read without its state
                # is one being created (its creator's transaction, seen halfway by a store
                # that is not isolated); its events join it, and the write says if it closed.
                if state == GenState.CLOSED:  # closed under us: the next one
                    found[window] = Open(head + 1, False, self._shards)
                else:
                    found[window] = Open(head, state == GenState.OPEN, shards)
                self.remember(window, found[window])
        return found

    def reread(self, window: WindowId) -> Open:
        """The window read again (its generation was closed under a delivery)."""
        with self._lock:
            self._cache.pop(window.pk, None)
        return self.open_generations([window])[window]

    def remember(self, window: WindowId, known: Open) -> None:
        """What a delivery learnt of the window (a copy), for the container's next ones."""
        with self._lock:
            self._cache[window.pk] = Open(known.generation, known.exists, known.shards)
            self._cache.move_to_end(window.pk)
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)

    def shard_for(self, known: Open) -> int:
        return self._choose(known.shards)

    def count(self, events: Sequence[EventWrite], windows: Sequence[WindowWrite]) -> ChunkResult:
        """One transaction: every event's key and every window's addition, or nothing.
        Raises StoreUnavailable for anything but a cancellation or a conflict."""
        actions: list[dict[str, Any]] = [
            {
                "Put": {
                    "TableName": self._table,
                    "Item": {
                        "pk": {"S": e.pk},
                        "status": {"S": "aggregated"},
                        "fingerprint": {"S": e.fingerprint},
                        "window": {"S": e.window.pk},
                        "expires_at": {"N": str(e.expires_at)},
                    },
                    "ConditionExpression": "attribute_not_exists(pk)",
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
            for e in events
        ]
        # An event key records its generation: the same for every event of a window here.
        for action, e in zip(actions, events, strict=True):
            generation = next(w.generation for w in windows if w.window == e.window)
            action["Put"]["Item"]["generation"] = {"N": str(generation)}
        shards_at = len(actions)
        too_big = {n for n, w in enumerate(windows) if w.units > self.share(w)}
        if too_big:  # more than a shard may ever hold (and past DynamoDB's 38 digits)
            return ChunkResult(committed=False, full=too_big)
        for w in windows:
            share = self.share(w)
            actions.append(
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": {"pk": {"S": w.window.shard_pk(w.generation, w.shard)}},
                        "UpdateExpression": "ADD #t :u, #n :n SET expires_at = :x",
                        "ConditionExpression": "attribute_not_exists(closed) AND "
                        "(attribute_not_exists(#t) OR #t <= :room)",
                        "ExpressionAttributeNames": {"#t": "total", "#n": "events"},
                        "ExpressionAttributeValues": {
                            ":u": {"N": str(w.units)},
                            ":n": {"N": str(w.events)},
                            ":x": {"N": str(w.expires_at)},
                            ":room": {"N": str(share - w.units)},
                        },
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                }
            )
        creates: list[int] = []
        for position, w in enumerate(windows):
            if w.create is not None:
                creates.append(position)
                actions.append(self._create_generation(w, w.create))
        assert len(actions) <= MAX_ACTIONS
        try:
            self._client.transact_write_items(TransactItems=actions)  # type: ignore[arg-type]
        except Exception as exc:
            return self._cancelled(exc, len(events), shards_at, windows, creates)
        return ChunkResult(committed=True)

    def share(self, w: WindowWrite) -> int:
        """The most one shard of the window may hold: its share of the total's bound."""
        return MAX_TOTAL_UNITS // self._shards_of(w)

    def _shards_of(self, w: WindowWrite) -> int:
        with self._lock:
            known = self._cache.get(w.window.pk)
        return known.shards if known is not None else self._shards

    def _create_generation(self, w: WindowWrite, new: NewGeneration) -> dict[str, Any]:
        window = w.window
        return {
            "Update": {
                "TableName": self._table,
                "Key": {"pk": {"S": window.gen_pk(w.generation)}},
                "UpdateExpression": "SET #st = if_not_exists(#st, :open), "
                "#src = :src, #line = :line, #start = :start, #gen = :gen, "
                "#ws = if_not_exists(#ws, :ws), series = :series, "
                "shards = if_not_exists(shards, :shards), #fn = if_not_exists(#fn, :fn), "
                "test_mode = if_not_exists(test_mode, :tm), "
                "due_at = if_not_exists(due_at, :due), wpart = if_not_exists(wpart, :wpart), "
                "wsort = if_not_exists(wsort, :wsort), expires_at = :x",
                # created by a container with another WindowShards: read it again, and add
                # to one of the shards it was created with
                "ConditionExpression": "attribute_not_exists(#st) OR "
                "(#st = :open AND shards = :shards)",
                "ExpressionAttributeNames": {
                    "#st": "state",
                    "#src": "source",
                    "#line": "line_id",
                    "#start": "window_start",
                    "#gen": "generation",
                    "#ws": "window_seconds",
                    "#fn": "function",
                },
                "ExpressionAttributeValues": {
                    ":open": {"S": GenState.OPEN.value},
                    ":series": {"S": window.series},
                    ":src": {"S": window.source},
                    ":line": {"N": str(window.line)},
                    ":start": {"S": utc_text(window.start)},
                    ":gen": {"N": str(w.generation)},
                    ":ws": {"N": str(new.window_seconds)},
                    ":shards": {"N": str(self._shards_of(w))},
                    ":fn": {"S": new.function},
                    ":tm": {"BOOL": new.test_mode},
                    ":due": {"N": _num(new.due_at)},
                    ":wpart": {"S": DUE},
                    ":wsort": {"S": _due_sort(new.due_at, window.gen_pk(w.generation))},
                    ":x": {"N": str(new.expires_at)},
                },
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }

    def _cancelled(
        self,
        exc: Exception,
        events: int,
        shards_at: int,
        windows: Sequence[WindowWrite],
        creates: list[int],
    ) -> ChunkResult:
        response = getattr(exc, "response", None)
        error = response.get("Error", {}) if isinstance(response, dict) else {}
        code = error.get("Code")
        if code == "TransactionConflictException":
            return ChunkResult(committed=False, conflict=True)
        if code != "TransactionCanceledException":
            raise StoreUnavailable(f"cannot count events: {type(exc).__name__}") from None
        assert isinstance(response, dict)
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
            elif position < shards_at + len(windows):
                w = position - shards_at
                (result.closed if "closed" in item else result.full).add(w)
            else:
                result.closed.add(creates[position - shards_at - len(windows)])
        if not (result.conflict or result.duplicates or result.closed or result.full):
            result.conflict = True  # cancelled without a reason we know: try again
        return result

    # --- closing -------------------------------------------------------------------------------

    def due(self, now: float, limit: int) -> list[Generation]:
        """Generations due by `now`, oldest first (the sparse index, never a Scan)."""
        return self._query(DUE, None, _due_sort(now, "~"), limit)

    def unsettled(self, limit: int) -> list[Generation]:
        """Every generation neither posted nor queued yet (open or closed), oldest due first."""
        return self._query(DUE, None, None, limit)

    def settled(self, source: str, limit: int) -> list[Generation]:
        return self._query(f"done#{source}", None, None, limit)

    def _query(self, part: str, low: str | None, high: str | None, limit: int) -> list[Generation]:
        condition = "wpart = :p"
        values: dict[str, Any] = {":p": {"S": part}}
        if high is not None:
            condition += " AND wsort <= :hi"
            values[":hi"] = {"S": high}
        found: list[Generation] = []
        start: dict[str, Any] | None = None
        try:
            while len(found) < limit:
                kwargs: dict[str, Any] = {
                    "TableName": self._table,
                    "IndexName": INDEX,
                    "KeyConditionExpression": condition,
                    "ExpressionAttributeValues": values,
                    "Limit": min(1000, limit - len(found)),
                }
                if start:
                    kwargs["ExclusiveStartKey"] = start
                page = self._client.query(**kwargs)
                found += [_generation(item) for item in page.get("Items", [])]
                start = page.get("LastEvaluatedKey")
                if not start:
                    break
        except Exception as exc:
            raise StoreUnavailable(f"cannot read windows: {type(exc).__name__}") from None
        return found

    def close(self, gen: Generation) -> Generation:
        """Close the generation: no event joins it afterwards. Returns it with its exact
        total and event count. Idempotent, so two flushers get the same answer."""
        window, g = gen.window, gen.generation
        condition = "open_gen = :g" + (" OR attribute_not_exists(open_gen)" if g == 0 else "")
        # the window's items go when its generations do (TTL)
        expires = {":x": {"N": str(gen.expires_at or int(self._clock() + 400 * 86_400))}}
        try:
            try:
                self._client.update_item(
                    TableName=self._table,
                    Key={"pk": {"S": window.pk}},
                    UpdateExpression="SET open_gen = :next, expires_at = :x",
                    ConditionExpression=condition,
                    ExpressionAttributeValues={
                        ":g": {"N": str(g)},
                        ":next": {"N": str(g + 1)},
                        **expires,
                    },
                )
            except Exception as exc:
                if not _condition_failed(exc):  # else: moved on already (another flusher)
                    raise
            total = events = 0
            for shard in range(gen.shards):
                response = self._client.update_item(
                    TableName=self._table,
                    Key={"pk": {"S": window.shard_pk(g, shard)}},
                    UpdateExpression="SET closed = :t, expires_at = if_not_exists(expires_at, :x)",
                    ExpressionAttributeValues={":t": {"BOOL": True}, **expires},
                    ReturnValues="ALL_NEW",
                )
                item = response.get("Attributes", {})
                total += int(item.get("total", {}).get("N", "0"))
                events += int(item.get("events", {}).get("N", "0"))
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": window.gen_pk(g)}},
                UpdateExpression="SET #st = :closed, #t = :t, #n = :n",
                ConditionExpression="#st IN (:open, :closed)",
                ExpressionAttributeNames={"#st": "state", "#t": "total", "#n": "events"},
                ExpressionAttributeValues={
                    ":closed": {"S": GenState.CLOSED.value},
                    ":open": {"S": GenState.OPEN.value},
                    ":t": {"N": str(total)},
                    ":n": {"N": str(events)},
                },
            )
        except Exception as exc:
            if _condition_failed(exc):  # posted or queued meanwhile by another flusher
                return self.generation(window, g) or gen
            raise StoreUnavailable(f"cannot close window: {_code(exc)}") from None
        with self._lock:
            self._cache.pop(window.pk, None)
        return Generation(
            **{**gen.__dict__, "state": GenState.CLOSED, "total_units": total, "events": events}
        )

    def finish(self, gen: Generation, state: GenState, usage_id: int | None) -> None:
        """The generation is posted or queued: it leaves the due part of the index."""
        values: dict[str, Any] = {
            ":st": {"S": state.value},
            ":part": {"S": f"done#{gen.window.source}"},
            ":sort": {"S": _window_sort(gen.window, gen.generation)},
            ":closed": {"S": GenState.CLOSED.value},
        }
        update = "SET #st = :st, wpart = :part, wsort = :sort, finished_at = :now"
        values[":now"] = {"N": _num(self._clock())}
        if usage_id is not None:
            update += ", usage_id = :id"
            values[":id"] = {"N": str(usage_id)}
        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": gen.window.gen_pk(gen.generation)}},
                UpdateExpression=update,
                ConditionExpression="#st IN (:closed, :st)",
                ExpressionAttributeNames={"#st": "state"},
                ExpressionAttributeValues=values,
            )
        except Exception as exc:
            if _condition_failed(exc):
                return
            raise StoreUnavailable(f"cannot record window: {type(exc).__name__}") from None

    def generation(self, window: WindowId, g: int) -> Generation | None:
        items = self._get_many([window.gen_pk(g)])
        item = items.get(window.gen_pk(g))
        return _generation(item) if item else None

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


def _generation(item: dict[str, Any]) -> Generation:
    def number(name: str) -> int | None:
        return int(Decimal(item[name]["N"])) if name in item else None

    start = datetime.fromisoformat(item["window_start"]["S"].replace("Z", "+00:00"))
    return Generation(
        window=WindowId(
            item["source"]["S"],
            int(item["line_id"]["N"]),
            start.astimezone(UTC),
            item["series"]["S"],
        ),
        generation=int(item["generation"]["N"]),
        state=GenState(item["state"]["S"]),
        window_seconds=int(item["window_seconds"]["N"]),
        due_at=float(item["due_at"]["N"]) if "due_at" in item else None,
        shards=int(item["shards"]["N"]),
        function=item.get("function", {}).get("S", "sum"),
        test_mode=bool(item.get("test_mode", {}).get("BOOL", False)),
        total_units=number("total"),
        events=number("events"),
        usage_id=number("usage_id"),
        expires_at=number("expires_at"),
    )


def _due_sort(due_at: float, pk: str) -> str:
    return f"{sortable_utc(datetime.fromtimestamp(due_at, UTC))}#{pk}"


def _window_sort(window: WindowId, g: int) -> str:
    return f"{sortable_utc(window.start)}#{window.line:019d}#{g:05d}"


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    error = response.get("Error", {}) if isinstance(response, dict) else {}
    return str(error.get("Code") or type(exc).__name__)


def _num(value: float) -> str:
    return f"{value:.6f}"
