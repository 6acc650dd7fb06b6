"""Canonical decimal strings, as PROTOCOL.md section 2 defines them.

No exponent, no sign, no leading zeros before the integer digit, no trailing zeros
after the point and no trailing point: ``"61737.63000000"`` becomes ``"61737.63"``,
``"0.00000000"`` becomes ``"0"``, ``"1e-3"`` becomes ``"0.001"``. The same value is
always spelled the same way, so a book may be keyed by the string.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

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
    return format_decimal(value)


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
