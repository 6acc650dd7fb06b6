"""Canonical decimal strings, as PROTOCOL.md section 2 defines them.

No exponent, no sign, no leading zeros before the integer digit, no trailing zeros
after the point and no trailing point: ``"61737.63000000"`` becomes ``"61737.63"``,
``"0.00000000"`` becomes ``"0"``, ``"1e-3"`` becomes ``"0.001"``. The same value is
always spelled the same way, so a book may be keyed by the string.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
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
    if not _NUMBER.fullmatch(text):  # Decimal() would also take " 1", "1_000", "NaN"
        raise BadDecimal(f"not a decimal number: {_shown(text)}")
    value = Decimal(text)
    if value.is_signed() and value != 0:
        raise BadDecimal(f"not a finite non-negative decimal: {_shown(text)}")
    if value != 0 and _too_long(value):
        raise BadDecimal(f"more than {MAX_DIGITS} digits before or after the point when "
                         f"written out: {_shown(text)}")
    return format_decimal(value)


_NUMBER = re.compile(r"-?(?:[0-9]++(?:\.[0-9]*+)?|\.[0-9]++)(?:[eE][+-]?[0-9]++)?")
"""A plain decimal with an optional sign and exponent, in ASCII digits. Possessive:
a megabyte of digits followed by junk fails in one pass, not by backtracking."""
MAX_DIGITS = 100
"""A decimal written with an exponent is refused when, written out, it would take more
digits than this before or after the point: ``"1e999999999"`` would take a gigabyte and
seconds to spell out. No price or size comes near. (Plain digits are taken at any
length: they are as long as the input already is.)"""


def _too_long(value: Decimal) -> bool:
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite: the pattern admits no NaN or infinity
    trailing_zeros = len(digits) - len(bytes(digits).rstrip(b"\0"))
    after_point = -(exponent + trailing_zeros)
    return value.adjusted() + 1 > MAX_DIGITS or after_point > MAX_DIGITS


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
