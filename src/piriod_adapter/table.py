"""IdempotencyTable's items: the one module that knows their layouts. The stores call DynamoDB
with what the builders here make and read items back through the readers here
(idempotency.KeyStore: keys, usage owners and parked dead letters; windows.WindowStore:
windows); nothing else writes the table.

    <ns>#<scope>#<key>                     a record's or an event's key (below)
    u#<usage id>                           the key a listed usage settled (`owner`)
    win#<source>#<line>#<series>#<start>   a window: `open_gen`, the generation events join
    ...#g<g>                               generation g: state, due marker, closed total
    ...#g<g>#s<s>                          one shard of generation g's counter
    park#<message id>                      a dead letter parked before SQS could drop it

A key's namespace is `k` for a native record's own key, `d` for a key derived from the
delivery (`{webhook-id}:{index}`), `e` for a source's event id and `a` for a window total's,
so that no key of one kind can take the place of another; a key that would make `pk` longer
than 1,024 bytes is hashed (`kh`, `dh`, `eh`, `ah`). Its `status` is a lifecycle.KeyStatus.
A record's key carries its line and UTC instant (index `by_line`: settling tells which
Piriod usages other keys account for, reconcile compares a period) and, while the record
waits in a queue, its queue message (`waiting`, index `by_waiting`, sharded: the operator
lists ReplayQueue without receiving from it; a parked dead letter is listed there too). An
event's key carries its window, generation and units instead (never a line: an event is not
a Piriod usage). A generation is in index `by_window` under `due` (ordered by due time) until
its total is handed to the lifecycle, then under `done#<source>` (ordered by window).
"""

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from piriod_adapter.lifecycle import KeyStatus, Taker
from piriod_adapter.models import KeyKind, Usage, UsageKey, sortable_utc, utc_text

MAX_PK_BYTES = 1024  # DynamoDB allows 2,048 for a partition key; hashed beyond this
WAITING_SHARDS = 8  # `waiting` spreads over this many index partitions per queue
BY_LINE, BY_WAITING, BY_WINDOW, BY_EVENT = "by_line", "by_waiting", "by_window", "by_event"
DUE = "due"
PARKED = "parked"  # the `waiting` queue name of a parked dead letter
CORRECTING = "correcting"  # ... of a correction that waits on its key (no queue took it)

_NAMESPACES = {
    KeyKind.EXPLICIT: "k",
    KeyKind.DELIVERY: "d",
    KeyKind.EVENT: "e",
    KeyKind.WINDOW: "a",
}
# Attributes of an attempt in progress, and of a wait in a queue: none survive a post.
_ATTEMPT = ("lock_expires", "lock_token", "phase")
# An attempt's phase once it sends nothing more to Piriod, only its end to write (a correction
# that found Piriod holding what it should): if it vanishes now, it left no unseen post.
ENDING = "ending"
_WAIT = ("waiting", "waiting_since", "message_id", "message")
# What a take-over keeps of the item before: an earlier attempt's unseen post, and where the
# record waits while the new attempt is on it.
_KEPT_ON_TAKE_OVER = ("ambiguous_since", *_WAIT)


class StoreUnavailable(RuntimeError):
    """IdempotencyTable could not be read or written."""


def num(value: float) -> str:
    return f"{value:.6f}"


def error_code(exc: Exception) -> str | None:
    """The error code of a failed DynamoDB call, read from its response rather than by
    `client.exceptions`: botocore builds those classes on a client's first error without a
    lock, and threads that race there can each get a copy of their own, so an `except`
    naming one copy misses another (a key claim then looked like a store that is down)."""
    response = getattr(exc, "response", None)
    error = response.get("Error") if isinstance(response, dict) else None
    code = error.get("Code") if isinstance(error, dict) else None
    return str(code) if code else None


def condition_failed(exc: Exception) -> bool:
    """A conditional write refused by its condition."""
    return error_code(exc) == "ConditionalCheckFailedException"


# --- keys --------------------------------------------------------------------------------------


