"""The cryptofeed capture importers (replay.cryptofeed, replay.kraken, replay.coinbase):
the state machines on made-up messages, then the real Kraken and Coinbase captures in
the shared data folder, where every Kraken checksum is a check on the rebuilt book."""

from __future__ import annotations

import calendar
import functools
import gzip
import zlib
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

import replay
from feed.book import Book
from feed.decimals import BadDecimal
from feed.events import BookDelta, BookSnapshot, Event, Gap, Level, Trade
from replay.coinbase import CoinbaseImporter, CoinbaseReader, iso_ns
from replay.convert import convert
from replay.cryptofeed import (
    SHOWN_CHARS,
    BadMessage,
    BookLost,
    BookState,
    LineKind,
    shown,
    split_line,
    unix_ns,
)
from replay.kraken import KrakenImporter, KrakenLevel, KrakenReader, checksum
from replay.lines import LineStream, Problem, ProblemKind
from replay.sources import SourceKind, detect
from replay.tickfile import TickReader
from tests.test_binance import need

KRAKEN = "kraken/KRAKEN.ws.50.0"
COINBASE = "coinbase/COINBASE.ws.28.0"
KRAKEN_PAIRS = ("WAVES/EUR", "XMR/USD", "KSM/XBT", "GRT/ETH", "SC/EUR", "ETH/CHF",
                "OCEAN/XBT", "OMG/USD", "XBT/CHF", "ADA/XBT")
COINBASE_PRODUCTS = ("SKL-USD", "SKL-BTC", "BAND-GBP", "NMR-EUR", "BAND-BTC", "YFI-BTC",
                     "DASH-BTC", "NU-GBP", "CRV-EUR", "SKL-GBP")

# -- times ------------------------------------------------------------------------------


def test_unix_times_are_read_digit_by_digit() -> None:
    assert unix_ns("1618678132.3858151") == 1_618_678_132_385_815_100
    assert float("1618678132.3858151") * 1e9 != 1_618_678_132_385_815_100  # why not float
    assert unix_ns("1618678134.22945") == 1_618_678_134_229_450_000
    assert unix_ns("7") == 7_000_000_000
    assert unix_ns("0.000000001") == 1
    for bad in ("1.0000000001", "1e9", "-1", "1.", ".5", "", "1,5", "١"):
        with pytest.raises(BadMessage):
            unix_ns(bad)


def test_iso_times_are_exact() -> None:
    text = "2021-04-17T16:43:37.075687Z"
    seconds = calendar.timegm((2021, 4, 17, 16, 43, 37))
    assert iso_ns(text) == seconds * 1_000_000_000 + 75_687_000
    assert iso_ns("1970-01-01T00:00:00Z") == 0
    assert iso_ns("2000-02-29T23:59:59.123456789Z") % 1_000_000_000 == 123_456_789
    for bad in ("2021-02-30T00:00:00Z", "2021-04-17T24:00:00Z", "2021-04-17T16:43:37+00:00",
                "2021-04-17T16:43:37.1234567890Z", "2021-04-17 16:43:37Z"):
        with pytest.raises(BadMessage):
            iso_ns(bad)


def test_capture_lines() -> None:
    assert split_line(b"wss://ws.kraken.com <-> 1618678132.3858151") == (
        LineKind.CONNECTED, 1_618_678_132_385_815_100, b"")
    assert split_line(b'wss://ws.kraken.com <- 1.5: {"event":"subscribe"}') == (
        LineKind.SENT, 1_500_000_000, b'{"event":"subscribe"}')
    assert split_line(b'2.25: [1,{"a":[]}]') == (LineKind.RECEIVED, 2_250_000_000,
                                                 b'[1,{"a":[]}]')
    assert split_line(b"") == (LineKind.BLANK, 0, b"")
    for bad in (b"2.25 [1]", b"garbage", b"1.2.3: {}", b"wss://x <- nope: {}"):
        with pytest.raises(BadMessage):
            split_line(bad)


# -- Kraken, made up ---------------------------------------------------------------------

T = "1618678133.100000"
T_NS = 1_618_678_133_100_000_000


def k_snapshot(asks: list[list[str]], bids: list[list[str]], *, depth: int = 10,
               pair: str = "XBT/USD") -> list[Any]:
    return [1, {"as": [[p, v, T] for p, v in asks], "bs": [[p, v, T] for p, v in bids]},
            f"book-{depth}", pair]


