"""What one subscription group last published of a book: its top ``depth`` levels.

A view turns a book change into the ``book_update`` that keeps a subscriber's book
equal to the server's top ``depth`` levels (PROTOCOL.md 4): levels that changed or
moved into the top ``depth`` are set, levels that fell out are removed with size
``"0"``.

Most changes of a live book only resize levels the view already shows, or touch levels
below a full view. A view follows those from the change's prices alone: it knows where
each shown price stands, so a resize is set in place and a level below the view's last
one is ignored, without reading the book's order. Only a change that can move a level
into or out of the top ``depth`` (a shown level removed, a new level at or above the
last shown one, any new level while the view is not full) reads the book's top levels
again and compares them with what was shown. Both ways give the same levels, in the
same order: the order ``level_diff`` gives.

The checksum is computed when it is first read after a change, so that a group that
does not send it (``bbo``, or ``book`` with ``checksum`` off) never pays for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from feed.book import Book, BookChange, BookSide
from feed.checksum import CHECKSUM_LEVELS, level_texts, texts_checksum
from feed.events import Level


def level_diff(old: Sequence[Level], new: Sequence[Level]) -> list[Level]:
    """The levels that turn ``old`` into ``new``: new or changed sizes, then removals."""
    if old == new:
        return []
    previous = dict(old)
    out = [(price, size) for price, size in new if previous.pop(price, None) != size]
    out.extend((price, "0") for price in previous)
    return out


class ShownSide:
    """One side of a view: the levels shown, best first, where each price stands, and
    the checksum texts of the first levels (made when first asked for)."""

    __slots__ = ("_texts", "depth", "levels", "position")

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.levels: list[Level] = []
        self.position: dict[str, int] = {}
        self._texts: list[str] | None = []

    def take(self, levels: list[Level]) -> None:
        """Show ``levels`` (the side's top ``depth``, best first)."""
        self.levels = levels
        self.position = {price: i for i, (price, _) in enumerate(levels)}
        self._texts = None

    def texts(self) -> list[str]:
        """``price:size`` of the levels the checksum covers."""
        texts = self._texts
        if texts is None:
            texts = self._texts = level_texts(self.levels, self.depth)
        return texts

    def refresh(self, side: BookSide) -> list[Level]:
        """Show the side's top levels again; the levels that changed, as ``level_diff``."""
        new = side.top(self.depth)
        changes = level_diff(self.levels, new)
        if changes:
            self.take(new)
        return changes

    def follow(self, side: BookSide, prices: Sequence[str]) -> list[Level]:
        """Follow a change of the side at ``prices``; the levels that changed, as
        ``refresh`` would give them."""
        if not prices:
            return []
        position, sizes = self.position, side.sizes
        resized: list[int] = []
        new: list[str] = []  # present, not shown: new to the book, or below a full view
        for price in prices:
            i = position.get(price)
            if i is not None:
                if price not in sizes:
                    return self.refresh(side)  # a shown level removed
                resized.append(i)
            elif price in sizes:
                new.append(price)
        if new and (len(self.levels) < self.depth
                    or side.reaches(new, self.levels[-1][0])):
            return self.refresh(side)
        if not resized:
            return []
        levels = self.levels
        changes = [(levels[i][0], sizes[levels[i][0]])
                   for i in sorted(set(resized)) if sizes[levels[i][0]] != levels[i][1]]
        if changes:
            levels = self.levels = levels.copy()  # a published list is never changed
            position = self.position
            texts = self._texts
            for price, size in changes:
                i = position[price]
                levels[i] = (price, size)
                if texts is not None and i < CHECKSUM_LEVELS:
                    texts[i] = f"{price}:{size}"
        return changes


class DepthView:
    """The top ``depth`` levels of one book as last published, with seq and checksum."""

    __slots__ = ("_asks", "_bids", "_checksum", "depth", "seq", "ts_event", "ts_recv")

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._bids = ShownSide(depth)
        self._asks = ShownSide(depth)
        self.seq = 0
        self._checksum: int | None = 0
        self.ts_event = 0
        self.ts_recv = 0

    @property
    def bids(self) -> list[Level]:
        """The bid levels shown, best first (never changed in place)."""
        return self._bids.levels

    @property
    def asks(self) -> list[Level]:
        """The ask levels shown, best first (never changed in place)."""
        return self._asks.levels

    @property
    def checksum(self) -> int:
        """The checksum (PROTOCOL.md 4) of the levels shown."""
        checksum = self._checksum
        if checksum is None:
            checksum = self._checksum = texts_checksum(self._bids.texts(), self._asks.texts())
        return checksum

    def reset(self, book: Book) -> None:
        """Take the book's current top levels as published (a snapshot)."""
        self._bids.take(book.bids.top(self.depth))
        self._asks.take(book.asks.top(self.depth))
        self._stamp(book)

    def advance(
        self, book: Book, change: BookChange | None
    ) -> tuple[list[Level], list[Level]] | None:
        """Move the view to the book's current state.

        ``change`` says which prices moved (``None``: unknown, compare everything).
        Returns the (bid, ask) level changes to publish, or ``None`` when the top
        ``depth`` levels did not change (nothing to send; ``seq`` stays).
        """
        if change is None or change.reset:
            bid_changes = self._bids.refresh(book.bids)
            ask_changes = self._asks.refresh(book.asks)
        else:
            bid_changes = self._bids.follow(book.bids, change.bid_prices)
            ask_changes = self._asks.follow(book.asks, change.ask_prices)
        if not bid_changes and not ask_changes:
            return None
        self._stamp(book)
        return bid_changes, ask_changes

    def _stamp(self, book: Book) -> None:
        self.seq = book.seq
        self.ts_event = book.ts_event
        self.ts_recv = book.ts_recv
        self._checksum = None
