"""``tickwire serve --workers N``: processes sharing one port, serving one feed.

The in-process tests show the lockstep: two servers fed the same source from the same
instant release the same events with the same stamps. The process tests start the real
command on a free loopback port and stop everything they start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from clients.client import Connection, Endpoint, connect
from feed.config import Config
from feed.events import BookDelta, BookSnapshot, Event, Trade
from feed.ingest import ReplaySource, Source, SyntheticSource, run_ingester
from feed.server import Server
from feed.workers import addresses_of, listen, reserve
from tests.helpers import children, read_until_closed, socket_owner
from tests.test_ingest import T0, write_ticks

BASE_NS = 1_800_000_000_000_000_000


# -- lockstep, in one process on trio's virtual clock ----------------------------------


async def fed(source: Source, start_ns: int, until: float,
              applied: list[tuple[float, int, Event]], delay: float = 0.0) -> None:
    """Into ``applied``: (trio time, ts_recv, event) of what a server applies when its
    ingester, started after ``delay``, starts its feed at ``start_ns`` (wall clock), up
    to ``until`` (trio time)."""
    await trio.sleep(delay)
    server = Server(Config(), clock=lambda: BASE_NS + int(trio.current_time() * 1e9))
    apply = server.hub.apply

    def record(event: Event, ts_recv: int) -> None:
        applied.append((trio.current_time(), ts_recv, event))
        apply(event, ts_recv)

    server.hub.apply = record  # type: ignore[method-assign]
    with trio.move_on_at(until):
        await run_ingester(server, source, start_ns)


async def test_servers_started_at_one_instant_release_one_stream(
        autojump_clock: trio.testing.MockClock) -> None:
    start_ns = BASE_NS + 300_000_000  # 0.3 s from now on both servers' clocks
    first: list[tuple[float, int, Event]] = []
    second: list[tuple[float, int, Event]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fed, SyntheticSource(rate=500, symbols=3, seed=7), start_ns, 1.3,
                           first)
        # The second server starts later.
        nursery.start_soon(fed, SyntheticSource(rate=500, symbols=3, seed=7), start_ns, 1.3,
                           second, 0.1)
    assert len(first) > 400
    assert [(ts, event) for _, ts, event in first] == [(ts, event) for _, ts, event in second]
    # Released at their stamps, from the start instant on.
    assert first[0][0] == pytest.approx(0.3) and first[0][1] == start_ns
    assert all(at == pytest.approx((ts - BASE_NS) / 1e9, abs=1e-6) for at, ts, _ in first)


class LoopedRecording:
    """A replay held in memory (ReplaySource reads its files in a thread, and the
    virtual clock would jump to the end of the test meanwhile): 20 ms of events."""

    name = "a recording"
    origin = "test"
    speed = 1.0
    loop = True

    def __init__(self) -> None:
        self.recording: list[Event] = [BookSnapshot("BTC", (("100", "1"),), (("101", "1"),),
                                                    T0, T0, seq=1000)]
        for i in range(20):
            ts = T0 + (i + 1) * 1_000_000
            self.recording += [BookDelta("BTC", (("100", str(i + 2)),), (), ts, ts,
                                         seq=1001 + i),
                               Trade("BTC", i, "101", "0.5", "buy", ts, ts)]

    def symbols(self) -> list[str]:
        return ["BTC"]

    async def prepare(self) -> None:
        await trio.lowlevel.checkpoint()

    def events(self, start_ns: int) -> Iterator[tuple[int, Event]]:
        return ((event.ts_recv, event) for event in self.recording)

    def blocks(self) -> None:
        return None

    def problems(self) -> list[str]:
        return []

    def close(self) -> None:
        return


async def test_a_looped_replay_stays_in_lockstep_across_passes(
        autojump_clock: trio.testing.MockClock) -> None:
    def source() -> LoopedRecording:
        return LoopedRecording()

    start_ns = BASE_NS + 50_000_000
    first: list[tuple[float, int, Event]] = []
    second: list[tuple[float, int, Event]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fed, source(), start_ns, 0.5, first)
        nursery.start_soon(fed, source(), start_ns, 0.5, second, 0.02)
    assert len(first) > 4 * 41  # several passes
    assert [(ts, event) for _, ts, event in first] == [(ts, event) for _, ts, event in second]
    stamps = [ts for _, ts, _ in first]
    assert stamps == sorted(stamps)
    # Each pass starts where the one before was scheduled to end.
    assert stamps[41] == stamps[40] == start_ns + 20_000_000


async def test_a_replay_read_up_to_its_start_is_not_read_again(tmp_path: Path) -> None:
    """A worker prepares its replay before the common start; the first pass then
    begins from what it prepared."""
    path = tmp_path / "a.ticks"
    write_ticks(path)
    source = ReplaySource([path], speed=1.0, loop=True)
    await source.prepare()
    stream = source._stream
    await source.prepare()
    assert source._stream is stream
    assert len(list(source.events(0))) == 41
    await source.prepare()  # the next pass: read again
    assert source._stream is not stream and len(list(source.events(0))) == 41


# -- the shared port -------------------------------------------------------------------


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
async def test_every_address_of_the_host_gets_the_one_port(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that resolves to several addresses: each is reserved, and listened on by
    every worker, on the port picked for the first."""
    def two_addresses(host: str, port: int, **kwargs: Any) -> list[tuple[Any, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0))]

    with monkeypatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", two_addresses)
        reserved = reserve("localhost", 0)
    try:
        addresses = addresses_of(reserved)
        assert [a.sockaddr[:2] for a in addresses] == [("127.0.0.1", addresses[0].sockaddr[1]),
                                                        ("::1", addresses[0].sockaddr[1])]
        first, second = listen(addresses), listen(addresses)  # two workers
        try:
            for host, _ in (a.sockaddr[:2] for a in addresses):
                stream = await trio.open_tcp_stream(host, addresses[0].sockaddr[1])
                await stream.aclose()
        finally:
            for listener in first + second:
                await listener.aclose()
    finally:
        for sock in reserved:
            sock.close()


