"""The L2 order book of one symbol: exact, sorted when asked, cheap to apply.

Each side keeps its levels in a dict keyed by the canonical price string (``sizes``).
Applying an event is a dict update per level and nothing more: the price order is
kept lazily. A side remembers the prices added or removed since it was last sorted
and folds them into its sorted index (a bisect per price) only when someone asks for
an ordered view (``top``, ``best``; ``key_at`` for tests). A replay with no subscriber never pays
for order at all; a side whose pending changes outgrow its size is simply sorted
again from its dict on the next read, so the pending list is bounded.

The sort key of a price is a float when that is exact: a decimal of at most 15
significant digits converts to a float that no other such decimal shares, and the
conversion is correctly rounded and so monotonic; hence distinct prices keep their
order. A side that meets a longer price switches to ``Decimal`` keys for good. Keys are
negated on the bid side, so that on both sides the best level comes first and "better
than" is "less than".

The book numbers its versions (``seq``): the source's own sequence number when it has
one, shifted only when the source goes backwards (a looped replay restarting), so that
``seq`` always increases; otherwise one more per change.
"""

from __future__ import annotations

import operator
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from decimal import Decimal

from feed.events import BookDelta, BookSnapshot, Level

Key = float | Decimal
"""A price's sort key on one side: smaller is better."""

_FLOAT_EXACT_CHARS = 15
"""Prices of at most this many characters have at most 15 significant digits."""


class BookSide:
    """One side of a book, best level first."""

    __slots__ = ("_bid", "_exact", "_keys", "_pending", "_prices", "_stale", "sizes")

    def __init__(self, *, bid: bool) -> None:
        self._bid = bid
        self.sizes: dict[str, str] = {}
        """Every level: canonical price -> canonical size (never ``"0"``)."""
        self._keys: list[Key] = []  # sorted sort keys of the indexed prices
        self._prices: list[str] = []  # the indexed prices, in the order of _keys
        self._pending: list[str] = []  # prices added or removed since the last sort
        self._stale = False  # the index is to be rebuilt from sizes
        self._exact = False  # Decimal keys (a price too long for an exact float)

    def key(self, price: str) -> Key:
        """Sort key of a price in the index's current mode: smaller is better."""
        value: Key = Decimal(price) if self._exact else float(price)
        return -value if self._bid else value

    def reaches(self, prices: Sequence[str], edge: str) -> bool:
        """True when any of ``prices`` is at or better than the price ``edge``."""
        if len(edge) > _FLOAT_EXACT_CHARS or any(len(p) > _FLOAT_EXACT_CHARS for p in prices):
            exact = Decimal(edge)
            if self._bid:
                return any(Decimal(p) >= exact for p in prices)
            return any(Decimal(p) <= exact for p in prices)
        limit = float(edge)
        if self._bid:
            return any(float(p) >= limit for p in prices)
        return any(float(p) <= limit for p in prices)

    def apply(self, levels: Sequence[Level]) -> None:
        """Set every level of an event, in order (size ``"0"`` removes the level)."""
        sizes = self.sizes
        if self._stale:  # the next read sorts the whole dict: no need to note prices
            for price, size in levels:
                if size == "0":
                    sizes.pop(price, None)
                else:
                    sizes[price] = size
            return
        pending = self._pending
        for price, size in levels:
            if size == "0":
                if sizes.pop(price, None) is not None:
                    pending.append(price)
            else:
                if price not in sizes:
                    pending.append(price)
                sizes[price] = size
        if len(pending) > 64 and len(pending) > len(sizes):
            pending.clear()  # cheaper to sort again than to replay them; stays bounded
            self._stale = True

    def apply_last(self, sizes: Iterable[Level], removed: Iterable[str]) -> None:
        """Set many events' levels at once, given each price's last size in them:
        ``sizes`` non-zero, ``removed`` the prices whose last size was zero (a bulk
        apply, ``feed.bulk``). The index is rebuilt when next read."""
        self.sizes.update(sizes)
        pop = self.sizes.pop
        for price in removed:
            pop(price, None)
        self._pending.clear()
        self._stale = True

    def replace(self, levels: Sequence[Level]) -> None:
        """Replace every level (a snapshot); zero sizes are left out."""
        self.sizes = {price: size for price, size in levels if size != "0"}
        self._pending.clear()
        self._stale = True

    def clear(self) -> None:
        """Remove every level."""
        self.replace(())

    def _sorted(self) -> list[str]:
        """The prices, best first: the index, brought up to date."""
        if self._stale:
            self._rebuild()
        elif self._pending:
            self._fold()
        return self._prices

    def _rebuild(self) -> None:
        if not self._exact and any(len(p) > _FLOAT_EXACT_CHARS for p in self.sizes):
            self._exact = True  # for good: the side has met a long price
        key = self.key
        ordered = sorted((key(price), price) for price in self.sizes)
        self._keys = [k for k, _ in ordered]
        self._prices = [price for _, price in ordered]
        self._pending.clear()
        self._stale = False

    def _fold(self) -> None:
        pending = self._pending
        if not self._exact and any(len(p) > _FLOAT_EXACT_CHARS for p in pending):
            self._rebuild()  # switches the side to Decimal keys
            return
        sizes, keys, prices, key = self.sizes, self._keys, self._prices, self.key
        for price in pending:
            k = key(price)
            i = bisect_left(keys, k)
            present = i < len(prices) and prices[i] == price
            if price in sizes:
                if not present:
                    keys.insert(i, k)
                    prices.insert(i, price)
            elif present:
                del keys[i]
                del prices[i]
        pending.clear()

    def top(self, n: int) -> list[Level]:
        """The best ``n`` levels, best first."""
        sizes = self.sizes
        return [(price, sizes[price]) for price in self._sorted()[:n]]

    def best(self) -> Level | None:
        """The best level, or ``None`` when the side is empty."""
        prices = self._sorted()
        if not prices:
            return None
        return (prices[0], self.sizes[prices[0]])

    def key_at(self, index: int) -> Key | None:
        """Sort key of the level at ``index`` (0 is best), ``None`` past the end."""
        self._sorted()
        if index < len(self._keys):
            return self._keys[index]
        return None

    def __len__(self) -> int:
        return len(self.sizes)


