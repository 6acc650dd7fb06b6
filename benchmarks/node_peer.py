"""A peer of ``tickwire serve --synthetic RATE --symbols N`` whose WebSocket side is Node's
``ws`` library, the way a user might otherwise build it, for side-by-side benchmarks.

::

    python -m benchmarks.node_peer --port 0 --synthetic 5000 --symbols 10

Two processes. This launcher (asyncio) does what the websockets peer does with the
feed: runs the same synthetic market (``feed.synthetic``, same seed) at RATE events/s on
``benchmarks.harness.Schedule``, keeps the books (``feed.book.Book``, and the views and
message builders of ``benchmarks.websockets_peer.ViewGroup``), answers ``list`` and
``subscribe`` with that peer's rules, and encodes each message once per (channel, symbol,
depth) with ``feed.protocol``: the bytes tickwire would send. The Node process
(``benchmarks/node/peer.mjs``, a child in its own session) owns the listening socket:
WebSocket upgrades on ``/v1/stream`` with ``ws`` (permessage-deflate on with the
library's defaults, ``--no-compression`` off), ``GET /metrics`` on the same port, and the
fan-out of each message to its group with ``ws.send(data, {binary: true})``. A client
with more than ``MAX_BUFFERED_BYTES`` unsent (``bufferedAmount``, checked after each send)
is terminated and counted in ``tickwire_lag_events_total``.

The pipe (peer.mjs's header has the same table). Launcher to Node, on Node's stdin,
binary frames ``u32 length of the rest | u8 kind | body``, big-endian:

=====  ===============================  ==================================================
kind   body                             Node does
=====  ===============================  ==================================================
``M``  u32 group, payload               send the payload to every client of the group
``R``  u32 client, payload              send the payload to one client (a reply)
``J``  u32 client, u32 group, first     send ``first`` (if any) to the client, then add it
                                        to the group
``X``  u32 scrape, f64 cpu, f64 events  answer that /metrics scrape
=====  ===============================  ==================================================

Node to launcher, on Node's stdout, a JSON object a line: ``listening`` (its port),
``request`` (a client's message, as text), ``closed`` (a client is gone; the launcher
drops its subscriptions) and ``metrics`` (a scrape is waiting). Snapshots need no
request of their own: a ``subscribe`` reaches the launcher, which writes the ``subscribed``
reply (``R``) and one ``J`` per symbol between two events, so everything before a ``J``
in the pipe is older than its snapshot and everything after it newer; group numbers are
never reused, so a late ``M`` for a group that Node has forgotten is dropped.

CPU: ``process_cpu_seconds_total`` is both processes'. For each scrape Node asks the
launcher (``metrics``), the launcher answers with ``time.process_time()`` and its event
count (``X``), and Node adds its own ``process.cpuUsage()`` (every thread, so zlib's
too) as it answers.

When Node is slower than the feed: its stdin pipe (the OS buffer, 64 KiB on Linux) fills,
then the launcher's write buffer; past ``PIPE_HIGH_WATER`` the feed stops releasing
events until Node has read the pipe down, so the launcher falls behind its schedule and
that shows as latency (``ts_recv`` is the scheduled time), as with any peer. The
launcher's buffer holds at most ``PIPE_HIGH_WATER`` plus what ``YIELD_EVERY`` events and
the replies to pending requests add. ``ts_send`` is stamped here, when the message is
encoded: the pipe and Node's work show in ``receive time - ts_send``.

Lifetimes: SIGINT or SIGTERM closes Node's stdin; Node closes its connections (1001)
and exits, and the launcher waits for it (``NODE_STOP_GRACE_S``, then kills it). If Node
exits first, the launcher exits with status 1; if the launcher dies, Node sees the end of
its stdin and exits. ``ws`` is installed into ``benchmarks/node/node_modules`` (``npm ci``
from the lock file) when it is missing or not the locked version.

What it deliberately does not do: what the websockets peer does not (``unsubscribe``,
``resync``, ``ping``, conflation, heartbeats, tickwire's lag policy). With
permessage-deflate, ``ws`` compresses each message once per connection, on libuv's
thread pool; under its default ``threshold`` (1024 bytes) it does not compress a message
at all when the client asked for no server context takeover, as the load tool does.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import json
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from benchmarks.harness import (
    MAX_BUFFERED_BYTES,
    PeerOptions,
    Schedule,
    announce,
    arguments,
    peer_options,
)
from benchmarks.websockets_peer import Subscription, ViewGroup
from feed import protocol
from feed.book import Book
from feed.events import Trade
from feed.synthetic import SyntheticMarket

NODE_DIR = Path(__file__).with_name("node")
PEER_SCRIPT = NODE_DIR / "peer.mjs"
PIPE_HIGH_WATER = 256 * 1024
"""Bytes the launcher may hold for Node before the feed waits for Node to read."""
CONTROL_LINE_LIMIT = 1 << 20
"""Longest line Node may send (a 64 KiB request, JSON-escaped, is well under it)."""
NODE_START_TIMEOUT_S = 10.0
NODE_STOP_GRACE_S = 3.0

_GROUP = struct.Struct(">IcI")  # length, kind, group or client
_JOIN = struct.Struct(">IcII")  # length, kind, client, group
_FIGURES = struct.Struct(">IcIdd")  # length, kind, scrape, cpu, events


class PeerError(Exception):
    """The Node side could not be set up or went away (the message says why)."""


# -- installing ws ---------------------------------------------------------------------

def locked_ws_version() -> str:
    """The ``ws`` version package-lock.json pins."""
    lock = json.loads((NODE_DIR / "package-lock.json").read_text(encoding="utf-8"))
    return str(lock["packages"]["node_modules/ws"]["version"])


def installed_ws_version() -> str | None:
    """The ``ws`` version in node_modules, None when there is none."""
    try:
        package = json.loads((NODE_DIR / "node_modules" / "ws" / "package.json")
                             .read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return str(package.get("version"))


def ensure_installed() -> None:
    """Install the locked ``ws`` with ``npm ci`` unless it is there (npm's output goes to
    stderr; one launcher at a time, under a file lock). Raises ``PeerError`` when npm is
    missing or fails."""
    with open(NODE_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed_ws_version() == locked_ws_version():
            return
        npm = shutil.which("npm")
        if npm is None:
            raise PeerError("npm is not on PATH: cannot install ws")
        result = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                                stdin=subprocess.DEVNULL, stdout=sys.stderr, check=False)
        if result.returncode != 0:
            raise PeerError(f"npm ci failed (exit status {result.returncode})")


# -- the launcher's end of the pipe --------------------------------------------------

class Pipe:
    """Frames to Node's stdin (the table in the module docstring)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        writer.transport.set_write_buffer_limits(high=PIPE_HIGH_WATER)

    def group(self, number: int, payload: bytes) -> None:
        self.writer.write(_GROUP.pack(len(payload) + 5, b"M", number) + payload)

    def reply(self, client: int, payload: bytes) -> None:
        self.writer.write(_GROUP.pack(len(payload) + 5, b"R", client) + payload)

    def join(self, client: int, number: int, first: bytes) -> None:
        self.writer.write(_JOIN.pack(len(first) + 9, b"J", client, number) + first)

    def figures(self, scrape: int, cpu_s: float, events: int) -> None:
        self.writer.write(_FIGURES.pack(_FIGURES.size - 4, b"X", scrape, cpu_s, events))

    def over_high_water(self) -> bool:
        return self.writer.transport.get_write_buffer_size() > PIPE_HIGH_WATER

    async def wait_drained(self) -> bool:
        """Wait until Node has read the launcher's buffer down to its low-water mark;
        False when the pipe is broken (Node is gone)."""
        try:
            await self.writer.drain()
        except ConnectionError:
            return False
        return True


