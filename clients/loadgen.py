"""Fan-out load measurement: many subscribers on one server, figures for one window.

    python -m clients.loadgen --spawn "--synthetic 5000 --symbols 10" \\
        --connections 100 --duration 10 --warmup 3 --channel book --depth 10

How a run goes::

    parent (trio)                               each worker process (spawn context, trio)
    [start `python -m feed serve --port 0`]
    probe: `list` -> the symbols
    start W workers -------------------------->  open its connections, subscribe each
    wait for every Ready  <--------------------  Ready (and which connections failed)
    send Window(start, end) ------------------>  count; snapshot counters at start and end
    GET /metrics at start and at end             close its connections (1000)
    collect the results   <--------------------  WorkerResult
    report; [stop the server: SIGTERM, kill after 5 s]

Receiving is kept as light as possible so the load generator is not what is measured:
``FrameReader`` (pure, no IO) walks the WebSocket frame headers in the byte stream and
only counts frames and bytes. Every Kth data message (``--sample-every``) is decoded:
inflated when RSV1 is set (RFC 7692; the offer asks for ``server_no_context_takeover``,
so each message inflates on its own) and parsed, and ``receive time - ts_recv`` is
recorded for ``book_update``, ``trade`` and ``bbo``. Control frames other than close are
ignored (the server does not ping).

Exceptions::

    LoadError            the run could not be measured (bad URL, refused handshake,
     |                   unknown symbol, a worker died, the spawned server never listened)
     +-- FrameError      the server sent bytes that are not a valid server frame
"""

from __future__ import annotations

import argparse
import datetime
import math
import multiprocessing
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
import traceback
import zlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection as PipeEnd
from typing import Any
from urllib.parse import urlsplit

import orjson
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.extensions import Extension, PerMessageDeflate

CHANNELS = ("book", "trades", "bbo")
LATENCY_TYPES = frozenset({"book_update", "trade", "bbo"})
"""Message types whose ``ts_recv`` is sampled for latency."""
DEFAULT_SAMPLE_EVERY = 64
CPU_LIMIT = 0.9
"""A worker above this share of one core limits the measurement."""
OTHER_LOAD_LIMIT = 0.2
"""Cores used by other processes during the window above which a run is flagged."""
LATENCY_GROWTH_MS = 100.0
"""Growth of the median latency over the window that means the server is behind."""
RECEIVE_BYTES = 256 * 1024
SETUP_CONCURRENCY = 32
"""Handshakes a worker has in flight at once."""
CLOSE_GRACE_S = 2.0
"""Time for the closing handshakes at the end of a run."""
SERVER_START_TIMEOUT_S = 20.0
SERVER_STOP_GRACE_S = 5.0
"""Time a spawned server, or a finished worker, is given to exit before it is killed."""
METRICS_TIMEOUT_S = 5.0
RESULTS_TIMEOUT_S = 15.0

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
_DEFLATE_TAIL = b"\x00\x00\xff\xff"


class LoadError(Exception):
    """The run could not be measured; the message says why, for a person."""


class FrameError(LoadError):
    """The server sent bytes that are not a valid (unmasked) server frame."""


# -- sans-IO: frames ----------------------------------------------------------------------


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


def decode_messages(frame: Frame) -> list[Any]:
    """The message objects of one data frame (a batch array gives several).

    Raises ``zlib.error`` or ``orjson.JSONDecodeError`` on a damaged payload."""
    payload = frame.payload
    if frame.compressed:
        payload = zlib.decompressobj(-15).decompress(payload + _DEFLATE_TAIL)
    value = orjson.loads(payload)
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


def percentile(ordered: Sequence[int], pct: float) -> int:
    """Nearest-rank percentile of a sorted, non-empty sequence."""
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format to {series (name and labels as written): value}."""
    series: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            series[name] = float(value)
        except ValueError:
            continue
    return series


def metric_total(series: dict[str, float], name: str) -> float:
    """Sum of a metric over all its label sets (0 when absent)."""
    return sum(v for k, v in series.items() if k == name or k.startswith(name + "{"))


def metric_by_label(series: dict[str, float], name: str) -> dict[str, float]:
    """{label value: value} of a metric with one label (``name{label="x"}``)."""
    out: dict[str, float] = {}
    for key, value in series.items():
        if key.startswith(name + "{"):
            out[key[len(name) + 1:-1].partition("=")[2].strip('"')] = value
    return out


# -- connections --------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Where to connect: host, port and request target of a ``ws://`` URL."""

    host: str
    port: int
    target: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Raises ``LoadError`` for anything but ``ws://HOST[:PORT]/PATH``."""
        parts = urlsplit(url)
        if parts.scheme != "ws" or not parts.hostname:
            raise LoadError(f"not a ws:// URL: {url!r} (loadgen speaks plain ws:// only)")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, parts.port or 80, target)

    @property
    def host_header(self) -> str:
        return f"{self.host}:{self.port}"


