"""The ``tickwire`` command line: serve, record, convert, inspect, echo, subscribe, keys.

``tickwire serve`` with no source serves the embedded default: a bundled excerpt of a
real Binance capture, replayed in a loop at real time. ``record`` serves and records
(or, with ``--url``, records another server); ``convert`` and ``inspect`` are
``replay.cli``'s. Flags override the config file; a bad flag, setting or input file is
refused at start with a message naming it (exit status 2).
"""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
import sys
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import trio

from feed.access import AccessError, key_hash, load_keys, new_key
from feed.config import Config, ConfigError, load_config, parse_speed, parse_time_setting
from feed.ingest import ReplaySource, SyntheticSource, UnknownSymbols, run_ingester
from feed.protocol import CHANNELS
from feed.server import Listening, Server, stop_on_signals
from feed.tls import server_context
from feed.workers import serve_workers
from replay.cli import add_commands as add_file_commands
from replay.cli import run as run_file_command
from replay.codec import BadHeader
from replay.sources import UnknownSource

log = logging.getLogger("tickwire")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tickwire", description="Low-latency market-data streaming server.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve order books, trades and BBO")
    _feed_arguments(serve)
    serve.add_argument("--record", metavar="DIR",
                       help="also record what the server ingests into tick files in DIR")
    _common(serve)

    record = commands.add_parser(
        "record", help="record a feed into rotating tick files",
        description="Serve as `serve` does, recording what the server ingests into tick "
                    "files in DIR; or, with --url, record what another tickwire server "
                    "streams (--symbols: which symbols; default all).")
    record.add_argument("record", metavar="DIR", help="directory of the recording")
    _feed_arguments(record)
    record.add_argument("--url", help="record this server (ws://HOST:PORT/v1/stream) "
                                      "instead of serving")
    _common(record)

    echo = commands.add_parser("echo", help="WebSocket echo server (conformance testing)")
    _common(echo)
    echo.add_argument("--max-message-bytes", type=int, metavar="N",
                      help="largest message accepted (default from config)")

    add_file_commands(commands)

    keys = commands.add_parser(
        "keys", help="make API key entries for access.keys_file",
        description="`keys new NAME` makes a random key and prints it once, with the "
                    "[[key]] entry (its SHA-256, never the key) to append to the keys "
                    "file; `keys hash` prints the SHA-256 of a key read from stdin.")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new = keys_commands.add_parser("new", help="a new key and its entry")
    new.add_argument("name", help="who the key is for (shown in logs)")
    new.add_argument("--symbols", default="*", metavar="A,B",
                     help="symbols the key may have (default *: all)")
    new.add_argument("--channels", default="*", metavar="book,trades,bbo",
                     help="channels the key may have (default *: all)")
    new.add_argument("--max-connections", type=int, default=0, metavar="N",
                     help="connections at once (default 0: no limit of its own)")
    keys_commands.add_parser("hash", help="the SHA-256 of a key read from stdin")

    commands.add_parser("bench", help="latency and fan-out measurement run (options: "
                                      "tickwire bench --help)")

    sub = commands.add_parser("subscribe", help="live terminal view of a stream")
    sub.add_argument("symbols", nargs="+", metavar="SYMBOL")
    sub.add_argument("--url", default="ws://127.0.0.1:8765/v1/stream")
    sub.add_argument("--channel", choices=("book", "trades", "bbo"), default="book")
    sub.add_argument("--depth", type=int, default=10)
    sub.add_argument("--ca", type=Path, metavar="FILE",
                     help="for a wss:// URL: trust the CA certificates in FILE (PEM) instead "
                          "of the system's (SSL_CERT_FILE is honoured too)")
    return parser


