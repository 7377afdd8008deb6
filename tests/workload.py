"""A random but valid mix of job, worker, saga and provider commands, for tests that
need many kinds of events (replay, the store's invariants)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from hodei.domain.base import HodeiAggregate
from hodei.domain.cron import Concurrency, CronJob, Definition, Schedule, cron_id
from hodei.domain.job import Job, JobState
from hodei.domain.limit import INHERITED, Bound, SubmitterLimit, limit_id
from hodei.domain.pool import Pool, pool_id
from hodei.domain.provider import PROVIDER_IDS, Provider, ProviderHealth, ProviderType
from hodei.domain.saga import Saga, StepState
from hodei.domain.spec import JobSpec, Resources
from hodei.domain.webhook import ENDINGS, Webhook, webhook_id
from hodei.domain.worker import Worker
from hodei.errors import HodeiError
from hodei.store.app import HodeiStore, Meta

OPERATIONS = [
    "job",
    "assign",
    "run",
    "finish",
    "cancel",
    "hold",
    "priority",
    "requeue",
    "logs",
    "worker",
    "worker_move",
    "saga",
    "saga_move",
    "health",
    "cron",
    "pool",
    "limit",
    "signal",
    "webhook",
    "limits",
]


class Workload:
    def __init__(self, store: HodeiStore, seed: int) -> None:
        self.store = store
        self.random = random.Random(seed)
        self.jobs: list[str] = []
        self.workers: list[str] = []
        self.sagas: list[str] = []

    def pick(self, items: list[str]) -> str | None:
        return self.random.choice(items) if items else None

    def apply(self, operation: str) -> None:
        try:
            changed = getattr(self, f"_{operation}")()
        except HodeiError:
            return
        if changed:
            job_id = getattr(changed[0], "job_id", None) or str(changed[0].id)
            self.store.write(changed, Meta(actor=f"workload:{operation}", correlation_id=job_id))

    def _job(self) -> list[HodeiAggregate]:
        spec = JobSpec(
            name=f"job-{len(self.jobs)}",
            command=self.random.choice(["echo hi", "sleep 1", "exit 3"]),
            timeout_seconds=self.random.choice([1.5, 30, 600]),
            env={"N": str(self.random.randint(0, 9))},
            args=("-c", "echo x") if self.random.random() < 0.3 else (),
            max_attempts=self.random.randint(1, 3),
            retries=self.random.choice([0, 0, 1]),
            pool=self.random.choice(["", "", "db"]),
        )
        job = Job.submit(spec, uuid4())
        self.jobs.append(str(job.id))
        return [job]

    def _load_job(self) -> Job | None:
        job_id = self.pick(self.jobs)
        return None if job_id is None else self.store.load(Job, job_id)

    def _assign(self) -> list[HodeiAggregate]:
        job = self._load_job()
        if job is None:
            return []
        job.select_provider(str(PROVIDER_IDS[ProviderType.DOCKER]), "docker", admitted=self.random.random() < 0.5)
        if self.random.random() < 0.5:
            job.admit()
        job.assign(str(uuid4()), str(PROVIDER_IDS[ProviderType.DOCKER]), "docker")
        return [job]

    def _run(self) -> list[HodeiAggregate]:
        job = self._load_job()
        if job is None or job.worker_id is None:
            return []
        job.accept(job.worker_id)
        return [job]

    def _finish(self) -> list[HodeiAggregate]:
        job = self._load_job()
        if job is None or job.worker_id is None:
            return []
        outcome = self.random.choice([JobState.SUCCEEDED, JobState.FAILED, JobState.TIMEOUT])
        ended = datetime.now(UTC) - timedelta(seconds=self.random.randint(0, 60))
        ran = ((ended - timedelta(seconds=5)).isoformat(), ended.isoformat()) if self.random.random() < 0.5 else None
        stored = [
            {"name": f"out/{n}.txt", "size_bytes": n, "sha256": f"{n:064x}"} for n in range(self.random.randint(0, 2))
        ]
        job.store_artifacts(job.worker_id, stored)
        # What the worker measured: nothing, a part of it, or all (a cancelled job's too).
        usage = self.random.choice(
            [
                None,
                {"cpu_seconds": self.random.uniform(0, 50)},
                {"peak_memory_bytes": self.random.randint(0, 2**33)},
                {"cpu_seconds": self.random.uniform(0, 50), "peak_memory_bytes": self.random.randint(0, 2**33)},
            ]
        )
        job.finish(
            job.worker_id,
            outcome,
            0 if outcome is JobState.SUCCEEDED else 1,
            None if outcome is JobState.SUCCEEDED else "boom",
            ran,
            usage=usage,
        )
        return [job]

    def _cancel(self) -> list[HodeiAggregate]:
        job = self._load_job()
        if job is None:
            return []
        job.cancel("changed my mind", grace=self.random.choice([0, 5, 30]))
        return [job]

    def _hold(self) -> list[HodeiAggregate]:
        """A queued job held (with or without a reason) or released."""
        job = self._load_job()
        if job is None:
            return []
        if job.held_by is None:
            job.hold(self.random.choice(["alice", "bob"]), self.random.choice(["", "waiting for data"]))
        else:
            job.release()
        return [job]

    def _priority(self) -> list[HodeiAggregate]:
        job = self._load_job()
        if job is None:
            return []
        job.prioritize(self.random.randint(-5, 5))
        return [job]

    def _limits(self) -> list[HodeiAggregate]:
        """A queued job's new time limit and resources (`job update --timeout --cpu …`)."""
        job = self._load_job()
        if job is None:
            return []
        resources = Resources(self.random.choice([0.0, 0.5, 2.0]), self.random.choice([0, 2**28]), 0)
        job.change_limits(float(self.random.choice([30, 600, 7200])), resources)
        return [job]

    def _signal(self) -> list[HodeiAggregate]:
        """A running job's processes signalled, if one runs."""
        running = [
            job for job in (self.store.load(Job, job_id) for job_id in self.jobs) if job.state is JobState.RUNNING
        ]
        if not running:
            return []
        job = self.random.choice(running)
        job.signal(self.random.choice(["USR1", "HUP", "TERM"]))
        return [job]

    def _requeue(self) -> list[HodeiAggregate]:
        job = self._load_job()
        if job is None:
            return []
        job.requeue("worker lost")
        return [job]

    def _logs(self) -> list[HodeiAggregate]:
        job = self._load_job()
        if job is None:
            return []
        job.record_logs(f"file:///tmp/hodei-logs/{job.id}.log", self.random.randint(0, 999), self.random.randint(0, 9))
        if self.random.random() < 0.3:
            job.expire_artifacts()
        return [job]

    def _worker(self) -> list[HodeiAggregate]:
        job_id = self.pick(self.jobs)
        if job_id is None:
            return []
        worker = Worker(
            job_id=job_id,
            attempt=len(self.workers) + 1,  # a worker's id is its job's and attempt's: never twice
            provider_id=str(PROVIDER_IDS[ProviderType.DOCKER]),
            provider_type="docker",
            token_nonce=uuid4().hex,
            token_expires_at=(datetime.now(UTC) + timedelta(minutes=5)).isoformat(),
        )
        self.workers.append(str(worker.id))
        return [worker]

    def _worker_move(self) -> list[HodeiAggregate]:
        worker_id = self.pick(self.workers)
        if worker_id is None:
            return []
        worker = self.store.load(Worker, worker_id)
        move = self.random.choice(["resource", "register", "dispatch", "fail", "terminated"])
        if move == "resource":
            worker.record_resource(f"container-{uuid4().hex[:12]}")
        elif move == "register":
            worker.register(uuid4().hex, "host", datetime.now(UTC))
        elif move == "dispatch":
            worker.dispatch(worker.job_id)
        elif move == "fail":
            worker.fail("no heartbeat")
        else:
            worker.terminate("done")
        return [worker]

    def _saga(self) -> list[HodeiAggregate]:
        job_id = self.pick(self.jobs)
        if job_id is None:
            return []
        saga = Saga(
            saga_type=self.random.choice(["PROVISIONING", "EXECUTION", "RECOVERY"]),
            correlation_id=job_id,
            attempt=len(self.sagas) + 1,  # a saga's id is its type's, job's and attempt's: never twice
            steps=["one", "two", "three"],
            context={},
        )
        self.sagas.append(str(saga.id))
        return [saga]

    def _saga_move(self) -> list[HodeiAggregate]:
        saga_id = self.pick(self.sagas)
        if saga_id is None:
            return []
        saga = self.store.load(Saga, saga_id)
        active = saga.active_step
        deadline = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
        if active is not None and active.state is StepState.IN_PROGRESS:
            if self.random.random() < 0.7:
                saga.complete_step(active.order, {"k": self.random.randint(0, 9)})
            else:
                retry = deadline if self.random.random() < 0.5 else None
                saga.fail_step(active.order, "boom", retry)
        elif active is not None:
            if self.random.random() < 0.8:
                saga.finish_compensation(active.order)
            else:
                saga.fail_compensation(active.order, "cannot undo")
        elif saga.failed_for_good is not None or saga.state.value == "COMPENSATING":
            step = saga.to_compensate(include_failed=False)
            if step is None:
                saga.fail(saga.failure or "failed")
            else:
                saga.start_compensation(step.order)
        else:
            retrying = next((s for s in saga.steps if s.state is StepState.FAILED), None)
            step = retrying or saga.next_step
            if step is None:
                saga.complete(then=None)
            else:
                saga.start_step(step.order, deadline)
        return [saga]

    def _health(self) -> list[HodeiAggregate]:
        provider = self.store.load(
            Provider, PROVIDER_IDS[self.random.choice([ProviderType.DOCKER, ProviderType.KUBERNETES])]
        )
        health = self.random.choice(list(ProviderHealth))
        provider.record_health(health, None if health is ProviderHealth.HEALTHY else "engine down")
        if self.random.random() < 0.2:
            provider.disable() if self.random.random() < 0.5 else provider.enable()
        return [provider]

    def _cron(self) -> list[HodeiAggregate]:
        """A cron job defined, switched or redefined (it has no read model: replay must
        still rebuild it, and leave every table as it was)."""
        name = self.random.choice(["nightly", "hourly"])
        definition = Definition(
            Schedule(self.random.choice(["0 3 * * *", "@every 30s"])),
            self.random.choice(list(Concurrency)),
            0.0,
            JobSpec(name=name, command="echo hi", timeout_seconds=30.0, provider="local"),
            self.random.choice(
                [(), (JobSpec(name="then", command="echo then", timeout_seconds=30.0, after={"#0": "any"}),)]
            ),
        )
        cron = self.store.find(CronJob, cron_id(name))
        if cron is None:
            return [CronJob.create(name, definition, {}, "workload")]
        action = self.random.choice(["pause", "resume", "delete", "redefine"])
        if action == "redefine":
            cron.redefine(definition, {}, "workload")
        else:
            getattr(cron, action)()
        return [cron]

    def _pool(self) -> list[HodeiAggregate]:
        """A pool created, resized or deleted (no read model, as a cron job), and jobs naming it."""
        name = self.random.choice(["db", "licence"])
        pool = self.store.find(Pool, pool_id(name))
        if pool is None:
            return [Pool.create(name, self.random.randint(0, 3))]
        if self.random.random() < 0.3:
            pool.delete()
        else:
            pool.resize(self.random.randint(0, 3))
        return [pool]

    def _webhook(self) -> list[HodeiAggregate]:
        """A webhook set, changed or deleted (no read model; its sealed values as opaque text)."""
        name = self.random.choice(["chat", "pager"])
        sealed = {"url": f"aesgcm1:{self.random.randbytes(8).hex()}", "secret": "aesgcm1:x"}
        states = tuple(self.random.sample(ENDINGS, self.random.randint(1, len(ENDINGS))))
        hook = self.store.find(Webhook, webhook_id(name))
        if hook is None:
            return [Webhook.create(name, "https://hooks.example.com", sealed, states, ("team=a",))]
        if self.random.random() < 0.3 and not hook.deleted:
            hook.delete()
        else:
            hook.change("https://hooks.example.com", sealed, states, ())
        return [hook]

    def _limit(self) -> list[HodeiAggregate]:
        """A submitter's limit (or `*`'s) set, changed, lifted or deleted (no read model)."""
        submitter = self.random.choice(["*", "workload:submit"])
        bounds: list[Bound] = [None, 0, 1, 5] if submitter == "*" else [None, 0, 1, 5, INHERITED]
        jobs, submitted = self.random.choice(bounds), self.random.choice(bounds)
        limit = self.store.find(SubmitterLimit, limit_id(submitter))
        if limit is None:
            return [SubmitterLimit.create(submitter, jobs, submitted)]
        if self.random.random() < 0.3 and not limit.deleted:
            limit.delete()
        else:
            limit.change(jobs, submitted)
        return [limit]
