"""Convert recordings (Binance, Kraken and Coinbase captures, tick files, any mix) to one
tick file.

``convert(paths, dst)`` streams ``open_events(paths)`` into a ``TickWriter``: constant
memory, so the header carries no time span (``replay.tickfile.inspect`` computes it).
The header's ``source`` and ``symbols`` are taken from the inputs when they agree.
``PROGRESS_EVERY`` events (and once with 0 when reading starts), an optional callback
hears how far it has got.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from feed.events import Event

from .capture import probe
from .lines import Problem, StrPath
from .sources import CRYPTOFEED_READERS, SourceKind, detect, open_events
from .tickfile import TickReader, TickWriter

PROGRESS_EVERY = 1 << 13


class SameFile(ValueError):
    """The output of a conversion is one of its inputs."""


@dataclass(frozen=True, slots=True)
class ConvertStats:
    """What a conversion did: events written, damage met, wall time taken."""

    events: int
    malformed: int
    problems: tuple[Problem, ...]
    seconds: float


def describe(paths: Sequence[StrPath]) -> tuple[str | None, tuple[str, ...]]:
    """The ``source`` (when all inputs share one) and the symbols the inputs name."""
    sources: set[str | None] = set()
    symbols: dict[str, None] = {}
    for path in paths:
        kind = detect(path)
        if kind is SourceKind.TICKS:
            with TickReader(path) as reader:
                sources.add(reader.header.source)
                symbols.update(dict.fromkeys(reader.header.symbols))
        elif kind in CRYPTOFEED_READERS:
            sources.add(kind.value)
            symbols.update(dict.fromkeys(CRYPTOFEED_READERS[kind].symbols(path)))
        else:
            info = probe(path)
            sources.add(None if info is None else f"binance-{info.market}")
            if info is not None:
                symbols[info.symbol] = None
    source = next(iter(sources)) if len(sources) == 1 else None
    return source, tuple(symbols)


def convert(
    paths: Sequence[StrPath],
    dst: StrPath,
    *,
    source: str | None = None,
    symbols: Sequence[str] | None = None,
    level: int | None = None,
    progress: Callable[[int], None] | None = None,
    version: int = 2,
) -> ConvertStats:
    """Write every event of ``paths`` (merged in ``ts_recv`` order) to the tick file
    ``dst``, compressed by its name. ``source`` / ``symbols`` default to ``describe``'s.
    ``progress`` is called with 0 when reading starts, then with the number of events
    written so far every ``PROGRESS_EVERY`` events. ``version`` is the tick file
    version written: 2, blocks (``replay.blocks``), or 1, JSON lines.

    A zstd output is compressed in threads of the compressor's own, one per core,
    while this one reads and decodes the inputs.

    The output is written to a temporary file beside ``dst`` and renamed over it when
    complete, so a failed conversion leaves no half-written ``dst``, and ``dst`` may not
    be one of the inputs. Raises ``SameFile`` for that, what ``open_events`` raises, and
    ``OSError`` when ``dst`` cannot be written.
    """
    started = time.perf_counter()
    target = Path(dst)
    for path in paths:
        if target.exists() and os.path.samefile(path, target):
            raise SameFile(f"{dst} is also an input: converting would overwrite it")
    if source is None or symbols is None:
        found_source, found_symbols = describe(paths)
        source = found_source if source is None else source
        symbols = found_symbols if symbols is None else symbols
    if progress is not None:
        progress(0)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial{_extension(target)}")
    try:
        with (
            open_events(paths) as events,
            TickWriter(partial, source=source, symbols=symbols, level=level,
                       threads=-1, version=version) as writer,
        ):
            if progress is None:
                count = writer.write_all(events)
            else:
                count = _write_reporting(writer, events, progress)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return ConvertStats(
        count, events.malformed, tuple(events.problems), time.perf_counter() - started
    )


def _extension(path: Path) -> str:
    """``.gz`` or ``.zst`` when the name asks for that compression, else nothing."""
    name = path.name
    return next((ext for ext in (".gz", ".zst") if name.endswith(ext)), "")


def _write_reporting(
    writer: TickWriter, events: Iterable[Event], progress: Callable[[int], None]
) -> int:
    write = writer.write
    count = 0
    for event in events:
        write(event)
        count += 1
        if not count % PROGRESS_EVERY:
            progress(count)
    return count
