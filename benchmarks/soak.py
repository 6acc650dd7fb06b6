"""Soak: a server under a churn of clients for a long time, watched for leaks and loss.

``python -m benchmarks.soak [--duration 600] [--clients 10] [--churn 20] [--stalled 5]
[--synthetic 1000] [--symbols 10] [--sample 10]``

It starts ``tickwire serve --synthetic RATE --symbols S --port 0`` and runs, for
``--duration`` seconds:

- ``--clients`` well-behaved clients, each subscribed to ``book`` (depth 10) and
  ``trades`` for every symbol, checking everything they receive: every book message
  continues its chain (``prev_seq``) and its checksum verifies (``clients.book``), every
  trade's seq is the previous one + 1. Anything else is counted as **lost**, which must
  stay 0;
- a churn of ``--churn`` connections a second that connect, subscribe to a few symbols,
  read for a random moment and leave, half of them with a closing handshake and half by
  dropping the TCP connection (some without even finishing their handshake);
- ``--stalled`` stalled readers at all times: they subscribe to everything and never
  read, so the server must snapshot and then drop them (4001); each dropped one is
  replaced.

Every ``--sample`` seconds it reads the server's RSS (``/proc/PID/status``) and its
``/metrics`` (open connections, trio tasks alive, lag events, closes) and prints a row.
At the end it prints a summary and exits 1 if a well-behaved client lost anything,
disconnected, or the server died. Loopback only; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from clients.book import ClientBook
from clients.client import connect
from clients.errors import ChainBreak, ChecksumMismatch, ConnectionClosed
from clients.loadgen.metrics import fetch_metrics, metric_by_label, metric_total
from clients.loadgen.spawn import spawn_server
from clients.messages import BookSnapshot, BookUpdate, Trade, parse_message
from feed.synthetic import symbol_names


@dataclass
class Tally:
    received: int = 0
    lost: int = 0
    broken: list[str] = field(default_factory=list)
    churned: int = 0
    stalled_dropped: int = 0
    good_disconnects: int = 0
    late_samples: int = 0


async def well_behaved(url: str, symbols: list[str], tally: Tally, index: int) -> None:
    """Subscribe to everything and check every message until cancelled."""
    books = {s: ClientBook(s, 10) for s in symbols}
    trade_seq: dict[str, int] = {}
    try:
        async with connect(url) as conn:
            await conn.subscribe("book", symbols, depth=10)
            await conn.subscribe("trades", symbols)
            async for message in conn:
                tally.received += 1
                parsed = parse_message(message)
                try:
                    if isinstance(parsed, BookSnapshot):
                        books[parsed.symbol].apply_snapshot(parsed)
                    elif isinstance(parsed, BookUpdate):
                        books[parsed.symbol].apply_update(parsed)
                    elif isinstance(parsed, Trade):
                        last = trade_seq.get(parsed.symbol)
                        if last is not None and parsed.seq != last + 1:
                            tally.lost += parsed.seq - last - 1
                            tally.broken.append(f"client {index}: trades {parsed.symbol} "
                                                f"seq {last} -> {parsed.seq}")
                        trade_seq[parsed.symbol] = parsed.seq
                except (ChainBreak, ChecksumMismatch) as exc:
                    tally.lost += 1
                    tally.broken.append(f"client {index}: {exc}")
                if message.get("type") == "notice" and message.get("code") == "lag":
                    tally.broken.append(f"client {index}: lagged: {message.get('message')}")
    except ConnectionClosed as closed:
        tally.good_disconnects += 1
        tally.broken.append(f"client {index}: closed {closed.code}")


async def churner(url: str, symbols: list[str], tally: Tally, rng: random.Random) -> None:
    """One short-lived client."""
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    how = rng.random()
    with trio.move_on_after(5):
        if how < 0.1:  # a TCP connection that never completes its handshake
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n")
            await trio.sleep(rng.random())
            await stream.aclose()
        else:
            async with connect(url, compress=rng.random() < 0.5) as conn:
                await conn.subscribe("book", rng.sample(symbols, k=min(3, len(symbols))))
                with trio.move_on_after(rng.random() * 2):
                    async for _ in conn:
                        pass
                if how < 0.55:  # drop the TCP connection without a closing handshake
                    await conn._stream.aclose()  # noqa: SLF001 - simulating a vanished peer
    tally.churned += 1


async def churn(url: str, symbols: list[str], tally: Tally, rng: random.Random,
                rate: float) -> None:
    """Start a ``churner`` ``rate`` times a second on average (Poisson), until cancelled.
    Each lives at most a few seconds, so about ``5 * rate`` are alive at once at most."""
    async with trio.open_nursery() as churning:
        while True:
            churning.start_soon(churner, url, symbols, tally, rng)
            await trio.sleep(rng.expovariate(rate))


async def stalled(url: str, symbols: list[str], tally: Tally) -> None:
    """Subscribe to everything and read nothing for ``STALL_S``, longer than the server
    lets a client stay behind (``client.max_behind_ms``, 10 s); then read what is left
    to find the close. A 4001 counts as dropped. Then start again."""
    while True:
        try:
            async with connect(url) as conn:
                await conn.subscribe("book", symbols, depth=50)
                await conn.subscribe("trades", symbols)
                await trio.sleep(STALL_S)
                with trio.move_on_after(10):
                    while True:
                        await conn.receive()
        except ConnectionClosed as closed:
            if closed.code == 4001:
                tally.stalled_dropped += 1
        except OSError:
            pass


STALL_S = 15.0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def soak(args: argparse.Namespace) -> int:
    symbols = list(symbol_names(args.symbols))
    tally = Tally()
    rng = random.Random(args.seed)
    rows: list[tuple[float, float, float, float, float, float]] = []
    async with spawn_server(f"--synthetic {args.synthetic} --symbols {args.symbols}") as server:
        host_port = server.url.split("//", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        began = time.monotonic()
        async with trio.open_nursery() as nursery:
            for i in range(args.clients):
                nursery.start_soon(well_behaved, server.url, symbols, tally, i)
            for _ in range(args.stalled):
                nursery.start_soon(stalled, server.url, symbols, tally)
            nursery.start_soon(churn, server.url, symbols, tally, rng, args.churn)
            print(f"soak: {server.url}, {args.duration:.0f} s, {args.clients} checked clients, "
                  f"{args.churn}/s churn, {args.stalled} stalled readers", flush=True)
            print("   t s   RSS MiB  connections  tasks  lag events  received  lost")
            metrics: dict[str, float] = {}
            while (elapsed := time.monotonic() - began) < args.duration:
                await trio.sleep(min(args.sample, args.duration - elapsed))
                try:
                    metrics = await fetch_metrics(host, int(port))
                except trio.TooSlowError:  # a busy machine: note it, do not stop the run
                    tally.late_samples += 1
                    print(f"{time.monotonic() - began:6.0f}  /metrics did not answer within "
                          "5 s", flush=True)
                    continue
                row = (time.monotonic() - began, rss_mib(server.pid),
                       metric_total(metrics, "tickwire_open_connections"),
                       metric_total(metrics, "tickwire_tasks"),
                       metric_total(metrics, "tickwire_lag_events_total"),
                       float(tally.received))
                rows.append(row)
                print(f"{row[0]:6.0f}  {row[1]:8.1f}  {row[2]:11.0f}  {row[3]:5.0f}  "
                      f"{row[4]:10.0f}  {row[5]:8.0f}  {tally.lost:4d}", flush=True)
            closes = metric_by_label(metrics, "tickwire_closes_total")
            nursery.cancel_scope.cancel()
    if not rows:
        print("soak: /metrics never answered")
        return 1
    first, last = rows[0], rows[-1]
    print(f"\nsummary: {tally.received:,} messages checked by the well-behaved clients, "
          f"{tally.lost} lost, {tally.good_disconnects} of them disconnected; "
          f"{tally.churned:,} churned connections; {tally.stalled_dropped} stalled readers "
          f"dropped by the server; closes by code {closes}; {tally.late_samples} samples "
          "of /metrics late")
    print(f"RSS {first[1]:.1f} MiB at {first[0]:.0f} s, {last[1]:.1f} MiB at {last[0]:.0f} s "
          f"(max {max(r[1] for r in rows):.1f}); tasks {first[3]:.0f} -> {last[3]:.0f} "
          f"(max {max(r[3] for r in rows):.0f})")
    for line in tally.broken[:20]:
        print("  !", line)
    return 1 if tally.lost or tally.good_disconnects else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (600)")
    parser.add_argument("--clients", type=int, default=10, help="checked clients (10)")
    parser.add_argument("--churn", type=float, default=20.0, help="connections/s (20)")
    parser.add_argument("--stalled", type=int, default=5, help="stalled readers (5)")
    parser.add_argument("--synthetic", type=int, default=1000, help="events/s (1000)")
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between rows")
    parser.add_argument("--seed", type=int, default=1)
    args: Any = parser.parse_args(argv)
    if not (0 < args.duration <= 24 * 3600 and 0 <= args.clients <= 1000
            and 0 < args.churn <= 1000 and 0 <= args.stalled <= 1000 and args.sample > 0):
        parser.error("duration up to a day, clients and stalled up to 1000, churn 0-1000/s")
    return trio.run(soak, args)


if __name__ == "__main__":
    sys.exit(main())
