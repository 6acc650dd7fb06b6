"""How fast the server ingests a replay: events applied per second at ``--speed max``.

``python -m benchmarks.replay_ingest FILE... [--duration S] [--warmup S] [--args ARGS]``
starts ``tickwire serve FILE... --speed max --loop --port 0 ARGS`` (no subscribers
unless ARGS or another tool adds them), reads its ``/metrics`` after the warmup and
again after the window, and prints the feed events applied per second (decode, book
apply and publishing included; from ``tickwire_events_total``) and the server's CPU over
the window. The server is stopped at the end, always.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from urllib.parse import urlsplit

import trio

from clients.loadgen.errors import LoadError
from clients.loadgen.metrics import fetch_metrics, metric_total
from clients.loadgen.spawn import spawn_server


async def measure(files: list[str], duration: float, warmup: float, extra: str) -> str:
    """One run; the line to print."""
    args = " ".join(shlex.quote(f) for f in files) + " --speed max --loop " + extra
    async with spawn_server(args) as server:
        address = urlsplit(server.url)
        host, port = address.hostname or "127.0.0.1", address.port or 80
        await trio.sleep(warmup)
        before, began = await fetch_metrics(host, port), time.monotonic()
        await trio.sleep(duration)
        after, ended = await fetch_metrics(host, port), time.monotonic()
    elapsed = ended - began
    events = metric_total(after, "tickwire_events_total") - metric_total(
        before, "tickwire_events_total")
    cpu = metric_total(after, "process_cpu_seconds_total") - metric_total(
        before, "process_cpu_seconds_total")
    return (f"{events / elapsed:,.0f} events/s ({events:,.0f} in {elapsed:.2f} s), "
            f"server CPU {cpu / elapsed:.2f} cores, {cpu / events * 1e6:.2f} µs per event")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replay_ingest",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", metavar="FILE", help="tick files or captures")
    parser.add_argument("--duration", type=float, default=10.0, help="window, s (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="before the window, s (2)")
    parser.add_argument("--args", default="", help="more `tickwire serve` arguments")
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 600 or not 0 <= args.warmup <= 600:
        parser.error("--duration and --warmup are seconds, at most 600")
    try:
        print(trio.run(measure, args.files, args.duration, args.warmup, args.args))
    except LoadError as exc:
        print(f"replay_ingest: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
