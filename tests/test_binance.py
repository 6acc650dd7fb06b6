"""The Binance importer (replay.binance, replay.capture): the sequencing rules on
made-up messages, then against the real captures in the shared data folder, where
every ``bookTicker`` is a check on the rebuilt book."""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

import replay
from feed.decimals import BadDecimal, canonical
from feed.events import BookDelta, BookSnapshot, Event, Gap, Level, Trade
from replay.binance import BadMessage, BinanceImporter, BookState
from replay.capture import BookTicker, CaptureReader, book_tickers, probe
from replay.convert import convert
from replay.lines import LineStream, ProblemKind
from replay.make_sample import CAPTURE, excerpt, make_sample
from replay.sources import open_events
from replay.tickfile import TickReader

DATA = Path(
    os.environ.get("TICKWIRE_SHARED_DATA")
    or Path(__file__).resolve().parents[2] / "shared" / "data"
)
SEC = 1_000_000_000
MS = 1_000_000

# -- made-up messages ---------------------------------------------------------------


def diff(first: int, last: int, *, prev: int | None = None, t: int = 1, sym: str = "BTCUSDT",
         bids: Iterable[list[Any]] = (), asks: Iterable[list[Any]] = ()) -> dict[str, Any]:
    data: dict[str, Any] = {"e": "depthUpdate", "E": t, "s": sym, "U": first, "u": last,
                            "b": list(bids), "a": list(asks)}
    if prev is not None:
        data["pu"] = prev
        data["T"] = t
    return {"stream": f"{sym.lower()}@depth", "data": data}


def snapshot(last_id: int, **extra: Any) -> dict[str, Any]:
    return {"lastUpdateId": last_id, "bids": [["100.10", "1.000"]], "asks": [["101", "2"]],
            **extra}


def trade(
    trade_id: int, *, maker: bool = False, sym: str = "BTCUSDT", **extra: Any
) -> dict[str, Any]:
    return {"stream": f"{sym.lower()}@trade", "data": {
        "e": "trade", "E": 5, "T": 4, "s": sym, "t": trade_id, "p": "100.50", "q": "0.010",
        "m": maker, **extra}}


def run(messages: Iterable[tuple[int, dict[str, Any]]], **kwargs: Any) -> list[Event]:
    importer = BinanceImporter(**kwargs)
    out: list[Event] = []
    for ts_recv, message in messages:
        out.extend(importer.feed(ts_recv, message))
    out.extend(importer.finish())
    return out


def book_seqs(events: Iterable[Event]) -> list[tuple[str, int | None | str]]:
    out: list[tuple[str, int | None | str]] = []
    for e in events:
        if isinstance(e, BookSnapshot | BookDelta):
            out.append((type(e).__name__, e.seq))
        elif isinstance(e, Gap):
            out.append(("Gap", e.reason.split(":")[0]))
    return out


def test_spot_buffers_diffs_before_the_snapshot_and_follows_the_rules() -> None:
    events = run([
        (10, diff(1, 5)),  # u <= lastUpdateId: dropped
        (11, diff(6, 6)),  # u == lastUpdateId: dropped (spot)
        (12, trade(1)),
        (13, diff(7, 9, bids=[["100.10", "0"]])),  # U <= 7 <= u: the first applied
        (20, snapshot(6)),
        (21, diff(10, 12)),  # U == prev u + 1
        (22, diff(13, 13)),
    ])
    assert book_seqs(events) == [("BookSnapshot", 6), ("BookDelta", 9), ("BookDelta", 12),
                                 ("BookDelta", 13)]
    assert isinstance(events[0], Trade)  # received before the snapshot, released in order
    snap, first = events[1], events[2]
    assert isinstance(snap, BookSnapshot)
    assert snap.symbol == "BTCUSDT"  # learnt from the stream: spot snapshots carry none
    assert snap.bids == (("100.1", "1"),)
    assert snap.ts_event == snap.ts_recv == 20  # spot snapshots have no time of their own
    # The buffered diff is applied when the snapshot makes it usable.
    assert isinstance(first, BookDelta)
    assert (first.ts_recv, first.ts_event, first.bids) == (20, 1 * MS, (("100.1", "0"),))
    times = [e.ts_recv for e in events]
    assert times == sorted(times)


