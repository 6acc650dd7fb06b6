"""One client connection's protocol state, free of IO.

A session reads requests (``handle``), joins and leaves subscription groups, receives
published frames (``deliver`` one at a time, ``deliver_many`` a run handed out by the
fan-out) into its bounded outbox, applies the lag policy when the outbox goes over
budget, makes heartbeats, and decides when and how the connection closes. The
connection module (``feed.wsconn``) moves its bytes.

States::

    OPEN --close(code)--> CLOSING --closed()--> CLOSED
      \\______________________________________/
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from feed import protocol
from feed.access import ANONYMOUS, Grant
from feed.fanout import Entry
from feed.groups import BboGroup, BookGroup, Group, TradeGroup
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
    ``grant`` is what the client's API key may use (``feed.access``): a request for
    anything else gets ``forbidden``, and a second such request closes with 4003.
    ``stats`` may be shared between sessions. ``on_ready`` is called when the outbox
    goes from empty to non-empty, so that the connection's sender wakes up.
    """

    def __init__(
        self, hub: Hub, limits: SessionLimits, *, wbits: int, now_ns: int,
        stats: SessionStats | None = None, on_ready: Callable[[], None] = lambda: None,
        grant: Grant = ANONYMOUS,
    ) -> None:
        self.hub = hub
        self.grant = grant
        self.limits = limits
        self.wbits = wbits
        self.on_ready = on_ready
        self.outbox = Outbox(limits.max_queued_bytes, limits.max_queue_age_ns)
        self.subs: dict[str, Group] = {}
        self._unsent_seq: dict[str, int] = {}
        self.state = State.OPEN
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""
        self.stats = stats if stats is not None else SessionStats()
        self._tokens = float(limits.request_burst)
        self._refilled_ns = now_ns
        self._refused = 0
        self._forbidden = 0

    def refuse(self, code: str, message: str, now_ns: int) -> None:
        """Turn the client away at the handshake: an ``error`` then close 1008."""
        self.send(protocol.error_message(code, message), now_ns)
        self.close(CLOSE_POLICY, message)

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
            if exc.code == "forbidden":
                self._forbidden += 1
                if self._forbidden > 1:
                    self.close(CLOSE_FORBIDDEN, "asked again for what its key may not have")

    def _admit(self, now_ns: int) -> bool:
        """Token bucket on the request rate: a burst over it is refused with
        ``rate_limited``; going on while refused closes the connection with 1008."""
        if self._take_token(now_ns):
            return True
        if self.state is State.OPEN:
            self.send(protocol.error_message(
                "rate_limited",
                f"more than {self.limits.request_rate:g} requests per second; slow down"),
                now_ns)
        return False

    def _take_token(self, now_ns: int) -> bool:
        """One token of the request bucket (requests and pings share it); refused,
        and refused more than a burst's worth in a row, closes 1008."""
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
        return False

    def _dispatch(self, request: protocol.Request, now_ns: int) -> None:
        if isinstance(request, protocol.Subscribe):
            self._check_grant(request)
            joins = self.hub.subscribe(self, request, self.subs, self.limits.max_subscriptions)
            self.send(protocol.subscribed_message(request), now_ns)
            for key, group in joins:
                self.subs[key] = group
                self._unsent_seq[key] = self._nothing_sent_at(group)
                self.hub.join(self, group, now_ns)
            if self.state is not State.OPEN:  # closed for lag while joining
                self._leave_all()
        elif isinstance(request, protocol.Unsubscribe):
            keys = [f"{request.channel}:{s}" for s in request.symbols]
            missing = [k for k in keys if k not in self.subs]
            if missing:
                raise RequestError("not_subscribed",
                                   f"not subscribed to {protocol.quote(missing[0])}", request.id)
            for key in keys:
                self.hub.leave(self, self.subs.pop(key))
                del self._unsent_seq[key]
                self.outbox.drop_key(key)
            self.send(protocol.unsubscribed_message(request), now_ns)
        elif isinstance(request, protocol.Resync):
            key = f"book:{request.symbol}"
            book_group = self.subs.get(key)
            if not isinstance(book_group, BookGroup):
                raise RequestError("not_subscribed", f"not subscribed to {protocol.quote(key)}",
                                   request.id)
            if self.hub.book_of(request.symbol).valid and self not in book_group.pending:
                self.outbox.drop_key(key)
                self._push(book_group.snapshot("resync").for_client(self.wbits), Kind.BOOK,
                           key, now_ns)
            # else: the snapshot follows by itself when the book comes back
        elif isinstance(request, protocol.ListSymbols):
            self.send(protocol.symbols_message(request.id, self.hub.symbol_list(),
                                               self.grant.channels_for), now_ns)
        else:
            self.send(protocol.pong_message(request.id, now_ns), now_ns)

    def _check_grant(self, request: protocol.Subscribe) -> None:
        """Raise ``forbidden`` when the key may not have the channel for one of the
        symbols the server carries (an unknown symbol is the hub's ``unknown_symbol``)."""
        grant = self.grant
        carried = self.hub.symbols
        refused = [s for s in request.symbols
                   if s in carried and not grant.allows(request.channel, s)]
        if refused:
            raise RequestError(
                "forbidden", f"this key may not have {request.channel} for "
                f"{protocol.quote(refused[0])}; send {{\"op\": \"list\"}} for what it may "
                "have", request.id)

    # -- outbound ---------------------------------------------------------------------

    def send(self, message: protocol.Message, now_ns: int) -> None:
        """Queue a message for this client only (replies, notices, heartbeats)."""
        if self.state is State.OPEN:
            self._push(self._frame(message), Kind.CONTROL, None, now_ns)

    def _frame(self, message: protocol.Message) -> bytes:
        """This client's frame of a message of its own (compressed if negotiated)."""
        return Frame(protocol.encode(message), self.hub.deflater).for_client(self.wbits)

    def push_control(self, data: bytes, now_ns: int) -> None:
        """Queue a control frame the connection built (a ping)."""
        if self.state is State.OPEN:
            self._push(data, Kind.CONTROL, None, now_ns)

    def answer_ping(self, pong: bytes, now_ns: int) -> None:
        """Queue the pong for a client's ping. Pings take tokens from the request
        bucket: beyond the burst a ping goes unanswered (RFC 6455 5.5.3 lets a pong
        answer only the latest ping) and a flood closes 1008, so pongs cannot pile up
        in the outbox of a client that sends pings and reads nothing."""
        if self.state is State.OPEN and self._take_token(now_ns):
            self._push(pong, Kind.CONTROL, None, now_ns)

    def deliver(self, frame: Frame, kind: Kind, key: str, now_ns: int) -> None:
        """Queue a published frame; apply the lag policy when over budget. (The hot
        path: ``_push`` inlined.)"""
        if self.state is State.OPEN:
            outbox = self.outbox
            if outbox.push(frame.for_client(self.wbits), kind, key, now_ns):
                self._lag(now_ns)
            elif len(outbox) == 1:
                self.on_ready()

    def deliver_many(self, entries: list[Entry], size: int, now_ns: int) -> None:
        """Queue a run of published frames (``size`` bytes in all) in one go; apply the
        lag policy when over budget."""
        if self.state is State.OPEN:
            outbox = self.outbox
            was_empty = not outbox
            if outbox.extend(entries, size, now_ns):
                self._lag(now_ns)
            elif was_empty:
                self.on_ready()

    def _push(self, data: bytes, kind: Kind, key: str | None, now_ns: int) -> None:
        if self.outbox.push(data, kind, key, now_ns):
            self._lag(now_ns)
        elif len(self.outbox) == 1:
            self.on_ready()

    def _append(self, data: bytes, kind: Kind, key: str | None, now_ns: int) -> None:
        """Queue without applying the lag policy (the policy's own frames)."""
        self.outbox.push(data, kind, key, now_ns)
        if len(self.outbox) == 1:
            self.on_ready()

    def _lag(self, now_ns: int) -> None:
        """PROTOCOL.md 4.3-4.4: replace queued book and bbo frames by one fresh
        snapshot each. A client still over budget without them (behind on its trades,
        or not reading its replies), or behind for longer than ``max_behind_ns`` of
        wall-clock time, gets a ``lag`` notice and close 4001."""
        outbox = self.outbox
        wall = self.hub.clock()
        if outbox.behind_since is None:
            outbox.behind_since = wall
        before = len(outbox)
        keys = outbox.drop_conflatable(now_ns)
        self.stats.dropped_frames += before - len(outbox)
        self.stats.lag_resyncs += 1
        if outbox.over_budget(now_ns):
            what = "its trades" if outbox.holds(Kind.TRADE) else "what it is sent"
            self._slow(f"too slow to keep up with {what}", now_ns)
            return
        behind_since = outbox.behind_since
        if behind_since is not None and wall - behind_since > self.limits.max_behind_ns:
            self._slow(f"behind for more than {self.limits.max_behind_ns / 1e9:g} s", now_ns)
            return
        for key in keys:
            group = self.subs[key]
            channel, symbol = key.split(":", 1)
            notice = protocol.notice_message(
                "lag", f"connection behind: {channel} of {symbol} restarts from the latest "
                "state", symbol)
            self._append(self._frame(notice), Kind.CONTROL, None, now_ns)
            if isinstance(group, BookGroup):
                # During a source gap there is no fresh book: the next source snapshot
                # reaches this member like every other.
                if self.hub.book_of(symbol).valid and self not in group.pending:
                    self._append(group.snapshot("lag").for_client(self.wbits), Kind.BOOK,
                                 key, now_ns)
            elif isinstance(group, BboGroup):
                self._append(group.current().for_client(self.wbits), Kind.BBO, key, now_ns)

    def _slow(self, why: str, now_ns: int) -> None:
        self.stats.dropped_frames += self.outbox.clear()
        notice = protocol.notice_message("lag", f"slow consumer: {why}; disconnecting")
        self._append(self._frame(notice), Kind.CONTROL, None, now_ns)
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer")

    def _nothing_sent_at(self, group: Group) -> int:
        """The group seq up to which a new member has been sent nothing: trades join
        between trades, and a bbo member gets nothing at join when there is no book.
        Book members are tracked by their group's ``pending`` set instead."""
        if isinstance(group, TradeGroup) or (
                isinstance(group, BboGroup) and not self.hub.book_of(group.symbol).valid):
            return group.seq
        return -1

    def heartbeat(self, now_ns: int) -> None:
        """Queue a heartbeat: the last seq sent to this connection for each subscription
        that has been sent something (PROTOCOL.md 4, ``heartbeat``)."""
        seqs = {key: group.seq for key, group in self.subs.items()
                if group.seq > self._unsent_seq[key]
                and not (isinstance(group, BookGroup) and self in group.pending)}
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
        self._unsent_seq.clear()

