"""A peer of ``tickwire serve --synthetic RATE --symbols N`` built on the ``websockets``
library (asyncio), the way a user might otherwise build it, for side-by-side benchmarks.

::

    python -m benchmarks.websockets_peer --port 0 --synthetic 5000 --symbols 10

What it does, like tickwire: runs the same synthetic market (``feed.synthetic``, same
seed) at RATE events/s, released on schedule on the event loop with ``ts_recv`` = the
scheduled release time (``benchmarks.harness.Schedule``); keeps the books with tickwire's
own ``feed.book.Book`` and ``feed.views.DepthView`` (the point is to compare transport
and fan-out, not book code); answers ``list`` and ``subscribe`` (``book`` at any depth,
``trades``, ``bbo``) on ``/v1/stream`` with tickwire's message builders
(``feed.protocol``), so the JSON is byte for byte the same shape; sends binary frames;
encodes each message once per (channel, symbol, depth) and hands it to the library's
``broadcast()``, as the websockets docs recommend for fan-out. permessage-deflate is the
library's default (on; ``--no-compression`` turns it off). ``GET /metrics`` is answered
through the ``process_request`` hook (``benchmarks.harness.metrics_renderer``).

What it deliberately does not do: ``unsubscribe``, ``resync``, ``ping`` (answered with
an ``error``), conflation (``interval_ms`` > 0), ``checksum: false``, heartbeats, request
rate limits, ``/healthz``, tickwire's lag policy. ``broadcast()`` has no backpressure:
each connection's write buffer grows while its client lags. The library's own remedy is
its keepalive timeout, which lets a stalled client buffer ~20 s of the feed; here a task
checks every ``SWEEP_S`` and aborts any connection with more than
``MAX_BUFFERED_BYTES`` unsent (no close frame: it would queue behind the backlog),
counted in ``tickwire_lag_events_total``. With compression on, the library compresses
each message once per connection (``broadcast()`` frames per connection); that cost is
part of what is measured.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosedError
from websockets.http11 import Request, Response

from benchmarks.harness import (
    MAX_BUFFERED_BYTES,
    METRICS_CONTENT_TYPE,
    STREAM_PATH,
    PeerOptions,
    PeerStats,
    Schedule,
    announce,
    arguments,
    metrics_renderer,
    peer_options,
)
from feed import protocol
from feed.book import Book
from feed.events import Trade
from feed.synthetic import SyntheticMarket
from feed.views import DepthView

SWEEP_S = 0.1
"""How often connections are checked for a write buffer over ``MAX_BUFFERED_BYTES``."""
MAX_REQUEST_BYTES = 64 * 1024
"""Largest request accepted (tickwire's default); larger closes with 1009."""
CLOSE_TIMEOUT_S = 2.0


class ViewGroup:
    """The connections subscribed to one symbol's ``book`` at one depth, or to its
    ``bbo`` (depth 1), and the view of the book they were last sent."""

    __slots__ = ("channel", "members", "view")

    def __init__(self, channel: str, depth: int, book: Book) -> None:
        self.channel = channel
        self.members: set[ServerConnection] = set()
        self.view = DepthView(depth)
        self.view.reset(book)

    def first_message(self, symbol: str) -> protocol.Message:
        """What a joining connection gets: the snapshot, or the current bbo."""
        view = self.view
        if self.channel == "book":
            return protocol.book_snapshot_message(
                symbol, view.seq, view.depth, view.bids, view.asks, view.checksum,
                view.ts_event, view.ts_recv, time.time_ns(), "subscribe")
        return self.bbo(symbol)

    def update(self, symbol: str, prev_seq: int, bids: list[tuple[str, str]],
               asks: list[tuple[str, str]]) -> protocol.Message:
        """The message for a change of the view (``advance`` returned the levels)."""
        view = self.view
        if self.channel == "book":
            return protocol.book_update_message(
                symbol, view.seq, prev_seq, bids, asks, view.checksum,
                view.ts_event, view.ts_recv, time.time_ns())
        return self.bbo(symbol)

    def bbo(self, symbol: str) -> protocol.Message:
        view = self.view
        return protocol.bbo_message(
            symbol, view.seq, view.bids[0] if view.bids else None,
            view.asks[0] if view.asks else None, view.ts_event, view.ts_recv, time.time_ns())


class SymbolState:
    """One symbol's book, its view groups by (channel, depth), and its trade subscribers."""

    __slots__ = ("book", "trade_seq", "trades", "views")

    def __init__(self, symbol: str) -> None:
        self.book = Book(symbol)
        self.views: dict[tuple[str, int], ViewGroup] = {}
        self.trades: set[ServerConnection] = set()
        self.trade_seq = 0


Subscription = tuple[str, str, int]
"""(channel, symbol, depth) of one subscription of one connection (depth 0 for trades)."""


class Feed:
    """The synthetic market, its books and who is subscribed to what."""

    def __init__(self, options: PeerOptions, stats: PeerStats) -> None:
        self.rate = options.rate
        self.stats = stats
        self.market = SyntheticMarket(options.symbols)
        self.symbols = {symbol: SymbolState(symbol) for symbol in self.market.symbols}
        now = time.time_ns()
        for snapshot in self.market.snapshots(now):
            self.symbols[snapshot.symbol].book.apply_snapshot(snapshot, now)

    async def run(self) -> None:
        """Release events on schedule, forever."""
        loop = asyncio.get_running_loop()
        wall_ns = time.time_ns()  # first: a stamp may then be early by the gap, never late
        schedule = Schedule(self.rate, loop.time(), wall_ns)
        while True:
            pause = schedule.pause(loop.time())
            if pause is None:
                self.release(schedule.take())
            else:
                await asyncio.sleep(pause)

    def release(self, ts_recv: int) -> None:
        """Apply the next event and broadcast what it changes."""
        event = self.market.next_event(ts_recv)
        self.stats.events += 1
        state = self.symbols[event.symbol]
        if isinstance(event, Trade):
            state.trade_seq += 1
            if state.trades:
                self.broadcast(state.trades, protocol.trade_message(
                    event.symbol, state.trade_seq, event.trade_id, event.price, event.size,
                    event.side, event.ts_event, ts_recv, time.time_ns()))
            return
        change = state.book.apply_delta(event, ts_recv)
        for group in state.views.values():
            prev_seq = group.view.seq
            changes = group.view.advance(state.book, change)
            if changes is not None:
                self.broadcast(group.members, group.update(event.symbol, prev_seq, *changes))

    def broadcast(self, members: set[ServerConnection], message: protocol.Message) -> None:
        """Encode once, send to every member (websockets skips those closing)."""
        broadcast(members, protocol.encode(message))
        self.stats.messages_sent += len(members)

    def join(self, connection: ServerConnection, key: Subscription) -> protocol.Message | None:
        """Add ``connection`` to a group; returns the group's first message for it."""
        channel, symbol, depth = key
        state = self.symbols[symbol]
        if channel == "trades":
            state.trades.add(connection)
            return None
        group = state.views.get((channel, depth))
        if group is None:
            group = state.views[(channel, depth)] = ViewGroup(channel, depth, state.book)
        group.members.add(connection)
        return group.first_message(symbol)

    def leave(self, connection: ServerConnection, key: Subscription) -> None:
        """Remove ``connection`` from a group; an empty view group is forgotten."""
        channel, symbol, depth = key
        state = self.symbols[symbol]
        if channel == "trades":
            state.trades.discard(connection)
            return
        group = state.views[(channel, depth)]
        group.members.discard(connection)
        if not group.members:
            del state.views[(channel, depth)]


class Peer:
    """The connection handler and the HTTP routes."""

    def __init__(self, feed: Feed, stats: PeerStats) -> None:
        self.feed = feed
        self.stats = stats
        self.render_metrics = metrics_renderer(stats)

    def route(self, connection: ServerConnection, request: Request) -> Response | None:
        """``process_request`` hook: /metrics and 404 here; the library answers a plain
        GET on the stream path with 426."""
        path = request.path.split("?", 1)[0]
        if path == "/metrics":
            response = connection.respond(HTTPStatus.OK, self.render_metrics().decode())
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = METRICS_CONTENT_TYPE
            return response
        if path != STREAM_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, f"no such path: {path}\n")
        return None

    async def handle(self, connection: ServerConnection) -> None:
        """Serve one connection's requests; leave every group when it closes."""
        subscriptions: set[Subscription] = set()
        self.stats.open_connections += 1
        try:
            async for data in connection:
                await self.request(connection, data, subscriptions)
        except ConnectionClosedError:
            pass
        finally:
            self.stats.open_connections -= 1
            for key in subscriptions:
                self.feed.leave(connection, key)

    async def send(self, connection: ServerConnection, message: protocol.Message) -> None:
        await connection.send(protocol.encode(message))
        self.stats.messages_sent += 1

    async def request(self, connection: ServerConnection, data: str | bytes,
                      subscriptions: set[Subscription]) -> None:
        """Answer one request: ``list``, ``subscribe``, or an ``error``."""
        try:
            request = protocol.parse_request(data)
            if isinstance(request, protocol.ListSymbols):
                await self.send(connection, protocol.symbols_message(
                    request.id, list(self.feed.symbols)))
            elif isinstance(request, protocol.Subscribe):
                keys = self.check(request, subscriptions)
                await self.send(connection, protocol.subscribed_message(request))
                for key in keys:
                    subscriptions.add(key)
                    first = self.feed.join(connection, key)
                    if first is not None:
                        # Joined first: send() writes at once, before the group's next
                        # broadcast can, and only then waits for the buffer to drain.
                        await self.send(connection, first)
            else:
                raise protocol.RequestError(
                    "bad_request", "this peer answers list and subscribe only", request.id)
        except protocol.RequestError as exc:
            await self.send(connection, protocol.error_message(
                exc.code, exc.message, exc.request_id))

    def check(self, request: protocol.Subscribe,
              subscriptions: set[Subscription]) -> list[Subscription]:
        """The subscriptions a request asks for; raises ``RequestError`` when it asks for
        what this peer does not serve or the connection already has."""
        options = request.options
        if options.interval_ms or (request.channel == "book" and not options.checksum):
            raise protocol.RequestError(
                "bad_request", "this peer sends every change, with checksums", request.id)
        unknown = [s for s in request.symbols if s not in self.feed.symbols]
        if unknown:
            raise protocol.RequestError(
                "unknown_symbol", f"unknown symbol {protocol.quote(unknown[0])}", request.id)
        depth = {"book": options.depth, "bbo": 1}.get(request.channel, 0)
        keys: list[Subscription] = [(request.channel, s, depth) for s in request.symbols]
        taken = {(channel, symbol) for channel, symbol, _ in subscriptions}
        if any((channel, symbol) in taken for channel, symbol, _ in keys):
            raise protocol.RequestError(
                "already_subscribed", f"already subscribed to {request.channel} for one of "
                "these symbols", request.id)
        return keys


