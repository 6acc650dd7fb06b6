"""What one subscription group last published of a book: its top ``depth`` levels.

A view turns a book change into the ``book_update`` that keeps a subscriber's book
equal to the server's top ``depth`` levels (PROTOCOL.md 4): levels that changed or
moved into the top ``depth`` are set, levels that fell out are removed with size
``"0"``. It recomputes a side only when a change can reach it: a change at a price
worse than the view's last level of a full view cannot.
"""

from __future__ import annotations

from collections.abc import Sequence

from feed.book import Book, BookChange, BookSide
from feed.checksum import book_checksum
from feed.events import Level


def level_diff(old: Sequence[Level], new: Sequence[Level]) -> list[Level]:
    """The levels that turn ``old`` into ``new``: new or changed sizes, then removals."""
    if old == new:
        return []
    previous = dict(old)
    out = [(price, size) for price, size in new if previous.pop(price, None) != size]
    out.extend((price, "0") for price in previous)
    return out


class DepthView:
    """The top ``depth`` levels of one book as last published, with seq and checksum."""

    __slots__ = ("asks", "bids", "checksum", "depth", "seq", "ts_event", "ts_recv")

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.bids: list[Level] = []
        self.asks: list[Level] = []
        self.seq = 0
        self.checksum = 0
        self.ts_event = 0
        self.ts_recv = 0

    def reset(self, book: Book) -> None:
        """Take the book's current top levels as published (a snapshot)."""
        self.bids = book.bids.top(self.depth)
        self.asks = book.asks.top(self.depth)
        self._stamp(book)

    def advance(
        self, book: Book, change: BookChange | None
    ) -> tuple[list[Level], list[Level]] | None:
        """Move the view to the book's current state.

        ``change`` says which prices moved (``None``: unknown, compare everything).
        Returns the (bid, ask) level changes to publish, or ``None`` when the top
        ``depth`` levels did not change (nothing to send; ``seq`` stays).
        """
        bid_changes: list[Level] = []
        ask_changes: list[Level] = []
        full = change is None or change.reset
        if full or _reaches(book.bids, change.bid_prices if change else (), self.bids,
                            self.depth):
            new = book.bids.top(self.depth)
            bid_changes = level_diff(self.bids, new)
            if bid_changes:
                self.bids = new
        if full or _reaches(book.asks, change.ask_prices if change else (), self.asks,
                            self.depth):
            new = book.asks.top(self.depth)
            ask_changes = level_diff(self.asks, new)
            if ask_changes:
                self.asks = new
        if not bid_changes and not ask_changes:
            return None
        self._stamp(book)
        return bid_changes, ask_changes

    def _stamp(self, book: Book) -> None:
        self.seq = book.seq
        self.ts_event = book.ts_event
        self.ts_recv = book.ts_recv
        self.checksum = book_checksum(self.bids, self.asks, self.depth)


def _reaches(side: BookSide, prices: Sequence[str], shown: list[Level], depth: int) -> bool:
    """Whether a change at ``prices`` can alter the top ``depth`` levels of ``side``, of
    which the view last showed ``shown``: a view that is not full sees every change;
    a full one only those at or better than its last level."""
    if not prices:
        return False
    if len(shown) < depth:
        return True
    return side.reaches(prices, shown[-1][0])
