"""``tickwire record DIR --url URL``: record another tickwire server's stream into tick
files, with the same writer, rotation, flushing and bounds as ``serve --record``
(``feed.recorder.Recorder``).

``UrlRecorder`` asks the server for its symbols (``list``) unless given them, subscribes
``book`` (depth 1000, every change) and ``trades`` for each, ``SUBSCRIBE_CHUNK`` symbols
per request, and turns what it receives into events: ``book_snapshot`` becomes a
``BookSnapshot`` and ``book_update`` a ``BookDelta`` (``seq`` = the message's, levels as
sent), ``trade`` a ``Trade``; ``ts_event`` comes from the message and ``ts_recv`` is the
local receive time.

Integrity is the reference client's (``RecordingSession`` is a ``ClientSession`` driven
by a ``BookKeeper``): an update is recorded only when it continues the chain and its
checksum matches. A break, a heartbeat showing missed messages, a trade ``seq`` gap, a
server ``notice`` ``gap`` or a lost connection puts a ``Gap`` for the symbol into the
recording; the book is recorded again from the snapshot that the resync, or the
resubscription after the keeper reconnects with backoff, brings. The recorder stops on
``stop()`` (the CLI calls it on SIGINT and SIGTERM) and, unless told otherwise, when the
server says ``notice`` ``replay_end`` (its feed has ended: nothing more will come).
Either way the files are closed complete. It also stops, ``failed`` (the CLI exits with
status 1), when the recording cannot be written or the server answers a ``subscribe``
with an ``error`` (unknown symbol, too many subscriptions, ...): recording on would
record nothing, or not what was asked for.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import trio

from clients.backoff import Backoff
from clients.client import StreamOpener, connect
from clients.errors import ClientError, ConnectionClosed
from clients.keeper import BookKeeper
from clients.messages import Message
from clients.session import ClientSession
from clients.subscription import BookSubscription
from feed.config import RecordConfig
from feed.events import BookDelta, BookSnapshot, Event, Gap, Level, Side, Trade
from feed.recorder import Clock, Recorder, RecorderStatistics
from feed.recorder_disk import Opener
from replay.tickfile import TickWriter

log = logging.getLogger("tickwire.record")

DEPTH = 1000
"""Book depth recorded: the most a subscription may ask for."""
SUBSCRIBE_CHUNK = 100
"""Symbols per ``subscribe`` request, so that no request nears the server's limit on a
message's size (64 KiB by default)."""
SUBSCRIBE_ID = "record-subscribe"
"""The ``id`` of every ``subscribe`` request: an ``error`` with it refuses one."""
LIST_TIMEOUT_S = 10.0
_SIDES: dict[str, Side] = {"buy": "buy", "sell": "sell"}


def _levels(raw: Any) -> tuple[Level, ...]:
    return tuple((price, size) for price, size in raw)


