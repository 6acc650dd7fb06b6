"""Pure tests of the synthetic market: determinism, canonical decimals, and a reference
book (plain dicts, ``Decimal`` prices) that applies the stream and checks it stays
coherent: never crossed, trades at the best opposite price and settled by the next
delta, and equal to the generator's own books."""

from __future__ import annotations

import ast
import functools
import inspect
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import feed.synthetic
from feed.decimals import canonical
from feed.events import BookDelta, BookSnapshot, Level, Trade
from feed.synthetic import SyntheticMarket, symbol_names

dec = functools.cache(Decimal)
"""``Decimal`` of a price string, cached: the reference book compares prices a lot."""


@dataclass
class RefBook:
    """One symbol's book as plain dicts: price -> size, both canonical strings."""

    bids: dict[str, str] = field(default_factory=dict)
    asks: dict[str, str] = field(default_factory=dict)

    def best_bid(self) -> str:
        return max(self.bids, key=dec)

    def best_ask(self) -> str:
        return min(self.asks, key=dec)

    def as_levels(self) -> tuple[tuple[Level, ...], tuple[Level, ...]]:
        bids = sorted(self.bids.items(), key=lambda level: Decimal(level[0]), reverse=True)
        asks = sorted(self.asks.items(), key=lambda level: Decimal(level[0]))
        return tuple(bids), tuple(asks)


def apply_levels(side: dict[str, str], levels: tuple[Level, ...]) -> None:
    for price, size in levels:
        if size == "0":
            assert price in side, f"removal of a level that is not there: {price}"
            del side[price]
        else:
            side[price] = size


def is_multiple(value: str, step: str) -> bool:
    return Decimal(value) % Decimal(step) == 0


@dataclass
class Tally:
    """What a replay saw."""

    kinds: Counter[str] = field(default_factory=Counter)
    touched: Counter[int] = field(default_factory=Counter)
    symbols: Counter[str] = field(default_factory=Counter)
    depth: list[int] = field(default_factory=list)


def replay(market: SyntheticMarket, events: int, *, check_every: int = 1000) -> Tally:
    """Apply ``events`` events to reference books, checking every invariant on the way."""
    increments = {s: market.increments(s) for s in market.symbols}
    books: dict[str, RefBook] = {}
    for snap in market.snapshots(1):
        assert isinstance(snap, BookSnapshot)
        tick, lot = increments[snap.symbol]
        for price, size in snap.bids + snap.asks:
            assert canonical(price) == price
            assert canonical(size) == size
            assert size != "0"
            assert is_multiple(price, tick)
            assert is_multiple(size, lot)
        books[snap.symbol] = RefBook(dict(snap.bids), dict(snap.asks))
        assert len(books[snap.symbol].bids) == len(snap.bids)
        assert Decimal(snap.bids[0][0]) < Decimal(snap.asks[0][0])
        assert market.book(snap.symbol) == books[snap.symbol].as_levels()
    tally = Tally()
    expect: tuple[str, bool, str, str] | None = None  # a trade awaiting its settling delta
    for i in range(events):
        event = market.next_event(1000 + i)
        assert event.ts_event == event.ts_recv == 1000 + i
        book = books[event.symbol]
        tick, lot = increments[event.symbol]
        tally.symbols[event.symbol] += 1
        if isinstance(event, Trade):
            assert expect is None, "two trades in a row"
            tally.kinds["trade"] += 1
            assert canonical(event.price) == event.price
            assert canonical(event.size) == event.size
            assert event.size != "0"
            assert is_multiple(event.size, lot)
            hit = book.asks if event.side == "buy" else book.bids
            best = book.best_ask() if event.side == "buy" else book.best_bid()
            assert event.price == best, "a trade away from the best opposite price"
            assert Decimal(event.size) <= Decimal(hit[best])
            left = Decimal(hit[best]) - Decimal(event.size)
            expect = (event.symbol, event.side == "sell", best, canonical(str(left)))
            continue
        assert isinstance(event, BookDelta)
        assert event.seq is None
        if expect is not None:
            symbol, on_bids, price, size = expect
            tally.kinds["settle"] += 1
            assert event.symbol == symbol
            settled = ((price, size),)
            assert (event.bids, event.asks) == ((settled, ()) if on_bids else ((), settled))
            expect = None
        else:
            tally.kinds["delta"] += 1
        touched = len(event.bids) + len(event.asks)
        tally.touched[touched] += 1
        assert 1 <= touched <= 3
        for levels in (event.bids, event.asks):
            prices = [price for price, _ in levels]
            assert len(set(prices)) == len(prices), "a price twice in one delta"
            for price, size in levels:
                assert canonical(price) == price
                assert canonical(size) == size
                assert is_multiple(price, tick)
                assert is_multiple(size, lot)
        apply_levels(book.bids, event.bids)
        apply_levels(book.asks, event.asks)
        assert book.bids, "the bid side went empty"
        assert book.asks, "the ask side went empty"
        assert dec(book.best_bid()) < dec(book.best_ask()), f"crossed at {i}"
        tally.depth.append(len(book.bids))
        tally.depth.append(len(book.asks))
        if i % check_every == 0:
            assert market.book(event.symbol) == book.as_levels()
    for symbol, book in books.items():
        if expect is None or expect[0] != symbol:
            assert market.book(symbol) == book.as_levels()
    return tally


