"""A block applied at once (feed.bulk) leaves the hub as its events one by one would."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from clients.client import connect
from feed.bulk import apply_block
from feed.events import BookDelta, BookSnapshot, Event, Gap, Trade
from feed.hub import Hub
from feed.ingest import ReplaySource
from replay import sample_path
from replay.blocks import PREFIX, Block, BlockWriter, Decimals
from replay.convert import convert
from replay.tickfile import TickReader
from tests.test_binance import DATA
from tests.test_ingest import serve
from tests.test_replay import replay_to_client

STAMP = 1_800_000_000_000_000_000


def state(hub: Hub) -> dict[str, Any]:
    """Everything an event can change in a hub nobody subscribes to, and the books'
    best 25 levels a side (their order, rebuilt from the dicts)."""
    return {
        "stats": (dict(hub.stats.events), hub.stats.ignored_deltas),
        "symbols": {symbol: (s.book.bids.sizes, s.book.asks.sizes, s.book.seq,
                             s.book.source_seq, s.book.ts_event, s.book.ts_recv, s.book.valid,
                             s.trades.seq, s.book.bids.top(25), s.book.asks.top(25))
                    for symbol, s in hub.symbols.items()},
    }


def blocks_of(events: Sequence[Event], size: int) -> Iterator[Block]:
    """``events`` in blocks of ``size``, as a reader gives them."""
    writer = BlockWriter(size)
    encoded = [block for event in events if (block := writer.add(event)) is not None]
    if (last := writer.flush()) is not None:
        encoded.append(last)
    data, at, decimals = b"".join(encoded), 0, Decimals()
    while at < len(data):  # (one add may give two blocks)
        _, count, head, body = PREFIX.unpack_from(data, at)
        at += PREFIX.size
        yield Block(count, data[at:at + head], data[at + head:at + head + body], decimals)
        at += head + body


def compare(events: Sequence[Event], size: int, passes: int = 1) -> Hub:
    """Apply ``events`` in blocks of ``size`` to one hub event by event (as a reader
    gives them: decimals canonical) and to another block by block, ``passes`` times
    (a looped replay: the source's seqs start over); the hubs must agree after every
    block, their books' order read each time as a client joining would."""
    one, bulk = Hub(clock=lambda: 0), Hub(clock=lambda: 0)
    for _ in range(passes):
        for block in blocks_of(events, size):
            for event in block.events():
                one.apply(event, STAMP)
            apply_block(bulk, block, STAMP)
            assert state(bulk) == state(one)
    return bulk


def delta(bids: tuple[tuple[str, str], ...], asks: tuple[tuple[str, str], ...] = (),
          seq: int | None = None, symbol: str = "BTC", ts: int = 1) -> BookDelta:
    return BookDelta(symbol, bids, asks, ts, ts, seq)


EDGES: list[Event] = [
    delta((("100", "1"),), seq=5),  # before any snapshot: ignored
    Trade("BTC", 1, "100", "1", "buy", 1, 1),
    BookSnapshot("BTC", (("100", "1"), ("99", "2")), (("101", "1"),), 2, 2, 10),
    delta((("100", "0"), ("98", "4"), ("100", "3")), seq=11),  # removed, then set again
    delta((("98", "0"),), (("101", "0"), ("102", "5")), seq=12),
    delta((("97", "1"),), seq=12),  # the source repeats a seq: the book's still grows
    delta((("96", "1"),), seq=None, symbol="ETH"),  # another symbol, no snapshot yet
    BookSnapshot("ETH", (), (("2000", "1"),), 3, 3, None),
    delta((("1999.5", "2"),), seq=None, symbol="ETH"),
    Gap("BTC", 4, 4, "sequence break"),
    delta((("95", "1"),), seq=13),  # after the gap: ignored until the next snapshot
    Trade("ETH", "x-1", "2000", "0.5", "sell", 5, 5),
    BookSnapshot("BTC", (("90", "1"),), (("91", "1"),), 6, 6, 7),  # seq went backwards
    delta((("90", "2"), ("12345678901234567.5", "1")), seq=8),  # a price too long for a float
    delta((("89", "1"),), (("91", "0"),), seq=9),
]


@pytest.mark.parametrize("size", [1, 2, 3, 5, len(EDGES)])
def test_snapshots_gaps_ignored_deltas_and_seqs_as_one_by_one(size: int) -> None:
    hub = compare(EDGES, size, passes=3)
    # The first pass ignores three deltas; the next ones only the one after the gap,
    # since each starts with the books the last one left.
    assert hub.stats.ignored_deltas == 3 + 1 + 1
    assert hub.book_of("BTC").bids.sizes == {"90": "2", "12345678901234567.5": "1", "89": "1"}


def test_two_spellings_of_a_price_in_one_block_are_one_price() -> None:
    spelled = [BookSnapshot("BTC", (("100.0", "1"),), (), 1, 1, 1),
               delta((("100", "2"),), seq=2), delta((("100.00", "0"),), seq=3),
               delta((("0100", "4"),), seq=4)]
    hub = compare(spelled, size=len(spelled))
    assert hub.book_of("BTC").bids.sizes == {"100": "4"}


def _events(path: Path) -> list[Event]:
    with TickReader(path) as reader:
        return list(reader)


def test_the_bundled_capture_as_one_by_one() -> None:
    events = _events(sample_path())
    compare(events, size=4096, passes=2)
    compare(events, size=97)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"real captures not found at {DATA}")