# -- the market and its groups ---------------------------------------------------------

class Group:
    """One (channel, symbol, depth) group: its number on the pipe, the Node clients in it,
    and for ``book`` and ``bbo`` the view they were last sent (None for ``trades``)."""

    __slots__ = ("clients", "number", "view")

    def __init__(self, number: int, view: ViewGroup | None) -> None:
        self.number = number
        self.clients: set[int] = set()
        self.view = view


class Feed:
    """The synthetic market, its books and the groups Node's clients are in."""

    def __init__(self, options: PeerOptions, pipe: Pipe) -> None:
        self.rate = options.rate
        self.pipe = pipe
        self.events = 0
        self.market = SyntheticMarket(options.symbols)
        self.books = {symbol: Book(symbol) for symbol in self.market.symbols}
        now = time.time_ns()
        for snapshot in self.market.snapshots(now):
            self.books[snapshot.symbol].apply_snapshot(snapshot, now)
        self.trade_seqs = dict.fromkeys(self.books, 0)
        self.groups: dict[Subscription, Group] = {}
        self.views: dict[str, list[tuple[int, ViewGroup]]] = {s: [] for s in self.books}
        """Each symbol's book and bbo groups, as (group number, view)."""
        self.numbers = itertools.count(1)

    async def run(self) -> None:
        """Release events on schedule, forever; when the pipe is over its high-water
        mark, wait for Node instead of sleeping (checked at least every ``YIELD_EVERY``
        events). Returns when the pipe breaks (Node is gone: ``Control`` sees it too)."""
        loop = asyncio.get_running_loop()
        wall_ns = time.time_ns()  # first: a stamp may then be early by the gap, never late
        schedule = Schedule(self.rate, loop.time(), wall_ns)
        while True:
            pause = schedule.pause(loop.time())
            if pause is None:
                self.release(schedule.take())
            elif self.pipe.over_high_water():
                if not await self.pipe.wait_drained():
                    return
            else:
                await asyncio.sleep(pause)

    def release(self, ts_recv: int) -> None:
        """Apply the next event; write what it changes, once per group, to the pipe."""
        event = self.market.next_event(ts_recv)
        self.events += 1
        symbol = event.symbol
        if isinstance(event, Trade):
            seq = self.trade_seqs[symbol] = self.trade_seqs[symbol] + 1
            group = self.groups.get(("trades", symbol, 0))
            if group is not None:
                self.pipe.group(group.number, protocol.encode(protocol.trade_message(
                    symbol, seq, event.trade_id, event.price, event.size, event.side,
                    event.ts_event, ts_recv, time.time_ns())))
            return
        book = self.books[symbol]
        change = book.apply_delta(event, ts_recv)
        for number, view in self.views[symbol]:
            prev_seq = view.view.seq
            changes = view.view.advance(book, change)
            if changes is not None:
                self.pipe.group(number, protocol.encode(view.update(symbol, prev_seq, *changes)))

    def join(self, client: int, key: Subscription) -> None:
        """Add ``client`` to a group (made on first use) and write its ``J`` frame."""
        channel, symbol, depth = key
        group = self.groups.get(key)
        if group is None:
            view = None if channel == "trades" else ViewGroup(channel, depth, self.books[symbol])
            group = self.groups[key] = Group(next(self.numbers), view)
            if view is not None:
                self.views[symbol].append((group.number, view))
        group.clients.add(client)
        first = b"" if group.view is None else protocol.encode(group.view.first_message(symbol))
        self.pipe.join(client, group.number, first)

    def leave(self, client: int, key: Subscription) -> None:
        """Remove ``client`` from a group; an empty group is forgotten (Node forgets its
        own copy when the client closes)."""
        group = self.groups[key]
        group.clients.discard(client)
        if not group.clients:
            del self.groups[key]
            if group.view is not None:
                self.views[key[1]].remove((group.number, group.view))


