"""The tick file format, version 1, as bytes: one header line, then one event per line.

Pure functions, no IO: ``encode_header`` / ``decode_header`` for the first line,
``encode_event`` / ``decode_event`` for the rest. docs/tick-format.md is the reference;
in short::

    {"format":"tickwire-ticks","version":1,"source":"binance-spot","symbols":["BTCUSDT"]}
    {"t":"snapshot","s":"BTCUSDT","te":1723161254206652067,"tr":1723161254206652067,
     "q":50093239218,"b":[["61837.63","3.78826"]],"a":[["61837.64","1.54698"]]}
    {"t":"delta","s":"BTCUSDT","te":..,"tr":..,"q":50093239224,"b":[..],"a":[..]}
    {"t":"trade","s":"BTCUSDT","te":..,"tr":..,"id":3735683259,"p":"61837.63",
     "z":"0.02","side":"sell"}
    {"t":"gap","s":"BTCUSDT","te":..,"tr":..,"r":"no snapshot"}

(each event on one line). Decoding validates every field and canonicalizes prices and
sizes, so a reader never passes on a spelling that PROTOCOL.md forbids.

Exceptions::

    ValueError
    ├── TickFormatError        the bytes are not a valid line of this format
    │   └── BadHeader          ... and it was the header: not a (supported) tick file
    └── feed.decimals.BadDecimal   a price or size is not a decimal number
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from orjson import JSONDecodeError as _JSONDecodeError
from orjson import loads as _loads

from feed.decimals import canonical_cached as _canonical
from feed.decimals import canonical_levels
from feed.events import BookDelta, BookSnapshot, Event, Gap, Level, Trade

FORMAT = "tickwire-ticks"
VERSION = 1
"""The version of the line format this module encodes and decodes."""
VERSIONS = (1, 2)
"""The versions a header may name: 2 is the block format of ``replay.blocks``."""

class TickFormatError(ValueError):
    """A line is not valid in the tick format (the file is damaged or not ours)."""


class BadHeader(TickFormatError):
    """The first line is not a tick file header this reader understands."""


@dataclass(frozen=True, slots=True)
class TickHeader:
    """The first line of a tick file. Only ``format`` and ``version`` are required.

    ``ts_first`` / ``ts_last`` (the ``ts_recv`` span) are known only to a writer that
    has its events in advance; a streaming writer leaves them out and
    ``replay.tickfile.inspect`` computes them. Unknown header keys are kept in
    ``extra`` so that later minor additions do not break version-1 readers.
    """

    source: str | None = None
    symbols: tuple[str, ...] = ()
    ts_first: int | None = None
    ts_last: int | None = None
    version: int = VERSION
    extra: tuple[tuple[str, Any], ...] = ()


def encode_header(header: TickHeader) -> bytes:
    """The header line, without its newline."""
    obj: dict[str, Any] = {"format": FORMAT, "version": header.version}
    if header.source is not None:
        obj["source"] = header.source
    if header.symbols:
        obj["symbols"] = list(header.symbols)
    if header.ts_first is not None:
        obj["ts_first"] = header.ts_first
    if header.ts_last is not None:
        obj["ts_last"] = header.ts_last
    obj.update(header.extra)
    return orjson.dumps(obj)


def decode_header(line: bytes) -> TickHeader:
    """Parse a header line; raises ``BadHeader`` if it is not a version-1 or -2 header."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise BadHeader("first line is not JSON: not a tick file") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise BadHeader(f'first line has no "format":"{FORMAT}": not a tick file')
    version = obj.get("version")
    if version not in VERSIONS or type(version) is not int:
        raise BadHeader(f"unsupported tick file version {version!r} (this reader: "
                        f"{', '.join(map(str, VERSIONS))})")
    source = obj.get("source")
    symbols = obj.get("symbols", [])
    ts_first = obj.get("ts_first")
    ts_last = obj.get("ts_last")
    if source is not None and not isinstance(source, str):
        raise BadHeader('"source" must be a string')
    if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
        raise BadHeader('"symbols" must be a list of strings')
    for name, value in (("ts_first", ts_first), ("ts_last", ts_last)):
        if value is not None and type(value) is not int:
            raise BadHeader(f'"{name}" must be an integer (ns)')
    known = {"format", "version", "source", "symbols", "ts_first", "ts_last"}
    extra = tuple((k, v) for k, v in obj.items() if k not in known)
    return TickHeader(source, tuple(symbols), ts_first, ts_last, version, extra)


def kind_of(event: Event) -> str:
    """The ``"t"`` of an event: ``snapshot``, ``delta``, ``trade`` or ``gap``."""
    return _KINDS[type(event)]


_KINDS: dict[type, str] = {BookSnapshot: "snapshot", BookDelta: "delta", Trade: "trade", Gap: "gap"}


