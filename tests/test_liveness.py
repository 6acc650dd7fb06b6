"""Liveness over loopback, on trio's virtual clock: server pings, the pong deadline and
the close of dead peers (``server.ping_interval_ms``, ``server.pong_timeout_ms``)."""

from __future__ import annotations

from typing import Any

import orjson
import trio
import trio.testing
from wsproto import WSConnection
from wsproto.events import CloseConnection, Ping, TextMessage

from clients.client import connect
from feed.events import Trade
from tests.helpers import REAL_SOCKETS_S
from tests.test_server import next_of, open_raw, start

PING_S = 20.0  # the defaults
PONG_S = 20.0


async def send_request(stream: trio.SocketStream, ws: WSConnection,
                       request: dict[str, Any]) -> None:
    await stream.send_all(ws.send(TextMessage(orjson.dumps(request).decode())))


async def test_a_peer_that_answers_no_ping_is_closed_1011_and_freed(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    autojump_clock.autojump_threshold = REAL_SOCKETS_S
    server, url = await start(nursery)
    trades = 70
    async with connect(url) as bystander:
        await bystander.subscribe("trades", ["BTC"])
        await bystander.receive()
        dead, ws = await open_raw(url)
        await send_request(dead, ws, {"op": "subscribe", "channel": "trades",
                                      "symbols": ["BTC"]})
        await send_request(dead, ws, {"op": "subscribe", "channel": "book", "symbols": ["ETH"],
                                      "depth": 7})
        silent_since = trio.current_time()  # it sends nothing from here on
        pings: list[float] = []
        closed: list[tuple[float, int]] = []

        async def dead_peer() -> None:
            """Reads what it is sent, answers nothing."""
            while data := await dead.receive_some(65536):
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, Ping):
                        pings.append(trio.current_time() - silent_since)
                    elif isinstance(event, CloseConnection):
                        closed.append((trio.current_time() - silent_since, event.code))

        async def feed() -> None:
            for i in range(trades):  # a trade a second, past the dead peer's end
                await trio.sleep(1)
                server.hub.apply(Trade("BTC", i, "100", "1", "buy", 1, 1), server.clock())

        async with trio.open_nursery() as inner:
            inner.start_soon(dead_peer)
            inner.start_soon(feed)
            got = [(await next_of(bystander, "trade"))["seq"] for _ in range(trades)]
        await dead.aclose()

        # Pinged once after 20 s of silence, closed 20 s later, with 1011.
        assert pings == [PING_S]
        assert len(closed) == 1 and closed[0][1] == 1011
        assert PING_S + PONG_S <= closed[0][0] < PING_S + PONG_S + 0.1
        assert server.metrics.dead_peers == 1 and server.metrics.closes == {1011: 1}
        # Freed: its subscriptions and its session are gone.
        assert len(server.sessions) == 1
        assert len(server.hub.symbols["BTC"].trades.members) == 1
        assert (7, 0, True) not in server.hub.symbols["ETH"].book_groups
        # The bystander, pinged as well, answered and got every trade, in order.
        assert got == list(range(1, trades + 1))
    server.shutdown()


async def test_a_healthy_idle_subscriber_on_a_quiet_symbol_stays_connected(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    autojump_clock.autojump_threshold = REAL_SOCKETS_S
    server, url = await start(nursery)
    async with connect(url) as conn:  # the reference client answers pings by itself
        await conn.subscribe("book", ["ETH"])
        await conn.receive()
        snapshot = await conn.receive()
        quiet_until = trio.current_time() + 10 * (PING_S + PONG_S)  # ten pong deadlines
        while trio.current_time() < quiet_until:  # nothing but heartbeats comes
            beat = await conn.receive()
            assert beat["type"] == "heartbeat" and beat["seqs"] == {
                "book:ETH": snapshot["seq"]}
        await conn.ping()
        assert (await next_of(conn, "pong"))["type"] == "pong"
    assert server.metrics.dead_peers == 0 and server.metrics.closes == {1000: 1}
    server.shutdown()


async def test_a_dead_peer_behind_a_full_socket_is_closed_too(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    """A peer that stopped reading with its socket full: the Ping cannot even reach it,
    and the blocked write ends at the pong deadline."""
    autojump_clock.autojump_threshold = REAL_SOCKETS_S
    server, url = await start(nursery, **{"client.max_queued_bytes": 64 << 20,
                                          "client.max_queue_age_ms": 3_600_000,
                                          "client.max_behind_ms": 3_600_000})
    dead, ws = await open_raw(url)
    await send_request(dead, ws, {"op": "subscribe", "channel": "trades", "symbols": ["BTC"]})
    silent_since = trio.current_time()
    (session,) = server.sessions
    trade_id = 0
    while not session.outbox:  # trades until its socket is full and the server holds some
        for _ in range(500):
            trade_id += 1
            server.hub.apply(Trade("BTC", trade_id, "100", "1", "buy", 1, 1), server.clock())
        await trio.testing.wait_all_tasks_blocked()
    with trio.fail_after(PING_S + PONG_S + 5):
        await server.wait_no_connections()
    assert PING_S + PONG_S <= trio.current_time() - silent_since
    assert server.metrics.dead_peers == 1
    await dead.aclose()
    server.shutdown()

