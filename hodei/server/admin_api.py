"""The operator services: hodei.jobs.SchedulerService, ProviderManagementService and
MetricsService."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from hodei._proto import (
    metrics_pb2,
    metrics_pb2_grpc,
    providers_pb2,
    providers_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from hodei.domain.provider import PROVIDER_IDS, Provider, ProviderType
from hodei.domain.worker import WorkerState
from hodei.errors import InvalidInput, NotFound
from hodei.providers.registry import ProviderRegistry, provider_type_of
from hodei.relay import RelayCounters
from hodei.server.access import caller
from hodei.server.edge import rpc
from hodei.store.app import HodeiStore, Meta
from hodei.store.readmodels import ProviderRow, ReadModels

MAX_WORKERS_LISTED = 1000


class SchedulerService(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, reads: ReadModels) -> None:
        self.reads = reads

    @rpc
    def GetQueueStatus(
        self, request: scheduler_pb2.GetQueueStatusRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.QueueStatus:
        counts = self.reads.counts("jobs_by_state")
        return scheduler_pb2.QueueStatus(**{state.lower(): count for state, count in counts.items()})

    @rpc
    def ListWorkers(
        self, request: scheduler_pb2.ListWorkersRequest, context: grpc.ServicerContext
    ) -> scheduler_pb2.ListWorkersResponse:
        state = request.state.strip().upper() or None
        if state is not None and state not in WorkerState.__members__:
            raise InvalidInput(f"unknown worker state `{request.state}`; known: {', '.join(WorkerState)}")
        if request.limit < 0:
            raise InvalidInput("limit must not be negative")
        rows = self.reads.workers(state, min(request.limit or 50, MAX_WORKERS_LISTED))
        return scheduler_pb2.ListWorkersResponse(
            workers=[
                scheduler_pb2.Worker(
                    id=str(row.id),
                    job_id=str(row.job_id),
                    state=row.state,
                    provider_type=row.provider_type,
                    provider_resource_id=row.provider_resource_id or "",
                    error_message=row.error_message or "",
                )
                for row in rows
            ]
        )


class ProviderManagementService(providers_pb2_grpc.ProviderManagementServiceServicer):
    def __init__(self, store: HodeiStore, reads: ReadModels, registry: ProviderRegistry) -> None:
        self.store = store
        self.reads = reads
        self.registry = registry

    def _message(self, row: ProviderRow) -> providers_pb2.Provider:
        return providers_pb2.Provider(
            id=str(row.id),
            name=row.name,
            provider_type=row.provider_type,
            status=row.status,
            health=row.health,
            health_message=row.health_message or "",
            initialised=ProviderType(row.provider_type) in self.registry.providers,
        )

    def _row(self, provider_type: ProviderType) -> ProviderRow:
        for row in self.reads.providers():
            if row.provider_type == provider_type.value:
                return row
        raise NotFound(f"provider {provider_type} is not registered (run `hodei-server migrate`)")

    def _type(self, request: providers_pb2.GetProviderRequest) -> ProviderType:
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
        return self._change(request, context, Provider.enable)

    @rpc
    def DisableProvider(
        self, request: providers_pb2.GetProviderRequest, context: grpc.ServicerContext
    ) -> providers_pb2.Provider:
        return self._change(request, context, Provider.disable)

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
