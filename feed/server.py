"""The server: one trio nursery owning the ingester, the snapshotter, the listener and
one connection task per client (whose sender writes that client's frames).

``Server.run`` serves until ``shutdown`` is called (the CLI calls it on SIGINT or
SIGTERM): then every client gets a ``notice`` ``shutdown`` and close 1001, and the
server is gone within ``server.shutdown_timeout_ms``.

With ``server.workers`` > 1 (feed/workers.py) each worker process runs one ``Server``
on listening sockets made for it (``run(listeners)``); ``worker`` is its index. With
``[tls]`` (feed/tls.py) ``run`` wraps whichever listeners it serves in
``trio.SSLListener``: the TLS handshake is done by the first read of the request head,
under ``server.handshake_timeout_ms``, and the URL is ``wss://``.

Routes on the one port: ``/v1/stream`` (WebSocket; a plain GET gets 426), ``/healthz``,
``/metrics``, anything else 404. Before a WebSocket is accepted: an ``Origin`` outside
``access.origins`` gets 403, a full server 503, a source address at its own limit 429;
after it, a client without a valid API key (feed/access.py) gets ``error``
``unauthorized`` and close 1008, one whose key is at its connection limit
``too_many_connections`` and 1008. In echo mode every path is a WebSocket echo endpoint
(for the conformance suite).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import trio
from prometheus_client.core import Metric
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.extensions import Extension
from wsproto.utilities import RemoteProtocolError

from feed import protocol
from feed.access import ANONYMOUS, Grant, KeyRing, load_keys, origin_allowed, presented_key
from feed.config import Config
from feed.echo import EchoSession
from feed.handshake import (
    DeflateExtension,
    HandshakeError,
    HttpRequest,
    http_response,
    read_request,
)
from feed.health import FeedHealth
from feed.hub import Hub
from feed.ingest import Snapshotter
from feed.listener import ReserveListener
from feed.metrics import (
    Metrics,
    counter,
    exposition,
    gauge,
    labelled_counter,
    record_families,
    stage_histogram,
)
from feed.recorder import HubBooks, Recorder
from feed.session import CLOSE_GOING_AWAY, Session, SessionLimits, SessionStats
from feed.tls import server_context
from feed.wsconn import ConnectionLimits, Flusher, Peer, WebSocketConnection
from feed.wsframe import Deflater

log = logging.getLogger("tickwire.server")
Clock = Callable[[], int]
Feed = Callable[["Server"], Awaitable[None]]
STREAM_PATH = "/v1/stream"


@dataclass(frozen=True, slots=True)
class Listening:
    """Where the server listens, once it does."""

    host: str
    port: int
    tls: bool = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.tls else 'ws'}://{host}:{self.port}{STREAM_PATH}"


class Server:
    """One tickwire server process."""

    def __init__(
        self, config: Config, feed: Feed | None = None, *, clock: Clock = time.time_ns,
        echo: bool = False, worker: int = 0,
    ) -> None:
        self.config = config
        self.clock = clock
        self.echo = echo
        self.worker = worker
        self.hub = Hub(clock, Deflater(config.compression.level))
        self.snapshotter = Snapshotter(self.hub, clock)
        self.flusher = Flusher(config.server.flush_pause_max_ms / 1000,
                               config.server.flush_pause_factor)
        self.metrics = Metrics()
        self.hub.fanout.on_drain = self.metrics.fanout_time.observe
        self.recorder = (Recorder(config.record, HubBooks(self.hub), clock=clock)
                         if config.record.dir and not echo else None)
        self.session_stats = SessionStats()
        self.sessions: set[Peer] = set()
        access = config.access
        self.keys = load_keys(Path(access.keys_file)) if access.keys_file else KeyRing()
        """The API keys (``AccessError`` from the constructor when the file is bad)."""
        self.tls = server_context(config.tls)
        """For ``wss://`` (``ConfigError`` from the constructor when a file is bad)."""
        self._per_address: dict[str, int] = {}
        self._websockets = 0  # WebSocket connections, from the upgrade to the end
        self._per_key: dict[str, int] = {}
        self.feed_health = FeedHealth(config.feed.stale_after_ms / 1000)
        """The feed's state and silence, kept by the ingester, read by ``/healthz``."""
        self._feed = feed
        self._started_ns = clock()
        self._shutdown = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self.render_metrics = exposition(self._metric_families)
        client = config.client
        self.session_limits = SessionLimits(
            max_queued_bytes=client.max_queued_bytes,
            max_queue_age_ns=client.max_queue_age_ms * 1_000_000,
            max_behind_ns=client.max_behind_ms * 1_000_000,
            max_subscriptions=client.max_subscriptions,
            request_rate=client.request_rate,
            request_burst=client.request_burst)
        server = config.server
        self.connection_limits = ConnectionLimits(
            max_message_bytes=server.max_message_bytes,
            # The conformance suite sends 4 MiB in 64-byte fragments to the echo server.
            max_fragments=(max(server.max_fragments, server.max_message_bytes) if echo
                           else server.max_fragments),
            heartbeat_s=server.heartbeat_ms / 1000,
            ping_interval_s=server.ping_interval_ms / 1000,
            pong_timeout_s=server.pong_timeout_ms / 1000,
            close_timeout_s=server.close_timeout_ms / 1000,
            write_batch_bytes=client.write_batch_bytes)

    # -- lifetime ---------------------------------------------------------------------

    async def run(self, listeners: list[trio.SocketListener] | None = None, *,
                  task_status: trio.TaskStatus[Listening] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """Listen (on ``server.host`` and ``server.port``, or on ``listeners`` made by the
        caller), feed and serve until ``shutdown``; report where it listens."""
        if listeners is None:
            server = self.config.server
            listeners = await trio.open_tcp_listeners(server.port, host=server.host)
        sockname = listeners[0].socket.getsockname()
        reserved = [ReserveListener(listener, self._refused_no_fd, answer=self.tls is None)
                    for listener in listeners]
        serving: list[trio.abc.Listener[trio.abc.Stream]] = [*reserved]
        if self.tls is not None:  # the TLS handshake is done under the handshake deadline
            serving = [trio.SSLListener(listener, self.tls) for listener in reserved]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.snapshotter.run)
            nursery.start_soon(self.flusher.run)
            if self.recorder is not None:
                await nursery.start(self.recorder.run)
            if self._feed is not None:
                nursery.start_soon(self._feed, self)
            async with trio.open_nursery() as connections:
                accept_scope = trio.CancelScope()
                connections.start_soon(self._accept, serving, connections, accept_scope)
                task_status.started(Listening(sockname[0], sockname[1],
                                              tls=self.tls is not None))
                await self._shutdown.wait()
                accept_scope.cancel()
                await self._close_all()
                connections.cancel_scope.cancel()
            nursery.cancel_scope.cancel()

    async def _accept(self, listeners: list[trio.abc.Listener[trio.abc.Stream]],
                      nursery: trio.Nursery, scope: trio.CancelScope) -> None:
        with scope:
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    def _refused_no_fd(self) -> None:
        self.metrics.fd_refusals += 1

    def shutdown(self) -> None:
        """Begin a graceful shutdown (idempotent)."""
        self._shutdown.set()

    async def _close_all(self) -> None:
        now = self.clock()
        for session in tuple(self.sessions):
            if isinstance(session, Session):
                session.send(protocol.notice_message(
                    "shutdown", "the server is stopping; reconnect elsewhere or later"), now)
            session.close(CLOSE_GOING_AWAY, "server shutting down")
        # Leave a margin for cancelling what is left, so the whole stop fits the limit.
        limit = self.config.server.shutdown_timeout_ms / 1000
        with trio.move_on_after(max(0.0, limit - 0.25)):
            await self._idle.wait()

    async def wait_no_connections(self) -> None:
        """Wait until no WebSocket connection is open."""
        await self._idle.wait()

    def broadcast_notice(self, code: str, message: str) -> None:
        """Send a ``notice`` to every stream client (e.g. ``replay_end``)."""
        now = self.clock()
        for session in tuple(self.sessions):
            if isinstance(session, Session):
                session.send(protocol.notice_message(code, message), now)

    # -- one connection ---------------------------------------------------------------

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.metrics.connections_total += 1
        try:
            await self._serve_stream(stream)
        except Exception:  # a bug in one connection must not stop the server
            log.exception("internal error on a connection; it is dropped")
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(0.5):
                await stream.aclose()

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        server = self.config.server
        try:
            request = None
            with trio.move_on_after(server.handshake_timeout_ms / 1000):
                request = await read_request(stream, server.max_handshake_bytes)
            if request is not None:
                await self._route(stream, request)
        except HandshakeError as exc:
            await self._reply(stream, 400, f"{exc}\n".encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _route(self, stream: trio.abc.Stream, request: HttpRequest) -> None:
        path = request.path
        if request.wants_websocket and (self.echo or path == STREAM_PATH):
            await self._websocket(stream, request)
        elif request.method not in ("GET", "HEAD"):
            await self._reply(stream, 405, b"only GET is served\n")
        elif path == "/healthz":
            health = self.health()
            await self._reply(stream, 200 if health["status"] == "ok" else 503,
                              orjson.dumps(health), "application/json")
        elif path == "/metrics":
            await self._reply(stream, 200, self.render_metrics(),
                              "text/plain; version=0.0.4; charset=utf-8")
        elif path == STREAM_PATH or self.echo:
            await self._reply(stream, 426, b"this endpoint speaks WebSocket only\n",
                              extra=(("Upgrade", "websocket"),))
        else:
            await self._reply(stream, 404, f"no such path: {path}\n".encode())

    async def _reply(self, stream: trio.abc.Stream, status: int, body: bytes,
                     content_type: str = "text/plain; charset=utf-8",
                     extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.metrics.http_requests[status] = self.metrics.http_requests.get(status, 0) + 1
        await stream.send_all(http_response(status, body, content_type, extra))

    async def _websocket(self, stream: trio.abc.Stream, request: HttpRequest) -> None:
        access = self.config.access
        if not self.echo and not origin_allowed(request.headers.get("origin"), access.origins):
            await self._reply(stream, 403, b"this Origin may not connect\n")
            return
        if self._websockets >= self.config.server.max_connections:  # upgrading ones too
            await self._reply(stream, 503, b"too many connections\n")
            return
        address = _peer_address(stream)
        held = self._per_address.get(address, 0)
        if access.max_connections_per_address and held >= access.max_connections_per_address:
            await self._reply(stream, 429, b"too many connections from this address\n")
            return
        self._per_address[address] = held + 1
        self._websockets += 1
        try:
            await self._upgrade(stream, request)
        finally:
            self._websockets -= 1
            _release(self._per_address, address)

    def _admit(self, request: HttpRequest) -> tuple[Grant | None, str, str]:
        """The grant of a stream handshake, or ``None`` with the ``error`` code and
        sentence that turn it away."""
        key = presented_key(request.headers, request.target)
        if key is None:
            if self.config.access.anonymous:
                return ANONYMOUS, "", ""
            return None, "unauthorized", "this server needs an API key: send it as " \
                "\"Authorization: Bearer KEY\" or the query parameter token=KEY"
        grant = self.keys.grant_for(key)
        if grant is None:
            return None, "unauthorized", "unknown API key"
        if grant.max_connections and self._per_key.get(grant.name, 0) >= grant.max_connections:
            return None, "too_many_connections", \
                f"this key may have at most {grant.max_connections} connections at once"
        return grant, "", ""

    async def _upgrade(self, stream: trio.abc.Stream, request: HttpRequest) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.receive_data(request.raw)
            upgrade = next((e for e in ws.events() if isinstance(e, Request)), None)
        except RemoteProtocolError as exc:
            hint = exc.event_hint
            status = hint.status_code if isinstance(hint, RejectConnection) else 400
            await self._reply(stream, status, f"bad WebSocket handshake: {exc}\n".encode(),
                              extra=(("Sec-WebSocket-Version", "13"),) if status == 426 else ())
            return
        if upgrade is None:  # pragma: no cover - read_request returned a whole head
            await self._reply(stream, 400, b"incomplete WebSocket handshake\n")
            return
        deflate = DeflateExtension(self.config.server.max_message_bytes)
        extensions: list[Extension] = [deflate] if self.config.compression.enabled else []
        try:
            accept = ws.send(AcceptConnection(extensions=extensions))
        except ValueError as exc:  # a malformed permessage-deflate offer
            await self._reply(stream, 400, f"bad Sec-WebSocket-Extensions: {exc}\n".encode())
            return
        await stream.send_all(accept)
        assert ws.connection is not None
        wbits = deflate.server_max_window_bits if deflate.enabled() else 0
        session: Peer
        grant: Grant | None = None
        if self.echo:
            session = EchoSession(wbits, self.hub.deflater)
        else:
            now = self.clock()
            grant, code, why = self._admit(request)
            session = Session(self.hub, self.session_limits, wbits=wbits, now_ns=now,
                              stats=self.session_stats, grant=grant or ANONYMOUS)
            if grant is None:
                self.metrics.refused[code] = self.metrics.refused.get(code, 0) + 1
                session.refuse(code, why, now)
            else:
                self._per_key[grant.name] = self._per_key.get(grant.name, 0) + 1
        self.sessions.add(session)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        try:
            await WebSocketConnection(stream, ws.connection, session, self.clock,
                                      self.connection_limits, self.metrics,
                                      self.flusher).run()
        finally:
            self.sessions.discard(session)
            if grant is not None:
                _release(self._per_key, grant.name)
            if not self.sessions:
                self._idle.set()

    # -- health and metrics -----------------------------------------------------------

    @property
    def feed_state(self) -> str:
        """``starting``, ``running``, ``failed`` or ``ended`` (feed/health.py)."""
        return self.feed_health.state.value

    def health(self) -> dict[str, object]:
        """The ``/healthz`` body: ``status`` ``ok`` (HTTP 200), or ``stale`` or ``failed``
        (503) when the feed has been silent for ``feed.stale_after_ms`` or has failed."""
        return {**self.feed_health.report(trio.current_time()), "symbols": len(self.hub.symbols),
                "connections": len(self.sessions),
                "uptime_s": round((self.clock() - self._started_ns) / 1e9, 3),
                "worker": self.worker, "workers": self.config.server.workers}

    def _metric_families(self) -> Iterator[Metric]:
        m = self.metrics
        stats = self.session_stats
        yield gauge("tickwire_open_connections", "Open WebSocket connections", len(self.sessions))
        yield gauge("tickwire_tasks", "trio tasks alive in this process (a leak grows it)",
                    _tasks_alive())
        yield gauge("tickwire_worker", "Index of this server process among the workers "
                    "sharing the port (these metrics are its own)", self.worker)
        yield gauge("tickwire_workers", "Server processes sharing the port",
                    self.config.server.workers)
        yield counter("tickwire_connections", "WebSocket and HTTP connections accepted",
                      m.connections_total)
        yield labelled_counter("tickwire_refused_connections", "WebSocket handshakes turned "
                               "away after the upgrade, by error code", "code",
                               self.metrics.refused)
        yield counter("tickwire_fd_refusals", "Clients answered 503 because the process had "
                      "no file descriptor left for them", self.metrics.fd_refusals)
        yield labelled_counter("tickwire_http_responses", "Plain HTTP responses by status",
                               "status", m.http_requests)
        yield counter("tickwire_messages_sent", "Frames written to clients", m.frames_sent)
        yield counter("tickwire_bytes_sent", "Bytes written to clients", m.bytes_sent)
        yield counter("tickwire_dropped_messages",
                      "Queued frames dropped by the lag policy", stats.dropped_frames)
        yield counter("tickwire_lag_events", "Times a client's outbox went over budget",
                      stats.lag_resyncs)
        yield counter("tickwire_dead_peers", "Connections closed with 1011 because the "
                      "peer answered no ping within server.pong_timeout_ms", m.dead_peers)
        yield labelled_counter("tickwire_closes", "Close frames sent, by close code (0: a "
                               "peer's own code 3000-4999 echoed back)", "code", m.closes)
        yield labelled_counter("tickwire_events", "Feed events applied, by kind", "kind",
                               self.hub.stats.events)
        yield counter("tickwire_ignored_deltas",
                      "Book deltas ignored because the book had no snapshot (start, gap)",
                      self.hub.stats.ignored_deltas)
        yield counter("tickwire_requests", "Client requests received", stats.requests)
        yield counter("tickwire_bad_requests", "Client requests answered with an error",
                      stats.bad_requests)
        yield counter("tickwire_feed_bad_lines", "Malformed tick-file lines skipped",
                      m.bad_lines)
        yield counter("tickwire_feed_failures", "Times the feed source failed (raised)",
                      self.feed_health.failures)
        yield gauge("tickwire_feed_silent_seconds", "Seconds since the feed last released "
                    "an event (or started); /healthz is 503 past feed.stale_after_ms",
                    self.feed_health.silence(trio.current_time()) or 0.0)
        yield counter("tickwire_deflate_messages", "Messages compressed (once per group)",
                      self.hub.deflater.messages)
        yield gauge("tickwire_feed_behind_seconds",
                    "How late the ingester released its last event against the feed's "
                    "schedule (0 when on time; grows when the server cannot keep up)",
                    m.feed_behind_s)
        yield stage_histogram({"apply": m.apply_time, "fanout": m.fanout_time,
                               "due_to_write": m.due_to_write,
                               "write": m.write_time})
        if self.recorder is not None:
            yield from record_families(self.recorder.statistics())


async def stop_on_signals(server: Server, *signums: signal.Signals) -> None:
    """Begin the server's graceful shutdown on the first of ``signums`` it receives."""
    with trio.open_signal_receiver(*signums) as signals:
        async for signum in signals:
            log.info("%s: shutting down", signal.Signals(signum).name)
            server.shutdown()
            return


def _tasks_alive() -> int:
    """Every task of this trio run: the root's and all their nurseries' children."""
    count = 0
    root = trio.lowlevel.current_root_task()
    stack = [root] if root is not None else []
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


def _peer_address(stream: trio.abc.Stream) -> str:
    """The client's address (without port), for per-address limits."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return "?"
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return "?"
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def _release(counts: dict[str, int], name: str) -> None:
    """One fewer for ``name``; the entry goes at zero, so the dict stays bounded by
    what is connected."""
    left = counts.get(name, 0) - 1
    if left > 0:
        counts[name] = left
    else:
        counts.pop(name, None)
