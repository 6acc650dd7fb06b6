"""Recording: ``serve --record`` / ``tickwire record`` (feed.recorder) and recording
another server over its URL (clients.recorder)."""

from __future__ import annotations

import dataclasses
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from clients.client import connect
from clients.recorder import SUBSCRIBE_ID, RecordingSession, UrlRecorder
from feed.book import Book
from feed.config import Config, ConfigError, RecordConfig
from feed.events import BookDelta, BookSnapshot, Event, Gap, Level, Trade
from feed.ingest import ReplaySource, Source, SyntheticSource, run_ingester
from feed.recorder import POLL_S, HubBooks, Recorder
from feed.server import Server
from feed.synthetic import SyntheticMarket
from replay.codec import BadHeader
from replay.lines import ProblemKind
from replay.tickfile import TickReader, TickWriter
from tests.test_cli import tickwire
from tests.test_server import http_get, next_of

T0 = 1_700_000_000_000_000_000


def market_file(path: Path, events: int = 400, symbols: int = 2) -> list[Event]:
    """A small venue-like recording (seq on every book event); returns its events."""
    market = SyntheticMarket(symbols, seed=7, levels=20)
    seqs = dict.fromkeys(market.symbols, 1000)
    out: list[Event] = []
    raw: list[Event] = [*market.snapshots(T0)]
    raw += [market.next_event(T0 + (i + 1) * 1_000_000) for i in range(events)]
    for event in raw:
        if isinstance(event, BookSnapshot | BookDelta):
            seqs[event.symbol] += 1
            event = dataclasses.replace(event, seq=seqs[event.symbol])
        out.append(event)
    with TickWriter(path, source="test", symbols=market.symbols) as writer:
        writer.write_all(out)
    return out


def recording(directory: Path) -> list[Path]:
    return sorted(directory.glob("tickwire-*.ticks*"))


def read(paths: Iterable[Path]) -> list[Event]:
    """Every event of ``paths`` in order; each file must be undamaged."""
    events: list[Event] = []
    for path in paths:
        with TickReader(path) as reader:
            events += reader
            assert reader.problems == [], reader.problems
    return events


def without_ts_recv(events: Iterable[Event]) -> list[Event]:
    return [dataclasses.replace(event, ts_recv=0) for event in events]


class Replayed:
    """The books a replay of recorded events builds; ``holes`` counts deltas that came
    while a book was unknown (a recording must never have one)."""

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self.books: dict[str, Book] = {}
        self.holes = 0
        self.trades = 0
        for event in events:
            self.apply(event)

    def apply(self, event: Event) -> None:
        book = self.books.setdefault(event.symbol, Book(event.symbol))
        if isinstance(event, BookSnapshot):
            book.apply_snapshot(event, event.ts_recv)
        elif isinstance(event, BookDelta):
            if book.apply_delta(event, event.ts_recv) is None:
                self.holes += 1
        elif isinstance(event, Gap):
            book.invalidate()
        else:
            self.trades += 1


def state(book: Book) -> tuple[list[Level], list[Level], int, bool]:
    return book.bids.top(len(book.bids)), book.asks.top(len(book.asks)), book.seq, book.valid


def levels(book: Book) -> tuple[list[Level], list[Level]]:
    return book.bids.top(len(book.bids)), book.asks.top(len(book.asks))


def recording_server(directory: Path, source: Source, **record: object,
                     ) -> tuple[Server, trio.Event]:
    """A server on a free port that records ``source`` into ``directory``; the returned
    event is set when the source has ended."""
    done = trio.Event()

    async def feed(server: Server) -> None:
        await run_ingester(server, source)
        done.set()

    overrides = {"server.port": 0, "record.dir": str(directory),
                 **{f"record.{key}": value for key, value in record.items()}}
    return Server(Config().with_overrides(overrides), feed), done


class NoBooks:
    """The ``Books`` of a producer of trades only."""

    def symbols(self) -> list[str]:
        return ["X"]

    def snapshots(self, symbols: Iterable[str] | None, ts_recv: int) -> list[BookSnapshot]:
        return []


def trade(n: int, ts_recv: int | None = None) -> Trade:
    return Trade("X", n, "10", "1", "buy", T0 + n, T0 + n if ts_recv is None else ts_recv)


