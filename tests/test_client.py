"""The trio client, the BookKeeper and the terminal view against a scripted fake server.

The fake server is wsproto's server side on a trio stream: a real loopback socket (port
0) for the connection-level tests, ``trio.testing.memory_stream_pair`` for the keeper
and view (injected through ``open_stream``), which then run on trio's virtual clock.
"""

from __future__ import annotations

import io
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from clients.backoff import Backoff
from clients.client import Endpoint, StreamOpener, connect
from clients.errors import BadMessage, ConnectionClosed, HandshakeRejected
from clients.keeper import BookKeeper
from clients.subscribe import run_subscribe
from clients.subscription import SubState
from clients.view import HOME
from feed.events import Level
from tests.helpers import NaiveBook

# -- the fake server ---------------------------------------------------------------------


class FakePeer:
    """The server end of one WebSocket connection, driven step by step by a test."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)
        self.events: deque[Event] = deque()
        self.request: Request | None = None
        self.pongs: list[bytes] = []
        self.close: CloseConnection | None = None

    async def _next_event(self) -> Event | None:
        while not self.events:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.ws.receive_data(data)
            self.events.extend(self.ws.events())
        return self.events.popleft()

    async def accept(self, *, deflate: PerMessageDeflate | None = None) -> Request:
        event = await self._next_event()
        assert isinstance(event, Request)
        self.request = event
        extensions = [deflate] if deflate is not None else []
        await self.stream.send_all(self.ws.send(AcceptConnection(extensions=extensions)))
        return event

    async def reject(self, status: int, body: bytes) -> None:
        event = await self._next_event()
        assert isinstance(event, Request)
        headers = [(b"content-length", str(len(body)).encode())]
        data = self.ws.send(RejectConnection(status_code=status, headers=headers, has_body=True))
        data += self.ws.send(RejectData(data=body))
        await self.stream.send_all(data)

    async def send(self, payload: object) -> None:
        await self.stream.send_all(self.ws.send(BytesMessage(data=orjson.dumps(payload))))

    async def send_raw(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def receive_request(self) -> dict[str, Any] | None:
        """The next request; ``None`` once the client closed (its close is answered)."""
        parts: list[bytes] = []
        while True:
            event = await self._next_event()
            if event is None:
                return None
            if isinstance(event, TextMessage | BytesMessage):
                data = event.data
                parts.append(data.encode() if isinstance(data, str) else bytes(data))
                if event.message_finished:
                    request: dict[str, Any] = orjson.loads(b"".join(parts))
                    return request
            elif isinstance(event, Pong):
                self.pongs.append(bytes(event.payload))
            elif isinstance(event, Ping):
                await self.send_raw(event.response())
            elif isinstance(event, CloseConnection):
                self.close = event
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    await self.send_raw(event.response())
                return None

    async def close_and_drain(self, code: int, reason: str = "") -> list[dict[str, Any]]:
        """Close with ``code`` and return every request the client sent before its echo."""
        await self.send_raw(CloseConnection(code=code, reason=reason))
        requests = []
        while (request := await self.receive_request()) is not None:
            requests.append(request)
        return requests


Script = Callable[[FakePeer], Awaitable[None]]


async def _run_script(script: Script, stream: trio.abc.Stream) -> None:
    async with stream:
        await script(FakePeer(stream))


@asynccontextmanager
async def serve_tcp(script: Script) -> AsyncIterator[str]:
    """Serve ``script`` (once per connection) on a loopback port; yield the ws:// URL."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(_run_script, script), 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/stream"
        nursery.cancel_scope.cancel()


def memory_opener(nursery: trio.Nursery, scripts: list[Script]) -> StreamOpener:
    """An ``open_stream`` serving each new connection with the next script in memory;
    refuses connections (``OSError``) once the scripts run out."""

    async def opener(endpoint: Endpoint) -> trio.abc.Stream:
        if not scripts:
            raise ConnectionRefusedError("no more scripted connections")
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(_run_script, scripts.pop(0), server)
        return client

    return opener


