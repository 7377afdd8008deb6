"""Cron jobs against a real PostgreSQL: the sweeper's round (``CronJobs.fire_due``) with a
clock the test moves, two "servers" firing the same slots, secrets, and the key's life."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from prometheus_client import generate_latest

from hodei import cron as cron_module
from hodei.admission import Admission
from hodei.cron import CronJobRun, CronJobs
from hodei.domain.cron import CRON_LABEL, CRON_TIME_VARIABLE, Concurrency, CronJob, Definition, Schedule, cron_id
from hodei.domain.job import Job, JobState
from hodei.domain.provider import ProviderType
from hodei.domain.spec import JobSpec
from hodei.errors import InvalidInput, InvalidTransition, NotFound, StoreUnavailable
from hodei.limits import Limits
from hodei.metrics import PlatformMetrics
from hodei.pools import Pools
from hodei.store.app import HodeiStore, Meta
from hodei.store.job_secrets import JobSecrets
from hodei.store.readmodels import ReadModels
from hodei.testing import query, spy
from hodei.webhooks import Webhooks

SPEC = JobSpec(name="report", command="echo hi", timeout_seconds=30.0, provider="local")


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def scrape(store: HodeiStore, cron_jobs: CronJobs) -> str:
    """/metrics as a server over ``store`` with ``cron_jobs`` answers it."""
    reads = ReadModels(store.pool)
    webhooks = Webhooks(store, JobSecrets(store.pool), reads)
    metrics = PlatformMetrics(
        reads, cron_jobs, Pools(store), Limits(store), webhooks, Admission(store, dict.fromkeys(ProviderType, 16))
    )
    return generate_latest(metrics.registry).decode()


def sweeping(store: HodeiStore, clock: Clock) -> CronJobs:
    """What a server's sweeper fires cron jobs with, on the test's clock."""
    return CronJobs(store, JobSecrets(store.pool), kill_grace=1.0, clock=clock)


def definition(
    schedule: str = "@every 60s", concurrency: Concurrency = Concurrency.ALLOW, deadline: float = 0.0, **spec: object
) -> Definition:
    return Definition(Schedule(schedule), concurrency, deadline, JobSpec(**{**SPEC.__dict__, **spec}))


def jobs_of(url: str, name: str) -> list[tuple[UUID, str, str]]:
    return [
        (row[0], row[1], row[2])
        for row in query(
            url,
            "SELECT id, state, spec -> 'env' ->> %s FROM jobs WHERE spec -> 'labels' ->> %s = %s ORDER BY created_at",
            (CRON_TIME_VARIABLE, CRON_LABEL, name),
        )
    ]


def next_slot(cron_jobs: CronJobs, name: str) -> datetime:
    cron = cron_jobs.get(name)
    return cron.definition.schedule.following(cron.active_since, 1)[0]


def test_each_slot_becomes_one_job_whichever_server_fires_it_and_missed_slots_run_once(
    store: HodeiStore, fresh_database_url: str
) -> None:
    clock = Clock()
    here, there = sweeping(store, clock), sweeping(store, clock)
    here.define("report", definition(), {}, "alice", replace=False)
    assert here.fire_due() == [] == there.fire_due()  # the slot before its definition never runs
    first = next_slot(here, "report")
    clock.now = first + timedelta(seconds=1)
    [job_id] = there.fire_due()
    assert here.fire_due() == []  # the other server finds the slot's job there
    assert there.fire_due() == []
    clock.now = first + timedelta(minutes=10, seconds=5)  # ten slots later (an outage): the latest, once
    assert len(here.fire_due()) == 1
    assert there.fire_due() == []
    rows = jobs_of(fresh_database_url, "report")
    assert [(row[0], row[2]) for row in rows[:1]] == [(job_id, first.isoformat())]
    assert [row[2] for row in rows] == [first.isoformat(), (first + timedelta(minutes=10)).isoformat()]
    job = store.load(Job, job_id)
    assert (job.spec.labels[CRON_LABEL], job.spec.name) == ("report", "report")
    actors = query(
        fresh_database_url, "SELECT DISTINCT actor FROM domain_events WHERE aggregate_id = %s", (str(job_id),)
    )
    assert actors == [("alice",)]  # in the name of who defined it


def test_a_slot_within_its_starting_deadline_runs_late_and_one_past_it_does_not(
    store: HodeiStore, fresh_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    cron_jobs = sweeping(store, clock)
    cron_jobs.define("late", definition("@every 1h", deadline=120.0), {}, "alice", replace=False)
    slot = next_slot(cron_jobs, "late")
    clock.now = slot + timedelta(seconds=121)
    with caplog.at_level(logging.INFO, logger="hodei.cron"):
        assert cron_jobs.fire_due() == []
    assert f"cron job late skips its run of {slot.isoformat()}: 121s late, past its starting deadline of 120s" in (
        caplog.text
    )
    assert cron_jobs.skipped() == {("late", "deadline"): 1}  # /metrics: hodei_cron_job_skipped_total
    clock.now = slot + timedelta(hours=1, seconds=119)
    assert len(cron_jobs.fire_due()) == 1
    caplog.clear()
    clock.now += timedelta(seconds=5)  # past the deadline, for a server started now: that time did run
    with caplog.at_level(logging.INFO, logger="hodei.cron"):
        assert sweeping(store, clock).fire_due() == []
    assert "skips" not in caplog.text


def test_forbid_skips_a_slot_while_a_job_of_an_earlier_one_has_not_ended(
    store: HodeiStore, fresh_database_url: str
) -> None:
    clock = Clock()
    cron_jobs = sweeping(store, clock)
    cron_jobs.define("once-at-a-time", definition(concurrency=Concurrency.FORBID), {}, "alice", replace=False)
    first = next_slot(cron_jobs, "once-at-a-time")
    clock.now = first
    [running] = cron_jobs.fire_due()
    clock.now = first + timedelta(minutes=1)
    assert cron_jobs.fire_due() == []
    assert cron_jobs.fire_due() == []  # looked at again only at its next time: one skip
    assert cron_jobs.skipped() == {("once-at-a-time", "forbid"): 1}
    scraped = scrape(store, cron_jobs)
    assert 'hodei_cron_job_skipped_total{cron="once-at-a-time",reason="forbid"} 1.0' in scraped
    assert [run.job_id for run in cron_jobs.active_jobs("once-at-a-time")] == [running]
    job = store.load(Job, running)
    job.cancel("the test ends it")
    store.write([job], Meta(actor="system", correlation_id=str(running)))
    clock.now = first + timedelta(minutes=2)
    assert len(cron_jobs.fire_due()) == 1
    assert len(jobs_of(fresh_database_url, "once-at-a-time")) == 2


def late(store: HodeiStore, cron_jobs: CronJobs) -> dict[str, float]:
    """hodei_cron_job_late_seconds, by cron job."""
    found = re.findall(r'^hodei_cron_job_late_seconds\{cron="([^"]+)"\} (\S+)$', scrape(store, cron_jobs), re.MULTILINE)
    return {name: float(value) for name, value in found}


def test_a_time_of_the_schedule_no_server_started_is_said_late_until_its_job_is_there(store: HodeiStore) -> None:
    """What an alert on a cron job that did not run reads (deploy/prometheus-rules.yml): a
    time of its schedule with no job, but one that forbid skipped on purpose."""
    clock = Clock()
    cron_jobs = sweeping(store, clock)
    cron_jobs.define("nightly", definition(), {}, "alice", replace=False)
    cron_jobs.define("guarded", definition(concurrency=Concurrency.FORBID), {}, "alice", replace=False)
    assert late(store, cron_jobs) == {}  # no time of theirs has come yet
    first = next_slot(cron_jobs, "nightly")
    clock.now = first + timedelta(seconds=30)
    assert late(store, cron_jobs) == {"nightly": 30.0, "guarded": 30.0}  # no server fired them
    assert len(cron_jobs.fire_due()) == 2
    assert late(store, cron_jobs) == {"nightly": 0.0, "guarded": 0.0}
    clock.now = first + timedelta(seconds=80)
    # guarded's job of the first time has not ended: its second time will be skipped, not missed.
    assert late(store, cron_jobs) == {"nightly": 20.0, "guarded": 0.0}
    assert len(cron_jobs.fire_due()) == 1
    assert late(store, cron_jobs) == {"nightly": 0.0, "guarded": 0.0}
    cron_jobs.change("nightly", "alice", CronJob.pause)
    assert late(store, cron_jobs) == {"guarded": 0.0}


def test_paused_cron_jobs_start_nothing_and_deleted_ones_are_gone_but_their_jobs_stay(
    store: HodeiStore, fresh_database_url: str
) -> None:
    clock = Clock()
    cron_jobs = sweeping(store, clock)
    cron_jobs.define("paused", definition(), {}, "alice", replace=False)
    first = next_slot(cron_jobs, "paused")
    cron_jobs.change("paused", "alice", CronJob.pause)
    clock.now = first + timedelta(seconds=1)
    assert cron_jobs.fire_due() == []
    [manual] = cron_jobs.run_now("paused", "bob")  # `cron run`: whatever its schedule and state
    assert store.load(Job, manual).spec.env[CRON_TIME_VARIABLE] == clock.now.isoformat()
    cron_jobs.change("paused", "alice", CronJob.delete)
    assert [cron.name for cron in cron_jobs.all()] == []
    with pytest.raises(NotFound, match="cron job 'paused' not found"):
        cron_jobs.get("paused")
    assert [row[0] for row in jobs_of(fresh_database_url, "paused")] == [manual]
    cron_jobs.define("other", definition(), {}, "alice", replace=False)
    with pytest.raises(InvalidTransition, match="cron job other exists"):
        cron_jobs.define("other", definition(), {}, "alice", replace=False)
    again = cron_jobs.define("paused", definition("@daily"), {}, "carol", replace=False)  # a deleted name: anew
    assert (again.owner, again.paused, again.definition.schedule.expression) == ("carol", True, "@daily")


def test_a_sweep_lets_a_deleted_cron_job_go_with_what_it_kept_of_it(
    store: HodeiStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names come and go (a cron job a deploy, a branch): a deleted one is neither read by
    each sweep nor kept by a server for its life, and its skipped series leaves /metrics
    (as client libraries remove a series whose object is gone)."""
    clock = Clock()
    cron_jobs = sweeping(store, clock)
    other_server = sweeping(store, clock)
    cron_jobs.define("short-lived", definition(concurrency=Concurrency.FORBID), {}, "alice", replace=False)
    cron_jobs.define("kept", definition(), {}, "alice", replace=False)
    cron_jobs.change("kept", "alice", CronJob.pause)  # starts nothing: the sweeps' jobs are short-lived's
    clock.now = next_slot(cron_jobs, "short-lived")
    cron_jobs.fire_due()
    clock.now += timedelta(minutes=1)
    assert cron_jobs.fire_due() == []  # skipped: its job of a minute before has not ended
    assert cron_jobs.skipped() == {("short-lived", "forbid"): 1}
    other_server.fire_due()
    other_server.change("short-lived", "bob", CronJob.delete)  # on another server
    loaded: list[Any] = []
    monkeypatch.setattr(store, "load", spy(store.load, loaded, lambda _, aggregate_id: aggregate_id))
    for sweeper in (cron_jobs, other_server):
        clock.now += timedelta(minutes=1)
        assert sweeper.fire_due() == []
        assert [cron.name for cron in sweeper._known.values()] == ["kept"]
        assert list(sweeper._next) == [cron_id("kept")]
    assert loaded == []  # nothing of "short-lived" read again: the sweep learnt of it from the index
    assert cron_jobs.skipped() == {}
    scraped = scrape(store, cron_jobs)
    assert 'cron="short-lived"' not in scraped
    cron_jobs.define("short-lived", definition(), {}, "carol", replace=False)  # the name again: anew
    assert [cron.name for cron in cron_jobs.all()] == ["kept", "short-lived"]
    assert {str(aggregate_id) for aggregate_id in loaded} == {str(cron_id("short-lived"))}


