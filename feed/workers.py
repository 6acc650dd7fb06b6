"""``tickwire serve --workers N``: N server processes on one port, fed the same feed.

The parent resolves the config and the source (feed/cli.py; every error comes out
before anything starts), reserves the port and supervises; each worker is a process
(multiprocessing, spawn context) running one ordinary ``Server`` on a listening socket
of its own on the same address and port (``SO_REUSEPORT``: the kernel spreads the
connections across them). Every worker runs its own copy of the same source, started at
one instant the parent gives them all, so that they release the same events with the
same ``seq`` and ``ts_recv`` in lockstep (feed/ingest.py)::

    parent                                      worker i of N
    reserve the port: bind each address,
    no listen (port 0: one port for all)
    start N workers  ------------------------>  bind the address(es) too, listen, serve
    wait for every Listening  <---------------  Listening(i)
    print `listening on ws[s]://HOST:PORT/...`  prepare the feed (read up to --from)
    wait for every FeedReady  <---------------  FeedReady(i)
    StartFeed(now + START_DELAY_NS)  -------->  release the feed from that instant
    SIGINT/SIGTERM: SIGTERM every worker        notice `shutdown`, close 1001, exit 0
    a worker exits unexpectedly: log it, stop the others the same way, exit 1

A worker shuts down the same graceful way when its parent is gone: the parent's end of
its pipe reaches end of file, and on Linux the kernel sends it SIGTERM
(``PR_SET_PDEATHSIG``). A worker ignores SIGINT: Ctrl-C is the parent's to handle.
Only worker 0 records (``--record``); the others serve. With ``[tls]`` each worker loads
the certificate and wraps its own listeners (``Server.run``); the parent has checked the
files before starting any.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection as PipeEnd
from multiprocessing.process import BaseProcess
from typing import Any

import trio

from feed.config import Config, ConfigError
from feed.ingest import ReplaySource, SyntheticSource, run_ingester
from feed.server import Listening, Server, stop_on_signals

log = logging.getLogger("tickwire.workers")

LISTEN_TIMEOUT_S = 60.0
"""Time every worker has to start and listen."""
START_DELAY_NS = 250_000_000
"""The feed starts this long after the parent hears that every worker has it ready,
time enough for the instant to reach them all."""
STOP_MARGIN_S = 3.0
"""Time a worker has to exit beyond ``server.shutdown_timeout_ms`` before SIGKILL."""
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class Address:
    """One address to listen on, as ``socket.getaddrinfo`` gives it, port included."""

    family: int
    type: int
    proto: int
    sockaddr: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What a worker process is started with."""

    index: int
    config: Config
    source: SyntheticSource | ReplaySource
    addresses: tuple[Address, ...]
    parent_pid: int


@dataclass(frozen=True, slots=True)
class WorkerListening:
    index: int


@dataclass(frozen=True, slots=True)
class FeedReady:
    index: int


@dataclass(frozen=True, slots=True)
class StartFeed:
    start_ns: int


# -- sockets ----------------------------------------------------------------------------


