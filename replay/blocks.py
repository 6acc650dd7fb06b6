"""The tick file format, version 2: the events in blocks, column by column.

Version 1 spends most of a replay's time on per-event work: parsing a JSON line and
checking its decimals, for every event (docs/performance.md). Version 2 stores up to
``BLOCK_EVENTS`` events per block, each field as a column, and every price and size as
an index into a table of decimals that the blocks share. Reading a block costs a
handful of array operations plus a check of the decimals new to the table, and a
reader that only needs the final books (a replay at ``--speed max`` that nobody
watches, ``feed.bulk``) can apply a whole block without making one event object.

After the header line (``replay.codec``, ``"version":2``) the uncompressed stream is a
sequence of blocks. A block is a 16-byte prefix, a JSON head and a binary body::

    prefix  b"TWB2", then uint32 LE: events (n >= 1), head bytes, body bytes
    head    {"base": shared, "dec": [decimal, ...], "sym": [symbol, ...],
             "ti": [trade id, ...], "tp": [price index, ...], "tz": [size index, ...],
             "side": "bsb...", "r": [gap reason, ...]}
    body    ts_event int64[n], ts_recv int64[n], seq int64[n], bids uint32[n],
            asks uint32[n], symbol uint16[n], kind uint8[n], has_seq uint8[n], then
            the levels: uint32 pairs (price index, size index), each book event's
            bids then its asks

All integers are little-endian. ``kind`` is 0 snapshot, 1 delta, 2 trade, 3 gap; a
trade or gap has no levels and no seq (``has_seq`` 0, ``seq`` 0). ``ti``/``tp``/``tz``/
``side`` hold one entry per trade, ``r`` one per gap, in event order; ``symbol`` indexes
the block's own ``sym``.

The decimal table: a block's indices stand for the first ``base`` decimals of the
blocks before it, followed by its own ``dec``. ``base`` 0 starts the table afresh; the
writer does so every ``TABLE_BLOCKS`` blocks, so that a block lost to damage costs at
most the rest of its run of blocks (a block whose ``base`` does not match what was read
is skipped, as is every one after it until the table starts afresh).

Decoding (``Block``) checks everything and canonicalizes each new decimal once, so a
block is either good as a whole or skipped: ``TickFormatError`` or ``BadDecimal``.
docs/tick-format.md is the reference.
"""

from __future__ import annotations

import itertools
import re
import struct
import sys
from array import array
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import numpy as np
import orjson

from feed.decimals import BadDecimal, canonical_cached
from feed.events import BookDelta, BookSnapshot, Event, Gap, Level, Side, Trade

from .codec import CANONICAL_DECIMAL, BadHeader, TickFormatError, decode_header
from .lines import MAX_LINE, Problem, ProblemKind, Tally, compression_of, data_chunks

MAGIC = b"TWB2"
PREFIX = struct.Struct("<4sIII")
"""Magic, events, head bytes, body bytes."""
BLOCK_EVENTS = 16384
"""Events per block that the writer makes (the last one may hold fewer). A bulk apply
finds each price's last size over the whole block, so larger blocks set fewer levels
(on docs/performance.md's mix: 16,384 gives about 650k events/s, 4,096 about 520k), but
a bulk apply does not yield inside a block: about 25 ms at 16,384."""
TABLE_BLOCKS = 8
"""The writer starts the decimal table afresh every this many blocks."""
READ_SIZE = 1 << 17
"""Compressed bytes read and decompressed at a time: blocks are large, and larger
pieces decompress about 15% faster than the 16 KiB of ``replay.lines``."""
MAX_BLOCK_BYTES = 64 << 20
"""A block announcing more is damage: the rest of the file is not read."""
BLOCK_LEVELS_MAX = 1 << 20
"""The writer ends a block early rather than put more levels in it (8 MiB of indices,
and at most twice as many new decimals: well within what a reader takes)."""
BLOCK_BYTES_MAX = 32 << 20
"""Nor more bytes than this, counted at their most (half what a reader takes)."""
MAX_HEADER_BYTES = MAX_LINE
"""A header line of a joined file must end within this many bytes."""
MAX_TABLE = 1 << 22
"""A decimal table that would grow past this many entries is damage (the writer's
holds at most ``TABLE_BLOCKS`` blocks' worth)."""
SNAPSHOT, DELTA, TRADE, GAP = range(4)
_KIND_OF: dict[type, int] = {BookSnapshot: SNAPSHOT, BookDelta: DELTA, Trade: TRADE, Gap: GAP}
_COLUMNS = (("ts_event", "<i8"), ("ts_recv", "<i8"), ("seq", "<i8"), ("bids", "<u4"),
            ("asks", "<u4"), ("symbol", "<u2"), ("kind", "u1"), ("has_seq", "u1"))
