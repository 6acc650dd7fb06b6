"""What one subscription group last published of a book: its top ``depth`` levels.

A view turns a book change into the ``book_update`` that keeps a subscriber's book
equal to the server's top ``depth`` levels (PROTOCOL.md 4): levels that changed or
moved into the top ``depth`` are set, levels that fell out are removed with size
``"0"``. It recomputes a side only when a change can reach it: a change at a price
worse than the view's last level of a full view cannot.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

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

    __slots__ = (
        "_ask_edge", "_bid_edge", "asks", "bids", "checksum", "depth", "seq", "ts_event", "ts_recv",
    )

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.bids: list[Level] = []
        self.asks: list[Level] = []
        self.seq = 0
        self.checksum = 0
        self.ts_event = 0
        self.ts_recv = 0
        self._bid_edge: Decimal | None = None
        self._ask_edge: Decimal | None = None

    def reset(self, book: Book) -> None:
        """Take the book's current top levels as published (a snapshot)."""
        self.bids = book.bids.top(self.depth)
        self.asks = book.asks.top(self.depth)
        self._bid_edge = _edge(book.bids, self.depth)
        self._ask_edge = _edge(book.asks, self.depth)
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
        if full or _reaches(change.bid_keys if change else [], self._bid_edge):
            new = book.bids.top(self.depth)
            bid_changes = level_diff(self.bids, new)
            if bid_changes:
                self.bids = new
                self._bid_edge = _edge(book.bids, self.depth)
        if full or _reaches(change.ask_keys if change else [], self._ask_edge):
            new = book.asks.top(self.depth)
            ask_changes = level_diff(self.asks, new)
            if ask_changes:
                self.asks = new
                self._ask_edge = _edge(book.asks, self.depth)
        if not bid_changes and not ask_changes:
            return None
        self._stamp(book)
        return bid_changes, ask_changes

    def _stamp(self, book: Book) -> None:
        self.seq = book.seq
        self.ts_event = book.ts_event
        self.ts_recv = book.ts_recv
        self.checksum = book_checksum(self.bids, self.asks, self.depth)


def _edge(side: BookSide, depth: int) -> Decimal | None:
    """Sort key of the last level a full view holds; ``None`` when the side has fewer
    than ``depth`` levels (then any change reaches the view)."""
    return side.key_at(depth - 1)


def _reaches(keys: list[Decimal], edge: Decimal | None) -> bool:
    if not keys:
        return False
    if edge is None:
        return True
    return any(key <= edge for key in keys)
