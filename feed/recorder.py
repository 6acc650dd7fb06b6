"""Recording: the events a feed produces, written into rotating tick files.

``Recorder`` takes every event from its producer (the ingester, or the ``tickwire record
--url`` client) through ``offer``, which never blocks and never touches the disk: it
appends ``(event, ts_recv)`` to a bounded buffer. A writer task (``run``, in the owner's
nursery) takes the whole buffer every ``POLL_S`` and hands it to a worker thread, which
encodes, compresses and writes it with ``replay.tickfile.TickWriter``, and flushes when
the last flushing batch was taken ``record.flush_ms`` ago. A SIGKILL therefore loses at
most ``flush_ms`` + ``POLL_S`` + the time two batches take to write (under 1 s while a
batch takes under ``POLL_S``, since ``flush_ms`` is at most 800). One thread at a time
touches the files (a ``CapacityLimiter`` of one).

When the buffer passes half full, ``offer`` logs a warning; when it is full (the disk is
slower than the feed), ``offer`` drops events and counts them, and logs another; each
warning at most every ``WARN_EVERY_S``. The loss is written into the recording: when the
writer next takes the buffer, it appends, for each symbol that lost events, a ``Gap``
and a ``BookSnapshot`` of the producer's current book (taken at that moment, in the
event loop, so it is exactly the book after the last event offered). A replay never
applies a delta over a hole.

Files rotate by compressed size and/or age. A new file starts with a header (source and
symbols) and a snapshot of every valid book, taken when the writer takes the batch that
ends the previous file, so each file replays on its own. Names sort by start time:
``DIR/tickwire-20261126T175300Z-0001.ticks.zst`` (UTC, then the file's number in this
run); the worker thread creates each file exclusively, taking the next number when a
name is taken (by an earlier run, or another recorder in the same directory).

Any error of the disk or the encoder stops the recording (logged with its traceback;
``statistics().failed``), never the owner: every event offered from then on, and the
batch that failed, count as dropped. On cancellation the writer has ``close_timeout_s``
to write the buffer and close the file; a write hanging past that is abandoned (its
thread closes the file if it ever returns) and the last file may be incomplete.
The files themselves are ``feed.recorder_disk``'s. docs/tick-format.md, "Recording", is
the reference.
"""

from __future__ import annotations

import logging
import math
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
from feed.recorder_disk import Disk, Item, Job, Opener, Opening, Written
from replay.tickfile import TickWriter

log = logging.getLogger("tickwire.record")
Clock = Callable[[], int]

POLL_S = 0.05
"""How often the writer task takes the buffer."""
WARN_EVERY_S = 10.0
"""At most one "falling behind" and one "dropping events" warning per this many
seconds (of ``ts_recv``)."""
CLOSE_TIMEOUT_S = 10.0
"""Time the last write and close may take when the recorder stops."""



class Books(Protocol):
    """The producer's current books, read in the event loop between two offers."""

    def symbols(self) -> list[str]:
        """Every symbol the producer carries (for file headers)."""
        ...

    def snapshots(self, symbols: Iterable[str] | None, ts_recv: int) -> list[BookSnapshot]:
        """A snapshot of each valid book of ``symbols`` (``None``: all)."""
        ...


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
            # The venue's seq where the source has one (as on the deltas around it), else
            # the server's own numbering, which a replay of this file then continues.
            seq = book.seq if book.source_seq is None else book.source_seq
            out.append(BookSnapshot(symbol, tuple(book.bids.top(len(book.bids))),
                                    tuple(book.asks.top(len(book.asks))), book.ts_event,
                                    ts_recv, seq))
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


