"""Coinbase WebSocket market data (``level2``, ``matches``) to normalized events.
``CoinbaseImporter`` does no IO; ``CoinbaseReader`` reads a cryptofeed capture through
it (see ``replay.cryptofeed``).

Messages are JSON objects with a ``type``:

- ``snapshot`` (``product_id``, ``bids`` and ``asks`` as ``[[price, size], ...]``):
  ``BookSnapshot``. It carries no time: ``ts_event`` is its receive time (or its
  ``time``, should it have one).
- ``l2update`` (``product_id``, ``changes`` as ``[[side, price, size], ...]`` with side
  ``"buy"`` for a bid and ``"sell"`` for an ask, ``time``): ``BookDelta``, size ``"0"``
  removing a level. An update before the product's first snapshot gives
  ``Gap(reason="no snapshot")`` once, and nothing more for that book until a snapshot
  (Coinbase sends the snapshot first, so this means the capture lost it). An update
  whose ``product_id`` reads but whose time or changes do not breaks a LIVE book
  (``BookLost``, ``Gap(reason="unreadable update: ...")``): with no sequence numbers
  and no checksum, nothing later would show the hole.
- ``match``: ``Trade`` with ``trade_id``, ``price``, ``size``. Coinbase's ``side`` is the
  *maker's* order side, so the aggressor's is the other one: maker ``"sell"`` means an
  aggressive buy.
- ``last_match`` (the product's last trade before the subscription, sent once on
  subscribing) is history the capture did not see happen: not an event. Nor are
  ``ticker``, ``subscriptions``, ``heartbeat``, ``error`` and other types.

Times: ``time`` is ISO 8601 UTC (``2021-04-17T16:43:37.075687Z``), read into exact ns
by ``iso_ns``. ``level2`` has no sequence numbers: ``seq`` is ``None``.

Raises ``BadMessage`` and ``BadDecimal`` with the state unchanged, and ``BookLost``,
as ``replay.cryptofeed`` says.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from feed.decimals import BadDecimal
from feed.events import BookDelta, BookSnapshot, Event, Level, Side, Trade

from .cryptofeed import (
    BadMessage,
    BookState,
    BookStatus,
    CryptofeedReader,
    Step,
    decimal,
    shown,
)
from .lines import Problem, ProblemKind, StrPath

_ISO = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
                  r"(?:\.([0-9]{1,9}))?Z")
_EPOCH = date(1970, 1, 1).toordinal()
_AGGRESSOR: dict[str, Side] = {"buy": "sell", "sell": "buy"}  # by the maker's side
_SIDES = ("buy", "sell")  # compared, not hashed: a message may hold anything there


def iso_ns(text: str) -> int:
    """An ISO 8601 UTC time ``YYYY-MM-DDTHH:MM:SS[.fraction]Z`` as exact ns since the
    Unix epoch; raises ``BadMessage`` for anything else (other offsets, more than 9
    decimals, an impossible date or time)."""
    match = _ISO.fullmatch(text)
    if match is None:
        raise BadMessage(f"not an ISO 8601 UTC time: {shown(text)}")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction = match.group(7) or ""
    try:
        days = date(year, month, day).toordinal() - _EPOCH
    except ValueError:
        raise BadMessage(f"not a date: {shown(text)}") from None
    if hour > 23 or minute > 59 or second > 59:
        raise BadMessage(f"not a time of day: {shown(text)}")
    seconds = days * 86_400 + hour * 3_600 + minute * 60 + second
    return seconds * 1_000_000_000 + int(fraction.ljust(9, "0"))


def subscription_products(message: Any) -> list[str]:
    """The products a client's subscribe message names: its ``product_ids`` and those
    of each channel given as an object; none for any other message."""
    if not isinstance(message, dict) or message.get("type") != "subscribe":
        return []
    lists = [message.get("product_ids")]
    channels = message.get("channels")
    if isinstance(channels, list):
        lists += [channel.get("product_ids") for channel in channels if isinstance(channel, dict)]
    return [
        product
        for products in lists
        if isinstance(products, list)
        for product in products
        if isinstance(product, str)
    ]


def _str(message: dict[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value:
        raise BadMessage(f'"{key}" must be a non-empty string, got {shown(value)}')
    return value


def _list(message: dict[str, Any], key: str) -> list[Any]:
    value = message.get(key)
    if type(value) is not list:
        raise BadMessage(f'"{key}" must be a list, got {shown(value)}')
    return value


def _levels(message: dict[str, Any], key: str) -> tuple[Level, ...]:
    out: list[Level] = []
    for level in _list(message, key):
        if type(level) is not list or len(level) != 2:
            raise BadMessage(f'"{key}" level {shown(level)} is not [price, size]')
        out.append(_level(level[0], level[1]))
    return tuple(out)


def _level(price: Any, size: Any) -> Level:
    if not isinstance(price, str) or not isinstance(size, str):
        raise BadMessage(f"price and size must be strings, got {shown([price, size])}")
    return decimal(price), decimal(size)


class CoinbaseImporter:
    """Coinbase messages in, normalized events out; see the module docstring.

    ``problems`` stays empty: Coinbase's ``level2`` has no checksum to disagree with,
    and what cannot be read raises (``BookLost`` for an update of a LIVE book).
    """

    def __init__(self) -> None:
        self.problems: list[tuple[ProblemKind, str]] = []
        self._books: dict[str, BookStatus] = {}

    def state(self, product: str) -> BookState:
        """Where ``product``'s book stands (``AWAITING`` for a product never seen)."""
        status = self._books.get(product)
        return BookState.AWAITING if status is None else status.state

    def feed(self, ts_recv: int, message: Any) -> list[Event]:
        """Take one received message; return the events it makes known."""
        if type(message) is not dict or not isinstance(message.get("type"), str):
            raise BadMessage('not an object with a "type"')
        kind = message["type"]
        if kind == "l2update":
            return self._on_update(ts_recv, message)
        if kind == "snapshot":
            return self._on_snapshot(ts_recv, message)
        if kind == "match":
            return [_trade(ts_recv, message)]
        return []  # last_match, ticker, subscriptions, heartbeat, ...: not events

    def _status(self, product: str) -> BookStatus:
        status = self._books.get(product)
        if status is None:
            status = self._books[product] = BookStatus()
        return status

    def _on_snapshot(self, ts_recv: int, message: dict[str, Any]) -> list[Event]:
        product = _str(message, "product_id")
        bids, asks = _levels(message, "bids"), _levels(message, "asks")
        ts_event = iso_ns(_str(message, "time")) if "time" in message else ts_recv
        self._status(product).step(Step.SNAPSHOT)
        return [BookSnapshot(product, bids, asks, ts_event, ts_recv)]

    def _on_update(self, ts_recv: int, message: dict[str, Any]) -> list[Event]:
        product = _str(message, "product_id")
        status = self._status(product)
        try:
            ts_event = iso_ns(_str(message, "time"))
            bids, asks = _changes(message)
        except (BadMessage, BadDecimal) as exc:
            raise status.unreadable(product, ts_recv, exc) from None
        out: list[Event] = []
        if status.admit(product, ts_event, ts_recv, out):
            status.step(Step.APPLY)
            out.append(BookDelta(product, tuple(bids), tuple(asks), ts_event, ts_recv))
        return out


