"""Kraken WebSocket v1 market data to normalized events: the ``book`` channel (with
the depth truncation and checksum of Kraken's book guide) and the ``trade`` channel.
``KrakenImporter`` does no IO; ``KrakenReader`` reads a cryptofeed capture through it
(see ``replay.cryptofeed``).

Messages are JSON arrays ``[channelID, payload..., channelName, pair]``:

- ``book-N`` snapshot: ``{"as": [...], "bs": [...]}``, levels ``[price, volume,
  timestamp]``. Becomes a ``BookSnapshot``.
- ``book-N`` update: one payload with ``"a"`` and/or ``"b"``, or two (asks, then bids);
  levels as above, or with a 4th element ``"r"`` (republished: a level back in scope).
  Volume 0 deletes a level. The last payload carries ``"c"``, the checksum of the book
  after the update. Becomes a ``BookDelta``.
- ``trade``: one payload, a list of ``[price, volume, time, side, orderType, misc]``;
  each becomes a ``Trade``, side ``"b"`` buy and ``"s"`` sell (the aggressor's).
- objects (``heartbeat``, ``systemStatus``, ``subscriptionStatus``) and other channels
  are not events.

Book maintenance, as Kraken documents it: apply every level of an update, then cut each
side to the subscribed depth N (from the channel name ``book-N``); Kraken sends no
deletion for levels pushed out of scope. The importer keeps its own book of each pair,
with the strings as Kraken sent them, and puts those removals into the ``BookDelta`` as
size ``"0"`` levels, so that a book rebuilt from the events stays equal to Kraken's.
A delta gives each price it touches once, with its size after the update.

Checksum (Kraken's "WebSocket v1 book checksum"): the top 10 asks (price ascending)
then the top 10 bids (price descending), each level's price then volume as sent, with
the ``.`` removed and leading zeros stripped, all concatenated; ``zlib.crc32`` of that
as an unsigned decimal. Every update's ``c`` is checked (``verified`` counts the
matches). On a mismatch the update is not emitted: a ``Gap`` is, a ``checksum``
problem is reported, and nothing more is emitted for the pair until its next snapshot.
An update before the pair's first snapshot gives ``Gap(reason="no snapshot")`` once.
A book message that names its pair but is no readable snapshot breaks a LIVE book at
once (``BookLost``, ``Gap(reason="unreadable update: ...")``) rather than at the next
checksum.

Times: ``ts_event`` is the latest level timestamp of the message (exact ns; a snapshot
or update without levels takes its receive time). Kraken v1 has no sequence numbers:
``seq`` is ``None``. Nor has it trade ids: ``trade_id`` is ``"<time>-<index>"``, the
trade's time as sent and its position in the message, the same on every read.

Raises ``BadMessage`` and ``BadDecimal`` with the state unchanged, and ``BookLost``,
as ``replay.cryptofeed`` says.
"""

from __future__ import annotations

import re
import zlib
from bisect import bisect_left, insort
from collections.abc import Iterable
from decimal import Decimal
from itertools import chain
from typing import Any, NamedTuple

from feed.decimals import BadDecimal
from feed.events import BookDelta, BookSnapshot, Event, Gap, Level, Side, Trade

from .cryptofeed import (
    BadMessage,
    BookLost,
    BookState,
    BookStatus,
    CryptofeedReader,
    Step,
    decimal,
    shown,
    unix_ns,
)
from .lines import Problem, ProblemKind, StrPath

CHECKSUM_LEVELS = 10
_DEPTH = re.compile(r"book-([0-9]{1,9})")  # ASCII digits (str.isdigit takes "²"), bounded
_CHECKSUM = re.compile(r"[0-9]{1,10}")  # a CRC32 in decimal
_SIDES: dict[str, Side] = {"b": "buy", "s": "sell"}


class KrakenLevel(NamedTuple):
    """One level of a book message: canonical price and size, the strings as sent (for
    the checksum), and its timestamp in ns."""

    price: str
    size: str
    price_text: str
    volume_text: str
    ts: int


class _BookSide:
    """One side of a pair's book, best level first, keeping Kraken's strings."""

    __slots__ = ("_bid", "_keys", "_levels")

    def __init__(self, levels: Iterable[KrakenLevel], *, bid: bool) -> None:
        self._bid = bid
        self._keys: list[Decimal] = []  # price, negated for bids: best first
        self._levels: dict[Decimal, KrakenLevel] = {}
        for level in levels:
            self.set(level)

    def set(self, level: KrakenLevel) -> None:
        """Set a level; size ``"0"`` removes it."""
        key = -Decimal(level.price) if self._bid else Decimal(level.price)
        if level.size == "0":
            if self._levels.pop(key, None) is not None:
                del self._keys[bisect_left(self._keys, key)]
        else:
            if key not in self._levels:
                insort(self._keys, key)
            self._levels[key] = level

    def apply(self, levels: Iterable[KrakenLevel], depth: int) -> dict[str, str]:
        """Set ``levels`` then cut the side to ``depth``; return every price touched
        (canonical) with its size after that (``"0"`` for a level cut off)."""
        changes: dict[str, str] = {}
        for level in levels:
            self.set(level)
            changes[level.price] = level.size
        while len(self._keys) > depth:
            changes[self._levels.pop(self._keys.pop()).price] = "0"
        return changes

    def top(self, n: int) -> list[KrakenLevel]:
        """The best ``n`` levels, best first."""
        levels = self._levels
        return [levels[key] for key in self._keys[:n]]

    def __len__(self) -> int:
        return len(self._keys)


