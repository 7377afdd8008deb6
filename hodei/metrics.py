"""The platform's Prometheus metrics, served at ``/metrics``.

Counters and histograms are fed by the events this server's outbox relay delivers, and
by those it writes delivered (no relay route wants them): every event is delivered once
in the installation, so each server counts its share and Prometheus sums them
(``sum by (state) (hodei_jobs_finished_total)``). A row is counted at its first
delivery attempt, before its handler runs, so a retried row counts once (and a crash
between a claim or a write and its count, not at all); a restart starts the counters
again, as Prometheus expects of counters. Gauges are read when scraped: the outbox from the database, provider
health from the providers' recorded probes, connected workers from this process, cron jobs
pools and submitter limits from the log and their jobs from the read model.

Durations pair an event with the one that began what it ends (StepStarted with its
StepCompleted, JobCreated with the job's end; a StepRan carries its own start). Where
the beginning was delivered to another server, it is read from the read models instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from importlib.metadata import version
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hodei.admission import Admission
from hodei.cron import CronJobs
from hodei.domain.cron import Concurrency, slot_job_id
from hodei.domain.job import TERMINAL_STATES, JobState
from hodei.domain.provider import ProviderHealth, ProviderType
from hodei.errors import StoreUnavailable
from hodei.limits import Limits
from hodei.pools import Pools
from hodei.store.events import EventRecord
from hodei.store.readmodels import ReadModels
from hodei.webhooks import Webhooks

log = logging.getLogger(__name__)
V = TypeVar("V")

# Seconds: from a sim job's milliseconds to a long job's hour.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
# Beginnings remembered at most (an event whose end never comes must not grow memory).
REMEMBERED = 100_000
STEP_OUTCOMES = {"StepCompleted": "completed", "StepFailed": "failed", "StepCompensated": "compensated"}


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


class _Recent(Generic[V]):
    """What began, by key, until its end is seen: at most REMEMBERED entries (a beginning
    whose end another server delivers must not grow memory)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[Any, V] = {}

    def put(self, key: Any, value: V) -> None:
        with self._lock:
            self._items[key] = value
            if len(self._items) > REMEMBERED:
                del self._items[next(iter(self._items))]

    def take(self, key: Any) -> V | None:
        with self._lock:
            return self._items.pop(key, None)

    def get(self, key: Any) -> V | None:
        with self._lock:
            return self._items.get(key)