class KrakenModel:
    """What the book should be, kept the obvious way, to make checksums with."""

    def __init__(self, asks: list[list[str]], bids: list[list[str]], depth: int) -> None:
        self.depth = depth
        self.asks = {Decimal(p): (p, v) for p, v in asks}
        self.bids = {Decimal(p): (p, v) for p, v in bids}

    def apply(self, side: str, price: str, volume: str) -> None:
        levels = self.asks if side == "a" else self.bids
        if Decimal(volume) == 0:
            levels.pop(Decimal(price), None)
        else:
            levels[Decimal(price)] = (price, volume)
        for key in sorted(levels, reverse=side == "a")[: max(0, len(levels) - self.depth)]:
            del levels[key]

    def checksum(self) -> int:
        asks = [self.asks[k] for k in sorted(self.asks)][:10]
        bids = [self.bids[k] for k in sorted(self.bids, reverse=True)][:10]
        text = "".join(p.replace(".", "").lstrip("0") + v.replace(".", "").lstrip("0")
                       for p, v in asks + bids)
        return zlib.crc32(text.encode())

    def update(self, *, a: Iterable[list[str]] = (), b: Iterable[list[str]] = (),
               split: bool = False, bad: bool = False, pair: str = "XBT/USD") -> list[Any]:
        """An update message for these changes, with the right checksum (or a wrong one)."""
        a, b = [[*level[:2], T, *level[2:]] for level in a], [[*level[:2], T, *level[2:]]
                                                              for level in b]
        for side, levels in (("a", a), ("b", b)):
            for price, volume, *_ in levels:
                self.apply(side, price, volume)
        c = str(self.checksum() + bad)
        payloads = [{"a": a}, {"b": b, "c": c}] if split else [{"a": a, "b": b, "c": c}]
        return [1, *payloads, f"book-{self.depth}", pair]


ASKS = [["0.05005", "0.00000500"], ["0.05010", "0.00000500"], ["0.05015", "0.00000500"]]
BIDS = [["0.05000", "0.00000500"], ["0.04995", "0.00000500"], ["0.04990", "0.00000500"]]


def test_checksum_of_a_hand_built_book() -> None:
    def level(price: str, volume: str) -> KrakenLevel:
        return KrakenLevel(price, volume, price, volume, 0)

    asks = [level("0.05005", "0.00000500"), level("0.05010", "12.3")]
    bids = [level("100.0", "0.00100000")]
    # "." removed, leading zeros stripped, asks then bids, price then volume
    assert checksum(asks, bids) == zlib.crc32(b"5005" b"500" b"5010" b"123" b"1000" b"100000")


# Kraken's WebSocket v1 book checksum guide: this book's top 10 concatenate to
# "5005500" "5010500" ... "4950500" (asks, then bids), whose CRC32 is 974947235, the "c"
# of the guide's example update. Worked out by hand, not by the rule under test.
DOC_ASKS = [["0.05005", "0.00000500"], ["0.05010", "0.00000500"], ["0.05015", "0.00000500"],
            ["0.05020", "0.00000500"], ["0.05025", "0.00000500"], ["0.05030", "0.00000500"],
            ["0.05035", "0.00000500"], ["0.05040", "0.00000500"], ["0.05045", "0.00000500"],
            ["0.05050", "0.00000500"]]
DOC_BIDS = [["0.05000", "0.00000500"], ["0.04995", "0.00000500"], ["0.04990", "0.00000500"],
            ["0.04980", "0.00000500"], ["0.04975", "0.00000500"], ["0.04970", "0.00000500"],
            ["0.04965", "0.00000500"], ["0.04960", "0.00000500"], ["0.04955", "0.00000500"],
            ["0.04950", "0.00000500"]]
DOC_CHECKSUM = "974947235"


def test_krakens_documented_checksum_example() -> None:
    assert zlib.crc32(b"".join(
        p.replace(".", "").lstrip("0").encode() + b"500" for p, _ in DOC_ASKS + DOC_BIDS
    )) == int(DOC_CHECKSUM)  # the guide's string, spelled out
    importer = KrakenImporter()
    # The snapshot lacks the worst ask and best bid, given in an update out of order
    # (the book sorts them): a matching checksum needs both, in the right places.
    importer.feed(1, k_snapshot(DOC_ASKS[:-1], DOC_BIDS[1:], depth=100))
    update = [0, {"a": [[*DOC_ASKS[-1], T]]}, {"b": [[*DOC_BIDS[0], T]], "c": DOC_CHECKSUM},
              "book-100", "XBT/USD"]
    [delta] = importer.feed(2, update)
    assert isinstance(delta, BookDelta)
    assert importer.verified == 1 and importer.problems == []
    # The strings as sent count: the same book with "0.0000050" is another checksum.
    importer.feed(3, k_snapshot(DOC_ASKS[:-1], DOC_BIDS[1:], depth=100))
    update[2] = {"b": [[DOC_BIDS[0][0], "0.0000050", T]], "c": DOC_CHECKSUM}
    [gap] = importer.feed(4, update)
    assert isinstance(gap, Gap) and gap.reason.startswith("checksum mismatch")


def test_kraken_book_updates_are_checked_and_emitted() -> None:
    importer = KrakenImporter()
    model = KrakenModel(ASKS, BIDS, depth=10)
    [snap] = importer.feed(1, k_snapshot(ASKS, BIDS))
    assert snap == BookSnapshot("XBT/USD", (("0.05", "0.000005"), ("0.04995", "0.000005"),
                                            ("0.0499", "0.000005")),
                                (("0.05005", "0.000005"), ("0.0501", "0.000005"),
                                 ("0.05015", "0.000005")), T_NS, 1)
    [delta] = importer.feed(2, model.update(a=[["0.05005", "0.00000000"]],
                                            b=[["0.05001", "1.0", "r"]], split=True))
    assert delta == BookDelta("XBT/USD", (("0.05001", "1"),), (("0.05005", "0"),), T_NS, 2)
    unchecked = [1, {"b": [["0.05001", "0", T]]}, "book-10", "XBT/USD"]
    assert [type(e) for e in importer.feed(3, unchecked)] == [BookDelta]  # no "c": applied
    model.apply("b", "0.05001", "0")
    [delta] = importer.feed(4, model.update(b=[["0.05001", "1.0"]]))
    assert isinstance(delta, BookDelta) and delta.bids == (("0.05001", "1"),)
    assert importer.verified == 2
    assert importer.problems == []
    assert importer.top("XBT/USD", 1) == ([("0.05001", "1")], [("0.0501", "0.000005")])


