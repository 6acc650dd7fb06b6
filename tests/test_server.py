"""The server over real loopback sockets, driven by the reference client."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage
from wsproto.extensions import Extension, PerMessageDeflate

from clients.book import ClientBook
from clients.client import Connection, connect
from clients.errors import ConnectionClosed
from clients.loadgen.metrics import parse_metrics
from clients.messages import BookSnapshot as SnapshotMessage
from clients.messages import BookUpdate as UpdateMessage
from clients.messages import parse_message
from feed.config import Config
from feed.events import BookDelta, BookSnapshot, Trade
from feed.server import Server
from tests.fuzz_ws import frame as fuzz_frame
from tests.helpers import frame_payload, read_until_closed

BIDS = tuple((f"{100 - i}", "1") for i in range(20))
ASKS = tuple((f"{101 + i}", "1") for i in range(20))


def make_server(**overrides: Any) -> Server:
    settings = {"server.port": 0, **overrides}
    server = Server(Config().with_overrides(settings))
    for symbol in ("BTC", "ETH"):
        server.hub.add_symbol(symbol)
        server.hub.apply(BookSnapshot(symbol, BIDS, ASKS, 1, 1, seq=100), server.clock())
    return server


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[Server]:
    srv = make_server()
    srv.url = (await nursery.start(srv.run)).url  # type: ignore[attr-defined]
    yield srv
    srv.shutdown()


async def start(nursery: trio.Nursery, **overrides: Any) -> tuple[Server, str]:
    srv = make_server(**overrides)
    listening = await nursery.start(srv.run)
    return srv, listening.url


async def next_of(conn: Connection, kind: str) -> dict[str, Any]:
    while True:
        message = await conn.receive()
        if message["type"] == kind:
            return message


def tick(server: Server, symbol: str, i: int) -> None:
    """One book change at the top of the book."""
    server.hub.apply(BookDelta(symbol, ((f"{100}", f"{i + 2}"),), ((f"{101 + i % 3}", "2"),),
                               5, 5), server.clock())


def verify(book: ClientBook, message: dict[str, Any]) -> None:
    parsed = parse_message(message)
    if isinstance(parsed, SnapshotMessage):
        book.apply_snapshot(parsed)
    elif isinstance(parsed, UpdateMessage):
        book.apply_update(parsed)


async def test_subscribe_snapshot_then_unbroken_checked_chain(server: Server) -> None:
    async with connect(server.url) as conn:  # type: ignore[attr-defined]
        await conn.subscribe("book", ["BTC"], depth=5)
        subscribed = await conn.receive()
        assert subscribed == {"type": "subscribed", "id": 1, "channel": "book",
                              "symbols": ["BTC"], "depth": 5, "interval_ms": 0,
                              "checksum": True}
        await follow_book(server, conn, 200)


async def follow_book(server: Server, conn: Connection, updates: int) -> None:
    """Read the snapshot of a fresh depth-5 subscription to BTC's book, then as many
    updates as ``updates`` changes made now, checking the chain and every checksum; the
    client's book ends equal to the server's."""
    snapshot = await conn.receive()
    assert snapshot["type"] == "book_snapshot" and snapshot["reason"] == "subscribe"
    assert snapshot["bids"] == [list(level) for level in BIDS[:5]]
    book = ClientBook("BTC", 5)
    verify(book, snapshot)
    for i in range(updates):
        tick(server, "BTC", i)
    for _ in range(updates):
        message = await conn.receive()
        verify(book, message)  # raises on a broken chain or a wrong checksum
    assert book.seq == server.hub.book_of("BTC").seq
    assert book.top(5) == (server.hub.book_of("BTC").bids.top(5),
                           server.hub.book_of("BTC").asks.top(5))


async def test_permessage_deflate_is_negotiated_and_used(server: Server) -> None:
    async with connect(server.url, compress=True) as conn:  # type: ignore[attr-defined]
        assert conn.compressed
        before = server.hub.deflater.messages
        await conn.subscribe("trades", ["ETH"])
        await conn.receive()
        server.hub.apply(Trade("ETH", 7, "101", "0.5", "buy", 1, 1), server.clock())
        trade = await conn.receive()
        assert (trade["type"], trade["seq"], trade["trade_id"]) == ("trade", 1, 7)
        assert server.hub.deflater.messages == before + 2  # the reply and the trade
    async with connect(server.url, compress=False) as conn:  # type: ignore[attr-defined]
        assert not conn.compressed


async def test_bad_requests_get_errors_and_the_connection_stays(server: Server) -> None:
    async with connect(server.url) as conn:  # type: ignore[attr-defined]
        await conn.send_request({"op": "subscribe", "id": 5, "channel": "book",
                                 "symbols": ["NOPE"]})
        error = await conn.receive()
        assert error["type"] == "error" and error["code"] == "unknown_symbol" and error["id"] == 5
        await conn.send_request({"op": "subscribe", "id": 6, "channel": "candles",
                                 "symbols": ["BTC"]})
        assert (await conn.receive())["code"] == "unknown_channel"
        await conn.send_request({"op": "ping", "id": "p"})
        pong = await conn.receive()
        assert pong["type"] == "pong" and pong["id"] == "p" and isinstance(pong["ts"], int)


async def test_oversized_request_closes_1009_others_unharmed(nursery: trio.Nursery) -> None:
    server, url = await start(nursery, **{"server.max_message_bytes": 1024})
    async with connect(url) as bystander, connect(url) as big:
        await bystander.subscribe("trades", ["BTC"])
        await bystander.receive()
        await big.send_request({"op": "ping", "id": "x" * 2000})
        with pytest.raises(ConnectionClosed) as closed:
            await big.receive()
        assert closed.value.code == 1009
        server.hub.apply(Trade("BTC", 1, "100", "1", "sell", 1, 1), server.clock())
        assert (await bystander.receive())["type"] == "trade"
    server.shutdown()


@pytest.mark.parametrize(("compress", "code"), [(False, 1009), (True, 1009), (False, 1008)])
async def test_a_client_that_keeps_sending_after_a_limit_sees_the_close_not_a_reset(
        nursery: trio.Nursery, compress: bool, code: int) -> None:
    """Over a limit (1009: a message too big, plain or inflated; 1008: the request
    rate) while it goes on sending and never answers the close: the client still reads
    the close frame and then the end of the stream, not a connection reset."""
    server, url = await start(nursery, **{"server.max_message_bytes": 1024,
                                          "server.close_timeout_ms": 200,
                                          "client.request_burst": 5})
    stream, ws = await open_raw(url, [PerMessageDeflate()] if compress else [])
    if code == 1009:
        await stream.send_all(ws.send(TextMessage('{"op": "ping", "id": "' + "x" * 5000 + '"}')))
    request = ws.send(TextMessage('{"op": "ping"}' + " " * 500))  # then this, over and over
    closes: list[int] = []
    ended = ""

    async def keep_sending() -> None:
        try:
            while True:
                await stream.send_all(request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    with trio.fail_after(5):
        async with trio.open_nursery() as client:
            client.start_soon(keep_sending)
            try:
                while data := await stream.receive_some(65536):
                    ws.receive_data(data)
                    closes += [e.code for e in ws.events() if isinstance(e, CloseConnection)]
                ended = "end of stream"
            except trio.BrokenResourceError as exc:
                ended = f"reset: {exc.__cause__!r}"
            client.cancel_scope.cancel()
    await stream.aclose()
    assert closes == [code] and ended == "end of stream"
    server.shutdown()


async def test_list_and_unsubscribe(server: Server) -> None:
    async with connect(server.url) as conn:  # type: ignore[attr-defined]
        await conn.list()
        listed = await conn.receive()
        assert [s["symbol"] for s in listed["symbols"]] == ["BTC", "ETH"]
        assert listed["symbols"][0]["channels"] == ["book", "trades", "bbo"]
        await conn.subscribe("trades", ["BTC"])
        await conn.receive()
        await conn.unsubscribe("trades", ["BTC"])
        assert (await conn.receive())["type"] == "unsubscribed"
        server.hub.apply(Trade("BTC", 1, "100", "1", "sell", 1, 1), server.clock())
        await conn.ping()
        assert (await conn.receive())["type"] == "pong"  # and no trade before it


async def test_conflation_at_interval_ms(server: Server) -> None:
    async with connect(server.url) as conn:  # type: ignore[attr-defined]
        await conn.subscribe("book", ["BTC"], interval_ms=50)
        await conn.receive()
        book = ClientBook("BTC", 10)
        verify(book, await conn.receive())
        sends = []
        fed = trio.Event()

        async def feed() -> None:
            for i in range(60):  # a change every 5 ms for 300 ms
                tick(server, "BTC", i)
                await trio.sleep(0.005)
            fed.set()

        def caught_up() -> bool:
            return fed.is_set() and book.top(10) == (server.hub.book_of("BTC").bids.top(10),
                                                     server.hub.book_of("BTC").asks.top(10))

        async with trio.open_nursery() as feeder:
            feeder.start_soon(feed)
            with trio.fail_after(5):  # heartbeats (1 s) wake the loop if nothing else does
                while not caught_up():
                    message = await conn.receive()
                    if message["type"] == "book_update":
                        verify(book, message)
                        sends.append(message["ts_send"])
        gaps = [(b - a) / 1e6 for a, b in zip(sends, sends[1:], strict=False)]
        assert 3 <= len(sends) <= 8, sends
        assert min(gaps) >= 49.0, gaps  # ts_send is the wall clock; allow its rounding


async def test_heartbeat_on_idle_connection(nursery: trio.Nursery) -> None:
    server, url = await start(nursery, **{"server.heartbeat_ms": 100})
    async with connect(url) as conn:
        await conn.subscribe("book", ["ETH"])
        await conn.receive()
        snapshot = await conn.receive()
        with trio.fail_after(2):
            beat = await next_of(conn, "heartbeat")
        assert beat["seqs"] == {"book:ETH": snapshot["seq"]}
    server.shutdown()


async def test_shutdown_sends_notice_then_1001(nursery: trio.Nursery) -> None:
    server, url = await start(nursery)
    async with connect(url) as a, connect(url) as b:
        await a.ping()
        await b.ping()
        await a.receive()
        await b.receive()
        with trio.fail_after(2):
            server.shutdown()
            for conn in (a, b):
                notice = await conn.receive()
                assert notice["type"] == "notice" and notice["code"] == "shutdown"
                with pytest.raises(ConnectionClosed) as closed:
                    await conn.receive()
                assert closed.value.code == 1001


async def http_get(url: str, path: str) -> tuple[int, bytes]:
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_http_routes(server: Server) -> None:
    url = server.url  # type: ignore[attr-defined]
    status, body = await http_get(url, "/healthz")
    assert status == 200 and orjson.loads(body)["status"] == "ok"
    status, body = await http_get(url, "/metrics")
    assert status == 200
    for name in (b"tickwire_open_connections", b"tickwire_messages_sent_total",
                 b"tickwire_bytes_sent_total", b"tickwire_dropped_messages_total",
                 b"tickwire_lag_events_total", b"tickwire_stage_latency_seconds_bucket",
                 b"tickwire_feed_behind_seconds", b"stage=\"due_to_write\"",
                 b"process_cpu_seconds_total", b"tickwire_tasks "):
        assert name in body
    assert (await http_get(url, "/v1/stream"))[0] == 426
    assert (await http_get(url, "/nothing"))[0] == 404


async def test_a_third_party_client_interoperates(server: Server) -> None:
    """The `websockets` library (asyncio), with compression, in a thread."""
    import websockets

    url = server.url  # type: ignore[attr-defined]

    async def client() -> tuple[str, list[dict[str, Any]]]:
        async with websockets.connect(url, compression="deflate") as ws:
            await ws.send('{"op":"subscribe","id":1,"channel":"bbo","symbols":["BTC"]}')
            received = [orjson.loads(await ws.recv()) for _ in range(2)]
            for n in range(3):  # compressed with context takeover, in its 512-byte window
                await ws.send(orjson.dumps({"op": "ping", "id": f"ping-{n}" * 8}).decode())
                received.append(orjson.loads(await ws.recv()))
            assert ws.response is not None
            return ws.response.headers["Sec-WebSocket-Extensions"], received

    extensions, received = await trio.to_thread.run_sync(asyncio.run, client())
    # The library offers a bare client_max_window_bits: the server picks a small window.
    assert extensions == ("permessage-deflate; server_no_context_takeover; "
                          "client_max_window_bits=9")
    assert received[0]["type"] == "subscribed"
    assert received[1]["type"] == "bbo" and received[1]["bid"] == ["100", "1"]
    assert [(m["type"], m["id"]) for m in received[2:]] == [
        ("pong", f"ping-{n}" * 8) for n in range(3)]


async def test_a_client_that_offers_no_window_size_is_inflated_with_the_full_window(
        server: Server) -> None:
    """Without client_max_window_bits in its offer a client compresses with a 32 KiB
    window: the server must inflate with it (a second message refers back 1,000+ bytes)."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage
    from wsproto.extensions import PerMessageDeflate

    class BareOffer(PerMessageDeflate):
        def offer(self) -> str:
            return "server_no_context_takeover"  # no client_max_window_bits

    url = server.url  # type: ignore[attr-defined]
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    ws = WSConnection(ConnectionType.CLIENT)
    pad = "".join(f"{n:04d}" for n in range(300))  # 1,200 bytes that do not repeat
    async with await trio.open_tcp_stream(host, int(port)) as stream:
        await stream.send_all(ws.send(Request(host=host, target="/v1/stream",
                                              extensions=[BareOffer()])))
        replies: list[dict[str, Any]] = []
        with trio.fail_after(5):
            while len(replies) < 2:
                ws.receive_data(await stream.receive_some(65536))
                for event in ws.events():
                    if isinstance(event, AcceptConnection):
                        assert [type(e) for e in event.extensions] == [BareOffer]
                        for n in range(2):  # the second repeats the first's pad
                            request = {"op": "ping", "id": n, "pad": pad}
                            await stream.send_all(ws.send(TextMessage(
                                orjson.dumps(request).decode())))
                    elif isinstance(event, BytesMessage):
                        replies.append(orjson.loads(event.data))
    # Both inflated and parsed (the unknown field is refused as a bad request); with a
    # too small window the second would not inflate and the connection would close.
    assert [(r["type"], r["id"], r["code"]) for r in replies] == [
        ("error", 0, "bad_request"), ("error", 1, "bad_request")]