def test_futures_rules() -> None:
    events = run([
        (1, diff(1, 5, prev=0)),  # u < lastUpdateId: dropped
        (2, diff(6, 8, prev=5)),  # U <= 8 <= u bridges; u == lastUpdateId: in the snapshot
        (3, snapshot(8, E=7, T=6)),
        (4, diff(9, 9, prev=8)),  # chains on the covered diff's u
        (5, diff(10, 12, prev=9)),
    ])
    # Every seq once: the covered diff gives no second version 8 of the book.
    assert book_seqs(events) == [("BookSnapshot", 8), ("BookDelta", 9), ("BookDelta", 12)]
    assert events[0].ts_event == 6 * MS  # futures snapshots carry T


@pytest.mark.parametrize("futures", [False, True])
def test_a_break_becomes_a_gap_and_only_a_new_snapshot_restarts(futures: bool) -> None:
    def d(first: int, last: int, prev: int) -> dict[str, Any]:
        return diff(first, last, prev=prev if futures else None)

    importer = BinanceImporter()
    out = importer.feed(1, d(1, 5, 0)) + importer.feed(2, snapshot(5 if futures else 4))
    out += importer.feed(3, d(6, 7, 5))
    out += importer.feed(4, d(9, 10, 8))  # 8 is missing
    assert importer.state("BTCUSDT") is BookState.LOST
    out += importer.feed(5, d(11, 12, 10)) + importer.feed(6, trade(1))
    # On futures the diff ending at lastUpdateId 5 is already in the snapshot.
    bridging = [] if futures else [("BookDelta", 5)]
    assert book_seqs(out) == [("BookSnapshot", 5 if futures else 4), *bridging,
                              ("BookDelta", 7), ("Gap", "sequence break")]
    assert isinstance(out[-1], Trade)  # trades go on
    gap = out[-2]
    assert isinstance(gap, Gap)
    assert gap.ts_recv == 4
    assert ("pu=7" if futures else "U=8") in gap.reason
    # A new snapshot restarts the book from the diffs buffered meanwhile.
    # The diff that showed the break is kept too: on futures it bridges (U <= 10 <= u),
    # and as it ends at lastUpdateId it adds nothing to the snapshot.
    out = importer.feed(7, snapshot(10))
    out += importer.feed(8, d(13, 14, 12))
    assert book_seqs(out) == [("BookSnapshot", 10), ("BookDelta", 12), ("BookDelta", 14)]
    assert importer.state("BTCUSDT") is BookState.LIVE
    assert importer.feed(9, d(15, 15, 14)) != []  # chained on u=14
    assert importer.state("BTCUSDT") is BookState.LIVE


def test_a_snapshot_the_diffs_do_not_reach_is_a_gap() -> None:
    events = run([(1, diff(1, 3)), (2, snapshot(10)), (3, diff(20, 22))])
    assert book_seqs(events) == [("BookSnapshot", 10), ("Gap", "sequence break")]


def test_no_snapshot_gives_one_gap_in_the_first_diffs_place() -> None:
    events = run([
        (1 * SEC, trade(1)),
        (2 * SEC, diff(100, 105, t=77)),
        (3 * SEC, trade(2)),
        (4 * SEC, diff(106, 110)),
        (13 * SEC, trade(3)),  # still within 10 s of the first diff: held
        (20 * SEC, trade(4)),  # past the wait: the Gap and the held trades go out
        (21 * SEC, diff(111, 112)),
    ])
    assert [type(e).__name__ for e in events] == ["Trade", "Gap", "Trade", "Trade", "Trade"]
    gap = events[1]
    assert isinstance(gap, Gap)
    assert (gap.reason, gap.ts_recv, gap.ts_event) == ("no snapshot", 2 * SEC, 77 * MS)
    assert [e.trade_id for e in events if isinstance(e, Trade)] == [1, 2, 3, 4]


