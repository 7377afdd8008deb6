"""The operator services: hodei.jobs.SchedulerService, ProviderManagementService and
MetricsService."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

import grpc

from hodei._proto import (
    metrics_pb2,
    metrics_pb2_grpc,
    providers_pb2,
    providers_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from hodei.admission import Admission, Asked, Capacity, QueuedJob
from hodei.domain.job import hold_text
from hodei.domain.phases import size_text
from hodei.domain.provider import PROVIDER_IDS, Provider, ProviderType, ResourceLimits, resource_limits
from hodei.domain.spec import AFTER_CONDITIONS
from hodei.domain.worker import WorkerState
from hodei.errors import InvalidInput, NotFound
from hodei.providers.registry import ProviderRegistry, provider_type_of
from hodei.relay import RelayCounters
from hodei.server.access import caller
from hodei.server.convert import timestamp
from hodei.server.edge import rpc
from hodei.store.app import HodeiStore, Meta
from hodei.store.readmodels import ProviderRow, ReadModels
from hodei.wire import MAX_QUEUE_LISTED

MAX_WORKERS_LISTED = 1000


def _at_most(whose: str, limit: int, how: str, running: int, place: int | None) -> str:
    """Why a job past a limit of jobs at once waits: "its array runs at most 2 jobs at once
    (--array …%2): 2 running, 3 of its jobs before it"."""
    jobs = f"{limit} job" if limit == 1 else f"{limit} jobs"
    before = f", {place - 1} of its jobs before it" if place is not None and place > 1 else ""
    return f"{whose} runs at most {jobs} at once{how}: {running} running{before}"


