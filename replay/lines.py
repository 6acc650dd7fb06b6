"""Lines of a plain, gzip or zstd file, streamed in constant memory, with damage
reported instead of raised.

A recording can be damaged in a few ways: the process writing it died (a compressed
stream cut short, a half-written last line), a disk or a copy went wrong (garbage in a
compressed stream), or someone edited it. Readers of tick files and of raw captures all
want the same thing: every good line up to the damage, and an account of what was
wrong and where. ``LineStream`` gives both: iterating yields ``(line_no, offset,
bytes)`` for each complete line (1-based line number, byte offset of the line's start
in the *uncompressed* stream, the line without its ``\\n``), and each problem found is
appended to ``problems`` as a ``Problem`` with the same kind of position.

Compression is recognised by the file's magic bytes, not its name, so a misnamed file
still reads. A gzip or zstd stream that holds several members/frames one after the other
reads as their concatenation.

Nothing here raises for damage; ``LineStream(path)`` raises ``OSError`` when the file
cannot be opened at all.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Protocol

import zstandard

from feed.decimals import BadDecimal

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK_SIZE = 1 << 14
"""Compressed bytes read and decompressed at a time (on corrupt data, the output of
the failing piece is lost, so pieces are kept small)."""
MAX_LINE = 64 << 20
"""A longer line is damage (a lost newline), skipped rather than held in memory."""

StrPath = str | os.PathLike[str]


class Compression(Enum):
    """How a file's bytes are stored."""

    PLAIN = "plain"
    GZIP = "gzip"
    ZSTD = "zstd"


class ProblemKind(StrEnum):
    """What was wrong. The first three end the stream; the next two skip one line; an
    out-of-order line is still delivered; a checksum mismatch becomes a ``Gap``."""

    TRUNCATED = "truncated"  # the compressed stream ends before its end marker
    CORRUPT = "corrupt"  # the compressed data is invalid
    PARTIAL_LINE = "partial_line"  # the last line has no newline: half-written
    MALFORMED = "malformed"  # not a valid line of its format
    BAD_DECIMAL = "bad_decimal"  # a price or size is not a decimal number
    OUT_OF_ORDER = "out_of_order"  # ts_recv went backwards within one source
    CHECKSUM = "checksum"  # the venue's checksum disagrees with the rebuilt book


@dataclass(frozen=True, slots=True)
class Problem:
    """One piece of damage and where it is.

    ``line`` is the 1-based line number, ``offset`` the byte offset of that line's start
    in the uncompressed stream (for a cut stream: the line that was cut).
    """

    path: str
    line: int
    offset: int
    kind: ProblemKind
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} (byte {self.offset}): {self.kind}: {self.detail}"


class _ReadCounter:
    __slots__ = ("total",)

    def __init__(self) -> None:
        self.total = 0


_read = _ReadCounter()


def bytes_read() -> int:
    """File bytes (compressed, as stored) that every ``LineStream`` of this process has
    read so far: a monotonic counter, like a metric. A long job shows its progress as
    the growth of this figure against the size of its inputs."""
    return _read.total


class Tally:
    """Lines a reader skipped, counted where its generator can reach them without
    referring back to the reader (see ``LineStream``)."""

    __slots__ = ("malformed",)

    def __init__(self) -> None:
        self.malformed = 0

    def skip(self, problems: list[Problem], path: str, line_no: int, offset: int,
             exc: Exception) -> None:
        """Count a line skipped because of ``exc`` and report it: ``bad_decimal`` for a
        ``BadDecimal``, else ``malformed``."""
        kind = ProblemKind.BAD_DECIMAL if isinstance(exc, BadDecimal) else ProblemKind.MALFORMED
        self.malformed += 1
        problems.append(Problem(path, line_no, offset, kind, str(exc)))


class _Decoder(Protocol):
    @property
    def eof(self) -> bool: ...
    @property
    def unused_data(self) -> bytes: ...
    def decompress(self, data: bytes) -> bytes: ...


