"""A block of events applied at once, for a replay that nobody watches.

A replay at ``--speed max`` applies events for nobody while no client is subscribed
(a backtest's warm-up, the skip to an incident). Event by event that is a few µs of
Python per event. A version-2 tick file (``replay.blocks``) holds its events in blocks,
columns of numbers: for the deltas of one symbol and side in a block, what the book
ends with is each price's last size, which numpy finds on the columns; only those
prices become strings and enter the book. The books, their ``seq``, the trade
channels' ``seq`` and the hub's counts end as the same events applied one by one would
leave them (tests/test_bulk.py checks this on real captures).

Only for ``Hub.idle()`` hubs: no group has a member, so there is nothing to publish. A
snapshot or gap in the block is applied as itself, between the runs around it; a block
with many of them (``worth_it``) is better applied event by event.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from feed.hub import Hub
from replay.blocks import DELTA, GAP, SNAPSHOT, TRADE, Block

BREAKS_MAX = 64
"""Snapshots and gaps in a block above which a bulk apply gains nothing: each one
splits the block into runs, and each run costs a few numpy calls."""


def worth_it(block: Block) -> bool:
    """True when ``block`` is worth applying at once rather than event by event."""
    return int(np.count_nonzero(block.kinds == SNAPSHOT) +
               np.count_nonzero(block.kinds == GAP)) <= BREAKS_MAX


def apply_block(hub: Hub, block: Block, ts_recv: int) -> None:
    """Apply every event of ``block`` to an idle hub, all stamped ``ts_recv``."""
    if not worth_it(block):
        for event in block.events():
            hub.apply(event, ts_recv)
        return
    kinds = block.kinds
    levels = _Levels(block)
    start = 0
    for index in np.flatnonzero((kinds == SNAPSHOT) | (kinds == GAP)).tolist():
        if index > start:
            _apply_run(hub, levels, start, index, ts_recv)
        hub.apply(block.event(index), ts_recv)
        start = index + 1
    if start < block.count:
        _apply_run(hub, levels, start, block.count, ts_recv)


class _Levels:
    """The levels of a block, each tagged with its event and side, and a scratch array
    as long as the decimal table."""

    def __init__(self, block: Block) -> None:
        self.block = block
        per_event = (block.bids + block.asks).astype(np.int64)
        self.first = np.concatenate(([0], np.cumsum(per_event)))
        """Index of each event's first level (and one past the last)."""
        self.event = np.repeat(np.arange(block.count), per_event)
        within = np.arange(len(self.event)) - np.repeat(self.first[:-1], per_event)
        self.ask = within >= np.repeat(block.bids.astype(np.int64), per_event)
        self.prices = block.levels[0::2]
        self.sizes = block.levels[1::2]
        self.last = np.full(len(block.decimals), -1, dtype=np.int64)
        """Per decimal: its last position in the levels being reduced (-1 between uses)."""

    def reduce(self, positions: np.ndarray[Any, Any]
               ) -> tuple[Iterable[tuple[str, str]], list[str]]:
        """The levels at ``positions`` (in event order) reduced to each price's last
        size: (price, size) pairs where it is not zero, and the prices where it is."""
        prices = self.prices[positions]
        order = np.arange(len(prices))
        last = self.last
        np.maximum.at(last, prices, order)
        final = last[prices] == order  # each price at its last position
        last[prices] = -1
        prices, sizes = prices[final], self.sizes[positions][final]
        gone = sizes == self.block.zero
        texts = self.block.texts
        removed: list[str] = texts[prices[gone]].tolist() if gone.any() else []
        if removed:
            prices, sizes = prices[~gone], sizes[~gone]
        return zip(texts[prices].tolist(), texts[sizes].tolist(), strict=True), removed


def _apply_run(hub: Hub, levels: _Levels, start: int, stop: int, ts_recv: int) -> None:
    """Events ``start`` to ``stop`` of the block: deltas and trades only."""
    block = levels.block
    kinds = block.kinds[start:stop]
    symbols = block.symbol[start:stop]
    counts = hub.stats.events
    trades = np.bincount(symbols[kinds == TRADE], minlength=len(block.symbols))
    counts["trade"] += int(trades.sum())
    for index in np.flatnonzero(trades).tolist():
        hub.add_symbol(block.symbols[index]).trades.skip(int(trades[index]))
    deltas = np.flatnonzero(kinds == DELTA)
    if not len(deltas):
        return
    counts["book_delta"] += len(deltas)
    # The deltas by symbol, each symbol's in event order; then their levels, by symbol
    # and side, in event order.
    by_symbol = deltas[np.argsort(symbols[deltas], kind="stable")] + start
    symbol_of = block.symbol[by_symbol]
    bounds = np.flatnonzero(np.diff(symbol_of)) + 1
    lo, hi = int(levels.first[start]), int(levels.first[stop])
    run_levels = np.flatnonzero(block.kinds[levels.event[lo:hi]] == DELTA) + lo
    key_type = np.uint16 if len(block.symbols) <= 0x8000 else np.uint32  # radix-sorted
    level_key = block.symbol[levels.event[run_levels]].astype(key_type) * 2 + \
        levels.ask[run_levels]
    order = np.argsort(level_key, kind="stable")
    run_levels, level_key = run_levels[order], level_key[order]
    for events in np.split(by_symbol, bounds):
        index = int(block.symbol[events[0]])
        book = hub.add_symbol(block.symbols[index]).book
        if not book.valid:
            hub.stats.ignored_deltas += len(events)
            continue
        for side, book_side in ((0, book.bids), (1, book.asks)):
            key = 2 * index + side
            a, b = np.searchsorted(level_key, (key, key + 1))
            if b > a:
                sizes, removed = levels.reduce(run_levels[a:b])
                book_side.apply_last(sizes, removed)
        last = int(events[-1])
        book.follow(block.seqs(events), int(block.ts_event[last]), ts_recv)
