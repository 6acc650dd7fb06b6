"""The ``tickwire`` command line: serve, echo, subscribe.

``tickwire serve`` with no source serves the embedded default: a bundled excerpt of a
real Binance capture, replayed in a loop at real time. Flags override the config file;
a bad flag or setting is refused at start with a message naming it (exit status 2).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from feed.config import Config, ConfigError, load_config, parse_speed
from feed.ingest import ReplaySource, SyntheticSource, run_ingester
from feed.server import Listening, Server

log = logging.getLogger("tickwire")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickwire", description="Low-latency market-data streaming server.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve order books, trades and BBO")
    serve.add_argument("files", nargs="*", type=Path, metavar="FILES",
                       help="tick files to replay (native or raw captures); none and no "
                            "--synthetic: the embedded sample")
    serve.add_argument("--speed", help="replay speed: a multiple of real time, or max")
    serve.add_argument("--loop", action="store_true", default=None,
                       help="restart the replay when it ends")
    serve.add_argument("--synthetic", type=int, metavar="RATE",
                       help="serve a synthetic market of RATE events per second")
    serve.add_argument("--symbols", type=int, metavar="N",
                       help="number of synthetic symbols")
    _common(serve)

    echo = commands.add_parser("echo", help="WebSocket echo server (conformance testing)")
    _common(echo)
    echo.add_argument("--max-message-bytes", type=int, metavar="N",
                      help="largest message accepted (default from config)")

    sub = commands.add_parser("subscribe", help="live terminal view of a stream")
    sub.add_argument("symbols", nargs="+", metavar="SYMBOL")
    sub.add_argument("--url", default="ws://127.0.0.1:8765/v1/stream")
    sub.add_argument("--channel", choices=("book", "trades", "bbo"), default="book")
    sub.add_argument("--depth", type=int, default=10)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on; 0 picks a free one")
    parser.add_argument("--config", type=Path, help="TOML config file (configs/default.toml "
                                                    "lists every setting)")


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    overrides: dict[str, Any] = {}
    flags = {"host": "server.host", "port": "server.port", "speed": "feed.speed",
             "loop": "feed.loop", "synthetic": "feed.synthetic_rate",
             "symbols": "feed.synthetic_symbols", "max_message_bytes": "server.max_message_bytes"}
    for flag, setting in flags.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[setting] = value
    files = getattr(args, "files", None)
    if files:
        overrides["feed.files"] = [str(f) for f in files]
    return config.with_overrides(overrides)


def _source(config: Config) -> SyntheticSource | ReplaySource:
    feed = config.feed
    if feed.synthetic_rate:
        if feed.files:
            raise ConfigError("feed: give tick files or --synthetic, not both")
        return SyntheticSource(feed.synthetic_rate, feed.synthetic_symbols, feed.seed)
    speed = parse_speed(feed.speed)
    if feed.files:
        paths = [Path(f) for f in feed.files]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise ConfigError(f"feed.files: no such file: {missing[0]}")
        return ReplaySource(paths, speed, feed.loop)
    from replay import sample_path

    return ReplaySource([sample_path()], speed, loop=True)


async def _serve(config: Config, source: SyntheticSource | ReplaySource | None) -> None:
    echo = source is None

    async def feed(server: Server) -> None:
        assert source is not None
        await run_ingester(server, source)

    server = Server(config, None if echo else feed, echo=echo)
    async with trio.open_nursery() as nursery:
        listening: Listening = await nursery.start(server.run)
        print(f"listening on {listening.url}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s: shutting down", signal.Signals(signum).name)
                server.shutdown()
                break


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "subscribe":
        from clients.subscribe import run_subscribe

        try:
            trio.run(run_subscribe, args.url, args.symbols, args.channel, args.depth)
        except KeyboardInterrupt:
            pass
        return 0
    try:
        config = _config(args)
        source = _source(config) if args.command == "serve" else None
        trio.run(_serve, config, source)
    except ConfigError as exc:
        print(f"tickwire: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tickwire: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
