"""What one logical client knows across connections: its subscriptions, their books and
sequence trackers, and counters. Pure (sans-IO): messages in, requests out.

``ClientSession`` is what ``BookKeeper`` drives over the network:

- ``subscribe()`` / ``unsubscribe()`` record what the client wants and return the request;
- ``connected()`` (after every handshake) resets every subscription and returns the
  ``subscribe`` requests that restore them;
- ``receive(msg)`` checks and applies one server message and returns the requests it
  calls for: one ``resync`` per book subscription that has just broken (a subscription
  already waiting for its snapshot asks nothing more).

Requests are dicts without ``id``; the connection numbers them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from clients.codec import build_request
from clients.errors import ChainBreak, ChecksumMismatch, IntegrityError, SeqGap
from clients.messages import Bbo, BookSnapshot, BookUpdate, Heartbeat, Message, Trade, parse_message
from clients.subscription import BookSubscription, SeqTracker

CHANNELS = ("book", "trades", "bbo")


@dataclass(frozen=True, slots=True)
class SubscriptionSpec:
    """One ``subscribe`` request to repeat after a reconnect."""

    channel: str
    symbols: tuple[str, ...]
    options: tuple[tuple[str, Any], ...] = ()

    def request(self) -> Message:
        """The ``subscribe`` request object (without ``id``)."""
        return build_request(
            "subscribe", channel=self.channel, symbols=list(self.symbols), **dict(self.options)
        )


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    """Counters over the whole life of a session (all connections)."""

    messages: int = 0
    """Server messages received (batches counted per message)."""
    connections: int = 0
    """Successful handshakes."""
    reconnects: int = 0
    """Successful handshakes after the first."""
    connect_failures: int = 0
    """Connection attempts that failed or were refused."""
    resyncs: int = 0
    """``resync`` requests asked for."""
    chain_breaks: int = 0
    checksum_failures: int = 0
    seq_gaps: int = 0
    """Trade/bbo seq gaps and heartbeats showing missed messages."""
    errors: int = 0
    """``error`` replies from the server."""
    notices: int = 0


class ClientSession:
    """Subscriptions, books and integrity checks of one client, independent of sockets."""

    def __init__(self) -> None:
        self._specs: list[SubscriptionSpec] = []
        self._books: dict[str, BookSubscription] = {}
        self._trackers: dict[tuple[str, str], SeqTracker] = {}
        self._counts: dict[str, int] = {f.name: 0 for f in fields(SessionStatistics)}
        self.last_error: IntegrityError | None = None
        """The most recent integrity error, for display and debugging."""

    @property
    def books(self) -> Mapping[str, BookSubscription]:
        """The ``book`` subscriptions by symbol."""
        return self._books

    @property
    def subscriptions(self) -> Sequence[SubscriptionSpec]:
        """What ``connected()`` will resubscribe, in order."""
        return tuple(self._specs)

    def tracker(self, channel: str, symbol: str) -> SeqTracker | None:
        """The seq tracker of a ``trades`` or ``bbo`` subscription, if subscribed."""
        return self._trackers.get((channel, symbol))

    def statistics(self) -> SessionStatistics:
        """A snapshot of the counters."""
        return SessionStatistics(**self._counts)

    # -- what the client asks for ------------------------------------------------------

    def subscribe(self, channel: str, symbols: Sequence[str], **options: Any) -> Message:
        """Record a subscription and return its request.

        Raises ``ValueError`` for a channel this client does not know or no symbols.
        """
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; expected one of {CHANNELS}")
        if not symbols or isinstance(symbols, str):
            raise ValueError("symbols must be a non-empty list of symbols")
        options_key = tuple(sorted(options.items()))
        request = SubscriptionSpec(channel, tuple(symbols), options_key).request()
        # A symbol already subscribed keeps its state (the server answers the repeat
        # with `already_subscribed`) and is not subscribed twice after a reconnect.
        fresh = tuple(s for s in dict.fromkeys(symbols) if not self._subscribed(channel, s))
        if not fresh:
            return request
        spec = SubscriptionSpec(channel, fresh, options_key)
        self._specs.append(spec)
        for symbol in spec.symbols:
            if channel == "book":
                self._books[symbol] = BookSubscription(symbol, int(options.get("depth", 10)))
            else:
                self._trackers[(channel, symbol)] = SeqTracker(
                    symbol, channel, step_one=channel == "trades"
                )
        return request

    def unsubscribe(self, channel: str, symbols: Sequence[str]) -> Message:
        """Forget ``symbols`` on ``channel`` and return the ``unsubscribe`` request."""
        gone = set(symbols)
        specs = []
        for spec in self._specs:
            kept = spec.symbols if spec.channel != channel else tuple(
                s for s in spec.symbols if s not in gone
            )
            if kept:
                specs.append(SubscriptionSpec(spec.channel, kept, spec.options))
        self._specs = specs
        for symbol in gone:
            if channel == "book":
                self._books.pop(symbol, None)
            else:
                self._trackers.pop((channel, symbol), None)
        return build_request("unsubscribe", channel=channel, symbols=list(symbols))

    def connected(self) -> list[Message]:
        """A new connection is up: reset every subscription; return the requests that
        restore them."""
        self._count("connections")
        if self._counts["connections"] > 1:
            self._count("reconnects")
        for book in self._books.values():
            book.reset()
        for tracker in self._trackers.values():
            tracker.reset()
        return [spec.request() for spec in self._specs]

    def connect_failed(self) -> None:
        """Count a failed connection attempt."""
        self._count("connect_failures")

    # -- what the server sends ---------------------------------------------------------

    def receive(self, msg: Message) -> list[Message]:
        """Check and apply one server message; return the requests it calls for.

        Raises ``BadMessage`` if a message the session checks is malformed.
        """
        self._count("messages")
        kind = msg.get("type")
        if kind == "error":
            self._count("errors")
        elif kind == "notice":
            self._count("notices")
        parsed = parse_message(msg)
        if isinstance(parsed, BookSnapshot | BookUpdate):
            book = self._books.get(parsed.symbol)
            if book is not None:
                self._note(book.feed(parsed).error)
                return self._resyncs([book])
        elif isinstance(parsed, Trade | Bbo):
            channel = "trades" if isinstance(parsed, Trade) else "bbo"
            tracker = self._trackers.get((channel, parsed.symbol))
            if tracker is not None:
                self._note(tracker.observe(parsed.seq))
        elif isinstance(parsed, Heartbeat):
            return self._heartbeat(parsed)
        return []

    def _heartbeat(self, heartbeat: Heartbeat) -> list[Message]:
        touched: list[BookSubscription] = []
        for key, seq in heartbeat.seqs.items():
            channel, _, symbol = key.partition(":")
            if channel == "book":
                book = self._books.get(symbol)
                if book is not None:
                    self._note(book.check_heartbeat(seq))
                    touched.append(book)
            else:
                tracker = self._trackers.get((channel, symbol))
                if tracker is not None:
                    self._note(tracker.check_heartbeat(seq))
        return self._resyncs(touched)

    def _resyncs(self, books: Sequence[BookSubscription]) -> list[Message]:
        requests = []
        for book in books:
            if book.needs_resync:
                book.resync_sent()
                self._count("resyncs")
                requests.append(build_request("resync", channel="book", symbol=book.symbol))
        return requests

    def _subscribed(self, channel: str, symbol: str) -> bool:
        if channel == "book":
            return symbol in self._books
        return (channel, symbol) in self._trackers

    def _note(self, error: IntegrityError | None) -> None:
        if error is None:
            return
        self.last_error = error
        if isinstance(error, ChainBreak):
            self._count("chain_breaks")
        elif isinstance(error, ChecksumMismatch):
            self._count("checksum_failures")
        elif isinstance(error, SeqGap):
            self._count("seq_gaps")

    def _count(self, name: str) -> None:
        self._counts[name] += 1
