"""The saga engine and the three sagas, against a real database and fake providers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from hodei.errors import StoreUnavailable
from hodei.store.app import Meta
from hodei.store.events import EventRecord, unpack
from hodei.testing import query
from tests.sagas_support import FAST_TIMING, Effects, FakeProvider, Harness


@pytest.fixture
def effects(tmp_path: Path) -> Effects:
    return Effects(tmp_path / "effects.log")


def harness(pool: ConnectionPool, tmp_path: Path, effects: Effects, **provider: Any) -> Harness:
    return Harness(pool, FakeProvider(effects, **provider), tmp_path)


def sagas(url: str, job_id: str) -> list[tuple[str, str]]:
    return query(url, "SELECT saga_type, state FROM sagas WHERE correlation_id = %s ORDER BY started_at", (job_id,))


def steps(url: str, job_id: str, saga_type: str) -> list[tuple[Any, ...]]:
    return query(
        url,
        "SELECT st.step_name, st.state, st.retry_count, st.error_message FROM saga_steps st "
        "JOIN sagas s ON s.id = st.saga_id WHERE s.correlation_id = %s AND s.saga_type = %s ORDER BY st.step_order",
        (job_id, saga_type),
    )


def audit(url: str, job_id: str, saga_type: str) -> list[tuple[str, str | None]]:
    return query(
        url,
        "SELECT a.event_type, a.step_name FROM saga_audit_events a JOIN sagas s ON s.id = a.saga_id "
        "WHERE s.correlation_id = %s AND s.saga_type = %s ORDER BY a.occurred_at",
        (job_id, saga_type),
    )


def _what(payload: dict[str, Any]) -> str:
    return str(payload.get("step_name") or payload.get("saga_type") or payload.get("then") or "")


def job_row(url: str, job_id: str) -> tuple[Any, ...]:
    return query(url, "SELECT state, error_message FROM jobs WHERE id = %s", (job_id,))[0]


def test_a_job_goes_through_provisioning_and_execution(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    h = harness(pool, tmp_path, effects)
    job_id = h.submit()
    h.run(
        lambda: (
            len(sagas(fresh_database_url, job_id)) == 2
            and all(s == "COMPLETED" for _, s in sagas(fresh_database_url, job_id))
        )
    )
    assert job_row(fresh_database_url, job_id) == ("SUCCEEDED", None)
    assert [s for s, *_ in steps(fresh_database_url, job_id, "PROVISIONING")] == [
        "select_provider",
        "wait_for_slot",
        "register_worker",
        "create_worker",
        "wait_for_registration",
    ]
    assert {state for _, state, *_ in steps(fresh_database_url, job_id, "EXECUTION")} == {"COMPLETED"}
    (worker_id,) = {line.split()[1] for line in effects.lines()}
    assert effects.lines() == [
        f"call-create {worker_id}",
        f"create {worker_id}",
        f"call-destroy {worker_id}",
        f"destroy {worker_id}",
    ]
    assert query(fresh_database_url, "SELECT state FROM workers WHERE id = %s", (worker_id,)) == [("TERMINATED",)]
    trail = audit(fresh_database_url, job_id, "PROVISIONING")
    assert trail[0] == ("SagaStarted", None) and trail[-1] == ("SagaCompleted", None)
    h.close()


def test_a_step_failing_after_two_successes_compensates_them_in_reverse(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    h = harness(pool, tmp_path, effects, mode="flaky-forever")
    job_id = h.submit()
    h.run(lambda: sagas(fresh_database_url, job_id) == [("PROVISIONING", "FAILED")], agent=False)
    assert steps(fresh_database_url, job_id, "PROVISIONING") == [
        ("select_provider", "COMPENSATED", 0, None),
        ("wait_for_slot", "COMPENSATED", 0, None),
        ("register_worker", "COMPENSATED", 0, None),
        ("create_worker", "FAILED", 2, "transient failure 3"),
        ("wait_for_registration", "PENDING", 0, None),
    ]
    assert audit(fresh_database_url, job_id, "PROVISIONING") == [
        ("SagaStarted", None),
        ("StepStarted", "select_provider"),
        ("StepCompleted", "select_provider"),
        ("StepStarted", "wait_for_slot"),
        ("StepCompleted", "wait_for_slot"),
        ("StepStarted", "register_worker"),
        ("StepCompleted", "register_worker"),
        ("StepStarted", "create_worker"),
        ("StepFailed", "create_worker"),
        ("StepStarted", "create_worker"),
        ("StepFailed", "create_worker"),
        ("StepStarted", "create_worker"),
        ("StepFailed", "create_worker"),
        ("CompensationStarted", "register_worker"),
        ("StepCompensated", "register_worker"),
        ("CompensationStarted", "wait_for_slot"),
        ("StepCompensated", "wait_for_slot"),
        ("CompensationStarted", "select_provider"),
        ("StepCompensated", "select_provider"),
        ("SagaFailed", None),
    ]
    state, reason = job_row(fresh_database_url, job_id)
    assert state == "FAILED"
    assert "create_worker failed: transient failure 3" in reason
    assert query(fresh_database_url, "SELECT state FROM workers WHERE job_id = %s", (job_id,)) == [("TERMINATED",)]
    assert query(fresh_database_url, "SELECT error_message FROM sagas WHERE correlation_id = %s", (job_id,))[0][
        0
    ].startswith("step create_worker failed")
    h.close()


def test_a_retryable_failure_is_retried_and_counted(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    h = harness(pool, tmp_path, effects, mode="flaky", flaky_failures=1)
    job_id = h.submit()
    h.run(lambda: job_row(fresh_database_url, job_id)[0] == "SUCCEEDED" and "destroy" in " ".join(effects.lines()))
    create = next(s for s in steps(fresh_database_url, job_id, "PROVISIONING") if s[0] == "create_worker")
    assert create == ("create_worker", "COMPLETED", 1, None)
    h.close()


def test_a_non_retryable_failure_fails_at_once(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    h = harness(pool, tmp_path, effects, mode="fail")
    job_id = h.submit()
    h.run(lambda: sagas(fresh_database_url, job_id) == [("PROVISIONING", "FAILED")], agent=False)
    create = next(s for s in steps(fresh_database_url, job_id, "PROVISIONING") if s[0] == "create_worker")
    assert create == ("create_worker", "FAILED", 0, "the fake provider refuses to create workers")
    h.close()


def test_an_unhealthy_provider_fails_the_job_fast_with_the_reason(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    h = harness(pool, tmp_path, effects, healthy=False)
    job_id = h.submit()
    h.run(lambda: job_row(fresh_database_url, job_id)[0] == "FAILED", agent=False, timeout=10)
    assert "provider local is unhealthy: the fake provider is down" in job_row(fresh_database_url, job_id)[1]
    assert steps(fresh_database_url, job_id, "PROVISIONING")[0][:2] == ("select_provider", "COMPENSATED")
    assert effects.lines() == []
    h.close()


def test_a_sweep_that_finds_postgresql_away_leaves_its_other_checks_to_the_next(
    pool: ConnectionPool, tmp_path: Path, effects: Effects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of a sweep's checks would wait for a connection and fail as the first did (a
    line in the log each, every second of an outage); another failure stops only its check."""
    h = harness(pool, tmp_path, effects)
    ran: list[str] = []

    def check(name: str, fails: Exception | None = None) -> Callable[[], None]:
        def run() -> None:
            ran.append(name)
            if fails is not None:
                raise fails

        return run

    monkeypatch.setattr(h.sweeper, "take_over_dead_servers", check("takeover", RuntimeError("a bug")))
    monkeypatch.setattr(h.sweeper, "expire_steps", check("deadlines", StoreUnavailable("PostgreSQL is unavailable")))
    monkeypatch.setattr(h.sweeper, "detect_lost_workers", check("liveness"))
    h.sweeper.sweep()
    assert ran == ["takeover", "deadlines"]
    monkeypatch.setattr(h.sweeper, "expire_steps", check("deadlines"))
    h.sweeper.sweep()
    assert ran == ["takeover", "deadlines", "takeover", "deadlines", "liveness"]
    h.close()


