"""A trio WebSocket client for the tickwire protocol (PROTOCOL.md), built on wsproto.

::

    async with connect("ws://127.0.0.1:8765/v1/stream") as conn:
        await conn.subscribe("book", ["BTC-USDT"], depth=10)
        async for msg in conn:          # one decoded message dict at a time
            ...

This is the only module of the package that touches both trio and wsproto. It offers
permessage-deflate when asked (the default), flattens batch frames, answers WebSocket
pings, and turns the end of the connection into ``ConnectionClosed(code, reason)``:
``receive()`` raises it once the queued messages are consumed; ``async for`` ends quietly
on 1000/1001 (like the ``websockets`` library) and raises it for any other code. trio's
``BrokenResourceError`` / ``ClosedResourceError`` on the stream become
``ConnectionClosed(1006)`` here and nowhere else.

One task reads (``receive`` / ``async for``); a second concurrent reader gets
``trio.BusyResourceError``. Any task may send; sends are serialized by a lock so that
frames (and the compressor's state) go out in one order.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from clients.codec import decode_frame, encode_request
from clients.errors import (
    ABNORMAL_CLOSURE,
    BadMessage,
    ConnectionClosed,
    HandshakeRejected,
    PeerError,
)
from clients.messages import Message

DEFAULT_PATH = "/v1/stream"
RECEIVE_SIZE = 64 * 1024
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
"""Largest server message (after decompression) accepted before closing with 1009."""
CLOSE_TIMEOUT = 2.0
"""Seconds ``connect()`` waits for the server's close frame when leaving the block."""
NORMAL_CLOSE_CODES = frozenset({1000, 1001})
"""Close codes on which ``async for msg in conn`` simply ends."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to connect, parsed from a ``ws://`` or ``wss://`` URL."""

    host: str
    port: int
    target: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Parse ``url``; an empty path means ``/v1/stream``. Raises ``ValueError``."""
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        if not parts.hostname:
            raise ValueError(f"no host in URL: {url!r}")
        tls = parts.scheme == "wss"
        target = parts.path or DEFAULT_PATH
        if parts.query:
            target += "?" + parts.query
        return cls(parts.hostname, parts.port or (443 if tls else 80), target, tls)

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the host, bracketed if IPv6, with a non-default port."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


StreamOpener = Callable[[Endpoint], Awaitable[trio.abc.Stream]]
"""Opens the byte stream to an endpoint; injectable (tests pass in-memory streams)."""


async def open_tcp(
    endpoint: Endpoint, ssl_context: ssl.SSLContext | None = None
) -> trio.abc.Stream:
    """Open a TCP stream to ``endpoint``, wrapped in TLS for ``wss://``.

    Raises ``OSError`` if the connection fails (and ``trio.BrokenResourceError`` if the
    TLS handshake does).
    """
    tcp = await trio.open_tcp_stream(endpoint.host, endpoint.port)
    if not endpoint.tls:
        return tcp
    context = ssl_context or ssl.create_default_context()
    tls = trio.SSLStream(tcp, context, server_hostname=endpoint.host)
    try:
        await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return tls


@dataclass(frozen=True, slots=True)
class ConnectionStatistics:
    """Counters of one connection."""

    bytes_received: int
    frames_received: int
    messages_received: int
    messages_queued: int
    requests_sent: int


class Connection:
    """An open WebSocket connection to a tickwire server. Made by ``connect()``."""

    def __init__(
        self, stream: trio.abc.Stream, *, max_message_size: int = MAX_MESSAGE_SIZE
    ) -> None:
        self._stream = stream
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._max_message_size = max_message_size
        self._send_lock = trio.StrictFIFOLock()
        self._reading = False
        self._queue: deque[Message] = deque()
        self._backlog: deque[Event] = deque()  # parsed, not yet handled
        self._fragments: list[bytes] = []
        self._fragments_size = 0
        self._closed: ConnectionClosed | None = None
        self._next_id = 1
        self._compressed = False
        self._bytes_received = 0
        self._frames_received = 0
        self._messages_received = 0
        self._requests_sent = 0

    # -- state -------------------------------------------------------------------------

    @property
    def compressed(self) -> bool:
        """True when the server accepted permessage-deflate."""
        return self._compressed

    @property
    def close_code(self) -> int | None:
        """The close code once the connection is closed, else ``None``."""
        return None if self._closed is None else self._closed.code

    @property
    def close_reason(self) -> str | None:
        """The close reason once the connection is closed, else ``None``."""
        return None if self._closed is None else self._closed.reason

    def statistics(self) -> ConnectionStatistics:
        """A snapshot of this connection's counters."""
        return ConnectionStatistics(
            bytes_received=self._bytes_received,
            frames_received=self._frames_received,
            messages_received=self._messages_received,
            messages_queued=len(self._queue),
            requests_sent=self._requests_sent,
        )

    # -- requests ----------------------------------------------------------------------

    async def send_request(self, request: Mapping[str, Any]) -> int | str:
        """Send one request object, adding the next integer ``id`` if it has none.

        Returns the request's id. Raises ``ConnectionClosed`` if the connection is closed.
        """
        body = dict(request)
        if "id" not in body:
            body["id"] = self._next_id
            self._next_id += 1
        await self._send(TextMessage(data=encode_request(body)))
        self._requests_sent += 1
        request_id: int | str = body["id"]
        return request_id

    async def request(self, op: str, **fields: Any) -> int | str:
        """Send ``{"op": op, **fields, "id": N}``; return ``N``."""
        return await self.send_request({"op": op, **fields})

    async def subscribe(self, channel: str, symbols: Sequence[str], **options: Any) -> int | str:
        """Subscribe to ``channel`` for ``symbols`` with channel ``options`` (``depth``,
        ``interval_ms``, ``checksum``); returns the request id the reply will echo."""
        return await self.request("subscribe", channel=channel, symbols=list(symbols), **options)

    async def unsubscribe(self, channel: str, symbols: Sequence[str]) -> int | str:
        """Unsubscribe ``symbols`` from ``channel``; returns the request id."""
        return await self.request("unsubscribe", channel=channel, symbols=list(symbols))

    async def resync(self, symbol: str, channel: str = "book") -> int | str:
        """Ask for a fresh ``book_snapshot`` of ``symbol``; returns the request id."""
        return await self.request("resync", channel=channel, symbol=symbol)

    async def ping(self) -> int | str:
        """Send the protocol's ``ping`` request (answered by ``pong``); returns the id."""
        return await self.request("ping")

    async def list(self) -> int | str:
        """Ask which symbols and channels the server carries (answered by ``symbols``)."""
        return await self.request("list")

    # -- receiving ---------------------------------------------------------------------

    async def receive(self) -> Message:
        """Return the next server message (batches come out one message at a time).

        Raises ``ConnectionClosed`` once the connection is closed and every message
        received before the close has been returned; ``BadMessage`` for a frame that is
        not JSON objects (the connection is then closed with 1007); and
        ``trio.BusyResourceError`` if another task is already receiving.
        """
        while not self._queue:
            if self._closed is not None:
                raise ConnectionClosed(self._closed.code, self._closed.reason)
            await self._read_some()
        return self._queue.popleft()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except ConnectionClosed as exc:
            if exc.code in NORMAL_CLOSE_CODES:
                raise StopAsyncIteration from None
            raise

    # -- closing -----------------------------------------------------------------------

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection: send a close frame, wait for the server's (unless
        another task is reading, which will see it) and close the stream.

        The wait has no timeout of its own; ``connect()`` bounds it with
        ``CLOSE_TIMEOUT``. The stream is closed even if this is cancelled.
        """
        try:
            if self._closed is None and self._ws.state is ConnectionState.OPEN:
                try:
                    await self._send(CloseConnection(code=code, reason=reason))
                    while self._closed is None and not self._reading:
                        await self._read_some(drain=True)
                except (ConnectionClosed, PeerError):
                    pass
        finally:
            if self._closed is None:
                self._closed = ConnectionClosed(code, reason)
            await self._stream.aclose()

    # -- internals ---------------------------------------------------------------------

    async def _handshake(self, endpoint: Endpoint, extensions: Sequence[Extension],
                         headers: Sequence[tuple[str, str]] = ()) -> None:
        request = Request(host=endpoint.host_header, target=endpoint.target, extensions=extensions,
                          extra_headers=[(k.encode(), v.encode()) for k, v in headers])
        await self._send_bytes(self._ws.send(request))
        status: int | None = None
        body: list[bytes] = []
        accepted = False
        while not accepted:
            data = await self._receive_bytes()
            if not data:
                if status is not None:
                    raise HandshakeRejected(status, b"".join(body))
                raise ConnectionClosed(ABNORMAL_CLOSURE, "connection lost during handshake")
            try:
                self._ws.receive_data(data)
                events = list(self._ws.events())
            except RemoteProtocolError as exc:
                raise PeerError(f"bad WebSocket handshake response: {exc}") from None
            for event in events:
                if accepted:
                    # Frames that came in the same read as the 101 response: handled by
                    # the first receive(), so that their errors are not handshake errors.
                    self._backlog.append(event)
                elif isinstance(event, AcceptConnection):
                    accepted = True
                    self._compressed = any(
                        isinstance(ext, PerMessageDeflate) for ext in event.extensions
                    )
                elif isinstance(event, RejectConnection):
                    status = event.status_code
                elif isinstance(event, RejectData):
                    body.append(bytes(event.data))
                    if event.body_finished and status is not None:
                        raise HandshakeRejected(status, b"".join(body))

    async def _read_some(self, *, drain: bool = False) -> None:
        """Handle parsed events (reading more bytes if none are left) until a message is
        queued, so that an error in a later frame surfaces only after the messages before
        it; with ``drain``, handle every parsed event."""
        if self._reading:
            raise trio.BusyResourceError("another task is already receiving on this connection")
        self._reading = True
        try:
            if not self._backlog:
                data = await self._receive_bytes()
                self._ws.receive_data(data or None)
                self._backlog.extend(self._ws.events())
            while self._backlog and (drain or not self._queue):
                await self._handle_event(self._backlog.popleft())
        finally:
            self._reading = False

    async def _handle_event(self, event: Event) -> None:
        if isinstance(event, TextMessage | BytesMessage):
            self._frames_received += 1
            chunk = event.data.encode() if isinstance(event.data, str) else bytes(event.data)
            self._fragments.append(chunk)
            self._fragments_size += len(chunk)
            if self._fragments_size > self._max_message_size:
                await self._fail(1009, "message too big")
                raise BadMessage(f"server message over {self._max_message_size} bytes")
            if event.message_finished:
                payload = b"".join(self._fragments)
                self._fragments.clear()
                self._fragments_size = 0
                try:
                    messages = decode_frame(payload)
                except BadMessage:
                    await self._fail(1007, "frame is not JSON")
                    raise
                self._messages_received += len(messages)
                self._queue.extend(messages)
        elif isinstance(event, Ping):
            try:
                await self._send(event.response())
            except ConnectionClosed:
                pass
        elif isinstance(event, CloseConnection):
            reason = event.reason or ""
            if self._ws.state in (ConnectionState.REMOTE_CLOSING, ConnectionState.OPEN):
                # REMOTE_CLOSING: echo the peer's close. OPEN: wsproto reports a frame it
                # could not parse as a close event; we send that close ourselves.
                try:
                    await self._send(event.response())
                except ConnectionClosed:
                    pass
            if self._closed is None:
                self._closed = ConnectionClosed(event.code, reason)
            self._backlog.clear()
            await self._stream.aclose()
        # Pong and anything else: nothing to do.

    async def _fail(self, code: int, reason: str) -> None:
        """Close with ``code`` because the server sent something we cannot accept."""
        self._closed = ConnectionClosed(code, reason)
        self._backlog.clear()
        try:
            await self._send(CloseConnection(code=code, reason=reason))
        except ConnectionClosed:
            pass
        await self._stream.aclose()

    async def _send(self, event: Event) -> None:
        async with self._send_lock:
            try:
                data = self._ws.send(event)
            except LocalProtocolError:
                closed = self._closed or ConnectionClosed(ABNORMAL_CLOSURE, "connection closing")
                raise ConnectionClosed(closed.code, closed.reason) from None
            await self._send_bytes(data)

    async def _send_bytes(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if self._closed is None:
                self._closed = ConnectionClosed(ABNORMAL_CLOSURE, "connection lost")
            raise ConnectionClosed(self._closed.code, self._closed.reason) from None

    async def _receive_bytes(self) -> bytes:
        try:
            data = await self._stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""
        self._bytes_received += len(data)
        return bytes(data)


@asynccontextmanager
async def connect(
    url: str,
    *,
    compress: bool = True,
    open_stream: StreamOpener | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = MAX_MESSAGE_SIZE,
    headers: Sequence[tuple[str, str]] = (),
) -> AsyncIterator[Connection]:
    """Connect to a tickwire server and perform the WebSocket handshake.

    ``compress`` offers permessage-deflate (``Connection.compressed`` says whether the
    server accepted). ``headers`` go into the handshake request (an API key as
    ``("Authorization", "Bearer KEY")``, or put ``?token=KEY`` in the URL).
    ``open_stream`` replaces the TCP/TLS connection (tests use memory streams). On
    leaving the block the connection is closed with 1000, waiting at most
    ``CLOSE_TIMEOUT`` seconds for the server's close frame, even when cancelled.

    Raises ``ValueError`` for a bad URL, ``OSError`` if the TCP connection fails,
    ``HandshakeRejected`` for a non-101 answer, ``PeerError`` for a malformed one and
    ``ConnectionClosed(1006)`` if the connection drops during the handshake.
    """
    endpoint = Endpoint.parse(url)
    if open_stream is None:
        stream = await open_tcp(endpoint, ssl_context)
    else:
        stream = await open_stream(endpoint)
    conn = Connection(stream, max_message_size=max_message_size)
    try:
        await conn._handshake(endpoint, [PerMessageDeflate()] if compress else [], headers)
        yield conn
    finally:
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            await conn.aclose()
