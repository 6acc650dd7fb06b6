"""Normalized market events: what every source (tick file, importer, synthetic
market) produces and what the ingester applies to the books.

Prices and sizes are canonical decimal strings (see ``feed.decimals``); times are
nanoseconds since the Unix epoch. ``seq`` is the venue's own sequence number for the
book after the event when it has one (Binance ``u``), else ``None`` and the book
numbers its versions itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Level = tuple[str, str]
"""One price level: (canonical price, canonical size). Size ``"0"`` removes it."""

Side = Literal["buy", "sell"]


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """The whole book: replaces whatever the book held (also after a gap)."""

    symbol: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    ts_event: int
    ts_recv: int
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class BookDelta:
    """Absolute sizes for some levels; size ``"0"`` removes a level."""

    symbol: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    ts_event: int
    ts_recv: int
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Trade:
    """One trade; ``side`` is the aggressor's."""

    symbol: str
    trade_id: int | str
    price: str
    size: str
    side: Side
    ts_event: int
    ts_recv: int


@dataclass(frozen=True, slots=True)
class Gap:
    """The source lost continuity for ``symbol``: its book is unknown until the next
    ``BookSnapshot``. Deltas in between are not applied."""

    symbol: str
    ts_event: int
    ts_recv: int
    reason: str = ""


Event = BookSnapshot | BookDelta | Trade | Gap