async def test_a_connection_outlives_the_handshake_deadline(nursery: trio.Nursery) -> None:
    server, url = await start(nursery, **{"server.handshake_timeout_ms": 200,
                                          "server.heartbeat_ms": 100})
    async with connect(url) as conn:
        await conn.subscribe("trades", ["BTC"])
        await conn.receive()
        with trio.fail_after(3):
            beats = 0
            while beats < 5:  # 500 ms of heartbeats: well past the handshake deadline
                beats += (await conn.receive())["type"] == "heartbeat"
        server.hub.apply(Trade("BTC", 1, "100", "1", "buy", 1, 1), server.clock())
        assert (await next_of(conn, "trade"))["seq"] == 1
    server.shutdown()


async def test_a_silent_connection_is_dropped_at_the_handshake_deadline(
        nursery: trio.Nursery) -> None:
    server, url = await start(nursery, **{"server.handshake_timeout_ms": 100})
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(b"GET /v1/stream HTTP/1.1\r\n")  # and never the rest
        with trio.fail_after(2):
            assert await stream.receive_some(100) == b""
    server.shutdown()


async def open_raw(url: str, extensions: list[Extension] | None = None,
                   ) -> tuple[trio.SocketStream, WSConnection]:
    """A WebSocket connection by hand: the stream and a wsproto client that does
    nothing (answers no ping, no close) unless told to."""
    host = url.split("//")[1].split("/")[0].rsplit(":", 1)[0]
    stream = await tcp_to(url)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=host, target="/v1/stream",
                                          extensions=extensions or [])))
    while not any(isinstance(e, AcceptConnection) for e in ws.events()):
        ws.receive_data(await stream.receive_some(65536))
    return stream, ws