class SchedulerService(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, reads: ReadModels, admission: Admission) -> None:
        self.reads = reads
        self.admission = admission

    @rpc
    def GetQueueStatus(
        self, request: scheduler_pb2.GetQueueStatusRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.QueueStatus:
        if request.limit < 0:
            raise InvalidInput("limit must not be negative")
        counts = self.reads.counts("jobs_by_state")
        status = scheduler_pb2.QueueStatus(order="fair" if self.admission.fair else "fifo")
        for state, count in counts.items():
            setattr(status, state.lower(), count)
        now = datetime.now(UTC)
        queue = self.admission.queue(min(request.limit or 100, MAX_QUEUE_LISTED))
        looked = _Looked(self.admission, [queued.job_id for queued in queue])
        for queued in queue:
            status.queued.append(
                scheduler_pb2.QueuedJob(
                    job_id=queued.job_id,
                    name=queued.name,
                    provider=queued.provider,
                    priority=queued.priority,
                    position=queued.position,
                    waiting_seconds=(now - queued.created_at).total_seconds(),
                    reason=self._why(queued, now, looked),
                )
            )
        return status

    def _why(self, queued: QueuedJob, now: datetime, looked: _Looked) -> str:
        """Why a queued job has not left the queue: a hold, its retry's backoff, its begin
        time (--begin), a job it starts after (--after), its array's limit, its
        submitter's limit, its pool's size, or its provider's capacity."""
        if queued.held_by is not None:
            return f"held {hold_text(queued.held_by, queued.hold_reason)} (job release)"
        if queued.retry_at and queued.retry_at > now:
            return f"its command failed; retrying at {queued.retry_at.isoformat(timespec='seconds')}"
        if queued.begin_at:
            return f"it begins at {queued.begin_at.isoformat(timespec='seconds')} (--begin)"
        if queued.waiting_for:
            waiting_for = queued.waiting_for
            return (
                f"it starts once job {waiting_for['job_id']} {AFTER_CONDITIONS[waiting_for['condition']]} "
                f"(--after); that job is {waiting_for['state'] or 'unknown'}"
            )
        if queued.past_array_limit:
            limit = queued.array_limit
            return _at_most("its array", limit, f" (--array …%{limit})", queued.array_running, queued.array_place)
        if queued.past_submitter_limit:
            limit = queued.submitter_limit or 0
            how = f" (limit get {queued.submitter})"
            running, place = queued.submitter_running, queued.submitter_place
            return _at_most(f"its submitter {queued.submitter}", limit, how, running, place)
        if queued.past_pool_size:
            if queued.pool_size is None:
                return f"its pool {queued.pool} does not exist (pool set {queued.pool} N)"
            return _at_most(f"its pool {queued.pool}", queued.pool_size, "", queued.pool_running, queued.pool_place)
        reason = self._reason(queued, looked)
        if self.admission.fair and queued.position:
            place = queued.turn - queued.used
            return (
                f"{reason}; its turn {queued.turn}: {queued.submitter}'s use {queued.used} (jobs running, or ended "
                f"in the last {self.admission.recent:g}s) and its place {place} among {queued.submitter}'s jobs in line"
            )
        return reason

    def _reason(self, queued: QueuedJob, looked: _Looked) -> str:
        provider = queued.provider
        if not provider:
            return "its provider is being chosen"
        capacity = looked.capacity(provider)
        if capacity.disabled:
            return f"provider {provider} is disabled: its queue waits until `provider enable {provider}`"
        if capacity.free == 0 and capacity.in_use < capacity.limit:
            return (
                f"provider {provider} starts at most {capacity.start_limit} workers at once: "
                f"{capacity.starting} starting ({capacity.in_use} of {capacity.limit} workers)"
            )
        if capacity.free == 0:
            return f"provider {provider} is full: {capacity.in_use} of {capacity.limit} workers"
        if capacity.resources.any:
            return _resources_reason(provider, capacity, looked.asked(queued.job_id))
        return f"provider {provider} has room ({capacity.in_use} of {capacity.limit} workers): being admitted"

    @rpc
    def ListWorkers(
        self, request: scheduler_pb2.ListWorkersRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.ListWorkersResponse:
        state = request.state.strip().upper() or None
        if state is not None and state not in WorkerState.__members__:
            raise InvalidInput(f"unknown worker state `{request.state}`; known: {', '.join(WorkerState)}")
        if request.limit < 0:
            raise InvalidInput("limit must not be negative")
        rows = self.reads.workers(state, min(request.limit or 50, MAX_WORKERS_LISTED), live=request.live)
        return scheduler_pb2.ListWorkersResponse(
            workers=[
                scheduler_pb2.Worker(
                    id=str(row.id),
                    job_id=str(row.job_id),
                    state=row.state,
                    provider_type=row.provider_type,
                    provider_resource_id=row.provider_resource_id or "",
                    error_message=row.error_message or "",
                    last_heartbeat_at=timestamp(row.last_seen_at),
                )
                for row in rows
            ]
        )


@dataclass
class _Looked:
    """What the reasons of one listing of the queue read, each once: its providers'
    capacities, and what its jobs ask for (only where a provider's resources are limited)."""

    admission: Admission
    job_ids: list[str]
    capacities: dict[str, Capacity] = field(default_factory=dict)
    asked_by: dict[UUID, Asked] | None = None

    def capacity(self, provider: str) -> Capacity:
        if provider not in self.capacities:
            self.capacities[provider] = self.admission.capacity(ProviderType(provider))
        return self.capacities[provider]

    def asked(self, job_id: str) -> Asked:
        if self.asked_by is None:
            self.asked_by = self.admission.asked(self.job_ids)
        return self.asked_by[UUID(job_id)]


def _resources_reason(provider: str, capacity: Capacity, asked: Asked) -> str:
    """Why a job waits for its provider's CPU or memory (``provider capacity --cpus --memory``)."""
    if never := capacity.resources.beyond(asked.cpu_cores, asked.memory_bytes):
        return (
            f"provider {provider} never has room for it: {never} (provider capacity {provider}); "
            "it waits until that is raised"
        )
    in_use = f"its jobs ask for {_resources_in_use(capacity)}"
    if not capacity.holds(asked.cpu_cores, asked.memory_bytes):
        wants = ResourceLimits(asked.cpu_cores or None, asked.memory_bytes or None).text() or "nothing"
        return f"provider {provider} has no room for it yet: {in_use}, and it asks for {wants}"
    return f"provider {provider} has room ({in_use}): being admitted once the jobs before it in line are"


def _resources_in_use(capacity: Capacity) -> str:
    """``3.5 of 4 CPU, 1.0 GiB of 8.0 GiB memory``: what a provider's jobs ask for, of its limits."""
    limits = capacity.resources
    return ", ".join(
        [
            *([f"{capacity.cpu_in_use:g} of {limits.cpu_cores:g} CPU"] if limits.cpu_cores is not None else []),
            *(
                [f"{size_text(capacity.memory_in_use)} of {size_text(limits.memory_bytes)} memory"]
                if limits.memory_bytes is not None
                else []
            ),
        ]
    )


class ProviderManagementService(providers_pb2_grpc.ProviderManagementServiceServicer):
    def __init__(self, store: HodeiStore, reads: ReadModels, registry: ProviderRegistry, admission: Admission) -> None:
        self.store = store
        self.reads = reads
        self.registry = registry
        self.admission = admission

    def _message(self, row: ProviderRow) -> providers_pb2.Provider:
        capacity = self.admission.capacity(ProviderType(row.provider_type))
        return providers_pb2.Provider(
            id=str(row.id),
            name=row.name,
            provider_type=row.provider_type,
            status=row.status,
            health=row.health,
            health_message=row.health_message or "",
            initialised=ProviderType(row.provider_type) in self.registry.providers,
            max_workers=capacity.limit,
            workers_in_use=capacity.in_use,
            max_cpu_cores=capacity.resources.cpu_cores or 0.0,
            max_memory_bytes=capacity.resources.memory_bytes or 0,
            cpu_cores_in_use=capacity.cpu_in_use,
            memory_bytes_in_use=capacity.memory_in_use,
        )

    def _row(self, provider_type: ProviderType) -> ProviderRow:
        if (row := self.reads.provider(provider_type.value)) is not None:
            return row
        raise NotFound(f"provider {provider_type} is not registered (run `hodei-server migrate`)")

    def _type(
        self, request: providers_pb2.GetProviderRequest | providers_pb2.SetProviderCapacityRequest
    ) -> ProviderType:
        provider_type = provider_type_of(request.provider)
        if provider_type is None:
            raise InvalidInput("name a provider: docker, kubernetes, local, or an id")
        return provider_type

    def _change(
        self,
        request: providers_pb2.GetProviderRequest,
        context: grpc.ServicerContext,
        change: Callable[[Provider], None],
    ) -> providers_pb2.Provider:
        provider_type = self._type(request)
        self._row(provider_type)

        def run() -> tuple[None, list[Provider]]:
            provider = self.store.load(Provider, PROVIDER_IDS[provider_type])
            change(provider)
            return None, [provider]

        self.store.command(Meta(actor=caller().name), run)
        return self._message(self._row(provider_type))

    @rpc
    def ListProviders(
        self, request: providers_pb2.ListProvidersRequest, context: grpc.ServicerContext
    ) -> providers_pb2.ListProvidersResponse:
        return providers_pb2.ListProvidersResponse(providers=[self._message(row) for row in self.reads.providers()])

    @rpc
    def GetProvider(
        self, request: providers_pb2.GetProviderRequest, context: grpc.ServicerContext
    ) -> providers_pb2.Provider:
        return self._message(self._row(self._type(request)))

    @rpc
    def EnableProvider(
        self, request: providers_pb2.GetProviderRequest, context: grpc.ServicerContext
    ) -> providers_pb2.Provider:
        enabled = self._change(request, context, Provider.enable)
        self.admission.admit(self._type(request))  # its queue, which waited, goes on now
        return enabled

    @rpc
    def DisableProvider(
        self, request: providers_pb2.GetProviderRequest, context: grpc.ServicerContext
    ) -> providers_pb2.Provider:
        return self._change(request, context, Provider.disable)

    @rpc
    def SetProviderCapacity(
        self, request: providers_pb2.SetProviderCapacityRequest, context: grpc.ServicerContext
    ) -> providers_pb2.Provider:
        if request.max_workers < 0:
            raise InvalidInput("max workers must not be negative (0: back to each server's default)")
        if request.workers_unchanged and request.max_workers:
            raise InvalidInput("max workers given with workers unchanged: give one or the other")
        cpu = request.max_cpu_cores if request.HasField("max_cpu_cores") else None
        memory = request.max_memory_bytes if request.HasField("max_memory_bytes") else None
        provider_type = self._type(request)
        self._row(provider_type)

        def run() -> tuple[None, list[Provider]]:
            provider = self.store.load(Provider, PROVIDER_IDS[provider_type])
            if not request.workers_unchanged:
                provider.set_capacity(request.max_workers or None)
            provider.set_resources(resource_limits(provider.resource_limits, cpu, memory))
            return None, [provider]

        self.store.command(Meta(actor=caller().name), run)
        self.admission.admit(provider_type)  # more room lets queued jobs go now
        return self._message(self._row(provider_type))

    @rpc
    def CheckProviderHealth(
        self, request: providers_pb2.GetProviderRequest, context: grpc.ServicerContext
    ) -> providers_pb2.Provider:
        provider_type = self._type(request)
        self._row(provider_type)
        if provider_type in self.registry.providers:
            self.registry.check(provider_type)
        return self._message(self._row(provider_type))


class MetricsService(metrics_pb2_grpc.MetricsServiceServicer):
    def __init__(self, reads: ReadModels, counters: RelayCounters, connected: Callable[[], int]) -> None:
        self.reads = reads
        self.counters = counters
        self.connected = connected

    @rpc
    def GetMetrics(self, request: metrics_pb2.GetMetricsRequest, context: grpc.ServicerContext) -> metrics_pb2.Metrics:
        pending, dead, lag_ms = self.reads.outbox_stats()
        return metrics_pb2.Metrics(
            jobs_by_state=self.reads.counts("jobs_by_state"),
            sagas_by_state=self.reads.counts("sagas_by_state"),
            outbox_pending=pending,
            outbox_dead_letter=dead,
            outbox_lag_ms=lag_ms,
            relay_handled=self.counters.handled,
            relay_failed=self.counters.failed,
            relay_lag_p50_ms=round(self.counters.lag_p50_ms()),
            connected_workers=self.connected(),
        )
