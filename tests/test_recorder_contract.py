"""The contract with the eventsourcing library: our recorder implements its public
ApplicationRecorder interface, and the library's repository works through it."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import metadata
from typing import Any, cast
from uuid import uuid4

import grpc
import pytest
from eventsourcing.persistence import ApplicationRecorder

from hodei.domain.job import Job, JobState
from hodei.domain.saga import Saga, StepState
from hodei.domain.spec import JobSpec
from hodei.errors import ConcurrencyConflict
from hodei.store.app import HodeiStore, Meta
from hodei.store.events import EventRecord, event_id, unpack
from hodei.store.recorder import DomainEventRecorder

# The servicer method called here reads nothing of its context.
NO_CONTEXT = cast(grpc.ServicerContext, None)


def job_with_five_events(store: HodeiStore) -> Job:
    job = Job.submit(JobSpec(name="c", command="true", timeout_seconds=5, env={"K": "v"}), uuid4())
    worker = str(uuid4())
    job.select_provider("11111111-1111-1111-1111-111111111111", "docker")
    job.assign(worker, "11111111-1111-1111-1111-111111111111", "docker")
    job.accept(worker)  # JobAccepted + JobStatusChanged
    store.write([job], Meta(actor="t"))
    return store.load(Job, job.id)


def test_the_library_minor_version_is_the_pinned_one() -> None:
    assert metadata.version("eventsourcing").startswith("9.5."), "the recorder is written against 9.5"


def test_the_store_uses_our_recorder_through_the_public_interface(store: HodeiStore) -> None:
    assert isinstance(store.recorder, DomainEventRecorder)
    assert isinstance(store.recorder, ApplicationRecorder)
    with pytest.raises(NotImplementedError, match="outbox relay"):
        store.recorder.subscribe()


def test_select_events_honours_gt_lte_desc_and_limit(store: HodeiStore) -> None:
    job = job_with_five_events(store)
    recorder = store.recorder

    def versions(**kw: Any) -> list[int]:
        return [e.originator_version for e in recorder.select_events(job.id, **kw)]

    assert versions() == [1, 2, 3, 4, 5]
    assert versions(gt=2) == [3, 4, 5]
    assert versions(lte=3) == [1, 2, 3]
    assert versions(gt=1, lte=4) == [2, 3, 4]
    assert versions(desc=True, limit=2) == [5, 4]
    assert versions(limit=1) == [1]


def test_stored_events_decode_to_the_events_that_were_saved(store: HodeiStore) -> None:
    original = Job.submit(JobSpec(name="c", command="echo x", timeout_seconds=5, args=("-c", "y")), uuid4())
    pending = list(original.pending_events)
    store.write([original], Meta(actor="t"))
    (stored,) = store.recorder.select_events(original.id)
    decoded = store.mapper.to_domain_event(stored)
    assert type(decoded) is type(pending[0])
    assert vars(decoded) == vars(pending[0])


def test_the_repository_rebuilds_an_aggregate_at_any_version(store: HodeiStore) -> None:
    job = job_with_five_events(store)
    assert store.repository.get(job.id).state is JobState.RUNNING
    assert store.repository.get(job.id, version=3).state is JobState.ASSIGNED
    assert store.repository.get(job.id, version=1).state is JobState.PENDING


def test_notifications_follow_positions(store: HodeiStore) -> None:
    recorder = store.recorder
    first = job_with_five_events(store)
    positions = recorder.insert_events([])
    assert positions == []
    second = job_with_five_events(store)
    top = recorder.max_notification_id()
    assert top is not None
    everything = recorder.select_notifications(start=None, limit=1000)
    assert [n.id for n in everything] == sorted(n.id for n in everything)
    assert everything[-1].id == top
    ids = [n.id for n in everything]
    middle = ids[len(ids) // 2]
    assert [n.id for n in recorder.select_notifications(start=middle, limit=3)] == ids[
        ids.index(middle) : ids.index(middle) + 3
    ]
    assert (
        recorder.select_notifications(start=middle, limit=1, inclusive_of_start=False)[0].id
        == ids[ids.index(middle) + 1]
    )
    assert [n.id for n in recorder.select_notifications(start=None, limit=1000, stop=middle)] == ids[
        : ids.index(middle) + 1
    ]
    created = recorder.select_notifications(start=None, limit=100, topics=["hodei.domain.job:Job.JobCreated"])
    assert {n.originator_id for n in created} >= {first.id, second.id}
    assert all(n.topic == "hodei.domain.job:Job.JobCreated" for n in created)


def job_with_an_old_second_event(store: HodeiStore, url: str, event_type: str, payload: str) -> Job:
    """A new job whose second event is stored by hand, in an older version's ``payload``."""
    from hodei.store.events import event_id
    from hodei.testing import query

    job = Job.submit(JobSpec(name="old", command="true", timeout_seconds=5), uuid4())
    store.write([job], Meta(actor="t"))
    query(
        url,
        "INSERT INTO domain_events (id, occurred_at, event_type, aggregate_id, payload, aggregate_type, "
        "aggregate_version, topic) VALUES (%s, now(), %s, %s, %s, 'Job', 2, %s)",
        (event_id(str(job.id), 2), event_type, str(job.id), payload, f"hodei.domain.job:Job.{event_type}"),
    )
    return job


