"""``Report``: what a run measured, the warnings it calls for, and how it is shown.

The figures come from three sources: the workers' results (counts, sampled latency,
their CPU), two reads of the server's ``/metrics`` and two of the machine's
``/proc/stat``, at the start and at the end of the window.
"""

from __future__ import annotations

import datetime
import os
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import orjson

from clients.loadgen.check import FAULTS, faults
from clients.loadgen.config import LoadConfig
from clients.loadgen.latency import STAMPS, LatencyHistogram, percentile
from clients.loadgen.messages import ConnectionResult, Ready, Window, WorkerResult
from clients.loadgen.metrics import metric_by_label, metric_total
from clients.loadgen.spawn import SpawnedServer

LATE_WINDOW = 0.05
"""A worker whose window is longer or shorter than asked by more than this share of it
was too busy to mark its start and end on time."""
CPU_LIMIT = 0.9
"""A worker above this share of one core limits the measurement."""
OTHER_LOAD_LIMIT = 0.2
"""Cores used by other processes during the window above which a run is flagged."""
LATENCY_GROWTH_MS = 100.0
"""Growth of the median latency over the window that means the server is behind."""


@dataclass(frozen=True)
class LatencyFigures:
    """Sampled ``receive time - ts_recv``, milliseconds (None without samples), from the
    workers' HDR histograms merged; the same from ``ts_send`` and ``ts_event``."""

    samples: int
    sample_every: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p99_9_ms: float | None
    p99_99_ms: float | None
    max_ms: float | None
    p50_first_ms: float | None
    """Median of the samples in the first fifth of the window..."""
    p50_last_ms: float | None
    """...and in the last fifth: a server falling behind its feed shows as growth."""
    from_send: dict[str, float | None]
    """``receive - ts_send`` (the network and this client): p50, p99, p99.9, max."""
    from_event: dict[str, float | None]
    """``receive - ts_event`` (the source's own delay too; meaningless for a replay of
    an old file, whose values are clipped at an hour): p50, p99, p99.9, max."""
    clipped: int
    """Samples over an hour (any stamp), recorded as an hour."""
    curve: list[tuple[float, float]]
    """``receive - ts_recv`` as ``(percentile, ms)`` points, for ``--plot``."""


@dataclass(frozen=True)
class ServerFigures:
    """The server's own figures over the window, from two reads of /metrics. A server
    with several worker processes (``tickwire serve --workers N``) answers each read
    from one of them: then every figure but the CPU of a spawned server is one worker's."""

    cpu_s: float
    """The CPU of every process of a server the run started (/proc); otherwise that of
    the process that answered /metrics."""
    cpu_cores: float
    """CPU seconds per second of the window: 1.0 is one core fully busy."""
    messages_sent: int
    bytes_sent: int
    cpu_us_per_message: float | None
    """Server CPU microseconds per message it sent."""
    events_applied: int
    """Feed events the server applied in the window (its ingest)."""
    events_per_s: float
    lag_events: int
    dropped_messages: int
    closes: dict[str, int]
    stage_mean_us: dict[str, float]
    writes: int
    """Socket writes in the window (the ``write`` stage's count)."""
    messages_per_write: float | None
    """Messages sent per socket write: the server's batching."""
    open_connections: int
    workers: int
    """Server processes sharing the port (``tickwire_workers``; 1 when not given)."""


@dataclass(frozen=True)
class WorkerFigures:
    worker: int
    pid: int
    connections: int
    cpu_s: float
    cpu_cores: float
    """Share of one core the worker used during the window."""


@dataclass(frozen=True)
class MachineFigures:
    """CPU of the whole machine over the window, in cores (1.0: one core busy)."""

    cores: int
    busy_cores: float | None
    irq_cores: float | None
    """Part of ``busy_cores`` spent in (soft) interrupts: mostly loopback TCP."""
    loadgen_cores: float
    """The load generator: its parent process and every worker."""
    other_cores: float | None
    """Busy minus interrupts, server and load generator: other processes."""