# -- server-side book messages with correct checksums ---------------------------------------


class ServerBook:
    """Builds ``book_snapshot`` / ``book_update`` messages with the right checksum."""

    def __init__(self, symbol: str = "BTC", depth: int = 10) -> None:
        self.symbol = symbol
        self.depth = depth
        self.model = NaiveBook(depth)
        self.seq = 0

    def _apply(self, bids: list[Level], asks: list[Level]) -> None:
        self.model.apply(bids, asks)

    def _checksum(self) -> int:
        return self.model.checksum()

    def snapshot(
        self, seq: int, bids: list[Level], asks: list[Level], reason: str = "subscribe"
    ) -> dict[str, Any]:
        self.model, self.seq = NaiveBook(self.depth), seq
        self._apply(bids, asks)
        return {
            "type": "book_snapshot", "symbol": self.symbol, "seq": seq, "depth": self.depth,
            "bids": bids, "asks": asks, "checksum": self._checksum(), "reason": reason,
            "ts_event": 1, "ts_recv": 2, "ts_send": 3,
        }

    def update(
        self, bids: list[Level], asks: list[Level], *, prev_seq: int | None = None,
        checksum: int | None = None,
    ) -> dict[str, Any]:
        prev = self.seq if prev_seq is None else prev_seq
        self.seq = prev + 1
        self._apply(bids, asks)
        return {
            "type": "book_update", "symbol": self.symbol, "seq": self.seq, "prev_seq": prev,
            "bids": bids, "asks": asks,
            "checksum": self._checksum() if checksum is None else checksum,
            "ts_event": 1, "ts_recv": 2, "ts_send": 3,
        }


BIDS: list[Level] = [("100.5", "1"), ("100", "2")]
ASKS: list[Level] = [("101", "1.5"), ("101.25", "0.25")]


# -- connection: real loopback sockets --------------------------------------------------------


async def test_batches_are_flattened_and_deflate_negotiated() -> None:
    levels = [[str(60000 + i), "1.5"] for i in range(200)]
    big = {"type": "book_snapshot", "symbol": "BTC", "bids": levels, "asks": levels}

    async def script(peer: FakePeer) -> None:
        request = await peer.accept(deflate=PerMessageDeflate())
        assert any("permessage-deflate" in str(ext) for ext in request.extensions)
        await peer.send([{"type": "a"}, {"type": "b"}, {"type": "c"}])
        await peer.send({"type": "d"})
        await peer.send([])
        await peer.send(big)
        await peer.close_and_drain(1000)

    async with serve_tcp(script) as url, connect(url) as conn:
        assert conn.compressed
        received = [msg async for msg in conn]
        assert [msg["type"] for msg in received] == ["a", "b", "c", "d", "book_snapshot"]
        assert received[-1] == big
        # The repetitive snapshot went over the wire compressed.
        assert conn.statistics().bytes_received < len(orjson.dumps(big)) // 3
        assert conn.close_code == 1000


async def test_no_compression_offered_when_disabled() -> None:
    async def script(peer: FakePeer) -> None:
        request = await peer.accept(deflate=PerMessageDeflate())
        assert list(request.extensions) == []
        await peer.send({"type": "plain"})
        await peer.close_and_drain(1000)

    async with serve_tcp(script) as url, connect(url, compress=False) as conn:
        assert not conn.compressed
        assert [msg async for msg in conn] == [{"type": "plain"}]


async def test_server_no_context_takeover_is_accepted() -> None:
    async def script(peer: FakePeer) -> None:
        await peer.accept(deflate=PerMessageDeflate(server_no_context_takeover=True))
        for i in range(3):
            await peer.send({"type": "tick", "n": i, "pad": "x" * 500})
        await peer.close_and_drain(1000)

    async with serve_tcp(script) as url, connect(url) as conn:
        assert conn.compressed
        assert [msg["n"] async for msg in conn] == [0, 1, 2]


