"""The hub and sessions together, without sockets: subscriptions, fan-out, lag policy."""

from __future__ import annotations

from typing import Any

import pytest

from feed.checksum import book_checksum
from feed.events import BookDelta, BookSnapshot, Gap, Trade
from feed.hub import Hub
from feed.outbox import Kind
from feed.session import CLOSE_POLICY, CLOSE_SLOW_CONSUMER, Session, SessionLimits, State
from tests.helpers import messages

MS = 1_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000 * MS

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hub(clock: FakeClock) -> Hub:
    hub = Hub(clock)
    hub.add_symbol("BTC")
    hub.apply(BookSnapshot("BTC", (("100", "1"), ("99", "2")), (("101", "1"), ("102", "3")),
                           5, 6, seq=10), clock())
    return hub


def session(hub: Hub, clock: FakeClock, wbits: int = 0, **limits: Any) -> Session:
    return Session(hub, SessionLimits(**limits), wbits=wbits, now_ns=clock())


def drain(s: Session) -> list[dict[str, Any]]:
    frames, _ = s.outbox.take_batch(1 << 30)
    return messages(frames)


def request(s: Session, clock: FakeClock, text: str) -> list[dict[str, Any]]:
    s.handle(text, clock())
    return drain(s)


def test_subscribe_gets_reply_then_snapshot_then_chained_updates(hub: Hub, clock) -> None:
    s = session(hub, clock)
    out = request(s, clock, '{"op":"subscribe","id":1,"channel":"book","symbols":["BTC"],'
                            '"depth":2}')
    assert out[0] == {"type": "subscribed", "id": 1, "channel": "book", "symbols": ["BTC"],
                      "depth": 2, "interval_ms": 0, "checksum": True}
    snap = out[1]
    assert snap["type"] == "book_snapshot" and snap["reason"] == "subscribe"
    assert snap["seq"] == 10 and snap["bids"] == [["100", "1"], ["99", "2"]]
    assert snap["checksum"] == book_checksum([("100", "1"), ("99", "2")],
                                             [("101", "1"), ("102", "3")], 2)
    clock.now += MS
    hub.apply(BookDelta("BTC", (("100.5", "4"),), (), 7, 8, seq=11), clock())
    (update,) = drain(s)
    assert update["type"] == "book_update"
    assert (update["seq"], update["prev_seq"]) == (11, 10)
    assert update["bids"] == [["100.5", "4"], ["99", "0"]]  # 99 fell out of depth 2
    assert update["ts_recv"] == clock.now and update["ts_event"] == 7


def test_identical_subscriptions_share_the_same_frame_bytes(hub: Hub, clock) -> None:
    a, b = session(hub, clock, wbits=15), session(hub, clock, wbits=15)
    for s in (a, b):
        s.handle('{"op":"subscribe","channel":"book","symbols":["BTC"]}', clock())
    (_, snap_a), _ = a.outbox.take_batch(1 << 20)
    (_, snap_b), _ = b.outbox.take_batch(1 << 20)
    assert snap_a is snap_b
    compressed = hub.deflater.messages  # two replies, one snapshot
    assert compressed == 3
    hub.apply(BookDelta("BTC", (("100", "9"),), (), 7, 8, seq=11), clock())
    (frame_a,), _ = a.outbox.take_batch(1 << 20)
    (frame_b,), _ = b.outbox.take_batch(1 << 20)
    assert frame_a is frame_b
    assert hub.deflater.messages == compressed + 1
    assert messages([frame_a])[0]["bids"] == [["100", "9"]]