class Gate:
    """Holds the recorder's worker thread until the test opens it (one per test, opened
    in a ``finally``: no thread is left waiting)."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.closed = threading.Event()
        """Set when a ``ControlledWriter`` of this gate has closed its file."""
        self._open = threading.Event()

    def wait(self) -> None:
        """In the worker thread: wait until the test opens the gate."""
        self.reached.set()
        assert self._open.wait(20), "the test never opened the gate"

    def open(self) -> None:
        self._open.set()

    async def wait_reached(self) -> None:
        """Wait until the worker thread waits at the gate."""
        await wait_set(self.reached)


async def wait_set(event: threading.Event) -> None:
    """Wait (at most 10 s) for an event a worker thread sets."""
    assert await trio.to_thread.run_sync(event.wait, 10)


class ControlledWriter(TickWriter):
    """A disk the test controls: every event waits at ``gate`` (if given), and the
    ``fail_at``-th (if given) breaks the encoder, an error that is not an ``OSError``."""

    def __init__(self, path: Path, *, gate: Gate | None = None, fail_at: int = 0,
                 source: str | None, symbols: Sequence[str]) -> None:
        super().__init__(path, source=source, symbols=symbols)
        self.gate = gate
        self.fail_at = fail_at

    def write(self, event: Event) -> None:
        if self.gate is not None:
            self.gate.wait()
        if self.fail_at and self.count + 1 >= self.fail_at:
            raise RuntimeError("the encoder broke")
        super().write(event)

    def close(self) -> None:
        super().close()
        if self.gate is not None:
            self.gate.closed.set()


def recorder_logs(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "tickwire.record" and r.levelno == level]


async def test_recording_a_replay_holds_the_source_events_stamped_on_release(
        tmp_path: Path) -> None:
    source_file = tmp_path / "source.ticks.zst"
    source = market_file(source_file)
    server, done = recording_server(tmp_path / "rec", ReplaySource([source_file], None, False))
    before = time.time_ns()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        with trio.fail_after(10):
            await done.wait()
        server.shutdown()
    files = recording(tmp_path / "rec")
    assert len(files) == 1 and files[0].name.endswith(".ticks.zst")
    recorded = read(files)
    assert without_ts_recv(recorded) == without_ts_recv(source)
    stamps = [event.ts_recv for event in recorded]
    assert stamps == sorted(stamps) and stamps[0] >= before  # released now, not in 2023
    with TickReader(files[0]) as reader:
        assert reader.header.source == "test"  # the market of the replayed file
        assert reader.header.symbols == ("SYN-BTC", "SYN-ETH")
    stats = server.recorder.statistics() if server.recorder else None
    assert stats is not None and stats.events == len(source) and stats.dropped == 0
    assert stats.bytes == files[0].stat().st_size and stats.files == 1


@pytest.mark.parametrize(("setting", "value"), [("rotate_bytes", 4096), ("rotate_seconds", 0.2)])
async def test_rotated_files_each_replay_on_their_own(
        tmp_path: Path, setting: str, value: float) -> None:
    directory = tmp_path / "rec"
    options = {"rotate_bytes": 0, "rotate_seconds": 0, "flush_ms": 50, setting: value}
    server, _ = recording_server(directory, SyntheticSource(rate=3000, symbols=3), **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        recorder = server.recorder
        assert recorder is not None
        with trio.fail_after(20):
            while recorder.statistics().files < 4:
                await recorder.wait_batch()
        server.shutdown()
    files = recording(directory)
    assert len(files) >= 4 and files == sorted(files, key=lambda p: p.stat().st_mtime_ns)
    symbols = ["SYN-BTC", "SYN-ETH", "SYN-SOL"]
    hub = {symbol: server.hub.book_of(symbol) for symbol in symbols}
    for path in files:
        with TickReader(path) as reader:
            assert reader.header.symbols == tuple(symbols)
        events = read([path])
        opening = events[:len(symbols)]
        assert all(isinstance(e, BookSnapshot) for e in opening), path
        assert sorted(e.symbol for e in opening) == symbols, path
        replayed = Replayed(events)
        assert replayed.holes == 0
    for path in files[:-1]:
        if setting == "rotate_bytes":
            assert path.stat().st_size >= value
        else:  # rotated by age alone (no size limit): spans about rotate_seconds each,
            # bounded generously since a loaded machine delays batches, not by seconds
            span = [e.ts_recv for e in read([path])]
            assert (span[-1] - span[0]) / 1e9 < value + 5
    # The last file on its own, and all of them one after another, end on the server's books.
    last = Replayed(read(files[-1:]))
    assert {s: state(b) for s, b in last.books.items()} == {s: state(b) for s, b in hub.items()}
    whole = Replayed(read(files))
    assert {s: levels(b) for s, b in whole.books.items()} == {
        s: levels(b) for s, b in hub.items()}
    assert whole.holes == 0


async def test_a_sigkilled_recorder_leaves_everything_up_to_its_last_flush(
        tmp_path: Path) -> None:
    """The loss is measured against what the server had released (as a client saw it)
    when it was killed, not against the wall clock: a loaded machine that delays the
    whole process delays the feed as much, and loses nothing for it."""
    directory = tmp_path / "rec"
    async with tickwire("record", str(directory), "--synthetic", "300", "--symbols", "2",
                        "--port", "0") as (process, url):
        async with connect(url) as conn:
            await conn.subscribe("book", ["SYN-BTC", "SYN-ETH"], depth=1000, interval_ms=0)
            with trio.fail_after(10):
                flushed = await readable(directory, 0.5)
                # Kill at a moment unrelated to its flushes: once the feed has gone 1.3 s
                # (more than two flush intervals) past what was readable.
                released = 0
                while released < flushed + 1_300_000_000:
                    released = max(released, (await conn.receive()).get("ts_recv", 0))
            process.kill()
        with trio.fail_after(5):
            assert await process.wait() == -signal.SIGKILL
    [path] = recording(directory)
    with TickReader(path) as reader:
        events = list(reader)
        problems = list(reader.problems)
    assert [p.kind for p in problems] in ([ProblemKind.TRUNCATED], [ProblemKind.PARTIAL_LINE])
    assert isinstance(events[0], BookSnapshot)
    lost_s = (released - events[-1].ts_recv) / 1e9
    assert lost_s < 1.0, f"{lost_s:.3f} s of events lost"
    assert Replayed(events).holes == 0


async def readable(directory: Path, seconds: float) -> int:
    """Wait until the recording another process writes into ``directory`` holds
    ``seconds`` of readable events (polled: another process's file signals nothing);
    return the ``ts_recv`` of the last."""
    while True:
        files = recording(directory)
        stamps = _readable_stamps(files[0]) if files else []
        if stamps and (stamps[-1] - stamps[0]) / 1e9 >= seconds:
            return stamps[-1]
        await trio.sleep(0.05)


def _readable_stamps(path: Path) -> list[int]:
    try:
        with TickReader(path) as reader:
            return [event.ts_recv for event in reader]
    except BadHeader:  # created, header not flushed yet
        return []


async def test_a_slow_disk_drops_events_says_so_and_the_recording_stays_exact(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source_file = tmp_path / "source.ticks"
    source = market_file(source_file, events=600)
    server, done = recording_server(tmp_path / "rec", ReplaySource([source_file], None, False),
                                    max_buffered_events=8)
    gate = Gate()
    server.recorder = Recorder(server.config.record, HubBooks(server.hub), clock=server.clock,
                               opener=partial(ControlledWriter, gate=gate))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            with trio.fail_after(10):
                await done.wait()
            stats = server.recorder.statistics()
            assert stats.dropped >= len(source) - 2 * 8 - 2
            metrics = server.render_metrics().decode()
            assert f"tickwire_record_dropped_events_total {float(stats.dropped)}" in metrics
            assert "tickwire_record_buffer_fill " in metrics
            gate.open()
            server.shutdown()
    finally:
        gate.open()
    warnings = recorder_logs(caplog, logging.WARNING)
    assert len(warnings) == 2  # each once: the writes are stuck for less than 10 s
    assert "falling behind" in warnings[0] and "over half its buffer of 8" in warnings[0]
    assert "slower than the feed" in warnings[1]
    recorded = read(recording(tmp_path / "rec"))
    assert len(recorded) < len(source)
    gaps = [e for e in recorded if isinstance(e, Gap)]
    assert {g.symbol for g in gaps} == {"SYN-BTC", "SYN-ETH"}
    assert all("events lost" in g.reason for g in gaps)
    for gap in gaps:  # the gap is followed by the book, before any delta of its symbol
        after = [e for e in recorded[recorded.index(gap) + 1:] if e.symbol == gap.symbol]
        assert isinstance(after[0], BookSnapshot)
    replayed = Replayed(recorded)
    assert replayed.holes == 0
    assert {s: state(b) for s, b in replayed.books.items()} == {
        s: state(server.hub.book_of(s)) for s in ("SYN-BTC", "SYN-ETH")}


async def test_recording_another_server_over_its_url_gives_its_books(tmp_path: Path) -> None:
    source_file = tmp_path / "source.ticks.zst"
    source = market_file(source_file, events=500, symbols=3)
    go = trio.Event()

    async def feed(server: Server) -> None:
        await go.wait()
        await run_ingester(server, ReplaySource([source_file], None, False))

    upstream = Server(Config().with_overrides({"server.port": 0}), feed)
    for symbol in ("SYN-BTC", "SYN-ETH", "SYN-SOL"):
        upstream.hub.add_symbol(symbol)
    async with trio.open_nursery() as nursery:
        listening = await nursery.start(upstream.run)
        recorder = UrlRecorder(listening.url, RecordConfig(dir=str(tmp_path / "rec")))
        with trio.fail_after(10):
            async with trio.open_nursery() as inner:  # until the upstream's replay_end
                await inner.start(recorder.run)
                while recorder.keeper.statistics().messages < 2:  # both `subscribed`
                    await recorder.keeper.wait_state_changed()
                go.set()
        upstream.shutdown()
    recorded = read(recording(tmp_path / "rec"))
    replayed = Replayed(recorded)
    assert replayed.holes == 0 and not any(isinstance(e, Gap) for e in recorded)
    assert {s: state(b) for s, b in replayed.books.items()} == {
        s: state(upstream.hub.book_of(s)) for s in ("SYN-BTC", "SYN-ETH", "SYN-SOL")}
    assert without_ts_recv(e for e in recorded if isinstance(e, Trade)) == without_ts_recv(
        e for e in source if isinstance(e, Trade))
    with TickReader(recording(tmp_path / "rec")[0]) as reader:
        assert reader.header.source == listening.url


async def test_record_url_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    server = Server(Config().with_overrides({"server.port": 0}),
                    lambda server: run_ingester(server, SyntheticSource(rate=1000, symbols=2)))
    directory = tmp_path / "rec"
    async with trio.open_nursery() as nursery:
        listening = await nursery.start(server.run)
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "feed", "record", str(directory), "--url", listening.url,
             "--symbols", "SYN-ETH"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            with trio.fail_after(10):
                await readable(directory, 0.3)
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                process.kill()
        server.shutdown()
    [path] = recording(directory)
    events = read([path])  # complete: no damage at the end
    assert isinstance(events[0], BookSnapshot) and {e.symbol for e in events} == {"SYN-ETH"}
    assert Replayed(events).holes == 0


def test_record_settings_are_checked() -> None:
    config = Config().with_overrides({"record.dir": "x", "record.extension": ".ticks.gz",
                                      "record.flush_ms": 800})
    assert config.record == RecordConfig(dir="x", extension=".ticks.gz", flush_ms=800)
    for key, value in (("record.extension", ".zip"), ("record.flush_ms", 801),
                       ("record.rotate_bytes", -1), ("record.max_buffered_events", 0)):
        with pytest.raises(ConfigError, match=key):
            Config().with_overrides({key: value})


class UrlSession:
    """Sans-IO: a URL recorder's session subscribed to ``book`` and ``trades`` of X,
    the messages it receives and the events it records."""

    def __init__(self) -> None:
        self.recorded: list[Event] = []
        self.refused: list[str] = []
        self.session = RecordingSession(clock=lambda: 5, on_refused=self.refused.append)
        self.session.offer = lambda event, ts_recv: self.recorded.append(event)
        self.session.subscribe("book", ["X"], depth=1000, interval_ms=0)
        self.session.subscribe("trades", ["X"])
        self.requests = self.session.connected()

    def book(self, kind: str, seq: int, **fields: object) -> list[dict[str, Any]]:
        return self.session.receive({"type": kind, "symbol": "X", "seq": seq,
                                     "bids": [["10", "1"]], "asks": [], "ts_event": seq,
                                     **fields})

    def trade(self, seq: int) -> None:
        self.session.receive({"type": "trade", "symbol": "X", "seq": seq, "trade_id": seq,
                              "price": "10", "size": "1", "side": "buy", "ts_event": seq})

    def kinds(self) -> list[tuple[str, int | None]]:
        return [(type(e).__name__, getattr(e, "seq", None)) for e in self.recorded]

    def gaps(self) -> list[str]:
        return [e.reason for e in self.recorded if isinstance(e, Gap)]


def test_recording_session_marks_every_break_with_a_gap() -> None:
    url = UrlSession()
    url.book("book_snapshot", 1, depth=1000)
    url.book("book_update", 2, prev_seq=1)
    url.trade(1)
    assert url.book("book_update", 4, prev_seq=3) == [{"op": "resync", "channel": "book",
                                                       "symbol": "X"}]  # a chain break
    url.book("book_update", 5, prev_seq=4)  # skipped: the chain is broken
    url.book("book_snapshot", 6, depth=1000, reason="resync")
    url.trade(3)  # trade 2 was missed: a gap, then the book again, then the trade
    url.session.receive({"type": "notice", "code": "gap", "symbol": "X", "message": "lost"})
    url.book("book_snapshot", 7, depth=1000, reason="resync")
    url.session.connected()  # a reconnect
    assert url.kinds() == [
        ("BookSnapshot", 1), ("BookDelta", 2), ("Trade", None), ("Gap", None),
        ("BookSnapshot", 6), ("Gap", None), ("BookSnapshot", 6), ("Trade", None),
        ("Gap", None), ("BookSnapshot", 7), ("Gap", None)]
    gaps = url.gaps()
    assert "chain break" in gaps[0] and gaps[1] == "trades missed: seq gap, last 1, got 3"
    assert gaps[2:] == ["lost", "connection lost; resubscribed"]
    assert Replayed(url.recorded).holes == 0 and url.session.gaps == 4


def test_missed_trades_are_recorded_while_the_book_is_broken() -> None:
    url = UrlSession()
    url.book("book_snapshot", 1, depth=1000)
    url.trade(1)
    url.book("book_update", 4, prev_seq=3)  # a chain break: the book's gap
    url.trade(3)  # trade 2 missed while the book waits for its resync
    url.book("book_snapshot", 6, depth=1000, reason="resync")
    assert url.kinds() == [("BookSnapshot", 1), ("Trade", None), ("Gap", None),
                           ("Gap", None), ("Trade", None), ("BookSnapshot", 6)]
    assert url.gaps()[1] == "trades missed: seq gap, last 1, got 3"
    assert Replayed(url.recorded).holes == 0 and url.session.gaps == 2


def test_recording_session_is_refused_by_an_error_to_its_subscribe() -> None:
    url = UrlSession()
    assert [r["id"] for r in url.requests] == [SUBSCRIBE_ID, SUBSCRIBE_ID]
    url.session.receive({"type": "error", "code": "rate_limited", "message": "slow down"})
    assert url.refused == []  # not an answer to a subscribe
    url.session.receive({"type": "error", "code": "too_many_subscriptions",
                         "message": "at most 1 subscriptions per connection",
                         "id": SUBSCRIBE_ID})
    assert url.refused == ["the server refused a subscription: too_many_subscriptions: "
                           "at most 1 subscriptions per connection"]


async def test_an_unexpected_write_error_stops_the_recording_not_the_server(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server, _ = recording_server(tmp_path / "rec", SyntheticSource(rate=1000, symbols=2))
    recorder = server.recorder = Recorder(server.config.record, HubBooks(server.hub),
                                          clock=server.clock,
                                          opener=partial(ControlledWriter, fail_at=50))
    async with trio.open_nursery() as nursery:
        url = (await nursery.start(server.run)).url
        with trio.fail_after(10):
            while not recorder.statistics().failed:
                await recorder.wait_batch()
            async with connect(url) as conn:  # the server serves on
                await conn.subscribe("book", ["SYN-BTC"], depth=10, interval_ms=0)
                await next_of(conn, "book_snapshot")
                await next_of(conn, "book_update")
            health, _ = await http_get(url, "/healthz")
            _, metrics = await http_get(url, "/metrics")
        server.shutdown()
    assert health == 200
    assert b"tickwire_record_failed 1.0" in metrics
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "the encoder broke" in error.getMessage() and error.exc_info is not None


async def test_after_a_write_error_every_event_offered_counts_as_dropped(
        tmp_path: Path) -> None:
    recorder = Recorder(RecordConfig(dir=str(tmp_path)), NoBooks(),
                        opener=partial(ControlledWriter, fail_at=5))
    offered = 0

    def offer(count: int) -> None:
        nonlocal offered
        for _ in range(count):
            recorder.offer(trade(offered), T0 + offered)
            offered += 1

    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        with trio.fail_after(10):
            while not recorder.statistics().failed:  # 3 written, then 3 of which 1 is
                offer(3)
                await recorder.wait_batch()
        offer(10)  # while the recorder stops
    offer(10)  # once it has stopped
    stats = recorder.statistics()
    assert stats.events == 3 and stats.dropped == offered - 3


async def test_record_url_stops_failed_when_its_recording_fails(tmp_path: Path) -> None:
    upstream = Server(Config().with_overrides({"server.port": 0}),
                      lambda server: run_ingester(server, SyntheticSource(rate=1000, symbols=2)))
    async with trio.open_nursery() as nursery:
        url = (await nursery.start(upstream.run)).url
        recorder = UrlRecorder(url, RecordConfig(dir=str(tmp_path)),
                               opener=partial(ControlledWriter, fail_at=20))
        with trio.fail_after(10):
            await recorder.run()  # returns by itself
        upstream.shutdown()
    assert recorder.failed and recorder.failure == "the recording could not be written"


async def test_a_flush_is_due_flush_ms_after_the_last_flush_was_taken(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    """Counting from when the last flushing batch was taken, not from when its write
    ended, keeps the SIGKILL loss at flush_ms + POLL_S + two batch writes."""
    gate = Gate()
    config = RecordConfig(dir=str(tmp_path), flush_ms=800, extension=".ticks")
    recorder = Recorder(config, NoBooks(), opener=partial(ControlledWriter, gate=gate))
    try:
        async with trio.open_nursery() as nursery:
            mock_clock.jump(1.0)
            await nursery.start(recorder.run)
            recorder.offer(trade(1), T0)
            mock_clock.jump(POLL_S)  # t = 1.05: the first batch is taken, to be flushed
            await gate.wait_reached()
            mock_clock.jump(0.3)  # its write takes 0.3 s
            gate.open()
            await recorder.wait_batch()
            path = recorder.statistics().path
            recorder.offer(trade(2), T0)
            mock_clock.jump(0.51)  # t = 1.86: 0.81 s after that flush was taken
            await recorder.wait_batch()
            assert path is not None
            with TickReader(path) as reader:
                assert [e.trade_id for e in reader if isinstance(e, Trade)] == [1, 2]
            nursery.cancel_scope.cancel()
    finally:
        gate.open()


async def test_a_stop_during_a_slow_write_waits_for_it_and_closes_the_file_complete(
        tmp_path: Path) -> None:
    gate = Gate()
    recorder = Recorder(RecordConfig(dir=str(tmp_path)), NoBooks(),
                        opener=partial(ControlledWriter, gate=gate))
    stop = trio.CancelScope()

    async def record() -> None:
        with stop:
            await recorder.run()

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(record)
                recorder.offer(trade(1), T0)
                await gate.wait_reached()
                stop.cancel()  # the stop, while the write waits
                recorder.offer(trade(2), T0)
                await trio.testing.wait_all_tasks_blocked()  # the writer waits for it
                gate.open()
    finally:
        gate.open()
    assert [e.trade_id for e in read(recording(tmp_path)) if isinstance(e, Trade)] == [1, 2]
    stats = recorder.statistics()
    assert stats.events == 2 and stats.dropped == 0 and not stats.failed


async def test_a_hung_disk_does_not_hang_the_shutdown(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate()
    server, _ = recording_server(tmp_path / "rec", SyntheticSource(rate=1000, symbols=2))
    recorder = server.recorder = Recorder(server.config.record, HubBooks(server.hub),
                                          clock=server.clock, close_timeout_s=0.5,
                                          opener=partial(ControlledWriter, gate=gate))
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                await gate.wait_reached()  # a write hangs
                server.shutdown()
        [warning] = [w for w in recorder_logs(caplog, logging.WARNING) if "stop" in w]
        assert "a write is still hanging" in warning and "may be incomplete" in warning
    finally:
        gate.open()
    await wait_set(gate.closed)  # the write returns at last: its thread closes the file
    assert recorder.statistics().path is None
    [path] = recording(tmp_path / "rec")
    assert isinstance(read([path])[0], BookSnapshot)


async def test_recorders_sharing_a_directory_never_share_a_file(tmp_path: Path) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(T0 // 1_000_000_000))
    taken = tmp_path / f"tickwire-{stamp}-0001.ticks.zst"
    taken.write_bytes(b"not a recorder's")
    gate = Gate()

    def held(path: Path, *, source: str | None, symbols: Sequence[str]) -> TickWriter:
        gate.wait()  # its name chosen, it opens only when the test lets it
        return TickWriter(path, source=source, symbols=symbols)

    config = RecordConfig(dir=str(tmp_path))
    first = Recorder(config, NoBooks(), clock=lambda: T0, opener=held)
    second = Recorder(config, NoBooks(), clock=lambda: T0)  # in the same second
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(first.run)
                await nursery.start(second.run)
                first.offer(trade(1), T0)
                await gate.wait_reached()
                second.offer(trade(2), T0)
                while second.statistics().events == 0:
                    await second.wait_batch()
                gate.open()
                nursery.cancel_scope.cancel()
    finally:
        gate.open()
    assert taken.read_bytes() == b"not a recorder's"
    files = {n: tmp_path / f"tickwire-{stamp}-000{n}.ticks.zst" for n in (2, 3)}
    assert {n: [e.trade_id for e in read([path]) if isinstance(e, Trade)]
            for n, path in files.items()} == {2: [1], 3: [2]}


async def test_record_url_exits_1_when_the_server_refuses_a_subscription(
        tmp_path: Path) -> None:
    config = Config().with_overrides({"server.port": 0, "client.max_subscriptions": 3})
    server = Server(config,
                    lambda server: run_ingester(server, SyntheticSource(rate=100, symbols=2)))
    async with trio.open_nursery() as nursery:
        url = (await nursery.start(server.run)).url
        with trio.fail_after(15):  # book for both symbols is 2, trades then 4 > 3
            result = await trio.run_process(
                [sys.executable, "-m", "feed", "record", str(tmp_path), "--url", url],
                capture_stdout=True, capture_stderr=True, check=False)
        server.shutdown()
    assert result.returncode == 1
    assert b"the server refused a subscription: too_many_subscriptions" in result.stderr


async def test_record_url_subscribes_many_symbols_in_requests_of_a_bounded_size(
        tmp_path: Path) -> None:
    symbols = [f"S{i:03d}" for i in range(250)]  # one request for all: about 1.9 KB
    upstream = Server(Config().with_overrides({
        "server.port": 0, "server.max_message_bytes": 1024,
        "client.max_subscriptions": 2 * len(symbols)}))
    for symbol in symbols:
        upstream.hub.add_symbol(symbol)
    async with trio.open_nursery() as nursery:
        url = (await nursery.start(upstream.run)).url
        recorder = UrlRecorder(url, RecordConfig(dir=str(tmp_path)), symbols)
        with trio.fail_after(10):
            async with trio.open_nursery() as inner:
                await inner.start(recorder.run)
                while recorder.keeper.statistics().messages < 6:  # 3 + 3 `subscribed`
                    await recorder.keeper.wait_state_changed()
                recorder.stop()
        upstream.shutdown()
    assert recorder.keeper.statistics().errors == 0 and not recorder.failed
    assert recorder.keeper.statistics().connections == 1


async def test_a_buffer_past_half_full_is_logged_at_most_every_10_s(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder(RecordConfig(dir=str(tmp_path), max_buffered_events=8), NoBooks())
    warned = []
    async with trio.open_nursery() as nursery:
        await nursery.start(recorder.run)
        for second in (0, 1, 11):
            for n in range(5):  # 5 of 8: past half full
                recorder.offer(trade(n), T0 + second * 1_000_000_000)
            warned.append(len(recorder_logs(caplog, logging.WARNING)))
            with trio.fail_after(5):
                while recorder.statistics().buffered:
                    await recorder.wait_batch()
        nursery.cancel_scope.cancel()
    assert warned == [1, 1, 2]
    assert "falling behind" in recorder_logs(caplog, logging.WARNING)[0]
