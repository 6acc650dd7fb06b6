"""Replays through the server, as clients see them: windows of time and symbols, books
rebuilt from the real Binance captures against Binance's own ``bookTicker``, and
determinism (the same files and options give the same messages)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from clients.book import ClientBook
from clients.client import connect
from clients.messages import BookSnapshot as SnapshotMessage
from clients.messages import BookUpdate, parse_message
from feed.book import Book as FeedBook
from feed.book import BookSide
from feed.config import Config
from feed.events import BookDelta, BookSnapshot, Event, Gap, Level, Trade
from feed.ingest import ReplaySource, run_ingester
from feed.server import Server
from replay import book_tickers, open_events, sample_path
from replay import window as window_module
from replay.tickfile import TickReader, TickWriter
from replay.window import parse_time, window
from tests.test_binance import DATA, FIRST_DAY, compare_with_book_tickers, imported, need
from tests.test_server import http_get

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
ROOMY = {"client.max_queued_bytes": 1 << 30, "client.max_queue_age_ms": 600_000,
         "client.max_behind_ms": 600_000}
"""Budgets no replay here can exceed, so that no lag snapshot cuts into the stream."""


# -- parse_time and window, on their own ------------------------------------------------


@pytest.mark.parametrize(("text", "ns"), [
    ("1723161300000000000", 1723161300000000000),
    ("2024-08-08T23:55:00Z", 1723161300000000000),
    ("2024-08-08T23:55:00", 1723161300000000000),
    ("2024-08-08T23:55:00.000000001Z", 1723161300000000001),
    ("2024-08-08T23:55:00.5+01:00", 1723157700500000000),
    ("2024-08-08 23:55:00.123456789+00:00", 1723161300123456789),
    ("2024-08-08", 1723075200000000000),
    ("2024-08-08T23:55", 1723161300000000000),
    ("2024-08-08T23:55:00-0130", 1723166700000000000),
])
def test_parse_time(text: str, ns: int) -> None:
    assert parse_time(text) == ns


@pytest.mark.parametrize("text", [
    "", "yesterday", "2024-13-01T00:00:00Z", "-5", "1.5",
    "1723161300",  # seconds, not ns
    "2024-08-08T23:55.5",  # a fraction of a minute is not ISO-8601's seconds
    "2024-08-08T23:55:00.5.7Z", "2024-08-08T23:55:00+02:00:00.5", "2024-08-08.5",
    "2024-08-08T23:55:00.1234567891Z",  # ten fraction digits: below a nanosecond
    "1723161300000000000²", "9" * 5000,  # not ASCII digits; too long to be a time
])
def test_parse_time_refuses_what_is_not_a_time(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_time(text)


def market() -> list[Event]:
    """Two symbols: A with a snapshot then deltas (seq 10, 11, ...), B with a snapshot,
    a gap and no new snapshot; trades of A in between. One event per millisecond."""
    events: list[Event] = [
        BookSnapshot("A", (("100", "1"), ("99", "2")), (("101", "1"),), T0, T0, seq=10),
        BookSnapshot("B", (("5", "1"),), (("6", "1"),), T0 + MS, T0 + MS, seq=7),
    ]
    for i in range(1, 9):
        ts = T0 + (i + 1) * MS
        if i == 3:
            events.append(Gap("B", ts, ts, "sequence break"))
        elif i % 2:
            events.append(BookDelta("A", (("100", str(i + 1)),), (("102", str(i)),), ts, ts,
                                    seq=10 + i))
        else:
            events.append(Trade("A", i, "101", "1", "buy", ts, ts))
    return events


def test_a_window_starts_with_the_books_as_they_stood() -> None:
    events = market()
    start = T0 + 7 * MS  # after A's deltas seq 11 and 15, and B's gap
    got = list(window(events, start=start))
    assert got[0] == BookSnapshot(
        "A", (("100", "6"), ("99", "2")), (("101", "1"), ("102", "5")), T0 + 6 * MS, start,
        seq=15)
    assert got[1:] == [e for e in events if e.ts_recv >= start]  # B has no book: no snapshot


def test_a_window_ends_before_end_and_keeps_only_its_symbols() -> None:
    events = market()
    got = list(window(events, end=T0 + 5 * MS, symbols=["B"]))
    assert got == [events[1], events[4]]  # B's snapshot and gap; A and later events cut
    assert list(window(events, start=T0 + 100 * MS)) == []
    assert list(window(events, start=T0, end=T0)) == []


def test_a_window_without_bounds_is_the_whole_stream() -> None:
    events = market()
    assert list(window(events)) == events


# -- through the server -----------------------------------------------------------------


async def replay_to_client(
    nursery: trio.Nursery, source: ReplaySource, subscriptions: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Serve ``source`` (started only once the client has subscribed) and return
    everything a client subscribed as given receives until ``replay_end``."""
    started = trio.Event()

    async def feed(server: Server) -> None:
        await started.wait()
        await run_ingester(server, source)

    config = Config().with_overrides({"server.port": 0, **ROOMY})
    server = Server(config, feed)
    for symbol in source.symbols():
        server.hub.add_symbol(symbol)
    listening = await nursery.start(server.run)
    received: list[dict[str, Any]] = []
    async with connect(listening.url) as conn:
        for subscription in subscriptions:
            await conn.subscribe(**subscription)
            assert (await conn.receive())["type"] == "subscribed"
        started.set()
        with trio.fail_after(60):
            while True:
                message = await conn.receive()
                if message["type"] == "notice" and message["code"] == "replay_end":
                    break
                if message["type"] != "heartbeat":  # paced by the clock, not the data
                    received.append(message)
    server.shutdown()
    return received


