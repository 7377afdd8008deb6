"""The Provider aggregate: a place where workers run, switched on and off by people."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from hodei.domain.base import HodeiAggregate
from hodei.domain.phases import size_text
from hodei.errors import InvalidInput

# No provider runs more workers at once than this, whatever it is set to.
MAX_CAPACITY = 100_000
# Nor has more CPU cores or memory for its jobs than these (a cluster's, not a machine's).
MAX_CPU_CORES = 1_000_000.0
MAX_MEMORY_BYTES = 1024**6


class ProviderStatus(StrEnum):
    ACTIVE = "ACTIVE"
    DISABLED = "DISABLED"


class ProviderHealth(StrEnum):
    UNKNOWN = "UNKNOWN"
    HEALTHY = "HEALTHY"
    UNHEALTHY = "UNHEALTHY"


class ProviderType(StrEnum):
    DOCKER = "docker"
    KUBERNETES = "kubernetes"
    LOCAL = "local"
    # A simulated fleet, in one process the server starts (hodei/providers/sim.py).
    SIM = "sim"


# Fixed ids: the seed's provider_configs rows, and one for local processes.
PROVIDER_IDS: dict[ProviderType, UUID] = {
    ProviderType.DOCKER: UUID("11111111-1111-1111-1111-111111111111"),
    ProviderType.KUBERNETES: UUID("22222222-2222-2222-2222-222222222222"),
    ProviderType.LOCAL: UUID("33333333-3333-3333-3333-333333333333"),
    ProviderType.SIM: UUID("44444444-4444-4444-4444-444444444444"),
}

PROVIDER_NAMES: dict[ProviderType, str] = {
    ProviderType.DOCKER: "Docker",
    ProviderType.KUBERNETES: "Kubernetes",
    ProviderType.LOCAL: "Local",
    ProviderType.SIM: "Simulated",
}


@dataclass(frozen=True)
class ResourceLimits:
    """The CPU cores and memory a provider's jobs may ask for together (``provider
    capacity local --cpus 4 --memory 8Gi``: a machine's, a namespace's ResourceQuota of
    requests): a job is admitted only while the requests (``--cpu``, ``--memory``) of its
    provider's jobs admitted and not ended, and its own, are within them. None: no such
    limit (the default: only the workers are counted). A job that asks for none counts
    none, as a pod without requests counts none against a quota of requests."""

    cpu_cores: float | None = None
    memory_bytes: int | None = None

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> ResourceLimits:
        """From a provider's config (its read model's, or its aggregate's)."""
        cpu, memory = config.get("max_cpu_cores"), config.get("max_memory_bytes")
        return cls(None if cpu is None else float(cpu), None if memory is None else int(memory))

    @property
    def any(self) -> bool:
        return self.cpu_cores is not None or self.memory_bytes is not None

    def beyond(self, cpu_cores: float, memory_bytes: int) -> str | None:
        """Why a job asking for so much is never admitted, however many end; None: it may be."""
        asked = []
        if self.cpu_cores is not None and cpu_cores > self.cpu_cores:
            asked.append(f"{cpu_cores:g} CPU, more than its {self.cpu_cores:g}")
        if self.memory_bytes is not None and memory_bytes > self.memory_bytes:
            asked.append(f"{size_text(memory_bytes)} memory, more than its {size_text(self.memory_bytes)}")
        return f"it asks for {' and '.join(asked)}" if asked else None

    def text(self) -> str:
        """``4 CPU, 8.0 GiB memory``; '' without limits."""
        return ", ".join(
            [
                *([f"{self.cpu_cores:g} CPU"] if self.cpu_cores is not None else []),
                *([f"{size_text(self.memory_bytes)} memory"] if self.memory_bytes is not None else []),
            ]
        )


