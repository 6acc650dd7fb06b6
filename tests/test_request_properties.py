"""Random requests (hypothesis): through the parser, a whole session, and a connection.

Whatever a client sends, the parser returns a request or raises ``RequestError``; a
session answers each request with exactly the reply a plain model of its
subscriptions predicts (docs/protocol.md section 3); and over a connection, random
requests neither close it nor change a byte of what another client receives.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.events import BytesMessage, TextMessage

from feed import protocol
from feed.config import Config
from feed.events import BookDelta, BookSnapshot, Trade
from feed.groups import Group
from feed.hub import Hub
from feed.protocol import RequestError, parse_request
from feed.server import Server
from feed.session import Session, SessionLimits, State
from tests.helpers import Inbox, follow, memory_client, messages

SYMBOLS = ("BTC", "ETH")
ERROR_CODES = {"bad_request", "unknown_channel", "unknown_symbol", "already_subscribed",
               "too_many_subscriptions", "not_subscribed"}
"""The documented error codes a request can earn (rate limits and keys aside)."""
REPLIES = {"subscribed", "unsubscribed", "error", "symbols", "pong"}
DATA = {"book_snapshot", "book_update", "bbo", "trade", "heartbeat", "notice"}

json_leaves = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
               | st.text(max_size=8))
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=10)
symbol_names = st.sampled_from([*SYMBOLS, "NOPE"])
request_ids = st.integers(-5, 10**6) | st.text(max_size=8)
OPTIONS = {"book": {"depth": st.integers(1, 1000), "interval_ms": st.sampled_from([0, 250]),
                    "checksum": st.booleans()},
           "bbo": {"interval_ms": st.sampled_from([0, 250])}, "trades": {}}


def _request(op: str, channel: str) -> st.SearchStrategy[dict[str, Any]]:
    """Well-formed requests of ``op`` (on ``channel`` where it takes one)."""
    fields: dict[str, st.SearchStrategy[Any]] = {"op": st.just(op)}
    optional: dict[str, st.SearchStrategy[Any]] = {"id": request_ids}
    if op in ("subscribe", "unsubscribe"):
        fields.update(channel=st.just(channel),
                      symbols=st.lists(symbol_names, min_size=1, max_size=2, unique=True))
        if op == "subscribe":
            optional.update(OPTIONS[channel])
    elif op == "resync":
        fields.update(channel=st.just("book"), symbol=symbol_names)
    return st.fixed_dictionaries(fields, optional=optional)


well_formed = st.tuples(st.sampled_from(["subscribe", "subscribe", "unsubscribe", "resync",
                                         "list", "ping"]),
                        st.sampled_from(list(OPTIONS))).flatmap(lambda t: _request(*t))
"""Requests the parser accepts (their symbols may still be unknown to the server)."""
spoilt = st.tuples(well_formed, st.sampled_from(["op", "id", "channel", "symbols", "symbol",
                                                 "depth", "interval_ms", "checksum", "x"]),
                   json_values).map(lambda t: {**t[0], t[1]: t[2]})
"""A well-formed request with one field set (or added) to any JSON value."""
request_objects = well_formed | spoilt | st.dictionaries(st.text(max_size=8), json_values)
payloads = st.one_of(well_formed.map(json.dumps), well_formed.map(json.dumps),
                     request_objects.map(json.dumps), json_values.map(json.dumps),
                     st.binary(max_size=64), st.text(max_size=64))
"""What a client may send in one message: a JSON text (a third of them requests the
parser accepts), or any text or bytes."""


def decoded(data: bytes | str) -> Any:
    """The JSON value of ``data``, or ``None`` when it is not JSON (as the server reads)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def parsed(data: bytes | str) -> protocol.Request | RequestError:
    """The request, or the ``RequestError`` raised for it (and nothing else)."""
    try:
        return parse_request(data)
    except RequestError as error:
        return error


def valid_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and len(value) <= protocol.MAX_ID_CHARS)


@given(payloads)
@settings(max_examples=500, deadline=None)
def test_any_message_parses_to_a_request_or_a_request_error(data: bytes | str) -> None:
    value = decoded(data)
    sent_id = value.get("id") if isinstance(value, dict) else None
    request = parsed(data)
    if isinstance(request, RequestError):
        assert request.code in {"bad_request", "unknown_channel"}
        assert 0 < len(request.message) <= 200  # never grows with the request
        assert request.request_id == (sent_id if valid_id(sent_id) else None)
        return
    assert isinstance(value, dict) and request.id == value.get("id")
    if isinstance(request, protocol.Subscribe | protocol.Unsubscribe):
        assert request.channel in protocol.CHANNELS
        assert request.symbols == tuple(value["symbols"]) and all(request.symbols)
    if isinstance(request, protocol.Subscribe):
        options = request.options
        assert 0 <= options.interval_ms <= protocol.MAX_INTERVAL_MS
        if request.channel == "book":
            assert 1 <= options.depth <= protocol.MAX_DEPTH
            assert (options.depth, options.interval_ms, options.checksum) == (
                value.get("depth", 10), value.get("interval_ms", 0), value.get("checksum", True))


