"""The Docker provider: each worker is a container ``hodei-worker-<worker id>`` of
the worker image, or of the job's own image with the agent brought in
(``hodei.providers.agent_bundle``), labelled so that strays can be found and removed."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import docker
from docker.errors import APIError, ContainerError, DockerException, ImageNotFound, NotFound
from requests.exceptions import ConnectionError as DroppedConnection
from requests.exceptions import RequestException
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from hodei.config import DockerConfig
from hodei.domain.provider import ProviderType
from hodei.errors import ProviderError, ProviderUnavailable
from hodei.providers.agent_bundle import ENTRYPOINT, MOUNT, agent_env, fill_command
from hodei.providers.base import (
    LABEL_JOB,
    LABEL_MANAGED,
    LABEL_WORKER,
    LEAST_CPU_CORES,
    MANAGER,
    WORKER_OOM_SCORE_ADJ,
    Health,
    Observation,
    WorkerLaunch,
    WorkerProvider,
    resource_name,
)
from hodei.providers.disk import DiskUse, DiskWatch

log = logging.getLogger(__name__)
T = TypeVar("T")

LABEL_INSTALLATION = "hodei.installation"
# On a worker's container whose job has a disk limit (--disk): the limit, in bytes.
LABEL_DISK = "hodei.disk-limit"
# On a bundle volume: the id of the worker image it was filled from.
LABEL_BUNDLE = "hodei.agent-bundle"
# What the SDK raises when the engine cannot be reached (requests errors are not DockerExceptions).
_ENGINE_DOWN = (DockerException, RequestException, OSError)
# The oldest API our engines speak (Debian's 20.10); fixing it avoids a version
# round trip when the client is built, so the provider exists while the engine is down.
API_VERSION = "1.41"


class DockerProvider(WorkerProvider):
    provider_type = ProviderType.DOCKER
    inspectable = True

    def __init__(
        self, config: DockerConfig, installation: str, kill_grace: float = 5.0, max_processes: int = 0
    ) -> None:
        """``max_processes``: at most so many processes and threads in a worker's container
        (``--pids-limit``; 0: no limit)."""
        self.config = config
        self.installation = installation
        self.kill_grace = kill_grace
        self.max_processes = max_processes
        self.url = config.host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self.client = docker.DockerClient(base_url=self.url, version=API_VERSION, timeout=30)
        # The worker images (ids) whose bundle volume is filled.
        self._filled: set[str] = set()
        # The CPUs of the engine's host (``_host_cpus``), once asked.
        self._cpus: int | None = None
        self._filling = threading.Lock()
        self.disk = DiskWatch("docker", self._disk_use, self._stop_for_disk)

    @staticmethod
    def _retry(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One more try on a dropped connection: after an engine restart the client's
        pooled keep-alive connections are dead, and only the first use finds out."""
        retrying = Retrying(stop=stop_after_attempt(2), retry=retry_if_exception_type(DroppedConnection), reraise=True)
        for attempt in retrying:
            with attempt:
                return call(*args, **kwargs)
        raise AssertionError("unreachable")

    def _unreachable(self, exc: Exception) -> ProviderUnavailable:
        return ProviderUnavailable(f"the Docker engine at {self.url} is unreachable: {exc}")

    def create_worker(self, launch: WorkerLaunch) -> str:
        name = resource_name(launch.worker_id)
        try:
            options: dict[str, Any] = {
                "name": name,
                "detach": True,
                "environment": dict(launch.env),
                "labels": {
                    LABEL_MANAGED: MANAGER,
                    LABEL_INSTALLATION: self.installation,
                    LABEL_WORKER: launch.worker_id,
                    LABEL_JOB: launch.job_id,
                },
                "network_mode": self.config.network,
                # The agent is PID 1: it reaps the job's orphans and handles SIGTERM, and,
                # being non-dumpable, no process of the job can read its environment
                # (an init process in front of it would show the same in /proc/1/environ).
                "stop_signal": "SIGTERM",
                "oom_score_adj": WORKER_OOM_SCORE_ADJ,
            }
            if self.config.network != "host":
                options["extra_hosts"] = {"host.docker.internal": "host-gateway"}
            if launch.cpu_cores > 0:
                cores = max(launch.cpu_cores, LEAST_CPU_CORES)
                options["nano_cpus"] = int((min(cores, self._host_cpus()) if cores > 1 else cores) * 1e9)
            if launch.memory_bytes > 0:
                options["mem_limit"] = launch.memory_bytes
            if self.max_processes:
                options["pids_limit"] = self.max_processes
            if launch.disk_bytes > 0:
                # The overlay2 engines of ext4 hosts take no --storage-opt size: measured instead.
                options["labels"][LABEL_DISK] = str(launch.disk_bytes)
                self.disk.start()
            if launch.image:
                options.update(self._in_image(launch.image, launch.image_pull, options["environment"]))
            container = self._retry(self.client.containers.run, launch.image or self.config.image, **options)
            return str(container.id)
        except ImageNotFound as exc:
            if launch.image:
                raise ProviderError(f"the job's image {launch.image} is not in the Docker engine: {exc}") from exc
            raise ProviderError(
                f"the worker image {self.config.image} is not in the Docker engine: build it with `just build-worker`"
            ) from exc
        except APIError as exc:
            if exc.status_code == 409:  # created before (a retry, or a concurrent create): reuse it
                found = self._find(launch.worker_id)
                if found is not None:
                    return str(found.id)
            raise ProviderError(f"Docker refused to create {name}: {exc.explanation or exc}") from exc
        except _ENGINE_DOWN as exc:
            raise self._unreachable(exc) from exc

    def _host_cpus(self) -> int:
        """The most CPUs a container can be given: the engine's host's. A job asking for
        more gets them all, as a local job's quota past the host's cores does; the engine
        refused to create the container ("Range of CPUs is from 0.01 to 2.00, as there are
        only 2 CPUs"). Asked of the engine once, when a job first wants more than one."""
        if self._cpus is None:
            self._cpus = int(self._retry(self.client.info)["NCPU"])
        return self._cpus

    def _in_image(self, image: str, pull: str, agent_vars: dict[str, str]) -> dict[str, Any]:
        """A job's own image, pulled as ``pull`` says (by default when the engine lacks it),
        with the agent started from the bundle; the container keeps the image's ENV, WORKDIR
        and USER, which the agent gives the command as `docker run` of the image would."""
        held = pull != "always" and self._lookup(self.client.images.get, image) is not None
        if not held and pull == "never":
            raise ProviderError(f"the job's image {image} is not in the Docker engine (--pull never)")
        if not held:
            try:
                self.client.images.pull(image)
            except (APIError, ImageNotFound) as exc:
                raise ProviderError(f"cannot pull the job's image {image}: {exc.explanation or exc}") from exc
        return {
            "entrypoint": ENTRYPOINT,
            "command": [],
            "environment": agent_env(agent_vars),
            "volumes": {self._bundle(): {"bind": MOUNT, "mode": "ro"}},
        }

    def _bundle(self) -> str:
        """The volume holding the agent for jobs in their own images, filled once from the
        worker image (a rebuilt worker image gets a volume of its own) by a container of it."""
        try:
            worker_image = self._retry(self.client.images.get, self.config.image).id
        except ImageNotFound as exc:
            raise ProviderError(
                f"the worker image {self.config.image} is not in the Docker engine: build it with `just build-worker`"
            ) from exc
        volume = f"hodei-agent-{worker_image.removeprefix('sha256:')[:12]}"
        with self._filling:
            found = self._lookup(self.client.volumes.get, volume)
            filled_from = None if found is None else (found.attrs.get("Labels") or {}).get(LABEL_BUNDLE)
            # Removed since (docker volume prune), or made empty by the engine for a job's
            # mount when it had just been removed (no labels): filled again.
            if filled_from != worker_image:
                self._filled.discard(worker_image)
            if worker_image not in self._filled:
                if found is not None and filled_from is None:
                    self._retry(found.remove)
                labels = {LABEL_MANAGED: MANAGER, LABEL_BUNDLE: worker_image}
                self._retry(self.client.volumes.create, volume, labels=labels)
                try:
                    self.client.containers.run(
                        worker_image,
                        entrypoint=fill_command("/bundle"),
                        command=[],
                        user="0",
                        network_mode="none",
                        volumes={volume: {"bind": "/bundle", "mode": "rw"}},
                        labels={LABEL_MANAGED: MANAGER, LABEL_INSTALLATION: self.installation},
                        remove=True,
                    )
                except ContainerError as exc:
                    raise ProviderError(f"cannot put the agent into volume {volume}: {exc}") from exc
                self._filled.add(worker_image)
                log.info("the agent for jobs in their own images is in volume %s", volume)
                self._remove_old_bundles(worker_image)
            return volume

    def _lookup(self, get: Callable[[str], Any], name: str) -> Any:
        """An image or a volume the engine holds (``get``: the SDK's lookup of one); None
        without one."""
        try:
            return self._retry(get, name)
        except NotFound:  # ImageNotFound is one
            return None

    def _remove_old_bundles(self, worker_image: str) -> None:
        """The volumes of worker images built before this one (shared by the installations
        on this engine, as the images are); one still mounted by a running job stays until
        a later fill."""
        for old in self._retry(self.client.volumes.list, filters={"label": LABEL_BUNDLE}):
            if old.attrs.get("Labels", {}).get(LABEL_BUNDLE, worker_image) == worker_image:
                continue
            try:
                old.remove()
                log.info("removed volume %s of an earlier worker image", old.name)
            except APIError as exc:
                log.info("volume %s of an earlier worker image stays: %s", old.name, exc.explanation or exc)

    def _find(self, worker_id: str) -> Any:
        try:
            container = self._retry(self.client.containers.get, resource_name(worker_id))
        except NotFound:
            return None
        if container.labels.get(LABEL_INSTALLATION) != self.installation:
            raise ProviderError(f"a container named {container.name} exists but was not created by this installation")
        return container

    def destroy_worker(self, worker_id: str) -> None:
        try:
            container = self._find(worker_id)
            if container is not None:
                if container.status == "running":
                    container.stop(timeout=int(self.kill_grace))
                container.remove(force=True)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code not in (404, 409):  # gone, or already being removed
                message = f"Docker could not remove the worker {worker_id}: {exc.explanation or exc}"
                raise ProviderError(message) from exc
        except _ENGINE_DOWN as exc:
            raise self._unreachable(exc) from exc
        self.disk.forget(worker_id)

    def _disk_use(self) -> list[DiskUse]:
        """The writable layer of each running container with a disk limit, as the engine
        measures it (``SizeRw``: a walk of what the container wrote, done for these only)."""
        filters = {"label": [f"{LABEL_INSTALLATION}={self.installation}", LABEL_DISK], "status": "running"}
        listed = self._retry(self.client.api.containers, filters=filters, size=True)
        return [
            DiskUse(
                worker_id=labels[LABEL_WORKER],
                used=int(container.get("SizeRw") or 0),
                limit=int(labels[LABEL_DISK]),
                where=f"container {(container.get('Names') or ['?'])[0].lstrip('/')}",
            )
            for container in listed
            if LABEL_WORKER in (labels := container.get("Labels") or {})
        ]

    def _stop_for_disk(self, worker_id: str) -> None:
        """SIGTERM to the agent, which stops its job and reports it stopped; the job's
        end destroys the container as usual."""
        try:
            self._retry(self.client.api.kill, resource_name(worker_id), signal="SIGTERM")
        except APIError as exc:  # NotFound is one
            if exc.status_code not in (404, 409):  # gone, or no longer running
                raise

    def stopped_by_others(self, worker_id: str) -> str | None:
        return self.disk.why(worker_id)

    def output_tail(self, worker_id: str, lines: int) -> str:
        try:
            container = self._find(worker_id)
            if container is None:
                return ""
            output: bytes = self._retry(container.logs, tail=lines)
        except NotFound:
            return ""
        except _ENGINE_DOWN as exc:
            raise self._unreachable(exc) from exc
        return output.decode(errors="replace")

    def observe(self) -> list[Observation]:
        try:
            # The low-level list is one call; the high-level one fetches each container
            # and fails when one is removed meanwhile.
            label = f"{LABEL_INSTALLATION}={self.installation}"
            listed = self._retry(self.client.api.containers, all=True, filters={"label": label})
        except _ENGINE_DOWN as exc:
            raise self._unreachable(exc) from exc
        seen = []
        for container in listed:
            labels = container.get("Labels") or {}
            if labels.get(LABEL_INSTALLATION) != self.installation or LABEL_WORKER not in labels:
                continue
            state = container.get("State")
            name = (container.get("Names") or ["?"])[0].lstrip("/")
            failure = None
            if state in ("exited", "dead"):
                failure = self._exit_reason(container["Id"], name)
                if over := self.disk.why(labels[LABEL_WORKER]):
                    failure = f"{failure}: {over}"
            if LABEL_DISK in labels:
                self.disk.start()  # also for the limited workers found after a restart
            seen.append(
                Observation(
                    worker_id=labels[LABEL_WORKER],
                    job_id=labels.get(LABEL_JOB),
                    resource_id=str(container["Id"]),
                    running=state == "running",
                    failure=failure,
                )
            )
        return seen

    def _exit_reason(self, container_id: str, name: str) -> str:
        try:
            state = self._retry(self.client.api.inspect_container, container_id)["State"]
        except NotFound:
            return f"container {name} is gone"
        reason = f"container {name} exited with code {state.get('ExitCode')}"
        return reason + " (killed: out of memory)" if state.get("OOMKilled") else reason

    def health(self) -> Health:
        try:
            version = self._retry(self.client.version).get("Version", "?")
        except _ENGINE_DOWN as exc:
            return Health(False, f"the Docker engine at {self.url} is unreachable: {exc}")
        try:
            self._retry(self.client.images.get, self.config.image)
        except ImageNotFound:
            return Health(False, f"the worker image {self.config.image} is missing: build it with `just build-worker`")
        except _ENGINE_DOWN as exc:
            return Health(False, f"the Docker engine at {self.url} failed: {exc}")
        processes = f", at most {self.max_processes} processes a worker" if self.max_processes else ""
        return Health(True, f"Docker engine {version} at {self.url}, image {self.config.image}{processes}")

    def close(self) -> None:
        self.disk.close()
        self.client.close()
