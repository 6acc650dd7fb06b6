"""The server's and the machine's own figures: ``/metrics``, ``/proc/stat`` and, for a
server the run started, its processes' ``/proc/<pid>/stat``.

The Prometheus text is parsed into {series: value}; a run reads it at the start and at
the end of its window and works with the differences.
"""

from __future__ import annotations

import os

import trio

from clients.loadgen.errors import LoadError

METRICS_TIMEOUT_S = 5.0


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format to {series (name and labels as written): value}."""
    series: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            series[name] = float(value)
        except ValueError:
            continue
    return series


def metric_total(series: dict[str, float], name: str) -> float:
    """Sum of a metric over all its label sets (0 when absent)."""
    return sum(v for k, v in series.items() if k == name or k.startswith(name + "{"))


def metric_by_label(series: dict[str, float], name: str) -> dict[str, float]:
    """{label value: value} of a metric with one label (``name{label="x"}``)."""
    out: dict[str, float] = {}
    for key, value in series.items():
        if key.startswith(name + "{"):
            out[key[len(name) + 1:-1].partition("=")[2].strip('"')] = value
    return out


async def fetch_metrics(host: str, port: int) -> dict[str, float]:
    """GET /metrics over plain HTTP/1.1. Raises ``LoadError``, ``OSError``,
    ``trio.TooSlowError`` (after ``METRICS_TIMEOUT_S``)."""
    with trio.fail_after(METRICS_TIMEOUT_S):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(f"GET /metrics HTTP/1.1\r\nHost: {host}:{port}\r\n"
                                  "Connection: close\r\n\r\n".encode())
            chunks = []
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise LoadError(f"/metrics answered {status.decode('latin-1')!r}")
    return parse_metrics(body.decode("utf-8", "replace"))


def process_tree_cpu_s(pid: int) -> float | None:
    """CPU seconds (user and system) used by process ``pid`` and every living
    descendant, with the children each has reaped (so a child that ends keeps counting):
    a server's whole CPU however many worker processes it runs. Linux ``/proc``; None
    elsewhere or once ``pid`` is gone."""
    parents: dict[int, int] = {}
    used: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(entry)] = int(fields[1])
        used[int(entry)] = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    if pid not in used:
        return None
    tree, ticks = [pid], 0
    while tree:
        current = tree.pop()
        ticks += used[current]
        tree.extend(child for child, parent in parents.items() if parent == current)
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> tuple[float, float] | None:
    """CPU seconds all cores of this machine have spent busy since boot, and the part
    of it spent in interrupts (loopback TCP is mostly softirq, charged to no process).
    Linux ``/proc/stat``; None elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / tick, (fields[5] + fields[6]) / tick  # irq, softirq