async def test_requests_are_json_with_increasing_ids() -> None:
    seen: list[dict[str, Any]] = []

    async def script(peer: FakePeer) -> None:
        await peer.accept()
        for _ in range(5):
            request = await peer.receive_request()
            assert request is not None
            seen.append(request)
        await peer.close_and_drain(1000)

    async with serve_tcp(script) as url, connect(url) as conn:
        assert await conn.subscribe("book", ["BTC", "ETH"], depth=5, interval_ms=100) == 1
        assert await conn.unsubscribe("book", ["ETH"]) == 2
        assert await conn.resync("BTC") == 3
        assert await conn.list() == 4
        assert await conn.ping() == 5
        assert [msg async for msg in conn] == []
    assert seen == [
        {"op": "subscribe", "channel": "book", "symbols": ["BTC", "ETH"], "depth": 5,
         "interval_ms": 100, "id": 1},
        {"op": "unsubscribe", "channel": "book", "symbols": ["ETH"], "id": 2},
        {"op": "resync", "channel": "book", "symbol": "BTC", "id": 3},
        {"op": "list", "id": 4},
        {"op": "ping", "id": 5},
    ]


async def test_close_code_and_reason_are_reported() -> None:
    async def script(peer: FakePeer) -> None:
        await peer.accept()
        await peer.send({"type": "notice", "code": "lag", "message": "behind"})
        await peer.close_and_drain(4001, "slow consumer")

    async with serve_tcp(script) as url, connect(url) as conn:
        received = [await conn.receive()]
        with pytest.raises(ConnectionClosed) as info:
            await anext(conn)
        assert info.value.code == 4001
        assert info.value.reason == "slow consumer"
        assert received == [{"type": "notice", "code": "lag", "message": "behind"}]
        assert conn.close_code == 4001
        assert conn.close_reason == "slow consumer"
        with pytest.raises(ConnectionClosed):
            await conn.receive()


async def test_ping_is_answered_and_lost_connection_is_1006() -> None:
    pongs: list[bytes] = []

    async def script(peer: FakePeer) -> None:
        await peer.accept()
        await peer.send_raw(Ping(payload=b"are you there"))
        await peer.send({"type": "after-ping"})
        request = await peer.receive_request()  # reading it also reads the pong
        assert request == {"op": "ping", "id": 1}
        pongs.extend(peer.pongs)
        # Then the server vanishes without a close frame.

    async with serve_tcp(script) as url, connect(url) as conn:
        assert await conn.receive() == {"type": "after-ping"}
        await conn.ping()
        with pytest.raises(ConnectionClosed) as info:
            await conn.receive()
        assert info.value.code == 1006
    assert pongs == [b"are you there"]


async def test_rejected_handshake_and_bad_frame() -> None:
    async def reject(peer: FakePeer) -> None:
        await peer.reject(404, b"no such path")

    async with serve_tcp(reject) as url:
        with pytest.raises(HandshakeRejected) as info:
            async with connect(url):
                pass
        assert info.value.status == 404
        assert info.value.body == b"no such path"

    async def garbage(peer: FakePeer) -> None:
        await peer.accept()
        await peer.send_raw(BytesMessage(data=b"{not json"))
        await peer.receive_request()
        assert peer.close is not None
        assert peer.close.code == 1007

    async with serve_tcp(garbage) as url, connect(url) as conn:
        with pytest.raises(BadMessage):
            await conn.receive()
        with pytest.raises(ConnectionClosed) as closed:
            await conn.receive()
        assert closed.value.code == 1007


