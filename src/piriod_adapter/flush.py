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
from piriod_adapter.models import KeyKind, Tenant, Usage, UsageKey, utc_text
from piriod_adapter.observability import logger, metrics
from piriod_adapter.runtime import Runtime
from piriod_adapter.table import Generation, StoreUnavailable, WindowId
from piriod_adapter.windows import from_units

FLUSH_LIMIT = 2_000  # generations one run closes at most (the rest: the next run)


def run_flush(runtime: Runtime, deadline: Deadline) -> dict[str, Any]:
    """Flush what is due; the counts are returned (and logged), the lag is a metric the
    flush-lag alarm watches: how long the oldest due window is neither posted nor queued."""
    settings = runtime.settings
    try:
        report = flush(
            runtime.windows,
            runtime.submitter,
            runtime.queue.place_failed,
            settings.piriod_workspace_id,
            deadline,
            settings.post_concurrency,
        )
    except StoreUnavailable as exc:  # the due index cannot be read: the next run tries again
        logger.error("cannot read due windows", extra={"error": str(exc)})
        metrics.add_metric(name="windows_flush_failures", unit=MetricUnit.Count, value=1)
        return {"error": str(exc)}
    metrics.add_metric(name="windows_flushed", unit=MetricUnit.Count, value=report.posted)
    metrics.add_metric(name="windows_queued", unit=MetricUnit.Count, value=report.queued)
    metrics.add_metric(name="windows_left", unit=MetricUnit.Count, value=report.left)
    metrics.add_metric(
        name="window_flush_lag", unit=MetricUnit.Seconds, value=round(report.lag_seconds, 3)
    )
    result = report.__dict__.copy()
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
    skipped: list[Generation] = []  # not closed or not handed over this run (the next run)
    for found, gen in _close_all(store, due, deadline, concurrency):
        if gen is None:
            skipped.append(found)
            continue
        if gen.handed:
            continue  # handed over by another flusher meanwhile
        if not gen.total_units:
            try:
                store.hand_over(gen)  # a total of zero is not posted
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
    left = {_pk(gen) for gen in skipped}
    for gen, outcome in zip(closed, outcomes, strict=True):
        if outcome.fate not in HANDED:  # busy, or neither posted nor placed: the next run
            left.add(_pk(gen))
            continue
        try:
            store.hand_over(gen)
        except StoreUnavailable:
            left.add(_pk(gen))
            continue
        report.posted += outcome.fate in (Fate.POSTED, Fate.DUPLICATE)
        report.queued += outcome.fate in (Fate.QUEUED, Fate.REJECTED)
    report.left = len(left)
    report.lag_seconds = max((now - (g.due_at or now) for g in due if _pk(g) in left), default=0.0)
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
        try:
            return found, store.close(found)
        except StoreUnavailable as exc:
            logger.warning("window not closed", extra={"error": str(exc)})
            return found, None

    if not due:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(due)))) as pool:
        return list(pool.map(close, due))


def _pk(gen: Generation) -> str:
    return gen.window.gen_pk(gen.generation)


# The fates after which the lifecycle has a generation's total: it is in Piriod, waits in a
# queue, or was handled before (a flusher that stopped halfway); its key says which.
HANDED = frozenset({Fate.POSTED, Fate.DUPLICATE, Fate.QUEUED, Fate.REJECTED})
