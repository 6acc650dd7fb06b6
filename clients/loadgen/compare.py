"""``--compare``: the same load against tickwire and each peer, one after the other in one
run, and a table that puts them side by side.

Every server gets the same ``LoadConfig`` (same feed arguments, connections, window,
subscription, compression offer); only ``server`` changes. The machine is shared and
noisy, so figures from one run are compared with each other, as ratios, and not with
another day's. A server that cannot be measured (it does not start, a worker fails) is
listed with its error instead of stopping the comparison.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import orjson

from clients.loadgen.config import LoadConfig
from clients.loadgen.errors import LoadError
from clients.loadgen.report import Report
from clients.loadgen.runner import run
from clients.loadgen.spawn import REPOSITORY, SERVERS, ServerLog


@dataclass(frozen=True)
class Entry:
    """One server's part of a comparison: its report, or why there is none."""

    server: str
    report: Report | None
    error: str | None = None


def available_servers() -> list[str]:
    """The servers this machine can run: tickwire and the Python peers always, the Node
    peer when ``node`` is on the PATH and the peer is in the repository."""
    names = []
    for name, command in SERVERS.items():
        if name == "node" and shutil.which("node") is None:
            continue
        module = command[1]
        if module.startswith("benchmarks.") and not (
                REPOSITORY / (module.replace(".", "/") + ".py")).is_file():
            continue
        names.append(name)
    return names


async def compare(config: LoadConfig, servers: Sequence[str],
                  progress: Callable[[str], None] = lambda line: None) -> list[Entry]:
    """Run ``config`` against each of ``servers`` in turn (``config.spawn`` is required)."""
    if config.spawn is None:
        raise LoadError("--compare starts each server itself: give --spawn ARGS")
    entries = []
    for server in servers:
        progress(f"measuring {server} ...")
        try:
            report = await run(dataclasses.replace(config, server=server, url=None),
                               ServerLog(), progress)
        except LoadError as exc:
            entries.append(Entry(server, None, str(exc)))
            continue
        entries.append(Entry(server, report))
    return entries


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}"


def format_comparison(entries: Sequence[Entry]) -> str:
    """The side-by-side table, then tickwire's figures over each peer's (messages/s:
    higher is better; CPU per message and latency: lower is better)."""
    header = ("server", "msg/s", "per conn", "server cores", "CPU/msg us", "p50 ms",
              "p99 ms", "p99.9 ms", "events/s", "warnings")
    rows: list[tuple[str, ...]] = [header]
    for entry in entries:
        report = entry.report
        if report is None:
            rows.append((entry.server, f"not measured: {entry.error}", *[""] * 8))
            continue
        server = report.server
        lat = report.latency
        rows.append((
            entry.server, f"{report.messages_per_s:,.0f}",
            f"{report.per_connection_median:,.0f}",
            f"{server.cpu_cores:.2f}" if server else "n/a",
            f"{server.cpu_us_per_message:.2f}" if server and server.cpu_us_per_message
            else "n/a",
            _ms(lat.p50_ms), _ms(lat.p99_ms), _ms(lat.p99_9_ms),
            f"{server.events_per_s:,.0f}" if server else "n/a",
            str(len(report.warnings))))
    widths = [max(len(row[i]) for row in rows if len(row) > i) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
             for row in rows]
    base = next((e.report for e in entries if e.server == "tickwire" and e.report), None)
    if base is not None:
        lines.append("")
        for entry in entries:
            if entry.server == "tickwire" or entry.report is None:
                continue
            lines.append(f"tickwire / {entry.server}: {_ratios(base, entry.report)}")
    for entry in entries:
        if entry.report is not None and entry.report.warnings:
            lines.append("")
            lines.append(f"{entry.server} warnings:")
            lines.extend(f"  {warning}" for warning in entry.report.warnings)
    return "\n".join(lines)


def comparison_json(entries: Sequence[Entry]) -> bytes:
    """The comparison as indented JSON: each server with its report or its error."""
    return orjson.dumps([{"server": e.server, "error": e.error,
                          "report": None if e.report is None else dataclasses.asdict(e.report)}
                         for e in entries], option=orjson.OPT_INDENT_2)


def _ratios(base: Report, other: Report) -> str:
    """tickwire's figure over the other's: above 1 is better for messages/s, below 1 is
    better for CPU per message and for latency."""
    pairs: list[tuple[str, float | None, float | None]] = [
        ("messages/s", base.messages_per_s, other.messages_per_s),
        ("CPU per message", base.server.cpu_us_per_message if base.server else None,
         other.server.cpu_us_per_message if other.server else None),
        ("p50", base.latency.p50_ms, other.latency.p50_ms),
        ("p99", base.latency.p99_ms, other.latency.p99_ms),
        ("p99.9", base.latency.p99_9_ms, other.latency.p99_9_ms),
    ]
    parts = [f"{label} {mine / theirs:.2f}" for label, mine, theirs in pairs
             if mine and theirs]
    return ", ".join(parts) or "no comparable figures"
