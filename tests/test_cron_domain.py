"""Cron jobs' schedules and slots (hodei.domain.cron): pure, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hodei.domain.cron import (
    CRON_LABEL,
    CRON_TIME_VARIABLE,
    Concurrency,
    CronJob,
    Definition,
    Schedule,
    cron_id,
    slot_job_id,
    slot_job_ids,
)
from hodei.domain.spec import JobSpec
from hodei.domain.workflow import WORKFLOW_LABEL
from hodei.errors import InvalidInput, InvalidTransition

SPEC = JobSpec(name="backup", command="echo hi", timeout_seconds=30.0, provider="local", labels={"team": "ops"})


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def cron(schedule: str = "@every 10s", deadline: float = 0.0, **spec: object) -> CronJob:
    definition = Definition(Schedule(schedule), Concurrency.ALLOW, deadline, JobSpec(**{**SPEC.__dict__, **spec}))
    return CronJob.create("backup", definition, {}, "alice")


def test_five_fields_are_read_in_the_time_zone_given_across_a_daylight_saving_change() -> None:
    madrid = Schedule("0 3 * * *", "Europe/Madrid")
    # Spain moves to summer time on 2026-03-29: 03:00 there is 02:00 UTC before, 01:00 after.
    assert madrid.latest(at("2026-03-29T12:00:00+00:00")) == at("2026-03-29T01:00:00+00:00")
    assert madrid.following(at("2026-03-27T12:00:00+00:00"), 3) == [
        at("2026-03-28T02:00:00+00:00"),
        at("2026-03-29T01:00:00+00:00"),
        at("2026-03-30T01:00:00+00:00"),
    ]
    assert madrid.explain() == "At 03:00 every day (Europe/Madrid)"


def test_a_slot_is_its_own_latest_and_nicknames_read_as_their_fields() -> None:
    slot = at("2026-12-01T00:00:00+00:00")
    assert Schedule("@daily").latest(slot) == slot
    assert Schedule("@daily").latest(slot - timedelta(microseconds=1)) == slot - timedelta(days=1)
    assert Schedule("@hourly").following(slot, 2) == [slot + timedelta(hours=1), slot + timedelta(hours=2)]
    assert Schedule("@weekly").explain() == Schedule("0 0 * * 0").explain()


def test_every_counts_its_period_from_the_unix_epoch() -> None:
    every = Schedule("@every 90s")
    moment = at("2026-12-01T00:00:50+00:00")  # 1,764,547,250 s: 19,606,080 periods and 50 s
    assert every.latest(moment) == moment - timedelta(seconds=50)
    assert every.following(moment, 2) == [moment + timedelta(seconds=40), moment + timedelta(seconds=130)]
    assert every.explain() == "every 90s"
    assert Schedule("@EVERY 2M").latest(moment) == Schedule("@every 120s").latest(moment)


@pytest.mark.parametrize(
    ("expression", "seconds"), [("@every 1h30m", 5400), ("@every 1.5h", 5400), ("@every 2d 12h", 216000)]
)
def test_every_takes_a_duration_as_every_other_option_does(expression: str, seconds: int) -> None:
    """The one reading of a duration (``hodei.domain.duration``), as ``--timeout`` takes
    it: ``@every 1h30m`` was refused where ``--timeout 1h30m`` was not."""
    Schedule(expression).validate()
    moment = at("2026-12-01T00:00:50+00:00")
    assert Schedule(expression).following(moment, 2) == Schedule(f"@every {seconds}s").following(moment, 2)


@given(
    st.sampled_from(["*/7 * * * *", "0 3 * * 1-5", "30 2 * * *", "@monthly", "@every 45m", "15 */6 1,15 * *"]),
    st.sampled_from(["UTC", "Europe/Madrid", "America/New_York", "Australia/Lord_Howe"]),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)),
)
def test_the_latest_slot_and_the_next_one_enclose_every_moment(expression: str, zone: str, moment: datetime) -> None:
    schedule = Schedule(expression, zone)
    latest = schedule.latest(moment)
    [after] = schedule.following(moment, 1)
    assert latest <= moment < after
    assert schedule.latest(after) == after
    assert schedule.latest(after - timedelta(seconds=1)) == latest


@given(
    st.sampled_from(["*/7 * * * *", "0 3 * * 1-5", "30 2 * * *", "@monthly", "@every 45m", "15 */6 1,15 * *"]),
    st.sampled_from(["UTC", "Europe/Madrid", "America/New_York", "Australia/Lord_Howe"]),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)),
    st.integers(min_value=0, max_value=40 * 86400),
)
def test_the_times_between_two_moments_are_the_slots_there_both_ends_included(
    expression: str, zone: str, start: datetime, seconds: int
) -> None:
    schedule = Schedule(expression, zone)
    end = start + timedelta(seconds=seconds)
    times = schedule.between(start, end, 10)
    assert len(times) <= 11 and times == sorted(set(times))
    assert all(start <= time <= end and schedule.latest(time) == time for time in times)
    if times:  # none before the first, none between two, and (unless cut at 11) none after the last
        assert schedule.latest(times[0] - timedelta(seconds=1)) < start
        assert all(schedule.following(one, 1) == [two] for one, two in pairwise(times))
        assert len(times) == 11 or schedule.following(times[-1], 1)[0] > end
    else:
        assert schedule.following(start - timedelta(microseconds=1), 1)[0] > end
    assert schedule.between(times[0], times[0], 10) == times[:1] if times else True


def test_a_backfill_takes_the_times_that_came_in_its_range_and_no_more_than_its_most() -> None:
    job = cron("0 3 * * *")
    now = at("2026-12-06T12:00:00+00:00")
    days = job.backfill_times(at("2026-12-03T03:00:00+00:00"), at("2026-12-06T03:00:00+00:00"), now)
    assert days == [at(f"2026-12-0{day}T03:00:00+00:00") for day in (3, 4, 5, 6)]
    assert job.backfill_times(at("2026-12-06T04:00:00+00:00"), now, now) == []
    job.pause()  # a paused cron job's times are backfilled all the same (`cron run` runs it too)
    assert job.backfill_times(at("2026-12-05T00:00:00+00:00"), now, now) == days[2:]
    with pytest.raises(InvalidInput, match="must not be after --until"):
        job.backfill_times(now, now - timedelta(seconds=1), now)
    with pytest.raises(InvalidInput, match="has not come yet"):
        job.backfill_times(now - timedelta(days=1), now + timedelta(seconds=1), now)
    with pytest.raises(InvalidInput, match=r"more than 100 times .*the first 100 end at 2026-09-08T03:00:00"):
        job.backfill_times(at("2026-06-01T00:00:00+00:00"), now, now)
    assert len(job.backfill_times(now - timedelta(days=100), now, now)) == 100
    # The first moment there is; one that is before it in the schedule's zone (was INTERNAL).
    for zone, start in (("UTC", datetime.min), ("America/New_York", datetime(1, 1, 1, 1))):
        with pytest.raises(InvalidInput, match="reach past the calendar's years 1 to 9999"):
            Schedule("0 3 * * *", zone).between(start.replace(tzinfo=UTC), now, 10)


@pytest.mark.parametrize(
    ("expression", "zone", "message"),
    [
        ("", "UTC", "give five fields"),
        ("* * *", "UTC", "give five fields"),
        ("0 0 * * * *", "UTC", "give five fields"),
        ("61 * * * *", "UTC", "Bad minute"),
        ("0 0 31 2 *", "UTC", r"schedule '0 0 31 2 \*' never comes: no month it names \(2\) has day 31"),
        ("0 0 30,31 FEB *", "UTC", r"no month it names \(FEB\) has day 30,31"),
        ("0 0 32 2 *", "UTC", "Bad day-of-month"),
        ("0 0 31 13 *", "UTC", "Bad month"),
        ("@sometimes", "UTC", "give five fields"),
        ("@every 0s", "UTC", "@every takes"),
        ("@every 10 minutes", "UTC", "@every takes"),
        ("@every 400d", "UTC", "@every takes"),
        ("@every 1.5s", "UTC", "@every takes a duration of whole seconds"),
        ("@every 1h30", "UTC", "@every takes"),
        ("0 3 * * *", "Mars/Olympus", "time zone 'Mars/Olympus' is not known"),
        ("0 3 * * *", "../etc/passwd", "is not known"),
        ("0 3 * * *", "America", "time zone 'America' is not known"),  # a directory of zones: was an OSError
        ("0 3 * * *", "zone.tab", "time zone 'zone.tab' is not known"),
        ("0 3 * * *", "x" * 300, "is not known"),  # a file name too long: was an OSError
    ],
)
def test_a_schedule_that_cannot_be_read_is_refused_with_what_is_wrong(expression: str, zone: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Schedule(expression, zone)


@pytest.mark.parametrize(
    ("name", "refused"),
    [("nightly-backup.v2", False), ("a" * 63, False), ("a" * 64, True), ("", True), ("-x", True), ("a b", True)],
)
def test_a_cron_jobs_name_is_a_short_word(name: str, refused: bool) -> None:
    definition = Definition(Schedule("@daily"), Concurrency.ALLOW, 0.0, SPEC)
    if refused:
        with pytest.raises(InvalidInput, match="a cron job's name"):
            CronJob.create(name, definition, {}, "alice")
    else:
        assert CronJob.create(name, definition, {}, "alice").id == cron_id(name)


def test_a_definition_refuses_what_a_schedule_cannot_keep() -> None:
    for spec, message in [
        (JobSpec(**{**SPEC.__dict__, "after": {"5b1d7a52-8c1e-4c4e-9a55-3f2d0c6f9e10": "ok"}}), "--after"),
        (JobSpec(**{**SPEC.__dict__, "begin_at": "2030-01-01T00:00:00+00:00"}), "--begin"),
        (JobSpec(**{**SPEC.__dict__, "command": ""}), "command must not be empty"),
        (JobSpec(**{**SPEC.__dict__, "array_limit": 2}), "nor limit an array"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            Definition(Schedule("@daily"), Concurrency.ALLOW, 0.0, spec).validate()
    with pytest.raises(InvalidInput, match="starting deadline"):
        Definition(Schedule("@daily"), Concurrency.ALLOW, -1.0, SPEC).validate()
    written = JobSpec(**{**SPEC.__dict__, "command": "login hunter2-secret"})
    with pytest.raises(InvalidInput, match="the value of secret PW is written in the job's command: write"):
        Definition(Schedule("@daily"), Concurrency.ALLOW, 0.0, written).validate({"PW": "hunter2-secret"})
    with pytest.raises(InvalidTransition, match="sealed secrets"):
        CronJob.create("backup", Definition(Schedule("@daily"), Concurrency.ALLOW, 0.0, SPEC), {"X": "y"}, "alice")


def test_the_slot_due_is_the_latest_since_the_cron_job_was_active_and_within_its_deadline() -> None:
    job = cron("@every 10s", deadline=30.0)
    since = job.active_since
    first = Schedule("@every 10s").following(since, 1)[0]
    assert job.due(since) is None  # the slot before it was defined never runs
    assert job.due(first) == first
    assert job.due(first + timedelta(seconds=25)) == first + timedelta(seconds=20)  # missed ones: the latest once
    late = cron("@every 1d", deadline=30.0)
    [tomorrow] = Schedule("@every 1d").following(late.active_since, 1)
    assert late.due(tomorrow + timedelta(seconds=29)) == tomorrow
    assert late.too_late(tomorrow + timedelta(seconds=29)) is None
    assert late.due(tomorrow + timedelta(seconds=31)) is None  # past its starting deadline
    assert late.too_late(tomorrow + timedelta(seconds=31)) == tomorrow
    late.pause()
    assert late.too_late(tomorrow + timedelta(seconds=31)) is None


def test_paused_and_deleted_cron_jobs_start_nothing_and_a_resume_looks_ahead() -> None:
    job = cron("@every 10s")
    [first] = Schedule("@every 10s").following(job.active_since, 1)
    job.pause()
    assert job.due(first) is None
    job.resume()
    assert job.active_since > job.definition.schedule.latest(job.active_since)
    assert job.due(job.definition.schedule.latest(job.active_since)) is None  # slots missed while paused
    job.delete()
    assert job.due(first + timedelta(days=1)) is None
    with pytest.raises(InvalidTransition, match="it was deleted"):
        job.pause()
    job.redefine(Definition(Schedule("@hourly"), Concurrency.FORBID, 0.0, SPEC), {}, "bob")
    assert (job.deleted, job.owner, job.definition.concurrency) == (False, "bob", Concurrency.FORBID)
    kinds = [type(event).__name__ for event in job.collect_events()]
    assert kinds == [
        "CronJobCreated",
        "CronJobPaused",
        "CronJobResumed",
        "CronJobDeleted",
        "CronJobRedefined",
    ]


def test_a_slots_job_has_one_id_its_label_and_its_time() -> None:
    job = cron()
    slot = at("2026-12-01T03:00:00+00:00")
    assert slot_job_id(job.id, slot) == slot_job_id(job.id, slot.astimezone(UTC))
    assert slot_job_id(job.id, slot) != slot_job_id(job.id, slot + timedelta(minutes=1))
    [spec] = job.run_specs([slot_job_id(job.id, slot)], slot)
    assert spec.labels == {"team": "ops", CRON_LABEL: "backup"}
    assert spec.env[CRON_TIME_VARIABLE] == "2026-12-01T03:00:00+00:00"
    spec.validate()


def pipeline_of(*specs: JobSpec) -> Definition:
    return Definition(Schedule("@daily"), Concurrency.FORBID, 0.0, specs[0], specs[1:])


BUILD = JobSpec(name="build", command="make", timeout_seconds=60.0, secret_names=("GIT_TOKEN",))
TEST = JobSpec(name="test", command="make test", timeout_seconds=60.0, after={"#0": "ok"})
DEPLOY = JobSpec(
    name="deploy", command="make deploy", timeout_seconds=60.0, after={"#1": "ok"}, secret_names=("TOKEN",)
)


def test_a_pipelines_run_is_its_jobs_each_after_those_of_the_run_it_names_by_id() -> None:
    definition = pipeline_of(BUILD, TEST, DEPLOY)
    definition.validate({"GIT_TOKEN": "g-value", "TOKEN": "t-value"})
    job = CronJob.create("release", definition, {"GIT_TOKEN": "sealed", "TOKEN": "sealed"}, "alice")
    slot = at("2026-12-01T00:00:00+00:00")
    ids = slot_job_ids(job.id, slot, 3)
    assert ids[0] == slot_job_id(job.id, slot)  # a slot is one write whatever its jobs
    assert len(set(ids)) == 3 and slot_job_ids(job.id, slot + timedelta(days=1), 3)[1] != ids[1]
    build, test, deploy = job.run_specs(ids, slot, {"REGION": "eu"})
    assert (build.after, test.after, deploy.after) == ({}, {str(ids[0]): "ok"}, {str(ids[1]): "ok"})
    for spec in (build, test, deploy):
        assert spec.labels == {CRON_LABEL: "release", WORKFLOW_LABEL: str(ids[0])}
        assert (spec.env["REGION"], spec.env[CRON_TIME_VARIABLE]) == ("eu", "2026-12-01T00:00:00+00:00")
    assert (build.secret_names, test.secret_names, deploy.secret_names) == (("GIT_TOKEN",), (), ("TOKEN",))
    assert Definition.of(definition.payload()) == definition
    # One job's definition is written as before pipelines were (an older server reads it).
    assert "more_specs" not in pipeline_of(BUILD).payload()
    [alone] = CronJob.create("one", pipeline_of(SPEC), {}, "alice").run_specs([ids[0]], slot)
    assert WORKFLOW_LABEL not in alone.labels


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (
            (BUILD, JobSpec(**{**TEST.__dict__, "after": {"#1": "ok"}})),
            "job 2 of the request starts after `#1`: a job of the same request is named by its place before",
        ),
        (
            (BUILD, JobSpec(**{**TEST.__dict__, "after": {"#0": "ok", "5b1d7a52-8c1e-4c4e-9a55-3f2d0c6f9e10": "ok"}})),
            "job 2 of the cron job \\(test\\): a cron job's jobs cannot wait for a time \\(--begin\\) or jobs other",
        ),
        ((JobSpec(**{**BUILD.__dict__, "after": {"#0": "ok"}}), TEST), "job 1 of the cron job \\(build\\)"),
        ((BUILD, JobSpec(**{**TEST.__dict__, "begin_at": "2030-01-01T00:00:00+00:00"})), "--begin"),
        (
            (BUILD, JobSpec(**{**TEST.__dict__, "command": " "})),
            "job 2 of the cron job \\(test\\): invalid job: command",
        ),
        ((BUILD,) + (TEST,) * 100, "at most 100 jobs at each time, got 101"),
    ],
)
def test_a_pipelines_jobs_start_after_jobs_before_them_of_the_same_run_only(
    specs: tuple[JobSpec, ...], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        pipeline_of(*specs).validate({"GIT_TOKEN": "g-value"})


def test_a_pipelines_secrets_are_checked_with_the_jobs_that_name_them() -> None:
    written = JobSpec(**{**TEST.__dict__, "command": "make test t-value-1"})
    pipeline_of(BUILD, written).validate({"GIT_TOKEN": "g-value"})  # a value of no job's: not in its text
    with pytest.raises(InvalidInput, match="job 2 of the cron job \\(test\\): invalid job: the value of secret TOKEN"):
        pipeline_of(BUILD, written).validate({"GIT_TOKEN": "g-value", "TOKEN": "t-value-1"})
    with pytest.raises(InvalidTransition, match="sealed secrets"):
        CronJob.create("release", pipeline_of(BUILD, TEST, DEPLOY), {"GIT_TOKEN": "sealed"}, "alice")