async def drop_slow_clients(server: Server, stats: PeerStats) -> None:
    """Abort connections whose unsent data is over ``MAX_BUFFERED_BYTES``, forever."""
    while True:
        await asyncio.sleep(SWEEP_S)
        for connection in server.connections:
            if connection.transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:
                connection.transport.abort()
                stats.slow_disconnects += 1


async def serve_peer(options: PeerOptions, compression: bool) -> None:
    """Serve until SIGINT or SIGTERM, then close every connection (1001) and return."""
    stats = PeerStats()
    feed = Feed(options, stats)
    peer = Peer(feed, stats)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serve(peer.handle, options.host, options.port, process_request=peer.route,
                     compression="deflate" if compression else None,
                     max_size=MAX_REQUEST_BYTES, close_timeout=CLOSE_TIMEOUT_S) as server:
        announce(server.sockets[0].getsockname())
        async with asyncio.TaskGroup() as tasks:
            running = [tasks.create_task(feed.run()),
                       tasks.create_task(drop_slow_clients(server, stats))]
            await stop.wait()
            for task in running:
                task.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = arguments("python -m benchmarks.websockets_peer",
                       "tickwire's synthetic feed served with the websockets library")
    parser.add_argument("--no-compression", action="store_true",
                        help="do not negotiate permessage-deflate (default: negotiate)")
    args = parser.parse_args(argv)
    asyncio.run(serve_peer(peer_options(parser, args), not args.no_compression))
    return 0


if __name__ == "__main__":
    sys.exit(main())