async def raw_request(url: str, data: bytes) -> bytes:
    """Send raw bytes; return the status line of the answer."""
    stream = await tcp_to(url)
    async with stream:
        await stream.send_all(data)
        answer = b""
        while chunk := await stream.receive_some(65536):
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


UPGRADE = (b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: %s\r\n\r\n")


async def tcp_to(url: str) -> trio.SocketStream:
    """A TCP connection to the server of ``url``."""
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    return await trio.open_tcp_stream(host, int(port))


async def raw_upgrade(url: str, headers: bytes = b"") -> tuple[trio.SocketStream, bytes]:
    """A WebSocket upgrade of ``/v1/stream`` sent by hand, with ``headers`` (whole lines)
    added: the stream and the answer's head, read a byte at a time so that no frame
    after it is taken (the head is cut short if the server closes first)."""
    stream = await tcp_to(url)
    await stream.send_all((UPGRADE % (b"/v1/stream", b"13"))[:-2] + headers + b"\r\n")
    head = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in head and (byte := await stream.receive_some(1)):
            head += byte
    return stream, head


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (UPGRADE % (b"/v1/stream", b"8"), b"HTTP/1.1 426 Upgrade Required"),
        (UPGRADE % (b"/elsewhere", b"13"), b"HTTP/1.1 404 Not Found"),
        (b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Version: 13\r\n\r\n", b"HTTP/1.1 400 Bad Request"),
        (b"garbage\r\n\r\n", b"HTTP/1.1 400 Bad Request"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
         b"HTTP/1.1 400 Bad Request"),
        (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
         b"HTTP/1.1 405 Method Not Allowed"),
        (UPGRADE.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: permessage-deflate; "
                         b"server_max_window_bits=x\r\n\r\n") % (b"/v1/stream", b"13"),
         b"HTTP/1.1 400 Bad Request"),
    ],
)
async def test_bad_handshakes_are_answered_and_closed(server: Server, data: bytes,
                                                      status: bytes) -> None:
    with trio.fail_after(2):
        assert await raw_request(server.url, data) == status  # type: ignore[attr-defined]