def test_the_end_of_input_stops_the_wait() -> None:
    importer = BinanceImporter()
    assert importer.feed(1, diff(1, 2)) == []
    assert importer.feed(2, trade(1)) == []
    assert [type(e).__name__ for e in importer.finish()] == ["Gap", "Trade"]


def test_bad_messages_raise_and_leave_the_state_alone() -> None:
    importer = BinanceImporter()
    importer.feed(1, diff(1, 1, prev=0))
    importer.feed(2, snapshot(1))
    with pytest.raises(BadDecimal):
        importer.feed(3, diff(2, 3, prev=1, bids=[["1e", "1"]]))
    with pytest.raises(BadMessage):
        importer.feed(3, diff(2, 3, prev=1, bids=[[1.5, "1"]]))
    with pytest.raises(BadMessage):
        importer.feed(3, {"stream": "x", "data": {"e": "depthUpdate", "U": "2"}})
    with pytest.raises(BadMessage):
        importer.feed(3, {"something": "else"})
    assert importer.state("BTCUSDT") is BookState.LIVE
    # The skipped diff is lost data: the next one shows the break.
    assert book_seqs(importer.feed(4, diff(4, 4, prev=3))) == [("Gap", "sequence break")]


def test_a_snapshot_without_a_known_symbol_is_refused() -> None:
    with pytest.raises(BadMessage):
        BinanceImporter().feed(1, snapshot(1))
    importer = BinanceImporter()
    importer.feed(1, trade(1, sym="ETHUSDT"))
    assert importer.feed(2, snapshot(1))[0].symbol == "ETHUSDT"
    importer.feed(3, trade(2, sym="BTCUSDT"))
    with pytest.raises(BadMessage):
        importer.feed(4, snapshot(2))  # two symbols: which one?


def test_trades() -> None:
    buy, sell, fund = run([(9, trade(7)), (10, trade(8, maker=True)),
                           (11, trade(9, X="INSURANCE_FUND")), (12, trade(10, X="MARKET"))])[:3]
    assert buy == Trade("BTCUSDT", 7, "100.5", "0.01", "buy", 4 * MS, 9)
    assert isinstance(sell, Trade)
    assert sell.side == "sell"  # buyer was the maker: the aggressor sold
    assert isinstance(fund, Trade)
    assert fund.trade_id == 10  # not an order-book match: skipped


def test_capture_reader_reports_damage(tmp_path: Path) -> None:
    lines = [
        b'1 {"stream":"btcusdt@depth","data":' + orjson.dumps(diff(1, 2)["data"]) + b"}",
        b"2 " + orjson.dumps(snapshot(1)),
        b"this is not a capture line",
        b'3 {"stream":"btcusdt@bookTicker","data":{"u":2,"s":"BTCUSDT","b":"100.10",'
        b'"B":"1.0","a":"101","A":"2"}}',
        b"4 " + orjson.dumps(trade(1)),
        b"2 " + orjson.dumps(trade(2)),  # time goes backwards
    ]
    data = gzip.compress(b"".join(line + b"\n" for line in lines) + b"5 " + orjson.dumps(trade(3)))
    path = tmp_path / "cap.gz"
    path.write_bytes(data[:-12])  # cut inside the last line
    with CaptureReader(path) as reader:
        events = list(reader)
    assert book_seqs(events) == [("BookSnapshot", 1), ("BookDelta", 2)]
    assert [e.trade_id for e in events if isinstance(e, Trade)] == [1, 2]
    assert reader.malformed == 1
    assert [(p.kind, p.line) for p in reader.problems] == [
        (ProblemKind.MALFORMED, 3), (ProblemKind.OUT_OF_ORDER, 6), (ProblemKind.TRUNCATED, 7)]
    assert list(book_tickers(path)) == [BookTicker(3, "BTCUSDT", 2, "100.1", "1", "101", "2")]


