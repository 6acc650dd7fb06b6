"""``python -m tests.replay_probe FILE...``: replay the files at ``--speed max`` through a
server in this process to one client of ``book`` (depth 50), ``trades`` and ``bbo`` on
every symbol, and print what the client received, one message per line, without
``ts_recv`` and ``ts_send``. tests/test_replay.py runs it under different hash seeds
and compares the outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from feed.ingest import ReplaySource
from tests.test_replay import replay_to_client, without_times


async def probe(paths: list[Path]) -> list[bytes]:
    source = ReplaySource(paths, speed=None, loop=False)
    symbols = source.symbols()
    subscriptions = [{"channel": "book", "symbols": symbols, "depth": 50},
                     {"channel": "trades", "symbols": symbols},
                     {"channel": "bbo", "symbols": symbols}]
    async with trio.open_nursery() as nursery:
        return without_times(await replay_to_client(nursery, source, subscriptions))


if __name__ == "__main__":
    lines = trio.run(probe, [Path(arg) for arg in sys.argv[1:]])
    sys.stdout.buffer.write(b"\n".join(lines) + b"\n")