async def test_an_internal_error_closes_1011_and_spares_the_others(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> list[str]:
        raise RuntimeError("a bug")

    async with connect(server.url) as bystander, connect(server.url) as victim:  # type: ignore[attr-defined]
        await bystander.subscribe("trades", ["BTC"])
        await bystander.receive()
        monkeypatch.setattr(server.hub, "symbol_list", broken)
        await victim.list()
        with trio.fail_after(2):
            _, code = await read_until_closed(victim)
        assert code == 1011
        server.hub.apply(Trade("BTC", 9, "100", "1", "buy", 1, 1), server.clock())
        assert (await bystander.receive())["trade_id"] == 9


async def test_a_thousand_clients_vanishing_at_once_leave_no_task_behind(
        server: Server) -> None:
    """Clients that drop their TCP connections mid-stream (no closing handshake) are
    cleaned up: the tasks, connections and open descriptors go back to what they were,
    and a bystander goes on receiving."""
    url = server.url  # type: ignore[attr-defined]

    def tasks() -> float:
        return parse_metrics(server.render_metrics().decode())["tickwire_tasks"]

    async with connect(url) as bystander:
        await bystander.subscribe("trades", ["BTC"])
        await bystander.receive()
        before, descriptors = tasks(), len(os.listdir("/proc/self/fd"))
        streams = []
        for _ in range(1000):
            stream = await tcp_to(url)
            await stream.send_all(UPGRADE % (b"/v1/stream", b"13"))
            streams.append(stream)
        with trio.fail_after(10):
            while len(server.sessions) < 1001:
                await trio.testing.wait_all_tasks_blocked()
        for stream in streams:  # vanish, all at once, without a close frame
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))  # RST, not FIN
            await stream.aclose()
        with trio.fail_after(10):
            while len(server.sessions) > 1:
                await trio.testing.wait_all_tasks_blocked()
        assert tasks() == before
        assert len(os.listdir("/proc/self/fd")) == descriptors  # the server's ends too
        server.hub.apply(Trade("BTC", 5, "100", "1", "buy", 1, 1), server.clock())
        with trio.fail_after(2):  # (a heartbeat may come first: this took a while)
            assert (await next_of(bystander, "trade"))["trade_id"] == 5


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked server frame in ``data``."""
    out = []
    while data:
        opcode, _, payload = frame_payload(data)
        length = len(payload)
        header = 2 + (2 if 126 <= length < 1 << 16 else 8 if length >= 1 << 16 else 0)
        out.append((opcode, payload))
        data = data[header + length:]
    return out


async def test_a_ping_flood_gets_a_burst_of_pongs_then_close_1008(server: Server) -> None:
    """Pings share the request bucket: a client that floods pings and reads nothing
    gets at most a burst of pongs queued, then close 1008, and others are unharmed."""
    url = server.url  # type: ignore[attr-defined]
    burst = server.config.client.request_burst
    async with connect(url) as bystander:
        await bystander.subscribe("trades", ["BTC"])
        await bystander.receive()
        stream = await raw_websocket(url)
        async with stream:
            await stream.send_all(fuzz_frame(0x9, b"ping") * (20 * burst))
            frames = await read_to_end(stream)
        pongs = [payload for opcode, payload in frames if opcode == 0xA]
        assert burst <= len(pongs) <= burst + 2 and set(pongs) == {b"ping"}
        assert frames[-1][0] == 0x8
        assert struct.unpack("!H", frames[-1][1][:2])[0] == 1008
        server.hub.apply(Trade("BTC", 6, "100", "1", "buy", 1, 1), server.clock())
        assert (await bystander.receive())["trade_id"] == 6


async def raw_websocket(url: str) -> trio.SocketStream:
    """A TCP connection upgraded to WebSocket by hand (no extension)."""
    stream, head = await raw_upgrade(url)
    assert head.startswith(b"HTTP/1.1 101")
    return stream


async def read_to_end(stream: trio.SocketStream) -> list[tuple[int, bytes]]:
    data = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return server_frames(data)


@pytest.mark.parametrize(("frames", "closed"), [(1024, None), (1025, 1008)])
async def test_a_message_in_too_many_fragments_closes_1008(server: Server, frames: int,
                                                           closed: int | None) -> None:
    """Empty continuation frames cost no bytes: the fragment cap bounds them."""
    limit = server.config.server.max_fragments
    assert limit == 1024
    request = b'{"op": "ping", "id": 7}'
    pieces = [fuzz_frame(0x1, request, fin=False)]
    pieces += [fuzz_frame(0x0, b"", fin=False)] * (frames - 2)
    pieces.append(fuzz_frame(0x0, b"", fin=True))
    stream = await raw_websocket(server.url)  # type: ignore[attr-defined]
    async with stream:
        await stream.send_all(b"".join(pieces))
        if closed is None:  # served: the reply, then our close is answered
            with trio.fail_after(5):
                reply = await stream.receive_some(65536)
            opcode, _, payload = frame_payload(reply)
            message = orjson.loads(payload)
            assert opcode == 0x2 and (message["type"], message["id"]) == ("pong", 7)
            await stream.send_all(fuzz_frame(0x8, struct.pack("!H", 1000)))
            closed = 1000
        got = await read_to_end(stream)
    assert [opcode for opcode, _ in got] == [0x8]
    assert struct.unpack("!H", got[0][1][:2])[0] == closed