# -- the real captures ------------------------------------------------------------------


def need(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"real captures not found at {DATA} (set TICKWIRE_SHARED_DATA to the "
                    "shared data folder)")
    return path


@dataclass(frozen=True)
class Raw:
    """What a capture holds, read here independently of the importer."""

    snapshot_line: int | None
    last_update_id: int | None
    diffs: tuple[tuple[int, int, int, int | None, int], ...]  # line, U, u, pu, ts_recv
    trades: int


@functools.cache
def raw_scan(name: str) -> Raw:
    snapshot_line = last_id = None
    diffs = []
    trades = 0
    with LineStream(DATA / name) as lines:
        for line_no, _, line in lines:
            if b"depthUpdate" not in line and b"lastUpdateId" not in line and b"@trade" not in line:
                continue
            ts, _, body = line.partition(b" ")
            msg = orjson.loads(body)
            if "lastUpdateId" in msg:
                snapshot_line, last_id = line_no, msg["lastUpdateId"]
            elif msg["data"]["e"] == "depthUpdate":
                d = msg["data"]
                diffs.append((line_no, d["U"], d["u"], d.get("pu"), int(ts)))
            else:
                trades += msg["data"].get("X", "MARKET") == "MARKET"
    return Raw(snapshot_line, last_id, tuple(diffs), trades)


@functools.cache
def imported(*names: str) -> tuple[Event, ...]:
    with CaptureReader([DATA / name for name in names]) as reader:
        events = tuple(reader)
        assert reader.problems == []
    return events


class Book:
    """The simplest book there is: price -> size per side, best found by looking."""

    def __init__(self, snap: BookSnapshot) -> None:
        self.bids: dict[str, tuple[Decimal, str, str]] = {}
        self.asks: dict[str, tuple[Decimal, str, str]] = {}
        self.apply(snap.bids, snap.asks)

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for price, size in levels:
                if size == "0":
                    side.pop(price, None)
                else:
                    side[price] = (Decimal(price), price, size)

    def top(self) -> tuple[str, str, str, str]:
        _, bid, bid_qty = max(self.bids.values())
        _, ask, ask_qty = min(self.asks.values())
        return bid, bid_qty, ask, ask_qty


def compare_with_book_tickers(
    events: Iterable[Event], tickers: Iterable[BookTicker]
) -> list[BookTicker]:
    """Rebuild the book; check every ticker whose ``u`` is a book ``seq``; return those."""
    by_u: dict[int, list[BookTicker]] = defaultdict(list)
    for ticker in tickers:
        by_u[ticker.u].append(ticker)
    book: Book | None = None
    compared: list[BookTicker] = []
    for event in events:
        if isinstance(event, BookSnapshot):
            book = Book(event)
        elif isinstance(event, BookDelta):
            assert book is not None, "a delta without a snapshot"
            book.apply(event.bids, event.asks)
        elif isinstance(event, Gap):
            book = None
            continue
        else:
            continue
        assert event.seq is not None
        for ticker in by_u.get(event.seq, ()):
            assert (ticker.bid, ticker.bid_qty, ticker.ask, ticker.ask_qty) == book.top(), (
                f"book at seq {event.seq} disagrees with {ticker}")
            compared.append(ticker)
    return compared


FIRST_DAY = [
    # (capture, futures, the diff bridging the snapshot was received before it)
    ("binance-spot/btcusdt_20240808.gz", False, True),
    ("binance-spot/ethusdt_20240808.gz", False, False),
    ("binance-usdm/btcusdt_20240808.gz", True, True),
    ("binance-usdm/ethusdt_20240808.gz", True, True),
    ("binance-coinm/btcusd_perp_20240808.gz", True, True),
]


