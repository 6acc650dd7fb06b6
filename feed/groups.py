"""Subscription groups: every client with the same subscription gets the same bytes.

A group is one (channel, symbol, options). It turns book changes and trades into
messages, encodes each message once, frames it once (``Frame``) and publishes the same
frame to every member through the ``FanOut`` (feed/fanout.py), which hands it out in
batches. A member is a ``feed.fanout.Member`` (a ``Session``); what one member alone
gets (its snapshot when it joins) is delivered to it directly.

Book and bbo groups with ``interval_ms`` > 0 are conflated: they publish at most once
per interval, the difference between what they last published and the book now.
The group also keeps its encoded snapshot, made at most once per published version
and reason, for joiners, resyncs and lagging members.
"""

from __future__ import annotations

from collections.abc import Callable

from feed import protocol
from feed.book import Book, BookChange
from feed.events import Trade
from feed.fanout import FanOut, Member
from feed.outbox import Kind
from feed.views import DepthView
from feed.wsframe import Deflater, Frame

Clock = Callable[[], int]


class Group:
    """Members and publishing shared by every channel."""

    kind = Kind.CONTROL
    channel = ""

    def __init__(self, symbol: str, deflater: Deflater, clock: Clock, fanout: FanOut) -> None:
        self.symbol = symbol
        self.key = f"{self.channel}:{symbol}"
        self.members: dict[Member, None] = {}
        self._deflater = deflater
        self._clock = clock
        self._fanout = fanout

    @property
    def seq(self) -> int:
        """The seq of the last message this group published."""
        raise NotImplementedError

    def frame(self, message: protocol.Message) -> Frame:
        return Frame(protocol.encode(message), self._deflater)

    def publish(self, frame: Frame, now_ns: int) -> None:
        """Hand the same frame to every member receiving the group's publishes."""
        self._fanout.publish(self, frame, self.kind, now_ns)

    def notify_all(self, frame: Frame, now_ns: int) -> None:
        """Hand a control frame to every member now, after what was published before."""
        self._fanout.drain()
        for member in tuple(self.members):
            member.deliver(frame, Kind.CONTROL, self.key, now_ns)

    def leave(self, member: Member) -> None:
        self.members.pop(member, None)
        self._fanout.stop(member, self)


class TradeGroup(Group):
    """All trades of one symbol; ``seq`` grows by exactly one per trade."""

    kind = Kind.TRADE
    channel = "trades"

    def __init__(self, symbol: str, deflater: Deflater, clock: Clock, fanout: FanOut) -> None:
        super().__init__(symbol, deflater, clock, fanout)
        self._seq = 0

    @property
    def seq(self) -> int:
        return self._seq

    def join(self, member: Member, now_ns: int) -> None:
        self.members[member] = None
        self._fanout.receive(member, self)

    def skip(self, trades: int) -> None:
        """Count ``trades`` that nobody was subscribed to see (a bulk apply)."""
        assert not self.members
        self._seq += trades

    def on_trade(self, trade: Trade, ts_recv: int) -> None:
        """Publish one trade, taken in by the ingester at ``ts_recv``."""
        self._seq += 1
        if not self.members:
            return
        message = protocol.trade_message(
            self.symbol, self._seq, trade.trade_id, trade.price, trade.size, trade.side,
            trade.ts_event, ts_recv, self._clock())
        self.publish(self.frame(message), ts_recv)


class ViewGroup(Group):
    """A book-derived group (``book`` or ``bbo``): a view of the top levels, published
    on every change or, when conflated, at most once per interval."""

    def __init__(
        self, symbol: str, depth: int, interval_ms: int, deflater: Deflater, clock: Clock,
        fanout: FanOut,
    ) -> None:
        super().__init__(symbol, deflater, clock, fanout)
        self.view = DepthView(depth)
        self.interval_ns = interval_ms * 1_000_000
        self.last_publish_ns: int | None = None
        self.dirty = False
        self.scheduled = False

    @property
    def seq(self) -> int:
        return self.view.seq

    @property
    def conflated(self) -> bool:
        return self.interval_ns > 0

    def due_at(self) -> int:
        """When a conflated group may publish next."""
        return (self.last_publish_ns or 0) + self.interval_ns

    def on_change(self, book: Book, change: BookChange | None, now_ns: int) -> None:
        """The book changed; publish what the members' view gains from it."""
        prev_seq = self.view.seq
        changes = self.view.advance(book, change)
        self.dirty = False
        if changes is not None:
            self.last_publish_ns = now_ns
            self.publish_change(changes[0], changes[1], prev_seq, now_ns)

    def publish_change(self, bids: list[tuple[str, str]], asks: list[tuple[str, str]],
                       prev_seq: int, now_ns: int) -> None:
        raise NotImplementedError


