"""The operator's side of corrections (SPEC 10): `cancel KEY` and `amend KEY --quantity Q`
build the body a sender would POST to /v1/corrections, which the route's own code reads and
applies (piriod_adapter.corrections: read, accepted on the key, applied as a transition of
the record's lifecycle); `show KEY` reads what a key says: the record or event, where it is,
what Piriod holds for it, and each correction accepted on it (revision, action, quantity,
correction id, when, applied or pending).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

from piriod_adapter.lifecycle import KeyStatus
from piriod_adapter.models import KeyKind
from piriod_adapter.table import CORRECTING, Generation, KeyState, revisions_of

if TYPE_CHECKING:
    from piriod_adapter.runtime import Runtime

QUANTITY = "@@quantity@@"  # where the quantity's JSON number goes, its digits as typed

KINDS = {
    KeyKind.EXPLICIT: "idempotency_key",
    KeyKind.DELIVERY: "webhook-id:index",
    KeyKind.EVENT: "event_id",
}


def new_correction_id() -> str:
    """A correction id for an operator's correction: running the command again with it is
    the same correction (a duplicate), never a second one."""
    return f"op-{uuid.uuid4().hex}"


def correction_body(
    action: str, key: str, source: str | None, quantity: str | None, correction_id: str
) -> bytes:
    """The body a sender would POST for this one correction. `quantity` is a JSON number's
    text, put in as it is (its digits reach Piriod unchanged, as a sender's would)."""
    entry: dict[str, Any] = {"action": action, "key": key, "correction_id": correction_id}
    if source is not None:
        entry["source"] = source
    if quantity is not None:
        entry["quantity"] = QUANTITY
    text = json.dumps({"corrections": [entry]})
    if quantity is not None:
        text = text.replace(json.dumps(QUANTITY), quantity, 1)
    return text.encode("utf-8", "surrogatepass")


def where(source: str | None) -> str:
    return f"source {source}" if source else "native route"


# --- show KEY ------------------------------------------------------------------------------


def key_view(runtime: Runtime, text: str, source: str | None) -> dict[str, Any] | None:
    """What the key `text` says (as a correction names it: a native record's idempotency_key
    or `{webhook-id}:{index}`, or with `source` an event's event_id), or None when the
    adapter holds no such key. Raises StoreUnavailable."""
    from piriod_adapter.corrections import keys_named

    named = keys_named(text, source)
    items = runtime.store.items([pk for _, pk in named])
    found = next(((key, pk) for key, pk in named if pk in items), None)
    if found is None:
        return None
    key, pk = found
    item = items[pk]
    view: dict[str, Any] = {
        "key": text,
        "source": source,
        "kind": KINDS.get(key.kind, key.kind.value),
        "item": pk,
    }
    if "window" in item:
        return {**view, **_event(runtime, item)}
    return {**view, **_record(item)}


def _record(item: dict[str, Any]) -> dict[str, Any]:
    """A record's key: the record, its status, where it waits, what Piriod holds for it, and
    its revisions (applied: up to the revision Piriod, or the record's queue message,
    reflects)."""
    state = KeyState.from_item(item)
    held = state.holding
    waiting = item.get("waiting", {}).get("S")
    revisions = [
        {**one, "state": "applied" if one["revision"] <= state.applied else "pending"}
        for one in revisions_of(item)
    ]
    return {
        "status": state.status.value,
        "record": {
            "subscription_line": state.line,
            "date_time": item.get("date_time", {}).get("S"),
            "quantity": state.original,
        },
        "quantity_now": None if state.cancelled else (state.target or state.original),
        "cancelled": state.cancelled,
        "piriod_holds": None
        if held is None
        else {"usage_id": held.usage_id, "quantity": held.quantity},
        "deleting": state.deleting,
        "waiting": None
        if waiting is None
        else {
            "queue": waiting.rpartition("#")[0],
            "message_id": item.get("message_id", {}).get("S"),
        },
        "revision": state.rev,
        "applied": state.applied,
        "revisions": revisions,
    }


def _event(runtime: Runtime, item: dict[str, Any]) -> dict[str, Any]:
    """A counted event's key: the event now, its window generation and that generation's
    usage (what Piriod holds is the total of all its events), and its revisions (applied:
    counted in its generation's total, and in Piriod once the generation was flushed;
    pending: its generation waits for the next FlushFunction run, or its restated total
    waits in a queue)."""
    from piriod_adapter.flush import window_key
    from piriod_adapter.table import key_pk
    from piriod_operator.windows import row

    g = int(item["generation"]["N"])
    gen_pk = f"{item['window']['S']}#g{g}"
    found = runtime.store.items([gen_pk])
    gen = Generation.from_item(found[gen_pk]) if gen_pk in found else None
    holds = None
    window: dict[str, Any] = {"item": gen_pk, "generation": g, "state": "gone"}
    total_pending = False
    if gen is not None:
        total_pk = key_pk(window_key(gen.window, gen.generation))
        total = runtime.store.states([total_pk]).get(total_pk) if gen.handed else None
        shown = row(gen)
        window = {
            "subscription_line": gen.window.line,
            "window_start": shown.window_start,
            "generation": g,
            "state": _generation_state(gen, total),
            "usage_date_time": gen.instant.isoformat().replace("+00:00", "Z"),
        }
        if total is not None and total.holding is not None:
            holds = {"usage_id": total.holding.usage_id, "quantity": total.holding.quantity}
        total_pending = total is not None and (
            total.pending or total.status is not KeyStatus.POSTED
        )
    handed_at = found[gen_pk].get("handed_at", {}).get("N") if gen is not None else None
    revisions = [
        {**one, "state": _event_revision(one["at"], gen, handed_at, total_pending)}
        for one in revisions_of(item)
    ]
    cancelled = bool(item.get("cancelled", {}).get("BOOL", False))
    return {
        "status": "cancelled" if cancelled else KeyStatus.AGGREGATED.value,
        "event": {
            "date_time": item.get("date_time", {}).get("S"),
            "quantity": item.get("quantity", {}).get("S"),
        },
        "quantity_now": None if cancelled else item.get("quantity", {}).get("S"),
        "cancelled": cancelled,
        "window": window,
        "piriod_holds": holds,
        "revision": int(item.get("rev", {}).get("N", "0")),
        "revisions": revisions,
    }


def _generation_state(gen: Generation, total: KeyState | None) -> str:
    """As `piriod-adapter windows` says it, with `restating` for a flushed generation whose
    events were corrected since (the next FlushFunction run restates its usage)."""
    from piriod_operator.windows import _state

    if gen.restating:
        return "restating"
    return _state(gen, total)


def _event_revision(
    at: str | None, gen: Generation | None, handed_at: str | None, total_pending: bool
) -> str:
    """Whether one correction of an event is applied: counted in an open generation's total
    (posted when it closes), or in a flushed generation's usage; pending while its closed
    generation waits to be restated, or its restated total waits in a queue."""
    if gen is None:
        return "unknown"
    if not gen.closed:
        return "applied"
    if not gen.handed or total_pending:
        return "pending"
    if not gen.restating:
        return "applied"
    handed = datetime.fromtimestamp(float(handed_at or 0), UTC)
    accepted = _instant(at)
    return "applied" if accepted is not None and accepted <= handed else "pending"


def _instant(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def render_key(view: dict[str, Any], out: TextIO) -> None:
    """A key for a person: what it is, where it is, what Piriod holds, its revisions."""
    out.write(f"key {view['key']!r} ({where(view['source'])}, {view['kind']}): {view['status']}\n")
    if "record" in view:
        record = view["record"]
        out.write(
            f"record: line {record['subscription_line']}, {record['date_time']}, quantity "
            f"{record['quantity']} as delivered\n"
        )
    else:
        event, window = view["event"], view["window"]
        out.write(f"event: {event['date_time']}\n")
        if "window_start" in window:
            out.write(
                f"window: line {window['subscription_line']}, {window['window_start']}, "
                f"generation {window['generation']}, {window['state']} (its usage is at "
                f"{window['usage_date_time']}, the total of all its events)\n"
            )
        else:
            out.write(f"window: {window['item']} is gone (expired)\n")
    now = view["quantity_now"]
    out.write(f"quantity now: {'none (cancelled)' if now is None else now}\n")
    holds = view["piriod_holds"]
    if holds is None:
        out.write("Piriod holds: nothing for this key\n")
    else:
        usage = f"usage {holds['usage_id']}" if holds["usage_id"] else "a usage (id not known)"
        out.write(f"Piriod holds: {usage}, quantity {holds['quantity']}\n")
    if view.get("deleting"):
        out.write(
            f"deleting: usage {view['deleting']} (whether its DELETE went through is not "
            "known; Piriod is asked before anything is sent again)\n"
        )
    waiting = view.get("waiting")
    if waiting and waiting["queue"] == CORRECTING:
        out.write(
            "waits on its key: no queue could take its correction; the next FlushFunction run "
            "applies it\n"
        )
    elif waiting:
        out.write(
            f"waits in: {waiting['queue']}, message {waiting['message_id']} "
            f"(`piriod-adapter show {waiting['message_id']}`)\n"
        )
    revisions = view["revisions"]
    if not revisions:
        out.write("revisions: none (no correction accepted)\n")
        return
    out.write(f"revisions: {len(revisions)}\n")
    headers = ["revision", "action", "quantity", "correction_id", "at", "state"]
    rows = [
        [
            str(one["revision"]),
            str(one["action"]),
            one["quantity"] or "-",
            str(one["correction_id"]),
            str(one["at"]),
            one["state"],
        ]
        for one in revisions
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    out.write(
        "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n"
    )
    for one_row in rows:
        out.write(
            "  ".join(c.ljust(w) for c, w in zip(one_row, widths, strict=True)).rstrip() + "\n"
        )