def test_a_kraken_checksum_mismatch_is_a_gap_until_the_next_snapshot() -> None:
    importer = KrakenImporter()
    model = KrakenModel(ASKS, BIDS, depth=10)
    importer.feed(1, k_snapshot(ASKS, BIDS))
    [gap] = importer.feed(2, model.update(b=[["0.05001", "1.0"]], bad=True))
    assert isinstance(gap, Gap)
    assert (gap.symbol, gap.ts_recv, gap.ts_event) == ("XBT/USD", 2, T_NS)
    assert gap.reason.startswith("checksum mismatch")
    assert [kind for kind, _ in importer.problems] == [ProblemKind.CHECKSUM]
    assert importer.state("XBT/USD") is BookState.LOST
    assert importer.feed(3, model.update(b=[["0.05002", "1.0"]])) == []
    [snap] = importer.feed(4, k_snapshot(ASKS, BIDS))
    assert isinstance(snap, BookSnapshot)
    model = KrakenModel(ASKS, BIDS, depth=10)
    assert [type(e) for e in importer.feed(5, model.update(b=[["0.05002", "1.0"]]))] == [
        BookDelta]


def test_kraken_truncates_to_depth_with_explicit_removals() -> None:
    importer = KrakenImporter()
    model = KrakenModel(ASKS, BIDS, depth=3)
    book = Book("XBT/USD")
    snap = importer.feed(1, k_snapshot(ASKS, BIDS, depth=3))[0]
    assert isinstance(snap, BookSnapshot)
    book.apply_snapshot(snap, 1)
    updates = [
        model.update(a=[["0.05003", "2.0"]]),  # pushes the worst ask (0.05015) out
        model.update(b=[["0.04980", "2.0"]]),  # worse than the 3 bids held: in and out
        model.update(a=[["0.05010", "0"]], b=[["0.05002", "1.0"], ["0.05001", "1"]]),
    ]
    deltas = []
    for ts, message in enumerate(updates, 2):
        [delta] = importer.feed(ts, message)
        assert isinstance(delta, BookDelta)
        book.apply_delta(delta, ts)
        deltas.append(delta)
        assert (book.bids.top(100), book.asks.top(100)) == importer.top("XBT/USD", 100)
    assert importer.verified == 3
    assert deltas[0].asks == (("0.05003", "2"), ("0.05015", "0"))
    assert deltas[1].bids == (("0.0498", "0"),)
    assert deltas[2].bids == (("0.05002", "1"), ("0.05001", "1"), ("0.0499", "0"),
                              ("0.04995", "0"))
    assert book.bids.top(100) == [("0.05002", "1"), ("0.05001", "1"), ("0.05", "0.000005")]
    assert len(book.asks) == 2  # a deletion leaves room, nothing is republished here


def test_kraken_update_before_its_snapshot_and_other_messages() -> None:
    importer = KrakenImporter()
    model = KrakenModel([], [], depth=10)
    assert importer.feed(1, {"event": "heartbeat"}) == []
    assert importer.feed(1, [5, {"a": "1"}, "spread", "XBT/USD"]) == []
    [gap] = importer.feed(2, model.update(a=[["1", "1"]]))
    assert gap == Gap("XBT/USD", T_NS, 2, "no snapshot")
    assert importer.feed(3, model.update(a=[["2", "1"]])) == []  # once only
    assert importer.problems == []


def test_kraken_trades() -> None:
    message = [0, [["5541.20000", "0.15850568", "1534614057.321597", "s", "l", ""],
                   ["6060.00000", "0.02455000", "1534614057.324998", "b", "m", ""]],
               "trade", "XBT/USD"]
    assert KrakenImporter().feed(9, message) == [
        Trade("XBT/USD", "1534614057.321597-0", "5541.2", "0.15850568", "sell",
              1_534_614_057_321_597_000, 9),
        Trade("XBT/USD", "1534614057.324998-1", "6060", "0.02455", "buy",
              1_534_614_057_324_998_000, 9),
    ]


@pytest.mark.parametrize("message", [
    [1, [["1", "1", T, "x", "l", ""]], "trade", "XBT/USD"],
    [1, {"as": [["1", "1"]], "bs": []}, "book-10", "XBT/USD"],  # a snapshot, not an update
    [1, {"a": []}, "book-10", 7],
    [1, "book-10", "XBT/USD"],
    {"no": "event"},
    "text",
])
def test_bad_kraken_messages_raise_and_leave_the_book_alone(message: Any) -> None:
    importer = KrakenImporter()
    model = KrakenModel(ASKS, BIDS, depth=10)
    importer.feed(1, k_snapshot(ASKS, BIDS))
    before = importer.top("XBT/USD", 100)
    with pytest.raises(BadMessage):
        importer.feed(2, message)
    with pytest.raises(BadDecimal):  # an update of a pair with no book yet
        importer.feed(2, [1, {"a": [["1e", "1", T]], "c": "1"}, "book-10", "ETH/USD"])
    assert importer.state("ETH/USD") is BookState.AWAITING
    assert importer.top("XBT/USD", 100) == before
    assert importer.state("XBT/USD") is BookState.LIVE
    assert len(importer.feed(3, model.update(b=[["0.05001", "1"]]))) == 1


