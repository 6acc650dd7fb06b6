"""cryptofeed raw WebSocket session captures: the line format, what the Kraken and
Coinbase importers share, and the file reader.

cryptofeed's raw-data recorder writes one line per WebSocket message::

    wss://ws.kraken.com <-> 1618678132.3858151           the connection opened
    wss://ws.kraken.com <- 1618678132.8253062: {...}     a message the client sent
    1618678132.8258188: {...}                            a message received

Times are Unix seconds with a fraction (Python's float ``repr``); ``unix_ns`` reads
the digits into exact integer nanoseconds, never through a float. Blank lines (the
recorder leaves some at the end of a file) and the client's lines carry no data.

An importer (``replay.kraken.KrakenImporter``, ``replay.coinbase.CoinbaseImporter``)
turns ``(ts_recv, message)`` into events without IO; ``CryptofeedReader`` runs the
received lines of one file through one, in file order. The symbols are known before
any data: ``subscribed`` reads them from the client's subscribe messages at the top of
the file (cryptofeed subscribes as soon as it connects).

Each symbol's book goes through the same states with both venues (``BookStatus``)::

    AWAITING --snapshot--> LIVE --apply--> LIVE
        |                    |
        | update first       | break: an unreadable update,
        |                    | or (Kraken) a checksum mismatch
        v                    v
       LOST <----------------+
    LIVE, LOST --snapshot--> LIVE

An update before any snapshot puts ``Gap(reason="no snapshot")`` in its place, once;
a break puts a ``Gap`` with its reason. In LOST nothing is emitted for the book until
the next snapshot. An update that names its symbol but cannot be read breaks a LIVE
book at once: neither venue's book would ever show the hole (Coinbase's has no sequence
numbers and no checksum; Kraken's next checksum would, one update late).

Exceptions (all ``ValueError``)::

    BadMessage      a message the importer cannot understand
    BadDecimal      (feed.decimals) a bad price or size
    BookLost        an unreadable update of a LIVE book: carries its ``cause`` (one
                    of the two above) and the ``gap`` that takes its place

An importer raises ``BadMessage`` and ``BadDecimal`` with its state unchanged, and
``BookLost`` with the book moved to LOST. The reader reports such a line with its
``cause`` and skips it, yielding the ``gap`` of a ``BookLost``. Damage never raises out
of a reader's iteration (see ``replay.lines``). Details echo what arrived through
``shown``, which bounds it: a line may hold 64 MiB, and problems are kept and logged.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Callable, Generator, Iterable
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

import orjson

from feed.decimals import BadDecimal, canonical_cached
from feed.events import Event, Gap

from .binance import Step as Step  # the same steps as Binance's books take
from .lines import LineStream, Problem, ProblemKind, StrPath, Tally

_SECONDS = re.compile(r"([0-9]{1,12})(?:\.([0-9]{1,9}))?")  # int() of 4,301 digits raises
_CONNECTED = re.compile(rb"(\S+) <-> [0-9.]+")
_PROBE_LINES = 100
SHOWN_CHARS = 80
"""The most characters of a received value that a problem's detail echoes."""

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxdict = 6
_REPR.maxstring = _REPR.maxother = SHOWN_CHARS
decimal = canonical_cached
"""``feed.decimals.canonical``, remembered: the one cache every reader shares."""


def shown(value: Any) -> str:
    """A received value as a problem's detail echoes it: its repr, built from a few
    items of each container a few levels deep (``reprlib``) and cut to
    ``SHOWN_CHARS``. A plain ``repr`` would copy a 64 MiB value whole, and fails on
    deep nesting."""
    text = _REPR.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


class BadMessage(ValueError):
    """A capture line or message that is not what the venue sends."""


class BookLost(ValueError):
    """An update of a LIVE book that cannot be read: the book is now LOST, and
    ``gap`` (``Gap(reason="unreadable update: ...")`` at the receive time, the
    message's own time being unreadable too, perhaps) takes the update's place.
    ``cause`` is the ``BadMessage`` or ``BadDecimal`` that says why."""

    def __init__(self, symbol: str, ts_recv: int, cause: BadMessage | BadDecimal) -> None:
        super().__init__(f"{symbol}: {cause}")
        self.cause = cause
        self.gap = Gap(symbol, ts_recv, ts_recv, f"unreadable update: {cause}")


