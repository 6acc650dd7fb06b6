"""One order book as a client sees it, rebuilt from ``book_snapshot`` and ``book_update``.

Pure: no IO, no trio. ``ClientBook`` applies messages (``clients.messages``) and checks
the two promises PROTOCOL.md section 4 makes about them: each update's ``prev_seq`` is
the ``seq`` of the book message before it (else ``ChainBreak``, and the update is *not*
applied), and each message's ``checksum`` matches the book after it is applied (else
``ChecksumMismatch``, and the book is left as applied, known wrong).

Levels are keyed by the canonical price string, as the protocol allows, and ordered
numerically (``decimal.Decimal``): bids best (highest) first, asks best (lowest) first.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from decimal import Decimal

from clients.errors import ChainBreak, ChecksumMismatch
from clients.messages import BookSnapshot, BookUpdate
from feed.checksum import CHECKSUM_LEVELS, book_checksum, checksum_text
from feed.events import Level

REMOVE = "0"
"""The size that removes a level (canonical spelling of zero)."""


class BookSide:
    """One side of a book: ``price -> size`` plus the prices in numeric order."""

    __slots__ = ("_descending", "_order", "_sizes")

    def __init__(self, *, descending: bool) -> None:
        self._descending = descending
        self._sizes: dict[str, str] = {}
        self._order: list[tuple[Decimal, str]] = []  # ascending by value

    def __len__(self) -> int:
        return len(self._sizes)

    def __contains__(self, price: object) -> bool:
        return price in self._sizes

    def get(self, price: str) -> str | None:
        """The size at ``price``, or ``None`` if there is no such level."""
        return self._sizes.get(price)

    def set(self, price: str, size: str) -> None:
        """Set the level at ``price`` to ``size``; size ``"0"`` removes it."""
        if size == REMOVE:
            if self._sizes.pop(price, None) is not None:
                value = Decimal(price)
                index = bisect_left(self._order, value, key=_value)
                del self._order[index]
            return
        if price not in self._sizes:
            value = Decimal(price)
            self._order.insert(bisect_left(self._order, value, key=_value), (value, price))
        self._sizes[price] = size

    def replace(self, levels: Iterable[Level]) -> None:
        """Replace the whole side with ``levels`` (zero sizes are skipped)."""
        self._sizes = {price: size for price, size in levels if size != REMOVE}
        self._order = sorted(((Decimal(price), price) for price in self._sizes), key=_value)

    def top(self, n: int | None = None) -> list[Level]:
        """The best ``n`` levels (all if ``n`` is ``None``), best first."""
        if n is None:
            n = len(self._order)
        chosen = self._order[: -n - 1 : -1] if self._descending else self._order[:n]
        return [(price, self._sizes[price]) for _, price in chosen]

    def best(self) -> Level | None:
        """The best level, or ``None`` if the side is empty."""
        if not self._order:
            return None
        _, price = self._order[-1] if self._descending else self._order[0]
        return (price, self._sizes[price])


def _value(item: tuple[Decimal, str]) -> Decimal:
    return item[0]


class ClientBook:
    """The book of one ``book`` subscription to one symbol.

    ``seq`` is ``None`` until the first snapshot. ``depth`` is the subscription's depth
    (taken from each snapshot); the checksum covers the top ``min(depth, 10)`` levels.
    """

    def __init__(self, symbol: str, depth: int = 10) -> None:
        self.symbol = symbol
        self.depth = depth
        self.seq: int | None = None
        self.bids = BookSide(descending=True)
        self.asks = BookSide(descending=False)

    def apply_snapshot(self, snapshot: BookSnapshot) -> None:
        """Replace the book with ``snapshot``.

        Raises ``ChecksumMismatch`` (after replacing) if the snapshot's checksum does not
        match its own levels.
        """
        self.bids.replace(snapshot.bids)
        self.asks.replace(snapshot.asks)
        self.depth = snapshot.depth
        self.seq = snapshot.seq
        self._verify(snapshot.seq, snapshot.checksum)

    def apply_update(self, update: BookUpdate) -> None:
        """Apply ``update`` on top of the book.

        Raises ``ChainBreak`` (without applying anything) if the book has no snapshot yet,
        if ``update.prev_seq`` is not the book's ``seq`` or if ``update.seq`` does not
        exceed it; raises ``ChecksumMismatch`` (after applying) if the resulting book does
        not match ``update.checksum``.
        """
        if self.seq is None or update.prev_seq != self.seq or update.seq <= update.prev_seq:
            raise ChainBreak(self.symbol, self.seq, update.prev_seq, update.seq)
        for price, size in update.bids:
            self.bids.set(price, size)
        for price, size in update.asks:
            self.asks.set(price, size)
        self.seq = update.seq
        self._verify(update.seq, update.checksum)

    def clear(self) -> None:
        """Forget the book (it is unknown until the next snapshot)."""
        self.bids.replace(())
        self.asks.replace(())
        self.seq = None

    def top(self, n: int = 10) -> tuple[list[Level], list[Level]]:
        """The best ``n`` bids (highest first) and asks (lowest first)."""
        return self.bids.top(n), self.asks.top(n)

    def bbo(self) -> tuple[Level | None, Level | None]:
        """The best bid and best ask, each ``None`` when that side is empty."""
        return self.bids.best(), self.asks.best()

    def checksum(self) -> int:
        """PROTOCOL.md's checksum of the book as it is now."""
        bids, asks = self.top(min(self.depth, CHECKSUM_LEVELS))
        return book_checksum(bids, asks, self.depth)

    def _verify(self, seq: int, expected: int | None) -> None:
        if expected is None:
            return
        actual = self.checksum()
        if actual != expected:
            bids, asks = self.top(min(self.depth, CHECKSUM_LEVELS))
            text = checksum_text(bids, asks, self.depth)
            raise ChecksumMismatch(self.symbol, seq, expected, actual, text)