@pytest.mark.parametrize(("message", "cause"), [
    ([1, {"a": [["1", "1", T]], "c": "x"}, "book-10", "XBT/USD"], BadMessage),
    ([1, {"a": [["1", "1"]], "c": "1"}, "book-10", "XBT/USD"], BadMessage),
    ([1, {"a": [[1.5, "1", T]], "c": "1"}, "book-10", "XBT/USD"], BadMessage),
    ([1, {"a": [["1", "1", "yesterday"]], "c": "1"}, "book-10", "XBT/USD"], BadMessage),
    ([1, {"a": [["1e", "1", T]], "c": "1"}, "book-10", "XBT/USD"], BadDecimal),
    ([1, {"a": []}, "book-ten", "XBT/USD"], BadMessage),
    ([1, {"a": []}, ["b"], "book-10", "XBT/USD"], BadMessage),
])
def test_an_unreadable_kraken_update_loses_a_live_book_at_once(
        message: Any, cause: type[Exception]) -> None:
    importer = KrakenImporter()
    model = KrakenModel(ASKS, BIDS, depth=10)
    importer.feed(1, k_snapshot(ASKS, BIDS))
    with pytest.raises(BookLost) as caught:
        importer.feed(2, message)
    assert type(caught.value.cause) is cause
    assert caught.value.gap == Gap("XBT/USD", 2, 2, f"unreadable update: {caught.value.cause}")
    assert importer.state("XBT/USD") is BookState.LOST
    assert importer.top("XBT/USD") == ([], [])
    assert importer.feed(3, model.update(b=[["0.05001", "1"]])) == []  # not checked
    with pytest.raises(type(caught.value.cause)):  # a lost book has nothing more to lose
        importer.feed(4, message)
    importer.feed(5, k_snapshot(ASKS, BIDS))
    model = KrakenModel(ASKS, BIDS, depth=10)
    assert [type(e) for e in importer.feed(6, model.update(b=[["0.05001", "1"]]))] == [
        BookDelta]
    assert importer.problems == []


# -- Coinbase, made up -------------------------------------------------------------------

TIME = "2021-04-17T16:43:37.075687Z"


def cb(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "product_id": "SKL-USD", **fields}


def match(trade_id: int, maker: str, kind: str = "match") -> dict[str, Any]:
    return cb(kind, trade_id=trade_id, side=maker, size="450.0", price="0.7910", time=TIME,
              maker_order_id="m", taker_order_id="t", sequence=1)


def test_coinbase_book_and_trades() -> None:
    importer = CoinbaseImporter()
    out: list[Event] = []
    for ts, message in enumerate([
        {"type": "subscriptions", "channels": []},
        match(1, "buy", "last_match"),  # history: not a trade
        cb("snapshot", bids=[["0.7900", "10.0"]], asks=[["0.7920", "5"]]),
        cb("l2update", changes=[["buy", "0.7901", "1.50"], ["sell", "0.7920", "0.00000000"]],
           time=TIME),
        match(2, "sell"),  # the maker sold: the aggressor bought
        match(3, "buy"),
        cb("ticker", price="0.791", time=TIME),
    ], 1):
        out += importer.feed(ts, message)
    ns = iso_ns(TIME)
    assert out == [
        BookSnapshot("SKL-USD", (("0.79", "10"),), (("0.792", "5"),), 3, 3),
        BookDelta("SKL-USD", (("0.7901", "1.5"),), (("0.792", "0"),), ns, 4),
        Trade("SKL-USD", 2, "0.791", "450", "buy", ns, 5),
        Trade("SKL-USD", 3, "0.791", "450", "sell", ns, 6),
    ]


def test_coinbase_update_before_its_snapshot_is_one_gap() -> None:
    importer = CoinbaseImporter()
    update = cb("l2update", changes=[["buy", "1", "1"]], time=TIME)
    assert importer.feed(1, update) == [Gap("SKL-USD", iso_ns(TIME), 1, "no snapshot")]
    assert importer.feed(2, update) == []
    assert importer.state("SKL-USD") is BookState.LOST
    importer.feed(3, cb("snapshot", bids=[], asks=[]))
    assert [type(e) for e in importer.feed(4, update)] == [BookDelta]


@pytest.mark.parametrize("message", [
    cb("l2update", changes=[["bid", "1", "1"]], time=TIME),
    cb("l2update", changes=[["buy", "1", "1"]]),
    cb("l2update", changes=[["buy", 1, "1"]], time=TIME),
    cb("snapshot", bids=[["1", "1", "1"]], asks=[]),
    match(1, "maker"),
    {**match(1, "buy"), "trade_id": "1"},
    {**match(1, "buy"), "side": ["buy"]},
    [],
    {"no": "type"},
])
def test_bad_coinbase_messages_raise(message: Any) -> None:
    importer = CoinbaseImporter()
    with pytest.raises(BadMessage):
        importer.feed(1, message)
    assert importer.state("SKL-USD") is BookState.AWAITING


