"""Access control: API keys and their grants, origins, per-address and per-key limits,
over real loopback sockets (and the pure pieces on their own)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from clients.client import connect
from clients.errors import HandshakeRejected
from feed.access import (
    AccessError,
    Grant,
    key_hash,
    load_keys,
    origin_allowed,
    presented_key,
)
from feed.config import load_config
from feed.events import Trade
from tests.helpers import read_until_closed
from tests.test_server import raw_upgrade, start

ROOT = Path(__file__).resolve().parent.parent
ALICE, BOB = "alice-secret-key", "bob-secret-key"
KEYS = f"""
[[key]]
name = "alice"
sha256 = "{key_hash(ALICE)}"
symbols = ["BTC"]
channels = ["book", "bbo"]
max_connections = 2

[[key]]
name = "bob"
sha256 = "{key_hash(BOB)}"
"""


def keys_file(tmp_path: Path, text: str = KEYS) -> str:
    path = tmp_path / "keys.toml"
    path.write_text(text)
    return str(path)


async def keyed(nursery: trio.Nursery, tmp_path: Path, **overrides: Any) -> tuple[Any, str]:
    return await start(nursery, **{"access.keys_file": keys_file(tmp_path),
                                   "access.anonymous": False, **overrides})


# -- the pure pieces ---------------------------------------------------------------------

def test_a_keys_file_gives_each_key_its_grant(tmp_path: Path) -> None:
    ring = load_keys(Path(keys_file(tmp_path)))
    assert ring.grant_for(ALICE) == Grant("alice", frozenset({"BTC"}),
                                          frozenset({"book", "bbo"}), 2)
    assert ring.grant_for(BOB) == Grant("bob")
    assert ring.grant_for("nobody") is None
    assert ring.grant_for(key_hash(ALICE)) is None  # the stored hash is not a key


@pytest.mark.parametrize(("entry", "says"), [
    ('name = "x"\nsha256 = "abc"', 'key 1 (x): "sha256" must be 64 lowercase hex digits'),
    (f'name = "x"\nsha256 = "{"0" * 64}"\nsecret = 1', "key 1: unknown field 'secret'"),
    (f'name = "x"\nsha256 = "{"0" * 64}"\nchannels = ["depth"]',
     "key 1 (x): unknown channel 'depth'"),
    (f'name = "x"\nsha256 = "{"0" * 64}"\nmax_connections = -1',
     'key 1 (x): "max_connections" must be 0 or more'),
    (f'sha256 = "{"0" * 64}"', 'key 1: "name" must be a non-empty string'),
])
def test_a_bad_keys_entry_is_refused_with_where_and_why(tmp_path: Path, entry: str,
                                                         says: str) -> None:
    with pytest.raises(AccessError) as refused:
        load_keys(Path(keys_file(tmp_path, f"[[key]]\n{entry}\n")))
    assert says in str(refused.value)


def test_a_repeated_key_is_refused(tmp_path: Path) -> None:
    entry = f'[[key]]\nname = "a"\nsha256 = "{"1" * 64}"\n'
    with pytest.raises(AccessError, match="key 2 \\(b\\) repeats the sha256 of a"):
        load_keys(Path(keys_file(tmp_path, entry + entry.replace('"a"', '"b"'))))


def test_a_repeated_name_is_refused(tmp_path: Path) -> None:
    """Connections are counted per key name: two keys may not share one."""
    entries = "".join(f'[[key]]\nname = "a"\nsha256 = "{digit * 64}"\n' for digit in "12")
    with pytest.raises(AccessError, match="key 2 repeats the name 'a'"):
        load_keys(Path(keys_file(tmp_path, entries)))


def test_where_a_handshake_presents_its_key() -> None:
    assert presented_key({"authorization": "Bearer k1"}, "/v1/stream?token=k2") == "k1"
    assert presented_key({"authorization": "bearer  k1 "}, "/v1/stream") == "k1"
    assert presented_key({}, "/v1/stream?depth=1&token=k%2B2") == "k+2"
    assert presented_key({"authorization": "Basic dXNlcg=="}, "/v1/stream") == ""
    assert presented_key({}, "/v1/stream") is None
    many = "&".join(f"f{i}=1" for i in range(500))
    assert presented_key({}, f"/v1/stream?{many}&token=k3") == "k3"


def test_origins() -> None:
    allowed = ("https://app.example.com",)
    assert origin_allowed("https://APP.example.com", allowed)
    assert not origin_allowed("https://evil.example.net", allowed)
    assert not origin_allowed("null", allowed)
    assert origin_allowed(None, allowed)  # not a browser
    assert origin_allowed("https://evil.example.net", ())  # no allow-list


def test_production_config_turns_anonymous_access_off() -> None:
    config = load_config(ROOT / "configs" / "production.toml")
    assert config.access.anonymous is False
    assert config.access.keys_file and config.access.origins
    assert config.access.max_connections_per_address > 0


# -- over sockets ------------------------------------------------------------------------

async def pong(conn: Any) -> bool:
    """Whether the connection answers a ping (it is open and served)."""
    await conn.ping()
    with trio.fail_after(2):
        return bool((await conn.receive())["type"] == "pong")


async def test_no_key_where_anonymous_is_off_is_refused_1008(nursery: trio.Nursery,
                                                             tmp_path: Path) -> None:
    _, url = await keyed(nursery, tmp_path)
    async with connect(url) as conn:
        with trio.fail_after(2):
            received, code = await read_until_closed(conn)
    assert code == 1008
    assert [(m["type"], m["code"]) for m in received] == [("error", "unauthorized")]
    assert "API key" in received[0]["message"]


@pytest.mark.parametrize("where", ["header", "query"])
async def test_an_unknown_key_is_refused_1008(nursery: trio.Nursery, tmp_path: Path,
                                              where: str) -> None:
    _, url = await keyed(nursery, tmp_path)
    if where == "header":
        opened = connect(url, headers=[("Authorization", "Bearer not-a-key")])
    else:
        opened = connect(url + "?token=not-a-key")
    async with opened as conn:
        with trio.fail_after(2):
            received, code = await read_until_closed(conn)
    assert code == 1008
    assert received == [{"type": "error", "code": "unauthorized", "message": "unknown API key"}]


async def test_a_key_gets_what_it_may_have_and_is_closed_4003_on_repeat(
        nursery: trio.Nursery, tmp_path: Path) -> None:
    server, url = await keyed(nursery, tmp_path)
    async with connect(url, headers=[("Authorization", f"Bearer {BOB}")]) as bystander, \
            connect(url + f"?token={ALICE}") as alice:
        await bystander.subscribe("trades", ["BTC", "ETH"])
        assert (await bystander.receive())["type"] == "subscribed"
        await alice.list()
        symbols = await alice.receive()
        assert symbols["symbols"] == [{"symbol": "BTC", "channels": ["book", "bbo"]}]
        await alice.subscribe("book", ["BTC"], depth=1)
        assert (await alice.receive())["type"] == "subscribed"
        assert (await alice.receive())["type"] == "book_snapshot"
        for channel, symbol in (("trades", "BTC"), ("book", "ETH")):
            await alice.send_request({"op": "subscribe", "channel": channel, "symbols": [symbol],
                              "id": channel})
        with trio.fail_after(2):
            received, code = await read_until_closed(alice)
        assert [(m["type"], m.get("code"), m.get("id")) for m in received] == [
            ("error", "forbidden", "trades"), ("error", "forbidden", "book")]
        assert received[1]["message"] == ("this key may not have book for 'ETH'; send "
                                       '{"op": "list"} for what it may have')
        assert code == 4003
        server.hub.apply(Trade("BTC", 7, "100", "1", "buy", 1, 1), server.clock())
        server.hub.apply(Trade("ETH", 8, "100", "1", "buy", 1, 1), server.clock())
        with trio.fail_after(2):
            assert [(await bystander.receive())["trade_id"] for _ in range(2)] == [7, 8]


async def test_a_key_at_its_connection_limit_is_refused(nursery: trio.Nursery,
                                                        tmp_path: Path) -> None:
    _, url = await keyed(nursery, tmp_path)
    keyed_url = url + f"?token={ALICE}"
    async with connect(keyed_url) as first, connect(keyed_url) as second:
        for conn in (first, second):
            assert await pong(conn)
        async with connect(keyed_url) as third:
            with trio.fail_after(2):
                received, code = await read_until_closed(third)
        assert code == 1008
        assert [m["code"] for m in received] == ["too_many_connections"]
    async with connect(keyed_url) as again:  # the two above are gone: room again
        assert await pong(again)


async def test_only_allowed_origins_may_connect(nursery: trio.Nursery) -> None:
    _, url = await start(nursery, **{"access.origins": ["https://app.example.com"]})
    with trio.fail_after(2):
        stream, head = await raw_upgrade(url, b"Origin: https://evil.example.net\r\n")
    await stream.aclose()
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    async with connect(url, headers=[("Origin", "https://app.example.com")]) as conn:
        assert await pong(conn)
    async with connect(url) as conn:  # no Origin: not a browser
        assert await pong(conn)


@pytest.mark.parametrize(("setting", "status"), [
    ("access.max_connections_per_address", 429), ("server.max_connections", 503)])
async def test_connection_limits_answer_their_status(nursery: trio.Nursery, setting: str,
                                                     status: int) -> None:
    _, url = await start(nursery, **{setting: 2})
    async with connect(url) as first, connect(url) as second:
        with pytest.raises(HandshakeRejected) as refused:
            async with connect(url):
                pass
        assert refused.value.status == status
        assert await pong(first) and await pong(second)
    async with connect(url) as again:  # the two above are gone: room again
        assert await pong(again)


def test_serve_refuses_a_bad_keys_file_at_start(tmp_path: Path) -> None:
    config = tmp_path / "tickwire.toml"
    config.write_text(f'[access]\nkeys_file = "{tmp_path / "missing.toml"}"\n')
    done = subprocess.run([sys.executable, "-m", "feed", "serve", "--port", "0", "--config",
                           str(config)], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 2
    assert "access.keys_file: cannot read keys file" in done.stderr


def test_keys_new_prints_a_key_and_an_entry_that_loads(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "feed", "keys", "new", "carol", "--symbols",
                           "BTC,ETH", "--channels", "trades", "--max-connections", "3"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT, check=True)
    key = done.stdout.splitlines()[1].removeprefix("#").strip()
    ring = load_keys(Path(keys_file(tmp_path, done.stdout)))
    assert ring.grant_for(key) == Grant("carol", frozenset({"BTC", "ETH"}),
                                        frozenset({"trades"}), 3)


async def test_a_query_of_many_fields_is_an_ordinary_unknown_key(nursery: trio.Nursery,
                                                                 tmp_path: Path) -> None:
    """The query is parsed after the 101: a long one must not break the connection."""
    _, url = await keyed(nursery, tmp_path)
    many = "&".join(f"f{i}=1" for i in range(100))
    async with connect(f"{url}?{many}&token=nope") as conn:
        with trio.fail_after(2):
            received, code = await read_until_closed(conn)
    assert code == 1008
    assert received == [{"type": "error", "code": "unauthorized", "message": "unknown API key"}]
