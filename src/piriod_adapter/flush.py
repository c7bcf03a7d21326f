"""FlushFunction's run (SPEC section 9): every generation due by now is closed (no event joins
it afterwards) and its total becomes one usage at window start + g seconds, submitted through
the one record lifecycle (submit.Submitter: claim, post, settle an unseen post by lookup,
queue), keyed by source, line, window start and generation, so that two flushers, a crash
halfway, or a replay post it once. A total of zero is not posted. The lag of the oldest due
generation is a metric the flush-lag alarm watches.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aws_lambda_powertools.metrics import MetricUnit

from piriod_adapter.clock import Deadline
from piriod_adapter.lifecycle import FailureSink, Fate, Outcome, Submission, Taker
from piriod_adapter.models import KeyKind, Tenant, Usage, UsageKey, plain_decimal, utc_text
from piriod_adapter.observability import logger, metrics
from piriod_adapter.runtime import Runtime
from piriod_adapter.table import CORRECTING, Generation, StoreUnavailable, WindowId, key_pk
from piriod_adapter.tracing import tracer
from piriod_adapter.windows import from_units

FLUSH_LIMIT = 2_000  # generations one run closes at most (the rest: the next run)


def sweep_corrections(
    store: Any, submitter: Submits, sink: FailureSink, deadline: Deadline, concurrency: int
) -> int:
    """Corrections that waited on their keys (neither applied nor taken by a queue, SQS
    being down): each applied now through the correction path. How many were applied."""
    from piriod_adapter.models import QueuedRecord

    waiting = store.waiting(CORRECTING)
    subs = [
        Submission.from_message(QueuedRecord.from_json(w.message), index=n)
        for n, w in enumerate(waiting)
    ]
    if not subs:
        return 0
    outcomes = submitter.submit_all(subs, deadline, sink, concurrency, Taker.CORRECTION)
    return sum(o.fate in (Fate.POSTED, Fate.CANCELLED) for o in outcomes)


def run_flush(runtime: Runtime, deadline: Deadline) -> dict[str, Any]:
    """Flush what is due, and apply the corrections that waited on their keys; the counts
    are returned (and logged), the lag is a metric the flush-lag alarm watches: how long the
    oldest due window is neither posted nor queued."""
    settings = runtime.settings
    try:
        swept = sweep_corrections(
            runtime.store,
            runtime.submitter,
            runtime.queue.place_failed,
            deadline,
            settings.post_concurrency,
        )
    except StoreUnavailable as exc:
        logger.error("cannot read waiting corrections", extra={"error": str(exc)})
        swept = 0
    try:
        report = flush(
            runtime.windows,
            runtime.submitter,
            runtime.queue.place_failed,
            settings.piriod_workspace_id,
            deadline,
            settings.post_concurrency,
            keys=runtime.store,
        )
    except StoreUnavailable as exc:  # the due index cannot be read: the next run tries again
        logger.error("cannot read due windows", extra={"error": str(exc)})
        metrics.add_metric(name="windows_flush_failures", unit=MetricUnit.Count, value=1)
        return {"error": str(exc)}
    metrics.add_metric(name="windows_flushed", unit=MetricUnit.Count, value=report.posted)
    metrics.add_metric(name="windows_queued", unit=MetricUnit.Count, value=report.queued)
    metrics.add_metric(name="windows_left", unit=MetricUnit.Count, value=report.left)
    metrics.add_metric(name="records_restated", unit=MetricUnit.Count, value=report.restated)
    metrics.add_metric(
        name="window_flush_lag", unit=MetricUnit.Seconds, value=round(report.lag_seconds, 3)
    )
    result = {**report.__dict__, "corrections_applied": swept}
    logger.info("windows flushed", extra=result)
    return result


class Closer(Protocol):
    """What flushing needs of the window store."""

    def due(self, now: float, limit: int) -> list[Generation]: ...

    def close(self, gen: Generation) -> Generation: ...

    def hand_over(self, gen: Generation) -> None: ...


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
    restated: int = 0  # generations restated after corrections of their events (SPEC 10)
    left: int = 0  # due generations not handed over this run (busy, a store down, no time)
    lag_seconds: float = 0.0  # how long the oldest due generation left behind is overdue


def window_key(window: WindowId, generation: int) -> UsageKey:
    """The idempotency key of a generation's usage: source, line, window and generation."""
    return UsageKey(
        kind=KeyKind.WINDOW,
        scope=f"v1/sources/{window.source}",
        text=f"{window.line}#{window.series}#{utc_text(window.start)}#g{generation}",
    )


def window_usage(gen: Generation) -> Usage:
    """A closed generation's total, with the corrections of its events, as the record the
    lifecycle posts."""
    window = gen.window
    return Usage(
        subscription_line=window.line,
        date_time=gen.instant,
        quantity=from_units(gen.corrected_units),
        key=window_key(window, gen.generation),
        source=window.source,
        original={
            "window_start": utc_text(window.start),
            "generation": gen.generation,
            "events": (gen.events or 0) + gen.adjust_events,
            "function": gen.function,
        },
    )


class Restates(Protocol):
    """What a restatement needs of the key store: the window key's amend accepted."""

    def accept(self, pk: str, action: str, quantity: str | None, correction_id: str) -> Any: ...


