"""The Provider aggregate: a place where workers run, switched on and off by people."""

from __future__ import annotations

from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import event

from hodei.domain.base import HodeiAggregate
from hodei.errors import InvalidInput

# No provider runs more workers at once than this, whatever it is set to.
MAX_CAPACITY = 100_000


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

    def record_health(self, health: ProviderHealth, message: str | None) -> None:
        """Only changes become events, so a probe every few seconds costs nothing."""
        if (self.health, self.health_message) != (health, message):
            self._health_changed(health=health.value, message=message)

    @event("ProviderCapacityChanged")
    def _capacity_changed(self, max_workers: int | None) -> None:
        self.config = {key: value for key, value in self.config.items() if key != "max_workers"}
        if max_workers is not None:
            self.config["max_workers"] = max_workers

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
