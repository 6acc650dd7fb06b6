"""What the parent and each worker process send each other over their pipe.

The messages are frozen dataclasses, pickled by ``multiprocessing``::

    parent -> worker    WorkerPlan (the process's argument), Window, Finish
    worker -> parent    Ready, then WorkerResult; or WorkerFailed

Times that cross the pipe are wall clock (``time.time()``) seconds: each side turns
them into a deadline on its own trio clock with ``trio_deadline``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from multiprocessing.connection import Connection as PipeEnd

import trio

from clients.client import Endpoint


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
    check: bool = True
    """Whether the worker's first connection checks every message."""


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
    latency_p50_ms: float | None = None
    """Of this connection's samples of ``receive - ts_recv``."""
    latency_p99_ms: float | None = None


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
    histograms: dict[str, bytes]
    """HDR histograms of ``receive - ts_*`` by stamp (``clients.loadgen.latency``), encoded."""
    checks: dict[str, int]
    """What the checking connection counted (``clients.loadgen.check``), from subscribe on."""
    checked_connections: int
    sampled_bytes: tuple[int, int]
    """Payload bytes of the sampled frames: as received, and inflated."""
    throughput: tuple[float, ...]
    """Messages per second received by the worker's connections, in steps of
    ``THROUGHPUT_STEP_S`` from the window's start."""


@dataclass(frozen=True)
class WorkerFailed:
    """Worker to parent: it crashed (a traceback, for a person)."""

    worker: int
    error: str


def trio_deadline(wall: float) -> float:
    """The trio clock's reading at wall clock time ``wall``."""
    return trio.current_time() + (wall - time.time())


async def receive_from(pipe: PipeEnd) -> object:
    """The next object from a pipe, waiting without blocking trio (EOFError at end)."""
    await trio.lowlevel.wait_readable(pipe.fileno())
    return await trio.to_thread.run_sync(pipe.recv, abandon_on_cancel=True)
