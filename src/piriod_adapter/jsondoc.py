"""JSON decoding within bounds, for every document that comes from outside: a delivery's body,
a source profile, Piriod's answers.

Numbers keep their digits (Decimal; integers longer than 40 digits also become Decimal rather
than hitting Python's int-conversion limit), NaN/Infinity and repeated keys are refused, and
nesting deeper than `max_depth` is refused before the decoder recurses into it.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

MAX_DEPTH = 64
MAX_INT_DIGITS = 40

# A JSON string (possessive, so a long string costs one linear pass).
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class JsonError(ValueError):
    """Not acceptable JSON; the message says why (never echoes the document)."""


def nesting_depth(raw: bytes, limit: int) -> int:
    """The deepest nesting of arrays and objects in `raw`, counting up to `limit + 1`."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        else:
            depth -= 1
    return deepest


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _integer(text: str) -> int | Decimal:
    return int(text) if len(text) <= MAX_INT_DIGITS else Decimal(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:100]!r}")
        result[key] = value
    return result


def loads(raw: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Decode `raw` (UTF-8 JSON) losslessly and within bounds, or raise JsonError."""
    if nesting_depth(raw, max_depth) > max_depth:
        raise JsonError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(
            raw.decode("utf-8"),
            parse_float=Decimal,
            parse_int=_integer,
            parse_constant=_constant,
            object_pairs_hook=_object,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise JsonError(_short(exc)) from None


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "…"