@pytest.mark.parametrize(("name", "futures", "bridged_from_buffer"), FIRST_DAY)
def test_book_agrees_with_every_book_ticker(name: str, futures: bool,
                                            bridged_from_buffer: bool) -> None:
    path = need(name)
    events = imported(name)
    assert not any(isinstance(e, Gap) for e in events)
    assert sum(isinstance(e, BookSnapshot) for e in events) == 1
    compared = compare_with_book_tickers(events, book_tickers(path))
    assert len(compared) > 500


@pytest.mark.parametrize(("name", "futures", "bridged_from_buffer"), FIRST_DAY)
def test_diffs_follow_the_snapshot_by_the_rules(name: str, futures: bool,
                                                bridged_from_buffer: bool) -> None:
    need(name)
    raw = raw_scan(name)
    events = imported(name)
    book = [e for e in events if isinstance(e, BookSnapshot | BookDelta)]
    snap, first = book[0], book[1]
    assert isinstance(snap, BookSnapshot)
    last_id = raw.last_update_id
    assert last_id is not None and raw.snapshot_line is not None
    assert snap.seq == last_id
    # Every diff from the bridging one on is applied, in order; none before it. (A
    # futures bridge ending at lastUpdateId is the snapshot itself: not emitted.)
    keep = [d for d in raw.diffs if (d[2] >= last_id if futures else d[2] > last_id)]
    line, first_u, last_u, _, _ = keep[0]
    assert first_u <= (last_id if futures else last_id + 1) <= last_u
    assert (line < raw.snapshot_line) == bridged_from_buffer
    emitted = keep[1:] if last_u == last_id else keep
    assert [e.seq for e in book[1:]] == [d[2] for d in emitted]
    assert first.ts_recv == max(emitted[0][4], snap.ts_recv)
    # Trades: every order-book trade, received any time.
    trades = [e for e in events if isinstance(e, Trade)]
    assert len(trades) == raw.trades
    times = [e.ts_recv for e in events]
    assert times == sorted(times)


CONTINUATIONS = [
    ("binance-spot/btcusdt_20240808.gz", "binance-spot/btcusdt_20240809.gz"),
    ("binance-coinm/btcusd_perp_20240808.gz", "binance-coinm/btcusd_perp_20240809.gz"),
]


@pytest.mark.parametrize(("first", "continuation"), CONTINUATIONS)
def test_a_continuation_alone_has_one_gap_and_its_trades(first: str, continuation: str) -> None:
    need(continuation)
    raw = raw_scan(continuation)
    assert raw.snapshot_line is None
    events = imported(continuation)
    non_trades = [e for e in events if not isinstance(e, Trade)]
    assert len(non_trades) == 1
    gap = non_trades[0]
    assert isinstance(gap, Gap)
    assert gap.reason == "no snapshot"
    assert gap.ts_recv == raw.diffs[0][4]  # in the place of the first diff
    assert all(e.ts_recv <= gap.ts_recv for e in events[: events.index(gap)])
    assert sum(isinstance(e, Trade) for e in events) == raw.trades


@pytest.mark.parametrize(("first", "continuation"), CONTINUATIONS)
def test_a_continuation_after_its_first_file_continues_the_book(first: str,
                                                                continuation: str) -> None:
    paths = [need(first), need(continuation)]
    assert probe(paths[0]) is not None
    with open_events(paths[::-1]) as stream:  # chained by content and time, not by order
        events = list(stream)
        assert stream.problems == []
    assert not any(isinstance(e, Gap) for e in events)
    assert sum(isinstance(e, BookSnapshot) for e in events) == 1
    compared = compare_with_book_tickers(events, book_tickers(paths))
    # Tickers of the continuation file are checked too (it starts where the first ends).
    start = raw_scan(continuation).diffs[0][4]
    assert sum(ticker.ts_recv >= start for ticker in compared) > 300


def test_open_events_merges_two_captures() -> None:
    names = ["binance-spot/btcusdt_20240808.gz", "binance-spot/ethusdt_20240808.gz"]
    with open_events([need(name) for name in names]) as stream:
        assert stream.symbols() == ("BTCUSDT", "ETHUSDT")
        merged = list(stream)
    times = [e.ts_recv for e in merged]
    assert times == sorted(times)
    for name, symbol in zip(names, ["BTCUSDT", "ETHUSDT"], strict=True):
        assert [e for e in merged if e.symbol == symbol] == list(imported(name))