@dataclass(frozen=True)
class Report:
    """Everything a run measured (``--json`` writes this)."""

    date: str
    url: str
    server_command: tuple[str, ...] | None
    server_pid: int | None
    connections: int
    workers: int
    channel: str
    symbols: tuple[str, ...]
    depth: int | None
    compress: bool
    compressed_connections: int
    compression_ratio: float | None
    """Inflated over received payload bytes of the sampled data messages (1.0 when
    nothing is compressed; None without samples)."""
    warmup_s: float
    duration_s: float
    window_s: float
    messages: int
    bytes: int
    messages_per_s: float
    bytes_per_s: float
    per_connection_min: float
    per_connection_median: float
    per_connection_max: float
    latency: LatencyFigures
    server: ServerFigures | None
    machine: MachineFigures
    worker_figures: tuple[WorkerFigures, ...]
    per_connection: tuple[ConnectionResult, ...]
    sampled_types: dict[str, int]
    decode_errors: int
    checks: dict[str, int]
    """What the checking connections (one per worker) counted: messages checked, faults
    (``clients.loadgen.check.FAULTS``), lag and resync snapshots, gap notices."""
    checked_connections: int
    throughput: tuple[float, ...]
    """Messages per second received by all connections, every ``THROUGHPUT_STEP_S``."""
    server_log_warnings: int | None
    server_log_errors: int | None
    server_log_notable: tuple[str, ...]
    warnings: tuple[str, ...]


def report_json(report: Report) -> bytes:
    """The report as indented JSON (what ``--json`` writes)."""
    return orjson.dumps(asdict(report), option=orjson.OPT_INDENT_2)


def server_figures(before: dict[str, float], after: dict[str, float],
                   elapsed: float, cpu_s: float | None = None) -> ServerFigures:
    """The server's figures over ``elapsed`` seconds between two reads of /metrics;
    ``cpu_s``: its CPU measured otherwise (all its processes), instead of /metrics'."""
    def delta(name: str) -> float:
        return metric_total(after, name) - metric_total(before, name)

    cpu = delta("process_cpu_seconds_total") if cpu_s is None else cpu_s
    sent = int(delta("tickwire_messages_sent_total"))
    closes_before = metric_by_label(before, "tickwire_closes_total")
    closes = {code: int(value - closes_before.get(code, 0))
              for code, value in metric_by_label(after, "tickwire_closes_total").items()}
    sums = metric_by_label(after, "tickwire_stage_latency_seconds_sum")
    sums0 = metric_by_label(before, "tickwire_stage_latency_seconds_sum")
    counts = metric_by_label(after, "tickwire_stage_latency_seconds_count")
    counts0 = metric_by_label(before, "tickwire_stage_latency_seconds_count")
    writes = int(counts.get("write", 0) - counts0.get("write", 0))
    stages = {}
    for stage, total in sums.items():
        count = counts.get(stage, 0) - counts0.get(stage, 0)
        if count > 0:
            stages[stage] = round((total - sums0.get(stage, 0)) / count * 1e6, 1)
    return ServerFigures(
        cpu_s=round(cpu, 3), cpu_cores=round(cpu / elapsed, 3) if elapsed > 0 else 0.0,
        messages_sent=sent, bytes_sent=int(delta("tickwire_bytes_sent_total")),
        cpu_us_per_message=round(cpu / sent * 1e6, 3) if sent else None,
        events_applied=int(delta("tickwire_events_total")),
        events_per_s=round(delta("tickwire_events_total") / elapsed, 1) if elapsed > 0 else 0.0,
        lag_events=int(delta("tickwire_lag_events_total")),
        dropped_messages=int(delta("tickwire_dropped_messages_total")),
        closes={k: v for k, v in closes.items() if v}, stage_mean_us=stages, writes=writes,
        messages_per_write=round(sent / writes, 2) if writes else None,
        open_connections=int(metric_total(after, "tickwire_open_connections")),
        workers=int(metric_total(after, "tickwire_workers")) or 1)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _latency(results: Sequence[WorkerResult], window: Window,
             sample_every: int) -> LatencyFigures:
    hist = {stamp: LatencyHistogram.merged(r.histograms[stamp] for r in results)
            for stamp in STAMPS}
    recv = hist["ts_recv"]
    samples = [(t, x) for r in results for t, x in zip(r.sample_times_ns, r.latencies_ns,
                                                          strict=True)]
    fifth_ns = (window.end - window.start) * 1e9 / 5
    first = sorted(x for t, x in samples if t < window.start * 1e9 + fifth_ns)
    last = sorted(x for t, x in samples if t >= window.end * 1e9 - fifth_ns)

    def brief(h: LatencyHistogram) -> dict[str, float | None]:
        return {"p50_ms": h.percentile_ms(50), "p99_ms": h.percentile_ms(99),
                "p99_9_ms": h.percentile_ms(99.9), "max_ms": h.max_ms()}

    return LatencyFigures(
        recv.count, sample_every, recv.percentile_ms(50), recv.percentile_ms(90),
        recv.percentile_ms(99), recv.percentile_ms(99.9), recv.percentile_ms(99.99),
        recv.max_ms(), round(percentile(first, 50) / 1e6, 3) if first else None,
        round(percentile(last, 50) / 1e6, 3) if last else None,
        brief(hist["ts_send"]), brief(hist["ts_event"]),
        sum(h.clipped for h in hist.values()), recv.curve())


