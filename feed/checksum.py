"""The book checksum of PROTOCOL.md section 4 ("Order and integrity", point 2).

CRC-32 (``zlib.crc32``) of ``bid1:ask1:bid2:ask2...`` over the first ``min(depth, 10)``
levels, each level written ``price:size``, a missing side skipped, the final ``:``
dropped. The empty book has checksum 0.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from feed.events import Level

CHECKSUM_LEVELS = 10


def checksum_text(bids: Sequence[Level], asks: Sequence[Level], depth: int) -> str:
    """The string the checksum is taken over (useful when a check fails)."""
    n = min(depth, CHECKSUM_LEVELS)
    parts: list[str] = []
    for i in range(n):
        if i < len(bids):
            parts.append(f"{bids[i][0]}:{bids[i][1]}")
        if i < len(asks):
            parts.append(f"{asks[i][0]}:{asks[i][1]}")
    return ":".join(parts)


def book_checksum(bids: Sequence[Level], asks: Sequence[Level], depth: int) -> int:
    """CRC-32 of the top ``min(depth, 10)`` levels, best first on both sides."""
    return zlib.crc32(checksum_text(bids, asks, depth).encode("ascii"))
