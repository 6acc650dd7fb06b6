"""The hub: every symbol's book, its subscription groups, and the conflation schedule.

The ingester calls ``apply`` with each normalized event; sessions call ``subscribe``,
``unsubscribe``, ``resync`` and ``leave``; the snapshotter calls ``run_due`` when the
earliest conflated group is due (``next_due``). The hub never waits and never does IO:
what it publishes goes into the members' bounded outboxes.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from feed import protocol
from feed.book import Book
from feed.events import BookDelta, BookSnapshot, Event, Gap, Trade
from feed.fanout import FanOut, Member
from feed.groups import BboGroup, BookGroup, Clock, Group, TradeGroup, ViewGroup
from feed.protocol import BookOptions, RequestError
from feed.wsframe import Deflater


@dataclass
class HubStats:
    """Counters the metrics endpoint reads."""

    events: dict[str, int] = field(
        default_factory=lambda: {"book_snapshot": 0, "book_delta": 0, "trade": 0, "gap": 0})
    ignored_deltas: int = 0


class SymbolState:
    """One symbol's book and the groups subscribed to it."""

    __slots__ = ("bbo_groups", "book", "book_groups", "trades")

    def __init__(self, symbol: str, deflater: Deflater, clock: Clock, fanout: FanOut) -> None:
        self.book = Book(symbol)
        self.book_groups: dict[tuple[int, int, bool], BookGroup] = {}
        self.bbo_groups: dict[int, BboGroup] = {}
        self.trades = TradeGroup(symbol, deflater, clock, fanout)

    def view_groups(self) -> list[ViewGroup]:
        """A copy: publishing may remove a group whose last member falls behind."""
        return [*self.book_groups.values(), *self.bbo_groups.values()]


