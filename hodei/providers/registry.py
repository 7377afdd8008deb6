"""The providers this server initialised, and how a job's provider is chosen."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from uuid import UUID

from hodei.domain.provider import PROVIDER_IDS, Provider, ProviderHealth, ProviderStatus, ProviderType
from hodei.domain.spec import JobSpec, normalise_provider
from hodei.errors import ConcurrencyConflict, InvalidInput, ProviderUnavailable
from hodei.providers.base import Health, WorkerProvider
from hodei.roles import SYSTEM
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import fetch_one
from hodei.store.readmodels import ProviderRow

log = logging.getLogger(__name__)

# The order in which a job that names no provider gets one.
DEFAULT_ORDER = (ProviderType.DOCKER, ProviderType.KUBERNETES, ProviderType.LOCAL)
# The providers that run a job in an image of its own (JobSpec.image): the others run the
# agent on the server's host (local) or no process at all (sim).
IMAGE_PROVIDERS = (ProviderType.DOCKER, ProviderType.KUBERNETES)
# The providers that place a worker on one of several nodes (JobSpec.node_selector,
# .tolerations) and run it as a service account (JobSpec.service_account): Docker and local
# run it on their one host.
PLACING_PROVIDERS = (ProviderType.KUBERNETES,)
PROBE_TIMEOUT = 5.0
# Choosing a provider reuses a probe this recent, so back-to-back jobs do not each ask
# the engine; an engine that stops is still noticed within this time.
PROBE_REUSE = 2.0


def provider_type_of(preference: str) -> ProviderType | None:
    """``docker``, ``k8s``, a provider id...; None for empty; InvalidInput for unknown."""
    value = normalise_provider(preference)
    if not value:
        return None
    try:
        return ProviderType(value)
    except ValueError:
        pass
    try:
        wanted = UUID(value)
    except ValueError:
        wanted = None
    for provider_type, provider_id in PROVIDER_IDS.items():
        if provider_id == wanted:
            return provider_type
    known = ", ".join(t.value for t in ProviderType)
    raise InvalidInput(f"unknown provider `{preference}`; known providers: {known} (or their ids)")


def _needs(spec: JobSpec) -> list[tuple[str, tuple[ProviderType, ...]]]:
    """What the job asks of its provider that only some can give, and which can."""
    found: list[tuple[str, tuple[ProviderType, ...]]] = []
    if spec.image:
        found.append(("in an image of its own (--image)", IMAGE_PROVIDERS))
    if spec.node_selector or spec.tolerations:
        found.append(("on nodes of its choosing (--node-selector, --toleration)", PLACING_PROVIDERS))
    if spec.service_account:
        found.append(("as a service account of its choosing (--service-account)", PLACING_PROVIDERS))
    return found


def check_provider(spec: JobSpec) -> ProviderType | None:
    """The provider a job names (``provider_type_of``), refused when it cannot run the
    job as asked; None when it names none (then one of ``able_providers`` is chosen)."""
    wanted = provider_type_of(spec.provider)
    for needs, able in _needs(spec) if wanted is not None else ():
        if wanted not in able:
            runs = ", ".join(provider.value for provider in able)
            raise InvalidInput(f"provider {wanted} cannot run a job {needs}: use {runs}")
    return wanted


def can_run(provider: ProviderType, spec: JobSpec) -> bool:
    """Whether the provider can run the job as asked (an image of its own, its nodes)."""
    return all(provider in able for _, able in _needs(spec))


def able_providers(spec: JobSpec) -> tuple[ProviderType, ...]:
    """The providers a job naming none may get, in the order one is chosen, but for the
    server's default (HODEI_DEFAULT_PROVIDER, sim too), which comes first when it can."""
    return tuple(provider for provider in DEFAULT_ORDER if can_run(provider, spec))


def never_room(provider_type: ProviderType, recorded: ProviderRow, spec: JobSpec) -> str | None:
    """Why the provider never has room for the job (it asks for more CPU or memory than
    the provider's jobs may ask for together); None: it may have."""
    never = recorded.resource_limits.beyond(spec.resources.cpu_cores, spec.resources.memory_bytes)
    return (
        f"provider {provider_type} never has room for the job: {never} (provider capacity {provider_type})"
        if never
        else None
    )


def register_providers(store: HodeiStore, provider_types: Iterable[ProviderType]) -> list[ProviderType]:
    """Creates the Provider aggregates that do not exist yet; returns those created."""
    created = []
    for provider_type in provider_types:
        if store.find(Provider, PROVIDER_IDS[provider_type]) is not None:
            continue
        try:
            store.write([Provider.register(provider_type)], Meta(actor=SYSTEM))
            created.append(provider_type)
        except ConcurrencyConflict:
            pass  # another process registered it first
    return created


