"""The floor: the thinnest trio code that writes tickwire-like frames to subscriber
sockets, to show how far tickwire is from what Python on this machine can do at all.

::

    python -m benchmarks.floor --port 0 --synthetic 5000 --symbols 10

trio is only the scheduler here: the sockets are plain non-blocking ``socket`` objects,
waited on with ``trio.lowlevel.wait_readable`` / ``wait_writable``. At RATE events/s
(released on schedule, ``benchmarks.harness.Schedule``) it builds one frame per event,
round robin over the symbols: a ``book_update`` of the shape tickwire sends for a
depth-10 subscription (one bid and one ask level, checksum, fresh ``ts_recv`` and
``ts_send``, ``seq`` / ``prev_seq`` chained per symbol), encoded with orjson and framed
once (``feed.wsframe.encode_frame``). The frame is appended to every subscriber of the
symbol; when the feed is about to wait, each client with something pending gets one
``socket.send`` of all of it (coalesced). Only a send that hits EAGAIN involves the
client's writer task, which waits until the socket is writable. A client with more than
``MAX_BUFFERED_BYTES`` unsent is disconnected and counted (``tickwire_lag_events_total``).

The setup path is minimal but real, so that the load tool works unchanged: the request
head is read by hand and routed (``GET /metrics``, 404, 426); wsproto does the upgrade on
``/v1/stream`` (no permessage-deflate: none is offered back) and parses what clients send
(requests, pings, close). ``list`` and ``subscribe`` are answered with tickwire's reply
shapes; anything else gets an ``error``.

What it deliberately does not do: books (the levels in its frames never change and the
checksum is a constant), snapshots, trades, bbo, depth (every ``subscribe`` gets the
depth-10 shape), compression, heartbeats, a closing handshake on shutdown (sockets are
just closed), request limits beyond the head size.
"""

from __future__ import annotations

import signal
import socket
import sys
import time

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, CloseConnection, Message, Ping, Request
from wsproto.utilities import RemoteProtocolError

from benchmarks.harness import (
    MAX_BUFFERED_BYTES,
    METRICS_CONTENT_TYPE,
    STREAM_PATH,
    PeerOptions,
    PeerStats,
    Schedule,
    announce,
    arguments,
    metrics_renderer,
    peer_options,
)
from feed import protocol
from feed.events import Level
from feed.handshake import http_response
from feed.synthetic import SyntheticMarket
from feed.wsframe import encode_frame

MAX_HEAD_BYTES = 16 * 1024
HEAD_TIMEOUT_S = 5.0
READ_BYTES = 65536
CHECKSUM = 2_876_532_911
"""The constant checksum of every frame (a realistic 10-digit CRC-32)."""


class Frames:
    """One framed ``book_update`` per event, round robin over the symbols; the levels
    are each symbol's best bid and best ask at the start, never changed."""

    def __init__(self, symbols: int) -> None:
        market = SyntheticMarket(symbols)
        self.symbols = market.symbols
        self.levels: list[tuple[list[Level], list[Level]]] = []
        for symbol in self.symbols:
            bids, asks = market.book(symbol)
            self.levels.append(([bids[0]], [asks[0]]))
        self.seqs = [0] * len(self.symbols)

    def build(self, number: int, ts_recv: int) -> tuple[str, bytes]:
        """Event ``number``'s symbol and frame."""
        i = number % len(self.symbols)
        seq = self.seqs[i] = self.seqs[i] + 1
        bids, asks = self.levels[i]
        symbol = self.symbols[i]
        message = protocol.book_update_message(
            symbol, seq, seq - 1, bids, asks, CHECKSUM, ts_recv, ts_recv, time.time_ns())
        return symbol, encode_frame(protocol.encode(message))