def test_subscription_errors(hub: Hub, clock) -> None:
    hub.add_symbol("ETH")
    s = session(hub, clock, max_subscriptions=2)
    (err,) = request(s, clock, '{"op":"subscribe","id":1,"channel":"book","symbols":["DOGE"]}')
    assert (err["type"], err["code"], err["id"]) == ("error", "unknown_symbol", 1)
    request(s, clock, '{"op":"subscribe","channel":"trades","symbols":["BTC"]}')
    (err,) = request(s, clock, '{"op":"subscribe","id":2,"channel":"trades","symbols":["BTC"]}')
    assert err["code"] == "already_subscribed"
    (err,) = request(s, clock, '{"op":"subscribe","id":3,"channel":"bbo","symbols":["BTC","ETH"]}')
    assert err["code"] == "too_many_subscriptions"
    (err,) = request(s, clock, '{"op":"unsubscribe","id":4,"channel":"bbo","symbols":["BTC"]}')
    assert err["code"] == "not_subscribed"
    assert s.state is State.OPEN


def test_unsubscribe_removes_queued_frames_and_stops_delivery(hub: Hub, clock) -> None:
    s = session(hub, clock)
    request(s, clock, '{"op":"subscribe","channel":"trades","symbols":["BTC"]}')
    hub.apply(Trade("BTC", 1, "100", "1", "buy", 1, 1), clock())
    s.handle('{"op":"unsubscribe","id":5,"channel":"trades","symbols":["BTC"]}', clock())
    hub.apply(Trade("BTC", 2, "100", "1", "buy", 1, 1), clock())
    assert drain(s) == [{"type": "unsubscribed", "id": 5, "channel": "trades",
                         "symbols": ["BTC"]}]


def test_trades_seq_grows_by_one(hub: Hub, clock) -> None:
    s = session(hub, clock)
    request(s, clock, '{"op":"subscribe","channel":"trades","symbols":["BTC"]}')
    for i in range(3):
        hub.apply(Trade("BTC", 100 + i, "100", "0.5", "sell", 1, 2), clock())
    trades = drain(s)
    assert [t["seq"] for t in trades] == [1, 2, 3]
    assert trades[0] == {"type": "trade", "symbol": "BTC", "seq": 1, "trade_id": 100,
                         "price": "100", "size": "0.5", "side": "sell", "ts_event": 1,
                         "ts_recv": clock.now, "ts_send": clock.now}


def test_resync_sends_a_fresh_snapshot(hub: Hub, clock) -> None:
    s = session(hub, clock)
    request(s, clock, '{"op":"subscribe","channel":"book","symbols":["BTC"]}')
    hub.apply(BookDelta("BTC", (("98", "1"),), (), 1, 1, seq=11), clock())
    (snap,) = request(s, clock, '{"op":"resync","id":3,"channel":"book","symbol":"BTC"}')
    assert (snap["type"], snap["reason"], snap["seq"]) == ("book_snapshot", "resync", 11)


def test_bbo_publishes_only_top_of_book_changes(hub: Hub, clock) -> None:
    s = session(hub, clock)
    (_, first) = request(s, clock, '{"op":"subscribe","channel":"bbo","symbols":["BTC"]}')
    assert (first["bid"], first["ask"], first["seq"]) == (["100", "1"], ["101", "1"], 10)
    hub.apply(BookDelta("BTC", (("99", "5"),), (), 1, 1, seq=11), clock())
    assert drain(s) == []
    hub.apply(BookDelta("BTC", (), (("101", "0"),), 1, 1, seq=12), clock())
    (bbo,) = drain(s)
    assert (bbo["ask"], bbo["seq"]) == (["102", "3"], 12)


def test_conflation_sends_at_most_one_update_per_interval(hub: Hub, clock) -> None:
    s = session(hub, clock)
    request(s, clock, '{"op":"subscribe","channel":"book","symbols":["BTC"],"interval_ms":100}')
    sent_at = []
    for i in range(50):  # one change every 10 ms for 500 ms
        clock.now += 10 * MS
        hub.apply(BookDelta("BTC", (("100", str(i + 2)),), (), 1, 1), clock())
        hub.run_due(clock())
        for message in drain(s):
            sent_at.append((clock.now, message))
    gaps = [b[0] - a[0] for a, b in zip(sent_at, sent_at[1:], strict=False)]
    assert len(sent_at) in (4, 5) and all(gap >= 100 * MS for gap in gaps)
    last_seq = 10
    for _, message in sent_at:
        assert message["prev_seq"] == last_seq
        last_seq = message["seq"]
    clock.now += 100 * MS
    hub.run_due(clock())
    client_bids: dict[str, str] = {}
    for message in [m for _, m in sent_at] + drain(s):
        client_bids.update((price, size) for price, size in message["bids"])
    assert client_bids["100"] == "51"  # the last state always gets out