def test_symbol_names_are_stable_and_unique() -> None:
    assert SyntheticMarket(3).symbols == ("SYN-BTC", "SYN-ETH", "SYN-SOL")
    names = symbol_names(40)
    assert len(set(names)) == 40
    assert names[:12] == symbol_names(12)
    assert "SYN-BTC-1" in names
    assert "SYN-BTC-3" in names
    assert SyntheticMarket(40, seed=7).symbols == names


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="symbol"):
        SyntheticMarket(0)
    with pytest.raises(ValueError, match="level"):
        SyntheticMarket(1, levels=0)
    with pytest.raises(KeyError):
        SyntheticMarket(1).book("NOPE")


def test_same_seed_same_stream() -> None:
    a, b, c = SyntheticMarket(5, seed=42), SyntheticMarket(5, seed=42), SyntheticMarket(5)
    assert a.snapshots(1) == b.snapshots(1)
    assert a.snapshots(1) != c.snapshots(1)
    stream_a = [a.next_event(i) for i in range(20_000)]
    stream_b = [b.next_event(i) for i in range(20_000)]
    assert stream_a == stream_b
    assert stream_a != [c.next_event(i) for i in range(20_000)]
    assert a.snapshots(2) == b.snapshots(2)


def test_snapshots_show_the_whole_book_per_symbol() -> None:
    market = SyntheticMarket(4, seed=3, levels=20)
    snaps = market.snapshots(123)
    assert [s.symbol for s in snaps] == list(market.symbols)
    for snap in snaps:
        assert len(snap.bids) == len(snap.asks) == 20
        assert snap.ts_event == snap.ts_recv == 123
        assert snap.seq is None
        bid_prices = [Decimal(p) for p, _ in snap.bids]
        ask_prices = [Decimal(p) for p, _ in snap.asks]
        assert bid_prices == sorted(bid_prices, reverse=True)
        assert ask_prices == sorted(ask_prices)
        assert bid_prices[0] < ask_prices[0]


def test_instruments_have_their_own_tick_and_lot() -> None:
    market = SyntheticMarket(12)
    increments = {market.increments(s) for s in market.symbols}
    assert len({tick for tick, _ in increments}) >= 4
    assert len({lot for _, lot in increments}) >= 4
    assert market.increments("SYN-BTC") == ("0.5", "0.001")
    for tick, lot in increments:
        assert canonical(tick) == tick
        assert canonical(lot) == lot


def test_reference_book_over_100k_events() -> None:
    market = SyntheticMarket(8, seed=1)
    start = {s.symbol: s for s in market.snapshots(0)}
    tally = replay(market, 100_000)
    events = sum(tally.symbols.values())
    assert events == 100_000
    # The mix: ~12% trades (each settled by a delta), the rest deltas of 1-3 levels.
    assert tally.kinds["trade"] == tally.kinds["settle"] or (
        tally.kinds["trade"] == tally.kinds["settle"] + 1
    )
    assert 0.10 <= tally.kinds["trade"] / events <= 0.15
    deltas = sum(tally.touched.values())
    assert tally.touched[1] / deltas > 0.5
    assert tally.touched[2] > 0
    assert tally.touched[3] > 0
    # Every symbol is busy, about evenly.
    assert set(tally.symbols) == set(market.symbols)
    assert min(tally.symbols.values()) > 0.8 * events / len(market.symbols)
    # The books stay about 50 levels deep, never thin.
    assert min(tally.depth) >= 50 // 4
    assert max(tally.depth) <= 60
    assert 40 <= sum(tally.depth) / len(tally.depth) <= 56
    # The mid walked but stayed near where it started (mean reversion).
    for symbol in market.symbols:
        bids, asks = market.book(symbol)
        mid = (Decimal(bids[0][0]) + Decimal(asks[0][0])) / 2
        first = start[symbol]
        mid0 = (Decimal(first.bids[0][0]) + Decimal(first.asks[0][0])) / 2
        assert mid != mid0
        assert abs(mid - mid0) / mid0 < Decimal("0.1")


def test_the_best_level_moves() -> None:
    market = SyntheticMarket(1, seed=5)
    seen_bids, seen_asks = set(), set()
    for i in range(5_000):
        market.next_event(i)
        bids, asks = market.book("SYN-BTC")
        seen_bids.add(bids[0][0])
        seen_asks.add(asks[0][0])
    assert len(seen_bids) > 20
    assert len(seen_asks) > 20


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    symbols=st.integers(1, 30),
    levels=st.integers(1, 60),
)
def test_reference_book_any_shape(seed: int, symbols: int, levels: int) -> None:
    replay(SyntheticMarket(symbols, seed=seed, levels=levels), 3_000, check_every=97)


def test_module_is_pure() -> None:
    tree = ast.parse(inspect.getsource(feed.synthetic))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "random", "feed"}


def test_snapshots_mid_stream_even_between_a_trade_and_its_settling_delta() -> None:
    market = SyntheticMarket(3, seed=11)
    while not isinstance(market.next_event(0), Trade):
        pass
    # The snapshots show the book the trade hit; the next event settles it.
    tally = replay(market, 20_000)
    assert tally.kinds["trade"] > 0


def test_the_price_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed.synthetic, "_PRICE_CACHE", 8)
    market = SyntheticMarket(1, seed=3)
    instrument = market._books[0].instrument
    prices = [instrument.price(tick) for tick in range(1000, 1100)]
    assert len(instrument.prices) <= 8
    assert prices == [instrument.price(tick) for tick in range(1000, 1100)]  # same strings
