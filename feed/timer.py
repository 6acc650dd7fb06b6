"""Waking at a deadline to the microsecond, not to the millisecond.

trio's timers are as fine as its event loop's wait: ``epoll_wait`` takes whole
milliseconds, and Python rounds a timeout up, so a paced feed woken by
``trio.sleep_until`` releases its events up to 1 ms late (0.8 ms on average here), and
``ts_recv`` is their scheduled time: every message carries that delay. A Linux timerfd
armed for the deadline instead makes the loop's wait end when the kernel's timer fires
(0.13-0.18 ms late on this machine, for the same CPU per wake-up: see
docs/performance.md).

``PreciseTimer`` is that timerfd (``os.timerfd_create`` from Python 3.13, the same
system call through ctypes before), for one task at a time. Where there is none (not
Linux), or under a clock that is not the real one (``trio.testing.MockClock`` in the
tests), it sleeps with ``trio.sleep_until``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import trio
import trio.testing

_CLOCK_MONOTONIC = getattr(time, "CLOCK_MONOTONIC", 1)
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


Arm = Callable[[int, int], None]
"""Arms timerfd ``fd`` to fire once, ``ns`` nanoseconds from now (0 disarms it)."""


def _open_timerfd() -> tuple[int, Arm] | None:
    """A non-blocking timerfd on the monotonic clock and the function that arms it, or
    None where the system has none."""
    create = getattr(os, "timerfd_create", None)
    if create is not None:  # Python 3.13 and newer
        settime_ns = os.timerfd_settime_ns  # type: ignore[attr-defined,unused-ignore]
        fd = create(_CLOCK_MONOTONIC, flags=_TFD_NONBLOCK | _TFD_CLOEXEC)

        def arm_os(fd: int, ns: int) -> None:
            settime_ns(fd, initial=ns)

        return fd, arm_os
    libc = _libc()
    if libc is None:
        return None
    timerfd_create, timerfd_settime = libc
    fd = timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
    if fd < 0:
        return None

    def arm_libc(fd: int, ns: int) -> None:
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(*divmod(ns, 1_000_000_000)))
        if timerfd_settime(fd, 0, ctypes.byref(spec), None) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))

    return fd, arm_libc


@functools.cache
def _libc() -> tuple[Any, Any] | None:
    """libc's timerfd_create and timerfd_settime, or None (looked up once)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        return libc.timerfd_create, libc.timerfd_settime
    except (OSError, AttributeError):
        return None


class PreciseTimer:
    """Sleeps until a trio deadline, woken by a timerfd. One task at a time."""

    def __init__(self) -> None:
        opened = _open_timerfd()
        self._fd = opened[0] if opened is not None else -1
        self._arm: Arm | None = opened[1] if opened is not None else None

    @property
    def precise(self) -> bool:
        """Whether a timerfd is in use (otherwise trio's own timers are)."""
        return self._fd >= 0

    async def sleep_until(self, deadline: float) -> None:
        """Return at ``deadline`` (trio time) or just after; a checkpoint when it has
        passed. Cancellable."""
        arm = self._arm
        if arm is None or isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
            await trio.sleep_until(deadline)
            return
        delay_ns = int((deadline - trio.current_time()) * 1e9)
        if delay_ns <= 0:
            await trio.lowlevel.checkpoint()
            return
        fd = self._fd
        arm(fd, delay_ns)
        try:
            await trio.lowlevel.wait_readable(fd)
        except BaseException:
            arm(fd, 0)  # cancelled: disarm (a fired one-shot timer needs no disarming)
            raise
        finally:
            try:
                os.read(fd, 8)  # the expiration count: readable no more
            except BlockingIOError:
                pass
        if trio.current_time() < deadline:  # only if the two clocks disagreed
            await trio.sleep_until(deadline)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd, self._arm = -1, None
