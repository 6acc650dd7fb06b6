"""The fastest a file can be read at all in this Python: the ceiling of replay and
conversion speed, whatever tickwire does with what it reads.

``python -m benchmarks.read_ceiling FILE...`` times, for each file:

- a native tick file (``.ticks.zst`` / ``.ticks.gz`` / ``.ticks``): decompressing it as
  a stream and ``orjson.loads`` on every line, nothing else;
- a raw capture (gzip): ``zlib.decompress`` of the whole file in one call, the
  ``gzip`` module's line reader alone, and that reader plus ``orjson.loads`` of every
  message (the part after the receive time).

Each figure is the best of three runs, in lines per second (and seconds).
"""

from __future__ import annotations

import argparse
import gzip
import io
import sys
import time
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

import orjson
import zstandard

REPEATS = 3


def best(run: Callable[[], int]) -> tuple[float, int]:
    """(seconds, lines) of the fastest of ``REPEATS`` runs."""
    times = []
    lines = 0
    for _ in range(REPEATS):
        began = time.perf_counter()
        lines = run()
        times.append(time.perf_counter() - began)
    return min(times), lines


def tick_lines(path: Path) -> int:
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
        count = 0
        for line in stream:
            orjson.loads(line)
            count += 1
    return count


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.read_ceiling",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    args = parser.parse_args(argv)
    for path in args.files:
        if ".ticks" in path.name:
            runs = {"zstd/gzip stream + orjson.loads per line": tick_lines}
        else:
            runs = {"zlib.decompress, whole file": gunzip_whole,
                    "gzip line reader alone": gzip_lines,
                    "gzip line reader + orjson.loads per line": gzip_parse}
        for what, run in runs.items():
            seconds, lines = best(partial(run, path))
            print(f"{path}: {what}: {lines:,} lines in {seconds:.3f} s "
                  f"({lines / seconds:,.0f} lines/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
