"""Feed faults: a source that stalls, loses the book, sends garbage or dies.

Clients are the reference client over memory streams, through the server's own
handshake and connection code, and time is trio's virtual clock: a stall of half a
minute takes no real time, and /healthz is read at exact instants of it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from feed.config import Config
from feed.events import BookDelta, BookSnapshot, Event, Gap, Trade
from feed.ingest import RETRY_FIRST_S, ReplaySource, run_ingester
from feed.server import Server
from replay.tickfile import TickWriter
from tests.helpers import Inbox, NaiveBook, follow, memory_client, memory_http_get

T0 = 1_700_000_000_000_000_000
BIDS = (("100", "1"), ("99", "2"), ("98", "3"))
ASKS = (("101", "1"), ("102", "2"), ("103", "3"))
Script = Sequence[tuple[float, Event | Exception]]


def snapshot(seq: int) -> BookSnapshot:
    return BookSnapshot("BTC", BIDS, ASKS, T0, T0, seq=seq)


def delta(seq: int, size: str) -> BookDelta:
    return BookDelta("BTC", (("100", size),), (("101.5", size),), T0, T0, seq=seq)


def trade(trade_id: int) -> Trade:
    return Trade("BTC", trade_id, "101", "0.5", "buy", T0, T0)


class ScriptedSource:
    """A source whose passes play scripts of (offset in seconds, event) at real time
    (on the virtual clock); an exception in a script is raised there. ``prepare``
    raises ``prepare_errors[n]`` on its n-th call (that pass plays no script). Past
    the last script it plays the last again."""

    origin = "test"
    speed = 1.0

    def __init__(self, passes: Sequence[Script], *, loop: bool,
                 prepare_errors: dict[int, Exception] | None = None) -> None:
        self.name = "scripted"
        self.loop = loop
        self.passes = passes
        self.prepare_errors = prepare_errors or {}
        self.prepared = 0
        self.played = 0

    def symbols(self) -> list[str]:
        return ["BTC"]

    async def prepare(self) -> None:
        self.prepared += 1
        error = self.prepare_errors.get(self.prepared)
        if error is not None:
            raise error

    def events(self, start_ns: int) -> Iterator[tuple[int, Event]]:
        script = self.passes[min(self.played, len(self.passes) - 1)]
        self.played += 1
        for offset, item in script:
            if isinstance(item, Exception):
                raise item
            yield start_ns + round(offset * 1e9), item

    def blocks(self) -> None:
        return None

    def problems(self) -> list[str]:
        return []

    def close(self) -> None:
        return


def virtual_server(**overrides: Any) -> Server:
    """A server stamping with trio's (virtual) clock; serves only memory streams."""
    config = Config().with_overrides({"server.port": 0, **overrides})
    server = Server(config, clock=lambda: T0 + round(trio.current_time() * 1e9))
    server.hub.add_symbol("BTC")  # (the ingester adds it too) subscribers come first
    return server


async def subscribed_client(server: Server, nursery: trio.Nursery,
                            channels: Sequence[str]) -> Inbox:
    """Connect, subscribe to BTC on ``channels`` (answers read), then read in the
    background."""
    conn = await nursery.start(_connected, server)
    for channel in channels:
        await conn.subscribe(channel, ["BTC"])
        assert (await conn.receive())["type"] == "subscribed"
    inbox = Inbox(conn)
    nursery.start_soon(inbox.run)
    return inbox


async def _connected(server: Server, task_status: trio.TaskStatus[Any]) -> None:
    async with memory_client(server) as conn:
        task_status.started(conn)
        await trio.sleep_forever()


async def health_at(server: Server, when: float) -> tuple[int, dict[str, Any]]:
    """/healthz at virtual time ``when``."""
    await trio.sleep_until(when)
    status, body = await memory_http_get(server, "/healthz")
    return status, orjson.loads(body)


