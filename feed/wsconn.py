"""Runs one accepted WebSocket connection: one reader task, one sender task.

The reader feeds wsproto, assembles request messages (capped in size as they arrive)
and hands them to the session; it never writes. Writing takes everything pending in the
session's outbox and writes it as one buffer.

On a TCP socket the writes are direct non-blocking ``os.write`` calls made by the
server's ``Flusher``: one task that, after each batch of feed events, writes every
connection that has something pending, with no task switch per client. Only a
connection whose socket is full involves its own sender task, which waits until the
socket is writable and finishes the write. The sender task also sends heartbeats when
the connection is idle, pings a peer it has heard nothing from (and closes it with 1011
when the pong does not come) and performs the closing handshake: drain, close frame,
wait for the peer's close or a timeout. On other streams (TLS, in-memory test streams)
the sender task writes with ``send_all``.

Liveness, in the sender's loop (no task of its own): the reader notes when bytes last
came in. Once nothing has come for ``ping_interval_s`` the sender queues a Ping; once
nothing has come for ``pong_timeout_s`` after it, the peer is dead: its outbox is
dropped, it leaves its subscriptions, and it is closed with 1011 (``keepalive ping
timeout``, as the ``websockets`` library says). A write that stays blocked past that
point ends the same way, so a dead peer with a full socket is freed too.

wsproto frames the control messages (pong, close); data frames come prebuilt from the
session (``feed.wsframe``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    CloseConnection,
    Message,
    Ping,
    TextMessage,
)

from feed.metrics import Metrics
from feed.outbox import Kind, Outbox
from feed.session import CLOSE_INTERNAL_ERROR, CLOSE_POLICY, CLOSE_TOO_BIG, State

Clock = Callable[[], int]
log = logging.getLogger("tickwire.connection")
PAUSE_PER_PASS = 4.0
"""By default the flusher rests this many times as long as its last pass took
(``server.flush_pause_factor``)."""
MIN_PASS_TO_PAUSE_S = 0.0002
"""A pass shorter than this (a few clients) is followed by no wait at all."""


class Peer(Protocol):
    """What the connection needs from a session (``Session`` or ``EchoSession``)."""

    outbox: Outbox
    state: State
    close_code: int
    close_reason: str
    on_ready: Callable[[], None]

    def handle(self, data: bytes | str, now_ns: int) -> None: ...
    def push_control(self, data: bytes, now_ns: int) -> None: ...
    def answer_ping(self, pong: bytes, now_ns: int) -> None: ...
    def heartbeat(self, now_ns: int) -> None: ...
    def close(self, code: int, reason: str) -> None: ...
    def closed(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_message_bytes: int = 64 * 1024
    max_fragments: int = 1024
    heartbeat_s: float = 1.0
    ping_interval_s: float = 20.0
    pong_timeout_s: float = 20.0
    close_timeout_s: float = 2.0
    write_batch_bytes: int = 256 * 1024
    read_bytes: int = 65536


class Flusher:
    """Writes every connection marked as having pending data, in passes: one pass
    writes all the clients, instead of one task switch per client.

    The ingester runs the passes itself (``hold``, then ``handover`` or ``release``
    when its run of events ends), so a batch of feed events and its writes cost one
    wake-up. Marks made outside the ingester's runs (replies, snapshots, conflated
    groups) wake the flusher's own task (``run``).

    Adaptive coalescing: after a pass that took long (many clients to write), no pass
    starts for ``pause_per_pass`` times as long (at most ``max_pause_s``), so that each
    write carries more frames and the system calls per message fall as the load grows.
    A pass over a few clients costs microseconds and is followed by no rest at all.
    """

    def __init__(self, max_pause_s: float = 0.0, pause_per_pass: float = PAUSE_PER_PASS
                 ) -> None:
        self._dirty: dict[WebSocketConnection, None] = {}
        self._wake = trio.Event()
        self._held = False
        self.max_pause_s = max_pause_s
        """Longest rest after a pass."""
        self.pause_per_pass = pause_per_pass
        """The rest after a long pass, in passes' lengths."""
        self.rest_until = -math.inf
        """trio time before which no pass starts."""

    def mark(self, connection: WebSocketConnection) -> None:
        if not self._dirty and not self._held:
            self._wake.set()
        self._dirty[connection] = None

    def hold(self) -> None:
        """The ingester begins a run of events: it writes what they mark itself."""
        self._held = True

    def handover(self, next_at: float) -> float:
        """The ingester's run ends and it will wait for its next event, due at
        ``next_at`` (trio time). Writes what is pending unless resting; returns when
        the ingester should wake: at its next event, or at the end of the rest when
        that is later or something waits to be written (it writes it then)."""
        self._held = False
        if self._dirty and trio.current_time() >= self.rest_until:
            self._pass()
        if self._dirty or next_at < self.rest_until:
            return self.rest_until
        return next_at

    def release(self) -> None:
        """The ingester's run ends and it may not come back soon: writes what is
        pending, or leaves it to the flusher's task while resting."""
        self._held = False
        if self._dirty:
            if trio.current_time() >= self.rest_until:
                self._pass()
            else:
                self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            if trio.current_time() < self.rest_until:
                await trio.sleep_until(self.rest_until)
            if self._dirty:  # the ingester may have written them meanwhile
                self._pass()

    def _pass(self) -> None:
        began = trio.current_time()
        dirty, self._dirty = self._dirty, {}
        for connection in dirty:
            connection.flush_nowait()
        if self.max_pause_s:
            took = trio.current_time() - began
            if took > MIN_PASS_TO_PAUSE_S:
                self.rest_until = began + took + min(self.max_pause_s,
                                                     took * self.pause_per_pass)


