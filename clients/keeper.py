"""``BookKeeper``: a stream that keeps itself whole.

It owns a ``ClientSession`` (books, seq trackers, counters) and keeps a connection to
the server for it: connects, (re)subscribes everything the session holds, feeds every
message through the session, sends the ``resync`` requests the session asks for, and
when the connection ends reconnects after a capped, jittered exponential backoff
(``clients.backoff``). Everything timing- or chance-dependent is injectable: the backoff
schedule, the ``random.Random`` and the stream opener; delays use trio's clock, so tests
run on ``MockClock`` without real sleeps.

::

    keeper = BookKeeper("ws://127.0.0.1:8765/v1/stream")
    await keeper.subscribe("book", ["BTC-USDT"], depth=20)
    send, receive = trio.open_memory_channel[Message](100)
    async with trio.open_nursery() as nursery:
        await nursery.start(keeper.run, send)
        async for msg in receive: ...          # every message, after it was applied
        # keeper.books["BTC-USDT"].top(5), keeper.statistics().resyncs, ...

``run`` ends only by cancellation, by the consumer closing the message channel, or by
raising: ``ConnectionClosed`` for a close code in ``fatal_codes`` (policy, forbidden,
request too large: reconnecting would not help), ``HandshakeRejected`` for a 4xx answer
other than 408/429, ``trio.BrokenResourceError`` caused by ``ssl.SSLCertVerificationError``
(a ``wss://`` server whose certificate is not trusted: no retry makes it so), or the last
error after ``max_failures`` consecutive failed attempts.
"""

from __future__ import annotations

import math
import random
import ssl
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import trio

from clients.backoff import Backoff
from clients.book import ClientBook
from clients.client import Connection, StreamOpener, connect
from clients.errors import ConnectionClosed, HandshakeRejected, PeerError
from clients.messages import Message
from clients.session import ClientSession, SessionStatistics

FATAL_CLOSE_CODES = frozenset({1008, 1009, 4003})
"""Close codes after which the keeper gives up instead of reconnecting."""
RETRYABLE_STATUSES = frozenset({408, 429})
"""4xx handshake answers that are still worth retrying (5xx always are)."""
CONNECT_TIMEOUT = 10.0


class BookKeeper:
    """Keeps a ``ClientSession`` connected, resynced and resubscribed."""

    def __init__(
        self,
        url: str,
        *,
        compress: bool = True,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        open_stream: StreamOpener | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        max_failures: int | None = None,
        fatal_codes: frozenset[int] = FATAL_CLOSE_CODES,
        session: ClientSession | None = None,
    ) -> None:
        self.url = url
        self.compress = compress
        self.backoff = backoff or Backoff()
        self.rng = rng or random.Random()
        self.open_stream = open_stream
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.max_failures = max_failures
        self.fatal_codes = fatal_codes
        self.session = session or ClientSession()
        self.delays: list[float] = []
        """Every backoff delay slept so far, in order (for tests and display)."""
        self._conn: Connection | None = None
        self._state_changed = trio.Event()

    # -- state -------------------------------------------------------------------------

    @property
    def books(self) -> Mapping[str, ClientBook]:
        """The book of every ``book`` subscription, by symbol."""
        return {symbol: sub.book for symbol, sub in self.session.books.items()}

    @property
    def connected(self) -> bool:
        """True while a connection is up."""
        return self._conn is not None

    def statistics(self) -> SessionStatistics:
        """The session's counters (messages, resyncs, reconnects, chain breaks, ...)."""
        return self.session.statistics()

    async def wait_state_changed(self) -> None:
        """Wait until the keeper processes a message or connects or disconnects."""
        await self._state_changed.wait()

    # -- requests ----------------------------------------------------------------------

    async def subscribe(self, channel: str, symbols: Sequence[str], **options: Any) -> None:
        """Subscribe now if connected, and after every reconnect. ``ValueError`` for an
        unknown channel or no symbols."""
        request = self.session.subscribe(channel, symbols, **options)
        await self._send_if_connected(request)

    async def unsubscribe(self, channel: str, symbols: Sequence[str]) -> None:
        """Unsubscribe now if connected, and stop resubscribing ``symbols``."""
        request = self.session.unsubscribe(channel, symbols)
        await self._send_if_connected(request)

    async def _send_if_connected(self, request: Message) -> None:
        if self._conn is not None:
            try:
                await self._conn.send_request(request)
            except ConnectionClosed:
                pass  # the reconnect resubscribes from the session

    # -- the loop ----------------------------------------------------------------------

    async def run(
        self,
        sink: trio.MemorySendChannel[Message] | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect and keep connected; forward every message to ``sink`` after applying it.

        ``task_status.started()`` is called once the first connection is up and its
        subscriptions are sent. ``sink`` (closed when this returns) gets backpressure: a
        consumer that stops reading stops the keeper. Raises as the module docstring says.
        """
        async with AsyncExitStack() as stack:
            if sink is not None:
                await stack.enter_async_context(sink)
            attempt = 0
            failures = 0
            started = False
            while True:
                up_since: float | None = None
                try:
                    # The deadline covers opening and the handshake only.
                    with trio.CancelScope(
                        deadline=trio.current_time() + self.connect_timeout
                    ) as handshake_scope:
                        async with connect(
                            self.url,
                            compress=self.compress,
                            open_stream=self.open_stream,
                            ssl_context=self.ssl_context,
                        ) as conn:
                            handshake_scope.deadline = math.inf
                            up_since = trio.current_time()
                            failures = 0
                            self._set_connection(conn)
                            for request in self.session.connected():
                                await conn.send_request(request)
                            if not started:
                                started = True
                                task_status.started()
                            if not await self._pump(conn, sink):
                                return
                    if handshake_scope.cancelled_caught:
                        raise trio.TooSlowError("connect timed out")
                except ConnectionClosed as exc:
                    if exc.code in self.fatal_codes:
                        raise
                    failures = self._failed(failures, exc, connected=up_since is not None)
                except HandshakeRejected as exc:
                    if 400 <= exc.status < 500 and exc.status not in RETRYABLE_STATUSES:
                        raise
                    failures = self._failed(failures, exc, connected=False)
                except (OSError, PeerError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                    if isinstance(exc.__cause__, ssl.SSLCertVerificationError):
                        raise
                    failures = self._failed(failures, exc, connected=up_since is not None)
                finally:
                    self._set_connection(None)
                if up_since is not None and (
                    trio.current_time() - up_since >= self.backoff.reset_after
                ):
                    attempt = 0
                delay = self.backoff.delay(attempt, self.rng)
                attempt += 1
                self.delays.append(delay)
                await trio.sleep(delay)

    async def _pump(
        self, conn: Connection, sink: trio.MemorySendChannel[Message] | None
    ) -> bool:
        """Process messages until the connection ends; False if the consumer went away."""
        async for msg in conn:
            for request in self.session.receive(msg):
                await conn.send_request(request)
            self._notify()
            if sink is not None:
                try:
                    await sink.send(msg)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return False
        return True

    def _failed(self, failures: int, exc: Exception, *, connected: bool) -> int:
        """Count a lost connection or failed attempt; re-raise ``exc`` once
        ``max_failures`` attempts in a row failed. Returns the new failure count."""
        if connected:
            return 0
        self.session.connect_failed()
        failures += 1
        if self.max_failures is not None and failures >= self.max_failures:
            raise exc
        return failures

    def _set_connection(self, conn: Connection | None) -> None:
        self._conn = conn
        self._notify()

    def _notify(self) -> None:
        self._state_changed.set()
        self._state_changed = trio.Event()
