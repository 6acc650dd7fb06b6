"""The recorder's disk side: the worker thread that names, creates, writes, flushes and
closes the tick files of a recording (``feed.recorder`` drives it, one job at a time).

Nothing here touches trio: ``Disk.run`` is called in a worker thread and returns its
error instead of raising it, so that the event loop decides what a failure means.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from feed.events import BookSnapshot, Event
from replay.tickfile import TickWriter

log = logging.getLogger("tickwire.record")

Item = tuple[Event, int]
"""An event and the ``ts_recv`` to record it with."""


class Opener(Protocol):
    """Opens one tick file for writing (``TickWriter``; tests inject slow ones)."""

    def __call__(self, path: Path, *, source: str | None,
                 symbols: Sequence[str]) -> TickWriter: ...


@dataclass(frozen=True, slots=True)
class Opening:
    stamp: str  # UTC start time, for the name
    source: str | None
    symbols: tuple[str, ...]
    snapshots: list[BookSnapshot]


@dataclass(frozen=True, slots=True)
class Job:
    items: Sequence[Item]
    offered: int  # of the items, those offered (the rest are catch-up gaps and snapshots)
    first: Opening | None  # open before writing the items (the first file)
    then: Opening | None  # rotate to after writing them
    flush: bool
    close: bool
    taken: float  # trio time the job was taken


@dataclass(frozen=True, slots=True)
class Written:
    lines: int
    size: int  # of the file now open (0 if none)
    closed_bytes: int  # final sizes of the files closed


class Disk:
    """The worker thread's side: names, opens, writes and closes the files. Its jobs run
    one at a time (the recorder's limiter of one thread)."""

    def __init__(self, opener: Opener, directory: Path, extension: str) -> None:
        self.opener = opener
        self.dir = directory
        self.extension = extension
        self.file: TickWriter | None = None
        self.index = 0  # of the last file started
        self.done: tuple[Job, Written | Exception] | None = None
        """The last job run and its outcome (for a job whose waiter was cancelled)."""
        self._lock = threading.Lock()
        self._busy = False
        self._detached = False

    def run(self, job: Job) -> Written | Exception:
        """Do ``job``; an error is returned, not raised. Does nothing once detached."""
        with self._lock:
            if self._detached:
                return RuntimeError("the recorder gave its files up")
            self._busy = True
        result: Written | Exception
        try:
            result = self._write(job)
        except Exception as exc:
            result = exc
        self.done = (job, result)
        with self._lock:
            self._busy = False
            detached = self._detached
        if detached:  # the recorder stopped waiting for this job: the file is ours
            self._close_quietly()
        return result

    def detach(self) -> bool:
        """Give the files up (the recorder has stopped waiting): the thread writing, if
        one is, closes the file when its job returns; otherwise a thread of its own does.
        Returns whether one was writing."""
        with self._lock:
            self._detached = True
            busy = self._busy
        if not busy and self.file is not None:
            threading.Thread(target=self._close_quietly, name="tickwire-record-close",
                             daemon=True).start()
        return busy

    def _write(self, job: Job) -> Written:
        lines = 0
        closed = 0
        if job.first is not None:
            lines += self._open(job.first)
        file = self.file
        if file is not None:
            for event, stamp in job.items:
                if event.ts_recv != stamp:
                    event = dataclasses.replace(event, ts_recv=stamp)
                file.write(event)
            lines += len(job.items)
        if job.then is not None or job.close:
            closed = self._close()
        if job.then is not None:
            lines += self._open(job.then)
        elif job.flush and self.file is not None:
            self.file.flush()
        size = Path(self.file.path).stat().st_size if self.file is not None else 0
        return Written(lines, size, closed)

    def _open(self, opening: Opening) -> int:
        path = self._create(opening.stamp)
        self.file = self.opener(path, source=opening.source, symbols=opening.symbols)
        log.info("recording into %s", path)
        self.file.write_all(opening.snapshots)
        self.file.flush()
        return len(opening.snapshots)

    def _create(self, stamp: str) -> Path:
        """Create the next file, empty, under a name nobody has taken: created
        exclusively, so that a file already there (another recorder's) is never
        overwritten. Raises ``OSError``."""
        while True:
            self.index += 1
            path = self.dir / f"tickwire-{stamp}-{self.index:04d}{self.extension}"
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            except FileExistsError:
                continue
            return path

    def _close(self) -> int:
        file, self.file = self.file, None
        if file is None:
            return 0
        file.close()
        return Path(file.path).stat().st_size

    def _close_quietly(self) -> None:
        try:
            self._close()
        except Exception as exc:
            log.warning("recorder: closing the last file failed: %s", exc)