class _Scraped(Collector):
    """Gauges read at scrape time."""

    def __init__(
        self,
        reads: ReadModels,
        connected: Callable[[], int],
        cron_jobs: CronJobs,
        pools: Pools,
        limits: Limits,
        webhooks: Webhooks,
        admission: Admission,
    ) -> None:
        self.reads = reads
        self.connected = connected
        self.cron_jobs = cron_jobs
        self.pools = pools
        self.limits = limits
        self.webhooks = webhooks
        self.admission = admission

    def collect(self) -> Iterator[Metric]:
        """What this process knows, always; what it reads from PostgreSQL, and
        ``hodei_database_up`` 1, when it can (as an exporter whose backend is away answers:
        a failed scrape would say this server is down, and lose its own counters)."""
        yield GaugeMetricFamily(
            "hodei_workers_connected", "Workers with an open stream to this server", self.connected()
        )
        yield self._skipped()
        try:
            read = list(self._read())
        except StoreUnavailable as exc:
            log.warning("metrics: the gauges read from PostgreSQL are left out of this scrape: %s", exc)
            yield _database_up(0.0)
            return
        yield _database_up(1.0)
        yield from read

    def _read(self) -> Iterator[Metric]:
        pending, dead, lag_ms = self.reads.outbox_stats()
        yield GaugeMetricFamily("hodei_outbox_backlog", "Outbox rows waiting for delivery", value=pending)
        yield GaugeMetricFamily("hodei_outbox_dead_letters", "Outbox rows whose delivery gave up", value=dead)
        yield GaugeMetricFamily(
            "hodei_outbox_oldest_pending_seconds", "Age of the oldest outbox row waiting", value=lag_ms / 1000
        )
        yield from self._providers()
        yield from self._cron_jobs()
        yield from self._pools()
        yield from self._submitters()
        yield from self._webhooks()

    def _providers(self) -> Iterator[Metric]:
        """Each provider's health and capacity (`provider list`): its workers, the CPU cores
        and memory its jobs ask for where it has limits (`provider capacity --cpus --memory`),
        and its line: the jobs waiting for its capacity, and the oldest one's wait (a line
        that does not move raises no histogram sample: nothing starts)."""
        labels = ["provider"]
        healthy = GaugeMetricFamily(
            "hodei_provider_healthy", "1 when the provider's last probe was healthy", labels=labels
        )
        workers = GaugeMetricFamily(
            "hodei_provider_workers", "Workers the provider runs at once (its capacity)", labels=labels
        )
        workers_used = GaugeMetricFamily(
            "hodei_provider_workers_in_use",
            "Its slots taken: workers not terminated, admitted jobs without one",
            labels=labels,
        )
        cpu = GaugeMetricFamily(
            "hodei_provider_cpu_cores", "CPU cores its jobs may ask for together (where limited)", labels=labels
        )
        cpu_asked = GaugeMetricFamily(
            "hodei_provider_cpu_cores_asked",
            "CPU cores its jobs admitted and not ended ask for (where limited)",
            labels=labels,
        )
        memory = GaugeMetricFamily(
            "hodei_provider_memory_bytes", "Memory its jobs may ask for together (where limited)", labels=labels
        )
        memory_asked = GaugeMetricFamily(
            "hodei_provider_memory_bytes_asked",
            "Memory its jobs admitted and not ended ask for (where limited)",
            labels=labels,
        )
        waiting = GaugeMetricFamily(
            "hodei_provider_jobs_waiting",
            "Jobs in its line: waiting for its capacity, nothing else holding them back (`queue`)",
            labels=labels,
        )
        oldest = GaugeMetricFamily(
            "hodei_provider_oldest_waiting_seconds",
            "How long the oldest job in its line has waited since its submission (0: none waits)",
            labels=labels,
        )
        lines = self.admission.lines()
        for provider in self.reads.providers():
            label = [provider.provider_type]
            line = lines.get(provider.provider_type)
            waiting.add_metric(label, line.jobs if line else 0)
            oldest.add_metric(label, line.oldest_seconds if line else 0.0)
            if provider.health != ProviderHealth.UNKNOWN:  # never probed: no server runs it
                healthy.add_metric(label, 1.0 if provider.health == ProviderHealth.HEALTHY else 0.0)
            capacity = self.admission.capacity(ProviderType(provider.provider_type))
            workers.add_metric(label, capacity.limit)
            workers_used.add_metric(label, capacity.in_use)
            if capacity.resources.cpu_cores is not None:
                cpu.add_metric(label, capacity.resources.cpu_cores)
                cpu_asked.add_metric(label, capacity.cpu_in_use)
            if capacity.resources.memory_bytes is not None:
                memory.add_metric(label, capacity.resources.memory_bytes)
                memory_asked.add_metric(label, capacity.memory_in_use)
        yield from (healthy, workers, workers_used, cpu, cpu_asked, memory, memory_asked, waiting, oldest)

    def _webhooks(self) -> Iterator[Metric]:
        messages = GaugeMetricFamily(
            "hodei_webhook_messages",
            "The webhook's messages kept (a week), by state: pending (to be sent, or sent again), failed "
            "(given up on: `webhook redeliver`), delivered",
            labels=["webhook", "state"],
        )
        for hook in self.webhooks.rows():
            for state, count in (("pending", hook.pending), ("failed", hook.failed), ("delivered", hook.delivered)):
                messages.add_metric([hook.name, state], count)
        yield messages

    def _pools(self) -> Iterator[Metric]:
        size = GaugeMetricFamily("hodei_pool_size", "How many of the pool's jobs may run at once", labels=["pool"])
        running = GaugeMetricFamily("hodei_pool_running", "The pool's jobs admitted and not ended", labels=["pool"])
        queued = GaugeMetricFamily("hodei_pool_queued", "The pool's jobs waiting in the queue", labels=["pool"])
        for pool in self.pools.all():
            size.add_metric([pool.name], pool.size)
            running.add_metric([pool.name], pool.running)
            queued.add_metric([pool.name], pool.queued)
        yield from (size, running, queued)

    def _submitters(self) -> Iterator[Metric]:
        """Every submitter with jobs queued or running or a limit of its own (`limit list`)."""
        labels = ["submitter"]
        limit = GaugeMetricFamily(
            "hodei_submitter_limit", "How many of the submitter's jobs may run at once", labels=labels
        )
        running = GaugeMetricFamily(
            "hodei_submitter_running", "The submitter's jobs admitted and not ended", labels=labels
        )
        queued = GaugeMetricFamily("hodei_submitter_queued", "The submitter's jobs waiting in the queue", labels=labels)
        most = GaugeMetricFamily(
            "hodei_submitter_max_submitted",
            "How many of the submitter's jobs may be not ended (queued, held or running): no more are submitted",
            labels=labels,
        )
        for use in self.limits.all():
            if use.jobs is not None:
                limit.add_metric([use.submitter], use.jobs)
            if use.submitted is not None:
                most.add_metric([use.submitter], use.submitted)
            running.add_metric([use.submitter], use.running)
            queued.add_metric([use.submitter], use.queued)
        yield from (limit, running, queued, most)

    def _cron_jobs(self) -> Iterator[Metric]:
        """What an alert on a schedule needs (kube-state-metrics' cronjob gauges): when each
        cron job last started a job and how that job stands, when it next does, whether it
        is paused, and how late its latest time is when no server started its job (the next
        run's time is computed from now, so it never says that). (The times this server
        skipped are ``_skipped``'s: every server that sweeps finds the same skipped time, so
        ``max by (cron, reason)``, not ``sum``.)"""
        every = self.cron_jobs.all()
        newest = self.cron_jobs.newest_jobs([cron.name for cron in every])
        now = self.cron_jobs.clock()  # the clock its runs go by
        last = GaugeMetricFamily(
            "hodei_cron_job_last_run_timestamp_seconds", "When the cron job's newest job was submitted", labels=["cron"]
        )
        state = GaugeMetricFamily(
            "hodei_cron_job_last_run_state", "1 for the state of the cron job's newest job", labels=["cron", "state"]
        )
        following = GaugeMetricFamily(
            "hodei_cron_job_next_run_timestamp_seconds", "When the cron job next submits a job", labels=["cron"]
        )
        paused = GaugeMetricFamily("hodei_cron_job_paused", "1 while the cron job is paused", labels=["cron"])
        late = GaugeMetricFamily(
            "hodei_cron_job_late_seconds",
            "Seconds since the latest time of its schedule while that time has no job (0: it has one, or it was "
            "skipped for a job of an earlier time not ended, --concurrency forbid)",
            labels=["cron"],
        )
        # Each cron job's latest time, and the id its job has once a server fired it.
        slots = {cron.name: (slot, slot_job_id(cron.id, slot)) for cron in every if (slot := cron.last_slot(now))}
        started = self.cron_jobs.started([job_id for _, job_id in slots.values()])
        for cron in every:
            run = newest.get(cron.name)
            if run is not None:
                last.add_metric([cron.name], run.created_at.timestamp())
                state.add_metric([cron.name, run.state], 1.0)
            if not cron.paused:
                [moment] = cron.definition.schedule.following(now, 1)
                following.add_metric([cron.name], moment.timestamp())
            paused.add_metric([cron.name], 1.0 if cron.paused else 0.0)
            if cron.name in slots:
                slot, job_id = slots[cron.name]
                waited = (
                    run is not None
                    and run.state not in TERMINAL_STATES
                    and cron.definition.concurrency is Concurrency.FORBID
                )
                missed = job_id not in started and not waited
                late.add_metric([cron.name], (now - slot).total_seconds() if missed else 0.0)
        yield from (last, state, following, paused, late)

    def _skipped(self) -> Metric:
        skipped = CounterMetricFamily(
            "hodei_cron_job_skipped",
            "Times of the cron job this server skipped since it started: a job of an earlier time had not ended "
            "(forbid), or the time was past its starting deadline (deadline)",
            labels=["cron", "reason"],
        )
        for (name, why), count in sorted(self.cron_jobs.skipped().items()):
            skipped.add_metric([name, why], count)
        return skipped


