"""Binance market-data messages to normalized events: the order-book sequencing rules
as a state machine, without IO.

Feed it ``(ts_recv, message)`` pairs in capture order with ``BinanceImporter.feed``
(``parse_line`` splits a raw capture line into that pair) and call ``finish()`` at
the end of the input; each call returns the events that became known. ``replay.capture``
does the file reading. docs/tick-format.md states the rules; in short, per symbol:

- diffs received before the REST snapshot are buffered, and applied after it;
- spot: drop diffs with ``u <= lastUpdateId``; the first applied has
  ``U <= lastUpdateId + 1 <= u``; each next has ``U == previous u + 1``;
- futures (a diff with ``pu``): drop ``u < lastUpdateId``; the first applied has
  ``U <= lastUpdateId <= u``; each next has ``pu == previous u``;
- a snapshot becomes a ``BookSnapshot`` (``seq = lastUpdateId``), each applied diff a
  ``BookDelta`` (``seq = u``), except a futures diff with ``u == lastUpdateId``, whose
  result the snapshot already is (so ``seq`` strictly increases); a diff that breaks
  the rules becomes a ``Gap``, and
  nothing more is emitted for that book until a later snapshot;
- a symbol whose diffs start without a snapshot (a continuation file on its own) gets
  one ``Gap(reason="no snapshot")`` in the place of its first diff.

``ts_recv`` of a diff applied after the snapshot is the snapshot's receive time (when
it became usable), so the output is in ``ts_recv`` order whenever the input is.

States of one symbol's book (``BookState``) and the steps between them (the table
``_NEXT``)::

    AWAITING --snapshot--> SYNCING --apply--> LIVE --apply--> LIVE
        |                     |                 |
        | no snapshot         | break           | break
        v                     v                 v
       LOST <-----------------+-----------------+
    SYNCING, LIVE, LOST --snapshot--> SYNCING

Exceptions: ``BadMessage`` (a ``ValueError``) for a message that cannot be
understood, and ``feed.decimals.BadDecimal`` for a bad price or size; the message is
then ignored and the importer's state is unchanged.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

from feed.decimals import canonical_cached as _canonical
from feed.decimals import canonical_levels
from feed.events import BookDelta, BookSnapshot, Event, Gap, Level, Trade

SNAPSHOT_WAIT_NS = 10_000_000_000
"""How long (capture time) after a symbol's first diff a snapshot may still arrive."""
MAX_BUFFER = 10_000
"""Most diffs kept per symbol while waiting for a snapshot (the oldest go first)."""
MAX_HELD = 200_000
"""Most events held back while waiting for a first snapshot; beyond it, stop waiting."""


class BadMessage(ValueError):
    """A capture line or message that is not what Binance sends."""


class BookState(Enum):
    """Where one symbol's book stands."""

    AWAITING = "awaiting"  # no snapshot yet: diffs are buffered
    SYNCING = "syncing"  # snapshot emitted; looking for the diff that bridges it
    LIVE = "live"  # diffs applied in sequence
    LOST = "lost"  # continuity lost (Gap emitted): diffs buffered until a snapshot


class Step(Enum):
    """What moves a book between states."""

    SNAPSHOT = "snapshot"
    APPLY = "apply"
    BREAK = "break"
    NO_SNAPSHOT = "no_snapshot"


_NEXT: dict[tuple[BookState, Step], BookState] = {
    (BookState.AWAITING, Step.SNAPSHOT): BookState.SYNCING,
    (BookState.AWAITING, Step.NO_SNAPSHOT): BookState.LOST,
    (BookState.SYNCING, Step.SNAPSHOT): BookState.SYNCING,
    (BookState.SYNCING, Step.APPLY): BookState.LIVE,
    (BookState.SYNCING, Step.BREAK): BookState.LOST,
    (BookState.LIVE, Step.SNAPSHOT): BookState.SYNCING,
    (BookState.LIVE, Step.APPLY): BookState.LIVE,
    (BookState.LIVE, Step.BREAK): BookState.LOST,
    (BookState.LOST, Step.SNAPSHOT): BookState.SYNCING,
}


@dataclass(frozen=True, slots=True)
class Diff:
    """One parsed ``depthUpdate``; ``pu`` is set on futures only."""

    symbol: str
    first: int  # U
    last: int  # u
    prev: int | None  # pu
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]
    ts_event: int
    ts_recv: int


@dataclass(slots=True)
class _Book:
    """The sequencing state of one symbol (mutable, private to the importer)."""

    state: BookState = BookState.AWAITING
    snapshot_id: int = 0  # lastUpdateId of the current snapshot
    last: int = 0  # u of the last applied diff
    buffer: deque[Diff] = field(default_factory=lambda: deque(maxlen=MAX_BUFFER))
    deadline: int | None = None  # AWAITING with a diff seen: give up after this ts_recv
    slot: int = -1  # ... and the index of its placeholder in the held events
    gap: Gap | None = None  # ... and the Gap that goes there if no snapshot comes

    def step(self, step: Step) -> None:
        self.state = _NEXT[self.state, step]


