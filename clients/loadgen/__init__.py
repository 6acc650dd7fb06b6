"""Fan-out load measurement: many subscribers on one server, figures for one window.

    python -m clients.loadgen --spawn "--synthetic 5000 --symbols 10" \\
        --connections 100 --duration 10 --warmup 3 --channel book --depth 10

From Python::

    from clients.loadgen import LoadConfig, run, format_report
    report = await run(LoadConfig(spawn="--synthetic 500 --symbols 2", connections=4))
    print(format_report(report))

Modules:
    ``errors``     ``LoadError`` and ``FrameError``: the exception tree
    ``frames``     ``FrameReader``: counts the server's frames, picks a few to decode (no IO)
    ``websocket``  the opening handshake, one request and its reply (URLs: ``Endpoint``)
    ``metrics``    the server's ``/metrics`` and the machine's ``/proc/stat``
    ``latency``    ``LatencyHistogram``: HDR histograms, recorded in workers, merged here
    ``messages``   what the parent and a worker process send each other over their pipe
    ``worker``     a worker process: its subscriber connections, counted over the window
    ``pool``       the parent's side of the worker processes
    ``spawn``      ``spawn_server``: a server started, and always stopped, for the run
    ``config``     ``LoadConfig``
    ``report``     ``Report``: the figures, the warnings, ``format_report``, ``report_json``
    ``runner``     ``run`` and ``measure``: one whole run (its steps drawn there)
    ``cli``        ``main``: the command line (``__main__`` runs it)
"""

from clients.client import Endpoint
from clients.loadgen.cli import main
from clients.loadgen.config import CHANNELS, LoadConfig
from clients.loadgen.errors import FrameError, LoadError
from clients.loadgen.frames import (
    DEFAULT_SAMPLE_EVERY,
    OP_BINARY,
    OP_CLOSE,
    OP_TEXT,
    Frame,
    FrameReader,
    client_frame,
    close_code,
    decode_messages,
)
from clients.loadgen.latency import LatencyHistogram, percentile
from clients.loadgen.messages import ConnectionResult
from clients.loadgen.metrics import (
    fetch_metrics,
    machine_busy_s,
    metric_by_label,
    metric_total,
    parse_metrics,
)
from clients.loadgen.report import (
    LatencyFigures,
    MachineFigures,
    Report,
    ServerFigures,
    WorkerFigures,
    format_report,
    report_json,
)
from clients.loadgen.runner import measure, run
from clients.loadgen.spawn import ServerLog, SpawnedServer, spawn_server

__all__ = [
    "CHANNELS",
    "DEFAULT_SAMPLE_EVERY",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_TEXT",
    "ConnectionResult",
    "Endpoint",
    "Frame",
    "FrameError",
    "FrameReader",
    "LatencyFigures",
    "LatencyHistogram",
    "LoadConfig",
    "LoadError",
    "MachineFigures",
    "Report",
    "ServerFigures",
    "ServerLog",
    "SpawnedServer",
    "WorkerFigures",
    "client_frame",
    "close_code",
    "decode_messages",
    "fetch_metrics",
    "format_report",
    "machine_busy_s",
    "main",
    "measure",
    "metric_by_label",
    "metric_total",
    "parse_metrics",
    "percentile",
    "report_json",
    "run",
    "spawn_server",
]
