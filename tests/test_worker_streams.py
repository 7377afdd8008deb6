"""The worker streams' guard against a missed signal: one read of every connected
worker's state wakes exactly the streams that have something to do."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from psycopg_pool import ConnectionPool

from hodei._proto import worker_pb2
from hodei.admission import Admission
from hodei.artifacts import ArtifactStore
from hodei.cron import CronJobs
from hodei.domain.job import Job, JobState
from hodei.domain.provider import PROVIDER_IDS, ProviderType
from hodei.domain.spec import JobSpec
from hodei.domain.worker import Worker, WorkerState
from hodei.faults import Faults
from hodei.limits import Limits
from hodei.liveness import Liveness, Pace
from hodei.logs import LogStore
from hodei.metrics import PlatformMetrics
from hodei.pools import Pools
from hodei.providers.registry import ProviderRegistry
from hodei.sagas.engine import SagaEngine
from hodei.server.worker_channel import WorkerAgentService, WorkerSession
from hodei.signals import Signals
from hodei.store.app import HodeiStore, Meta
from hodei.store.job_secrets import JobSecrets
from hodei.store.readmodels import ReadModels
from hodei.testing import query, spy
from hodei.tokens import TokenSigner
from hodei.webhooks import Webhooks
from tests.sagas_support import Effects, FakeProvider, Harness

LOCAL = str(PROVIDER_IDS[ProviderType.LOCAL])


def _busy_worker(store: HodeiStore, job: Job | None = None) -> tuple[Job, Worker]:
    """A job (a trivial one unless given) assigned to a registered worker that was handed it."""
    job = job or Job.submit(JobSpec(name="stream", command="true", timeout_seconds=30), uuid4())
    worker = Worker(
        job_id=str(job.id),
        attempt=1,
        provider_id=LOCAL,
        provider_type="local",
        token_nonce=uuid4().hex,
        token_expires_at=(datetime.now(UTC) + timedelta(minutes=5)).isoformat(),
    )
    job.select_provider(LOCAL, "local")
    job.assign(str(worker.id), LOCAL, "local")
    worker.register(uuid4().hex, "host", datetime.now(UTC))
    worker.dispatch(str(job.id))
    store.write([job, worker], Meta(actor="test", correlation_id=str(job.id)))
    return job, worker


def _service(
    store: HodeiStore, tmp_path: Path, signals: Signals, pace: Pace, engine: SagaEngine | None = None
) -> WorkerAgentService:
    pool = store.pool
    return WorkerAgentService(
        store,
        TokenSigner(b"k" * 32),
        signals,
        LogStore(tmp_path),
        Liveness(pool, "test"),
        JobSecrets(pool),
        pace,
        Faults(""),
        ProviderRegistry(store, {}, {}),
        PlatformMetrics(
            ReadModels(pool),
            CronJobs(store, JobSecrets(pool), kill_grace=1.0),
            Pools(store),
            Limits(store),
            Webhooks(store, JobSecrets(pool), ReadModels(pool)),
            Admission(store, dict.fromkeys(ProviderType, 16)),
        ),
        engine or SagaEngine(store, {}),  # no sagas: an acceptance moves none
        ArtifactStore(tmp_path / "artifacts", 1 << 20),
    )


def test_one_read_of_every_stream_wakes_only_those_with_something_to_do(store: HodeiStore, tmp_path: Path) -> None:
    signals = Signals(None)  # no listener: every signal is missed
    service = _service(store, tmp_path, signals, Pace(2.0, 10.0, 100.0))
    to_run, running, to_cancel, cancelled, terminated = (_busy_worker(store) for _ in range(5))
    for job, _ in (running, cancelled):
        job.accept(job.worker_id or "")
    for job, _ in (to_cancel, cancelled):
        job.cancel("changed my mind")
    terminated[1].terminate("done")
    store.write([running[0], to_cancel[0], cancelled[0], terminated[1]], Meta(actor="test"))

    async def poll() -> tuple[int, set[str]]:
        sessions = {}
        for name, (_, worker) in {
            "to_run": to_run,
            "running": running,
            "to_cancel": to_cancel,
            "cancelled": cancelled,
            "terminated": terminated,
        }.items():
            session = WorkerSession(service, store.load(Worker, worker.id))
            session.waiter = signals.async_waiter(str(worker.id))
            session.sent_run = name != "to_run"
            session.sent_cancel = name == "cancelled"
            service.sessions[worker.id] = session
            sessions[name] = session
        woken = await asyncio.to_thread(service.poll_sessions)
        await asyncio.sleep(0)  # the wake-ups cross the loop
        return woken, {name for name, s in sessions.items() if s.waiter is not None and s.waiter.take_signal()}

    woken, names = asyncio.run(poll())
    assert names == {"to_run", "to_cancel", "terminated"}
    assert woken == 3


def test_a_worker_is_given_a_slower_pace_once_the_servers_workers_have_grown(store: HodeiStore, tmp_path: Path) -> None:
    """Its longer timeout is noted with the heartbeat that gets the new pace; until the
    pace would be a quarter slower, heartbeats get no answer."""
    service = _service(store, tmp_path, Signals(None), Pace(2.0, 10.0, max_per_second=1.0))
    heartbeat = worker_pb2.WorkerMessage(heartbeat=worker_pb2.Heartbeat())

    async def beat() -> tuple[list[int], list[float | None]]:
        _, worker = _busy_worker(store)
        session = WorkerSession(service, store.load(Worker, worker.id))
        session.loop = asyncio.get_running_loop()
        service.sessions[worker.id] = session
        paces, timeouts = [], []
        for others in (1, 3, 4, 5):  # fleets of 2, 4, 5, 6: paces of 2, 4, 5, 6 s
            for _ in range(len(service.sessions) - 1, others):
                service.sessions[uuid4()] = session
            answered = await session._handle(heartbeat)
            await asyncio.sleep(0)
            sent = [] if session.outgoing.empty() else [session.outgoing.get_nowait()]
            assert answered == bool(sent)
            paces += [m.heartbeat_ack.heartbeat_interval_ms for m in sent]
            timeouts.append(service.liveness._noted[worker.id][2])
            service.liveness._noted.clear()
        return paces, timeouts

    paces, timeouts = asyncio.run(beat())
    assert paces == [4000, 5000]  # 6 s is not a quarter slower than 5 s
    assert timeouts == [None, 20.0, 25.0, None]


def test_handing_over_the_job_reads_the_state_and_its_secrets_in_one_transaction(
    store: HodeiStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signals = Signals(None)
    service = _service(store, tmp_path, signals, Pace(2.0, 10.0, 100.0))
    job_id = uuid4()
    sealed = service.secrets.seal(job_id, {"TOKEN": "s3cret"})
    spec = JobSpec(name="stream", command="true", timeout_seconds=30, secret_names=("TOKEN",))
    _, worker = _busy_worker(store, Job.submit(spec, job_id, sealed))
    session = WorkerSession(service, store.load(Worker, worker.id))
    taken: list[object] = []
    getconn = store.pool.getconn
    monkeypatch.setattr(store.pool, "getconn", spy(getconn, taken, lambda *_, **__: 1))

    async def sync() -> list[worker_pb2.ServerMessage]:
        session.loop = asyncio.get_running_loop()
        assert await asyncio.to_thread(session._sync)
        await asyncio.sleep(0)  # the message crosses the loop
        return [session.outgoing.get_nowait() for _ in range(session.outgoing.qsize())]

    (sent,) = asyncio.run(sync())
    assert sent.run_job.secrets["TOKEN"] == "s3cret"
    assert len(taken) == 1  # the state, the sealed values and the key: one connection, one transaction


def test_a_workers_report_moves_its_jobs_saga_in_its_own_transaction(
    pool: ConnectionPool, fresh_database_url: str, tmp_path: Path
) -> None:
    """An acceptance (as a result): no delivery of its JobStatusChanged is left to poke
    the saga. The wait ends in the acceptance's commit, and the row is written delivered.
    A result that requeues the job is delivered: that starts the next attempt."""
    h = Harness(pool, FakeProvider(Effects(tmp_path / "effects.log")), tmp_path)
    try:
        job_id = h.submit(retries=1)
        wait = (
            "SELECT st.state, st.xmin::text FROM saga_steps st JOIN sagas s ON s.id = st.saga_id "
            "WHERE s.correlation_id = %s AND st.step_name = 'wait_for_acceptance'"
        )

        def waiting() -> bool:
            return [state for state, _ in query(fresh_database_url, wait, (job_id,))] == ["IN_PROGRESS"]

        deadline = time.monotonic() + 30
        while not waiting():
            assert time.monotonic() < deadline, "the job was never dispatched"
            h.relay.drain(timeout=10)
            for worker in (h.store.find(Worker, o.worker_id) for o in h.provider.observe()):
                if worker is not None and worker.state in (WorkerState.CREATING, WorkerState.CONNECTING):
                    worker.register(uuid4().hex, "fake", datetime.now(UTC))
                    h.store.write([worker], Meta(actor=f"worker:{worker.id}", correlation_id=job_id))
        worker_id = h.store.load(Job, job_id).worker_id
        assert worker_id is not None
        service = _service(h.store, tmp_path, h.signals, Pace(2.0, 10.0, 100.0), h.engine)
        session = WorkerSession(service, h.store.load(Worker, worker_id))
        session._update_job(lambda job: job.accept(worker_id))
        rows = query(
            fresh_database_url,
            "SELECT e.event_type, o.status, o.attempts, e.xmin::text FROM domain_events e "
            "JOIN outbox_events o ON o.id = e.id WHERE e.correlation_id = %s "
            "AND e.event_type IN ('JobAccepted', 'JobStatusChanged') ORDER BY e.position",
            (job_id,),
        )
        ((step_state, step_writer),) = query(fresh_database_url, wait, (job_id,))
        session._update_job(lambda job: job.finish(worker_id, JobState.FAILED, 1, "exited with code 1"))
        requeued = query(
            fresh_database_url,
            "SELECT o.status FROM domain_events e JOIN outbox_events o ON o.id = e.id "
            "WHERE e.aggregate_id = %s AND e.payload->>'new_state' = 'PENDING'",
            (job_id,),
        )
    finally:
        h.close()
    assert requeued == [("PENDING",)]
    (accepted, accepted_status, _, writer), (changed, changed_status, attempts, _) = rows
    assert (accepted, changed) == ("JobAccepted", "JobStatusChanged")
    assert (changed_status, attempts) == ("PUBLISHED", 0)  # written delivered, never claimed
    assert accepted_status == "PENDING"  # no route, but no relay here to say so: left to a claim
    assert (step_state, step_writer) == ("COMPLETED", writer)
