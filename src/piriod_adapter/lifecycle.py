"""The record lifecycle's vocabulary: the one state type for what happened to a record or an
event (`Fate`), and what each fate means elsewhere, as tables: the status a sender is
answered, the status its key keeps in IdempotencyTable, whether replay tries the message
again, and the metric that counts it (docs/lifecycle.md).

Everything that moves a record returns an `Outcome` with its fate: the submit path for a
native or source record and a window's total (submit.Submitter), counting for an aggregating
source's event (counting.Counting), replay for a queue message (replay.py). Nothing else
translates one vocabulary into another: it reads these tables.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple

from piriod_adapter.models import AnswerStatus, Failure, FailureKind, QueuedRecord, Tenant, Usage


class Fate(StrEnum):
    """Where one attempt left a record or event."""

    POSTED = "posted"  # in Piriod: created now, or found there by settling an unseen post
    DUPLICATE = "duplicate"  # handled before under its key: nothing was done again
    AGGREGATED = "aggregated"  # counted into its window's open generation (SPEC 9)
    QUEUED = "queued"  # waits in ReplayQueue, in a message of its own
    RETRYING = "retrying"  # replay: stays in the message it came in, tried after a back-off
    REJECTED = "rejected"  # refused for the record itself: waits in DeadLetterQueue
    EXHAUSTED = "exhausted"  # replay's last attempt failed: moved to DeadLetterQueue
    BUSY = "busy"  # replay: another attempt holds the key; looked at again shortly
    NOT_STORED = "not_stored"  # neither posted nor stored: the sender (or SQS) retries
    CANCELLED = "cancelled"  # cancelled by a correction: not in Piriod, never posted again


class Taker(StrEnum):
    """Who moves a record, which decides which keys it may take besides a new, released or
    expired one (table.take_over): ReplayFunction takes a key whose record waits in
    ReplayQueue; the operator also one in DeadLetterQueue. A rejected record is never taken
    by replay."""

    WEBHOOK = "webhook"
    REPLAY = "replay"
    OPERATOR = "operator"
    CORRECTION = "correction"  # a correction of a posted record (SPEC 10)


class KeyStatus(StrEnum):
    """What a key's item in IdempotencyTable says (idempotency.py)."""

    IN_PROGRESS = "in_progress"  # held by an attempt until its lock expires
    RELEASED = "released"  # free to take again (an attempt that could not place its record)
    POSTED = "posted"  # in Piriod (`usage_id` when known)
    AGGREGATED = "aggregated"  # an event counted into its window
    QUEUED = "queued"  # waits for a retry: ReplayQueue, or DeadLetterQueue once exhausted
    REJECTED = "rejected"  # refused for the record itself: waits in DeadLetterQueue
    CANCELLED = "cancelled"  # cancelled by a correction: nothing of it is in Piriod


# --- the projections -------------------------------------------------------------------------

# The status a sender reads in its result (docs/answers.md). RETRYING, EXHAUSTED and BUSY
# come from replay only, which answers nobody; they read as where the record waits.
ANSWER: MappingProxyType[Fate, AnswerStatus] = MappingProxyType(
    {
        Fate.POSTED: "posted",
        Fate.DUPLICATE: "duplicate",
        Fate.AGGREGATED: "aggregated",
        Fate.QUEUED: "queued",
        Fate.RETRYING: "queued",
        Fate.REJECTED: "rejected",
        Fate.EXHAUSTED: "queued",
        Fate.BUSY: "not_stored",
        Fate.NOT_STORED: "not_stored",
        Fate.CANCELLED: "duplicate",  # the sender's record was handled: it is cancelled
    }
)

# The status a key keeps once an attempt that held it ends so (a fate without one leaves the
# key as it was: DUPLICATE and BUSY never held it).
KEY_STATUS: MappingProxyType[Fate, KeyStatus] = MappingProxyType(
    {
        Fate.POSTED: KeyStatus.POSTED,
        Fate.AGGREGATED: KeyStatus.AGGREGATED,
        Fate.QUEUED: KeyStatus.QUEUED,
        Fate.RETRYING: KeyStatus.QUEUED,
        Fate.EXHAUSTED: KeyStatus.QUEUED,
        Fate.REJECTED: KeyStatus.REJECTED,
        Fate.NOT_STORED: KeyStatus.RELEASED,
        Fate.CANCELLED: KeyStatus.CANCELLED,
    }
)

