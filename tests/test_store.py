"""The event store: one log, outbox and read models in the same transaction,
optimistic concurrency, commit-ordered positions, plain-JSON payloads."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4, uuid5

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

from e2e.seed import SEED_TABLES
from hodei.domain.job import Job, JobState
from hodei.domain.provider import PROVIDER_IDS, Provider, ProviderHealth, ProviderType
from hodei.domain.saga import Saga
from hodei.domain.spec import JobSpec
from hodei.domain.worker import Worker
from hodei.errors import ConcurrencyConflict, StoreUnavailable
from hodei.liveness import Liveness, Pace, Usage
from hodei.store import db
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import command_connection, command_transaction, fetch_value
from hodei.store.instances import HEARTBEAT, ServerInstances
from hodei.store.sql import query as query_text
from hodei.testing import eventually, query, spy
from tests.workload import OPERATIONS, Workload


def new_job(**overrides: Any) -> Job:
    spec = {"name": "t", "command": "echo hi", "timeout_seconds": 30.0, **overrides}
    return Job.submit(JobSpec(**spec), uuid4())


def new_worker(job: Job, provider: ProviderType) -> Worker:
    return Worker(
        job_id=str(job.id),
        attempt=1,
        provider_id=str(PROVIDER_IDS[provider]),
        provider_type=provider.value,
        token_nonce="n",
        token_expires_at="2100-01-01T00:00:00+00:00",
    )


def snapshot(url: str) -> dict[str, str]:
    return {
        table: query(
            url,
            "SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') "
            f"FROM {table} t",
        )[0][0]
        for table in SEED_TABLES
    }


def test_a_save_writes_the_event_its_outbox_row_and_the_read_model(store: HodeiStore, fresh_database_url: str) -> None:
    job = new_job()
    store.write([job], Meta(actor="cli:ana", correlation_id=str(job.id)))
    rows = query(
        fresh_database_url,
        "SELECT d.event_type, d.aggregate_id, d.correlation_id, d.actor, d.aggregate_version, o.status "
        "FROM domain_events d JOIN outbox_events o ON o.id = d.id WHERE d.aggregate_id = %s",
        (str(job.id),),
    )
    assert rows == [("JobCreated", str(job.id), str(job.id), "cli:ana", 1, "PENDING")]
    assert query(fresh_database_url, "SELECT state, name, actor FROM jobs WHERE id = %s", (job.id,)) == [
        ("PENDING", "t", "cli:ana")
    ]


def test_the_repository_rebuilds_what_was_saved(store: HodeiStore) -> None:
    job = new_job(env={"A": "1"}, args=("-c", "x"))
    store.write([job], Meta(actor="t"))
    loaded = store.load(Job, job.id)
    assert (loaded.spec, loaded.state, loaded.version) == (job.spec, JobState.PENDING, 1)
    assert (loaded.spec.env, loaded.spec.args) == ({"A": "1"}, ("-c", "x"))
    assert loaded.created_on == job.created_on


def _install_failure(url: str, table: str) -> None:
    query(
        url,
        "CREATE OR REPLACE FUNCTION hodei_test_fail() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'injected failure in %', TG_TABLE_NAME; END $$",
    )
    query(
        url,
        f"CREATE TRIGGER hodei_test_fail BEFORE INSERT OR UPDATE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION hodei_test_fail()",
    )


@pytest.mark.parametrize(
    "table",
    [
        "outbox_events",
        "jobs",
        "job_log_files",
        "workers",
        "sagas",
        "saga_steps",
        "saga_audit_events",
        "provider_configs",
    ],
)
def test_a_failure_after_the_event_insert_leaves_every_table_unchanged(
    store: HodeiStore, fresh_database_url: str, table: str
) -> None:
    job = new_job()
    store.write([job], Meta(actor="t"))
    job.assign(str(uuid4()), str(PROVIDER_IDS[ProviderType.DOCKER]), "docker")
    job.accept(str(job.worker_id))
    job.finish(str(job.worker_id), JobState.SUCCEEDED, 0, None)
    store.write([job], Meta(actor="t"))
    job = store.load(Job, job.id)
    job.record_logs("file:///tmp/x.log", 10, 1)
    worker = new_worker(job, ProviderType.DOCKER)
    saga = Saga(saga_type="PROVISIONING", correlation_id=str(job.id), attempt=1, steps=["a"], context={})
    provider = store.load(Provider, PROVIDER_IDS[ProviderType.DOCKER])
    provider.record_health(ProviderHealth.UNHEALTHY, "down")
    _install_failure(fresh_database_url, table)
    before = snapshot(fresh_database_url)
    with pytest.raises(Exception, match=f"injected failure in {table}"):
        store.write([job, new_job(), worker, saga, provider], Meta(actor="t"))
    assert snapshot(fresh_database_url) == before


def test_of_two_concurrent_writers_exactly_one_wins(store: HodeiStore, fresh_database_url: str) -> None:
    job = new_job()
    store.write([job], Meta(actor="t"))
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def writer(worker_id: str) -> None:
        copy = store.load(Job, job.id)
        copy.assign(worker_id, str(PROVIDER_IDS[ProviderType.DOCKER]), "docker")
        barrier.wait()
        try:
            store.write([copy], Meta(actor=worker_id))
            outcomes.append("won")
        except ConcurrencyConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer, args=(str(uuid4()),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict", "won"]
    assert query(fresh_database_url, "SELECT count(*) FROM domain_events WHERE aggregate_id = %s", (str(job.id),)) == [
        (2,)
    ]
    assert query(fresh_database_url, "SELECT count(*) FROM outbox_events WHERE aggregate_id = %s", (str(job.id),)) == [
        (2,)
    ]


def test_a_tailing_reader_sees_every_position_once_in_commit_order(store: HodeiStore, fresh_database_url: str) -> None:
    writers, saves = 6, 40
    done = threading.Event()
    seen: list[int] = []

    def tail() -> None:
        last = 0
        while True:
            finished = done.is_set()
            rows = query(
                fresh_database_url,
                "SELECT position FROM domain_events WHERE position > %s ORDER BY position",
                (last,),
            )
            for (position,) in rows:
                seen.append(position)
                last = position
            if finished and not rows:
                return

    def write() -> None:
        for _ in range(saves):
            store.write([new_job(), new_job()], Meta(actor="t"))

    reader = threading.Thread(target=tail)
    reader.start()
    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    reader.join()
    committed = [row[0] for row in query(fresh_database_url, "SELECT position FROM domain_events ORDER BY position")]
    assert len(committed) == writers * saves * 2 + 2  # plus the two seed provider registrations
    assert seen == [p for p in committed if p > 0]
    assert seen == sorted(set(seen))


def test_payloads_are_plain_json_readable_in_sql(store: HodeiStore, fresh_database_url: str) -> None:
    workload = Workload(store, seed=7)
    for index in range(300):
        workload.apply(OPERATIONS[index % len(OPERATIONS)])
    kinds = query(fresh_database_url, "SELECT DISTINCT event_type FROM domain_events")
    assert len(kinds) >= 15
    wrapped = "SELECT count(*) FROM domain_events WHERE strpos(payload::text, '\"_type_\"') > 0"
    assert query(fresh_database_url, wrapped) == [(0,)]
    states = {
        row[0]
        for row in query(
            fresh_database_url,
            "SELECT payload->>'new_state' FROM domain_events WHERE event_type = 'JobStatusChanged'",
        )
    }
    assert "RUNNING" in states and None not in states
    assert query(fresh_database_url, "SELECT count(*) FROM domain_events WHERE jsonb_typeof(payload) <> 'object'") == [
        (0,)
    ]


def test_events_keep_their_correlation_and_actor(store: HodeiStore, fresh_database_url: str) -> None:
    job = new_job()
    store.write([job], Meta(actor="cli:ana", correlation_id=str(job.id)))
    saga = Saga(saga_type="PROVISIONING", correlation_id=str(job.id), attempt=1, steps=["a"], context={})
    store.write([saga], Meta(actor="system", correlation_id=str(job.id)))
    rows = query(
        fresh_database_url,
        "SELECT event_type, actor FROM domain_events WHERE correlation_id = %s ORDER BY position",
        (str(job.id),),
    )
    assert rows == [("JobCreated", "cli:ana"), ("SagaStarted", "system")]


def test_a_duplicate_saga_start_is_refused(store: HodeiStore) -> None:
    job_id = str(uuid4())
    first = Saga(saga_type="EXECUTION", correlation_id=job_id, attempt=1, steps=["a"], context={})
    store.write([first], Meta(actor="t"))
    again = Saga(saga_type="EXECUTION", correlation_id=job_id, attempt=1, steps=["a"], context={})
    assert again.id == first.id
    with pytest.raises(ConcurrencyConflict):
        store.write([again], Meta(actor="t"))


def test_event_ids_are_stable(store: HodeiStore, fresh_database_url: str) -> None:
    from hodei.store.events import event_id

    job = new_job()
    store.write([job], Meta(actor="t"))
    (stored,) = query(fresh_database_url, "SELECT id FROM domain_events WHERE aggregate_id = %s", (str(job.id),))[0]
    assert stored == event_id(str(job.id), 1)
    assert isinstance(stored, UUID)
    # The derivation every log written so far holds (replay derives the ids of a saga's
    # moves again): uuid5 in Hodei's event namespace.
    assert event_id(str(job.id), 7) == uuid5(UUID("0f7cbe4e-3a55-4f76-9a73-0d3e7f4c1b21"), f"{job.id}/7")


@given(namespace=st.uuids(), name=st.text())
def test_the_ids_projections_derive_as_text_are_uuid5s(namespace: UUID, name: str) -> None:
    from hodei.store.events import uuid5_text

    assert uuid5_text(namespace, name) == str(uuid5(namespace, name))


def test_a_silent_worker_whose_job_ended_is_not_stale(store: HodeiStore) -> None:
    """Under load a worker's release can come long after its agent exited: a worker whose
    job already has its result is done, not lost."""

    found = {}
    for outcome in ("running", "finished"):
        job = new_job()
        worker = new_worker(job, ProviderType.LOCAL)
        worker.register("session", "host", datetime.now(UTC))
        worker.dispatch(str(job.id))
        job.assign(str(worker.id), str(PROVIDER_IDS[ProviderType.LOCAL]), "local")
        job.accept(str(worker.id))
        if outcome == "finished":
            job.finish(str(worker.id), JobState.SUCCEEDED, 0, None)
        store.write([job, worker], Meta(actor="t"))
        found[outcome] = worker.id
    time.sleep(0.05)
    stale = {s.worker_id for s in Liveness(store.pool, "test").stale(0.01, heard_for=3600.0)}
    assert found["running"] in stale
    assert found["finished"] not in stale


def test_each_worker_is_lost_after_its_own_timeout(store: HodeiStore) -> None:
    """A worker given a longer pace at registration (a server with many workers) may be
    silent longer; a worker without one gets the configured timeout."""
    liveness = Liveness(store.pool, "test")
    found = {}
    for name in ("paced", "long", "unpaced"):
        job = new_job()
        worker = new_worker(job, ProviderType.LOCAL)
        worker.register("session", "host", datetime.now(UTC))
        store.write([job, worker], Meta(actor="t"))
        if name != "unpaced":
            liveness.touch(worker.id, connected=False, timeout=0.01 if name == "paced" else 3600)
        found[name] = worker.id
    time.sleep(0.05)
    stale = {s.worker_id: s.timeout for s in liveness.stale(0.02, heard_for=3600.0)}
    assert stale == {found["paced"]: 0.01, found["unpaced"]: 0.02}


def test_what_a_heartbeat_says_a_job_uses_is_kept_until_another_says_otherwise(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """`job top`: a heartbeat's usage is written with its sign of life; a later message
    that says none (a log batch) keeps it, in memory before the flush and in the table."""
    liveness = Liveness(store.pool, "test")
    job = new_job()
    worker = new_worker(job, ProviderType.LOCAL)
    worker.register("session", "host", datetime.now(UTC))
    store.write([job, worker], Meta(actor="t"))
    liveness.seen(worker.id, connected=True, usage=Usage(0.5, 2**20))
    liveness.seen(worker.id, connected=True)  # a log batch after it
    assert liveness.flush() == 1
    sql = "SELECT cpu_cores, memory_bytes, usage_at IS NOT NULL FROM hodei.worker_liveness"
    assert query(fresh_database_url, sql) == [(0.5, 2**20, True)]
    liveness.seen(worker.id, connected=True)
    liveness.flush()
    assert query(fresh_database_url, sql) == [(0.5, 2**20, True)]
    liveness.seen(worker.id, connected=True, usage=Usage(None, 3 * 2**20))  # no CPU figure (cgroup v1)
    liveness.flush()
    assert query(fresh_database_url, sql) == [(None, 3 * 2**20, True)]


def test_the_heartbeat_pace_stretches_past_the_servers_rate() -> None:
    pace = Pace(interval=2.0, timeout=10.0, max_per_second=100.0)
    assert pace.for_workers(0) == (2.0, 10.0)
    assert pace.for_workers(199) == (2.0, 10.0)  # 200 workers at 2 s: 100 heartbeats a second
    interval, timeout = pace.for_workers(999)
    assert (interval, timeout) == (10.0, 50.0)
    assert 1000 / interval == pace.max_per_second


# Read models with a few thousand rows each, written straight into the tables (and rolled back).
_FILL = [
    "INSERT INTO jobs (id, name, state, spec, attempt, max_attempts, created_at, updated_at) "
    "SELECT gen_random_uuid(), 'j', 'RUNNING', '{}', 1, 1, now(), now() FROM generate_series(1, 5000)",
    "INSERT INTO workers (id, job_id, attempt, state, provider_id, provider_type, created_at, updated_at) "
    "SELECT gen_random_uuid(), id, 1, 'BUSY', gen_random_uuid(), 'local', now(), now() FROM jobs",
    "INSERT INTO sagas (id, saga_type, state, correlation_id, attempt, started_at, updated_at) "
    "SELECT gen_random_uuid(), 'EXECUTION', 'IN_PROGRESS', id::text, 1, now(), now() FROM jobs",
    "INSERT INTO saga_steps (id, saga_id, step_name, step_order, state, updated_at) "
    "SELECT gen_random_uuid(), s.id, 'step', o, 'PENDING', now() FROM sagas s, generate_series(0, 4) AS o",
    "INSERT INTO job_log_files (id, job_id, storage_uri, size_bytes, entry_count, created_at) "
    "SELECT gen_random_uuid(), id, 'file:///x', 0, 0, now() FROM jobs",
]


@pytest.mark.parametrize("tables", ["live", "rebuilt", "verified"])
def test_projections_find_their_rows_by_key_in_the_plans_kept_per_connection(store: HodeiStore, tables: str) -> None:
    """A projection statement gets its rows as one jsonb array; planned as 100 rows (what
    jsonb_to_recordset claims), a plan kept per connection scans and hashes a whole read
    model at every event. Those that find rows by key use their indexes: in the live
    tables, and in replay's copies, which have only the keys the projections find rows by
    while the bulk of the log goes in (``replay._NOT_LOOKED_UP``)."""
    from hodei.store import replay
    from hodei.store.sql import names

    keyed = [name for name in names() if name.startswith("project_") and "hodei.rows" in query_text(name)]
    assert len(keyed) >= 15
    with store.pool.connection() as conn, conn.transaction(force_rollback=True):
        if tables == "rebuilt":
            replay._create_rebuild_tables(conn)
            conn.execute(f"SET LOCAL search_path = {replay.REBUILD_SCHEMA}, public")
        elif tables == "verified":
            replay._create_scratch(conn)
            conn.execute(f"SET LOCAL search_path = {replay.SCRATCH_SCHEMA}, public")
        for statement in _FILL:
            conn.execute(statement)
        conn.execute("ANALYZE jobs, workers, sagas, saga_steps, job_log_files")
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        scans = {}
        for name in keyed:
            if "provider_configs" in query_text(name):
                continue  # one row per provider: a scan is the right plan
            conn.execute(f"PREPARE {name} AS " + query_text(name).replace("%s", "$1"))
            plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN EXECUTE {name}('[]')").fetchall())
            conn.execute(f"DEALLOCATE {name}")
            scans[name] = [line.strip() for line in plan.splitlines() if "Seq Scan" in line or "Hash Join" in line]
    assert {name: found for name, found in scans.items() if found} == {}


def test_every_named_query_is_short_enough_for_psycopg_to_cache_its_parse() -> None:
    """psycopg caches a query's conversion (finding its placeholders, a regex over the
    whole text) only for queries of at most MAX_CACHED_STATEMENT_LENGTH characters; a
    longer one is converted again at every execution. The append's statement, with its
    comments, was one: 140 us more for every save."""
    from psycopg import _queries

    from hodei.store.sql import names

    too_long = {
        name: len(query_text(name)) for name in names() if len(query_text(name)) > _queries.MAX_CACHED_STATEMENT_LENGTH
    }
    assert too_long == {}
    assert "--" not in query_text("insert_events_and_outbox")


def test_a_part_several_queries_share_is_written_into_each_and_is_no_query_itself() -> None:
    """job list's filters are one piece of SQL (``-- part: job_filters``) in the job list,
    its count and `report`: a filter added to one is added to all."""
    from hodei.store.sql import names

    terms = "AND (%(labels)s::jsonb IS NULL OR j.spec -> 'labels' @> %(labels)s::jsonb)"
    assert [name for name in ("list_jobs", "count_jobs", "jobs_report") if terms in query_text(name)] == [
        "list_jobs",
        "count_jobs",
        "jobs_report",
    ]
    assert "job_filters" not in names()
    assert [name for name in names() if re.search(r"^\s*@", query_text(name), re.M)] == []


def test_a_choice_fixed_for_a_servers_life_is_written_into_its_query() -> None:
    """The queue's order: as a parameter, PostgreSQL planned both orders' branches at every
    admission round; written in, it plans the one chosen."""
    fair, fifo = query_text("next_in_queue", {"fair": True}), query_text("next_in_queue", {"fair": False})
    assert "%(fair)s" not in fair + fifo and "%(recent)s" in fair
    assert "WHERE NOT FALSE ORDER BY" in fifo and "WHERE NOT TRUE ORDER BY" in fair
    with pytest.raises(KeyError, match=r"query `list_jobs` has no %\(fair\)s"):
        query_text("list_jobs", {"fair": True})


def test_every_projection_statement_reads_its_rows_where_the_projections_place_them() -> None:
    """A projection's row goes to PostgreSQL as an array (``projections.COLUMNS``) that its
    statement reads by place: a column read from the wrong place would write one value
    where another belongs, and a typed read of the wrong type would fail only on a path a
    test happens to run."""
    import re

    from hodei.store import projections
    from hodei.store.sql import names
    from hodei.store.sql import query as query_text

    read = re.compile(r"\((\w)->>?(\d+)\)(?:::\w+)? AS (\w+)")

    def places(name: str, row: str) -> list[tuple[int, str]]:
        return [(int(place), alias) for var, place, alias in read.findall(query_text(name)) if var == row]

    assert set(projections.COLUMNS) == {name for name in names() if name.startswith("project_")}
    for name, columns in projections.COLUMNS.items():
        assert places(name, "e") == list(enumerate(columns)), name
    assert places("project_saga_started", "s") == list(enumerate(projections.STEP_COLUMNS))
    # The append inserts a save's audit rows, read as project_saga_audits reads them.
    assert places("insert_events_and_outbox", "e") == list(enumerate(projections.COLUMNS["project_saga_audits"]))


def test_a_command_about_a_job_reads_its_whole_flow_once_per_try(
    store: HodeiStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job, its worker and its saga come in hand with one read of the flow; a try that
    lost the race reads the flow again and sees the winner's events."""
    job = new_job()
    worker = new_worker(job, ProviderType.DOCKER)
    saga = Saga(saga_type="EXECUTION", correlation_id=str(job.id), attempt=1, steps=["a"], context={})
    store.write([job, worker, saga], Meta(actor="t", correlation_id=str(job.id)))
    other = new_job()
    store.write([other], Meta(actor="t"))
    flows: list[str] = []
    loads: list[str] = []
    select_flow, select_events = store.recorder.select_flow, store.recorder.select_events  # type: ignore[attr-defined]
    monkeypatch.setattr(store.recorder, "select_flow", spy(select_flow, flows))
    monkeypatch.setattr(
        store.recorder, "select_events", spy(select_events, loads, lambda originator_id, **_: str(originator_id))
    )
    seen: list[tuple[int, int]] = []

    def run() -> tuple[None, list[Job]]:
        held = [a.id for a in store.held(Saga)]
        mine = store.load(Job, job.id)
        assert store.load(Worker, worker.id).state is worker.state and held == [saga.id]
        seen.append((mine.version, len(loads)))
        if len(seen) == 1:  # another writer moves the job first: this try loses
            rival: Job = store.repository.get(job.id)  # read apart from what the command has in hand
            rival.select_provider(str(PROVIDER_IDS[ProviderType.DOCKER]), "docker")
            store.write([rival], Meta(actor="rival"))
        store.load(Job, other.id)  # not of the flow: read on its own
        mine.cancel("by the test")
        return None, [mine]

    store.command(Meta(actor="t", correlation_id=str(job.id)), run)
    assert flows == [str(job.id)] * 2
    # Each try read the job, its worker and saga from the flow (no load of their own); the
    # second saw the rival's event. The loads: the rival's and the other job's (each try).
    assert seen == [(1, 0), (2, 2)]
    assert loads == [str(job.id), str(other.id), str(other.id)]
    assert store.load(Job, job.id).state is JobState.CANCELLED


