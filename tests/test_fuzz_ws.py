"""The inbound WebSocket fuzz target (tests/fuzz_ws.py): a short seeded run, frames
broken in one known way each with the exact close code they earn, and memory bounded.

``TICKWIRE_FUZZ_CASES`` and ``TICKWIRE_FUZZ_SEED`` make the run longer or another one;
``python -m tests.fuzz_ws --cases 100000`` runs outside pytest.
"""

from __future__ import annotations

import os
import struct
import tracemalloc
import zlib

import pytest
import trio
import trio.testing
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import CloseConnection, TextMessage

from feed.echo import EchoSession
from feed.metrics import Metrics
from feed.wsconn import ConnectionLimits, WebSocketConnection
from feed.wsframe import Deflater
from tests.fuzz_ws import (
    BINARY,
    CLOSE,
    CONTINUATION,
    MAX_MESSAGE_BYTES,
    PING,
    SENTINEL,
    TEXT,
    Case,
    Fuzzer,
    bomb,
    deflate,
    frame,
    run_cases,
)

CASES = int(os.environ.get("TICKWIRE_FUZZ_CASES", "300"))
SEED = int(os.environ.get("TICKWIRE_FUZZ_SEED", "0"))
PING_REQUEST = b'{"op":"ping","id":1}'


async def test_a_seeded_run_of_random_and_mutated_frames(
        autojump_clock: trio.testing.MockClock) -> None:
    fuzzer = await run_cases(SEED, range(CASES))  # raises FuzzFailure, naming the case
    assert sum(fuzzer.outcomes.values()) == CASES
    if CASES >= 300:  # the run reached every kind of ending
        assert {"served", "dropped", "close 1002", "close 1007", "close 1009",
                "close 1000"} <= set(fuzzer.outcomes)


def test_a_bomb_inflates_to_its_size() -> None:
    inflated = zlib.decompressobj(-9).decompress(bomb(1 << 20) + b"\x00\x00\xff\xff")
    assert inflated == bytes(1 << 20) and len(bomb(64 << 20)) < (64 << 20) // 500


def sent(*frames: bytes, compress: bool = False) -> Case:
    """A case of these frames then the sentinel, in one chunk each."""
    return Case(seed=-1, index=0, compress=compress, valid=False,
                chunks=[*frames, frame(TEXT, SENTINEL.encode())])


@pytest.mark.parametrize(("case", "code"), [
    (sent(frame(0x3, PING_REQUEST)), 1002),  # a reserved opcode
    (sent(frame(TEXT, PING_REQUEST, rsv=2)), 1002),  # RSV2 with no extension using it
    (sent(frame(BINARY, deflate(PING_REQUEST), rsv=4)), 1002),  # RSV1 without deflate
    (sent(frame(TEXT, PING_REQUEST, masked=False)), 1002),  # a client frame unmasked
    (sent(frame(PING, b"x", fin=False)), 1002),  # a fragmented control frame
    (sent(frame(PING, bytes(126))), 1002),  # a control frame over 125 bytes
    (sent(frame(CONTINUATION, PING_REQUEST)), 1002),  # a continuation of nothing
    (sent(frame(TEXT, b"{", fin=False), frame(TEXT, PING_REQUEST)), 1002),  # a new message
    (sent(frame(TEXT, PING_REQUEST, wide=True)), 1002),  # a length in 8 bytes, fits in 1
    (sent(frame(TEXT, PING_REQUEST, length=1 << 63)), 1002),  # a length with its MSB set
    (sent(frame(CLOSE, struct.pack("!H", 999))), 1002),  # a close code not allowed
    (sent(frame(CLOSE, b"\x03")), 1002),  # a close payload of one byte
    (sent(frame(TEXT, b'{"op":"ping","id":"\xc3\x28"}')), 1007),  # invalid UTF-8
    (sent(frame(CLOSE, struct.pack("!H", 1000) + b"\xff")), 1007),  # ... in a close reason
    (sent(frame(BINARY, b"\xff" * 20, rsv=4), compress=True), 1007),  # not deflate data
    (sent(frame(BINARY, bytes(MAX_MESSAGE_BYTES + 1))), 1009),  # one byte over the limit
    (sent(frame(BINARY, bytes(3000), fin=False),  # fragments, each under the limit
          frame(CONTINUATION, bytes(3000))), 1009),
    (sent(frame(BINARY, bomb(16 << 20), rsv=4), compress=True), 1009),  # a deflate bomb
    (sent(frame(CLOSE, struct.pack("!H", 4001) + b"bye")), 4001),  # the client's own: echoed
])
async def test_each_broken_frame_earns_its_close_code(
        autojump_clock: trio.testing.MockClock, case: Case, code: int) -> None:
    outcome = await Fuzzer().run(case)  # and the checks of every fuzz case
    assert (outcome.close_code, outcome.answered) == (code, False)


async def test_a_sound_run_is_served(autojump_clock: trio.testing.MockClock) -> None:
    case = sent(frame(TEXT, PING_REQUEST), frame(BINARY, deflate(PING_REQUEST), rsv=4),
                frame(TEXT, PING_REQUEST[:5], fin=False), frame(PING, b"in between"),
                frame(CONTINUATION, PING_REQUEST[5:]), compress=True)
    outcome = await Fuzzer().run(case)
    assert (outcome.close_code, outcome.answered) == (None, True)
    assert [(m["type"], m["id"]) for m in outcome.messages] == [
        ("pong", 1), ("pong", 1), ("pong", 1), ("pong", "sentinel")]


async def test_a_deflate_bomb_is_closed_without_inflating_it(
        autojump_clock: trio.testing.MockClock) -> None:
    fuzzer = Fuzzer()
    case = sent(frame(BINARY, bomb(64 << 20), rsv=4), compress=True)
    tracemalloc.start()
    try:
        outcome = await fuzzer.run(case)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.close_code == 1009
    assert peak < 1 << 20  # the 64 MiB it would inflate to were never held


async def test_a_close_during_a_stream_write_is_still_answered() -> None:
    """Found by the fuzzer: a client's close that came while the server was writing to
    a stream (TLS, memory) cut the write short, and the close frame was never sent."""
    server_stream, client_stream = trio.testing.lockstep_stream_pair()  # writes wait for reads
    connection = WebSocketConnection(server_stream, Connection(ConnectionType.SERVER),
                                     EchoSession(0, Deflater()), lambda: 0,
                                     ConnectionLimits(close_timeout_s=5), Metrics())
    client = Connection(ConnectionType.CLIENT)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection.run)
        await client_stream.send_all(client.send(TextMessage("echo me")))
        await trio.testing.wait_all_tasks_blocked()  # the echo's write waits for a reader
        await client_stream.send_all(client.send(CloseConnection(1000, "done")))
        events = []
        with trio.fail_after(5):
            while data := await client_stream.receive_some():
                client.receive_data(data)
                events.extend(client.events())
    assert [type(e) for e in events] == [TextMessage, CloseConnection]
    assert events[0].data == "echo me" and events[1].code == 1000
