"""Admission: a provider's free slots' worth of queued jobs, admitted in one transaction
under the provider's advisory lock."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from prometheus_client import generate_latest

from hodei import admission as admission_module
from hodei import limits as limits_module
from hodei import pools as pools_module
from hodei.admission import FIFO, Admission, Capacity
from hodei.cron import CronJobs
from hodei.domain.job import Job, JobState, after_met
from hodei.domain.provider import PROVIDER_IDS, Provider, ProviderType, ResourceLimits
from hodei.domain.spec import AFTER_CONDITIONS, ARRAY_LABEL, Resources
from hodei.errors import InvalidInput, InvalidTransition, LimitReached, NotFound
from hodei.limits import Limits, SubmitterUse
from hodei.metrics import PlatformMetrics
from hodei.pools import Pools, PoolUse
from hodei.store import db
from hodei.store.app import HodeiStore, Meta
from hodei.store.job_secrets import JobSecrets
from hodei.store.readmodels import ReadModels
from hodei.testing import eventually, query
from hodei.webhooks import Webhooks
from tests.test_store import current_transaction, new_job

LOCK = "SELECT pg_try_advisory_lock(7, hashtext('docker'))"  # released as its connection closes


def test_a_round_counts_chooses_and_admits_in_one_transaction_under_the_providers_lock(
    store: HodeiStore, fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued = []
    for _ in range(3):
        job = new_job()
        job.select_provider(str(PROVIDER_IDS[ProviderType.DOCKER]), "docker")
        store.write([job], Meta(actor="t", correlation_id=str(job.id)))
        queued.append(job)
    admission = Admission(store, {ProviderType.DOCKER: 2})
    counted = admission.capacity
    during: list[object] = []

    def capacity(provider: ProviderType) -> Capacity:
        during.append(query(fresh_database_url, LOCK)[0][0])  # another server's admitter
        during.append(current_transaction(store.pool))
        return counted(provider)

    monkeypatch.setattr(admission, "capacity", capacity)
    assert admission.admit(ProviderType.DOCKER) == 2
    locked_out, round_transaction = during
    assert locked_out is False
    admitted = query(
        fresh_database_url,
        "SELECT aggregate_id, xmin::text FROM domain_events WHERE event_type = 'JobAdmitted' ORDER BY aggregate_id",
    )
    assert sorted(aggregate_id for aggregate_id, _ in admitted) == sorted(str(j.id) for j in queued[:2])
    assert {xmin for _, xmin in admitted} == {round_transaction}
    assert query(fresh_database_url, LOCK) == [(True,)]  # the round's end let go of it
    assert not store.load(Job, queued[2].id).admitted


def test_a_job_joining_the_queue_runs_no_round_while_the_last_one_here_found_no_room(
    store: HodeiStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a burst, every job joining the queue cost a round that found no room. A call
    for anything else (room freed) still looks, and so does one once the finding is old."""
    for _ in range(3):
        job = new_job()
        job.select_provider(str(PROVIDER_IDS[ProviderType.DOCKER]), "docker")
        store.write([job], Meta(actor="t", correlation_id=str(job.id)))
    admission = Admission(store, {ProviderType.DOCKER: 1})
    counted = admission.capacity
    rounds: list[ProviderType] = []

    def capacity(provider: ProviderType) -> Capacity:
        rounds.append(provider)
        return counted(provider)

    monkeypatch.setattr(admission, "capacity", capacity)
    assert admission.admit(ProviderType.DOCKER, joined=True) == 1  # nothing known: it looks
    assert admission.admit(ProviderType.DOCKER, joined=True) == 0  # the last round found room
    assert len(rounds) == 2
    assert admission.admit(ProviderType.DOCKER, joined=True) == 0
    assert len(rounds) == 2  # the last round found none: no round
    assert admission.admit(ProviderType.DOCKER) == 0  # a slot freed, say
    assert len(rounds) == 3
    monkeypatch.setattr(admission_module, "FULL_FOR", 0.0)
    assert admission.admit(ProviderType.DOCKER, joined=True) == 0
    assert len(rounds) == 4


def _joining(store: HodeiStore, admission: Admission, job: Job, url: str) -> tuple[bool, bool]:
    """(admitted at once, another server's admitter locked out meanwhile) for ``job``
    choosing Docker in a command of its own, as its saga's select_provider does."""

    def run() -> tuple[tuple[bool, bool], list[Job]]:
        loaded = store.load(Job, job.id)
        at_once = admission.admits_at_once(loaded, ProviderType.DOCKER, datetime.now(UTC))
        locked_out = query(url, LOCK) == [(False,)]
        loaded.select_provider(str(PROVIDER_IDS[ProviderType.DOCKER]), "docker", at_once)
        return (at_once, locked_out), [loaded]

    return store.command(Meta(actor="t", correlation_id=str(job.id)), run)


