"""The ingester and the snapshotter: the two feed-side tasks of the server's nursery.

The ingester takes events from a source and releases them on the source's schedule
(a replay at ``speed`` times real time, or as fast as possible with ``speed`` None; a
synthetic market at its rate), stamping each with ``ts_recv`` = its scheduled release
time, so that a server that falls behind shows it as latency instead of hiding it
(no coordinated omission). It never waits for a client: publishing only fills bounded
outboxes.

Given a start instant (``run_ingester(start_ns=...)``, as every worker of ``--workers N``
is), a pass releases and stamps its events on a schedule that depends on nothing but the
source and that instant, so processes fed the same source release the same events with
the same ``ts_recv`` in lockstep; a looped replay's next pass then starts where the last
one's schedule ended. With ``speed`` None (``--speed max``) each runs at its own pace.

A source that raises (files gone or unreadable, damage its reader cannot skip, a bug)
does not stop the server: the ingester logs it, ``/healthz`` answers ``failed``
(feed/health.py), and every book loses its continuity as at a source ``Gap`` (its
subscribers get a ``gap`` notice and, when the source is back, a snapshot). A looping
source is tried again after ``RETRY_FIRST_S``, the wait doubling up to ``RETRY_MAX_S``
while it keeps failing; a one-shot one stays failed. Clients keep their connections
and heartbeats throughout.

The snapshotter publishes conflated groups (``interval_ms`` > 0) when they are due.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import trio

from feed.bulk import apply_block, worth_it
from feed.events import Event, Gap
from feed.hub import Hub
from feed.synthetic import SyntheticMarket
from feed.timer import PreciseTimer
from replay.blocks import Block
from replay.convert import describe
from replay.sources import EventStream
from replay.tickfile import TickReader
from replay.window import window

if TYPE_CHECKING:
    from feed.server import Server
    from feed.wsconn import Flusher

log = logging.getLogger("tickwire.feed")
Clock = Callable[[], int]

CHECKPOINT_EVERY = 256  # events applied between two yields to the scheduler when behind
RELEASE_GRAIN_S = 0.0005
"""A paced ingester wakes at most this often: a wake-up costs about 50 us of CPU on
this kind of machine, so waking for each event of a fast feed would spend more on
waking than on the events (docs/performance.md)."""
APPLY_TIMED_EVERY = 16
"""One event in this many is timed for the ``apply`` stage histogram (timing every one
cost 3% of a replay at ``--speed max``)."""
RETRY_FIRST_S = 1.0
"""Wait before trying a looping source again after it failed; doubled at each failure
in a row."""
RETRY_MAX_S = 30.0
"""Longest wait between two tries of a failing source."""


class Source(Protocol):
    """Where events come from."""

    name: str
    origin: str | None  # the market, as tick-file headers name it (None: several)
    speed: float | None  # multiple of real time; None: as fast as possible
    loop: bool

    def symbols(self) -> list[str]:
        """Symbols known before the first event (more may appear later)."""
        ...

    async def prepare(self) -> None:
        """Get the next pass ready, so that its first event comes without delay (the
        slow part runs in a worker thread; the server keeps serving). A second call
        before the pass begins does nothing."""
        ...

    def events(self, start_ns: int) -> Iterator[tuple[int, Event]]:
        """One pass: (source time in ns, event) in source-time order. ``start_ns`` is
        the wall-clock time of the pass's first release; the pass is a function of the
        source's settings and ``start_ns`` alone."""
        ...

    def blocks(self) -> Iterator[Block] | None:
        """The prepared pass as blocks of events (``replay.blocks``), when the source
        can give it so, to be read instead of ``events``; else ``None``."""
        ...

    def problems(self) -> list[str]:
        """Damage found in the input since the last call (each with its position)."""
        ...

    def close(self) -> None:
        """Release the files of the pass under way."""
        ...


class SyntheticSource:
    """A synthetic random-walk market at ``rate`` events per second."""

    loop = False

    def __init__(self, rate: int, symbols: int, seed: int = 0) -> None:
        self.name = f"synthetic {rate}/s over {symbols} symbols"
        self.origin: str | None = "synthetic"
        self.rate = rate
        self.speed: float | None = 1.0
        self.market = SyntheticMarket(symbols, seed=seed)

    def symbols(self) -> list[str]:
        return list(self.market.symbols)

    async def prepare(self) -> None:
        return

    def close(self) -> None:
        return

    def events(self, start_ns: int) -> Iterator[tuple[int, Event]]:
        for snapshot in self.market.snapshots(start_ns):
            yield start_ns, snapshot
        period = 1e9 / self.rate
        i = 1
        while True:
            ts = start_ns + int(i * period)
            yield ts, self.market.next_event(ts)
            i += 1

    def blocks(self) -> Iterator[Block] | None:
        return None

    def problems(self) -> list[str]:
        return []


