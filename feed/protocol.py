"""Requests in, messages out: the JSON side of PROTOCOL.md sections 3 and 4.

``parse_request`` turns one inbound WebSocket message into a typed request or raises
``RequestError`` carrying the ``error`` reply's code and sentence. The ``*_message``
functions build the server's message objects; ``encode`` turns one into bytes with
orjson. Nothing here does IO.

Exceptions::

    RequestError        the client's request is bad: answer with an ``error`` message
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from feed.events import Level

Channel = Literal["book", "trades", "bbo"]
CHANNELS: Final = ("book", "trades", "bbo")
MAX_DEPTH: Final = 1000
DEFAULT_DEPTH: Final = 10
MAX_INTERVAL_MS: Final = 60_000
MAX_ID_CHARS: Final = 64

RequestId = int | str | None


class RequestError(Exception):
    """A bad request; ``code`` and ``message`` go into the ``error`` reply."""

    def __init__(self, code: str, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class BookOptions:
    """Options of a ``book`` or ``bbo`` subscription (``depth`` 1 for ``bbo``)."""

    depth: int = DEFAULT_DEPTH
    interval_ms: int = 0
    checksum: bool = True


@dataclass(frozen=True, slots=True)
class Subscribe:
    id: RequestId
    channel: Channel
    symbols: tuple[str, ...]
    options: BookOptions


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    id: RequestId
    channel: Channel
    symbols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Resync:
    id: RequestId
    channel: Channel
    symbol: str


@dataclass(frozen=True, slots=True)
class ListSymbols:
    id: RequestId


@dataclass(frozen=True, slots=True)
class Ping:
    id: RequestId


Request = Subscribe | Unsubscribe | Resync | ListSymbols | Ping

_OPTIONS: Final[dict[str, frozenset[str]]] = {
    "book": frozenset({"depth", "interval_ms", "checksum"}),
    "bbo": frozenset({"interval_ms"}),
    "trades": frozenset(),
}
_COMMON: Final = frozenset({"op", "id", "channel", "symbols"})


def quote(value: Any, limit: int = 40) -> str:
    """A client's value as shown in an error message: its repr, cut to ``limit``
    characters (a reply never grows with what the client sent)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_request(data: bytes | str) -> Request:
    """Parse one request message. Raises ``RequestError`` (code ``bad_request``,
    ``unknown_channel``) when it is not a well-formed request."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise RequestError("bad_request", "the request is not valid JSON") from None
    if not isinstance(obj, dict):
        raise RequestError("bad_request", "a request is a JSON object with an \"op\"")
    request_id = _request_id(obj.get("id"))
    op = obj.get("op")
    try:
        if op == "subscribe":
            return _subscribe(obj, request_id)
        if op == "unsubscribe":
            _only(obj, {"op", "id", "channel", "symbols"})
            return Unsubscribe(request_id, _channel(obj), _symbols(obj))
        if op == "resync":
            _only(obj, {"op", "id", "channel", "symbol"})
            channel = _channel(obj)
            if channel != "book":
                raise RequestError("bad_request", "resync applies to the book channel")
            symbol = obj.get("symbol")
            if not isinstance(symbol, str) or not symbol:
                raise RequestError("bad_request", "\"symbol\" must be a non-empty string")
            return Resync(request_id, channel, symbol)
        if op == "list":
            _only(obj, {"op", "id"})
            return ListSymbols(request_id)
        if op == "ping":
            _only(obj, {"op", "id"})
            return Ping(request_id)
    except RequestError as exc:
        exc.request_id = request_id
        raise
    raise RequestError(
        "bad_request",
        f"unknown op {quote(op)}: expected subscribe, unsubscribe, resync, list or ping",
        request_id,
    )


def _request_id(value: Any) -> RequestId:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) <= MAX_ID_CHARS:
        return value
    raise RequestError("bad_request",
                       "\"id\" must be an integer or a string of at most 64 characters")


def _only(obj: dict[str, Any], allowed: set[str] | frozenset[str]) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise RequestError("bad_request",
                           f"unknown field {quote(extra[0])} for op {quote(obj['op'])}")


def _channel(obj: dict[str, Any]) -> Channel:
    channel = obj.get("channel")
    if channel == "book":
        return "book"
    if channel == "trades":
        return "trades"
    if channel == "bbo":
        return "bbo"
    if not isinstance(channel, str):
        raise RequestError("bad_request", "\"channel\" must be one of book, trades, bbo")
    raise RequestError("unknown_channel",
                       f"unknown channel {quote(channel)}: expected book, trades or bbo")


def _symbols(obj: dict[str, Any]) -> tuple[str, ...]:
    symbols = obj.get("symbols")
    if not isinstance(symbols, list) or not symbols:
        raise RequestError("bad_request", "\"symbols\" must be a non-empty list of strings")
    if not all(isinstance(s, str) and s for s in symbols):
        raise RequestError("bad_request", "\"symbols\" must be a non-empty list of strings")
    if len(set(symbols)) != len(symbols):
        raise RequestError("bad_request", "\"symbols\" lists a symbol twice")
    return tuple(symbols)


def _subscribe(obj: dict[str, Any], request_id: RequestId) -> Subscribe:
    channel = _channel(obj)
    _only(obj, _COMMON | _OPTIONS[channel])
    symbols = _symbols(obj)
    depth = _int_option(obj, "depth", DEFAULT_DEPTH, 1, MAX_DEPTH)
    interval_ms = _int_option(obj, "interval_ms", 0, 0, MAX_INTERVAL_MS)
    checksum = obj.get("checksum", True)
    if not isinstance(checksum, bool):
        raise RequestError("bad_request", "\"checksum\" must be true or false")
    if channel == "bbo":
        options = BookOptions(depth=1, interval_ms=interval_ms, checksum=False)
    elif channel == "trades":
        options = BookOptions(depth=0, interval_ms=0, checksum=False)
    else:
        options = BookOptions(depth, interval_ms, checksum)
    return Subscribe(request_id, channel, symbols, options)


def _int_option(obj: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = obj.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError("bad_request", f"\"{name}\" must be an integer from {low} to {high}")
    return value


# -- messages -----------------------------------------------------------------------

Message = dict[str, Any]


def encode(message: Message | list[Message]) -> bytes:
    """UTF-8 JSON bytes of one message (or a batch)."""
    return orjson.dumps(message)


def options_in_force(channel: str, options: BookOptions) -> Message:
    """The options a ``subscribed`` reply states for a channel."""
    if channel == "book":
        return {"depth": options.depth, "interval_ms": options.interval_ms,
                "checksum": options.checksum}
    if channel == "bbo":
        return {"interval_ms": options.interval_ms}
    return {}


def subscribed_message(request: Subscribe) -> Message:
    return {"type": "subscribed", "id": request.id, "channel": request.channel,
            "symbols": list(request.symbols), **options_in_force(request.channel, request.options)}


def unsubscribed_message(request: Unsubscribe) -> Message:
    return {"type": "unsubscribed", "id": request.id, "channel": request.channel,
            "symbols": list(request.symbols)}


def error_message(code: str, message: str, request_id: RequestId = None) -> Message:
    out: Message = {"type": "error", "code": code, "message": message}
    if request_id is not None:
        out["id"] = request_id
    return out


def notice_message(code: str, message: str, symbol: str | None = None) -> Message:
    out: Message = {"type": "notice", "code": code, "message": message}
    if symbol is not None:
        out["symbol"] = symbol
    return out


def pong_message(request_id: RequestId, ts: int) -> Message:
    return {"type": "pong", "id": request_id, "ts": ts}


def heartbeat_message(ts: int, seqs: dict[str, int]) -> Message:
    return {"type": "heartbeat", "ts": ts, "seqs": seqs}


def symbols_message(request_id: RequestId, symbols: list[str],
                    channels_for: Callable[[str], list[str]] | None = None) -> Message:
    """The ``symbols`` reply; ``channels_for(symbol)`` narrows the channels offered (a
    key's grant), and a symbol with none is left out."""
    listed = [{"symbol": s, "channels": list(CHANNELS) if channels_for is None
               else channels_for(s)} for s in symbols]
    return {"type": "symbols", "id": request_id, "symbols": [x for x in listed if x["channels"]]}


def book_snapshot_message(
    symbol: str, seq: int, depth: int, bids: list[Level], asks: list[Level], checksum: int | None,
    ts_event: int, ts_recv: int, ts_send: int, reason: str,
) -> Message:
    out: Message = {"type": "book_snapshot", "symbol": symbol, "seq": seq, "depth": depth,
                    "bids": bids, "asks": asks}
    if checksum is not None:
        out["checksum"] = checksum
    out.update(ts_event=ts_event, ts_recv=ts_recv, ts_send=ts_send, reason=reason)
    return out


def book_update_message(
    symbol: str, seq: int, prev_seq: int, bids: list[Level], asks: list[Level],
    checksum: int | None, ts_event: int, ts_recv: int, ts_send: int,
) -> Message:
    if checksum is None:
        return {"type": "book_update", "symbol": symbol, "seq": seq, "prev_seq": prev_seq,
                "bids": bids, "asks": asks, "ts_event": ts_event, "ts_recv": ts_recv,
                "ts_send": ts_send}
    return {"type": "book_update", "symbol": symbol, "seq": seq, "prev_seq": prev_seq,
            "bids": bids, "asks": asks, "checksum": checksum, "ts_event": ts_event,
            "ts_recv": ts_recv, "ts_send": ts_send}


def bbo_message(
    symbol: str, seq: int, bid: Level | None, ask: Level | None,
    ts_event: int, ts_recv: int, ts_send: int,
) -> Message:
    return {"type": "bbo", "symbol": symbol, "seq": seq, "bid": bid, "ask": ask,
            "ts_event": ts_event, "ts_recv": ts_recv, "ts_send": ts_send}


def trade_message(
    symbol: str, seq: int, trade_id: int | str, price: str, size: str, side: str,
    ts_event: int, ts_recv: int, ts_send: int,
) -> Message:
    return {"type": "trade", "symbol": symbol, "seq": seq, "trade_id": trade_id,
            "price": price, "size": size, "side": side,
            "ts_event": ts_event, "ts_recv": ts_recv, "ts_send": ts_send}
