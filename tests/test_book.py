from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from feed.book import Book
from feed.events import BookDelta, BookSnapshot

prices = st.integers(min_value=1, max_value=60).map(lambda t: f"{100 + t / 4:g}")
# Prices too long for a float to tell apart (> 15 significant digits), next to short ones
# that round to the same float: a book that met one must order them exactly.
long_prices = st.sampled_from(["100.00000000000000001", "100.0000000000000001",
                               "99.999999999999999999", "100.25000000000000001", "100",
                               "100.25", "99.99999999999999"])
sizes = st.sampled_from(["0", "0", "1", "2.5", "0.001", "7"])
levels = st.lists(st.tuples(prices, sizes), max_size=6)
mixed_levels = st.lists(st.tuples(st.one_of(prices, long_prices), sizes), max_size=6)


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
    assert change.bid_prices == ["99", "98"]


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


@settings(max_examples=300)
@given(st.lists(st.tuples(mixed_levels, mixed_levels, st.booleans()), max_size=30))
def test_book_equals_a_naive_model(steps) -> None:
    """Whether the order is read after every event (folding the changes in) or only at
    the end (sorting once), the book is the naive model, exactly ordered."""
    book = Book("X")
    book.apply_snapshot(snap([], []), 0)
    model_bids: dict[str, str] = {}
    model_asks: dict[str, str] = {}
    for bids, asks, read in steps:
        book.apply_delta(delta(bids, asks), 0)
        for model, changes in ((model_bids, bids), (model_asks, asks)):
            for price, size in changes:
                if size == "0":
                    model.pop(price, None)
                else:
                    model[price] = size
        if read:
            assert_book_is(book, model_bids, model_asks)
    assert_book_is(book, model_bids, model_asks)


def assert_book_is(book: Book, bids: dict[str, str], asks: dict[str, str]) -> None:
    expected_bids = sorted(bids.items(), key=lambda level: -Decimal(level[0]))
    expected_asks = sorted(asks.items(), key=lambda level: Decimal(level[0]))
    assert book.bids.top(1000) == expected_bids
    assert book.asks.top(1000) == expected_asks
    assert book.bids.best() == (expected_bids[0] if expected_bids else None)
    assert book.asks.best() == (expected_asks[0] if expected_asks else None)
    assert len(book.bids) == len(bids) and len(book.asks) == len(asks)


def test_prices_beyond_float_precision_keep_their_exact_order() -> None:
    """float("100.00000000000000001") == float("100"): the side must not tie them."""
    book = Book("X")
    book.apply_snapshot(snap([("100", "1"), ("99.5", "1")], [("100.5", "1")]), 0)
    assert book.bids.top(5) == [("100", "1"), ("99.5", "1")]  # float keys so far
    book.apply_delta(delta([("100.00000000000000001", "2"), ("99.99999999999999999", "3")],
                           [("100.50000000000000001", "4")]), 0)
    assert book.bids.top(5) == [("100.00000000000000001", "2"), ("100", "1"),
                                ("99.99999999999999999", "3"), ("99.5", "1")]
    assert book.asks.top(5) == [("100.5", "1"), ("100.50000000000000001", "4")]
    book.apply_delta(delta([("100", "0")], []), 0)
    assert book.bids.top(2) == [("100.00000000000000001", "2"), ("99.99999999999999999", "3")]


def test_unread_changes_stay_bounded() -> None:
    """A book nobody reads (a replay with no subscriber) keeps no growing backlog of
    changes to sort in: past the size of the side it sorts again when read."""
    book = Book("X")
    book.apply_snapshot(snap([], []), 0)
    for i in range(10_000):
        price = str(1000 + i % 50)
        book.apply_delta(delta([(price, "1" if i % 3 else "0")], []), 0)
        assert len(book.bids._pending) <= max(64, len(book.bids)) + 1
    expected = {str(1000 + j): "1" for j in range(50) if (9950 + j) % 3}
    assert_book_is(book, expected, {})


source_seqs = st.none() | st.integers(0, 50)
book_events = st.lists(st.one_of(
    st.tuples(st.just("delta"), mixed_levels, mixed_levels, source_seqs),
    st.tuples(st.just("snapshot"), mixed_levels, mixed_levels, source_seqs),
    st.tuples(st.just("gap"), st.just([]), st.just([]), st.none())), max_size=30)


@settings(max_examples=300)
@given(book_events)
def test_snapshots_gaps_and_deltas_keep_the_book_equal_to_the_model(steps) -> None:
    """Any mix of snapshots, gaps and deltas (with any source seqs): the book is the
    model's (empty and invalid from a gap to the next snapshot, deltas in between
    ignored), crossed exactly when the model is, and its seq never goes back."""
    book = Book("X")
    valid = False
    bids: dict[str, str] = {}
    asks: dict[str, str] = {}
    for kind, bid_levels, ask_levels, seq in steps:
        before = book.seq
        if kind == "snapshot":
            book.apply_snapshot(snap(bid_levels, ask_levels, seq), 0)
            valid = True
            bids = {price: size for price, size in bid_levels if size != "0"}
            asks = {price: size for price, size in ask_levels if size != "0"}
        elif kind == "gap":
            book.invalidate()
            valid, bids, asks = False, {}, {}
        else:
            applied = book.apply_delta(delta(bid_levels, ask_levels, seq), 0)
            assert (applied is not None) == valid
            for model, changes in ((bids, bid_levels), (asks, ask_levels)):
                for price, size in changes if valid else ():
                    if size == "0":
                        model.pop(price, None)
                    else:
                        model[price] = size
        assert book.valid == valid
        assert_book_is(book, bids, asks)
        best_bid = max(bids, key=Decimal, default=None)
        best_ask = min(asks, key=Decimal, default=None)
        crossed = None not in (best_bid, best_ask) and Decimal(best_bid) >= Decimal(best_ask)
        assert book.crossed() == crossed
        if kind == "gap" or (kind == "delta" and not valid):
            assert book.seq == before
        else:
            assert book.seq > before