@pytest.mark.parametrize("kept", [True, False])
def test_a_try_kept_unmoved_runs_again_when_its_job_moved_meanwhile(store: HodeiStore, kept: bool) -> None:
    """A saga that starts a WAIT must not miss an event committed while it decided: that
    event's poke read the flow without the WAIT. Kept unmoved, the try that started it
    loses to any event of the job committed after its read, even of another aggregate
    (no version conflict), and runs again seeing it; otherwise it commits as it was."""
    job = new_job()
    saga = Saga(saga_type="EXECUTION", correlation_id=str(job.id), attempt=1, steps=["wait"], context={})
    store.write([job, saga], Meta(actor="t", correlation_id=str(job.id)))
    tries: list[int] = []

    def rival() -> None:  # another transaction, on a connection of its own
        moved: Job = store.repository.get(job.id)
        moved.select_provider(str(PROVIDER_IDS[ProviderType.DOCKER]), "docker")
        store.write([moved], Meta(actor="rival"))

    def run() -> tuple[None, list[Saga]]:
        (waiting,) = store.held(Saga)
        tries.append(store.load(Job, job.id).version)
        if kept:
            store.keep_unmoved()
        if len(tries) == 1:
            thread = threading.Thread(target=rival)
            thread.start()
            thread.join()
        waiting.start_step(0, None, unmissed=kept)
        return None, [waiting]

    store.command(Meta(actor="t", correlation_id=str(job.id)), run)
    assert tries == ([1, 2] if kept else [1])
    assert store.load(Saga, saga.id).steps[0].state.value == "IN_PROGRESS"


