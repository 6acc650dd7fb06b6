"""Counters and latency histograms, exposed in Prometheus text format on /metrics.

The hot path only adds to plain integers (``Metrics`` attributes, ``LatencyHistogram``
buckets); the prometheus-client library reads them when /metrics is scraped, through
a custom collector, and renders the exposition format. Process CPU and memory come
from prometheus-client's own process collector.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from feed.recorder import RecorderStatistics

# Bucket upper bounds in nanoseconds: 10 us to 1 s.
_BOUNDS_NS = (10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
              5_000_000, 10_000_000, 25_000_000, 50_000_000, 100_000_000, 250_000_000,
              1_000_000_000)


class LatencyHistogram:
    """A fixed-bucket histogram of durations in nanoseconds."""

    __slots__ = ("counts", "total_ns")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS_NS) + 1)
        self.total_ns = 0

    def observe(self, duration_ns: int) -> None:
        self.counts[bisect_left(_BOUNDS_NS, duration_ns)] += 1
        self.total_ns += max(duration_ns, 0)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (upper bound in seconds, count) pairs, ending with +Inf."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(_BOUNDS_NS, self.counts, strict=False):
            running += count
            out.append((repr(bound / 1e9), float(running)))
        running += self.counts[-1]
        out.append(("+Inf", float(running)))
        return out


@dataclass
class Metrics:
    """Server-wide counters. Integers only; read at scrape time."""

    connections_total: int = 0
    http_requests: dict[int, int] = field(default_factory=dict)
    frames_sent: int = 0
    bytes_sent: int = 0
    closes: dict[int, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    fd_refusals: int = 0
    dead_peers: int = 0
    bad_lines: int = 0
    feed_behind_s: float = 0.0
    apply_time: LatencyHistogram = field(default_factory=LatencyHistogram)
    fanout_time: LatencyHistogram = field(default_factory=LatencyHistogram)
    due_to_write: LatencyHistogram = field(default_factory=LatencyHistogram)
    write_time: LatencyHistogram = field(default_factory=LatencyHistogram)


class _Collector(Collector):
    def __init__(self, read: Callable[[], Iterator[Metric]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        return self._read()


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def labelled_counter(name: str, doc: str, label: str,
                     values: dict[str, int] | dict[int, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([str(key)], value)
    return family


def stage_histogram(stages: dict[str, LatencyHistogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "tickwire_stage_latency_seconds",
        "Per-stage latency: apply (one event into the book, its views and its encoded "
        "messages), fanout (one run of published messages handed to the clients' "
        "outboxes), due_to_write (from an "
        "event's release, its ts_recv, to the socket write that carries it: the feed's "
        "lateness plus the time in the client's outbox), write (one socket write)",
        labels=["stage"])
    for stage, histogram in stages.items():
        family.add_metric([stage], histogram.buckets(), histogram.total_ns / 1e9)
    return family


def record_families(stats: RecorderStatistics) -> Iterator[Metric]:
    """The recorder's families (``serve --record``)."""
    yield counter("tickwire_record_events", "Event lines written to the recording (with "
                  "the gaps and snapshots the recorder adds)", stats.events)
    yield counter("tickwire_record_dropped_events", "Events not recorded because the "
                  "recorder's buffer was full (the disk slower than the feed) or the "
                  "recording had failed", stats.dropped)
    yield counter("tickwire_record_gaps", "Gaps written into the recording for dropped "
                  "events (each followed by a snapshot of the book)", stats.gaps)
    yield counter("tickwire_record_bytes", "Compressed bytes written to recording files",
                  stats.bytes)
    yield counter("tickwire_record_files", "Recording files opened", stats.files)
    yield gauge("tickwire_record_buffered_events", "Events waiting for the recorder's disk "
                "writes", stats.buffered)
    yield gauge("tickwire_record_buffer_fill", "Recorder buffer fill: waiting events over "
                "record.max_buffered_events (1: events are being dropped)",
                stats.buffered / stats.capacity if stats.capacity else 0.0)
    yield gauge("tickwire_record_lag_seconds", "Age of the oldest event the recorder has "
                "not written to its file yet (0: all written)", stats.lag_s)
    yield gauge("tickwire_record_failed", "1 when a write error stopped the recording (the "
                "log says which)", float(stats.failed))


def exposition(read: Callable[[], Iterator[Metric]]) -> Callable[[], bytes]:
    """A function rendering the families ``read`` yields, plus process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(read))
    ProcessCollector(registry=registry)
    return lambda: generate_latest(registry)
