"""A listener that refuses clients cleanly when the process is out of file descriptors.

When ``accept`` fails with ``EMFILE`` (or ``ENFILE``), trio's ``serve_listeners`` logs
and retries every 100 ms, and meanwhile the client waits in the kernel's backlog with
no answer. ``ReserveListener`` keeps one descriptor in reserve (``/dev/null``): out of
descriptors, it gives the reserve up, accepts the waiting client, answers it
``HTTP/1.1 503`` (on a TLS port: nothing, plain text would be garbage) and closes it,
then takes the reserve back. The client learns at once
that the server is full, and the server keeps serving the connections it has. When the
reserve cannot be taken back (another part of the process took the descriptor), the
error goes to ``serve_listeners`` as before until it can.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable

import trio

from feed.handshake import http_response

log = logging.getLogger("tickwire.server")

_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)
REFUSAL = http_response(503, b"the server is out of file descriptors; try again later\n",
                        extra_headers=(("Retry-After", "1"),))
REFUSAL_TIMEOUT_S = 0.5


class ReserveListener(trio.abc.Listener[trio.SocketStream]):
    """``listener``, answering 503 when there is no descriptor for a new client;
    ``on_refused`` is called for each client so refused. With ``answer`` false (a TLS
    port, where plain text would be garbage) the client is closed without a word."""

    def __init__(self, listener: trio.SocketListener,
                 on_refused: Callable[[], None] = lambda: None, *, answer: bool = True) -> None:
        self.listener = listener
        self.socket = listener.socket
        self._on_refused = on_refused
        self._answer = answer
        self._reserve = _take_reserve()
        self.refused = 0

    async def accept(self) -> trio.SocketStream:
        while True:
            if self._reserve is None:
                self._reserve = _take_reserve()  # room again since it was given up?
            try:
                return await self.listener.accept()
            except OSError as exc:
                if exc.errno not in _OUT_OF_FDS or self._reserve is None:
                    raise
            await self._refuse_one(self._reserve)

    async def _refuse_one(self, reserve: int) -> None:
        """Free the reserve, accept the client waiting and answer it 503."""
        os.close(reserve)
        self._reserve = None
        stream = await self.listener.accept()  # OSError: the descriptor went elsewhere
        try:
            with trio.move_on_after(REFUSAL_TIMEOUT_S):
                if self._answer:
                    await stream.send_all(REFUSAL)
                # Half-close, then take what the client sent: closing with its request
                # unread would reset the connection, and the reset can destroy the 503.
                await stream.send_eof()
                await stream.receive_some(16384)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
        self._on_refused()
        self.refused += 1
        if self.refused & (self.refused - 1) == 0:  # 1st, 2nd, 4th, 8th...: no log flood
            log.warning("out of file descriptors: %d client(s) refused so far", self.refused)

    async def aclose(self) -> None:
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        await self.listener.aclose()


def _take_reserve() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
