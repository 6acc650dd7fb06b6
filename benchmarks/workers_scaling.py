"""How much more ``tickwire serve --workers N`` delivers than one process, with the
cheapest load this machine can put on it.

``python -m benchmarks.workers_scaling [--workers 1,2] [--connections 200]
[--synthetic 2000] [--symbols 10] [--depth 10] [--duration 10] [--warmup 3]``

For each worker count it starts ``tickwire serve --synthetic RATE --symbols S --workers
N --port 0`` (no compression), opens the connections from one process with plain
non-blocking sockets, subscribes each to ``book`` for every symbol, and then only reads
and throws the bytes away: no frame is parsed, so the load costs the machine as little
as reading loopback TCP can (``tickwire bench`` decodes and checks, and needs a core of
its own at these rates). What was delivered is read from the servers' own counters:
``/metrics`` of every worker (each answers for itself; the tool asks until it has heard
from all of them), ``tickwire_messages_sent_total`` and ``tickwire_bytes_sent_total``
over the window, checked against the bytes the sink received. It prints, per worker
count, messages and bytes per second, the events each worker released, and the CPU of
the server processes, the sink and the machine; then the ratio to one worker.
"""

from __future__ import annotations

import argparse
import base64
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from clients.loadgen.metrics import machine_busy_s, parse_metrics, process_tree_cpu_s
from feed.synthetic import symbol_names

REPOSITORY = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0


def masked_text(payload: bytes) -> bytes:
    """One client text frame (masked, as RFC 6455 requires), payload under 64 KiB."""
    mask = os.urandom(4)
    head = bytes([0x81])
    head += bytes([0x80 | len(payload)]) if len(payload) < 126 else \
        bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def open_sink(host: str, port: int, request: bytes) -> socket.socket:
    """A connection upgraded to WebSocket (no extension) with ``request`` sent."""
    sock = socket.create_connection((host, port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /v1/stream HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1"))
    sock.sendall(masked_text(request))
    sock.setblocking(False)
    return sock


def http_get(host: str, port: int, path: str) -> bytes:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[2]


def worker_counters(host: str, port: int, workers: int) -> dict[int, tuple[float, float]]:
    """(messages, bytes) sent so far by each worker, asking until all have answered."""
    seen: dict[int, tuple[float, float]] = {}
    for _ in range(200 * workers):
        series = parse_metrics(http_get(host, port, "/metrics").decode())
        seen.setdefault(int(series.get("tickwire_worker", 0)),
                        (series["tickwire_messages_sent_total"],
                         series["tickwire_bytes_sent_total"]))
        if len(seen) == workers:
            return seen
    raise RuntimeError(f"heard from {len(seen)} of {workers} workers")


def drain(socks: list[socket.socket], seconds: float, buffer: bytearray) -> int:
    """Read and discard until ``seconds`` have passed; return the bytes read."""
    poller = select.epoll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    total = 0
    view = memoryview(buffer)
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(min(left, 0.1)):
                try:
                    total += by_fd[fd].recv_into(view)
                except BlockingIOError:
                    pass
    finally:
        poller.close()
    return total


def run_one(workers: int, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, "-m", "feed", "serve", "--port", "0", "--synthetic",
               str(args.synthetic), "--symbols", str(args.symbols), "--workers", str(workers)]
    server = subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    socks: list[socket.socket] = []
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the server did not start: {line!r}")
        address = urlsplit(line.removeprefix("listening on ").strip())
        host, port = address.hostname or "127.0.0.1", address.port or 80
        symbols = list(symbol_names(args.symbols))
        request = orjson.dumps({"op": "subscribe", "channel": "book", "symbols": symbols,
                                "depth": args.depth})
        socks = [open_sink(host, port, request) for _ in range(args.connections)]
        buffer = bytearray(1 << 20)
        drain(socks, args.warmup, buffer)
        sent0, cpu0, busy0, mine0 = (worker_counters(host, port, workers),
                                     process_tree_cpu_s(server.pid), machine_busy_s(),
                                     time.process_time())
        began = time.monotonic()
        received = drain(socks, args.duration, buffer)
        elapsed = time.monotonic() - began
        sent1, cpu1, busy1, mine1 = (worker_counters(host, port, workers),
                                     process_tree_cpu_s(server.pid), machine_busy_s(),
                                     time.process_time())
    finally:
        for sock in socks:
            sock.close()
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    messages = sum(sent1[w][0] - sent0[w][0] for w in sent1)
    sent_bytes = sum(sent1[w][1] - sent0[w][1] for w in sent1)
    if received < 0.95 * sent_bytes:  # the two windows are a /metrics round trip apart
        raise RuntimeError(f"the sink read {received:,} bytes of the {sent_bytes:,.0f} the "
                           "workers say they sent: the figures do not agree")
    return {
        "workers": workers, "msg_s": messages / elapsed, "bytes_s": sent_bytes / elapsed,
        "received_bytes_s": received / elapsed,
        "server_cores": ((cpu1 or 0) - (cpu0 or 0)) / elapsed,
        "sink_cores": (mine1 - mine0) / elapsed,
        "machine_cores": ((busy1 or (0, 0))[0] - (busy0 or (0, 0))[0]) / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workers_scaling",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts to run (1,2)")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--synthetic", type=int, default=2000, help="events/s (2000)")
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]
    if not all(1 <= w <= 64 for w in counts) or not 1 <= args.connections <= 5000 \
            or not 0 < args.duration <= 600 or not 0 <= args.warmup <= 600:
        parser.error("workers 1-64, connections 1-5000, duration and warmup up to 600 s")
    results = [run_one(w, args) for w in counts]
    base = results[0]["msg_s"]
    print("workers  msg/s       MB/s sent  MB/s read  server cores  sink cores  machine "
          "cores  x first")
    for r in results:
        print(f"{r['workers']:>7}  {r['msg_s']:>10,.0f}  {r['bytes_s'] / 1e6:>9.1f}  "
              f"{r['received_bytes_s'] / 1e6:>9.1f}  {r['server_cores']:>12.2f}  "
              f"{r['sink_cores']:>10.2f}  {r['machine_cores']:>13.2f}  "
              f"{r['msg_s'] / base:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
