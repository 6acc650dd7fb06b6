"""Canonical decimal strings, as PROTOCOL.md section 2 defines them.

No exponent, no sign, no leading zeros before the integer digit, no trailing zeros
after the point and no trailing point: ``"61737.63000000"`` becomes ``"61737.63"``,
``"0.00000000"`` becomes ``"0"``, ``"1e-3"`` becomes ``"0.001"``. The same value is
always spelled the same way, so a book may be keyed by the string.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from feed.events import Level

_PLAIN = re.compile(r"[0-9]+(?:\.[0-9]+)?")


class BadDecimal(ValueError):
    """The input is not a finite, non-negative decimal number."""


def canonical(text: str) -> str:
    """Return the canonical spelling of the non-negative decimal ``text``.

    Raises ``BadDecimal`` for anything else (negative, NaN, infinity, garbage).
    """
    if _PLAIN.fullmatch(text):
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        stripped = text.lstrip("0")
        if not stripped:
            return "0"
        if stripped[0] == ".":
            return "0" + stripped
        return stripped
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise BadDecimal(f"not a decimal number: {_shown(text)}") from None
    if not value.is_finite() or value.is_signed() and value != 0:
        raise BadDecimal(f"not a finite non-negative decimal: {_shown(text)}")
    exponent = value.as_tuple().exponent
    if value != 0 and not -MAX_EXPONENT <= exponent <= MAX_EXPONENT:  # type: ignore[operator]
        raise BadDecimal(f"exponent out of range (at most {MAX_EXPONENT} either way): "
                         f"{_shown(text)}")
    return format_decimal(value)


MAX_EXPONENT = 100
"""A decimal written with an exponent beyond this (either way) is refused: without
the exponent it would take over a hundred digits, and ``"1e999999999"`` would take a
gigabyte and seconds to spell out. No price or size comes near."""


def _shown(text: str, limit: int = 40) -> str:
    """``text`` as a repr for an error message, cut to about ``limit`` characters (the
    input may be a whole damaged line)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def format_decimal(value: Decimal) -> str:
    """Canonical spelling of a finite, non-negative ``Decimal``."""
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def is_zero(canonical_text: str) -> bool:
    """True when a canonical string is zero (canonical zero is exactly ``"0"``)."""
    return canonical_text == "0"


class _Remembered(dict[str, str]):
    """Decimal strings seen, each with its canonical spelling. Market data repeats the
    same prices and sizes all the time, and a dict look-up is far cheaper than a check.
    Looking up a new string checks it (``BadDecimal``, or ``TypeError`` for a
    non-string) and remembers it; the dict is emptied when it is full."""

    def __missing__(self, text: str) -> str:
        spelled = canonical(text)
        if len(text) <= REMEMBERED_LEN:
            if len(self) >= REMEMBERED_MAX:
                self.clear()
            self[text] = spelled
        return spelled


REMEMBERED_MAX = 1 << 18
REMEMBERED_LEN = 32
"""``canonical_cached`` remembers at most ``REMEMBERED_MAX`` strings of at most
``REMEMBERED_LEN`` characters (some 55 MB at most; the 131,434 distinct decimals of
docs/performance.md's five-capture mix take about 12 MB); longer ones are checked each
time. A file with more distinct decimals than this misses on nearly every one of them
on each pass of a looped replay, since the dict is emptied when full: at 1 << 17 that
mix did, and its decode took about 1.5 µs more per event."""
_REMEMBERED = _Remembered()
canonical_cached: Callable[[str], str] = _REMEMBERED.__getitem__
"""``canonical``, remembered: for readers of market data."""
_LIST_ONLY = frozenset((list,))


def canonical_levels(raw: list[Any], error: type[ValueError], key: str) -> tuple[Level, ...]:
    """``[[price, size], ...]`` as parsed from JSON, to canonical ``(price, size)`` levels.

    Raises ``error`` (with a message naming ``key``) for anything that is not a list of
    two-string lists, and ``BadDecimal`` for a string that is not a decimal number.
    """
    # The fast path. The type check matters: a two-character string would unpack as
    # a level too.
    if _LIST_ONLY.issuperset(map(type, raw)):
        known = _REMEMBERED
        try:
            return tuple([(known[price], known[size]) for price, size in raw])
        except (TypeError, ValueError):
            pass  # malformed: the careful path says how
    out: list[Level] = []
    try:
        for level in raw:
            if type(level) is not list or len(level) != 2:
                raise error(f'"{key}" level {level!r} is not [price, size]')
            out.append((canonical_cached(level[0]), canonical_cached(level[1])))
    except TypeError:  # a number or null where a decimal string belongs
        raise error(f'"{key}" levels must be [price, size] strings') from None
    return tuple(out)