async def test_replay_from_the_middle_serves_the_book_as_it_stood(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "m.ticks"
    with TickWriter(path, symbols=["A", "B"]) as writer:
        writer.write_all(market())
    source = ReplaySource([path], speed=None, loop=False, start=T0 + 7 * MS,
                          end=T0 + 9 * MS, symbols=["A"])
    assert source.symbols() == ["A"]
    got = await replay_to_client(nursery, source, [
        {"channel": "book", "symbols": ["A"]}, {"channel": "trades", "symbols": ["A"]}])
    assert [(m["type"], m.get("seq")) for m in got] == [
        ("book_snapshot", 15), ("trade", 1), ("book_update", 17)]
    assert got[0]["bids"] == [["100", "6"], ["99", "2"]]
    assert got[2]["prev_seq"] == 15 and got[2]["bids"] == [["100", "8"]]
    assert got[2]["asks"] == [["102", "7"]]


def test_symbols_not_in_the_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.ticks"
    with TickWriter(path, symbols=["A", "B"]) as writer:
        writer.write_all(market())
    with pytest.raises(ValueError, match="not in the files: C"):
        ReplaySource([path], speed=None, loop=False, symbols=["A", "C"]).symbols()


def renamed(src: Path, dst: Path, symbol: str) -> None:
    """A copy of a tick file with every event moved to ``symbol``: same timestamps."""
    with TickReader(src) as reader, TickWriter(dst, symbols=[symbol]) as writer:
        for event in reader:
            writer.write(dataclasses.replace(event, symbol=symbol))


def without_times(messages: list[dict[str, Any]]) -> list[bytes]:
    """Each message as orjson spells it, less ``ts_recv`` and ``ts_send`` (which say when
    this run released and sent it). Decoding keeps the key order, so this is the
    server's own byte string with those two keys taken out."""
    out = []
    for message in messages:
        out.append(orjson.dumps({k: v for k, v in message.items()
                                 if k not in ("ts_recv", "ts_send")}))
    return out


def test_the_same_replay_twice_gives_the_same_messages(tmp_path: Path) -> None:
    twin = tmp_path / "twin.ticks.zst"
    renamed(sample_path(), twin, "TWINUSDT")  # every event ties with one of the sample's
    runs = []
    for seed in ("1", "2"):  # two processes, two hash seeds: no order may hang on either
        result = subprocess.run(
            [sys.executable, "-m", "tests.replay_probe", str(sample_path()), str(twin)],
            capture_output=True, timeout=120, check=True, cwd=Path(__file__).parent.parent,
            env={**os.environ, "PYTHONHASHSEED": seed})
        runs.append(result.stdout.splitlines())
    first, second = runs
    assert len(first) > 5000
    assert first == second
    # The ties were broken by the order of the files: the sample's event first.
    trades = [orjson.loads(line) for line in first if line.startswith(b'{"type":"trade"')]
    assert [m["symbol"] for m in trades[:4]] == ["BTCUSDT", "TWINUSDT", "BTCUSDT", "TWINUSDT"]


# -- the real Binance captures, rebuilt by a client of the server -----------------------


NEEDS_DATA = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real captures not found at {DATA} (set TICKWIRE_SHARED_DATA "
                              "to the shared data folder)")
"""For async tests: a skip raised inside trio's run loses its reason."""


@NEEDS_DATA
@pytest.mark.parametrize(("name", "futures", "bridged"), FIRST_DAY)
async def test_a_client_book_agrees_with_every_book_ticker(
        nursery: trio.Nursery, name: str, futures: bool, bridged: bool) -> None:
    path = need(name)
    events = imported(name)
    symbol = events[0].symbol
    source = ReplaySource([path], speed=None, loop=False)
    got = await replay_to_client(nursery, source, [
        {"channel": "book", "symbols": [symbol], "depth": 1000}])
    assert sum(m["type"] == "book_snapshot" for m in got) == 1  # no lag, no gap
    tickers: dict[int, list[Any]] = defaultdict(list)
    for ticker in book_tickers(path):
        tickers[ticker.u].append(ticker)
    book = ClientBook(symbol, depth=1000)  # checks every prev_seq and checksum
    compared = 0
    for message in got:
        parsed = parse_message(message)
        if isinstance(parsed, SnapshotMessage):
            book.apply_snapshot(parsed)
        else:
            assert isinstance(parsed, BookUpdate)
            book.apply_update(parsed)
        bid, ask = book.bbo()
        for ticker in tickers.get(message["seq"], ()):
            assert (bid, ask) == ((ticker.bid, ticker.bid_qty), (ticker.ask, ticker.ask_qty))
            compared += 1
    # The server sends a book_update for every diff that changes the top 1000, and its
    # seq is the diff's u: every ticker the importer's own book can be checked against
    # is checked here too, less those whose diff only touched levels beyond 1000 (the
    # client has no message, hence no book, at that u).
    expected = compare_with_book_tickers(events, book_tickers(path))
    silent = deltas_outside_the_top(events, 1000)
    assert len(expected) > 500
    assert compared == sum(ticker.u not in silent for ticker in expected)


def deltas_outside_the_top(events: Sequence[Event], depth: int) -> set[int]:
    """The seqs of the deltas that leave the top ``depth`` levels of the book as they
    were: a client of that depth gets no message for them. (A level shows when it is
    in the top before or after the delta, with a different size.)"""
    book = FeedBook("X")
    silent: set[int] = set()

    def shown(side: BookSide, levels: Sequence[Level]) -> list[tuple[bool, str | None]]:
        edge = side.key_at(depth - 1)  # None: the side has fewer levels, all shown
        return [(price in side.sizes and (edge is None or side.key(price) <= edge),
                 side.sizes.get(price)) for price, _ in levels]

    for event in events:
        if isinstance(event, BookSnapshot):
            book.apply_snapshot(event, event.ts_recv)
        elif isinstance(event, BookDelta) and event.seq is not None:
            before = shown(book.bids, event.bids) + shown(book.asks, event.asks)
            book.apply_delta(event, event.ts_recv)
            after = shown(book.bids, event.bids) + shown(book.asks, event.asks)
            if not any((was or now) and size != new_size
                       for (was, size), (now, new_size) in zip(before, after, strict=True)):
                silent.add(event.seq)
    return silent


# -- Kraken and Coinbase, through the server ---------------------------------------------


@NEEDS_DATA
@pytest.mark.parametrize("name", ["kraken/KRAKEN.ws.50.0", "coinbase/COINBASE.ws.28.0"])
async def test_kraken_and_coinbase_books_reach_clients_intact(
        nursery: trio.Nursery, name: str) -> None:
    path = need(name)
    source = ReplaySource([path], speed=None, loop=False)
    symbols = source.symbols()
    assert len(symbols) == 10
    got = await replay_to_client(nursery, source, [
        {"channel": "book", "symbols": symbols, "depth": 10}])
    books = {symbol: ClientBook(symbol, depth=10) for symbol in symbols}
    for message in got:  # every prev_seq and checksum is checked on the way
        parsed = parse_message(message)
        book = books[message["symbol"]]
        if isinstance(parsed, SnapshotMessage):
            book.apply_snapshot(parsed)
        else:
            assert isinstance(parsed, BookUpdate)
            book.apply_update(parsed)
    assert sum(m["type"] == "book_snapshot" for m in got) == 10  # one each, no gap
    # The client's books end as the venue's, rebuilt here from the importer's events.
    expected = {symbol: FeedBook(symbol) for symbol in symbols}
    with open_events([path]) as events:
        for event in events:
            if isinstance(event, BookSnapshot):
                expected[event.symbol].apply_snapshot(event, event.ts_recv)
            elif isinstance(event, BookDelta):
                expected[event.symbol].apply_delta(event, event.ts_recv)
    for symbol in symbols:
        assert books[symbol].top(10) == (expected[symbol].bids.top(10),
                                         expected[symbol].asks.top(10)), symbol


async def test_folding_up_to_from_does_not_stall_the_server(
        nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.ticks"
    with TickWriter(path, symbols=["A", "B"]) as writer:
        writer.write_all(market())
    gate = threading.Event()
    fold = window_module._fold_until

    def slow_fold(*args: Any) -> Any:  # a long recording: the fold takes a while
        assert gate.wait(20), "the test never let the fold finish"
        return fold(*args)

    monkeypatch.setattr(window_module, "_fold_until", slow_fold)
    source = ReplaySource([path], speed=None, loop=False, start=T0 + 7 * MS)
    server = Server(Config().with_overrides({"server.port": 0}),
                    lambda server: run_ingester(server, source))
    listening = await nursery.start(server.run)
    async with connect(listening.url) as conn:
        try:
            with trio.fail_after(5):  # the fold runs beside the event loop, not on it
                status, body = await http_get(listening.url, "/healthz")
                assert status == 200 and orjson.loads(body)["feed"] == "running"
                await conn.subscribe("book", ["A"])
                assert (await conn.receive())["type"] == "subscribed"
        finally:
            gate.set()
        got: list[dict[str, Any]] = []
        with trio.fail_after(10):
            while not got or got[-1]["type"] != "notice":
                got.append(await conn.receive())
    assert [(m["type"], m.get("seq")) for m in got] == [
        ("book_snapshot", 15), ("book_update", 17), ("notice", None)]
    server.shutdown()
