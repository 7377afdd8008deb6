"""The rules of `report` that need no database: what it groups by, and its window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hodei.domain.phases import ran_text, seconds_text
from hodei.errors import InvalidInput
from hodei.report import DEFAULT_WINDOW, GROUPINGS, Grouping, window

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_a_grouping_is_one_of_the_known_or_a_label_key() -> None:
    assert Grouping.of("") == Grouping("submitter")
    assert [Grouping.of(f" {name} ").text for name in GROUPINGS] == list(GROUPINGS)
    assert Grouping.of("label:team") == Grouping("label", "team")
    assert Grouping.of("label: hodei.io/cron").text == "label:hodei.io/cron"
    for wrong, said in [
        ("colour", "expected one of submitter, provider, pool, state, name, day or label:KEY"),
        ("label:", "label keys must not be empty"),
        ("label:a b", "label key `a b` must be at most 63"),
        ("Submitter", "expected one of"),
    ]:
        with pytest.raises(InvalidInput, match=said):
            Grouping.of(wrong)


def test_the_window_defaults_to_the_week_before_its_end_and_is_never_empty() -> None:
    assert window(None, None, NOW) == (NOW - DEFAULT_WINDOW, NOW)
    assert window(None, NOW - timedelta(days=1), NOW) == (NOW - timedelta(days=8), NOW - timedelta(days=1))
    assert window(NOW - timedelta(hours=1), None, NOW) == (NOW - timedelta(hours=1), NOW)
    for since, until in [(NOW, NOW), (NOW + timedelta(seconds=1), None), (NOW, NOW - timedelta(days=1))]:
        with pytest.raises(InvalidInput, match="must be before its end"):
            window(since, until, NOW)


def test_what_a_job_used_over_its_attempts_reads_as_one_line() -> None:
    assert ran_text(0.0, 1, None, None) == ""
    assert ran_text(1.4, 1, None, None) == "1.4 s"
    assert ran_text(3.25, 2, 0.5, 2**20 * 45) == "3.2 s over 2 attempts: 0.50 s CPU, 45.0 MiB peak memory"
    assert ran_text(90, 1, None, 2**20) == "90.0 s: 1.0 MiB peak memory"


def test_seconds_read_in_the_unit_that_reads_best() -> None:
    shown = [seconds_text(s) for s in (0.25, 12.54, 119.9, 120, 7199, 7200, 112_320)]
    assert shown == ["250 ms", "12.5 s", "119.9 s", "2.0 min", "120.0 min", "2.0 h", "31.2 h"]
