"""Recording: the events a feed produces, written into rotating tick files.

``Recorder`` takes every event from its producer (the ingester, or the ``tickwire record
--url`` client) through ``offer``, which never blocks and never touches the disk: it
appends ``(event, ts_recv)`` to a bounded buffer. A writer task (``run``, in the owner's
nursery) takes the whole buffer every ``POLL_S`` and hands it to a worker thread, which
encodes, compresses and writes it with ``replay.tickfile.TickWriter``, flushing at least
every ``record.flush_ms`` (so a SIGKILL loses at most that much plus one batch).

When the buffer is full (the disk is slower than the feed), ``offer`` drops events and
counts them, and logs a warning at most every ``WARN_EVERY_S``. The loss is written
into the recording: when the writer next takes the buffer, it appends, for each symbol
that lost events, a ``Gap`` and a ``BookSnapshot`` of the producer's current book (taken
at that moment, in the event loop, so it is exactly the book after the last event
offered). A replay never applies a delta over a hole.

Files rotate by compressed size and/or age. A new file starts with a header (source and
symbols) and a snapshot of every valid book, taken when the writer takes the batch that
ends the previous file, so each file replays on its own. Names sort by start time:
``DIR/tickwire-20261126T175300Z-0001.ticks.zst`` (UTC, then the file's number in this
run). docs/tick-format.md, "Recording", is the reference.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from feed.config import RecordConfig
from feed.events import BookSnapshot, Event, Gap
from feed.hub import Hub
from replay.tickfile import TickWriter

log = logging.getLogger("tickwire.record")
Clock = Callable[[], int]

POLL_S = 0.05
"""How often the writer task takes the buffer."""
WARN_EVERY_S = 10.0
"""At most one "dropping events" warning per this many seconds."""
CLOSE_TIMEOUT_S = 10.0
"""Time the last write and close may take when the recorder stops."""

Item = tuple[Event, int]
"""An event and the ``ts_recv`` to record it with."""


class Books(Protocol):
    """The producer's current books, read in the event loop between two offers."""

    def symbols(self) -> list[str]:
        """Every symbol the producer carries (for file headers)."""
        ...

    def snapshots(self, symbols: Iterable[str] | None, ts_recv: int) -> list[BookSnapshot]:
        """A snapshot of each valid book of ``symbols`` (``None``: all)."""
        ...


class Opener(Protocol):
    """Opens one tick file for writing (``TickWriter``; tests inject slow ones)."""

    def __call__(self, path: Path, *, source: str | None,
                 symbols: Sequence[str]) -> TickWriter: ...


