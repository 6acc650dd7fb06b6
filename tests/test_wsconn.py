"""The connection layer driven by a raw wsproto client over memory streams."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import CloseConnection, Ping, Pong, TextMessage

from feed.echo import EchoSession
from feed.metrics import Metrics
from feed.wsconn import ConnectionLimits, WebSocketConnection
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