def _database_up(value: float) -> Metric:
    return GaugeMetricFamily(
        "hodei_database_up",
        "1 when this scrape read PostgreSQL, 0 when it could not (the gauges read there are left out)",
        value=value,
    )


class PlatformMetrics:
    def __init__(
        self,
        reads: ReadModels,
        cron_jobs: CronJobs,
        pools: Pools,
        limits: Limits,
        webhooks: Webhooks,
        admission: Admission,
    ) -> None:
        self.reads = reads
        self.registry = CollectorRegistry()
        # Which version each server runs (during an upgrade, which servers are still old).
        Info("hodei_build", "The version of hodei this server runs", registry=self.registry).info(
            {"version": version("hodei-jobs")}
        )
        self.jobs_finished = Counter(
            "hodei_jobs_finished", "Jobs that reached a final state", ["state"], registry=self.registry
        )
        self.queued = self._histogram(
            "hodei_job_queued_seconds", "From submission to the job's start on a worker (queued -> started)"
        )
        self.ran = self._histogram("hodei_job_run_seconds", "How long the job's command ran (started -> finished)")
        self.total = self._histogram("hodei_job_seconds", "From submission to the final state (end to end)")
        self.steps = self._histogram(
            "hodei_saga_step_seconds",
            "Saga step durations, by saga type, step and outcome (completed, failed, compensated)",
            ("saga_type", "step", "outcome"),
        )
        self.relay_lag = self._histogram(
            "hodei_relay_lag_seconds", "From an event's commit to its delivery by this server's relay"
        )
        self.log_bytes = Counter("hodei_log_bytes", "Bytes of job output stored by this server", registry=self.registry)
        self.artifact_bytes = Counter(
            "hodei_artifact_bytes", "Bytes of job artifacts stored by this server", registry=self.registry
        )
        self.log_lines_lost = Counter(
            "hodei_log_lines_lost",
            "Lines of job output this server could not store (its log directory full or gone)",
            registry=self.registry,
        )
        self.workers_lost = Counter(
            "hodei_workers_lost",
            "Workers declared lost (no heartbeat within their timeout, or their container, pod or process failed)",
            ["provider"],
            registry=self.registry,
        )
        self._scraped = _Scraped(reads, lambda: 0, cron_jobs, pools, limits, webhooks, admission)
        self.registry.register(self._scraped)
        self._began: _Recent[datetime] = _Recent()
        self._saga_types: _Recent[str] = _Recent()

    def _histogram(self, name: str, documentation: str, labels: tuple[str, ...] = ()) -> Histogram:
        return Histogram(name, documentation, labels, buckets=BUCKETS, registry=self.registry)

    def count_connected(self, connected: Callable[[], int]) -> None:
        """Where the number of connected workers comes from (the worker service)."""
        self._scraped.connected = connected

    def delivered(self, event: EventRecord, lag_seconds: float | None) -> None:
        """An event delivered by this server: by its relay, ``lag_seconds`` after it
        happened, or written delivered (None: no relay route wants it). Counted, and
        paired with its beginning. Never raises: metrics must not fail a delivery or a
        write."""
        if lag_seconds is not None:
            self.relay_lag.observe(max(lag_seconds, 0.0))
        try:
            self._observe(event)
        except Exception:
            log.exception("metrics: could not count %s of %s", event.event_type, event.aggregate_id)

    def _observe(self, event: EventRecord) -> None:
        kind, payload, at, aggregate = event.event_type, event.payload, event.occurred_at, event.aggregate_id
        if kind == "JobCreated":
            self._began.put(("created", aggregate), at)
        elif kind == "JobStatusChanged":
            self._job_changed(aggregate, payload, at)
        elif kind == "SagaStarted":
            self._saga_types.put(aggregate, payload["saga_type"])
        elif kind in ("StepStarted", "CompensationStarted"):
            self._began.put((kind, aggregate, payload["step_order"]), at)
        elif kind == "StepRan":
            self._step_took(
                aggregate, payload["step_name"], "completed", datetime.fromisoformat(payload["started_at"]), at
            )
        elif kind in STEP_OUTCOMES:
            began_by = "CompensationStarted" if kind == "StepCompensated" else "StepStarted"
            started = self._began.take((began_by, aggregate, payload["step_order"]))
            if started is None:
                started = self.reads.step_started(aggregate, payload["step_order"])
            self._step_took(aggregate, payload["step_name"], STEP_OUTCOMES[kind], started, at)
        elif kind in ("SagaCompleted", "SagaFailed"):
            self._saga_types.take(aggregate)
        elif kind == "WorkerFailed":
            self.workers_lost.labels(self.reads.worker_provider(aggregate)).inc()

    def _step_took(self, saga_id: str, step: str, outcome: str, started: datetime | None, at: datetime) -> None:
        duration = _seconds(started, at)
        if duration is not None:
            saga_type = self._saga_types.get(saga_id) or self.reads.saga_type(saga_id)
            self.steps.labels(saga_type, step, outcome).observe(duration)

    def _job_changed(self, job_id: str, payload: dict[str, Any], at: datetime) -> None:
        state = JobState(payload["new_state"])
        if state is JobState.RUNNING:
            created = self._created(job_id, keep=True)
            queued = _seconds(created, at)
            if queued is not None:
                self.queued.observe(queued)
            return
        if not state.is_terminal:
            return
        self.jobs_finished.labels(state.value).inc()
        total = _seconds(self._created(job_id, keep=False), at)
        if total is not None:
            self.total.observe(total)
        if payload.get("ran_from") and payload.get("ran_until"):
            ran = _seconds(datetime.fromisoformat(payload["ran_from"]), datetime.fromisoformat(payload["ran_until"]))
            if ran is not None:
                self.ran.observe(ran)

    def _created(self, job_id: str, keep: bool) -> datetime | None:
        created = self._began.take(("created", job_id))
        if created is None:
            created = self.reads.job_created_at(job_id)
        if keep and created is not None:
            self._began.put(("created", job_id), created)
        return created
