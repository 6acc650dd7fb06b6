"""The L2 order book of one symbol: exact, sorted, cheap to apply and to cut to top N.

Each side keeps its levels in a dict keyed by the canonical price string and a sorted
list of ``(key, price)`` pairs where ``key`` is the ``Decimal`` price, negated on the
bid side, so that on both sides the best level comes first and "better than" is "less
than". Apply is a dict update plus a bisect; top N is a slice.

The book numbers its versions (``seq``): the source's own sequence number when it has
one, shifted only when the source goes backwards (a looped replay restarting), so that
``seq`` always increases; otherwise one more per change.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from feed.events import BookDelta, BookSnapshot, Level


class BookSide:
    """One side of a book, best level first."""

    __slots__ = ("_bid", "_order", "sizes")

    def __init__(self, *, bid: bool) -> None:
        self._bid = bid
        self._order: list[tuple[Decimal, str]] = []
        self.sizes: dict[str, str] = {}

    def key(self, price: str) -> Decimal:
        """Sort key of a price: smaller is better on both sides."""
        value = Decimal(price)
        return -value if self._bid else value

    def set(self, price: str, size: str) -> Decimal:
        """Set a level's size (``"0"`` removes it); return the price's sort key."""
        key = self.key(price)
        if size == "0":
            if self.sizes.pop(price, None) is not None:
                order = self._order
                del order[bisect_left(order, (key, price))]
        else:
            if price not in self.sizes:
                insort(self._order, (key, price))
            self.sizes[price] = size
        return key

    def clear(self) -> None:
        """Remove every level."""
        self._order.clear()
        self.sizes.clear()

    def top(self, n: int) -> list[Level]:
        """The best ``n`` levels, best first."""
        sizes = self.sizes
        return [(price, sizes[price]) for _, price in self._order[:n]]

    def best(self) -> Level | None:
        """The best level, or ``None`` when the side is empty."""
        if not self._order:
            return None
        price = self._order[0][1]
        return (price, self.sizes[price])

    def key_at(self, index: int) -> Decimal | None:
        """Sort key of the level at ``index`` (0 is best), ``None`` past the end."""
        if index < len(self._order):
            return self._order[index][0]
        return None

    def __len__(self) -> int:
        return len(self._order)


@dataclass(slots=True)
class BookChange:
    """What one applied event changed: the sort keys touched on each side.

    ``reset`` is true for a snapshot (everything may have changed).
    """

    bid_keys: list[Decimal]
    ask_keys: list[Decimal]
    reset: bool = False


class Book:
    """One symbol's L2 book.

    ``valid`` is false until the first snapshot and again after a gap; deltas are not
    applied while the book is not valid.
    """

    __slots__ = ("_offset", "asks", "bids", "seq", "source_seq", "symbol", "ts_event", "ts_recv",
                 "valid")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.bids = BookSide(bid=True)
        self.asks = BookSide(bid=False)
        self.seq = 0
        self.source_seq: int | None = None
        """The source's own ``seq`` of the last event applied (``None``: it has none)."""
        self.ts_event = 0
        self.ts_recv = 0
        self.valid = False
        self._offset = 0

    def _next_seq(self, source_seq: int | None) -> int:
        if source_seq is None:
            return self.seq + 1
        seq = source_seq + self._offset
        if seq <= self.seq:
            self._offset = self.seq + 1 - source_seq
            seq = self.seq + 1
        return seq

    def apply_snapshot(self, event: BookSnapshot, ts_recv: int) -> BookChange:
        """Replace the whole book; ``ts_recv`` is when the ingester took it in."""
        self.bids.clear()
        self.asks.clear()
        _set_all(self.bids, event.bids)
        _set_all(self.asks, event.asks)
        self.seq = self._next_seq(event.seq)
        self.source_seq = event.seq
        self.ts_event = event.ts_event
        self.ts_recv = ts_recv
        self.valid = True
        return BookChange([], [], reset=True)

    def apply_delta(self, event: BookDelta, ts_recv: int) -> BookChange | None:
        """Apply absolute level sizes; ``None`` when the book is not valid (no
        snapshot yet, or after a gap) and the delta was ignored."""
        if not self.valid:
            return None
        change = BookChange(_set_all(self.bids, event.bids), _set_all(self.asks, event.asks))
        self.seq = self._next_seq(event.seq)
        self.source_seq = event.seq
        self.ts_event = event.ts_event
        self.ts_recv = ts_recv
        return change

    def invalidate(self) -> None:
        """Forget the book after a source gap, until the next snapshot."""
        self.bids.clear()
        self.asks.clear()
        self.valid = False

    def crossed(self) -> bool:
        """True when the best bid is at or above the best ask."""
        bid, ask = self.bids.best(), self.asks.best()
        return bid is not None and ask is not None and Decimal(bid[0]) >= Decimal(ask[0])


def _set_all(side: BookSide, levels: Iterable[Level]) -> list[Decimal]:
    return [side.set(price, size) for price, size in levels]