class _PairBook:
    """One pair's book and where it stands (mutable, private to the importer)."""

    __slots__ = ("asks", "bids", "status")

    def __init__(self) -> None:
        self.status = BookStatus()
        self.clear()

    def clear(self) -> None:
        """Forget the levels (the book is lost until its next snapshot)."""
        self.bids = _BookSide((), bid=True)
        self.asks = _BookSide((), bid=False)


def checksum(asks: Iterable[KrakenLevel], bids: Iterable[KrakenLevel]) -> int:
    """Kraken's v1 book checksum of the given levels: pass the top 10 asks, best (lowest)
    first, and the top 10 bids, best (highest) first."""
    text = "".join(
        _digits(level.price_text) + _digits(level.volume_text) for level in chain(asks, bids)
    )
    return zlib.crc32(text.encode())


def _digits(number: str) -> str:
    return number.replace(".", "").lstrip("0")


def subscription_pairs(message: Any) -> list[str]:
    """The pairs a client's v1 subscribe message (``{"event": "subscribe", "pair":
    [...], ...}``) names; none for any other message."""
    if isinstance(message, dict) and message.get("event") == "subscribe":
        pairs = message.get("pair")
        if isinstance(pairs, list):
            return [pair for pair in pairs if isinstance(pair, str)]
    return []


def _levels(payload: dict[str, Any], key: str) -> list[KrakenLevel]:
    raw = payload.get(key, [])
    if type(raw) is not list:
        raise BadMessage(f'"{key}" must be a list of levels')
    out: list[KrakenLevel] = []
    for entry in raw:
        if (
            type(entry) is not list
            or len(entry) not in (3, 4)
            or not all(isinstance(item, str) for item in entry[:3])
        ):
            raise BadMessage(f'"{key}" level {shown(entry)} is not [price, volume, timestamp]')
        price, volume, ts = entry[:3]
        out.append(KrakenLevel(decimal(price), decimal(volume), price, volume, unix_ns(ts)))
    return out


def _plain(levels: Iterable[KrakenLevel]) -> list[Level]:
    return [(level.price, level.size) for level in levels]


def _latest(levels: Iterable[KrakenLevel], default: int) -> int:
    return max((level.ts for level in levels), default=default)


