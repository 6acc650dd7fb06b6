"""A fuzz target for the inbound WebSocket path: random and mutated frames, sent over a
memory stream into the server's own handshake and connection code.

Each case is made from a seed and its index alone (``make_case``), so that any case can
be run again. It opens a WebSocket (with or without permessage-deflate), sends frames
built from valid requests, pings, closes, fragments and compressed messages, some of
them broken on purpose (bad opcodes, reserved bits, bad or non-minimal lengths,
missing masks, fragmented or oversized control frames, stray continuations, invalid
UTF-8, deflate garbage, deflate bombs, oversized messages) and, in some cases, the
bytes of the whole run mutated (bits flipped, cut short, bytes inserted, dropped or
repeated), in chunks of random sizes. It ends with a sentinel ``ping`` request, waits
up to ``WAIT_S`` (virtual) seconds for its ``pong`` or the server's close, closes its
side and reads the server's output to the end. ``check`` then asserts that

- nothing escaped the server's connection task and nothing was logged as an error
  (an internal error, close 1011);
- the server served (the sentinel answered; for a case of valid frames only, exactly
  one reply per request) or closed with a protocol close code (1002, 1007, 1008,
  1009), echoed the client's own close, or dropped the connection when the client
  went away; every message it sent is JSON of a documented type;
- no task, session, subscription or per-key count is left behind.

In the test suite (tests/test_fuzz_ws.py) a few hundred seeded cases run on trio's
virtual clock in a few seconds; for longer, on demand::

    .venv/bin/python -m tests.fuzz_ws --cases 100000 [--seed N] [--memory]
    .venv/bin/python -m tests.fuzz_ws --seed N --case K -v    # one case again, shown
    TICKWIRE_FUZZ_CASES=20000 TICKWIRE_FUZZ_SEED=7 .venv/bin/pytest tests/test_fuzz_ws.py

Why a seeded mutator rather than atheris: the inbound path's parsing is wsproto's and
the server's own (sizes, inflation, requests), and frames that are valid but for one
field reach it far more often than coverage-guided byte mutation finds them in a
short run; a case is reproduced from two integers with nothing to install (atheris
needs libFuzzer and ships wheels for a few Python versions only), and it runs under
trio's virtual clock, so that waits for close handshakes cost no real time.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import struct
import sys
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from feed.config import Config
from feed.events import BookSnapshot, Trade
from feed.handshake import DeflateExtension
from feed.server import Server
from tests.helpers import serve_websocket

MAX_MESSAGE_BYTES = 4096
"""The server's request size limit in the fuzz runs: small, so that a case reaches it."""
WAIT_S = 5.0
"""Virtual seconds a case waits for the sentinel's pong (or a close) before hanging up."""
PROTOCOL_CODES = frozenset({1002, 1007, 1008, 1009})
SENTINEL = '{"op":"ping","id":"sentinel"}'
REPLY_TYPES = frozenset({"subscribed", "unsubscribed", "error", "symbols", "pong"})
MESSAGE_TYPES = REPLY_TYPES | {"book_snapshot", "book_update", "bbo", "trade", "heartbeat",
                               "notice"}
TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
REQUESTS = [
    {"op": "ping", "id": 1}, {"op": "list", "id": "l"},
    {"op": "subscribe", "id": 2, "channel": "book", "symbols": ["BTC"], "depth": 5},
    {"op": "subscribe", "channel": "trades", "symbols": ["BTC"]},
    {"op": "subscribe", "channel": "bbo", "symbols": ["BTC", "NOPE"]},
    {"op": "unsubscribe", "channel": "book", "symbols": ["BTC"]},
    {"op": "resync", "channel": "book", "symbol": "BTC"},
    {"op": "dance"}, [1, 2], "not an object",
]


class FuzzFailure(AssertionError):
    """A case broke a promise; the message says which case and what."""


