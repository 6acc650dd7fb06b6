"""What a blocked, columnar tick format could give a replay: the figures behind the
next step for replay speed (docs/performance.md).

::

    python -m benchmarks.columnar_ceiling FILE.ticks.zst [--block N]

No such format exists yet. The events of FILE (at most ``HELD_MAX``) are laid out in
memory as one could store them: blocks of ``--block`` events, each compressed with
zstd, the prices and sizes as ``uint32`` indices into a string table that every
distinct canonical decimal enters once. Then, best of three (as
``benchmarks.read_ceiling``):

- **per-event decode**: every block decompressed and turned back into
  ``feed.events`` objects, one per event, levels as tuples of the table's strings
  (what a replay with subscribers needs; compare ``read_ceiling``'s TickReader line);
- **bulk apply, dicts**: the book events of a block applied to plain dicts (one per
  symbol and side) one segment per symbol and side, with no per-event work:
  ``dict.update`` in event order, then the prices whose last size in the block is
  zero deleted (the writer lists the candidates). Enough for a replay that nobody
  reads while it runs;
- **bulk apply, numpy** (when numpy is installed; it comes with the ``bench`` extra):
  the same, but the last size of each price in the segment is found first on the
  indices, so only the distinct prices become strings and enter the dicts.

A snapshot starts a block of its own, so the bulk applies clear the book first.
Both bulk applies are checked against the one-by-one apply of
``benchmarks.read_ceiling`` (same final books, or the tool fails).
"""

from __future__ import annotations

import argparse
import gc
import sys
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import zstandard

from benchmarks.read_ceiling import HELD_MAX, Side, _apply, best, report
from feed.events import BookDelta, BookSnapshot, Event, Gap, Trade
from replay.tickfile import TickReader

BLOCK = 4096
"""Events per block by default."""
KINDS = (BookSnapshot, BookDelta, Trade, Gap)
Books = dict[str, tuple[Side, Side]]


