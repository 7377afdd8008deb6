"""A provider keeps every health change it ever had as an event. Choosing a job's
provider, and the sweeper's probe every second, read its recorded state (one row of its
read model), never that history: neither may cost more as the provider grows old."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hodei.domain.provider import PROVIDER_IDS, Provider, ProviderType, ResourceLimits
from hodei.domain.spec import JobSpec, Resources
from hodei.errors import InvalidInput, ProviderUnavailable
from hodei.providers.base import Health
from hodei.providers.registry import ProviderRegistry, register_providers
from hodei.store.app import HodeiStore, Meta
from hodei.testing import query
from tests.sagas_support import Effects, FakeProvider

LOCAL_ID = str(PROVIDER_IDS[ProviderType.LOCAL])


def job(provider: str, **spec: Any) -> JobSpec:
    return JobSpec(name="job", command="true", timeout_seconds=60, provider=provider, **spec)


def provider_events(url: str) -> int:
    return int(query(url, "SELECT count(*) FROM domain_events WHERE aggregate_id = %s", (LOCAL_ID,))[0][0])


def loads_of_the_provider(store: HodeiStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every read of the provider's events from now on (the aggregate's loads)."""
    loads: list[str] = []
    read = store.recorder.select_events

    def counted(originator_id: Any, **kwargs: Any) -> Any:
        if str(originator_id) == LOCAL_ID:
            loads.append(str(originator_id))
        return read(originator_id, **kwargs)

    monkeypatch.setattr(store.recorder, "select_events", counted)
    return loads


