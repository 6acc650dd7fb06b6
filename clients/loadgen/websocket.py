"""The client side of a connection: the opening handshake (wsproto), then raw frames.

After the handshake wsproto is out of the way: requests go out as ``client_frame`` bytes
and what comes back is read with a ``FrameReader``, decoding only what a request waits
for.
"""

from __future__ import annotations

from typing import Any

import orjson
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.extensions import Extension, PerMessageDeflate

from clients.client import Endpoint
from clients.loadgen.errors import LoadError
from clients.loadgen.frames import (
    NORMAL_CLOSURE,
    OP_CLOSE,
    OP_TEXT,
    Frame,
    FrameReader,
    client_frame,
    close_code,
    decode_messages,
)

RECEIVE_BYTES = 256 * 1024


def parse_url(url: str) -> Endpoint:
    """The endpoint of a ``ws://`` URL (the reference client's parsing; an empty path is
    ``/v1/stream``). Raises ``LoadError`` for a bad URL or ``wss://``, which the load
    generator does not speak."""
    try:
        endpoint = Endpoint.parse(url)
    except ValueError as exc:
        raise LoadError(str(exc)) from None
    if endpoint.tls:
        raise LoadError(f"not a ws:// URL: {url!r} (loadgen speaks plain ws:// only)")
    return endpoint


async def open_websocket(endpoint: Endpoint, compress: bool) -> tuple[trio.SocketStream, bool]:
    """Connect and do the opening handshake; returns the stream and whether
    permessage-deflate is in use. Raises ``LoadError`` (refused) or ``OSError``."""
    stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        offer: list[Extension] = []
        if compress:
            offer.append(PerMessageDeflate(client_no_context_takeover=True,
                                           server_no_context_takeover=True))
        await stream.send_all(ws.send(Request(host=endpoint.host_header,
                                              target=endpoint.target, extensions=offer)))
        while True:
            data = await stream.receive_some(16384)
            if not data:
                raise LoadError("the server closed the connection during the handshake")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    # The server speaks only when spoken to, so nothing follows the
                    # handshake response yet: from here on the stream is raw frames.
                    return stream, any(isinstance(e, PerMessageDeflate)
                                       for e in event.extensions)
                if isinstance(event, RejectConnection):
                    raise LoadError(f"WebSocket handshake refused: HTTP {event.status_code}")
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def request_reply(stream: trio.SocketStream, reader: FrameReader,
                        request: dict[str, Any], reply_type: str,
                        ) -> tuple[dict[str, Any], list[Frame]]:
    """Send one request and read until its reply (every message decoded meanwhile).
    Returns the reply and the frames that came after it in the same read (a
    subscription's first snapshots often do). Raises ``LoadError`` on an ``error``
    reply, a close or the end of the stream."""
    reader.set_sampling(1)
    await stream.send_all(client_frame(OP_TEXT, orjson.dumps(request)))
    while True:
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            raise LoadError(f"connection lost waiting for {reply_type!r}")
        frames = reader.feed(data)
        for index, frame in enumerate(frames):
            if frame.opcode == OP_CLOSE:
                code, reason = close_code(frame.payload)
                raise LoadError(f"closed {code} {reason!r} waiting for {reply_type!r}")
            for message in decode_messages(frame):
                kind = message.get("type") if isinstance(message, dict) else None
                if kind == "error" and message.get("id") == request.get("id"):
                    raise LoadError(f"{request['op']} refused: {message.get('code')}: "
                                    f"{message.get('message')}")
                if kind == reply_type:
                    return dict(message), frames[index + 1:]


async def list_symbols(endpoint: Endpoint, channel: str) -> list[str]:
    """The symbols the server carries on ``channel`` (one short probe connection)."""
    stream, _ = await open_websocket(endpoint, compress=False)
    async with stream:
        reply, _ = await request_reply(stream, FrameReader(), {"op": "list", "id": 1},
                                       "symbols")
        await stream.send_all(client_frame(OP_CLOSE, NORMAL_CLOSURE))
    return [s["symbol"] for s in reply.get("symbols", []) if channel in s.get("channels", ())]