async def open_websocket(endpoint: Endpoint, compress: bool) -> tuple[trio.SocketStream, bool]:
    """Connect and do the opening handshake; returns the stream and whether
    permessage-deflate is in use. Raises ``LoadError`` (refused) or ``OSError``."""
    stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        offer: list[Extension] = []
        if compress:
            offer.append(PerMessageDeflate(client_no_context_takeover=True,
                                           server_no_context_takeover=True))
        await stream.send_all(ws.send(Request(host=endpoint.host_header,
                                              target=endpoint.target, extensions=offer)))
        while True:
            data = await stream.receive_some(16384)
            if not data:
                raise LoadError("the server closed the connection during the handshake")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    # The server speaks only when spoken to, so nothing follows the
                    # handshake response yet: from here on the stream is raw frames.
                    return stream, any(isinstance(e, PerMessageDeflate)
                                       for e in event.extensions)
                if isinstance(event, RejectConnection):
                    raise LoadError(f"WebSocket handshake refused: HTTP {event.status_code}")
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def request_reply(stream: trio.SocketStream, reader: FrameReader,
                        request: dict[str, Any], reply_type: str) -> dict[str, Any]:
    """Send one request and read until its reply (every message decoded meanwhile).
    Raises ``LoadError`` on an ``error`` reply, a close or the end of the stream."""
    reader.set_sampling(1)
    await stream.send_all(client_frame(OP_TEXT, orjson.dumps(request)))
    while True:
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            raise LoadError(f"connection lost waiting for {reply_type!r}")
        for frame in reader.feed(data):
            if frame.opcode == OP_CLOSE:
                code, reason = close_code(frame.payload)
                raise LoadError(f"closed {code} {reason!r} waiting for {reply_type!r}")
            for message in decode_messages(frame):
                kind = message.get("type") if isinstance(message, dict) else None
                if kind == "error" and message.get("id") == request.get("id"):
                    raise LoadError(f"{request['op']} refused: {message.get('code')}: "
                                    f"{message.get('message')}")
                if kind == reply_type:
                    return dict(message)