_BYTES_PER_EVENT = sum(np.dtype(dtype).itemsize for _, dtype in _COLUMNS)
_SIDES = {"buy": "b", "sell": "s"}
_SIDE_NAMES: dict[str, Side] = {"b": "buy", "s": "sell"}
_DECIMAL = CANONICAL_DECIMAL.decode()
_all_canonical = re.compile(f"(?:{_DECIMAL})(?:,(?:{_DECIMAL}))*+").fullmatch
"""Matches decimals joined by commas, each in canonical form: one pass over a block's
new decimals costs a quarter of looking each one up."""


def _little(values: array[int]) -> bytes:
    if sys.byteorder != "little":
        values.byteswap()
    return values.tobytes()


class BlockWriter:
    """Encodes events into blocks: ``add`` returns a block's bytes when ``size``
    events are gathered, ``flush`` a block of the rest (or ``None``). The decimal table
    carries over from block to block and starts afresh every ``TABLE_BLOCKS``."""

    def __init__(self, size: int = BLOCK_EVENTS) -> None:
        self.size = size
        self._pending: list[Event] = []
        self._symbols: set[str] = set()
        self._levels = 0
        self._bytes = 0  # at most what the pending events take in a block
        self._table: dict[str, int] = {}
        self._blocks = 0

    def add(self, event: Event) -> bytes | None:
        """Take ``event``; ``ValueError`` (and the event is not taken) when version 2
        cannot hold it: a time or seq outside the signed 64-bit range, an integer trade
        id outside the 64-bit ones."""
        levels, size = _fits(event)
        full = None
        if (event.symbol not in self._symbols and len(self._symbols) == 0xFFFF) \
                or self._levels + levels > BLOCK_LEVELS_MAX \
                or self._bytes + size > BLOCK_BYTES_MAX:
            full = self.flush()  # within what a reader takes (symbols, bytes, table)
        self._symbols.add(event.symbol)
        self._levels += levels
        self._bytes += size
        self._pending.append(event)
        if len(self._pending) < self.size:
            return full
        block = self.flush()
        return block if full is None else full + (block or b"")

    def flush(self) -> bytes | None:
        if not self._pending:
            return None
        # Every level and trade may bring two new decimals.
        most = len(self._table) + 2 * (self._levels + len(self._pending))
        if self._blocks % TABLE_BLOCKS == 0 or most > MAX_TABLE:
            self._table = {}
            self._blocks = 0
        self._blocks += 1
        data = encode_block(self._pending, self._table, checked=True)
        self._pending.clear()
        self._symbols.clear()
        self._levels = self._bytes = 0
        return data


_INT64 = range(-(1 << 63), 1 << 63)
_TRADE_IDS = range(-(1 << 63), 1 << 64)  # what orjson writes


def _fits(event: Event) -> tuple[int, int]:
    """``ValueError`` when version 2 cannot hold ``event``; else its levels, and at
    most how many bytes it takes in a block (each string at most 6 bytes a character
    in JSON, with its quotes and comma)."""
    seq, levels, trade_id = None, 0, 0
    strings = [event.symbol]
    if isinstance(event, BookSnapshot | BookDelta):
        seq, levels = event.seq, len(event.bids) + len(event.asks)
        strings += itertools.chain.from_iterable(event.bids + event.asks)
    elif isinstance(event, Trade):
        strings += (event.price, event.size)
        if type(event.trade_id) is int:
            trade_id = event.trade_id
        else:
            strings.append(str(event.trade_id))
    elif isinstance(event, Gap):
        strings.append(event.reason)
    size = _BYTES_PER_EVENT + 8 * levels + 30 + 6 * sum(map(len, strings)) + 3 * len(strings)
    if event.ts_event not in _INT64 or event.ts_recv not in _INT64 \
            or (seq is not None and seq not in _INT64) or trade_id not in _TRADE_IDS \
            or levels > BLOCK_LEVELS_MAX or size > BLOCK_BYTES_MAX:
        raise ValueError(f"tick file version 2 cannot hold this event (a time or seq "
                         f"outside 64 bits, over {BLOCK_LEVELS_MAX:,} levels or "
                         f"{BLOCK_BYTES_MAX:,} bytes; version 1 can): {event!r}"[:300])
    return levels, size