class BookGroup(ViewGroup):
    """``book`` subscribers of one symbol with the same depth, interval and checksum
    option. Members in ``pending`` joined before the book had a snapshot."""

    kind = Kind.BOOK
    channel = "book"

    def __init__(
        self, symbol: str, depth: int, interval_ms: int, checksum: bool,
        deflater: Deflater, clock: Clock, fanout: FanOut,
    ) -> None:
        super().__init__(symbol, depth, interval_ms, deflater, clock, fanout)
        self.checksum = checksum
        self.pending: set[Member] = set()
        self._snapshots: dict[str, Frame] = {}
        self._snapshot_seq = -1

    def join(self, member: Member, book: Book, now_ns: int) -> None:
        """Add a member: it gets the snapshot of what the group last published, or of
        the book's first snapshot when the book has none yet."""
        self.members[member] = None
        if not book.valid:
            self.pending.add(member)
            return
        if self.view.seq == 0:  # a new group; a live group's view follows the book
            self.view.reset(book)
            self.last_publish_ns = now_ns
        self._fanout.drain()  # the snapshot comes after what was published before it
        member.deliver(self.snapshot("subscribe"), self.kind, self.key, now_ns)
        self._fanout.receive(member, self)

    def leave(self, member: Member) -> None:
        super().leave(member)
        self.pending.discard(member)

    def snapshot(self, reason: str) -> Frame:
        """The encoded snapshot of the published view, made once per version and reason."""
        view = self.view
        if self._snapshot_seq != view.seq:
            self._snapshots.clear()
            self._snapshot_seq = view.seq
        frame = self._snapshots.get(reason)
        if frame is None:
            message = protocol.book_snapshot_message(
                self.symbol, view.seq, view.depth, view.bids, view.asks,
                view.checksum if self.checksum else None,
                view.ts_event, view.ts_recv, self._clock(), reason)
            frame = self._snapshots[reason] = self.frame(message)
        return frame

    def on_reset(self, book: Book, now_ns: int) -> None:
        """The source sent a whole new book: every member gets a snapshot (``resync``,
        or ``subscribe`` for members still waiting for their first)."""
        self.view.reset(book)
        self.last_publish_ns = now_ns
        self.dirty = False
        pending, self.pending = self.pending, set()
        self._fanout.drain()  # the snapshots come after what was published before them
        for member in tuple(self.members):
            reason = "subscribe" if member in pending else "resync"
            member.deliver(self.snapshot(reason), self.kind, self.key, now_ns)
            if member in pending and member in self.members:
                self._fanout.receive(member, self)

    def on_gap(self) -> None:
        """The source lost the book: nothing is published until its next snapshot,
        which reaches every member as a ``resync`` snapshot."""

    def publish_change(self, bids: list[tuple[str, str]], asks: list[tuple[str, str]],
                       prev_seq: int, now_ns: int) -> None:
        if not self.members or len(self.pending) == len(self.members):
            return
        view = self.view
        message = protocol.book_update_message(
            self.symbol, view.seq, prev_seq, bids, asks,
            view.checksum if self.checksum else None, view.ts_event, view.ts_recv, self._clock())
        self.publish(self.frame(message), now_ns)


class BboGroup(ViewGroup):
    """``bbo`` subscribers of one symbol with the same interval."""

    kind = Kind.BBO
    channel = "bbo"

    def __init__(self, symbol: str, interval_ms: int, deflater: Deflater, clock: Clock,
                 fanout: FanOut) -> None:
        super().__init__(symbol, 1, interval_ms, deflater, clock, fanout)
        self._current: Frame | None = None

    def join(self, member: Member, book: Book, now_ns: int) -> None:
        """Add a member: it gets the current best bid and offer when there is a book."""
        self.members[member] = None
        if book.valid:
            if self.view.seq == 0:
                self.view.advance(book, None)
                self.last_publish_ns = now_ns
                self._current = None
            self._fanout.drain()  # the bbo comes after what was published before it
            member.deliver(self.current(), self.kind, self.key, now_ns)
        self._fanout.receive(member, self)

    def current(self) -> Frame:
        """The encoded bbo of the published view."""
        if self._current is None:
            view = self.view
            message = protocol.bbo_message(
                self.symbol, view.seq, view.bids[0] if view.bids else None,
                view.asks[0] if view.asks else None, view.ts_event, view.ts_recv, self._clock())
            self._current = self.frame(message)
        return self._current

    def publish_change(self, bids: list[tuple[str, str]], asks: list[tuple[str, str]],
                       prev_seq: int, now_ns: int) -> None:
        self._current = None
        if self.members:
            self.publish(self.current(), now_ns)