def test_slow_book_client_gets_a_lag_snapshot(hub: Hub, clock) -> None:
    s = session(hub, clock, max_queued_bytes=2000)
    fast = session(hub, clock)
    for c in (s, fast):
        request(c, clock, '{"op":"subscribe","channel":"book","symbols":["BTC"]}')
    for i in range(40):
        hub.apply(BookDelta("BTC", (("100", str(i + 2)),), (), 1, 1, seq=11 + i), clock())
    out = drain(s)
    notices = [m for m in out if m["type"] == "notice"]
    assert notices and notices[0]["code"] == "lag" and notices[0]["symbol"] == "BTC"
    snaps = [m for m in out if m["type"] == "book_snapshot"]
    assert snaps[-1]["reason"] == "lag"
    chain = [m for m in out if m["type"].startswith("book_")]
    chain = chain[chain.index(snaps[-1]):]
    for prev, nxt in zip(chain, chain[1:], strict=False):
        assert nxt["prev_seq"] == prev["seq"]
    assert chain[-1]["seq"] == 50
    assert [m["seq"] for m in drain(fast)] == list(range(11, 51))  # the fast one lost nothing


def test_slow_trades_client_gets_notice_then_4001(hub: Hub, clock) -> None:
    s = session(hub, clock, max_queued_bytes=3000)
    request(s, clock, '{"op":"subscribe","channel":"trades","symbols":["BTC"]}')
    for i in range(100):
        hub.apply(Trade("BTC", i, "100", "1", "buy", 1, 1), clock())
    assert s.state is State.CLOSING and s.close_code == CLOSE_SLOW_CONSUMER
    out = drain(s)
    assert [m["type"] for m in out] == ["notice"] and out[0]["code"] == "lag"


def test_request_flood_is_rate_limited_then_closed(hub: Hub, clock) -> None:
    s = session(hub, clock, request_rate=10.0, request_burst=5)
    codes = []
    for _ in range(6):
        codes += [m.get("code") or m["type"] for m in request(s, clock, '{"op":"ping"}')]
    assert codes == ["pong"] * 5 + ["rate_limited"]
    for _ in range(10):
        s.handle('{"op":"ping"}', clock())
    assert s.state is State.CLOSING and s.close_code == CLOSE_POLICY
    clock.now += 10**9  # an honest client recovers after a pause
    s2 = session(hub, clock, request_rate=10.0, request_burst=5)
    for _ in range(5):
        s2.handle('{"op":"ping"}', clock())
    clock.now += 10**9
    assert request(s2, clock, '{"op":"ping","id":1}')[-1]["type"] == "pong"


def test_heartbeat_reports_the_last_seqs_sent(hub: Hub, clock) -> None:
    for i in range(7):  # trades before the subscription: never sent to it
        hub.apply(Trade("BTC", i, "100", "1", "buy", 1, 1), clock())
    s = session(hub, clock)
    request(s, clock, '{"op":"subscribe","channel":"book","symbols":["BTC"]}')
    request(s, clock, '{"op":"subscribe","channel":"trades","symbols":["BTC"]}')
    s.heartbeat(clock())
    (beat,) = drain(s)
    assert beat == {"type": "heartbeat", "ts": clock.now, "seqs": {"book:BTC": 10}}
    hub.apply(Trade("BTC", 8, "100", "1", "buy", 1, 1), clock())
    drain(s)
    s.heartbeat(clock())
    assert drain(s)[0]["seqs"] == {"book:BTC": 10, "trades:BTC": 8}


