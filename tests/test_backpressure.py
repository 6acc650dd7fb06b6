"""A client that stops reading, over real loopback sockets: everyone else gets every
message, its book comes back as a `lag` snapshot, its trades end with notice and 4001."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

from clients.book import ClientBook
from clients.client import Connection, Endpoint, connect
from clients.messages import BookSnapshot as SnapshotMessage
from clients.messages import BookUpdate as UpdateMessage
from clients.messages import parse_message
from feed.events import BookDelta, Trade
from feed.server import Server
from tests.helpers import read_until_closed
from tests.test_server import start

MAX_EVENTS = 200_000


async def small_window(endpoint: Endpoint) -> trio.abc.Stream:
    """A TCP connection with a small receive buffer, so that a client that stops
    reading blocks the server's writes quickly."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((endpoint.host, endpoint.port))
    return trio.SocketStream(sock)


class Reader:
    """A well-behaved client that checks everything it gets."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.book = ClientBook("BTC", 10)
        self.trade_seq = 0
        self.received = 0
        self.progress = trio.Event()

    async def run(self) -> None:
        while True:
            message = await self.conn.receive()
            parsed = parse_message(message)
            if isinstance(parsed, SnapshotMessage):
                self.book.apply_snapshot(parsed)
            elif isinstance(parsed, UpdateMessage):
                self.book.apply_update(parsed)  # raises on any break or bad checksum
            elif message["type"] == "trade":
                assert message["seq"] == self.trade_seq + 1
                self.trade_seq = message["seq"]
            else:
                assert message["type"] in ("subscribed", "heartbeat"), message
            self.received += 1
            self.progress.set()

    async def wait_for(self, count: int) -> None:
        while self.received < count:
            self.progress = trio.Event()
            await self.progress.wait()


def slow_closed(server: Server) -> bool:
    return any(getattr(s, "close_code", 0) == 4001 for s in server.sessions)


async def test_a_client_that_stops_reading(nursery: trio.Nursery) -> None:
    server, url = await start(nursery, **{
        "client.max_queued_bytes": 32 * 1024, "client.max_queue_age_ms": 60_000,
        "client.max_behind_ms": 60_000})
    async with connect(url, compress=False) as fast_conn, \
            connect(url, compress=False, open_stream=small_window) as slow_book, \
            connect(url, compress=False, open_stream=small_window) as slow_trades:
        await fast_conn.subscribe("book", ["BTC"])
        await fast_conn.subscribe("trades", ["BTC"])
        await slow_book.subscribe("book", ["BTC"])
        await slow_trades.subscribe("trades", ["BTC"])
        fast = Reader(fast_conn)
        async with trio.open_nursery() as readers:
            readers.start_soon(fast.run)
            await fast.wait_for(3)  # two replies and the snapshot
            sent = 3
            trades = 0
            for i in range(MAX_EVENTS):
                if server.session_stats.lag_resyncs >= 2 and slow_closed(server):
                    break
                if i % 2:
                    trades += 1
                    server.hub.apply(Trade("BTC", i, "100", "1", "buy", 1, 1), server.clock())
                else:
                    server.hub.apply(BookDelta("BTC", (("100", str(i + 2)),), (), 1, 1),
                                     server.clock())
                sent += 1
                if i % 64 == 63:  # the well-behaved client keeps up: pace to it
                    await fast.wait_for(sent - 32)
            else:
                pytest.fail("the slow clients never fell behind")
            await fast.wait_for(sent)
            readers.cancel_scope.cancel()

        # The fast client got every trade and the book, unbroken, up to the end.
        assert fast.trade_seq == trades
        assert fast.book.seq == server.hub.book_of("BTC").seq

        # The slow book client: updates, then a lag notice and snapshot, then a chain
        # that reaches the server's book.
        seen: list[dict[str, Any]] = []
        book = ClientBook("BTC", 10)
        with trio.fail_after(10):
            while book.seq != server.hub.book_of("BTC").seq:
                message = await slow_book.receive()
                seen.append(message)
                parsed = parse_message(message)
                if isinstance(parsed, SnapshotMessage):
                    book.apply_snapshot(parsed)
                elif isinstance(parsed, UpdateMessage):
                    book.apply_update(parsed)
        notices = [m for m in seen if m["type"] == "notice"]
        assert notices and all(n["code"] == "lag" and n["symbol"] == "BTC" for n in notices)
        assert any(m["type"] == "book_snapshot" and m["reason"] == "lag" for m in seen)

        # The slow trades client: contiguous trades, a lag notice, then close 4001.
        with trio.fail_after(10):
            received, code = await read_until_closed(slow_trades)
        seqs = [m["seq"] for m in received if m["type"] == "trade"]
        assert seqs == list(range(1, len(seqs) + 1)) and 0 < len(seqs) < trades
        assert [m["code"] for m in received if m["type"] == "notice"] == ["lag"]
        assert code == 4001
    server.shutdown()


async def test_a_stalled_client_is_disconnected_within_the_close_timeout(
        nursery: trio.Nursery) -> None:
    """A client that never reads again still loses its connection: the close frame
    cannot be written, so the connection is dropped at the close deadline."""
    server, url = await start(nursery, **{
        "client.max_queued_bytes": 1 << 20, "server.close_timeout_ms": 300})
    async with connect(url, compress=False, open_stream=small_window) as stalled:
        await stalled.subscribe("trades", ["BTC"])
        for i in range(MAX_EVENTS):
            if slow_closed(server):
                break
            server.hub.apply(Trade("BTC", i, "100", "1", "buy", 1, 1), server.clock())
            if i % 64 == 63:
                await trio.lowlevel.checkpoint()
        else:
            pytest.fail("the client never fell behind")
        with trio.fail_after(2):  # close_timeout is 0.3 s
            await server.wait_no_connections()
    server.shutdown()
