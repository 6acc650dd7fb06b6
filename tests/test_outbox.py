from feed.outbox import Kind, Outbox


def test_take_batch_returns_frames_in_order_within_budget() -> None:
    box = Outbox(max_bytes=1000, max_age_ns=10**9)
    for i in range(5):
        assert not box.push(bytes([i]) * 10, Kind.BOOK, "book:A", now_ns=100 + i)
    frames, oldest = box.take_batch(25)
    assert frames == [b"\x00" * 10, b"\x01" * 10, b"\x02" * 10]
    assert oldest == 100
    assert box.statistics() == (2, 20)


def test_push_reports_over_budget_by_bytes_and_by_age() -> None:
    box = Outbox(max_bytes=25, max_age_ns=50)
    assert not box.push(b"x" * 20, Kind.TRADE, "trades:A", now_ns=0)
    assert box.push(b"x" * 10, Kind.TRADE, "trades:A", now_ns=1)
    box.clear()
    assert not box.push(b"x", Kind.TRADE, "trades:A", now_ns=0)
    assert box.push(b"x", Kind.TRADE, "trades:A", now_ns=51)


def test_lag_drops_book_and_bbo_frames_keeps_trades_and_control() -> None:
    box = Outbox(max_bytes=10**6, max_age_ns=10**9)
    box.push(b"reply", Kind.CONTROL, None, 0)
    box.push(b"b1", Kind.BOOK, "book:A", 0)
    box.push(b"t1", Kind.TRADE, "trades:A", 0)
    box.push(b"o1", Kind.BBO, "bbo:B", 0)
    box.push(b"b2", Kind.BOOK, "book:C", 0)
    box.push(b"b3", Kind.BOOK, "book:A", 0)
    assert box.drop_conflatable(now_ns=5) == ["book:A", "bbo:B", "book:C"]
    assert box.take_batch(100)[0] == [b"reply", b"t1"]
    assert box.behind_since is None  # drained: caught up


def test_drop_key_removes_one_subscription() -> None:
    box = Outbox(max_bytes=10**6, max_age_ns=10**9)
    box.push(b"a", Kind.BOOK, "book:A", 0)
    box.push(b"b", Kind.BOOK, "book:B", 0)
    box.drop_key("book:A")
    assert box.take_batch(100)[0] == [b"b"]


def test_after_lag_old_replies_are_restamped_but_old_trades_are_not() -> None:
    box = Outbox(max_bytes=10**6, max_age_ns=100)
    box.push(b"reply", Kind.CONTROL, None, 0)
    box.push(b"b1", Kind.BOOK, "book:A", 0)
    assert box.push(b"b2", Kind.BOOK, "book:A", 200)  # the oldest frame is over age
    box.drop_conflatable(now_ns=200)
    assert not box.push(b"b3", Kind.BOOK, "book:A", 250)  # the reply no longer counts as old
    box.push(b"t1", Kind.TRADE, "trades:A", 250)
    box.drop_conflatable(now_ns=400)
    assert box.over_budget(400)  # the trade, still unread, is old