def test_an_old_unread_reply_does_not_retrigger_the_lag_policy(hub: Hub, clock) -> None:
    s = session(hub, clock, max_queue_age_ns=50 * MS)
    s.handle('{"op":"subscribe","channel":"book","symbols":["BTC"]}', clock())
    clock.now += 100 * MS  # the reply and snapshot wait unread: the snapshot is old
    hub.apply(BookDelta("BTC", (("100", "2"),), (), 1, 1, seq=11), clock())
    assert s.stats.lag_resyncs == 1  # the old snapshot: one lag, replaced by a fresh one
    for i in range(20):  # fresh updates behind old control frames: no more lag
        clock.now += MS
        hub.apply(BookDelta("BTC", (("100", str(i + 3)),), (), 1, 1, seq=12 + i), clock())
    assert s.stats.lag_resyncs == 1 and s.state is State.OPEN


def test_a_client_not_reading_its_replies_is_closed_4001(hub: Hub, clock) -> None:
    s = session(hub, clock, max_queued_bytes=2000)
    for _ in range(100):  # pings, say, that it never reads the pongs of
        s.push_control(b"\x8a\x7d" + b"x" * 125, clock())
        if s.state is not State.OPEN:
            break
    assert s.state is State.CLOSING and s.close_code == CLOSE_SLOW_CONSUMER
    assert s.outbox.queued_bytes < 2000


def test_gap_notice_survives_lag_and_no_stale_snapshot_is_sent(hub: Hub, clock) -> None:
    hub.add_symbol("ETH")
    hub.apply(BookSnapshot("ETH", (("10", "1"),), (("11", "1"),), 1, 1), clock())
    s = session(hub, clock, max_queued_bytes=3000)
    request(s, clock, '{"op":"subscribe","channel":"book","symbols":["BTC","ETH"]}')
    hub.apply(Gap("BTC", 1, 1), clock())
    for i in range(40):  # ETH traffic makes the client lag while BTC is in its gap
        hub.apply(BookDelta("ETH", (("10", str(i + 2)),), (), 1, 1), clock())
    out = drain(s)
    assert any(m["type"] == "notice" and m["code"] == "gap" for m in out)
    assert not [m for m in out if m["type"] == "book_snapshot" and m["symbol"] == "BTC"]
    assert [m["reason"] for m in out if m["type"] == "book_snapshot"][-1] == "lag"


@pytest.mark.parametrize("interval_ms", [0, 100])
def test_a_gap_reaches_book_and_bbo_members_and_nothing_stale_follows(
        hub: Hub, clock, interval_ms: int) -> None:
    s = session(hub, clock)
    for channel in ("book", "bbo"):
        request(s, clock, f'{{"op":"subscribe","channel":"{channel}","symbols":["BTC"],'
                          f'"interval_ms":{interval_ms}}}')
    drain(s)
    clock.now += 150 * MS  # the first conflated publish is due at once, the next later
    hub.apply(BookDelta("BTC", (("100", "5"),), (), 7, 7, seq=11), clock())
    clock.now += 10 * MS
    hub.apply(BookDelta("BTC", (("100", "6"),), (), 8, 8, seq=12), clock())  # conflated: pending
    hub.apply(Gap("BTC", 9, 9, "sequence break"), clock())
    clock.now += 500 * MS
    hub.run_due(clock())  # the pending publish must not send the emptied book
    before = drain(s)  # the gap notices come last: no book or bbo after them
    assert [m["type"] for m in before[-2:]] == ["notice", "notice"]  # one per channel
    assert all(m["code"] == "gap" and m["symbol"] == "BTC" for m in before[-2:])
    hub.apply(BookSnapshot("BTC", (("90", "1"),), (("91", "1"),), 10, 10, seq=60), clock())
    clock.now += 500 * MS
    hub.run_due(clock())
    after = drain(s)
    assert sorted(m["type"] for m in after) == ["bbo", "book_snapshot"]
    bbo = next(m for m in after if m["type"] == "bbo")
    assert (bbo["seq"], bbo["bid"], bbo["ask"]) == (60, ["90", "1"], ["91", "1"])