# -- the command ------------------------------------------------------------------------


@dataclass
class Served:
    process: trio.Process
    url: str
    stderr: bytearray = field(default_factory=bytearray)

    @property
    def port(self) -> int:
        return Endpoint.parse(self.url).port

    def workers(self) -> list[int]:
        """The worker processes' ids (not multiprocessing's resource tracker)."""
        found = []
        for pid in children(self.process.pid):
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"spawn_main" in cmdline.read():
                    found.append(pid)
        return found


@asynccontextmanager
async def tickwire(*args: str) -> AsyncIterator[Served]:
    """Run ``python -m feed serve ARGS --port 0``, its stderr kept; stopped however the
    block ends (SIGKILL for the parent and its children)."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "feed", "serve", *args, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    started = children(process.pid)
    try:
        async with trio.open_nursery() as nursery:
            served = Served(process, "")

            async def keep_stderr() -> None:
                assert process.stderr is not None
                while data := await process.stderr.receive_some(65536):
                    served.stderr += data

            nursery.start_soon(keep_stderr)
            line = b""
            with trio.fail_after(20):
                while not line.endswith(b"\n"):
                    chunk = await process.stdout.receive_some(1)
                    assert chunk, f"exited before listening: {served.stderr.decode()}"
                    line += chunk
            served.url = line.decode().strip().removeprefix("listening on ")
            started = children(process.pid)
            yield served
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        for pid in started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        with trio.move_on_after(5):
            await process.wait()


class Client:
    """A reference-client connection that knows which server process accepted it."""

    def __init__(self, conn: Connection, port: int) -> None:
        self.conn = conn
        self.port = port  # its own local port
        self.pid: int | None = None
        self.messages: list[dict[str, Any]] = []


async def open_client(stack: AsyncExitStack, served: Served) -> Client:
    streams: list[trio.SocketStream] = []

    async def opener(endpoint: Endpoint) -> trio.SocketStream:
        streams.append(await trio.open_tcp_stream(endpoint.host, endpoint.port))
        return streams[0]

    conn = await stack.enter_async_context(connect(served.url, open_stream=opener))
    client = Client(conn, streams[0].socket.getsockname()[1])
    client.pid = socket_owner(served.port, client.port, served.workers())
    return client


async def healthz(port: int) -> dict[str, Any]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    health: dict[str, Any] = orjson.loads(data.partition(b"\r\n\r\n")[2])
    return health


async def collect(client: Client, count: int) -> None:
    """Read ``client``'s messages until it has ``count`` trades."""
    while sum(m["type"] == "trade" for m in client.messages) < count:
        client.messages.append(await client.conn.receive())


async def subscribe(client: Client, symbol: str) -> None:
    await client.conn.subscribe("trades", [symbol])
    await client.conn.subscribe("book", [symbol], depth=10)


def by_seq(client: Client, kind: str, *fields: str) -> dict[int, tuple[Any, ...]]:
    return {m["seq"]: tuple(m[f] for f in fields) for m in client.messages
            if m["type"] in kind.split("|")}


def checksum_at(book: dict[int, tuple[Any, ...]], seq: int) -> int:
    """The checksum of the book as it stood at ``seq``: that of the last message up to it."""
    return int(book[max(s for s in book if s <= seq)][0])


