"""Pure tests of the client's sans-IO pieces: the book, the subscription state machine,
the session, the codec, the backoff schedule and the view. No trio, no sockets."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.backoff import Backoff
from clients.book import ClientBook
from clients.codec import build_request, decode_frame, encode_request
from clients.errors import BadMessage, ChainBreak, ChecksumMismatch, InvalidTransition, SeqGap
from clients.messages import Bbo, BookSnapshot, BookUpdate, Trade, parse_message
from clients.session import ClientSession
from clients.subscription import BookSubscription, SeqTracker, SubEvent, SubState, next_state
from clients.view import format_line, render_ladder, render_screen, render_trades
from feed.checksum import book_checksum
from feed.decimals import format_decimal
from feed.events import Level
from tests.helpers import NaiveBook


def snapshot(
    seq: int, bids: list[Level], asks: list[Level], *, depth: int = 10, checksum: int | None = -1
) -> BookSnapshot:
    """A snapshot whose checksum is right unless one is given."""
    if checksum == -1:
        naive = NaiveBook(depth)
        naive.apply(bids, asks)
        checksum = naive.checksum()
    return BookSnapshot("BTC", seq, depth, tuple(bids), tuple(asks), checksum, "subscribe")


def update(
    seq: int, prev: int, bids: list[Level], asks: list[Level], checksum: int | None
) -> BookUpdate:
    return BookUpdate("BTC", seq, prev, tuple(bids), tuple(asks), checksum)


BIDS = [("100.5", "1"), ("100", "2"), ("99.75", "3")]
ASKS = [("101", "1.5"), ("101.25", "0.25"), ("102", "4")]


# -- ClientBook ---------------------------------------------------------------------


def test_snapshot_replaces_and_sorts_numerically() -> None:
    book = ClientBook("BTC")
    book.apply_snapshot(snapshot(7, [("9.5", "1"), ("10", "2"), ("100", "3")], [("1000", "1")]))
    book.apply_snapshot(snapshot(8, [("9.5", "1"), ("10", "2")], [("11", "1"), ("9.75", "2")]))
    assert book.seq == 8
    # "10" > "9.5" numerically although not as strings.
    assert book.top(5) == ([("10", "2"), ("9.5", "1")], [("9.75", "2"), ("11", "1")])
    assert book.bbo() == (("10", "2"), ("9.75", "2"))


def test_update_sets_adds_and_removes_levels() -> None:
    naive = NaiveBook()
    naive.apply(BIDS, ASKS)
    book = ClientBook("BTC")
    book.apply_snapshot(snapshot(1, BIDS, ASKS))
    changes_bids = [("100", "5"), ("99.75", "0"), ("100.75", "0.5")]
    changes_asks = [("101", "0"), ("103", "1")]
    naive.apply(changes_bids, changes_asks)
    book.apply_update(update(2, 1, changes_bids, changes_asks, naive.checksum()))
    assert book.seq == 2
    assert book.top(10) == (
        [("100.75", "0.5"), ("100.5", "1"), ("100", "5")],
        [("101.25", "0.25"), ("102", "4"), ("103", "1")],
    )
    assert "99.75" not in book.bids
    assert "101" not in book.asks


def test_removing_a_missing_level_is_harmless() -> None:
    book = ClientBook("BTC")
    book.apply_snapshot(snapshot(1, BIDS, ASKS))
    naive = NaiveBook()
    naive.apply(BIDS, ASKS)
    book.apply_update(update(2, 1, [("1", "0")], [], naive.checksum()))
    assert book.top(10) == (BIDS, ASKS)


def test_chain_break_is_detected_and_not_applied() -> None:
    book = ClientBook("BTC")
    book.apply_snapshot(snapshot(5, BIDS, ASKS))
    with pytest.raises(ChainBreak) as info:
        book.apply_update(update(8, 7, [("100.5", "0")], [], None))
    assert (info.value.expected, info.value.prev_seq, info.value.seq) == (5, 7, 8)
    assert book.seq == 5
    assert book.top(10) == (BIDS, ASKS)


@pytest.mark.parametrize(("seq", "prev"), [(5, 5), (4, 5)])
def test_seq_not_beyond_prev_seq_is_a_chain_break(seq: int, prev: int) -> None:
    book = ClientBook("BTC")
    book.apply_snapshot(snapshot(5, BIDS, ASKS))
    with pytest.raises(ChainBreak):
        book.apply_update(update(seq, prev, [], [], None))


def test_update_before_any_snapshot_is_a_chain_break() -> None:
    with pytest.raises(ChainBreak):
        ClientBook("BTC").apply_update(update(2, 1, [], [], None))


def test_checksum_mismatch_is_detected_after_applying() -> None:
    book = ClientBook("BTC")
    book.apply_snapshot(snapshot(1, BIDS, ASKS))
    with pytest.raises(ChecksumMismatch) as info:
        book.apply_update(update(2, 1, [("100.5", "9")], [], 12345))
    assert info.value.expected == 12345
    assert info.value.actual == book.checksum()
    assert info.value.text.startswith("100.5:9:101:1.5:")
    assert book.seq == 2
    assert book.bids.get("100.5") == "9"


def test_snapshot_with_wrong_checksum_is_detected() -> None:
    with pytest.raises(ChecksumMismatch):
        ClientBook("BTC").apply_snapshot(snapshot(1, BIDS, ASKS, checksum=1))


def test_checksum_of_empty_book_is_zero() -> None:
    assert book_checksum([], [], 10) == 0
    book = ClientBook("BTC")
    assert book.checksum() == 0
    book.apply_snapshot(snapshot(1, [], [], checksum=0))
    assert book.checksum() == 0


def test_checksum_covers_min_depth_10_levels() -> None:
    bids = [(str(1000 - i), "1") for i in range(15)]
    asks = [(str(2000 + i), "1") for i in range(15)]
    book = ClientBook("BTC")
    book.apply_snapshot(snapshot(1, bids, asks, depth=25))
    assert book.checksum() == book_checksum(bids[:10], asks[:10], 10)
    book.apply_snapshot(snapshot(2, bids[:3], asks[:3], depth=2))
    assert book.checksum() == book_checksum(bids[:2], asks[:2], 2)
    # A change beyond the checksummed levels does not change the checksum.
    before = book.checksum()
    book.apply_update(update(3, 2, [("997", "5")], [], before))
    assert book.checksum() == before


def test_missing_checksum_is_not_verified() -> None:
    book = ClientBook("BTC")
    book.apply_snapshot(snapshot(1, BIDS, ASKS, checksum=None))
    book.apply_update(update(2, 1, [("100.5", "2")], [], None))
    assert book.seq == 2


prices = st.integers(min_value=1, max_value=5000).flatmap(
    lambda n: st.sampled_from([format_decimal(Decimal(n).scaleb(-k)) for k in range(4)])
)
sizes = st.one_of(
    st.just("0"),
    st.integers(min_value=1, max_value=10**6).map(lambda n: format_decimal(Decimal(n) / 1000)),
)
levels = st.lists(st.tuples(prices, sizes), max_size=8)


@settings(max_examples=200, deadline=None)
@given(
    depth=st.integers(min_value=1, max_value=30),
    start=st.tuples(levels, levels),
    steps=st.lists(st.tuples(levels, levels), max_size=30),
)
def test_random_updates_keep_book_sorted_and_checksum_consistent(
    depth: int,
    start: tuple[list[Level], list[Level]],
    steps: list[tuple[list[Level], list[Level]]],
) -> None:
    naive = NaiveBook(depth)
    naive.apply(*start)
    book = ClientBook("BTC")
    book.apply_snapshot(
        BookSnapshot(
            "BTC", 1, depth, tuple(naive.sorted_bids()), tuple(naive.sorted_asks()),
            naive.checksum(),
        )
    )
    for seq, (bids, asks) in enumerate(steps, start=2):
        naive.apply(bids, asks)
        book.apply_update(update(seq, seq - 1, bids, asks, naive.checksum()))
        all_bids, all_asks = book.top(10_000)
        assert all_bids == naive.sorted_bids()
        assert all_asks == naive.sorted_asks()
        bid_values = [Decimal(p) for p, _ in all_bids]
        ask_values = [Decimal(p) for p, _ in all_asks]
        assert bid_values == sorted(bid_values, reverse=True)
        assert ask_values == sorted(ask_values)
        assert len(set(bid_values)) == len(bid_values)
        assert book.checksum() == naive.checksum()


# -- subscription state machine ------------------------------------------------------


def test_transition_table() -> None:
    assert next_state(SubState.AWAITING_SNAPSHOT, SubEvent.SNAPSHOT) is SubState.LIVE
    assert next_state(SubState.LIVE, SubEvent.BREAK) is SubState.BROKEN
    assert next_state(SubState.BROKEN, SubEvent.RESYNC_SENT) is SubState.RESYNCING
    assert next_state(SubState.RESYNCING, SubEvent.SNAPSHOT) is SubState.LIVE
    for state in SubState:
        assert next_state(state, SubEvent.RESET) is SubState.AWAITING_SNAPSHOT
    with pytest.raises(InvalidTransition):
        next_state(SubState.LIVE, SubEvent.RESYNC_SENT)
    with pytest.raises(InvalidTransition):
        next_state(SubState.RESYNCING, SubEvent.RESYNC_SENT)


def test_subscription_breaks_once_and_skips_until_snapshot() -> None:
    sub = BookSubscription("BTC")
    assert sub.state is SubState.AWAITING_SNAPSHOT
    assert not sub.needs_resync
    assert sub.feed(update(2, 1, [], [], None)).applied is False  # before any snapshot
    assert sub.feed(snapshot(1, BIDS, ASKS)).applied
    assert sub.live
    outcome = sub.feed(update(9, 8, [], [], None))
    assert isinstance(outcome.error, ChainBreak)
    assert not outcome.applied
    assert sub.state is SubState.BROKEN
    assert sub.needs_resync
    # More updates of the broken chain are skipped, not counted again.
    assert sub.feed(update(10, 9, [], [], None)) == type(outcome)(applied=False)
    sub.resync_sent()
    assert sub.state is SubState.RESYNCING
    assert not sub.needs_resync
    assert sub.feed(update(11, 10, [], [], None)).error is None
    assert sub.feed(snapshot(20, BIDS, ASKS)).applied
    assert sub.live
    assert sub.book.seq == 20
    sub.reset()
    assert sub.state is SubState.AWAITING_SNAPSHOT
    assert sub.book.seq is None


def test_subscription_checksum_failure_breaks() -> None:
    sub = BookSubscription("BTC")
    sub.feed(snapshot(1, BIDS, ASKS))
    outcome = sub.feed(update(2, 1, [("100.5", "7")], [], 1))
    assert isinstance(outcome.error, ChecksumMismatch)
    assert outcome.applied
    assert sub.needs_resync


def test_subscription_heartbeat_shows_missed_messages() -> None:
    sub = BookSubscription("BTC")
    sub.feed(snapshot(4, BIDS, ASKS))
    assert sub.check_heartbeat(4) is None
    assert sub.live
    assert isinstance(sub.check_heartbeat(6), SeqGap)
    assert sub.needs_resync


def test_trade_seq_must_grow_by_one() -> None:
    tracker = SeqTracker("BTC", "trades", step_one=True)
    assert tracker.observe(10) is None
    assert tracker.observe(11) is None
    gap = tracker.observe(13)
    assert isinstance(gap, SeqGap)
    assert (gap.last, gap.seq) == (11, 13)
    assert tracker.observe(14) is None  # tracking continues from the new seq
    assert tracker.check_heartbeat(14) is None
    assert isinstance(tracker.check_heartbeat(16), SeqGap)


def test_bbo_seq_must_increase_but_may_jump() -> None:
    tracker = SeqTracker("BTC", "bbo", step_one=False)
    assert tracker.observe(3) is None
    assert tracker.observe(30) is None
    assert isinstance(tracker.observe(30), SeqGap)
    tracker.reset()
    assert tracker.observe(1) is None


# -- session ---------------------------------------------------------------------------


def wire_snapshot(seq: int, bids: list[Level], asks: list[Level]) -> dict[str, object]:
    naive = NaiveBook()
    naive.apply(bids, asks)
    return {
        "type": "book_snapshot", "symbol": "BTC", "seq": seq, "depth": 10,
        "bids": [list(lvl) for lvl in bids], "asks": [list(lvl) for lvl in asks],
        "checksum": naive.checksum(), "reason": "subscribe",
        "ts_event": 1, "ts_recv": 2, "ts_send": 3,
    }


def wire_update(seq: int, prev: int, checksum: int = 0) -> dict[str, object]:
    return {
        "type": "book_update", "symbol": "BTC", "seq": seq, "prev_seq": prev,
        "bids": [], "asks": [], "checksum": checksum, "ts_event": 1, "ts_recv": 2, "ts_send": 3,
    }


def test_session_chain_break_asks_exactly_one_resync() -> None:
    session = ClientSession()
    assert session.subscribe("book", ["BTC"], depth=10) == {
        "op": "subscribe", "channel": "book", "symbols": ["BTC"], "depth": 10,
    }
    assert session.connected() == [
        {"op": "subscribe", "channel": "book", "symbols": ["BTC"], "depth": 10}
    ]
    good = NaiveBook()
    good.apply(BIDS, ASKS)
    assert session.receive(wire_snapshot(1, BIDS, ASKS)) == []
    assert session.receive(wire_update(2, 1, good.checksum())) == []
    assert session.receive(wire_update(5, 4)) == [
        {"op": "resync", "channel": "book", "symbol": "BTC"}
    ]
    assert session.receive(wire_update(6, 5)) == []
    assert session.receive(wire_update(7, 6)) == []
    assert session.receive(wire_snapshot(9, BIDS, ASKS)) == []
    assert session.books["BTC"].live
    stats = session.statistics()
    assert (stats.messages, stats.resyncs, stats.chain_breaks, stats.checksum_failures) == (
        6, 1, 1, 0,
    )


def test_session_reconnect_resubscribes_and_counts() -> None:
    session = ClientSession()
    session.subscribe("book", ["BTC", "ETH"], depth=5)
    session.subscribe("trades", ["BTC"])
    session.subscribe("book", ["BTC"])  # repeat: not resubscribed twice
    session.connected()
    session.receive(wire_snapshot(1, BIDS, ASKS))
    assert session.books["BTC"].live
    session.unsubscribe("book", ["ETH"])
    requests = session.connected()
    assert requests == [
        {"op": "subscribe", "channel": "book", "symbols": ["BTC"], "depth": 5},
        {"op": "subscribe", "channel": "trades", "symbols": ["BTC"]},
    ]
    assert session.books["BTC"].state is SubState.AWAITING_SNAPSHOT
    assert "ETH" not in session.books
    assert session.statistics().reconnects == 1
    assert session.statistics().connections == 2


def test_session_trades_gap_and_heartbeat() -> None:
    session = ClientSession()
    session.subscribe("trades", ["BTC"])
    session.subscribe("book", ["BTC"])
    session.connected()
    trade = {"type": "trade", "symbol": "BTC", "trade_id": 1, "price": "1", "size": "1",
             "side": "buy", "ts_event": 1, "ts_recv": 1, "ts_send": 1}
    session.receive({**trade, "seq": 1})
    session.receive({**trade, "seq": 3})
    assert session.statistics().seq_gaps == 1
    session.receive(wire_snapshot(10, BIDS, ASKS))
    resync = session.receive({"type": "heartbeat", "ts": 5, "seqs": {"book:BTC": 12,
                                                                     "trades:BTC": 3}})
    assert resync == [{"op": "resync", "channel": "book", "symbol": "BTC"}]
    session.receive({"type": "error", "code": "unknown_symbol", "message": "no"})
    session.receive({"type": "future_thing", "x": 1})
    stats = session.statistics()
    assert (stats.seq_gaps, stats.resyncs, stats.errors) == (2, 1, 1)


def test_session_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="channel"):
        ClientSession().subscribe("candles", ["BTC"])
    with pytest.raises(ValueError, match="symbols"):
        ClientSession().subscribe("book", "BTC")


# -- messages and codec -----------------------------------------------------------------


def test_decode_frame_flattens_batches() -> None:
    assert decode_frame(b'{"type":"a"}') == [{"type": "a"}]
    assert decode_frame(b'[{"type":"a"},{"type":"b"}]') == [{"type": "a"}, {"type": "b"}]
    assert decode_frame("[]") == []
    for bad in (b"not json", b"[1, 2]", b"3", b'"x"'):
        with pytest.raises(BadMessage):
            decode_frame(bad)


def test_requests_encode_compactly() -> None:
    request = build_request("subscribe", 3, channel="book", symbols=["BTC"])
    assert encode_request(request) == '{"op":"subscribe","channel":"book","symbols":["BTC"],"id":3}'
    assert build_request("ping") == {"op": "ping"}
    with pytest.raises(ValueError, match="64"):
        build_request("ping", "x" * 65)


def test_parse_message() -> None:
    trade = parse_message({"type": "trade", "symbol": "BTC", "seq": 4, "trade_id": "t1",
                           "price": "1.5", "size": "2", "side": "sell", "ts_event": 9,
                           "extra": "ignored"})
    assert trade == Trade("BTC", 4, "t1", "1.5", "2", "sell", 9)
    assert parse_message({"type": "bbo", "symbol": "B", "seq": 1, "bid": ["1", "2"],
                          "ask": None}) == Bbo("B", 1, ("1", "2"), None)
    assert parse_message({"type": "pong", "id": 1, "ts": 2}) is None
    with pytest.raises(BadMessage):
        parse_message({"type": "book_update", "symbol": "BTC", "seq": "7"})
    with pytest.raises(BadMessage):
        parse_message({**wire_update(2, 1), "bids": [["1"]]})


# -- backoff ---------------------------------------------------------------------------


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, factor=2.0, jitter=0.5)
    assert [backoff.ceiling(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.ceiling(10_000) == 4.0
    rng = random.Random(7)
    delays = [backoff.delay(n, rng) for n in range(50)]
    for n, delay in enumerate(delays):
        assert backoff.ceiling(n) * 0.5 < delay <= backoff.ceiling(n)
    assert len(set(delays[3:])) > 1  # capped delays still differ
    again = random.Random(7)
    assert delays == [backoff.delay(n, again) for n in range(50)]
    assert Backoff(jitter=0).delay(3, rng) == Backoff().ceiling(3)
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=5, maximum=1)


# -- view -----------------------------------------------------------------------------


def test_render_ladder_and_lines() -> None:
    sub = BookSubscription("BTC")
    sub.feed(snapshot(3, BIDS, ASKS))
    lines = render_ladder(sub, 2)
    assert lines[0].startswith("BTC  seq 3  live  spread 0.5")
    assert len(lines) == 4
    assert "100.5" in lines[2]
    assert "101" in lines[2]
    assert "99.75" not in "".join(lines)
    screen = render_screen([lines], "status")
    assert screen.startswith("\x1b[H")
    assert screen.endswith("status\x1b[K\n\x1b[J")
    trades = render_trades([Trade("BTC", 1, 1, "100", "0.5", "buy", 0)])
    assert "buy" in trades[0]
    assert "0.5 @ 100" in trades[0]
    assert format_line(wire_update(2, 1)) == "BTC update seq=2 prev=1 bids  asks "
    assert format_line({"type": "heartbeat", "ts": 1, "seqs": {}}) is None