class HubBooks:
    """``Books`` over a server's hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def symbols(self) -> list[str]:
        return self.hub.symbol_list()

    def snapshots(self, symbols: Iterable[str] | None, ts_recv: int) -> list[BookSnapshot]:
        states = self.hub.symbols
        out = []
        for symbol in states if symbols is None else symbols:
            state = states.get(symbol)
            if state is None or not state.book.valid:
                continue
            book = state.book
            out.append(BookSnapshot(symbol, tuple(book.bids.top(len(book.bids))),
                                    tuple(book.asks.top(len(book.asks))), book.ts_event,
                                    ts_recv, book.seq))
        return out


@dataclass(frozen=True, slots=True)
class RecorderStatistics:
    """What ``/metrics`` shows of a recorder."""

    events: int
    """Event lines written (with the gaps and snapshots the recorder adds)."""
    dropped: int
    """Events dropped because the buffer was full (or the recorder had failed)."""
    gaps: int
    """Gaps written for dropped events."""
    bytes: int
    """Compressed bytes written, over all files."""
    files: int
    buffered: int
    capacity: int
    lag_s: float
    """Age of the oldest event offered and not yet written (0 when none waits)."""
    path: str | None
    failed: bool


@dataclass(frozen=True, slots=True)
class _Opening:
    path: Path
    source: str | None
    symbols: tuple[str, ...]
    snapshots: list[BookSnapshot]


@dataclass(frozen=True, slots=True)
class _Job:
    items: Sequence[Item]
    first: _Opening | None  # open before writing the items (the first file)
    then: _Opening | None  # rotate to after writing them
    flush: bool
    close: bool


@dataclass(frozen=True, slots=True)
class _Written:
    lines: int
    size: int  # of the file now open (0 if none)
    closed_bytes: int  # final sizes of the files closed


class _Disk:
    """The worker thread's side: the open file. One job at a time (the writer task
    awaits each)."""

    def __init__(self, opener: Opener) -> None:
        self.opener = opener
        self.file: TickWriter | None = None

    def run(self, job: _Job) -> _Written:
        lines = 0
        closed = 0
        if job.first is not None:
            lines += self._open(job.first)
        file = self.file
        if file is not None:
            for event, stamp in job.items:
                if event.ts_recv != stamp:
                    event = dataclasses.replace(event, ts_recv=stamp)
                file.write(event)
            lines += len(job.items)
        if job.then is not None or job.close:
            closed = self._close()
        if job.then is not None:
            lines += self._open(job.then)
        elif job.flush and self.file is not None:
            self.file.flush()
        size = Path(self.file.path).stat().st_size if self.file is not None else 0
        return _Written(lines, size, closed)

    def _open(self, opening: _Opening) -> int:
        self.file = self.opener(opening.path, source=opening.source, symbols=opening.symbols)
        log.info("recording into %s", opening.path)
        self.file.write_all(opening.snapshots)
        self.file.flush()
        return len(opening.snapshots)

    def _close(self) -> int:
        file, self.file = self.file, None
        if file is None:
            return 0
        file.close()
        return Path(file.path).stat().st_size


class Recorder:
    """Records what a producer ``offer``s into rotating tick files under
    ``config.dir``; see the module docstring. ``source`` is the market the file headers
    name (the ingester sets it to its source's ``origin``: ``binance-spot``,
    ``synthetic``, ...; ``None`` when a replay mixes markets)."""

    def __init__(self, config: RecordConfig, books: Books, *, source: str | None = None,
                 clock: Clock = time.time_ns, opener: Opener = TickWriter) -> None:
        self.config = config
        self.books = books
        self.source = source
        self.clock = clock
        self.dir = Path(config.dir)
        self._capacity = config.max_buffered_events
        self._queue: deque[Item] = deque()
        self._dropping = False
        self._lost: dict[str, int] = {}  # symbol -> events dropped since the last catch-up
        self._last_dropped = 0  # ts_recv of the last event dropped
        self._last_stamp = 0  # ts_recv of the last item handed to the disk
        self._warned_ns: int | None = None
        self._disk = _Disk(opener)
        self._in_flight: Sequence[Item] = ()
        self._file_open = False
        self._opened_at = 0.0
        self._index = 0
        self._size = 0
        self._unflushed = False
        self._last_flush = 0.0
        self._closed = False
        self._failed = False
        self._batch_done = trio.Event()
        self._events = self._dropped = self._gaps = self._bytes = self._files = 0

    # -- the producer's side ----------------------------------------------------------

    def offer(self, event: Event, ts_recv: int) -> None:
        """Take one event, to be recorded with ``ts_recv``. Never blocks: when the
        buffer is full the event is dropped (counted, and later marked by a gap)."""
        queue = self._queue
        if len(queue) < self._capacity and not self._dropping:
            queue.append((event, ts_recv))
        else:
            self._drop(event, ts_recv)

    def _drop(self, event: Event, ts_recv: int) -> None:
        if self._closed:
            return
        self._dropped += 1
        if self._failed:
            return
        self._lost[event.symbol] = self._lost.get(event.symbol, 0) + 1
        self._last_dropped = ts_recv
        if self._dropping:
            return
        self._dropping = True
        if self._warned_ns is None or ts_recv - self._warned_ns >= WARN_EVERY_S * 1e9:
            self._warned_ns = ts_recv
            log.warning("recorder: the disk is slower than the feed: its buffer of %d events "
                        "is full, so events are dropped (%d so far); the recording gets a "
                        "gap and fresh snapshots when it catches up", self._capacity,
                        self._dropped)

    # -- state ------------------------------------------------------------------------

    def statistics(self) -> RecorderStatistics:
        """The counters, the buffer and the write lag, now."""
        oldest = self._in_flight[0][1] if self._in_flight else (
            self._queue[0][1] if self._queue else None)
        lag = max(0.0, (self.clock() - oldest) / 1e9) if oldest is not None else 0.0
        file = self._disk.file  # the worker thread may swap it: read it once
        path = file.path if file is not None else None
        return RecorderStatistics(
            events=self._events, dropped=self._dropped, gaps=self._gaps,
            bytes=self._bytes + self._size, files=self._files, buffered=len(self._queue),
            capacity=self.config.max_buffered_events, lag_s=lag, path=path,
            failed=self._failed)

    async def wait_batch(self) -> None:
        """Wait until the writer has written its next batch."""
        await self._batch_done.wait()

    # -- the writer task --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Write what is offered until cancelled; then write the rest and close the
        file. Raises ``OSError`` if ``config.dir`` cannot be created; a later write
        error is logged and stops the recording (events are then counted as dropped)."""
        await trio.to_thread.run_sync(lambda: self.dir.mkdir(parents=True, exist_ok=True))
        task_status.started()
        try:
            while True:
                await trio.sleep(POLL_S)
                job = self._take(close=False)
                if job is not None:
                    await self._run(job)
        except OSError as exc:
            self._fail(exc)
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                await self._finish()

    async def _finish(self) -> None:
        try:
            while self._queue and not self._failed:
                job = self._take(close=False)
                if job is not None:
                    await self._run(job, abandon=True)
            self._closed = True
            self._capacity = 0
            job = self._take(close=True)
            if job is not None:
                await self._run(job, abandon=True)
        except OSError as exc:
            self._fail(exc)
        self._closed = True

    def _fail(self, exc: OSError) -> None:
        if not self._failed:
            log.error("recorder: cannot write into %s: %s; recording stopped", self.dir, exc)
        self._failed = True
        self._capacity = 0
        self._dropped += len(self._queue)
        self._queue.clear()

    def _take(self, *, close: bool) -> _Job | None:
        """The next job: everything buffered, the catch-up after drops, and whatever
        opening, rotation, flush or close is due."""
        if self._failed:
            return _Job((), None, None, False, True) if close and self._file_open else None
        items, self._queue = self._queue, deque()
        if self._dropping:
            items += self._catch_up()
        if items:
            self._last_stamp = items[-1][1]
        now = trio.current_time()
        first = then = None
        if not self._file_open and (items or close):
            first = self._opening(snapshots=[])
        elif not close and self._rotation_due(now):
            # Stamped as the last event before them, so ts_recv never goes back.
            stamp = self._last_stamp or self.clock()
            then = self._opening(self.books.snapshots(None, stamp))
        if first is not None or then is not None:
            self._opened_at = now
        self._unflushed = self._unflushed or bool(items)
        flush = self._unflushed and now - self._last_flush >= self.config.flush_ms / 1000
        if not (items or first or then or flush or close):
            return None
        return _Job(items, first, then, flush, close)

    def _catch_up(self) -> list[Item]:
        """Gaps and snapshots for every symbol that lost events: the books now are
        the books after the last event dropped."""
        lost, self._lost = self._lost, {}
        self._dropping = False
        stamp = self._last_dropped
        snapshots = {s.symbol: s for s in self.books.snapshots(lost, stamp)}
        items: list[Item] = []
        for symbol, count in lost.items():
            reason = f"recorder fell behind the feed: {count} events lost"
            items.append((Gap(symbol, stamp, stamp, reason), stamp))
            snapshot = snapshots.get(symbol)
            if snapshot is not None:
                items.append((snapshot, stamp))
        self._gaps += len(lost)
        return items

    def _rotation_due(self, now: float) -> bool:
        config = self.config
        return self._file_open and (
            (config.rotate_bytes > 0 and self._size >= config.rotate_bytes)
            or (config.rotate_seconds > 0 and now - self._opened_at >= config.rotate_seconds))

    def _opening(self, snapshots: list[BookSnapshot]) -> _Opening:
        self._file_open = True
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock() // 1_000_000_000))
        while True:
            self._index += 1
            path = self.dir / f"tickwire-{stamp}-{self._index:04d}{self.config.extension}"
            if not path.exists():
                break
        return _Opening(path, self.source, tuple(self.books.symbols()), snapshots)

    async def _run(self, job: _Job, *, abandon: bool = False) -> None:
        self._in_flight = job.items
        try:
            written = await trio.to_thread.run_sync(self._disk.run, job,
                                                    abandon_on_cancel=abandon)
        finally:
            self._in_flight = ()
        opened = (job.first is not None) + (job.then is not None)
        self._files += opened
        self._events += written.lines
        self._bytes += written.closed_bytes
        self._size = written.size
        if job.flush or job.then is not None:  # a rotation closed the file written to
            self._unflushed = False
            self._last_flush = trio.current_time()
        if job.close:
            self._file_open = False
        self._batch_done.set()
        self._batch_done = trio.Event()
