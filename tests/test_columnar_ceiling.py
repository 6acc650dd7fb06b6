"""The layouts of ``benchmarks.columnar_ceiling`` hold the real capture exactly: its
figures are worth nothing if a layout loses or changes an event."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.columnar_ceiling import (
    Books,
    Table,
    bulk_dicts,
    bulk_numpy,
    decode_events,
    encode_bulk,
    encode_events,
)
from benchmarks.read_ceiling import _apply
from feed.events import BookDelta, BookSnapshot, Event
from replay.tickfile import TickReader

SAMPLE = Path(__file__).parent.parent / "replay" / "samples" / \
    "binance-spot-btcusdt-20240808.ticks.zst"
BLOCK = 256  # several blocks, and snapshots inside the file start their own


@pytest.fixture(scope="module")
def events() -> list[Event]:
    """The sample after a snapshot of levels far from its prices, which the sample's
    own first snapshot must clear away (as a looped replay starting over does)."""
    with TickReader(SAMPLE) as reader:
        sample = list(reader)
    first = sample[0]
    assert isinstance(first, BookSnapshot)
    stale = BookSnapshot(first.symbol, (("1", "1"),), (("9999999", "1"),),
                         first.ts_event, first.ts_recv, seq=first.seq)
    return [stale, *sample]


def _one_by_one(events: list[Event]) -> Books:
    books: Books = {}
    for event in events:
        if isinstance(event, BookSnapshot | BookDelta):
            _apply(books, event.symbol, isinstance(event, BookSnapshot), event.bids,
                   event.asks)
    return books


def test_per_event_layout_gives_back_every_event(events: list[Event]) -> None:
    decoded: list[Event] = []
    count = decode_events(encode_events(events, BLOCK, Table()), decoded.append)
    assert count == len(events) > BLOCK
    assert decoded == events


def test_bulk_applies_give_the_one_by_one_books(events: list[Event]) -> None:
    table = Table()
    blocks = encode_bulk(events, BLOCK, table)
    expected = _one_by_one(events)
    assert expected and all(sides[0] and sides[1] for sides in expected.values())
    books: Books = {}
    assert bulk_dicts(blocks, table.strings, books) == len(events)
    assert books == expected
    numpy = pytest.importorskip("numpy")
    books = {}
    assert bulk_numpy(numpy, blocks, table.strings, books) == len(events)
    assert books == expected