def build_report(config: LoadConfig, url: str, symbols: tuple[str, ...], window: Window,
                 ready: list[Ready], results: list[WorkerResult],
                 server: ServerFigures | None,
                 cpu: tuple[float | None, float | None, float],
                 spawned: SpawnedServer | None, warnings: list[str]) -> Report:
    """The report of a run, its warnings appended to ``warnings``. ``cpu``: the
    machine's busy and interrupt cores (None without ``/proc/stat``) and the parent's
    own cores over the window."""
    connections = sorted((c for r in results for c in r.connections), key=lambda c: c.index)
    live = [c for c in connections if c.error is None]
    rates = sorted(c.messages_per_s for c in live) or [0.0]
    window_s = statistics.fmean(r.window_s for r in results)
    messages = sum(c.messages for c in connections)
    data = sum(c.bytes for c in connections)
    types: Counter[str] = Counter()
    for r in results:
        types.update(r.sampled_types)
    workers = tuple(WorkerFigures(r.worker, r.pid, len(r.connections), round(r.cpu_s, 3),
                                  round(r.cpu_s / r.window_s, 3) if r.window_s > 0 else 0.0)
                    for r in results)
    for w in workers:
        if w.cpu_cores > CPU_LIMIT:
            warnings.append(f"LOAD GENERATOR LIMITED: worker {w.worker} used "
                            f"{w.cpu_cores:.0%} of a core; the figures measure the load "
                            "generator, not the server (use more workers or fewer connections)")
    for r in results:
        if abs(r.window_s - config.duration) > LATE_WINDOW * config.duration:
            warnings.append(f"LOAD GENERATOR LIMITED: worker {r.worker} measured a window "
                            f"of {r.window_s:.2f} s instead of {config.duration:g} s: it "
                            "was too busy to keep time, so its counts are not the server's")
    busy, irq, own = cpu
    cores = os.cpu_count() or 1
    loadgen = own + sum(w.cpu_cores for w in workers)
    other = (busy - (irq or 0.0) - loadgen - server.cpu_cores
             if busy is not None and server is not None else None)
    machine = MachineFigures(cores, _round(busy), _round(irq), round(loadgen, 3),
                             _round(other))
    if busy is not None and busy > CPU_LIMIT * cores:
        warnings.append(f"MACHINE SATURATED: {busy:.2f} of {cores} cores busy during the "
                        "window; server and load generator compete for CPU")
    if other is not None and other > OTHER_LOAD_LIMIT:
        warnings.append(f"OTHER LOAD ON THE MACHINE: other processes used {other:.2f} cores "
                        "during the window; the figures are not those of a quiet machine")
    latency = _latency(results, window, config.sample_every)
    if (latency.p50_first_ms is not None and latency.p50_last_ms is not None
            and latency.p50_last_ms > latency.p50_first_ms + LATENCY_GROWTH_MS):
        warnings.append(f"LATENCY GREW during the window (median {latency.p50_first_ms:.1f} "
                        f"ms in its first fifth, {latency.p50_last_ms:.1f} ms in its last): "
                        "the server is falling behind its feed")
    if server is not None and server.workers > 1:
        # /metrics counted one worker's messages: per message against all the workers'
        # (what the subscribers received), when the CPU is all the workers' too.
        server = replace(server, cpu_us_per_message=round(server.cpu_s / messages * 1e6, 3)
                         if spawned is not None and messages else None)
        warnings.append(f"the server runs {server.workers} worker processes and /metrics "
                        "answered for one of them: its figures other than "
                        + ("CPU " if spawned is not None else "") + "are that worker's")
    if server is not None:
        if server.lag_events or server.dropped_messages:
            warnings.append(f"server lag policy applied: {server.lag_events} lag events, "
                            f"{server.dropped_messages} queued messages dropped")
        if messages < 0.9 * server.messages_sent:
            warnings.append(f"received {messages} messages of the {server.messages_sent} "
                            "the server sent in the window")
    for c in connections:
        if c.error is not None:
            warnings.append(f"connection {c.index} failed to subscribe: {c.error}")
        elif c.closed_early:
            warnings.append(f"CONNECTION CLOSED EARLY: connection {c.index} closed with "
                            f"code {c.close_code} {c.close_reason!r}")
    decode_errors = sum(r.decode_errors for r in results)
    if decode_errors:
        warnings.append(f"{decode_errors} sampled messages could not be decoded")
    checks: Counter[str] = Counter()
    for r in results:
        checks.update(r.checks)
    if faults(checks):
        found = ", ".join(f"{checks[name]} {name.replace('_', ' ')}" for name in FAULTS
                          if checks[name])
        warnings.append(f"BROKEN STREAM: the checking connections found {found}; the "
                        "server delivered wrong data, whatever its speed")
    if spawned is not None and (spawned.log.warnings or spawned.log.errors):
        warnings.append(f"the server logged {spawned.log.warnings} warnings and "
                        f"{spawned.log.errors} errors")
    return Report(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        url=url, server_command=spawned.command if spawned else None,
        server_pid=spawned.pid if spawned else None,
        connections=config.connections, workers=len(results), channel=config.channel,
        symbols=symbols, depth=config.depth if config.channel == "book" else None,
        compress=config.compress, compressed_connections=sum(r.compressed for r in ready),
        warmup_s=config.warmup, duration_s=config.duration, window_s=round(window_s, 3),
        messages=messages, bytes=data,
        messages_per_s=round(sum(c.messages_per_s for c in connections), 1),
        bytes_per_s=round(data / window_s, 1),
        per_connection_min=round(rates[0], 1),
        per_connection_median=round(statistics.median(rates), 1),
        per_connection_max=round(rates[-1], 1),
        latency=latency, server=server, machine=machine,
        worker_figures=workers, per_connection=tuple(connections),
        sampled_types=dict(types), decode_errors=decode_errors, checks=dict(checks),
        checked_connections=sum(r.checked_connections for r in results),
        compression_ratio=_ratio(results),
        throughput=tuple(sum(rates) for rates in zip(*(r.throughput for r in results),
                                                      strict=False)),
        server_log_warnings=spawned.log.warnings if spawned else None,
        server_log_errors=spawned.log.errors if spawned else None,
        server_log_notable=tuple(spawned.log.notable) if spawned else (),
        warnings=tuple(warnings))