class LineKind(Enum):
    """What one capture line is."""

    CONNECTED = "connected"  # <endpoint> <-> <time>
    SENT = "sent"  # <endpoint> <- <time>: <json>
    RECEIVED = "received"  # <time>: <json>
    BLANK = "blank"


def unix_ns(text: str) -> int:
    """Unix seconds written as decimal text (``"1618678132.3858151"``) as exact integer
    nanoseconds; raises ``BadMessage`` for anything else, for more than 9 decimals (a
    time that nanoseconds cannot hold exactly) and for more than 12 whole digits."""
    match = _SECONDS.fullmatch(text)
    if match is None:
        raise BadMessage(f"not Unix seconds (12 digits, 9 decimals at most): {shown(text)}")
    whole, fraction = match.groups()
    return int(whole) * 1_000_000_000 + (int(fraction.ljust(9, "0")) if fraction else 0)


def split_line(line: bytes) -> tuple[LineKind, int, bytes]:
    """A capture line as ``(kind, time in ns, JSON text)``; the JSON is empty for a
    ``CONNECTED`` or ``BLANK`` line, and the time 0 for a blank one. Raises
    ``BadMessage`` for a line of none of these shapes."""
    if line[:1].isdigit():
        head, sep, body = line.partition(b": ")
        if sep:
            return LineKind.RECEIVED, unix_ns(head.decode("latin-1")), body
    elif not line.strip():
        return LineKind.BLANK, 0, b""
    else:
        endpoint, sep, rest = line.partition(b" <- ")
        head, colon, body = rest.partition(b": ")
        if sep and colon and b" " not in endpoint:
            return LineKind.SENT, unix_ns(head.decode("latin-1")), body
        if _CONNECTED.fullmatch(line):
            return LineKind.CONNECTED, unix_ns(line.rpartition(b" ")[2].decode("latin-1")), b""
    raise BadMessage("not a cryptofeed capture line (<time>: <json>, or <endpoint> <- ...)")


def endpoint(first_line: bytes) -> str | None:
    """The endpoint a capture's first line says it connected to, ``None`` when the line
    is not a ``<endpoint> <-> <time>`` line."""
    match = _CONNECTED.fullmatch(first_line)
    return None if match is None else match.group(1).decode("latin-1")


def subscribed(path: StrPath, symbols_of: Callable[[Any], Iterable[str]]) -> tuple[str, ...]:
    """The symbols a capture subscribed to, in the order first named: ``symbols_of``
    applied to each message the client sent among the first lines. Damage is left to
    the reader to report; raises ``OSError`` when the file cannot be read."""
    found: dict[str, None] = {}
    with LineStream(path) as lines:
        for line_no, _, line in lines:
            if line_no > _PROBE_LINES:
                break
            try:
                kind, _, body = split_line(line)
                if kind is LineKind.SENT:
                    found.update(dict.fromkeys(symbols_of(_json(body))))
            except BadMessage:
                continue
    return tuple(found)


class BookState(Enum):
    """Where one symbol's book stands."""

    AWAITING = "awaiting"  # no snapshot yet
    LIVE = "live"  # snapshot taken, updates applied
    LOST = "lost"  # Gap emitted: nothing for this book until a snapshot


_NEXT: dict[tuple[BookState, Step], BookState] = {
    (BookState.AWAITING, Step.SNAPSHOT): BookState.LIVE,
    (BookState.AWAITING, Step.NO_SNAPSHOT): BookState.LOST,
    (BookState.LIVE, Step.SNAPSHOT): BookState.LIVE,
    (BookState.LIVE, Step.APPLY): BookState.LIVE,
    (BookState.LIVE, Step.BREAK): BookState.LOST,
    (BookState.LOST, Step.SNAPSHOT): BookState.LIVE,
}


