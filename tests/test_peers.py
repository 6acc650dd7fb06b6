"""The benchmark peers (benchmarks/) as the bench runs them: a real process on a free
loopback port, driven by the reference client and read through /metrics."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import trio

from benchmarks.node_peer import ensure_installed
from clients.book import ClientBook
from clients.client import Connection, Endpoint, connect
from clients.loadgen.metrics import fetch_metrics
from clients.messages import BookSnapshot, BookUpdate, parse_message
from feed import protocol
from feed.synthetic import symbol_names
from tests.helpers import children, read_until_closed

SYMBOLS = list(symbol_names(3))
FEED = ("--synthetic", "2000", "--symbols", "3")
# Every field of tickwire's messages, in its order, from its own builders.
KEYS = {
    "book_snapshot": list(protocol.book_snapshot_message("S", 1, 10, [], [], 0, 0, 0, 0, "r")),
    "book_update": list(protocol.book_update_message("S", 2, 1, [], [], 0, 0, 0, 0)),
    "trade": list(protocol.trade_message("S", 1, 1, "1", "1", "buy", 0, 0, 0)),
}


@asynccontextmanager
async def peer(module: str, *args: str) -> AsyncIterator[tuple[trio.Process, str]]:
    """Run ``python -m benchmarks.MODULE --port 0 ARGS``; yield the process and the URL
    from its ``listening on`` line. The process is killed and reaped however this ends."""
    command = [sys.executable, "-m", f"benchmarks.{module}", "--port", "0", *args]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE,
                                               stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        received = b""
        with trio.fail_after(10):
            while b"\n" not in received:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, f"{module} exited before listening"
                received += chunk
        line = received.decode().splitlines()[0]
        assert line.startswith("listening on ws://127.0.0.1:") and line.endswith("/v1/stream")
        yield process, line.removeprefix("listening on ")
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


async def reply(conn: Connection, request_id: int | str) -> dict[str, Any]:
    """The reply to one request (data messages before it are skipped)."""
    with trio.fail_after(5):
        while True:
            message = await conn.receive()
            if message.get("id") == request_id:
                return message


async def list_and_subscribe(conn: Connection, channel: str, depth: int | None = None
                             ) -> None:
    """``list`` then ``subscribe`` to every symbol; both replies are tickwire's, exactly."""
    request_id = await conn.list()
    assert await reply(conn, request_id) == protocol.symbols_message(request_id, SYMBOLS)
    request: dict[str, Any] = {"op": "subscribe", "channel": channel, "symbols": SYMBOLS}
    if depth is not None:
        request["depth"] = depth
    request_id = await conn.send_request(request)
    expected = protocol.parse_request(orjson.dumps({**request, "id": request_id}))
    assert isinstance(expected, protocol.Subscribe)
    assert await reply(conn, request_id) == protocol.subscribed_message(expected)


def check_times(message: dict[str, Any]) -> None:
    """``ts_recv <= ts_send <= now`` (all wall clock, ns)."""
    assert message["ts_event"] == message["ts_recv"] <= message["ts_send"] <= time.time_ns()


async def metrics(url: str) -> tuple[float, float]:
    """(``process_cpu_seconds_total``, ``tickwire_messages_sent_total``) from /metrics."""
    endpoint = Endpoint.parse(url)
    series = await fetch_metrics(endpoint.host, endpoint.port)
    return series["process_cpu_seconds_total"], series["tickwire_messages_sent_total"]


async def stop(process: trio.Process, conn: Connection) -> int:
    """SIGTERM; the connection ends and the process exits 0 within a few seconds.
    Returns the connection's close code."""
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(5):
        _, code = await read_until_closed(conn)
        assert await process.wait() == 0
    return code