def compression_of(head: bytes) -> Compression:
    """The compression a file uses, from its first bytes."""
    if head.startswith(GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(ZSTD_MAGIC):
        return Compression.ZSTD
    return Compression.PLAIN


def compression_for_name(path: StrPath) -> Compression:
    """The compression a file *should* use, from its name: ``.gz``, ``.zst``, else plain."""
    name = Path(path).name
    if name.endswith(".gz"):
        return Compression.GZIP
    if name.endswith(".zst"):
        return Compression.ZSTD
    return Compression.PLAIN


def _new_decoder(compression: Compression) -> _Decoder:
    if compression is Compression.GZIP:
        return zlib.decompressobj(wbits=31)
    return zstandard.ZstdDecompressor().decompressobj()


class LineStream:
    """The complete lines of one file; see the module docstring.

    Iterate it once. ``problems`` (shared with the caller when one is passed in) gets
    the damage; ``close()``, exhausting the iteration, or dropping the stream releases
    the file. (The line generator does not refer back to the stream, so that a stream
    dropped half-read is freed, and its file closed, at once.)
    """

    def __init__(
        self,
        path: StrPath,
        problems: list[Problem] | None = None,
        *,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.path = str(path)
        self.problems: list[Problem] = [] if problems is None else problems
        self._file: io.BufferedReader = open(path, "rb")  # closed by the generator, or close()
        try:
            head = self._file.peek(4)[:4]
        except OSError as exc:  # name the file: a read error does not
            self._file.close()
            raise OSError(exc.errno, exc.strerror, self.path) from None
        self.compression = compression_of(head)
        self._runs = _runs(self._file, self.compression, chunk_size, self.path, self.problems)
        self._lines = _lines(self._runs)

    def __iter__(self) -> Iterator[tuple[int, int, bytes]]:
        return self._lines

    def runs(self) -> Iterator[Run]:
        """The same lines in runs, one per decompressed piece: far fewer steps for a
        reader of many short lines. Read the stream this way or line by line, not
        both."""
        return self._runs

    def close(self) -> None:
        """Release the file; iteration stops."""
        self._lines.close()
        self._runs.close()
        self._file.close()

    def __enter__(self) -> LineStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def data_chunks(
    file: io.BufferedReader, compression: Compression, size: int, cut: list[Problem]
) -> Iterator[bytes]:
    """The uncompressed data of ``file`` in pieces; on damage, leaves a position-less
    ``Problem`` in ``cut`` (the caller knows the position) and stops."""
    read = file.read
    counter = _read
    if compression is Compression.PLAIN:
        while chunk := read(size):
            counter.total += len(chunk)
            yield chunk
        return
    decoder = _new_decoder(compression)
    started = False  # the current member/frame has had input
    while True:
        data = read(size)
        counter.total += len(data)
        if not data:
            if started and not decoder.eof:
                detail = "compressed stream ends before its end"
                cut.append(Problem("", 0, 0, ProblemKind.TRUNCATED, detail))
            return
        while data:
            if not started and compression is Compression.GZIP:
                data = data.lstrip(b"\0")  # zero padding after a member is allowed
                if not data:
                    break
            try:
                out = decoder.decompress(data)
            except (zlib.error, zstandard.ZstdError) as exc:
                detail = f"invalid compressed data: {exc}"
                cut.append(Problem("", 0, 0, ProblemKind.CORRUPT, detail))
                return
            started = True
            if out:
                yield out
            if not decoder.eof:
                break
            # A member/frame ended; whatever follows starts the next one.
            data = decoder.unused_data
            decoder = _new_decoder(compression)
            started = False


@dataclass(frozen=True, slots=True)
class Run:
    """Consecutive complete lines of a file: ``lines[i]`` is line number ``line + i``,
    and ``lines[0]`` starts at byte ``offset`` of the uncompressed stream."""

    line: int
    offset: int
    lines: list[bytes]

    def offset_of(self, index: int) -> int:
        """The uncompressed byte offset at which ``lines[index]`` starts."""
        return self.offset + sum(map(len, self.lines[:index])) + index


def _runs(
    file: io.BufferedReader,
    compression: Compression,
    chunk_size: int,
    path: str,
    problems: list[Problem],
) -> Generator[Run]:
    line_no = 0
    offset = 0
    pending = b""
    skipping = False  # inside an over-long line, dropped up to its newline
    cut: list[Problem] = []
    try:
        for chunk in data_chunks(file, compression, chunk_size, cut):
            if pending:
                chunk = pending + chunk
            parts = chunk.split(b"\n")
            pending = parts.pop()
            if parts:
                first, start = line_no + 1, offset
                line_no += len(parts)
                offset += len(chunk) - len(pending)
                if skipping:  # the end of the over-long line
                    skipping = False
                    first += 1
                    start += len(parts[0]) + 1
                    del parts[0]
                if parts:
                    yield Run(first, start, parts)
            if len(pending) > MAX_LINE:
                if not skipping:
                    problems.append(
                        Problem(path, line_no + 1, offset, ProblemKind.MALFORMED, "line too long")
                    )
                skipping = True
                offset += len(pending)
                pending = b""
        if cut:
            lost = f"; {len(pending)} bytes of this line lost" if pending else ""
            problems.append(Problem(path, line_no + 1, offset, cut[0].kind, cut[0].detail + lost))
        elif pending and not skipping:
            detail = f"last line has no newline (half-written?): {len(pending)} bytes skipped"
            problems.append(Problem(path, line_no + 1, offset, ProblemKind.PARTIAL_LINE, detail))
    finally:
        file.close()


def _lines(runs: Iterator[Run]) -> Generator[tuple[int, int, bytes]]:
    for run in runs:
        line_no, offset = run.line, run.offset
        for line in run.lines:
            yield line_no, offset, line
            line_no += 1
            offset += len(line) + 1