def _changes(message: dict[str, Any]) -> tuple[list[Level], list[Level]]:
    bids: list[Level] = []
    asks: list[Level] = []
    for change in _list(message, "changes"):
        if type(change) is not list or len(change) != 3 or change[0] not in _SIDES:
            raise BadMessage(f"change {shown(change)} is not [buy|sell, price, size]")
        (bids if change[0] == "buy" else asks).append(_level(change[1], change[2]))
    return bids, asks


def _trade(ts_recv: int, message: dict[str, Any]) -> Trade:
    trade_id, maker = message.get("trade_id"), message.get("side")
    if type(trade_id) is not int:
        raise BadMessage(f'"trade_id" must be an integer, got {shown(trade_id)}')
    if maker not in _SIDES:
        raise BadMessage(f'"side" must be "buy" or "sell", got {shown(maker)}')
    price, size = _level(message.get("price"), message.get("size"))
    return Trade(_str(message, "product_id"), trade_id, price, size, _AGGRESSOR[maker],
                 iso_ns(_str(message, "time")), ts_recv)


class CoinbaseReader(CryptofeedReader[CoinbaseImporter]):
    """The events of a cryptofeed capture of Coinbase's WebSocket feed; see
    ``CryptofeedReader`` and the module docstring."""

    ENDPOINTS = ("wss://ws-feed.pro.coinbase.com", "wss://ws-feed.exchange.coinbase.com")
    subscription_symbols = staticmethod(subscription_products)

    def __init__(self, path: StrPath, problems: list[Problem] | None = None) -> None:
        super().__init__(path, problems, CoinbaseImporter())
