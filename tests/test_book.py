from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from feed.book import Book
from feed.events import BookDelta, BookSnapshot

prices = st.integers(min_value=1, max_value=60).map(lambda t: f"{100 + t / 4:g}")
sizes = st.sampled_from(["0", "0", "1", "2.5", "0.001", "7"])
levels = st.lists(st.tuples(prices, sizes), max_size=6)


def snap(bids, asks, seq=None):
    return BookSnapshot("X", tuple(bids), tuple(asks), 1, 1, seq)


def delta(bids, asks, seq=None):
    return BookDelta("X", tuple(bids), tuple(asks), 2, 2, seq)


def test_top_levels_best_first_on_both_sides() -> None:
    book = Book("X")
    book.apply_snapshot(snap([("99", "1"), ("100.5", "2"), ("98", "3")],
                             [("102", "1"), ("101", "5"), ("110", "1")]), 10)
    assert book.bids.top(2) == [("100.5", "2"), ("99", "1")]
    assert book.asks.top(5) == [("101", "5"), ("102", "1"), ("110", "1")]
    assert book.ts_recv == 10


def test_delta_sets_and_removes_levels() -> None:
    book = Book("X")
    book.apply_snapshot(snap([("99", "1")], [("101", "1")]), 0)
    change = book.apply_delta(delta([("99", "0"), ("98", "4")], [("101", "2")]), 0)
    assert change is not None
    assert book.bids.top(10) == [("98", "4")]
    assert book.asks.top(10) == [("101", "2")]
    assert change.bid_keys == [Decimal("-99"), Decimal("-98")]


def test_removing_an_absent_level_is_harmless() -> None:
    book = Book("X")
    book.apply_snapshot(snap([], []), 0)
    book.apply_delta(delta([("99", "0")], []), 0)
    assert len(book.bids) == 0


def test_deltas_before_a_snapshot_are_ignored() -> None:
    book = Book("X")
    assert book.apply_delta(delta([("99", "1")], []), 0) is None
    assert len(book.bids) == 0 and not book.valid


def test_seq_follows_the_source_and_never_goes_back() -> None:
    book = Book("X")
    book.apply_snapshot(snap([], [], seq=100), 0)
    assert book.seq == 100
    book.apply_delta(delta([("1", "1")], [], seq=105), 0)
    assert book.seq == 105
    book.apply_snapshot(snap([], [], seq=100), 0)  # a looped replay starts again
    assert book.seq == 106
    book.apply_delta(delta([("1", "1")], [], seq=101), 0)
    assert book.seq == 107


def test_seq_counts_changes_without_source_seq() -> None:
    book = Book("X")
    book.apply_snapshot(snap([], []), 0)
    book.apply_delta(delta([("1", "1")], []), 0)
    assert book.seq == 2


def test_gap_invalidates_until_next_snapshot() -> None:
    book = Book("X")
    book.apply_snapshot(snap([("1", "1")], []), 0)
    book.invalidate()
    assert not book.valid and book.apply_delta(delta([("2", "1")], []), 0) is None
    book.apply_snapshot(snap([("3", "1")], []), 0)
    assert book.bids.top(5) == [("3", "1")]


@settings(max_examples=200)
@given(st.lists(st.tuples(levels, levels), max_size=30))
def test_book_equals_a_naive_model(steps) -> None:
    book = Book("X")
    book.apply_snapshot(snap([], []), 0)
    model_bids: dict[str, str] = {}
    model_asks: dict[str, str] = {}
    for bids, asks in steps:
        book.apply_delta(delta(bids, asks), 0)
        for model, changes in ((model_bids, bids), (model_asks, asks)):
            for price, size in changes:
                if size == "0":
                    model.pop(price, None)
                else:
                    model[price] = size
    expected_bids = sorted(model_bids.items(), key=lambda level: -Decimal(level[0]))
    expected_asks = sorted(model_asks.items(), key=lambda level: Decimal(level[0]))
    assert book.bids.top(1000) == expected_bids
    assert book.asks.top(1000) == expected_asks
    assert book.bids.best() == (expected_bids[0] if expected_bids else None)
