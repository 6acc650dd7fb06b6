"""A worker process: its share of the subscriber connections, counted over the window.

Each worker runs trio in a process of its own (multiprocessing, spawn context)::

    open its connections (SETUP_CONCURRENCY handshakes at a time), then subscribe
    every one at once
    -> Ready (and which connections failed)
    <- Window(start, end)     snapshot every connection's counters at start and at end
    <- Finish                 close its connections (1000)
    -> WorkerResult           (WorkerFailed with a traceback if it crashed)

Every Kth data message is decoded. For ``book_update``, ``trade`` and ``bbo`` the worker
records ``receive time - ts_recv`` (the server's latency), ``- ts_send`` (the network and
the client) and ``- ts_event`` (the source's own delay as well) into HDR histograms,
which travel to the parent encoded and are merged there (``clients.loadgen.latency``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
import zlib
from collections import Counter
from contextlib import suppress
from multiprocessing.connection import Connection as PipeEnd
from typing import Any

import orjson
import trio

from clients.loadgen.check import Checker
from clients.loadgen.errors import FrameError, LoadError
from clients.loadgen.frames import (
    NORMAL_CLOSURE,
    OP_CLOSE,
    Frame,
    FrameReader,
    client_frame,
    close_code,
    decode_messages,
    plain_payload,
)
from clients.loadgen.latency import STAMPS, LatencyHistogram, percentile
from clients.loadgen.messages import (
    ConnectionResult,
    Ready,
    Window,
    WorkerFailed,
    WorkerPlan,
    WorkerResult,
    receive_from,
    trio_deadline,
)
from clients.loadgen.metrics import METRICS_TIMEOUT_S
from clients.loadgen.websocket import RECEIVE_BYTES, open_websocket, request_reply

LATENCY_TYPES = frozenset({"book_update", "trade", "bbo"})
"""Message types whose ``ts_recv`` is sampled for latency."""
SETUP_CONCURRENCY = 32
"""Handshakes a worker has in flight at once."""
CLOSE_GRACE_S = 2.0
THROUGHPUT_STEP_S = 0.25
"""Messages received are noted this often in the window, for throughput over time."""
"""Time for the closing handshakes at the end of a run."""


class _Recorder:
    """A worker's shared sample store; records only inside the window."""

    def __init__(self) -> None:
        self.start_ns = sys.maxsize
        self.end_ns = sys.maxsize
        self.latencies: list[int] = []
        self.times: list[int] = []
        self.histograms = {stamp: LatencyHistogram() for stamp in STAMPS}
        self.types: Counter[str] = Counter()
        self.decode_errors = 0
        self.wire_bytes = 0  # payload bytes of the sampled frames, as received...
        self.plain_bytes = 0  # ...and inflated

    def sample(self, frame: Frame, now_ns: int, own: list[int]) -> None:
        """Decode a picked frame and record its latencies (``own``: the connection's
        list of ``receive - ts_recv``)."""
        if not self.start_ns <= now_ns < self.end_ns:
            return
        try:
            plain = plain_payload(frame)
            messages = decode_messages(frame, plain)
        except (zlib.error, orjson.JSONDecodeError):
            self.decode_errors += 1
            return
        self.wire_bytes += len(frame.payload)
        self.plain_bytes += len(plain)
        histograms = self.histograms
        for message in messages:
            if not isinstance(message, dict):
                continue
            kind = str(message.get("type"))
            self.types[kind] += 1
            ts_recv = message.get("ts_recv")
            if kind not in LATENCY_TYPES or not isinstance(ts_recv, int):
                continue
            latency = now_ns - ts_recv
            self.latencies.append(latency)
            self.times.append(now_ns)
            own.append(latency)
            for stamp, histogram in histograms.items():
                value = ts_recv if stamp == "ts_recv" else message.get(stamp)
                if isinstance(value, int):
                    histogram.record(now_ns - value)


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
        self.latencies: list[int] = []  # receive - ts_recv of this connection's samples
        self.checker = Checker() if plan.check and index == plan.connections[0] else None
        """The worker's first connection reads every message and checks it."""

    async def connect(self) -> None:
        """The opening handshake; a failure is kept in ``error``, not raised."""
        try:
            self.stream, self.compressed = await open_websocket(self.plan.endpoint,
                                                                self.plan.compress)
        except (OSError, LoadError, trio.BrokenResourceError) as exc:
            await self._failed(exc)

    async def subscribe(self) -> None:
        """Send the subscribe request and wait for its reply; a failure is kept in
        ``error``, not raised."""
        plan = self.plan
        assert self.stream is not None
        request: dict[str, Any] = {"op": "subscribe", "id": 1, "channel": plan.channel,
                                   "symbols": list(plan.symbols)}
        if plan.channel == "book":
            request["depth"] = plan.depth
        try:
            _, after = await request_reply(self.stream, self.reader, request, "subscribed")
        except (OSError, LoadError, trio.BrokenResourceError) as exc:
            await self._failed(exc)
            return
        self.reader.set_sampling(1 if self.checker is not None else plan.sample_every)
        if self.checker is not None:
            for frame in after:  # the first snapshots may have come with the reply
                self._check(frame)

    async def _failed(self, exc: Exception) -> None:
        self.error = f"{type(exc).__name__}: {exc}"
        if self.stream is not None:
            await trio.aclose_forcefully(self.stream)
        self.ended.set()

    async def receive(self) -> None:
        """Count frames until the connection closes (the hot loop)."""
        stream = self.stream
        assert stream is not None
        reader = self.reader
        sample = self.recorder.sample
        own = self.latencies
        checker = self.checker
        every = self.plan.sample_every
        countdown = every
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
                        if checker is None:
                            sample(frame, now_ns, own)
                            continue
                        self._check(frame)  # every message; latency from one in K
                        countdown -= 1
                        if not countdown:
                            countdown = every
                            sample(frame, now_ns, own)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._ended(1006, f"connection lost: {exc}")
        except FrameError as exc:
            self._ended(1002, str(exc))
        finally:
            self.ended.set()
            await trio.aclose_forcefully(stream)

    def _check(self, frame: Frame) -> None:
        assert self.checker is not None
        try:
            messages = decode_messages(frame)
        except (zlib.error, orjson.JSONDecodeError):
            self.checker.counts["bad_messages"] += 1
            return
        for message in messages:
            self.checker.check(message)

    def mark(self) -> None:
        """Note the counters (at the window's start, then its end)."""
        self.marks.append((self.reader.messages, self.reader.bytes))

    async def stop(self) -> None:
        """Start the closing handshake (1000) and wait for the receive loop to end."""
        if not self.ended.is_set():
            await self._send_close(NORMAL_CLOSURE)
            await self.ended.wait()

    def result(self, window_s: float) -> ConnectionResult:
        (m0, b0), (m1, b1) = self.marks if len(self.marks) == 2 else ((0, 0), (0, 0))
        code, reason = self.close if self.close is not None else (None, "")
        return ConnectionResult(
            index=self.index, worker=self.plan.index, messages=m1 - m0, bytes=b1 - b0,
            messages_per_s=round((m1 - m0) / window_s, 1) if window_s > 0 else 0.0,
            close_code=code, close_reason=reason,
            closed_early=self.closed_early,
            error=self.error, latency_p50_ms=_percentile_ms(self.latencies, 50),
            latency_p99_ms=_percentile_ms(self.latencies, 99))

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


