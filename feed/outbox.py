"""One client's outbound queue, bounded in bytes and in age.

The ingester pushes frames without ever waiting; the client's sender takes them in
batches and writes each batch with one socket write. When the queue goes over its byte
budget (every frame counts) or its oldest frame over its age budget, ``push`` says so
and the session applies the lag policy of PROTOCOL.md 4.3-4.4: ``drop_conflatable``
removes the queued book and bbo frames (they are replaced by one fresh snapshot each),
trades are never dropped. The control frames (replies, notices) that survive it take
the stamp of the oldest data frame left, so that an old unread reply does not
re-trigger the policy on every push; an old trade still does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from enum import IntEnum


class Kind(IntEnum):
    """What a queued frame carries, which decides whether the lag policy may drop it."""

    CONTROL = 0  # replies, notices, heartbeats, pongs: never dropped
    BOOK = 1  # book snapshots and updates: replaced by a fresh snapshot on lag
    BBO = 2  # best bid/offer: replaced by the latest on lag
    TRADE = 3  # trades: never dropped; a client too slow for them is disconnected


_CONFLATABLE = (Kind.BOOK, Kind.BBO)
_Condition = Callable[[Kind, str], bool]


class Outbox:
    """A bounded FIFO of frames for one connection.

    ``behind_since`` is when (wall clock, set by the session's lag policy) the queue
    first went over its budget since it was last empty (``None`` while the client
    keeps up).
    """

    __slots__ = ("_queue", "behind_since", "max_age_ns", "max_bytes", "queued_bytes")

    def __init__(self, max_bytes: int, max_age_ns: int) -> None:
        self._queue: deque[tuple[bytes, Kind, str | None, int]] = deque()
        self.queued_bytes = 0
        self.max_bytes = max_bytes
        self.max_age_ns = max_age_ns
        self.behind_since: int | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, data: bytes, kind: Kind, key: str | None, now_ns: int) -> bool:
        """Queue one frame for subscription ``key``. Returns True when the queue is now
        over budget and the caller must apply the lag policy."""
        self._queue.append((data, kind, key, now_ns))
        self.queued_bytes += len(data)
        return self.over_budget(now_ns)

    def extend(self, entries: list[tuple[bytes, Kind, str, int]], size: int,
               now_ns: int) -> bool:
        """Queue several frames (``size`` bytes in all) at once; True when the queue is
        now over budget, as for ``push``."""
        self._queue.extend(entries)
        self.queued_bytes += size
        return self.over_budget(now_ns)

    def over_budget(self, now_ns: int) -> bool:
        """True when the queue is over its byte or age budget."""
        if not self._queue:
            return False
        return (self.queued_bytes > self.max_bytes
                or now_ns - self._queue[0][3] > self.max_age_ns)

    def holds(self, kind: Kind) -> bool:
        """True when a frame of ``kind`` is queued."""
        return any(entry[1] is kind for entry in self._queue)

    def drop_conflatable(self, now_ns: int) -> list[str]:
        """Remove every queued book and bbo frame; return the subscription keys that
        lost frames, in queue order. The control frames left take the stamp of the
        oldest data frame left (``now_ns`` when there is none), so the queue's age is
        that of its data."""
        dropped = self._remove(lambda kind, key: kind in _CONFLATABLE)
        oldest = next((ts for _, kind, _, ts in self._queue if kind is not Kind.CONTROL),
                      now_ns)
        self._queue = deque(
            (data, kind, key, oldest if kind is Kind.CONTROL else ts)
            for data, kind, key, ts in self._queue)
        return dropped

    def drop_key(self, key: str) -> None:
        """Remove every queued frame of subscription ``key`` (unsubscribe, resync)."""
        self._remove(lambda kind, k: k == key)

    def _remove(self, condition: _Condition) -> list[str]:
        kept: deque[tuple[bytes, Kind, str | None, int]] = deque()
        dropped: dict[str, None] = {}
        size = 0
        for entry in self._queue:
            data, kind, key, _ = entry
            if key is not None and condition(kind, key):
                dropped[key] = None
            else:
                kept.append(entry)
                size += len(data)
        self._queue = kept
        self.queued_bytes = size
        return list(dropped)

    def take_batch(self, budget: int) -> tuple[list[bytes], int]:
        """Remove and return queued frames in order, at least one and about ``budget``
        bytes in all, with the time the oldest of them was queued. When the queue
        empties, the client has caught up."""
        queue = self._queue
        oldest = queue[0][3] if queue else 0
        if self.queued_bytes <= budget:  # the usual case: a client that keeps up
            out = [entry[0] for entry in queue]
            queue.clear()
            self.queued_bytes = 0
            self.behind_since = None
            return out, oldest
        out = []
        size = 0
        while queue and size < budget:
            data = queue.popleft()[0]
            out.append(data)
            size += len(data)
        self.queued_bytes -= size
        if not queue:
            self.behind_since = None
        return out, oldest

    def clear(self) -> int:
        """Drop everything queued; return how many frames were dropped."""
        dropped = len(self._queue)
        self._queue.clear()
        self.queued_bytes = 0
        self.behind_since = None
        return dropped

    def statistics(self) -> tuple[int, int]:
        """(frames queued, bytes queued)."""
        return len(self._queue), self.queued_bytes

    def kinds(self) -> Iterable[Kind]:
        """The kinds of the queued frames, in order (for tests and diagnostics)."""
        return (entry[1] for entry in self._queue)

