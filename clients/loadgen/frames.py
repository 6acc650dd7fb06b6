"""WebSocket frames without a socket: counting the server's, making the client's.

Receiving is kept as light as possible so that the load generator is not what is
measured: ``FrameReader`` walks the WebSocket frame headers in the byte stream and only
counts frames and bytes. Every Kth data message (``--sample-every``) is picked out to be
decoded: inflated when RSV1 is set (RFC 7692; the offer asks for
``server_no_context_takeover``, so each message inflates on its own) and parsed. Control
frames other than close are ignored (the server does not ping).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from clients.loadgen.errors import FrameError

DEFAULT_SAMPLE_EVERY = 64

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
NORMAL_CLOSURE = (1000).to_bytes(2, "big")
"""The payload of a close frame with code 1000."""
_DEFLATE_TAIL = b"\x00\x00\xff\xff"


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame picked out of the stream: a sampled data message or a close."""

    opcode: int
    compressed: bool
    payload: bytes


class FrameReader:
    """Counts the server's frames in a byte stream and picks out a few to decode.

    ``feed(data)`` returns every close frame and every ``sample_every``-th complete data
    message; everything else is only counted (``messages``: data frames with FIN set,
    ``bytes``: every byte received, headers included). Raises ``FrameError`` on a masked
    frame, which a server never sends.
    """

    __slots__ = ("_buffer", "_countdown", "bytes", "messages", "sample_every")

    def __init__(self, sample_every: int = DEFAULT_SAMPLE_EVERY) -> None:
        self._buffer = b""
        self.sample_every = sample_every
        self._countdown = sample_every
        self.messages = 0
        self.bytes = 0

    def set_sampling(self, sample_every: int) -> None:
        """Pick every ``sample_every``-th data message from now on (1: every one)."""
        self.sample_every = sample_every
        self._countdown = sample_every

    def feed(self, data: bytes) -> list[Frame]:
        """Take in received bytes; return the frames picked (see the class docstring)."""
        self.bytes += len(data)
        view = self._buffer + data if self._buffer else data
        end = len(view)
        pos = 0
        messages = 0
        countdown = self._countdown
        picked: list[Frame] = []
        while end - pos >= 2:
            first = view[pos]
            length = view[pos + 1]
            if length & 0x80:
                raise FrameError("the server sent a masked frame")
            if length < 126:
                start = pos + 2
            elif length == 126:
                if end - pos < 4:
                    break
                length = (view[pos + 2] << 8) | view[pos + 3]
                start = pos + 4
            else:
                if end - pos < 10:
                    break
                length = int.from_bytes(view[pos + 2:pos + 10], "big")
                start = pos + 10
            stop = start + length
            if stop > end:
                break
            opcode = first & 0x0F
            if opcode < 8:
                if first & 0x80:
                    messages += 1
                    countdown -= 1
                    if countdown <= 0:
                        countdown = self.sample_every
                        if opcode:  # a whole message in one frame (not a continuation)
                            picked.append(Frame(opcode, bool(first & 0x40), view[start:stop]))
            elif opcode == OP_CLOSE:
                picked.append(Frame(opcode, False, view[start:stop]))
            pos = stop
        self._buffer = view[pos:] if pos < end else b""
        self.messages += messages
        self._countdown = countdown
        return picked


def plain_payload(frame: Frame) -> bytes:
    """A data frame's payload, inflated when it is compressed (``zlib.error`` if bad)."""
    if frame.compressed:
        return zlib.decompressobj(-15).decompress(frame.payload + _DEFLATE_TAIL)
    return frame.payload


def decode_messages(frame: Frame, plain: bytes | None = None) -> list[Any]:
    """The message objects of one data frame (a batch array gives several); ``plain``
    is its ``plain_payload`` when the caller has it already.

    Raises ``zlib.error`` or ``orjson.JSONDecodeError`` on a damaged payload."""
    value = orjson.loads(plain_payload(frame) if plain is None else plain)
    return value if isinstance(value, list) else [value]


def close_code(payload: bytes) -> tuple[int, str]:
    """(code, reason) of a close frame's payload; 1005 when it carries no code."""
    if len(payload) < 2:
        return 1005, ""
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame, FIN set (requests are small: no need for speed)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return header + mask + masked