def test_a_wait_past_its_deadline_fails_and_compensates(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    from dataclasses import replace

    timing = replace(FAST_TIMING, registration_timeout=1.0)
    h = Harness(pool, FakeProvider(effects), tmp_path, timing=timing)
    job_id = h.submit()
    h.run(lambda: sagas(fresh_database_url, job_id) == [("PROVISIONING", "FAILED")], agent=False, timeout=15)
    wait = steps(fresh_database_url, job_id, "PROVISIONING")[4]
    assert wait[:2] == ("wait_for_registration", "FAILED")
    assert "the worker did not register within 1s (HODEI_REGISTRATION_TIMEOUT); it was told to dial" in wait[3]
    assert "its last output: fake output of " in wait[3] and "; deadline " in wait[3]
    # The job's error says it too.
    assert "its last output: fake output of " in (job_row(fresh_database_url, job_id)[1] or "")
    compensations = {"CompensationStarted", "StepCompensated"}
    assert [a for a in audit(fresh_database_url, job_id, "PROVISIONING") if a[0] in compensations] == [
        ("CompensationStarted", "create_worker"),
        ("StepCompensated", "create_worker"),
        ("CompensationStarted", "register_worker"),
        ("StepCompensated", "register_worker"),
        ("CompensationStarted", "wait_for_slot"),
        ("StepCompensated", "wait_for_slot"),
        ("CompensationStarted", "select_provider"),
        ("StepCompensated", "select_provider"),
    ]
    (worker,) = {line.split()[1] for line in effects.lines()}
    assert [x for x in effects.lines() if not x.startswith("call")] == [f"create {worker}", f"destroy {worker}"]
    assert job_row(fresh_database_url, job_id)[0] == "FAILED"
    h.close()


def test_a_wait_met_by_the_time_its_deadline_is_judged_is_met_not_expired(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    """The worker registered before the deadline, but the delivery of its registration (the
    poke that moves the saga on) is late, as in a busy moment: the sweeper finding the step
    overdue checks the wait once more, and it is met. It failed the step, and the job."""
    import time
    from dataclasses import replace
    from datetime import UTC, datetime

    from hodei.domain.worker import Worker

    timing = replace(FAST_TIMING, registration_timeout=1.0)
    h = Harness(pool, FakeProvider(effects), tmp_path, timing=timing)
    job_id = h.submit()
    h.run(lambda: steps(fresh_database_url, job_id, "PROVISIONING")[4][1] == "IN_PROGRESS", agent=False)
    (observed,) = h.provider.observe()
    worker = h.store.load(Worker, observed.worker_id)
    worker.register("session", "fake", datetime.now(UTC))
    h.store.write([worker], Meta(actor=f"worker:{worker.id}", correlation_id=job_id))
    time.sleep(1.2)  # past the deadline, the registration not yet delivered
    h.sweeper.expire_steps()
    assert steps(fresh_database_url, job_id, "PROVISIONING")[4][:2] == ("wait_for_registration", "COMPLETED")
    h.run(lambda: sagas(fresh_database_url, job_id) == [("PROVISIONING", "COMPLETED"), ("EXECUTION", "COMPLETED")])
    assert job_row(fresh_database_url, job_id)[0] == "SUCCEEDED"
    h.close()


def test_every_outbox_row_delivered_twice_has_one_effect(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    h = harness(pool, tmp_path, effects)
    jobs = [h.submit() for _ in range(3)]
    h.run(lambda: all(job_row(fresh_database_url, j)[0] == "SUCCEEDED" for j in jobs) and len(effects.lines()) == 12)
    h.relay.drain()
    before_events = query(fresh_database_url, "SELECT count(*) FROM domain_events")[0][0]
    delivered = query(
        fresh_database_url, "UPDATE outbox_events SET status = 'PENDING', available_at = now() RETURNING id"
    )
    assert len(delivered) == before_events
    h.relay.drain()
    assert query(fresh_database_url, "SELECT count(*) FROM domain_events")[0][0] == before_events
    assert len(effects.lines()) == 12  # each create and destroy called once: nothing ran again
    assert query(fresh_database_url, "SELECT count(*) FROM outbox_events WHERE status <> 'PUBLISHED'") == [(0,)]
    h.close()


def test_a_duplicate_start_command_is_a_no_op(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    from hodei.domain.saga import SagaType

    h = harness(pool, tmp_path, effects)
    job_id = h.submit()
    first = h.engine.start(SagaType.PROVISIONING, job_id, 1, {}, None)
    second = h.engine.start(SagaType.PROVISIONING, job_id, 1, {}, None)
    assert first == second
    assert query(fresh_database_url, "SELECT count(*) FROM sagas WHERE correlation_id = %s", (job_id,)) == [(1,)]
    h.close()


def test_a_hanging_action_times_out(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    from hodei.domain.saga import SagaType

    h = harness(pool, tmp_path, effects, mode="hang", hang_seconds=5)
    definition = h.engine.definitions[SagaType.PROVISIONING]
    create = next(step for step in definition.steps if step.name == "create_worker")
    object.__setattr__(create, "timeout", 0.5)
    job_id = h.submit()
    h.run(lambda: sagas(fresh_database_url, job_id) == [("PROVISIONING", "FAILED")], agent=False, timeout=20)
    step = next(s for s in steps(fresh_database_url, job_id, "PROVISIONING") if s[0] == "create_worker")
    assert step[1] == "FAILED"
    assert "timed out after 0.5s" in step[3]
    assert step[2] == 2  # a timeout is worth retrying
    h.close()


def test_a_job_in_an_image_of_its_own_has_its_pull_time_in_the_step_where_its_provider_pulls(
    pool: ConnectionPool, tmp_path: Path, effects: Effects
) -> None:
    """HODEI_IMAGE_PULL_TIMEOUT (select_provider puts it in the saga's context for a job with
    --image): Docker pulls as it creates the container, the kubelet while the worker has not
    registered; a saga begun before the setting, or a job without an image, has none."""
    from hodei.domain.saga import SagaType
    from hodei.sagas.provisioning import CREATE_WORKER_TIMEOUT

    h = harness(pool, tmp_path, effects)
    definition = h.engine.definitions[SagaType.PROVISIONING]
    create, wait = (
        next(s for s in definition.steps if s.name == name) for name in ("create_worker", "wait_for_registration")
    )
    registration = FAST_TIMING.registration_timeout
    for provider, created, registered in [
        ("docker", CREATE_WORKER_TIMEOUT + 600, registration),
        ("kubernetes", CREATE_WORKER_TIMEOUT, registration + 600),
    ]:
        context = {"provider_type": provider, "image_pull_timeout": 600.0}
        assert (create.timeout_for(context), wait.timeout_for(context)) == (created, registered)
        for none in ({"provider_type": provider}, {"provider_type": provider, "image_pull_timeout": 0.0}):
            assert (create.timeout_for(none), wait.timeout_for(none)) == (CREATE_WORKER_TIMEOUT, registration)
    h.close()


def test_the_server_enforces_the_timeout_when_the_worker_never_reports(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hodei.sagas import execution

    monkeypatch.setattr(execution, "RESULT_MARGIN", 0.5)
    h = harness(pool, tmp_path, effects)
    job_id = h.submit(timeout_seconds=1.0)
    h.run(lambda: job_row(fresh_database_url, job_id)[0] == "TIMEOUT", report=False)
    state, reason = job_row(fresh_database_url, job_id)
    assert state == "TIMEOUT"
    assert "no result within the job's timeout" in reason
    h.run(lambda: ("EXECUTION", "FAILED") in sagas(fresh_database_url, job_id), agent=False)
    assert any(line.startswith("destroy ") for line in effects.lines())
    h.close()


def test_a_cancelled_jobs_worker_that_beats_on_but_never_reports_its_processes_stopped_is_lost(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    """A process can outlive its SIGKILL (an uninterruptible wait), or an agent stick: its
    worker, beating on, held its slot until the job's own timeout ran out (the result's
    wait, 46 s here; a day for `--timeout 1d`). Lost a heartbeat timeout after the SIGKILL
    was due, it is removed and the job's sagas end."""
    from uuid import UUID

    from hodei.domain.job import Job
    from hodei.domain.worker import Worker
    from hodei.store.app import Meta

    h = harness(pool, tmp_path, effects)
    job_id = h.submit(timeout_seconds=30.0)
    h.run(lambda: job_row(fresh_database_url, job_id)[0] == "RUNNING", report=False)
    job = h.store.load(Job, job_id)
    worker_id = UUID(str(job.worker_id))
    job.cancel("by the test", grace=0.0, now=h.engine.clock())
    h.store.write([job], Meta(actor="test", correlation_id=job_id))

    def beat_and_sweep() -> bool:
        h.liveness.touch(worker_id, True, h.deps.timing.heartbeat_timeout)  # its agent beats on
        h.sweeper.detect_lost_workers()
        return not h.store.load(Worker, worker_id).is_live

    assert not beat_and_sweep()  # its SIGKILL is due now: its report may still come
    h.run(beat_and_sweep, timeout=20, agent=False)
    margin = h.deps.timing.heartbeat_timeout
    assert h.store.load(Worker, worker_id).reason == (
        f"its job's processes were not reported stopped {margin:g}s after their SIGKILL"
    )
    h.run(lambda: sagas(fresh_database_url, job_id) == [("PROVISIONING", "COMPLETED"), ("EXECUTION", "COMPLETED")])
    assert any(line.startswith("destroy ") for line in effects.lines())
    assert job_row(fresh_database_url, job_id)[0] == "CANCELLED"
    h.close()


def test_a_worker_silent_through_an_outage_has_its_agents_longest_pause_after_it_to_come_back(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its stream ended in the outage (its result could not be saved); its agent tries again
    at most RETRY_MAX after each attempt, so a heartbeat timeout after the sweeper hears
    again is too soon to call it lost; RETRY_MAX later it is lost."""
    from uuid import UUID

    from hodei_worker.agent import RETRY_MAX

    from hodei.domain.job import Job
    from hodei.domain.worker import Worker

    h = harness(pool, tmp_path, effects)
    job_id = h.submit(timeout_seconds=60.0)
    h.run(lambda: job_row(fresh_database_url, job_id)[0] == "RUNNING", report=False)
    worker_id = UUID(str(h.store.load(Job, job_id).worker_id))
    h.liveness.touch(worker_id, True, h.deps.timing.heartbeat_timeout)
    query(fresh_database_url, "UPDATE hodei.worker_liveness SET last_seen_at = now() - interval '1 hour'")
    timeout = h.deps.timing.heartbeat_timeout
    monkeypatch.setattr(h.sweeper, "_hearing_since", time.monotonic() - timeout - RETRY_MAX + 1)
    h.sweeper.detect_lost_workers()
    assert h.store.load(Worker, worker_id).is_live
    monkeypatch.setattr(h.sweeper, "_hearing_since", time.monotonic() - timeout - RETRY_MAX - 1)
    h.sweeper.detect_lost_workers()
    assert not h.store.load(Worker, worker_id).is_live
    assert h.store.load(Worker, worker_id).reason == f"no heartbeat for {timeout:g}s"
    h.close()


def test_a_check_that_waited_out_a_frozen_postgresql_loses_no_worker_in_the_checks_after_it(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep's first check waits as long as PostgreSQL is frozen; the workers' heartbeats
    could not be written meanwhile. The liveness check after it in the same sweep must not
    count that time as their silence (it lost two workers of e2e/test_faults' frozen run)."""
    from uuid import UUID

    from hodei.domain.job import Job
    from hodei.domain.worker import Worker

    h = harness(pool, tmp_path, effects)
    job_id = h.submit(timeout_seconds=60.0)
    h.run(lambda: job_row(fresh_database_url, job_id)[0] == "RUNNING", report=False)
    worker_id = UUID(str(h.store.load(Job, job_id).worker_id))
    timeout = h.deps.timing.heartbeat_timeout
    h.liveness.touch(worker_id, True, timeout)
    query(fresh_database_url, "UPDATE hodei.worker_liveness SET last_seen_at = now() - interval '1 hour'")
    # Heard without a break for long before the freeze, and swept a moment ago.
    monkeypatch.setattr(h.sweeper, "_hearing_since", time.monotonic() - 3600)
    monkeypatch.setattr(h.sweeper, "_last_sweep", time.monotonic())
    monkeypatch.setattr(h.sweeper, "take_over_dead_servers", lambda: time.sleep(timeout / 2 + 0.5))
    h.sweeper.sweep(reconcile=False)
    assert h.store.load(Worker, worker_id).is_live
    assert h.sweeper.heard_for < timeout
    h.close()


def test_a_job_with_artifacts_is_given_time_to_upload_them_before_its_timeout_is_enforced(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    """Its worker uploads them after the command and before its result: the wait for that
    result lasts ARTIFACTS_MARGIN longer than a job's without artifacts."""
    from hodei.sagas.execution import ARTIFACTS_MARGIN, RESULT_MARGIN

    h = harness(pool, tmp_path, effects)
    plain, keeping = h.submit(timeout_seconds=60.0), h.submit(timeout_seconds=60.0, artifacts=("out",))

    def waits() -> dict[str, float]:
        rows = query(
            fresh_database_url,
            "SELECT s.correlation_id, extract(epoch FROM st.deadline_at - st.started_at) FROM saga_steps st "
            "JOIN sagas s ON s.id = st.saga_id WHERE st.step_name = 'wait_for_result' AND st.state = 'IN_PROGRESS'",
        )
        return {str(job_id): float(seconds) for job_id, seconds in rows}

    h.run(lambda: len(waits()) == 2, report=False)
    grace = h.deps.timing.kill_grace
    assert waits()[plain] == pytest.approx(60.0 + grace + RESULT_MARGIN, abs=0.01)
    assert waits()[keeping] == pytest.approx(60.0 + grace + RESULT_MARGIN + ARTIFACTS_MARGIN, abs=0.01)
    h.close()


def test_a_saga_whose_delivery_is_dead_lettered_is_failed_and_compensated(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    from uuid import UUID

    h = harness(pool, tmp_path, effects)
    job_id = h.submit()
    h.run(lambda: steps(fresh_database_url, job_id, "PROVISIONING")[4][1] == "IN_PROGRESS", agent=False)
    (saga_id,) = query(fresh_database_url, "SELECT id FROM sagas WHERE correlation_id = %s", (job_id,))[0]
    h.engine.abort(UUID(str(saga_id)), job_id, "delivery failed for good: boom")
    h.run(lambda: sagas(fresh_database_url, job_id) == [("PROVISIONING", "FAILED")], agent=False)
    assert steps(fresh_database_url, job_id, "PROVISIONING")[4][1:] == ("FAILED", 0, "delivery failed for good: boom")
    assert job_row(fresh_database_url, job_id)[0] == "FAILED"
    h.close()


def test_a_saga_dead_lettered_before_its_first_step_still_ends_its_job(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    """Regression: when the SagaStarted delivery was dead-lettered, abort found no step
    running, did nothing, and the job stayed PENDING for ever. (Sagas are moved on where
    they start now; one written alone, as older servers did, is in this state.)"""
    from hodei.domain.saga import Saga, SagaType
    from hodei.store.app import Meta

    h = harness(pool, tmp_path, effects)
    job_id = h.submit()
    steps_of = h.engine.definitions[SagaType.PROVISIONING].step_names
    saga = Saga(saga_type="PROVISIONING", correlation_id=job_id, attempt=1, steps=steps_of, context={})
    h.store.write([saga], Meta(actor="test", correlation_id=job_id))
    h.engine.abort(saga.id, job_id, "delivery failed for good: boom")
    h.run(lambda: sagas(fresh_database_url, job_id) == [("PROVISIONING", "FAILED")], agent=False)
    assert steps(fresh_database_url, job_id, "PROVISIONING")[0] == (
        "select_provider",
        "COMPENSATED",
        0,
        "delivery failed for good: boom",
    )
    assert job_row(fresh_database_url, job_id) == (
        "FAILED",
        "provisioning failed: step select_provider failed: delivery failed for good: boom",
    )
    assert effects.lines() == []  # no worker was ever asked for
    h.close()


def test_a_saga_dead_lettered_while_a_step_waits_to_retry_fails_that_step(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    """The lost delivery was the StepFailed that schedules the retry: the step is failed
    for good (not the next one started), and what was done is undone."""
    h = harness(pool, tmp_path, effects, mode="flaky-forever")
    job_id = h.submit()
    h.run(lambda: ("FAILED", 0) in [s[1:3] for s in steps(fresh_database_url, job_id, "PROVISIONING")], agent=False)
    (saga_id,) = query(fresh_database_url, "SELECT id FROM sagas WHERE correlation_id = %s", (job_id,))[0]
    h.engine.abort(saga_id, job_id, "delivery failed for good: boom")
    h.run(lambda: sagas(fresh_database_url, job_id) == [("PROVISIONING", "FAILED")], agent=False)
    assert steps(fresh_database_url, job_id, "PROVISIONING")[3:] == [
        ("create_worker", "FAILED", 1, "delivery failed for good: boom"),
        ("wait_for_registration", "PENDING", 0, None),
    ]
    assert job_row(fresh_database_url, job_id)[0] == "FAILED"
    assert query(fresh_database_url, "SELECT state FROM workers WHERE job_id = %s", (job_id,)) == [("TERMINATED",)]
    h.close()


def test_a_lost_compensation_is_recorded_as_failed_and_the_saga_ends(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    from hodei.domain.provider import ProviderType
    from hodei.domain.saga import SagaType

    h = harness(pool, tmp_path, effects)
    h.admission.defaults[ProviderType.LOCAL] = 0  # no slot: the saga waits at wait_for_slot
    job_id = h.submit()
    saga_id = h.engine.start(SagaType.PROVISIONING, job_id, 1, {}, None)
    h.engine.abort(saga_id, job_id, "delivery failed for good: boom")
    h.engine.abort(saga_id, job_id, "delivery failed for good: the compensation's too")
    h.run(lambda: sagas(fresh_database_url, job_id) == [("PROVISIONING", "FAILED")], agent=False)
    assert steps(fresh_database_url, job_id, "PROVISIONING")[0][:2] == ("select_provider", "COMPENSATION_FAILED")
    (failure,) = query(fresh_database_url, "SELECT error_message FROM sagas WHERE id = %s", (saga_id,))[0]
    assert "compensation of select_provider failed: delivery failed for good: the compensation's too" in failure
    h.close()


def test_a_database_outage_inside_a_step_is_not_the_step_failing(
    pool: ConnectionPool,
    fresh_database_url: str,
    tmp_path: Path,
    effects: Effects,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: PostgreSQL restarting while a wait checked a job failed the step for
    good, and its compensation destroyed a healthy worker. The delivery is tried again."""
    from hodei.errors import StoreUnavailable
    from hodei.sagas.deps import SagaDeps

    reads = {"count": 0}
    job_of = SagaDeps.job

    def away_now_and_then(self: SagaDeps, job_id: str) -> object:
        reads["count"] += 1
        if reads["count"] % 4 == 2:
            raise StoreUnavailable("PostgreSQL is unavailable: the test cut it")
        return job_of(self, job_id)

    monkeypatch.setattr(SagaDeps, "job", away_now_and_then)
    h = harness(pool, tmp_path, effects, mode="store-outage")
    job_id = h.submit()
    h.run(lambda: job_row(fresh_database_url, job_id)[0] == "SUCCEEDED" and "destroy" in " ".join(effects.lines()))
    assert reads["count"] > 4
    failures = [a for a in audit(fresh_database_url, job_id, "PROVISIONING") if a[0] == "StepFailed"]
    assert failures == []
    assert [s[2] for s in steps(fresh_database_url, job_id, "PROVISIONING")] == [0, 0, 0, 0, 0]
    h.close()


def test_sagas_begun_by_an_older_server_are_carried_on(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    """Older servers committed a saga's SagaStarted alone and started EXECUTION in the
    delivery of PROVISIONING's SagaCompleted (which had no `then`); now both happen in the
    transaction before. A log written the old way still runs to the end."""
    from dataclasses import replace

    from hodei.domain.saga import Saga, SagaType
    from hodei.store.app import Meta

    h = harness(pool, tmp_path, effects)
    provisioning = h.engine.definitions[SagaType.PROVISIONING]
    h.engine.definitions = {**h.engine.definitions, SagaType.PROVISIONING: replace(provisioning, then=None)}
    job_id = h.submit()
    begun = Saga(saga_type="PROVISIONING", correlation_id=job_id, attempt=1, steps=provisioning.step_names, context={})
    h.store.write([begun], Meta(actor="test", correlation_id=job_id))
    h.run(lambda: sagas(fresh_database_url, job_id) == [("PROVISIONING", "COMPLETED")])
    assert job_row(fresh_database_url, job_id)[0] == "PENDING"  # no EXECUTION: its start was left to the delivery
    # The SagaCompleted as an older server wrote it (the log's guard set aside), delivered
    # again; it is the last of the moves its transaction recorded (one SagaMoved row).
    h.engine.definitions = {**h.engine.definitions, SagaType.PROVISIONING: provisioning}
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE domain_events DISABLE TRIGGER domain_events_append_only")
        conn.execute(
            "WITH e AS (UPDATE domain_events SET payload = jsonb_set(payload, '{events}', ("
            "  SELECT jsonb_agg(CASE WHEN m->>'event_type' = 'SagaCompleted'"
            "                   THEN jsonb_set(m, '{payload}', (m->'payload') - 'then') ELSE m END ORDER BY n)"
            "  FROM jsonb_array_elements(payload->'events') WITH ORDINALITY AS x(m, n)))"
            ' WHERE aggregate_id = %s AND payload @> \'{"events": [{"event_type": "SagaCompleted"}]}\''
            " RETURNING id) "
            "UPDATE outbox_events SET status = 'PENDING', claimed_by = NULL WHERE id = (SELECT id FROM e)",
            (str(begun.id),),
        )
        conn.execute("ALTER TABLE domain_events ENABLE TRIGGER domain_events_append_only")
    h.run(lambda: sagas(fresh_database_url, job_id) == [("PROVISIONING", "COMPLETED"), ("EXECUTION", "COMPLETED")])
    assert job_row(fresh_database_url, job_id)[0] == "SUCCEEDED"
    h.close()


@pytest.mark.parametrize("older", [True, False])
def test_a_wait_started_by_an_older_server_is_re_checked_at_its_delivery(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects, older: bool
) -> None:
    """Older servers committed a WAIT's StepStarted whatever came meanwhile and re-checked
    it at its delivery: the event that met it may have been handled before the WAIT was
    recorded. Such a StepStarted (no `unmissed`) is still re-checked; an `unmissed` one,
    whose start could miss nothing, is not."""
    h = harness(pool, tmp_path, effects)
    job_id = h.submit()
    waiting = [("wait_for_registration", "IN_PROGRESS")]
    h.run(lambda: [s[:2] for s in steps(fresh_database_url, job_id, "PROVISIONING")][4:] == waiting, agent=False)
    # The worker registers, and its poke is taken as handled before the WAIT was recorded.
    h.play_agents()
    registered = query(
        fresh_database_url,
        "UPDATE outbox_events SET status = 'PUBLISHED' WHERE event_type = 'WorkerRegistered' AND id IN "
        "(SELECT id FROM domain_events WHERE correlation_id = %s) RETURNING id",
        (job_id,),
    )
    assert len(registered) == 1
    # The WAIT's StepStarted delivered again, as an older server wrote it or as it is.
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE domain_events DISABLE TRIGGER domain_events_append_only")
        row = conn.execute(
            "SELECT id, payload->'events' FROM domain_events WHERE correlation_id = %s AND event_type = 'SagaMoved' "
            "ORDER BY position DESC LIMIT 1",
            (job_id,),
        ).fetchone()
        assert row is not None
        row_id, moves = row
        assert moves[-1]["event_type"] == "StepStarted" and moves[-1]["payload"]["unmissed"] is True
        if older:
            del moves[-1]["payload"]["unmissed"]
            conn.execute(
                "UPDATE domain_events SET payload = jsonb_set(payload, '{events}', %s) WHERE id = %s",
                (Jsonb(moves), row_id),
            )
        conn.execute("ALTER TABLE domain_events ENABLE TRIGGER domain_events_append_only")
        conn.execute("UPDATE outbox_events SET status = 'PENDING', claimed_by = NULL WHERE id = %s", (row_id,))
    h.relay.drain()
    state = [s[:2] for s in steps(fresh_database_url, job_id, "PROVISIONING")][4:]
    assert state == ([("wait_for_registration", "COMPLETED")] if older else waiting)
    h.close()


def test_a_saga_runs_its_first_steps_in_the_transaction_that_starts_it(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    h = harness(pool, tmp_path, effects)
    job_id = h.submit()
    h.run(lambda: job_row(fresh_database_url, job_id)[0] == "SUCCEEDED" and "destroy" in " ".join(effects.lines()))
    rows = query(
        fresh_database_url,
        "SELECT e.xmin::text, e.id, e.occurred_at, e.event_type, e.aggregate_id, e.aggregate_type, "
        "e.aggregate_version, e.correlation_id, e.actor, e.payload, e.topic, e.position "
        "FROM domain_events e WHERE e.correlation_id = %s ORDER BY e.position",
        (job_id,),
    )
    together: dict[str, list[list[tuple[str, str]]]] = {}
    for transaction, *row in rows:
        moves = [(e.event_type, _what(e.payload)) for e in unpack(EventRecord(*row))]
        together.setdefault(transaction, []).append(moves)
    groups = list(together.values())
    # A LOCAL step (and a WAIT met at once: the slot taken as the provider was chosen) is
    # one StepRan event, in the saga's first transaction, up to the first ACTION; a saga's
    # events of one transaction are one row.
    first, *selected = groups[1]
    assert first == [
        ("SagaStarted", "PROVISIONING"),
        ("StepRan", "select_provider"),
        ("StepRan", "wait_for_slot"),
        ("StepRan", "register_worker"),
        ("StepStarted", "create_worker"),
    ]
    assert [("JobProviderSelected", "")] in selected  # no JobAdmitted: it says admitted
    (completing,) = [
        g for g in groups if [("StepCompleted", "wait_for_registration"), ("SagaCompleted", "EXECUTION")] in g
    ]
    (execution,) = [moves for moves in completing if moves[0] == ("SagaStarted", "EXECUTION")]
    assert ("StepRan", "dispatch_job") in execution  # EXECUTION's LOCAL steps ran there too
    # The audit trail and the steps' times read as if it had been two events.
    trail = audit(fresh_database_url, job_id, "EXECUTION")
    assert trail[:5] == [
        ("SagaStarted", None),
        ("StepStarted", "assign_worker"),
        ("StepCompleted", "assign_worker"),
        ("StepStarted", "dispatch_job"),
        ("StepCompleted", "dispatch_job"),
    ]
    times = query(
        fresh_database_url,
        "SELECT bool_and(st.started_at < st.completed_at) FROM saga_steps st JOIN sagas s ON s.id = st.saga_id "
        "WHERE s.correlation_id = %s",
        (job_id,),
    )
    assert times == [(True,)]
    # Both say so, for their deliveries: nothing left to start or to move.
    marks = [
        (e.event_type, e.payload.get("moves_at_once"), e.payload.get("then"))
        for row in rows
        for e in unpack(EventRecord(*row[1:]))
        if e.event_type in ("SagaStarted", "SagaCompleted")
    ]
    assert marks == [
        ("SagaStarted", True, None),
        ("SagaCompleted", None, "EXECUTION"),
        ("SagaStarted", True, None),
        ("SagaCompleted", None, None),
    ]
    # A WAIT started unmet committed only on an unmoved flow: its delivery re-checks nothing.
    waits = {
        (e.payload["step_name"], e.payload.get("unmissed"))
        for row in rows
        for e in unpack(EventRecord(*row[1:]))
        if e.event_type == "StepStarted"
    }
    assert {name for name, unmissed in waits if name.startswith("wait_")} == {
        name for name, unmissed in waits if unmissed
    }
    assert ("wait_for_registration", True) in waits
    h.close()


def test_a_step_is_a_function_of_the_deps_and_its_input_alone(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path, effects: Effects
) -> None:
    """Steps are top-level functions in each saga's module; the tables bind them to the
    server's deps, and a test can call one directly."""
    from uuid import uuid4

    from hodei.domain.job import Job
    from hodei.domain.saga import SagaType
    from hodei.errors import InvalidTransition
    from hodei.sagas import provisioning
    from hodei.sagas.engine import StepInput
    from hodei.store.app import Meta

    h = harness(pool, tmp_path, effects)
    job_id = h.submit()
    step = StepInput(uuid4(), SagaType.PROVISIONING, job_id, 1, {}, 0)
    chosen = provisioning.select_provider(h.deps, step)
    assert chosen.output["provider_type"] == "local"
    assert provisioning.wait_for_slot(h.deps, step) is None  # not admitted: it waits
    job = h.store.load(Job, job_id)
    job.cancel("by the test")
    h.store.write([job], Meta(actor="test", correlation_id=job_id))
    with pytest.raises(InvalidTransition, match="while it waited in the queue"):
        provisioning.wait_for_slot(h.deps, step)
    h.close()


def test_a_change_made_with_its_poke_waits_only_briefly_for_a_handler_holding_its_job(
    pool: ConnectionPool, tmp_path: Path, effects: Effects
) -> None:
    """A handler holds its job's lock while its effect runs, and the effect may be the
    stopping of the very worker whose report (``change_job``) is waiting."""
    h = harness(pool, tmp_path, effects)
    try:
        job_id = h.submit()
        done = threading.Event()

        def report() -> None:
            h.engine.change_job(Meta(actor="worker:w", correlation_id=job_id), lambda: (None, []))
            done.set()

        with h.engine._serial(job_id):  # a handler, in its effect
            reporter = threading.Thread(target=report)
            reporter.start()
            assert done.wait(10), "the report waited for the handler to finish"
        reporter.join()
    finally:
        h.close()