def test_a_job_takes_a_free_slot_as_its_provider_is_chosen_unless_somebody_waits_for_one(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """Room and nobody waiting: the slot is taken in the choice's own event, under the
    provider's lock (held by that transaction); a job that would pass a waiting one, or
    find no room, or still owes its backoff, joins the queue."""
    admission = Admission(store, {ProviderType.DOCKER: 2})
    first = new_job()
    store.write([first], Meta(actor="t", correlation_id=str(first.id)))
    assert _joining(store, admission, first, fresh_database_url) == (True, True)
    assert store.load(Job, first.id).admitted
    selected = query(
        fresh_database_url,
        "SELECT payload->>'admitted' FROM domain_events WHERE aggregate_id = %s AND event_type = 'JobProviderSelected'",
        (str(first.id),),
    )
    assert selected == [("true",)]
    assert query(fresh_database_url, "SELECT count(*) FROM domain_events WHERE event_type = 'JobAdmitted'") == [(0,)]
    assert query(fresh_database_url, "SELECT admitted_at IS NOT NULL FROM jobs WHERE id = %s", (str(first.id),)) == [
        (True,)
    ]
    assert query(fresh_database_url, LOCK) == [(True,)]  # its commit let go of it

    waiting = new_job(priority=5)
    waiting.select_provider(str(PROVIDER_IDS[ProviderType.DOCKER]), "docker")  # queued, not admitted
    later = new_job()
    store.write([waiting, later], Meta(actor="t"))
    assert _joining(store, admission, later, fresh_database_url)[0] is False  # one free slot, but `waiting` is first
    assert admission.admit(ProviderType.DOCKER) == 1
    assert store.load(Job, waiting.id).admitted and not store.load(Job, later.id).admitted

    full = new_job()
    store.write([full], Meta(actor="t", correlation_id=str(full.id)))
    assert admission.capacity(ProviderType.DOCKER).free == 0
    assert _joining(store, admission, full, fresh_database_url)[0] is False

    backing_off = new_job()
    backing_off.retry_at = datetime.now(UTC) + timedelta(hours=1)
    assert admission.admits_at_once(backing_off, ProviderType.DOCKER, datetime.now(UTC)) is False


@pytest.mark.parametrize("condition", sorted(AFTER_CONDITIONS))
def test_the_queues_rule_for_after_is_the_domains(fresh_database_url: str, condition: str) -> None:
    """The queue's query asks ``hodei.after_met`` (sql/013); the API asks the domain's."""
    for state in JobState:
        found = query(fresh_database_url, "SELECT hodei.after_met(%s, %s)", (condition, state.value))
        assert found == [(after_met(condition, state),)], state


def _queued(store: HodeiStore, **spec: Any) -> Job:
    job = new_job(**spec)
    job.select_provider(str(PROVIDER_IDS[ProviderType.DOCKER]), "docker")
    store.write([job], Meta(actor="t", correlation_id=str(job.id)))
    return job


def _ended(store: HodeiStore, job: Job, outcome: JobState) -> None:
    job, worker = store.load(Job, job.id), str(uuid4())
    job.assign(worker, str(PROVIDER_IDS[ProviderType.DOCKER]), "docker")
    job.accept(worker)
    job.finish(worker, outcome, 0 if outcome is JobState.SUCCEEDED else 1, None)
    store.write([job], Meta(actor="t", correlation_id=str(job.id)))


def test_a_job_started_after_another_joins_its_line_once_that_one_succeeded(store: HodeiStore) -> None:
    """Until then it keeps out of the line (passed by later jobs, never admitted at once)
    and the queue says what it waits for."""
    admission = Admission(store, {ProviderType.DOCKER: 5})
    first = _queued(store)
    assert admission.admit(ProviderType.DOCKER) == 1
    second = new_job(after={str(first.id): "ok"}, priority=10)
    store.write([second], Meta(actor="t", correlation_id=str(second.id)))
    assert admission.admits_at_once(store.load(Job, second.id), ProviderType.DOCKER, datetime.now(UTC)) is False
    second = store.load(Job, second.id)
    second.select_provider(str(PROVIDER_IDS[ProviderType.DOCKER]), "docker")
    store.write([second], Meta(actor="t", correlation_id=str(second.id)))
    later = _queued(store)
    assert admission.admit(ProviderType.DOCKER) == 1
    assert store.load(Job, later.id).admitted and not store.load(Job, second.id).admitted
    [waiting] = admission.queue(10)
    assert (waiting.job_id, waiting.position) == (str(second.id), 0)
    assert waiting.waiting_for == {"job_id": str(first.id), "state": "PENDING", "condition": "ok"}
    assert admission.cancel_never_started() == 0

    _ended(store, first, JobState.SUCCEEDED)
    assert admission.queue(10)[0].waiting_for is None and admission.queue(10)[0].position == 1
    assert admission.admit(ProviderType.DOCKER) == 1
    assert store.load(Job, second.id).admitted


def test_a_job_whose_after_job_ended_otherwise_is_cancelled_saying_so(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """It would wait for ever (Slurm's kill_invalid_depend); one waiting for that ending
    (notok) or any ending goes on."""
    first = _queued(store)
    on_success = _queued(store, after={str(first.id): "ok"})
    on_failure = _queued(store, after={str(first.id): "notok"})
    on_any = _queued(store, after={str(first.id): "any"})
    admission = Admission(store, {ProviderType.DOCKER: 5})
    assert admission.admit(ProviderType.DOCKER) == 1  # the first only
    _ended(store, first, JobState.FAILED)

    assert admission.cancel_never_started() == 1
    assert admission.cancel_never_started() == 0
    cancelled = store.load(Job, on_success.id)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.error_message == (
        f"job {first.id} ended FAILED, and this job was to start once it has succeeded (--after)"
    )
    assert query(fresh_database_url, "SELECT cancelled_by FROM jobs WHERE id = %s", (str(on_success.id),)) == [
        ("system",)
    ]
    assert admission.admit(ProviderType.DOCKER) == 2
    assert store.load(Job, on_failure.id).admitted and store.load(Job, on_any.id).admitted


def test_a_job_that_begins_later_keeps_out_of_its_line_until_then(store: HodeiStore) -> None:
    admission = Admission(store, {ProviderType.DOCKER: 5})
    later = datetime.now(UTC) + timedelta(hours=1)
    waiting = new_job(begin_at=later.isoformat(), priority=10)
    store.write([waiting], Meta(actor="t", correlation_id=str(waiting.id)))
    assert admission.admits_at_once(store.load(Job, waiting.id), ProviderType.DOCKER, datetime.now(UTC)) is False
    waiting = store.load(Job, waiting.id)
    waiting.select_provider(str(PROVIDER_IDS[ProviderType.DOCKER]), "docker")
    store.write([waiting], Meta(actor="t", correlation_id=str(waiting.id)))
    due = _queued(store, begin_at=(datetime.now(UTC) - timedelta(seconds=1)).isoformat())
    in_line, held = admission.queue(10)
    assert (in_line.job_id, in_line.position, in_line.begin_at) == (str(due.id), 1, None)
    assert (held.job_id, held.position, held.begin_at) == (str(waiting.id), 0, later)
    assert admission.admit(ProviderType.DOCKER) == 1
    assert store.load(Job, due.id).admitted and not store.load(Job, waiting.id).admitted


def test_an_array_with_a_limit_has_at_most_that_many_jobs_admitted_and_lets_others_pass(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """Slurm's ``--array 0-4%2``: a round admits the limit's worth of the array (in the
    queue's order: priority first) and gives the rest of its room to the jobs behind; one
    of the array ending makes room for the next. Another array keeps its own count."""
    admission = Admission(store, {ProviderType.DOCKER: 10})
    array = [_queued(store, labels={ARRAY_LABEL: "a"}, array_limit=2) for _ in range(5)]
    urgent = _queued(store, labels={ARRAY_LABEL: "a"}, array_limit=2, priority=5)
    other_array = [_queued(store, labels={ARRAY_LABEL: "b"}, array_limit=1) for _ in range(2)]
    plain = [_queued(store) for _ in range(3)]
    assert admission.admits_at_once(store.load(Job, array[0].id), ProviderType.DOCKER, datetime.now(UTC)) is False

    assert admission.admit(ProviderType.DOCKER) == 2 + 1 + 3
    admitted = {str(job.id) for job in (*array, urgent, *other_array, *plain) if store.load(Job, job.id).admitted}
    assert admitted == {str(urgent.id), str(array[0].id), str(other_array[0].id), *(str(job.id) for job in plain)}
    waiting = {queued.job_id: queued for queued in admission.queue(20)}
    assert set(waiting) == {str(job.id) for job in (*array[1:], other_array[1])}
    assert {(queued.position, queued.array_limit, queued.array_running) for queued in waiting.values()} == {
        (0, 2, 2),
        (0, 1, 1),
    }

    assert admission.admit(ProviderType.DOCKER) == 0  # room in the provider, none in the arrays
    _ended(store, urgent, JobState.SUCCEEDED)
    assert admission.admit(ProviderType.DOCKER) == 1
    assert store.load(Job, array[1].id).admitted and not store.load(Job, array[2].id).admitted
    assert query(
        fresh_database_url,
        "SELECT count(*) FROM jobs WHERE spec -> 'labels' ->> %s = 'a' AND admitted_at IS NOT NULL "
        "AND state NOT IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMEOUT')",
        (ARRAY_LABEL,),
    ) == [(2,)]


def test_the_queue_puts_an_arrays_jobs_past_its_limit_out_of_line_as_a_round_would(store: HodeiStore) -> None:
    """The provider full, nothing of the array running, a limit of 2: its first two jobs
    are in the provider's line, the others out of it (a freed slot goes past them)."""
    admission = Admission(store, {ProviderType.DOCKER: 1})
    busy = _queued(store)
    assert admission.admit(ProviderType.DOCKER) == 1
    array = [_queued(store, labels={ARRAY_LABEL: "c"}, array_limit=2) for _ in range(4)]
    plain = _queued(store)
    queued = {row.job_id: row for row in admission.queue(20)}
    assert [queued[str(job.id)].position for job in (*array, plain)] == [1, 2, 0, 0, 3]
    assert [queued[str(job.id)].past_array_limit for job in array] == [False, False, True, True]
    assert (queued[str(array[3].id)].array_running, queued[str(array[3].id)].array_place) == (0, 4)
    _ended(store, busy, JobState.SUCCEEDED)
    assert admission.admit(ProviderType.DOCKER) == 1
    assert store.load(Job, array[0].id).admitted


def test_a_held_job_keeps_out_of_its_line_until_released_and_then_goes_first_again(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """A hold passes the job by (later jobs take the room); released, it is back at its
    submission's place; an admission that read it from the queue before it was held finds
    it held and leaves it."""
    admission = Admission(store, {ProviderType.DOCKER: 1})
    busy = _queued(store)
    assert admission.admit(ProviderType.DOCKER) == 1
    held = _queued(store, priority=5)
    held.hold("alice", "the data is not there yet")
    store.write([held], Meta(actor="alice", correlation_id=str(held.id)))
    assert admission.admits_at_once(store.load(Job, held.id), ProviderType.DOCKER, datetime.now(UTC)) is False
    later = _queued(store)
    rows = {row.job_id: row for row in admission.queue(10)}
    assert (rows[str(held.id)].position, rows[str(held.id)].held_by) == (0, "alice")
    assert rows[str(held.id)].hold_reason == "the data is not there yet"
    assert (rows[str(later.id)].position, rows[str(later.id)].held_by) == (1, None)
    assert query(fresh_database_url, "SELECT held_by, hold_reason FROM jobs WHERE id = %s", (str(held.id),)) == [
        ("alice", "the data is not there yet")
    ]

    _ended(store, busy, JobState.SUCCEEDED)
    assert admission.admit(ProviderType.DOCKER) == 1
    assert store.load(Job, later.id).admitted and not store.load(Job, held.id).admitted
    _ended(store, later, JobState.SUCCEEDED)

    released = store.load(Job, held.id)
    released.release()
    store.write([released], Meta(actor="bob", correlation_id=str(held.id)))
    assert query(fresh_database_url, "SELECT held_by, hold_reason FROM jobs WHERE id = %s", (str(held.id),)) == [
        (None, None)
    ]
    behind = _queued(store)
    assert [row.job_id for row in admission.queue(10)] == [str(held.id), str(behind.id)]
    # Read from the queue, then held before its admission: the round leaves it.
    again = store.load(Job, held.id)
    again.hold("alice")
    store.write([again], Meta(actor="alice", correlation_id=str(held.id)))
    with pytest.raises(InvalidTransition, match="held by alice"):
        store.load(Job, held.id).admit()
    assert admission.admit(ProviderType.DOCKER) == 1
    assert store.load(Job, behind.id).admitted and not store.load(Job, held.id).admitted


def test_a_new_priority_moves_a_queued_job_in_its_line(store: HodeiStore, fresh_database_url: str) -> None:
    admission = Admission(store, {ProviderType.DOCKER: 1})
    busy = _queued(store)
    assert admission.admit(ProviderType.DOCKER) == 1
    first, second = _queued(store), _queued(store)
    assert [row.job_id for row in admission.queue(10)] == [str(first.id), str(second.id)]
    moved = store.load(Job, second.id)
    moved.prioritize(5)
    store.write([moved], Meta(actor="ops", correlation_id=str(second.id)))
    assert [(row.job_id, row.priority) for row in admission.queue(10)] == [(str(second.id), 5), (str(first.id), 0)]
    assert query(fresh_database_url, "SELECT spec ->> 'priority' FROM jobs WHERE id = %s", (str(second.id),)) == [
        ("5",)
    ]
    _ended(store, busy, JobState.SUCCEEDED)
    assert admission.admit(ProviderType.DOCKER) == 1
    assert store.load(Job, second.id).admitted and not store.load(Job, first.id).admitted


def _lock_taken_meanwhile(monkeypatch: pytest.MonkeyPatch, url: str, try_lock: str) -> list[object]:
    """What ``try_lock`` (another server's try for an advisory lock) gets each time a round
    chooses its jobs (next_in_queue): False while the round holds that lock."""
    looked = db.fetch_column
    locked_out: list[object] = []

    def fetch_column(pool: Any, name: str, params: Any = None, constants: Any = None) -> list[Any]:
        if name == "next_in_queue":
            locked_out.append(query(url, try_lock)[0][0])
        return looked(pool, name, params, constants)

    monkeypatch.setattr(admission_module, "fetch_column", fetch_column)
    return locked_out


def _pooled(store: HodeiStore, provider: ProviderType, pool: str, **spec: Any) -> Job:
    job = new_job(pool=pool, **spec)
    job.select_provider(str(PROVIDER_IDS[provider]), provider.value)
    store.write([job], Meta(actor="t", correlation_id=str(job.id)))
    return job


def test_a_pool_runs_at_most_its_size_of_its_jobs_whatever_their_providers(
    store: HodeiStore, fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Airflow's pools, Slurm's licenses: a round counts the pool's jobs admitted on every
    provider, under the pool's lock (another provider's round waits for its commit); the
    queue puts the jobs past the size out of line and says why; a freed slot or a bigger
    size lets the next in. A job outside the pool passes them."""
    pools = Pools(store)
    pools.set("db", 2, "ops")
    admission = Admission(store, dict.fromkeys(ProviderType, 10))
    docker = [_pooled(store, ProviderType.DOCKER, "db") for _ in range(2)]
    local = [_pooled(store, ProviderType.LOCAL, "db") for _ in range(2)]
    plain = _queued(store)
    assert admission.admits_at_once(store.load(Job, local[0].id), ProviderType.LOCAL, datetime.now(UTC)) is False

    locked_out = _lock_taken_meanwhile(
        monkeypatch, fresh_database_url, "SELECT pg_try_advisory_lock(11, hashtext('db'))"
    )
    assert admission.admit(ProviderType.DOCKER) == 3
    assert locked_out == [False]  # the round held the pool's lock
    assert admission.admit(ProviderType.LOCAL) == 0
    assert all(store.load(Job, job.id).admitted for job in (*docker, plain))
    waiting = {row.job_id: row for row in admission.queue(10)}
    assert set(waiting) == {str(job.id) for job in local}
    first = waiting[str(local[0].id)]
    assert (first.position, first.pool, first.pool_size, first.pool_running, first.pool_place) == (0, "db", 2, 2, 1)
    assert first.past_pool_size and waiting[str(local[1].id)].pool_place == 2
    assert pools.get("db") == PoolUse("db", 2, running=2, queued=2)
    scraped = _scraped(store, admission, pools=pools)
    for line in (
        'hodei_pool_size{pool="db"} 2.0',
        'hodei_pool_running{pool="db"} 2.0',
        'hodei_pool_queued{pool="db"} 2.0',
    ):
        assert line in scraped

    _ended(store, docker[0], JobState.SUCCEEDED)
    assert admission.admit(ProviderType.LOCAL) == 1
    assert store.load(Job, local[0].id).admitted and not store.load(Job, local[1].id).admitted
    pools.set("db", 3, "ops")
    assert admission.admit(ProviderType.LOCAL) == 1
    assert pools.get("db") == PoolUse("db", 3, running=3, queued=0)


def test_a_pools_jobs_held_back_by_their_arrays_limit_take_none_of_its_room(store: HodeiStore) -> None:
    """An array (a limit of 1) in a pool of 2: its jobs past its limit are not in the
    pool's line, so a later job of the pool takes the room they could not."""
    Pools(store).set("db", 2, "ops")
    admission = Admission(store, {ProviderType.DOCKER: 10})
    array = [_pooled(store, ProviderType.DOCKER, "db", labels={ARRAY_LABEL: "a"}, array_limit=1) for _ in range(3)]
    later = _pooled(store, ProviderType.DOCKER, "db")
    assert admission.admit(ProviderType.DOCKER) == 2
    assert store.load(Job, array[0].id).admitted and store.load(Job, later.id).admitted
    reasons = {row.job_id: (row.past_array_limit, row.past_pool_size) for row in admission.queue(10)}
    assert reasons == {str(array[1].id): (True, False), str(array[2].id): (True, False)}


def test_a_round_admits_only_the_jobs_of_the_pools_it_locked(store: HodeiStore) -> None:
    """A job of a pool that joined the queue after the round took its pools' locks waits
    for the next round: admitted without its pool's lock, it could pass the pool's size
    while another provider's round fills it."""
    Pools(store).set("db", 5, "ops")
    job = _pooled(store, ProviderType.DOCKER, "db")

    def ready(pools: list[str] | None) -> list[str]:
        params = {"provider": "docker", "limit": 10, "joining": None, "pools": pools, "submitters": None, "recent": 0}
        return [str(found) for found in db.fetch_column(store.pool, "next_in_queue", params, FIFO)]

    assert ready([]) == [] and ready(["other"]) == []
    assert ready(["db"]) == ready(None) == [str(job.id)]


def test_the_jobs_of_a_pool_deleted_wait_until_it_is_set_again(store: HodeiStore) -> None:
    pools = Pools(store)
    pools.set("licence", 1, "ops")
    job = _pooled(store, ProviderType.DOCKER, "licence")
    pools.delete("licence", "ops")
    admission = Admission(store, {ProviderType.DOCKER: 10})
    assert admission.admit(ProviderType.DOCKER) == 0
    [row] = admission.queue(10)
    assert (row.pool_size, row.past_pool_size) == (None, True)
    with pytest.raises(NotFound):
        pools.get("licence")
    with pytest.raises(InvalidInput, match="no pool 'licence'"):
        pools.check("licence")
    pools.set("licence", 1, "ops")
    assert admission.admit(ProviderType.DOCKER) == 1
    assert store.load(Job, job.id).admitted


def _race(store: HodeiStore, job: Callable[[ProviderType], Job]) -> None:
    """Five times, a Docker and a local job (``job``) and two servers' rounds for them
    started together: exactly one is admitted each time (both are cancelled after)."""
    servers = [Admission(store, {ProviderType.DOCKER: 10, ProviderType.LOCAL: 10}) for _ in range(2)]
    for _ in range(5):
        jobs = [job(provider) for provider in (ProviderType.DOCKER, ProviderType.LOCAL)]
        start = threading.Barrier(2)

        def admit(admission: Admission, provider: ProviderType, start: threading.Barrier = start) -> None:
            start.wait()
            admission.admit(provider)

        rounds = [
            threading.Thread(target=admit, args=(server, provider))
            for server, provider in zip(servers, (ProviderType.DOCKER, ProviderType.LOCAL), strict=True)
        ]
        for thread in rounds:
            thread.start()
        for thread in rounds:
            thread.join(30)
        assert [store.load(Job, one.id).admitted for one in jobs].count(True) == 1
        for one in jobs:  # none running again for the next race
            ended = store.load(Job, one.id)
            ended.cancel("the race is over")
            store.write([ended], Meta(actor="t", correlation_id=str(one.id)))


def test_rounds_of_two_servers_for_two_providers_at_once_never_pass_a_pools_size(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """Each provider's round has its own lock; the pool's lock makes one of them wait for the
    other's commit, so the second counts the first's admission. Rounds started together."""
    Pools(store).set("db", 1, "ops")
    _race(store, lambda provider: _pooled(store, provider, "db"))
    assert query(fresh_database_url, "SELECT count(*) FROM jobs WHERE state = 'CANCELLED'") == [(10,)]


def _submitted(store: HodeiStore, provider: ProviderType, submitter: str, **spec: Any) -> Job:
    job = new_job(**spec)
    job.select_provider(str(PROVIDER_IDS[provider]), provider.value)
    store.write([job], Meta(actor=submitter, correlation_id=str(job.id)))
    return job


def _admitted(store: HodeiStore, *jobs: Job) -> list[bool]:
    return [store.load(Job, job.id).admitted for job in jobs]


def test_a_submitters_limit_keeps_its_jobs_past_it_waiting_whatever_their_providers_and_lets_others_pass(
    store: HodeiStore, fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slurm's MaxJobs per user: a round counts the submitter's jobs admitted on every
    provider, under the submitter's lock; the queue puts its jobs past the limit out of
    line and says why; another submitter's later job passes them; a job ending or a
    higher limit lets the next in."""
    limits = Limits(store)
    assert limits.set("alice", "ops", {"jobs": 2}) == SubmitterUse("alice", 2, own=True, running=0, queued=0)
    admission = Admission(store, dict.fromkeys(ProviderType, 10))
    docker = [_submitted(store, ProviderType.DOCKER, "alice") for _ in range(3)]
    local = _submitted(store, ProviderType.LOCAL, "alice")
    bob = _submitted(store, ProviderType.DOCKER, "bob")
    assert limits.get("alice") == SubmitterUse("alice", 2, own=True, running=0, queued=4)

    locked_out = _lock_taken_meanwhile(
        monkeypatch, fresh_database_url, "SELECT pg_try_advisory_lock(9, hashtext('alice'))"
    )
    assert admission.admit(ProviderType.DOCKER) == 3
    assert locked_out == [False]  # the round held the submitter's lock
    assert _admitted(store, *docker, bob) == [True, True, False, True]
    assert admission.admit(ProviderType.LOCAL) == 0
    waiting = {row.job_id: row for row in admission.queue(10)}
    assert set(waiting) == {str(docker[2].id), str(local.id)}
    third = waiting[str(docker[2].id)]
    assert (third.position, third.submitter, third.submitter_limit, third.submitter_running, third.submitter_place) == (
        0,
        "alice",
        2,
        2,
        1,
    )
    assert third.past_submitter_limit and waiting[str(local.id)].past_submitter_limit
    assert limits.get("alice") == SubmitterUse("alice", 2, own=True, running=2, queued=2)
    assert limits.get("bob") == SubmitterUse("bob", None, own=False, running=1, queued=0)
    scraped = _scraped(store, admission, limits=limits)
    for line in (
        'hodei_submitter_limit{submitter="alice"} 2.0',
        'hodei_submitter_running{submitter="alice"} 2.0',
        'hodei_submitter_queued{submitter="alice"} 2.0',
        'hodei_submitter_running{submitter="bob"} 1.0',
    ):
        assert line in scraped
    assert 'hodei_submitter_limit{submitter="bob"}' not in scraped

    _ended(store, docker[0], JobState.SUCCEEDED)
    assert admission.admit(ProviderType.LOCAL) == 1
    assert _admitted(store, local, docker[2]) == [True, False]
    limits.set("alice", "ops", {"jobs": 3})
    assert admission.admit(ProviderType.DOCKER) == 1
    assert limits.get("alice") == SubmitterUse("alice", 3, own=True, running=3, queued=0)


def test_a_limit_for_every_submitter_its_own_exceptions_and_a_deleted_one(store: HodeiStore) -> None:
    """`*` limits every submitter without a limit of its own; a submitter's own may be none
    (a service account let through); deleting its own puts it under `*` again."""
    limits = Limits(store)
    admission = Admission(store, {ProviderType.DOCKER: 20})
    assert admission.admit(ProviderType.DOCKER) == 0
    limits.set("*", "ops", {"jobs": 1})
    limits.set("etl", "ops", {"jobs": None})
    carol = [_submitted(store, ProviderType.DOCKER, "carol") for _ in range(2)]
    etl = [_submitted(store, ProviderType.DOCKER, "etl") for _ in range(3)]
    assert admission.admit(ProviderType.DOCKER) == 4
    assert _admitted(store, *carol, *etl) == [True, False, True, True, True]
    assert limits.all() == [
        SubmitterUse("*", 1, own=True, running=0, queued=0, submitted_own=True),
        SubmitterUse("carol", 1, own=False, running=1, queued=1),
        SubmitterUse("etl", None, own=True, running=3, queued=0),
    ]
    later = _submitted(store, ProviderType.DOCKER, "etl")
    limits.delete("etl", "ops")
    assert admission.admit(ProviderType.DOCKER) == 0
    assert limits.get("etl") == SubmitterUse("etl", 1, own=False, running=3, queued=1)
    assert admission.queue(10)[0].job_id in {str(later.id), str(carol[1].id)}
    with pytest.raises(InvalidTransition, match="already deleted"):
        limits.delete("etl", "ops")
    with pytest.raises(NotFound, match="submitter dave has no limit of its own"):
        limits.delete("dave", "ops")
    assert limits.get("dave") == SubmitterUse("dave", 1, own=False, running=0, queued=0)
    limits.delete("*", "ops")
    assert admission.admit(ProviderType.DOCKER) == 2
    assert limits.get("dave") == SubmitterUse("dave", None, own=False, running=0, queued=0)


@pytest.mark.parametrize(
    ("submitter", "jobs", "error"),
    [
        ("", 1, "a submitter is a token's name"),
        ("al ice", 1, "a submitter is a token's name"),
        ("x" * 65, 1, "a submitter is a token's name"),
        ("alice", -1, "0 .its jobs wait. to 100000 jobs at once, got -1"),
        ("alice", 100_001, "got 100001"),
    ],
)
def test_a_limit_refuses_a_name_no_token_has_and_a_number_out_of_bounds(
    store: HodeiStore, fresh_database_url: str, submitter: str, jobs: int, error: str
) -> None:
    events = "SELECT count(*) FROM domain_events"
    before = query(fresh_database_url, events)
    with pytest.raises(InvalidInput, match=error):
        Limits(store).set(submitter, "ops", {"jobs": jobs})
    assert query(fresh_database_url, events) == before


def test_a_limited_submitters_job_joining_the_queue_waits_for_a_round(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """It is admitted under its submitter's lock, by a round, never at once; another
    submitter's job with room and nobody ready before it is."""
    Limits(store).set("alice", "ops", {"jobs": 5})
    admission = Admission(store, {ProviderType.DOCKER: 10})
    alice, bob = new_job(), new_job()
    store.write([alice], Meta(actor="alice", correlation_id=str(alice.id)))
    store.write([bob], Meta(actor="bob", correlation_id=str(bob.id)))
    assert admission.admits_at_once(store.load(Job, alice.id), ProviderType.DOCKER, datetime.now(UTC)) is False
    assert admission.admits_at_once(store.load(Job, bob.id), ProviderType.DOCKER, datetime.now(UTC)) is True


def test_a_submitters_jobs_in_a_full_pool_take_none_of_its_room_and_those_past_it_none_of_the_pools(
    store: HodeiStore,
) -> None:
    """Alice (a limit of 1): her job of a full pool does not keep her other job waiting;
    her jobs past her limit do not keep bob's job of a pool with room waiting."""
    Limits(store).set("alice", "ops", {"jobs": 1})
    pools = Pools(store)
    pools.set("full", 1, "ops")
    pools.set("db", 1, "ops")
    admission = Admission(store, {ProviderType.DOCKER: 10})
    holder = _submitted(store, ProviderType.DOCKER, "bob", pool="full")
    assert admission.admit(ProviderType.DOCKER) == 1
    in_full = _submitted(store, ProviderType.DOCKER, "alice", pool="full", priority=5)
    plain = _submitted(store, ProviderType.DOCKER, "alice")
    in_db = _submitted(store, ProviderType.DOCKER, "alice", pool="db")
    bobs = _submitted(store, ProviderType.DOCKER, "bob", pool="db")
    assert admission.admit(ProviderType.DOCKER) == 2
    assert _admitted(store, holder, in_full, plain, in_db, bobs) == [True, False, True, False, True]
    reasons = {row.job_id: (row.past_submitter_limit, row.past_pool_size) for row in admission.queue(10)}
    # Both wait for a full pool now (bob's job took db's room): that is the reason said.
    assert reasons == {str(in_full.id): (False, True), str(in_db.id): (False, True)}


def test_rounds_of_two_servers_for_two_providers_at_once_never_pass_a_submitters_limit(store: HodeiStore) -> None:
    """As a pool's: the submitter's lock makes one round wait for the other's commit."""
    Limits(store).set("alice", "ops", {"jobs": 1})
    _race(store, lambda provider: _submitted(store, provider, "alice"))


def test_the_number_of_submitter_limits_is_bounded(store: HodeiStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each is read by every round that meets one of its jobs: a new one past the bound is
    refused; changing one, or one set again after a deletion freed its place, is not."""
    monkeypatch.setattr(limits_module, "MAX_LIMITS", 2)
    limits = Limits(store)
    limits.set("*", "ops", {"jobs": 5})
    limits.set("alice", "ops", {"jobs": 1})
    with pytest.raises(InvalidTransition, match="there are 2 submitter limits, the most there may be: delete one"):
        limits.set("bob", "ops", {"jobs": 1})
    limits.set("alice", "ops", {"jobs": 3})  # a change adds none
    limits.delete("alice", "ops")
    limits.set("bob", "ops", {"jobs": 1})
    assert [(use.submitter, use.jobs, use.own) for use in limits.all()] == [("*", 5, True), ("bob", 1, True)]


def test_the_number_of_pools_is_bounded(store: HodeiStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pools_module, "MAX_POOLS", 1)
    pools = Pools(store)
    pools.set("db", 2, "ops")
    with pytest.raises(InvalidTransition, match="there are 1 pools, the most there may be: delete one first"):
        pools.set("licence", 1, "ops")
    pools.set("db", 3, "ops")  # a resize adds none
    pools.delete("db", "ops")
    pools.set("licence", 1, "ops")
    assert [pool.name for pool in pools.all()] == ["licence"]


def _submit_limited(store: HodeiStore, submitter: str) -> Job:
    """What QueueJob does: the room asked for and the job written in one transaction."""
    job = new_job()
    with db.command_transaction(store.pool):
        Limits(store).make_room(submitter, 1)
        store.write([job], Meta(actor=submitter, correlation_id=str(job.id)))
    return job


def test_a_submission_counts_the_jobs_not_ended_after_the_one_before_committed(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """Slurm's MaxSubmitJobs: a limited submitter's submissions take their turns (an
    advisory lock held to the commit), so one that waits for another's counts its job: two
    at once cannot both take the last room."""
    import psycopg

    limits = Limits(store)
    limits.set("alice", "ops", {"submitted": 1})
    _submit_limited(store, "bob")  # bob is not limited: nothing asked
    outcome: list[object] = []
    with psycopg.connect(fresh_database_url) as other:
        # Another submission of alice's holds her turn: it has counted and not written yet.
        other.execute("SELECT pg_advisory_xact_lock(10, hashtext('alice'))")
        waiting = threading.Thread(target=lambda: outcome.append(_attempt(lambda: _submit_limited(store, "alice"))))
        waiting.start()

        def blocked() -> bool | None:
            rows = query(
                fresh_database_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            return rows == [(1,)] or None

        eventually(blocked, 10, what="the second submission to wait for alice's turn")
        _submitted(store, ProviderType.DOCKER, "alice")  # the first one's job
        other.commit()
    waiting.join(30)
    [refused] = outcome
    assert isinstance(refused, LimitReached), refused
    assert str(refused).startswith("submitter alice has 1 jobs not ended, 1 at most (`limit get alice`): a job more")
    assert limits.get("alice").queued == 1
    scraped = _scraped(store, Admission(store, dict.fromkeys(ProviderType, 10)), limits=limits)
    assert 'hodei_submitter_max_submitted{submitter="alice"} 1.0' in scraped
    assert 'hodei_submitter_max_submitted{submitter="bob"}' not in scraped


def _attempt(action: Callable[[], object]) -> object:
    try:
        return action()
    except LimitReached as exc:
        return exc


def test_a_version_1_limit_leaves_its_jobs_not_ended_to_star_in_the_log_and_in_sql(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """SubmitterLimitSet version 1 had no `submitted`: the upcaster and the queries that
    read the log by name (hodei.submitter_bound, submitter_limits) both give it `*`'s."""
    from hodei.domain.limit import INHERITED, SubmitterLimit, limit_id
    from hodei.store.events import event_id

    limits = Limits(store)
    limits.set("*", "ops", {"submitted": 5})
    alice = limit_id("alice")
    query(
        fresh_database_url,
        "INSERT INTO domain_events (id, occurred_at, event_type, aggregate_id, payload, aggregate_type, "
        "aggregate_version, topic) VALUES (%s, now(), 'SubmitterLimitSet', %s, %s, 'SubmitterLimit', 1, "
        "'hodei.domain.limit:SubmitterLimit.SubmitterLimitSet')",
        (
            event_id(str(alice), 1),
            str(alice),
            '{"submitter": "alice", "jobs": 2, "originator_topic": "hodei.domain.limit:SubmitterLimit"}',
        ),
    )
    loaded = store.load(SubmitterLimit, alice)
    assert (loaded.jobs, loaded.submitted) == (2, INHERITED)
    assert limits.get("alice") == SubmitterUse("alice", 2, own=True, running=0, queued=0, submitted=5)
    assert query(fresh_database_url, "SELECT hodei.submitter_bound('alice', 'submitted')") == [(5,)]
    limits.set("alice", "ops", {"submitted": None})  # a v2 event now: no limit of her own
    assert limits.get("alice") == SubmitterUse("alice", 2, own=True, running=0, queued=0, submitted_own=True)
    assert query(fresh_database_url, "SELECT hodei.submitter_bound('alice', 'submitted')") == [(None,)]


def _admitted_one_by_one(store: HodeiStore, admission: Admission, jobs: list[Job]) -> list[str]:
    """Admits ``jobs`` by rounds of one free slot, each ended before the next round, each the
    queue's first as the round began."""
    admitted: list[str] = []
    for _ in jobs:
        first = admission.queue(1)[0].job_id
        assert admission.admit(ProviderType.DOCKER) == 1
        (job,) = [job for job in jobs if str(job.id) not in admitted and store.load(Job, job.id).admitted]
        assert str(job.id) == first
        admitted.append(str(job.id))
        _ended(store, job, JobState.SUCCEEDED)
    return admitted


def test_a_fair_queue_lets_submitters_take_turns_and_shows_its_order(store: HodeiStore) -> None:
    """HODEI_QUEUE_ORDER=fair: bob's jobs, submitted after alice's four, take turns with hers
    as the slot frees (her ended jobs count in her use within the window); the queue's places
    say the order the rounds keep; a priority still goes first. In submission order (the
    default) all of hers go first; so they do with a window of 0 (only running jobs count),
    where each round finds the slot freed by an ended job. A round of several slots takes
    turns within itself."""
    docker = ProviderType.DOCKER
    alice = [_submitted(store, docker, "alice") for _ in range(4)]
    bob = [_submitted(store, docker, "bob") for _ in range(2)]
    fifo = Admission(store, {docker: 1})
    fair = Admission(store, {docker: 1}, fair_window=600)
    assert [queued.job_id for queued in fifo.queue(10)] == [str(job.id) for job in alice + bob]
    turns = [str(job.id) for job in (alice[0], bob[0], alice[1], bob[1], alice[2], alice[3])]
    assert [(queued.job_id, queued.position) for queued in fair.queue(10)] == list(zip(turns, range(1, 7), strict=True))
    urgent = _submitted(store, docker, "alice", priority=5)
    assert fair.queue(1)[0].job_id == str(urgent.id)
    cancelled = store.load(Job, urgent.id)
    cancelled.cancel("not so urgent")
    store.write([cancelled], Meta(actor="alice", correlation_id=str(urgent.id)))  # never admitted: no use
    assert _admitted_one_by_one(store, fair, alice + bob) == turns

    carol = [_submitted(store, docker, "carol") for _ in range(3)]
    dave = [_submitted(store, docker, "dave") for _ in range(2)]
    forgetful = Admission(store, {docker: 1}, fair_window=0)
    assert _admitted_one_by_one(store, forgetful, carol + dave) == [str(job.id) for job in carol + dave]

    # A round with four free slots takes turns too: two of each.
    erin = [_submitted(store, docker, "erin") for _ in range(4)]
    frank = [_submitted(store, docker, "frank") for _ in range(2)]
    assert Admission(store, {docker: 4}, fair_window=600).admit(docker) == 4
    assert _admitted(store, *erin, *frank) == [True, True, False, False, True, True]


def _scraped(store: HodeiStore, admission: Admission, pools: Pools | None = None, limits: Limits | None = None) -> str:
    """What /metrics shows now."""
    metrics = PlatformMetrics(
        ReadModels(store.pool),
        CronJobs(store, JobSecrets(store.pool), kill_grace=1.0),
        pools or Pools(store),
        limits or Limits(store),
        Webhooks(store, JobSecrets(store.pool), ReadModels(store.pool)),
        admission,
    )
    return generate_latest(metrics.registry).decode()


def _limit_resources(store: HodeiStore, cpu_cores: float | None, memory_bytes: int | None) -> None:
    provider = store.load(Provider, PROVIDER_IDS[ProviderType.DOCKER])
    provider.set_resources(ResourceLimits(cpu_cores, memory_bytes))
    store.write([provider], Meta(actor="ops"))


def test_a_providers_cpu_and_memory_hold_its_jobs_requests_together_in_the_queues_order(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """A round admits the jobs next in line while what they ask for (--cpu, --memory)
    and what the provider's jobs admitted and not ended ask for stay within its limits
    (`provider capacity docker --cpus 2 --memory 1Gi`); the first that does not fit
    stops it (no backfill: a big job is not passed for ever by small ones), but one that
    never fits is passed over; a job asking for none counts none."""
    _limit_resources(store, 2.0, 2**30)
    admission = Admission(store, dict.fromkeys(ProviderType, 10))
    first = _queued(store, resources=Resources(cpu_cores=1.0))
    big = _queued(store, resources=Resources(cpu_cores=1.5))
    small = _queued(store, resources=Resources(cpu_cores=0.5, memory_bytes=2**29))
    bare = _queued(store)
    assert admission.admit(ProviderType.DOCKER) == 1  # `big` does not fit beside `first`; the rest wait behind it
    capacity = admission.capacity(ProviderType.DOCKER)
    assert (capacity.resources, capacity.cpu_in_use, capacity.memory_in_use) == (ResourceLimits(2.0, 2**30), 1.0, 0)
    waiting = {row.job_id: row for row in admission.queue(10)}
    assert waiting[str(big.id)].position == 1 and waiting[str(small.id)].position == 2
    asked = admission.asked([big.id, small.id, bare.id])
    assert [(asked[job.id].cpu_cores, asked[job.id].memory_bytes) for job in (big, small, bare)] == [
        (1.5, 0),
        (0.5, 2**29),
        (0.0, 0),
    ]

    _ended(store, first, JobState.SUCCEEDED)
    assert admission.admit(ProviderType.DOCKER) == 3  # 1.5 + 0.5 CPU, and a job asking for none
    assert all(store.load(Job, job.id).admitted for job in (big, small, bare))
    capacity = admission.capacity(ProviderType.DOCKER)
    assert (capacity.cpu_in_use, capacity.memory_in_use) == (2.0, 2**29)

    never = _queued(store, resources=Resources(cpu_cores=4.0))
    memory = _queued(store, resources=Resources(memory_bytes=2**29))
    cpu = _queued(store, resources=Resources(cpu_cores=0.25))
    assert admission.admit(ProviderType.DOCKER) == 1  # `never` passed over; `memory` fits, `cpu` does not yet
    assert store.load(Job, memory.id).admitted and not store.load(Job, cpu.id).admitted
    assert not store.load(Job, never.id).admitted
    joining = _queued(store, resources=Resources(cpu_cores=0.25))
    assert admission.admits_at_once(store.load(Job, joining.id), ProviderType.DOCKER, datetime.now(UTC)) is False

    scraped = _scraped(store, admission)
    for line in (
        'hodei_provider_workers{provider="docker"} 10.0',
        'hodei_provider_workers_in_use{provider="docker"} 4.0',
        'hodei_provider_cpu_cores{provider="docker"} 2.0',
        'hodei_provider_cpu_cores_asked{provider="docker"} 2.0',
        'hodei_provider_memory_bytes{provider="docker"} 1.073741824e+09',
        'hodei_provider_memory_bytes_asked{provider="docker"} 1.073741824e+09',
    ):
        assert line in scraped, scraped
    _limit_resources(store, None, None)  # lifted: only workers are counted
    assert admission.admit(ProviderType.DOCKER) == 3
    assert query(fresh_database_url, "SELECT config FROM provider_configs WHERE provider_type = 'docker'") == [({},)]


def test_a_job_takes_a_slot_at_once_only_where_the_providers_resources_hold_it(store: HodeiStore) -> None:
    _limit_resources(store, 1.0, None)
    admission = Admission(store, {ProviderType.DOCKER: 10})
    now = datetime.now(UTC)
    fits, too_big = new_job(resources=Resources(cpu_cores=1.0)), new_job(resources=Resources(cpu_cores=1.5))
    assert admission.admits_at_once(fits, ProviderType.DOCKER, now) is True
    assert admission.admits_at_once(too_big, ProviderType.DOCKER, now) is False
