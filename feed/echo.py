"""An echo session: the WebSocket layer of the server with every message sent back.

``tickwire echo`` serves it on every path so that the Autobahn conformance suite can
test the same handshake, extension negotiation, framing, limits and closing handshake
the market-data stream uses.
"""

from __future__ import annotations

from collections.abc import Callable

from feed.outbox import Kind, Outbox
from feed.session import CLOSE_NORMAL, State
from feed.wsframe import OPCODE_BINARY, OPCODE_TEXT, Deflater, encode_frame

# Echo outboxes are bounded by the message size limit and the peer's pace; these budgets
# only have to be larger than one message.
_ECHO_QUEUE_BYTES = 1 << 30
_ECHO_QUEUE_AGE_NS = 3600 * 10**9


class EchoSession:
    """Sends every complete message back, compressed when the client negotiated it."""

    def __init__(self, wbits: int, deflater: Deflater) -> None:
        self.wbits = wbits
        self.deflater = deflater
        self.outbox = Outbox(_ECHO_QUEUE_BYTES, _ECHO_QUEUE_AGE_NS)
        self.state = State.OPEN
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""
        self.on_ready: Callable[[], None] = lambda: None

    def handle(self, data: bytes | str, now_ns: int) -> None:
        if self.state is not State.OPEN:
            return
        if isinstance(data, str):
            payload, opcode = data.encode("utf-8"), OPCODE_TEXT
        else:
            payload, opcode = data, OPCODE_BINARY
        if self.wbits:
            frame = encode_frame(self.deflater.compress(payload, self.wbits), opcode=opcode,
                                 compressed=True)
        else:
            frame = encode_frame(payload, opcode=opcode)
        self.outbox.push(frame, Kind.CONTROL, None, now_ns)
        self.on_ready()

    def push_control(self, data: bytes, now_ns: int) -> None:
        if self.state is State.OPEN:
            self.outbox.push(data, Kind.CONTROL, None, now_ns)
            self.on_ready()

    def answer_ping(self, pong: bytes, now_ns: int) -> None:
        """Every ping is answered: the conformance suite counts the pongs."""
        self.push_control(pong, now_ns)

    def heartbeat(self, now_ns: int) -> None:
        """Echo connections carry no heartbeats."""

    def close(self, code: int, reason: str) -> None:
        if self.state is State.OPEN:
            self.close_code, self.close_reason = code, reason
            self.state = State.CLOSING
            self.on_ready()

    def closed(self) -> None:
        self.state = State.CLOSED
