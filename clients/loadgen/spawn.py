"""A server started for the run: ``python -m feed serve --port 0 ARGS`` (tickwire), or
one of the peers in benchmarks/ (``SERVERS``), which take the same arguments.

Its URL is read from its ``listening on`` line, its output is kept in a ``ServerLog``
for the report, and it is stopped however the run ends: SIGTERM, then SIGKILL after
``SERVER_STOP_GRACE_S``.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from clients.loadgen.errors import LoadError

REPOSITORY = Path(__file__).resolve().parents[2]

SERVERS: dict[str, tuple[str, ...]] = {
    "tickwire": ("-m", "feed", "serve"),
    "websockets": ("-m", "benchmarks.websockets_peer"),
    "node": ("-m", "benchmarks.node_peer"),
    "floor": ("-m", "benchmarks.floor"),
}
"""What ``--server NAME`` starts (with ``--port 0 ARGS``). The peers live in the
repository's benchmarks/ folder, so they are started from the repository."""
UNCHECKED = frozenset({"floor"})
"""Servers whose stream is not checked: the floor sends prebuilt frames, not a book."""
SERVER_START_TIMEOUT_S = 60.0
SERVER_STOP_GRACE_S = 5.0
"""Time a spawned server, or a finished worker, is given to exit before it is killed."""


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
def unwrapped() -> Iterator[None]:
    """Let a nursery's single error out of its exception group, as itself."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


@asynccontextmanager
async def spawn_server(args: str, log: ServerLog | None = None, server: str = "tickwire",
                       ) -> AsyncIterator[SpawnedServer]:
    """Run ``python -m feed serve --port 0 ARGS`` (or the peer ``server`` names) for the
    duration of the block; its output goes to ``log``. Raises ``LoadError`` if it does
    not print its ``listening on`` line in time. The server is stopped however the block
    ends."""
    if server not in SERVERS:
        raise LoadError(f"unknown server {server!r}; one of {', '.join(SERVERS)}")
    command = (sys.executable, *SERVERS[server], "--port", "0", *shlex.split(args))
    process = await trio.lowlevel.open_process(
        list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, cwd=REPOSITORY)
    log = log if log is not None else ServerLog()
    try:
        with unwrapped():
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