def test_an_old_event_version_is_upcast_when_read(store: HodeiStore, fresh_database_url: str) -> None:
    """A JobStatusChanged stored as version 1 (no ran_from/ran_until, no retry_at, no
    stop_by, no usage, no outputs) still loads, and reads as the current version."""
    from hodei.testing import query

    v1_payload = '{"old_state": "PENDING", "new_state": "CANCELLED", "reason": "old", "exit_code": null}'
    job = job_with_an_old_second_event(store, fresh_database_url, "JobStatusChanged", v1_payload)
    loaded = store.load(Job, job.id)
    assert loaded.state is JobState.CANCELLED
    assert loaded.error_message == "old"
    assert loaded.retry_at is None
    assert loaded.stop_by is None and not loaded.stop_pending
    store.write([Job.submit(JobSpec(name="new", command="true", timeout_seconds=5), uuid4())], Meta(actor="t"))
    (old,) = store.recorder.select_events(job.id, gt=1)
    assert vars(store.mapper.to_domain_event(old))["usage"] is None
    assert vars(store.mapper.to_domain_event(old))["outputs"] is None
    stopped = job_with_an_old_second_event(
        store, fresh_database_url, "JobStopped", '{"worker_id": "w", "exit_code": 143}'
    )
    (old,) = store.recorder.select_events(stopped.id, gt=1)
    assert vars(store.mapper.to_domain_event(old))["usage"] is None  # JobStopped version 1
    new = Job.submit(JobSpec(name="v6", command="true", timeout_seconds=5), uuid4())
    new.cancel("now")
    store.write([new], Meta(actor="t"))
    (version,) = query(
        fresh_database_url,
        "SELECT payload->>'class_version' FROM domain_events WHERE aggregate_id = %s AND aggregate_version = 2",
        (str(new.id),),
    )[0]
    assert version == "6"


def test_a_version_1_job_created_loads_and_projects_like_a_new_one(store: HodeiStore, fresh_database_url: str) -> None:
    """JobCreated version 1 had the spec's fields at the top level: it still loads, and
    replay projects it exactly as the live projection did then."""
    from hodei.store.events import event_id
    from hodei.store.replay import verify
    from hodei.testing import query

    job_id = uuid4()
    v1_payload = (
        '{"name": "old", "command": "echo hi", "args": [], "env": {"A": "1"}, "timeout_seconds": 30.0, '
        '"provider": "local", "resources": {"cpu_cores": 0.0, "memory_bytes": 0}, "labels": {}, '
        '"working_dir": "", "max_attempts": 2, "originator_topic": "hodei.domain.job:Job"}'
    )
    spec_v1 = (
        '{"name": "old", "command": "echo hi", "args": [], "env": {"A": "1"}, "timeout_seconds": 30.0, '
        '"provider": "local", "resources": {"cpu_cores": 0.0, "memory_bytes": 0}, "labels": {}, '
        '"working_dir": "", "max_attempts": 2}'
    )
    query(
        fresh_database_url,
        "INSERT INTO domain_events (id, occurred_at, event_type, aggregate_id, payload, aggregate_type, "
        "aggregate_version, topic) VALUES (%s, now(), 'JobCreated', %s, %s, 'Job', 1, "
        "'hodei.domain.job:Job.JobCreated')",
        (event_id(str(job_id), 1), str(job_id), v1_payload),
    )
    # What the version-1 projection wrote at the time.
    query(
        fresh_database_url,
        "INSERT INTO jobs (id, name, state, spec, attempt, max_attempts, created_at, updated_at) "
        "SELECT %s, 'old', 'PENDING', %s::jsonb, 1, 2, occurred_at, occurred_at FROM domain_events WHERE id = %s",
        (job_id, spec_v1, event_id(str(job_id), 1)),
    )
    loaded = store.load(Job, job_id)
    assert loaded.spec == JobSpec(
        name="old", command="echo hi", timeout_seconds=30.0, env={"A": "1"}, provider="local", max_attempts=2
    )
    assert loaded.sealed_secrets == {}
    assert loaded.retry_of is None and loaded.request_digest is None  # versions 3 and 4 added them
    count, differences = verify(store.pool)
    assert count >= 1
    assert differences == []