def resource_limits(current: ResourceLimits, cpu_cores: float | None, memory_bytes: int | None) -> ResourceLimits:
    """The limits after a change: a value given replaces its limit (0 lifts it), one not
    given (None) leaves it; refused past what any provider has."""
    if cpu_cores is not None and not (math.isfinite(cpu_cores) and 0 <= cpu_cores <= MAX_CPU_CORES):
        raise InvalidInput(f"cpus must be between 0 (no limit) and {MAX_CPU_CORES:g}, got {cpu_cores:g}")
    if memory_bytes is not None and not 0 <= memory_bytes <= MAX_MEMORY_BYTES:
        raise InvalidInput(f"memory must be between 0 (no limit) and {MAX_MEMORY_BYTES} bytes (1 EiB)")
    return ResourceLimits(
        current.cpu_cores if cpu_cores is None else (cpu_cores or None),
        current.memory_bytes if memory_bytes is None else (memory_bytes or None),
    )


class Provider(HodeiAggregate):
    id: UUID  # given by the caller (the library takes an `id` argument when annotated)

    @event("ProviderRegistered")
    def __init__(self, name: str, provider_type: str, config: dict[str, Any]) -> None:
        self.name = name
        self.provider_type = ProviderType(provider_type)
        self.config = config
        self.status = ProviderStatus.ACTIVE
        self.health = ProviderHealth.UNKNOWN
        self.health_message: str | None = None

    @classmethod
    def register(cls, provider_type: ProviderType) -> Provider:
        return cls(  # type: ignore[call-arg]  # `id` is accepted: the class annotates it
            id=PROVIDER_IDS[provider_type],
            name=PROVIDER_NAMES[provider_type],
            provider_type=provider_type.value,
            config={},
        )

    def enable(self) -> None:
        if self.status is not ProviderStatus.ACTIVE:
            self._enabled()

    def disable(self) -> None:
        if self.status is not ProviderStatus.DISABLED:
            self._disabled()

    @property
    def max_workers(self) -> int | None:
        """The capacity set through the API; None: each server's HODEI_*_MAX_WORKERS."""
        value = self.config.get("max_workers")
        return int(value) if value else None

    def set_capacity(self, max_workers: int | None) -> None:
        if max_workers is not None and not 1 <= max_workers <= MAX_CAPACITY:
            raise InvalidInput(f"max workers must be between 1 and {MAX_CAPACITY}, got {max_workers}")
        if max_workers != self.max_workers:
            self._capacity_changed(max_workers=max_workers)

    @property
    def resource_limits(self) -> ResourceLimits:
        return ResourceLimits.of(self.config)

    def set_resources(self, limits: ResourceLimits) -> None:
        if limits != self.resource_limits:
            self._resources_changed(max_cpu_cores=limits.cpu_cores, max_memory_bytes=limits.memory_bytes)

    def record_health(self, health: ProviderHealth, message: str | None) -> None:
        """Only changes become events, so a probe every few seconds costs nothing."""
        if (self.health, self.health_message) != (health, message):
            self._health_changed(health=health.value, message=message)

    @event("ProviderCapacityChanged")
    def _capacity_changed(self, max_workers: int | None) -> None:
        self.config = {key: value for key, value in self.config.items() if key != "max_workers"}
        if max_workers is not None:
            self.config["max_workers"] = max_workers

    @event("ProviderResourcesChanged")
    def _resources_changed(self, max_cpu_cores: float | None, max_memory_bytes: int | None) -> None:
        limits = {"max_cpu_cores": max_cpu_cores, "max_memory_bytes": max_memory_bytes}
        self.config = {key: value for key, value in self.config.items() if key not in limits}
        self.config.update({key: value for key, value in limits.items() if value is not None})

    @event("ProviderEnabled")
    def _enabled(self) -> None:
        self.status = ProviderStatus.ACTIVE

    @event("ProviderDisabled")
    def _disabled(self) -> None:
        self.status = ProviderStatus.DISABLED

    @event("ProviderHealthChanged")
    def _health_changed(self, health: str, message: str | None) -> None:
        self.health = ProviderHealth(health)
        self.health_message = message
