"""What the saga definitions need from the rest of the server."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from hodei.admission import Admission
from hodei.config import Timing
from hodei.domain.job import Job
from hodei.domain.provider import ProviderType
from hodei.domain.worker import Worker
from hodei.logs import LogStore
from hodei.providers.registry import ProviderRegistry
from hodei.store.app import HodeiStore
from hodei.tokens import TokenSigner


@dataclass(frozen=True)
class SagaDeps:
    store: HodeiStore
    providers: ProviderRegistry
    admission: Admission
    signer: TokenSigner
    logs: LogStore
    timing: Timing
    # How workers reach the server: with TLS, what to trust (PEM text in HODEI_TLS_*).
    dial: Mapping[str, str]
    # Addresses of the live servers, this one first: the worker's HODEI_SERVER_ADDRESS.
    worker_addresses: Callable[[], list[str]]
    clock: Callable[[], datetime]
    # Forgets a worker's heartbeat record once it is gone.
    forget_worker: Callable[[UUID], None]

    def job(self, job_id: str) -> Job:
        return self.store.load(Job, job_id)

    def worker(self, worker_id: str) -> Worker:
        return self.store.load(Worker, worker_id)

    def destroy(self, worker: Worker) -> None:
        """Removes the worker's resource (idempotent) and its liveness record."""
        self.providers.get(ProviderType(worker.provider_type)).destroy_worker(str(worker.id))
        self.forget_worker(worker.id)


def terminate(deps: SagaDeps, worker_id: str, reason: str) -> list[Worker]:
    """Records the end of a worker whose resource is gone."""
    worker = deps.worker(worker_id)
    worker.terminate(reason)
    return [worker]
