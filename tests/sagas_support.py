"""A saga harness on a real database with providers that succeed, fail, hang or never
register on demand, and a fake worker agent. Side effects are appended to a file so
that a test can count them across processes (the crash tests kill a process)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

from psycopg_pool import ConnectionPool

from hodei.admission import Admission
from hodei.artifacts import ArtifactStore
from hodei.cancels import Children
from hodei.config import RelayConfig, Timing
from hodei.cron import CronJobs
from hodei.domain.job import Job, JobState
from hodei.domain.provider import ProviderType
from hodei.domain.spec import JobSpec
from hodei.domain.worker import Worker, WorkerState
from hodei.errors import ProviderError, StoreUnavailable
from hodei.liveness import Liveness
from hodei.logs import LogStore
from hodei.providers.base import Health, Observation, WorkerLaunch, WorkerProvider
from hodei.providers.registry import ProviderRegistry, register_providers
from hodei.relay import Relay
from hodei.retention import Retention
from hodei.sagas import catalog, routes
from hodei.sagas.deps import SagaDeps
from hodei.sagas.engine import SagaEngine, now
from hodei.signals import Signals
from hodei.store.app import HodeiStore, Meta
from hodei.store.instances import ServerInstances
from hodei.store.job_secrets import JobSecrets
from hodei.store.readmodels import ReadModels
from hodei.sweeper import Sweeper
from hodei.tokens import TokenSigner
from hodei.webhooks import Webhooks

FAST_TIMING = Timing(
    heartbeat_interval=0.5,
    heartbeat_timeout=3.0,
    registration_timeout=5.0,
    token_ttl=60.0,
    kill_grace=1.0,
    orphan_timeout=60.0,
    sweep_interval=0.2,
    reconcile_interval=5.0,
)


class Effects:
    """Side effects, one line each, appended to a file shared by processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def record(self, line: str) -> None:
        with self._lock, self.path.open("a") as handle:
            handle.write(line + "\n")

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines() if self.path.exists() else []


@dataclass
class FakeProvider(WorkerProvider):
    """``mode``: ok | fail | flaky (fails ``flaky_failures`` times, retryable) | hang |
    store-outage (the database is away during the first create)."""

    effects: Effects
    mode: str = "ok"
    flaky_failures: int = 1
    healthy: bool = True
    provider_type: ProviderType = ProviderType.LOCAL
    calls: int = 0
    hang_seconds: float = 30.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _created(self) -> set[str]:
        return {line.split()[1] for line in self.effects.lines() if line.startswith("create ")}

    def _destroyed(self) -> set[str]:
        return {line.split()[1] for line in self.effects.lines() if line.startswith("destroy ")}

    def create_worker(self, launch: WorkerLaunch) -> str:
        self.effects.record(f"call-create {launch.worker_id}")
        with self._lock:
            self.calls += 1
            if self.mode == "fail":
                raise ProviderError("the fake provider refuses to create workers")
            if self.mode == "flaky" and self.calls <= self.flaky_failures:
                raise ProviderError(f"transient failure {self.calls}", retryable=True)
            if self.mode == "flaky-forever":
                raise ProviderError(f"transient failure {self.calls}", retryable=True)
            if self.mode == "store-outage" and self.calls == 1:
                raise StoreUnavailable("PostgreSQL is unavailable: the test cut it")
        if self.mode == "hang":
            time.sleep(self.hang_seconds)
        with self._lock:
            if launch.worker_id not in self._created():
                self.effects.record(f"create {launch.worker_id}")
        return f"fake-{launch.worker_id[:8]}"

    def destroy_worker(self, worker_id: str) -> None:
        self.effects.record(f"call-destroy {worker_id}")
        with self._lock:
            if worker_id in self._created() and worker_id not in self._destroyed():
                self.effects.record(f"destroy {worker_id}")

    def output_tail(self, worker_id: str, lines: int) -> str:
        return f"fake output of {worker_id}\n"

    def observe(self) -> list[Observation]:
        live = self._created() - self._destroyed()
        return [Observation(w, None, f"fake-{w[:8]}", running=True) for w in sorted(live)]

    def health(self) -> Health:
        return Health(self.healthy, "fake provider" if self.healthy else "the fake provider is down")