class KrakenImporter:
    """Kraken v1 messages in, normalized events out; see the module docstring.

    ``problems`` gets a ``checksum`` entry for each mismatch (``CryptofeedReader``
    moves it to its own list with the line's position); ``verified`` counts the updates
    whose checksum matched.
    """

    def __init__(self) -> None:
        self.problems: list[tuple[ProblemKind, str]] = []
        self.verified = 0
        self._books: dict[str, _PairBook] = {}

    def state(self, pair: str) -> BookState:
        """Where ``pair``'s book stands (``AWAITING`` for a pair never seen)."""
        book = self._books.get(pair)
        return BookState.AWAITING if book is None else book.status.state

    def top(self, pair: str, n: int = CHECKSUM_LEVELS) -> tuple[list[Level], list[Level]]:
        """The importer's own best ``n`` bids and asks of ``pair`` (canonical, best first)."""
        book = self._books.get(pair) or _PairBook()
        return _plain(book.bids.top(n)), _plain(book.asks.top(n))

    def feed(self, ts_recv: int, message: Any) -> list[Event]:
        """Take one received message; return the events it makes known."""
        if isinstance(message, dict):
            if not isinstance(message.get("event"), str):
                raise BadMessage('an object without an "event"')
            return []  # heartbeat, systemStatus, subscriptionStatus: not market data
        if type(message) is not list or len(message) < 4:
            raise BadMessage("neither an event object nor [channelID, ..., channelName, pair]")
        channel, pair, payloads = message[-2], message[-1], message[1:-2]
        if not isinstance(channel, str) or not isinstance(pair, str) or not pair:
            raise BadMessage("channel name and pair must be strings")
        if channel.startswith("book-"):
            first = payloads[0] if len(payloads) == 1 else None
            if type(first) is dict and ("as" in first or "bs" in first):
                _depth(channel)  # a snapshot holds its depth, but its channel is checked
                return self._on_snapshot(ts_recv, pair, first)
            return self._on_update(ts_recv, pair, channel, payloads)
        if channel == "trade":
            if len(payloads) != 1 or type(payloads[0]) is not list:
                raise BadMessage("a trade message holds one list of trades")
            return _trades(ts_recv, pair, payloads[0])
        return []  # ticker, spread, ohlc: not events

    def _book(self, pair: str) -> _PairBook:
        book = self._books.get(pair)
        if book is None:
            book = self._books[pair] = _PairBook()
        return book

    def _on_snapshot(self, ts_recv: int, pair: str, payload: dict[str, Any]) -> list[Event]:
        asks, bids = _levels(payload, "as"), _levels(payload, "bs")
        book = self._book(pair)
        book.status.step(Step.SNAPSHOT)
        book.asks = _BookSide(asks, bid=False)
        book.bids = _BookSide(bids, bid=True)
        bid_levels = tuple(_plain(book.bids.top(len(book.bids))))
        ask_levels = tuple(_plain(book.asks.top(len(book.asks))))
        ts_event = _latest(chain(asks, bids), ts_recv)
        return [BookSnapshot(pair, bid_levels, ask_levels, ts_event, ts_recv)]

    def _on_update(
        self, ts_recv: int, pair: str, channel: str, payloads: list[Any]
    ) -> list[Event]:
        book = self._book(pair)
        try:
            depth = _depth(channel)
            asks, bids, expected = _update(payloads)
        except (BadMessage, BadDecimal) as exc:
            error = book.status.unreadable(pair, ts_recv, exc)
            if isinstance(error, BookLost):
                book.clear()
            raise error from None
        ts_event = _latest(chain(asks, bids), ts_recv)
        out: list[Event] = []
        if not book.status.admit(pair, ts_event, ts_recv, out):
            return out
        ask_changes = book.asks.apply(asks, depth)
        bid_changes = book.bids.apply(bids, depth)
        if expected is not None:
            found = checksum(book.asks.top(CHECKSUM_LEVELS), book.bids.top(CHECKSUM_LEVELS))
            if found != expected:
                reason = f"checksum mismatch: Kraken says {expected}, the book gives {found}"
                self.problems.append((ProblemKind.CHECKSUM, f"{pair}: {reason}"))
                book.status.step(Step.BREAK)
                book.clear()
                out.append(Gap(pair, ts_event, ts_recv, reason))
                return out
            self.verified += 1
        book.status.step(Step.APPLY)
        if ask_changes or bid_changes:
            bid_levels, ask_levels = tuple(bid_changes.items()), tuple(ask_changes.items())
            out.append(BookDelta(pair, bid_levels, ask_levels, ts_event, ts_recv))
        return out


def _depth(channel: str) -> int:
    """The depth N of a ``book-N`` channel name; raises ``BadMessage`` without one."""
    match = _DEPTH.fullmatch(channel)
    if match is None:
        raise BadMessage(f"book channel without a depth: {shown(channel)}")
    return int(match.group(1))


def _update(payloads: list[Any]) -> tuple[list[KrakenLevel], list[KrakenLevel], int | None]:
    """An update's asks and bids in the order sent, and its checksum (``None`` when it
    carries none); raises ``BadMessage``, ``BadDecimal``."""
    asks: list[KrakenLevel] = []
    bids: list[KrakenLevel] = []
    expected: int | None = None
    for payload in payloads:
        if type(payload) is not dict:
            raise BadMessage("book payloads must be objects")
        asks += _levels(payload, "a")
        bids += _levels(payload, "b")
        if "c" in payload:
            expected = _checksum_value(payload["c"])
    return asks, bids, expected


def _checksum_value(value: Any) -> int:
    if not isinstance(value, str) or not _CHECKSUM.fullmatch(value):
        raise BadMessage(f'"c" must be a checksum in decimal digits, got {shown(value)}')
    return int(value)


def _trades(ts_recv: int, pair: str, entries: list[Any]) -> list[Event]:
    out: list[Event] = []
    for index, entry in enumerate(entries):
        if (
            type(entry) is not list
            or len(entry) < 4
            or not all(isinstance(item, str) for item in entry[:4])
            or entry[3] not in _SIDES
        ):
            raise BadMessage(f"trade {shown(entry)} is not [price, volume, time, side, ...]")
        price, volume, time, side = entry[:4]
        trade_id = f"{time}-{index}"
        ts_event = unix_ns(time)
        out.append(Trade(pair, trade_id, decimal(price), decimal(volume), _SIDES[side],
                         ts_event, ts_recv))
    return out


class KrakenReader(CryptofeedReader[KrakenImporter]):
    """The events of a cryptofeed capture of Kraken WebSocket v1; see
    ``CryptofeedReader`` and the module docstring."""

    ENDPOINTS = ("wss://ws.kraken.com", "wss://ws.kraken.com/", "wss://beta-ws.kraken.com")
    subscription_symbols = staticmethod(subscription_pairs)

    def __init__(self, path: StrPath, problems: list[Problem] | None = None) -> None:
        super().__init__(path, problems, KrakenImporter())
