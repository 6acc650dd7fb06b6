"""The book checksum of PROTOCOL.md section 4 ("Order and integrity", point 2).

CRC-32 (``zlib.crc32``) of ``bid1:ask1:bid2:ask2...`` over the first ``min(depth, 10)``
levels, each level written ``price:size``, a missing side skipped, the final ``:``
dropped. The empty book has checksum 0.

A view that keeps the interleaved ``price:size`` texts between changes hands them to
``texts_checksum`` and writes only the levels that changed.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from feed.events import Level

CHECKSUM_LEVELS = 10


def level_texts(levels: Sequence[Level], depth: int) -> list[str]:
    """``price:size`` of each of the first ``min(depth, 10)`` levels."""
    return [f"{price}:{size}" for price, size in levels[:min(depth, CHECKSUM_LEVELS)]]


def interleave(bid_texts: list[str], ask_texts: list[str]) -> list[str]:
    """``[bid1, ask1, bid2, ask2, ...]`` of level texts, the longer side's rest at the end."""
    n = min(len(bid_texts), len(ask_texts))
    parts: list[str | None] = [None] * (2 * n)
    parts[0::2] = bid_texts[:n]
    parts[1::2] = ask_texts[:n]
    parts += bid_texts[n:] or ask_texts[n:]
    return parts  # type: ignore[return-value]  # every None was replaced


def texts_checksum(texts: list[str]) -> int:
    """CRC-32 of interleaved level texts (``interleave``)."""
    return zlib.crc32(":".join(texts).encode("ascii"))


def checksum_text(bids: Sequence[Level], asks: Sequence[Level], depth: int) -> str:
    """The string the checksum is taken over (useful when a check fails)."""
    return ":".join(interleave(level_texts(bids, depth), level_texts(asks, depth)))


def book_checksum(bids: Sequence[Level], asks: Sequence[Level], depth: int) -> int:
    """CRC-32 of the top ``min(depth, 10)`` levels, best first on both sides."""
    return texts_checksum(interleave(level_texts(bids, depth), level_texts(asks, depth)))