async def test_frames_in_the_same_read_as_the_handshake_response() -> None:
    async def script(peer: FakePeer) -> None:
        event = await peer._next_event()
        assert isinstance(event, Request)
        data = peer.ws.send(AcceptConnection())
        data += peer.ws.send(BytesMessage(data=b'[{"type":"early"},{"type":"bird"}]'))
        data += peer.ws.send(Ping(payload=b"p"))
        data += peer.ws.send(BytesMessage(data=b"garbage"))
        await peer.stream.send_all(data)  # one write: 101 and three frames together
        await peer.receive_request()
        assert peer.pongs == [b"p"]
        assert peer.close is not None
        assert peer.close.code == 1007

    async with serve_tcp(script) as url, connect(url) as conn:
        assert await conn.receive() == {"type": "early"}
        assert await conn.receive() == {"type": "bird"}
        with pytest.raises(BadMessage):
            await conn.receive()
        with pytest.raises(ConnectionClosed) as closed:
            await conn.receive()
        assert closed.value.code == 1007


def test_endpoint_parsing() -> None:
    endpoint = Endpoint.parse("ws://127.0.0.1:8765")
    assert endpoint == Endpoint("127.0.0.1", 8765, "/v1/stream", tls=False)
    assert endpoint.host_header == "127.0.0.1:8765"
    secure = Endpoint.parse("wss://example.com/v1/stream?token=x")
    assert secure == Endpoint("example.com", 443, "/v1/stream?token=x", tls=True)
    assert secure.host_header == "example.com"
    assert Endpoint.parse("ws://[::1]:9000/x").host_header == "[::1]:9000"
    with pytest.raises(ValueError, match="ws://"):
        Endpoint.parse("http://example.com/")


# -- BookKeeper: memory streams and the virtual clock ------------------------------------------


async def disconnected(keeper: BookKeeper) -> None:
    """Wait until the keeper has processed everything up to the close and is down.

    (The client echoes a close frame as soon as it parses it, which may be before the
    keeper has consumed the messages that came before it.)"""
    while keeper.connected:
        await keeper.wait_state_changed()