class Harness:
    """The saga engine, relay and sweeper of one process, on a real database."""

    def __init__(
        self,
        pool: ConnectionPool,
        provider: FakeProvider,
        tmp: Path,
        timing: Timing = FAST_TIMING,
        lease: float = 30.0,
        after_commit: object = None,
    ) -> None:
        self.pool = pool
        self.store = HodeiStore(pool)
        register_providers(self.store, [ProviderType.LOCAL])
        self.provider = provider
        self.registry = ProviderRegistry(self.store, {ProviderType.LOCAL: provider}, {})
        self.liveness = Liveness(pool, "test")
        self.signals = Signals(None)
        self.admission = Admission(self.store, dict.fromkeys(ProviderType, 16))
        self.deps = deps = SagaDeps(
            store=self.store,
            providers=self.registry,
            admission=self.admission,
            signer=TokenSigner(b"k" * 32),
            logs=LogStore(tmp / "logs"),
            timing=timing,
            dial=dict,
            worker_addresses=lambda: ["127.0.0.1:1"],
            clock=now,
            forget_worker=self.liveness.forget,
        )
        self.engine = SagaEngine(self.store, catalog.definitions(deps), after_commit=after_commit)  # type: ignore[arg-type]
        relay_config = RelayConfig(batch_size=50, poll_interval=0.05, lease_seconds=lease, max_attempts=5, threads=8)
        self.relay = Relay(
            pool,
            routes.build(self.engine, self.store, self.admission),
            relay_config,
            f"relay-{uuid4().hex[:6]}",
            self.signals,
        )
        self.sweeper = Sweeper(
            self.store,
            self.engine,
            self.registry,
            self.liveness,
            JobSecrets(pool),
            self.admission,
            ServerInstances(pool, "test"),
            Retention(
                self.store, LogStore(tmp / "logs"), ArtifactStore(tmp / "logs" / "artifacts", 1 << 20), 604800, 2592000
            ),
            CronJobs(self.store, JobSecrets(pool), kill_grace=1.0),
            Children(self.store, 1.0, self.engine.clock),
            Webhooks(self.store, JobSecrets(pool), ReadModels(pool)),
            timing,
            secret_retention=86400,
        )

    def submit(self, job_id: UUID | None = None, **spec: object) -> str:
        values = {"name": "t", "command": "echo hi", "timeout_seconds": 30.0, "provider": "local", **spec}
        job = Job.submit(JobSpec(**values), job_id or uuid4())  # type: ignore[arg-type]
        self.store.write([job], Meta(actor="test", correlation_id=str(job.id)))
        return str(job.id)

    def run(self, until: object, timeout: float = 30.0, agent: bool = True, report: bool = True) -> None:
        """Drains the relay, sweeps, and plays the worker agent until ``until()`` is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.relay.drain(timeout=timeout)
            self.sweeper.expire_steps()
            if agent:
                self.play_agents(report=report)
            if until():  # type: ignore[operator]
                return
            time.sleep(0.05)
        raise AssertionError(f"not done within {timeout}s")

    def play_agents(self, report: bool = True) -> None:
        """What a worker does: register once created, accept run-job, report success.

        With ``report=False`` the worker accepts its job and then never reports a result,
        the way a hung or partitioned worker looks to the server.
        """
        for worker_id in [o.worker_id for o in self.provider.observe()]:
            worker = self.store.find(Worker, worker_id)
            if worker is None:
                continue
            meta = Meta(actor=f"worker:{worker_id}", correlation_id=worker.job_id)
            if worker.state in (WorkerState.CREATING, WorkerState.CONNECTING):
                worker.register(uuid4().hex, "fake", datetime.now(UTC))
                self.store.write([worker], meta)
            elif worker.state is WorkerState.BUSY:
                job = self.store.load(Job, worker.job_id)
                if job.state not in (JobState.ASSIGNED, JobState.RUNNING) or job.worker_id != str(worker.id):
                    continue
                if report:
                    job.finish(str(worker.id), JobState.SUCCEEDED, 0, None)
                elif job.state is JobState.ASSIGNED:
                    job.accept(str(worker.id))
                else:
                    continue
                self.store.write([job], meta)

    def close(self) -> None:
        self.relay.close()
        self.engine.close()
