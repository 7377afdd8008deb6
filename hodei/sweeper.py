"""Periodic checks that make every job end and leave nothing behind:

- a server that died (its instance lock is free) has its claimed outbox rows released
  at once, so its sagas go on here within a sweep, not at lease expiry;
- saga steps past their deadline fail (waits for a registration, a result...);
- registered workers without a heartbeat within the timeout are lost, and so are those
  of cancelled jobs that never report the job's processes stopped after their SIGKILL;
- workers whose container, pod or process failed are lost (provider observation);
- resources of this installation whose worker ended, or never existed, are removed
  (the reconciler), at start-up and then every few seconds;
- provider health is probed and changes are recorded;
- queued jobs are admitted where their provider has room, those submitted with --after
  once the jobs they start after ended as asked (cancelled when one ended otherwise);
- the jobs a cancelled job submitted with its API token are cancelled with it (hodei.cancels);
- cron jobs start the job of each time of their schedule that came due (hodei.cron);
- each job that ended is written as a message to each webhook told of it (hodei.webhooks);
- the secrets of jobs that ended longer ago than the retention are shredded, published
  outbox rows, job logs and webhook messages past theirs deleted (hodei.retention).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from hodei_worker.agent import RETRY_MAX

from hodei.admission import Admission
from hodei.cancels import Children
from hodei.config import Timing
from hodei.cron import CronJobs
from hodei.domain.base import uuid_or_none
from hodei.domain.job import Job, JobState
from hodei.domain.worker import LIVE_STATES, Worker, WorkerState
from hodei.errors import StoreUnavailable
from hodei.liveness import Liveness
from hodei.logfields import about
from hodei.providers.base import Observation, WorkerProvider
from hodei.providers.registry import ProviderRegistry
from hodei.retention import Retention
from hodei.roles import SYSTEM
from hodei.sagas.engine import SagaEngine
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import fetch_all
from hodei.store.instances import ServerInstances
from hodei.store.job_secrets import JobSecrets
from hodei.webhooks import Webhooks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    """A worker's and its job's states as recorded, without loading either aggregate."""

    worker_id: UUID
    job_id: UUID
    worker: WorkerState
    job: JobState
    # When the worker's row last changed: for a TERMINATED worker, when it ended.
    changed_at: datetime

    @classmethod
    def of(cls, worker_id: UUID, job_id: UUID, worker: str, job: str, changed_at: datetime) -> Recorded:
        return cls(worker_id, job_id, WorkerState(worker), JobState(job), changed_at)


@dataclass(frozen=True)
class OverdueStep:
    saga_id: UUID
    job_id: str
    step_order: int


@dataclass(frozen=True)
class Unstopped:
    """A live worker of a cancelled job, maybe still stopping its processes."""

    worker_id: UUID
    job_id: UUID


HEALTH_INTERVAL = 10.0


class Sweeper:
    def __init__(
        self,
        store: HodeiStore,
        engine: SagaEngine,
        providers: ProviderRegistry,
        liveness: Liveness,
        secrets: JobSecrets,
        admission: Admission,
        instances: ServerInstances,
        retention: Retention,
        cron_jobs: CronJobs,
        children: Children,
        webhooks: Webhooks,
        timing: Timing,
        secret_retention: float,
    ) -> None:
        self.store = store
        self.engine = engine
        self.providers = providers
        self.liveness = liveness
        self.secrets = secrets
        self.admission = admission
        self.instances = instances
        self.retention = retention
        self.cron_jobs = cron_jobs
        self.children = children
        self.webhooks = webhooks
        self.timing = timing
        self.secret_retention = secret_retention
        self._last: dict[str, float] = {}
        # Since when (monotonic) this sweeper has heard without a break: its process running
        # and the database answering. Silence before that is an outage's, not a worker's.
        self._hearing_since = time.monotonic()
        self._last_sweep = time.monotonic()

    def _due(self, name: str, interval: float) -> bool:
        now = time.monotonic()
        if now - self._last.get(name, -interval) >= interval:
            self._last[name] = now
            return True
        return False

    def sweep(self, *, reconcile: bool | None = None) -> None:
        """One round; each check is independent, so one failing does not stop the others,
        but PostgreSQL away ends the round (every check would wait for it and fail alike)."""
        checks: list[tuple[str, Callable[[], object]]] = [
            ("takeover", self.take_over_dead_servers),
            ("deadlines", self.expire_steps),
            ("liveness", self.detect_lost_workers),
            ("observations", self.observe_providers),
            ("children", self.children.cancel_with_parents),  # before admission: none starts
            ("admission", self.admit),
            ("cron", self.cron_jobs.fire_due),
            ("webhooks", self.webhooks.enqueue),
        ]
        if reconcile if reconcile is not None else self._due("reconcile", self.timing.reconcile_interval):
            checks.append(("reconcile", self.reconcile))
        if self._due("health", HEALTH_INTERVAL):
            checks.append(("health", self.check_health))
        if self._due("retention", self.timing.retention_interval):
            checks.append(("secret retention", self.shred_old_secrets))
            checks.append(("outbox retention", self.retention.prune_outbox))
            checks.append(("log retention", self.retention.expire_logs))
            checks.append(("artifact retention", self.retention.expire_artifacts))
            checks.append(("input retention", self.retention.prune_inputs))
            checks.append(("webhook retention", self.webhooks.prune))
        self._stalled_since(self._last_sweep)
        self._last_sweep = time.monotonic()
        for name, check in checks:
            began = time.monotonic()
            try:
                check()
            except StoreUnavailable as exc:
                self._hearing_since = time.monotonic()
                log.warning("sweep %s failed: %s; the sweep's other checks wait for the next", name, exc)
                break  # each would wait for a connection and fail the same way
            except Exception as exc:
                log.warning("sweep %s failed: %s", name, exc)
            self._stalled_since(began)

    def _stalled_since(self, began: float) -> None:
        """Time this process could not hear in (stalled itself, or a check waiting on a
        frozen PostgreSQL, whose heartbeats could not be written meanwhile) is no worker's
        silence: the hearing starts again. Looked at after each check, not only between
        sweeps: a sweep whose first check waited out a 15 s freeze went on to the liveness
        check and lost workers whose heartbeats the freeze had held."""
        now = time.monotonic()
        if now - began > self.timing.heartbeat_timeout / 2:
            self._hearing_since = now

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.timing.sweep_interval):
            self.sweep()

    # Checks -------------------------------------------------------------------

    @property
    def heard_for(self) -> float:
        """Seconds this sweeper has heard without a break."""
        return time.monotonic() - self._hearing_since

    def expire_steps(self) -> None:
        now = self.engine.clock()
        hearing_since = now - timedelta(seconds=self.heard_for)
        params = {"now": now, "hearing_since": hearing_since, "grace": self.timing.heartbeat_timeout}
        for step in fetch_all(self.store.pool, "overdue_saga_steps_with_job", params, OverdueStep):
            self.engine.expire(step.saga_id, step.job_id, step.step_order)

    def detect_lost_workers(self) -> None:
        """A worker whose stream ended while the sweeper could not hear (its report could not
        be saved in an outage, or its server died) reconnects as its agent backs off: at most
        RETRY_MAX after each attempt. That pause after the outage is not its silence either:
        with the 5 s of a test's heartbeat timeout, workers whose next attempt came 5 s after
        PostgreSQL's return were lost, their jobs failed."""
        heard = max(0.0, self.heard_for - RETRY_MAX)
        for stale in self.liveness.stale(self.timing.heartbeat_timeout, heard):
            if not stale.cancelled or self._stop_pending(stale.job_id):
                self.lose(stale.worker_id, f"no heartbeat for {stale.timeout:g}s")
        self._lose_unstopped()

    def _lose_unstopped(self) -> None:
        """Workers of cancelled jobs that beat on but never report the job's processes
        stopped (one outlived its SIGKILL in an uninterruptible wait, or the agent is stuck)
        are lost a heartbeat timeout after the SIGKILL was due, so their provider removes
        them and their slots go to the queue: they held both until the job's own timeout
        ran out (the result's wait; a day for a job of ``--timeout 1d``). Time the sweeper
        could not hear in (an outage: the report could not be saved) does not count."""
        now = self.engine.clock()
        heard_since = now - timedelta(seconds=self.heard_for)
        margin = self.timing.heartbeat_timeout
        for found in fetch_all(self.store.pool, "live_workers_of_cancelled_jobs", {"margin": margin}, Unstopped):
            job = self.store.find(Job, found.job_id)
            if job is None or job.stop_by is None or not job.stop_pending:
                continue
            if max(job.stop_by, heard_since) + timedelta(seconds=margin) <= now:
                why = f"its job's processes were not reported stopped {margin:g}s after their SIGKILL"
                self.lose(found.worker_id, why)

    def _stop_pending(self, job_id: UUID) -> bool:
        """Whether the cancelled job's worker still has its processes to stop (read for
        the few silent or failing workers of cancelled jobs only)."""
        job = self.store.find(Job, job_id)
        return job is not None and job.stop_pending

    def lose(self, worker_id: UUID | str, reason: str) -> None:
        def run() -> tuple[None, list[Worker]]:
            worker = self.store.load(Worker, worker_id)
            if not worker.is_live:
                return None, []
            worker.fail(reason)
            return None, [worker]

        worker = self.store.find(Worker, worker_id)
        if worker is not None:
            with about(worker_id=worker_id, job_id=worker.job_id):
                log.warning("worker %s of job %s is lost: %s", worker_id, worker.job_id, reason)
                self.store.command(Meta(actor=SYSTEM, correlation_id=worker.job_id), run)

    def _observations(self, *, failed_only: bool = False) -> list[tuple[WorkerProvider, Observation, Recorded | None]]:
        """Each observed resource (or each one seen failing) with its worker's and job's
        recorded states (None when no such worker was ever recorded), read from the read
        model in one query per sweep. Every second a thousand healthy workers would cost
        a query of a thousand rows, most of the sweeper's time."""
        seen = [
            (provider, observation)
            for provider in self.providers.providers.values()
            for observation in provider.observe()
            if observation.failure is not None or not failed_only
        ]
        if not seen:
            return []
        ids = {observation.worker_id: uuid_or_none(observation.worker_id) for _, observation in seen}
        rows = fetch_all(self.store.pool, "worker_and_job_states", ([i for i in ids.values() if i],), Recorded.of)
        recorded = {str(row.worker_id): row for row in rows}
        return [
            (provider, observation, recorded.get(str(ids[observation.worker_id]))) for provider, observation in seen
        ]

    def observe_providers(self) -> None:
        for _, observation, recorded in self._observations(failed_only=True):
            if observation.failure is None or recorded is None or recorded.worker not in LIVE_STATES:
                continue
            if recorded.job.is_terminal and not (
                recorded.job is JobState.CANCELLED and self._stop_pending(recorded.job_id)
            ):
                continue  # the worker finished its job and is on its way out
            self.lose(observation.worker_id, observation.failure)

    def reconcile(self) -> None:
        """Removes resources no live worker owns; a failed worker's kept one (see
        HODEI_KEEP_FAILED_WORKERS) once its keep time has passed."""
        kept_until = datetime.now(UTC) - timedelta(seconds=self.timing.keep_failed_workers)
        for provider, observation, recorded in self._observations():
            if recorded is not None and recorded.worker is WorkerState.TERMINATED and recorded.changed_at > kept_until:
                continue
            if recorded is None or recorded.worker is WorkerState.TERMINATED:
                log.warning(
                    "removing stray worker resource %s (worker %s)",
                    observation.resource_id,
                    observation.worker_id,
                )
                provider.destroy_worker(observation.worker_id)

    def take_over_dead_servers(self) -> None:
        self.instances.take_over_the_dead()

    def admit(self) -> None:
        """A catch-all: slots are also given out as events free them. Jobs waiting for
        jobs they start after (--after) are let into their line here once those ended, or
        cancelled when one ended otherwise than asked."""
        self.admission.cancel_never_started()
        self.admission.admit_all(list(self.providers.providers))

    def shred_old_secrets(self) -> None:
        purged = self.secrets.purge_expired(self.secret_retention)
        if purged:
            log.info("shredded the secrets of %d jobs that ended over %gs ago", purged, self.secret_retention)

    def check_health(self) -> None:
        for provider_type in list(self.providers.providers):
            self.providers.check(provider_type)
