"""Per-subscription state: is this (channel, symbol) whole, or does it need a resync?

Pure: no IO, no trio. ``BookSubscription`` is the state machine of one ``book``
subscription, written as an Enum and a transition table (as h11's ``_state.py``)::

    AWAITING_SNAPSHOT --snapshot--> LIVE --update--> LIVE
          |                          |  \\--snapshot (lag)--> LIVE
          |                        break
          +------bad snapshot------> BROKEN --resync sent--> RESYNCING --snapshot--> LIVE
                                     ^                          |
                                     +--------bad snapshot------+

A break is a ``ChainBreak``, a ``ChecksumMismatch`` or a heartbeat showing a missed
message. ``needs_resync`` is true exactly in ``BROKEN``: the connection sends one
``resync`` and reports it with ``resync_sent()``. Updates that arrive while a snapshot is
awaited (``AWAITING_SNAPSHOT``, ``BROKEN``, ``RESYNCING``) are skipped: they belong to the
broken chain, and the snapshot on its way replaces the book anyway. ``reset()`` (after a
reconnect) goes back to ``AWAITING_SNAPSHOT`` from anywhere.

``SeqTracker`` checks the ``trades`` promise (seq grows by exactly 1) and the ``bbo`` one
(seq strictly increases). Neither channel can be resynced; a gap is reported and
tracking continues from the new seq.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from clients.book import ClientBook
from clients.errors import ChecksumMismatch, IntegrityError, InvalidTransition, SeqGap
from clients.messages import BookSnapshot, BookUpdate


class SubState(Enum):
    """Where one book subscription stands."""

    AWAITING_SNAPSHOT = "awaiting_snapshot"
    """Subscribed (or resubscribed); the first snapshot has not arrived."""
    LIVE = "live"
    """The book is whole and follows the server's."""
    BROKEN = "broken"
    """A break was seen; a ``resync`` must be sent."""
    RESYNCING = "resyncing"
    """A ``resync`` was sent; waiting for its snapshot."""


class SubEvent(Enum):
    """What can happen to a book subscription."""

    SNAPSHOT = "snapshot"
    UPDATE = "update"
    BREAK = "break"
    RESYNC_SENT = "resync_sent"
    RESET = "reset"


_TRANSITIONS: dict[tuple[SubState, SubEvent], SubState] = {
    (SubState.AWAITING_SNAPSHOT, SubEvent.SNAPSHOT): SubState.LIVE,
    (SubState.AWAITING_SNAPSHOT, SubEvent.BREAK): SubState.BROKEN,
    (SubState.LIVE, SubEvent.SNAPSHOT): SubState.LIVE,
    (SubState.LIVE, SubEvent.UPDATE): SubState.LIVE,
    (SubState.LIVE, SubEvent.BREAK): SubState.BROKEN,
    (SubState.BROKEN, SubEvent.SNAPSHOT): SubState.LIVE,
    (SubState.BROKEN, SubEvent.BREAK): SubState.BROKEN,
    (SubState.BROKEN, SubEvent.RESYNC_SENT): SubState.RESYNCING,
    (SubState.RESYNCING, SubEvent.SNAPSHOT): SubState.LIVE,
    (SubState.RESYNCING, SubEvent.BREAK): SubState.BROKEN,
}
"""Allowed transitions; ``RESET`` is allowed from every state (to ``AWAITING_SNAPSHOT``)."""