def parse_line(line: bytes) -> tuple[int, dict[str, Any]]:
    """Split a raw capture line ``b"<ns> <json>"``; raises ``BadMessage``."""
    head, sep, body = line.partition(b" ")
    if not sep or not head.isdigit():
        raise BadMessage("line does not start with a receive time in ns")
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadMessage("message is not JSON") from None
    if not isinstance(message, dict):
        raise BadMessage("message is not a JSON object")
    return int(head), message


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if type(value) is not int:
        raise BadMessage(f'"{key}" must be an integer, got {value!r}')
    return value


def _ms(data: dict[str, Any], key: str) -> int:
    return _int(data, key) * 1_000_000


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise BadMessage(f'"{key}" must be a non-empty string, got {value!r}')
    return value


def _levels(data: dict[str, Any], key: str) -> tuple[Level, ...]:
    raw = data.get(key)
    if type(raw) is not list:
        raise BadMessage(f'"{key}" must be a list of [price, qty]')
    return canonical_levels(raw, BadMessage, key)


def parse_diff(ts_recv: int, data: dict[str, Any]) -> Diff:
    """A ``depthUpdate`` payload as a ``Diff``; ``ts_event`` is ``T`` if present, else ``E``."""
    prev = data.get("pu")
    if prev is not None and type(prev) is not int:
        raise BadMessage(f'"pu" must be an integer, got {prev!r}')
    first, last = _int(data, "U"), _int(data, "u")
    if first > last:
        raise BadMessage(f"depthUpdate with U={first} > u={last}")
    ts_event = _ms(data, "T" if "T" in data else "E")
    bids, asks = _levels(data, "b"), _levels(data, "a")
    return Diff(_str(data, "s"), first, last, prev, bids, asks, ts_event, ts_recv)


def parse_trade(ts_recv: int, data: dict[str, Any]) -> Trade | None:
    """A ``trade`` payload as a ``Trade``; ``None`` for a futures trade that is not an
    order-book match (``X`` other than ``MARKET``: insurance fund, ADL, ...)."""
    kind = data.get("X", "MARKET")
    if kind != "MARKET":
        return None
    maker = data.get("m")
    if not isinstance(maker, bool):
        raise BadMessage(f'"m" must be true or false, got {maker!r}')
    return Trade(
        symbol=_str(data, "s"),
        trade_id=_int(data, "t"),
        price=_canonical(_str(data, "p")),
        size=_canonical(_str(data, "q")),
        side="sell" if maker else "buy",
        ts_event=_ms(data, "T"),
        ts_recv=ts_recv,
    )


