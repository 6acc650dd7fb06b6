"""A part of a recording: a time window and a set of symbols.

``window(events, start=..., end=..., symbols=...)`` passes on the events of the
chosen symbols whose ``ts_recv`` is in ``[start, end)``. Starting in the middle of a
recording must not start with empty books, so the events before ``start`` are not
thrown away: their book events are folded into one book per symbol, and at ``start``
each book that is valid there comes out as one ``BookSnapshot`` (the venue's ``seq``
of the last event folded in, ``ts_event`` of that event, ``ts_recv`` = ``start``),
before the first event of the window. Trades before ``start`` are dropped, and a
recording that ends before ``start`` gives nothing at all. Reading
stops at the first event at or after ``end``, so a window at the front of a large
file costs only its own length.

``parse_time`` reads the ``--from`` / ``--to`` spelling: ISO-8601 (UTC when no offset
is given) or integer nanoseconds since the Unix epoch.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator
from datetime import UTC, datetime, timedelta

from feed.book import Book
from feed.events import BookDelta, BookSnapshot, Event, Gap

_ISO = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})"
    r"(?:[T ](?P<time>[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,](?P<fraction>[0-9]{1,9}))?)?))?"
    r"(?P<zone>Z|[+-][0-9]{2}:?[0-9]{2})?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
SMALLEST_NS = 10**17
"""Integers below this (1973) are refused: they are seconds, ms or µs, not ns."""


def parse_time(text: str) -> int:
    """Nanoseconds since the Unix epoch from ``"1723161300000000000"`` or an ISO-8601
    time such as ``"2024-08-08T23:55:00.123456789Z"``: a date, optionally a time (HH:MM,
    HH:MM:SS, and up to nine fraction digits after the seconds) and an offset (``Z``,
    ``+02:00``; none means UTC). Raises ``ValueError`` naming the text."""
    stripped = text.strip()
    if stripped.isascii() and stripped.isdigit() and len(stripped) <= 20:
        value = int(stripped)
        if value < SMALLEST_NS:
            raise ValueError(f"{text!r} is not nanoseconds since the epoch (seconds, ms "
                             "or µs?); give ns or an ISO-8601 time")
        return value
    match = _ISO.fullmatch(stripped)
    moment = None
    fraction = ""
    if match is not None:
        fraction = match["fraction"] or ""
        whole = match["date"] + "T" + (match["time"] or "00:00")
        if fraction:
            whole = whole[: -len(fraction) - 1]
        try:
            moment = datetime.fromisoformat(whole + (match["zone"] or ""))
        except ValueError:
            moment = None
    if moment is None:
        raise ValueError(f"expected ISO-8601 or nanoseconds since the epoch, got {text!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = (moment - _EPOCH) // _SECOND
    return seconds * 1_000_000_000 + int((fraction + "000000000")[:9])


def window(
    events: Iterable[Event],
    *,
    start: int | None = None,
    end: int | None = None,
    symbols: Collection[str] | None = None,
) -> Iterator[Event]:
    """The events of ``symbols`` (all when ``None``) with ``start <= ts_recv < end``,
    preceded by a snapshot of each book as it stood at ``start``; see the module
    docstring. With no limit at all, that is ``events`` itself (no step is added to
    each event's way)."""
    if start is None and end is None and symbols is None:
        return iter(events)
    return _window(events, start, end, symbols)


def _window(
    events: Iterable[Event],
    start: int | None,
    end: int | None,
    symbols: Collection[str] | None,
) -> Iterator[Event]:
    wanted = None if symbols is None else frozenset(symbols)
    stream = iter(events)
    if start is not None:
        books, first = _fold_until(stream, start, wanted)
        if first is None:  # the recording ends before start: nothing in the window
            return
        yield from books
        stream = _chain(first, stream)
    for event in stream:
        if end is not None and event.ts_recv >= end:
            return
        if wanted is None or event.symbol in wanted:
            yield event


def _fold_until(
    stream: Iterator[Event], start: int, wanted: frozenset[str] | None
) -> tuple[list[BookSnapshot], Event | None]:
    """Fold the book events before ``start``: the snapshots of the valid books at
    ``start``, and the first event at or after it (``None`` when there is none)."""
    books: dict[str, Book] = {}
    first: Event | None = None
    for event in stream:
        if event.ts_recv >= start:
            first = event
            break
        symbol = event.symbol
        if wanted is not None and symbol not in wanted:
            continue
        book = books.get(symbol)
        if book is None:
            book = books[symbol] = Book(symbol)
        if isinstance(event, BookSnapshot):
            book.apply_snapshot(event, event.ts_recv)
        elif isinstance(event, BookDelta):
            book.apply_delta(event, event.ts_recv)  # ignored while the book is not valid
        elif isinstance(event, Gap):
            book.invalidate()
    snapshots = [
        BookSnapshot(symbol, tuple(book.bids.top(len(book.bids))),
                     tuple(book.asks.top(len(book.asks))), book.ts_event, start,
                     book.source_seq)
        for symbol, book in books.items() if book.valid
    ]
    return snapshots, first


def _chain(first: Event, rest: Iterator[Event]) -> Iterator[Event]:
    yield first
    yield from rest