def next_state(state: SubState, event: SubEvent) -> SubState:
    """The state after ``event`` in ``state``; raises ``InvalidTransition`` if not allowed."""
    if event is SubEvent.RESET:
        return SubState.AWAITING_SNAPSHOT
    try:
        return _TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"{event.value} is not allowed in {state.value}") from None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What feeding one book message did: ``applied`` to the book or skipped, and the
    integrity error it revealed, if any (the subscription is then ``BROKEN``)."""

    applied: bool
    error: IntegrityError | None = None


class BookSubscription:
    """One ``book`` subscription to one symbol: its ``ClientBook`` and its state."""

    def __init__(self, symbol: str, depth: int = 10) -> None:
        self.symbol = symbol
        self.book = ClientBook(symbol, depth)
        self._state = SubState.AWAITING_SNAPSHOT

    @property
    def state(self) -> SubState:
        """The current state."""
        return self._state

    @property
    def needs_resync(self) -> bool:
        """True when a break was seen and no ``resync`` has been sent for it yet."""
        return self._state is SubState.BROKEN

    @property
    def live(self) -> bool:
        """True when the book is whole and current."""
        return self._state is SubState.LIVE

    def feed(self, message: BookSnapshot | BookUpdate) -> Outcome:
        """Apply a book message for this symbol and move the state accordingly.

        Never raises an ``IntegrityError``: it is returned in the ``Outcome``.
        """
        if isinstance(message, BookSnapshot):
            try:
                self.book.apply_snapshot(message)
            except IntegrityError as exc:
                return self._break(exc, applied=True)
            self._state = next_state(self._state, SubEvent.SNAPSHOT)
            return Outcome(applied=True)
        if self._state is not SubState.LIVE:
            return Outcome(applied=False)
        try:
            self.book.apply_update(message)
        except IntegrityError as exc:
            # A ChainBreak leaves the book untouched; a ChecksumMismatch is raised after.
            return self._break(exc, applied=isinstance(exc, ChecksumMismatch))
        self._state = next_state(self._state, SubEvent.UPDATE)
        return Outcome(applied=True)

    def check_heartbeat(self, seq: int) -> IntegrityError | None:
        """Compare a heartbeat's last-sent ``seq`` with the book's.

        A live book that is behind it missed messages: the subscription becomes
        ``BROKEN`` and the ``SeqGap`` is returned.
        """
        if self._state is not SubState.LIVE or self.book.seq == seq:
            return None
        error = SeqGap(self.symbol, "book", self.book.seq or 0, seq)
        self._break(error, applied=False)
        return error

    def resync_sent(self) -> None:
        """Record that a ``resync`` was sent; raises ``InvalidTransition`` unless BROKEN."""
        self._state = next_state(self._state, SubEvent.RESYNC_SENT)

    def reset(self) -> None:
        """Start over after a reconnect: the book is unknown until the next snapshot."""
        self.book.clear()
        self._state = next_state(self._state, SubEvent.RESET)

    def _break(self, error: IntegrityError, *, applied: bool) -> Outcome:
        self._state = next_state(self._state, SubEvent.BREAK)
        return Outcome(applied=applied, error=error)


class SeqTracker:
    """Sequence checks for a channel that cannot be resynced (``trades``, ``bbo``).

    With ``step_one`` each seq must be the last plus 1 (trades); otherwise it must only
    increase (bbo, which shares the book's seq and may jump).
    """

    def __init__(self, symbol: str, channel: str, *, step_one: bool) -> None:
        self.symbol = symbol
        self.channel = channel
        self.step_one = step_one
        self.last: int | None = None

    def observe(self, seq: int) -> SeqGap | None:
        """Record a message's ``seq``; return a ``SeqGap`` if it breaks the promise."""
        last, self.last = self.last, seq
        if last is None:
            return None
        ok = seq == last + 1 if self.step_one else seq > last
        return None if ok else SeqGap(self.symbol, self.channel, last, seq)

    def check_heartbeat(self, seq: int) -> SeqGap | None:
        """A heartbeat's last-sent ``seq`` beyond ours means messages were missed."""
        if self.last is None or seq == self.last:
            return None
        last, self.last = self.last, seq
        return SeqGap(self.symbol, self.channel, last, seq)

    def reset(self) -> None:
        """Forget the last seq (after a reconnect the server starts a new run)."""
        self.last = None