def test_a_version_1_provider_selection_loads_and_projects_as_not_admitted(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """JobProviderSelected version 1 had no ``admitted``: every job then waited in the
    queue for a JobAdmitted. It loads and replays as a choice that admitted nothing."""
    from hodei.store.events import event_id
    from hodei.store.replay import verify
    from hodei.testing import query

    v1_payload = '{"provider_id": "11111111-1111-1111-1111-111111111111", "provider_type": "local"}'
    job = job_with_an_old_second_event(store, fresh_database_url, "JobProviderSelected", v1_payload)
    # What the version-1 projection wrote at the time.
    query(
        fresh_database_url,
        "UPDATE jobs SET provider_type = 'local', selected_provider_id = '11111111-1111-1111-1111-111111111111', "
        "updated_at = e.occurred_at FROM domain_events e WHERE jobs.id = %s AND e.id = %s",
        (str(job.id), event_id(str(job.id), 2)),
    )
    loaded = store.load(Job, job.id)
    assert (loaded.provider_type, loaded.admitted) == ("local", False)
    count, differences = verify(store.pool)
    assert count >= 2
    assert differences == []


def test_our_transcoder_decodes_every_stored_state_as_the_librarys_does(store: HodeiStore) -> None:
    """HodeiStore decodes with orjson (PlainJSONTranscoder); what comes out must be what
    the library's own JSONTranscoder gives, wrapped values included."""
    from decimal import Decimal

    from eventsourcing.persistence import JSONTranscoder

    from hodei.store.app import PlainJSONTranscoder

    library = JSONTranscoder()
    store.register_transcodings(library)
    assert isinstance(store.mapper.transcoder, PlainJSONTranscoder)
    job = job_with_five_events(store)
    stored = store.recorder.select_events(job.id)
    states = [s.state for s in stored] + [
        library.encode({"timestamp": datetime.now(UTC), "nested": {"when": datetime.now(UTC), "n": Decimal("1.5")}}),
        b'{"timestamp": 5}',
        library.encode({"timestamp": datetime.now(UTC), "text": 'a "_type_" inside a string'}),
    ]
    for state in states:
        assert store.mapper.transcoder.decode(state) == library.decode(state)


def moved_saga(store: HodeiStore) -> tuple[Saga, list[Any]]:
    """A saga started and moved two steps on in one save (three events), as the engine does."""
    saga = Saga(
        saga_type="PROVISIONING",
        correlation_id=str(uuid4()),
        attempt=1,
        steps=["a", "b"],
        context={},
        moves_at_once=True,
    )
    saga.run_step(0, "2026-01-01T00:00:00+00:00", {"worker_id": "w"})
    saga.start_step(1, None)
    pending = list(saga.pending_events)
    store.write([saga], Meta(actor="t", correlation_id=saga.correlation_id))
    return saga, pending


def test_a_sagas_events_of_one_save_are_one_row_and_read_back_as_they_were(
    store: HodeiStore, fresh_database_url: str
) -> None:
    from hodei.testing import query

    saga, pending = moved_saga(store)
    assert len(pending) == 3
    rows = query(
        fresh_database_url,
        "SELECT d.event_type, d.aggregate_version, o.event_type "
        "FROM domain_events d JOIN outbox_events o ON o.id = d.id WHERE d.aggregate_id = %s",
        (str(saga.id),),
    )
    assert rows == [("SagaMoved", 1, "SagaMoved")]  # one row, one outbox row
    # Its events' ids: the row's for the first, each as the recorder derived it.
    [stored] = query(
        fresh_database_url,
        "SELECT id, occurred_at, event_type, aggregate_id, aggregate_type, aggregate_version, correlation_id, "
        "actor, payload, topic, position FROM domain_events WHERE aggregate_id = %s",
        (str(saga.id),),
    )
    assert [e.id for e in unpack(EventRecord(*stored))] == [event_id(str(saga.id), version) for version in (1, 2, 3)]
    assert stored[0] == event_id(str(saga.id), 1)
    recorder = store.recorder
    decoded = [store.mapper.to_domain_event(stored) for stored in recorder.select_events(saga.id)]
    assert [type(e) for e in decoded] == [type(e) for e in pending]
    assert [vars(e) for e in decoded] == [vars(e) for e in pending]

    def versions(**kw: Any) -> list[int]:
        return [e.originator_version for e in recorder.select_events(saga.id, **kw)]

    assert versions(gt=1) == [2, 3]
    assert versions(gt=2, lte=2) == []
    assert versions(lte=2) == [1, 2]
    assert versions(desc=True, limit=2) == [3, 2]
    loaded = store.load(Saga, saga.id)
    assert loaded.version == 3
    assert [s.state for s in loaded.steps] == [StepState.COMPLETED, StepState.IN_PROGRESS]
    assert loaded.context == {"worker_id": "w"}
    notified = [n for n in recorder.select_notifications(start=None, limit=100) if n.originator_id == saga.id]
    assert [(n.originator_version, n.topic.rpartition(".")[2]) for n in notified] == [
        (1, "SagaStarted"),
        (2, "StepRan"),
        (3, "StepStarted"),
    ]


def test_a_dead_lettered_row_of_moves_is_listed_by_its_last_move(store: HodeiStore, fresh_database_url: str) -> None:
    """An operator reading dead letters learns which move's delivery gave up (the relay
    routes a row of moves by its last event), not only that a saga moved."""
    from hodei._proto import outbox_pb2
    from hodei.server.outbox_api import OutboxService
    from hodei.testing import query

    saga, _ = moved_saga(store)
    query(
        fresh_database_url,
        "UPDATE outbox_events SET status = 'DEAD_LETTER', attempts = 8, last_error = 'boom' WHERE aggregate_id = %s",
        (str(saga.id),),
    )
    listed = OutboxService(store.pool).ListDeadLetters(outbox_pb2.ListDeadLettersRequest(limit=10), NO_CONTEXT)
    assert [(row.event_type, row.aggregate_id, row.job_id, row.last_error) for row in listed.dead_letters] == [
        ("SagaMoved: StepStarted b", str(saga.id), saga.correlation_id, "boom")
    ]


def test_a_row_of_moves_guards_every_version_it_holds(store: HodeiStore) -> None:
    """Writers that loaded the saga at the same version: only one of them saves, whether
    the winner wrote one row of several events and the loser one event, or the other way."""
    for winner_moves_twice in (True, False):
        saga, _ = moved_saga(store)
        winner, loser = store.load(Saga, saga.id), store.load(Saga, saga.id)
        for moving_twice, writer in ((winner_moves_twice, winner), (not winner_moves_twice, loser)):
            writer.complete_step(1, {})
            if moving_twice:
                writer.complete(then=None)
        store.write([winner], Meta(actor="t"))
        with pytest.raises(ConcurrencyConflict):
            store.write([loser], Meta(actor="t"))
        assert store.load(Saga, saga.id).version == (5 if winner_moves_twice else 4)


def test_autovacuum_can_vacuum_and_analyze_the_log_while_a_writer_holds_its_turn(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """Writers take turns on the log with an advisory lock: a table lock, held by one writer
    after another, locked autovacuum out of a busy log (it skips a table whose lock is not
    available), so the log was never analyzed and every connection's plans from when it was
    small read all of it."""
    import psycopg

    from hodei.store.sql import query as query_text

    store.write([Job.submit(JobSpec(name="a", command="true", timeout_seconds=5), uuid4())], Meta(actor="t"))
    with psycopg.connect(fresh_database_url) as writer, psycopg.connect(fresh_database_url, autocommit=True) as vacuum:
        writer.execute(query_text("lock_domain_events"))  # a writer's turn, until it commits
        vacuum.execute("SET lock_timeout = '500ms'")
        vacuum.execute("VACUUM (ANALYZE) domain_events")
        [(analyzed,)] = vacuum.execute(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'domain_events'"
        ).fetchall()
        assert analyzed
        writer.rollback()


def test_a_writer_that_does_not_ask_for_its_turn_on_the_log_waits_for_it(
    store: HodeiStore, fresh_database_url: str
) -> None:
    """Positions follow commit order only if every writer of the log takes its turn: one
    that inserts without asking (a tool, a COPY) is made to wait by the log's trigger."""
    import psycopg
    from psycopg import errors

    from hodei.store.events import event_id
    from hodei.store.sql import query as query_text

    job = Job.submit(JobSpec(name="a", command="true", timeout_seconds=5), uuid4())
    store.write([job], Meta(actor="t"))
    insert = (
        "INSERT INTO domain_events (id, occurred_at, event_type, aggregate_id, payload, aggregate_type, "
        "aggregate_version, topic) VALUES (%s, now(), 'JobAccepted', %s, '{}', 'Job', 2, %s)"
    )
    with psycopg.connect(fresh_database_url) as writer, psycopg.connect(fresh_database_url) as other:
        writer.execute(query_text("lock_domain_events"))
        other.execute("SET lock_timeout = '300ms'")
        with pytest.raises(errors.LockNotAvailable):
            other.execute(insert, (event_id(str(job.id), 2), str(job.id), "hodei.domain.job:Job.JobAccepted"))
        other.rollback()
        writer.commit()
        other.execute(insert, (event_id(str(job.id), 2), str(job.id), "hodei.domain.job:Job.JobAccepted"))
        other.rollback()
