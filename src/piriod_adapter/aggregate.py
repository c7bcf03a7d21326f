"""A source profile's `aggregate` block (SPEC section 9): how its events are counted into
windows, and the bounds an event of such a source must meet before anything is counted."""

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

from piriod_adapter.models import Usage
from piriod_adapter.validation import FieldProblem
from piriod_adapter.windows import MAX_FRACTION_DIGITS, to_units

DAY = 86_400
MAX_AGE_SECONDS = 35 * DAY  # the longest max_age a profile may have
MAX_FUTURE_SECONDS = 300

_DURATION = re.compile(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", re.ASCII)


def duration_seconds(text: str) -> int:
    """An ISO 8601 duration of days, hours, minutes and seconds (PT5M, P1D, PT1H30M)."""
    if isinstance(text, str):
        return _duration_seconds(text)
    raise ValueError(f"{text!r} is not an ISO 8601 duration such as PT5M, PT1H or P1D")


@lru_cache(maxsize=64)
def _duration_seconds(text: str) -> int:
    # read once per text: a counted event asks for its block's window several times
    match = _DURATION.fullmatch(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration such as PT5M, PT1H or P1D")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _window(text: str) -> str:
    seconds = duration_seconds(text)
    if seconds <= 0 or DAY % seconds:
        raise ValueError(f"{text} must divide a day (e.g. PT1M, PT5M, PT15M, PT1H, P1D)")
    return text


def _bounded(low: int, high: int, what: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if not low <= duration_seconds(text) <= high:
            raise ValueError(f"{what}")
        return text

    return check


class Aggregate(BaseModel):
    """A source's `aggregate` block (SPEC section 9)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    function: Literal["sum", "count"]
    window: Annotated[str, AfterValidator(_window)]
    lateness: Annotated[str, AfterValidator(_bounded(0, DAY, "must be PT0S to P1D"))] = "PT5M"
    max_age: Annotated[
        str, AfterValidator(_bounded(3_600, MAX_AGE_SECONDS, "must be PT1H to P35D"))
    ] = "P35D"

    @property
    def window_seconds(self) -> int:
        return duration_seconds(self.window)

    @property
    def lateness_seconds(self) -> int:
        return duration_seconds(self.lateness)

    @property
    def max_age_seconds(self) -> int:
        return duration_seconds(self.max_age)

    def window_start(self, instant: datetime) -> datetime:
        """The start of the window holding `instant`, aligned to UTC midnight."""
        instant = instant.astimezone(UTC)
        midnight = instant.replace(hour=0, minute=0, second=0, microsecond=0)
        into = int((instant - midnight).total_seconds())
        return midnight + timedelta(seconds=into - into % self.window_seconds)

    def series(self, test_mode: bool) -> str:
        """What a window of this block counts (windows.WindowId.series): the function, the
        window's length and the mode, so that an edited profile starts windows of its own."""
        return f"{self.function}-{self.window_seconds}s{'-test' if test_mode else ''}"

    def units(self, usage: Usage) -> int:
        """What an event adds to its window's total, in 10^-18 units."""
        return to_units(Decimal(1) if self.function == "count" else usage.quantity)

    def precision_problem(self, quantity: Decimal) -> str | None:
        """Why a window of this source cannot keep `quantity` exactly, or None: a summing
        window keeps at most MAX_FRACTION_DIGITS decimal places (a counting one ignores it).
        An event's quantity and an amend of it are bounded alike."""
        exponent = quantity.normalize().as_tuple().exponent
        if self.function == "sum" and isinstance(exponent, int) and exponent < -MAX_FRACTION_DIGITS:
            return (
                f"must have at most {MAX_FRACTION_DIGITS} decimal places on an "
                "aggregating source (a window's total keeps 38 digits)"
            )
        return None

    def generations_bound(self) -> str:
        """Why an event that would need one more generation of its window is refused."""
        return (
            f"its window has had all {self.window_seconds} generations it can have (one per "
            "second of the window)"
        )


def check_events(usages: Sequence[Usage], spec: Aggregate, now: datetime) -> list[FieldProblem]:
    """The bounds of an aggregating source, before anything is counted: an event older than
    `max_age` or more than 5 minutes ahead, and a quantity finer than a total can keep."""
    problems = []
    for index, usage in enumerate(usages):
        age = (now - usage.date_time).total_seconds()
        if age > spec.max_age_seconds:
            problems.append(
                FieldProblem(
                    index, "date_time", f"is older than the source's max_age ({spec.max_age})"
                )
            )
        elif -age > MAX_FUTURE_SECONDS:
            problems.append(FieldProblem(index, "date_time", "is more than 5 minutes ahead"))
        too_fine = spec.precision_problem(usage.quantity)
        if too_fine is not None:
            problems.append(FieldProblem(index, "quantity", too_fine))
    return problems
