"""Configuration: read from the environment once, here, into frozen dataclasses.

Every other module receives these objects as arguments; nothing else reads
``os.environ`` (the worker agent, a separate program, reads its own).
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hodei.errors import InvalidInput

_HOST_WITH_PORT = re.compile(r"^([^:\[\]]+|\[[^\]]+\]):\d+$")
DEFAULT_DATABASE_URL = "postgres://postgres:postgres@localhost:5432/hodei_jobs"

# name -> (default, description); the README's configuration table lists the same.
VARIABLES: dict[str, tuple[str, str]] = {
    "DATABASE_URL": (DEFAULT_DATABASE_URL, "PostgreSQL database"),
    "HODEI_GRPC_BIND": ("0.0.0.0", "address the gRPC server binds"),
    "HODEI_GRPC_PORT": ("50051", "gRPC port"),
    "HODEI_SERVER_HOST": ("127.0.0.1", "address workers dial to reach this server"),
    "HODEI_AUTO_MIGRATE": ("1", "apply migrations when the server starts"),
    "HODEI_DOCKER_ENABLED": ("1", "initialise the Docker provider"),
    "HODEI_KUBERNETES_ENABLED": ("0", "initialise the Kubernetes provider"),
    "HODEI_LOCAL_ENABLED": ("0", "initialise the local-process provider"),
    "HODEI_LOCAL_WORKER_COMMAND": (
        "",
        "command that starts a local worker (default: this Python's hodei_worker.agent)",
    ),
    "HODEI_DEFAULT_PROVIDER": (
        "",
        "provider for jobs that name none (default: first healthy of docker, kubernetes, local)",
    ),
    "HODEI_WORKER_IMAGE": ("hodei-jobs-worker:latest", "worker image for Docker and Kubernetes"),
    "HODEI_DOCKER_NETWORK": ("host", "network mode of worker containers"),
    "HODEI_DOCKER_HOST": ("", "Docker engine address (default: DOCKER_HOST or the local socket)"),
    "HODEI_K8S_KUBECONFIG": ("", "kubeconfig file (default: in-cluster, then ~/.kube/config)"),
    "HODEI_K8S_CONTEXT": ("", "kubeconfig context"),
    "HODEI_K8S_NAMESPACE": ("hodei-jobs-workers", "namespace of worker pods"),
    "HODEI_K8S_IMAGE_PULL_POLICY": ("IfNotPresent", "imagePullPolicy of worker pods"),
    "HODEI_K8S_SERVICE_ACCOUNT": ("", "service account of worker pods"),
    "HODEI_K8S_UNSCHEDULABLE_TIMEOUT": ("60", "seconds a pod may stay unschedulable"),
    "HODEI_LOG_DIR": ("/tmp/hodei-logs", "where job logs are stored"),
    "HODEI_HEARTBEAT_INTERVAL": ("2", "seconds between worker heartbeats"),
    "HODEI_HEARTBEAT_TIMEOUT": ("10", "seconds without a heartbeat before a worker is lost"),
    "HODEI_REGISTRATION_TIMEOUT": ("60", "seconds a new worker has to register"),
    "HODEI_TOKEN_TTL": ("300", "seconds a worker's single-use token stays valid"),
    "HODEI_KILL_GRACE": ("5", "seconds between SIGTERM and SIGKILL on timeout or cancel"),
    "HODEI_RELAY_BATCH": ("100", "outbox rows claimed per batch"),
    "HODEI_RELAY_POLL_INTERVAL": ("1.0", "seconds between outbox polls when no NOTIFY arrives"),
    "HODEI_RELAY_LEASE": ("30", "seconds an outbox claim lasts"),
    "HODEI_RELAY_MAX_ATTEMPTS": ("8", "deliveries of a failing outbox row before it is dead-lettered"),
    "HODEI_RELAY_THREADS": ("8", "handler threads of the relay"),
    "HODEI_SWEEP_INTERVAL": ("1.0", "seconds between deadline and liveness sweeps"),
    "HODEI_RECONCILE_INTERVAL": ("30", "seconds between stray-worker reconciliations"),
}


def _get(env: Mapping[str, str], name: str) -> str:
    value = env.get(name)
    return VARIABLES[name][0] if value is None or value == "" else value


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = _get(env, name).strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise InvalidInput(f"{name} must be 1 or 0, got `{value}`")


def _number(env: Mapping[str, str], name: str) -> float:
    raw = _get(env, name)
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a number, got `{raw}`") from None
    if value <= 0:
        raise InvalidInput(f"{name} must be positive, got `{raw}`")
    return value


@dataclass(frozen=True)
class DockerConfig:
    enabled: bool
    image: str
    network: str
    host: str


@dataclass(frozen=True)
class KubernetesConfig:
    enabled: bool
    image: str
    kubeconfig: str
    context: str
    namespace: str
    image_pull_policy: str
    service_account: str
    unschedulable_timeout: float


@dataclass(frozen=True)
class Timing:
    heartbeat_interval: float
    heartbeat_timeout: float
    registration_timeout: float
    token_ttl: float
    kill_grace: float
    sweep_interval: float
    reconcile_interval: float


@dataclass(frozen=True)
class RelayConfig:
    batch_size: int
    poll_interval: float
    lease_seconds: float
    max_attempts: int
    threads: int


@dataclass(frozen=True)
class Config:
    database_url: str
    bind_host: str
    port: int
    advertise_host: str
    auto_migrate: bool
    local_enabled: bool
    local_worker_command: tuple[str, ...]
    default_provider: str
    log_dir: Path
    docker: DockerConfig
    kubernetes: KubernetesConfig
    timing: Timing
    relay: RelayConfig
    server_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")

    @property
    def worker_server_address(self) -> str:
        """What a worker dials: ``HODEI_SERVER_HOST``, plus the gRPC port unless it names one."""
        host = self.advertise_host
        if _HOST_WITH_PORT.match(host):
            return host
        if ":" in host and not host.startswith("["):
            return f"[{host}]:{self.port}"
        return f"{host}:{self.port}"


def load(env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    port = int(_number(env, "HODEI_GRPC_PORT"))
    image = _get(env, "HODEI_WORKER_IMAGE")
    return Config(
        database_url=_get(env, "DATABASE_URL"),
        bind_host=_get(env, "HODEI_GRPC_BIND"),
        port=port,
        advertise_host=_get(env, "HODEI_SERVER_HOST"),
        auto_migrate=_flag(env, "HODEI_AUTO_MIGRATE"),
        local_enabled=_flag(env, "HODEI_LOCAL_ENABLED"),
        local_worker_command=tuple(shlex.split(_get(env, "HODEI_LOCAL_WORKER_COMMAND"))),
        default_provider=_get(env, "HODEI_DEFAULT_PROVIDER"),
        log_dir=Path(_get(env, "HODEI_LOG_DIR")),
        docker=DockerConfig(
            enabled=_flag(env, "HODEI_DOCKER_ENABLED"),
            image=image,
            network=_get(env, "HODEI_DOCKER_NETWORK"),
            host=_get(env, "HODEI_DOCKER_HOST"),
        ),
        kubernetes=KubernetesConfig(
            enabled=_flag(env, "HODEI_KUBERNETES_ENABLED"),
            image=image,
            kubeconfig=_get(env, "HODEI_K8S_KUBECONFIG"),
            context=_get(env, "HODEI_K8S_CONTEXT"),
            namespace=_get(env, "HODEI_K8S_NAMESPACE"),
            image_pull_policy=_get(env, "HODEI_K8S_IMAGE_PULL_POLICY"),
            service_account=_get(env, "HODEI_K8S_SERVICE_ACCOUNT"),
            unschedulable_timeout=_number(env, "HODEI_K8S_UNSCHEDULABLE_TIMEOUT"),
        ),
        timing=Timing(
            heartbeat_interval=_number(env, "HODEI_HEARTBEAT_INTERVAL"),
            heartbeat_timeout=_number(env, "HODEI_HEARTBEAT_TIMEOUT"),
            registration_timeout=_number(env, "HODEI_REGISTRATION_TIMEOUT"),
            token_ttl=_number(env, "HODEI_TOKEN_TTL"),
            kill_grace=_number(env, "HODEI_KILL_GRACE"),
            sweep_interval=_number(env, "HODEI_SWEEP_INTERVAL"),
            reconcile_interval=_number(env, "HODEI_RECONCILE_INTERVAL"),
        ),
        relay=RelayConfig(
            batch_size=int(_number(env, "HODEI_RELAY_BATCH")),
            poll_interval=_number(env, "HODEI_RELAY_POLL_INTERVAL"),
            lease_seconds=_number(env, "HODEI_RELAY_LEASE"),
            max_attempts=int(_number(env, "HODEI_RELAY_MAX_ATTEMPTS")),
            threads=int(_number(env, "HODEI_RELAY_THREADS")),
        ),
    )