def key_pk(key: UsageKey) -> str:
    """The item key of an idempotency key: its namespace, scope and text (hashed if long)."""
    tag = _NAMESPACES[key.kind]
    pk = f"{tag}#{key.scope}#{key.text}"
    if len(pk.encode("utf-8", "surrogatepass")) <= MAX_PK_BYTES:
        return pk
    digest = hashlib.sha256(key.text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{tag}h#{key.scope}#{digest}"


def key_text(pk: str, kind: KeyKind, scope: str) -> str | None:
    """The text of the idempotency key of `kind` and `scope` whose item key is `pk` (key_pk);
    None when it is kept under a digest (its key was too long), so cannot be read back."""
    prefix = f"{_NAMESPACES[kind]}#{scope}#"
    return pk[len(prefix) :] if pk.startswith(prefix) else None


def waiting_shard(pk: str) -> int:
    digest = hashlib.sha256(pk.encode("utf-8", "surrogatepass")).hexdigest()
    return int(digest[:8], 16) % WAITING_SHARDS


class Holding(NamedTuple):
    """The usage Piriod holds for a key: its quantity as posted, and its id when known."""

    quantity: str
    usage_id: int | None

    def listed(self, window: bool) -> "Holding | None":
        """This holding as Piriod lists it for a key (`window`: an aggregation window's
        total): none for a window total of zero, which is never posted (a restatement to
        zero deleted its usage)."""
        if window and Decimal(self.quantity).is_zero():
            return None
        return self


class KeyState(NamedTuple):
    """What a key's item says. Corrections (SPEC 10) add: `rev`, how many were accepted;
    `applied`, up to which one Piriod (or the record's queue message) reflects them; `target`,
    the quantity of the last amend; `cancelled`; `holding`, the usage Piriod holds for the
    key (none once cancelled, or between an amend's delete and its post); `deleting`, a usage
    whose DELETE went unanswered (asked about before anything is sent again)."""

    status: KeyStatus
    fingerprint: str | None = None
    usage_id: int | None = None
    lock_expires: float | None = None
    attempt_started: float | None = None
    ambiguous_since: float | None = None
    phase: str | None = None
    line: int | None = None
    quantity: str | None = None  # the quantity of the key's last post (or attempt)
    original: str | None = None  # the record's quantity as delivered
    holding: Holding | None = None
    rev: int = 0
    applied: int = 0
    target: str | None = None
    cancelled: bool = False
    deleting: int | None = None
    posted_at: float | None = None
    at: datetime | None = None  # the record's instant

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> "KeyState":
        def number(name: str) -> float | None:
            return float(item[name]["N"]) if name in item else None

        def integer(name: str) -> int | None:
            return int(item[name]["N"]) if name in item else None

        status = KeyStatus(item["status"]["S"])
        quantity = item.get("quantity", {}).get("S")
        usage_id = integer("usage_id")
        held = item.get("held", {}).get("S")
        if held is None and status is KeyStatus.POSTED and quantity is not None:
            held = quantity  # a key written before corrections: posted is held
        line = integer("line")
        return cls(
            status=status,
            fingerprint=item.get("fingerprint", {}).get("S"),
            usage_id=usage_id,
            lock_expires=number("lock_expires"),
            attempt_started=number("attempt_started"),
            ambiguous_since=number("ambiguous_since"),
            phase=item.get("phase", {}).get("S"),
            line=line,
            quantity=quantity,
            original=item.get("original", {}).get("S") or quantity,
            holding=None if held is None else Holding(held, usage_id),
            rev=integer("rev") or 0,
            applied=integer("applied") or 0,
            target=item.get("target", {}).get("S"),
            cancelled=bool(item.get("cancelled", {}).get("BOOL", False)),
            deleting=integer("deleting"),
            posted_at=number("posted_at"),
            at=_instant(item.get("date_time", {}).get("S")),
        )

    @property
    def pending(self) -> bool:
        """A correction was accepted that Piriod does not reflect yet."""
        return self.rev > self.applied

    def locked(self, now: float) -> bool:
        return self.status is KeyStatus.IN_PROGRESS and (self.lock_expires or 0) > now

    def posting(self, now: float) -> bool:
        """Held by an attempt that may be posting right now (not only settling by lookup)."""
        return self.locked(now) and self.phase not in ("settling", ENDING)

    def unsettled_since(self) -> float | None:
        """When an attempt whose outcome is unknown started, if there is one."""
        if self.ambiguous_since is not None:
            return self.ambiguous_since
        if self.status is KeyStatus.IN_PROGRESS and self.phase != ENDING:
            return self.attempt_started  # its holder vanished mid-attempt, maybe mid-post
        return None


class Waiting(NamedTuple):
    """Where a record waits: the queue, its message id there and the message itself."""

    queue: str  # "replay", "dead-letter" or (a parked dead letter) PARKED
    message_id: str
    message: str  # the queue message's JSON
    since: str  # when it failed (parked: when SQS first took it), as sortable UTC text

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> "Waiting":
        return cls(
            queue=item["waiting"]["S"].rpartition("#")[0],
            message_id=item["message_id"]["S"],
            message=item["message"]["S"],
            since=item["waiting_since"]["S"],
        )


class KeyRecord(NamedTuple):
    """What the table says of one record's key (for reconcile): with corrections (SPEC 10),
    the usage Piriod holds for it (`holding`: at its last quantity once an amend is applied;
    none once cancelled), a usage whose DELETE went unanswered (`deleting`), and whether a
    correction accepted on it is not applied yet (`pending`)."""

    key: str
    status: KeyStatus
    usage_id: int | None
    date_time: str
    quantity: str
    holding: Holding | None = None
    cancelled: bool = False
    deleting: int | None = None
    pending: bool = False

    @property
    def expected(self) -> Holding | None:
        """The usage Piriod should list for this key now: the one it holds, except a window
        total of zero, which is never posted (a restatement to zero deleted its usage)."""
        held = self.holding
        return None if held is None else held.listed(self.key.split("#", 1)[0] in ("a", "ah"))

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> "KeyRecord":
        state = KeyState.from_item(item)
        return cls(
            key=item["pk"]["S"],
            status=state.status,
            usage_id=state.usage_id,
            date_time=item["date_time"]["S"],
            quantity=item["quantity"]["S"],
            holding=state.holding,
            cancelled=state.cancelled,
            deleting=state.deleting,
            pending=state.pending,
        )


def _instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def event_alias(key: UsageKey) -> str | None:
    """What a CloudEvent's key is found by (index `by_event`): its scope and the event's
    `id`, which its result names as `event_id`; the key itself is the event's `source` and
    `id` together (SPEC 8), which a correction cannot name. None for every other key."""
    if key.kind is not KeyKind.EVENT or not key.text.startswith("["):
        return None
    try:
        parts = json.loads(key.text)
    except ValueError:
        return None
    if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(p, str) for p in parts)):
        return None
    return f"{key.scope}#{parts[1]}"


def with_alias(item: dict[str, Any], key: UsageKey) -> dict[str, Any]:
    alias = event_alias(key)
    if alias is not None:
        item["event"] = {"S": alias}
    return item


def by_event(alias: str) -> dict[str, Any]:
    """The query of the keys of the CloudEvents with this scope and `id` (keys only)."""
    return {
        "IndexName": BY_EVENT,
        "KeyConditionExpression": "#e = :e",
        "ExpressionAttributeNames": {"#e": "event"},
        "ExpressionAttributeValues": {":e": {"S": alias}},
    }