def encode_event(event: Event) -> bytes:
    """One event as a compact JSON line, without its newline.

    Decimals are written as they are: events from ``feed`` sources are canonical.
    """
    obj: dict[str, Any]
    if isinstance(event, BookSnapshot | BookDelta):
        obj = {
            "t": "snapshot" if isinstance(event, BookSnapshot) else "delta",
            "s": event.symbol,
            "te": event.ts_event,
            "tr": event.ts_recv,
        }
        if event.seq is not None:
            obj["q"] = event.seq
        obj["b"] = event.bids  # orjson writes a tuple as a JSON array
        obj["a"] = event.asks
    elif isinstance(event, Trade):
        obj = {
            "t": "trade",
            "s": event.symbol,
            "te": event.ts_event,
            "tr": event.ts_recv,
            "id": event.trade_id,
            "p": event.price,
            "z": event.size,
            "side": event.side,
        }
    else:
        obj = {"t": "gap", "s": event.symbol, "te": event.ts_event, "tr": event.ts_recv}
        if event.reason:
            obj["r"] = event.reason
    return orjson.dumps(obj)


def _int(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if type(value) is not int:
        raise TickFormatError(f'"{key}" must be an integer, got {value!r}')
    return value


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise TickFormatError(f'"{key}" must be a non-empty string, got {value!r}')
    return value


def _levels_in(obj: dict[str, Any], key: str) -> tuple[Level, ...]:
    raw = obj.get(key)
    if type(raw) is not list:
        raise TickFormatError(f'"{key}" must be a list of [price, size]')
    return canonical_levels(raw, TickFormatError, key)


CANONICAL_DECIMAL = rb"(?:0|[1-9][0-9]*+)(?:\.[0-9]*+(?<=[1-9]))?"
_LEVEL = rb'\["' + CANONICAL_DECIMAL + rb'","' + CANONICAL_DECIMAL + rb'"\]'
_LEVELS = rb"\[(?:" + _LEVEL + rb"(?:," + _LEVEL + rb")*+)?\]"
_written_canonical = re.compile(
    rb'\{"t":"(?:delta|snapshot)","s":"[^"\\]*+","te":-?[0-9]++,"tr":-?[0-9]++'
    rb'(?:,"q":-?[0-9]++)?,"b":' + _LEVELS + rb',"a":' + _LEVELS + rb"\}").fullmatch
"""Matches a book event line exactly as ``encode_event`` writes it, every price and size
in canonical form (PROTOCOL.md section 2). Of such a line (once ``orjson`` has parsed
it) the levels are known good: they are taken as they are, with no look-up per decimal.
One pass of the regex costs about a third of those look-ups. Any other spelling (other
key order, spaces, a non-canonical decimal, a number for a decimal) goes the careful way."""


def decode_event(line: bytes) -> Event:
    """Parse one event line.

    Raises ``TickFormatError`` for anything malformed and ``BadDecimal`` for a price or
    size that is not a decimal number.
    """
    try:
        obj = _loads(line)
    except _JSONDecodeError:
        raise TickFormatError("not JSON") from None
    if type(obj) is not dict:
        raise TickFormatError("not a JSON object")
    get: Callable[[str], Any] = obj.get  # values of any JSON type, checked below
    kind = get("t")
    symbol = get("s")
    ts_event = get("te")
    ts_recv = get("tr")
    if type(symbol) is not str or not symbol or type(ts_event) is not int \
            or type(ts_recv) is not int:
        _str(obj, "s")  # each raises when its key is the one that is wrong
        _int(obj, "te")
        _int(obj, "tr")
    if kind == "delta" or kind == "snapshot":
        seq = get("q")
        if seq is not None and type(seq) is not int:
            raise TickFormatError(f'"q" must be an integer, got {seq!r}')
        cls = BookDelta if kind == "delta" else BookSnapshot
        if _written_canonical(line) is None:
            return cls(symbol, _levels_in(obj, "b"), _levels_in(obj, "a"), ts_event, ts_recv,
                       seq)
        bids: tuple[Level, ...] = tuple(map(tuple, get("b")))
        asks: tuple[Level, ...] = tuple(map(tuple, get("a")))
        return cls(symbol, bids, asks, ts_event, ts_recv, seq)
    if kind == "trade":
        trade_id = get("id")
        if type(trade_id) is not int and not (isinstance(trade_id, str) and trade_id):
            raise TickFormatError(f'"id" must be an integer or a string, got {trade_id!r}')
        side = get("side")
        if side != "buy" and side != "sell":
            raise TickFormatError(f'"side" must be "buy" or "sell", got {side!r}')
        price = _canonical(_str(obj, "p"))
        size = _canonical(_str(obj, "z"))
        return Trade(symbol, trade_id, price, size, side, ts_event, ts_recv)
    if kind == "gap":
        reason = obj.get("r", "")
        if not isinstance(reason, str):
            raise TickFormatError(f'"r" must be a string, got {reason!r}')
        return Gap(symbol, ts_event, ts_recv, reason)
    raise TickFormatError(f"unknown event kind {kind!r}")
