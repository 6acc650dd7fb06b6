"""Make the bundled sample (``replay/samples/``) from the shared Binance captures.

    python -m replay.make_sample [--data DIR] [--seconds 90] [--out PATH]

The sample is the first ``seconds`` of hftbacktest's BTCUSDT spot capture of
2024-08-08 (``binance-spot/btcusdt_20240808.gz``), imported with
``replay.capture.CaptureReader`` and written as a zstd tick file. It starts at the
first ``BookSnapshot`` (the diffs buffered before the snapshot are applied after it, as
Binance's rules say; trades received before the snapshot are left out), and ends
before the first event received ``seconds`` after the snapshot. The output depends
only on the capture, the arguments and the zstd level, so running this again gives
the same file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from feed.events import BookSnapshot, Event

from . import sample_path
from .capture import CaptureReader
from .tickfile import ZSTD_LEVEL, TickWriter

CAPTURE = Path("binance-spot") / "btcusdt_20240808.gz"
SECONDS = 90


def default_data_dir() -> Path:
    """The shared data folder: ``$TICKWIRE_SHARED_DATA``, else ``../shared/data``
    next to the repository."""
    env = os.environ.get("TICKWIRE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def excerpt(events: Iterable[Event], seconds: float) -> Iterator[Event]:
    """The events from the first ``BookSnapshot`` to ``seconds`` (of ``ts_recv``) later."""
    start: int | None = None
    for event in events:
        if start is None:
            if not isinstance(event, BookSnapshot):
                continue
            start = event.ts_recv
        if event.ts_recv >= start + int(seconds * 1e9):
            return
        yield event


def make_sample(capture: Path, out: Path, seconds: float = SECONDS) -> int:
    """Write the excerpt of ``capture`` to ``out``; returns the number of events.

    Raises ``ValueError`` when the capture is damaged or has no snapshot (a sample
    must be clean), ``OSError`` when a file cannot be read or written.
    """
    with CaptureReader(capture) as reader:
        events = list(excerpt(reader, seconds))
        if reader.problems:
            raise ValueError(f"{capture} is damaged: {reader.problems[0]}")
    if not events:
        raise ValueError(f"{capture} has no snapshot")
    symbols = tuple(dict.fromkeys(event.symbol for event in events))
    out.parent.mkdir(parents=True, exist_ok=True)
    with TickWriter(
        out,
        source="binance-spot",
        symbols=symbols,
        ts_first=events[0].ts_recv,
        ts_last=events[-1].ts_recv,
        level=ZSTD_LEVEL,
    ) as writer:
        return writer.write_all(events)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m replay.make_sample", description=__doc__)
    parser.add_argument("--data", type=Path, default=None, help="the shared data folder")
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--out", type=Path, default=sample_path())
    args = parser.parse_args(argv)
    capture = (args.data or default_data_dir()) / CAPTURE
    count = make_sample(capture, args.out, args.seconds)
    print(f"{args.out}: {count} events, {args.out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