def claim_item(
    pk: str, usage: Usage, token: str, now: float, lock: float, phase: str, expires_at: int
) -> dict[str, Any]:
    """A key taken by an attempt: held until `lock`, with the record it stands for."""
    item = {
        "pk": {"S": pk},
        "status": {"S": KeyStatus.IN_PROGRESS.value},
        "phase": {"S": phase},
        "lock_expires": {"N": num(lock)},
        "lock_token": {"S": token},
        "attempt_started": {"N": num(now)},
        "fingerprint": {"S": usage.fingerprint},
        "usage_at": {"S": sortable_utc(usage.date_time)},
        "date_time": {"S": usage.date_time_text},
        "quantity": {"S": usage.quantity_text},
        "original": {"S": usage.quantity_text},
        "expires_at": {"N": str(expires_at)},
    }
    if usage.subscription_line is not None:  # an unmapped meter's record has no line yet
        item["line"] = {"N": str(usage.subscription_line)}
    return with_alias(item, usage.key)


def new_key(item: dict[str, Any]) -> dict[str, Any]:
    """The claim of a key nobody has had: put only where there is none."""
    return {"Item": item, "ConditionExpression": "attribute_not_exists(pk)"}


MAX_TRANSACT_ITEMS = 100  # TransactWriteItems' own bound


def new_keys(table_name: str, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The claims of several keys nobody has had, in one TransactWriteItems: each put only
    where there is none (its cancellation reasons come in this order, a refused one with the
    item it found). The keys must be distinct (a transaction touches an item once)."""
    assert 0 < len(items) <= MAX_TRANSACT_ITEMS
    return [
        {
            "Put": {
                "TableName": table_name,
                **new_key(item),
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }
        for item in items
    ]


def take_over(item: dict[str, Any], now: float, taker: Taker) -> dict[str, Any]:
    """The claim of an existing key, for the same record: taken when released or when its
    holder's lock expired, and also where the record waits for this taker (ReplayFunction:
    queued in ReplayQueue, never a rejected or exhausted dead letter; the operator: queued or
    rejected, anywhere). Only the lock is written: the attempt's end writes the rest
    (`finish`). The item before is returned either way."""
    takeable = "#s = :released OR (#s = :in_progress AND lock_expires < :now)"
    values: dict[str, Any] = {
        ":in_progress": {"S": KeyStatus.IN_PROGRESS.value},
        ":released": {"S": KeyStatus.RELEASED.value},
        ":now": {"N": num(now)},
        ":lock": item["lock_expires"],
        ":token": item["lock_token"],
        ":fp": item["fingerprint"],
        ":started": item["attempt_started"],
        ":phase": item["phase"],
    }
    if taker is Taker.REPLAY:
        takeable += " OR (#s = :queued AND begins_with(waiting, :replay))"
        values[":queued"] = {"S": KeyStatus.QUEUED.value}
        values[":replay"] = {"S": "replay#"}
    elif taker is Taker.OPERATOR:
        takeable += " OR #s IN (:queued, :rejected)"
        values[":queued"] = {"S": KeyStatus.QUEUED.value}
        values[":rejected"] = {"S": KeyStatus.REJECTED.value}
    elif taker is Taker.CORRECTION:  # the record the correction names, whatever it is
        takeable += " OR #s = :posted"
        values[":posted"] = {"S": KeyStatus.POSTED.value}
        del values[":fp"]
    return {
        "Key": {"pk": item["pk"]},
        "UpdateExpression": "SET #s = :in_progress, lock_expires = :lock, lock_token = :token, "
        "attempt_started = :started, phase = :phase",
        # A key reused for a different record never takes the lock: it is a conflict.
        "ConditionExpression": f"({takeable})"
        + ("" if taker is Taker.CORRECTION else " AND fingerprint = :fp"),
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": values,
        "ReturnValues": "ALL_OLD",
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }


def taken_over(item: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """The claim as the take-over left it: the new attempt's item and what it keeps."""
    return {**item, **{k: v for k, v in old.items() if k in _KEPT_ON_TAKE_OVER}}


# What an attempt's end writes of its claim: the record as this attempt saw it (a meter's
# newly mapped line, the retention); never a correction's attributes (`rev`, `target`,
# `cancelled`, the revisions): those only its acceptance writes, also during an attempt.
_RECORD = ("fingerprint", "usage_at", "date_time", "line", "expires_at", "original")