@pytest.mark.parametrize(("message", "cause"), [
    (cb("l2update", changes=[["bid", "1", "1"]], time=TIME), BadMessage),
    (cb("l2update", changes=[["buy", "1", "1", "1"]], time=TIME), BadMessage),
    (cb("l2update", changes=[["buy", 1, "1"]], time=TIME), BadMessage),
    (cb("l2update", changes="none", time=TIME), BadMessage),
    (cb("l2update", changes=[["sell", "0.5", "-1"]], time=TIME), BadDecimal),
    (cb("l2update", changes=[["buy", "1", "1"]]), BadMessage),
    (cb("l2update", changes=[["buy", "1", "1"]], time="yesterday"), BadMessage),
])
def test_an_unreadable_coinbase_update_loses_a_live_book(
        message: dict[str, Any], cause: type[Exception]) -> None:
    importer = CoinbaseImporter()
    snapshot = cb("snapshot", bids=[["1", "1"]], asks=[["2", "1"]])
    good = cb("l2update", changes=[["buy", "1", "2"]], time=TIME)
    importer.feed(1, snapshot)
    with pytest.raises(BookLost) as caught:
        importer.feed(2, message)
    assert type(caught.value.cause) is cause
    assert caught.value.gap == Gap("SKL-USD", 2, 2, f"unreadable update: {caught.value.cause}")
    assert importer.state("SKL-USD") is BookState.LOST
    assert importer.feed(3, good) == []
    with pytest.raises(type(caught.value.cause)):  # a lost book has nothing more to lose
        importer.feed(4, message)
    importer.feed(5, snapshot)
    assert [type(e) for e in importer.feed(6, good)] == [BookDelta]


# -- capture files, made up --------------------------------------------------------------


def capture_text(endpoint: str, sent: list[Any], received: list[tuple[str, Any]]) -> bytes:
    lines = [f"{endpoint} <-> 1618678132.3858151".encode()]
    lines += [f"{endpoint} <- 1618678132.8253062: ".encode() + orjson.dumps(m) for m in sent]
    lines += [t.encode() + b": " + orjson.dumps(m) for t, m in received]
    return b"".join(line + b"\n" for line in lines)


def test_a_damaged_kraken_capture_reports_with_positions(tmp_path: Path) -> None:
    model = KrakenModel(ASKS, BIDS, depth=10)
    good = model.update(b=[["0.05001", "1"]])
    text = capture_text(
        "wss://ws.kraken.com",
        [{"event": "subscribe", "pair": ["XBT/USD"], "subscription": {"name": "book"}}],
        [("1618678133.1", {"event": "heartbeat"}), ("1618678133.2", k_snapshot(ASKS, BIDS)),
         ("1618678133.3", good)])
    lines = text.split(b"\n")
    garbage = [b"\x00\x17 not a line", b"1618678133.4: [1, {",  # a pair with no book yet:
               b'1618678133.5: [1, {"a": [["x", "1", "1.0"]], "c": "1"}, "book-10", "ETH/USD"]']
    mismatch = b"1618678133.6: " + orjson.dumps(model.update(b=[["0.05002", "1"]], bad=True))
    data = b"\n".join([*lines[:4], *garbage, lines[4], mismatch, b"", b""]) + b"\n"
    path = tmp_path / "KRAKEN.ws.1.0"
    path.write_bytes(data)
    assert detect(path) is SourceKind.KRAKEN
    assert KrakenReader.symbols(path) == ("XBT/USD",)
    with KrakenReader(path) as reader:
        events = list(reader)
    assert [type(e) for e in events] == [BookSnapshot, BookDelta, Gap]
    assert events[0].ts_recv == 1_618_678_133_200_000_000
    assert reader.malformed == 3
    offsets = [0]
    for line in data.split(b"\n"):
        offsets.append(offsets[-1] + len(line) + 1)
    assert [(p.kind, p.line, p.offset) for p in reader.problems] == [
        (ProblemKind.MALFORMED, 5, offsets[4]),
        (ProblemKind.MALFORMED, 6, offsets[5]),
        (ProblemKind.BAD_DECIMAL, 7, offsets[6]),
        (ProblemKind.CHECKSUM, 9, offsets[8]),
    ]
    # Cut inside the last update: every complete line before the cut is read.
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(data)[:-20])
    problems: list[Problem] = []
    with KrakenReader(cut, problems) as reader:
        assert [type(e) for e in reader] == [BookSnapshot, BookDelta]
    assert problems[-1].kind is ProblemKind.TRUNCATED


