"""What the saga definitions need from the rest of the server."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from hodei.admission import Admission
from hodei.config import Timing
from hodei.domain.job import Job
from hodei.domain.provider import ProviderType
from hodei.domain.worker import Worker
from hodei.errors import ProviderUnavailable
from hodei.logs import LogStore
from hodei.providers.registry import ProviderRegistry
from hodei.store.app import HodeiStore
from hodei.tokens import TokenSigner

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SagaDeps:
    store: HodeiStore
    providers: ProviderRegistry
    admission: Admission
    signer: TokenSigner
    logs: LogStore
    timing: Timing
    # How workers reach the server: with TLS, what to trust (PEM text in HODEI_TLS_*).
    # What a new worker is told about trusting the server (read as each is made).
    dial: Callable[[], Mapping[str, str]]
    # Addresses of the live servers, this one first: the worker's HODEI_SERVER_ADDRESS.
    worker_addresses: Callable[[], list[str]]
    clock: Callable[[], datetime]
    # Forgets a worker's heartbeat record once it is gone.
    forget_worker: Callable[[UUID], None]

    def job(self, job_id: str) -> Job:
        return self.store.load(Job, job_id)

    def worker(self, worker_id: str) -> Worker:
        return self.store.load(Worker, worker_id)

    def destroy(self, worker: Worker) -> dict[str, Any]:
        """Removes the worker's resource (idempotent) and its liveness record; the outcome
        for ``terminate``. A provider that cannot be reached now (its engine or API down, or
        not run by this server) leaves the resource to the reconciler, which removes a
        terminated worker's once the provider answers (``left`` says why): a release that
        failed instead would keep a finished job's worker live, and its slot taken, for ever."""
        outcome: dict[str, Any] = {}
        try:
            self.providers.get(ProviderType(worker.provider_type)).destroy_worker(str(worker.id))
        except ProviderUnavailable as exc:
            log.warning("worker %s: its resource is left to the reconciler: %s", worker.id, exc)
            outcome = {"left": str(exc)}
        self.forget_worker(worker.id)
        return outcome


def terminate(deps: SagaDeps, worker_id: str, reason: str, outcome: Mapping[str, Any] | None = None) -> list[Worker]:
    """Records the end of a worker whose resource is gone, or left to the reconciler
    (``outcome`` of ``SagaDeps.destroy``)."""
    worker = deps.worker(worker_id)
    if outcome and "left" in outcome:
        reason = f"{reason}; its resource is removed once its provider answers ({outcome['left']})"
    worker.terminate(reason)
    return [worker]