def finish(
    pk: str,
    token: str,
    claimed: dict[str, Any],
    status: KeyStatus,
    now: float,
    *,
    quantity: str,
    holding: Holding | None,
    applied: int | None = None,
    ambiguous_since: float | None = None,
    waiting: Waiting | None = None,
    deleting: int | None = None,
    kept: bool = False,
    written: frozenset[str] | None = None,
) -> dict[str, Any]:
    """An attempt's final state written over its claim, while it still holds the lock:
    posted, waiting in a queue (with its message), rejected or cancelled; with what Piriod
    holds for the key now (`holding`), the quantity of this attempt's post (`quantity`: what
    an unseen post of it carries), the corrections it applied (`applied`: up to that
    revision) and a DELETE whose answer was lost (`deleting`). `kept`: posted, but nothing was
    posted now (the key holds its earlier usage): `posted_at` stays the time that usage was
    posted, which finding a usage posted without an id looks back from. What others write on
    the item meanwhile (a correction accepted) is left alone.

    `written`: the claim put the item new (no attempt had the key), and the attempt wrote
    these of its attributes since. The record is then not written again (the put wrote it
    as `claimed` says), and of what an end removes, only what is there: half the request
    for the store to read, in the common case (`make bench`). None: the claim took over an
    item whose other attributes are not known here, so all of it is written."""
    sets = {} if written is not None else {n: claimed[n] for n in _RECORD if n in claimed}
    removes = list(_ATTEMPT)
    sets["status"] = {"S": status.value}
    sets["quantity"] = {"S": quantity}
    if status is KeyStatus.POSTED and not kept:
        sets["posted_at"] = {"N": num(now)}
    if holding is None:
        removes += ["held", "usage_id"]
    else:
        sets["held"] = {"S": holding.quantity}
        if holding.usage_id is not None:
            sets["usage_id"] = {"N": str(holding.usage_id)}
        else:
            removes.append("usage_id")
    if applied is not None:
        sets["applied"] = {"N": str(applied)}
    if ambiguous_since is not None:
        sets["ambiguous_since"] = {"N": num(ambiguous_since)}
    else:
        removes.append("ambiguous_since")
    if deleting is not None:
        sets["deleting"] = {"N": str(deleting)}
    else:
        removes.append("deleting")
    if waiting is not None:
        sets.update(
            waiting={"S": f"{waiting.queue}#{waiting_shard(pk)}"},
            waiting_since={"S": waiting.since},
            message_id={"S": waiting.message_id},
            message={"S": waiting.message},
        )
    else:
        removes += list(_WAIT)
    if written is not None:
        removes = [name for name in removes if name in _ATTEMPT or name in written]
    names = {f"#a{n}": name for n, name in enumerate(sets)}
    values = {f":a{n}": value for n, value in enumerate(sets.values())}
    values[":token"] = {"S": token}
    return {
        "Key": {"pk": {"S": pk}},
        "UpdateExpression": "SET "
        + ", ".join(f"#a{n} = :a{n}" for n in range(len(sets)))
        + " REMOVE "
        + ", ".join(removes),
        "ConditionExpression": "lock_token = :token",
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }


def set_names(request: dict[str, Any]) -> frozenset[str]:
    """The attributes an UpdateItem request of this module SETs (what a fresh claim's
    attempt wrote, for `finish`'s `written`)."""
    update: str = request["UpdateExpression"]
    names: dict[str, str] = request.get("ExpressionAttributeNames", {})
    if not update.startswith("SET "):
        return frozenset()
    clauses = update[4:].split(" REMOVE ", 1)[0]
    targets = (clause.split(" = ", 1)[0].strip() for clause in clauses.split(", "))
    return frozenset(names.get(target, target) for target in targets)


def hold(pk: str, token: str, holding: Holding | None) -> dict[str, Any]:
    """While an attempt holds the key: what Piriod holds for it now (a usage found by
    settling, or none once its DELETE was answered), before the attempt goes on."""
    values: dict[str, Any] = {}
    if holding is None:  # its DELETE answered: nothing held, nothing in doubt
        update = "REMOVE held, usage_id, deleting, ambiguous_since"
    else:  # a usage found: a DELETE in doubt stays flagged until it is seen through
        update = "SET held = :held"
        values[":held"] = {"S": holding.quantity}
        if holding.usage_id is not None:
            update += ", usage_id = :id REMOVE ambiguous_since"
            values[":id"] = {"N": str(holding.usage_id)}
        else:  # a usage found without its id: no earlier id stays beside it
            update += " REMOVE usage_id, ambiguous_since"
    return _held_update(pk, token, update, values)


def mark_unseen(pk: str, token: str, since: float) -> dict[str, Any]:
    """A key taken over from a holder that vanished mid-attempt: its attempt's start stays
    flagged as an unseen post's (the new attempt's own start overwrote `attempt_started`)."""
    return _held_update(pk, token, "SET ambiguous_since = :since", {":since": {"N": num(since)}})


def mark_deleting(
    pk: str, token: str, usage_id: int, correcting: Waiting | None = None
) -> dict[str, Any]:
    """An attempt is about to DELETE `usage_id`: flagged until a later write of the key says
    what Piriod holds (hold, finish; release keeps it). `correcting`: the correction being
    applied waits on the key meanwhile (as `wait_on_key` writes it)."""
    values: dict[str, Any] = {":id": {"N": str(usage_id)}}
    update = "SET deleting = :id"
    if correcting is not None:
        update += ", " + _correcting(pk, correcting, values)
    return _held_update(pk, token, update, values)


def wait_on_key(pk: str, token: str, correcting: Waiting) -> dict[str, Any]:
    """The correction an attempt applies waits on the key until the attempt's finish (listed
    under CORRECTING, with its record's message), so that FlushFunction finishes it if this
    attempt cannot (its end write failed, or it stopped); the finish removes it. The attempt
    sends nothing more (phase ENDING): if it vanishes, the next holder has no post of it to
    look up."""
    values: dict[str, Any] = {":ending": {"S": ENDING}}
    update = "SET phase = :ending, " + _correcting(pk, correcting, values)
    return _held_update(pk, token, update, values)


def _held_update(pk: str, token: str, update: str, values: dict[str, Any]) -> dict[str, Any]:
    """An update of a key by the attempt that holds it (its lock `token`)."""
    return {
        "Key": {"pk": {"S": pk}},
        "UpdateExpression": update,
        "ConditionExpression": "lock_token = :token",
        "ExpressionAttributeValues": {**values, ":token": {"S": token}},
    }


def _correcting(pk: str, correcting: Waiting, values: dict[str, Any]) -> str:
    """What lists a key under CORRECTING, with its record's message: the SET clauses to add,
    their values added to `values`."""
    values.update(
        {
            ":w": {"S": f"{CORRECTING}#{waiting_shard(pk)}"},
            ":ws": {"S": correcting.since},
            ":mid": {"S": correcting.message_id},
            ":m": {"S": correcting.message},
        }
    )
    return "waiting = :w, waiting_since = :ws, message_id = :mid, message = :m"


