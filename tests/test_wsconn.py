"""The connection layer driven by a raw wsproto client over memory streams."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import CloseConnection, Ping, Pong, TextMessage

from feed.echo import EchoSession
from feed.metrics import Metrics
from feed.wsconn import ConnectionLimits, Flusher, WebSocketConnection
from feed.wsframe import Deflater


def echo_connection(
    limits: ConnectionLimits | None = None,
) -> tuple[WebSocketConnection, trio.testing.MemoryStapledStream[Any], Connection]:
    """An echo connection over memory streams, and the client side: its stream and a
    raw wsproto client."""
    server_stream, client_stream = trio.testing.memory_stream_pair()
    connection = WebSocketConnection(server_stream, Connection(ConnectionType.SERVER),
                                     EchoSession(0, Deflater()), lambda: 0,
                                     limits or ConnectionLimits(), Metrics())
    return connection, client_stream, Connection(ConnectionType.CLIENT)


async def test_ping_after_our_close_gets_no_pong_and_no_crash() -> None:
    connection, client_stream, client = echo_connection(ConnectionLimits(close_timeout_s=5))
    session = connection.session
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        await client_stream.send_all(client.send(Ping(b"before")))
        client.receive_data(await client_stream.receive_some())
        assert [type(e) for e in client.events()] == [Pong]
        session.close(1001, "going away")
        client.receive_data(await client_stream.receive_some())
        (close,) = client.events()
        assert isinstance(close, CloseConnection) and close.code == 1001
        # A ping racing our close: the server must neither answer nor crash ...
        # (our wsproto client is past sending pings, so a fresh one frames it)
        await client_stream.send_all(Connection(ConnectionType.CLIENT).send(Ping(b"late")))
        # ... and the closing handshake still completes.
        await client_stream.send_all(client.send(close.response()))
        with trio.fail_after(2):
            assert await client_stream.receive_some() == b""


async def test_echo_of_a_fragmented_text_message() -> None:
    connection, client_stream, client = echo_connection()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        await client_stream.send_all(client.send(TextMessage("héllo ", message_finished=False)))
        await client_stream.send_all(client.send(TextMessage("wörld")))
        client.receive_data(await client_stream.receive_some())
        (echo,) = client.events()
        assert isinstance(echo, TextMessage) and echo.data == "héllo wörld"
        await client_stream.send_all(client.send(CloseConnection(1000)))
        client.receive_data(await client_stream.receive_some())
        (close,) = client.events()
        assert isinstance(close, CloseConnection) and close.code == 1000


async def test_bytes_after_the_closing_handshake_are_discarded() -> None:
    connection, client_stream, client = echo_connection()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)  # would raise into the nursery on a bug
        await client_stream.send_all(client.send(CloseConnection(1000)) + b"junk" * 75_000)
        client.receive_data(await client_stream.receive_some())
        (close,) = client.events()
        assert isinstance(close, CloseConnection) and close.code == 1000
        with trio.fail_after(2):
            while await client_stream.receive_some():
                pass


async def test_a_silent_peer_is_pinged_and_closed_1011_once_it_stops_answering(
        autojump_clock: trio.testing.MockClock) -> None:
    connection, client_stream, client = echo_connection(
        ConnectionLimits(ping_interval_s=20, pong_timeout_s=5))
    seen: list[tuple[float, str]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        start = trio.current_time()
        while data := await client_stream.receive_some():
            client.receive_data(data)
            for event in client.events():
                seen.append((trio.current_time() - start, type(event).__name__))
                if isinstance(event, Ping) and len(seen) <= 3:  # answers three pings
                    await client_stream.send_all(client.send(event.response()))
                elif isinstance(event, CloseConnection):
                    assert event.code == 1011 and event.reason == "keepalive ping timeout"
                    await client_stream.send_all(client.send(event.response()))
    # A ping 20 s after the last thing heard; the fourth goes unanswered for 5 s.
    assert seen == [(20.0, "Ping"), (40.0, "Ping"), (60.0, "Ping"), (80.0, "Ping"),
                    (85.0, "CloseConnection")]
    assert connection.metrics.dead_peers == 1


async def test_any_frame_from_the_peer_counts_as_a_sign_of_life(
        autojump_clock: trio.testing.MockClock) -> None:
    connection, client_stream, client = echo_connection(
        ConnectionLimits(ping_interval_s=20, pong_timeout_s=5))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        for _ in range(10):  # a message every 15 s: never pinged
            await trio.sleep(15)
            await client_stream.send_all(client.send(TextMessage("still here")))
            client.receive_data(await client_stream.receive_some())
            assert [type(e) for e in client.events()] == [TextMessage]
        await client_stream.send_all(client.send(CloseConnection(1000)))
        client.receive_data(await client_stream.receive_some())
        assert [type(e) for e in client.events()] == [CloseConnection]
    assert connection.metrics.dead_peers == 0


class TimedConnection:
    """Stands in for a connection in the flusher: notes when it is written, and takes
    ``cost_s`` of (mock) time to write."""

    def __init__(self, clock: trio.testing.MockClock, cost_s: float) -> None:
        self.clock = clock
        self.cost_s = cost_s
        self.writes: list[float] = []

    def flush_nowait(self) -> None:
        self.writes.append(trio.current_time())
        self.clock.jump(self.cost_s)


async def test_the_flusher_waits_after_a_long_pass_and_not_after_a_short_one(
        autojump_clock: trio.testing.MockClock) -> None:
    flusher = Flusher(max_pause_s=0.004, pause_per_pass=3)

    async def two_passes(cost_s: float) -> list[float]:
        """When two passes over a connection that takes ``cost_s`` to write began, the
        second asked for as soon as the first is done."""
        connection = TimedConnection(autojump_clock, cost_s)
        flusher.mark(connection)  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()  # the first pass has run
        flusher.mark(connection)  # type: ignore[arg-type]
        await trio.sleep(1)  # the clock jumps past whatever the flusher waits for
        return [t - connection.writes[0] for t in connection.writes]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flusher.run)
        # a pass of 1 ms is followed by 3 ms of rest: the next starts 4 ms after it began
        assert await two_passes(0.001) == pytest.approx([0.0, 0.004])
        # a pass of 0.1 ms (a few clients) by none
        assert await two_passes(0.0001) == pytest.approx([0.0, 0.0001])
        # a pass of 3 ms would earn 9 ms: the wait is capped at max_pause_s
        assert await two_passes(0.003) == pytest.approx([0.0, 0.007])
        nursery.cancel_scope.cancel()


async def test_the_ingester_writes_its_own_runs_and_respects_the_rest(
        autojump_clock: trio.testing.MockClock) -> None:
    flusher = Flusher(max_pause_s=0.004, pause_per_pass=3)
    connection = TimedConnection(autojump_clock, 0.001)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flusher.run)
        t0 = trio.current_time()
        # What a run of events marks is not written by the flusher's task...
        flusher.hold()
        flusher.mark(connection)  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        assert connection.writes == []
        # ...but when the run hands over: the pass takes 1 ms and earns 3 ms of rest,
        # and the next event, due sooner, waits for the rest's end.
        assert flusher.handover(t0 + 0.0002) == pytest.approx(t0 + 0.004)
        assert connection.writes == [pytest.approx(t0)]
        # During the rest a run's writes wait; the ingester is told to wake at its end.
        flusher.hold()
        flusher.mark(connection)  # type: ignore[arg-type]
        assert flusher.handover(t0 + 0.010) == pytest.approx(t0 + 0.004)
        assert len(connection.writes) == 1
        await trio.sleep_until(t0 + 0.004)
        # At the end of the rest the ingester writes, then waits for its event.
        assert flusher.handover(t0 + 0.020) == pytest.approx(t0 + 0.020)
        assert connection.writes[1] == pytest.approx(t0 + 0.004)
        # A run ending without a next event (a checkpoint, the end of a pass) while
        # resting leaves its writes to the flusher's task, at the rest's end.
        flusher.hold()
        flusher.mark(connection)  # type: ignore[arg-type]
        flusher.release()
        await trio.sleep(1)
        assert connection.writes[2] == pytest.approx(t0 + 0.008)
        nursery.cancel_scope.cancel()