def test_secrets_are_sealed_under_the_cron_jobs_key_each_job_gets_its_own_and_delete_shreds_it(
    store: HodeiStore, fresh_database_url: str
) -> None:
    clock = Clock()
    secrets = JobSecrets(store.pool)
    cron_jobs = sweeping(store, clock)
    cron_jobs.define("with-secret", definition(secret_names=("TOKEN",)), {"TOKEN": "s3cr3t-value"}, "a", replace=False)
    clock.now = next_slot(cron_jobs, "with-secret")
    [job_id] = cron_jobs.fire_due()
    assert secrets.open(job_id) == {"TOKEN": "s3cr3t-value"}
    owner = cron_id("with-secret")
    log = query(fresh_database_url, "SELECT payload::text FROM domain_events WHERE aggregate_id = %s", (str(owner),))
    assert log and all("s3cr3t-value" not in row[0] for row in log)
    # Retention's sweep keeps a cron job's key (its id is no job's, but it has events).
    query(fresh_database_url, "UPDATE hodei.job_keys SET created_at = now() - interval '2 hours'")
    secrets.purge_expired(86400)
    keys = {row[0] for row in query(fresh_database_url, "SELECT job_id FROM hodei.job_keys")}
    assert keys == {owner, job_id}
    # A redefinition keeps the key (the definition it replaces may still be the live one).
    cron_jobs.define("with-secret", definition(secret_names=("TOKEN",)), {"TOKEN": "another-value"}, "a", replace=True)
    assert query(fresh_database_url, "SELECT count(*) FROM hodei.job_keys WHERE job_id = %s", (owner,)) == [(1,)]
    assert cron_jobs.run_now("with-secret", "a") is not None
    cron_jobs.change("with-secret", "a", CronJob.delete)
    assert query(fresh_database_url, "SELECT count(*) FROM hodei.job_keys WHERE job_id = %s", (owner,)) == [(0,)]
    assert secrets.open(job_id) == {"TOKEN": "s3cr3t-value"}  # a job's own key lives as long as the job's


