"""The cost per feed event of the work that does not depend on the number of subscribers:
making a synthetic event, and ``Hub.apply`` publishing it to one ``book`` group per symbol.

``python -m benchmarks.hub_apply [--events N] [--symbols S] [--depth D] [--repeats R]``
builds a hub over ``SyntheticMarket(S)`` (seed 0), subscribes one member that drops what
it is given to every symbol's book at depth D, and times, best of R runs over the same
N events, in µs per event:

- ``next_event``: the synthetic market making the events alone;
- ``apply``: ``Hub.apply`` of those events (books, views, checksums, encoding, framing
  and the hand-off to the fan-out), held and released every 256 events as the ingester does.

Times are CPU time of this process (``time.process_time``), so that another job on a
shared machine slows the figures less than it would wall time. It prints a digest of
the published bytes as well, so that a change that must keep the
wire output can be checked against the one before it.
"""

from __future__ import annotations

import argparse
import hashlib
import time

from feed.events import Event
from feed.fanout import Entry
from feed.hub import Hub
from feed.outbox import Kind
from feed.protocol import BookOptions, Subscribe
from feed.synthetic import SyntheticMarket
from feed.wsframe import Frame

HOLD_EVENTS = 256  # the ingester's CHECKPOINT_EVERY


class Sink:
    """A member that keeps a digest of the frames it is handed and nothing else."""

    wbits = 0

    def __init__(self) -> None:
        self.digest = hashlib.blake2b(digest_size=8)
        self.frames = 0

    def deliver(self, frame: Frame, kind: Kind, key: str, now_ns: int) -> None:
        self.digest.update(frame.plain)
        self.frames += 1

    def deliver_many(self, entries: list[Entry], size: int, now_ns: int) -> None:
        for data, _, _, _ in entries:
            self.digest.update(data)
        self.frames += len(entries)


def make_events(symbols: int, count: int) -> tuple[SyntheticMarket, list[Event]]:
    market = SyntheticMarket(symbols)
    snapshots: list[Event] = list(market.snapshots(1))
    return market, snapshots + [market.next_event(2 + i) for i in range(count)]


def time_next_event(symbols: int, count: int) -> float:
    """Seconds to make ``count`` events from a fresh market."""
    market = SyntheticMarket(symbols)
    next_event = market.next_event
    began = time.process_time()
    for i in range(count):
        next_event(i)
    return time.process_time() - began


def time_apply(events: list[Event], symbols: tuple[str, ...], depth: int,
               sink: Sink | None = None) -> tuple[float, Sink]:
    """Seconds ``Hub.apply`` takes over ``events`` (after the snapshots), and the sink
    (a new ``Sink`` unless one is given)."""
    hub = Hub(clock=lambda: 0)
    for symbol in symbols:
        hub.add_symbol(symbol)
    sink = sink if sink is not None else Sink()
    first = len(symbols)
    for event in events[:first]:
        hub.apply(event, 1)
    request = Subscribe(1, "book", symbols, BookOptions(depth=depth))
    for _, group in hub.subscribe(sink, request, {}, len(symbols)):
        hub.join(sink, group, 1)
    apply, fanout = hub.apply, hub.fanout
    began = time.process_time()
    fanout.hold()
    for i, event in enumerate(events[first:]):
        apply(event, 2 + i)
        if i % HOLD_EVENTS == HOLD_EVENTS - 1:
            fanout.release()
            fanout.hold()
    fanout.release()
    return time.process_time() - began, sink


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    market, events = make_events(args.symbols, args.events)
    per_event = 1e6 / args.events
    made = min(time_next_event(args.symbols, args.events) for _ in range(args.repeats))
    runs = [time_apply(events, market.symbols, args.depth) for _ in range(args.repeats)]
    applied = min(seconds for seconds, _ in runs)
    sink = runs[0][1]
    print(f"next_event {made * per_event:.2f} us/event")
    print(f"apply      {applied * per_event:.2f} us/event")
    print(f"published  {sink.frames} frames, digest {sink.digest.hexdigest()}")


if __name__ == "__main__":
    main()
