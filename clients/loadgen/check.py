"""Correctness while measuring: one connection per worker reads every message it gets and
checks what PROTOCOL.md promises about them.

- ``book``: every ``book_update``'s ``prev_seq`` is the ``seq`` of the message before it
  and its ``checksum`` matches the book after it (``clients.book.ClientBook``); a
  ``book_snapshot`` restarts the book (``reason`` ``lag`` or ``resync`` is counted).
- ``trades``: each symbol's ``seq`` grows by exactly 1 per trade.
- ``bbo``: each symbol's ``seq`` strictly increases.
- ``notice`` ``gap``: counted (the server's source lost a book).

After a broken chain or a checksum mismatch a symbol's book is not checked again until
its next snapshot, so one fault counts once. A run whose checks found a fault says so in
its result: a server that delivers fast but wrong is not measured, it is broken.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from clients.book import ClientBook
from clients.errors import BadMessage, ChainBreak, ChecksumMismatch
from clients.messages import BookSnapshot, BookUpdate, parse_message

FAULTS = ("chain_breaks", "checksum_mismatches", "trade_seq_gaps", "bbo_seq_regressions",
          "bad_messages")
"""The counts that mean the stream was wrong."""


class Checker:
    """Checks one connection's messages (pure: no IO)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._books: dict[str, ClientBook] = {}
        self._broken: set[str] = set()
        self._seqs: dict[tuple[str, str], int] = {}

    def check(self, message: Any) -> None:
        """Check one decoded message (anything: what is not a known message is counted
        as ``bad_messages`` only when it claims a known type)."""
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind in ("book_snapshot", "book_update"):
            self._book(message)
        elif kind in ("trade", "bbo"):
            self._seq(str(kind), message)
        elif kind == "notice" and message.get("code") == "gap":
            self.counts["gaps"] += 1

    def _book(self, message: dict[str, Any]) -> None:
        try:
            parsed = parse_message(message)
        except BadMessage:
            self.counts["bad_messages"] += 1
            return
        counts = self.counts
        counts["book_messages"] += 1
        if isinstance(parsed, BookSnapshot):
            symbol = parsed.symbol
            reason = message.get("reason")
            if reason in ("lag", "resync"):
                counts[f"snapshots_{reason}"] += 1
            book = self._books.get(symbol)
            if book is None:
                book = self._books[symbol] = ClientBook(symbol, parsed.depth)
            self._broken.discard(symbol)
            try:
                book.apply_snapshot(parsed)
            except ChecksumMismatch:
                counts["checksum_mismatches"] += 1
                self._broken.add(symbol)
        elif isinstance(parsed, BookUpdate):
            symbol = parsed.symbol
            if symbol in self._broken:
                return
            book = self._books.get(symbol)
            try:
                if book is None:
                    raise ChainBreak(symbol, None, parsed.prev_seq, parsed.seq)
                book.apply_update(parsed)
            except ChainBreak:
                counts["chain_breaks"] += 1
                self._broken.add(symbol)
            except ChecksumMismatch:
                counts["checksum_mismatches"] += 1
                self._broken.add(symbol)

    def _seq(self, kind: str, message: dict[str, Any]) -> None:
        symbol, seq = message.get("symbol"), message.get("seq")
        if not isinstance(symbol, str) or not isinstance(seq, int):
            self.counts["bad_messages"] += 1
            return
        self.counts[f"{kind}_messages"] += 1
        last = self._seqs.get((kind, symbol))
        self._seqs[(kind, symbol)] = seq
        if last is None:
            return
        if kind == "trade" and seq != last + 1:
            self.counts["trade_seq_gaps"] += 1
        elif kind == "bbo" and seq <= last:
            self.counts["bbo_seq_regressions"] += 1


def faults(counts: dict[str, int]) -> int:
    """How many of ``counts`` say the stream was wrong."""
    return sum(counts.get(name, 0) for name in FAULTS)
