"""The first request on a connection: plain HTTP or a WebSocket upgrade.

``read_request`` reads one HTTP/1.1 request head with h11, bounded in bytes (the cap
counts the whole head, headers included), and returns it with the bytes read so far
so that wsproto can take the upgrade over. ``http_response`` renders a small plain
response. ``DeflateExtension`` is wsproto's permessage-deflate with the two things a
fan-out server needs: it always answers ``server_no_context_takeover`` (so a message
can be compressed once for every subscriber) and it refuses an inbound message that
inflates past the size limit as the bytes arrive (a deflate bomb is stopped within one
read, its memory bounded).

Exceptions::

    HandshakeError      the peer sent a malformed or oversized request head
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import h11
import trio
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol


class HandshakeError(Exception):
    """The request head is malformed or larger than allowed (answer 400)."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A parsed request head, with the raw bytes received so far."""

    method: str
    target: str
    headers: dict[str, str]
    raw: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def wants_websocket(self) -> bool:
        return "websocket" in self.headers.get("upgrade", "").lower()


async def read_request(stream: trio.abc.ReceiveStream, max_bytes: int) -> HttpRequest | None:
    """Read one request head. Returns ``None`` when the peer closed first; raises
    ``HandshakeError`` when the head is malformed or over ``max_bytes``."""
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=max_bytes)
    raw = bytearray()
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            raise HandshakeError(f"bad request head: {exc}") from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(16384)
            if not data:
                return None
            raw += data
            if len(raw) > max_bytes + 16384:
                raise HandshakeError("request head too large")
            parser.receive_data(bytes(data))
            continue
        if isinstance(event, h11.Request):
            if len(raw) - len(parser.trailing_data[0]) > max_bytes:
                raise HandshakeError("request head too large")
            headers: dict[str, str] = {}
            for name, value in event.headers:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            return HttpRequest(event.method.decode("ascii"), event.target.decode("latin-1"),
                               headers, bytes(raw))
        if isinstance(event, h11.ConnectionClosed):
            return None
        raise HandshakeError("unexpected data before the request")  # pragma: no cover


_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 426: "Upgrade Required", 429: "Too Many Requests",
            503: "Service Unavailable"}


def http_response(
    status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
             f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
             "Connection: close", *(f"{k}: {v}" for k, v in extra_headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


INBOUND_WINDOW_BITS = 9
"""The LZ77 window asked of clients that offer ``client_max_window_bits`` (RFC 7692
7.1.2.2): requests are small JSON objects, so a 512-byte window costs nothing in
ratio, and the inflate state the server keeps for each such client's messages shrinks
from about 40 KiB (a 32 KiB window) to about 8 KiB."""


def cap_client_window(offer: str, bits: int) -> str:
    """The offer with its ``client_max_window_bits`` parameter, bare or with a value
    above ``bits``, set to ``bits`` (the server may answer any value up to the
    client's). An offer without the parameter is left alone: that client compresses
    with the full 15-bit window, and the server must inflate with it."""
    params = [param.strip() for param in offer.split(";")]
    for i, param in enumerate(params):
        name, equals, value = param.partition("=")
        if name.strip() == "client_max_window_bits" and (
                not equals or (value.strip().isdigit() and int(value) > bits)):
            params[i] = f"client_max_window_bits={bits}"
    return "; ".join(params)


class DeflateExtension(PerMessageDeflate):
    """permessage-deflate that always takes ``server_no_context_takeover``, asks a small
    window of clients that let it choose (``INBOUND_WINDOW_BITS``), and caps the
    inflated size of each inbound message at ``max_message_bytes``."""

    def __init__(self, max_message_bytes: int) -> None:
        super().__init__(server_no_context_takeover=True)
        self.max_message_bytes = max_message_bytes
        self._inflated = 0

    def accept(self, offer: str) -> bool | None | str:
        """Accept the first acceptable offer (wsproto asks about each in turn)."""
        if self._enabled:
            return None
        self.server_no_context_takeover = True
        self.client_no_context_takeover = False
        self._server_max_window_bits = self.DEFAULT_SERVER_MAX_WINDOW_BITS
        self._client_max_window_bits = self.DEFAULT_CLIENT_MAX_WINDOW_BITS
        return super().accept(cap_client_window(offer, INBOUND_WINDOW_BITS))

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes,
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        room = self.max_message_bytes - self._inflated
        try:
            out = self._decompressor.decompress(bytes(data), room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self.max_message_bytes or self._decompressor.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        return out

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool,
    ) -> bytes | CloseReason | None:
        result = super().frame_inbound_complete(proto, fin)
        inflated = self._inflated + (len(result) if isinstance(result, bytes) else 0)
        if fin:
            self._inflated = 0
        if inflated > self.max_message_bytes:
            return CloseReason.MESSAGE_TOO_BIG
        return result
