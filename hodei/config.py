"""Configuration: read from the environment once, here, into frozen dataclasses.

Every other module receives these objects as arguments; nothing else reads
``os.environ`` (the worker agent, a separate program, reads its own).
"""

from __future__ import annotations

import grp
import math
import os
import pwd
import re
import shlex
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from hodei.domain.placement import Toleration, selector_of, service_account_problems, tolerations_of
from hodei.domain.spec import LIMITS, JobBounds
from hodei.errors import InvalidInput
from hodei.logfields import FORMATS, LEVELS

_HOST_WITH_PORT = re.compile(r"^([^:\[\]]+|\[[^\]]+\]):\d+$")
DEFAULT_DATABASE_URL = "postgres://postgres:postgres@localhost:5432/hodei_jobs"

# name -> (default, description); the README's configuration table lists the same.
VARIABLES: dict[str, tuple[str, str]] = {
    "DATABASE_URL": (DEFAULT_DATABASE_URL, "PostgreSQL database"),
    "HODEI_DB_MAX_CONNECTIONS": (
        "60",
        "PostgreSQL connections this server opens at most (a pool that grows with the load); with the other "
        "servers' and tools', within the database's max_connections",
    ),
    "HODEI_GRPC_BIND": ("", "address the gRPC server binds (default: 0.0.0.0 with authentication, else 127.0.0.1)"),
    "HODEI_GRPC_PORT": ("50051", "gRPC port"),
    "HODEI_HTTP_PORT": ("8080", "port of the web console, /metrics, /healthz and /readyz (same bind and TLS; 0: off)"),
    "HODEI_METRICS_PUBLIC": ("0", "1: serve /metrics without a token even when authentication is on"),
    "HODEI_SERVER_HOST": ("127.0.0.1", "address workers dial to reach this server"),
    "HODEI_AUTO_MIGRATE": ("1", "apply migrations when the server starts"),
    "HODEI_AUTH": ("auto", "`required`: refuse calls without an API token; `auto`: required once a token exists"),
    "HODEI_ALLOW_INSECURE": ("0", "1: allow listening beyond loopback without authentication (logged as a warning)"),
    "HODEI_TLS_CERT": ("", "PEM certificate (chain) of the server: turns on TLS for every service"),
    "HODEI_TLS_KEY": ("", "PEM private key of HODEI_TLS_CERT"),
    "HODEI_TLS_CLIENT_CA": ("", "PEM CA bundle: with it, clients must present a certificate it signed (mTLS)"),
    "HODEI_TLS_CA": ("", "PEM CA bundle workers trust to reach this server (default: HODEI_TLS_CERT)"),
    "HODEI_TLS_WORKER_CERT": ("", "with mTLS: the client certificate handed to workers"),
    "HODEI_TLS_WORKER_KEY": ("", "with mTLS: the private key of HODEI_TLS_WORKER_CERT"),
    "HODEI_SECRET_RETENTION": ("86400", "seconds after a job ends before its secrets are shredded"),
    "HODEI_DOCKER_ENABLED": ("1", "initialise the Docker provider"),
    "HODEI_KUBERNETES_ENABLED": ("0", "initialise the Kubernetes provider"),
    "HODEI_LOCAL_ENABLED": ("0", "initialise the local-process provider"),
    "HODEI_LOCAL_WORKER_COMMAND": (
        "",
        "command that starts a local worker (default: this Python's hodei_worker.agent)",
    ),
    "HODEI_LOCAL_RUN_AS": (
        "nobody",
        "user local jobs run as when the server runs as root (`server`: the same user; FIRST-LAST: a uid of "
        "that range each, no two running jobs alike)",
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
    "HODEI_K8S_NODE_SELECTOR": (
        "",
        "node labels every worker pod needs, KEY=VALUE,… (its nodeSelector: the node pool workers are kept to); "
        "a job's --node-selector adds terms, never another value of these",
    ),
    "HODEI_K8S_TOLERATIONS": (
        "",
        "node taints every worker pod tolerates, KEY[=VALUE][:EFFECT],… (as `kubectl taint` writes taints); "
        "a job's --toleration adds to them",
    ),
    "HODEI_K8S_JOB_SERVICE_ACCOUNTS": (
        "",
        "service accounts a job may run its pod as (`job run --service-account`), NAME,…; none by default: "
        "every pod runs as HODEI_K8S_SERVICE_ACCOUNT",
    ),
    "HODEI_LOCAL_MAX_WORKERS": ("16", "workers the local provider runs at once (the API can change it)"),
    "HODEI_LOCAL_MAX_STARTING": (
        "0",
        "local workers starting at once (spawned, not yet registered: each start is CPU-bound); 0: one per CPU",
    ),
    "HODEI_DOCKER_MAX_WORKERS": ("16", "workers the Docker provider runs at once (the API can change it)"),
    "HODEI_K8S_MAX_WORKERS": ("64", "workers the Kubernetes provider runs at once (the API can change it)"),
    "HODEI_SIM_MAX_WORKERS": ("1000", "simulated workers the sim provider runs at once (the API can change it)"),
    "HODEI_SIM_ENABLED": ("0", "initialise the sim provider: a simulated fleet for load tests"),
    "HODEI_LOG_DIR": ("/tmp/hodei-logs", "where job logs are stored"),
    "HODEI_LOG_FORMAT": (
        "text",
        "the server's own log on stderr: `text` (a line a record) or `json` (an object a line, with the job, "
        "saga, worker, event, API method and caller each record is about)",
    ),
    "HODEI_LOG_LEVEL": ("info", "the least severe of the server's records written: debug, info, warning or error"),
    "HODEI_LOG_RETENTION": ("2592000", "seconds a job's stored log is kept (30 days)"),
    "HODEI_OUTBOX_RETENTION": ("604800", "seconds published outbox rows are kept (7 days; the events stay)"),
    "HODEI_MAX_LOG_BYTES": ("1073741824", "bytes of a job's stored log; past it the rest is dropped, with a notice"),
    "HODEI_DEFAULT_CPUS": (
        "0",
        "CPU cores a job asking for none is given (job run --cpu; its provider's capacity counts them); 0: none",
    ),
    "HODEI_MAX_CPUS": ("0", "the most CPU cores a job may ask for (job run --cpu): more is refused; 0: no most"),
    "HODEI_DEFAULT_MEMORY_BYTES": (
        "0",
        "memory a job asking for none is given, in bytes (job run --memory; its worker is held to it); 0: none",
    ),
    "HODEI_MAX_MEMORY_BYTES": (
        "0",
        "the most memory a job may ask for, in bytes (job run --memory): more is refused; 0: no most",
    ),
    "HODEI_MAX_DISK_BYTES": (
        "0",
        "bytes a job may write to its worker's disk (job run --disk): a job asking for more is refused, one asking "
        "for none is given this limit; 0: none of the server's",
    ),
    "HODEI_MAX_INPUT_BYTES": (
        "268435456",
        "bytes of the archive of files a job starts with (job run --input); a bigger one is refused at upload",
    ),
    "HODEI_MAX_ARTIFACT_BYTES": (
        "1073741824",
        "bytes of the artifacts one attempt of a job may store (under HODEI_LOG_DIR/artifacts); past it files are "
        "refused, each said in the job's log",
    ),
    "HODEI_WORKER_ORPHAN_TIMEOUT": ("300", "seconds a worker keeps its job running without reaching any server"),
    "HODEI_FAULT": ("", "tests only: a point at which the server kills itself (see hodei/faults.py)"),
    "HODEI_HEARTBEAT_INTERVAL": ("2", "seconds between worker heartbeats"),
    "HODEI_HEARTBEAT_TIMEOUT": ("10", "seconds without a heartbeat before a worker is lost"),
    "HODEI_MAX_HEARTBEATS_PER_SECOND": (
        "50",
        "heartbeats one server takes per second: past it, a new worker beats less often and may be silent "
        "longer, both in proportion",
    ),
    "HODEI_MAX_STREAMS": (
        "4096",
        "streams API callers may hold open on one server at once (log followers, job watchers, the console's "
        "live logs); past it a new one is refused (RESOURCE_EXHAUSTED); workers' streams are not counted",
    ),
    "HODEI_MAX_STREAMS_PER_TOKEN": (
        "1024",
        "of those, the streams one API token may hold open on one server at once, so that one client cannot "
        "take them all; past it that token's new one is refused (RESOURCE_EXHAUSTED). Without "
        "authentication there are no tokens: callers share HODEI_MAX_STREAMS alone",
    ),
    "HODEI_WORKER_MAX_PROCESSES": (
        "4096",
        "processes and threads one worker may have at once, its agent's included (0: no limit): a local "
        "worker's cgroup pids.max (where a pids controller is), a Docker worker's --pids-limit; on Kubernetes "
        "the node's podPidsLimit (kubelet) bounds a pod. Past it the job's forks fail, not the host's",
    ),
    "HODEI_REGISTRATION_TIMEOUT": ("60", "seconds a new worker has to register"),
    "HODEI_IMAGE_PULL_TIMEOUT": (
        "600",
        "seconds more a job in an image of its own (--image) has to start, for its image's pull: Docker's "
        "create_worker step, Kubernetes' wait for the worker to register (0: none)",
    ),
    "HODEI_KEEP_FAILED_WORKERS": (
        "0",
        "seconds a worker that failed to start keeps its container or pod, for `docker logs` / `kubectl logs`",
    ),
    "HODEI_TOKEN_TTL": ("300", "seconds a worker's single-use token stays valid"),
    "HODEI_KILL_GRACE": ("5", "seconds between SIGTERM and SIGKILL at a timeout, and at a cancel without --grace"),
    "HODEI_RELAY_BATCH": ("100", "outbox rows claimed per batch"),
    "HODEI_RELAY_POLL_INTERVAL": ("1.0", "seconds between outbox polls when no NOTIFY arrives"),
    "HODEI_RELAY_LEASE": ("30", "seconds an outbox claim lasts"),
    "HODEI_RELAY_MAX_ATTEMPTS": ("8", "deliveries of a failing outbox row before it is dead-lettered"),
    "HODEI_RELAY_THREADS": ("8", "handler threads of the relay"),
    "HODEI_QUEUE_ORDER": (
        "fifo",
        "the order of a priority's queued jobs: `fifo` (submission) or `fair` (submitters' turns: the one "
        "using least goes first)",
    ),
    "HODEI_QUEUE_FAIR_WINDOW": (
        "600",
        "with HODEI_QUEUE_ORDER=fair: seconds over which a submitter's ended jobs count in its use, beside "
        "those running",
    ),
    "HODEI_SWEEP_INTERVAL": ("1.0", "seconds between deadline and liveness sweeps"),
    "HODEI_RECONCILE_INTERVAL": ("30", "seconds between stray-worker reconciliations"),
    "HODEI_RETENTION_INTERVAL": ("60", "seconds between retention rounds (secrets, outbox rows, logs)"),
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


def _number(env: Mapping[str, str], name: str, zero_allowed: bool = False) -> float:
    raw = _get(env, name)
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{name} must be a number, got `{raw}`") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
        raise InvalidInput(f"{name} must be {'0 or more' if zero_allowed else 'positive'}, got `{raw}`")
    return value


# The longest duration a setting takes (100 years): past it, a thread's wait (about 292
# years) or a date (year 9999) overflows, and what was meant is "never".
MOST_SECONDS = 100 * 365 * 86400


def _seconds(env: Mapping[str, str], name: str, zero_allowed: bool = False) -> float:
    """A duration in seconds: ``_number``'s rules, and at most ``MOST_SECONDS``."""
    value = _number(env, name, zero_allowed)
    if value > MOST_SECONDS:
        raise InvalidInput(f"{name} must be at most {MOST_SECONDS} seconds (100 years), got `{_get(env, name)}`")
    return value


def _whole(env: Mapping[str, str], name: str, zero_allowed: bool = False, most: int = 2**31 - 1) -> int:
    """A count (workers, rows, tries; ``most``: bytes): ``_number``'s rules, and whole
    (`1e9` is)."""
    value = _number(env, name, zero_allowed)
    if value != int(value):
        raise InvalidInput(f"{name} must be a whole number, got `{_get(env, name)}`")
    if value > most:
        raise InvalidInput(f"{name} must be at most {most}, got `{_get(env, name)}`")
    return int(value)


def _job_bounds(env: Mapping[str, str]) -> JobBounds:
    def cores(name: str) -> float:
        value = _number(env, name, zero_allowed=True)
        if value > LIMITS.max_cpu_cores:
            raise InvalidInput(f"{name} must be at most {LIMITS.max_cpu_cores:g} cores, got `{_get(env, name)}`")
        return value

    def memory(name: str) -> int:
        return _whole(env, name, zero_allowed=True, most=LIMITS.max_memory_bytes)

    return JobBounds(
        default_cpus=cores("HODEI_DEFAULT_CPUS"),
        max_cpus=cores("HODEI_MAX_CPUS"),
        default_memory_bytes=memory("HODEI_DEFAULT_MEMORY_BYTES"),
        max_memory_bytes=memory("HODEI_MAX_MEMORY_BYTES"),
        max_disk_bytes=_whole(env, "HODEI_MAX_DISK_BYTES", zero_allowed=True, most=LIMITS.max_disk_bytes),
    )


# A worker's agent alone has a dozen threads (gRPC's among them) and its job's shell one more.
LEAST_WORKER_PROCESSES = 32


def _worker_processes(env: Mapping[str, str]) -> int:
    value = _whole(env, "HODEI_WORKER_MAX_PROCESSES", zero_allowed=True)
    if 0 < value < LEAST_WORKER_PROCESSES:
        raise InvalidInput(
            f"HODEI_WORKER_MAX_PROCESSES must be 0 (no limit) or at least {LEAST_WORKER_PROCESSES}: a worker's "
            f"agent has a dozen threads of its own, got `{value}`"
        )
    return value


def _database_url(env: Mapping[str, str]) -> str:
    """DATABASE_URL, once psycopg can read it: a malformed one ended the server with a
    traceback. The refusal quotes nothing of it (it holds a password)."""
    url = _get(env, "DATABASE_URL").strip()
    try:
        given = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        raise InvalidInput(
            "DATABASE_URL is neither a URL nor a key=value connection string PostgreSQL's client reads: "
            "e.g. postgres://hodei:PASSWORD@db.example:5432/hodei_jobs"
        ) from None
    # The server's own network settings stand where these are not given (hodei.store.db.NETWORK);
    # a connect_timeout psycopg cannot read ended it with a traceback at its first connection.
    if "PGCONNECT_TIMEOUT" in env:
        given.setdefault("connect_timeout", env["PGCONNECT_TIMEOUT"])
    for key in ("connect_timeout", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout"):
        value = str(given.get(key, "0")).strip()
        if not value.isdigit():
            raise InvalidInput(
                f"DATABASE_URL's {key} (or PGCONNECT_TIMEOUT) must be a whole number, got `{value[:20]}`"
            )
    return url


def _port(env: Mapping[str, str], name: str, off_allowed: bool = False) -> int:
    raw = _get(env, name).strip()
    lowest = 0 if off_allowed else 1
    if not raw.isdigit() or not lowest <= int(raw) <= 65535:
        what = "0 (off) or a port, 1 to 65535" if off_allowed else "a port, 1 to 65535"
        raise InvalidInput(f"{name} must be {what}, got `{raw}`")
    return int(raw)


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
    # Every pod's node selector and tolerations (hodei.domain.placement): the nodes the
    # workers are kept to; a job adds its own.
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    # The service accounts a job may run its pod as (JobSpec.service_account): none by default.
    job_service_accounts: tuple[str, ...] = ()


@dataclass(frozen=True)
class TlsConfig:
    """PEM files. No certificate: plaintext. A client CA: mutual TLS."""

    cert: Path | None
    key: Path | None
    client_ca: Path | None
    ca: Path | None
    worker_cert: Path | None
    worker_key: Path | None

    @property
    def enabled(self) -> bool:
        return self.cert is not None

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    @property
    def trusted_by_workers(self) -> Path | None:
        return self.ca or self.cert


@dataclass(frozen=True)
class Timing:
    heartbeat_interval: float
    heartbeat_timeout: float
    registration_timeout: float
    token_ttl: float
    kill_grace: float
    # How long a worker without any server keeps its job running.
    orphan_timeout: float
    sweep_interval: float
    reconcile_interval: float
    retention_interval: float = 60.0
    # A worker that failed to start keeps its container or pod this long (0: removed at once).
    keep_failed_workers: float = 0.0
    max_heartbeats_per_second: float = 50.0
    # What a job with an image of its own adds to the step in which its image is pulled.
    image_pull_timeout: float = 600.0


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
    # The server's pool of PostgreSQL connections grows to at most this many.
    database_connections: int
    # Empty: 0.0.0.0 with authentication on, else 127.0.0.1 (see hodei.server.main).
    bind_host: str
    port: int
    # 0: no HTTP server.
    http_port: int
    metrics_public: bool
    advertise_host: str
    auto_migrate: bool
    auth_required: bool
    allow_insecure: bool
    tls: TlsConfig
    secret_retention: float
    local_enabled: bool
    sim_enabled: bool
    # HODEI_QUEUE_ORDER=fair: a priority's queued jobs by their submitters' turns, their use
    # counted over so many seconds (hodei.admission); None: in submission order.
    fair_window: float | None
    local_worker_command: tuple[str, ...]
    # None: jobs run as the server's own user; a range: each running job a uid of it.
    local_run_as: str | range | None
    # Processes and threads a local or Docker worker may have at once (0: no limit).
    worker_max_processes: int
    default_provider: str
    log_dir: Path
    max_log_bytes: int
    max_artifact_bytes: int
    max_input_bytes: int
    # What a job asking for none is given, and the most one may ask for (CPU, memory, disk).
    job_bounds: JobBounds
    # Streams API callers may hold open at once (hodei.server.edge.Streams).
    max_streams: int
    # Of those, the streams one API token may hold.
    max_streams_per_token: int
    log_retention: float
    outbox_retention: float
    # Workers each provider runs at once, unless set through the API.
    max_workers: Mapping[str, int]
    # Workers a provider starts at once (admitted, not yet registered), where that is limited.
    max_starting: Mapping[str, int]
    docker: DockerConfig
    kubernetes: KubernetesConfig
    timing: Timing
    relay: RelayConfig
    fault: str = ""
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


def _auth_required(env: Mapping[str, str]) -> bool:
    value = _get(env, "HODEI_AUTH").strip().lower()
    if value not in {"auto", "required"}:
        raise InvalidInput(f"HODEI_AUTH must be `auto` or `required`, got `{value}`")
    return value == "required"


def log_settings(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """HODEI_LOG_FORMAT and HODEI_LOG_LEVEL, read before the rest of the configuration so
    that a refusal of it is written in the log's own format."""
    env = os.environ if env is None else env
    form = _get(env, "HODEI_LOG_FORMAT").strip().lower()
    if form not in FORMATS:
        raise InvalidInput(f"HODEI_LOG_FORMAT must be one of {', '.join(FORMATS)}, got `{form}`")
    level = _get(env, "HODEI_LOG_LEVEL").strip().lower()
    if level not in LEVELS:
        raise InvalidInput(f"HODEI_LOG_LEVEL must be one of {', '.join(LEVELS)}, got `{level}`")
    return form, level


def _fair_window(env: Mapping[str, str]) -> float | None:
    """HODEI_QUEUE_FAIR_WINDOW with HODEI_QUEUE_ORDER=fair; None: submission order."""
    value = _get(env, "HODEI_QUEUE_ORDER").strip().lower()
    if value not in {"fifo", "fair"}:
        raise InvalidInput(f"HODEI_QUEUE_ORDER must be `fifo` or `fair`, got `{value}`")
    window = _seconds(env, "HODEI_QUEUE_FAIR_WINDOW", zero_allowed=True)
    return window if value == "fair" else None


# The fewest connections a server's pool may have: in a burst its relay, call and stream
# threads want one each at once, and one that waits 10 s for it fails its job (measured: 400
# `sim` jobs at once failed some with 6 and none with 8).
LEAST_CONNECTIONS = 16


def _database_connections(env: Mapping[str, str]) -> int:
    value = _whole(env, "HODEI_DB_MAX_CONNECTIONS")
    if value < LEAST_CONNECTIONS:
        raise InvalidInput(
            f"HODEI_DB_MAX_CONNECTIONS must be at least {LEAST_CONNECTIONS}, got `{value}`: in a burst the "
            "server's threads would wait for connections past their timeout and fail jobs"
        )
    return value


def _heartbeat_timeout(env: Mapping[str, str]) -> float:
    """Longer than the interval: else every worker is lost between two of its heartbeats."""
    interval, timeout = _seconds(env, "HODEI_HEARTBEAT_INTERVAL"), _seconds(env, "HODEI_HEARTBEAT_TIMEOUT")
    if timeout <= interval:
        raise InvalidInput(
            f"HODEI_HEARTBEAT_TIMEOUT ({timeout:g}s) must be longer than HODEI_HEARTBEAT_INTERVAL ({interval:g}s): "
            "every worker would be lost between two of its heartbeats"
        )
    return timeout


_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _namespace(env: Mapping[str, str]) -> str:
    """A name Kubernetes takes for a namespace (an RFC 1123 label), refused here rather
    than by the API server at the first pod."""
    value = _get(env, "HODEI_K8S_NAMESPACE")
    if not _LABEL.fullmatch(value):
        raise InvalidInput(
            f"HODEI_K8S_NAMESPACE must be a namespace's name: 1 to 63 lowercase letters, digits or '-', "
            f"beginning and ending with a letter or digit; got `{value}`"
        )
    return value


def _node_selector(env: Mapping[str, str]) -> dict[str, str]:
    value = _get(env, "HODEI_K8S_NODE_SELECTOR")
    return selector_of([value], "HODEI_K8S_NODE_SELECTOR") if value.strip() else {}


def _service_account(env: Mapping[str, str]) -> str:
    """Every pod's (a job that names none): a name Kubernetes would refuse stops the server,
    not each pod it makes."""
    name = _get(env, "HODEI_K8S_SERVICE_ACCOUNT").strip()
    for problem in service_account_problems(name):
        raise InvalidInput(f"HODEI_K8S_SERVICE_ACCOUNT: {problem}")
    return name


def _job_service_accounts(env: Mapping[str, str]) -> tuple[str, ...]:
    names = tuple(sorted({name.strip() for name in _get(env, "HODEI_K8S_JOB_SERVICE_ACCOUNTS").split(",")} - {""}))
    for name in names:
        for problem in service_account_problems(name):
            raise InvalidInput(f"HODEI_K8S_JOB_SERVICE_ACCOUNTS: {problem}")
    return names


def _tolerations(env: Mapping[str, str]) -> tuple[Toleration, ...]:
    terms = [term for term in _get(env, "HODEI_K8S_TOLERATIONS").split(",") if term.strip()]
    try:
        return tolerations_of(terms)
    except InvalidInput as exc:
        raise InvalidInput(f"HODEI_K8S_TOLERATIONS: {exc.message}") from None


def _pull_policy(env: Mapping[str, str]) -> str:
    value = _get(env, "HODEI_K8S_IMAGE_PULL_POLICY")
    if value not in {"Always", "IfNotPresent", "Never"}:
        raise InvalidInput(f"HODEI_K8S_IMAGE_PULL_POLICY must be Always, IfNotPresent or Never, got `{value}`")
    return value


def _run_as(env: Mapping[str, str]) -> str | range | None:
    """``server`` (None), a user name, ``uid``, ``uid:gid``, or a range of uids no account
    of this host has, at least as many as local jobs may run at once; a name this host
    does not know is refused here, not at each local job (whose agent would exit before
    it registers)."""
    value = _get(env, "HODEI_LOCAL_RUN_AS").strip()
    if value == "server":
        return None
    first, dash, last = value.partition("-")
    if dash and first.isdigit() and last.isdigit():  # a name may have a dash: www-data
        return _uid_range(env, value, int(first), int(last))
    name, _, group = value.partition(":")
    if not name or (group and not group.isdigit()):
        raise InvalidInput(
            f"HODEI_LOCAL_RUN_AS must be a user name, uid, uid:gid, a range of uids FIRST-LAST or `server`, "
            f"got `{value}`"
        )
    if not name.isdigit() and _flag(env, "HODEI_LOCAL_ENABLED"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise InvalidInput(f"HODEI_LOCAL_RUN_AS={value}: no such user on this host") from None
    return value


# The highest uid a range may reach: below 2**31 - 1 (what some programs read as a signed
# number) and -1 (no uid at all).
MAX_UID = 2**31 - 2


def _uid_range(env: Mapping[str, str], value: str, first: int, last: int) -> range:
    if not 1 <= first <= last <= MAX_UID:
        raise InvalidInput(
            f"HODEI_LOCAL_RUN_AS={value}: a range of uids is FIRST-LAST, 1 <= FIRST <= LAST <= {MAX_UID} "
            "(e.g. 80000-89999: ids nothing else on the host uses)"
        )
    uids = range(first, last + 1)
    # A job runs with the gid of its uid's number: a group's gid is as much taken.
    accounts = sorted({(user.pw_uid, user.pw_name) for user in pwd.getpwall() if user.pw_uid in uids})
    groups = sorted({(group.gr_gid, group.gr_name) for group in grp.getgrall() if group.gr_gid in uids})
    owners = [f"{name} ({uid})" for uid, name in accounts] + [f"group {name} ({gid})" for gid, name in groups]
    if owners:
        raise InvalidInput(
            f"HODEI_LOCAL_RUN_AS={value} holds ids of this host's accounts: {', '.join(owners[:5])}; "
            "a job would run as that account or in that group: choose ids no account or group has"
        )
    wanted = _whole(env, "HODEI_LOCAL_MAX_WORKERS")
    if len(uids) < wanted:
        raise InvalidInput(
            f"HODEI_LOCAL_RUN_AS={value} has {len(uids)} uids for HODEI_LOCAL_MAX_WORKERS={wanted} local jobs "
            "at once: each needs one of its own"
        )
    return uids


def _pem_file(env: Mapping[str, str], name: str) -> Path | None:
    value = _get(env, name)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise InvalidInput(f"{name}={value}: no such file")
    return path


def _tls(env: Mapping[str, str]) -> TlsConfig:
    tls = TlsConfig(
        cert=_pem_file(env, "HODEI_TLS_CERT"),
        key=_pem_file(env, "HODEI_TLS_KEY"),
        client_ca=_pem_file(env, "HODEI_TLS_CLIENT_CA"),
        ca=_pem_file(env, "HODEI_TLS_CA"),
        worker_cert=_pem_file(env, "HODEI_TLS_WORKER_CERT"),
        worker_key=_pem_file(env, "HODEI_TLS_WORKER_KEY"),
    )
    if (tls.cert is None) != (tls.key is None):
        raise InvalidInput("set both HODEI_TLS_CERT and HODEI_TLS_KEY, or neither")
    if tls.client_ca is not None and tls.cert is None:
        raise InvalidInput("HODEI_TLS_CLIENT_CA (mutual TLS) needs HODEI_TLS_CERT and HODEI_TLS_KEY")
    if (tls.worker_cert is None) != (tls.worker_key is None):
        raise InvalidInput("set both HODEI_TLS_WORKER_CERT and HODEI_TLS_WORKER_KEY, or neither")
    if tls.mutual and tls.worker_cert is None:
        raise InvalidInput(
            "with mutual TLS (HODEI_TLS_CLIENT_CA) workers need a client certificate: set HODEI_TLS_WORKER_CERT "
            "and HODEI_TLS_WORKER_KEY"
        )
    return tls


def load(env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    port = _port(env, "HODEI_GRPC_PORT")
    image = _get(env, "HODEI_WORKER_IMAGE")
    return Config(
        database_url=_database_url(env),
        bind_host=_get(env, "HODEI_GRPC_BIND"),
        port=port,
        database_connections=_database_connections(env),
        http_port=_port(env, "HODEI_HTTP_PORT", off_allowed=True),
        metrics_public=_flag(env, "HODEI_METRICS_PUBLIC"),
        advertise_host=_get(env, "HODEI_SERVER_HOST"),
        auto_migrate=_flag(env, "HODEI_AUTO_MIGRATE"),
        auth_required=_auth_required(env),
        allow_insecure=_flag(env, "HODEI_ALLOW_INSECURE"),
        tls=_tls(env),
        secret_retention=_seconds(env, "HODEI_SECRET_RETENTION"),
        local_enabled=_flag(env, "HODEI_LOCAL_ENABLED"),
        sim_enabled=_flag(env, "HODEI_SIM_ENABLED"),
        fair_window=_fair_window(env),
        local_worker_command=tuple(shlex.split(_get(env, "HODEI_LOCAL_WORKER_COMMAND"))),
        local_run_as=_run_as(env),
        worker_max_processes=_worker_processes(env),
        default_provider=_get(env, "HODEI_DEFAULT_PROVIDER"),
        log_dir=Path(_get(env, "HODEI_LOG_DIR")),
        max_log_bytes=_whole(env, "HODEI_MAX_LOG_BYTES", most=2**63 - 1),
        max_artifact_bytes=_whole(env, "HODEI_MAX_ARTIFACT_BYTES", most=2**63 - 1),
        max_input_bytes=_whole(env, "HODEI_MAX_INPUT_BYTES", most=2**63 - 1),
        job_bounds=_job_bounds(env),
        max_streams=_whole(env, "HODEI_MAX_STREAMS"),
        max_streams_per_token=_whole(env, "HODEI_MAX_STREAMS_PER_TOKEN"),
        log_retention=_seconds(env, "HODEI_LOG_RETENTION"),
        outbox_retention=_seconds(env, "HODEI_OUTBOX_RETENTION"),
        max_workers={
            "local": _whole(env, "HODEI_LOCAL_MAX_WORKERS"),
            "docker": _whole(env, "HODEI_DOCKER_MAX_WORKERS"),
            "kubernetes": _whole(env, "HODEI_K8S_MAX_WORKERS"),
            "sim": _whole(env, "HODEI_SIM_MAX_WORKERS"),
        },
        max_starting={"local": _whole(env, "HODEI_LOCAL_MAX_STARTING", zero_allowed=True) or os.cpu_count() or 1},
        fault=_get(env, "HODEI_FAULT"),
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
            namespace=_namespace(env),
            image_pull_policy=_pull_policy(env),
            service_account=_service_account(env),
            unschedulable_timeout=_seconds(env, "HODEI_K8S_UNSCHEDULABLE_TIMEOUT"),
            node_selector=_node_selector(env),
            tolerations=_tolerations(env),
            job_service_accounts=_job_service_accounts(env),
        ),
        timing=Timing(
            heartbeat_interval=_seconds(env, "HODEI_HEARTBEAT_INTERVAL"),
            heartbeat_timeout=_heartbeat_timeout(env),
            registration_timeout=_seconds(env, "HODEI_REGISTRATION_TIMEOUT"),
            token_ttl=_seconds(env, "HODEI_TOKEN_TTL"),
            kill_grace=_seconds(env, "HODEI_KILL_GRACE"),
            orphan_timeout=_seconds(env, "HODEI_WORKER_ORPHAN_TIMEOUT"),
            sweep_interval=_seconds(env, "HODEI_SWEEP_INTERVAL"),
            reconcile_interval=_seconds(env, "HODEI_RECONCILE_INTERVAL"),
            retention_interval=_seconds(env, "HODEI_RETENTION_INTERVAL"),
            keep_failed_workers=_seconds(env, "HODEI_KEEP_FAILED_WORKERS", zero_allowed=True),
            max_heartbeats_per_second=_number(env, "HODEI_MAX_HEARTBEATS_PER_SECOND"),
            image_pull_timeout=_seconds(env, "HODEI_IMAGE_PULL_TIMEOUT", zero_allowed=True),
        ),
        relay=RelayConfig(
            batch_size=_whole(env, "HODEI_RELAY_BATCH"),
            poll_interval=_seconds(env, "HODEI_RELAY_POLL_INTERVAL"),
            lease_seconds=_seconds(env, "HODEI_RELAY_LEASE"),
            max_attempts=_whole(env, "HODEI_RELAY_MAX_ATTEMPTS"),
            threads=_whole(env, "HODEI_RELAY_THREADS"),
        ),
    )
