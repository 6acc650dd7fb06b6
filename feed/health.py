"""The feed's health, as ``/healthz`` reports it. Pure: no IO, no clock of its own.

The ingester (feed/ingest.py) tells a ``FeedHealth`` when its source starts, when it
releases events, when the source fails and when it ends; ``report(now)`` says what
``/healthz`` answers at that instant: ``ok`` (HTTP 200), or not ready (HTTP 503) when
the source has failed (``failed``) or has released no event for ``stale_after_s``
(``stale``: the feed is silent, the books may be old). Times are seconds of a
monotonic clock; the server passes trio's, so that tests run on its virtual clock.

States (``feed`` in /healthz)::

    STARTING --begin--> RUNNING --end--> ENDED
                         |    ^
                    fail |    | begin (the source is tried again)
                         v    |
                         FAILED

Exceptions::

    FeedStateError      the ingester asked for a transition the table does not have (a bug)
"""

from __future__ import annotations

from enum import Enum
from typing import Final


class FeedStateError(RuntimeError):
    """A transition the state table does not allow: a bug in the ingester."""


class FeedState(Enum):
    STARTING = "starting"  # no source has started (or the server has none)
    RUNNING = "running"
    FAILED = "failed"  # the source raised; a looping one is tried again later
    ENDED = "ended"  # a one-shot replay reached its end


_NEXT: Final[dict[FeedState, frozenset[FeedState]]] = {
    FeedState.STARTING: frozenset({FeedState.RUNNING}),
    FeedState.RUNNING: frozenset({FeedState.FAILED, FeedState.ENDED}),
    FeedState.FAILED: frozenset({FeedState.RUNNING}),
    FeedState.ENDED: frozenset(),
}


class FeedHealth:
    """What the server knows of its feed's health. ``stale_after_s`` 0: never stale."""

    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s
        self.state = FeedState.STARTING
        self.failures = 0
        self.error = ""
        """The type of the last failure's exception (its traceback is in the log)."""
        self._quiet_since: float | None = None

    def _move(self, to: FeedState) -> None:
        if to not in _NEXT[self.state]:
            raise FeedStateError(f"feed state {self.state.value} -> {to.value}")
        self.state = to

    def begin(self, now: float) -> None:
        """The source starts (or starts again after a failure): its silence counts
        from ``now`` until it releases an event."""
        self._move(FeedState.RUNNING)
        self._quiet_since = now

    def released(self, now: float) -> None:
        """The source released events up to ``now``."""
        self._quiet_since = now

    def fail(self, error: BaseException) -> None:
        """The source raised ``error``."""
        self._move(FeedState.FAILED)
        self.failures += 1
        self.error = type(error).__name__

    def end(self) -> None:
        """A one-shot source reached its end (not a fault: the server stays ready)."""
        self._move(FeedState.ENDED)

    def silence(self, now: float) -> float | None:
        """Seconds since the source last released an event (or began, if it has
        released none since); ``None`` before it began."""
        return None if self._quiet_since is None else max(0.0, now - self._quiet_since)

    def report(self, now: float) -> dict[str, object]:
        """The feed's fields of ``/healthz`` at ``now``; ``status`` is ``ok`` (HTTP 200),
        ``stale`` or ``failed`` (HTTP 503)."""
        silence = self.silence(now)
        if self.state is FeedState.FAILED:
            status = "failed"
        elif (self.state is FeedState.RUNNING and self.stale_after_s and silence is not None
              and silence >= self.stale_after_s):
            status = "stale"
        else:
            status = "ok"
        fields: dict[str, object] = {
            "status": status, "feed": self.state.value,
            "feed_silent_s": None if silence is None else round(silence, 3),
            "feed_failures": self.failures}
        if self.state is FeedState.FAILED:
            fields["feed_error"] = self.error
        return fields
