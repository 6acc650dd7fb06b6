"""Test helpers: decode the server's prebuilt frames, a naive book model, reading a
connection to its close, a process's children, the process holding a socket."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import orjson

from feed.checksum import book_checksum

Level = tuple[str, str]


def frame_payload(frame: bytes) -> tuple[int, bool, bytes]:
    """(opcode, compressed, payload) of one unmasked server frame."""
    first, second = frame[0], frame[1]
    length = second & 0x7F
    offset = 2
    if length == 126:
        (length,) = struct.unpack("!H", frame[2:4])
        offset = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", frame[2:10])
        offset = 10
    payload = frame[offset:offset + length]
    assert len(payload) == length, "truncated frame"
    return first & 0x0F, bool(first & 0x40), payload


def messages(frames: list[bytes], wbits: int = 15) -> list[dict[str, Any]]:
    """Decode a list of frames (as an outbox holds them) into message objects."""
    out: list[dict[str, Any]] = []
    for frame in frames:
        _, compressed, payload = frame_payload(frame)
        if compressed:
            payload = zlib.decompressobj(-wbits).decompress(payload + b"\x00\x00\xff\xff")
        decoded = orjson.loads(payload)
        out.extend(decoded if isinstance(decoded, list) else [decoded])
    return out


async def read_until_closed(conn: Any) -> tuple[list[dict[str, Any]], int]:
    """Read a reference-client connection to its end: (messages, close code)."""
    from clients.errors import ConnectionClosed

    received: list[dict[str, Any]] = []
    while True:
        try:
            received.append(await conn.receive())
        except ConnectionClosed as closed:
            return received, closed.code


class NaiveBook:
    """The obvious book: a dict per side, sorted on every read. The reference model."""

    def __init__(self, depth: int = 10) -> None:
        self.depth = depth
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}

    def apply(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Set each level's size; size ``"0"`` removes the level."""
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for price, size in levels:
                if size == "0":
                    side.pop(price, None)
                else:
                    side[price] = size

    def sorted_bids(self) -> list[Level]:
        return sorted(self.bids.items(), key=lambda lvl: Decimal(lvl[0]), reverse=True)

    def sorted_asks(self) -> list[Level]:
        return sorted(self.asks.items(), key=lambda lvl: Decimal(lvl[0]))

    def checksum(self) -> int:
        return book_checksum(self.sorted_bids(), self.sorted_asks(), self.depth)


def children(pid: int) -> list[int]:
    """Ids of the processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as stat:
                ppid = int(stat.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found



def socket_owner(local_port: int, remote_port: int, pids: Iterable[int]) -> int | None:
    """Which of ``pids`` holds the TCP socket from ``local_port`` to ``remote_port`` on
    this host (Linux /proc): the server process that accepted a client's connection."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as lines:
                rows = [line.split() for line in lines][1:]
        except OSError:
            continue
        for row in rows:
            if (int(row[1].rpartition(":")[2], 16) == local_port
                    and int(row[2].rpartition(":")[2], 16) == remote_port):
                inodes.add(f"socket:[{row[9]}]")
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:
                continue
    return None