def test_error_replies_do_not_grow_with_the_request(hub: Hub, clock) -> None:
    s = session(hub, clock)
    (err,) = request(s, clock, '{"op":"' + "x" * 60_000 + '"}')
    assert err["code"] == "bad_request" and len(err["message"]) < 200


def test_gap_then_snapshot_resyncs_subscribers(hub: Hub, clock) -> None:
    s = session(hub, clock)
    request(s, clock, '{"op":"subscribe","channel":"book","symbols":["BTC"]}')
    hub.apply(Gap("BTC", 1, 1, "sequence break"), clock())
    hub.apply(BookDelta("BTC", (("1", "1"),), (), 1, 1, seq=50), clock())  # ignored
    hub.apply(BookSnapshot("BTC", (("90", "1"),), (("91", "1"),), 1, 1, seq=60), clock())
    out = drain(s)
    assert [m["type"] for m in out] == ["notice", "book_snapshot"]
    assert out[0]["code"] == "gap"
    assert (out[1]["reason"], out[1]["seq"], out[1]["bids"]) == ("resync", 60, [["90", "1"]])


def test_subscribing_before_the_first_snapshot_waits_for_it(clock) -> None:
    hub = Hub(clock)
    hub.add_symbol("NEW")
    s = session(hub, clock)
    request(s, clock, '{"op":"subscribe","channel":"book","symbols":["NEW"]}')
    hub.apply(BookDelta("NEW", (("1", "1"),), (), 1, 1), clock())
    assert drain(s) == []
    hub.apply(BookSnapshot("NEW", (("1", "1"),), (), 1, 1), clock())
    (snap,) = drain(s)
    assert snap["reason"] == "subscribe"


def test_outbox_kinds_are_tagged(hub: Hub, clock) -> None:
    s = session(hub, clock)
    s.handle('{"op":"subscribe","channel":"book","symbols":["BTC"]}', clock())
    assert list(s.outbox.kinds()) == [Kind.CONTROL, Kind.BOOK]


def test_a_member_falling_behind_during_a_snapshot_leaves_safely(hub: Hub, clock) -> None:
    """Publishing a source snapshot to a group whose only member is closed for lag
    removes the group while the hub is walking the groups."""
    slow = session(hub, clock, max_queue_age_ns=MS)
    request(slow, clock, '{"op":"subscribe","channel":"trades","symbols":["BTC"]}')
    request(slow, clock, '{"op":"subscribe","channel":"book","symbols":["BTC"],"depth":1}')
    request(slow, clock, '{"op":"subscribe","channel":"bbo","symbols":["BTC"]}')
    hub.apply(Trade("BTC", 1, "100", "1", "buy", 1, 1), clock())
    clock.now += 2 * MS  # the trade, unread, is now over the age budget
    hub.apply(BookSnapshot("BTC", (("100", "1"),), (("101", "1"),), 1, 1, seq=20), clock())
    assert slow.state is State.CLOSING and slow.close_code == CLOSE_SLOW_CONSUMER
    assert not hub.symbols["BTC"].book_groups and not hub.symbols["BTC"].bbo_groups


def test_conflation_keeps_the_last_state_across_a_source_snapshot(hub: Hub, clock) -> None:
    s = session(hub, clock)
    request(s, clock, '{"op":"subscribe","channel":"book","symbols":["BTC"],"interval_ms":100}')
    clock.now += 10 * MS
    hub.apply(BookDelta("BTC", (("100", "2"),), (), 1, 1), clock())  # held: scheduled
    hub.apply(BookSnapshot("BTC", (("100", "3"),), (("101", "1"),), 1, 1), clock())
    hub.apply(BookDelta("BTC", (("100", "9"),), (), 1, 1), clock())  # after the snapshot
    clock.now += 100 * MS
    hub.run_due(clock())
    out = drain(s)
    assert out[-1]["type"] == "book_update" and out[-1]["bids"] == [["100", "9"]]
    assert hub.next_due() is None
