"""Outbound WebSocket data frames built once and shared by every subscriber.

wsproto does the handshake, the extension negotiation, the inbound parsing and the
control frames; it would also compress and frame every outbound message once per
connection. A market-data message goes to a whole subscription group, so a ``Frame``
holds the message's bytes framed once (RFC 6455 5.2, unmasked, server to client) and,
for permessage-deflate (RFC 7692), compressed once per window size in use.

Compression is only shared because the server always answers with
``server_no_context_takeover``: each message is compressed on its own. One reused
``zlib`` compressor per window size, flushed with ``Z_FULL_FLUSH`` after each message,
gives the same independence without allocating a fresh deflate state per message.
"""

from __future__ import annotations

import struct
import zlib

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
_FIN = 0x80
_RSV1 = 0x40
_DEFLATE_TAIL = b"\x00\x00\xff\xff"


def frame_header(length: int, *, opcode: int = OPCODE_BINARY, compressed: bool = False) -> bytes:
    """Header of one final, unmasked frame carrying ``length`` payload bytes."""
    first = _FIN | opcode | (_RSV1 if compressed else 0)
    if length < 126:
        return struct.pack("!BB", first, length)
    if length < 1 << 16:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def encode_frame(payload: bytes, *, opcode: int = OPCODE_BINARY, compressed: bool = False) -> bytes:
    """One whole unmasked frame: header and payload."""
    return frame_header(len(payload), opcode=opcode, compressed=compressed) + payload


class Deflater:
    """Compresses messages independently (no context takeover), one compressor per
    window size, reused across messages."""

    __slots__ = ("_compressors", "level", "messages")

    def __init__(self, level: int = 6) -> None:
        self.level = level
        self._compressors: dict[int, zlib._Compress] = {}
        self.messages = 0

    def compress(self, payload: bytes, wbits: int) -> bytes:
        """The permessage-deflate payload of one message for a ``wbits`` window."""
        compressor = self._compressors.get(wbits)
        if compressor is None:
            compressor = zlib.compressobj(self.level, zlib.DEFLATED, -wbits)
            self._compressors[wbits] = compressor
        data = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
        self.messages += 1
        if data.endswith(_DEFLATE_TAIL):
            return data[:-4]
        return data  # pragma: no cover - a full flush always ends with the tail


class Frame:
    """One encoded message, framed once for every subscriber.

    ``plain`` is the uncompressed frame; ``deflated(wbits)`` the compressed frame for
    clients that negotiated permessage-deflate with that server window, made on first
    use and then shared.
    """

    __slots__ = ("_deflated", "_deflater", "payload", "plain")

    def __init__(self, payload: bytes, deflater: Deflater) -> None:
        self.payload = payload
        self.plain = encode_frame(payload)
        self._deflater = deflater
        self._deflated: dict[int, bytes] = {}

    def deflated(self, wbits: int) -> bytes:
        """The compressed frame for a ``wbits`` server window."""
        frame = self._deflated.get(wbits)
        if frame is None:
            body = self._deflater.compress(self.payload, wbits)
            frame = encode_frame(body, compressed=True)
            self._deflated[wbits] = frame
        return frame

    def for_client(self, wbits: int) -> bytes:
        """The frame for a client: compressed when ``wbits`` is non-zero."""
        return self.deflated(wbits) if wbits else self.plain