async def test_websockets_peer_serves_verifiable_books_and_trades() -> None:
    async with peer("websockets_peer", *FEED) as (process, url), connect(url) as conn:
        assert conn.compressed  # the library's default
        before = await metrics(url)
        await list_and_subscribe(conn, "trades")  # trades before the reply are skipped
        await list_and_subscribe(conn, "book", depth=10)
        books = {symbol: ClientBook(symbol) for symbol in SYMBOLS}
        trade_seqs: dict[str, int] = {}
        counts = {"book_snapshot": 0, "book_update": 0, "trade": 0}
        with trio.fail_after(10):
            while counts["book_update"] < 200 or counts["trade"] < 5:
                message = await conn.receive()
                kind = message["type"]
                assert list(message) == KEYS[kind]
                check_times(message)
                counts[kind] += 1
                parsed = parse_message(message)
                if isinstance(parsed, BookSnapshot):
                    assert parsed.reason == "subscribe" and parsed.depth == 10
                    books[parsed.symbol].apply_snapshot(parsed)  # checks the checksum
                elif isinstance(parsed, BookUpdate):
                    books[parsed.symbol].apply_update(parsed)  # checks prev_seq, checksum
                else:
                    symbol = message["symbol"]
                    if symbol in trade_seqs:
                        assert message["seq"] == trade_seqs[symbol] + 1
                    trade_seqs[symbol] = message["seq"]
        assert counts["book_snapshot"] == len(SYMBOLS)
        after = await metrics(url)
        assert after[0] >= before[0] > 0 and after[1] > before[1] + 200
        assert await stop(process, conn) == 1001


async def test_websockets_peer_compression_can_be_turned_off() -> None:
    async with peer("websockets_peer", *FEED, "--no-compression") as (process, url):
        async with connect(url) as conn:
            assert not conn.compressed
            await list_and_subscribe(conn, "book", depth=10)
            with trio.fail_after(5):
                assert (await conn.receive())["type"] == "book_snapshot"
            assert await stop(process, conn) == 1001


async def test_floor_sends_chained_book_updates() -> None:
    async with peer("floor", *FEED) as (process, url), connect(url) as conn:
        before = await metrics(url)
        await list_and_subscribe(conn, "book", depth=10)
        seqs: dict[str, int] = {}
        with trio.fail_after(10):
            for _ in range(200):
                message = await conn.receive()
                assert list(message) == KEYS["book_update"]
                assert len(message["bids"]) == len(message["asks"]) == 1
                check_times(message)
                symbol = message["symbol"]
                if symbol in seqs:
                    assert message["prev_seq"] == seqs[symbol]
                assert message["seq"] == message["prev_seq"] + 1
                seqs[symbol] = message["seq"]
        assert sorted(seqs) == sorted(SYMBOLS)
        after = await metrics(url)
        assert after[0] >= before[0] > 0 and after[1] > before[1] + 200
        await stop(process, conn)


@pytest.mark.parametrize("module", ["websockets_peer", "floor"])
async def test_peers_listen_on_loopback_only(module: str) -> None:
    result = await trio.run_process(
        [sys.executable, "-m", f"benchmarks.{module}", "--host", "0.0.0.0", *FEED],
        capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 2 and b"loopback" in result.stderr


# -- the Node ws peer: a Python launcher and a Node child -----------------------------

needs_node = pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None,
                                reason="the Node ws peer needs node and npm on PATH")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def node_peer(*args: str) -> AsyncIterator[tuple[trio.Process, str, int, int]]:
    """``peer("node_peer", ARGS)``, with ws installed first (a fresh clone's ``npm ci`` is
    not part of the wait for the listening line); also yields the Node child's pid and a
    pidfd for it, which is readable once it has exited. Node is killed however this ends."""
    await trio.to_thread.run_sync(ensure_installed)
    async with peer("node_peer", *args) as (process, url):
        [node] = children(process.pid)
        pidfd = os.pidfd_open(node)
        try:
            yield process, url, node, pidfd
        finally:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.close(pidfd)