# Replay's verdict: the message is left in ReplayQueue for another try (a partial batch
# failure) for these fates; for every other one it is deleted, because the record is in
# Piriod, handled before, or waits in a message of its own.
RETRIED: frozenset[Fate] = frozenset({Fate.RETRYING, Fate.BUSY, Fate.NOT_STORED})

# The fates a key that was handled before answers `duplicate` for: done, or waiting
# elsewhere (a redelivered replay message of a record rejected or dead-lettered meanwhile).
HANDLED: frozenset[KeyStatus] = frozenset(
    {
        KeyStatus.POSTED,
        KeyStatus.QUEUED,
        KeyStatus.REJECTED,
        KeyStatus.AGGREGATED,
        KeyStatus.CANCELLED,
    }
)

# A correction's status (SPEC 10) once the adapter accepted it and tried to apply it now:
# Piriod holds what it says (applied), it waits in a queue or for the holder of its key
# (pending), or Piriod refused the amended record (rejected). NOT_STORED: neither applied nor
# placed (the request is answered 503; its retry is a duplicate that drives it again).
# A correction handed to ReplayQueue by the corrections route while another attempt held its
# key: its message is the key's own record, as the key remembers it (its line, instant and
# quantity as delivered; a record mapped from a meter id carries the line, not the meter).
HANDED_CORRECTION = "a correction waits for the attempt that holds its key"

CORRECTION: MappingProxyType[Fate, str] = MappingProxyType(
    {
        Fate.POSTED: "applied",
        Fate.CANCELLED: "applied",
        Fate.AGGREGATED: "applied",
        Fate.QUEUED: "pending",
        Fate.RETRYING: "pending",
        Fate.EXHAUSTED: "pending",
        Fate.BUSY: "pending",
        Fate.DUPLICATE: "pending",
        Fate.REJECTED: "rejected",
        Fate.NOT_STORED: "not_stored",
    }
)


def metric_name(prefix: str, fate: Fate) -> str:
    """The metric that counts a fate: `records_<answer>` (the webhook, which the alarms
    watch) or `replay_<fate>` (ReplayFunction, where where a record waits matters)."""
    return f"{prefix}_{ANSWER[fate] if prefix == 'records' else fate.value}"


# --- submissions and outcomes ----------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """One record (or event) to move, with everything needed to move it alone."""

    index: int
    usage: Usage
    tenant: Tenant
    previous: QueuedRecord | None = None  # the queue message, when this is a replay

    @classmethod
    def from_message(
        cls, message: QueuedRecord, usage: Usage | None = None, index: int = 0
    ) -> "Submission":
        return cls(index, usage or message.usage, message.tenant, previous=message)


class Placement(NamedTuple):
    """Where a failed record now waits: its queue, its message there, and its fate (QUEUED,
    RETRYING, REJECTED or EXHAUSTED)."""

    queue: str  # queue.REPLAY or queue.DEAD_LETTER
    message_id: str
    message: QueuedRecord
    fate: Fate


# Places one failed record where it belongs and says where it went (None: not placed).
FailureSink = Callable[[Submission, QueuedRecord], Placement | None]


class Outcome(NamedTuple):
    """How one attempt at a record or event ended."""

    fate: Fate
    usage_id: int | None = None  # POSTED (DUPLICATE when known)
    errors: dict[str, list[str]] | None = None  # REJECTED: why, by field
    failure: Failure | None = None  # why it waits in a queue, or why it could not be placed
    placement: Placement | None = None
    window_start: datetime | None = None  # AGGREGATED: the window it was counted in
    generation: int | None = None  # AGGREGATED: and that window's generation
    settled: bool = False  # POSTED by finding an earlier, unseen attempt in Piriod
    reason: str | None = None  # NOT_STORED or BUSY: why

    @property
    def answer(self) -> AnswerStatus:
        return ANSWER[self.fate]

    @property
    def ambiguous(self) -> bool:
        """Waiting (or not placed) with a post whose outcome nobody saw."""
        return self.failure is not None and self.failure.kind is FailureKind.AMBIGUOUS

    @property
    def tried(self) -> bool:
        """Whether Piriod was asked anything for this record in this attempt."""
        if self.fate in (Fate.BUSY, Fate.DUPLICATE, Fate.AGGREGATED):
            return False
        return self.failure is None or self.failure.attempted

    @property
    def retry(self) -> bool:
        """Replay's verdict: leave the message for another try."""
        return self.fate in RETRIED
