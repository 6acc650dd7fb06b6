"""``python -m replay``: convert recordings to tick files, and inspect tick files.

    python -m replay convert CAPTURE_OR_TICKS... -o OUT.ticks.zst
    python -m replay inspect FILE.ticks.zst...

Exit status 0 when all went well, 1 when some input was damaged (the good part is
still converted/counted), 2 for bad usage or an unreadable file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .codec import BadHeader
from .convert import convert
from .sources import UnknownSource
from .tickfile import inspect


def _convert(args: argparse.Namespace) -> int:
    stats = convert(args.inputs, args.output, level=args.level)
    rate = stats.events / stats.seconds if stats.seconds else 0.0
    print(f"{args.output}: {stats.events} events in {stats.seconds:.2f} s ({rate:,.0f}/s)")
    for problem in stats.problems:
        print(f"  {problem}", file=sys.stderr)
    return 1 if stats.problems else 0


def _inspect(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        info = inspect(path)
        print(f"{path}:")
        print(f"  source {info.header.source}, symbols {', '.join(info.symbols) or '-'}")
        kinds = ", ".join(f"{kind} {count}" for kind, count in info.kinds)
        print(f"  {info.events} events ({kinds or 'none'})")
        print(f"  ts_recv {info.ts_first} .. {info.ts_last}")
        if info.ts_first is not None and info.ts_last is not None:
            print(f"  span {(info.ts_last - info.ts_first) / 1e9:.3f} s")
        print(f"  malformed lines {info.malformed}")
        for problem in info.problems:
            print(f"  {problem}")
            status = 1
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m replay", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    conv = commands.add_parser("convert", help="recordings to one tick file")
    conv.add_argument("inputs", nargs="+")
    conv.add_argument("-o", "--output", required=True, help="NAME.ticks[.gz|.zst]")
    conv.add_argument("--level", type=int, default=None, help="compression level")
    insp = commands.add_parser("inspect", help="summarize tick files")
    insp.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    try:
        return _convert(args) if args.command == "convert" else _inspect(args)
    except (OSError, BadHeader, UnknownSource) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