class BinanceImporter:
    """Binance messages in, normalized events out; see the module docstring.

    ``snapshot_wait_ns`` is how long (in capture time, from a symbol's first diff) the
    importer waits for a first snapshot before it emits ``Gap("no snapshot")``;
    meanwhile it holds its output back, so that the Gap takes the first diff's place.
    """

    def __init__(self, *, snapshot_wait_ns: int = SNAPSHOT_WAIT_NS) -> None:
        self._wait = snapshot_wait_ns
        self._books: dict[str, _Book] = {}
        self._symbols: dict[str, None] = {}  # every "s" seen, in order
        self._held: list[Event | None] = []  # output held back while a book awaits
        self._awaiting = 0  # books in AWAITING with a deadline

    def state(self, symbol: str) -> BookState:
        """The state of ``symbol``'s book (``AWAITING`` for one never seen)."""
        book = self._books.get(symbol)
        return BookState.AWAITING if book is None else book.state

    def feed(self, ts_recv: int, message: dict[str, Any]) -> list[Event]:
        """Take one captured message; return the events it makes known."""
        out: list[Event | None] = []
        if self._awaiting:
            self._expire(ts_recv, force=len(self._held) >= MAX_HELD)
        data = message.get("data")
        if data is None and "lastUpdateId" in message:
            self._on_snapshot(ts_recv, message, out)
        elif isinstance(data, dict):
            kind = data.get("e")
            if kind == "depthUpdate":
                self._on_diff(parse_diff(ts_recv, data), out)
            elif kind == "trade":
                trade = parse_trade(ts_recv, data)
                if trade is not None:
                    self._symbols.setdefault(trade.symbol)
                    out.append(trade)
            elif isinstance(data.get("s"), str):
                self._symbols.setdefault(data["s"])  # bookTicker & co: not events
        else:
            raise BadMessage("neither a snapshot nor a combined-stream message")
        return self._release(out)

    def finish(self) -> list[Event]:
        """The end of the input: stop waiting for snapshots; return what was held."""
        self._expire(0, force=True)
        return self._release([])

    # -- internals ---------------------------------------------------------------

    def _release(self, out: list[Event | None]) -> list[Event]:
        if self._awaiting:
            self._held.extend(out)
            return []
        if self._held:
            out = self._held + out
            self._held = []
        return [event for event in out if event is not None]

    def _book(self, symbol: str) -> _Book:
        book = self._books.get(symbol)
        if book is None:
            book = self._books[symbol] = _Book()
        return book

    def _expire(self, ts_recv: int, *, force: bool) -> None:
        for book in self._books.values():
            if book.deadline is not None and (force or ts_recv > book.deadline):
                self._held[book.slot] = book.gap
                self._stop_waiting(book)
                book.step(Step.NO_SNAPSHOT)

    def _stop_waiting(self, book: _Book) -> None:
        book.deadline = None
        book.slot = -1
        book.gap = None
        self._awaiting -= 1

    def _on_snapshot(
        self, ts_recv: int, message: dict[str, Any], out: list[Event | None]
    ) -> None:
        symbol = message.get("symbol")
        if symbol is None:
            if len(self._symbols) != 1:
                raise BadMessage("snapshot without a symbol, and the capture's symbol is unknown")
            symbol = next(iter(self._symbols))
        elif not isinstance(symbol, str):
            raise BadMessage(f'"symbol" must be a string, got {symbol!r}')
        last_id = _int(message, "lastUpdateId")
        time_key = "T" if "T" in message else "E" if "E" in message else None
        ts_event = ts_recv if time_key is None else _ms(message, time_key)
        bids, asks = _levels(message, "bids"), _levels(message, "asks")
        book = self._book(symbol)
        if book.deadline is not None:
            self._stop_waiting(book)
        book.step(Step.SNAPSHOT)
        book.snapshot_id = last_id
        out.append(BookSnapshot(symbol, bids, asks, ts_event, ts_recv, last_id))
        buffered = list(book.buffer)
        book.buffer.clear()
        for diff in buffered:
            if book.state is BookState.LOST:
                book.buffer.append(diff)  # kept for the next snapshot
            else:
                self._sequence(book, diff, out, ts_recv=max(diff.ts_recv, ts_recv))

    def _on_diff(self, diff: Diff, out: list[Event | None]) -> None:
        self._symbols.setdefault(diff.symbol)
        book = self._book(diff.symbol)
        if book.state is BookState.AWAITING or book.state is BookState.LOST:
            if book.state is BookState.AWAITING and book.deadline is None and not book.buffer:
                book.deadline = diff.ts_recv + self._wait
                book.slot = len(self._held) + len(out)
                book.gap = Gap(diff.symbol, diff.ts_event, diff.ts_recv, "no snapshot")
                self._awaiting += 1
                out.append(None)  # the Gap's place, filled if no snapshot comes
            book.buffer.append(diff)
            return
        self._sequence(book, diff, out, ts_recv=diff.ts_recv)

    def _sequence(
        self, book: _Book, diff: Diff, out: list[Event | None], *, ts_recv: int
    ) -> None:
        """Apply, drop or break on one diff, for a book in SYNCING or LIVE."""
        futures = diff.prev is not None
        covered = False  # the snapshot already holds this diff's result
        if book.state is BookState.SYNCING:
            ref = book.snapshot_id
            covered = diff.last == ref
            if diff.last < ref or (not futures and diff.last == ref):
                return  # older than the snapshot
            bridges = diff.first <= ref <= diff.last if futures else diff.first <= ref + 1
            expected = f"U <= {ref if futures else ref + 1}"
            found = f"U={diff.first}, u={diff.last}"
        elif futures:
            bridges = diff.prev == book.last
            expected, found = f"pu={book.last}", f"pu={diff.prev}"
        else:
            bridges = diff.first == book.last + 1
            expected, found = f"U={book.last + 1}", f"U={diff.first}"
        if not bridges:
            book.step(Step.BREAK)
            reason = f"sequence break: expected {expected}, got {found}"
            out.append(Gap(diff.symbol, diff.ts_event, ts_recv, reason))
            book.buffer.append(diff)  # it may bridge the next snapshot
            return
        book.step(Step.APPLY)
        book.last = diff.last
        if covered:
            # Futures: a bridging diff with u == lastUpdateId ends where the snapshot
            # stands (absolute sizes, all updates up to u already in it). Emitting it
            # would give the book a second version with the same seq.
            return
        out.append(BookDelta(diff.symbol, diff.bids, diff.asks, diff.ts_event, ts_recv, diff.last))