def test_convert_to_a_tick_file_and_back(tmp_path: Path) -> None:
    name = "binance-spot/ethusdt_20240808.gz"
    out = tmp_path / "eth.ticks.zst"
    stats = convert([need(name)], out)
    assert stats.events == len(imported(name))
    assert stats.problems == ()
    with TickReader(out) as reader:
        assert (reader.header.source, reader.header.symbols) == ("binance-spot", ("ETHUSDT",))
        assert tuple(reader) == imported(name)
        assert reader.problems == []


def test_the_bundled_sample_is_the_excerpt_make_sample_makes(tmp_path: Path) -> None:
    name = str(CAPTURE)
    need(name)
    made = tmp_path / "sample.ticks.zst"
    count = make_sample(DATA / name, made)
    with TickReader(replay.sample_path()) as bundled, TickReader(made) as fresh:
        bundled_events = list(bundled)
        assert bundled_events == list(fresh)
        assert bundled.header == fresh.header
    assert len(bundled_events) == count
    assert bundled_events == list(excerpt(imported(name), 90))
    snap, first = bundled_events[0], bundled_events[1]
    assert isinstance(snap, BookSnapshot)
    assert isinstance(first, BookDelta)
    raw = raw_scan(name)
    bridge = next(d for d in raw.diffs if d[2] > snap.seq)  # type: ignore[operator]
    assert bridge[0] < (raw.snapshot_line or 0)  # received before the snapshot
    assert (first.seq, first.ts_recv) == (bridge[2], snap.ts_recv)
    assert canonical("61837.63000000") in {price for price, _ in snap.bids}


# -- damaged copies of the real captures ------------------------------------------------


@pytest.mark.parametrize("name", ["binance-spot/btcusdt_20240808.gz",
                                  "binance-spot/btcusdt_20240809.gz"])
def test_a_cut_copy_reads_up_to_the_cut(tmp_path: Path, name: str) -> None:
    data = need(name).read_bytes()
    cut = tmp_path / "cut.gz"
    cut.write_bytes(data[: len(data) // 2])
    # What the cut file holds, decompressed independently: its complete lines.
    text = zlib.decompressobj(wbits=31).decompress(data[: len(data) // 2])
    complete = text.count(b"\n")
    with open_events([cut]) as stream:
        events = list(stream)
        problems = list(stream.problems)
    assert [(p.kind, p.line, p.offset) for p in problems] == [
        (ProblemKind.TRUNCATED, complete + 1, text.rindex(b"\n") + 1)]
    clean = imported(name)
    assert 0.3 * len(clean) < len(events) < 0.7 * len(clean)
    assert tuple(events) == clean[: len(events)]


@pytest.mark.parametrize("name", ["binance-usdm/btcusdt_20240808.gz",
                                  "binance-coinm/btcusd_perp_20240809.gz"])
def test_a_corrupt_copy_reads_up_to_the_damage(tmp_path: Path, name: str) -> None:
    data = bytearray(need(name).read_bytes())
    middle = len(data) // 2
    data[middle: middle + 64] = bytes(64)  # a run of zeros where deflate data was
    bad = tmp_path / "bad.gz"
    bad.write_bytes(bytes(data))
    with open_events([bad]) as stream:
        events = list(stream)
        problems = list(stream.problems)
    kinds = [p.kind for p in problems]
    assert kinds[-1] is ProblemKind.CORRUPT  # the stream stops there, reported
    assert set(kinds) <= {ProblemKind.CORRUPT, ProblemKind.MALFORMED}
    assert all(p.line > 1 and p.offset > 0 for p in problems)
    clean = imported(name)
    assert 0.3 * len(clean) < len(events) < 0.7 * len(clean)
    assert tuple(events) == clean[: len(events)]