def mark_posting(pk: str, token: str, quantity: str | None = None) -> dict[str, Any]:
    """An attempt is about to post: identical records see it as posting from now (a settling
    one's), and an unseen post of it carries `quantity` (an amended record's)."""
    values: dict[str, Any] = {":posting": {"S": "posting"}}
    update = "SET phase = :posting"
    if quantity is not None:
        update += ", quantity = :q"
        values[":q"] = {"S": quantity}
    return _held_update(pk, token, update, values)


def settle(pk: str, token: str, usage_id: int, now: float) -> dict[str, Any]:
    """An earlier, unseen attempt did land in Piriod as `usage_id` (with the key's quantity),
    and the record is done: posted."""
    return {
        "Key": {"pk": {"S": pk}},
        "UpdateExpression": "SET #s = :posted, usage_id = :id, posted_at = :now, held = quantity "
        "REMOVE " + ", ".join((*_ATTEMPT, "ambiguous_since", *_WAIT)),
        "ConditionExpression": "lock_token = :token",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": {
            ":posted": {"S": KeyStatus.POSTED.value},
            ":id": {"N": str(usage_id)},
            ":now": {"N": num(now)},
            ":token": {"S": token},
        },
    }


def release(
    pk: str,
    token: str,
    ambiguous_since: float | None,
    deleting: int | None = None,
    correcting: Waiting | None = None,
) -> dict[str, Any]:
    """A key freed by its holder, an unseen post (or a DELETE whose answer was lost) kept
    flagged for the next holder. `correcting`: a correction that could not be applied nor
    placed in a queue waits on the key itself (listed under CORRECTING, with its record's
    message), for FlushFunction to apply."""
    values: dict[str, Any] = {
        ":status": {"S": KeyStatus.RELEASED.value},
        ":token": {"S": token},
    }
    update = "SET #s = :status"
    if ambiguous_since is not None:
        update += ", ambiguous_since = :since"
        values[":since"] = {"N": num(ambiguous_since)}
    if deleting is not None:
        update += ", deleting = :deleting"
        values[":deleting"] = {"N": str(deleting)}
    if correcting is not None:
        update += ", " + _correcting(pk, correcting, values)
    return {
        "Key": {"pk": {"S": pk}},
        "UpdateExpression": update + " REMOVE lock_expires, lock_token",
        "ConditionExpression": "lock_token = :token",
        "ExpressionAttributeNames": {"#s": "status"},
        "ExpressionAttributeValues": values,
    }


def take_usage(usage_id: int, owner: str, expires_at: int) -> dict[str, Any]:
    """A listed usage taken for one key (one usage settles at most one record)."""
    return {
        "Key": {"pk": {"S": f"u#{usage_id}"}},
        "UpdateExpression": "SET #o = :owner, expires_at = :expires",
        "ConditionExpression": "attribute_not_exists(#o) OR #o = :owner",
        "ExpressionAttributeNames": {"#o": "owner"},
        "ExpressionAttributeValues": {":owner": {"S": owner}, ":expires": {"N": str(expires_at)}},
    }


def give_back(usage_id: int, owner: str) -> dict[str, Any]:
    return {
        "Key": {"pk": {"S": f"u#{usage_id}"}},
        "UpdateExpression": "REMOVE #o",
        "ConditionExpression": "#o = :owner",
        "ExpressionAttributeNames": {"#o": "owner"},
        "ExpressionAttributeValues": {":owner": {"S": owner}},
    }


def line_between(line: int, start: str, end: str) -> dict[str, Any]:
    """The query of every record key of a line with its UTC instant in [start, end]."""
    return {
        "IndexName": BY_LINE,
        "KeyConditionExpression": "line = :line AND usage_at BETWEEN :a AND :b",
        "ExpressionAttributeValues": {
            ":line": {"N": str(line)},
            ":a": {"S": start},
            ":b": {"S": end},
        },
    }


def waiting_in(queue: str, shard: int) -> dict[str, Any]:
    """The query of one shard of what waits in `queue`, oldest first."""
    return {
        "IndexName": BY_WAITING,
        "KeyConditionExpression": "waiting = :w",
        "ExpressionAttributeValues": {":w": {"S": f"{queue}#{shard}"}},
    }


IDENTICAL_WITHIN = timedelta(seconds=2)  # keys this close may be listed alike


def identical_window(usage: Usage) -> tuple[str, str]:
    """The instants of the keys whose usage may be listed like `usage`: strictly within two
    seconds. Piriod may list a time cut or rounded to the second, and a listed time matches a
    record less than a second from it (Listed.may_be), so a usage listed the same as `usage`
    may be another record's up to two seconds away."""
    two = IDENTICAL_WITHIN - timedelta(microseconds=1)
    return sortable_utc(usage.date_time - two), sortable_utc(usage.date_time + two)


# --- aggregation windows -------------------------------------------------------------------


class WindowId(NamedTuple):
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