class WebSocketConnection:
    """One open WebSocket connection between a trio stream and a session.

    With a ``flusher`` and a TCP ``trio.SocketStream``, data is written directly from
    the flusher (see the module docstring); otherwise by the sender task.
    """

    def __init__(
        self, stream: trio.abc.Stream, ws: Connection, session: Peer, clock: Clock,
        limits: ConnectionLimits, metrics: Metrics, flusher: Flusher | None = None,
    ) -> None:
        self.stream = stream
        self.ws = ws
        self.session = session
        self.clock = clock
        self.limits = limits
        self.metrics = metrics
        self._ready = trio.Event()
        self._peer_closed = trio.Event()
        self._fd = -1
        self._flusher = None
        if flusher is not None and isinstance(stream, trio.SocketStream):
            self._fd = stream.socket.fileno()
            self._flusher = flusher
        self._unsent = b""
        self._blocked = False  # the socket is full: the sender task waits to write
        self._broken = False  # a write failed: the peer is gone
        self._finished = False  # the socket is closed (its fd number may be reused)
        self._last_send = trio.current_time()
        self._heard = self._last_send  # when bytes last came in from the peer
        self._pinged: float | None = None  # when our unanswered Ping was queued
        self._write_wait: trio.CancelScope | None = None  # a wait the close interrupts
        session.on_ready = self._wake

    def _wake(self) -> None:
        if self.session.state is not State.OPEN:
            # Closing: stop waiting on a full socket; the close handshake has a deadline.
            # A stream write under way (TLS, memory) is left to finish within the close
            # timeout: cancelling it would cut it short and lose the close frame.
            self._ready.set()
            wait = self._write_wait
            if wait is not None and self._flusher is None:
                wait.deadline = min(wait.deadline,
                                    trio.current_time() + self.limits.close_timeout_s)
            elif wait is not None:
                wait.cancel()
        elif self._flusher is not None and not self._blocked:
            self._flusher.mark(self)
        else:
            self._ready.set()

    async def run(self) -> None:
        """Serve until the connection is closed; the stream is closed on return."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, nursery.cancel_scope)
                await self._sender()
                nursery.cancel_scope.cancel()
        finally:
            self._finished = True
            self.session.closed()
            with trio.CancelScope(shield=True), trio.move_on_after(0.5):
                await self.stream.aclose()

    # -- reading ----------------------------------------------------------------------

    async def _reader(self, connection_scope: trio.CancelScope) -> None:
        parts: list[bytes | str] = []
        size = 0
        frames = 0  # frames of the message under way (empty ones cost no bytes)
        ws = self.ws
        session = self.session
        limit = self.limits.max_message_bytes
        max_frames = self.limits.max_fragments
        try:
            while True:
                data = await self.stream.receive_some(self.limits.read_bytes)
                if not data:
                    break
                self._heard = trio.current_time()
                self._pinged = None
                if ws.state is ConnectionState.CLOSED:
                    continue  # after the closing handshake, bytes are discarded
                ws.receive_data(bytes(data))
                for event in ws.events():
                    if isinstance(event, Message):
                        chunk = event.data
                        size += len(chunk) if isinstance(chunk, bytes) else len(chunk.encode())
                        if size > limit:
                            session.close(CLOSE_TOO_BIG, "message too big")
                            parts.clear()
                            continue
                        frames += event.frame_finished
                        if frames > max_frames:
                            session.close(CLOSE_POLICY, "too many fragments in one message")
                            parts.clear()
                            continue
                        parts.append(chunk)
                        if event.message_finished:
                            message = _join(parts, isinstance(event, TextMessage))
                            parts.clear()
                            size = frames = 0
                            self._handle(message)
                    elif isinstance(event, Ping):
                        if ws.state is ConnectionState.OPEN:  # no pong after our close
                            self.session.answer_ping(ws.send(event.response()),
                                                     self.clock())
                    elif isinstance(event, CloseConnection):
                        self._on_close(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        # The peer is gone (or finished the closing handshake): nothing more to write.
        self._peer_closed.set()
        if self.ws.state is not ConnectionState.LOCAL_CLOSING:
            connection_scope.cancel()

    def _handle(self, message: bytes | str) -> None:
        """Hand one request to the session; a bug there closes this connection with
        1011 and is logged, and the server goes on serving everyone else."""
        try:
            self.session.handle(message, self.clock())
        except Exception:
            log.exception("internal error handling a request; closing with 1011")
            self.session.close(CLOSE_INTERNAL_ERROR, "internal error")

    def _on_close(self, event: CloseConnection) -> None:
        state = self.ws.state
        if state is ConnectionState.CLOSED:  # the peer answered our close
            self._peer_closed.set()
        elif state is ConnectionState.REMOTE_CLOSING:  # the peer closes: answer at once
            self.session.outbox.clear()
            self.session.close(event.code, event.reason or "")
            self._peer_closed.set()
        else:  # wsproto found a protocol error in what the peer sent
            self.session.close(event.code, event.reason or "")


    # -- writing ----------------------------------------------------------------------

    async def _sender(self) -> None:
        session = self.session
        heartbeat = self.limits.heartbeat_s
        try:
            while session.state is State.OPEN and not self._broken:
                if not self._keep_alive():
                    break
                if self._blocked:
                    with trio.CancelScope(deadline=self._dead_at()) as self._write_wait:
                        await trio.lowlevel.wait_writable(self._fd)
                        self._blocked = not self._write_nowait()
                    self._write_wait = None
                    continue
                if session.outbox and self._flusher is None:
                    scope = self._write_wait = trio.CancelScope(deadline=self._dead_at())
                    with scope:
                        await self._write_pending()
                    self._write_wait = None
                    if scope.cancelled_caught:
                        self._broken = True  # a frame may be cut: no clean close possible
                        if session.state is State.OPEN:  # the deadline, not a close
                            self._dead()
                    continue
                self._ready = trio.Event()
                wake = self._dead_at() if self._pinged is not None \
                    else self._heard + self.limits.ping_interval_s
                with trio.move_on_at(min(self._last_send + heartbeat, wake)):
                    await self._ready.wait()
                if (session.state is State.OPEN and not session.outbox and not self._blocked
                        and trio.current_time() >= self._last_send + heartbeat):
                    session.heartbeat(self.clock())
                    # Due again one interval from now, whether or not the session had
                    # one to send (an echo session has none: no busy loop).
                    self._last_send = trio.current_time()
            if not self._broken:
                await self._close_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _keep_alive(self) -> bool:
        """Ping a peer not heard from for ``ping_interval_s``; close one that has not
        answered within ``pong_timeout_s``. False when the peer is found dead."""
        now = trio.current_time()
        if now >= self._dead_at():
            self._dead()
            return False
        if (self._pinged is None and now >= self._heard + self.limits.ping_interval_s
                and self.ws.state is ConnectionState.OPEN):
            self._pinged = now
            self.session.push_control(self.ws.send(Ping()), self.clock())
        return True

    def _dead_at(self) -> float:
        """When the peer counts as dead if nothing comes in before."""
        pinged = self._pinged
        if pinged is None:
            pinged = self._heard + self.limits.ping_interval_s
        return pinged + self.limits.pong_timeout_s

    def _dead(self) -> None:
        """The peer answers nothing: drop what is queued for it and close with 1011."""
        self.metrics.dead_peers += 1
        self.session.outbox.clear()
        self.session.close(CLOSE_INTERNAL_ERROR, "keepalive ping timeout")

    async def _close_handshake(self) -> None:
        """Write what is left, the close frame, and wait for the peer's close.

        Once the close frame is written the sending side is shut (a FIN after it), and
        the reader goes on reading, and discarding, until the peer's close or the
        timeout: a peer still sending after a close for a limit reads the close frame
        and then the end of the stream, not a reset (closing a socket with unread bytes
        resets the connection, and a reset may destroy what the peer has not read yet).
        """
        session = self.session
        with trio.move_on_after(self.limits.close_timeout_s):
            if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                code, reason = session.close_code, session.close_reason
                frame = self.ws.send(CloseConnection(code, reason))
                session.outbox.push(frame, Kind.CONTROL, None, self.clock())
                label = int(code) if int(code) < 3000 or int(code) in (4001, 4003) else 0
                self.metrics.closes[label] = self.metrics.closes.get(label, 0) + 1
            await self._drain()
            if not self._peer_closed.is_set() and not self._broken \
                    and isinstance(self.stream, trio.abc.HalfCloseableStream):
                await self.stream.send_eof()
            await self._peer_closed.wait()

    async def _drain(self) -> None:
        if self._flusher is None:
            while self.session.outbox:
                await self._write_pending()
            return
        while not self._write_nowait() and not self._broken:
            await trio.lowlevel.wait_writable(self._fd)

    # -- direct writes (TCP sockets) ---------------------------------------------------

    def flush_nowait(self) -> None:
        """Write what is pending without waiting (called by the flusher)."""
        if self._blocked or self._broken or self._finished:
            return
        if not self._write_nowait():
            self._blocked = True
            self._ready.set()

    def _write_nowait(self) -> bool:
        """Write pending data until done or the socket is full; True when done (or the
        connection is broken and nothing more can be written)."""
        outbox = self.session.outbox
        metrics = self.metrics
        data = self._unsent
        while True:
            if not data:
                if not outbox:
                    return True
                chunks, oldest_ns = outbox.take_batch(self.limits.write_batch_bytes)
                data = b"".join(chunks)
                metrics.frames_sent += len(chunks)
                metrics.due_to_write.observe(self.clock() - oldest_ns)
            started = self.clock()
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                self._broken = True
                self._unsent = b""
                self._ready.set()
                return True
            metrics.write_time.observe(self.clock() - started)
            metrics.bytes_sent += written
            self._last_send = trio.current_time()
            if written < len(data):
                self._unsent = data[written:]
                return False
            data = b""
            self._unsent = b""

    # -- stream writes (TLS, memory streams) -------------------------------------------

    async def _write_pending(self) -> None:
        chunks, oldest_ns = self.session.outbox.take_batch(self.limits.write_batch_bytes)
        data = b"".join(chunks)
        started = self.clock()
        self.metrics.due_to_write.observe(started - oldest_ns)
        await self.stream.send_all(data)
        self.metrics.write_time.observe(self.clock() - started)
        self.metrics.frames_sent += len(chunks)
        self.metrics.bytes_sent += len(data)
        self._last_send = trio.current_time()


def _join(parts: list[bytes | str], text: bool) -> bytes | str:
    if text:
        return "".join(p for p in parts if isinstance(p, str))
    return b"".join(p for p in parts if isinstance(p, bytes))
