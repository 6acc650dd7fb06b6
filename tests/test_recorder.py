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
from collections.abc import Iterable
from pathlib import Path

import pytest
import trio

from clients.recorder import RecordingSession, UrlRecorder
from feed.book import Book
from feed.config import Config, ConfigError, RecordConfig
from feed.events import BookDelta, BookSnapshot, Event, Gap, Level, Trade
from feed.ingest import ReplaySource, Source, SyntheticSource, run_ingester
from feed.recorder import HubBooks, Recorder
from feed.server import Server
from feed.synthetic import SyntheticMarket
from replay.codec import BadHeader
from replay.lines import ProblemKind
from replay.tickfile import TickReader, TickWriter
from tests.test_cli import tickwire

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
        else:
            span = [e.ts_recv for e in read([path])]
            assert (span[-1] - span[0]) / 1e9 < value + 0.5
    # The last file on its own, and all of them one after another, end on the server's books.
    last = Replayed(read(files[-1:]))
    assert {s: state(b) for s, b in last.books.items()} == {s: state(b) for s, b in hub.items()}
    whole = Replayed(read(files))
    assert {s: levels(b) for s, b in whole.books.items()} == {
        s: levels(b) for s, b in hub.items()}
    assert whole.holes == 0


async def test_a_sigkilled_recorder_leaves_everything_up_to_its_last_flush(
        tmp_path: Path) -> None:
    directory = tmp_path / "rec"
    async with tickwire("record", str(directory), "--synthetic", "300", "--symbols", "2",
                        "--port", "0") as (process, _):
        with trio.fail_after(10):
            await readable(directory, 0.5)  # it has flushed
        # Kill at a moment unrelated to its flushes (waiting for more to become readable
        # would kill it just after one): 1.3 s on, more than two flush intervals.
        await trio.sleep(1.3)
        process.kill()
        killed = time.time_ns()
        with trio.fail_after(5):
            assert await process.wait() == -signal.SIGKILL
    [path] = recording(directory)
    with TickReader(path) as reader:
        events = list(reader)
        problems = list(reader.problems)
    assert [p.kind for p in problems] in ([ProblemKind.TRUNCATED], [ProblemKind.PARTIAL_LINE])
    assert isinstance(events[0], BookSnapshot)
    lost_s = (killed - events[-1].ts_recv) / 1e9
    assert 0 <= lost_s < 1.0, f"{lost_s:.3f} s of events lost"
    assert Replayed(events).holes == 0


async def readable(directory: Path, seconds: float) -> None:
    """Wait until the recording another process writes into ``directory`` holds
    ``seconds`` of readable events (polled: another process's file signals nothing)."""
    while True:
        files = recording(directory)
        if files and _seconds_readable(files[0]) >= seconds:
            return
        await trio.sleep(0.05)


def _seconds_readable(path: Path) -> float:
    try:
        with TickReader(path) as reader:
            stamps = [event.ts_recv for event in reader]
    except BadHeader:  # created, header not flushed yet
        return 0.0
    return (stamps[-1] - stamps[0]) / 1e9 if stamps else 0.0


class GatedWriter(TickWriter):
    """A disk that writes no event until ``gate`` is set."""

    gate = threading.Event()

    def write(self, event: Event) -> None:
        assert self.gate.wait(20), "the test never opened the gate"
        super().write(event)


async def test_a_slow_disk_drops_events_says_so_and_the_recording_stays_exact(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source_file = tmp_path / "source.ticks"
    source = market_file(source_file, events=600)
    server, done = recording_server(tmp_path / "rec", ReplaySource([source_file], None, False),
                                    max_buffered_events=8)
    server.recorder = Recorder(server.config.record, HubBooks(server.hub), clock=server.clock,
                               opener=GatedWriter)
    GatedWriter.gate.clear()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        with trio.fail_after(10):
            await done.wait()
        stats = server.recorder.statistics()
        assert stats.dropped >= len(source) - 2 * 8 - 2
        metrics = server.render_metrics().decode()
        assert f"tickwire_record_dropped_events_total {float(stats.dropped)}" in metrics
        assert "tickwire_record_buffer_fill " in metrics
        GatedWriter.gate.set()
        server.shutdown()
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "tickwire.record" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "slower than the feed" in warnings[0]
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
    config = Config().with_overrides({"record.dir": "x", "record.extension": ".ticks.gz"})
    assert config.record == RecordConfig(dir="x", extension=".ticks.gz")
    for key, value in (("record.extension", ".zip"), ("record.flush_ms", 2000),
                       ("record.rotate_bytes", -1), ("record.max_buffered_events", 0)):
        with pytest.raises(ConfigError, match=key):
            Config().with_overrides({key: value})



def test_recording_session_marks_every_break_with_a_gap() -> None:
    """Sans-IO: the messages a URL recorder receives, and the events it records."""
    recorded: list[Event] = []
    session = RecordingSession(clock=lambda: 5)
    session.offer = lambda event, ts_recv: recorded.append(event)
    session.subscribe("book", ["X"], depth=1000, interval_ms=0)
    session.subscribe("trades", ["X"])
    session.connected()

    def book(kind: str, seq: int, **fields: object) -> list[dict[str, object]]:
        msg = {"type": kind, "symbol": "X", "seq": seq, "bids": [["10", "1"]], "asks": [],
               "ts_event": seq, **fields}
        return session.receive(msg)

    def trade(seq: int) -> None:
        session.receive({"type": "trade", "symbol": "X", "seq": seq, "trade_id": seq,
                         "price": "10", "size": "1", "side": "buy", "ts_event": seq})

    book("book_snapshot", 1, depth=1000)
    book("book_update", 2, prev_seq=1)
    trade(1)
    assert book("book_update", 4, prev_seq=3) == [{"op": "resync", "channel": "book",
                                                   "symbol": "X"}]  # a chain break
    book("book_update", 5, prev_seq=4)  # skipped: the chain is broken
    book("book_snapshot", 6, depth=1000, reason="resync")
    trade(3)  # trade 2 was missed: a gap, then the book again, then the trade
    session.receive({"type": "notice", "code": "gap", "symbol": "X", "message": "lost"})
    book("book_snapshot", 7, depth=1000, reason="resync")
    session.connected()  # a reconnect
    kinds = [(type(e).__name__, getattr(e, "seq", None)) for e in recorded]
    assert kinds == [("BookSnapshot", 1), ("BookDelta", 2), ("Trade", None), ("Gap", None),
                     ("BookSnapshot", 6), ("Gap", None), ("BookSnapshot", 6), ("Trade", None),
                     ("Gap", None), ("BookSnapshot", 7), ("Gap", None)]
    gaps = [e.reason for e in recorded if isinstance(e, Gap)]
    assert "chain break" in gaps[0] and "trades seq gap" in gaps[1]
    assert gaps[2:] == ["lost", "connection lost; resubscribed"]
    assert Replayed(recorded).holes == 0 and session.gaps == 4
