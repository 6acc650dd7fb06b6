"""Runs one accepted WebSocket connection: one reader task, one sender task.

The reader feeds wsproto, assembles request messages (capped in size as they arrive)
and hands them to the session; it never writes. The sender is the socket's only
writer: it takes everything pending in the session's outbox and writes it with one
``send_all``, sends a heartbeat when the connection has been idle, and performs the
closing handshake: drain, close frame, wait for the peer's close or a timeout.

wsproto frames the control messages (pong, close); data frames come prebuilt from the
session (``feed.wsframe``).
"""

from __future__ import annotations

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
from feed.session import CLOSE_TOO_BIG, State

Clock = Callable[[], int]


class Peer(Protocol):
    """What the connection needs from a session (``Session`` or ``EchoSession``)."""

    outbox: Outbox
    state: State
    close_code: int
    close_reason: str
    on_ready: Callable[[], None]

    def handle(self, data: bytes | str, now_ns: int) -> None: ...
    def heartbeat(self, now_ns: int) -> None: ...
    def close(self, code: int, reason: str) -> None: ...
    def closed(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_message_bytes: int = 64 * 1024
    heartbeat_s: float = 1.0
    close_timeout_s: float = 2.0
    write_batch_bytes: int = 256 * 1024
    read_bytes: int = 65536


class WebSocketConnection:
    """One open WebSocket connection between a trio stream and a session."""

    def __init__(
        self, stream: trio.abc.Stream, ws: Connection, session: Peer, clock: Clock,
        limits: ConnectionLimits, metrics: Metrics,
    ) -> None:
        self.stream = stream
        self.ws = ws
        self.session = session
        self.clock = clock
        self.limits = limits
        self.metrics = metrics
        self._ready = trio.Event()
        self._peer_closed = trio.Event()
        session.on_ready = self._wake

    def _wake(self) -> None:
        self._ready.set()

    async def run(self) -> None:
        """Serve until the connection is closed; the stream is closed on return."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, nursery.cancel_scope)
                await self._sender()
                nursery.cancel_scope.cancel()
        finally:
            self.session.closed()
            with trio.CancelScope(shield=True), trio.move_on_after(0.5):
                await self.stream.aclose()

    # -- reading ----------------------------------------------------------------------

    async def _reader(self, connection_scope: trio.CancelScope) -> None:
        parts: list[bytes | str] = []
        size = 0
        ws = self.ws
        session = self.session
        limit = self.limits.max_message_bytes
        try:
            while True:
                data = await self.stream.receive_some(self.limits.read_bytes)
                if not data:
                    break
                ws.receive_data(bytes(data))
                for event in ws.events():
                    if isinstance(event, Message):
                        chunk = event.data
                        size += len(chunk) if isinstance(chunk, bytes) else len(chunk.encode())
                        if size > limit:
                            session.close(CLOSE_TOO_BIG, "message too big")
                            parts.clear()
                            continue
                        parts.append(chunk)
                        if event.message_finished:
                            message = _join(parts, isinstance(event, TextMessage))
                            parts.clear()
                            size = 0
                            session.handle(message, self.clock())
                    elif isinstance(event, Ping):
                        if ws.state is ConnectionState.OPEN:  # no pong after our close
                            self._queue_control(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        self._on_close(event)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        # The peer is gone (or finished the closing handshake): nothing more to write.
        self._peer_closed.set()
        if self.ws.state is not ConnectionState.LOCAL_CLOSING:
            connection_scope.cancel()

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

    def _queue_control(self, data: bytes) -> None:
        self.session.outbox.push(data, Kind.CONTROL, None, self.clock())
        self._wake()

    # -- writing ----------------------------------------------------------------------

    async def _sender(self) -> None:
        session = self.session
        outbox = session.outbox
        heartbeat = self.limits.heartbeat_s
        last_send = trio.current_time()
        try:
            while session.state is State.OPEN:
                if not outbox:
                    self._ready = trio.Event()
                    deadline = last_send + heartbeat
                    with trio.move_on_at(deadline):
                        await self._ready.wait()
                    if not outbox and session.state is State.OPEN and \
                            trio.current_time() >= deadline:
                        session.heartbeat(self.clock())
                    continue
                await self._write_pending()
                last_send = trio.current_time()
            with trio.move_on_after(self.limits.close_timeout_s):
                while outbox:
                    await self._write_pending()
                if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                    code, reason = session.close_code, session.close_reason
                    await self.stream.send_all(self.ws.send(CloseConnection(code, reason)))
                    self.metrics.closes[int(code)] = self.metrics.closes.get(int(code), 0) + 1
                await self._peer_closed.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _write_pending(self) -> None:
        chunks, oldest_ns = self.session.outbox.take_batch(self.limits.write_batch_bytes)
        data = b"".join(chunks)
        started = self.clock()
        self.metrics.due_to_write.observe(started - oldest_ns)
        await self.stream.send_all(data)
        self.metrics.write_time.observe(self.clock() - started)
        self.metrics.frames_sent += len(chunks)
        self.metrics.bytes_sent += len(data)


def _join(parts: list[bytes | str], text: bool) -> bytes | str:
    if text:
        return "".join(p for p in parts if isinstance(p, str))
    return b"".join(p for p in parts if isinstance(p, bytes))
