"""The feed's health, pure: what /healthz says at each instant."""

import pytest

from feed.health import FeedHealth, FeedState, FeedStateError


def test_a_fresh_server_without_a_feed_is_ok_and_never_stale() -> None:
    health = FeedHealth(stale_after_s=5)
    assert health.report(1e6) == {"status": "ok", "feed": "starting", "feed_silent_s": None,
                                  "feed_failures": 0}


def test_silence_past_the_limit_is_stale_until_the_next_release() -> None:
    health = FeedHealth(stale_after_s=5)
    health.begin(100.0)
    assert health.report(104.999)["status"] == "ok"  # counted from the start
    assert health.report(105.0) == {"status": "stale", "feed": "running", "feed_silent_s": 5.0,
                                    "feed_failures": 0}
    health.released(105.5)
    assert health.report(106.0)["status"] == "ok"
    assert health.report(106.0)["feed_silent_s"] == 0.5


def test_a_limit_of_zero_is_never_stale() -> None:
    health = FeedHealth(stale_after_s=0)
    health.begin(0.0)
    assert health.report(1e9)["status"] == "ok"


def test_failure_then_retry_then_end() -> None:
    health = FeedHealth(stale_after_s=5)
    health.begin(0.0)
    health.fail(OSError("gone"))
    assert health.report(0.1) == {"status": "failed", "feed": "failed", "feed_silent_s": 0.1,
                                  "feed_failures": 1, "feed_error": "OSError"}
    health.begin(2.0)  # tried again: its silence counts from the retry
    assert health.report(3.0) == {"status": "ok", "feed": "running", "feed_silent_s": 1.0,
                                  "feed_failures": 1}
    health.end()
    assert health.state is FeedState.ENDED
    assert health.report(100.0)["status"] == "ok"  # an ended replay is not a fault


@pytest.mark.parametrize("done", [[], ["begin"], ["begin", "end"]])
def test_transitions_outside_the_table_are_refused(done: list[str]) -> None:
    health = FeedHealth(stale_after_s=5)
    for step in done:
        getattr(health, step)(*([0.0] if step == "begin" else []))
    refused = health.end if not done else lambda: health.begin(0.0)
    with pytest.raises(FeedStateError):
        refused()