async def run_until(keeper: BookKeeper, script: Any, done: trio.Event) -> None:
    """Run ``keeper`` against one fake server ``script`` until the script is done and
    the keeper has seen the disconnect."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            keeper.open_stream = memory_opener(nursery, [script])
            nursery.start_soon(keeper.run)
            await done.wait()
            await disconnected(keeper)
            nursery.cancel_scope.cancel()


async def _subscribed(peer: FakePeer, depth: int = 10) -> None:
    """Accept, expect the book subscription, confirm it."""
    await peer.accept(deflate=PerMessageDeflate())
    request = await peer.receive_request()
    assert request is not None
    assert request["op"] == "subscribe"
    assert request["channel"] == "book"
    assert request["symbols"] == ["BTC"]
    assert request.get("depth", 10) == depth
    await peer.send({"type": "subscribed", "id": request["id"], "channel": "book",
                     "symbols": ["BTC"], "depth": depth})


async def test_chain_break_triggers_exactly_one_resync(autojump_clock: trio.abc.Clock) -> None:
    book = ServerBook()
    resyncs: list[dict[str, Any]] = []
    done = trio.Event()

    async def script(peer: FakePeer) -> None:
        await _subscribed(peer)
        await peer.send(book.snapshot(1, BIDS, ASKS))
        await peer.send([
            book.update([("100.5", "3")], []),                    # seq 2: fine
            book.update([("100", "0")], [], prev_seq=5),          # seq 6 after 5: a break
            book.update([("99", "1")], []),                       # seq 7: rest of the chain
        ])
        request = await peer.receive_request()
        assert request is not None
        resyncs.append(request)
        await peer.send(book.update([("98", "1")], []))          # in flight before the resync
        await peer.send(book.snapshot(20, BIDS, ASKS, reason="resync"))
        await peer.send(book.update([], [("101", "0")]))
        resyncs.extend(await peer.close_and_drain(1000))
        done.set()

    keeper = BookKeeper("ws://fake/v1/stream", rng=random.Random(1))
    await keeper.subscribe("book", ["BTC"])
    await run_until(keeper, script, done)

    assert resyncs == [{"op": "resync", "channel": "book", "symbol": "BTC", "id": 2}]
    stats = keeper.statistics()
    assert stats.resyncs == 1
    assert stats.chain_breaks == 1
    assert stats.checksum_failures == 0
    assert stats.messages == 8
    btc = keeper.session.books["BTC"]
    assert btc.state is SubState.LIVE
    assert btc.book.seq == 21
    assert btc.book.top(5) == (BIDS, [("101.25", "0.25")])


async def test_checksum_failure_triggers_one_resync(autojump_clock: trio.abc.Clock) -> None:
    book = ServerBook()
    requests: list[dict[str, Any]] = []
    done = trio.Event()

    async def script(peer: FakePeer) -> None:
        await _subscribed(peer)
        await peer.send(book.snapshot(1, BIDS, ASKS))
        await peer.send(book.update([("100.5", "3")], [], checksum=123))
        await peer.send(book.update([("100.5", "4")], [], checksum=456))
        requests.extend(await peer.close_and_drain(1000))
        done.set()

    keeper = BookKeeper("ws://fake/v1/stream", rng=random.Random(1))
    await keeper.subscribe("book", ["BTC"])
    await run_until(keeper, script, done)

    assert [r["op"] for r in requests] == ["resync"]
    assert keeper.statistics().checksum_failures == 1
    assert keeper.statistics().resyncs == 1
    assert keeper.session.books["BTC"].state is SubState.RESYNCING


async def test_reconnect_resubscribes_and_delivers_in_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    book = ServerBook(depth=5)

    async def first(peer: FakePeer) -> None:
        await _subscribed(peer, depth=5)
        await peer.send(book.snapshot(1, BIDS, ASKS))
        await peer.send([book.update([("100.5", "2")], []), book.update([], [("102", "1")])])
        await peer.close_and_drain(1011, "internal error")

    async def second(peer: FakePeer) -> None:
        await _subscribed(peer, depth=5)
        await peer.send(book.snapshot(50, BIDS, ASKS))
        await peer.receive_request()  # until the client goes away

    keeper = BookKeeper(
        "ws://fake/v1/stream",
        backoff=Backoff(initial=1.0, maximum=30.0, jitter=0.5),
        rng=random.Random(3),
    )
    await keeper.subscribe("book", ["BTC"], depth=5)
    send, receive = trio.open_memory_channel[dict[str, Any]](100)
    seqs: list[int] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            keeper.open_stream = memory_opener(nursery, [first, second])
            nursery.start_soon(keeper.run, send)
            async with receive:
                async for msg in receive:
                    if msg["type"].startswith("book_"):
                        seqs.append(msg["seq"])
                    if msg.get("seq") == 50:
                        break
            nursery.cancel_scope.cancel()

    assert seqs == [1, 2, 3, 50]
    stats = keeper.statistics()
    assert stats.connections == 2
    assert stats.reconnects == 1
    assert stats.resyncs == 0
    assert len(keeper.delays) == 1
    assert 0.5 < keeper.delays[0] <= 1.0
    assert keeper.session.books["BTC"].book.seq == 50
    assert keeper.books["BTC"].top(1) == ([("100.5", "1")], [("101", "1.5")])


async def test_reconnect_backoff_is_capped_and_jittered(autojump_clock: trio.abc.Clock) -> None:
    attempts: list[float] = []

    async def refuse(endpoint: Endpoint) -> trio.abc.Stream:
        attempts.append(trio.current_time())
        raise ConnectionRefusedError("refused")

    backoff = Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.5)
    keeper = BookKeeper(
        "ws://fake/v1/stream", backoff=backoff, rng=random.Random(42), open_stream=refuse,
        max_failures=10,
    )
    with pytest.raises(ConnectionRefusedError):
        await keeper.run()

    waits = [later - earlier for earlier, later in zip(attempts, attempts[1:], strict=False)]
    reference = random.Random(42)
    expected = [backoff.delay(n, reference) for n in range(9)]
    assert keeper.delays == expected
    assert waits == pytest.approx(expected)
    for n, wait in enumerate(waits):
        ceiling = min(8.0, 2.0**n)
        assert ceiling / 2 <= wait <= ceiling + 1e-9
    assert max(waits) <= 8.0 + 1e-9
    assert len({round(w, 6) for w in waits[3:]}) > 1  # capped, yet still spread out
    assert keeper.statistics().connect_failures == 10


async def test_fatal_close_code_stops_the_keeper(autojump_clock: trio.abc.Clock) -> None:
    async def forbid(peer: FakePeer) -> None:
        await _subscribed(peer)
        await peer.close_and_drain(4003, "forbidden")

    keeper = BookKeeper("ws://fake/v1/stream")
    await keeper.subscribe("book", ["BTC"])
    async with trio.open_nursery() as nursery:
        keeper.open_stream = memory_opener(nursery, [forbid])
        with pytest.raises(ConnectionClosed) as info:
            await keeper.run()
    assert info.value.code == 4003
    assert keeper.delays == []


# -- the terminal view ---------------------------------------------------------------------


async def _view_server(book: ServerBook, subscriptions: int, done: trio.Event, peer: FakePeer):
    await peer.accept()
    for _ in range(subscriptions):
        await peer.receive_request()
    await peer.send(book.snapshot(1, BIDS, ASKS))
    await peer.send([book.update([("100.5", str(n))], []) for n in range(2, 40)])
    await peer.send({"type": "trade", "symbol": "BTC", "seq": 1, "trade_id": 1,
                     "price": "100.5", "size": "0.25", "side": "buy", "ts_event": 0})
    done.set()
    await peer.receive_request()


async def test_view_prints_plain_lines_when_not_a_tty(mock_clock: trio.abc.Clock) -> None:
    book = ServerBook()
    done = trio.Event()
    out = io.StringIO()
    keeper = BookKeeper("ws://fake/v1/stream")
    async with trio.open_nursery() as nursery:
        keeper.open_stream = memory_opener(nursery, [partial(_view_server, book, 1, done)])
        nursery.start_soon(partial(run_subscribe, "ws://fake", ["BTC"], "book", 10, out=out,
                                   keeper=keeper))
        await done.wait()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("BTC snapshot seq=1 reason=subscribe bids 100.5x1 100x2")
    assert lines[-1] == "BTC trade seq=1 - buy 0.25 @ 100.5"
    assert len(lines) == 40
    assert "\x1b" not in out.getvalue()


async def test_view_redraws_at_most_ten_times_a_second(mock_clock: trio.testing.MockClock) -> None:
    book = ServerBook()
    done = trio.Event()
    out = io.StringIO()
    keeper = BookKeeper("ws://fake/v1/stream")
    async with trio.open_nursery() as nursery:
        # On a terminal the book view also subscribes trades: two requests.
        keeper.open_stream = memory_opener(nursery, [partial(_view_server, book, 2, done)])
        nursery.start_soon(partial(run_subscribe, "ws://fake", ["BTC"], "book", 10, out=out,
                                   tty=True, color=False, keeper=keeper))
        await done.wait()
        await trio.testing.wait_all_tasks_blocked()
        # 40 messages arrived at one instant: only the first draw happened so far.
        assert out.getvalue().count(HOME) == 1
        mock_clock.jump(0.1)
        await trio.testing.wait_all_tasks_blocked()
        assert out.getvalue().count(HOME) == 2
        nursery.cancel_scope.cancel()
    screen = out.getvalue().rsplit(HOME, 1)[1]
    assert "BTC  seq 39  live" in screen
    assert "            39          100.5 | 101            1.5" in screen
    assert "  -  buy          0.25 @ 100.5" in screen
    assert "msgs 40  resyncs 0" in screen
    assert out.getvalue().endswith("\x1b[?25h\x1b[?1049l")
