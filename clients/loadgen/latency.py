"""Latency histograms: HdrHistogram (the ``hdrhistogram`` package), recorded in the
workers, encoded across the pipe, merged in the parent.

An HDR histogram keeps every value to 3 significant digits over its whole range in a
fixed, small amount of memory, and two of them merge exactly: the percentiles of the
merged histogram are those of all the values together, which averaging per-worker
percentiles would not give. Values are nanoseconds from 1 ns to ``HIGHEST_NS``; a larger
value (a replay's ``ts_event`` from another year, a clock far off) is recorded as
``HIGHEST_NS`` and counted in ``clipped``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

STAMPS = ("ts_recv", "ts_send", "ts_event")
"""What latency is measured from: ``receive time - stamp`` for each."""
HIGHEST_NS = 3_600 * 10**9
"""An hour: the largest latency a histogram holds as it is."""
DIGITS = 3
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99)


class LatencyHistogram:
    """An HDR histogram of nanosecond latencies."""

    def __init__(self) -> None:
        self.hdr = HdrHistogram(1, HIGHEST_NS, DIGITS)
        self.clipped = 0
        """Values above ``HIGHEST_NS``, recorded as it."""
        self.negative = 0
        """Values below zero (the stamp is later than the receive time: clocks differ),
        recorded as 1 ns."""

    def record(self, value_ns: int) -> None:
        if value_ns > HIGHEST_NS:
            self.clipped += 1
            value_ns = HIGHEST_NS
        elif value_ns < 1:
            self.negative += value_ns < 0
            value_ns = 1
        self.hdr.record_value(value_ns)

    def encode(self) -> bytes:
        """The histogram as HdrHistogram's compressed base64 form, plus the two counts."""
        body: bytes = self.hdr.encode()
        return b"%d %d " % (self.clipped, self.negative) + body

    @classmethod
    def merged(cls, encoded: Iterable[bytes]) -> LatencyHistogram:
        """One histogram holding the values of every encoded one."""
        out = cls()
        for data in encoded:
            clipped, negative, body = data.split(b" ", 2)
            out.clipped += int(clipped)
            out.negative += int(negative)
            out.hdr.decode_and_add(body)
        return out

    @property
    def count(self) -> int:
        return int(self.hdr.get_total_count())

    def percentile_ms(self, pct: float) -> float | None:
        """The value at ``pct`` in milliseconds, ``None`` when empty."""
        if not self.count:
            return None
        value: int = self.hdr.get_value_at_percentile(pct)
        return round(value / 1e6, 3)

    def curve(self) -> list[tuple[float, float]]:
        """``(percentile, ms)`` points for a percentile plot, as HdrHistogram draws it:
        ever closer to 100 (each step halves the distance to it, in thirds), up to the
        largest value recorded."""
        count = self.count
        points: list[tuple[float, float]] = []
        step = 0
        while count:
            pct = 100.0 * (1.0 - 0.5 ** (step / 3))
            value: int = self.hdr.get_value_at_percentile(pct)
            points.append((pct, round(value / 1e6, 3)))
            if (100.0 - pct) * count < 100.0:  # past the last sample
                break
            step += 1
        return points

    def max_ms(self) -> float | None:
        value: int = self.hdr.get_max_value()
        return round(value / 1e6, 3) if self.count else None


def percentile(ordered: Sequence[int], pct: float) -> int:
    """Nearest-rank percentile of a sorted, non-empty sequence."""
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]