# -- making a case -----------------------------------------------------------------------


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, masked: bool = True,
          length: int | None = None, wide: bool = False, key: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """One client frame. ``length`` claims another payload length than the real one;
    ``wide`` encodes the length in 8 bytes however small it is."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask = 0x80 if masked else 0
    if wide:
        head = bytes([first, mask | 127]) + struct.pack("!Q", n)
    elif n < 126:
        head = bytes([first, mask | n])
    elif n < 1 << 16:
        head = bytes([first, mask | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, mask | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    stream = (key * (len(payload) // 4 + 1))[:len(payload)]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(
        len(payload), "big") if payload else b""
    return head + key + body


def bomb(size: int) -> bytes:
    """``size`` (a multiple of 64 KiB) zero bytes deflated: about 1/800 of it, made
    without the time and memory of compressing them all. A compressor fed 64 KiB of
    zeros at a time, each flushed, gives the same bytes for every block after the
    first: those bytes repeated are the rest of the stream."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -9)
    zeros = bytes(1 << 16)
    first, then = (compressor.compress(zeros) + compressor.flush(zlib.Z_SYNC_FLUSH)
                   for _ in range(2))
    return (first + then * ((size >> 16) - 1))[:-4]


def deflate(data: bytes, level: int = 6) -> bytes:
    """``data`` as permessage-deflate sends it: raw deflate, the trailing
    ``00 00 ff ff`` of the sync flush removed (RFC 7692 7.2.1)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -9)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4]


@dataclass
class Case:
    """One fuzz case: what is sent, and what kind of run it should be."""

    seed: int
    index: int
    compress: bool
    chunks: list[bytes] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    """What was put in, in order, for a person reading a failure."""
    valid: bool = True
    """Every frame well-formed, nothing mutated, nothing over a limit."""
    requests: int = 0
    """Complete request messages before any close (each earns one reply)."""
    resyncs: int = 0
    """How many of them are ``resync``: its snapshot replaces one still queued for the
    same book, and an ``unsubscribe`` drops it (docs/protocol.md, section 3)."""
    closes: bool = False
    """A well-formed close frame is among the frames."""

    @property
    def label(self) -> str:
        return f"seed {self.seed} case {self.index}"


class _Maker:
    """Builds one case's frames from its random generator."""

    def __init__(self, rng: random.Random, case: Case) -> None:
        self.rng = rng
        self.case = case
        self.frames: list[bytes] = []

    def add(self, step: str, *frames: bytes, valid: bool = True,
            request: bytes | None = None) -> None:
        """Add ``frames``; ``request`` is the message they carry, if they carry one."""
        case = self.case
        case.steps.append(step)
        self.frames.extend(frames)
        case.valid = case.valid and valid
        if request is not None and not case.closes:
            case.requests += 1
            case.resyncs += b'"resync"' in request

    def request_payload(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.8:
            return json.dumps(rng.choice(REQUESTS)).encode()
        return rng.randbytes(rng.randrange(0, 40))  # a bad request, still a message

    def request(self) -> None:
        payload = self.request_payload()
        opcode = TEXT if self.rng.random() < 0.5 and _utf8(payload) else BINARY
        self.add("request", frame(opcode, payload), request=payload)

    def fragmented(self) -> None:
        rng = self.rng
        payload = self.request_payload()
        cuts = sorted(rng.sample(range(len(payload) + 1), min(len(payload) + 1,
                                                               rng.randrange(1, 4))))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)],
                                               strict=True)]
        opcode = TEXT if _utf8(payload) else BINARY
        frames = [frame(opcode if i == 0 else CONTINUATION, piece, fin=i == len(pieces) - 1)
                  for i, piece in enumerate(pieces)]
        if len(frames) > 1 and rng.random() < 0.5:  # a ping between fragments is allowed
            frames.insert(1, frame(PING, b"mid"))
        self.add(f"fragmented x{len(pieces)}", *frames, request=payload)

    def compressed(self) -> None:
        payload = self.request_payload()
        self.add("compressed", frame(BINARY, deflate(payload), rsv=4), valid=self.case.compress,
                 request=payload)

    def control(self) -> None:
        rng = self.rng
        opcode = rng.choice([PING, PONG])
        self.add("ping" if opcode == PING else "pong",
                 frame(opcode, rng.randbytes(rng.randrange(0, 126))))

    def close(self) -> None:
        rng = self.rng
        code = rng.choice([1000, 1001, 1003, 3000, 4001, 4999])
        reason = rng.choice([b"", b"bye", "adi\u00f3s".encode()])
        self.add(f"close {code}", frame(CLOSE, struct.pack("!H", code) + reason))
        self.case.closes = True

    def bad_close(self) -> None:
        rng = self.rng
        payload = rng.choice([struct.pack("!H", rng.choice([0, 999, 1004, 1005, 1006, 1015,
                                                            2999, 5000])),
                              b"\x03", struct.pack("!H", 1000) + b"\xff\xfe"])
        self.add("bad close", frame(CLOSE, payload), valid=False)

    def oversized(self) -> None:
        rng = self.rng
        size = rng.randrange(MAX_MESSAGE_BYTES + 1, 3 * MAX_MESSAGE_BYTES)
        payload = b'{"op":"ping","pad":"' + b"x" * size + b'"}'
        if rng.random() < 0.5:  # in fragments, each under the limit
            half = len(payload) // 2
            frames = [frame(BINARY, payload[:half], fin=False),
                      frame(CONTINUATION, payload[half:])]
        else:
            frames = [frame(BINARY, payload)]
        self.add("oversized", *frames, valid=False)

    def bomb(self) -> None:
        size = self.rng.choice([1 << 20, 16 << 20])
        self.add(f"deflate bomb {size >> 20} MiB", frame(BINARY, bomb(size), rsv=4), valid=False)

    def malformed(self) -> None:
        """One frame broken in one way."""
        rng = self.rng
        payload = json.dumps(rng.choice(REQUESTS)).encode()
        kind, bad = rng.choice([
            ("bad opcode", lambda: frame(rng.choice([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]),
                                         payload)),
            ("rsv2/rsv3", lambda: frame(TEXT, payload, rsv=rng.choice([1, 2, 3]))),
            ("unmasked", lambda: frame(TEXT, payload, masked=False)),
            ("fragmented control", lambda: frame(PING, b"x", fin=False)),
            ("long control", lambda: frame(PING, bytes(126))),
            ("stray continuation", lambda: frame(CONTINUATION, payload)),
            ("interleaved message", lambda: frame(TEXT, payload[:3], fin=False)
             + frame(TEXT, payload)),
            ("invalid utf-8", lambda: frame(TEXT, b'{"op":"ping","id":"\xc3\x28"}')),
            ("deflate garbage", lambda: frame(BINARY, rng.randbytes(20), rsv=4)),
            ("non-minimal length", lambda: frame(TEXT, payload, wide=True)),
            ("length MSB set", lambda: frame(TEXT, payload, length=1 << 63)),
            ("length too long", lambda: frame(TEXT, payload, length=len(payload) + 1000)),
        ])
        self.add(kind, bad(), valid=False)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """``data`` damaged in one of a few ways (and which)."""
    if not data:
        return data, "nothing to mutate"
    buf = bytearray(data)
    how = rng.choice(["flip", "truncate", "insert", "delete", "repeat"])
    at = rng.randrange(len(buf))
    if how == "flip":
        for _ in range(rng.randrange(1, 9)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        del buf[at:]
    elif how == "insert":
        buf[at:at] = rng.randbytes(rng.randrange(1, 16))
    elif how == "delete":
        del buf[at:at + rng.randrange(1, 16)]
    else:
        buf[at:at] = buf[at:at + rng.randrange(1, 32)]
    return bytes(buf), f"mutated: {how} at {at}"


def make_case(seed: int, index: int) -> Case:
    """The case ``index`` of the run seeded ``seed`` (the same pair, the same case)."""
    rng = random.Random(f"{seed}:{index}")
    case = Case(seed, index, compress=rng.random() < 0.5)
    maker = _Maker(rng, case)
    broken = [maker.bad_close, maker.oversized, maker.bomb, maker.malformed, maker.malformed]
    sound = [maker.request, maker.request, maker.fragmented, maker.control, maker.close]
    if case.compress:
        sound.append(maker.compressed)
    else:
        broken.append(maker.compressed)  # RSV1 without the extension
    only_sound = rng.random() < 0.3
    for _ in range(rng.randrange(1, 7)):
        rng.choice(sound if only_sound or rng.random() < 0.6 else broken)()
    data = b"".join(maker.frames)
    if not only_sound and rng.random() < 0.4:
        data, how = mutate(data, rng)
        case.steps.append(how)
        case.valid = False
    data += frame(TEXT, SENTINEL.encode())
    cut = 0
    while cut < len(data):
        size = rng.choice([1, 2, 7, 64, 1000, 1 << 16])
        case.chunks.append(data[cut:cut + size])
        cut += size
    return case


# -- running a case ----------------------------------------------------------------------


@dataclass
class Outcome:
    """What the client saw of one case."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None  # the server's close frame's code; None: no close frame
    answered: bool = False  # the sentinel's pong came
    client_errors: list[str] = field(default_factory=list)
    echoable: set[int] = field(default_factory=set)
    """The codes of the well-formed close frames the client sent (one may be echoed)."""


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Fuzzer:
    """One server (a hub with a book and trades) that every case connects to in turn."""

    def __init__(self) -> None:
        config = Config().with_overrides({
            "server.port": 0, "server.max_message_bytes": MAX_MESSAGE_BYTES,
            "server.close_timeout_ms": 1000})
        self.server = server = Server(config, clock=lambda: round(trio.current_time() * 1e9))
        for symbol in ("BTC", "ETH"):
            server.hub.apply(BookSnapshot(symbol, (("100", "1"),), (("101", "1"),), 1, 1, seq=1),
                             server.clock())
        self.outcomes: Counter[str] = Counter()
        self._errors = _ErrorLog()

    async def run(self, case: Case) -> Outcome:
        """Run one case and check it; raises ``FuzzFailure``."""
        tasks_before = trio.lowlevel.current_statistics().tasks_living
        logger = logging.getLogger("tickwire")
        logger.addHandler(self._errors)
        try:
            outcome = await self._exchange(case)
        except Exception as exc:
            raise FuzzFailure(f"{case.label}: {type(exc).__name__}: {exc}\n"
                              f"{describe(case)}") from exc
        finally:
            logger.removeHandler(self._errors)
        errors, self._errors.records = self._errors.records, []
        self.check(case, outcome, errors, tasks_before)
        self.outcomes[_kind(outcome)] += 1
        return outcome

    async def _exchange(self, case: Case) -> Outcome:
        server_stream, client_stream = trio.testing.memory_stream_pair()
        client = WSConnection(ConnectionType.CLIENT)
        request = client.send(Request(host="fuzz", target="/v1/stream", extensions=(
            [PerMessageDeflate()] if case.compress else [])))
        shadow = _shadow(request, case.compress)
        outcome = Outcome()
        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_websocket, self.server, server_stream)
            await client_stream.send_all(request)
            conn = await _accepted(client_stream, client)
            nursery.start_soon(_read_all, client_stream, conn, outcome, done)
            for chunk in case.chunks:
                try:
                    await client_stream.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
            self.server.hub.apply(Trade("BTC", case.index, "100", "1", "buy", 1, 1),
                                  self.server.clock())
            with trio.move_on_after(WAIT_S):
                await done.wait()
            await client_stream.send_stream.aclose()  # the client goes away
        outcome.echoable = _peer_closes(shadow, b"".join(case.chunks))
        return outcome

    def check(self, case: Case, outcome: Outcome, errors: list[logging.LogRecord],
              tasks_before: int) -> None:
        def fail(what: str) -> None:
            raise FuzzFailure(f"{case.label}: {what}\n{describe(case, outcome)}")

        if errors:
            fail(f"the server logged an error: {errors[0].getMessage()}")
        if outcome.client_errors:
            fail(f"the server sent what a client cannot parse: {outcome.client_errors[0]}")
        code = outcome.close_code
        echoed = outcome.echoable
        if code is not None and code not in PROTOCOL_CODES and code not in echoed:
            fail(f"closed with {code}: neither a protocol code nor the client's own")
        for message in outcome.messages:
            if message.get("type") not in MESSAGE_TYPES:
                fail(f"sent an undocumented message {message!r}")
        if case.valid and not case.closes:
            if not outcome.answered or code is not None:
                fail(f"valid frames only, yet {'closed ' + str(code) if code else 'no pong'}")
            replies = [m for m in outcome.messages
                       if m["type"] in REPLY_TYPES or m.get("reason") == "resync"]
            expected = case.requests + 1  # and the sentinel
            if not expected - case.resyncs <= len(replies) <= expected:
                fail(f"{len(replies)} replies to {case.requests} requests "
                     f"({case.resyncs} resync) and the sentinel")
        if case.valid and case.closes and code not in echoed:
            fail(f"answered the client's close {sorted(echoed)} with {code}")
        if not outcome.answered and code is None and case.valid:
            fail("neither served nor closed")
        server = self.server
        if server.sessions or server._per_key or server._per_address:
            fail("a session outlived its connection")
        for state in server.hub.symbols.values():
            groups = [state.trades, *state.book_groups.values(), *state.bbo_groups.values()]
            if any(g.members for g in groups):
                fail("a subscription outlived its connection")
        if trio.lowlevel.current_statistics().tasks_living != tasks_before:
            fail("tasks were left behind")


def _shadow(request: bytes, compress: bool) -> Connection:
    """A server-side wsproto connection accepted as the server accepts it: it parses
    the client's frames again, to tell which close frames were well-formed."""
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(request)
    next(e for e in ws.events() if isinstance(e, Request))
    ws.send(AcceptConnection(extensions=[DeflateExtension(MAX_MESSAGE_BYTES)]))
    assert ws.connection is not None
    return ws.connection


def _peer_closes(shadow: Connection, data: bytes) -> set[int]:
    """The codes of the well-formed close frames in ``data`` (the server echoes one)."""
    shadow.receive_data(data)
    codes = set()
    for event in shadow.events():
        if isinstance(event, CloseConnection) and shadow.state is ConnectionState.REMOTE_CLOSING:
            codes.add(int(event.code))
    return codes


async def _accepted(stream: trio.abc.Stream, client: WSConnection) -> Connection:
    """Read the server's handshake answer; the client's connection once accepted."""
    while True:
        data = await stream.receive_some()
        assert data, "the server hung up during the handshake"
        client.receive_data(data)
        for event in client.events():
            if isinstance(event, AcceptConnection):
                assert client.connection is not None
                # Frames that came with the 101 stay in the connection's buffer.
                return client.connection
            raise AssertionError(f"handshake refused: {event!r}")


async def _read_all(stream: trio.abc.Stream, conn: Connection, outcome: Outcome,
                    done: trio.Event) -> None:
    """Read the server's output to its end, noting messages, the sentinel's answer and
    the close."""
    parts: list[bytes] = []
    while True:
        for event in conn.events():  # (first: any frames that came with the 101)
            if isinstance(event, Message):
                parts.append(event.data if isinstance(event, BytesMessage) else
                             event.data.encode())
                if event.message_finished:
                    _note(b"".join(parts), outcome, done, isinstance(event, TextMessage))
                    parts.clear()
            elif isinstance(event, CloseConnection):
                if conn.state is ConnectionState.REMOTE_CLOSING:
                    outcome.close_code = int(event.code)
                else:
                    outcome.client_errors.append(f"{event.code} {event.reason}")
                done.set()
        try:
            data = await stream.receive_some()
        except trio.BrokenResourceError:
            data = b""
        if not data:
            done.set()
            return
        if conn.state is ConnectionState.OPEN:
            conn.receive_data(bytes(data))


def _note(payload: bytes, outcome: Outcome, done: trio.Event, text: bool) -> None:
    if text:
        outcome.client_errors.append("a text frame (the server sends binary)")
    try:
        message = json.loads(payload)
    except ValueError:
        outcome.client_errors.append(f"not JSON: {payload[:60]!r}")
        return
    outcome.messages.append(message)
    if message.get("type") == "pong" and message.get("id") == "sentinel":
        outcome.answered = True
        done.set()


def _kind(outcome: Outcome) -> str:
    if outcome.close_code is not None:
        return f"close {outcome.close_code}"
    return "served" if outcome.answered else "dropped"


def describe(case: Case, outcome: Outcome | None = None) -> str:
    """A case (and what came of it) for a person: replay it with ``--seed --case``."""
    sent = b"".join(case.chunks)
    lines = [f"  python -m tests.fuzz_ws --seed {case.seed} --case {case.index} -v",
             f"  compress={case.compress} valid={case.valid} requests={case.requests} "
             f"closes={case.closes}", f"  steps: {', '.join(case.steps)}",
             f"  {len(sent)} bytes in {len(case.chunks)} chunks: {sent[:120].hex()}"
             f"{'...' if len(sent) > 120 else ''}"]
    if outcome is not None:
        lines.append(f"  outcome: {_kind(outcome)}, {len(outcome.messages)} messages, "
                     f"types {sorted({m.get('type', '?') for m in outcome.messages})}")
    return "\n".join(lines)


async def run_cases(seed: int, cases: range, *, verbose: bool = False,
                    progress: Callable[[int], None] | None = None) -> Fuzzer:
    """Run ``cases`` of the run seeded ``seed`` against one server; raises
    ``FuzzFailure`` at the first broken promise."""
    fuzzer = Fuzzer()
    for index in cases:
        case = make_case(seed, index)
        outcome = await fuzzer.run(case)
        if verbose:
            print(describe(case, outcome))
        if progress is not None:
            progress(index)
    return fuzzer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz_ws", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000, help="how many cases to run")
    parser.add_argument("--seed", type=int, default=int(time.time()),
                        help="the run's seed (default: the time; printed)")
    parser.add_argument("--case", type=int, help="run this one case only")
    parser.add_argument("--memory", action="store_true",
                        help="trace allocations and report the peak (slower)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show every case")
    args = parser.parse_args(argv)
    cases = range(args.case, args.case + 1) if args.case is not None else range(args.cases)
    print(f"fuzzing the inbound WebSocket path: seed {args.seed}, {len(cases)} case(s)",
          flush=True)
    started = time.monotonic()

    def progress(index: int) -> None:
        if (index + 1) % 1000 == 0:
            memory = ""
            if args.memory:
                gc.collect()  # trio's exceptions make cycles: count what is really held
                now, peak = tracemalloc.get_traced_memory()
                memory = f", traced memory {now / 2**20:.1f} MiB (peak {peak / 2**20:.1f})"
            print(f"  {index + 1} cases, {time.monotonic() - started:.0f} s{memory}", flush=True)

    if args.memory:
        tracemalloc.start()
    try:
        fuzzer = trio.run(lambda: run_cases(args.seed, cases, verbose=args.verbose,
                                            progress=progress),
                          clock=trio.testing.MockClock(autojump_threshold=0))
    except FuzzFailure as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    took = time.monotonic() - started
    print(f"{len(cases)} cases passed in {took:.1f} s: "
          + ", ".join(f"{kind} {n}" for kind, n in sorted(fuzzer.outcomes.items())))
    if args.memory:
        _, peak = tracemalloc.get_traced_memory()
        print(f"peak traced memory {peak / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
