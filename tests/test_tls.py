"""wss:// over loopback, with certificates made at test time by trustme: the stream,
HTTP routes and the handshake deadline over TLS, bad certificate settings, --workers,
and ``tickwire subscribe --ca``."""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme

from clients.client import Endpoint, connect
from feed.config import ConfigError, TlsConfig
from feed.server import Server
from feed.tls import server_context
from tests.helpers import REAL_SOCKETS_S
from tests.test_server import follow_book, make_server
from tests.test_workers import tickwire


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(tmp_path: Path, ca: trustme.CA) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by ``ca``, and its key: (cert file, key file)."""
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


@pytest.fixture
def trusting(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``ca``."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def tls_settings(files: tuple[Path, Path]) -> dict[str, Any]:
    return {"tls.cert_file": str(files[0]), "tls.key_file": str(files[1])}


async def start_tls(nursery: trio.Nursery, files: tuple[Path, Path],
                    **overrides: Any) -> tuple[Server, str]:
    server = make_server(**tls_settings(files), **overrides)
    return server, (await nursery.start(server.run)).url


async def https_get(url: str, path: str, context: ssl.SSLContext) -> bytes:
    """The status line of GET ``path`` over TLS."""
    endpoint = Endpoint.parse(url)
    stream = trio.SSLStream(await trio.open_tcp_stream(endpoint.host, endpoint.port), context,
                            server_hostname=endpoint.host)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = b""
        while b"\r\n" not in answer:
            answer += await stream.receive_some(65536)
    return answer.split(b"\r\n", 1)[0]


async def test_a_wss_client_gets_a_snapshot_and_updates(
        nursery: trio.Nursery, tls_files: tuple[Path, Path], trusting: ssl.SSLContext) -> None:
    server, url = await start_tls(nursery, tls_files)
    assert url.startswith("wss://127.0.0.1:") and url.endswith("/v1/stream")
    async with connect(url, ssl_context=trusting) as conn:
        assert conn.compressed
        await conn.subscribe("book", ["BTC"], depth=5)
        assert (await conn.receive())["type"] == "subscribed"
        await follow_book(server, conn, 50)
    # The plain HTTP routes are served over TLS too.
    assert await https_get(url, "/healthz", trusting) == b"HTTP/1.1 200 OK"
    assert await https_get(url, "/v1/stream", trusting) == b"HTTP/1.1 426 Upgrade Required"
    server.shutdown()


async def test_a_client_that_does_not_trust_the_certificate_is_refused(
        nursery: trio.Nursery, tls_files: tuple[Path, Path]) -> None:
    server, url = await start_tls(nursery, tls_files)
    with pytest.raises(trio.BrokenResourceError) as refused:
        async with connect(url, ssl_context=ssl.create_default_context()):
            pass  # pragma: no cover
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
    server.shutdown()


@pytest.mark.parametrize("stall", ["before its hello", "in its hello", "after the handshake"])
async def test_a_stalled_tls_handshake_is_dropped_at_the_deadline(
        nursery: trio.Nursery, tls_files: tuple[Path, Path], trusting: ssl.SSLContext,
        autojump_clock: trio.testing.MockClock, stall: str) -> None:
    """Slowloris over TLS: the TLS handshake and the request head share the
    ``server.handshake_timeout_ms`` deadline (5 s)."""
    autojump_clock.autojump_threshold = REAL_SOCKETS_S
    server, url = await start_tls(nursery, tls_files)
    endpoint = Endpoint.parse(url)
    begun = trio.current_time()
    stream: trio.abc.Stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
    if stall == "in its hello":  # a TLS record header announcing 512 bytes, then nothing
        await stream.send_all(b"\x16\x03\x01\x02\x00\x01")
    elif stall == "after the handshake":  # and no request head
        stream = trio.SSLStream(stream, trusting, server_hostname=endpoint.host)
        await stream.do_handshake()
    with trio.fail_after(60):
        try:
            data = await stream.receive_some(100)
        except trio.BrokenResourceError:  # the end of a TLS stream without close_notify
            data = b""
    assert data == b"" and 5.0 <= trio.current_time() - begun < 5.1
    await trio.aclose_forcefully(stream)
    assert server.metrics.connections_total == 1 and not server.sessions
    server.shutdown()


async def test_plain_http_on_the_tls_port_is_dropped_and_nothing_breaks(
        nursery: trio.Nursery, tls_files: tuple[Path, Path], trusting: ssl.SSLContext,
        caplog: pytest.LogCaptureFixture) -> None:
    server, url = await start_tls(nursery, tls_files)
    endpoint = Endpoint.parse(url)
    for request in (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    b"Sec-WebSocket-Version: 13\r\n\r\n"):
        async with await trio.open_tcp_stream(endpoint.host, endpoint.port) as stream:
            await stream.send_all(request)
            answer = b""
            with trio.fail_after(2):
                try:
                    while data := await stream.receive_some(65536):
                        answer += data
                except trio.BrokenResourceError:
                    pass
            assert not answer.startswith(b"HTTP/")  # at most a TLS alert, then closed
    async with connect(url, ssl_context=trusting) as conn:  # the server serves on
        await conn.ping()
        assert (await conn.receive())["type"] == "pong"
    assert not server.metrics.http_requests  # nothing was answered in plain HTTP
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    server.shutdown()


def _encrypted_key(files: tuple[Path, Path]) -> bytes:
    from cryptography.hazmat.primitives import serialization  # trustme's own dependency

    key = serialization.load_pem_private_key(files[1].read_bytes(), None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(b"secret"))


@pytest.mark.parametrize(("case", "message"), [
    ("cert only", "tls.key_file: needed as well as tls.cert_file"),
    ("key only", "tls.cert_file: needed as well as tls.key_file"),
    ("no cert file", "tls.cert_file: cannot read"),
    ("no key file", "tls.key_file: cannot read"),
    ("junk cert", "tls.cert_file: no PEM certificate in"),
    ("junk key", "tls.key_file: no PEM private key in"),
    ("key of another certificate", "tls.key_file: .* is not the key of the certificate"),
    ("encrypted key", "tls.key_file: .* is encrypted"),
])
def test_bad_certificate_settings_are_refused_naming_the_key(
        tmp_path: Path, tls_files: tuple[Path, Path], ca: trustme.CA, case: str,
        message: str) -> None:
    cert, key = (str(path) for path in tls_files)
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM\n")
    other = tmp_path / "other.key"
    ca.issue_cert("other.example").private_key_pem.write_to_path(str(other))
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(_encrypted_key(tls_files))
    config = {
        "cert only": TlsConfig(cert, ""),
        "key only": TlsConfig("", key),
        "no cert file": TlsConfig(str(tmp_path / "missing.pem"), key),
        "no key file": TlsConfig(cert, str(tmp_path / "missing.key")),
        "junk cert": TlsConfig(str(junk), key),
        "junk key": TlsConfig(cert, str(junk)),
        "key of another certificate": TlsConfig(cert, str(other)),
        "encrypted key": TlsConfig(cert, str(encrypted)),
    }[case]
    with pytest.raises(ConfigError, match=message):
        server_context(config)


def tls_config_file(tmp_path: Path, files: tuple[Path, Path]) -> Path:
    config = tmp_path / "tls.toml"
    config.write_text(f'[tls]\ncert_file = "{files[0]}"\nkey_file = "{files[1]}"\n')
    return config


async def test_serve_refuses_a_bad_key_at_start_with_status_2(
        tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    config = tls_config_file(tmp_path, (tls_files[0], tls_files[0]))  # the cert as its key
    result = await trio.run_process(
        [sys.executable, "-m", "feed", "serve", "--config", str(config), "--port", "0"],
        capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 2 and result.stdout == b""
    assert b"tls.key_file" in result.stderr


async def test_workers_serve_wss(tmp_path: Path, tls_files: tuple[Path, Path],
                                 trusting: ssl.SSLContext) -> None:
    config = tls_config_file(tmp_path, tls_files)
    async with tickwire("--synthetic", "200", "--symbols", "2", "--workers", "2",
                        "--config", str(config)) as served:
        assert served.url.startswith("wss://127.0.0.1:")
        with trio.fail_after(10):
            for _ in range(4):  # the kernel spreads them over both workers
                async with connect(served.url, ssl_context=trusting) as conn:
                    await conn.subscribe("trades", ["SYN-BTC"])
                    assert (await conn.receive())["type"] == "subscribed"
                    while (await conn.receive())["type"] != "trade":
                        pass


async def test_tickwire_subscribe_wss_with_ca(
        nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA,
        tls_files: tuple[Path, Path]) -> None:
    server, url = await start_tls(nursery, tls_files)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "feed", "subscribe", "--url", url, "--ca",
         str(ca_file), "BTC"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        out = b""
        with trio.fail_after(10):
            while b"BTC snapshot" not in out:
                chunk = await process.stdout.receive_some(65536)
                assert chunk, "subscribe exited"
                out += chunk
        assert b"BTC snapshot seq=100 reason=subscribe bids 100" in out
    finally:
        process.kill()
        await process.wait()
    # Without --ca: not retried for ever in silence, but refused at once.
    with trio.fail_after(10):
        result = await trio.run_process(
            [sys.executable, "-m", "feed", "subscribe", "--url", url, "BTC"],
            capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 1 and b"certificate is not trusted" in result.stderr
    server.shutdown()
