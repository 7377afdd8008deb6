"""The provider interface the sagas are written against."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

from hodei.domain.provider import ProviderType

# Every resource a provider creates carries these labels, so strays can be found.
LABEL_MANAGED = "hodei.managed"
LABEL_WORKER = "hodei.worker-id"
LABEL_JOB = "hodei.job-id"
MANAGER = "hodei-jobs"


# The agent variables whose values are credentials (its single-use registration token; under
# mTLS, its client key): a provider that writes the agent's environment where more people
# may read it than the credential's own place (a pod's spec, readable with the `view`
# role) keeps these values elsewhere.
CREDENTIALS = frozenset({"HODEI_WORKER_TOKEN", "HODEI_TLS_KEY_PEM"})


# The least CPU the kernel can hold a group to: its least CFS quota, 1 ms of each 100 ms
# period. A job asking for less (Kubernetes' 1m is 0.001) is given this where the provider
# sets the quota itself: Docker's engine refused to start the container ("failed to write
# \"100\" ... cpu.cfs_quota_us: invalid argument").
LEAST_CPU_CORES = 0.01
# A worker's processes are the first the kernel's OOM killer takes, before the server's,
# PostgreSQL's or any other of the host's (as the kubelet ranks a BestEffort pod's): a
# host out of memory loses a job, not the control plane. Its job's processes inherit it.
WORKER_OOM_SCORE_ADJ = 1000


def resource_name(worker_id: str) -> str:
    """Containers and pods are named after their worker: a repeated create finds the first."""
    return f"hodei-worker-{worker_id}"


@dataclass(frozen=True)
class WorkerLaunch:
    """Everything a provider needs to start one worker."""

    worker_id: str
    job_id: str
    # The agent's environment: server address, worker and job ids, single-use token (the
    # values named in CREDENTIALS are credentials).
    env: Mapping[str, str]
    cpu_cores: float = 0.0
    memory_bytes: int = 0
    # The most the job may write to the worker's disk (JobSpec's resources.disk_bytes); 0: no limit.
    disk_bytes: int = 0
    timeout_seconds: float = 3600.0
    labels: Mapping[str, str] = field(default_factory=dict)
    # The job's own image (JobSpec.image); "": the worker image. When to pull it
    # (JobSpec.image_pull: always, missing, never; "": the provider's way).
    image: str = ""
    image_pull: str = ""
    # The node labels its pod needs and the taints it tolerates (JobSpec.node_selector,
    # .tolerations; hodei.domain.placement): Kubernetes only.
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[str, ...] = ()
    # The service account its pod runs as (JobSpec.service_account); "": the server's.
    service_account: str = ""


@dataclass(frozen=True)
class Health:
    healthy: bool
    message: str


@dataclass(frozen=True)
class Observation:
    """What the provider sees of one worker resource it manages."""

    worker_id: str
    job_id: str | None
    resource_id: str
    running: bool
    # Set when the resource ended or cannot run (exit code, image pull error, ...).
    failure: str | None = None


class WorkerProvider(ABC):
    provider_type: ProviderType
    # Whether a worker's resource can be looked at after it ended (`docker logs`,
    # `kubectl logs`): then HODEI_KEEP_FAILED_WORKERS keeps failed ones for a while.
    inspectable: bool = False

    @abstractmethod
    def create_worker(self, launch: WorkerLaunch) -> str:
        """Starts the worker and returns its resource id. Idempotent: a second call for
        the same worker returns the existing resource."""

    @abstractmethod
    def destroy_worker(self, worker_id: str) -> None:
        """Removes the worker's resource. Idempotent: a resource already gone is fine."""

    @abstractmethod
    def observe(self) -> list[Observation]:
        """Every resource this provider created (found by label), for failure detection
        and for the reconciler."""

    @abstractmethod
    def output_tail(self, worker_id: str, lines: int) -> str:
        """The last ``lines`` lines the worker itself printed (its agent's stdout and
        stderr), to say why a worker that never registered failed; "" when none."""

    @abstractmethod
    def health(self) -> Health:
        """Whether workers can be created now, and why not."""

    def stopped_by_others(self, worker_id: str) -> str | None:
        """Why the worker's resource is being removed by someone other than Hodei (a pod
        deleted with kubectl), else None. Asked when an agent reports it was stopped,
        so that the job's error names the cause, not only the signal."""
        return None

    def close(self) -> None:  # noqa: B027 (an optional hook: most providers hold nothing)
        """Releases clients and background threads."""