class BookStatus:
    """The state of one symbol's book; see the module docstring."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = BookState.AWAITING

    def step(self, step: Step) -> None:
        """Move on; raises ``KeyError`` for a step the table does not allow."""
        self.state = _NEXT[self.state, step]

    def admit(self, symbol: str, ts_event: int, ts_recv: int, out: list[Event]) -> bool:
        """Whether an update may be applied now. The first update before any snapshot
        appends ``Gap(reason="no snapshot")`` to ``out`` and loses the book."""
        if self.state is BookState.AWAITING:
            out.append(Gap(symbol, ts_event, ts_recv, "no snapshot"))
            self.step(Step.NO_SNAPSHOT)
        return self.state is BookState.LIVE

    def unreadable(self, symbol: str, ts_recv: int, cause: BadMessage | BadDecimal) -> ValueError:
        """What to raise for an update of this book that cannot be read: a LIVE book
        breaks and it is a ``BookLost``; in any other state nothing changes and it is
        ``cause`` itself."""
        if self.state is not BookState.LIVE:
            return cause
        self.step(Step.BREAK)
        return BookLost(symbol, ts_recv, cause)


class Importer(Protocol):
    """What ``CryptofeedReader`` needs of a venue's importer."""

    problems: list[tuple[ProblemKind, str]]
    """Trouble found in messages that were still used (a checksum mismatch); the
    reader moves them to its ``problems`` with the line's position."""

    def feed(self, ts_recv: int, message: Any) -> list[Event]:
        """Take one received message; return the events it makes known. Raises
        ``BadMessage``, ``BadDecimal`` and ``BookLost`` (see the module docstring)."""
        ...


AnyImporter = TypeVar("AnyImporter", bound=Importer)


class CryptofeedReader(Generic[AnyImporter]):
    """The normalized events of one capture file, through ``importer``.

    Lazy, single pass, constant memory. ``problems`` is shared with the caller when one
    is passed in; ``malformed`` counts skipped lines. Venue readers
    (``replay.kraken.KrakenReader``, ``replay.coinbase.CoinbaseReader``) bind the
    importer and name their ``ENDPOINTS``.
    """

    ENDPOINTS: tuple[str, ...] = ()
    """The endpoints (as a capture's first line names them) of this reader's venue."""

    @staticmethod
    def subscription_symbols(message: Any) -> Iterable[str]:
        """The symbols a message the client sent subscribes to (none here: venue readers
        give their own)."""
        return ()

    @classmethod
    def symbols(cls, path: StrPath) -> tuple[str, ...]:
        """The symbols a capture subscribed to, from its first lines (see ``subscribed``)."""
        return subscribed(path, cls.subscription_symbols)

    def __init__(
        self, path: StrPath, problems: list[Problem] | None, importer: AnyImporter
    ) -> None:
        self.path = str(path)
        self.problems: list[Problem] = [] if problems is None else problems
        self.importer = importer
        self._tally = Tally()
        self._events = _events(self.path, self.problems, importer, self._tally)

    @property
    def malformed(self) -> int:
        """How many lines were skipped as bad so far."""
        return self._tally.malformed

    def __iter__(self) -> CryptofeedReader[AnyImporter]:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def close(self) -> None:
        """Release the open file; iteration stops."""
        self._events.close()

    def __enter__(self) -> CryptofeedReader[AnyImporter]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _events(
    path: str, problems: list[Problem], importer: Importer, tally: Tally
) -> Generator[Event]:
    feed, found = importer.feed, importer.problems
    last = 0
    with LineStream(path, problems) as lines:
        for line_no, offset, line in lines:
            try:
                kind, ts_recv, body = split_line(line)
                if kind is not LineKind.RECEIVED:
                    continue
                events = feed(ts_recv, _json(body))
            except BookLost as lost:  # skipped, with a Gap in its place
                tally.skip(problems, path, line_no, offset, lost.cause)
                events = [lost.gap]
            except (BadDecimal, BadMessage) as exc:
                tally.skip(problems, path, line_no, offset, exc)
                continue
            if ts_recv < last:  # the time of a line skipped without a Gap does not count
                detail = f"receive time {ts_recv} is before the previous line's {last}"
                problems.append(Problem(path, line_no, offset, ProblemKind.OUT_OF_ORDER, detail))
            last = ts_recv
            for problem, detail in found:
                problems.append(Problem(path, line_no, offset, problem, detail))
            found.clear()
            yield from events


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadMessage("message is not JSON") from None