class Hub:
    """All books and subscription groups of one server process."""

    def __init__(self, clock: Clock, deflater: Deflater | None = None) -> None:
        self.clock = clock
        self.on_due_changed: Callable[[], None] = lambda: None
        """Called when a conflated group becomes the earliest due (wakes the snapshotter)."""
        self.deflater = deflater or Deflater()
        self.fanout = FanOut()
        """Hands published frames out to the members (in batches while held)."""
        self.symbols: dict[str, SymbolState] = {}
        self.stats = HubStats()
        self._due: list[tuple[int, int, ViewGroup]] = []
        self._tiebreak = itertools.count()

    # -- symbols and events -----------------------------------------------------------

    def add_symbol(self, symbol: str) -> SymbolState:
        """Carry ``symbol`` (idempotent): it is listed and can be subscribed to."""
        state = self.symbols.get(symbol)
        if state is None:
            state = self.symbols[symbol] = SymbolState(symbol, self.deflater, self.clock,
                                                             self.fanout)
        return state

    def idle(self) -> bool:
        """True when no symbol has a subscription group with anyone in it (nor an
        empty book or bbo group): then an event changes nothing but the books and
        counters, and ``feed.bulk`` may apply many at once."""
        return not any(state.book_groups or state.bbo_groups or state.trades.members
                       for state in self.symbols.values())

    def apply(self, event: Event, ts_recv: int) -> None:
        """Apply one event, stamped ``ts_recv`` by the ingester, and publish what it
        changes to every group of its symbol."""
        state = self.symbols.get(event.symbol) or self.add_symbol(event.symbol)
        now = ts_recv
        if isinstance(event, BookDelta):
            self.stats.events["book_delta"] += 1
            change = state.book.apply_delta(event, ts_recv)
            if change is None:
                self.stats.ignored_deltas += 1
                return
            for group in state.view_groups():
                if group.conflated:
                    self._mark_dirty(group, now)
                else:
                    group.on_change(state.book, change, now)
        elif isinstance(event, Trade):
            self.stats.events["trade"] += 1
            state.trades.on_trade(event, ts_recv)
        elif isinstance(event, BookSnapshot):
            self.stats.events["book_snapshot"] += 1
            state.book.apply_snapshot(event, ts_recv)
            # Copies: a member that falls behind while we publish may empty its group.
            for book_group in tuple(state.book_groups.values()):
                book_group.on_reset(state.book, now)
            for bbo_group in tuple(state.bbo_groups.values()):
                bbo_group.on_change(state.book, None, now)
        elif isinstance(event, Gap):
            self.stats.events["gap"] += 1
            state.book.invalidate()
            notice = protocol.notice_message(
                "gap", f"the feed lost {event.symbol}'s book; a book_snapshot follows when it "
                "resumes", event.symbol)
            for group in state.view_groups():
                group.dirty = False  # a conflated group must not publish the emptied book
                if isinstance(group, BookGroup):
                    group.on_gap()
                # A control frame: the lag policy must not drop it with the book's. bbo
                # members get it too: their last bbo is stale until the next snapshot.
                group.notify_all(group.frame(notice), now)

    # -- conflation -------------------------------------------------------------------

    def _mark_dirty(self, group: ViewGroup, now: int) -> None:
        group.dirty = True  # even when scheduled: a snapshot may have cleared it since
        if group.scheduled:
            return
        due = group.due_at()
        if due <= now:
            group.on_change(self.symbols[group.symbol].book, None, now)
            return
        group.scheduled = True
        entry = (due, next(self._tiebreak), group)
        heapq.heappush(self._due, entry)
        if self._due[0] is entry:
            self.on_due_changed()

    def next_due(self) -> int | None:
        """When the earliest conflated group is due (ns, the clock's), or ``None``."""
        return self._due[0][0] if self._due else None

    def run_due(self, now: int) -> None:
        """Publish every conflated group that is due."""
        due = self._due
        self.fanout.hold()
        try:
            while due and due[0][0] <= now:
                _, _, group = heapq.heappop(due)
                group.scheduled = False
                book = self.symbols[group.symbol].book
                if group.dirty and group.members and book.valid:
                    group.on_change(book, None, now)
        finally:
            self.fanout.release()

    # -- subscriptions ----------------------------------------------------------------

    def subscribe(
        self, member: Member, request: protocol.Subscribe, current: dict[str, Group], limit: int,
    ) -> list[tuple[str, Group]]:
        """Check a subscribe request against the member's ``current`` subscriptions and
        return the (key, group) pairs to join, in request order. Raises
        ``RequestError`` (nothing joined) when any symbol is unknown, already
        subscribed, or the member would pass ``limit`` subscriptions."""
        unknown = [s for s in request.symbols if s not in self.symbols]
        if unknown:
            raise RequestError("unknown_symbol", f"unknown symbol {protocol.quote(unknown[0])}; "
                               "send {\"op\": \"list\"} for the symbols served", request.id)
        keys = [f"{request.channel}:{s}" for s in request.symbols]
        taken = [k for k in keys if k in current]
        if taken:
            raise RequestError("already_subscribed",
                               f"already subscribed to {protocol.quote(taken[0])}",
                               request.id)
        if len(current) + len(keys) > limit:
            raise RequestError("too_many_subscriptions",
                               f"at most {limit} subscriptions per connection", request.id)
        return [(key, self._group(request.channel, symbol, request.options))
                for key, symbol in zip(keys, request.symbols, strict=True)]

    def join(self, member: Member, group: Group, now: int) -> None:
        """Add ``member`` to ``group``; it gets the group's first message."""
        state = self.symbols[group.symbol]
        if isinstance(group, TradeGroup):
            group.join(member, now)
        elif isinstance(group, (BookGroup, BboGroup)):
            group.join(member, state.book, now)

    def leave(self, member: Member, group: Group) -> None:
        """Remove ``member`` from ``group``; an empty group is forgotten."""
        group.leave(member)
        if group.members:
            return
        state = self.symbols[group.symbol]
        if isinstance(group, BookGroup):
            options = (group.view.depth, group.interval_ns // 1_000_000, group.checksum)
            if state.book_groups.get(options) is group:
                del state.book_groups[options]
        elif isinstance(group, BboGroup):
            interval = group.interval_ns // 1_000_000
            if state.bbo_groups.get(interval) is group:
                del state.bbo_groups[interval]

    def _group(self, channel: str, symbol: str, options: BookOptions) -> Group:
        state = self.symbols[symbol]
        if channel == "trades":
            return state.trades
        if channel == "bbo":
            bbo = state.bbo_groups.get(options.interval_ms)
            if bbo is None:
                bbo = BboGroup(symbol, options.interval_ms, self.deflater, self.clock,
                               self.fanout)
                state.bbo_groups[options.interval_ms] = bbo
            return bbo
        key = (options.depth, options.interval_ms, options.checksum)
        book = state.book_groups.get(key)
        if book is None:
            book = BookGroup(symbol, options.depth, options.interval_ms, options.checksum,
                             self.deflater, self.clock, self.fanout)
            state.book_groups[key] = book
        return book

    def symbol_list(self) -> list[str]:
        return sorted(self.symbols)

    def book_of(self, symbol: str) -> Book:
        return self.symbols[symbol].book