def _feed_arguments(parser: argparse.ArgumentParser) -> None:
    """What to serve: the arguments ``serve`` and ``record`` share."""
    parser.add_argument("files", nargs="*", type=Path, metavar="FILES",
                        help="tick files to replay (native or raw captures); none and no "
                             "--synthetic: the embedded sample")
    parser.add_argument("--speed", help="replay speed: a multiple of real time, or max")
    parser.add_argument("--loop", action="store_true", default=None,
                        help="restart the replay when it ends")
    parser.add_argument("--from", dest="start", metavar="TIME",
                        help="replay from this ts_recv on: ISO-8601 (UTC unless an offset "
                             "is given) or ns since the epoch; books start as they stood then")
    parser.add_argument("--to", dest="end", metavar="TIME",
                        help="replay the events received before this time")
    parser.add_argument("--synthetic", type=int, metavar="RATE",
                        help="serve a synthetic market of RATE events per second")
    parser.add_argument("--symbols", metavar="LIST|N",
                        help="replay only these symbols (comma-separated); with "
                             "--synthetic, a number: how many synthetic symbols")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="serve from N processes sharing the port, each with its share "
                             "of the clients and the same feed (default 1)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on; 0 picks a free one")
    parser.add_argument("--config", type=Path, help="TOML config file (configs/default.toml "
                                                    "lists every setting)")