def test_a_cron_job_is_looked_at_again_at_its_next_slot_or_once_it_changed(
    store: HodeiStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between two slots a sweep computes nothing of a schedule (60-230 us each: a
    thousand cron jobs a second); a redefinition is looked at in the next sweep."""
    clock = Clock()
    cron_jobs = sweeping(store, clock)
    cron_jobs.define("looked-at", definition("@every 1h"), {}, "alice", replace=False)
    looked: list[Any] = []
    monkeypatch.setattr(CronJob, "due", spy(CronJob.due, looked, lambda _, now: now))
    assert cron_jobs.fire_due() == []
    slot = next_slot(cron_jobs, "looked-at")
    # Halfway to the slot (slots are multiples of the period since the epoch: a minute later
    # may be past one when the test runs in an hour's last minute).
    clock.now += (slot - clock.now) / 2
    assert cron_jobs.fire_due() == []
    assert len(looked) == 1
    clock.now = slot
    assert len(cron_jobs.fire_due()) == 1
    assert looked[-1] == slot
    cron_jobs.define("looked-at", definition("@every 1m"), {}, "alice", replace=True)
    clock.now = slot + timedelta(seconds=30)
    assert cron_jobs.fire_due() == []
    assert len(looked) == 3
    clock.now = slot + timedelta(minutes=1)
    assert len(cron_jobs.fire_due()) == 1


def test_the_number_of_cron_jobs_is_bounded(store: HodeiStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cron_module, "MAX_CRON_JOBS", 2)
    cron_jobs = sweeping(store, Clock())
    cron_jobs.define("one", definition(), {}, "alice", replace=False)
    cron_jobs.define("two", definition(), {}, "alice", replace=False)
    with pytest.raises(InvalidTransition, match="there are 2 cron jobs, the most there may be: delete one first"):
        cron_jobs.define("three", definition(), {}, "alice", replace=False)
    cron_jobs.define("two", definition("@daily"), {}, "alice", replace=True)  # a redefinition adds none
    cron_jobs.change("one", "alice", CronJob.delete)
    cron_jobs.define("three", definition(), {}, "alice", replace=False)
    assert [cron.name for cron in cron_jobs.all()] == ["three", "two"]


def test_a_slot_whose_job_could_not_be_written_is_tried_again_at_the_next_sweep(
    store: HodeiStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage of the database at a cron job's time is not a missed time: the sweeps
    after it try again until the job is written (within the starting deadline)."""
    clock = Clock()
    cron_jobs = sweeping(store, clock)
    cron_jobs.define("through-an-outage", definition("@every 1h"), {}, "alice", replace=False)
    clock.now = next_slot(cron_jobs, "through-an-outage") + timedelta(seconds=1)
    write = store.write
    failures = iter([StoreUnavailable("PostgreSQL is unavailable: connection refused")])

    def failing(*args: Any, **kwargs: Any) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        write(*args, **kwargs)

    monkeypatch.setattr(store, "write", failing)
    assert cron_jobs.fire_due() == []
    clock.now += timedelta(seconds=1)
    [job_id] = cron_jobs.fire_due()
    assert store.load(Job, job_id).spec.labels[CRON_LABEL] == "through-an-outage"


def test_a_run_asked_for_takes_variables_over_the_specs_and_a_bad_one_writes_nothing(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """`cron run NAME --env K=V`: Nomad's dispatch of a parameterized job."""
    cron_jobs = sweeping(store, Clock())
    cron_jobs.define(
        "report-for",
        definition(env={"REGION": "eu", "FORMAT": "pdf"}, secret_names=("TOKEN",)),
        {"TOKEN": "t0ken-value"},
        "alice",
        replace=False,
    )
    [job_id] = cron_jobs.run_now("report-for", "bob", {"REGION": "us"})
    spec = store.load(Job, job_id).spec
    assert (spec.env["REGION"], spec.env["FORMAT"], spec.labels[CRON_LABEL]) == ("us", "pdf", "report-for")
    before = query(fresh_database_url, "SELECT count(*) FROM jobs")
    for env, message in [
        ({"TOKEN": "t0ken-value"}, "TOKEN given both as --env and as --secret"),
        ({"1BAD": "x"}, "not valid"),
    ]:
        with pytest.raises(InvalidInput, match=message):
            cron_jobs.run_now("report-for", "bob", env)
    assert query(fresh_database_url, "SELECT count(*) FROM jobs") == before


def test_replace_cancels_the_job_of_an_earlier_time_but_never_the_job_of_its_own(
    store: HodeiStore, fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kubernetes' Replace: the earlier time's job still running is cancelled (by the
    system, saying why), then the time's own job is written. A server that finds the
    time's job only after another wrote it (a race) does not cancel it."""
    clock = Clock()
    here, there = sweeping(store, clock), sweeping(store, clock)
    here.define("latest-only", definition(concurrency=Concurrency.REPLACE), {}, "alice", replace=False)
    first = next_slot(here, "latest-only")
    clock.now = first
    [earlier] = here.fire_due()
    clock.now = first + timedelta(minutes=1)
    [latest] = here.fire_due()
    replaced = store.load(Job, earlier)
    assert replaced.state is JobState.CANCELLED
    assert replaced.error_message == f"replaced by the run of cron job latest-only at {clock.now.isoformat()}"
    assert query(fresh_database_url, "SELECT cancelled_by FROM jobs WHERE id = %s", (earlier,)) == [("system",)]
    assert store.load(Job, latest).state is JobState.PENDING

    find = store.find
    monkeypatch.setattr(store, "find", lambda kind, key: None if kind is Job else find(kind, key))
    assert there.fire_due() == []  # it looked too early to see the job, and wrote it too late
    assert store.load(Job, latest).state is JobState.PENDING


def pipeline(concurrency: Concurrency = Concurrency.ALLOW) -> Definition:
    """build, then test once it succeeded (given TOKEN), and report if build failed."""
    build = JobSpec(**{**SPEC.__dict__, "name": "build"})
    test = JobSpec(**{**SPEC.__dict__, "name": "test", "after": {"#0": "ok"}, "secret_names": ("TOKEN",)})
    report = JobSpec(**{**SPEC.__dict__, "name": "report", "after": {"#0": "notok"}})
    return Definition(Schedule("@every 60s"), concurrency, 0.0, build, (test, report))


def test_a_pipelines_time_writes_all_its_jobs_once_whichever_server_fires_it(
    store: HodeiStore, fresh_database_url: str
) -> None:
    clock = Clock()
    here, there = sweeping(store, clock), sweeping(store, clock)
    here.define("release", pipeline(), {"TOKEN": "t0ken-value"}, "alice", replace=False)
    clock.now = next_slot(here, "release")
    [first] = here.fire_due()
    assert there.fire_due() == []
    rows = query(
        fresh_database_url,
        "SELECT id, spec ->> 'name', spec -> 'after', spec -> 'labels', spec -> 'secret_names', actor FROM jobs"
        " WHERE spec -> 'labels' ->> %s = 'release' ORDER BY created_at",
        (CRON_LABEL,),
    )
    assert [row[1] for row in rows] == ["build", "test", "report"]
    ids = [row[0] for row in rows]
    assert ids[0] == first
    assert [row[2] for row in rows] == [{}, {str(first): "ok"}, {str(first): "notok"}]
    assert all(row[3] == {CRON_LABEL: "release", "hodei.io/workflow": str(first)} for row in rows)
    assert [row[4] for row in rows] == [[], ["TOKEN"], []]  # each given the secrets it names
    assert {row[5] for row in rows} == {"alice"}
    secrets = JobSecrets(store.pool)
    test_job = store.load(Job, ids[1])
    assert secrets.open_sealed(test_job.id, test_job.sealed_secrets, "test") == {"TOKEN": "t0ken-value"}
    assert store.load(Job, ids[0]).sealed_secrets == {}
    # `cron run`: the whole pipeline again, now.
    manual = here.run_now("release", "bob", {"REGION": "us"})
    assert len(manual) == 3 and manual[0] not in ids
    assert store.load(Job, manual[2]).spec.after == {str(manual[0]): "notok"}


def test_forbid_and_replace_take_a_pipelines_run_as_a_whole(store: HodeiStore, fresh_database_url: str) -> None:
    """A run is not over while any of its jobs has not ended (its test waiting for its
    build): forbid skips the next time; replace cancels every job of it not ended."""
    clock = Clock()
    cron_jobs = sweeping(store, clock)
    cron_jobs.define("guarded", pipeline(Concurrency.FORBID), {"TOKEN": "t0ken-value"}, "alice", replace=False)
    cron_jobs.define("newest-only", pipeline(Concurrency.REPLACE), {"TOKEN": "t0ken-value"}, "alice", replace=False)
    first = next_slot(cron_jobs, "guarded")
    clock.now = first
    assert len(cron_jobs.fire_due()) == 2
    for name in ("guarded", "newest-only"):
        job_id = jobs_of(fresh_database_url, name)[0][0]
        build = store.load(Job, job_id)
        build.cancel("the test ends the build")  # the rest of its run still waits
        store.write([build], Meta(actor="alice", correlation_id=str(job_id)))
        assert len(cron_jobs.active_jobs(name)) == 2
    clock.now = first + timedelta(minutes=1)
    [latest] = cron_jobs.fire_due()
    assert cron_jobs.skipped() == {("guarded", "forbid"): 1}
    assert store.load(Job, latest).spec.labels[CRON_LABEL] == "newest-only"
    jobs = jobs_of(fresh_database_url, "newest-only")
    assert [state for _, state, _ in jobs[:3]] == ["CANCELLED"] * 3  # the earlier run's two too
    active = [run.job_id for run in cron_jobs.active_jobs("newest-only")]
    assert active == [job_id for job_id, _, _ in jobs[3:]] and active[0] == latest


def test_a_pipelines_newest_run_says_how_the_run_stands(store: HodeiStore, fresh_database_url: str) -> None:
    """`cron list`'s LAST JOB and STATE, hodei_cron_job_last_run_state: a run's first job and
    the run's state, its jobs' states as their read model holds them (set here as a run's
    jobs would leave them). A branch not taken (report, cancelled by the platform because
    build succeeded) does not make a succeeded run CANCELLED."""
    clock = Clock()
    cron_jobs = sweeping(store, clock)
    cron_jobs.define("release", pipeline(), {"TOKEN": "t0ken-value"}, "alice", replace=False)
    cron_jobs.define("single", definition(), {}, "alice", replace=False)
    clock.now = next_slot(cron_jobs, "release")
    assert len(cron_jobs.fire_due()) == 2
    build, test, report = [row[0] for row in jobs_of(fresh_database_url, "release")]
    [(single, _, _)] = jobs_of(fresh_database_url, "single")
    [(run_created,)] = query(fresh_database_url, "SELECT created_at FROM jobs WHERE id = %s", (build,))

    def states(**changed: tuple[str, str | None]) -> str:
        for job_id, (state, by) in ((build, changed["build"]), (test, changed["test"]), (report, changed["report"])):
            query(
                fresh_database_url,
                "UPDATE jobs SET state = %s, cancelled_by = %s WHERE id = %s RETURNING id",
                (state, by, job_id),
            )
        newest = cron_jobs.newest_jobs(["release", "single"])
        assert (newest["release"].job_id, newest["single"].job_id) == (build, single)
        return newest["release"].state

    ok = ("SUCCEEDED", None)
    assert states(build=("RUNNING", None), test=("PENDING", None), report=("PENDING", None)) == "RUNNING"
    assert states(build=ok, test=("PENDING", None), report=("CANCELLED", "system")) == "PENDING"
    assert states(build=ok, test=ok, report=("CANCELLED", "system")) == "SUCCEEDED"
    assert states(build=ok, test=("FAILED", None), report=("CANCELLED", "system")) == "FAILED"
    assert states(build=ok, test=("CANCELLED", "bob"), report=("CANCELLED", "system")) == "CANCELLED"
    assert states(build=("FAILED", None), test=("CANCELLED", "system"), report=ok) == "FAILED"
    scraped = scrape(store, cron_jobs)
    assert 'hodei_cron_job_last_run_state{cron="release",state="FAILED"} 1.0' in scraped
    # `job retry --workflow`: the failed test's copy stands for it in the run.
    assert states(build=ok, test=("FAILED", None), report=("CANCELLED", "system")) == "FAILED"
    failed = store.load(Job, test)
    copy = Job.submit(failed.spec, uuid4(), {"TOKEN": failed.sealed_secrets["TOKEN"]}, retry_of=test)
    store.write([copy], Meta(actor="alice"))
    assert cron_jobs.newest_jobs(["release"])["release"].state == "PENDING"
    query(fresh_database_url, "UPDATE jobs SET state = 'SUCCEEDED' WHERE id = %s RETURNING id", (copy.id,))
    assert cron_jobs.newest_jobs(["release"])["release"] == CronJobRun(build, "SUCCEEDED", run_created)


def test_a_cron_label_set_by_hand_before_the_server_refused_it_breaks_no_listing(store: HodeiStore) -> None:
    """A job labelled `hodei.io/cron` and `hodei.io/workflow=zzz` by its submitter (possible
    until the server kept its labels to itself): reading cron jobs' newest runs cast the
    workflow label to a job id, and `cron list`, the console's cron page and the metrics
    failed for everyone (INTERNAL: invalid input syntax for type uuid). Such a job is a run
    of its own."""
    clock = Clock()
    cron_jobs = sweeping(store, clock)
    cron_jobs.define("nightly", definition(), {}, "alice", replace=False)
    forged = Job.submit(
        JobSpec(
            name="forged",
            command="sleep 300",
            timeout_seconds=600,
            labels={CRON_LABEL: "nightly", "hodei.io/workflow": "zzz"},
        ),
        uuid4(),
    )
    store.write([forged], Meta(actor="mallory"))
    assert cron_jobs.newest_jobs(["nightly"])["nightly"].job_id == forged.id
    assert 'hodei_cron_job_last_run_state{cron="nightly",state="PENDING"} 1.0' in scrape(store, cron_jobs)


def test_a_backfill_runs_each_time_that_never_ran_once_whoever_ran_the_others(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """`cron backfill`: a pipeline's runs of the times in the range, before its definition
    too, each as the sweep would have written it (its slot's ids, HODEI_CRON_TIME, every job
    of the run), in the caller's name; a time the sweep ran, and every time on a second
    backfill, is not run again; one refused part-way goes on where it stopped when sent again."""
    clock = Clock()
    cron_jobs = sweeping(store, clock)
    cron_jobs.define("release", pipeline(), {"TOKEN": "t0ken-value"}, "alice", replace=False)
    first = next_slot(cron_jobs, "release")
    clock.now = first + timedelta(minutes=2, seconds=30)  # three times came; the sweep runs the latest
    [swept] = cron_jobs.fire_due()
    times = [first + timedelta(minutes=n) for n in range(-1, 3)]  # one before it was defined
    runs = cron_jobs.backfill("release", times[0], clock.now, "bob")
    assert [(run.time, run.already_run) for run in runs] == [(time, time == times[-1]) for time in times]
    assert runs[-1].job_ids[0] == swept
    assert {row[0] for row in jobs_of(fresh_database_url, "release")} == {i for run in runs for i in run.job_ids}
    for run in runs[:-1]:
        jobs = [store.load(Job, job_id) for job_id in run.job_ids]
        assert [job.spec.env[CRON_TIME_VARIABLE] for job in jobs] == [run.time.isoformat()] * 3
        assert jobs[2].spec.after == {str(run.job_ids[0]): "notok"}
    actors = query(fresh_database_url, "SELECT DISTINCT actor FROM jobs WHERE id = ANY(%s)", (runs[0].job_ids,))
    assert actors == [("bob",)]
    again = cron_jobs.backfill("release", times[0], clock.now, "bob")
    assert [run.already_run for run in again] == [True] * 4 and len(jobs_of(fresh_database_url, "release")) == 12

    calls: list[int] = []

    def refuse_the_second(specs: list[JobSpec]) -> None:
        calls.append(len(specs))
        if len(calls) == 2:
            raise InvalidInput("over bob's limit")

    clock.now += timedelta(minutes=3)  # three more times
    later = clock.now - timedelta(minutes=2, seconds=59)
    with pytest.raises(InvalidInput, match="over bob's limit"):
        cron_jobs.backfill("release", later, clock.now, "bob", refuse_the_second)
    assert len(jobs_of(fresh_database_url, "release")) == 15  # the first time's run, whole
    resumed = cron_jobs.backfill("release", later, clock.now, "bob")
    assert [run.already_run for run in resumed] == [True, False, False]
    assert len(jobs_of(fresh_database_url, "release")) == 21