def test_an_unreadable_update_in_a_capture_is_reported_and_a_gap(tmp_path: Path) -> None:
    book = cb("snapshot", bids=[["1", "1"]], asks=[["2", "1"]])
    other = {**book, "product_id": "SKL-BTC"}
    update = cb("l2update", changes=[["buy", "1", "2"]], time=TIME)
    path = tmp_path / "COINBASE.ws.1.0"
    path.write_bytes(capture_text("wss://ws-feed.pro.coinbase.com", [], [
        ("1.0", book), ("1.1", other),
        ("1.2", cb("l2update", changes=[["buy", "1", "1e"]], time=TIME)),  # line 4
        ("1.3", update), ("1.4", {**update, "product_id": "SKL-BTC"}),
        ("1.5", cb("l2update", changes=[["buy", "1"]], time=TIME)),  # lost: no Gap
        ("1.6", book), ("1.7", update)]))
    with CoinbaseReader(path) as reader:
        events = list(reader)
    assert [(type(e).__name__, e.symbol, e.ts_recv // 100_000_000) for e in events] == [
        ("BookSnapshot", "SKL-USD", 10), ("BookSnapshot", "SKL-BTC", 11),
        ("Gap", "SKL-USD", 12), ("BookDelta", "SKL-BTC", 14),
        ("BookSnapshot", "SKL-USD", 16), ("BookDelta", "SKL-USD", 17)]
    assert isinstance(events[2], Gap)
    assert events[2].reason == "unreadable update: not a decimal number: '1e'"
    assert [(p.kind, p.line, p.detail) for p in reader.problems] == [
        (ProblemKind.BAD_DECIMAL, 4, "not a decimal number: '1e'"),
        (ProblemKind.MALFORMED, 7, "change ['buy', '1'] is not [buy|sell, price, size]")]
    assert reader.malformed == 2


def test_an_unreadable_kraken_update_in_a_capture_is_a_gap_at_once(tmp_path: Path) -> None:
    model = KrakenModel(ASKS, BIDS, depth=10)
    path = tmp_path / "KRAKEN.ws.1.0"
    path.write_bytes(capture_text("wss://ws.kraken.com", [], [
        ("1.0", k_snapshot(ASKS, BIDS)),
        ("1.1", [1, {"b": [["0.05001", "1", T]], "c": 5}, "book-10", "XBT/USD"]),
        ("1.2", model.update(b=[["0.05002", "1"]]))]))  # would not match: 0.05001 is lost
    with KrakenReader(path) as reader:
        events = list(reader)
    reason = """unreadable update: "c" must be a checksum in decimal digits, got 5"""
    assert events[1:] == [Gap("XBT/USD", 1_100_000_000, 1_100_000_000, reason)]
    assert [(p.kind, p.line) for p in reader.problems] == [(ProblemKind.MALFORMED, 3)]
    assert reader.importer.verified == 0


HUGE = 1 << 20


@pytest.mark.parametrize("message", [
    cb("l2update", changes=[["buy", "9" * HUGE + "x", "1"]], time=TIME),
    cb("l2update", changes=[["buy", "1", "1", "x" * HUGE]], time=TIME),
    cb("l2update", changes=[["buy", "1", ["x"] * HUGE]], time=TIME),
    b'{"type": "l2update", "product_id": "SKL-USD", "changes": [' + b"[" * 1000 + b"]" * 1000
    + b"]}",  # nested as deep as orjson reads, deeper than repr can go
    cb("l2update", changes=[["buy", "1", "1"]], time="2" * HUGE),
    cb("l2update", changes=[["buy", "1", "1"]], time=TIME, product_id=[["x" * HUGE]]),
    cb("l2update", changes={"x" * HUGE: 1}, time=TIME),
    cb("snapshot", bids=[["1", "1", "x" * HUGE]], asks=[]),
    match(2, "x" * HUGE),
    [1, {"a": [["1", "1", T]], "c": "9" * HUGE + "x"}, "book-10", "SKL-USD"],
    [1, {"a": [["1", "1", T, "r", "x" * HUGE]]}, "book-10", "SKL-USD"],
    [1, {"a": []}, "book-" + "x" * HUGE, "SKL-USD"],
    [1, [["1", "1", "2" * HUGE, "b"]], "trade", "SKL-USD"],
])
def test_a_huge_bad_value_gives_a_short_detail(tmp_path: Path, message: Any) -> None:
    venue = "ws.kraken.com" if isinstance(message, list) else "ws-feed.pro.coinbase.com"
    body = message if isinstance(message, bytes) else orjson.dumps(message)
    path = tmp_path / "capture"
    path.write_bytes(capture_text(f"wss://{venue}", [], []) + b"1.0: " + body + b"\n"
                     + b"1" * HUGE + b": {}\n")  # and a huge receive time
    reader: KrakenReader | CoinbaseReader
    reader = KrakenReader(path) if "kraken" in venue else CoinbaseReader(path)
    with reader:
        assert list(reader) == []
    assert reader.malformed == 2
    assert all(len(p.detail) < 2 * SHOWN_CHARS for p in reader.problems), reader.problems


def test_shown_bounds_what_it_echoes() -> None:
    level = ["0.05005", "0.00000500", "1618678133.100000", "r"]
    assert shown(level) == repr(level)
    assert shown(None) == "None"
    for value in ("x" * HUGE, ["x"] * HUGE, {"a": "x" * HUGE},
                  orjson.loads(b"[" * 1000 + b"]" * 1000)):
        assert len(shown(value)) <= SHOWN_CHARS


def test_a_kraken_trade_capture_converts_to_a_tick_file_and_back(tmp_path: Path) -> None:
    trades = [0, [["5541.2", "0.1585", "1534614057.321597", "s", "l", ""]], "trade", "XBT/USD"]
    path = tmp_path / "KRAKEN.ws.2.0"
    path.write_bytes(capture_text("wss://ws.kraken.com", [
        {"event": "subscribe", "pair": ["XBT/USD", "ETH/USD"], "subscription": {"name": "trade"}}
    ], [("1534614057.5", trades)]))
    stats = convert([path], tmp_path / "out.ticks")
    with TickReader(tmp_path / "out.ticks") as reader:
        assert (reader.header.source, reader.header.symbols) == ("kraken", ("XBT/USD", "ETH/USD"))
        [trade] = reader
    assert stats.events == 1
    assert trade == Trade("XBT/USD", "1534614057.321597-0", "5541.2", "0.1585", "sell",
                          1_534_614_057_321_597_000, 1_534_614_057_500_000_000)


# -- the real captures -------------------------------------------------------------------


@functools.cache
def imported(name: str) -> tuple[tuple[Event, ...], int]:
    """The events of a capture, and (Kraken) how many checksums verified."""
    reader: KrakenReader | CoinbaseReader
    reader = KrakenReader(need(name)) if name == KRAKEN else CoinbaseReader(need(name))
    with reader:
        events = tuple(reader)
        assert reader.problems == []
        assert reader.malformed == 0
    verified = reader.importer.verified if isinstance(reader, KrakenReader) else 0
    return events, verified


def raw_messages(name: str) -> list[tuple[int, Any]]:
    """The received messages of a capture, read here without the importers."""
    out = []
    with LineStream(need(name)) as lines:
        for _, _, line in lines:
            if line[:1].isdigit():
                head, _, body = line.partition(b": ")
                out.append((int(Decimal(head.decode()) * 10**9), orjson.loads(body)))
    return out


def test_every_kraken_checksum_verifies() -> None:
    raw = raw_messages(KRAKEN)
    checksums = sum(isinstance(m, list) and "c" in m[-3] for _, m in raw)
    assert checksums == 4269
    events, verified = imported(KRAKEN)
    assert verified == checksums
    assert not any(isinstance(e, Gap) for e in events)
    snapshots = [e for e in events if isinstance(e, BookSnapshot)]
    assert sorted(e.symbol for e in snapshots) == sorted(KRAKEN_PAIRS)
    assert sum(isinstance(e, BookDelta) for e in events) == checksums
    assert [e.ts_recv for e in events] == [ts for ts, m in raw if isinstance(m, list)]


def test_a_book_built_from_the_kraken_events_stays_equal_to_krakens() -> None:
    books = {pair: Book(pair) for pair in KRAKEN_PAIRS}
    compared = 0
    with KrakenReader(need(KRAKEN)) as reader:
        for event in reader:  # lazy: the importer has just read this event's line
            book = books[event.symbol]
            if isinstance(event, BookSnapshot):
                book.apply_snapshot(event, event.ts_recv)
            elif isinstance(event, BookDelta):
                assert book.apply_delta(event, event.ts_recv) is not None
            top: tuple[list[Level], list[Level]] = (book.bids.top(10), book.asks.top(10))
            assert top == reader.importer.top(event.symbol)
            compared += 1
        for pair, book in books.items():
            assert (book.bids.top(2000), book.asks.top(2000)) == reader.importer.top(pair, 2000)
    assert compared == 4279


def test_coinbase_books_and_trades() -> None:
    raw = raw_messages(COINBASE)
    events, _ = imported(COINBASE)
    snapshots = [e for e in events if isinstance(e, BookSnapshot)]
    assert sorted(e.symbol for e in snapshots) == sorted(COINBASE_PRODUCTS)
    assert all(e.ts_event == e.ts_recv for e in snapshots)
    updates = [(ts, m) for ts, m in raw if m["type"] == "l2update"]
    deltas = [e for e in events if isinstance(e, BookDelta)]
    assert len(deltas) == len(updates) == 9719
    assert [(e.ts_recv, e.symbol) for e in deltas] == [(ts, m["product_id"]) for ts, m in updates]
    assert not any(isinstance(e, Gap) for e in events)
    matches = {m["trade_id"]: m for _, m in raw if m["type"] == "match"}
    trades = [e for e in events if isinstance(e, Trade)]
    assert len(trades) == len(matches) == 97
    for trade in trades:
        maker = matches[trade.trade_id]["side"]
        assert trade.side == ("buy" if maker == "sell" else "sell")
    last_matches = {m["trade_id"] for _, m in raw if m["type"] == "last_match"}
    assert len(last_matches) == 10 and not last_matches & {e.trade_id for e in trades}


@pytest.mark.parametrize(("name", "kind", "symbols"), [
    (KRAKEN, SourceKind.KRAKEN, KRAKEN_PAIRS), (COINBASE, SourceKind.COINBASE, COINBASE_PRODUCTS)])
def test_open_events_and_convert(tmp_path: Path, name: str, kind: SourceKind,
                                 symbols: tuple[str, ...]) -> None:
    path = need(name)
    assert detect(path) is kind
    with replay.open_events([path]) as stream:
        assert stream.symbols() == symbols
        assert tuple(stream) == imported(name)[0]
    out = tmp_path / "out.ticks.zst"
    stats = convert([path], out)
    assert (stats.events, stats.problems) == (len(imported(name)[0]), ())
    with TickReader(out) as reader:
        assert (reader.header.source, reader.header.symbols) == (kind.value, symbols)
        assert tuple(reader) == imported(name)[0]
        assert reader.problems == []


def test_open_events_merges_kraken_and_coinbase() -> None:
    with replay.open_events([need(KRAKEN), need(COINBASE)]) as stream:
        assert stream.symbols() == KRAKEN_PAIRS + COINBASE_PRODUCTS
        merged = list(stream)
    assert len(merged) == len(imported(KRAKEN)[0]) + len(imported(COINBASE)[0])
    assert [e.ts_recv for e in merged] == sorted(e.ts_recv for e in merged)


def test_a_cut_gzip_copy_reads_up_to_the_cut(tmp_path: Path) -> None:
    data = need(KRAKEN).read_bytes()
    cut = tmp_path / "KRAKEN.ws.50.0.gz"
    compressed = gzip.compress(data)
    cut.write_bytes(compressed[: len(compressed) * 3 // 4])
    problems: list[Problem] = []
    with KrakenReader(cut, problems) as reader:
        events = list(reader)
    full, _ = imported(KRAKEN)
    assert 10 < len(events) < len(full)
    assert tuple(events) == full[: len(events)]
    [problem] = problems
    assert problem.kind is ProblemKind.TRUNCATED
    assert data[problem.offset - 1: problem.offset] == b"\n"  # the start of the cut line
    assert data.count(b"\n", 0, problem.offset) == problem.line - 1


def test_garbage_in_a_coinbase_copy_is_skipped_with_positions(tmp_path: Path) -> None:
    lines = need(COINBASE).read_bytes().split(b"\n")
    garbage = [b"\xff\xfe garbage", b"1618677820.5: {\"type\": ", b"1618677820.6: [1, 2]"]
    damaged = lines[:5000] + garbage + lines[5000:]
    path = tmp_path / "COINBASE.ws.1.0"
    path.write_bytes(b"\n".join(damaged))
    with CoinbaseReader(path) as reader:
        events = tuple(reader)
    assert events == imported(COINBASE)[0]
    assert reader.malformed == 3
    offset = sum(len(line) + 1 for line in lines[:5000])
    assert [(p.kind, p.line) for p in reader.problems] == [
        (ProblemKind.MALFORMED, line) for line in (5001, 5002, 5003)]
    assert reader.problems[0].offset == offset


@pytest.mark.parametrize("naming", [False, True], ids=["pair unknown", "pair known"])
def test_a_lost_kraken_update_is_a_gap(tmp_path: Path, naming: bool) -> None:
    """A line too damaged to name its pair is caught by the pair's next checksum; an
    update that names its pair but cannot be read is a Gap at once."""
    lines = need(KRAKEN).read_bytes().split(b"\n")
    # Lose an update that changed its pair's top 10 (its checksum is not the previous
    # one) and whose prices the pair's next update leaves alone.
    updates: dict[str, list[tuple[int, str, set[str]]]] = {}
    for i, line in enumerate(lines):
        if b'"c":"' in line:
            message = orjson.loads(line.partition(b": ")[2])
            prices = {level[0] for payload in message[1:-2]
                      for level in payload.get("a", []) + payload.get("b", [])}
            updates.setdefault(message[-1], []).append((i, message[-3]["c"], prices))
    index, pair = min(
        (now[0], pair)
        for pair, seen in updates.items()
        for before, now, after in zip(seen, seen[1:], seen[2:], strict=False)
        if now[0] > 2000 and before[1] != now[1] and not now[2] & after[2]
    )
    if naming:  # a negative price
        lines[index] = lines[index].replace(b'[["', b'[["-', 1)
    else:
        lines[index] = b"1618678150.0: \x00garbage"
    path = tmp_path / "KRAKEN.ws.1.0"
    path.write_bytes(b"\n".join(lines))
    with KrakenReader(path) as reader:
        events = list(reader)
    [gap] = [e for e in events if isinstance(e, Gap)]
    assert gap.symbol == pair
    if naming:
        assert [(p.kind, p.line) for p in reader.problems] == [
            (ProblemKind.BAD_DECIMAL, index + 1)]
        assert gap.reason.startswith("unreadable update: not a finite non-negative decimal")
        assert gap.ts_recv == unix_ns(lines[index].partition(b": ")[0].decode())
    else:
        assert (reader.problems[0].kind, reader.problems[0].line) == (
            ProblemKind.MALFORMED, index + 1)
        assert [p.kind for p in reader.problems][1:] == [ProblemKind.CHECKSUM]
        assert gap.reason.startswith("checksum mismatch")
    after = events[events.index(gap):]
    assert not any(isinstance(e, BookDelta) and e.symbol == pair for e in after)
    others = [e for e in imported(KRAKEN)[0] if e.symbol != pair]
    assert [e for e in events if e.symbol != pair] == others