def book_story(inbox: Inbox) -> list[tuple[str, object]]:
    """The book messages and notices, each as (type, seq or reason or code)."""
    story: list[tuple[str, object]] = []
    for m in inbox.of_type("book_snapshot", "book_update", "notice"):
        if m["type"] == "book_snapshot":
            story.append(("book_snapshot", (m["seq"], m["reason"])))
        elif m["type"] == "book_update":
            story.append(("book_update", (m["prev_seq"], m["seq"])))
        else:
            story.append(("notice", m["code"]))
    return story


def stamp(when: float) -> int:
    return T0 + round(when * 1e9)


async def test_a_stalled_feed_keeps_heartbeats_with_unchanged_seqs_and_healthz_goes_stale(
        autojump_clock: trio.testing.MockClock) -> None:
    server = virtual_server(**{"feed.stale_after_ms": 5000})
    source = ScriptedSource([[(0.0, snapshot(100)), (0.01, delta(101, "5")), (0.02, trade(1)),
                              (0.03, delta(102, "6")), (30.5, delta(103, "7")),
                              (30.6, trade(2)), (3600.0, trade(3))]], loop=False)
    async with trio.open_nursery() as nursery:
        inbox = await subscribed_client(server, nursery, ["book", "trades"])
        start = trio.current_time()
        assert server.health()["feed_silent_s"] is None  # no feed yet: nothing to judge
        nursery.start_soon(run_ingester, server, source)
        last = start + 0.03  # the last release before the stall
        with trio.fail_after(10):
            await inbox.wait_for(lambda m: m.get("seq") == 102)
        status, health = await health_at(server, last + 4.999)
        assert (status, health["status"], health["feed"]) == (200, "ok", "running")
        assert health["feed_silent_s"] == 4.999
        status, health = await health_at(server, last + 5)
        assert (status, health["status"], health["feed"]) == (503, "stale", "running")
        assert health["feed_silent_s"] == 5.0 and health["feed_failures"] == 0
        status, health = await health_at(server, last + 30)
        assert (status, health["status"], health["feed_silent_s"]) == (503, "stale", 30.0)
        _, metrics = await memory_http_get(server, "/metrics")
        assert b"tickwire_feed_silent_seconds 30.0" in metrics
        with trio.fail_after(10):
            await inbox.wait_for(lambda m: m.get("seq") == 103)
        assert trio.current_time() == start + 30.5
        status, health = await health_at(server, start + 30.5)
        assert (status, health["status"], health["feed_silent_s"]) == (200, "ok", 0.0)
        with trio.fail_after(10):
            await inbox.wait_for(lambda m: m["type"] == "trade" and m["seq"] == 2)
        nursery.cancel_scope.cancel()
    during = [m for m in inbox.of_type("heartbeat")
              if stamp(last) < m["ts"] < stamp(start + 30.5)]
    assert len(during) >= 28  # one per idle second (heartbeat_ms) through 30 s of silence
    assert all(m["seqs"] == {"book:BTC": 102, "trades:BTC": 1} for m in during)
    times = [stamp(last)] + [m["ts"] for m in during] + [stamp(start + 30.5)]
    # (a WebSocket ping the server sends to a quiet client is traffic too: the next
    # heartbeat comes a second after it)
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) < 2_000_000_000
    assert book_story(inbox) == [("book_snapshot", (100, "subscribe")),
                                 ("book_update", (100, 101)), ("book_update", (101, 102)),
                                 ("book_update", (102, 103))]
    assert follow(inbox.messages).seq == 103  # every checksum verified


