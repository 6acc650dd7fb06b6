"""Tick files on disk: ``TickWriter`` records events, ``TickReader`` streams them back,
``inspect`` summarizes one.

The compression follows the file name when writing: ``.ticks`` plain, ``.ticks.gz``
gzip, ``.ticks.zst`` zstd (streaming, one frame). Reading recognises the compression
by content. The line format is ``replay.codec``'s; docs/tick-format.md has the details.

Damage never raises out of a reader's iteration (see ``replay.lines``): a cut
compressed stream ends it, a bad line is skipped; each is recorded in
``reader.problems`` with its line number and uncompressed byte offset, and
``reader.malformed`` counts the skipped lines. Opening raises ``BadHeader`` when the
first line is not a tick file header, and ``OSError`` when the file cannot be read.
"""

from __future__ import annotations

import gzip
import itertools
import zlib
from collections import Counter
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import zstandard

from feed.decimals import BadDecimal
from feed.events import Event, Gap

from .blocks import Block, BlockWriter, read_blocks
from .codec import (
    VERSIONS,
    BadHeader,
    TickFormatError,
    TickHeader,
    decode_event,
    decode_header,
    encode_event,
    encode_header,
    kind_of,
)
from .lines import (
    Compression,
    LineStream,
    Problem,
    ProblemKind,
    Run,
    StrPath,
    Tally,
    compression_for_name,
)

ZSTD_LEVEL = 9
"""Tick lines compress about 10x at this level, and still write far faster than a feed."""
GZIP_LEVEL = 6
_BATCH = 1 << 16


class _Sink(Protocol):
    def write(self, data: bytes | bytearray, /) -> int: ...
    def close(self) -> None: ...