# -- what Node tells the launcher -------------------------------------------------------

class Control:
    """Node's requests and notices, answered on the pipe."""

    def __init__(self, feed: Feed, pipe: Pipe) -> None:
        self.feed = feed
        self.pipe = pipe
        self.subscriptions: dict[int, set[Subscription]] = {}

    async def run(self, lines: asyncio.StreamReader) -> None:
        """Answer Node's lines until its stdout ends (Node is gone)."""
        while line := await lines.readline():
            self.dispatch(orjson.loads(line))

    def dispatch(self, notice: dict[str, Any]) -> None:
        op = notice["op"]
        if op == "request":
            self.request(notice["client"], notice["data"])
        elif op == "closed":
            for key in self.subscriptions.pop(notice["client"], ()):
                self.feed.leave(notice["client"], key)
        elif op == "metrics":
            self.pipe.figures(notice["scrape"], time.process_time(), self.feed.events)

    def reply(self, client: int, message: protocol.Message) -> None:
        self.pipe.reply(client, protocol.encode(message))

    def request(self, client: int, data: str) -> None:
        """Answer one request: ``list``, ``subscribe``, or an ``error``."""
        subscriptions = self.subscriptions.setdefault(client, set())
        try:
            request = protocol.parse_request(data)
            if isinstance(request, protocol.ListSymbols):
                self.reply(client, protocol.symbols_message(request.id, list(self.feed.books)))
            elif isinstance(request, protocol.Subscribe):
                keys = self.check(request, subscriptions)
                self.reply(client, protocol.subscribed_message(request))
                for key in keys:
                    subscriptions.add(key)
                    self.feed.join(client, key)
            else:
                raise protocol.RequestError(
                    "bad_request", "this peer answers list and subscribe only", request.id)
        except protocol.RequestError as exc:
            self.reply(client, protocol.error_message(exc.code, exc.message, exc.request_id))

    def check(self, request: protocol.Subscribe,
              subscriptions: set[Subscription]) -> list[Subscription]:
        """The subscriptions a request asks for; raises ``RequestError`` for what the
        websockets peer refuses too (conflation, no checksums, unknown symbols, a
        channel and symbol the client already has)."""
        options = request.options
        if options.interval_ms or (request.channel == "book" and not options.checksum):
            raise protocol.RequestError(
                "bad_request", "this peer sends every change, with checksums", request.id)
        unknown = next((s for s in request.symbols if s not in self.feed.books), None)
        if unknown is not None:
            raise protocol.RequestError(
                "unknown_symbol", f"unknown symbol {protocol.quote(unknown)}", request.id)
        depth = {"book": options.depth, "bbo": 1}.get(request.channel, 0)
        taken = {(channel, symbol) for channel, symbol, _ in subscriptions}
        if any((request.channel, symbol) in taken for symbol in request.symbols):
            raise protocol.RequestError(
                "already_subscribed", f"already subscribed to {request.channel} for one of "
                "these symbols", request.id)
        return [(request.channel, symbol, depth) for symbol in request.symbols]