class Table:
    """The string table: every distinct decimal (and symbol) once, by index."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.strings: list[str] = []

    def __call__(self, text: str) -> int:
        found = self.index.get(text)
        if found is None:
            found = self.index[text] = len(self.strings)
            self.strings.append(text)
        return found


def _blocks(events: list[Event], size: int) -> Iterator[list[Event]]:
    """Runs of at most ``size`` events; a snapshot always starts a run."""
    block: list[Event] = []
    for event in events:
        if block and (len(block) >= size or isinstance(event, BookSnapshot)):
            yield block
            block = []
        block.append(event)
    if block:
        yield block


def encode_events(events: list[Event], size: int, table: Table) -> list[bytes]:
    """Per-event layout: a JSON head of per-event columns and the block's new strings,
    then the level indices of its book events in order."""
    compress = zstandard.ZstdCompressor(level=3).compress
    out = []
    for block in _blocks(events, size):
        new_from = len(table.strings)
        kinds, symbols, ts_event, ts_recv, seqs, bids, asks = [], [], [], [], [], [], []
        extra: list[tuple[Any, ...]] = []
        levels = array("I")
        for event in block:
            kinds.append(KINDS.index(type(event)))
            symbols.append(table(event.symbol))
            ts_event.append(event.ts_event)
            ts_recv.append(event.ts_recv)
            if isinstance(event, BookSnapshot | BookDelta):
                seqs.append(event.seq)
                bids.append(len(event.bids))
                asks.append(len(event.asks))
                levels.extend(table(text) for level in event.bids + event.asks
                              for text in level)
                continue
            seqs.append(None)
            bids.append(0)
            asks.append(0)
            if isinstance(event, Trade):
                extra.append((event.trade_id, event.price, event.size, event.side))
            else:
                extra.append((event.reason,))
        head = orjson.dumps({"k": kinds, "y": symbols, "te": ts_event, "tr": ts_recv,
                             "q": seqs, "nb": bids, "na": asks, "x": extra,
                             "new": table.strings[new_from:]})
        out.append(compress(len(head).to_bytes(4, "little") + head + levels.tobytes()))
    return out


def decode_events(blocks: list[bytes], sink: Callable[[Event], object]) -> int:
    """Decode every block, handing each event to ``sink``; returns how many."""
    decompress = zstandard.ZstdDecompressor().decompress
    strings: list[str] = []
    text = strings.__getitem__
    count = 0
    for blob in blocks:
        raw = decompress(blob)
        size = int.from_bytes(raw[:4], "little")
        head = orjson.loads(raw[4:4 + size])
        strings.extend(head["new"])
        levels = array("I", raw[4 + size:])
        extra = iter(head["x"])
        pos = 0
        event: Event
        for kind, symbol, ts_event, ts_recv, seq, bids, asks in zip(
                head["k"], head["y"], head["te"], head["tr"], head["q"], head["nb"], head["na"],
                strict=True):
            if kind <= 1:
                texts = map(text, levels[pos:pos + 2 * bids])
                pos += 2 * bids
                bid_levels = tuple(zip(texts, texts, strict=False))
                texts = map(text, levels[pos:pos + 2 * asks])
                pos += 2 * asks
                event = (BookDelta if kind else BookSnapshot)(
                    strings[symbol], bid_levels, tuple(zip(texts, texts, strict=False)),
                    ts_event, ts_recv, seq)
            elif kind == 2:
                trade_id, price, size, side = next(extra)
                event = Trade(strings[symbol], trade_id, price, size, side, ts_event, ts_recv)
            else:
                event = Gap(strings[symbol], ts_event, ts_recv, next(extra)[0])
            sink(event)
            count += 1
    return count


Segment = tuple[str, int, int, int]
"""(symbol, side 0 bids / 1 asks, level indices, zero-size candidates)."""
BulkBlock = tuple[bytes, list[Segment], int, str | None]
"""(compressed indices, segments, events, the symbol a leading snapshot resets)."""


def encode_bulk(events: list[Event], size: int, table: Table) -> list[BulkBlock]:
    """Bulk layout: per symbol and side, the (price, size) indices of the block's book
    events in order, then the prices whose size was zero somewhere in the block."""
    compress = zstandard.ZstdCompressor(level=3).compress
    zero = table("0")
    out = []
    for block in _blocks(events, size):
        pairs: dict[tuple[str, int], array[int]] = {}
        for event in block:
            if isinstance(event, BookSnapshot | BookDelta):
                for side, levels in enumerate((event.bids, event.asks)):
                    indices = pairs.setdefault((event.symbol, side), array("I"))
                    indices.extend(table(text) for level in levels for text in level)
        data = array("I")
        segments = []
        for (symbol, side), indices in pairs.items():
            candidates = sorted({indices[i] for i in range(0, len(indices), 2)
                                 if indices[i + 1] == zero})
            segments.append((symbol, side, len(indices), len(candidates)))
            data.extend(indices)
            data.extend(candidates)
        reset = block[0].symbol if isinstance(block[0], BookSnapshot) else None
        out.append((compress(data.tobytes()), segments, len(block), reset))
    return out


def _side(books: Books, symbol: str, side: int) -> Side:
    sides = books.get(symbol)
    if sides is None:
        sides = books[symbol] = ({}, {})
    return sides[side]


def _reset(books: Books, symbol: str | None) -> None:
    for side in books.get(symbol, ()) if symbol is not None else ():
        side.clear()


def bulk_dicts(blocks: list[BulkBlock], strings: list[str], books: Books) -> int:
    decompress = zstandard.ZstdDecompressor().decompress
    text = strings.__getitem__
    count = 0
    for blob, segments, events, reset in blocks:
        _reset(books, reset)
        data = array("I", decompress(blob))
        pos = 0
        for symbol, side, size, candidates in segments:
            book = _side(books, symbol, side)
            texts = map(text, data[pos:pos + size])
            book.update(zip(texts, texts, strict=True))
            pos += size
            if candidates:
                get = book.get
                for price in [p for p in map(text, data[pos:pos + candidates])
                              if get(p) == "0"]:
                    del book[price]
                pos += candidates
        count += events
    return count


def bulk_numpy(np: Any, blocks: list[BulkBlock], strings: list[str], books: Books) -> int:
    decompress = zstandard.ZstdDecompressor().decompress
    texts = np.array(strings, dtype=object)
    zero = strings.index("0")
    count = 0
    for blob, segments, events, reset in blocks:
        _reset(books, reset)
        data = np.frombuffer(decompress(blob), dtype=np.uint32)
        pos = 0
        for symbol, side, size, candidates in segments:
            book = _side(books, symbol, side)
            backwards = data[pos:pos + size][::-1]
            pos += size + candidates
            prices, first = np.unique(backwards[1::2], return_index=True)
            sizes = backwards[0::2][first]  # each price's last size in the block
            gone = sizes == zero
            if gone.any():
                pop = book.pop
                for price in texts[prices[gone]].tolist():
                    pop(price, None)
                kept = ~gone
                prices, sizes = prices[kept], sizes[kept]
            book.update(zip(texts[prices].tolist(), texts[sizes].tolist(), strict=True))
        count += events
    return count


def _checked(run: Any, expected: Books) -> int:
    books: Books = {}
    count: int = run(books)
    if books != expected:
        raise SystemExit("columnar_ceiling: a bulk apply gave other books than the "
                         "one-by-one apply")
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.columnar_ceiling",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, metavar="FILE")
    parser.add_argument("--block", type=int, default=BLOCK, metavar="N",
                        help=f"events per block (default {BLOCK})")
    args = parser.parse_args(argv)
    path: Path = args.file
    with TickReader(path) as reader:
        events = [event for event, _ in zip(reader, range(HELD_MAX), strict=False)]
    expected: Books = {}
    for event in events:
        if isinstance(event, BookSnapshot | BookDelta):
            _apply(expected, event.symbol, isinstance(event, BookSnapshot), event.bids,
                   event.asks)
    table = Table()
    per_event = encode_events(events, args.block, table)
    bulk = encode_bulk(events, args.block, table)
    del events
    gc.collect()
    gc.freeze()  # the held blocks and books are not garbage: keep the collector off them
    print(f"{path}: blocks of {args.block} events, {len(table.strings):,} strings; "
          f"{sum(map(len, per_event)):,} bytes per-event layout, "
          f"{sum(len(block[0]) for block in bulk):,} bytes bulk layout")
    try:
        report(path, "per-event decode from columnar blocks", *best(partial(
            decode_events, per_event, deque[Event](maxlen=1).append)))
        report(path, "bulk apply per block, dicts", *best(partial(
            _checked, partial(bulk_dicts, bulk, table.strings), expected)))
        try:
            import numpy
        except ImportError:
            print(f"{path}: bulk apply with numpy: skipped, numpy is not installed "
                  "(pip install -e '.[bench]')")
        else:
            report(path, "bulk apply per block, numpy finds each price's last size",
                   *best(partial(_checked, partial(bulk_numpy, numpy, bulk, table.strings),
                                 expected)))
    finally:
        gc.unfreeze()
    return 0


if __name__ == "__main__":
    sys.exit(main())