async def test_two_workers_serve_one_feed_and_stop_together() -> None:
    async with tickwire("--synthetic", "200", "--symbols", "2", "--workers", "2") as served, \
            AsyncExitStack() as stack:
        workers = served.workers()
        assert len(workers) == 2
        with trio.fail_after(10):
            seen: set[int] = set()
            while len(seen) < 2:
                health = await healthz(served.port)
                assert health["workers"] == 2 and health["status"] == "ok"
                seen.add(health["worker"])
            assert seen == {0, 1}
            clients = [await open_client(stack, served) for _ in range(16)]
        assert {c.pid for c in clients} == set(workers)  # both served some
        a = next(c for c in clients if c.pid == workers[0])
        b = next(c for c in clients if c.pid == workers[1])
        for client in (a, b):
            await subscribe(client, "SYN-BTC")
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, a, 12)
                nursery.start_soon(collect, b, 12)

        # The same trades, stamped alike: one feed in lockstep.
        fields = ("trade_id", "price", "size", "side", "ts_event", "ts_recv")
        trades_a, trades_b = by_seq(a, "trade", *fields), by_seq(b, "trade", *fields)
        common = trades_a.keys() & trades_b.keys()
        assert len(common) >= 8
        assert {s: trades_a[s] for s in common} == {s: trades_b[s] for s in common}
        # The same book versions.
        kinds = "book_snapshot|book_update"
        book_a = by_seq(a, kinds, "checksum", "ts_recv")
        book_b = by_seq(b, kinds, "checksum", "ts_recv")
        common = book_a.keys() & book_b.keys()
        assert len(common) >= 20
        assert {s: book_a[s] for s in common} == {s: book_b[s] for s in common}

        # A client that reconnects and lands on the other worker finds the same numbering.
        hopper = await open_client(stack, served)
        await hopper.conn.subscribe("book", ["SYN-BTC"], depth=10)
        with trio.fail_after(10):
            while len(hopper.messages) < 5:
                hopper.messages.append(await hopper.conn.receive())
            await hopper.conn.aclose()
            while (again := await open_client(stack, served)).pid == hopper.pid:
                await again.conn.aclose()
            await again.conn.subscribe("book", ["SYN-BTC"], depth=10)
            while len(again.messages) < 5:
                again.messages.append(await again.conn.receive())
            before, after = by_seq(hopper, kinds, "checksum"), by_seq(again, kinds, "checksum")
            # What the first worker sent meanwhile, read up to there.
            first = a if a.pid == hopper.pid else b
            while max(by_seq(first, kinds)) < max(after):
                first.messages.append(await first.conn.receive())
        assert again.pid != hopper.pid and min(after) >= max(before)
        reference = by_seq(first, kinds, "checksum")
        for seq, (checksum,) in (before | after).items():
            assert checksum_at(reference, seq) == checksum

        # SIGTERM to the parent: every client of every worker gets notice and 1001.
        everyone = [c for c in clients if c is not a and c is not b] + [a, b, again]
        pidfds = [os.pidfd_open(pid) for pid in children(served.process.pid)]
        served.process.send_signal(signal.SIGTERM)
        endings: list[tuple[list[dict[str, Any]], int]] = []

        async def read_to_end(client: Client) -> None:
            endings.append(await read_until_closed(client.conn))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for client in everyone:
                    nursery.start_soon(read_to_end, client)
            assert await served.process.wait() == 0
            for pidfd in pidfds:  # readable once the process has ended
                await trio.lowlevel.wait_readable(pidfd)
                os.close(pidfd)
        assert len(endings) == len(everyone)
        for received, code in endings:
            assert code == 1001
            assert [m["code"] for m in received if m["type"] == "notice"] == ["shutdown"]
        for pid in workers:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


async def test_a_worker_that_dies_stops_the_others_and_the_parent_exits_1() -> None:
    async with tickwire("--synthetic", "200", "--symbols", "2", "--workers", "2") as served, \
            AsyncExitStack() as stack:
        victim, survivor = served.workers()
        with trio.fail_after(10):
            while (client := await open_client(stack, served)).pid != survivor:
                await client.conn.aclose()
        pidfd = os.pidfd_open(survivor)
        os.kill(victim, signal.SIGKILL)
        with trio.fail_after(10):
            received, code = await read_until_closed(client.conn)
            assert await served.process.wait() == 1
            await trio.lowlevel.wait_readable(pidfd)
            os.close(pidfd)
        assert code == 1001 and [m["code"] for m in received
                                 if m["type"] == "notice"] == ["shutdown"]
        assert f"(pid {victim}) was killed by SIGKILL".encode() in served.stderr


async def test_workers_outlive_no_parent_killed_with_sigkill() -> None:
    async with tickwire("--synthetic", "200", "--symbols", "2", "--workers", "2") as served, \
            AsyncExitStack() as stack:
        client = await open_client(stack, served)
        pidfds = [os.pidfd_open(pid) for pid in served.workers()]
        served.process.kill()
        with trio.fail_after(10):
            received, code = await read_until_closed(client.conn)
            for pidfd in pidfds:
                await trio.lowlevel.wait_readable(pidfd)
                os.close(pidfd)
        assert code == 1001 and [m["code"] for m in received
                                 if m["type"] == "notice"] == ["shutdown"]


@pytest.mark.parametrize("count", ["0", "65", "two"])
async def test_a_bad_worker_count_is_refused_naming_the_setting(count: str) -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "feed", "serve", "--workers", count, "--port", "0"],
        capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 2 and result.stdout == b""
    assert (b"server.workers" if count.isdigit() else b"--workers") in result.stderr