class Recorder:
    """Records what a producer ``offer``s into rotating tick files under
    ``config.dir``; see the module docstring. ``source`` is the market the file headers
    name (the ingester sets it to its source's ``origin``: ``binance-spot``,
    ``synthetic``, ...; ``None`` when a replay mixes markets)."""

    def __init__(self, config: RecordConfig, books: Books, *, source: str | None = None,
                 clock: Clock = time.time_ns, opener: Opener = TickWriter,
                 close_timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        self.config = config
        self.books = books
        self.source = source
        self.clock = clock
        self.close_timeout_s = close_timeout_s
        self.dir = Path(config.dir)
        self._capacity = config.max_buffered_events
        self._half = config.max_buffered_events // 2  # waiting before one more: past half
        self._queue: deque[Item] = deque()
        self._dropping = False
        self._lost: dict[str, int] = {}  # symbol -> events dropped since the last catch-up
        self._last_dropped = 0  # ts_recv of the last event dropped
        self._last_stamp = 0  # ts_recv of the last item handed to the disk
        self._warned_ns: dict[str, int] = {}  # warning -> ts_recv it was last logged at
        self._disk = Disk(opener, self.dir, config.extension)
        self._limiter = trio.CapacityLimiter(1)  # one thread on the disk at a time
        self._in_flight: Sequence[Item] = ()
        self._abandoned: Job | None = None  # cancelled while its thread ran
        self._file_open = False
        self._opened_at = 0.0
        self._size = 0
        self._unflushed = False
        self._last_flush = -math.inf  # trio time the last flushing job was taken
        self._closed = False
        self._failed = False
        self._batch_done = trio.Event()
        self._events = self._dropped = self._gaps = self._bytes = self._files = 0

    # -- the producer's side ----------------------------------------------------------

    def offer(self, event: Event, ts_recv: int) -> None:
        """Take one event, to be recorded with ``ts_recv``. Never blocks: when the
        buffer is full the event is dropped (counted, and later marked by a gap)."""
        queue = self._queue
        waiting = len(queue)
        if waiting < self._capacity and not self._dropping:
            queue.append((event, ts_recv))
            if waiting == self._half:
                self._falling_behind(ts_recv)
        else:
            self._drop(event, ts_recv)

    def _falling_behind(self, ts_recv: int) -> None:
        oldest = self._in_flight[0][1] if self._in_flight else self._queue[0][1]
        self._warn("behind", ts_recv, "recorder: the disk is falling behind the feed: %d "
                   "events (over half its buffer of %d) wait for it, the oldest for %.1f s; "
                   "when the buffer is full, events are dropped", len(self._queue),
                   self._capacity, (ts_recv - oldest) / 1e9)

    def _drop(self, event: Event, ts_recv: int) -> None:
        if self._closed and not self._failed:
            return  # offered after the recording stopped
        self._dropped += 1
        if self._failed:
            return
        self._lost[event.symbol] = self._lost.get(event.symbol, 0) + 1
        self._last_dropped = ts_recv
        if self._dropping:
            return
        self._dropping = True
        self._warn("dropping", ts_recv, "recorder: the disk is slower than the feed: its "
                   "buffer of %d events is full, so events are dropped (%d so far); the "
                   "recording gets a gap and fresh snapshots when it catches up",
                   self._capacity, self._dropped)

    def _warn(self, kind: str, ts_recv: int, message: str, *args: object) -> None:
        """Log a warning of ``kind`` unless one was logged less than ``WARN_EVERY_S``
        ago."""
        last = self._warned_ns.get(kind)
        if last is None or ts_recv - last >= WARN_EVERY_S * 1e9:
            self._warned_ns[kind] = ts_recv
            log.warning(message, *args)

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
        """Wait until the writer has finished its next batch (written, or failed)."""
        await self._batch_done.wait()

    # -- the writer task --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Write what is offered until cancelled; then write the rest and close the
        file, within ``close_timeout_s``. Raises ``OSError`` if ``config.dir`` cannot be
        created. A later error of any kind is logged and stops the recording (events
        are then counted as dropped), and ``run`` returns: it never takes its owner
        down."""
        await trio.to_thread.run_sync(lambda: self.dir.mkdir(parents=True, exist_ok=True))
        task_status.started()
        try:
            while True:
                await trio.sleep(POLL_S)
                job = self._take(close=False)
                if job is not None:
                    await self._run(job)
        except Exception as exc:
            self._fail(exc)
        finally:
            with trio.move_on_after(self.close_timeout_s, shield=True) as scope:
                await self._finish()
            if scope.cancelled_caught:
                self._give_up()

    async def _finish(self) -> None:
        try:
            if self._abandoned is not None:
                await self._settle_abandoned(self._abandoned)
            while self._queue and not self._failed:
                job = self._take(close=False)
                if job is not None:
                    await self._run(job)
            self._closed = True
            self._capacity = 0
            job = self._take(close=True)
            if job is not None:
                await self._run(job)
        except Exception as exc:
            self._fail(exc)
        self._closed = True

    async def _settle_abandoned(self, job: Job) -> None:
        """Wait for the thread of ``job`` (cancelled while it ran) to finish and
        account for it; run it if its thread never started."""
        self._abandoned = None
        async with self._limiter:  # held by that thread until it has finished
            done = self._disk.done
        if done is not None and done[0] is job:
            self._settle(job, done[1])
        else:
            await self._run(job)

    def _give_up(self) -> None:
        """The close limit passed: stop waiting for the disk."""
        self._closed = True
        self._capacity = 0
        self._dropped += len(self._queue)
        self._queue.clear()
        file = self._disk.file
        writing = self._disk.detach()
        log.warning("recorder: the disk did not finish within %g s of the stop%s; the last "
                    "file (%s) may be incomplete", self.close_timeout_s,
                    " (a write is still hanging)" if writing else "",
                    file.path if file is not None else "none open")

    def _fail(self, exc: Exception) -> None:
        if not self._failed:
            log.error("recorder: cannot write into %s: %s; recording stopped", self.dir,
                      exc or type(exc).__name__, exc_info=exc)
        self._failed = True
        self._capacity = 0
        self._dropped += len(self._queue)
        self._queue.clear()

    def _take(self, *, close: bool) -> Job | None:
        """The next job: everything buffered, the catch-up after drops, and whatever
        opening, rotation, flush or close is due."""
        now = trio.current_time()
        if self._failed:
            return Job((), 0, None, None, False, True, now) if (
                close and self._file_open) else None
        items = self._queue  # taken last: if anything here raises, _fail counts them
        extra = self._catch_up() if self._dropping else []
        if extra or items:
            self._last_stamp = (extra or items)[-1][1]
        first = then = None
        if not self._file_open and (items or extra or close):
            first = self._opening(snapshots=[])
        elif not close and self._rotation_due(now):
            # Stamped as the last event before them, so ts_recv never goes back.
            stamp = self._last_stamp or self.clock()
            then = self._opening(self.books.snapshots(None, stamp))
        if first is not None or then is not None:
            self._opened_at = now
        self._unflushed = self._unflushed or bool(items or extra)
        flush = self._unflushed and now - self._last_flush >= self.config.flush_ms / 1000
        if not (items or extra or first or then or flush or close):
            return None
        self._queue = deque()
        offered = len(items)
        items += extra
        return Job(items, offered, first, then, flush, close, now)

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

    def _opening(self, snapshots: list[BookSnapshot]) -> Opening:
        """A file to start; the worker thread picks its name."""
        self._file_open = True
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock() // 1_000_000_000))
        return Opening(stamp, self.source, tuple(self.books.symbols()), snapshots)

    async def _run(self, job: Job) -> None:
        """Have the worker thread do ``job``. Cancelled, the thread is abandoned (the
        event loop never waits on a hung disk); ``_finish`` waits for it, within the
        close limit. Raises the job's error."""
        self._in_flight = job.items
        try:
            result = await trio.to_thread.run_sync(
                self._disk.run, job, abandon_on_cancel=True, limiter=self._limiter)
        except trio.Cancelled:
            self._abandoned = job
            raise
        finally:
            self._in_flight = ()
        self._settle(job, result)

    def _settle(self, job: Job, result: Written | Exception) -> None:
        """Account for a job done; raise its error (its offered events count as
        dropped: the file holds an unknown part of them)."""
        try:
            if isinstance(result, Exception):
                self._dropped += job.offered
                raise result
            self._files += (job.first is not None) + (job.then is not None)
            self._events += result.lines
            self._bytes += result.closed_bytes
            self._size = result.size
            if job.flush or job.then is not None:  # a rotation closed the file written to
                self._unflushed = False
                self._last_flush = job.taken
            if job.close:
                self._file_open = False
        finally:
            self._batch_done.set()
            self._batch_done = trio.Event()
