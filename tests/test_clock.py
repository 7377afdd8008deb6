"""The clock deadlines go by follows PostgreSQL's as measured, and not the noise of the
measurements."""

from __future__ import annotations

from datetime import UTC, datetime

from hodei.clock import STEADY, DatabaseClock


def test_clocks_in_sync_keep_the_hosts_own_time() -> None:
    clock = DatabaseClock()
    assert not clock.follow(0.004, 0.002)
    assert not clock.follow(-0.05, 0.01)
    assert clock.offset == 0.0
    assert abs((clock() - datetime.now(UTC)).total_seconds()) < 1


def test_a_clock_off_by_seconds_is_followed_and_the_noise_around_it_is_not() -> None:
    clock = DatabaseClock()
    assert clock.follow(30.0, 0.002)
    assert 29 < (clock() - datetime.now(UTC)).total_seconds() < 31
    assert not clock.follow(30.0 + STEADY / 2, 0.002)
    # A slow measurement may be wrong by half its round trip: it moves nothing within that.
    assert not clock.follow(30.9, 2.0)
    assert clock.offset == 30.0
    assert clock.follow(-5.0, 0.002)  # the host's clock was set right, or PostgreSQL's moved
    assert clock.offset == -5.0