class UnknownSymbols(ValueError):
    """Symbols chosen for a replay that its files do not hold."""


class ReplaySource:
    """Tick files (native or raw captures), merged in ``ts_recv`` order, optionally
    cut to a time window and a set of symbols (``replay.window``)."""

    def __init__(
        self,
        paths: list[Path],
        speed: float | None,
        loop: bool,
        *,
        start: int | None = None,
        end: int | None = None,
        symbols: Sequence[str] = (),
    ) -> None:
        self.name = "replay of " + ", ".join(p.name for p in paths)
        self.origin, _ = describe(paths)
        self.paths = paths
        self.speed = speed
        self.loop = loop
        self.start = start
        self.end = end
        self.only = tuple(symbols)
        self._stream: EventStream | None = None
        self._pass: Iterator[Event] = iter(())
        self._blocks: Iterator[Block] | None = None
        self._reported = 0
        self._found: list[str] | None = None
        self._prepared = False

    def symbols(self) -> list[str]:
        """The symbols replayed: those of the files, or the chosen ones (each of which
        must be in the files: ``UnknownSymbols`` otherwise). The files are read for
        them once (a tick file whose header names none is read through)."""
        if self._found is None:
            stream = EventStream(self.paths)
            try:
                self._found = list(stream.symbols())
            finally:
                stream.close()
        found = self._found
        if not self.only:
            return list(found)
        missing = [symbol for symbol in self.only if symbol not in found]
        if missing:
            raise UnknownSymbols(f"not in the files: {', '.join(missing)} "
                                 f"(they hold {', '.join(found) or 'none'})")
        return list(self.only)

    async def prepare(self) -> None:
        """Open the files and read up to the first event of the window. With ``--from``
        that means folding everything before it into the books (``replay.window``),
        which may take minutes on a long recording: it runs in a worker thread."""
        if self._prepared:
            return
        self.close()
        self._stream = stream = EventStream(self.paths)
        self._reported = 0
        reader = stream.readers[0] if len(stream.readers) == 1 else None
        if self.speed is None and isinstance(reader, TickReader) and self.start is None \
                and self.end is None and not self.only:
            self._blocks = reader.blocks()  # None for a version-1 file
            if self._blocks is not None:
                self._prepared = True
                return
        events = window(stream, start=self.start, end=self.end, symbols=self.only or None)
        first = await trio.to_thread.run_sync(next, events, None, abandon_on_cancel=True)
        self._pass = iter(()) if first is None else itertools.chain((first,), events)
        self._prepared = True

    def events(self, start_ns: int) -> Iterator[tuple[int, Event]]:
        self._prepared = False
        for event in self._pass:
            yield event.ts_recv, event
        self.close()

    def blocks(self) -> Iterator[Block] | None:
        """At ``--speed max``, without ``--from``, ``--to`` or ``--symbols``, a single
        version-2 tick file is read in blocks."""
        blocks = self._blocks
        if blocks is None:
            return None
        self._prepared = False

        def closing() -> Iterator[Block]:
            yield from blocks
            self.close()

        return closing()

    def close(self) -> None:
        self._pass = iter(())
        self._blocks = None
        self._prepared = False
        if self._stream is not None:
            self._stream.close()

    def problems(self) -> list[str]:
        if self._stream is None:
            return []
        problems = self._stream.problems
        new = [str(p) for p in problems[self._reported:]]
        self._reported = len(problems)
        return new