def test_a_flow_holds_what_has_not_ended_and_each_row_is_decoded_once(
    store: HodeiStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = new_job()
    worker = new_worker(job, ProviderType.DOCKER)
    worker.terminate("done")
    running = Saga(saga_type="EXECUTION", correlation_id=str(job.id), attempt=1, steps=["a"], context={})
    finished = Saga(saga_type="PROVISIONING", correlation_id=str(job.id), attempt=1, steps=[], context={})
    finished.complete(then=None)
    store.write([job, worker, running, finished], Meta(actor="t", correlation_id=str(job.id)))
    decoded: list[object] = []
    to_domain_event = store.mapper.to_domain_event
    monkeypatch.setattr(store.mapper, "to_domain_event", spy(to_domain_event, decoded))

    def first() -> tuple[None, list[Job]]:
        assert [saga.id for saga in store.held(Saga)] == [running.id]
        assert store.held(Worker) == []
        # What has ended is read apart when asked for.
        assert store.load(Saga, finished.id).state.value == "COMPLETED"
        assert store.load(Worker, worker.id).state.value == "TERMINATED"
        return None, []

    store.command(Meta(actor="t", correlation_id=str(job.id)), first)
    after_first = len(decoded)

    def second() -> tuple[None, list[Job]]:
        assert store.load(Job, job.id).state is JobState.PENDING
        assert [saga.id for saga in store.held(Saga)] == [running.id]
        return None, []

    store.command(Meta(actor="t", correlation_id=str(job.id)), second)
    assert len(decoded) == after_first  # the flow's rows were decoded by the first command only


def current_transaction(pool: ConnectionPool) -> str:
    """The id of the transaction of the command running in this thread, as ``xmin`` shows it."""
    conn = command_connection(pool)
    assert conn is not None, "not inside a command"
    row = conn.execute("SELECT (pg_current_xact_id()::text::bigint % 4294967296)::text").fetchone()
    assert row is not None
    return str(row[0])


def test_a_command_reads_and_writes_in_one_transaction_and_leaves_none_open(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """The flow, a load of its own and the save: one transaction, not one for each read.
    A try that wrote nothing, or failed, leaves no transaction open behind it."""
    job, other = new_job(), new_job()
    store.write([job], Meta(actor="t", correlation_id=str(job.id)))
    store.write([other], Meta(actor="t"))
    read_in: list[str] = []

    def run() -> tuple[None, list[Job]]:
        mine = store.load(Job, job.id)
        store.load(Job, other.id)  # not of the flow: loaded on its own, in the same transaction
        read_in.append(current_transaction(store.pool))
        mine.cancel("by the test")
        return None, [mine]

    store.command(Meta(actor="t", correlation_id=str(job.id)), run)
    written_in = query(
        fresh_database_url,
        "SELECT xmin::text FROM domain_events WHERE aggregate_id = %s AND aggregate_version = 2",
        (str(job.id),),
    )
    assert written_in == [(read_in[0],)]

    def fails() -> tuple[None, list[Job]]:
        store.load(Job, other.id)
        raise ValueError("the decision failed")

    assert store.command(Meta(actor="t", correlation_id=str(job.id)), lambda: (None, [])) is None
    with pytest.raises(ValueError, match="the decision failed"):
        store.command(Meta(actor="t", correlation_id=str(job.id)), fails)
    assert query(
        fresh_database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state <> 'idle' "
        "AND pid <> pg_backend_pid()",
    ) == [(0,)]
    assert store.load(Job, job.id).state is JobState.CANCELLED


def test_what_a_handler_reads_before_its_command_is_part_of_the_commands_transaction(
    store: HodeiStore, fresh_database_url: str
) -> None:
    job = new_job()
    store.write([job], Meta(actor="t", correlation_id=str(job.id)))
    read_in: list[str] = []
    with command_transaction(store.pool):  # what the relay runs each handler in
        store.load(Job, job.id)
        read_in.append(current_transaction(store.pool))

        def run() -> tuple[None, list[Job]]:
            mine = store.load(Job, job.id)
            mine.cancel("by the test")
            return None, [mine]

        store.command(Meta(actor="t", correlation_id=str(job.id)), run)
        store.load(Job, job.id)  # after the command's write: a transaction of its own
        read_in.append(current_transaction(store.pool))
    written_in = query(
        fresh_database_url,
        "SELECT xmin::text FROM domain_events WHERE aggregate_id = %s AND aggregate_version = 2",
        (str(job.id),),
    )
    assert written_in == [(read_in[0],)] and read_in[1] != read_in[0]


def test_an_action_on_another_thread_finds_what_the_try_has_in_hand_and_reads_the_rest_apart(
    store: HodeiStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, other = new_job(), new_job()
    worker = new_worker(job, ProviderType.DOCKER)
    store.write([job, worker], Meta(actor="t", correlation_id=str(job.id)))
    store.write([other], Meta(actor="t"))
    loads: list[str] = []
    select_events = store.recorder.select_events
    monkeypatch.setattr(
        store.recorder, "select_events", spy(select_events, loads, lambda originator_id, **_: str(originator_id))
    )
    seen: dict[str, object] = {}

    def action(worker_id: UUID) -> str:
        seen["worker"] = store.load(Worker, worker_id)
        seen["other"] = store.load(Job, other.id)
        seen["connection"] = command_connection(store.pool)
        return "done"

    def run() -> tuple[None, list[Job]]:
        in_hand = store.load(Worker, worker.id)
        with ThreadPoolExecutor(1) as pool:  # as the engine runs a step's action
            assert pool.submit(store.sharing(action), worker.id).result() == "done"
        assert seen["worker"] is in_hand
        return None, []

    store.command(Meta(actor="t", correlation_id=str(job.id)), run)
    assert loads == [str(other.id)]  # the worker came from the flow, the other job was read apart
    assert seen["connection"] is None  # ... on a connection of its own


def test_a_server_reads_its_peers_at_most_once_a_heartbeat(store: HodeiStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker's start asks for them (its list of servers to dial); they change no
    faster than they beat."""
    servers = [ServerInstances(store.pool, name) for name in ("a", "b", "c")]
    try:
        for server in servers[:2]:
            server.register(["docker"], f"{server.server_id}:1", f"{server.server_id}:2")
        a = servers[0]
        assert [p.server_id for p in a.peers()] == ["b"]
        servers[2].register(["docker"], "c:1", "c:2")
        assert [p.server_id for p in a.peers()] == ["b"]  # as read less than a heartbeat ago
        later = time.monotonic() + HEARTBEAT
        monkeypatch.setattr("hodei.store.instances.time.monotonic", lambda: later)
        assert sorted(p.server_id for p in a.peers()) == ["b", "c"]
    finally:
        for server in servers:
            server.deregister()


def test_a_statement_a_command_runs_commits_or_rolls_back_with_it(store: HodeiStore, fresh_database_url: str) -> None:
    """A registration's liveness record is written in its transaction: a try that fails
    leaves none behind, one that saves writes it with its events."""
    job = new_job()
    worker = new_worker(job, ProviderType.DOCKER)
    store.write([job, worker], Meta(actor="t", correlation_id=str(job.id)))
    liveness = Liveness(store.pool, "server-a")

    def fails() -> tuple[None, list[Worker]]:
        liveness.touch(worker.id, connected=False, timeout=10)
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        store.command(Meta(actor="t", correlation_id=str(job.id)), fails)
    assert query(fresh_database_url, "SELECT count(*) FROM hodei.worker_liveness") == [(0,)]

    def registers() -> tuple[None, list[Worker]]:
        mine = store.load(Worker, worker.id)
        liveness.touch(worker.id, connected=False, timeout=10)
        mine.register("nonce", "host", datetime.now(UTC))
        return None, [mine]

    store.command(Meta(actor="t", correlation_id=str(job.id)), registers)
    (touched,) = query(fresh_database_url, "SELECT xmin::text FROM hodei.worker_liveness")
    assert [touched] == query(
        fresh_database_url,
        "SELECT xmin::text FROM domain_events WHERE aggregate_id = %s AND event_type = 'WorkerRegistered'",
        (str(worker.id),),
    )


def test_a_gone_workers_liveness_record_is_deleted_and_not_written_again(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """Its stream closing after the worker is forgotten notes one more sign of life: it
    is not written, here nor (once the worker is TERMINATED) by a server that did not
    forget it. Every job used to leave its worker's record behind."""
    job = new_job()
    worker, other = new_worker(job, ProviderType.DOCKER), new_worker(new_job(), ProviderType.DOCKER)
    store.write([job, worker, other], Meta(actor="t", correlation_id=str(job.id)))
    here, elsewhere = Liveness(store.pool, "server-a"), Liveness(store.pool, "server-b")
    for liveness in (here, elsewhere):
        liveness.seen(worker.id, connected=True)
    here.seen(other.id, connected=True)
    here.flush()
    elsewhere.flush()
    recorded = "SELECT worker_id::text FROM hodei.worker_liveness ORDER BY 1"
    assert query(fresh_database_url, recorded) == sorted([(str(worker.id),), (str(other.id),)])

    here.forget(worker.id)
    here.seen(worker.id, connected=False)  # its stream closes
    here.flush()
    assert query(fresh_database_url, recorded) == [(str(other.id),)]

    ended = store.load(Worker, worker.id)
    ended.terminate("done")
    store.write([ended], Meta(actor="t", correlation_id=str(job.id)))
    elsewhere.seen(worker.id, connected=False)
    elsewhere.flush()
    assert query(fresh_database_url, recorded) == [(str(other.id),)]


def test_a_rolled_back_try_keeps_its_connections_prepared_statements(store: HodeiStore) -> None:
    """psycopg would answer the ROLLBACK with DEALLOCATE ALL (one more statement), and
    every statement would be parsed and planned again on that connection: a lost race
    (about one a job) cost both."""
    used: list[psycopg.Connection[Any]] = []

    def loses() -> None:
        with command_transaction(store.pool):
            used.append(command_connection(store.pool))  # type: ignore[arg-type]
            fetch_value(store.pool, "installation_id")  # prepared at first use
            raise ValueError("lost")

    with pytest.raises(ValueError, match="lost"):
        loses()
    (conn,) = used
    assert conn.info.transaction_status is TransactionStatus.IDLE
    statement = query_text("installation_id").strip()
    kept = "SELECT count(*) FROM pg_prepared_statements WHERE statement = %s"
    assert conn.execute(kept, (statement,)).fetchone() == (1,)


def test_a_deadlock_in_a_commands_save_runs_the_whole_command_again(store: HodeiStore, fresh_database_url: str) -> None:
    """PostgreSQL breaks a deadlock by rolling back one transaction: a command's reads
    (and an admission's advisory lock) go with it, so the try runs again from its reads,
    not only its write. Here the command holds row A and its save waits for row B, which
    another transaction holds while it asks for A."""
    job, other = new_job(), new_job()
    store.write([job, other], Meta(actor="t"))
    b_taken, a_taken = threading.Event(), threading.Event()
    tries = []

    def hold_b_then_ask_for_a() -> None:
        with psycopg.connect(fresh_database_url) as conn:
            conn.execute("SET deadlock_timeout = '60s'")  # the command is the one that finds it
            conn.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job.id,))
            b_taken.set()
            assert a_taken.wait(10)
            waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
            deadline = time.monotonic() + 10
            while query(fresh_database_url, waiting)[0][0] == 0:  # the command's save waits for B
                assert time.monotonic() < deadline
                time.sleep(0.02)
            conn.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (other.id,))

    def cancel() -> tuple[None, list[Job]]:
        tries.append(1)
        conn = command_connection(store.pool)
        assert conn is not None
        if len(tries) == 1:
            assert b_taken.wait(10)
            conn.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (other.id,))  # A
            a_taken.set()
        loaded = store.load(Job, job.id)
        loaded.cancel("by the test")
        return None, [loaded]  # its save updates the job's row: B

    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(hold_b_then_ask_for_a)
        store.command(Meta(actor="t", correlation_id=str(job.id)), cancel)
        holder.result(timeout=30)
    assert len(tries) == 2
    assert store.load(Job, job.id).state is JobState.CANCELLED


