"""Server memory per idle subscribed connection: open N connections the way a browser
does, subscribe each, and read the server's resident set size before and after.

    python -m benchmarks.idle_memory [--connections 10000] [--no-compress]
        [--channel book|trades|bbo] [--server-args "--synthetic 1 --symbols 1"]

Each connection offers ``permessage-deflate; client_max_window_bits`` (what browsers
send, wsproto's default offer), and sends its ``subscribe`` compressed when deflate was
negotiated, so the server holds whatever a real client makes it hold (its inflate state
for the client's messages included). The feed is nearly silent (one synthetic event a
second), so the connections are idle but for heartbeats.

The process's file limit is raised to its hard limit (the server inherits it); the tool
says what it was and refuses to start when it is too low for N connections in each
process. The server is started with ``server.max_connections`` raised to fit, and
stopped at the end. Figures: the server's VmRSS (``/proc/PID/status``) with one probe
connection subscribed, then with all N subscribed and settled for ``--settle`` seconds,
and the difference divided by N.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

import orjson
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, RejectConnection, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

from clients.client import Endpoint
from clients.loadgen.spawn import spawn_server

HANDSHAKES_AT_ONCE = 64
FD_MARGIN = 100
"""Descriptors each process needs besides the connections."""


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid`` in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def raise_file_limit(needed: int) -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE to its hard limit; return (before, after).
    Raises ``SystemExit`` when the hard limit is below ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"idle_memory: the file limit is {hard}; {needed} are needed "
                         "(fewer --connections, or raise the hard limit)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, hard


class Client:
    """One subscribed connection, held open and read (heartbeats) until the end."""

    def __init__(self, endpoint: Endpoint, compress: bool, request: dict[str, object]) -> None:
        self.endpoint = endpoint
        self.compress = compress
        self.request = request
        self.stream: trio.SocketStream | None = None
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.deflate = False

    async def subscribe(self) -> None:
        """Handshake, send the subscribe request and wait for its reply."""
        self.stream = stream = await trio.open_tcp_stream(self.endpoint.host,
                                                          self.endpoint.port)
        offer = [PerMessageDeflate()] if self.compress else []
        await stream.send_all(self.ws.send(Request(host=self.endpoint.host_header,
                                                   target=self.endpoint.target,
                                                   extensions=offer)))
        subscribed = False
        while not subscribed:
            data = await stream.receive_some(65536)
            if not data:
                raise RuntimeError("the server closed the connection")
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    self.deflate = bool(event.extensions)
                    request = orjson.dumps(self.request).decode()
                    await stream.send_all(self.ws.send(TextMessage(request)))
                elif isinstance(event, RejectConnection):
                    raise RuntimeError(f"handshake refused: HTTP {event.status_code}")
                elif isinstance(event, BytesMessage | TextMessage):
                    reply = orjson.loads(event.data)
                    if isinstance(reply, dict) and reply.get("type") == "error":
                        raise RuntimeError(f"subscribe refused: {reply}")
                    if isinstance(reply, dict) and reply.get("type") == "subscribed":
                        subscribed = True

    async def read_until_closed(self) -> None:
        """Read (and drop) what the server sends, as a live client would."""
        assert self.stream is not None
        try:
            while await self.stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass


async def measure(connections: int, compress: bool, channel: str, server_args: str,
                  settle: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "idle.toml"
        config.write_text(f"[server]\nmax_connections = {connections + 10}\n")
        return await _measure(connections, compress, channel,
                              f"{server_args} --config {config}", settle)


async def _measure(connections: int, compress: bool, channel: str, server_args: str,
                   settle: float) -> dict[str, float]:
    async with spawn_server(server_args) as server:
        endpoint = Endpoint.parse(server.url)
        request: dict[str, object] = {"op": "subscribe", "id": 1, "channel": channel,
                                      "symbols": ["SYN-BTC"]}
        probe = Client(endpoint, compress, request)
        await probe.subscribe()
        await trio.sleep(settle)
        before = rss_kib(server.pid)
        clients = [Client(endpoint, compress, request) for _ in range(connections)]
        limiter = trio.CapacityLimiter(HANDSHAKES_AT_ONCE)
        subscribed = 0
        all_subscribed = trio.Event()
        async with trio.open_nursery() as nursery:
            async def one(client: Client) -> None:
                nonlocal subscribed
                async with limiter:
                    await client.subscribe()
                subscribed += 1
                if subscribed == connections:
                    all_subscribed.set()
                await client.read_until_closed()

            nursery.start_soon(probe.read_until_closed)
            for client in clients:
                nursery.start_soon(one, client)
            await all_subscribed.wait()
            await trio.sleep(settle)
            after = rss_kib(server.pid)
            nursery.cancel_scope.cancel()
        deflated = sum(c.deflate for c in clients)
    return {"connections": connections, "deflate_negotiated": deflated,
            "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_connection": round((after - before) / connections, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle_memory",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--compress", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--channel", choices=("book", "trades", "bbo"), default="book")
    parser.add_argument("--server-args", default="--synthetic 1 --symbols 1")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds to wait before each reading")
    args = parser.parse_args(argv)
    soft, hard = raise_file_limit(args.connections + FD_MARGIN)
    print(f"file limit: {soft} raised to {hard}", file=sys.stderr)
    figures = trio.run(measure, args.connections, args.compress, args.channel,
                       args.server_args, args.settle)
    print(orjson.dumps(figures).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