async def run_ingester(server: Server, source: Source, start_ns: int | None = None) -> None:
    """Feed ``source`` into the server's hub until it ends (or forever, looping). With
    ``start_ns`` (wall clock) the first pass starts at that instant and each later one
    where the one before it was scheduled to end (lockstep with other processes; after
    a failure, that end plus the wait, so processes whose source fails at the same
    event stay in step); by default each pass starts when it is ready. A failure of the
    source is handled here (see the module docstring); only cancellation ends this
    early."""
    health = server.feed_health
    health.begin(trio.current_time())
    log.info("feed: %s", source.name)
    if server.recorder is not None:
        server.recorder.source = source.origin
    wait = RETRY_FIRST_S
    timer = PreciseTimer()
    try:
        while True:
            result = await _one_pass(server, source, start_ns, timer)
            if start_ns is not None:
                start_ns = result.end_ns
            if result.error is not None:
                _failed(server, source, result.error)
                if not source.loop:
                    return  # stays failed: replaying a one-shot source again would repeat it
                await trio.sleep(wait)
                if start_ns is not None:
                    start_ns += int(wait * 1e9)
                wait = min(wait * 2, RETRY_MAX_S)
                log.info("feed: trying %s again", source.name)
                health.begin(trio.current_time())
                continue
            wait = RETRY_FIRST_S
            await trio.lowlevel.checkpoint()  # a short looped file must not starve the rest
            if not source.loop:
                break
            if not result.applied:
                log.warning("feed: %s holds no events; not looping it", source.name)
                break
    finally:
        try:
            source.close()
        finally:
            timer.close()
    health.end()
    server.broadcast_notice("replay_end", f"the replay ({source.name}) has ended")
    log.info("feed ended: %s", source.name)


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one pass of a source did: events applied, the stamp of the last one (the
    pass's start if none), and the exception that ended it early, if any."""

    applied: int
    end_ns: int
    error: Exception | None = None


async def _one_pass(server: Server, source: Source, start_ns: int | None,
                    timer: PreciseTimer) -> PassResult:
    """Release one pass of the source, starting at ``start_ns`` (None: now). An
    exception from the source (or from applying what it gave) ends the pass and is
    returned, not raised."""
    hub = server.hub
    clock = server.clock
    health = server.feed_health
    metrics = server.metrics
    speed = source.speed
    try:
        for symbol in source.symbols():
            hub.add_symbol(symbol)
        await source.prepare()
    except Exception as exc:
        return PassResult(0, clock() if start_ns is None else start_ns, exc)
    blocks = source.blocks()
    if blocks is not None:
        return await _block_pass(server, source, blocks)
    now = clock()
    start_wall = now if start_ns is None else start_ns
    start_trio = trio.current_time() + (start_wall - now) / 1e9
    stamp = start_wall
    first: int | None = None
    since_yield = 0
    woke = -math.inf  # when the last wait for an event ended (trio time)
    applied = 0
    error: Exception | None = None
    # The published frames are handed out once per run of events between two awaits
    # (feed/fanout.py), and the run's writes are made here too (feed/wsconn.py's
    # Flusher); the run must end before every await.
    fanout = hub.fanout
    flusher = server.flusher
    try:
        with _held(server):
            for source_ns, event in source.events(start_wall):
                if first is None:
                    first = source_ns
                if speed is None:
                    stamp = clock()
                else:
                    offset_ns = (source_ns - first) / speed
                    release = start_trio + offset_ns / 1e9
                    late = trio.current_time() - release
                    if late < 0:
                        _report(server, source)
                        if since_yield:
                            health.released(trio.current_time())
                        fanout.release()
                        await _wait_for(release, flusher, timer, woke + RELEASE_GRAIN_S)
                        woke = trio.current_time()
                        flusher.hold()
                        fanout.hold()
                        since_yield = 0
                        late = 0.0
                    metrics.feed_behind_s = late
                    stamp = start_wall + int(offset_ns)
                _apply(server, event, stamp, timed=not applied % APPLY_TIMED_EVERY)
                applied += 1
                since_yield += 1
                if since_yield >= CHECKPOINT_EVERY:
                    await _yield(server)
                    since_yield = 0
    except Exception as exc:
        error = exc
    if since_yield:
        health.released(trio.current_time())
    _report(server, source)
    return PassResult(applied, stamp, error)


async def _block_pass(server: Server, source: Source, blocks: Iterator[Block]) -> PassResult:
    """A pass of a source read in blocks (``--speed max``). While nobody subscribes
    and nothing records, a block is applied at once (``feed.bulk``, unless it holds
    too many snapshots and gaps to gain from it); otherwise event by event, as
    ``_one_pass`` does. The ingester yields after each block, and every
    ``CHECKPOINT_EVERY`` events inside one applied event by event."""
    hub = server.hub
    clock = server.clock
    health = server.feed_health
    recording = server.recorder is not None
    applied = 0
    stamp = clock()
    error: Exception | None = None
    try:
        with _held(server):
            for block in blocks:
                if not recording and hub.idle() and worth_it(block):
                    stamp = clock()
                    apply_block(hub, block, stamp)
                    applied += block.count
                else:
                    for since, event in enumerate(block.events(), 1):
                        stamp = clock()
                        _apply(server, event, stamp, timed=not applied % APPLY_TIMED_EVERY)
                        applied += 1
                        if not since % CHECKPOINT_EVERY:
                            await _yield(server)
                _report(server, source)
                await _yield(server)
    except Exception as exc:
        error = exc
    health.released(trio.current_time())
    _report(server, source)
    return PassResult(applied, stamp, error)


@contextmanager
def _held(server: Server) -> Iterator[None]:
    """A run of the ingester's events: the frames they publish are handed out, and
    their writes made, when it ends (``_yield`` ends one and begins the next)."""
    fanout, flusher = server.hub.fanout, server.flusher
    fanout.hold()
    flusher.hold()
    try:
        yield
    finally:
        try:
            fanout.release()
        finally:
            flusher.release()


def _apply(server: Server, event: Event, stamp: int, *, timed: bool) -> None:
    """Apply one event stamped ``stamp``, record it when recording, and when ``timed``
    observe how long that took (the ``apply`` stage)."""
    if timed:
        began = time.perf_counter_ns()
    server.hub.apply(event, stamp)
    if server.recorder is not None:
        server.recorder.offer(event, stamp)
    if timed:
        server.metrics.apply_time.observe(time.perf_counter_ns() - began)


async def _yield(server: Server) -> None:
    """End the ingester's run of events (its frames handed out and written), yield to
    the other tasks, and begin the next run."""
    server.feed_health.released(trio.current_time())
    fanout, flusher = server.hub.fanout, server.flusher
    fanout.release()
    flusher.release()
    await trio.lowlevel.checkpoint()
    flusher.hold()
    fanout.hold()


async def _wait_for(release: float, flusher: Flusher, timer: PreciseTimer,
                    not_before: float) -> None:
    """Wait until ``release`` (trio time), or ``not_before`` if later, writing what the
    run before marked: the flusher may have the ingester wake at the end of its rest
    first, to write then. Events due meanwhile are released at the wake-up: they could
    not be written sooner (a rest), or waking for each would cost more than the
    fraction of a millisecond it saves (the grain)."""
    target = max(release, not_before)
    # At least once, even if ``release`` passed while the run was ending: the run's
    # writes are made and the ingester yields (and can be cancelled) before the next.
    while True:
        await timer.sleep_until(flusher.handover(target))
        if trio.current_time() >= release:
            return


def _failed(server: Server, source: Source, error: Exception) -> None:
    """The source raised: log it, say so in /healthz, and end every book's continuity
    (a ``Gap``, recorded too), since what the source gives next may not follow on."""
    log.error("feed failed: %s: %s", source.name, error, exc_info=error)
    server.feed_health.fail(error)
    hub = server.hub
    now = server.clock()
    for symbol in hub.symbol_list():
        if hub.book_of(symbol).valid:
            gap = Gap(symbol, now, now, "the feed source failed")
            hub.apply(gap, now)
            if server.recorder is not None:
                server.recorder.offer(gap, now)


def _report(server: Server, source: Source) -> None:
    for problem in source.problems():
        server.metrics.bad_lines += 1
        log.warning("feed input damaged: %s", problem)


class Snapshotter:
    """Publishes conflated groups when due; the hub calls ``notify`` when a group
    becomes due earlier than the snapshotter is waiting for."""

    def __init__(self, hub: Hub, clock: Clock) -> None:
        self.hub = hub
        self.clock = clock
        self._wake = trio.Event()
        self._waiting_for: int | None = None
        hub.on_due_changed = self.notify

    def notify(self) -> None:
        due = self.hub.next_due()
        if due is not None and (self._waiting_for is None or due < self._waiting_for):
            self._wake.set()

    async def run(self) -> None:
        hub = self.hub
        clock = self.clock
        while True:
            self._wake = trio.Event()
            due = hub.next_due()
            self._waiting_for = due
            if due is None:
                await self._wake.wait()
                continue
            delay = (due - clock()) / 1e9
            if delay > 0:
                with trio.move_on_after(delay):
                    await self._wake.wait()
                continue
            hub.run_due(clock())
            await trio.lowlevel.checkpoint()
