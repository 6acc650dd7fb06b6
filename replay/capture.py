"""Binance raw WebSocket captures on disk (hftbacktest's format): the events they hold,
their ``bookTicker`` lines, and what a file is.

A capture is gzip (or any compression ``replay.lines`` reads) text, one message per line:
``<local receive time, ns> <JSON as received>``. ``CaptureReader`` runs the lines of one
or more files through one ``BinanceImporter``: several files are one recording
session read in order, so a continuation file (no snapshot of its own) continues its
predecessor's book when its first diff follows on. Damage never raises out of
iteration: it is recorded in ``problems`` (see ``replay.lines``), and lines that
cannot be understood are skipped and counted in ``malformed``.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from feed.decimals import BadDecimal, canonical
from feed.events import Event

from .binance import SNAPSHOT_WAIT_NS, BadMessage, BinanceImporter, parse_line
from .lines import LineStream, Problem, ProblemKind, StrPath, Tally

Market = Literal["spot", "usdm", "coinm"]

_CAPTURE_LINE = re.compile(rb"[0-9]{10,20} \{")
_BOOK_TICKER = b"@bookTicker"
_PROBE_LINES = 1000


class BookTicker(NamedTuple):
    """One ``bookTicker``: best bid and ask at book version ``u``, decimals canonical."""

    ts_recv: int
    symbol: str
    u: int
    bid: str
    bid_qty: str
    ask: str
    ask_qty: str


@dataclass(frozen=True, slots=True)
class CaptureInfo:
    """What the start of a capture file says about it (see ``probe``)."""

    symbol: str
    market: Market
    ts_first: int


def looks_like_capture(line: bytes) -> bool:
    """True when a (first) line has the shape ``<ns> {...``."""
    return _CAPTURE_LINE.match(line) is not None


def probe(path: StrPath) -> CaptureInfo | None:
    """The symbol and market of a capture, from its first depth diff; ``None`` when
    none is found among its first lines. The market is ``spot`` without ``pu``, else
    ``coinm`` when the diff names a pair (``ps``), else ``usdm``."""
    ts_first: int | None = None
    with LineStream(path) as lines:
        for line_no, _, line in lines:
            if line_no > _PROBE_LINES:
                break
            try:
                ts_recv, message = parse_line(line)
            except BadMessage:
                continue
            if ts_first is None:
                ts_first = ts_recv
            data = message.get("data")
            if isinstance(data, dict) and data.get("e") == "depthUpdate":
                symbol = data.get("s")
                if not isinstance(symbol, str):
                    continue
                market: Market = "spot" if "pu" not in data else "coinm" if "ps" in data else "usdm"
                return CaptureInfo(symbol, market, ts_first)
    return None


def _paths(paths: StrPath | Sequence[StrPath]) -> list[StrPath]:
    if isinstance(paths, str) or not isinstance(paths, Sequence):
        return [paths]
    return list(paths)


class CaptureReader:
    """The normalized events of one capture session (one file, or several in order).

    Lazy, single pass, constant memory (one file open at a time). ``problems`` is
    shared with the caller when one is passed in; ``malformed`` counts skipped lines.
    """

    def __init__(
        self,
        paths: StrPath | Sequence[StrPath],
        problems: list[Problem] | None = None,
        *,
        snapshot_wait_ns: int = SNAPSHOT_WAIT_NS,
    ) -> None:
        self.paths = [str(path) for path in _paths(paths)]
        self.problems: list[Problem] = [] if problems is None else problems
        self.importer = BinanceImporter(snapshot_wait_ns=snapshot_wait_ns)
        self._tally = Tally()
        self._events = _events(self.paths, self.problems, self.importer, self._tally)

    @property
    def malformed(self) -> int:
        """How many lines were skipped as bad so far."""
        return self._tally.malformed

    def __iter__(self) -> CaptureReader:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def close(self) -> None:
        """Release the open file; iteration stops."""
        self._events.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _events(
    paths: list[str], problems: list[Problem], importer: BinanceImporter, tally: Tally
) -> Generator[Event]:
    feed = importer.feed
    last = 0
    for path in paths:
        with LineStream(path, problems) as lines:
            for line_no, offset, line in lines:
                if line.find(_BOOK_TICKER, 0, 100) != -1:
                    continue  # not an event; skipped before parsing, for speed
                try:
                    ts_recv, message = parse_line(line)
                    if ts_recv < last:
                        detail = f"receive time {ts_recv} is before the previous line's {last}"
                        problems.append(
                            Problem(path, line_no, offset, ProblemKind.OUT_OF_ORDER, detail)
                        )
                    last = ts_recv
                    events = feed(ts_recv, message)
                except (BadDecimal, BadMessage) as exc:
                    tally.skip(problems, path, line_no, offset, exc)
                    continue
                yield from events
    yield from importer.finish()


def book_tickers(
    paths: StrPath | Sequence[StrPath], problems: list[Problem] | None = None
) -> Iterator[BookTicker]:
    """Every well-formed ``bookTicker`` of the captures, in file order.

    They are not events (the book is rebuilt from diffs) but they are the venue's own
    statement of the best bid and ask at version ``u``: a check on the rebuilt book.
    Damage goes to ``problems`` when given; bad lines are skipped.
    """
    sink: list[Problem] = [] if problems is None else problems
    for path in _paths(paths):
        with LineStream(path, sink) as lines:
            for _, _, line in lines:
                if line.find(_BOOK_TICKER, 0, 100) == -1:
                    continue
                try:
                    ts_recv, message = parse_line(line)
                    ticker = _book_ticker(ts_recv, message)
                except (BadMessage, BadDecimal):
                    continue
                yield ticker


def _book_ticker(ts_recv: int, message: dict[str, Any]) -> BookTicker:
    data = message.get("data")
    if not isinstance(data, dict):
        raise BadMessage("not a combined-stream message")
    symbol, u = data.get("s"), data.get("u")
    if not isinstance(symbol, str) or type(u) is not int:
        raise BadMessage("bookTicker without a symbol or u")
    quotes: list[str] = []
    for key in ("b", "B", "a", "A"):
        quote = data.get(key)
        if not isinstance(quote, str):
            raise BadMessage(f'bookTicker "{key}" must be a string')
        quotes.append(canonical(quote))
    bid, bid_qty, ask, ask_qty = quotes
    return BookTicker(ts_recv, symbol, u, bid, bid_qty, ask, ask_qty)
