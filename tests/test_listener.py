"""Out of file descriptors, a server answers 503 and goes on serving the clients it has
(a real server process with a low descriptor limit, over loopback)."""

from __future__ import annotations

import resource
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio

from clients.client import connect
from clients.errors import HandshakeRejected
from tests.test_server import raw_upgrade

ROOT = Path(__file__).resolve().parent.parent
FD_LIMIT = 48


@contextmanager
def server_with_few_descriptors() -> Iterator[tuple[subprocess.Popen[str], str]]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))

    process = subprocess.Popen(
        [sys.executable, "-m", "feed", "serve", "--synthetic", "200", "--symbols", "1",
         "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=limit)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on "), line
        yield process, line.removeprefix("listening on ").strip()
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


async def test_out_of_descriptors_clients_get_503_and_the_others_are_served() -> None:
    with server_with_few_descriptors() as (process, url):
        async with connect(url) as bystander:
            await bystander.subscribe("trades", ["SYN-BTC"])
            assert (await bystander.receive())["type"] == "subscribed"
            held: list[trio.SocketStream] = []
            refused = None
            try:
                for _ in range(FD_LIMIT):  # each upgraded connection takes one descriptor
                    stream, head = await raw_upgrade(url)
                    status = head.split(b"\r\n", 1)[0]
                    if status != b"HTTP/1.1 101 Switching Protocols":
                        refused = status
                        await stream.aclose()
                        break
                    held.append(stream)
                assert refused == b"HTTP/1.1 503 Service Unavailable"
                assert len(held) > 10
                with trio.fail_after(5):  # the connections it has are still served
                    while (await bystander.receive())["type"] != "trade":
                        pass
                with trio.fail_after(5), pytest.raises(HandshakeRejected) as rejected:
                    async with connect(url):
                        pass
                assert rejected.value.status == 503
            finally:
                for stream in held:
                    await stream.aclose()
            with trio.fail_after(10):  # room again once clients leave
                while True:
                    try:
                        async with connect(url) as again:
                            await again.ping()
                            assert (await again.receive())["type"] == "pong"
                            break
                    except HandshakeRejected:
                        pass  # the server has not seen every close yet: ask again
        assert process.poll() is None