# -- the two processes -----------------------------------------------------------------

async def wait_listening(lines: asyncio.StreamReader) -> int:
    """The port Node reports it listens on. Raises ``PeerError`` when Node exits first
    or takes more than ``NODE_START_TIMEOUT_S``."""
    try:
        async with asyncio.timeout(NODE_START_TIMEOUT_S):
            while line := await lines.readline():
                notice = orjson.loads(line)
                if notice.get("op") == "listening":
                    return int(notice["port"])
    except TimeoutError:
        raise PeerError(f"Node did not listen within {NODE_START_TIMEOUT_S} s") from None
    raise PeerError("Node exited before listening")


async def stop_node(node: asyncio.subprocess.Process) -> None:
    """Close Node's stdin (it then closes its connections and exits) and wait for it,
    reading what it still says; kill it after ``NODE_STOP_GRACE_S``."""
    assert node.stdin is not None and node.stdout is not None
    node.stdin.transport.abort()  # queued frames are of no use now; Node sees the end
    stdout = node.stdout

    async def drain_and_wait() -> None:
        while await stdout.read(65536):
            pass
        await node.wait()

    try:
        await asyncio.wait_for(drain_and_wait(), NODE_STOP_GRACE_S)
    except TimeoutError:
        node.kill()
        await node.wait()


async def serve_node_peer(options: PeerOptions, compression: bool) -> int:
    """Start Node, serve until SIGINT or SIGTERM (0) or until Node exits (1), and stop
    Node however this ends. Raises ``PeerError`` when Node cannot start."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    node_path = shutil.which("node")
    if node_path is None:
        raise PeerError("node is not on PATH")
    await asyncio.to_thread(ensure_installed)
    command = [node_path, str(PEER_SCRIPT), "--host", options.host, "--port",
               str(options.port), "--max-buffered", str(MAX_BUFFERED_BYTES)]
    if not compression:
        command.append("--no-compression")
    node = await asyncio.create_subprocess_exec(
        *command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=CONTROL_LINE_LIMIT,
        start_new_session=True)  # a terminal's Ctrl-C reaches the launcher only
    try:
        assert node.stdin is not None and node.stdout is not None
        pipe = Pipe(node.stdin)
        feed = Feed(options, pipe)
        announce((options.host, await wait_listening(node.stdout)))
        node_gone = asyncio.Event()

        async def control() -> None:
            assert node.stdout is not None
            await Control(feed, pipe).run(node.stdout)
            node_gone.set()
            stop.set()

        async with asyncio.TaskGroup() as tasks:
            running = [tasks.create_task(feed.run()), tasks.create_task(control())]
            await stop.wait()
            for task in running:
                task.cancel()
        if node_gone.is_set():
            raise PeerError(f"the Node process exited (status {await node.wait()})")
        return 0
    finally:
        await stop_node(node)


def main(argv: list[str] | None = None) -> int:
    parser = arguments("python -m benchmarks.node_peer",
                       "tickwire's synthetic feed served by Node's ws library")
    parser.add_argument("--no-compression", action="store_true",
                        help="do not accept permessage-deflate (default: accept)")
    args = parser.parse_args(argv)
    options = peer_options(parser, args)
    try:
        return asyncio.run(serve_node_peer(options, not args.no_compression))
    except PeerError as exc:
        print(f"node_peer: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