def test_choosing_a_provider_reads_its_recorded_state_not_its_history(
    store: HodeiStore, fresh_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_providers(store, [ProviderType.LOCAL])
    fake = FakeProvider(Effects(tmp_path / "effects"))
    registry = ProviderRegistry(store, {ProviderType.LOCAL: fake}, {})
    for n in range(40):  # an old provider: it went down and came back twenty times
        registry.record_health(ProviderType.LOCAL, Health(n % 2 == 1, f"probe {n}"))
    assert registry.check(ProviderType.LOCAL).healthy  # "fake provider": a change, recorded
    recorded = provider_events(fresh_database_url)
    assert recorded == 1 + 40 + 1

    loads = loads_of_the_provider(store, monkeypatch)
    assert registry.select(job("local")) is ProviderType.LOCAL
    assert registry.check(ProviderType.LOCAL).healthy  # the sweeper's probe: nothing new
    assert loads == []
    assert provider_events(fresh_database_url) == recorded

    # A change is recorded, through the aggregate (its version guards concurrent probes).
    fake.healthy = False
    assert not registry.check(ProviderType.LOCAL).healthy
    assert loads == [LOCAL_ID]
    assert provider_events(fresh_database_url) == recorded + 1
    with pytest.raises(ProviderUnavailable, match="provider local is unhealthy: the fake provider is down"):
        registry.select(job("local"))
    registry.close()


def test_a_disabled_or_unregistered_provider_is_refused_from_its_recorded_state(
    store: HodeiStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeProvider(Effects(tmp_path / "effects"))
    registry = ProviderRegistry(store, {ProviderType.LOCAL: fake}, {})
    with pytest.raises(ProviderUnavailable, match=r"provider local is not registered \(run `hodei-server migrate`\)"):
        registry.select(job("local"))
    register_providers(store, [ProviderType.LOCAL])
    provider = store.load(Provider, PROVIDER_IDS[ProviderType.LOCAL])
    provider.disable()
    store.write([provider], Meta(actor="test"))
    loads = loads_of_the_provider(store, monkeypatch)
    with pytest.raises(ProviderUnavailable, match="provider local is disabled"):
        registry.select(job("local"))
    assert loads == []
    registry.close()


def test_a_job_in_an_image_of_its_own_gets_a_provider_that_can_run_it(store: HodeiStore, tmp_path: Path) -> None:
    """The server's default provider (local) runs the agent on its host: a job with an image
    that names no provider goes to Docker, one that names local is refused, saying why."""
    register_providers(store, [ProviderType.LOCAL, ProviderType.DOCKER])
    effects = Effects(tmp_path / "effects")
    fakes = {
        ProviderType.LOCAL: FakeProvider(effects),
        ProviderType.DOCKER: FakeProvider(effects, provider_type=ProviderType.DOCKER),
    }
    registry = ProviderRegistry(store, fakes, {}, default="local")
    assert registry.select(job("")) is ProviderType.LOCAL
    assert registry.select(job("", image="python:3.12-slim")) is ProviderType.DOCKER
    assert registry.select(job("docker", image="python:3.12-slim")) is ProviderType.DOCKER
    with pytest.raises(InvalidInput, match=r"provider local cannot run a job in an image of its own \(--image\)"):
        registry.select(job("local", image="python:3.12-slim"))
    fakes[ProviderType.DOCKER].healthy = False
    registry.check(ProviderType.DOCKER)
    with pytest.raises(ProviderUnavailable, match="no provider can take the job: provider docker is unhealthy"):
        registry.select(job("", image="python:3.12-slim"))
    registry.close()


def test_a_job_placed_on_chosen_nodes_goes_to_kubernetes_the_only_provider_with_nodes(
    store: HodeiStore, tmp_path: Path
) -> None:
    """--node-selector and --toleration place a pod on a node: a job with either that names
    no provider goes to Kubernetes whatever the default; one naming another is refused,
    saying why; with an image too, the providers that can do both (Kubernetes) remain."""
    register_providers(store, [ProviderType.LOCAL, ProviderType.DOCKER, ProviderType.KUBERNETES])
    effects = Effects(tmp_path / "effects")
    fakes = {
        provider_type: FakeProvider(effects, provider_type=provider_type)
        for provider_type in (ProviderType.LOCAL, ProviderType.DOCKER, ProviderType.KUBERNETES)
    }
    registry = ProviderRegistry(store, fakes, {}, default="docker")
    assert registry.select(job("")) is ProviderType.DOCKER
    # A default outside the order a provider is otherwise chosen in (sim) is still the default.
    register_providers(store, [ProviderType.SIM])
    fakes[ProviderType.SIM] = FakeProvider(effects, provider_type=ProviderType.SIM)
    simulated = ProviderRegistry(store, fakes, {}, default="sim")
    assert simulated.select(job("")) is ProviderType.SIM
    simulated.close()
    assert registry.select(job("", node_selector={"disktype": "ssd"})) is ProviderType.KUBERNETES
    assert registry.select(job("", tolerations=("dedicated=batch:NoSchedule",))) is ProviderType.KUBERNETES
    assert registry.select(job("k8s", image="python:3.12-slim", tolerations=("spot",))) is ProviderType.KUBERNETES
    for provider in ("docker", "local"):
        with pytest.raises(
            InvalidInput,
            match=rf"^provider {provider} cannot run a job on nodes of its choosing \(--node-selector, --toleration\):"
            " use kubernetes$",
        ):
            registry.select(job(provider, node_selector={"disktype": "ssd"}))
    fakes[ProviderType.KUBERNETES].healthy = False
    registry.check(ProviderType.KUBERNETES)
    with pytest.raises(ProviderUnavailable, match=r"^no provider can take the job: provider kubernetes is unhealthy"):
        registry.select(job("", image="python:3.12-slim", node_selector={"disktype": "ssd"}))
    registry.close()


def test_a_job_gets_a_provider_that_has_room_for_what_it_asks_for(store: HodeiStore, tmp_path: Path) -> None:
    """`provider capacity local --cpus 2 --memory 1Gi`: a job asking for more goes to
    another provider when it names none (the default's limit passed over as an image
    is), and is refused, saying why, when it names that one or none has room."""
    register_providers(store, [ProviderType.LOCAL, ProviderType.DOCKER])
    effects = Effects(tmp_path / "effects")
    fakes = {
        ProviderType.LOCAL: FakeProvider(effects),
        ProviderType.DOCKER: FakeProvider(effects, provider_type=ProviderType.DOCKER),
    }
    registry = ProviderRegistry(store, fakes, {}, default="local")
    local = store.load(Provider, PROVIDER_IDS[ProviderType.LOCAL])
    local.set_resources(ResourceLimits(2.0, 2**30))
    store.write([local], Meta(actor="ops"))
    assert registry.select(job("", resources=Resources(cpu_cores=2.0, memory_bytes=2**30))) is ProviderType.LOCAL
    assert registry.select(job("", resources=Resources(cpu_cores=3.0))) is ProviderType.DOCKER
    never = r"provider local never has room for the job: it asks for 3 CPU, more than its 2 \(provider capacity local\)"
    with pytest.raises(ProviderUnavailable, match=never):
        registry.select(job("local", resources=Resources(cpu_cores=3.0)))
    docker = store.load(Provider, PROVIDER_IDS[ProviderType.DOCKER])
    docker.set_resources(ResourceLimits(None, 2**29))
    store.write([docker], Meta(actor="ops"))
    with pytest.raises(ProviderUnavailable, match=r"no provider can take the job: .*more than its 512\.0 MiB"):
        registry.select(job("", resources=Resources(memory_bytes=2**30 + 1)))
    registry.close()
