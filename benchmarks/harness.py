"""What every peer server shares: its command line, its feed schedule and its /metrics.

A peer runs as ``python -m benchmarks.PEER --port 0 --synthetic RATE --symbols N``, prints
``listening on ws://HOST:PORT/v1/stream`` as tickwire does, and answers ``GET /metrics``
with the two series the load tool reads (``process_cpu_seconds_total``,
``tickwire_messages_sent_total``) and a few more under tickwire's names, so that
``clients.loadgen`` and ``tickwire bench --compare`` measure it unchanged.

The feed is released on schedule the way tickwire's ingester releases a synthetic
market: event ``i`` is due ``i / RATE`` seconds after the start and is stamped
``ts_recv`` = the start's wall clock plus that offset, whatever the server is doing, so a
peer that falls behind shows it as latency (no coordinated omission).
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import Metric

from feed.metrics import counter, exposition, gauge

STREAM_PATH = "/v1/stream"
"""The WebSocket path, as tickwire's."""
MAX_BUFFERED_BYTES = 4 << 20
"""Unsent bytes a client may have before it is disconnected as too slow (tickwire's
default ``client.max_queued_bytes``)."""
YIELD_EVERY = 256
"""Events released in a row, when behind schedule, before the feed lets the rest of the
server run (tickwire's ``CHECKPOINT_EVERY``)."""
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class PeerOptions:
    host: str
    port: int
    rate: int
    symbols: int


def arguments(prog: str, description: str) -> argparse.ArgumentParser:
    """The command line every peer takes; a peer may add its own flags."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1",
                        help="loopback address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765,
                        help="port to listen on; 0 picks a free one (default 8765)")
    parser.add_argument("--synthetic", type=int, required=True, metavar="RATE",
                        help="events per second of the synthetic market")
    parser.add_argument("--symbols", type=int, default=10, metavar="N",
                        help="synthetic symbols (default 10)")
    return parser


def peer_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> PeerOptions:
    """The common options, checked; a bad one exits with status 2 (``parser.error``)."""
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        parser.error(f"--host {args.host}: a peer listens on a loopback address only "
                     "(127.0.0.1, ::1)")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: from 0 to 65535")
    if args.synthetic < 1:
        parser.error(f"--synthetic {args.synthetic}: at least 1 event per second")
    if not 1 <= args.symbols <= 10_000:
        parser.error(f"--symbols {args.symbols}: from 1 to 10000")
    return PeerOptions(args.host, args.port, args.synthetic, args.symbols)


def announce(sockname: Sequence[object]) -> None:
    """Print the ``listening on`` line the load tool waits for (flushed at once)."""
    host, port = str(sockname[0]), sockname[1]
    host = f"[{host}]" if ":" in host else host
    print(f"listening on ws://{host}:{port}{STREAM_PATH}", flush=True)


class Schedule:
    """When each event of a ``rate`` events/s feed is due, and its ``ts_recv`` stamp.

    ``now`` is the server's monotonic clock in seconds (asyncio's ``loop.time()``,
    ``trio.current_time()``); ``wall_ns`` is ``time.time_ns()`` at the same instant, read
    just before ``now`` so that no ``ts_recv`` stamp is later than the wall clock at its
    release (a client checks ``ts_recv <= ts_send``).
    """

    __slots__ = ("_in_a_row", "_period", "_start", "_start_ns", "next")

    def __init__(self, rate: int, now: float, wall_ns: int) -> None:
        self._period = 1.0 / rate
        self._start = now
        self._start_ns = wall_ns
        self._in_a_row = 0
        self.next = 1
        """Number of the next event to release (the first is 1, one period in)."""

    def pause(self, now: float) -> float | None:
        """Seconds to wait before releasing the next event: its delay when it is not
        due yet, 0 (let the server run) after ``YIELD_EVERY`` events released late in a
        row, ``None`` when it is due now (then ``take`` it). Ask again after a wait:
        a wait may end early."""
        delay = self._start + self.next * self._period - now
        if delay > 0:
            self._in_a_row = 0
            return delay
        self._in_a_row += 1
        if self._in_a_row > YIELD_EVERY:
            self._in_a_row = 0
            return 0.0
        return None

    def take(self) -> int:
        """Release the next event: its ``ts_recv``, the scheduled time in ns."""
        stamp = self._start_ns + int(self.next * self._period * 1e9)
        self.next += 1
        return stamp


@dataclass(slots=True)
class PeerStats:
    """A peer's counters, read when /metrics is scraped."""

    events: int = 0
    messages_sent: int = 0
    slow_disconnects: int = 0
    open_connections: int = 0


def metrics_renderer(stats: PeerStats) -> Callable[[], bytes]:
    """A function rendering ``stats`` and the process's CPU and memory as Prometheus text."""
    def families() -> Iterator[Metric]:
        yield counter("tickwire_events", "Feed events released", stats.events)
        yield counter("tickwire_messages_sent", "Messages sent, each counted once per "
                      "client it was sent to", stats.messages_sent)
        yield counter("tickwire_lag_events", "Clients disconnected for having more than "
                      f"{MAX_BUFFERED_BYTES} bytes unsent", stats.slow_disconnects)
        yield gauge("tickwire_open_connections", "Open WebSocket connections",
                    stats.open_connections)
    return exposition(families)
