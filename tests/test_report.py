"""The rules of `report`: what it groups by, its window, and its groups' order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest.mock import patch
from uuid import uuid4

import pytest

from hodei.domain.phases import ran_text, seconds_text
from hodei.errors import InvalidInput
from hodei.report import DEFAULT_WINDOW, GROUPINGS, Grouping, report, window
from hodei.store.app import HodeiStore
from hodei.store.readmodels import JobFilters

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def test_a_grouping_is_one_of_the_known_or_a_label_key() -> None:
    assert Grouping.of("") == Grouping("submitter")
    assert [Grouping.of(f" {name} ").text for name in GROUPINGS] == list(GROUPINGS)
    assert Grouping.of("label:team") == Grouping("label", "team")
    assert Grouping.of("label: hodei.io/cron").text == "label:hodei.io/cron"
    for wrong, said in [
        ("colour", "expected one of submitter, provider, pool, state, name, day, week, month or label:KEY"),
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


def test_periods_read_in_times_order_and_other_groups_longest_running_first(store: HodeiStore) -> None:
    """Rows written straight into the jobs table: three months, the middle one ran longest;
    two submitters, the one who ran longest first, whatever their names; at most
    MOST_GROUPS groups, the rest counted."""
    rows = [
        ("2026-09-15", "zoe", 10.0),
        ("2026-10-15", "adam", 500.0),
        ("2026-11-15", "adam", 20.0),
    ]
    with store.pool.connection() as conn:
        for ended, actor, ran in rows:
            conn.execute(
                "INSERT INTO jobs (id, name, state, spec, attempt, max_attempts, created_at, updated_at, "
                "completed_at, actor, run_seconds) VALUES (%s, 'j', 'SUCCEEDED', '{}', 1, 1, %s, %s, %s, %s, %s)",
                (uuid4(), ended, ended, ended, actor, ran),
            )
    since, until = window(datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC), NOW)
    months = report(store.pool, Grouping.of("month"), since, until, JobFilters())
    assert [(g.key, g.run_seconds) for g in months.groups] == [("2026-09", 10.0), ("2026-10", 500.0), ("2026-11", 20.0)]
    assert (months.total.jobs, months.total.run_seconds, months.left_out) == (3, 530.0, 0)
    weeks = report(store.pool, Grouping.of("week"), since, until, JobFilters())
    assert [g.key for g in weeks.groups] == ["2026-W38", "2026-W42", "2026-W46"]
    people = report(store.pool, Grouping.of("submitter"), since, until, JobFilters())
    assert [(g.key, g.jobs) for g in people.groups] == [("adam", 2), ("zoe", 1)]
    # A label no job has: one group of jobs without it.
    (unlabelled,) = report(store.pool, Grouping.of("label:team"), since, until, JobFilters()).groups
    assert (unlabelled.key, unlabelled.jobs) == (None, 3)
    with patch("hodei.report.MOST_GROUPS", 1):
        cut = report(store.pool, Grouping.of("month"), since, until, JobFilters())
    assert ([g.key for g in cut.groups], cut.left_out, cut.total.jobs) == (["2026-09"], 2, 3)