def flush(
    store: Closer,
    submitter: Submits,
    sink: FailureSink,
    workspace: str,
    deadline: Deadline,
    concurrency: int,
    now: float | None = None,
    keys: Restates | None = None,
) -> FlushReport:
    """Close every generation due by now and post its total once; restate a generation
    whose events were corrected after its total was handed over (see the module's text)."""
    now = time.time() if now is None else now
    report = FlushReport()
    due = store.due(now, FLUSH_LIMIT)
    report.due = len(due)
    closed: list[tuple[Generation, Taker]] = []  # closed, with a total to post or restate
    skipped: list[Generation] = []  # not closed or not handed over this run (the next run)
    for found, gen in _close_all(store, due, deadline, concurrency):
        if gen is None:
            skipped.append(found)
            continue
        if gen.restating:
            taker = _restate(gen, keys)
            if taker is None:
                skipped.append(gen)
            else:
                closed.append((gen, taker))
            continue
        if gen.handed:
            continue  # handed over by another flusher meanwhile
        # A total of zero is not posted; it still goes through its key, which settles what
        # an earlier attempt may have posted (a total that corrections brought to zero).
        report.empty += not gen.corrected_units
        closed.append((gen, Taker.REPLAY))
    subs: list[Submission] = []
    postable = []
    for gen, taker in closed:
        try:
            usage = window_usage(gen)
        except ValueError as exc:  # a defect: it stays due (the lag alarm), the others go on
            logger.error("window total cannot be posted", extra={"error": str(exc)[:300]})
            skipped.append(gen)
            continue
        tenant = Tenant(workspace=workspace, test_mode=gen.test_mode)
        subs.append(Submission(len(subs), usage, tenant))
        postable.append((gen, taker))
    outcomes = _submit(submitter, subs, postable, deadline, sink, concurrency)
    left = {_pk(gen) for gen in skipped}
    for (gen, taker), outcome in zip(postable, outcomes, strict=True):
        if outcome.fate not in HANDED:  # busy, or neither posted nor placed: the next run
            left.add(_pk(gen))
            continue
        try:
            store.hand_over(gen)
        except StoreUnavailable:
            left.add(_pk(gen))
            continue
        report.restated += taker is Taker.CORRECTION
        report.posted += outcome.fate in (Fate.POSTED, Fate.DUPLICATE) and bool(gen.corrected_units)
        report.queued += outcome.fate in (Fate.QUEUED, Fate.REJECTED)
    report.left = len(left)
    report.lag_seconds = max((now - (g.due_at or now) for g in due if _pk(g) in left), default=0.0)
    return report


def _restate(gen: Generation, keys: Restates | None) -> Taker | None:
    """A handed-over generation whose events were corrected: its window key's usage is
    amended to the corrected total (one restatement, however many corrections came: the
    amend names the corrections' count), through the correction path; posted anew when it
    had none (its total was zero). None: cannot be told now (the next run)."""
    if keys is None:
        return None
    pk = key_pk(window_key(gen.window, gen.generation))
    quantity = plain_decimal(from_units(gen.corrected_units))
    try:
        accepted = keys.accept(pk, "amend", quantity, f"restate:{gen.adjust_seq}")
    except StoreUnavailable:
        return None
    if accepted.refused is not None:  # the key takes no more corrections: never dropped
        logger.error(
            "window total cannot be restated; the generation stays due",
            extra={"key": pk, "refused": accepted.refused},
        )
        return None
    if accepted.state is None and accepted.duplicate is None:
        return Taker.REPLAY  # no usage was posted for it (zero): posted now, if any
    return Taker.CORRECTION


def _submit(
    submitter: Submits,
    subs: list[Submission],
    postable: list[tuple[Generation, Taker]],
    deadline: Deadline,
    sink: FailureSink,
    concurrency: int,
) -> list[Outcome]:
    """Each generation's usage through the lifecycle: a total as a record (the replay
    taker's claim), a restatement as a correction of its key."""
    outcomes: list[Outcome | None] = [None] * len(subs)
    for taker in (Taker.REPLAY, Taker.CORRECTION):
        chosen = [n for n, (_, t) in enumerate(postable) if t is taker]
        if not chosen:
            continue
        done = submitter.submit_all([subs[n] for n in chosen], deadline, sink, concurrency, taker)
        for n, outcome in zip(chosen, done, strict=True):
            outcomes[n] = outcome
    return [o for o in outcomes if o is not None]


def _close_all(
    store: Closer, due: list[Generation], deadline: Deadline, concurrency: int
) -> list[tuple[Generation, Generation | None]]:
    """Close the due generations, `concurrency` at a time; None: not closed this run (out of
    time, or the store down)."""
    from concurrent.futures import ThreadPoolExecutor

    def close(found: Generation) -> tuple[Generation, Generation | None]:
        if deadline.remaining() <= 0:
            return found, None
        with tracer.span("generation", key=_pk(found)):  # a span per generation
            try:
                return found, store.close(found)
            except StoreUnavailable as exc:
                logger.warning("window not closed", extra={"error": str(exc)})
                return found, None

    if not due:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(due)))) as pool:
        return list(pool.map(tracer.carry(close), due))


def _pk(gen: Generation) -> str:
    return gen.window.gen_pk(gen.generation)


# The fates after which the lifecycle has a generation's total: it is in Piriod, waits in a
# queue, or was handled before (a flusher that stopped halfway); its key says which.
HANDED = frozenset({Fate.POSTED, Fate.DUPLICATE, Fate.QUEUED, Fate.REJECTED})
