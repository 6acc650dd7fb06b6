"""Where a churned server's Python memory grows: ``tracemalloc`` across a churn.

``python -m benchmarks.leak_trace [--settle 40] [--window 120] [--churn 20]
[--stalled 3] [--synthetic 300]``

It runs a server (synthetic market, 10 symbols) in this process, on a loopback port,
with the soak's churning and stalled clients (benchmarks/soak.py) against it; after
``--settle`` seconds it takes a ``tracemalloc`` snapshot, after ``--window`` more
another, and prints the ten allocation sites that grew most between them, with their
stacks. A leak shows as a site growing with the number of connections churned.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tracemalloc

import trio

from benchmarks.soak import Tally, churn, stalled
from feed.config import Config
from feed.ingest import SyntheticSource, run_ingester
from feed.server import Server
from feed.synthetic import symbol_names


async def trace(args: argparse.Namespace) -> None:
    tracemalloc.start(8)
    source = SyntheticSource(args.synthetic, 10)

    async def feed(server: Server) -> None:
        await run_ingester(server, source)

    server = Server(Config().with_overrides({"server.port": 0}), feed)
    async with trio.open_nursery() as nursery:
        url = (await nursery.start(server.run)).url
        symbols = list(symbol_names(10))
        tally = Tally()
        rng = random.Random(1)
        for _ in range(args.stalled):
            nursery.start_soon(stalled, url, symbols, tally)
        nursery.start_soon(churn, url, symbols, tally, rng, args.churn)
        await trio.sleep(args.settle)
        gc.collect()
        first, churned = tracemalloc.take_snapshot(), tally.churned
        await trio.sleep(args.window)
        gc.collect()
        second = tracemalloc.take_snapshot()
        print(f"{tally.churned - churned} connections churned between the snapshots")
        for stat in second.compare_to(first, "traceback")[:10]:
            print(stat)
            for line in stat.traceback.format()[-6:]:
                print("   ", line)
        nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.leak_trace",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--settle", type=float, default=40.0)
    parser.add_argument("--window", type=float, default=120.0)
    parser.add_argument("--churn", type=float, default=20.0, help="connections/s")
    parser.add_argument("--stalled", type=int, default=3)
    parser.add_argument("--synthetic", type=int, default=300, help="events/s")
    args = parser.parse_args(argv)
    if not (0 < args.settle <= 3600 and 0 < args.window <= 3600 and 0 < args.churn <= 1000
            and 0 <= args.stalled <= 100):
        parser.error("settle and window up to an hour, churn 0-1000/s, stalled 0-100")
    trio.run(trace, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