class Generation(NamedTuple):
    """A generation's item, as the flusher and the operator read it. Its state is OPEN
    (events join it) or CLOSED (its total is final); once its total is handed to the
    lifecycle (`handed`), where its usage is is read from its key."""

    window: WindowId
    generation: int
    closed: bool
    window_seconds: int
    due_at: float | None
    shards: int
    function: str
    test_mode: bool
    total_units: int | None = None
    events: int | None = None
    handed: bool = False
    expires_at: int | None = None
    adjust_units: int = 0  # corrections of its events accepted after it closed (SPEC 10)
    adjust_events: int = 0
    adjust_seq: int = 0  # how many times corrections were added to it
    handed_seq: int = 0  # the adjust_seq its usage was last handed over with

    @property
    def corrected_units(self) -> int:
        """Its total with the corrections of its events: what its usage should be."""
        return (self.total_units or 0) + self.adjust_units

    @property
    def restating(self) -> bool:
        """Corrected after it closed, since its usage was last handed over (or before it ever
        was: a correction that came while its total was being posted). Its usage is restated
        through its key's amend, which settles whatever an earlier attempt posted."""
        return self.closed and self.adjust_seq > self.handed_seq

    @property
    def instant(self) -> datetime:
        """The usage's date_time: window start plus g seconds."""
        return self.window.start + timedelta(seconds=self.generation)

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> "Generation":
        def number(name: str) -> int | None:
            return int(Decimal(item[name]["N"])) if name in item else None

        start = datetime.fromisoformat(item["window_start"]["S"].replace("Z", "+00:00"))
        return cls(
            window=WindowId(
                item["source"]["S"],
                int(item["line_id"]["N"]),
                start.astimezone(UTC),
                item["series"]["S"],
            ),
            generation=int(item["generation"]["N"]),
            closed=item["state"]["S"] == CLOSED,
            window_seconds=int(item["window_seconds"]["N"]),
            due_at=float(item["due_at"]["N"]) if "due_at" in item else None,
            shards=int(item["shards"]["N"]),
            function=item.get("function", {}).get("S", "sum"),
            test_mode=bool(item.get("test_mode", {}).get("BOOL", False)),
            total_units=number("total"),
            events=number("events"),
            handed="handed_at" in item,
            expires_at=number("expires_at"),
            adjust_units=number("adjust") or 0,
            adjust_events=number("adjust_events") or 0,
            adjust_seq=number("adjust_seq") or 0,
            handed_seq=number("handed_seq") or 0,
        )


OPEN, CLOSED = "open", "closed"  # a generation's `state`