async def list_symbols(endpoint: Endpoint, channel: str) -> list[str]:
    """The symbols the server carries on ``channel`` (one short probe connection)."""
    stream, _ = await open_websocket(endpoint, compress=False)
    async with stream:
        reply = await request_reply(stream, FrameReader(), {"op": "list", "id": 1}, "symbols")
        await stream.send_all(client_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
    return [s["symbol"] for s in reply.get("symbols", []) if channel in s.get("channels", ())]


async def fetch_metrics(host: str, port: int) -> dict[str, float]:
    """GET /metrics over plain HTTP/1.1. Raises ``LoadError``, ``OSError``,
    ``trio.TooSlowError`` (after ``METRICS_TIMEOUT_S``)."""
    with trio.fail_after(METRICS_TIMEOUT_S):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(f"GET /metrics HTTP/1.1\r\nHost: {host}:{port}\r\n"
                                  "Connection: close\r\n\r\n".encode())
            chunks = []
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise LoadError(f"/metrics answered {status.decode('latin-1')!r}")
    return parse_metrics(body.decode("utf-8", "replace"))


# -- worker processes ---------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker does: its connections (global indices) and the subscription."""

    index: int
    endpoint: Endpoint
    connections: tuple[int, ...]
    channel: str
    symbols: tuple[str, ...]
    depth: int
    compress: bool
    sample_every: int


@dataclass(frozen=True)
class Ready:
    """Worker to parent: every connection is subscribed (or has failed)."""

    worker: int
    failures: tuple[tuple[int, str], ...]
    compressed: int
    """Connections on which permessage-deflate was negotiated."""


@dataclass(frozen=True)
class Window:
    """Parent to worker: the measured window, wall clock (``time.time()``) seconds."""

    start: float
    end: float


@dataclass(frozen=True)
class Finish:
    """Parent to worker: the server's figures are read, close the connections."""


@dataclass(frozen=True)
class ConnectionResult:
    """One connection's figures for the window."""

    index: int
    worker: int
    messages: int
    bytes: int
    messages_per_s: float
    close_code: int | None
    close_reason: str
    closed_early: bool
    error: str | None


@dataclass(frozen=True)
class WorkerResult:
    """Worker to parent: everything it measured."""

    worker: int
    pid: int
    window_s: float
    cpu_s: float
    connections: tuple[ConnectionResult, ...]
    latencies_ns: tuple[int, ...]
    sample_times_ns: tuple[int, ...]
    """When each latency sample was received (same order)."""
    sampled_types: dict[str, int]
    decode_errors: int


@dataclass(frozen=True)
class WorkerFailed:
    """Worker to parent: it crashed (a traceback, for a person)."""

    worker: int
    error: str


class _Recorder:
    """A worker's shared sample store; records only inside the window."""

    def __init__(self) -> None:
        self.start_ns = sys.maxsize
        self.end_ns = sys.maxsize
        self.latencies: list[int] = []
        self.times: list[int] = []
        self.types: Counter[str] = Counter()
        self.decode_errors = 0

    def sample(self, frame: Frame, now_ns: int) -> None:
        if not self.start_ns <= now_ns < self.end_ns:
            return
        try:
            messages = decode_messages(frame)
        except (zlib.error, orjson.JSONDecodeError):
            self.decode_errors += 1
            return
        for message in messages:
            if not isinstance(message, dict):
                continue
            kind = str(message.get("type"))
            self.types[kind] += 1
            ts_recv = message.get("ts_recv")
            if kind in LATENCY_TYPES and isinstance(ts_recv, int):
                self.latencies.append(now_ns - ts_recv)
                self.times.append(now_ns)


class Subscriber:
    """One subscriber connection in a worker: set up, then count until closed."""

    def __init__(self, index: int, plan: WorkerPlan, recorder: _Recorder) -> None:
        self.index = index
        self.plan = plan
        self.recorder = recorder
        self.reader = FrameReader(plan.sample_every)
        self.stream: trio.SocketStream | None = None
        self.compressed = False
        self.error: str | None = None
        self.close: tuple[int, str] | None = None
        self.ended = trio.Event()
        self.close_sent = False
        self.closed_early = False
        self.marks: list[tuple[int, int]] = []

    async def set_up(self) -> None:
        """Handshake and subscribe; a failure is kept in ``error``, not raised."""
        plan = self.plan
        request: dict[str, Any] = {"op": "subscribe", "id": 1, "channel": plan.channel,
                                   "symbols": list(plan.symbols)}
        if plan.channel == "book":
            request["depth"] = plan.depth
        try:
            self.stream, self.compressed = await open_websocket(plan.endpoint, plan.compress)
            await request_reply(self.stream, self.reader, request, "subscribed")
        except (OSError, LoadError, trio.BrokenResourceError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            if self.stream is not None:
                await trio.aclose_forcefully(self.stream)
            self.ended.set()
        else:
            self.reader.set_sampling(plan.sample_every)

    async def receive(self) -> None:
        """Count frames until the connection closes (the hot loop)."""
        stream = self.stream
        assert stream is not None
        reader = self.reader
        sample = self.recorder.sample
        try:
            while True:
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    self._ended(1006, "connection lost without a close frame")
                    return
                now_ns = time.time_ns()
                picked = reader.feed(data)
                if picked:
                    for frame in picked:
                        if frame.opcode == OP_CLOSE:
                            self._ended(*close_code(frame.payload))
                            await self._send_close(frame.payload[:2])
                            return
                        sample(frame, now_ns)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._ended(1006, f"connection lost: {exc}")
        except FrameError as exc:
            self._ended(1002, str(exc))
        finally:
            self.ended.set()
            await trio.aclose_forcefully(stream)

    def mark(self) -> None:
        """Note the counters (at the window's start, then its end)."""
        self.marks.append((self.reader.messages, self.reader.bytes))

    async def stop(self) -> None:
        """Start the closing handshake (1000) and wait for the receive loop to end."""
        if not self.ended.is_set():
            await self._send_close((1000).to_bytes(2, "big"))
            await self.ended.wait()

    def result(self, window_s: float) -> ConnectionResult:
        (m0, b0), (m1, b1) = self.marks if len(self.marks) == 2 else ((0, 0), (0, 0))
        code, reason = self.close if self.close is not None else (None, "")
        return ConnectionResult(
            index=self.index, worker=self.plan.index, messages=m1 - m0, bytes=b1 - b0,
            messages_per_s=round((m1 - m0) / window_s, 1) if window_s > 0 else 0.0,
            close_code=code, close_reason=reason,
            closed_early=self.closed_early,
            error=self.error)

    def _ended(self, code: int, reason: str) -> None:
        if self.close is None:
            self.close = (code, reason)
            self.closed_early = len(self.marks) < 2  # before the window's end

    async def _send_close(self, code: bytes) -> None:
        if self.close_sent or self.stream is None:
            return
        self.close_sent = True
        try:
            await self.stream.send_all(client_frame(OP_CLOSE, code))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _trio_deadline(wall: float) -> float:
    return trio.current_time() + (wall - time.time())


async def _receive_from(pipe: PipeEnd) -> object:
    """The next object from a pipe, waiting without blocking trio (EOFError at end)."""
    await trio.lowlevel.wait_readable(pipe.fileno())
    return await trio.to_thread.run_sync(pipe.recv, abandon_on_cancel=True)


async def _worker(plan: WorkerPlan, pipe: PipeEnd) -> WorkerResult | None:
    recorder = _Recorder()
    subscribers = [Subscriber(i, plan, recorder) for i in plan.connections]
    limiter = trio.CapacityLimiter(SETUP_CONCURRENCY)
    pending = len(subscribers)
    all_set_up = trio.Event()

    async def run_one(sub: Subscriber) -> None:
        nonlocal pending
        try:
            async with limiter:
                await sub.set_up()
        finally:
            pending -= 1
            if pending == 0:
                all_set_up.set()
        if sub.error is None:
            await sub.receive()

    async with trio.open_nursery() as nursery:
        for sub in subscribers:
            nursery.start_soon(run_one, sub)
        await all_set_up.wait()
        pipe.send(Ready(plan.index, tuple((s.index, s.error) for s in subscribers if s.error),
                        sum(s.compressed for s in subscribers)))
        try:
            window = await _receive_from(pipe)
        except EOFError:
            window = None
        if not isinstance(window, Window):  # the parent gave up
            nursery.cancel_scope.cancel()
            return None
        recorder.start_ns, recorder.end_ns = int(window.start * 1e9), int(window.end * 1e9)
        await trio.sleep_until(_trio_deadline(window.start))
        cpu0, wall0 = time.process_time(), time.time()
        for sub in subscribers:
            sub.mark()
        await trio.sleep_until(_trio_deadline(window.end))
        cpu1, wall1 = time.process_time(), time.time()
        for sub in subscribers:
            sub.mark()
        # Stay connected until the parent has read /metrics, so that the closing
        # handshakes are not counted in the window.
        with trio.move_on_after(METRICS_TIMEOUT_S + 1), suppress(EOFError):
            await _receive_from(pipe)
        with trio.move_on_after(CLOSE_GRACE_S):
            async with trio.open_nursery() as closing:
                for sub in subscribers:
                    closing.start_soon(sub.stop)
        nursery.cancel_scope.cancel()
    window_s = wall1 - wall0
    return WorkerResult(
        worker=plan.index, pid=os.getpid(), window_s=window_s, cpu_s=cpu1 - cpu0,
        connections=tuple(s.result(window_s) for s in subscribers),
        latencies_ns=tuple(recorder.latencies), sample_times_ns=tuple(recorder.times),
        sampled_types=dict(recorder.types),
        decode_errors=recorder.decode_errors)


def worker_entry(plan: WorkerPlan, pipe: PipeEnd) -> None:
    """Process entry point of one worker: connect, measure the window, send the result."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        result = trio.run(_worker, plan, pipe)
        if result is not None:
            pipe.send(result)
    except Exception:
        try:
            pipe.send(WorkerFailed(plan.index, traceback.format_exc()))
        except OSError:
            pass
    finally:
        pipe.close()


@dataclass
class _WorkerHandle:
    index: int
    process: multiprocessing.process.BaseProcess
    pipe: PipeEnd
    connections: int


async def _start_workers(plans: Sequence[WorkerPlan]) -> list[_WorkerHandle]:
    context = multiprocessing.get_context("spawn")
    handles: list[_WorkerHandle] = []
    try:
        for plan in plans:
            parent_end, child_end = context.Pipe()
            process = context.Process(target=worker_entry, args=(plan, child_end),
                                      name=f"loadgen-worker-{plan.index}", daemon=True)
            handles.append(_WorkerHandle(plan.index, process, parent_end, len(plan.connections)))
            await trio.to_thread.run_sync(process.start)
            child_end.close()
    except BaseException:
        await _stop_workers(handles, 0.0)
        raise
    return handles


async def _receive_all(handles: Sequence[_WorkerHandle], kind: type[Any],
                       limit_s: float) -> list[Any]:
    """One message of ``kind`` from every worker within ``limit_s``.
    Raises ``LoadError``."""
    results: list[Any] = [None] * len(handles)

    async def one(slot: int, handle: _WorkerHandle) -> None:
        try:
            message = await _receive_from(handle.pipe)
        except (EOFError, OSError):
            raise LoadError(f"worker {handle.index} exited "
                            f"(exit code {handle.process.exitcode})") from None
        if isinstance(message, WorkerFailed):
            raise LoadError(f"worker {handle.index} failed:\n{message.error}")
        if not isinstance(message, kind):
            raise LoadError(f"worker {handle.index} sent {message!r}")
        results[slot] = message

    try:
        with trio.fail_after(limit_s):
            async with trio.open_nursery() as nursery:
                for slot, handle in enumerate(handles):
                    nursery.start_soon(one, slot, handle)
    except trio.TooSlowError:
        raise LoadError(f"workers did not answer within {limit_s:.0f} s") from None
    except BaseExceptionGroup as group:
        first = group.exceptions[0]
        raise first if isinstance(first, LoadError) else group from None
    return results


async def _stop_workers(handles: Sequence[_WorkerHandle], grace_s: float) -> None:
    """Join every worker, allowing ``grace_s`` in all; terminate, then kill, one that
    has not ended by then."""
    with trio.CancelScope(shield=True):
        deadline = time.monotonic() + grace_s
        for handle in handles:
            process = handle.process
            if process.pid is not None:
                await trio.to_thread.run_sync(process.join,
                                              max(0.0, deadline - time.monotonic()))
                if process.exitcode is None:
                    process.terminate()
                    await trio.to_thread.run_sync(process.join, 2.0)
                if process.exitcode is None:
                    process.kill()
                    await trio.to_thread.run_sync(process.join, 2.0)
            handle.pipe.close()


# -- the spawned server -------------------------------------------------------------------


class _Lines:
    """Lines from a byte stream (a child process's stdout or stderr)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.pending = b""

    async def next(self) -> str | None:
        """The next line, without its newline; None at the end of the stream."""
        while b"\n" not in self.pending:
            data = await self.stream.receive_some(65536)
            if not data:
                if not self.pending:
                    return None
                line, self.pending = self.pending, b""
                return line.decode("utf-8", "replace")
            self.pending += data
        line, _, self.pending = self.pending.partition(b"\n")
        return line.decode("utf-8", "replace").rstrip("\r")


@dataclass
class ServerLog:
    """What the spawned server wrote (stdout and stderr), for the report."""

    lines: deque[str] = field(default_factory=lambda: deque(maxlen=5000))
    warnings: int = 0
    errors: int = 0
    notable: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    def add(self, line: str) -> None:
        self.lines.append(line)
        if " WARNING " in line:
            self.warnings += 1
            self.notable.append(line)
        elif any(word in line for word in (" ERROR ", " CRITICAL ", "Traceback")):
            self.errors += 1
            self.notable.append(line)


@dataclass(frozen=True)
class SpawnedServer:
    url: str
    pid: int
    command: tuple[str, ...]
    log: ServerLog


async def _drain(lines: _Lines, sink: Callable[[str], None]) -> None:
    while (line := await lines.next()) is not None:
        sink(line)


async def _stop_process(process: trio.Process) -> None:
    """SIGTERM, then SIGKILL after ``SERVER_STOP_GRACE_S``; always waits for it."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(SERVER_STOP_GRACE_S):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


@contextmanager
def _unwrapped() -> Iterator[None]:
    """Let a nursery's single error out of its exception group, as itself."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


@asynccontextmanager
async def spawn_server(args: str, log: ServerLog | None = None
                       ) -> AsyncIterator[SpawnedServer]:
    """Run ``python -m feed serve --port 0 ARGS`` for the duration of the block; its
    output goes to ``log``. Raises ``LoadError`` if it does not print its
    ``listening on`` line in time. The server is stopped however the block ends."""
    command = (sys.executable, "-m", "feed", "serve", "--port", "0", *shlex.split(args))
    process = await trio.lowlevel.open_process(
        list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    log = log if log is not None else ServerLog()
    try:
        with _unwrapped():
            async with trio.open_nursery() as nursery:
                try:
                    assert process.stdout is not None and process.stderr is not None
                    nursery.start_soon(_drain, _Lines(process.stderr), log.add)
                    stdout = _Lines(process.stdout)
                    url = None
                    with trio.move_on_after(SERVER_START_TIMEOUT_S):
                        while (line := await stdout.next()) is not None:
                            log.add(line)
                            if line.startswith("listening on "):
                                url = line.removeprefix("listening on ").strip()
                                break
                    if url is None:
                        await _stop_process(process)
                        tail = "\n".join(list(log.lines)[-10:])
                        raise LoadError(f"the spawned server did not start "
                                        f"(exit code {process.returncode}):\n{tail}")
                    nursery.start_soon(_drain, stdout, log.add)
                    yield SpawnedServer(url, process.pid, command, log)
                finally:
                    await _stop_process(process)
    finally:
        await _stop_process(process)
        with trio.CancelScope(shield=True):
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    await pipe.aclose()


# -- the run ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadConfig:
    """One run. ``url`` or ``spawn`` (server arguments) names the server."""

    url: str | None = None
    spawn: str | None = None
    connections: int = 100
    duration: float = 10.0
    warmup: float = 2.0
    workers: int = 0
    """0: one per CPU, at most one per connection."""
    channel: str = "book"
    symbols: tuple[str, ...] | None = None
    """None: every symbol the server carries on the channel."""
    depth: int = 10
    compress: bool = True
    sample_every: int = DEFAULT_SAMPLE_EVERY
    setup_timeout: float = 30.0

    def check(self) -> None:
        """Raises ``LoadError`` naming the first bad setting."""
        if (self.url is None) == (self.spawn is None):
            raise LoadError("give --url or --spawn (one of them)")
        if self.connections < 1 or self.duration <= 0 or self.warmup < 0:
            raise LoadError("--connections >= 1, --duration > 0 and --warmup >= 0, please")
        if self.workers < 0 or self.sample_every < 1 or not 1 <= self.depth <= 1000:
            raise LoadError("--workers >= 0, --sample-every >= 1, --depth 1 to 1000, please")
        if self.channel not in CHANNELS:
            raise LoadError(f"--channel must be one of {', '.join(CHANNELS)}")

    def worker_count(self) -> int:
        return min(self.workers or os.cpu_count() or 2, self.connections)


@dataclass(frozen=True)
class LatencyFigures:
    """Sampled ``receive time - ts_recv``, milliseconds (None without samples)."""

    samples: int
    sample_every: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    p50_first_ms: float | None
    """Median of the samples in the first fifth of the window..."""
    p50_last_ms: float | None
    """...and in the last fifth: a server falling behind its feed shows as growth."""


@dataclass(frozen=True)
class ServerFigures:
    """The server's own figures over the window, from two reads of /metrics."""

    cpu_s: float
    cpu_cores: float
    """CPU seconds per second of the window: 1.0 is one core fully busy."""
    messages_sent: int
    bytes_sent: int
    cpu_us_per_message: float | None
    """Server CPU microseconds per message it sent."""
    lag_events: int
    dropped_messages: int
    closes: dict[str, int]
    stage_mean_us: dict[str, float]
    writes: int
    """Socket writes in the window (the ``write`` stage's count)."""
    messages_per_write: float | None
    """Messages sent per socket write: the server's batching."""
    open_connections: int


@dataclass(frozen=True)
class WorkerFigures:
    worker: int
    pid: int
    connections: int
    cpu_s: float
    cpu_cores: float
    """Share of one core the worker used during the window."""


@dataclass(frozen=True)
class Report:
    """Everything a run measured (``--json`` writes this)."""

    date: str
    url: str
    server_command: tuple[str, ...] | None
    server_pid: int | None
    connections: int
    workers: int
    channel: str
    symbols: tuple[str, ...]
    depth: int | None
    compress: bool
    compressed_connections: int
    warmup_s: float
    duration_s: float
    window_s: float
    messages: int
    bytes: int
    messages_per_s: float
    bytes_per_s: float
    per_connection_min: float
    per_connection_median: float
    per_connection_max: float
    latency: LatencyFigures
    server: ServerFigures | None
    machine: MachineFigures
    worker_figures: tuple[WorkerFigures, ...]
    per_connection: tuple[ConnectionResult, ...]
    sampled_types: dict[str, int]
    decode_errors: int
    server_log_warnings: int | None
    server_log_errors: int | None
    server_log_notable: tuple[str, ...]
    warnings: tuple[str, ...]


def report_json(report: Report) -> bytes:
    """The report as indented JSON (what ``--json`` writes)."""
    return orjson.dumps(asdict(report), option=orjson.OPT_INDENT_2)


def _server_figures(before: dict[str, float], after: dict[str, float],
                    elapsed: float) -> ServerFigures:
    def delta(name: str) -> float:
        return metric_total(after, name) - metric_total(before, name)

    cpu = delta("process_cpu_seconds_total")
    sent = int(delta("tickwire_messages_sent_total"))
    closes_before = metric_by_label(before, "tickwire_closes_total")
    closes = {code: int(value - closes_before.get(code, 0))
              for code, value in metric_by_label(after, "tickwire_closes_total").items()}
    sums = metric_by_label(after, "tickwire_stage_latency_seconds_sum")
    sums0 = metric_by_label(before, "tickwire_stage_latency_seconds_sum")
    counts = metric_by_label(after, "tickwire_stage_latency_seconds_count")
    counts0 = metric_by_label(before, "tickwire_stage_latency_seconds_count")
    writes = int(counts.get("write", 0) - counts0.get("write", 0))
    stages = {}
    for stage, total in sums.items():
        count = counts.get(stage, 0) - counts0.get(stage, 0)
        if count > 0:
            stages[stage] = round((total - sums0.get(stage, 0)) / count * 1e6, 1)
    return ServerFigures(
        cpu_s=round(cpu, 3), cpu_cores=round(cpu / elapsed, 3) if elapsed > 0 else 0.0,
        messages_sent=sent, bytes_sent=int(delta("tickwire_bytes_sent_total")),
        cpu_us_per_message=round(cpu / sent * 1e6, 3) if sent else None,
        lag_events=int(delta("tickwire_lag_events_total")),
        dropped_messages=int(delta("tickwire_dropped_messages_total")),
        closes={k: v for k, v in closes.items() if v}, stage_mean_us=stages, writes=writes,
        messages_per_write=round(sent / writes, 2) if writes else None,
        open_connections=int(metric_total(after, "tickwire_open_connections")))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _latency(results: Sequence[WorkerResult], window: Window,
             sample_every: int) -> LatencyFigures:
    samples = [(t, x) for r in results for t, x in zip(r.sample_times_ns, r.latencies_ns,
                                                          strict=True)]
    if not samples:
        return LatencyFigures(0, sample_every, None, None, None, None, None, None)
    ordered = sorted(x for _, x in samples)
    fifth_ns = (window.end - window.start) * 1e9 / 5
    first = sorted(x for t, x in samples if t < window.start * 1e9 + fifth_ns)
    last = sorted(x for t, x in samples if t >= window.end * 1e9 - fifth_ns)

    def ms(ns: int) -> float:
        return round(ns / 1e6, 3)

    return LatencyFigures(len(ordered), sample_every, ms(percentile(ordered, 50)),
                          ms(percentile(ordered, 90)), ms(percentile(ordered, 99)),
                          ms(ordered[-1]), ms(percentile(first, 50)) if first else None,
                          ms(percentile(last, 50)) if last else None)


def machine_busy_s() -> tuple[float, float] | None:
    """CPU seconds all cores of this machine have spent busy since boot, and the part
    of it spent in interrupts (loopback TCP is mostly softirq, charged to no process).
    Linux ``/proc/stat``; None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / tick, (fields[5] + fields[6]) / tick  # irq, softirq


@dataclass(frozen=True)
class MachineFigures:
    """CPU of the whole machine over the window, in cores (1.0: one core busy)."""

    cores: int
    busy_cores: float | None
    irq_cores: float | None
    """Part of ``busy_cores`` spent in (soft) interrupts: mostly loopback TCP."""
    loadgen_cores: float
    """The load generator: its parent process and every worker."""
    other_cores: float | None
    """Busy minus interrupts, server and load generator: other processes."""


async def measure(config: LoadConfig, url: str, spawned: SpawnedServer | None = None
                  ) -> Report:
    """Measure a running server at ``url``. Raises ``LoadError``."""
    endpoint = Endpoint.parse(url)
    try:
        with trio.fail_after(config.setup_timeout):
            offered = await list_symbols(endpoint, config.channel)
    except (OSError, trio.BrokenResourceError) as exc:
        raise LoadError(f"cannot reach {url}: {exc}") from None
    except trio.TooSlowError:
        raise LoadError(f"{url} did not answer `list` within {config.setup_timeout} s") from None
    symbols = config.symbols or tuple(offered)
    unknown = sorted(set(symbols) - set(offered))
    if unknown or not symbols:
        raise LoadError(f"not offered on {config.channel}: {', '.join(unknown) or 'anything'}")
    workers = config.worker_count()
    plans = [WorkerPlan(w, endpoint, tuple(range(w, config.connections, workers)),
                        config.channel, symbols, config.depth, config.compress,
                        config.sample_every) for w in range(workers)]
    handles = await _start_workers(plans)
    completed = False
    try:
        ready: list[Ready] = await _receive_all(handles, Ready, config.setup_timeout + 10)
        start = time.time() + config.warmup
        window = Window(start, start + config.duration)
        for handle in handles:
            with suppress(OSError):  # a dead worker shows in _receive_all
                handle.pipe.send(window)
        warnings: list[str] = []
        await trio.sleep_until(_trio_deadline(window.start))
        before = await _try_metrics(endpoint, warnings)
        t0, busy0, own0 = time.time(), machine_busy_s(), time.process_time()
        await trio.sleep_until(_trio_deadline(window.end))
        after = await _try_metrics(endpoint, warnings)
        t1, busy1, own1 = time.time(), machine_busy_s(), time.process_time()
        for handle in handles:
            with suppress(OSError):
                handle.pipe.send(Finish())
        results: list[WorkerResult] = await _receive_all(handles, WorkerResult,
                                                         RESULTS_TIMEOUT_S)
        completed = True
    finally:
        # After the results the workers are exiting: give them time. Otherwise (an
        # error, Ctrl-C) they are still connected and measuring: end them now.
        await _stop_workers(handles, SERVER_STOP_GRACE_S if completed else 0.0)
    elapsed = t1 - t0
    server = (_server_figures(before, after, elapsed)
              if before is not None and after is not None else None)
    busy = irq = None
    if busy0 is not None and busy1 is not None:
        busy, irq = (busy1[0] - busy0[0]) / elapsed, (busy1[1] - busy0[1]) / elapsed
    return _report(config, url, symbols, window, ready, results, server,
                   (busy, irq, (own1 - own0) / elapsed), spawned, warnings)


async def _try_metrics(endpoint: Endpoint, warnings: list[str]) -> dict[str, float] | None:
    try:
        return await fetch_metrics(endpoint.host, endpoint.port)
    except (OSError, LoadError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        warnings.append(f"could not read /metrics: {type(exc).__name__}: {exc}")
        return None


def _report(config: LoadConfig, url: str, symbols: tuple[str, ...], window: Window,
            ready: list[Ready], results: list[WorkerResult], server: ServerFigures | None,
            cpu: tuple[float | None, float | None, float], spawned: SpawnedServer | None,
            warnings: list[str]) -> Report:
    connections = sorted((c for r in results for c in r.connections), key=lambda c: c.index)
    live = [c for c in connections if c.error is None]
    rates = sorted(c.messages_per_s for c in live) or [0.0]
    window_s = statistics.fmean(r.window_s for r in results)
    messages = sum(c.messages for c in connections)
    data = sum(c.bytes for c in connections)
    types: Counter[str] = Counter()
    for r in results:
        types.update(r.sampled_types)
    workers = tuple(WorkerFigures(r.worker, r.pid, len(r.connections), round(r.cpu_s, 3),
                                  round(r.cpu_s / r.window_s, 3) if r.window_s > 0 else 0.0)
                    for r in results)
    for w in workers:
        if w.cpu_cores > CPU_LIMIT:
            warnings.append(f"LOAD GENERATOR LIMITED: worker {w.worker} used "
                            f"{w.cpu_cores:.0%} of a core; the figures measure the load "
                            "generator, not the server (use more workers or fewer connections)")
    busy, irq, own = cpu
    cores = os.cpu_count() or 1
    loadgen = own + sum(w.cpu_cores for w in workers)
    other = (busy - (irq or 0.0) - loadgen - server.cpu_cores
             if busy is not None and server is not None else None)
    machine = MachineFigures(cores, _round(busy), _round(irq), round(loadgen, 3),
                             _round(other))
    if busy is not None and busy > CPU_LIMIT * cores:
        warnings.append(f"MACHINE SATURATED: {busy:.2f} of {cores} cores busy during the "
                        "window; server and load generator compete for CPU")
    if other is not None and other > OTHER_LOAD_LIMIT:
        warnings.append(f"OTHER LOAD ON THE MACHINE: other processes used {other:.2f} cores "
                        "during the window; the figures are not those of a quiet machine")
    latency = _latency(results, window, config.sample_every)
    if (latency.p50_first_ms is not None and latency.p50_last_ms is not None
            and latency.p50_last_ms > latency.p50_first_ms + LATENCY_GROWTH_MS):
        warnings.append(f"LATENCY GREW during the window (median {latency.p50_first_ms:.1f} "
                        f"ms in its first fifth, {latency.p50_last_ms:.1f} ms in its last): "
                        "the server is falling behind its feed")
    if server is not None:
        if server.lag_events or server.dropped_messages:
            warnings.append(f"server lag policy applied: {server.lag_events} lag events, "
                            f"{server.dropped_messages} queued messages dropped")
        if messages < 0.9 * server.messages_sent:
            warnings.append(f"received {messages} messages of the {server.messages_sent} "
                            "the server sent in the window")
    for c in connections:
        if c.error is not None:
            warnings.append(f"connection {c.index} failed to subscribe: {c.error}")
        elif c.closed_early:
            warnings.append(f"CONNECTION CLOSED EARLY: connection {c.index} closed with "
                            f"code {c.close_code} {c.close_reason!r}")
    decode_errors = sum(r.decode_errors for r in results)
    if decode_errors:
        warnings.append(f"{decode_errors} sampled messages could not be decoded")
    if spawned is not None and (spawned.log.warnings or spawned.log.errors):
        warnings.append(f"the server logged {spawned.log.warnings} warnings and "
                        f"{spawned.log.errors} errors")
    return Report(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        url=url, server_command=spawned.command if spawned else None,
        server_pid=spawned.pid if spawned else None,
        connections=config.connections, workers=len(results), channel=config.channel,
        symbols=symbols, depth=config.depth if config.channel == "book" else None,
        compress=config.compress, compressed_connections=sum(r.compressed for r in ready),
        warmup_s=config.warmup, duration_s=config.duration, window_s=round(window_s, 3),
        messages=messages, bytes=data,
        messages_per_s=round(sum(c.messages_per_s for c in connections), 1),
        bytes_per_s=round(sum(c.bytes for c in connections) / window_s, 1),
        per_connection_min=round(rates[0], 1),
        per_connection_median=round(statistics.median(rates), 1),
        per_connection_max=round(rates[-1], 1),
        latency=latency, server=server, machine=machine,
        worker_figures=workers, per_connection=tuple(connections),
        sampled_types=dict(types), decode_errors=decode_errors,
        server_log_warnings=spawned.log.warnings if spawned else None,
        server_log_errors=spawned.log.errors if spawned else None,
        server_log_notable=tuple(spawned.log.notable) if spawned else (),
        warnings=tuple(warnings))


async def run(config: LoadConfig, server_log: ServerLog | None = None) -> Report:
    """One whole run: spawn the server if asked (its output into ``server_log``),
    measure, and always stop what was started. Raises ``LoadError``."""
    config.check()
    if config.spawn is None:
        assert config.url is not None
        return await measure(config, config.url)
    async with spawn_server(config.spawn, server_log) as spawned:
        return await measure(config, spawned.url, spawned)


# -- output -------------------------------------------------------------------------------


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _cores(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def format_report(report: Report) -> str:
    """The report as a plain table for a person."""
    lat = report.latency
    rows: list[tuple[str, str]] = [
        ("url", report.url),
        ("load", f"{report.connections} connections over {report.workers} worker(s), "
                 f"channel {report.channel}"
                 + (f" depth {report.depth}" if report.depth else "")
                 + f", {len(report.symbols)} symbols"),
        ("compression", f"{'offered' if report.compress else 'off'}, in use on "
                        f"{report.compressed_connections} connections"),
        ("window", f"{report.window_s:.2f} s after {report.warmup_s:g} s warmup"),
        ("received", f"{report.messages_per_s:,.0f} msg/s, "
                     f"{_si(report.bytes_per_s, 'B/s')} "
                     f"({report.messages:,} messages, {_si(report.bytes, 'B')})"),
        ("per connection", f"min {report.per_connection_min:,.0f}  "
                           f"median {report.per_connection_median:,.0f}  "
                           f"max {report.per_connection_max:,.0f} msg/s"),
    ]
    if lat.samples:
        rows.append(("latency", f"p50 {lat.p50_ms:.3f}  p90 {lat.p90_ms:.3f}  "
                                f"p99 {lat.p99_ms:.3f}  max {lat.max_ms:.3f} ms "
                                f"({lat.samples:,} samples, 1 in {lat.sample_every})"))
        if lat.p50_first_ms is not None and lat.p50_last_ms is not None:
            rows.append(("latency drift", f"median {lat.p50_first_ms:.3f} ms in the first "
                                          f"fifth of the window, {lat.p50_last_ms:.3f} ms "
                                          "in the last"))
    else:
        rows.append(("latency", "no samples"))
    if report.server is not None:
        s = report.server
        per = f"{s.cpu_us_per_message:.2f} us" if s.cpu_us_per_message else "n/a"
        rows += [
            ("server CPU", f"{s.cpu_cores:.2f} cores ({s.cpu_s:.2f} s), {per} per message "
                           f"sent"),
            ("server sent", f"{s.messages_sent:,} messages, {_si(s.bytes_sent, 'B')}; "
                            f"lag events {s.lag_events}, dropped {s.dropped_messages}, "
                            f"closes {s.closes or 'none'}"),
            ("server stages", (", ".join(f"{k} {v:,.1f} us" for k, v in s.stage_mean_us.items())
                               or "n/a") + (f"; {s.messages_per_write:,.1f} messages per write"
                                            if s.messages_per_write else "")),
        ]
    else:
        rows.append(("server", "no /metrics figures"))
    m = report.machine
    rows.append(("machine", f"{m.cores} cores; busy {_cores(m.busy_cores)}: server "
                            f"{_cores(report.server.cpu_cores if report.server else None)}, "
                            f"load generator {m.loadgen_cores:.2f}, interrupts "
                            f"{_cores(m.irq_cores)}, other processes {_cores(m.other_cores)}"))
    for w in report.worker_figures:
        rows.append((f"worker {w.worker}", f"{w.connections} connections, CPU "
                                           f"{w.cpu_cores:.0%} of a core ({w.cpu_s:.2f} s)"))
    if report.sampled_types:
        rows.append(("sampled types", ", ".join(f"{k} {v}" for k, v in
                                                sorted(report.sampled_types.items()))))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    for warning in report.warnings:
        lines.append(f"!! {warning}")
    for line in report.server_log_notable:
        lines.append(f"   server: {line}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients.loadgen",
                                description="Fan-out load measurement of a tickwire server.")
    p.add_argument("--url", help="ws://HOST:PORT/v1/stream of a running server")
    p.add_argument("--spawn", metavar="ARGS",
                   help='start `python -m feed serve --port 0 ARGS` for the run, e.g. '
                        '"--synthetic 5000 --symbols 10"')
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--duration", type=float, default=10.0, help="measured window, seconds")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds between every connection subscribed and the window")
    p.add_argument("--workers", type=int, default=0,
                   help="worker processes (default: one per CPU)")
    p.add_argument("--channel", choices=CHANNELS, default="book")
    p.add_argument("--symbols", default="all", help="all, or a comma-separated list")
    p.add_argument("--depth", type=int, default=10, help="book depth")
    p.add_argument("--compress", action=argparse.BooleanOptionalAction, default=True,
                   help="offer permessage-deflate (default: yes)")
    p.add_argument("--sample-every", type=int, default=DEFAULT_SAMPLE_EVERY, metavar="K",
                   help="decode one data message in K for latency")
    p.add_argument("--setup-timeout", type=float, default=30.0)
    p.add_argument("--json", metavar="OUT", help="write the figures to this file")
    p.add_argument("--server-log", metavar="FILE",
                   help="with --spawn: write the server's output to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: 0 measured, 1 not measured, 2 bad usage."""
    args = _parser().parse_args(argv)
    symbols = None if args.symbols == "all" else tuple(
        s.strip() for s in args.symbols.split(",") if s.strip())
    config = LoadConfig(
        url=args.url, spawn=args.spawn, connections=args.connections, duration=args.duration,
        warmup=args.warmup, workers=args.workers, channel=args.channel, symbols=symbols,
        depth=args.depth, compress=args.compress, sample_every=args.sample_every,
        setup_timeout=args.setup_timeout)
    try:
        config.check()
    except LoadError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    log = ServerLog()
    try:
        report = trio.run(run, config, log)
    except LoadError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("loadgen: interrupted", file=sys.stderr)
        return 1
    finally:
        if args.server_log and args.spawn:
            with open(args.server_log, "w", encoding="utf-8") as out:
                out.writelines(f"{line}\n" for line in log.lines)
    print(format_report(report))
    if args.json:
        with open(args.json, "wb") as out:
            out.write(report_json(report))
    return 0


if __name__ == "__main__":
    # Run the module's importable twin, so that what is pickled for the worker
    # processes (and back) names `clients.loadgen`, not `__main__`.
    from clients.loadgen import main as _main

    sys.exit(_main())