@pytest.mark.parametrize("capture", ["kraken/KRAKEN.ws.50.0", "coinbase/COINBASE.ws.28.0",
                                     "binance-usdm/ethusdt_20240808.gz"])
def test_real_captures_as_one_by_one(tmp_path: Path, capture: str) -> None:
    converted = tmp_path / "capture.ticks.zst"
    convert([DATA / capture], converted)
    compare(_events(converted), size=16384)


async def test_a_replay_nobody_watches_leaves_the_books_it_would_one_by_one(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "sample.ticks.zst"
    convert([sample_path()], path)
    source = ReplaySource([path], speed=None, loop=False)
    server, url, go = await serve(nursery, source)
    one = Hub(clock=lambda: 0)
    for event in _events(path):
        one.apply(event, STAMP)
    expected = one.book_of("BTCUSDT")
    async with connect(url) as conn:  # connected, subscribed to nothing: the hub is idle
        go.set()
        with trio.fail_after(10):
            notice = await conn.receive()
        assert (notice["type"], notice["code"]) == ("notice", "replay_end")
        await conn.subscribe("book", ["BTCUSDT"], depth=1000)
        assert (await conn.receive())["type"] == "subscribed"
        snapshot = await conn.receive()
    assert snapshot["type"] == "book_snapshot"
    assert snapshot["seq"] == expected.seq
    assert snapshot["bids"] == [list(level) for level in expected.bids.top(1000)]
    assert snapshot["asks"] == [list(level) for level in expected.asks.top(1000)]
    assert server.hub.stats.events == one.stats.events
    server.shutdown()


async def test_a_watched_replay_of_blocks_sends_what_version_1_sends(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    subscriptions = [{"channel": "book", "symbols": ["BTCUSDT"], "depth": 20},
                     {"channel": "trades", "symbols": ["BTCUSDT"]}]
    got = {}
    for version in (1, 2):
        path = tmp_path / f"v{version}.ticks.zst"
        convert([sample_path()], path, version=version)
        received = await replay_to_client(
            nursery, ReplaySource([path], speed=None, loop=False), subscriptions)
        got[version] = [(m["type"], m["seq"], m.get("bids"), m.get("asks"), m.get("price"))
                        for m in received if m["type"] != "subscribed"]
    assert len(got[1]) > 1000
    assert got[2] == got[1]