def _shared_socket(address: Address) -> socket.socket:
    """A TCP socket that may share its address and port with the other workers'."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("server.workers: this system cannot share a port between "
                          "processes (no SO_REUSEPORT); use 1")
    sock = socket.socket(address.family, address.type, address.proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address.sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def reserve(host: str, port: int) -> list[socket.socket]:
    """Bind, without listening, one socket per address ``host`` resolves to, all on one
    port (``port``, or the one the kernel picks for the first address when it is 0).
    Workers then listen on the same addresses; connections never reach these sockets,
    which hold the port for as long as the parent keeps them. Raises ``OSError``."""
    sockets: list[socket.socket] = []
    try:
        for family, type_, proto, _, sockaddr in socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            if sockets:
                sockaddr = (sockaddr[0], sockets[0].getsockname()[1], *sockaddr[2:])
            try:
                sockets.append(_shared_socket(Address(family, type_, proto, sockaddr)))
            except OSError as exc:
                if exc.errno != errno.EAFNOSUPPORT:
                    raise
        if not sockets:
            raise OSError(errno.EAFNOSUPPORT, f"no address of {host} can be used")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def addresses_of(sockets: Sequence[socket.socket]) -> tuple[Address, ...]:
    """Where the reserved ``sockets`` are bound, for the workers to listen on."""
    return tuple(Address(s.family, s.type, s.proto, s.getsockname()) for s in sockets)


def listen(addresses: Sequence[Address]) -> list[trio.SocketListener]:
    """A listener on each of ``addresses``, sharing it with the other workers."""
    listeners: list[trio.SocketListener] = []
    try:
        for address in addresses:
            sock = _shared_socket(address)
            try:
                sock.listen(socket.SOMAXCONN)
                listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
            except BaseException:
                sock.close()
                raise
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


# -- the parent -------------------------------------------------------------------------


def serve_workers(config: Config, source: SyntheticSource | ReplaySource) -> int:
    """Serve with ``server.workers`` processes until SIGINT or SIGTERM (exit status 0)
    or until one of them exits unexpectedly (1). Raises ``OSError`` when the port
    cannot be had."""
    sockets = reserve(config.server.host, config.server.port)
    try:
        supervisor = Supervisor(config, source, addresses_of(sockets))
        return trio.run(supervisor.run)
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    pipe: PipeEnd
    stopping: bool = False


class Supervisor:
    """The parent's side: starts the workers, starts their feed, stops them."""

    def __init__(self, config: Config, source: SyntheticSource | ReplaySource,
                 addresses: tuple[Address, ...]) -> None:
        self.config = config
        self.source = source
        self.addresses = addresses
        self.listening = Listening(addresses[0].sockaddr[0], addresses[0].sockaddr[1],
                                   tls=config.tls.enabled)
        self.workers: list[_Worker] = []
        self.failed = False
        self._stop = trio.Event()

    async def run(self) -> int:
        """Supervise until stopped; the exit status."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            try:
                # Started from this (the main) thread: the workers' parent-death signal
                # is tied to the thread that started them.
                for index in range(self.config.server.workers):
                    self.workers.append(self._start(index))
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._on_signal, signals)
                    for worker in self.workers:
                        nursery.start_soon(self._watch, worker)
                    nursery.start_soon(self._start_feed)
                    await self._stop.wait()
                    nursery.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop_all()
        return 1 if self.failed else 0

    def _start(self, index: int) -> _Worker:
        config = self.config
        if index:  # one copy of the feed on disk
            config = replace(config, record=replace(config.record, dir=""))
        plan = WorkerPlan(index, config, self.source, self.addresses, os.getpid())
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        process = context.Process(target=worker_main, args=(plan, child_end),
                                  name=f"tickwire-worker-{index}", daemon=True)
        process.start()
        child_end.close()
        return _Worker(index, process, parent_end)

    def fail(self, reason: str) -> None:
        """Log why, and stop every worker; the parent will exit 1."""
        if not self._stop.is_set():
            log.error("%s; stopping the other workers", reason)
            self.failed = True
            self._stop.set()

    async def _on_signal(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            log.info("%s: stopping %d workers", signal.Signals(signum).name,
                     len(self.workers))
            self._stop.set()
            return

    async def _watch(self, worker: _Worker) -> None:
        await _exited(worker.process)
        self.fail(f"worker {worker.index} (pid {worker.process.pid}) "
                  f"{_exit_status(worker.process.exitcode)}")

    async def _start_feed(self) -> None:
        """Print the URL once every worker listens; start the feed once every worker
        has it ready (a replay from the middle of a long file may take a while)."""
        try:
            with trio.fail_after(LISTEN_TIMEOUT_S):
                await self._hear_from_all(WorkerListening)
        except trio.TooSlowError:
            self.fail(f"the workers did not all listen within {LISTEN_TIMEOUT_S:.0f} s")
            return
        print(f"listening on {self.listening.url}", flush=True)
        await self._hear_from_all(FeedReady)
        start = StartFeed(time.time_ns() + START_DELAY_NS)
        for worker in self.workers:
            _send(worker.pipe, start)
        log.info("%d workers serving one feed from %s", len(self.workers),
                 time.strftime("%H:%M:%S", time.localtime(start.start_ns / 1e9)))

    async def _hear_from_all(self, kind: type[Any]) -> None:
        """One message of ``kind`` from every worker; a worker that exits first is
        ``_watch``'s to report, so this then waits for the stop."""
        async with trio.open_nursery() as nursery:
            for worker in self.workers:
                nursery.start_soon(self._hear, worker, kind)

    async def _hear(self, worker: _Worker, kind: type[Any]) -> None:
        try:
            message = await _receive(worker.pipe)
        except (EOFError, OSError):
            await trio.sleep_forever()
        if not isinstance(message, kind):  # pragma: no cover - a bug in the exchange
            self.fail(f"worker {worker.index} sent {message!r}, not {kind.__name__}")

    async def _stop_all(self) -> None:
        """SIGTERM every worker still running, wait for them, SIGKILL the late."""
        grace = self.config.server.shutdown_timeout_ms / 1000 + STOP_MARGIN_S
        running = [w for w in self.workers if w.process.exitcode is None]
        for worker in running:
            worker.process.terminate()
        with trio.move_on_after(grace):
            async with trio.open_nursery() as nursery:
                for worker in running:
                    nursery.start_soon(_exited, worker.process)
        for worker in running:
            if worker.process.exitcode is None:
                log.warning("worker %d (pid %s) did not stop within %.0f s; killed",
                            worker.index, worker.process.pid, grace)
                worker.process.kill()
                worker.process.join(5)
            elif worker.process.exitcode:
                log.warning("worker %d (pid %s) %s", worker.index, worker.process.pid,
                            _exit_status(worker.process.exitcode))
        for worker in self.workers:
            worker.pipe.close()