class TickWriter:
    """Write events to a tick file, compressed according to the file name.

    ``threads`` (zstd only): 0 compresses in the writing thread; N > 0 in N threads of
    the compressor's own, which work while the writer makes the next events (-1: one per
    core). The file is one checksummed zstd frame either way.

    ``version`` 2 writes the block format (``replay.blocks``): far faster to replay, but
    unreadable to readers that know only version 1; ``flush()`` then ends the current
    block, and ``write`` raises ``ValueError`` for an event version 2 cannot hold.

    Use it as a context manager (or call ``close()``). The header is written on
    opening; ``flush()`` pushes everything written so far through the compressor to
    the disk, so that a reader (or a crash) sees a readable prefix.
    """

    def __init__(
        self,
        path: StrPath,
        *,
        source: str | None = None,
        symbols: Sequence[str] = (),
        ts_first: int | None = None,
        ts_last: int | None = None,
        level: int | None = None,
        threads: int = 0,
        version: int = 1,
    ) -> None:
        if version not in VERSIONS:
            raise ValueError(f"no tick file version {version}")
        self.path = str(path)
        self.version = version
        self._blocks = BlockWriter() if version == 2 else None
        self.compression = compression_for_name(path)
        self.count = 0
        self._raw = open(path, "wb")  # closed by close()
        self._out: _Sink
        self._zstd: zstandard.ZstdCompressionWriter | None = None
        self._gzip: gzip.GzipFile | None = None
        if self.compression is Compression.ZSTD:
            compressor = zstandard.ZstdCompressor(level=level or ZSTD_LEVEL, write_checksum=True,
                                                  threads=threads)
            self._zstd = compressor.stream_writer(self._raw, closefd=False)
            self._out = self._zstd
        elif self.compression is Compression.GZIP:
            self._gzip = gzip.GzipFile(
                filename="", mode="wb", compresslevel=level or GZIP_LEVEL, fileobj=self._raw,
                mtime=0,
            )
            self._out = self._gzip
        else:
            self._out = self._raw
        self._buffer = bytearray()
        self._closed = False
        header = TickHeader(source, tuple(symbols), ts_first, ts_last, version)
        self._buffer += encode_header(header) + b"\n"

    def write(self, event: Event) -> None:
        """Append one event."""
        if self._blocks is None:
            self._buffer += encode_event(event)
            self._buffer += b"\n"
        elif (block := self._blocks.add(event)) is not None:
            self._buffer += block
        self.count += 1
        if len(self._buffer) >= _BATCH:
            self._drain(whole=False)

    def write_all(self, events: Iterable[Event]) -> int:
        """Append every event of ``events``; returns how many."""
        before = self.count
        for event in events:
            self.write(event)
        return self.count - before

    def flush(self) -> None:
        """Make everything written so far readable from the file."""
        self._drain()
        if self._zstd is not None:
            self._zstd.flush(zstandard.FLUSH_BLOCK)
        elif self._gzip is not None:
            self._gzip.flush(zlib.Z_SYNC_FLUSH)
        self._raw.flush()

    def close(self) -> None:
        """Finish the compressed stream and close the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._drain()
            if self._out is not self._raw:
                self._out.close()
        finally:
            self._raw.close()

    def _drain(self, *, whole: bool = True) -> None:
        if whole and self._blocks is not None and (block := self._blocks.flush()) is not None:
            self._buffer += block  # a short block, so that what was written can be read
        if self._buffer:
            self._out.write(self._buffer)
            self._buffer.clear()

    def __enter__(self) -> TickWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class TickReader:
    """Stream the events of a tick file, in file order, in constant memory.

    The reader is its own (single-pass, lazy) iterator. ``header`` is read on
    opening. Damage is recorded in ``problems`` (shared with the caller when one is
    passed in) and skipped lines are counted in ``malformed``.
    """

    def __init__(self, path: StrPath, problems: list[Problem] | None = None) -> None:
        self.path = str(path)
        self.problems: list[Problem] = [] if problems is None else problems
        self._tally = Tally()
        self._lines = LineStream(path, self.problems)
        runs = self._lines.runs()
        before = len(self.problems)
        try:
            first = next(runs, None)
            if first is None:
                raise BadHeader(f"{self.path}: empty or cut before the end of its header")
            self.header = decode_header(first.lines[0])
        except BaseException:
            self._lines.close()
            raise
        skip = first.offset + len(first.lines[0]) + 1
        self._blocks: Generator[Block] | None = None
        if self.header.version == 2:  # binary after the header: read as blocks
            self._lines.close()
            del self.problems[before:]  # what the line reader made of the binary part
            self._blocks = read_blocks(self.path, skip, self.problems, self._tally)
            self._events = _block_events(self._blocks)
            return
        rest = Run(first.line + 1, skip, first.lines[1:])
        self._events = _events(itertools.chain((rest,), runs), self.path, self.problems,
                               self._tally)

    @property
    def malformed(self) -> int:
        """How many lines were skipped as bad so far."""
        return self._tally.malformed

    def __iter__(self) -> TickReader:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def blocks(self) -> Generator[Block] | None:
        """A version-2 file's blocks (``replay.blocks``), to be read instead of the
        events; ``None`` for version 1."""
        return self._blocks

    def close(self) -> None:
        """Release the file; iteration stops."""
        self._events.close()
        self._lines.close()
        if self._blocks is not None:
            self._blocks.close()

    def __enter__(self) -> TickReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _events(runs: Iterator[Run], path: str, problems: list[Problem], tally: Tally
            ) -> Generator[Event]:
    last = 0
    decode = decode_event
    for run in runs:
        for index, line in enumerate(run.lines):
            try:
                event = decode(line)
            except (BadDecimal, TickFormatError) as exc:
                tally.skip(problems, path, run.line + index, run.offset_of(index), exc)
                continue
            ts_recv = event.ts_recv
            if ts_recv < last:
                detail = f"ts_recv {ts_recv} is before the previous event's {last}"
                problems.append(Problem(path, run.line + index, run.offset_of(index),
                                        ProblemKind.OUT_OF_ORDER, detail))
            last = ts_recv
            yield event


def _block_events(blocks: Iterator[Block]) -> Generator[Event]:
    for block in blocks:
        yield from block.events()


MAX_GAPS_KEPT = 1000
"""``EventCounts`` keeps this many gaps in detail (and counts them all)."""


class EventCounts:
    """What a stream of events holds: counts by kind, symbols in order of appearance,
    the ``ts_recv`` span and the gaps (``(symbol, ts_recv, reason)``, the first
    ``MAX_GAPS_KEPT``). Feed it with ``add``."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.symbols: dict[str, None] = {}
        self.ts_first: int | None = None
        self.ts_last: int | None = None
        self.gaps: list[tuple[str, int, str]] = []

    def add(self, event: Event) -> None:
        """Count one event."""
        kind = kind_of(event)
        self.kinds[kind] += 1
        self.symbols.setdefault(event.symbol)
        if self.ts_first is None:
            self.ts_first = event.ts_recv
        self.ts_last = event.ts_recv
        if isinstance(event, Gap) and len(self.gaps) < MAX_GAPS_KEPT:
            self.gaps.append((event.symbol, event.ts_recv, event.reason))

    @property
    def events(self) -> int:
        """Events counted."""
        return sum(self.kinds.values())


@dataclass(frozen=True, slots=True)
class TickFileInfo:
    """What ``inspect`` found in a tick file."""

    header: TickHeader
    events: int
    kinds: tuple[tuple[str, int], ...]
    symbols: tuple[str, ...]
    ts_first: int | None
    ts_last: int | None
    malformed: int
    problems: tuple[Problem, ...]
    gaps: tuple[tuple[str, int, str], ...] = ()


def inspect(path: StrPath) -> TickFileInfo:
    """Read a whole tick file once: counts, symbols, gaps and the ``ts_recv`` span.

    This is where the span comes from when the header does not carry it. Raises what
    opening a ``TickReader`` raises.
    """
    counts = EventCounts()
    with TickReader(path) as reader:
        for event in reader:
            counts.add(event)
        return TickFileInfo(
            header=reader.header,
            events=counts.events,
            kinds=tuple(sorted(counts.kinds.items())),
            symbols=tuple(counts.symbols),
            ts_first=counts.ts_first,
            ts_last=counts.ts_last,
            malformed=reader.malformed,
            problems=tuple(reader.problems),
            gaps=tuple(counts.gaps),
        )
