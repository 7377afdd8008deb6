"""The time a server goes by when it sets or judges a deadline: PostgreSQL's, as this
host reckons it.

A deadline one server sets is judged by others, and by PostgreSQL itself: a saga step's
(by whichever server's sweeper finds it), a retry's backoff (by the queue's queries, in
``now()``), a cancel's grace (by the server the worker is connected to), a cron job's
times. With each server on its own clock, a host 30 s behind PostgreSQL's saw a retry's
backoff over before it began, and a server ahead of another failed that one's steps
early. Each server measures how far PostgreSQL's clock is from its own
(``hodei.server.preflight.Clocks``, at start and at each of its instance's beats) and adds
that to its own. Hosts kept in sync (NTP) measure about nothing, and go by their own
clocks as they always did; the times events carry stay each server's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

# A measured offset is taken once it differs from the one in use by more than it may be
# wrong (half its round trip) and this: the clock does not step back and forth with the
# noise of the measurements.
STEADY = 0.25


class DatabaseClock:
    def __init__(self) -> None:
        # Seconds PostgreSQL's clock is ahead of this host's (negative: behind).
        self.offset = 0.0

    def __call__(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def follow(self, offset: float, round_trip: float) -> bool:
        """Takes a measurement of the offset, made in ``round_trip`` seconds; True when
        the clock moved to it."""
        if abs(offset - self.offset) <= round_trip / 2 + STEADY:
            return False
        self.offset = offset
        return True
