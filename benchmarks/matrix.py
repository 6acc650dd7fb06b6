"""The results table of docs/performance.md: ``tickwire bench --compare`` over a grid of
subscriber counts, feed rates and compression, and the markdown table of what it gave.

    python -m benchmarks.matrix run OUT_DIR [--connections 10,100,1000]
        [--rates 1000,5000,20000] [--compress on,off] [--duration 10] [--warmup 3]
        [--servers tickwire,floor]
    python -m benchmarks.matrix table OUT_DIR

``run`` starts one ``python -m clients.loadgen --compare`` per cell, one after the
other (the cells must not share the machine), and keeps each cell's JSON
(``c{N}-r{RATE}-{on|off}.json``) and printed report (``.txt``) in OUT_DIR, next to a
``commands.txt`` with the exact command lines. A cell that is already in OUT_DIR is not
run again, so an interrupted grid resumes where it stopped. ``table`` prints the
markdown table of every cell in OUT_DIR: one row per cell and server.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

SYMBOLS = 10
"""Synthetic symbols of every cell; each subscriber takes ``book`` depth 10 on all."""
SETUP_TIMEOUT_S = 120
"""Time each server gets to accept and subscribe a cell's connections."""
WARNINGS = {
    "LOAD GENERATOR LIMITED": "LG",
    "MACHINE SATURATED": "SAT",
    "OTHER LOAD ON THE MACHINE": "OTHER",
    "LATENCY GREW": "GREW",
    "CONNECTION CLOSED EARLY": "CLOSED",
    "BROKEN STREAM": "BROKEN",
    "could not read /metrics": "NO METRICS",
}
"""The load tool's warnings, abbreviated for the table (the legend is in the docs)."""


def _cells(connections: Sequence[int], rates: Sequence[int],
           compress: Sequence[bool]) -> Iterator[tuple[int, int, bool]]:
    for count in connections:
        for rate in rates:
            for on in compress:
                yield count, rate, on


def _name(count: int, rate: int, on: bool) -> str:
    return f"c{count}-r{rate}-{'on' if on else 'off'}"


def command(count: int, rate: int, on: bool, duration: float, warmup: float,
            json_out: Path, servers: str | None = None) -> list[str]:
    """The load tool's command line for one cell (``servers``: a ``--compare`` list;
    default every server the machine can run)."""
    compare = ["--compare"] if servers is None else ["--compare", servers]
    return [sys.executable, "-m", "clients.loadgen",
            "--spawn", f"--synthetic {rate} --symbols {SYMBOLS}", *compare,
            "--connections", str(count), "--duration", str(duration),
            "--warmup", str(warmup), "--channel", "book", "--depth", "10",
            "--compress" if on else "--no-compress",
            "--setup-timeout", str(SETUP_TIMEOUT_S), "--json", str(json_out)]


def run_grid(out: Path, connections: Sequence[int], rates: Sequence[int],
             compress: Sequence[bool], duration: float, warmup: float,
             servers: str | None = None) -> int:
    """Run every cell not yet in ``out``; 1 if any cell failed to produce its JSON."""
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for count, rate, on in _cells(connections, rates, compress):
        name = _name(count, rate, on)
        json_out = out / f"{name}.json"
        if json_out.exists():
            print(f"{name}: already measured", file=sys.stderr)
            continue
        argv = command(count, rate, on, duration, warmup, json_out, servers)
        with open(out / "commands.txt", "a", encoding="utf-8") as log:
            log.write(f"python {shlex.join(argv[1:])}\n")
        print(f"{name}: running", file=sys.stderr, flush=True)
        with open(out / f"{name}.txt", "wb") as report:
            status = subprocess.run(argv, stdout=report, stderr=subprocess.STDOUT,
                                    check=False).returncode
        if not json_out.exists():
            print(f"{name}: no result (exit status {status}); see {name}.txt",
                  file=sys.stderr)
            failed = 1
    return failed


def _warnings(report: dict[str, Any]) -> str:
    seen = []
    for warning in report["warnings"]:
        for text, short in WARNINGS.items():
            if text in warning and short not in seen:
                seen.append(short)
    return ", ".join(seen) or "-"


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def rows(out: Path) -> Iterator[tuple[str, ...]]:
    """One table row per server of every cell in ``out``, in grid order."""
    for path in sorted(out.glob("c*-r*-*.json"), key=_order):
        count, rate, off = _order(path)
        for entry in orjson.loads(path.read_bytes()):
            cell = (f"{count:,}", f"{rate:,}", "off" if off else "on", entry["server"])
            report = entry["report"]
            if report is None:
                yield (*cell, f"not measured: {entry['error']}", *[""] * 8)
                continue
            server = report["server"]
            latency = report["latency"]
            cpu = server and server["cpu_us_per_message"]
            yield (*cell, f"{report['messages_per_s']:,.0f}",
                   f"{report['per_connection_median']:,.0f}",
                   f"{server['events_per_s']:,.0f}" if server else "n/a",
                   f"{server['cpu_cores']:.2f}" if server else "n/a",
                   f"{cpu:.2f}" if cpu else "n/a",
                   _ms(latency["p50_ms"]), _ms(latency["p99_ms"]),
                   _ms(latency["p99_9_ms"]), _warnings(report))


def _order(path: Path) -> tuple[int, int, int]:
    count, rate, on = path.stem.split("-")
    return int(count[1:]), int(rate[1:]), 0 if on == "on" else 1


HEADER = ("subscribers", "events/s", "deflate", "server", "msg/s", "per conn",
          "events/s released", "server cores", "CPU/msg µs", "p50 ms", "p99 ms",
          "p99.9 ms", "warnings")


def table(out: Path) -> str:
    """The markdown table of every cell in ``out``."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows(out))
    return "\n".join(lines)


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.matrix",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    grid = sub.add_parser("run", help="measure every cell not yet in OUT_DIR")
    grid.add_argument("out", type=Path)
    grid.add_argument("--connections", type=_numbers, default=[10, 100, 1000])
    grid.add_argument("--rates", type=_numbers, default=[1000, 5000, 20000])
    grid.add_argument("--compress", default="on,off",
                      help="on, off or on,off (default)")
    grid.add_argument("--duration", type=float, default=10.0)
    grid.add_argument("--warmup", type=float, default=3.0)
    grid.add_argument("--servers", metavar="A,B",
                      help="only these servers (default: every one this machine can run)")
    show = sub.add_parser("table", help="print the markdown table of OUT_DIR")
    show.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "table":
        print(table(args.out))
        return 0
    compress = [part.strip() == "on" for part in args.compress.split(",")
                if part.strip() in ("on", "off")]
    if not compress:
        parser.error("--compress: on, off or on,off")
    return run_grid(args.out, args.connections, args.rates, compress, args.duration,
                    args.warmup, args.servers)


if __name__ == "__main__":
    sys.exit(main())