async def test_a_feed_that_resumes_after_a_gap_restarts_books_from_a_snapshot(
        autojump_clock: trio.testing.MockClock) -> None:
    server = virtual_server()
    source = ScriptedSource([[
        (0.0, snapshot(100)), (0.01, delta(101, "5")), (0.02, trade(1)),
        (1.0, Gap("BTC", T0, T0, "sequence break")),
        (2.0, delta(150, "9")),  # no book to apply it to: ignored
        (3.0, trade(2)),  # trades go on
        (12.0, BookSnapshot("BTC", (("200", "1"),), (("201", "4"),), T0, T0, seq=200)),
        (12.01, BookDelta("BTC", (("199", "2"),), (), T0, T0, seq=201)),
        (3600.0, trade(3))]], loop=False)
    async with trio.open_nursery() as nursery:
        inbox = await subscribed_client(server, nursery, ["book", "bbo", "trades"])
        nursery.start_soon(run_ingester, server, source)
        with trio.fail_after(60):
            await inbox.wait_for(lambda m: m.get("seq") == 201 and m["type"] == "book_update")
        nursery.cancel_scope.cancel()
    assert book_story(inbox) == [
        ("book_snapshot", (100, "subscribe")), ("book_update", (100, 101)),
        ("notice", "gap"),  # to the book subscription ...
        ("notice", "gap"),  # ... and to the bbo one
        ("book_snapshot", (200, "resync")), ("book_update", (200, 201))]
    book = follow(inbox.messages)  # raises on a break in the chain or a wrong checksum
    assert book.top(10) == ([("200", "1"), ("199", "2")], [("201", "4")])
    assert [(m["seq"], m["bid"], m["ask"]) for m in inbox.of_type("bbo")] == [
        (100, ["100", "1"], ["101", "1"]), (101, ["100", "5"], ["101", "1"]),
        (200, ["200", "1"], ["201", "4"])]
    assert [m["seq"] for m in inbox.of_type("trade")] == [1, 2]
    assert server.hub.stats.ignored_deltas == 1
    beats = [m for m in inbox.of_type("heartbeat") if stamp(1.0) < m["ts"] < stamp(12.0)]
    assert beats and all(m["seqs"] == {"book:BTC": 101, "bbo:BTC": 101, "trades:BTC": 2}
                         for m in beats if m["ts"] > stamp(3.0))


