"""What batching book updates into one frame would do to permessage-deflate.

``python -m benchmarks.batch_deflate [--events N] [--symbols S] [--depth D]``
publishes N synthetic events through a hub (``benchmarks.hub_apply``'s set-up: one
``book`` group per symbol at depth D), takes the payloads of the ``book_update``
messages it publishes, and compresses them as tickwire does (raw deflate, window 15,
level 6, each frame on its own: ``server_no_context_takeover``), one message per frame
and in batches of 5, 10 and 30 (PROTOCOL.md 1: a JSON array of messages). It prints,
per batch size, how much smaller the payloads come out, the compressed bytes per
message and the CPU µs of deflate per message.

tickwire sends one message per frame; this is the evidence for the next lever
(docs/performance.md): a socket write costs more the more bytes it carries, and
messages compress far better together than alone.
"""

from __future__ import annotations

import argparse
import time
import zlib

from benchmarks.hub_apply import Sink, make_events, time_apply
from feed.fanout import Entry

BATCHES = (1, 5, 10, 30)


class PayloadSink(Sink):
    """Keeps the payload of every frame it is handed (the frame header taken off)."""

    def __init__(self) -> None:
        super().__init__()
        self.payloads: list[bytes] = []

    def deliver_many(self, entries: list[Entry], size: int, now_ns: int) -> None:
        super().deliver_many(entries, size, now_ns)
        for data, _, _, _ in entries:
            length = data[1] & 0x7F  # server frames are unmasked: 7, 16 or 64-bit lengths
            self.payloads.append(data[2 if length < 126 else 4 if length == 126 else 10:])


def deflate(payload: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)[:-4]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--depth", type=int, default=10)
    args = parser.parse_args()
    market, events = make_events(args.symbols, args.events)
    sink = PayloadSink()
    time_apply(events, market.symbols, args.depth, sink)
    payloads = sink.payloads
    print(f"{len(payloads)} book_update messages, {sum(map(len, payloads)) / len(payloads):.0f} "
          "bytes each on average")
    for n in BATCHES:
        frames = [payloads[i] if n == 1 else b"[" + b",".join(payloads[i:i + n]) + b"]"
                  for i in range(0, len(payloads) - n + 1, n)]
        began = time.process_time()
        compressed = [deflate(frame) for frame in frames]
        took = time.process_time() - began
        messages = len(frames) * n
        raw, out = sum(map(len, frames)), sum(map(len, compressed))
        print(f"{n:2d} per frame: {raw / out:.2f}x smaller, {out / messages:.0f} bytes per "
              f"message, deflate {took / messages * 1e6:.1f} us per message")


if __name__ == "__main__":
    main()
