"""The fastest a file can be read at all in this Python: the ceiling of replay and
conversion speed, whatever tickwire does with what it reads.

``python -m benchmarks.read_ceiling FILE...`` times, for each file:

- a native tick file (``.ticks.zst`` / ``.ticks.gz`` / ``.ticks``):
  - decompressing it as a stream and ``orjson.loads`` on every line, nothing else;
  - that, plus applying each book event's levels to plain dicts (one per symbol and
    side) the cheapest way: ``dict.update`` with the parsed ``[price, size]`` lists,
    then a delete per zero size (no validation, no canonical decimals, no sort): the
    floor of a replay of this format in this Python;
  - the same dict apply alone, on levels decoded in advance and held in memory as
    tuples of shared strings (at most ``HELD_MAX`` events): what any file format,
    a binary one included, could do at best if reading it cost nothing at all;
  - the dict apply from levels held as a binary format with a string table might
    store them: ``uint32`` indices (price, size pairs, and the prices removed apart),
    turned into strings and applied by C loops (``map``, ``zip``, ``dict.update``);
  - tickwire's own reader (``replay.tickfile.TickReader``: validated, canonical
    events), and that reader plus ``Hub.apply`` of every event with no subscriber:
    the replay without the server's ingest loop;
- a raw capture (gzip): ``zlib.decompress`` of the whole file in one call, the
  ``gzip`` module's line reader alone, and that reader plus ``orjson.loads`` of every
  message (the part after the receive time).

Each figure is the best of three runs, in lines (or events) per second (and seconds).
For a tick file it also prints how many levels an event carries on average.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import io
import sys
import time
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from itertools import repeat
from pathlib import Path
from typing import Any

import orjson
import zstandard

from feed.hub import Hub
from replay.tickfile import TickReader

REPEATS = 3
HELD_MAX = 200_000
"""Events held in memory by the apply-only figure, at most (the mix holds 85,945)."""
Side = dict[Any, Any]
Held = tuple[str, bool, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


def best(run: Callable[[], int]) -> tuple[float, int]:
    """(seconds, lines) of the fastest of ``REPEATS`` runs."""
    times = []
    lines = 0
    for _ in range(REPEATS):
        began = time.perf_counter()
        lines = run()
        times.append(time.perf_counter() - began)
    return min(times), lines


def _tick_stream(path: Path) -> Iterator[bytes]:
    """The event lines of a tick file, decompressed as a stream (the header skipped)."""
    with path.open("rb") as raw:
        head = raw.read(4)
        raw.seek(0)
        if head == b"\x28\xb5\x2f\xfd":
            stream: io.BufferedIOBase = io.BufferedReader(
                zstandard.ZstdDecompressor().stream_reader(raw), 1 << 16)
        elif head[:2] == b"\x1f\x8b":
            stream = gzip.GzipFile(fileobj=raw)
        else:
            stream = raw
        next(stream)  # the header
        yield from stream


def tick_lines(path: Path) -> int:
    count = 0
    for line in _tick_stream(path):
        orjson.loads(line)
        count += 1
    return count


def _apply(books: dict[str, tuple[Side, Side]], symbol: str, snapshot: bool,
           bids: Any, asks: Any) -> None:
    """The cheapest book apply: one dict per side, updated whole, zero sizes deleted."""
    sides = books.get(symbol)
    if sides is None:
        sides = books[symbol] = ({}, {})
    for side, levels in zip(sides, (bids, asks), strict=True):
        if snapshot:
            side.clear()
        side.update(levels)
        for price, size in levels:
            if size == "0":
                side.pop(price, None)


def tick_apply(path: Path) -> int:
    books: dict[str, tuple[Side, Side]] = {}
    count = 0
    for line in _tick_stream(path):
        event = orjson.loads(line)
        count += 1
        bids = event.get("b")
        if bids is not None:
            _apply(books, event["s"], event["t"] == "snapshot", bids, event["a"])
    return count


def held_events(path: Path) -> list[Held]:
    """The first ``HELD_MAX`` events of a tick file, book events with their levels as
    tuples of shared strings (trades and gaps with none)."""
    strings: dict[str, str] = {}
    shared = strings.setdefault
    held: list[Held] = []
    for line in _tick_stream(path):
        if len(held) >= HELD_MAX:
            break
        event = orjson.loads(line)
        sides = tuple(tuple((shared(price, price), shared(size, size))
                            for price, size in event.get(key, ())) for key in ("b", "a"))
        held.append((event["s"], event["t"] == "snapshot", *sides)
                    if "b" in event else (event["s"], False, (), ()))
    return held


def held_apply(held: list[Held]) -> int:
    books: dict[str, tuple[Side, Side]] = {}
    for symbol, snapshot, bids, asks in held:
        if bids or asks or snapshot:
            _apply(books, symbol, snapshot, bids, asks)
    return len(held)


Indexed = tuple[str, bool, tuple[tuple[bytes, bytes], tuple[bytes, bytes]]]


def indexed_events(held: list[Held]) -> tuple[list[Indexed], list[str]]:
    """``held`` as a binary format with a string table might store it: per side, the
    set levels as ``uint32`` (price, size) index pairs and the removed prices apart."""
    table: dict[str, int] = {}
    strings: list[str] = []
    out: list[Indexed] = []
    for symbol, snapshot, bids, asks in held:
        sides = []
        for levels in (bids, asks):
            kept = [text for level in levels if level[1] != "0" for text in level]
            removed = [price for price, size in levels if size == "0"]
            encoded = []
            for texts in (kept, removed):
                for text in texts:
                    if text not in table:
                        table[text] = len(strings)
                        strings.append(text)
                encoded.append(array("I", [table[text] for text in texts]).tobytes())
            sides.append((encoded[0], encoded[1]))
        out.append((symbol, snapshot or bool(bids or asks), (sides[0], sides[1])))
    return out, strings


def indexed_apply(indexed: list[Indexed], strings: list[str]) -> int:
    books: dict[str, tuple[Side, Side]] = {}
    text = strings.__getitem__
    for symbol, book_event, encoded in indexed:
        if not book_event:
            continue
        sides = books.get(symbol)
        if sides is None:
            sides = books[symbol] = ({}, {})
        for side, (kept, removed) in zip(sides, encoded, strict=True):
            texts = map(text, array("I", kept))
            side.update(zip(texts, texts, strict=True))
            if removed:
                deque(map(side.pop, map(text, array("I", removed)), repeat(None)), 0)
    return len(indexed)


def tickwire_read(path: Path) -> int:
    with TickReader(path) as reader:
        return sum(1 for _ in reader)


def tickwire_apply(path: Path) -> int:
    hub = Hub(time.monotonic_ns)
    apply = hub.apply
    count = 0
    with TickReader(path) as reader:
        for event in reader:
            apply(event, event.ts_recv)
            count += 1
    return count


def levels_per_event(path: Path) -> tuple[int, int]:
    """(events, levels) of a tick file."""
    events = levels = 0
    for line in _tick_stream(path):
        event = orjson.loads(line)
        events += 1
        levels += len(event.get("b", ())) + len(event.get("a", ()))
    return events, levels


def gunzip_whole(path: Path) -> int:
    return zlib.decompress(path.read_bytes(), 31).count(b"\n")


def gzip_lines(path: Path) -> int:
    with gzip.open(path, "rb") as lines:
        return sum(1 for _ in lines)


def gzip_parse(path: Path) -> int:
    count = 0
    with gzip.open(path, "rb") as lines:
        for line in lines:
            orjson.loads(line.partition(b" ")[2])
            count += 1
    return count


def report(path: Path, what: str, seconds: float, lines: int) -> None:
    print(f"{path}: {what}: {lines:,} lines in {seconds:.3f} s "
          f"({lines / seconds:,.0f} lines/s, {seconds / lines * 1e6:.2f} µs each)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.read_ceiling",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    for path in args.files:
        runs: dict[str, Callable[[], int]]
        if ".ticks" in path.name:
            events, levels = levels_per_event(path)
            print(f"{path}: {events:,} events, {levels:,} levels, "
                  f"{levels / max(events, 1):.2f} levels per event")
            runs = {"zstd/gzip stream + orjson.loads per line": partial(tick_lines, path),
                    "that + cheapest dict apply of the levels": partial(tick_apply, path),
                    "tickwire TickReader (validated, canonical events)":
                        partial(tickwire_read, path),
                    "TickReader + Hub.apply, no subscriber": partial(tickwire_apply, path)}
        else:
            runs = {"zlib.decompress, whole file": partial(gunzip_whole, path),
                    "gzip line reader alone": partial(gzip_lines, path),
                    "gzip line reader + orjson.loads per line": partial(gzip_parse, path)}
        for what, run in runs.items():
            report(path, what, *best(run))
        if ".ticks" in path.name:
            held = held_events(path)
            gc.collect()
            gc.freeze()  # the held levels are not garbage: keep the collector off them
            try:
                report(path, "dict apply alone, levels held in memory",
                       *best(partial(held_apply, held)))
                indexed, strings = indexed_events(held)
                del held
                gc.collect()
                gc.freeze()
                report(path, "dict apply from string-table indices held in memory",
                       *best(partial(indexed_apply, indexed, strings)))
            finally:
                gc.unfreeze()
    return 0


if __name__ == "__main__":
    sys.exit(main())