class RecordingSession(ClientSession):
    """A ``ClientSession`` that offers every message it accepts as an event (``offer``,
    set by the owner) and knows which symbols' recorded books are whole. It is also the
    recorder's ``Books``: snapshots of the whole books, for new files and catch-ups."""

    def __init__(self, clock: Clock = time.time_ns,
                 on_end: Callable[[], None] = lambda: None,
                 on_refused: Callable[[str], None] = lambda reason: None) -> None:
        super().__init__()
        self.clock = clock
        self.on_end = on_end
        self.on_refused = on_refused
        """Called with the server's message when it refuses a subscription."""
        self.offer: Callable[[Event, int], None] = lambda event, ts_recv: None
        self.gaps = 0
        """Gaps recorded for breaks, missed messages and lost connections."""
        self._whole: set[str] = set()  # recorded since their last snapshot, no break since
        self._ts_event: dict[str, int] = {}

    # -- Books ------------------------------------------------------------------------

    def symbols(self) -> list[str]:
        return list(self.books)

    def snapshots(self, symbols: Iterable[str] | None, ts_recv: int) -> list[BookSnapshot]:
        out = []
        for symbol in self.books if symbols is None else symbols:
            sub = self.books.get(symbol)
            if sub is None or not sub.live or symbol not in self._whole:
                continue
            book = sub.book
            out.append(BookSnapshot(symbol, tuple(book.bids.top()), tuple(book.asks.top()),
                                    self._ts_event.get(symbol, 0), ts_recv, book.seq))
        return out

    # -- ClientSession ----------------------------------------------------------------

    def subscribe(self, channel: str, symbols: Sequence[str], **options: Any) -> Message:
        return {**super().subscribe(channel, symbols, **options), "id": SUBSCRIBE_ID}

    def connected(self) -> list[Message]:
        now = self.clock()
        for symbol in sorted(self._whole):
            self._gap(symbol, "connection lost; resubscribed", now)
        return [{**request, "id": SUBSCRIBE_ID} if request.get("op") == "subscribe"
                else request for request in super().connected()]

    def receive(self, msg: Message) -> list[Message]:
        kind = msg.get("type")
        symbol = msg.get("symbol")
        if not isinstance(symbol, str):
            symbol = ""
        if kind == "book_snapshot" or kind == "book_update":
            sub = self.books.get(symbol)
            was_live = sub is not None and sub.live
            requests = super().receive(msg)
            if sub is not None:
                self._book(sub, was_live, msg)
            return requests
        if kind == "trade":
            tracker = self.tracker("trades", symbol)
            last = tracker.last if tracker is not None else None
            requests = super().receive(msg)
            if tracker is not None:
                self._trade(msg, last)
            return requests
        if kind == "heartbeat":
            return self._receive_heartbeat(msg)
        requests = super().receive(msg)
        if kind == "notice":
            if msg.get("code") == "gap" and symbol:
                self._gap(symbol, str(msg.get("message", "the server lost the book")),
                          self.clock())
            elif msg.get("code") == "replay_end":
                self.on_end()
        elif kind == "error":
            if msg.get("id") == SUBSCRIBE_ID:
                self.on_refused(f"the server refused a subscription: {msg.get('code')}: "
                                f"{msg.get('message')}")
            else:
                log.warning("record: the server answered %s", msg)
        return requests

    def _book(self, sub: BookSubscription, was_live: bool, msg: Message) -> None:
        symbol = sub.symbol
        now = self.clock()
        if msg["type"] == "book_snapshot":
            if not sub.live:  # its checksum did not match: a resync is on its way
                self._gap(symbol, f"bad snapshot: {self.last_error}", now)
                return
            self._ts_event[symbol] = te = msg.get("ts_event", 0)
            self.offer(BookSnapshot(symbol, _levels(msg["bids"]), _levels(msg["asks"]), te,
                                    now, msg["seq"]), now)
            self._whole.add(symbol)
        elif was_live:  # else skipped: it belongs to a chain already broken
            if not sub.live:
                self._gap(symbol, str(self.last_error), now)
                return
            self._ts_event[symbol] = te = msg.get("ts_event", 0)
            self.offer(BookDelta(symbol, _levels(msg["bids"]), _levels(msg["asks"]), te, now,
                                 msg["seq"]), now)

    def _trade(self, msg: Message, last: int | None) -> None:
        symbol = msg["symbol"]
        now = self.clock()
        if last is not None and msg["seq"] != last + 1:
            self._lost_trades(symbol, f"trades missed: seq gap, last {last}, got {msg['seq']}",
                              now)
        side = _SIDES.get(msg["side"])
        if side is None:
            log.warning("record: trade with side %r skipped", msg["side"])
            return
        self.offer(Trade(symbol, msg["trade_id"], msg["price"], msg["size"], side,
                         msg.get("ts_event", 0), now), now)

    def _receive_heartbeat(self, msg: Message) -> list[Message]:
        live = [symbol for symbol, sub in self.books.items() if sub.live]
        trades = {symbol: tracker.last for symbol in self.books
                  if (tracker := self.tracker("trades", symbol)) is not None}
        requests = super().receive(msg)
        now = self.clock()
        for symbol in live:
            if not self.books[symbol].live:
                self._gap(symbol, "a heartbeat shows missed book messages", now)
        for symbol, last in trades.items():
            tracker = self.tracker("trades", symbol)
            if tracker is not None and tracker.last != last:
                self._lost_trades(symbol, "trades missed: a heartbeat shows them", now)
        return requests

    def _lost_trades(self, symbol: str, reason: str, now: int) -> None:
        """Trades were missed: a gap marks the loss even when the book's own gap is
        already recorded; when the book is whole, a snapshot of it makes the recording
        whole again at once."""
        snapshots = self.snapshots([symbol], now)  # empty unless live and whole
        self._gap(symbol, reason, now, trades=True)
        for snapshot in snapshots:
            self.offer(snapshot, now)
            self._whole.add(symbol)

    def _gap(self, symbol: str, reason: str, now: int, *, trades: bool = False) -> None:
        """Record a gap in ``symbol``: for the book only when it was whole (else it is
        already marked, or was never recorded); for missed ``trades`` always."""
        if symbol not in self._whole and not trades:
            return
        self._whole.discard(symbol)
        self.gaps += 1
        log.info("record: gap in %s: %s", symbol, reason)
        self.offer(Gap(symbol, now, now, reason), now)


