from hypothesis import given, settings
from hypothesis import strategies as st

from feed.book import Book
from feed.checksum import book_checksum
from feed.events import BookDelta, BookSnapshot
from feed.views import DepthView, level_diff
from tests.helpers import NaiveBook


def test_level_diff_sets_changes_and_removes_dropped_levels() -> None:
    old = [("10", "1"), ("9", "1"), ("8", "1")]
    new = [("10", "2"), ("9", "1"), ("7", "5")]
    assert level_diff(old, new) == [("10", "2"), ("7", "5"), ("8", "0")]
    assert level_diff(new, new) == []


def test_a_level_pushed_out_of_depth_is_removed() -> None:
    book = Book("X")
    book.apply_snapshot(BookSnapshot("X", (("10", "1"), ("9", "1")), (), 0, 0), 0)
    view = DepthView(2)
    view.reset(book)
    change = book.apply_delta(BookDelta("X", (("11", "3"),), (), 0, 0), 0)
    assert view.advance(book, change) == ([("11", "3"), ("9", "0")], [])
    assert view.bids == [("11", "3"), ("10", "1")]


def test_changes_beyond_a_full_view_publish_nothing() -> None:
    book = Book("X")
    book.apply_snapshot(BookSnapshot("X", (("10", "1"), ("9", "1")), (("11", "1"),), 0, 0), 0)
    view = DepthView(1)
    view.reset(book)
    seq = view.seq
    change = book.apply_delta(BookDelta("X", (("9", "4"),), (("12", "1"),), 0, 0), 0)
    assert view.advance(book, change) is None
    assert view.seq == seq


prices = st.integers(min_value=0, max_value=30)
# Offsets that a float cannot tell apart from the whole price next to them.
tiny = st.sampled_from(["", "", "", ".00000000000000001", ".99999999999999999"])
step = st.tuples(st.lists(st.tuples(prices, tiny, st.integers(0, 3)), max_size=4),
                 st.lists(st.tuples(prices, tiny, st.integers(0, 3)), max_size=4))


@settings(max_examples=200)
@given(st.integers(1, 6), st.lists(step, max_size=40))
def test_updates_keep_a_client_book_equal_to_the_top_levels(depth, steps) -> None:
    """A client applying every published change holds exactly the server's top
    ``depth`` levels, with the checksum the server announced."""
    book = Book("X")
    book.apply_snapshot(BookSnapshot("X", (), (), 0, 0), 0)
    view = DepthView(depth)
    view.reset(book)
    client = NaiveBook(depth)
    for bid_steps, ask_steps in steps:
        bids = tuple((f"{100 - p}{t}", str(s)) for p, t, s in bid_steps)
        asks = tuple((f"{101 + p}{t}", str(s)) for p, t, s in ask_steps)
        change = book.apply_delta(BookDelta("X", bids, asks, 0, 0), 0)
        published = view.advance(book, change)
        if published is not None:
            client.apply(*published)
        top_bids, top_asks = book.bids.top(depth), book.asks.top(depth)
        assert client.sorted_bids() == top_bids
        assert client.sorted_asks() == top_asks
        assert view.checksum == book_checksum(top_bids, top_asks, depth)


@settings(max_examples=200)
@given(st.integers(1, 12), st.lists(step, max_size=40))
def test_updates_are_the_level_diff_of_the_top_levels(depth, steps) -> None:
    """Following a change from its prices gives exactly the levels, in the same order,
    that comparing the top levels before and after it gives, and the checksum kept
    level by level is the one computed afresh (depths past the checksum's 10 too)."""
    book = Book("X")
    book.apply_snapshot(BookSnapshot("X", (), (), 0, 0), 0)
    view = DepthView(depth)
    view.reset(book)
    for bid_steps, ask_steps in steps:
        before = book.bids.top(depth), book.asks.top(depth)
        bids = tuple((f"{100 - p}{t}", str(s)) for p, t, s in bid_steps)
        asks = tuple((f"{101 + p}{t}", str(s)) for p, t, s in ask_steps)
        change = book.apply_delta(BookDelta("X", bids, asks, 0, 0), 0)
        after = book.bids.top(depth), book.asks.top(depth)
        expected = level_diff(before[0], after[0]), level_diff(before[1], after[1])
        published = view.advance(book, change)
        assert published == (None if expected == ([], []) else expected)
        assert (view.bids, view.asks) == after
        assert view.checksum == book_checksum(*after, depth)