class Client:
    """One subscriber socket and what is waiting to be written to it."""

    __slots__ = ("pending", "pending_bytes", "scope", "sock", "stuck")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.scope = trio.CancelScope()
        """The connection's scope: cancelled to drop the client."""
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.stuck = trio.Event()
        """Set while the socket is full: the writer task finishes the write."""

    def flush(self) -> int:
        """Write what is pending, without waiting; returns the frames taken. A full
        socket sets ``stuck``; a broken one ends the connection."""
        if self.stuck.is_set() or not self.pending:
            return 0
        taken = len(self.pending)
        data = b"".join(self.pending) if taken > 1 else self.pending[0]
        try:
            written = self.sock.send(data)
        except BlockingIOError:
            written = 0
        except OSError:
            self.scope.cancel()
            written = len(data)
        if written < len(data):
            self.pending = [data[written:]]
            self.pending_bytes = len(data) - written
            self.stuck.set()
        else:
            self.pending = []
            self.pending_bytes = 0
        return taken


class Floor:
    """The listener, the feed and the subscribers."""

    def __init__(self, options: PeerOptions) -> None:
        self.options = options
        self.stats = PeerStats()
        self.render_metrics = metrics_renderer(self.stats)
        self.frames = Frames(options.symbols)
        self.subscribers: dict[str, list[Client]] = {s: [] for s in self.frames.symbols}
        """Replaced, never changed in place: dropping a client while the feed iterates a
        list is safe."""
        self.dirty: dict[Client, None] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        family = socket.AF_INET6 if ":" in self.options.host else socket.AF_INET
        listener = socket.create_server((self.options.host, self.options.port),
                                        family=family, backlog=1024)
        listener.setblocking(False)
        with listener:
            announce(listener.getsockname())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.feed)
                task_status.started()
                while True:
                    await trio.lowlevel.wait_readable(listener)
                    try:
                        sock, _ = listener.accept()
                    except BlockingIOError:
                        continue
                    sock.setblocking(False)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    nursery.start_soon(self.connection, sock)

    # -- the feed --------------------------------------------------------------------

    async def feed(self) -> None:
        """Release one frame per event on schedule; write everything pending whenever
        the schedule lets the feed wait."""
        wall_ns = time.time_ns()  # first: a stamp may then be early by the gap, never late
        schedule = Schedule(self.options.rate, trio.current_time(), wall_ns)
        while True:
            pause = schedule.pause(trio.current_time())
            if pause is not None:
                self.flush_all()
                await trio.sleep(pause)
                continue
            number = schedule.next
            symbol, frame = self.frames.build(number, schedule.take())
            self.stats.events += 1
            for client in self.subscribers[symbol]:
                self.push(client, frame)

    def push(self, client: Client, data: bytes) -> None:
        """Queue ``data`` for ``client``; a client too far behind is disconnected."""
        client.pending.append(data)
        client.pending_bytes += len(data)
        if client.pending_bytes > MAX_BUFFERED_BYTES:
            self.stats.slow_disconnects += 1
            self.leave(client)
            client.pending.clear()
            client.scope.cancel()
        elif not client.stuck.is_set():
            self.dirty[client] = None

    def flush_all(self) -> None:
        dirty, self.dirty = self.dirty, {}
        for client in dirty:
            self.stats.messages_sent += client.flush()

    def leave(self, client: Client) -> None:
        for symbol, members in self.subscribers.items():
            if client in members:
                self.subscribers[symbol] = [c for c in members if c is not client]
        self.dirty.pop(client, None)

    # -- one connection ----------------------------------------------------------------

    async def connection(self, sock: socket.socket) -> None:
        """Route one request; serve a WebSocket until either side closes it."""
        with sock:
            head = b""
            with trio.move_on_after(HEAD_TIMEOUT_S):
                head = await read_head(sock)
            if not head:
                return
            target = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
            path = target.split(b"?", 1)[0].decode("latin-1")
            if path == "/metrics":
                await send_all(sock, http_response(200, self.render_metrics(),
                                                   METRICS_CONTENT_TYPE))
                return
            if path != STREAM_PATH:
                await send_all(sock, http_response(404,
                                                   f"no such path: {path}\n".encode()))
                return
            ws = WSConnection(ConnectionType.SERVER)
            try:
                ws.receive_data(head)
                if not any(isinstance(event, Request) for event in ws.events()):
                    raise RemoteProtocolError("no upgrade request")
            except RemoteProtocolError:
                await send_all(sock, http_response(426,
                                                   b"this endpoint speaks WebSocket only\n"))
                return
            await send_all(sock, ws.send(AcceptConnection()))
            client = Client(sock)
            self.stats.open_connections += 1
            try:
                with client.scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self.writer, client)
                        await self.reader(client, ws)
                        nursery.cancel_scope.cancel()
            finally:
                self.stats.open_connections -= 1
                self.leave(client)

    async def writer(self, client: Client) -> None:
        """Finish writes the socket was too full for."""
        while True:
            await client.stuck.wait()
            await trio.lowlevel.wait_writable(client.sock)
            client.stuck = trio.Event()
            self.stats.messages_sent += client.flush()

    async def reader(self, client: Client, ws: WSConnection) -> None:
        """Answer requests, pings and the close, until the peer is gone."""
        parts: list[bytes | str] = []
        while ws.state is not ConnectionState.CLOSED:
            await trio.lowlevel.wait_readable(client.sock)
            try:
                data = client.sock.recv(READ_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Message):
                    parts.append(event.data)
                    if event.message_finished:
                        reply = self.request(client, join(parts))
                        self.push(client, encode_frame(protocol.encode(reply)))
                        parts.clear()
                elif isinstance(event, Ping):
                    self.push(client, ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.leave(client)
                    self.push(client, ws.send(event.response()))
            self.stats.messages_sent += client.flush()

    def request(self, client: Client, data: bytes | str) -> protocol.Message:
        """The answer to one request; a ``subscribe`` adds the client to its symbols."""
        try:
            request = protocol.parse_request(data)
            if isinstance(request, protocol.ListSymbols):
                reply = protocol.symbols_message(request.id, list(self.frames.symbols))
            elif isinstance(request, protocol.Subscribe):
                unknown = [s for s in request.symbols if s not in self.subscribers]
                if unknown:
                    raise protocol.RequestError("unknown_symbol", "unknown symbol "
                                                f"{protocol.quote(unknown[0])}", request.id)
                for symbol in request.symbols:
                    if client not in self.subscribers[symbol]:
                        self.subscribers[symbol] = [*self.subscribers[symbol], client]
                reply = protocol.subscribed_message(request)
            else:
                raise protocol.RequestError(
                    "bad_request", "the floor answers list and subscribe only", request.id)
        except protocol.RequestError as exc:
            return protocol.error_message(exc.code, exc.message, exc.request_id)
        return reply


def join(parts: list[bytes | str]) -> bytes | str:
    """One message from its parts (all text or all bytes)."""
    if isinstance(parts[0], str):
        return "".join(p for p in parts if isinstance(p, str))
    return b"".join(p for p in parts if isinstance(p, bytes))


async def read_head(sock: socket.socket) -> bytes:
    """The request head (up to the blank line, and any bytes after it); empty when the
    peer closes first or sends more than ``MAX_HEAD_BYTES`` without one."""
    head = b""
    while b"\r\n\r\n" not in head:
        if len(head) > MAX_HEAD_BYTES:
            return b""
        await trio.lowlevel.wait_readable(sock)
        try:
            data = sock.recv(READ_BYTES)
        except BlockingIOError:
            continue
        except OSError:
            return b""
        if not data:
            return b""
        head += data
    return head


async def send_all(sock: socket.socket, data: bytes) -> None:
    """Write all of ``data`` (the setup path: handshakes and HTTP replies)."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)


async def serve_floor(options: PeerOptions) -> None:
    """Serve until SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(Floor(options).run)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    parser = arguments("python -m benchmarks.floor",
                       "the same kind of frames, prebuilt, written by the thinnest trio code")
    options = peer_options(parser, parser.parse_args(argv))
    trio.run(serve_floor, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
