"""Deferred fan-out: published frames are handed to the members in batches, once per
audience, instead of once per member per frame.

An audience is every member that receives exactly the same set of groups (the
common case of a market-data server: many clients on the same symbols and options).
While the ingester applies a run of events without yielding (between ``FanOut.hold``
and ``release``), the groups only append what they publish to one list. ``drain`` then
walks that list once, collects each audience's frames in publish order, and gives each
member of the audience the whole run with one call (``Member.deliver_many``), so that
the work per member does not grow with the number of frames. Outside a hold every
publish is drained at once, as if it were delivered directly.

Order is kept: a member gets its frames in the order they were published. Anything
delivered to one member directly (a snapshot when it joins, a reply) happens only when
no batch is pending: the ingester drains before every await, so the other tasks never
see a pending batch, and the hub drains before it delivers directly within a batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from feed.outbox import Kind
from feed.wsframe import Frame

if TYPE_CHECKING:
    from feed.groups import Group

Entry = tuple[bytes, Kind, str, int]
"""One queued frame as an outbox holds it: data, kind, subscription key, stamp."""


class Member(Protocol):
    wbits: int

    def deliver(self, frame: Frame, kind: Kind, key: str, now_ns: int) -> None: ...

    def deliver_many(self, entries: list[Entry], size: int, now_ns: int) -> None: ...


class Audience:
    """The members that receive exactly ``groups``."""

    __slots__ = ("groups", "members")

    def __init__(self, groups: frozenset[Group]) -> None:
        self.groups = groups
        self.members: dict[Member, None] = {}


class FanOut:
    """Which members receive which groups, and the batch of frames not yet handed out."""

    def __init__(self) -> None:
        self._pending: list[tuple[Group, Frame, Kind, int]] = []
        self._batching = False
        self._audiences: dict[frozenset[Group], Audience] = {}
        self._audience_of: dict[Member, Audience] = {}
        self._receives: dict[Member, set[Group]] = {}
        self.by_group: dict[Group, list[Audience]] = {}
        self.on_drain: Callable[[int], None] = lambda ns: None
        """Told how long each drain took, in ns (the ``fanout`` stage metric)."""

    # -- who receives what --------------------------------------------------------------

    def receive(self, member: Member, group: Group) -> None:
        """``member`` receives ``group``'s published frames from now on."""
        groups = self._receives.setdefault(member, set())
        if group not in groups:
            self.drain()  # frames published before this belong to the old audience
            groups.add(group)
            self._move(member, frozenset(groups))

    def stop(self, member: Member, group: Group) -> None:
        """``member`` no longer receives ``group``'s published frames."""
        groups = self._receives.get(member)
        if groups is None or group not in groups:
            return
        self.drain()
        groups.discard(group)
        if not groups:
            del self._receives[member]
        self._move(member, frozenset(groups))

    def _move(self, member: Member, groups: frozenset[Group]) -> None:
        old = self._audience_of.pop(member, None)
        if old is not None:
            del old.members[member]
            if not old.members:
                del self._audiences[old.groups]
                for group in old.groups:
                    audiences = self.by_group[group]
                    audiences.remove(old)
                    if not audiences:
                        del self.by_group[group]
        if not groups:
            return
        audience = self._audiences.get(groups)
        if audience is None:
            audience = self._audiences[groups] = Audience(groups)
            for group in groups:
                self.by_group.setdefault(group, []).append(audience)
        audience.members[member] = None
        self._audience_of[member] = audience

    def audiences(self) -> int:
        return len(self._audiences)

    # -- publishing -------------------------------------------------------------------

    def publish(self, group: Group, frame: Frame, kind: Kind, now_ns: int) -> None:
        """Hand ``frame`` to every member receiving ``group`` (at the next drain when
        batching, now otherwise)."""
        if group in self.by_group:
            self._pending.append((group, frame, kind, now_ns))
            if not self._batching:
                self.drain()

    def hold(self) -> None:
        """Defer handing out until ``release`` (the ingester's run of events between two
        awaits: it must release before it awaits, so no other task sees a batch)."""
        self._batching = True

    def release(self) -> None:
        """Hand out what is pending and stop deferring."""
        self._batching = False
        self.drain()

    def drain(self) -> None:
        """Hand out every pending frame: each audience's frames, in publish order, to
        each of its members with one ``deliver_many``."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        began = time.perf_counter_ns()
        by_group = self.by_group
        runs: dict[Audience, list[tuple[Frame, Kind, str, int]]] = {}
        for group, frame, kind, now_ns in pending:
            for audience in by_group.get(group, ()):
                run = runs.get(audience)
                if run is None:
                    run = runs[audience] = []
                run.append((frame, kind, group.key, now_ns))
        last_ns = pending[-1][3]
        for audience, run in runs.items():
            prepared: dict[int, tuple[list[Entry], int]] = {}
            for member in tuple(audience.members):
                wbits = member.wbits
                entries = prepared.get(wbits)
                if entries is None:
                    entries = prepared[wbits] = _entries(run, wbits)
                member.deliver_many(entries[0], entries[1], last_ns)
        self.on_drain(time.perf_counter_ns() - began)


def _entries(run: list[tuple[Frame, Kind, str, int]], wbits: int) -> tuple[list[Entry], int]:
    """The outbox entries of a run for clients with server window ``wbits``, and their
    size in bytes."""
    entries = [(frame.for_client(wbits), kind, key, now_ns)
               for frame, kind, key, now_ns in run]
    return entries, sum(len(entry[0]) for entry in entries)
