"""The client library's exceptions, in one small tree.

::

    ClientError                      anything this library raises on purpose
    ├── IntegrityError               the stream broke a PROTOCOL.md promise; a resync fixes it
    │   ├── ChainBreak               book prev_seq/seq does not follow the last book message
    │   ├── ChecksumMismatch         book after applying a message disagrees with `checksum`
    │   └── SeqGap                   trades seq did not grow by exactly 1, or bbo seq went back
    ├── InvalidTransition            the caller drove a subscription state machine wrongly
    ├── PeerError                    the server did something no resync can fix
    │   ├── BadMessage               a frame that is not JSON, or a known message malformed
    │   └── HandshakeRejected        the HTTP upgrade was answered with a non-101 status
    └── ConnectionClosed             the WebSocket is closed; carries the close code and reason

``IntegrityError`` and ``PeerError`` are the peer's fault; ``ConnectionClosed`` says
only that the connection ended (its ``code`` says whose fault). trio's
``BrokenResourceError`` / ``ClosedResourceError`` on the socket become
``ConnectionClosed(1006)`` in one place, ``clients.client``. Misuse of the API by the
caller (bad arguments) raises the built-in ``ValueError`` / ``TypeError``.
"""

from __future__ import annotations

ABNORMAL_CLOSURE = 1006
"""Close code reported when the transport ended without a close frame (RFC 6455 7.1.5)."""


class ClientError(Exception):
    """Base class of everything this library raises on purpose."""


class IntegrityError(ClientError):
    """A message broke an ordering or integrity promise; the subscription needs a resync."""

    def __init__(self, symbol: str, message: str) -> None:
        super().__init__(f"{symbol}: {message}")
        self.symbol = symbol


class ChainBreak(IntegrityError):
    """A ``book_update`` whose ``prev_seq`` is not the ``seq`` of the last book message
    (or whose ``seq`` does not exceed its ``prev_seq``). The update was not applied."""

    def __init__(self, symbol: str, expected: int | None, prev_seq: int, seq: int) -> None:
        super().__init__(
            symbol, f"chain break: expected prev_seq {expected}, got prev_seq {prev_seq} seq {seq}"
        )
        self.expected = expected
        self.prev_seq = prev_seq
        self.seq = seq


class ChecksumMismatch(IntegrityError):
    """The book after applying a message does not match the message's ``checksum``.

    The message *was* applied; the book is known to be wrong until the next snapshot.
    ``text`` is the string the client's checksum was computed over, for debugging.
    """

    def __init__(self, symbol: str, seq: int, expected: int, actual: int, text: str) -> None:
        super().__init__(
            symbol, f"checksum mismatch at seq {seq}: server {expected}, client {actual}"
        )
        self.seq = seq
        self.expected = expected
        self.actual = actual
        self.text = text


class SeqGap(IntegrityError):
    """A ``trade`` whose ``seq`` is not the last one plus 1, or a ``bbo`` (or heartbeat)
    whose ``seq`` shows that messages were missed or came out of order."""

    def __init__(self, symbol: str, channel: str, last: int, seq: int) -> None:
        super().__init__(symbol, f"{channel} seq gap: last {last}, got {seq}")
        self.channel = channel
        self.last = last
        self.seq = seq


class InvalidTransition(ClientError):
    """The caller asked a subscription state machine for a transition it does not allow
    (our fault, not the server's)."""


class PeerError(ClientError):
    """The server sent something that breaks the protocol beyond repair by a resync."""


class BadMessage(PeerError):
    """A frame that is not UTF-8 JSON objects, or a known message with a malformed field."""


class HandshakeRejected(PeerError):
    """The server answered the WebSocket upgrade with ``status`` instead of 101."""

    def __init__(self, status: int, body: bytes = b"") -> None:
        super().__init__(f"WebSocket upgrade rejected with HTTP {status}")
        self.status = status
        self.body = body


class ConnectionClosed(ClientError):
    """The WebSocket connection is closed.

    ``code`` is the close code the server sent (or that we sent, if we closed first);
    ``ABNORMAL_CLOSURE`` (1006) when the transport ended without a close frame.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason
