"""The ``convert`` and ``inspect`` commands, shared by ``tickwire`` and ``python -m replay``.

    tickwire convert IN... -o OUT.ticks.zst     captures and tick files to one tick file
    tickwire inspect FILE...                    what a file holds: symbols, counts, span, gaps

Both read whole files, so on a terminal they show their progress on stderr (share of
the input bytes read, events, rate), and stay quiet when stderr is not a terminal.
Exit status: 0 when all went well, 1 when some input was damaged (the good part is still
converted or counted, and each problem is printed with its position), 2 for bad usage
or a file that cannot be read at all.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from .codec import BadHeader
from .convert import SameFile, convert
from .lines import Problem, StrPath, bytes_read
from .sources import SourceKind, UnknownSource, detect, open_events
from .tickfile import EventCounts, TickReader

SHOWN_GAPS = 20
"""``inspect`` lists this many gaps one by one, then counts the rest."""


class Progress:
    """A one-line progress display on ``stream``, redrawn at most ``hz`` times a second,
    only when ``stream`` is a terminal. Call it with the number of events done; a call
    with 0 says that reading starts now (bytes read before, say to detect the files,
    do not count)."""

    def __init__(self, label: str, total_bytes: int, stream: TextIO = sys.stderr,
                 hz: float = 5.0) -> None:
        self.label = label
        self.total = max(total_bytes, 1)
        self.stream = stream
        self.enabled = stream.isatty()
        self._period = 1.0 / hz
        self._base = bytes_read()
        self._started = time.monotonic()
        self._drawn = 0.0
        self._width = 0

    def __call__(self, events: int) -> None:
        if not self.enabled:
            return
        if not events:
            self._base = bytes_read()
            return
        now = time.monotonic()
        if now - self._drawn < self._period:
            return
        self._drawn = now
        share = min((bytes_read() - self._base) / self.total, 1.0)
        rate = events / max(now - self._started, 1e-9)
        text = f"{self.label}: {share:6.1%}  {events:,} events  {rate:,.0f}/s"
        self._width = max(self._width, len(text))
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()

    def clear(self) -> None:
        """Erase the display (before the result is printed)."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``convert`` and ``inspect`` to a command line's subcommands; each sets
    ``args.run`` to the function that carries it out."""
    conv = commands.add_parser("convert", help="recordings (captures, tick files) to one "
                                               "tick file")
    conv.add_argument("inputs", nargs="+", metavar="IN",
                      help="Binance, Kraken or Coinbase captures and tick files, merged "
                           "in ts_recv order")
    conv.add_argument("-o", "--output", required=True, metavar="OUT",
                      help="NAME.ticks, NAME.ticks.gz or NAME.ticks.zst (recommended)")
    conv.add_argument("--level", type=int, default=None, help="compression level")
    conv.add_argument("--format-version", type=int, choices=(1, 2), default=2,
                      dest="version",
                      help="tick file version: 2 (default) in blocks, the fastest to "
                           "replay; 1 in JSON lines, for readers older than version 2")
    conv.set_defaults(run=run_convert)
    insp = commands.add_parser("inspect", help="what a tick file or capture holds")
    insp.add_argument("files", nargs="+", metavar="FILE")
    insp.set_defaults(run=run_inspect)


def run_convert(args: argparse.Namespace) -> int:
    """``convert``: write the merged inputs to ``args.output``."""
    progress = Progress(f"converting to {args.output}", _total_size(args.inputs))
    stats = convert(args.inputs, args.output, level=args.level, progress=progress,
                    version=args.version)
    progress.clear()
    rate = stats.events / stats.seconds if stats.seconds else 0.0
    print(f"{args.output}: {stats.events:,} events in {stats.seconds:.2f} s "
          f"({rate:,.0f} events/s), {os.path.getsize(args.output):,} bytes")
    _print_problems(stats.problems, sys.stderr)
    return 1 if stats.problems else 0


def run_inspect(args: argparse.Namespace) -> int:
    """``inspect``: summarize each file."""
    status = 0
    for path in args.files:
        if not _inspect_one(path):
            status = 1
    return status


def _inspect_one(path: StrPath) -> bool:
    """Print what ``path`` holds; False when it is damaged."""
    kind = detect(path)
    if kind is SourceKind.TICKS:
        with TickReader(path) as reader:
            header = reader.header
        described = f"tick file, version {header.version}, source {header.source or '-'}"
    else:
        described = f"{kind.value} capture"
    counts = EventCounts()
    progress = Progress(f"reading {path}", _total_size([path]))
    with open_events([path]) as events:
        for n, event in enumerate(events, 1):
            counts.add(event)
            if not n % 8192:
                progress(n)
        progress.clear()
        problems = list(events.problems)
        malformed = events.malformed
    print(f"{path}: {described}")
    print(f"  symbols  {', '.join(counts.symbols) or '-'}")
    kinds = ", ".join(f"{name} {count:,}" for name, count in sorted(counts.kinds.items()))
    print(f"  events   {counts.events:,} ({kinds or 'none'})")
    if counts.ts_first is not None and counts.ts_last is not None:
        span = (counts.ts_last - counts.ts_first) / 1e9
        print(f"  ts_recv  {format_ns(counts.ts_first)} .. {format_ns(counts.ts_last)} "
              f"({span:,.3f} s)")
    gaps = counts.kinds["gap"]
    print(f"  gaps     {gaps:,}")
    for symbol, ts, reason in counts.gaps[:SHOWN_GAPS]:
        print(f"    {format_ns(ts)} {symbol}: {reason or 'no reason given'}")
    if gaps > SHOWN_GAPS:
        print(f"    ... and {gaps - SHOWN_GAPS:,} more")
    print(f"  damage   {len(problems)} problem(s), {malformed:,} line(s) skipped")
    _print_problems(problems, sys.stdout, indent="    ")
    return not problems


def format_ns(ns: int) -> str:
    """``2024-08-08T23:54:13.123456789Z``: UTC, nanosecond digits kept."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"


def _print_problems(problems: Sequence[Problem], stream: TextIO, indent: str = "  ") -> None:
    for problem in problems:
        print(f"{indent}{problem}", file=stream)


def _total_size(paths: Sequence[StrPath]) -> int:
    return sum(os.path.getsize(path) for path in paths)


def main(argv: Sequence[str] | None = None, prog: str = "python -m replay") -> int:
    """Parse ``argv`` as a ``convert`` or ``inspect`` command and run it."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_commands(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``convert``/``inspect`` command, turning unreadable input into
    exit status 2 with a message."""
    try:
        result: int = args.run(args)
        return result
    except (OSError, BadHeader, UnknownSource, SameFile) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