def event_key(
    pk: str, usage: Usage, window: WindowId, generation: int, units: int, expires_at: int
) -> dict[str, Any]:
    """An event's key, put with its addition (in one transaction); refused when it exists."""
    return {
        "Put": {
            "Item": with_alias(
                {
                    "pk": {"S": pk},
                    "status": {"S": KeyStatus.AGGREGATED.value},
                    "fingerprint": {"S": usage.fingerprint},
                    "window": {"S": window.pk},
                    "generation": {"N": str(generation)},
                    "units": {"N": str(units)},
                    "date_time": {"S": usage.date_time_text},
                    "quantity": {"S": usage.quantity_text},
                    "expires_at": {"N": str(expires_at)},
                },
                usage.key,
            ),
            "ConditionExpression": "attribute_not_exists(pk)",
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }


def add_to_shard(
    window: WindowId, generation: int, shard: int, units: int, events: int, room: int, expires: int
) -> dict[str, Any]:
    """An addition to one shard of an open generation: refused once the shard is closed, or
    when it would take the shard past `room` (its share of the total's bound)."""
    return {
        "Update": {
            "Key": {"pk": {"S": window.shard_pk(generation, shard)}},
            "UpdateExpression": "ADD #t :u, #n :n SET expires_at = :x",
            "ConditionExpression": "attribute_not_exists(closed) AND "
            "(attribute_not_exists(#t) OR #t <= :room)",
            "ExpressionAttributeNames": {"#t": "total", "#n": "events"},
            "ExpressionAttributeValues": {
                ":u": {"N": str(units)},
                ":n": {"N": str(events)},
                ":x": {"N": str(expires)},
                ":room": {"N": str(room - units)},
            },
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }


def create_generation(
    window: WindowId,
    generation: int,
    *,
    shards: int,
    window_seconds: int,
    due_at: float,
    function: str,
    test_mode: bool,
    expires_at: int,
) -> dict[str, Any]:
    """A generation's item, written with its first addition (its due marker). Refused when
    it is closed, or was created with another shard count (read again, and add to one of
    its own)."""
    return {
        "Update": {
            "Key": {"pk": {"S": window.gen_pk(generation)}},
            "UpdateExpression": "SET #st = if_not_exists(#st, :open), "
            "#src = :src, #line = :line, #start = :start, #gen = :gen, "
            "#ws = if_not_exists(#ws, :ws), series = :series, "
            "shards = if_not_exists(shards, :shards), #fn = if_not_exists(#fn, :fn), "
            "test_mode = if_not_exists(test_mode, :tm), "
            "due_at = if_not_exists(due_at, :due), wpart = if_not_exists(wpart, :wpart), "
            "wsort = if_not_exists(wsort, :wsort), expires_at = :x",
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
                ":open": {"S": OPEN},
                ":series": {"S": window.series},
                ":src": {"S": window.source},
                ":line": {"N": str(window.line)},
                ":start": {"S": utc_text(window.start)},
                ":gen": {"N": str(generation)},
                ":ws": {"N": str(window_seconds)},
                ":shards": {"N": str(shards)},
                ":fn": {"S": function},
                ":tm": {"BOOL": test_mode},
                ":due": {"N": num(due_at)},
                ":wpart": {"S": DUE},
                ":wsort": {"S": due_sort(due_at, window.gen_pk(generation))},
                ":x": {"N": str(expires_at)},
            },
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }


def advance_head(window: WindowId, generation: int, expires_at: int) -> dict[str, Any]:
    """Closing generation g, first step: events that read the window from now on join g+1."""
    condition = "open_gen = :g" + (" OR attribute_not_exists(open_gen)" if generation == 0 else "")
    return {
        "Key": {"pk": {"S": window.pk}},
        "UpdateExpression": "SET open_gen = :next, expires_at = :x",
        "ConditionExpression": condition,
        "ExpressionAttributeValues": {
            ":g": {"N": str(generation)},
            ":next": {"N": str(generation + 1)},
            ":x": {"N": str(expires_at)},
        },
    }


def close_shard(window: WindowId, generation: int, shard: int, expires_at: int) -> dict[str, Any]:
    """Closing generation g, second step, per shard: no addition after this; its final
    total and event count are returned."""
    return {
        "Key": {"pk": {"S": window.shard_pk(generation, shard)}},
        "UpdateExpression": "SET closed = :t, expires_at = if_not_exists(expires_at, :x)",
        "ExpressionAttributeValues": {":t": {"BOOL": True}, ":x": {"N": str(expires_at)}},
        "ReturnValues": "ALL_NEW",
    }


def close_generation(window: WindowId, generation: int, total: int, events: int) -> dict[str, Any]:
    """Closing generation g, last step: its state and exact total (the same total whoever
    closes it)."""
    return {
        "Key": {"pk": {"S": window.gen_pk(generation)}},
        "UpdateExpression": "SET #st = :closed, #t = :t, #n = :n",
        "ExpressionAttributeNames": {"#st": "state", "#t": "total", "#n": "events"},
        "ExpressionAttributeValues": {
            ":closed": {"S": CLOSED},
            ":t": {"N": str(total)},
            ":n": {"N": str(events)},
        },
        "ReturnValues": "ALL_NEW",
    }


def hand_over(gen: Generation, now: float) -> dict[str, Any]:
    """A closed generation whose total the lifecycle has (posted, queued, or nothing to
    post), with the corrections of its events it was read with (`adjust_seq`): it leaves the
    due part of the index. Refused when more corrections came since (it stays due: the next
    flush restates it)."""
    seen = "attribute_not_exists(adjust_seq)" if not gen.adjust_seq else "adjust_seq = :seq"
    values: dict[str, Any] = {
        ":part": {"S": f"done#{gen.window.source}"},
        ":sort": {"S": window_sort(gen.window, gen.generation)},
        ":now": {"N": num(now)},
        ":closed": {"S": CLOSED},
        ":handed": {"N": str(gen.adjust_seq)},
    }
    if gen.adjust_seq:
        values[":seq"] = {"N": str(gen.adjust_seq)}
    return {
        "Key": {"pk": {"S": gen.window.gen_pk(gen.generation)}},
        "UpdateExpression": "SET wpart = :part, wsort = :sort, handed_at = :now, "
        "handed_seq = :handed",
        "ConditionExpression": f"#st = :closed AND {seen}",
        "ExpressionAttributeNames": {"#st": "state"},
        "ExpressionAttributeValues": values,
    }


def generations(
    part: str,
    high: str | None,
    limit: int,
    *,
    newest_first: bool = False,
    line: int | None = None,
) -> dict[str, Any]:
    """The query of one part of `by_window` (`due`, or `done#<source>`), of one line only
    when given (a filter: DynamoDB reads `limit` items, then filters)."""
    condition = "wpart = :p"
    values: dict[str, Any] = {":p": {"S": part}}
    if high is not None:
        condition += " AND wsort <= :hi"
        values[":hi"] = {"S": high}
    request: dict[str, Any] = {
        "IndexName": BY_WINDOW,
        "KeyConditionExpression": condition,
        "ExpressionAttributeValues": values,
        "Limit": limit,
        "ScanIndexForward": not newest_first,
    }
    if line is not None:
        request["FilterExpression"] = "line_id = :line"
        values[":line"] = {"N": str(line)}
    return request


def due_sort(due_at: float, pk: str) -> str:
    return f"{sortable_utc(datetime.fromtimestamp(due_at, UTC))}#{pk}"


def window_sort(window: WindowId, generation: int) -> str:
    return f"{sortable_utc(window.start)}#{window.line:019d}#{generation:05d}"


# --- parked dead letters -------------------------------------------------------------------


def parked(message_id: str, body: str, first_sent: datetime, now: float) -> dict[str, Any]:
    """A dead letter parked whole before SQS could drop it: listed with what waits (its
    `waiting` queue is PARKED). Written once per message id; it never expires."""
    pk = f"park#{message_id}"
    return {
        "Item": {
            "pk": {"S": pk},
            "waiting": {"S": f"{PARKED}#{waiting_shard(pk)}"},
            "waiting_since": {"S": sortable_utc(first_sent)},
            "message_id": {"S": message_id},
            "message": {"S": body},
            "parked_at": {"N": num(now)},
        },
    }


def parked_key(message_id: str) -> dict[str, Any]:
    return {"Key": {"pk": {"S": f"park#{message_id}"}}}


# --- corrections (SPEC 10) -------------------------------------------------------------------

MAX_CORRECTIONS = 1_000  # corrections a key takes (each keeps its id and its revision)


def correction_attribute(correction_id: str) -> str:
    """The attribute that remembers a correction id on its key (its revision), so that a
    retried correction is applied once."""
    return "cid_" + hashlib.sha256(correction_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


_SHOWN_ID_BYTES = 64  # a correction id kept whole in the key's list of revisions


def shown_id(correction_id: str) -> str:
    """A correction id as the key's list of revisions keeps it (`show KEY`): whole up to 64
    bytes of UTF-8, else its start and a digest of the whole, so that a key's item stays far
    below DynamoDB's 400 KB with MAX_CORRECTIONS of the longest ids (255 characters of up to
    4 bytes each). Telling a retried correction apart uses the whole id (its attribute)."""
    raw = correction_id.encode("utf-8", "surrogatepass")
    if len(raw) <= _SHOWN_ID_BYTES:
        return correction_id
    start = raw[:24].decode("utf-8", "ignore")
    return f"{start}…sha256:{hashlib.sha256(raw).hexdigest()[:16]}"


def _accepted(
    action: str, quantity: str | None, correction_id: str, now: float
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The update, names and values that accept a correction on its key: the next revision,
    remembered under the correction's id and in the key's list of revisions."""
    entry: dict[str, Any] = {
        "action": {"S": action},
        "correction_id": {"S": shown_id(correction_id)},
        "at": {"S": sortable_utc(datetime.fromtimestamp(now, UTC))},
    }
    if quantity is not None:
        entry["quantity"] = {"S": quantity}
    update = (
        "SET rev = if_not_exists(rev, :zero) + :one, #cid = if_not_exists(rev, :zero) + :one, "
        "revisions = list_append(if_not_exists(revisions, :none), :entry)"
    )
    values: dict[str, Any] = {
        ":zero": {"N": "0"},
        ":one": {"N": "1"},
        ":none": {"L": []},
        ":entry": {"L": [{"M": entry}]},
        ":yes": {"BOOL": True},
        ":max": {"N": str(MAX_CORRECTIONS)},
    }
    if action == "cancel":
        update += ", cancelled = :yes"
    return update, {"#cid": correction_attribute(correction_id)}, values


_ACCEPTABLE = (
    "attribute_exists(pk) AND attribute_not_exists(#cid) AND NOT (cancelled = :yes) AND "
    "(attribute_not_exists(rev) OR rev < :max)"
)


def accept_correction(
    pk: str, action: str, quantity: str | None, correction_id: str, now: float
) -> dict[str, Any]:
    """A correction accepted on a record's key: its revision, and what the record is now
    (`target`, or `cancelled`). Refused when the key does not exist, already has this
    correction, is cancelled, or has had MAX_CORRECTIONS (the item before says which)."""
    update, names, values = _accepted(action, quantity, correction_id, now)
    if quantity is not None:
        update += ", target = :target"
        values[":target"] = {"S": quantity}
    return {
        "Key": {"pk": {"S": pk}},
        "UpdateExpression": update,
        "ConditionExpression": _ACCEPTABLE,
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
        "ReturnValues": "ALL_NEW",
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }


def correct_event(
    pk: str,
    action: str,
    quantity: str | None,
    units: int,
    correction_id: str,
    now: float,
    *,
    seen_units: int,
    seen_rev: int,
    generation: int,
) -> dict[str, Any]:
    """A correction of a counted event, in the transaction that changes its window by the
    difference: accepted as on a record's key, with the event's units now. Refused (as
    above) also when another correction of it, or a change of generation, came since it was
    read (its units, revision or generation differ)."""
    update, names, values = _accepted(action, quantity, correction_id, now)
    update += ", #u = :units"
    names["#u"] = "units"
    values.update(
        {
            ":units": {"N": str(units)},
            ":seen": {"N": str(seen_units)},
            ":g": {"N": str(generation)},
        }
    )
    same_rev = "attribute_not_exists(rev)"
    if seen_rev:
        same_rev = "rev = :rev"
        values[":rev"] = {"N": str(seen_rev)}
    if quantity is not None:
        update += ", quantity = :q"
        values[":q"] = {"S": quantity}
    return {
        "Update": {
            "Key": {"pk": {"S": pk}},
            "UpdateExpression": update,
            "ConditionExpression": f"{_ACCEPTABLE} AND #u = :seen AND generation = :g AND "
            f"{same_rev}",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }


def adjust_shard(
    window: WindowId, generation: int, shard: int, units: int, events: int, room: int
) -> dict[str, Any]:
    """Corrections of events counted in an open generation: its total changes by their
    difference (a shard may go below zero; the shards' sum is the total). Refused once the
    shard is closed, or past its share of the total's bound."""
    return {
        "Update": {
            "Key": {"pk": {"S": window.shard_pk(generation, shard)}},
            "UpdateExpression": "ADD #t :u, #n :n",
            "ConditionExpression": "attribute_not_exists(closed) AND "
            "(attribute_not_exists(#t) OR #t <= :room)",
            "ExpressionAttributeNames": {"#t": "total", "#n": "events"},
            "ExpressionAttributeValues": {
                ":u": {"N": str(units)},
                ":n": {"N": str(events)},
                ":room": {"N": str(room - max(0, units))},
            },
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }


def adjust_generation(
    window: WindowId, generation: int, units: int, events: int, now: float, *, seen_seq: int
) -> dict[str, Any]:
    """Corrections of events of a closed generation: they wait in it (`adjust`), and it is
    due again, so that the next flush restates its usage. Refused while it is open (the
    events' shards take the difference then), and when other corrections were added since it
    was read (`seen_seq`: its total was bounded as read)."""
    seen = "adjust_seq = :seq" if seen_seq else "attribute_not_exists(adjust_seq)"
    return {
        "Update": {
            "Key": {"pk": {"S": window.gen_pk(generation)}},
            "UpdateExpression": "ADD adjust :u, adjust_events :n, adjust_seq :one "
            "SET wpart = :due, wsort = :sort, due_at = :now",
            "ConditionExpression": f"#st = :closed AND {seen}",
            "ExpressionAttributeNames": {"#st": "state"},
            "ExpressionAttributeValues": {
                ":u": {"N": str(units)},
                ":n": {"N": str(events)},
                ":one": {"N": "1"},
                ":due": {"S": DUE},
                ":sort": {"S": due_sort(now, window.gen_pk(generation))},
                ":now": {"N": num(now)},
                ":closed": {"S": CLOSED},
                **({":seq": {"N": str(seen_seq)}} if seen_seq else {}),
            },
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
    }


def revisions_of(item: dict[str, Any]) -> list[dict[str, Any]]:
    """A key's accepted corrections, in order (`show KEY`): revision, action, quantity,
    correction id and when."""
    found = []
    for number, entry in enumerate(item.get("revisions", {}).get("L", []), start=1):
        fields = entry.get("M", {})
        found.append(
            {
                "revision": number,
                "action": fields.get("action", {}).get("S"),
                "quantity": fields.get("quantity", {}).get("S"),
                "correction_id": fields.get("correction_id", {}).get("S"),
                "at": fields.get("at", {}).get("S"),
            }
        )
    return found
