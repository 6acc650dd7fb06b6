"""Typed views of the server messages whose integrity the client checks.

PROTOCOL.md section 4 defines the messages; ``parse_message`` turns the decoded JSON
object of a ``book_snapshot``, ``book_update``, ``trade``, ``bbo`` or ``heartbeat`` into a
small frozen dataclass, and returns ``None`` for every other type (clients ignore types
they do not know, and replies such as ``subscribed`` stay plain dicts). Unknown fields are
ignored. A known message with a missing or mistyped field raises ``BadMessage``.

Levels are ``(price, size)`` tuples of canonical decimal strings, exactly as sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clients.errors import BadMessage
from feed.events import Level

Message = dict[str, Any]
"""One decoded server message: a JSON object with at least ``"type"``."""


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """``book_snapshot``: replaces the subscription's book."""

    symbol: str
    seq: int
    depth: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    checksum: int | None
    reason: str = ""
    ts_event: int = 0
    ts_recv: int = 0
    ts_send: int = 0


@dataclass(frozen=True, slots=True)
class BookUpdate:
    """``book_update``: absolute sizes for some levels; size ``"0"`` removes a level."""

    symbol: str
    seq: int
    prev_seq: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    checksum: int | None
    ts_event: int = 0
    ts_recv: int = 0
    ts_send: int = 0


@dataclass(frozen=True, slots=True)
class Trade:
    """``trade``: one trade; ``side`` is the aggressor's (``buy`` or ``sell``)."""

    symbol: str
    seq: int
    trade_id: int | str
    price: str
    size: str
    side: str
    ts_event: int = 0
    ts_recv: int = 0
    ts_send: int = 0


@dataclass(frozen=True, slots=True)
class Bbo:
    """``bbo``: best bid and ask (either may be ``None``); ``seq`` is the book's."""

    symbol: str
    seq: int
    bid: Level | None
    ask: Level | None
    ts_event: int = 0
    ts_recv: int = 0
    ts_send: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """``heartbeat``: the last ``seq`` sent per ``"channel:symbol"`` while idle."""

    ts: int
    seqs: Mapping[str, int]


Parsed = BookSnapshot | BookUpdate | Trade | Bbo | Heartbeat


def parse_message(msg: Mapping[str, Any]) -> Parsed | None:
    """Return the typed view of ``msg``, or ``None`` if its type is not one modelled here.

    Raises ``BadMessage`` if a modelled message lacks a field or has one of the wrong type.
    """
    kind = msg.get("type")
    try:
        if kind == "book_update":
            return BookUpdate(
                symbol=_str(msg["symbol"]),
                seq=_int(msg["seq"]),
                prev_seq=_int(msg["prev_seq"]),
                bids=_levels(msg["bids"]),
                asks=_levels(msg["asks"]),
                checksum=_opt_int(msg.get("checksum")),
                ts_event=_int(msg.get("ts_event", 0)),
                ts_recv=_int(msg.get("ts_recv", 0)),
                ts_send=_int(msg.get("ts_send", 0)),
            )
        if kind == "book_snapshot":
            return BookSnapshot(
                symbol=_str(msg["symbol"]),
                seq=_int(msg["seq"]),
                depth=_int(msg.get("depth", 10)),
                bids=_levels(msg["bids"]),
                asks=_levels(msg["asks"]),
                checksum=_opt_int(msg.get("checksum")),
                reason=_str(msg.get("reason", "")),
                ts_event=_int(msg.get("ts_event", 0)),
                ts_recv=_int(msg.get("ts_recv", 0)),
                ts_send=_int(msg.get("ts_send", 0)),
            )
        if kind == "trade":
            trade_id = msg["trade_id"]
            if not isinstance(trade_id, int | str) or isinstance(trade_id, bool):
                raise TypeError("trade_id")
            return Trade(
                symbol=_str(msg["symbol"]),
                seq=_int(msg["seq"]),
                trade_id=trade_id,
                price=_str(msg["price"]),
                size=_str(msg["size"]),
                side=_str(msg["side"]),
                ts_event=_int(msg.get("ts_event", 0)),
                ts_recv=_int(msg.get("ts_recv", 0)),
                ts_send=_int(msg.get("ts_send", 0)),
            )
        if kind == "bbo":
            return Bbo(
                symbol=_str(msg["symbol"]),
                seq=_int(msg["seq"]),
                bid=_opt_level(msg.get("bid")),
                ask=_opt_level(msg.get("ask")),
                ts_event=_int(msg.get("ts_event", 0)),
                ts_recv=_int(msg.get("ts_recv", 0)),
                ts_send=_int(msg.get("ts_send", 0)),
            )
        if kind == "heartbeat":
            seqs = msg.get("seqs", {})
            if not isinstance(seqs, Mapping):
                raise TypeError("seqs")
            return Heartbeat(
                ts=_int(msg.get("ts", 0)),
                seqs={_str(key): _int(value) for key, value in seqs.items()},
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise BadMessage(f"malformed {kind} message ({exc!s}): {dict(msg)!r:.200}") from None
    return None


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r:.40}")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r:.40}")
    return value


def _opt_int(value: object) -> int | None:
    return None if value is None else _int(value)


def _level(value: object) -> Level:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise TypeError(f"expected [price, size], got {value!r:.40}")
    return (_str(value[0]), _str(value[1]))


def _opt_level(value: object) -> Level | None:
    return None if value is None else _level(value)


def _levels(value: object) -> tuple[Level, ...]:
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a list of levels, got {value!r:.40}")
    return tuple(_level(item) for item in value)