def encode_block(events: Sequence[Event], table: dict[str, int] | None = None, *,
                 checked: bool = False) -> bytes:
    """One block of ``events`` (at least one), prefix included. ``table`` is the
    decimal table of the blocks before it (empty or ``None``: the block starts one);
    the block's new decimals are added to it.

    Raises ``ValueError`` for what version 2 cannot hold: a time or seq outside the
    signed 64-bit range, more than 65,535 symbols in one block; ``table`` is then as it
    was. ``checked``: the caller has had every event through ``_fits`` already.
    """
    if not checked and sum(_fits(event)[1] for event in events) > MAX_BLOCK_BYTES:
        raise ValueError("tick file version 2 holds at most "
                         f"{MAX_BLOCK_BYTES:,} bytes in a block")
    if len({event.symbol for event in events}) > 0xFFFF:
        raise ValueError("tick file version 2 holds at most 65,535 symbols in a block")
    table = {} if table is None else table
    base = len(table)
    symbols: dict[str, int] = {}
    sym, dec = symbols.setdefault, table.setdefault
    ts_event, ts_recv, seq_column = array("q"), array("q"), array("q")
    bids, asks, levels = array("I"), array("I"), array("I")
    symbol_column, kinds, has_seq = array("H"), bytearray(), bytearray()
    trade_ids: list[int | str] = []
    trade_prices: list[int] = []
    trade_sizes: list[int] = []
    sides: list[str] = []
    reasons: list[str] = []
    try:
        for event in events:
            kinds.append(_KIND_OF[type(event)])
            symbol_column.append(sym(event.symbol, len(symbols)))
            ts_event.append(event.ts_event)
            ts_recv.append(event.ts_recv)
            if isinstance(event, BookSnapshot | BookDelta):
                seq = event.seq
                has_seq.append(seq is not None)
                seq_column.append(0 if seq is None else seq)
                bids.append(len(event.bids))
                asks.append(len(event.asks))
                for price, size in event.bids + event.asks:
                    levels.append(dec(price, len(table)))
                    levels.append(dec(size, len(table)))
                continue
            has_seq.append(0)
            seq_column.append(0)
            bids.append(0)
            asks.append(0)
            if isinstance(event, Trade):
                trade_ids.append(event.trade_id)
                trade_prices.append(dec(event.price, len(table)))
                trade_sizes.append(dec(event.size, len(table)))
                sides.append(_SIDES[event.side])
            else:
                assert isinstance(event, Gap)
                reasons.append(event.reason)
    except OverflowError as exc:  # checked above: not expected
        raise ValueError(f"tick file version 2 cannot hold this event: {exc}") from None
    if not kinds:
        raise ValueError("a block holds at least one event")
    new = list(table)[base:] if base else list(table)
    head = orjson.dumps({"base": base, "dec": new, "sym": list(symbols), "ti": trade_ids,
                         "tp": trade_prices, "tz": trade_sizes, "side": "".join(sides),
                         "r": reasons})
    body = b"".join((_little(ts_event), _little(ts_recv), _little(seq_column),
                     _little(bids), _little(asks), _little(symbol_column), bytes(kinds),
                     bytes(has_seq), _little(levels)))
    return PREFIX.pack(MAGIC, len(kinds), len(head), len(body)) + head + body


