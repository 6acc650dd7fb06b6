"""feed.timer: the ingester's timerfd sleeps end at their deadline, never before it,
and leave the timer ready for the next one."""

from __future__ import annotations

import sys

import pytest
import trio
import trio.testing

from feed.timer import PreciseTimer


@pytest.fixture
def timer() -> PreciseTimer:
    return PreciseTimer()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")
def test_linux_has_a_timerfd(timer: PreciseTimer) -> None:
    assert timer.precise
    timer.close()
    assert not timer.precise


async def test_sleeps_end_at_their_deadlines_and_never_before(timer: PreciseTimer) -> None:
    for delay in (0.0003, 0.002, 0.0001, 0.005):
        deadline = trio.current_time() + delay
        await timer.sleep_until(deadline)
        assert trio.current_time() >= deadline
    timer.close()


async def test_a_deadline_already_past_returns_at_once(timer: PreciseTimer) -> None:
    deadline = trio.current_time() - 1.0
    with trio.move_on_after(5) as scope:  # a timer armed for a past time would never fire
        await timer.sleep_until(deadline)
    assert not scope.cancelled_caught
    timer.close()


async def test_a_cancelled_sleep_leaves_the_timer_disarmed(timer: PreciseTimer) -> None:
    with trio.move_on_after(0.001):
        await timer.sleep_until(trio.current_time() + 60)
    # Neither the cancelled sleep's timer nor an unread expiry may end the next early.
    await timer.sleep_until(trio.current_time() + 0.001)
    deadline = trio.current_time() + 0.02
    await timer.sleep_until(deadline)
    assert trio.current_time() >= deadline
    timer.close()


async def test_under_a_mock_clock_it_sleeps_in_the_clock_s_time(
        autojump_clock: trio.testing.MockClock, timer: PreciseTimer) -> None:
    deadline = trio.current_time() + 3600
    await timer.sleep_until(deadline)
    assert trio.current_time() == pytest.approx(deadline)
    timer.close()