async def _worker(plan: WorkerPlan, pipe: PipeEnd) -> WorkerResult | None:
    recorder = _Recorder()
    subscribers = [Subscriber(i, plan, recorder) for i in plan.connections]
    limiter = trio.CapacityLimiter(SETUP_CONCURRENCY)
    pending = len(subscribers)
    all_set_up = trio.Event()
    all_connected = trio.Event()
    connecting = len(subscribers)

    async def run_one(sub: Subscriber) -> None:
        nonlocal pending, connecting
        try:
            try:
                async with limiter:
                    await sub.connect()
            finally:
                connecting -= 1
                if connecting == 0:
                    all_connected.set()
            # Subscribe only once every connection is open: a server busy sending to
            # the first subscribers would otherwise slow the later handshakes down.
            await all_connected.wait()
            if sub.error is None:
                await sub.subscribe()
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
            window = await receive_from(pipe)
        except EOFError:
            window = None
        if not isinstance(window, Window):  # the parent gave up
            nursery.cancel_scope.cancel()
            return None
        recorder.start_ns, recorder.end_ns = int(window.start * 1e9), int(window.end * 1e9)
        await trio.sleep_until(trio_deadline(window.start))
        cpu0, wall0 = time.process_time(), time.time()
        for sub in subscribers:
            sub.mark()
        throughput: list[int] = []  # messages received so far, every THROUGHPUT_STEP_S
        step = 1
        while (at := window.start + step * THROUGHPUT_STEP_S) <= window.end + 1e-6:
            await trio.sleep_until(trio_deadline(at))
            throughput.append(sum(s.reader.messages for s in subscribers))
            step += 1
        await trio.sleep_until(trio_deadline(window.end))
        cpu1, wall1 = time.process_time(), time.time()
        for sub in subscribers:
            sub.mark()
        # Stay connected until the parent has read /metrics, so that the closing
        # handshakes are not counted in the window.
        with trio.move_on_after(METRICS_TIMEOUT_S + 1), suppress(EOFError):
            await receive_from(pipe)
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
        histograms={stamp: h.encode() for stamp, h in recorder.histograms.items()},
        checks=dict(sum((s.checker.counts for s in subscribers if s.checker is not None),
                        Counter())),
        checked_connections=sum(s.checker is not None and s.error is None
                                for s in subscribers),
        sampled_bytes=(recorder.wire_bytes, recorder.plain_bytes),
        throughput=_rates([sum(s.marks[0][0] for s in subscribers if s.marks), *throughput]),
        decode_errors=recorder.decode_errors)


def _rates(counts: list[int]) -> tuple[float, ...]:
    """Messages per second in each whole step between successive counts (a window that
    is not a whole number of steps leaves its last fraction out)."""
    return tuple((b - a) / THROUGHPUT_STEP_S for a, b in zip(counts, counts[1:], strict=False))


def _percentile_ms(values: list[int], pct: float) -> float | None:
    return round(percentile(sorted(values), pct) / 1e6, 3) if values else None


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