def _config(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    overrides: dict[str, Any] = {}
    flags = {"host": "server.host", "port": "server.port", "speed": "feed.speed",
             "loop": "feed.loop", "synthetic": "feed.synthetic_rate", "start": "feed.start",
             "end": "feed.end", "max_message_bytes": "server.max_message_bytes",
             "record": "record.dir", "workers": "server.workers"}
    for flag, setting in flags.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[setting] = value
    symbols = getattr(args, "symbols", None)
    if symbols is not None:
        if symbols.isdigit():
            if not (args.synthetic or config.feed.synthetic_rate):
                raise ConfigError(f"--symbols {symbols}: a number is the synthetic market's "
                                  "symbol count; to replay some symbols, name them")
            overrides["feed.synthetic_symbols"] = int(symbols)
        else:
            overrides["feed.symbols"] = [s for s in symbols.split(",") if s]
    files = getattr(args, "files", None)
    if files:
        overrides["feed.files"] = [str(f) for f in files]
    config = config.with_overrides(overrides)
    if config.access.keys_file:
        try:
            load_keys(Path(config.access.keys_file))  # refused now, not per worker later
        except AccessError as exc:
            raise ConfigError(f"access.keys_file: {exc}") from None
    server_context(config.tls)  # the same: ConfigError for a bad certificate or key
    return config


def _source(config: Config) -> SyntheticSource | ReplaySource:
    feed = config.feed
    if feed.synthetic_rate:
        if feed.files:
            raise ConfigError("feed: give tick files or --synthetic, not both")
        if feed.symbols or feed.start or feed.end:
            raise ConfigError("feed: symbols, start and end choose part of a replay; the "
                              "synthetic market takes synthetic_symbols (a number)")
        return SyntheticSource(feed.synthetic_rate, feed.synthetic_symbols, feed.seed)
    speed = parse_speed(feed.speed)
    if feed.files:
        paths = [Path(f) for f in feed.files]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise ConfigError(f"feed.files: no such file: {missing[0]}")
        loop = feed.loop
    else:
        from replay import sample_path

        paths, loop = [sample_path()], True
    start = parse_time_setting("feed.start", feed.start)
    end = parse_time_setting("feed.end", feed.end)
    if start is not None and end is not None and start >= end:
        raise ConfigError(f"feed.start ({feed.start}) must be before feed.end ({feed.end})")
    try:
        source = ReplaySource(paths, speed, loop, symbols=feed.symbols, start=start, end=end)
        source.symbols()
    except UnknownSymbols as exc:
        raise ConfigError(f"feed.symbols: {exc}") from None
    except (UnknownSource, BadHeader) as exc:
        raise ConfigError(f"feed.files: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"feed.files: cannot read {exc.filename or 'a file'}: "
                          f"{exc.strerror or exc}") from None
    return source


async def _serve(config: Config, source: SyntheticSource | ReplaySource | None) -> None:
    echo = source is None

    async def feed(server: Server) -> None:
        assert source is not None
        await run_ingester(server, source)

    server = Server(config, None if echo else feed, echo=echo)
    async with trio.open_nursery() as nursery:
        listening: Listening = await nursery.start(server.run)
        print(f"listening on {listening.url}", flush=True)
        await stop_on_signals(server, signal.SIGINT, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its options are the load tool's own, parsed there
        from clients.loadgen.cli import main as bench_main

        return bench_main(argv[1:], prog="tickwire bench")
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command in ("convert", "inspect"):
        return run_file_command(args)

    if args.command == "subscribe":
        from clients.subscribe import run_subscribe

        try:
            context = _client_context(args.ca)
        except ConfigError as exc:
            print(f"tickwire: {exc}", file=sys.stderr)
            return 2
        try:
            trio.run(partial(run_subscribe, args.url, args.symbols, args.channel, args.depth,
                             ssl_context=context))
        except KeyboardInterrupt:
            pass
        except trio.BrokenResourceError as exc:
            if not isinstance(exc.__cause__, ssl.SSLCertVerificationError):
                raise
            print(f"tickwire: subscribe: the server's certificate is not trusted "
                  f"({exc.__cause__.verify_message}); --ca FILE names the CA to trust",
                  file=sys.stderr)
            return 1
        return 0
    if args.command == "record" and args.url:
        return _record_url(args)
    if args.command == "keys":
        return _keys(args)
    try:
        config = _config(args)
        source = _source(config) if args.command in ("serve", "record") else None
        if config.record.dir and source is not None:
            _record_dir(config.record.dir)
        if source is not None and config.server.workers > 1:
            return serve_workers(config, source)
        trio.run(_serve, config, source)
    except ConfigError as exc:
        print(f"tickwire: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tickwire: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _keys(args: argparse.Namespace) -> int:
    """``tickwire keys new NAME`` / ``tickwire keys hash``."""
    if args.keys_command == "hash":
        key = sys.stdin.readline().strip()
        if not key:
            print("tickwire: no key on stdin", file=sys.stderr)
            return 2
        print(key_hash(key))
        return 0
    symbols = [s for s in args.symbols.split(",") if s]
    channels = [c for c in args.channels.split(",") if c]
    bad = [c for c in channels if c != "*" and c not in CHANNELS]
    if bad or not symbols or not channels or args.max_connections < 0:
        print("tickwire: keys new: --channels takes book, trades, bbo or *; --symbols a "
              "list or *; --max-connections 0 or more", file=sys.stderr)
        return 2
    key = new_key()
    print(f"# API key for {args.name}: give it to them; it is stored nowhere else:\n"
          f"#   {key}\n[[key]]\nname = {_toml_string(args.name)}\n"
          f"sha256 = \"{key_hash(key)}\"\n"
          f"symbols = [{', '.join(_toml_string(s) for s in symbols)}]\n"
          f"channels = [{', '.join(_toml_string(c) for c in channels)}]\n"
          f"max_connections = {args.max_connections}")
    return 0


def _client_context(ca: Path | None) -> ssl.SSLContext | None:
    """The TLS context trusting the CA certificates in ``ca`` (``None``: the system's,
    or SSL_CERT_FILE's). Raises ``ConfigError``."""
    if ca is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(ca))
    except OSError as exc:
        raise ConfigError(f"--ca: cannot read {ca}: {exc.strerror or exc}") from None
    except ssl.SSLError:
        raise ConfigError(f"--ca: no PEM certificate in {ca}") from None


def _toml_string(text: str) -> str:
    return orjson.dumps(text).decode()  # a JSON string is a TOML basic string


def _record_dir(path: str) -> None:
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"record.dir: cannot create {path}: {exc.strerror or exc}") from None


def _record_url(args: argparse.Namespace) -> int:
    """``tickwire record DIR --url URL``: a client of another server, no server here."""
    from clients.recorder import main as record_main

    feed = [flag for flag, value in (("FILES", args.files), ("--synthetic", args.synthetic),
                                     ("--speed", args.speed), ("--loop", args.loop),
                                     ("--from", args.start), ("--to", args.end),
                                     ("--workers", args.workers)) if value]
    try:
        if feed:
            raise ConfigError(f"record --url records another server: {feed[0]} does not apply")
        config = _config(args)
        _record_dir(config.record.dir)
    except ConfigError as exc:
        print(f"tickwire: {exc}", file=sys.stderr)
        return 2
    symbols = [s for s in (args.symbols or "").split(",") if s]
    return record_main(args.url, config.record, symbols)


if __name__ == "__main__":
    sys.exit(main())
