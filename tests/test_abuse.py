"""Each kind of abuse gets its exact close code, and a well-behaved client connected at
the same time gets every message unharmed (real loopback sockets)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator

import pytest
import trio

from clients.book import ClientBook
from clients.client import connect
from clients.messages import BookSnapshot, BookUpdate, parse_message
from feed.events import BookDelta, Trade
from feed.server import Server
from tests.fuzz_ws import bomb, frame
from tests.test_server import make_server, raw_upgrade, server_frames

TEXT, BINARY, CLOSE, PING = 0x1, 0x2, 0x8, 0x9
DEFLATE_OFFER = b"Sec-WebSocket-Extensions: permessage-deflate\r\n"


def abuse_bytes(kind: str) -> tuple[bytes, bool]:
    """What the attacker sends after its handshake, and whether it offers deflate."""
    if kind == "oversized message":
        return frame(TEXT, b'{"op": "ping", "id": "' + b"x" * 70_000 + b'"}'), False
    if kind == "endless fragments":
        return frame(TEXT, b"{", fin=False) + frame(0x0, b"", fin=False) * 2000, False
    if kind == "ping flood":
        return frame(PING, b"hi") * 2000, False
    if kind == "request flood":
        return frame(TEXT, b'{"op": "ping"}') * 400, False
    if kind == "invalid UTF-8":
        return frame(TEXT, b'{"op": "\xff\xfe"}'), False
    if kind == "unmasked frame":
        return frame(TEXT, b'{"op": "ping"}', masked=False), False
    if kind == "reserved opcode":
        return frame(0x3, b"?"), False
    if kind == "deflate bomb":
        return frame(BINARY, bomb(16 << 20), rsv=4), True
    raise AssertionError(kind)


CLOSES = {"oversized message": 1009, "endless fragments": 1008, "ping flood": 1008,
          "request flood": 1008, "invalid UTF-8": 1007, "unmasked frame": 1002,
          "reserved opcode": 1002, "deflate bomb": 1009}


@pytest.fixture
async def served(nursery: trio.Nursery) -> AsyncIterator[tuple[Server, str]]:
    """A server on a loopback port, and its URL."""
    server = make_server()
    listening = await nursery.start(server.run)
    yield server, listening.url
    server.shutdown()


@pytest.mark.parametrize("kind", sorted(CLOSES))
async def test_abuse_is_closed_with_its_code_and_a_bystander_misses_nothing(
        served: tuple[Server, str], kind: str) -> None:
    server, url = served
    payload, deflate = abuse_bytes(kind)
    async with connect(url) as bystander:
        await bystander.subscribe("trades", ["BTC"])
        await bystander.subscribe("book", ["BTC"], depth=5)
        attacker, head = await raw_upgrade(url, DEFLATE_OFFER if deflate else b"")
        async with attacker:
            assert head.startswith(b"HTTP/1.1 101")
            assert (b"permessage-deflate" in head) == deflate

            async def attack() -> None:
                try:
                    await attacker.send_all(payload)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # closed while it was still sending: the code is read below

            async with trio.open_nursery() as nursery:
                nursery.start_soon(attack)
                for i in range(1, 201):  # the feed goes on meanwhile
                    server.hub.apply(Trade("BTC", i, "100", "1", "buy", i, i), server.clock())
                    server.hub.apply(BookDelta("BTC", ((str(100 - i % 7), str(i)),), (), i, i),
                                     server.clock())
                    await trio.lowlevel.checkpoint()
            received = b""
            with trio.fail_after(10):
                while chunk := await attacker.receive_some(65536):
                    received += chunk
        frames = server_frames(received)
        closes = [payload for opcode, payload in frames if opcode == CLOSE]
        assert len(closes) == 1 and struct.unpack("!H", closes[0][:2])[0] == CLOSES[kind]

        trades: list[int] = []
        book = ClientBook("BTC", 5)
        served = server.hub.book_of("BTC")
        with trio.fail_after(10):  # every trade, and the book as the server has it
            while len(trades) < 200 or book.top(5) != (served.bids.top(5), served.asks.top(5)):
                message = await bystander.receive()
                parsed = parse_message(message)
                if message["type"] == "trade":
                    trades.append(message["seq"])
                elif isinstance(parsed, BookSnapshot):
                    book.apply_snapshot(parsed)
                elif isinstance(parsed, BookUpdate):
                    book.apply_update(parsed)  # chain and checksum checked
        assert trades == list(range(1, 201))
