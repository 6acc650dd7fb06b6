"""What one subscription group last published of a book: its top ``depth`` levels.

A view turns a book change into the ``book_update`` that keeps a subscriber's book
equal to the server's top ``depth`` levels (PROTOCOL.md 4): levels that changed or
moved into the top ``depth`` are set, levels that fell out are removed with size
``"0"``.

Most changes of a live book only resize levels the view already shows, or touch levels
below a full view. A view follows those from the change's prices alone: it knows where
each shown price stands, so a resize is set in place and a level below the view's last
one is ignored, without reading the book's order. A change of one price that brings a
new level in (at or above the last shown one, or anywhere while the view is not full)
is placed by comparing its price with the shown ones, exactly (as ``Decimal``). Only
the other changes that can move a level into or out of the top ``depth`` (a shown
level removed, several prices at once) read the book's top levels again and compare
them with what was shown. Every way gives the same levels, in the same order: the
order ``level_diff`` gives.

The checksum is computed when it is first read after a change, so that a group that
does not send it (``bbo``, or ``book`` with ``checksum`` off) never pays for it. It is
taken over the ``price:size`` texts the view keeps between changes (``ShownSide``):
a resize writes one text, not the twenty of the covered levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from feed.book import Book, BookChange, BookSide
from feed.checksum import CHECKSUM_LEVELS, interleave, level_texts, texts_checksum
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
    """One side of a view: the levels shown, best first, and where each price stands.

    ``texts`` is the view's checksum text, one ``price:size`` per level, bids and asks
    interleaved (shared by both sides; this side's levels at ``offset``, every other
    item). It is empty until the view's checksum is read, and whenever a side shows
    fewer than the levels the checksum covers; a side keeps it up to date otherwise.
    """

    __slots__ = ("covered", "depth", "levels", "offset", "position", "texts")

    def __init__(self, depth: int, offset: int, texts: list[str]) -> None:
        self.depth = depth
        self.covered = min(depth, CHECKSUM_LEVELS)
        self.offset = offset
        self.texts = texts
        self.levels: list[Level] = []
        self.position: dict[str, int] = {}

    def take(self, levels: list[Level], same: int = 0) -> None:
        """Show ``levels`` (the side's top ``depth``, best first), of which the first
        ``same`` are the levels shown before."""
        self.levels = levels
        self.position = {price: i for i, (price, _) in enumerate(levels)}
        texts, covered = self.texts, self.covered
        if texts and same < covered:
            if len(levels) >= covered:
                side_texts = texts[self.offset::2]
                side_texts[same:] = level_texts(levels[same:], covered - same)
                texts[self.offset::2] = side_texts
            else:
                texts.clear()

    def refresh(self, side: BookSide) -> list[Level]:
        """Show the side's top levels again; the levels that changed, as ``level_diff``."""
        new = side.top(self.depth)
        changes = level_diff(self.levels, new)
        if changes:
            self.take(new)
        return changes

    def insert(self, side: BookSide, price: str) -> list[Level]:
        """Show a level new to the side that belongs among the levels shown (at or
        above the last of a full view), pushing the last one out of a full view; the
        levels that changed, as ``refresh`` would give them."""
        levels = self.levels
        full = len(levels) >= self.depth
        lo, hi = 0, len(levels) - 1 if full else len(levels)
        value, bid = Decimal(price), self.offset == 0  # bids at the even places
        while lo < hi:  # the first shown level that the new one is better than (exact)
            mid = (lo + hi) // 2
            shown = Decimal(levels[mid][0])
            if value > shown if bid else value < shown:
                hi = mid
            else:
                lo = mid + 1
        level = (price, side.sizes[price])
        changes = [level]
        levels = [*levels[:lo], level, *levels[lo:]]
        if full:
            changes.append((levels.pop()[0], "0"))
        self.take(levels, lo)
        return changes

    def remove(self, side: BookSide, index: int) -> list[Level]:
        """The shown level at ``index`` left the side, and nothing else changed: the
        levels below it move up and the side's next level, if any, comes in last; the
        levels that changed, as ``refresh`` would give them."""
        gone = self.levels[index][0]
        levels = side.top(self.depth)
        changes = [levels[-1]] if len(levels) == len(self.levels) else []
        changes.append((gone, "0"))
        self.take(levels, index)
        return changes

    def follow(self, side: BookSide, prices: Sequence[str]) -> list[Level]:
        """Follow a change of the side at ``prices``; the levels that changed, as
        ``refresh`` would give them."""
        position, sizes = self.position, side.sizes
        resized: list[int] = []
        new: list[str] = []  # present, not shown: new to the book, or below a full view
        for price in prices:
            i = position.get(price)
            if i is None:
                if price in sizes:
                    new.append(price)
            elif price in sizes:
                resized.append(i)
            elif len(prices) == 1:
                return self.remove(side, i)
            else:
                return self.refresh(side)  # a shown level removed, and more
        if new and (len(self.levels) < self.depth
                    or side.reaches(new, self.levels[-1][0])):
            if len(prices) == 1:
                return self.insert(side, new[0])
            return self.refresh(side)
        if not resized:
            return []
        if len(resized) > 1:
            resized = sorted(set(resized))
        levels = self.levels.copy()  # a published list is never changed
        texts = self.texts if len(self.texts) else None
        changes = []
        for i in resized:
            price, shown = levels[i]
            size = sizes[price]
            if size != shown:
                levels[i] = level = (price, size)
                changes.append(level)
                if texts is not None and i < self.covered:
                    texts[2 * i + self.offset] = f"{price}:{size}"
        if changes:
            self.levels = levels
        return changes


class DepthView:
    """The top ``depth`` levels of one book as last published, with seq and checksum."""

    __slots__ = ("_asks", "_bids", "_checksum", "_texts", "depth", "seq", "ts_event", "ts_recv")

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self._texts: list[str] = []
        self._bids = ShownSide(depth, 0, self._texts)
        self._asks = ShownSide(depth, 1, self._texts)
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
            texts = self._texts
            if not texts:
                parts = interleave(level_texts(self.bids, self.depth),
                                   level_texts(self.asks, self.depth))
                if len(parts) < 2 * self._bids.covered:  # a side short of the covered levels
                    checksum = self._checksum = texts_checksum(parts)
                    return checksum
                texts[:] = parts
            checksum = self._checksum = texts_checksum(texts)
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