async def list_symbols(url: str, open_stream: StreamOpener | None = None) -> list[str]:
    """The symbols the server at ``url`` carries (its answer to ``list``). Raises what
    ``connect`` raises, ``ConnectionClosed`` if it closes without answering, and
    ``trio.TooSlowError`` after ``LIST_TIMEOUT_S``."""
    with trio.fail_after(LIST_TIMEOUT_S):
        async with connect(url, open_stream=open_stream) as conn:
            await conn.list()
            async for msg in conn:
                if msg.get("type") == "symbols":
                    return [str(entry["symbol"]) for entry in msg["symbols"]]
    raise ConnectionClosed(1000, "the server closed without answering list")


class UrlRecorder:
    """Records the server at ``url`` into ``config.dir``; see the module docstring."""

    def __init__(
        self,
        url: str,
        config: RecordConfig,
        symbols: Sequence[str] = (),
        *,
        clock: Clock = time.time_ns,
        open_stream: StreamOpener | None = None,
        backoff: Backoff | None = None,
        opener: Opener = TickWriter,
        stop_at_replay_end: bool = True,
    ) -> None:
        self.url = url
        self.symbols = tuple(symbols)
        self.open_stream = open_stream
        self.failure: str | None = None
        """Why the recording stopped by itself, if it did (see ``failed``)."""
        self._stop = trio.Event()
        self.session = RecordingSession(
            clock, on_end=self.stop if stop_at_replay_end else lambda: None,
            on_refused=self._fail)
        self.recorder = Recorder(config, self.session, source=url, clock=clock,
                                 opener=opener)
        self.session.offer = self.recorder.offer
        self.keeper = BookKeeper(url, session=self.session, open_stream=open_stream,
                                 backoff=backoff)

    def stop(self) -> None:
        """Stop recording: ``run`` closes the files and returns."""
        self._stop.set()

    @property
    def failed(self) -> bool:
        """True when the recording stopped by itself (``failure`` says why) or could not
        write: the CLI's exit status is then 1."""
        return self.failure is not None or self.recorder.statistics().failed

    def statistics(self) -> RecorderStatistics:
        return self.recorder.statistics()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Record until ``stop()`` (or ``replay_end``), or until the recording fails
        (``failed``). ``task_status.started()`` once connected and subscribed. Raises
        what ``list_symbols``, ``Recorder.run`` and ``BookKeeper.run`` raise (inside an
        exception group)."""
        symbols = list(self.symbols) or await list_symbols(self.url, self.open_stream)
        async with trio.open_nursery() as nursery:
            await nursery.start(self._run_recorder)
            for start in range(0, len(symbols), SUBSCRIBE_CHUNK):
                chunk = symbols[start:start + SUBSCRIBE_CHUNK]
                await self.keeper.subscribe("book", chunk, depth=DEPTH, interval_ms=0)
                await self.keeper.subscribe("trades", chunk)
            await nursery.start(self.keeper.run)
            task_status.started()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    async def _run_recorder(
            self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.recorder.run(task_status=task_status)
        # Recorder.run returns by itself only when the recording has failed (logged).
        self._fail("the recording could not be written")

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            log.error("record: %s; stopping", reason)
        self.stop()


async def _record(recorder: UrlRecorder) -> None:
    async with trio.open_nursery() as signals:
        signals.start_soon(_stop_on_signal, recorder)
        async with trio.open_nursery() as nursery:
            await nursery.start(recorder.run)
            print(f"recording {recorder.url} into {recorder.recorder.dir}", flush=True)
        signals.cancel_scope.cancel()
    stats = recorder.statistics()
    log.info("recorded %d events into %d files (%d bytes); %d dropped, %d gaps",
             stats.events, stats.files, stats.bytes, stats.dropped,
             stats.gaps + recorder.session.gaps)


async def _stop_on_signal(recorder: UrlRecorder) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s: stopping", signal.Signals(signum).name)
            recorder.stop()
            return


def main(url: str, config: RecordConfig, symbols: Sequence[str] = ()) -> int:
    """``tickwire record DIR --url URL``: record until SIGINT/SIGTERM or the end of the
    server's replay; return the exit status (errors go to stderr; 1 also when the
    recording failed to write or the server refused a subscription)."""
    status = 0
    try:
        recorder = UrlRecorder(url, config, symbols)
        trio.run(_record, recorder)
        status = 1 if recorder.failed else 0
    except* (ClientError, ValueError, OSError, trio.TooSlowError) as group:
        for exc in _leaves(group):
            print(f"tickwire record: {exc or type(exc).__name__}", file=sys.stderr)
        status = 1
    return status


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [leaf for exc in group.exceptions
            for leaf in (_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])]
