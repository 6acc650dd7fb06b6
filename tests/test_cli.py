"""The command line as a user runs it: a real process on a free loopback port."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from clients.book import ClientBook
from clients.client import connect
from clients.messages import BookSnapshot as BookSnapshotMessage
from clients.messages import BookUpdate as BookUpdateMessage
from clients.messages import Trade as TradeMessage
from clients.messages import parse_message
from tests.helpers import read_until_closed


@asynccontextmanager
async def tickwire(*args: str) -> AsyncIterator[tuple[trio.Process, str]]:
    """Run ``python -m feed ARGS``; yield the process and the URL it printed. The
    process is always stopped."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "feed", *args], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(10):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the server exited before listening"
                line += chunk
        text = line.decode().strip()
        assert text.startswith("listening on ws://127.0.0.1:") and text.endswith("/v1/stream")
        yield process, text.removeprefix("listening on ")
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5):
            await process.wait()


async def test_default_serves_a_live_book_and_stops_cleanly_on_sigterm() -> None:
    async with tickwire("serve", "--port", "0") as (process, url):
        async with connect(url) as conn:
            await conn.subscribe("book", ["BTCUSDT"], depth=5)
            assert (await conn.receive())["type"] == "subscribed"
            with trio.fail_after(1):
                snapshot = await conn.receive()
            assert snapshot["type"] == "book_snapshot" and len(snapshot["bids"]) == 5
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(2):
                received, code = await read_until_closed(conn)
                assert await process.wait() == 0
            notices = [m for m in received if m["type"] == "notice"]
            assert code == 1001 and notices == [{
                "type": "notice", "code": "shutdown",
                "message": "the server is stopping; reconnect elsewhere or later"}]


async def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process([sys.executable, "-m", "feed", *args], capture_stdout=True,
                                  capture_stderr=True, check=False)


async def test_bad_settings_are_refused_at_start_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[client]\nmax_queued_bytez = 5\n")
    result = await run("serve", "--config", str(config), "--port", "0")
    assert result.returncode == 2 and b"client.max_queued_bytez" in result.stderr
    result = await run("serve", "--speed", "fast", "--port", "0")
    assert result.returncode == 2 and b"feed.speed" in result.stderr
    result = await run("serve", str(tmp_path / "missing.ticks"), "--port", "0")
    assert result.returncode == 2 and b"no such file" in result.stderr


async def test_echo_sends_messages_back() -> None:
    async with tickwire("echo", "--port", "0") as (process, url), connect(url) as conn:
        await conn.send_request({"op": "ping", "id": 42})
        assert await conn.receive() == {"op": "ping", "id": 42}
        process.send_signal(signal.SIGINT)
        with trio.fail_after(3):
            assert await process.wait() == 0


async def test_sigterm_in_the_middle_of_a_burst_gives_every_client_shutdown_and_1001(
) -> None:
    """A feed in full flow, four clients checking every book message and trade, two
    more that have read nothing since they subscribed (their data waits in the socket
    and the outbox): on SIGTERM each gets everything queued for it, unbroken, then the
    ``shutdown`` notice and close 1001, and the process exits 0."""
    async with tickwire("serve", "--port", "0", "--synthetic", "1000", "--symbols", "4") as (
            process, url):
        outcomes: dict[int, tuple[list[dict[str, Any]], int]] = {}
        subscribed = trio.Semaphore(0)
        flowing = trio.Semaphore(0)
        stop_reading = trio.Event()

        async def client(index: int, stalls: bool) -> None:
            async with connect(url) as conn:
                await conn.subscribe("book", SYMBOLS, depth=10)
                await conn.subscribe("trades", SYMBOLS)
                subscribed.release()
                received: list[dict[str, Any]] = []
                if stalls:
                    await stop_reading.wait()  # SIGTERM comes while it reads nothing
                else:
                    while len(received) < 500:  # the burst is under way
                        received.append(await conn.receive())
                    flowing.release()
                rest, code = await read_until_closed(conn)
                outcomes[index] = received + rest, code

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(client, i, i >= 4)
            with trio.fail_after(10):
                for _ in range(6):
                    await subscribed.acquire()
                for _ in range(4):
                    await flowing.acquire()
            process.send_signal(signal.SIGTERM)
            stop_reading.set()
            with trio.fail_after(5):
                assert await process.wait() == 0
        for index, (received, code) in sorted(outcomes.items()):
            assert code == 1001, index
            assert received[-1] == {"type": "notice", "code": "shutdown", "message":
                                    "the server is stopping; reconnect elsewhere or later"}
            follow_all(received)  # every book chain and checksum, every trade seq


SYMBOLS = ["SYN-BTC", "SYN-ETH", "SYN-SOL", "SYN-XRP"]


def follow_all(received: list[dict[str, Any]]) -> None:
    """Check a client's whole stream: book chains and checksums, trades one by one."""
    books: dict[str, ClientBook] = {}
    trades: dict[str, int] = {}
    for message in received:
        parsed = parse_message(message)
        if isinstance(parsed, BookSnapshotMessage):
            books.setdefault(parsed.symbol, ClientBook(parsed.symbol, 10)).apply_snapshot(
                parsed)
        elif isinstance(parsed, BookUpdateMessage):
            books[parsed.symbol].apply_update(parsed)
        elif isinstance(parsed, TradeMessage):
            if parsed.symbol in trades:
                assert parsed.seq == trades[parsed.symbol] + 1
            trades[parsed.symbol] = parsed.seq
    assert set(books) == set(SYMBOLS)