class SubscriptionModel:
    """The subscriptions a session should hold, and the reply each request should get."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.keys: set[str] = set()

    def reply(self, data: bytes | str) -> tuple[str, Any, list[str]]:
        """(reply type or ``error:code``, its ``id``, the data messages after it);
        applies the request to the model."""
        request = parsed(data)
        if isinstance(request, RequestError):
            return f"error:{request.code}", request.request_id, []
        if isinstance(request, protocol.Subscribe):
            keys = {f"{request.channel}:{s}" for s in request.symbols}
            if any(s not in SYMBOLS for s in request.symbols):
                return "error:unknown_symbol", request.id, []
            if keys & self.keys:
                return "error:already_subscribed", request.id, []
            if len(self.keys) + len(keys) > self.limit:
                return "error:too_many_subscriptions", request.id, []
            self.keys |= keys
            first = {"book": ["book_snapshot"], "bbo": ["bbo"], "trades": []}[request.channel]
            return "subscribed", request.id, first * len(request.symbols)
        if isinstance(request, protocol.Unsubscribe):
            keys = {f"{request.channel}:{s}" for s in request.symbols}
            if not keys <= self.keys:
                return "error:not_subscribed", request.id, []
            self.keys -= keys
            return "unsubscribed", request.id, []
        if isinstance(request, protocol.Resync):
            if f"book:{request.symbol}" not in self.keys:
                return "error:not_subscribed", request.id, []
            return "book_snapshot:resync", None, []
        if isinstance(request, protocol.ListSymbols):
            return "symbols", request.id, []
        return "pong", request.id, []


def kind(message: dict[str, Any]) -> str:
    if message["type"] == "error":
        return f"error:{message['code']}"
    if message["type"] == "book_snapshot" and message["reason"] == "resync":
        return "book_snapshot:resync"
    return str(message["type"])


def groups_of(hub: Hub, member: Session) -> set[str]:
    """The keys of every group in the hub that has ``member``."""
    found: set[str] = set()
    for state in hub.symbols.values():
        groups: list[Group] = [state.trades, *state.book_groups.values(),
                               *state.bbo_groups.values()]
        found |= {g.key for g in groups if member in g.members}
    return found


@given(st.lists(payloads, max_size=30))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_session_answers_every_request_as_its_model_predicts(batch: list[bytes | str]) -> None:
    hub = Hub(lambda: 0)
    for symbol in SYMBOLS:
        hub.apply(BookSnapshot(symbol, (("100", "1"),), (("101", "1"),), 1, 1, seq=7), 0)
    limits = SessionLimits(max_subscriptions=3, request_rate=1e9, request_burst=10**9)
    session = Session(hub, limits, wbits=0, now_ns=0)
    model = SubscriptionModel(limits.max_subscriptions)
    for data in batch:
        session.handle(data, 0)
        frames, _ = session.outbox.take_batch(1 << 30)
        out = messages(frames)
        expected, request_id, then = model.reply(data)
        assert kind(out[0]) == expected
        if expected != "book_snapshot:resync":
            assert out[0].get("id") == request_id
        assert [m["type"] for m in out[1:]] == then
        assert set(session.subs) == model.keys == groups_of(hub, session)
        assert session.state is State.OPEN
    session.closed()
    assert groups_of(hub, session) == set()


def book_server() -> Server:
    config = Config().with_overrides({"server.port": 0})
    server = Server(config, clock=lambda: round(trio.current_time() * 1e9))
    for symbol in SYMBOLS:
        server.hub.apply(BookSnapshot(symbol, (("100", "1"),), (("101", "1"),), 1, 1, seq=7),
                         server.clock())
    return server


async def _random_requests_beside_a_bystander(batch: list[bytes | str]) -> None:
    server = book_server()
    hub = server.hub
    async with trio.open_nursery() as nursery, memory_client(server) as bystander, \
            memory_client(server) as victim:
        await bystander.subscribe("book", ["BTC"], depth=5)
        await bystander.subscribe("trades", ["BTC"])
        watched = Inbox(bystander)
        nursery.start_soon(watched.run)
        seen = Inbox(victim)
        nursery.start_soon(seen.run)
        for i, data in enumerate([*batch, '{"op": "ping", "id": "last"}']):
            frame = TextMessage(data) if isinstance(data, str) else BytesMessage(data)
            await victim._send(frame)
            hub.apply(BookDelta("BTC", (("100", str(i + 2)),), (), 2, 2), server.clock())
            hub.apply(Trade("BTC", i, "100", "1", "buy", 2, 2), server.clock())
        events = len(batch) + 1
        with trio.fail_after(60):
            await seen.wait_for(lambda m: m.get("id") == "last")
            await watched.wait_for(lambda m: m["type"] == "trade" and m["seq"] == events)
        nursery.cancel_scope.cancel()
    replies = [m for m in seen.messages
               if m["type"] in REPLIES or m.get("reason") == "resync"]
    assert len(replies) == len(batch) + 1  # one each, and the ping's pong
    assert all(m["type"] in REPLIES | DATA for m in seen.messages)
    assert {m["code"] for m in seen.of_type("error")} <= ERROR_CODES
    assert seen.close_code is None and server.metrics.closes == {}
    assert [m["seq"] for m in watched.of_type("trade")] == list(range(1, events + 1))
    book = follow(watched.messages)  # every update chained and its checksum verified
    assert book.seq == hub.book_of("BTC").seq == 7 + events
    assert not watched.of_type("error", "notice")


@given(st.lists(payloads, max_size=12))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_requests_neither_break_a_connection_nor_touch_another(
        batch: list[bytes | str]) -> None:
    trio.run(_random_requests_beside_a_bystander, batch,
             clock=trio.testing.MockClock(autojump_threshold=0))