async def test_a_looping_source_that_fails_is_tried_again_after_a_growing_wait(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    server = virtual_server()
    source = ScriptedSource(
        [[(0.0, snapshot(100)), (0.01, delta(101, "5")), (0.02, trade(1)),
          (0.03, RuntimeError("disk on fire"))],
         [(0.0, snapshot(300)), (0.01, delta(301, "8")), (3600.0, trade(2))]],
        loop=True, prepare_errors={2: OSError("the file is gone")})
    async with trio.open_nursery() as nursery:
        inbox = await subscribed_client(server, nursery, ["book", "trades"])
        start = trio.current_time()
        nursery.start_soon(run_ingester, server, source)
        failed_at = start + 0.02  # right after the trade: the next step raises
        with trio.fail_after(10):
            await inbox.wait_for(lambda m: m.get("code") == "gap")
        assert trio.current_time() == failed_at
        status, health = await health_at(server, failed_at + 0.5)
        assert status == 503
        assert {k: health[k] for k in ("status", "feed", "feed_failures", "feed_error")} == {
            "status": "failed", "feed": "failed", "feed_failures": 1,
            "feed_error": "RuntimeError"}
        # Tried again after 1 s (fails at once in prepare), then after 2 s more.
        status, health = await health_at(server, failed_at + RETRY_FIRST_S + 0.5)
        assert (status, health["feed_failures"], health["feed_error"]) == (503, 2, "OSError")
        with trio.fail_after(10):
            resync = await inbox.wait_for(lambda m: m.get("reason") == "resync")
        assert resync["ts_recv"] == stamp(failed_at + 3 * RETRY_FIRST_S)
        status, health = await health_at(server, failed_at + 3.5)
        assert (status, health["status"], health["feed"], health["feed_failures"]) == (
            200, "ok", "running", 2)
        with trio.fail_after(10):
            await inbox.wait_for(lambda m: m.get("seq") == 301)
        _, metrics = await memory_http_get(server, "/metrics")
        assert b"tickwire_feed_failures_total 2.0" in metrics
        nursery.cancel_scope.cancel()
    assert book_story(inbox) == [
        ("book_snapshot", (100, "subscribe")), ("book_update", (100, 101)), ("notice", "gap"),
        ("book_snapshot", (300, "resync")), ("book_update", (300, 301))]
    assert follow(inbox.messages).seq == 301
    assert inbox.close_code is None and not inbox.of_type("error")
    beats = [m for m in inbox.of_type("heartbeat") if m["ts"] < resync["ts_recv"]]
    assert len(beats) >= 2 and all(m["seqs"] == {"book:BTC": 101, "trades:BTC": 1}
                                   for m in beats)
    logged = [type(r.exc_info[1]).__name__ for r in caplog.records
              if r.name == "tickwire.feed" and r.levelno == logging.ERROR and r.exc_info]
    assert logged == ["RuntimeError", "OSError"]


async def test_a_one_shot_source_that_dies_stays_failed_and_clients_stay_connected(
        autojump_clock: trio.testing.MockClock) -> None:
    server = virtual_server()
    source = ScriptedSource([[(0.0, snapshot(100)), (0.01, trade(1)),
                              (0.02, ValueError("bad event"))]], loop=False)
    done = trio.Event()

    async def ingest() -> None:
        await run_ingester(server, source)
        done.set()

    async with trio.open_nursery() as nursery:
        inbox = await subscribed_client(server, nursery, ["trades"])
        nursery.start_soon(ingest)
        with trio.fail_after(10):
            await done.wait()
        status, health = await health_at(server, trio.current_time() + 600)
        assert (status, health["status"], health["feed"], health["feed_error"]) == (
            503, "failed", "failed", "ValueError")
        assert source.prepared == 1  # not tried again
        await inbox.conn.ping()
        with trio.fail_after(10):
            await inbox.wait_for(lambda m: m["type"] == "pong")
        nursery.cancel_scope.cancel()
    assert not [m for m in inbox.of_type("notice") if m["code"] == "replay_end"]
    beats = inbox.of_type("heartbeat")
    assert len(beats) >= 590 and all(m["seqs"] == {"trades:BTC": 1} for m in beats)


async def test_garbage_lines_are_skipped_and_counted_and_books_stay_consistent(
        tmp_path: Path) -> None:
    events: list[Event] = [BookSnapshot("BTC", BIDS, ASKS, T0, T0, seq=1000)]
    for i in range(40):
        ts = T0 + (i + 1) * 1_000_000
        side = ((f"{95 + i % 7}", str(i % 4)),)  # sizes 0 remove levels
        events.append(BookDelta("BTC", side, ((f"{101 + i % 5}", str(1 + i % 3)),), ts, ts,
                                seq=1001 + i))
        events.append(Trade("BTC", i, "101", "0.5", "buy", ts, ts))
    clean = tmp_path / "clean.ticks"
    with TickWriter(clean, source="test", symbols=["BTC"]) as writer:
        for event in events:
            writer.write(event)
    lines = clean.read_bytes().splitlines(keepends=True)
    garbage = [b"{not json\n", b'{"t":"delta","s":"BTC"}\n', b"\x00\xff\xfe garbage\n",
               b'{"t":"trade","s":"BTC","te":1,"tr":1,"id":9,"p":"1e","z":"x","side":"buy"}\n']
    damaged = tmp_path / "damaged.ticks"
    damaged.write_bytes(b"".join(lines[:5] + garbage[:2] + lines[5:40] + garbage[2:]
                                 + lines[40:]))
    server = virtual_server()
    source = ReplaySource([damaged], speed=None, loop=False)
    async with trio.open_nursery() as nursery:
        inbox = await subscribed_client(server, nursery, ["book", "trades"])
        nursery.start_soon(run_ingester, server, source)
        with trio.fail_after(10):
            await inbox.wait_for(lambda m: m.get("code") == "replay_end")
        _, metrics = await memory_http_get(server, "/metrics")
        nursery.cancel_scope.cancel()
    assert b"tickwire_feed_bad_lines_total 4.0" in metrics
    assert [m["seq"] for m in inbox.of_type("trade")] == list(range(1, 41))
    model = NaiveBook()
    for event in events:
        if isinstance(event, BookSnapshot | BookDelta):
            model.apply(event.bids, event.asks)
    book = follow(inbox.messages)  # every update's chain and checksum verified
    assert book.top(10) == (model.sorted_bids()[:10], model.sorted_asks()[:10])
    assert book.seq == server.hub.book_of("BTC").seq == 1040