async def wait_exited(pidfd: int) -> None:
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(pidfd)


async def receive_books_and_trades(conn: Connection, updates: int) -> dict[str, int]:
    """Read until ``updates`` book updates and a few trades have come, checking every
    message: tickwire's fields in its order, the times, ``ts_recv`` in release order,
    each book's snapshot, ``prev_seq`` chain and checksums (``ClientBook``) and each
    symbol's trade ``seq``. Returns the count of each message type."""
    books = {symbol: ClientBook(symbol) for symbol in SYMBOLS}
    trade_seqs: dict[str, int] = {}
    counts = {"book_snapshot": 0, "book_update": 0, "trade": 0}
    last_ts_recv = 0
    with trio.fail_after(10):
        while counts["book_update"] < updates or counts["trade"] < 5:
            message = await conn.receive()
            assert list(message) == KEYS[message["type"]]
            check_times(message)
            counts[message["type"]] += 1
            parsed = parse_message(message)
            if isinstance(parsed, BookSnapshot):
                assert parsed.reason == "subscribe" and parsed.depth == 10
                books[parsed.symbol].apply_snapshot(parsed)  # checks the checksum
                continue  # a snapshot is as old as its book's last change
            assert message["ts_recv"] >= last_ts_recv
            last_ts_recv = message["ts_recv"]
            if isinstance(parsed, BookUpdate):
                books[parsed.symbol].apply_update(parsed)  # checks prev_seq, checksum
            else:
                symbol = message["symbol"]
                assert message["seq"] == trade_seqs.get(symbol, message["seq"] - 1) + 1
                trade_seqs[symbol] = message["seq"]
    return counts


@needs_node
@pytest.mark.parametrize("compression", [True, False])
async def test_node_peer_serves_verifiable_books_and_trades(compression: bool) -> None:
    flags = () if compression else ("--no-compression",)
    async with node_peer(*FEED, *flags) as (process, url, node, pidfd), connect(url) as conn:
        assert conn.compressed == compression  # on: perMessageDeflate, library defaults
        before = await metrics(url)
        await list_and_subscribe(conn, "trades")  # trades before the reply are skipped
        await list_and_subscribe(conn, "book", depth=10)
        counts = await receive_books_and_trades(conn, 200)
        assert counts["book_snapshot"] == len(SYMBOLS)
        own_cpu = cpu_seconds(process.pid) + cpu_seconds(node)
        endpoint = Endpoint.parse(url)
        series = await fetch_metrics(endpoint.host, endpoint.port)
        # Both processes' CPU: at least what /proc said of each just before.
        assert series["process_cpu_seconds_total"] >= own_cpu >= before[0] > 0
        assert series["tickwire_messages_sent_total"] > before[1] + 200
        assert series["tickwire_events_total"] > 200
        assert series["tickwire_open_connections"] == 1
        assert series["tickwire_lag_events_total"] == 0
        assert await stop(process, conn) == 1001
        await wait_exited(pidfd)  # the launcher waited for Node: it is gone already


@needs_node
async def test_node_peer_exits_when_node_dies() -> None:
    async with node_peer(*FEED) as (process, url, _, pidfd), connect(url) as conn:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        with trio.fail_after(5):
            _, code = await read_until_closed(conn)
            assert code == 1006 and await process.wait() == 1


@needs_node
async def test_node_exits_when_the_launcher_dies() -> None:
    async with node_peer(*FEED) as (process, url, _, pidfd), connect(url) as conn:
        process.kill()  # no chance to stop Node: it sees the end of its stdin
        await wait_exited(pidfd)
        with trio.fail_after(5):
            _, code = await read_until_closed(conn)
        assert code == 1001


async def test_node_peer_listens_on_loopback_only() -> None:
    result = await trio.run_process(
        [sys.executable, "-m", "benchmarks.node_peer", "--host", "::", *FEED],
        capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 2 and b"loopback" in result.stderr
