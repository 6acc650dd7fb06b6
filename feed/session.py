"""One client connection's protocol state, free of IO.

A session reads requests (``handle``), joins and leaves subscription groups, receives
published frames (``deliver``) into its bounded outbox, applies the lag policy when the
outbox goes over budget, makes heartbeats, and decides when and how the connection
closes. The connection module (``feed.connection``) moves its bytes.

States::

    OPEN --close(code)--> CLOSING --closed()--> CLOSED
      \\______________________________________/
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from feed import protocol
from feed.groups import BboGroup, BookGroup, Group
from feed.hub import Hub
from feed.outbox import Kind, Outbox
from feed.protocol import RequestError
from feed.wsframe import Frame

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SLOW_CONSUMER = 4001
CLOSE_FORBIDDEN = 4003


class State(Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Per-connection limits (see configs/default.toml for each one's meaning)."""

    max_queued_bytes: int = 4 << 20
    max_queue_age_ns: int = 2_000_000_000
    max_behind_ns: int = 10_000_000_000
    max_subscriptions: int = 1000
    request_rate: float = 50.0
    request_burst: int = 100


@dataclass(slots=True)
class SessionStats:
    """Counters shared by all sessions of a server (read by /metrics)."""

    lag_resyncs: int = 0
    dropped_frames: int = 0
    requests: int = 0
    bad_requests: int = 0


