"""Recorded market data: the native tick file format, importers for Binance raw
captures and for cryptofeed captures of Kraken and Coinbase, and one merged event
stream over any mix of them.

Modules (docs/tick-format.md is the reference for the formats and rules)::

    lines       lines of plain/gzip/zstd files, damage reported as ``Problem``s
    codec       the tick file format as bytes (pure)
    tickfile    TickWriter, TickReader, inspect
    binance     Binance messages to events: the sequencing state machine (pure)
    capture     Binance capture files: CaptureReader, book_tickers, probe
    cryptofeed  cryptofeed capture lines, exact times, CryptofeedReader
    kraken      Kraken v1 book (depth, checksum) and trades to events; KrakenReader
    coinbase    Coinbase level2 and matches to events; CoinbaseReader
    sources     open_events: detect each file, merge them in ts_recv order
    convert     recordings to one tick file (also ``python -m replay convert``)
    make_sample the bundled sample, reproducibly

Everything here reads files but touches neither trio nor sockets.
"""

from __future__ import annotations

from pathlib import Path

from .capture import BookTicker, CaptureReader, book_tickers
from .codec import BadHeader, TickHeader
from .coinbase import CoinbaseReader
from .kraken import KrakenReader
from .lines import Problem, ProblemKind
from .sources import EventStream, UnknownSource, open_events
from .tickfile import TickFileInfo, TickReader, TickWriter, inspect

SAMPLE_NAME = "binance-spot-btcusdt-20240808.ticks.zst"


def sample_path() -> Path:
    """The bundled sample tick file: 90 s of Binance BTCUSDT spot, starting with a
    book snapshot (see replay/samples/README.md). ``open_events([sample_path()])``
    replays it."""
    return Path(__file__).resolve().parent / "samples" / SAMPLE_NAME


__all__ = [
    "BadHeader",
    "BookTicker",
    "CaptureReader",
    "CoinbaseReader",
    "EventStream",
    "KrakenReader",
    "Problem",
    "ProblemKind",
    "SAMPLE_NAME",
    "TickFileInfo",
    "TickHeader",
    "TickReader",
    "TickWriter",
    "UnknownSource",
    "book_tickers",
    "inspect",
    "open_events",
    "sample_path",
]
