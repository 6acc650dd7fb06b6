"""The ingester: tick files replayed through the server to a client."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import pytest
import trio
import trio.testing

from clients.client import connect
from feed.config import Config
from feed.events import BookDelta, BookSnapshot, Trade
from feed.ingest import RELEASE_GRAIN_S, ReplaySource, SyntheticSource, _wait_for, run_ingester
from feed.server import Server
from feed.timer import PreciseTimer
from feed.wsconn import Flusher, WebSocketConnection
from replay.tickfile import TickWriter

T0 = 1_700_000_000_000_000_000  # the recording's own time, 2023


def write_ticks(path: Path, deltas: int = 20) -> None:
    with TickWriter(path, source="test", symbols=["BTC"]) as writer:
        writer.write(BookSnapshot("BTC", (("100", "1"),), (("101", "1"),), T0, T0, seq=1000))
        for i in range(deltas):
            ts = T0 + (i + 1) * 1_000_000
            writer.write(BookDelta("BTC", (("100", str(i + 2)),), (), ts, ts, seq=1001 + i))
            writer.write(Trade("BTC", i, "101", "0.5", "buy", ts, ts))


async def serve(nursery: trio.Nursery, source: ReplaySource | SyntheticSource,
                ) -> tuple[Server, str, trio.Event]:
    started = trio.Event()

    async def feed(server: Server) -> None:
        await started.wait()  # the test subscribes first, so it sees the whole replay
        await run_ingester(server, source)

    server = Server(Config().with_overrides({"server.port": 0}), feed)
    for symbol in source.symbols():
        server.hub.add_symbol(symbol)
    listening = await nursery.start(server.run)
    return server, listening.url, started


async def test_replay_reaches_clients_and_ends_with_replay_end(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "day.ticks.zst"
    write_ticks(path)
    server, url, go = await serve(nursery, ReplaySource([path], speed=None, loop=False))
    async with connect(url) as conn:
        await conn.subscribe("book", ["BTC"])
        await conn.subscribe("trades", ["BTC"])
        await conn.receive()
        await conn.receive()
        before = time.time_ns()
        go.set()
        received = []
        with trio.fail_after(5):
            while not received or received[-1]["type"] != "notice":
                received.append(await conn.receive())
    assert received[-1]["code"] == "replay_end"
    book = [m for m in received if m["type"].startswith("book_")]
    assert book[0]["type"] == "book_snapshot" and book[0]["seq"] == 1000
    assert [m["seq"] for m in book] == list(range(1000, 1021))
    assert [m["seq"] for m in received if m["type"] == "trade"] == list(range(1, 21))
    for message in book[1:]:
        assert message["ts_event"] > T0  # the venue's time, from the file
        assert message["ts_recv"] >= before  # released now, not in 2023
        assert message["ts_send"] >= message["ts_recv"]
    assert server.feed_state == "ended"
    server.shutdown()


async def test_looping_replay_keeps_seq_increasing(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "short.ticks"
    write_ticks(path, deltas=3)
    server, url, go = await serve(nursery, ReplaySource([path], speed=None, loop=True))
    async with connect(url) as conn:
        await conn.subscribe("book", ["BTC"])
        await conn.receive()
        go.set()
        seqs = []
        reasons = []
        with trio.fail_after(5):
            while reasons.count("resync") < 2:  # the replay restarted twice
                message = await conn.receive()
                if message["type"] == "book_snapshot":
                    reasons.append(message["reason"])
                if message["type"].startswith("book_"):
                    seqs.append(message["seq"])
    # (at --speed max this client may also fall behind and get "lag" snapshots)
    assert reasons[0] == "subscribe"
    assert all(b > a for a, b in zip(seqs, seqs[1:], strict=False))
    server.shutdown()


async def test_damaged_lines_are_counted_and_skipped(nursery: trio.Nursery, tmp_path: Path) -> None:
    good = tmp_path / "good.ticks"
    write_ticks(good, deltas=2)
    lines = good.read_bytes().splitlines(keepends=True)
    damaged = tmp_path / "damaged.ticks"
    damaged.write_bytes(b"".join(lines[:2] + [b"{not json\n"] + lines[2:] + [b'{"t":"tr']))
    server, url, go = await serve(nursery, ReplaySource([damaged], speed=None, loop=False))
    async with connect(url) as conn:
        await conn.subscribe("trades", ["BTC"])
        await conn.receive()
        go.set()
        with trio.fail_after(5):
            trades = []
            while (message := await conn.receive())["type"] != "notice":
                trades.append(message)
    assert [t["seq"] for t in trades] == [1, 2]
    assert server.metrics.bad_lines == 2
    server.shutdown()


async def test_synthetic_source_stamps_its_schedule(nursery: trio.Nursery) -> None:
    server, url, go = await serve(nursery, SyntheticSource(rate=2000, symbols=2))
    async with connect(url) as conn:
        await conn.subscribe("trades", list(server.hub.symbol_list()))
        await conn.receive()
        go.set()
        with trio.fail_after(5):
            stamps = [(await conn.receive())["ts_recv"] for _ in range(20)]
    assert stamps == sorted(stamps)
    server.shutdown()


async def test_a_paced_ingester_wakes_for_its_next_event_at_most_once_per_grain(
        autojump_clock: trio.testing.MockClock) -> None:
    flusher, timer = Flusher(), PreciseTimer()
    start = trio.current_time()
    # The next event is due 0.1 ms after the last wake-up: it waits for the grain.
    await _wait_for(start + 0.0001, flusher, timer, start + RELEASE_GRAIN_S)
    assert trio.current_time() == pytest.approx(start + RELEASE_GRAIN_S)
    # An event due after the grain is woken for at its time.
    await _wait_for(start + 0.003, flusher, timer, start + 2 * RELEASE_GRAIN_S)
    assert trio.current_time() == pytest.approx(start + 0.003)
    timer.close()


class _Written:
    """Stands in for a connection: records that the flusher wrote it."""

    def __init__(self, log: list[object]) -> None:
        self.log = log

    def flush_nowait(self) -> None:
        self.log.append(self)


async def test_an_event_due_before_the_wait_begins_still_gets_its_writes_and_a_yield(
) -> None:
    # The event was not late when the ingester looked, but releasing the run's frames
    # took longer than the time left: the run's writes must still be made, and the
    # ingester must still yield, or it runs on without either (and cannot be cancelled).
    flusher, timer = Flusher(), PreciseTimer()
    written: list[object] = []
    conn = _Written(written)
    flusher.hold()
    flusher.mark(cast(WebSocketConnection, conn))
    due = trio.current_time() - 0.001
    with trio.testing.assert_checkpoints():
        await _wait_for(due, flusher, timer, due)
    assert written == [conn]
    timer.close()