class ProviderRegistry:
    def __init__(
        self,
        store: HodeiStore,
        providers: Mapping[ProviderType, WorkerProvider],
        not_initialised: Mapping[ProviderType, str],
        default: str = "",
    ) -> None:
        self.store = store
        self.providers = dict(providers)
        self.not_initialised = dict(not_initialised)
        self.default = provider_type_of(default) if default else None
        self._probes = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hodei-probe")
        self._recent: dict[ProviderType, tuple[float, Health]] = {}

    def get(self, provider_type: ProviderType) -> WorkerProvider:
        try:
            return self.providers[provider_type]
        except KeyError:
            reason = self.not_initialised.get(provider_type, "not configured")
            raise ProviderUnavailable(f"provider {provider_type} is not available on this server: {reason}") from None

    def kubernetes_api(self) -> str | None:
        """The API server URL of the Kubernetes provider, when this server runs it."""
        provider = self.providers.get(ProviderType.KUBERNETES)
        host = getattr(provider, "host", None)
        return str(host) if host else None

    def probe(self, provider_type: ProviderType) -> Health:
        """Asks the provider now, bounded by a timeout (a hanging API must not block us)."""
        future = self._probes.submit(self.get(provider_type).health)
        try:
            return future.result(timeout=PROBE_TIMEOUT)
        except FutureTimeout:
            return Health(False, f"health check did not answer within {PROBE_TIMEOUT:g}s")
        except Exception as exc:
            return Health(False, f"health check failed: {exc}")

    def _recorded(self, provider_type: ProviderType) -> ProviderRow | None:
        """Its row of ``provider_configs``, in the caller's command if any (None: not registered)."""
        return fetch_one(self.store.pool, "provider_state", (PROVIDER_IDS[provider_type],), ProviderRow)

    def record_health(self, provider_type: ProviderType, health: Health) -> None:
        """Records a change of health. The sweeper probes every second: a probe that
        finds what is recorded reads one row, and only a change loads the provider."""
        recorded = self._recorded(provider_type)
        observed = ProviderHealth.HEALTHY if health.healthy else ProviderHealth.UNHEALTHY
        if recorded is not None and (recorded.health, recorded.health_message) == (observed.value, health.message):
            return

        def run() -> tuple[None, list[Provider]]:
            provider = self.store.load(Provider, PROVIDER_IDS[provider_type])
            provider.record_health(observed, health.message)
            return None, [provider]

        self.store.command(Meta(actor=SYSTEM), run)

    def check(self, provider_type: ProviderType) -> Health:
        """Probes now, records a change of health, remembers the answer."""
        health = self.probe(provider_type)
        self.record_health(provider_type, health)
        self._recent[provider_type] = (time.monotonic(), health)
        return health

    def _current_health(self, provider_type: ProviderType) -> Health:
        recent = self._recent.get(provider_type)
        if recent is not None and time.monotonic() - recent[0] < PROBE_REUSE and recent[1].healthy:
            return recent[1]
        return self.check(provider_type)

    def select(self, spec: JobSpec) -> ProviderType:
        """The provider a job will use; raises ProviderUnavailable with the reason. A job
        that names none gets the default if it can run the job as asked (an image of its
        own, nodes of its choosing, the CPU and memory it asks for), else the first of
        ``able_providers`` usable."""
        wanted = check_provider(spec)
        if wanted is not None:
            self._require_usable(wanted, spec, self._recorded(wanted))
            return wanted
        if self.default is not None and can_run(self.default, spec):
            recorded = self._recorded(self.default)
            if recorded is None or not never_room(self.default, recorded, spec):
                self._require_usable(self.default, spec, recorded)
                return self.default
        reasons = []
        for candidate in able_providers(spec):
            try:
                self._require_usable(candidate, spec, self._recorded(candidate))
                return candidate
            except ProviderUnavailable as exc:
                reasons.append(exc.message)
        raise ProviderUnavailable("no provider can take the job: " + "; ".join(reasons))

    def _require_usable(self, provider_type: ProviderType, spec: JobSpec, recorded: ProviderRow | None) -> None:
        """Raises ProviderUnavailable unless the provider can take the job now (``recorded``:
        its row, read once by the caller)."""
        self.get(provider_type)
        if recorded is None:
            raise ProviderUnavailable(f"provider {provider_type} is not registered (run `hodei-server migrate`)")
        if recorded.status == ProviderStatus.DISABLED:
            raise ProviderUnavailable(f"provider {provider_type} is disabled")
        if never := never_room(provider_type, recorded, spec):
            raise ProviderUnavailable(never)
        health = self._current_health(provider_type)
        if not health.healthy:
            raise ProviderUnavailable(f"provider {provider_type} is unhealthy: {health.message}")

    def close(self) -> None:
        self._probes.shutdown(wait=False, cancel_futures=True)
        for provider in self.providers.values():
            provider.close()