def test_a_connection_postgresql_ended_while_it_was_idle_is_not_handed_out(
    pool: ConnectionPool, fresh_database_url: str
) -> None:
    """A restart of PostgreSQL (or ``pg_terminate_backend``, a failover) ends every
    connection idle in the pool: each was handed out once more, and the call it served
    failed ("terminating connection due to administrator command": an API call, after the
    outage had ended). Here every idle connection is ended, then each call still works."""
    taken = [pool.getconn() for _ in range(4)]
    pids = [conn.info.backend_pid for conn in taken]
    for conn in taken:
        pool.putconn(conn)
    assert query(fresh_database_url, "SELECT bool_and(pg_terminate_backend(p)) FROM unnest(%s::int[]) p", (pids,)) == [
        (True,)
    ]
    gone = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)"
    eventually(lambda: query(fresh_database_url, gone, (pids,)) == [(0,)], 10, what="the backends gone")
    for _ in range(6):
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_every_connection_notices_a_silent_peer_on_both_sides_unless_the_url_says_otherwise(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpq's timeouts and keepalives on the server's side of each connection, PostgreSQL's
    on its own (e2e/test_faults.py cuts the network); what the URL or PGCONNECT_TIMEOUT
    says wins."""
    ours = "SELECT current_setting('tcp_keepalives_idle'), current_setting('tcp_user_timeout')"
    pool = db.open_pool(fresh_database_url, max_size=1)
    try:
        assert pool.conninfo == db.conninfo(fresh_database_url)
        given = psycopg.conninfo.conninfo_to_dict(pool.conninfo)
        assert {key: given[key] for key in db.NETWORK} == db.NETWORK
        with pool.connection() as conn:
            assert conn.execute(ours).fetchone() == ("10", "20000")
    finally:
        pool.close()
    with db.connect(fresh_database_url) as own:  # the listener's, the instance's
        assert own.execute(ours).fetchone() == ("10", "20000")
        assert own.info.get_parameters()["connect_timeout"] == "10"
    url = f"{fresh_database_url}?keepalives_idle=3&tcp_user_timeout=0"
    kept = psycopg.conninfo.conninfo_to_dict(db.conninfo(url))
    assert (kept["keepalives_idle"], kept["tcp_user_timeout"], kept["keepalives_count"]) == ("3", "0", "3")
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "4")
    assert "connect_timeout" not in psycopg.conninfo.conninfo_to_dict(db.conninfo(fresh_database_url))


def test_once_no_connection_could_be_made_for_a_while_a_caller_is_told_so_and_since_when_at_once(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first 10 s of an outage a caller waits for a connection (a restart, a failover
    pass unnoticed); after that each waited 10 s all the same to hear "couldn't get a
    connection after 10.00 sec". Here PostgreSQL refuses the pool's role (as it refuses
    everyone while it is down or starting), the outage known after 1 s."""
    role = f"hodei_outage_{uuid4().hex[:8]}"
    query(fresh_database_url, f"CREATE ROLE {role} LOGIN")
    pool = db.open_pool(psycopg.conninfo.make_conninfo(fresh_database_url, user=role), max_size=2)
    monkeypatch.setattr(db, "WAIT_FOR_CONNECTION", 1.0)  # known sooner; a call still waits the pool's 10 s
    try:

        def answered() -> bool:
            with db.translate_errors(), pool.connection() as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)

        def told() -> str | None:
            try:
                answered()
            except StoreUnavailable as exc:
                return str(exc) if "since" in str(exc) else None
            return None

        assert answered()
        query(fresh_database_url, f"ALTER ROLE {role} NOLOGIN")
        query(fresh_database_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
        said = eventually(told, 30, what="the outage known")
        assert re.fullmatch(
            r"PostgreSQL is unavailable: no connection to it could be made since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, "
            rf"\d+ s ago \(the last try: .*role \"{role}\" is not permitted to log in\); the server keeps trying",
            said,
        ), said
        waits: list[Any] = []
        with monkeypatch.context() as patch:
            patch.setattr(ConnectionPool, "getconn", spy(ConnectionPool.getconn, waits, lambda _, timeout: timeout))
            with pytest.raises(StoreUnavailable, match="no connection to it could be made since"):
                answered()
        assert waits == [db.WAIT_WHILE_DOWN]  # not the pool's whole wait
        # Back: the first call finds it so (the pool's own next try may be seconds away).
        query(fresh_database_url, f"ALTER ROLE {role} LOGIN")
        assert answered()
        assert told() is None
    finally:
        pool.close()
        query(fresh_database_url, f"DROP ROLE {role}")
