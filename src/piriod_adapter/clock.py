"""Time left in this invocation, so that the function never answers after its own timeout."""

import time
from typing import NamedTuple, Protocol


class HasRemainingTime(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


class Deadline(NamedTuple):
    """A point on the monotonic clock."""

    monotonic_at: float

    @classmethod
    def after(cls, seconds: float) -> "Deadline":
        return cls(time.monotonic() + seconds)

    @classmethod
    def from_context(cls, context: HasRemainingTime, reserve_seconds: float) -> "Deadline":
        """The moment to stop starting work: the function's own timeout less a reserve."""
        remaining = context.get_remaining_time_in_millis() / 1000.0
        return cls.after(max(0.0, remaining - reserve_seconds))

    def remaining(self) -> float:
        return max(0.0, self.monotonic_at - time.monotonic())
