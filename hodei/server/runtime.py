"""Everything one server process runs, built from the configuration: the pool, the
event store, the providers, the saga engine, the outbox relay and the sweeper."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from uuid import UUID

from hodei.admission import Admission
from hodei.artifacts import ArtifactStore
from hodei.cancels import Children
from hodei.clock import DatabaseClock
from hodei.config import Config
from hodei.cron import CronJobs
from hodei.domain.provider import ProviderType
from hodei.domain.saga import Saga
from hodei.faults import Faults
from hodei.inputs import InputStore
from hodei.limits import Limits
from hodei.liveness import Liveness
from hodei.logs import LogStore
from hodei.metrics import PlatformMetrics
from hodei.pools import Pools
from hodei.providers.base import WorkerProvider
from hodei.providers.local import LocalProvider
from hodei.providers.registry import ProviderRegistry, register_providers
from hodei.relay import Relay
from hodei.retention import Retention
from hodei.sagas import catalog, routes
from hodei.sagas.deps import SagaDeps
from hodei.sagas.engine import SagaEngine
from hodei.server.preflight import Clocks
from hodei.server.tls import ServerCertificates
from hodei.signals import Signals
from hodei.store.app import HodeiStore
from hodei.store.db import fetch_value, open_pool
from hodei.store.instances import HEARTBEAT, ServerInstances
from hodei.store.job_secrets import JobSecrets
from hodei.store.readmodels import ReadModels
from hodei.sweeper import Sweeper
from hodei.tokens import TokenSigner
from hodei.webhooks import Webhooks

log = logging.getLogger(__name__)

SEED_PROVIDERS = (ProviderType.DOCKER, ProviderType.KUBERNETES)


def build_providers(
    config: Config, installation: str
) -> tuple[dict[ProviderType, WorkerProvider], dict[ProviderType, str]]:
    """The providers this process can use, and for the others why not."""
    providers: dict[ProviderType, WorkerProvider] = {}
    reasons: dict[ProviderType, str] = {}
    if config.docker.enabled:
        from hodei.providers.docker import DockerProvider

        providers[ProviderType.DOCKER] = DockerProvider(
            config.docker, installation, config.timing.kill_grace, config.worker_max_processes
        )
    else:
        reasons[ProviderType.DOCKER] = "disabled by HODEI_DOCKER_ENABLED=0"
    if config.kubernetes.enabled:
        from hodei.providers.kubernetes import KubernetesProvider

        try:
            providers[ProviderType.KUBERNETES] = KubernetesProvider(config.kubernetes, installation)
        except Exception as exc:
            reasons[ProviderType.KUBERNETES] = f"initialisation failed: {exc}"
    else:
        reasons[ProviderType.KUBERNETES] = "disabled by HODEI_KUBERNETES_ENABLED=0"
    if config.local_enabled:
        providers[ProviderType.LOCAL] = LocalProvider(
            installation,
            config.local_worker_command,
            config.log_dir,
            config.timing.kill_grace,
            config.local_run_as,
            config.worker_max_processes,
        )
    else:
        reasons[ProviderType.LOCAL] = "disabled by HODEI_LOCAL_ENABLED=0"
    if config.sim_enabled:
        from hodei.providers.sim import SimProvider

        providers[ProviderType.SIM] = SimProvider()
    else:
        reasons[ProviderType.SIM] = "disabled by HODEI_SIM_ENABLED=0"
    return providers, reasons


def installation_id(store: HodeiStore) -> str:
    found = fetch_value(store.pool, "installation_id")
    if found is None:
        raise RuntimeError("the installation id is missing: run `hodei-server migrate`")
    return str(found)


class Runtime:
    def __init__(self, config: Config, after_commit: Callable[[Saga], None] | None = None) -> None:
        self.config = config
        self.certificates = ServerCertificates(config.tls)
        # One thread of the pool's own: psycopg_pool opens one connection at a time as the
        # pool grows (``_maybe_grow_pool``), and returns them in the caller's thread (no
        # reset), so its default three left two idle: a server's threads count against
        # #13's 64 with 1,000 workers connected.
        self.pool = open_pool(
            config.database_url, min_size=2, max_size=config.database_connections, name="hodei-server", workers=1
        )
        self.store = HodeiStore(self.pool)
        self.reads = ReadModels(self.pool)
        wanted = [
            *SEED_PROVIDERS,
            *([ProviderType.LOCAL] if config.local_enabled else []),
            *([ProviderType.SIM] if config.sim_enabled else []),
        ]
        register_providers(self.store, wanted)
        self.installation = installation_id(self.store)
        self.signals = Signals(config.database_url)
        self.signer = TokenSigner.from_database(self.pool)
        providers, reasons = build_providers(config, self.installation)
        self.registry = ProviderRegistry(self.store, providers, reasons, config.default_provider)
        self.logs = LogStore(config.log_dir, config.max_log_bytes)
        self.artifacts = ArtifactStore(config.log_dir / "artifacts", config.max_artifact_bytes)
        self.inputs = InputStore(self.artifacts, config.max_input_bytes)
        self.faults = Faults(config.fault)
        self.liveness = Liveness(self.pool, config.server_id)
        self.secrets = JobSecrets(self.pool)
        # Deadlines' time, PostgreSQL's (set by ``clocks``, in ``start`` and at each beat).
        self.clock = DatabaseClock()
        self.cron_jobs = CronJobs(
            self.store,
            self.secrets,
            kill_grace=config.timing.kill_grace,
            clock=self.clock,
            bounds=config.job_bounds,
        )
        self.pools = Pools(self.store)
        self.limits = Limits(self.store)
        self.instances = ServerInstances(self.pool, config.server_id)
        self.clocks = Clocks(self.pool, self.clock)
        self.admission = Admission(
            self.store,
            {provider_type: config.max_workers[provider_type.value] for provider_type in ProviderType},
            {ProviderType(name): limit for name, limit in config.max_starting.items()},
            fair_window=config.fair_window,
        )
        deps = SagaDeps(
            store=self.store,
            providers=self.registry,
            admission=self.admission,
            signer=self.signer,
            logs=self.logs,
            timing=config.timing,
            dial=self.certificates.worker_environment,
            worker_addresses=self._worker_addresses,
            clock=self.clock,
            forget_worker=self._forget_worker,
        )
        self.engine = SagaEngine(self.store, catalog.definitions(deps), self.clock, after_commit)
        self.webhooks = Webhooks(self.store, self.secrets, self.reads)
        self.metrics = PlatformMetrics(
            self.reads, self.cron_jobs, self.pools, self.limits, self.webhooks, self.admission
        )
        self.relay = Relay(
            self.pool,
            routes.build(self.engine, self.store, self.admission),
            config.relay,
            config.server_id,
            self.signals,
            delivered=self.metrics.delivered,
        )
        self.store.deliver_with(self.relay)
        self.sweeper = Sweeper(
            self.store,
            self.engine,
            self.registry,
            self.liveness,
            self.secrets,
            self.admission,
            self.instances,
            Retention(self.store, self.logs, self.artifacts, config.outbox_retention, config.log_retention),
            self.cron_jobs,
            Children(self.store, config.timing.kill_grace, self.clock),
            self.webhooks,
            config.timing,
            config.secret_retention,
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _worker_addresses(self) -> list[str]:
        """This server's worker address, then the other live servers' (a worker tries them
        in turn, so a server's death does not strand it)."""
        addresses = [self.config.worker_server_address]
        try:
            peers = self.instances.peers()
        except Exception as exc:
            log.warning("could not read the other servers' addresses: %s", exc)
            peers = []
        for peer in peers:
            if peer.worker_address not in addresses:
                addresses.append(peer.worker_address)
        return addresses

    def _forget_worker(self, worker_id: UUID) -> None:
        self.liveness.forget(worker_id)

    def start(self, api_address: str) -> None:
        """Registers this instance, then starts the listener, the relay and the sweeper
        (after one reconcile)."""
        providers = [provider_type.value for provider_type in self.registry.providers]
        self.instances.register(providers, self.config.worker_server_address, api_address)
        self.clocks.check()
        self.signals.start()
        self.sweeper.sweep(reconcile=True)
        for name, target in (
            ("hodei-relay", self.relay.run),
            ("hodei-sweeper", self.sweeper.run),
            ("hodei-instance", self._beat),
            ("hodei-liveness", self._flush_liveness),
        ):
            thread = threading.Thread(target=target, args=(self._stop,), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT):
            try:
                self.instances.beat()
                self.clocks.check()
            except Exception as exc:
                log.warning("could not record this instance's heartbeat: %s", exc)

    def _flush_liveness(self, stop: threading.Event) -> None:
        """Writes the workers' signs of life twice per heartbeat interval, in one go."""
        while not stop.wait(self.config.timing.heartbeat_interval / 2):
            try:
                self.liveness.flush()
            except Exception as exc:
                log.warning("could not record the workers' heartbeats: %s", exc)
        self.liveness.flush()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        if self._threads:
            try:
                self.instances.deregister()
            except Exception as exc:
                log.warning("could not deregister this instance: %s", exc)
        self.engine.close()
        self.registry.close()
        self.signals.stop()
        self.pool.close()
