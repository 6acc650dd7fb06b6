"""One event stream over many recorded files, whatever their kind.

``open_events(paths)`` (or ``EventStream(paths)``) recognises each file by its content
(a tick file by its header line, a Binance raw capture by its ``<ns> {json}`` lines, a
cryptofeed capture of Kraken or Coinbase by the endpoint on its first line; compression
by magic bytes), opens a reader for each, and merges them lazily in
``ts_recv`` order. Ties keep the
order of the files as given, then the order within a file (``heapq.merge`` is stable),
so the same files always give the same stream. Memory stays constant: one decoded
chunk and one pending event per file.

Binance captures of the same stream (same symbol and market) are read as one session,
in the order of their first receive time, so that a continuation file continues its
predecessor's book (see ``replay.capture``); the session takes the place of its first
file in the tie-break order.

``EventStream.symbols()`` tells which symbols the files hold before they are replayed.
Every reader appends its damage to one shared ``problems`` list; see ``replay.lines``.
Raises ``UnknownSource`` (a ``ValueError``) when a file is neither kind, ``BadHeader``
for a tick file with a bad header, and ``OSError`` when a file cannot be read, all
before the first event is produced.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from enum import Enum
from operator import attrgetter
from typing import Any

from feed.events import Event

from .capture import CaptureReader, looks_like_capture, probe
from .codec import BadHeader, decode_header
from .coinbase import CoinbaseReader
from .cryptofeed import CryptofeedReader, endpoint
from .kraken import KrakenReader
from .lines import LineStream, Problem, StrPath
from .tickfile import TickReader, inspect

Reader = TickReader | CaptureReader | CryptofeedReader[Any]


class UnknownSource(ValueError):
    """A file that is neither a tick file nor a recognised capture."""


class SymbolClash(UnknownSource):
    """Two files give the same symbol name to different markets (say ``BTCUSDT`` of
    Binance spot and of USD-M futures): merged, they would make one book of two."""


class SourceKind(Enum):
    """What a file holds."""

    TICKS = "ticks"
    BINANCE = "binance"
    KRAKEN = "kraken"
    COINBASE = "coinbase"


CRYPTOFEED_READERS: dict[SourceKind, type[KrakenReader] | type[CoinbaseReader]] = {
    SourceKind.KRAKEN: KrakenReader,
    SourceKind.COINBASE: CoinbaseReader,
}
"""The reader of each kind of cryptofeed capture."""


def detect(path: StrPath) -> SourceKind:
    """The kind of a file, from its first line; raises ``UnknownSource`` or ``OSError``."""
    with LineStream(path) as lines:
        first = next(iter(lines), None)
    if first is None:
        raise UnknownSource(f"{path}: empty, or no complete first line")
    line = first[2]
    if line.startswith(b"{"):
        try:
            decode_header(line)
        except BadHeader as exc:
            raise UnknownSource(f"{path}: {exc}") from None
        return SourceKind.TICKS
    if looks_like_capture(line):
        return SourceKind.BINANCE
    connected_to = endpoint(line)
    for kind, reader in CRYPTOFEED_READERS.items():
        if connected_to in reader.ENDPOINTS:
            return kind
    raise UnknownSource(f"{path}: neither a tick file nor a Binance, Kraken or Coinbase capture")


class EventStream:
    """The merged events of ``paths``: a lazy, single-pass iterator; see the module
    docstring. ``open_events(paths)`` is the same as ``EventStream(paths)``.

    ``problems`` collects the damage every reader has found so far; ``readers`` are the
    underlying readers in tie-break order. Dropping or closing the stream closes its
    files.
    """

    def __init__(self, paths: Iterable[StrPath], *, chain_captures: bool = True) -> None:
        self.problems: list[Problem] = []
        self._symbols: dict[str, None] = {}
        self._origins: dict[str, tuple[str, StrPath]] = {}  # symbol: (source, first file)
        self._unnamed: list[str] = []  # tick files whose header names no symbols
        self.readers = tuple(self._open(paths, chain_captures))
        self._events: Iterator[Event]
        if len(self.readers) == 1:
            self._events = self.readers[0]
        else:
            self._events = heapq.merge(*self.readers, key=attrgetter("ts_recv"))

    @property
    def malformed(self) -> int:
        """Lines skipped as malformed, over all readers."""
        return sum(reader.malformed for reader in self.readers)

    def symbols(self) -> tuple[str, ...]:
        """The symbols in the files, known before replaying them: from tick-file headers,
        from each Binance capture's first depth diff and from each cryptofeed capture's
        subscription. A tick file whose header names none is read through once
        (``inspect``) to find them."""
        for path in self._unnamed:
            self._symbols.update(dict.fromkeys(inspect(path).symbols))
        self._unnamed.clear()
        return tuple(self._symbols)

    def __iter__(self) -> Iterator[Event]:
        """The merged events themselves (a loop over the stream then takes one step
        less per event); ``next(stream)`` reads the same iterator."""
        return self._events

    def __next__(self) -> Event:
        return next(self._events)

    def close(self) -> None:
        """Release every file."""
        for reader in self.readers:
            reader.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _add_symbols(self, symbols: Iterable[str], source: str | None, path: StrPath) -> None:
        """Note the symbols of a file; ``SymbolClash`` when one already came from a
        different source (a tick file that names no source clashes with nothing)."""
        for symbol in symbols:
            self._symbols[symbol] = None
            if source is None:
                continue
            seen = self._origins.setdefault(symbol, (source, path))
            if seen[0] != source:
                raise SymbolClash(
                    f"{symbol} is {seen[0]} in {seen[1]} but {source} in {path}: one symbol "
                    "cannot be two markets; replay or convert them separately")

    def _open(self, paths: Iterable[StrPath], chain_captures: bool) -> list[Reader]:
        slots: list[Reader | tuple[str, str]] = []
        sessions: dict[tuple[str, str], list[tuple[int, StrPath]]] = {}
        try:
            for path in paths:
                kind = detect(path)
                if kind is SourceKind.TICKS:
                    reader = TickReader(path, self.problems)
                    if not reader.header.symbols:
                        self._unnamed.append(str(path))
                    slots.append(reader)
                    self._add_symbols(reader.header.symbols, reader.header.source, path)
                    continue
                if kind in CRYPTOFEED_READERS:
                    cryptofeed = CRYPTOFEED_READERS[kind]
                    self._add_symbols(cryptofeed.symbols(path), kind.value, path)
                    slots.append(cryptofeed(path, self.problems))
                    continue
                info = probe(path)
                if info is not None:
                    self._add_symbols([info.symbol], f"binance-{info.market}", path)
                if info is None or not chain_captures:
                    slots.append(CaptureReader(path, self.problems))
                    continue
                key = (info.symbol, info.market)
                if key not in sessions:
                    sessions[key] = []
                    slots.append(key)
                sessions[key].append((info.ts_first, path))
        except BaseException:
            for slot in slots:
                if not isinstance(slot, tuple):
                    slot.close()
            raise
        readers: list[Reader] = []
        for slot in slots:
            if isinstance(slot, tuple):
                ordered = sorted(sessions[slot], key=lambda item: item[0])
                readers.append(CaptureReader([path for _, path in ordered], self.problems))
            else:
                readers.append(slot)
        return readers


def open_events(paths: Iterable[StrPath], *, chain_captures: bool = True) -> EventStream:
    """Open ``paths`` (tick files and Binance, Kraken and Coinbase captures, in any mix)
    as one stream.

    With ``chain_captures`` (the default) captures of the same stream become one
    session; without it every file is read on its own.
    """
    return EventStream(paths, chain_captures=chain_captures)