class Session:
    """The protocol state of one WebSocket client.

    ``wbits`` is the negotiated permessage-deflate server window (0: uncompressed).
    ``stats`` may be shared between sessions. ``on_ready`` is called when the outbox
    goes from empty to non-empty, so that the connection's sender wakes up.
    """

    def __init__(
        self, hub: Hub, limits: SessionLimits, *, wbits: int, now_ns: int,
        stats: SessionStats | None = None, on_ready: Callable[[], None] = lambda: None,
    ) -> None:
        self.hub = hub
        self.limits = limits
        self.wbits = wbits
        self.on_ready = on_ready
        self.outbox = Outbox(limits.max_queued_bytes, limits.max_queue_age_ns)
        self.subs: dict[str, Group] = {}
        self.state = State.OPEN
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""
        self.stats = stats if stats is not None else SessionStats()
        self._tokens = float(limits.request_burst)
        self._refilled_ns = now_ns
        self._refused = 0

    # -- inbound ----------------------------------------------------------------------

    def handle(self, data: bytes | str, now_ns: int) -> None:
        """Handle one request message from the client."""
        if self.state is not State.OPEN:
            return
        self.stats.requests += 1
        if not self._admit(now_ns):
            return
        try:
            request = protocol.parse_request(data)
            self._dispatch(request, now_ns)
        except RequestError as exc:
            self.stats.bad_requests += 1
            self.send(protocol.error_message(exc.code, exc.message, exc.request_id), now_ns)

    def _admit(self, now_ns: int) -> bool:
        """Token bucket on the request rate: a burst over it is refused with
        ``rate_limited``; going on while refused closes the connection with 1008."""
        limits = self.limits
        elapsed = (now_ns - self._refilled_ns) / 1e9
        self._refilled_ns = now_ns
        refill = self._tokens + elapsed * limits.request_rate
        self._tokens = min(float(limits.request_burst), refill)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._refused = 0
            return True
        self._refused += 1
        if self._refused > limits.request_burst:
            self.close(CLOSE_POLICY, "request rate far over the limit")
        else:
            self.send(protocol.error_message(
                "rate_limited",
                f"more than {limits.request_rate:g} requests per second; slow down"), now_ns)
        return False

    def _dispatch(self, request: protocol.Request, now_ns: int) -> None:
        if isinstance(request, protocol.Subscribe):
            joins = self.hub.subscribe(self, request, self.subs, self.limits.max_subscriptions)
            self.send(protocol.subscribed_message(request), now_ns)
            for key, group in joins:
                self.subs[key] = group
                self.hub.join(self, group, now_ns)
        elif isinstance(request, protocol.Unsubscribe):
            keys = [f"{request.channel}:{s}" for s in request.symbols]
            missing = [k for k in keys if k not in self.subs]
            if missing:
                raise RequestError("not_subscribed", f"not subscribed to {missing[0]}", request.id)
            for key in keys:
                self.hub.leave(self, self.subs.pop(key))
                self.outbox.drop_key(key)
            self.send(protocol.unsubscribed_message(request), now_ns)
        elif isinstance(request, protocol.Resync):
            key = f"book:{request.symbol}"
            book_group = self.subs.get(key)
            if not isinstance(book_group, BookGroup):
                raise RequestError("not_subscribed", f"not subscribed to {key}", request.id)
            if self.hub.book_of(request.symbol).valid and self not in book_group.pending:
                self.outbox.drop_key(key)
                self._push(book_group.snapshot("resync"), Kind.BOOK, key, now_ns)
            # else: the snapshot follows by itself when the book comes back
        elif isinstance(request, protocol.ListSymbols):
            self.send(protocol.symbols_message(request.id, self.hub.symbol_list()), now_ns)
        else:
            self.send(protocol.pong_message(request.id, now_ns), now_ns)

    # -- outbound ---------------------------------------------------------------------

    def send(self, message: protocol.Message, now_ns: int) -> None:
        """Queue a message for this client only (replies, notices, heartbeats)."""
        if self.state is State.OPEN:
            frame = Frame(protocol.encode(message), self.hub.deflater)
            self._push(frame, Kind.CONTROL, None, now_ns)

    def deliver(self, frame: Frame, kind: Kind, key: str, now_ns: int) -> None:
        """Queue a published frame; apply the lag policy when over budget."""
        if self.state is not State.OPEN:
            return
        outbox = self.outbox
        if outbox.push(frame.for_client(self.wbits), kind, key, now_ns):
            self._lag(now_ns)
        elif len(outbox) == 1:
            self.on_ready()

    def _push(self, frame: Frame, kind: Kind, key: str | None, now_ns: int) -> None:
        self.outbox.push(frame.for_client(self.wbits), kind, key, now_ns)
        if len(self.outbox) == 1:
            self.on_ready()

    def _lag(self, now_ns: int) -> None:
        """PROTOCOL.md 4.3-4.4: replace queued book and bbo frames by one fresh
        snapshot each; a client behind on trades, or behind for too long, gets a
        ``lag`` notice and close 4001."""
        outbox = self.outbox
        before = len(outbox)
        keys = outbox.drop_conflatable(now_ns)
        self.stats.dropped_frames += before - len(outbox)
        self.stats.lag_resyncs += 1
        if outbox.holds(Kind.TRADE) and outbox.over_budget(now_ns):
            self._slow("too slow to keep up with its trades", now_ns)
            return
        behind_since = outbox.behind_since
        if behind_since is not None and now_ns - behind_since > self.limits.max_behind_ns:
            self._slow(f"behind for more than {self.limits.max_behind_ns // 10**9} s", now_ns)
            return
        for key in keys:
            group = self.subs[key]
            channel, symbol = key.split(":", 1)
            self.send(protocol.notice_message(
                "lag", f"connection behind: {channel} of {symbol} restarts from the latest state",
                symbol), now_ns)
            if isinstance(group, BookGroup):
                if self not in group.pending:
                    self._push(group.snapshot("lag"), Kind.BOOK, key, now_ns)
            elif isinstance(group, BboGroup):
                self._push(group.current(), Kind.BBO, key, now_ns)

    def _slow(self, why: str, now_ns: int) -> None:
        self.stats.dropped_frames += self.outbox.clear()
        self.send(protocol.notice_message("lag", f"slow consumer: {why}; disconnecting"), now_ns)
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    def heartbeat(self, now_ns: int) -> None:
        """Queue a heartbeat: the last seq sent for each subscription."""
        seqs = {key: group.seq for key, group in self.subs.items()
                if not (isinstance(group, BookGroup) and self in group.pending)}
        self.send(protocol.heartbeat_message(now_ns, seqs), now_ns)

    # -- closing ----------------------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """Stop taking data and close with ``code`` once the outbox is written."""
        if self.state is not State.OPEN:
            return
        self.close_code = code
        self.close_reason = reason
        self.state = State.CLOSING
        self._leave_all()
        self.on_ready()

    def closed(self) -> None:
        """The connection is gone."""
        self.state = State.CLOSED
        self._leave_all()

    def _leave_all(self) -> None:
        for group in self.subs.values():
            self.hub.leave(self, group)
        self.subs.clear()