class BookChange:
    """What one applied event touched: the prices it set on each side (listed when
    asked: a replay with no subscriber never asks).

    ``reset`` is true for a snapshot (everything may have changed).
    """

    __slots__ = ("_asks", "_bids", "reset")

    def __init__(self, bids: Sequence[Level], asks: Sequence[Level], reset: bool = False
                 ) -> None:
        self._bids = bids
        self._asks = asks
        self.reset = reset

    @property
    def bid_prices(self) -> list[str]:
        """The bid prices the event set."""
        return [price for price, _ in self._bids]

    @property
    def ask_prices(self) -> list[str]:
        """The ask prices the event set."""
        return [price for price, _ in self._asks]


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
        self.bids.replace(event.bids)
        self.asks.replace(event.asks)
        self.seq = self._next_seq(event.seq)
        self.source_seq = event.seq
        self.ts_event = event.ts_event
        self.ts_recv = ts_recv
        self.valid = True
        return BookChange((), (), reset=True)

    def apply_delta(self, event: BookDelta, ts_recv: int) -> BookChange | None:
        """Apply absolute level sizes; ``None`` when the book is not valid (no
        snapshot yet, or after a gap) and the delta was ignored."""
        if not self.valid:
            return None
        self.bids.apply(event.bids)
        self.asks.apply(event.asks)
        self.seq = self._next_seq(event.seq)
        self.source_seq = event.seq
        self.ts_event = event.ts_event
        self.ts_recv = ts_recv
        return BookChange(event.bids, event.asks)

    def follow(self, seqs: Sequence[int | None], ts_event: int, ts_recv: int) -> None:
        """The book has taken in deltas of these source ``seqs`` (the last one's
        ``ts_event``) at once, their levels set with ``BookSide.apply_last``: the book's
        ``seq`` and times are as if they had been applied one by one."""
        if not seqs:
            return
        first = seqs[0]
        if first is not None and first + self._offset > self.seq and None not in seqs \
                and all(map(operator.lt, seqs, seqs[1:])):  # type: ignore[arg-type]
            self.seq = seqs[-1] + self._offset  # type: ignore[operator]
        else:
            next_seq = self._next_seq
            for seq in seqs:
                self.seq = next_seq(seq)
        self.source_seq = seqs[-1]
        self.ts_event = ts_event
        self.ts_recv = ts_recv

    def invalidate(self) -> None:
        """Forget the book after a source gap, until the next snapshot."""
        self.bids.clear()
        self.asks.clear()
        self.valid = False

    def crossed(self) -> bool:
        """True when the best bid is at or above the best ask."""
        bid, ask = self.bids.best(), self.asks.best()
        return bid is not None and ask is not None and Decimal(bid[0]) >= Decimal(ask[0])
