"""Test helpers: decode the server's prebuilt frames, a naive book model, reading a
connection to its close, a process's children, the process holding a socket, and a
server's WebSocket and HTTP endpoints over memory streams (for trio's virtual clock)."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
import trio
import trio.testing

from feed.checksum import book_checksum
from feed.handshake import read_request

if TYPE_CHECKING:
    from clients.book import ClientBook
    from clients.client import Connection
    from feed.server import Server

Level = tuple[str, str]

REAL_SOCKETS_S = 0.005
"""For virtual-clock tests over real loopback sockets: the real time every task must
have been waiting before the clock jumps (``autojump_clock.autojump_threshold``). A
jump while bytes are still on their way would fire a deadline early (trio's MockClock
docs); 5 ms per jump keeps such tests fast."""


def frame_payload(frame: bytes) -> tuple[int, bool, bytes]:
    """(opcode, compressed, payload) of one unmasked server frame."""
    first, second = frame[0], frame[1]
    length = second & 0x7F
    offset = 2
    if length == 126:
        (length,) = struct.unpack("!H", frame[2:4])
        offset = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", frame[2:10])
        offset = 10
    payload = frame[offset:offset + length]
    assert len(payload) == length, "truncated frame"
    return first & 0x0F, bool(first & 0x40), payload


def messages(frames: list[bytes], wbits: int = 15) -> list[dict[str, Any]]:
    """Decode a list of frames (as an outbox holds them) into message objects."""
    out: list[dict[str, Any]] = []
    for frame in frames:
        _, compressed, payload = frame_payload(frame)
        if compressed:
            payload = zlib.decompressobj(-wbits).decompress(payload + b"\x00\x00\xff\xff")
        decoded = orjson.loads(payload)
        out.extend(decoded if isinstance(decoded, list) else [decoded])
    return out


async def read_until_closed(conn: Any) -> tuple[list[dict[str, Any]], int]:
    """Read a reference-client connection to its end: (messages, close code)."""
    from clients.errors import ConnectionClosed

    received: list[dict[str, Any]] = []
    while True:
        try:
            received.append(await conn.receive())
        except ConnectionClosed as closed:
            return received, closed.code


class NaiveBook:
    """The obvious book: a dict per side, sorted on every read. The reference model."""

    def __init__(self, depth: int = 10) -> None:
        self.depth = depth
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Set each level's size; size ``"0"`` removes the level."""
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for price, size in levels:
                if size == "0":
                    side.pop(price, None)
                else:
                    side[price] = size

    def sorted_bids(self) -> list[Level]:
        return sorted(self.bids.items(), key=lambda lvl: Decimal(lvl[0]), reverse=True)

    def sorted_asks(self) -> list[Level]:
        return sorted(self.asks.items(), key=lambda lvl: Decimal(lvl[0]))

    def checksum(self) -> int:
        return book_checksum(self.sorted_bids(), self.sorted_asks(), self.depth)


def children(pid: int) -> list[int]:
    """Ids of the processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                ppid = int(stat.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found



def socket_owner(local_port: int, remote_port: int, pids: Iterable[int]) -> int | None:
    """Which of ``pids`` holds the TCP socket from ``local_port`` to ``remote_port`` on
    this host (Linux /proc): the server process that accepted a client's connection."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as lines:
                rows = [line.split() for line in lines][1:]
        except OSError:
            continue
        for row in rows:
            if (int(row[1].rpartition(":")[2], 16) == local_port
                    and int(row[2].rpartition(":")[2], 16) == remote_port):
                inodes.add(f"socket:[{row[9]}]")
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:
                continue
    return None


@asynccontextmanager
async def memory_client(server: Server, *, compress: bool = False) -> AsyncIterator[Connection]:
    """A reference-client connection to ``server`` over an in-memory stream, through the
    server's own handshake and connection code: no socket, so that a test may run on
    trio's virtual clock (``autojump_clock``). Closed with 1000 on leaving."""
    from clients.client import connect

    server_stream, client_stream = trio.testing.memory_stream_pair()

    async def opener(endpoint: object) -> trio.abc.Stream:
        return client_stream

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_websocket, server, server_stream)
        async with connect("ws://memory/v1/stream", compress=compress,
                           open_stream=opener) as conn:
            yield conn


async def serve_websocket(server: Server, stream: trio.abc.Stream) -> None:
    """Serve one WebSocket client on ``stream`` (not a socket) as the server serves one
    on a socket: its request head, then ``Server._upgrade`` (handshake, session and
    connection) until the connection ends."""
    request = await read_request(stream, server.config.server.max_handshake_bytes)
    assert request is not None and request.wants_websocket
    await server._upgrade(stream, request)  # type: ignore[arg-type]


async def memory_http_get(server: Server, path: str) -> tuple[int, bytes]:
    """GET ``path`` from ``server`` over an in-memory stream: (status, body)."""
    server_stream, client_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._handle, server_stream)
        await client_stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await client_stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


class Inbox:
    """Reads a reference-client connection in the background (``run``), keeping every
    message, so that a test can look at what came while virtual time passed."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self._arrived = trio.Event()

    async def run(self) -> None:
        from clients.errors import ConnectionClosed

        try:
            while True:
                self.messages.append(await self.conn.receive())
                self._arrived.set()
                self._arrived = trio.Event()
        except ConnectionClosed as closed:
            self.close_code = closed.code
            self._arrived.set()

    async def wait_for(self, matches: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first message so far that ``matches``, waiting for it to come."""
        while True:
            found = next((m for m in self.messages if matches(m)), None)
            if found is not None:
                return found
            assert self.close_code is None, f"closed with {self.close_code} first"
            await self._arrived.wait()

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] in types]


def follow(messages: list[dict[str, Any]], symbol: str = "BTC") -> ClientBook:
    """The client's book after ``messages``: every snapshot and update checked (chain and
    checksum; raises on a break), a ``gap`` notice clearing it."""
    from clients.book import ClientBook
    from clients.messages import BookSnapshot, BookUpdate, parse_message

    book = ClientBook(symbol)
    for message in messages:
        if message.get("symbol") != symbol:
            continue
        if message["type"] == "notice" and message["code"] == "gap":
            book.clear()
            continue
        parsed = parse_message(message)
        if isinstance(parsed, BookSnapshot):
            book.apply_snapshot(parsed)
        elif isinstance(parsed, BookUpdate):
            book.apply_update(parsed)
    return book
