"""A whole run: probe the server, start the workers, time the window, collect, report.

::

    parent (trio)                               each worker process (see worker.py)
    [start `python -m feed serve --port 0`]
    probe: `list` -> the symbols
    start W workers -------------------------->  open its connections, subscribe each
    wait for every Ready  <--------------------  Ready (and which connections failed)
    send Window(start, end) ------------------>  count; snapshot counters at start and end
    GET /metrics at start and at end             close its connections (1000)
    collect the results   <--------------------  WorkerResult
    report; [stop the server: SIGTERM, kill after 5 s]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress

import trio

from clients.client import Endpoint
from clients.loadgen.config import LoadConfig
from clients.loadgen.errors import LoadError
from clients.loadgen.messages import Finish, Ready, Window, WorkerPlan, WorkerResult, trio_deadline
from clients.loadgen.metrics import fetch_metrics, machine_busy_s, process_tree_cpu_s
from clients.loadgen.pool import receive_all, start_workers, stop_workers
from clients.loadgen.report import Report, build_report, server_figures
from clients.loadgen.spawn import (
    SERVER_STOP_GRACE_S,
    UNCHECKED,
    ServerLog,
    SpawnedServer,
    spawn_server,
)
from clients.loadgen.websocket import list_symbols, parse_url

RESULTS_TIMEOUT_S = 60.0
"""Time for the workers' results after the window: a worker swamped by its
connections may be seconds late to end its window and close them."""


Progress = Callable[[str], None]
"""Where a run reports what it is doing, a line at a time (the command line: stderr)."""


def _quiet(line: str) -> None:
    pass


async def measure(config: LoadConfig, url: str, spawned: SpawnedServer | None = None,
                  progress: Progress = _quiet) -> Report:
    """Measure a running server at ``url``. Raises ``LoadError``."""
    endpoint = parse_url(url)
    try:
        with trio.fail_after(config.setup_timeout):
            offered = await list_symbols(endpoint, config.channel)
    except (OSError, trio.BrokenResourceError) as exc:
        raise LoadError(f"cannot reach {url}: {exc}") from None
    except trio.TooSlowError:
        raise LoadError(f"{url} did not answer `list` within {config.setup_timeout} s") from None
    symbols = config.symbols or tuple(offered)
    unknown = sorted(set(symbols) - set(offered))
    if unknown or not symbols:
        raise LoadError(f"not offered on {config.channel}: {', '.join(unknown) or 'anything'}")
    workers = config.worker_count()
    plans = [WorkerPlan(w, endpoint, tuple(range(w, config.connections, workers)),
                        config.channel, symbols, config.depth, config.compress,
                        config.sample_every, config.server not in UNCHECKED)
             for w in range(workers)]
    handles = await start_workers(plans)
    completed = False
    try:
        ready: list[Ready] = await receive_all(handles, Ready, config.setup_timeout + 10)
        failed = sum(len(r.failures) for r in ready)
        progress(f"{config.connections - failed} of {config.connections} connections "
                 f"subscribed; measuring {config.duration:g} s after {config.warmup:g} s")
        start = time.time() + config.warmup
        window = Window(start, start + config.duration)
        for handle in handles:
            with suppress(OSError):  # a dead worker shows in receive_all
                handle.pipe.send(window)
        warnings: list[str] = []
        await trio.sleep_until(trio_deadline(window.start))
        before = await _try_metrics(endpoint, warnings)
        t0, busy0, own0 = time.time(), machine_busy_s(), time.process_time()
        tree0 = process_tree_cpu_s(spawned.pid) if spawned else None
        await trio.sleep_until(trio_deadline(window.end))
        after = await _try_metrics(endpoint, warnings)
        t1, busy1, own1 = time.time(), machine_busy_s(), time.process_time()
        tree1 = process_tree_cpu_s(spawned.pid) if spawned else None
        for handle in handles:
            with suppress(OSError):
                handle.pipe.send(Finish())
        results: list[WorkerResult] = await receive_all(handles, WorkerResult,
                                                        RESULTS_TIMEOUT_S)
        completed = True
    finally:
        # After the results the workers are exiting: give them time. Otherwise (an
        # error, Ctrl-C) they are still connected and measuring: end them now.
        await stop_workers(handles, SERVER_STOP_GRACE_S if completed else 0.0)
    elapsed = t1 - t0
    # The CPU of a server the run started is that of all its processes (--workers).
    tree_cpu = tree1 - tree0 if tree0 is not None and tree1 is not None else None
    server = (server_figures(before, after, elapsed, tree_cpu)
              if before is not None and after is not None else None)
    busy = irq = None
    if busy0 is not None and busy1 is not None:
        busy, irq = (busy1[0] - busy0[0]) / elapsed, (busy1[1] - busy0[1]) / elapsed
    return build_report(config, url, symbols, window, ready, results, server,
                        (busy, irq, (own1 - own0) / elapsed), spawned, warnings)


async def _try_metrics(endpoint: Endpoint, warnings: list[str]) -> dict[str, float] | None:
    try:
        return await fetch_metrics(endpoint.host, endpoint.port)
    except (OSError, LoadError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        warnings.append(f"could not read /metrics: {type(exc).__name__}: {exc}")
        return None


async def run(config: LoadConfig, server_log: ServerLog | None = None,
              progress: Progress = _quiet) -> Report:
    """One whole run: spawn the server if asked (its output into ``server_log``),
    measure, and always stop what was started. Raises ``LoadError``."""
    config.check()
    if config.spawn is None:
        assert config.url is not None
        return await measure(config, config.url, progress=progress)
    async with spawn_server(config.spawn, server_log, config.server) as spawned:
        progress(f"{config.server} started (pid {spawned.pid}) at {spawned.url}")
        return await measure(config, spawned.url, spawned, progress)