class Decimals:
    """The decimal table a reader builds from the blocks, each entry canonical."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self.lost = False
        """A block was skipped: the table is unknown until one starts it afresh."""
        self._seen: set[str] = set()
        self.zero = -1
        """The index of ``"0"``, or -1."""
        self.texts: np.ndarray[Any, Any] = np.empty(0, dtype=object)
        """``strings`` as an array of ``str`` objects (at least as long), for indexing
        with arrays. Replaced, never changed in place where it holds entries, so a
        block keeps a valid one."""

    def extend(self, base: int, spelled: list[str]) -> np.ndarray[Any, Any] | None:
        """Check a block's ``base`` and new decimals and add them. Returns, when some
        entries spell a number already in the table, the index each index stands for
        (an index then always stands for one number); else ``None``. Raises, leaving
        the table as it was, when the block cannot be read."""
        try:
            joined = ",".join(spelled)
        except TypeError:
            raise TickFormatError('"dec" must be a list of strings') from None
        if base and (self.lost or base != len(self.strings)):
            raise TickFormatError(f"the block follows {base} shared decimals of blocks "
                                  "before it, and a block before it was lost")
        _check(base + len(spelled) <= MAX_TABLE, "decimal table too large")
        if joined.count(",") == len(spelled) - 1 and _all_canonical(joined):
            canonical = spelled  # as the writer writes them (no decimal holds a comma)
        else:
            canonical = list(map(canonical_cached, spelled))  # BadDecimal for a bad one
        if not base:
            self.strings, self._seen, self.zero, self.lost = [], set(), -1, False
            self.texts = np.empty(0, dtype=object)
        strings, seen = self.strings, self._seen
        strings.extend(canonical)
        seen.update(canonical)
        if self.zero < 0 and "0" in seen:
            self.zero = strings.index("0")
        texts = self.texts
        if len(texts) < len(strings):
            grown = np.empty(max(len(strings), 2 * len(texts), 1024), dtype=object)
            grown[:len(texts)] = texts
            texts = self.texts = grown
        texts[base:len(strings)] = canonical
        if len(seen) == len(strings):
            return None
        first: dict[str, int] = {}  # some number is spelled twice: each index to its first
        return np.array([first.setdefault(text, index) for index, text in enumerate(strings)],
                        dtype=np.uint32)


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise TickFormatError(what)


def _list_of(values: object, types: set[type], error: str) -> list[Any]:
    """``values``, a JSON list holding only these types; else ``TickFormatError(error)``."""
    if type(values) is not list or not set(map(type, values)) <= types:
        raise TickFormatError(error)
    return values


def _below(indices: np.ndarray[Any, Any], limit: int, what: str) -> None:
    _check(not len(indices) or int(indices.max()) < limit, f"{what} index out of range")


class Block:
    """One decoded, checked block: the columns as arrays, and the events on demand.

    Level and trade indices stand for ``decimals.strings``; each index for one number
    (two spellings of one number share an index). Raises ``TickFormatError`` or
    ``BadDecimal`` for a block that is not good as a whole, leaving ``decimals`` as it
    was.
    """

    __slots__ = ("asks", "bids", "count", "decimals", "has_seq", "kinds", "levels", "reasons",
                 "seq", "sides", "symbol", "symbols", "texts", "trade_ids", "trade_prices",
                 "trade_sizes", "ts_event", "ts_recv", "zero")

    def __init__(self, count: int, head: bytes | memoryview, body: bytes | memoryview,
                 decimals: Decimals) -> None:
        try:
            obj = orjson.loads(head)
        except orjson.JSONDecodeError:
            raise TickFormatError("block head is not JSON") from None
        _check(type(obj) is dict, "block head is not a JSON object")
        get = obj.get
        self.count = count
        bad_symbols = '"sym" must be a list of distinct non-empty strings'
        self.symbols: list[str] = _list_of(get("sym"), {str}, bad_symbols)
        _check("" not in self.symbols and len(set(self.symbols)) == len(self.symbols),
               bad_symbols)
        bad_ids = '"ti" must be a list of integers and non-empty strings'
        self.trade_ids: list[int | str] = _list_of(get("ti"), {int, str}, bad_ids)
        _check("" not in self.trade_ids, bad_ids)
        self.trade_prices: list[int] = _list_of(get("tp"), {int}, '"tp" must be a list of '
                                                'integers')
        self.trade_sizes: list[int] = _list_of(get("tz"), {int}, '"tz" must be a list of '
                                               'integers')
        self.sides: str = get("side")
        _check(type(self.sides) is str and set(self.sides) <= {"b", "s"},
               '"side" must be a string of "b" and "s"')
        self.reasons: list[str] = _list_of(get("r"), {str}, '"r" must be a list of strings')
        end = count * _BYTES_PER_EVENT
        _check(len(body) >= end and (len(body) - end) % 8 == 0, "block body of the wrong size")
        columns: dict[str, np.ndarray[Any, Any]] = {}
        at = 0
        for name, dtype in _COLUMNS:
            column = np.frombuffer(body, dtype=dtype, count=count, offset=at)
            columns[name] = column
            at += column.nbytes
        self.ts_event, self.ts_recv = columns["ts_event"], columns["ts_recv"]
        self.seq, self.has_seq = columns["seq"], columns["has_seq"]
        self.bids, self.asks = columns["bids"], columns["asks"]
        self.symbol, self.kinds = columns["symbol"], columns["kind"]
        self.levels: np.ndarray[Any, Any] = np.frombuffer(body, dtype="<u4", offset=end)
        base, new = get("base"), get("dec")
        _check(type(base) is int and base >= 0 and type(new) is list,
               '"base" must be a non-negative integer and "dec" a list')
        self._validate(base + len(new))
        remap = decimals.extend(base, new)  # last: the table changes only for a good block
        if remap is not None:
            self.levels = remap[self.levels]
            self.trade_prices = remap[self.trade_prices].tolist()
            self.trade_sizes = remap[self.trade_sizes].tolist()
        self.decimals = decimals.strings
        self.texts = decimals.texts
        self.zero = decimals.zero

    def _validate(self, table: int) -> None:
        kinds = self.kinds
        _check(int(kinds.max()) <= GAP, "unknown event kind")
        _check(int(self.has_seq.max()) <= 1, '"has_seq" must be 0 or 1')
        _below(self.symbol, len(self.symbols), "symbol")
        book = kinds <= DELTA
        _check(not (self.bids[~book].any() or self.asks[~book].any()
                    or self.has_seq[~book].any() or self.seq[~book].any()),
               "a trade or gap with levels or a seq")
        _check(not self.seq[self.has_seq == 0].any(), "a seq that is not there is not 0")
        levels = int(self.bids.sum(dtype=np.uint64)) + int(self.asks.sum(dtype=np.uint64))
        _check(len(self.levels) == 2 * levels, "levels do not add up to the events' counts")
        _below(self.levels, table, "decimal")
        trades = int(np.count_nonzero(kinds == TRADE))
        for name, values in (("ti", self.trade_ids), ("tp", self.trade_prices),
                             ("tz", self.trade_sizes), ("side", self.sides)):
            _check(len(values) == trades, f'"{name}" must hold one entry per trade')
        for name, indices in (("tp", self.trade_prices), ("tz", self.trade_sizes)):
            _check(not indices or (min(indices) >= 0 and max(indices) < table),
                   f'"{name}" decimal index out of range')
        _check(len(self.reasons) == int(np.count_nonzero(kinds == GAP)),
               '"r" must hold one entry per gap')

    def seqs(self, indices: np.ndarray[Any, Any]) -> list[int | None]:
        """The seqs of the events at ``indices`` (``None`` where there is none)."""
        values: list[int | None] = self.seq[indices].tolist()
        if self.has_seq[indices].all():
            return values
        return [value if there else None
                for value, there in zip(values, self.has_seq[indices].tolist(), strict=True)]

    def event(self, index: int) -> Event:
        """The event at ``index``."""
        return next(self._events(index, index + 1))

    def events(self) -> Iterator[Event]:
        """Every event, in order."""
        return self._events(0, self.count)

    def _events(self, start: int, stop: int) -> Generator[Event]:
        kinds = self.kinds[start:stop]
        bids, asks = self.bids[start:stop], self.asks[start:stop]
        position = 2 * (int(self.bids[:start].sum(dtype=np.int64))
                        + int(self.asks[:start].sum(dtype=np.int64)))
        end = position + 2 * (int(bids.sum(dtype=np.int64)) + int(asks.sum(dtype=np.int64)))
        texts = self.texts[self.levels[position:end]].tolist()
        position = 0
        symbols = [self.symbols[i] for i in self.symbol[start:stop].tolist()]
        seqs = self.seqs(np.arange(start, stop))
        trade = int(np.count_nonzero(self.kinds[:start] == TRADE))
        gap = int(np.count_nonzero(self.kinds[:start] == GAP))
        decimals = self.decimals
        for kind, symbol, ts_event, ts_recv, seq, bid_count, ask_count in zip(
                kinds.tolist(), symbols, self.ts_event[start:stop].tolist(),
                self.ts_recv[start:stop].tolist(), seqs, bids.tolist(), asks.tolist(),
                strict=True):
            if kind <= DELTA:
                end = position + 2 * bid_count
                flat = iter(texts[position:end])
                bid_levels: tuple[Level, ...] = tuple(zip(flat, flat, strict=False))
                position, end = end, end + 2 * ask_count
                flat = iter(texts[position:end])
                ask_levels: tuple[Level, ...] = tuple(zip(flat, flat, strict=False))
                position = end
                cls = BookSnapshot if kind == SNAPSHOT else BookDelta
                yield cls(symbol, bid_levels, ask_levels, ts_event, ts_recv, seq)
            elif kind == TRADE:
                yield Trade(symbol, self.trade_ids[trade], decimals[self.trade_prices[trade]],
                            decimals[self.trade_sizes[trade]], _SIDE_NAMES[self.sides[trade]],
                            ts_event, ts_recv)
                trade += 1
            else:
                yield Gap(symbol, ts_event, ts_recv, self.reasons[gap])
                gap += 1


def read_blocks(path: str, skip: int, problems: list[Problem], tally: Tally,
                ) -> Generator[Block]:
    """The good blocks of a version-2 file, after its first ``skip`` uncompressed bytes
    (the header line). Damage is reported as for version 1 (``replay.lines``), a block
    counting as a line: its ``line`` is the block's number (the header is 1) and its
    ``offset`` the block's first byte. A bad block is skipped whole (counted in
    ``tally``); a bad prefix ends the file, since the blocks after it cannot be found.
    The header line of a version-2 file joined on with ``cat`` is passed over (it
    counts as a line), and its blocks are read.
    An event whose ``ts_recv`` is below the one before it is delivered and reported."""
    file = open(path, "rb")  # closed in the finally clause
    try:
        compression = compression_of(file.peek(4)[:4])
        cut: list[Problem] = []
        buffer = bytearray()
        offset = 0  # of buffer[0] in the uncompressed stream
        number = 1
        last = -(1 << 63)
        decimals = Decimals()
        for chunk in data_chunks(file, compression, READ_SIZE, cut):
            buffer += chunk
            if skip:
                taken = min(skip, len(buffer))
                del buffer[:taken]
                skip -= taken
                offset += taken
            while len(buffer) >= PREFIX.size:
                if buffer[:1] == b"{":  # the header of a file joined on with cat
                    end = buffer.find(b"\n")
                    if end < 0 and len(buffer) <= MAX_HEADER_BYTES:
                        break
                    if not _joined_header(bytes(buffer[:end])):
                        detail = ("a header of another version, or damaged, where a block "
                                  "should start; the rest of the file is skipped")
                        problems.append(Problem(path, number + 1, offset, ProblemKind.CORRUPT,
                                                detail))
                        return
                    number += 1
                    del buffer[:end + 1]
                    offset += end + 1
                    decimals.lost = True  # its blocks start their own table
                    continue
                magic, count, head, body = PREFIX.unpack_from(buffer)
                size = PREFIX.size + head + body
                if magic != MAGIC or not count or size > MAX_BLOCK_BYTES:
                    detail = (f"not a block (prefix {bytes(buffer[:PREFIX.size]).hex()}); "
                              "the rest of the file is skipped")
                    problems.append(Problem(path, number + 1, offset, ProblemKind.CORRUPT,
                                            detail))
                    return
                if len(buffer) < size:
                    break
                number += 1
                with memoryview(buffer) as whole:
                    data = memoryview(bytes(whole[:size]))  # one copy, then views of it
                del buffer[:size]
                try:
                    block = Block(count, data[PREFIX.size:PREFIX.size + head],
                                  data[PREFIX.size + head:], decimals)
                except (TickFormatError, BadDecimal) as exc:
                    decimals.lost = True  # the block may have added to the table
                    exc.args = (f"block of {count} events skipped: {exc}",)
                    tally.skip(problems, path, number, offset, exc)
                else:
                    last = _report_order(block, last, path, number, offset, problems)
                    yield block
                offset += size
        if cut:
            problems.append(Problem(path, number + 1, offset, cut[0].kind, cut[0].detail))
        elif buffer:
            detail = f"the last block is incomplete (half-written?): {len(buffer)} bytes skipped"
            problems.append(Problem(path, number + 1, offset, ProblemKind.PARTIAL_LINE, detail))
    finally:
        file.close()


def _joined_header(line: bytes) -> bool:
    """True for a version-2 header line (of a file joined on)."""
    try:
        return decode_header(line).version == 2
    except BadHeader:
        return False


def _report_order(block: Block, last: int, path: str, number: int, offset: int,
                  problems: list[Problem]) -> int:
    ts_recv = block.ts_recv
    before = np.concatenate(([last], ts_recv[:-1]))
    for index in np.flatnonzero(ts_recv < before).tolist():
        detail = (f"event {index} of the block: ts_recv {int(ts_recv[index])} is before the "
                  f"previous event's {int(before[index])}")
        problems.append(Problem(path, number, offset, ProblemKind.OUT_OF_ORDER, detail))
    return int(ts_recv[-1])