def _ratio(results: Sequence[WorkerResult]) -> float | None:
    wire = sum(r.sampled_bytes[0] for r in results)
    plain = sum(r.sampled_bytes[1] for r in results)
    return round(plain / wire, 3) if wire else None


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _cores(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def format_report(report: Report) -> str:
    """The report as a plain table for a person."""
    lat = report.latency
    rows: list[tuple[str, str]] = [
        ("url", report.url),
        ("load", f"{report.connections} connections over {report.workers} worker(s), "
                 f"channel {report.channel}"
                 + (f" depth {report.depth}" if report.depth else "")
                 + f", {len(report.symbols)} symbols"),
        ("compression", f"{'offered' if report.compress else 'off'}, in use on "
                        f"{report.compressed_connections} connections"
                        + (f"; payloads {report.compression_ratio:.2f}x smaller (sampled)"
                           if report.compression_ratio else "")),
        ("window", f"{report.window_s:.2f} s after {report.warmup_s:g} s warmup"),
        ("received", f"{report.messages_per_s:,.0f} msg/s, "
                     f"{_si(report.bytes_per_s, 'B/s')} "
                     f"({report.messages:,} messages, {_si(report.bytes, 'B')})"),
        ("per connection", f"min {report.per_connection_min:,.0f}  "
                           f"median {report.per_connection_median:,.0f}  "
                           f"max {report.per_connection_max:,.0f} msg/s"),
    ]
    if lat.samples:
        rows.append(("latency", f"p50 {lat.p50_ms:.3f}  p90 {lat.p90_ms:.3f}  "
                                f"p99 {lat.p99_ms:.3f}  p99.9 {lat.p99_9_ms:.3f}  "
                                f"p99.99 {lat.p99_99_ms:.3f}  max {lat.max_ms:.3f} ms "
                                f"({lat.samples:,} samples, 1 in {lat.sample_every}; "
                                "receive - ts_recv)"))
        for label, figures in (("from ts_send", lat.from_send),
                               ("from ts_event", lat.from_event)):
            rows.append((label, "  ".join(f"{key.removesuffix('_ms').replace('_', '.')} "
                                          f"{value:.3f}" for key, value in figures.items()
                                          if value is not None) + " ms"))
        if lat.p50_first_ms is not None and lat.p50_last_ms is not None:
            rows.append(("latency drift", f"median {lat.p50_first_ms:.3f} ms in the first "
                                          f"fifth of the window, {lat.p50_last_ms:.3f} ms "
                                          "in the last"))
    else:
        rows.append(("latency", "no samples"))
    if report.server is not None:
        s = report.server
        per = f"{s.cpu_us_per_message:.2f} us" if s.cpu_us_per_message else "n/a"
        rows += [
            ("server ingest", f"{s.events_per_s:,.0f} events/s ({s.events_applied:,} feed "
                              "events applied)"),
            ("server CPU", f"{s.cpu_cores:.2f} cores ({s.cpu_s:.2f} s), {per} per message "
                           f"sent"),
            ("server sent", f"{s.messages_sent:,} messages, {_si(s.bytes_sent, 'B')}; "
                            f"lag events {s.lag_events}, dropped {s.dropped_messages}, "
                            f"closes {s.closes or 'none'}"),
            ("server stages", (", ".join(f"{k} {v:,.1f} us" for k, v in s.stage_mean_us.items())
                               or "n/a") + (f"; {s.messages_per_write:,.1f} messages per write"
                                            if s.messages_per_write else "")),
        ]
    else:
        rows.append(("server", "no /metrics figures"))
    m = report.machine
    rows.append(("machine", f"{m.cores} cores; busy {_cores(m.busy_cores)}: server "
                            f"{_cores(report.server.cpu_cores if report.server else None)}, "
                            f"load generator {m.loadgen_cores:.2f}, interrupts "
                            f"{_cores(m.irq_cores)}, other processes {_cores(m.other_cores)}"))
    for w in report.worker_figures:
        rows.append((f"worker {w.worker}", f"{w.connections} connections, CPU "
                                           f"{w.cpu_cores:.0%} of a core ({w.cpu_s:.2f} s)"))
    checked = sum(v for k, v in report.checks.items() if k.endswith("_messages"))
    rows.append(("checks", "not checked (this server sends no book)"
                 if not report.checked_connections else
                 f"{checked:,} messages on {report.checked_connections} "
                 f"connection(s): {faults(report.checks)} faults"
                           + "".join(f", {report.checks[k]} {k.replace('_', ' ')}"
                                     for k in ("snapshots_lag", "snapshots_resync", "gaps")
                                     if report.checks.get(k))))
    if report.sampled_types:
        rows.append(("sampled types", ", ".join(f"{k} {v}" for k, v in
                                                sorted(report.sampled_types.items()))))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    for warning in report.warnings:
        lines.append(f"!! {warning}")
    for line in report.server_log_notable:
        lines.append(f"   server: {line}")
    return "\n".join(lines)
