"""Batched fan-out hands every client exactly the bytes that immediate delivery would.

The same random script (book deltas and snapshots, trades, gaps, and clients that
subscribe, unsubscribe, resync and read) runs on two hubs: one delivers every
publish at once, the other holds the fan-out over random runs of events, as the
ingester does between two awaits. Every session's outbox must hold the same frames in
the same order, and the sessions must end in the same state.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from feed.events import BookDelta, BookSnapshot, Event, Gap, Trade
from feed.hub import Hub
from feed.session import Session, SessionLimits

SYMBOLS = ("BTC", "ETH")
PRICES = [str(p) for p in range(95, 106)]


def clock() -> int:
    """A clock that stands still: the two runs stamp the same times."""
    return 10**18


levels = st.lists(st.tuples(st.sampled_from(PRICES), st.sampled_from(["0", "1", "2.5"])),
                  max_size=3)


@st.composite
def events(draw: st.DrawFn) -> Event:
    symbol = draw(st.sampled_from(SYMBOLS))
    kind = draw(st.sampled_from(["delta", "delta", "delta", "trade", "snapshot", "gap"]))
    if kind == "delta":
        return BookDelta(symbol, tuple(draw(levels)), tuple(draw(levels)), 1, 1)
    if kind == "trade":
        return Trade(symbol, draw(st.integers(1, 10**6)), "100", "1",
                     draw(st.sampled_from(["buy", "sell"])), 1, 1)
    if kind == "snapshot":
        return BookSnapshot(symbol, (("99", "1"), ("98", "2")), (("101", "1"),), 1, 1)
    return Gap(symbol, 1, 1, "test")


requests = st.sampled_from([
    {"op": "subscribe", "channel": "book", "symbols": ["BTC"], "depth": 2},
    {"op": "subscribe", "channel": "book", "symbols": ["BTC", "ETH"]},
    {"op": "subscribe", "channel": "book", "symbols": ["ETH"], "interval_ms": 0,
     "checksum": False},
    {"op": "subscribe", "channel": "trades", "symbols": ["BTC", "ETH"]},
    {"op": "subscribe", "channel": "bbo", "symbols": ["ETH"]},
    {"op": "unsubscribe", "channel": "book", "symbols": ["BTC"]},
    {"op": "unsubscribe", "channel": "trades", "symbols": ["BTC", "ETH"]},
    {"op": "resync", "channel": "book", "symbol": "BTC"},
])

steps = st.lists(st.one_of(
    st.tuples(st.just("event"), events()),
    st.tuples(st.just("request"), st.tuples(st.integers(0, 3), requests)),
    st.tuples(st.just("release"), st.none()),
    st.tuples(st.just("read"), st.integers(0, 3)),
), max_size=60)


def run(script: list[tuple[str, Any]], held: bool) -> list[tuple[list[bytes], str, int]]:
    hub = Hub(clock)
    for symbol in SYMBOLS:
        hub.add_symbol(symbol)
    # Budgets no script reaches: under the lag policy the two may differ, both valid (a
    # held run is dropped whole for one snapshot, an immediate one from where it broke).
    limits = SessionLimits()
    sessions = [Session(hub, limits, wbits=15 if i % 2 else 0, now_ns=clock())
                for i in range(4)]
    written: list[list[bytes]] = [[] for _ in sessions]
    if held:
        hub.fanout.hold()
    for step, value in script:
        if step == "event":
            hub.apply(value, clock())
        elif step == "request":
            index, request = value
            if held:  # another task: it runs only once the ingester has released
                hub.fanout.release()
            sessions[index].handle(orjson.dumps(request), clock())
            if held:
                hub.fanout.hold()
        elif step == "release" and held:
            hub.fanout.release()
            hub.fanout.hold()
        elif step == "read":
            if held:
                hub.fanout.release()
            frames, _ = sessions[value].outbox.take_batch(1 << 30)
            written[value].extend(frames)
            if held:
                hub.fanout.hold()
    hub.fanout.release()
    for s, out in zip(sessions, written, strict=True):
        frames, _ = s.outbox.take_batch(1 << 30)
        out.extend(frames)
    return [(out, s.state.name, s.close_code) for s, out in zip(sessions, written,
                                                                strict=True)]


@settings(max_examples=150, deadline=None)
@given(steps)
def test_held_fan_out_gives_each_client_what_immediate_delivery_does(
        script: list[tuple[str, Any]]) -> None:
    assert run(script, held=True) == run(script, held=False)