async def _exited(process: BaseProcess) -> None:
    """Wait for ``process`` to end, and reap it."""
    await trio.lowlevel.wait_readable(process.sentinel)
    process.join(5)  # at once: its sentinel only closes as it exits


def _exit_status(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


async def _receive(pipe: PipeEnd) -> object:
    """The next (small) message on a pipe, waiting without blocking trio; raises
    ``EOFError`` once the other end is closed."""
    await trio.lowlevel.wait_readable(pipe.fileno())
    return pipe.recv()


def _send(pipe: PipeEnd, message: object) -> bool:
    """Send a small message; False if the other end is gone."""
    try:
        pipe.send(message)
    except OSError:
        return False
    return True


# -- a worker ---------------------------------------------------------------------------


def worker_main(plan: WorkerPlan, pipe: PipeEnd) -> None:
    """Process entry point of worker ``plan.index``: serve until SIGTERM or until the
    parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(plan.parent_pid)
    count = plan.config.server.workers
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s %(name)s: [worker {plan.index} of {count}] "
               "%(message)s")
    try:
        trio.run(_serve, plan, pipe)
    finally:
        pipe.close()


def _die_with_parent(parent_pid: int) -> None:
    """Have Linux send this process SIGTERM when its parent dies; exit at once if the
    parent is already gone."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
    if os.getppid() != parent_pid:
        sys.exit(1)


async def _serve(plan: WorkerPlan, pipe: PipeEnd) -> None:
    source = plan.source
    listening = trio.Event()
    started = trio.Event()
    start_ns = 0

    async def feed(server: Server) -> None:
        for symbol in source.symbols():  # subscribable while the feed gets ready
            server.hub.add_symbol(symbol)
        try:
            await source.prepare()
        except Exception:  # the ingester prepares it again and reports a failure (503
            # failed, retried with a backoff) as one process does: this worker stays up
            log.exception("feed: the source could not be made ready; the ingester retries")
        await listening.wait()  # the parent hears Listening first
        _send(pipe, FeedReady(plan.index))
        await started.wait()
        await run_ingester(server, source, start_ns)

    async def follow_parent(server: Server) -> None:
        nonlocal start_ns
        try:
            while True:
                message = await _receive(pipe)
                if isinstance(message, StartFeed):
                    start_ns = message.start_ns
                    started.set()
        except (EOFError, OSError):
            log.warning("the parent process is gone; shutting down")
            server.shutdown()

    server = Server(plan.config, feed, worker=plan.index)
    listeners = listen(plan.addresses)
    async with trio.open_nursery() as nursery:

        async def run_server(task_status: trio.TaskStatus[Listening]) -> None:
            await server.run(listeners, task_status=task_status)
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_on_signals, server, signal.SIGTERM)
        nursery.start_soon(follow_parent, server)
        await nursery.start(run_server)
        _send(pipe, WorkerListening(plan.index))
        listening.set()
