"""The deferred fan-out: what each member is handed, in which order, and when."""

from __future__ import annotations

from feed.fanout import Entry, FanOut
from feed.outbox import Kind
from feed.wsframe import Deflater, Frame


class FakeGroup:
    def __init__(self, key: str) -> None:
        self.key = key


class FakeMember:
    def __init__(self, wbits: int = 0) -> None:
        self.wbits = wbits
        self.calls: list[list[Entry]] = []
        self.sizes: list[int] = []

    def deliver(self, frame: Frame, kind: Kind, key: str, now_ns: int) -> None:
        raise AssertionError("published frames come in runs")

    def deliver_many(self, entries: list[Entry], size: int, now_ns: int) -> None:
        self.calls.append(entries)
        self.sizes.append(size)

    def received(self) -> list[tuple[bytes, str]]:
        return [(data, key) for call in self.calls for data, _, key, _ in call]


def frame(text: str, deflater: Deflater) -> Frame:
    return Frame(text.encode(), deflater)


def test_a_held_run_reaches_each_member_once_in_publish_order() -> None:
    fanout, deflater = FanOut(), Deflater()
    a, b = FakeGroup("book:A"), FakeGroup("book:B")
    both = [FakeMember(), FakeMember()]
    only_a = FakeMember()
    for member in both:
        fanout.receive(member, a)
        fanout.receive(member, b)
    fanout.receive(only_a, a)
    assert fanout.audiences() == 2

    frames = [frame(f"m{i}", deflater) for i in range(4)]
    fanout.hold()
    for i, (group, f) in enumerate(zip((a, b, a, b), frames, strict=True)):
        fanout.publish(group, f, Kind.BOOK, i)
    assert all(not m.calls for m in (*both, only_a))  # nothing before the release
    fanout.release()

    for member in both:
        assert len(member.calls) == 1  # one call for the whole run
        assert member.received() == [(f.plain, k) for f, k in
                                     zip(frames, ("book:A", "book:B") * 2, strict=True)]
        assert member.sizes == [sum(len(f.plain) for f in frames)]
    assert both[0].calls[0] is both[1].calls[0]  # built once for the audience
    assert only_a.received() == [(frames[0].plain, "book:A"), (frames[2].plain, "book:A")]
    assert [entry[3] for entry in both[0].calls[0]] == [0, 1, 2, 3]  # each frame's stamp


def test_without_a_hold_each_publish_is_handed_out_at_once() -> None:
    fanout, deflater = FanOut(), Deflater()
    group, member = FakeGroup("trades:A"), FakeMember()
    fanout.receive(member, group)
    fanout.publish(group, frame("t1", deflater), Kind.TRADE, 1)
    assert member.received() == [(b"\x82\x02t1", "trades:A")]


def test_membership_changes_split_a_held_run_where_they_happen() -> None:
    fanout, deflater = FanOut(), Deflater()
    group = FakeGroup("book:A")
    early, late = FakeMember(), FakeMember()
    fanout.receive(early, group)
    fanout.hold()
    fanout.publish(group, frame("before", deflater), Kind.BOOK, 1)
    fanout.receive(late, group)
    fanout.publish(group, frame("after", deflater), Kind.BOOK, 2)
    fanout.stop(early, group)
    fanout.publish(group, frame("last", deflater), Kind.BOOK, 3)
    fanout.release()
    assert [data for data, _ in early.received()] == [b"\x82\x06before", b"\x82\x05after"]
    assert [data for data, _ in late.received()] == [b"\x82\x05after", b"\x82\x04last"]
    fanout.stop(late, group)
    assert fanout.audiences() == 0 and fanout.by_group == {}


def test_compressed_members_get_the_frame_compressed_once_per_window() -> None:
    fanout, deflater = FanOut(), Deflater()
    group = FakeGroup("book:A")
    members = [FakeMember(15), FakeMember(15), FakeMember(0)]
    for member in members:
        fanout.receive(member, group)
    f = frame('{"type":"book_update","bids":[["100","1"]]}' * 4, deflater)
    fanout.publish(group, f, Kind.BOOK, 1)
    assert deflater.messages == 1
    assert members[0].received() == members[1].received() == [(f.deflated(15), "book:A")]
    assert members[2].received() == [(f.plain, "book:A")]
    assert len(f.deflated(15)) < len(f.plain)


def test_a_member_that_leaves_while_being_handed_a_run_stops_receiving() -> None:
    fanout, deflater = FanOut(), Deflater()
    group = FakeGroup("book:A")

    class Leaver(FakeMember):
        def deliver_many(self, entries: list[Entry], size: int, now_ns: int) -> None:
            super().deliver_many(entries, size, now_ns)
            fanout.stop(self, group)  # as a lag close does

    leaver, stayer = Leaver(), FakeMember()
    fanout.receive(leaver, group)
    fanout.receive(stayer, group)
    fanout.publish(group, frame("one", deflater), Kind.BOOK, 1)
    fanout.publish(group, frame("two", deflater), Kind.BOOK, 2)
    assert len(leaver.calls) == 1 and len(stayer.calls) == 2
