"""The command line: ``python -m clients.loadgen`` (options as in docs/performance.md)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from clients.loadgen.compare import (
    available_servers,
    compare,
    comparison_json,
    format_comparison,
)
from clients.loadgen.config import CHANNELS, LoadConfig
from clients.loadgen.errors import LoadError
from clients.loadgen.frames import DEFAULT_SAMPLE_EVERY
from clients.loadgen.plot import plot
from clients.loadgen.report import Report, format_report, report_json
from clients.loadgen.runner import run
from clients.loadgen.spawn import SERVERS, ServerLog, unwrapped

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""Signals that end a run the way Ctrl-C does: what it started is stopped first."""


class Interrupted(Exception):
    """The run was ended by a signal (SIGINT, SIGTERM or SIGHUP)."""


async def stoppable(function: Callable[..., Awaitable[T]], *args: object) -> T:
    """``await function(*args)``; SIGTERM or SIGHUP cancels it, so that it stops the
    server and the workers it started, and raises ``Interrupted``."""
    result: list[T] = []
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals, unwrapped():
        async with trio.open_nursery() as nursery:
            async def main() -> None:
                result.append(await function(*args))
                nursery.cancel_scope.cancel()

            nursery.start_soon(main)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    if not result:
        raise Interrupted
    return result[0]


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog,
                                description="Fan-out load measurement of a tickwire server.")
    p.add_argument("--url", help="ws://HOST:PORT/v1/stream of a running server")
    p.add_argument("--spawn", metavar="ARGS",
                   help='start `python -m feed serve --port 0 ARGS` for the run, e.g. '
                        '"--synthetic 5000 --symbols 10"')
    p.add_argument("--server", choices=tuple(SERVERS), default="tickwire",
                   help="with --spawn: which server to start (peers: benchmarks/)")
    p.add_argument("--compare", nargs="?", const="all", metavar="A,B",
                   help="with --spawn: run the same load against each server in turn "
                        "(default: tickwire and every peer this machine can run) and "
                        "print them side by side")
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--duration", type=float, default=10.0, help="measured window, seconds")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds between every connection subscribed and the window")
    p.add_argument("--workers", type=int, default=0,
                   help="worker processes (default: one per CPU)")
    p.add_argument("--channel", choices=CHANNELS, default="book")
    p.add_argument("--symbols", default="all", help="all, or a comma-separated list")
    p.add_argument("--depth", type=int, default=10, help="book depth")
    p.add_argument("--compress", action=argparse.BooleanOptionalAction, default=True,
                   help="offer permessage-deflate (default: yes)")
    p.add_argument("--sample-every", type=int, default=DEFAULT_SAMPLE_EVERY, metavar="K",
                   help="decode one data message in K for latency")
    p.add_argument("--setup-timeout", type=float, default=30.0)
    p.add_argument("--json", metavar="OUT", help="write the figures to this file")
    p.add_argument("--plot", metavar="OUT.png",
                   help="draw the latency distribution and the throughput over time")
    p.add_argument("--server-log", metavar="FILE",
                   help="with --spawn: write the server's output to this file")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m clients.loadgen") -> int:
    """Command line entry point (also ``tickwire bench``): 0 measured, 1 not measured,
    2 bad usage."""
    args = _parser(prog).parse_args(argv)
    symbols = None if args.symbols == "all" else tuple(
        s.strip() for s in args.symbols.split(",") if s.strip())
    config = LoadConfig(
        url=args.url, spawn=args.spawn, server=args.server, connections=args.connections,
        duration=args.duration,
        warmup=args.warmup, workers=args.workers, channel=args.channel, symbols=symbols,
        depth=args.depth, compress=args.compress, sample_every=args.sample_every,
        setup_timeout=args.setup_timeout)
    try:
        config.check()
    except LoadError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    if args.compare is not None:
        return _compare(config, args.compare, args.json, args.plot)
    log = ServerLog()
    try:
        report = trio.run(stoppable, run, config, log, _progress)
    except LoadError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted):
        print("loadgen: interrupted", file=sys.stderr)
        return 1
    finally:
        if args.server_log and args.spawn:
            with open(args.server_log, "w", encoding="utf-8") as out:
                out.writelines(f"{line}\n" for line in log.lines)
    print(format_report(report))
    if args.json:
        with open(args.json, "wb") as out:
            out.write(report_json(report))
    return _plot([(config.server, report)], args.plot)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _plot(runs: list[tuple[str, Report]], path: str | None) -> int:
    if path is None or not runs:
        return 0
    try:
        plot(runs, path)
    except LoadError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 1
    return 0


def _compare(config: LoadConfig, which: str, json_out: str | None,
             plot_out: str | None) -> int:
    servers = available_servers() if which == "all" else [
        name.strip() for name in which.split(",") if name.strip()]
    unknown = [name for name in servers if name not in SERVERS]
    if unknown or not servers or config.spawn is None:
        print(f"loadgen: --compare needs --spawn ARGS (it starts each server) and takes "
              f"servers from {', '.join(SERVERS)}", file=sys.stderr)
        return 2
    try:
        entries = trio.run(stoppable, compare, config, servers, _progress)
    except (KeyboardInterrupt, Interrupted):
        print("loadgen: interrupted", file=sys.stderr)
        return 1
    for entry in entries:
        if entry.report is not None:
            print(f"== {entry.server}")
            print(format_report(entry.report))
            print()
    print(format_comparison(entries))
    if json_out:
        with open(json_out, "wb") as out:
            out.write(comparison_json(entries))
    status = _plot([(e.server, e.report) for e in entries if e.report is not None], plot_out)
    return status or (0 if all(entry.report is not None for entry in entries) else 1)
