"""The job specification: the one definition of what a user asks to run.

The aggregate holds a ``JobSpec``, ``JobCreated`` carries its payload, the API converts
it field by field to and from ``hodei.jobs.JobSpec`` (same names), the CLI builds one.
Every field has a bound (``LIMITS``, listed in the README); ``problems`` names each
field that breaks one, so a request is refused before anything is written.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from hodei.domain.base import check_name
from hodei.domain.placement import selector_problems, service_account_problems, toleration_problems
from hodei.domain.retries import retry_on_problems
from hodei.errors import InvalidInput, excerpt

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A SHA-256 as hexdigest() writes it (an --input archive's name).
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# What the agent puts in every job's environment over the job's own variables
# (hodei_worker.runner): a job naming one would not get its value.
PLATFORM_VARIABLES = ("HODEI_JOB_ID", "HODEI_WORKER_ID", "HODEI_ATTEMPT", "HODEI_OUTPUT", "HODEI_AFTER_OUTPUTS")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$")
# Control characters (NUL, escapes, newlines...) have no place in names, keys or paths.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

KIB = 1024


@dataclass(frozen=True)
class Limits:
    name_chars: int = 255
    command_bytes: int = 64 * KIB
    arg_bytes: int = 64 * KIB
    args: int = 1000
    env_vars: int = 500
    env_name_chars: int = 255
    env_value_bytes: int = 64 * KIB
    # Command, arguments, environment and secrets together: what exec can take, with room.
    exec_bytes: int = 512 * KIB
    labels: int = 64
    label_key_chars: int = 63
    label_value_chars: int = 255
    secrets: int = 64
    secret_value_bytes: int = 64 * KIB
    # Shorter values would be masked inside ordinary words of the job's output.
    secret_min_chars: int = 4
    min_timeout_seconds: float = 1.0
    max_timeout_seconds: float = 7 * 24 * 3600.0
    max_cpu_cores: float = 256.0
    max_memory_bytes: int = 1024**4
    max_disk_bytes: int = 1024**5
    working_dir_chars: int = 4096
    provider_chars: int = 64
    max_attempts: int = 10
    max_priority: int = 1000
    max_retries: int = 100
    # Jobs to start after, an array's (--after-array) counted one by one.
    dependencies: int = 1000
    job_ref_chars: int = 36
    array_jobs: int = 1000
    # The largest index of an array (the API's int32).
    max_array_index: int = 2**31 - 1
    artifact_patterns: int = 64
    # How long artifacts may be kept for (--artifacts-expire): ten years.
    max_artifacts_expire_seconds: float = 3650 * 86400.0
    image_chars: int = 512
    # An artifact's pattern, and the name (its path) of a file stored.
    artifact_path_chars: int = 1024


LIMITS = Limits()

# What `job run --api-token` puts in a job's environment: the token (a secret: masked in its
# output) and the address of the server that handed it its job.
API_TOKEN_VARIABLES = ("HODEI_TOKEN", "HODEI_SERVER")
# The label of a job submitted with a job's API token: that job's id (`job list -l`).
PARENT_LABEL = "hodei.io/parent"
# Labels under this prefix are the server's own: which array, pipeline, cron job or job a
# job came from (ARRAY_LABEL, PARENT_LABEL, hodei.domain.workflow's, hodei.domain.cron's).
SERVER_LABELS = "hodei.io/"
# How long a job may run when its submitter does not say (`job run`, the console's form).
DEFAULT_TIMEOUT_SECONDS = 600.0

# What users type for --provider, mapped to the provider type.
PROVIDER_ALIASES = {
    "docker": "docker",
    "kubernetes": "kubernetes",
    "k8s": "kubernetes",
    "kube": "kubernetes",
    "local": "local",
    "sim": "sim",
}


# What a job given with --after must have done before the job may start (Slurm's words:
# afterok, afternotok, afterany): "once it <condition's words>". Failed: FAILED, TIMEOUT
# or CANCELLED.
AFTER_CONDITIONS = {"ok": "has succeeded", "notok": "has failed", "any": "has ended"}


# The label every job of an array carries: the array's id (its first job's).
ARRAY_LABEL = "hodei.io/array"


def validate_array(indices: Sequence[int]) -> None:
    """Refuses an array's indices (``--array``) that break a bound, naming each."""
    found = array_problems(indices)
    if found:
        raise InvalidInput("invalid array: " + "; ".join(found))


def array_problems(indices: Sequence[int]) -> list[str]:
    """What is wrong with an array's indices (``--array``); none for no array."""
    limits = LIMITS
    found = []
    if len(indices) > limits.array_jobs:
        found.append(f"an array of {len(indices)} jobs; the limit is {limits.array_jobs}")
    if any(not 0 <= index <= limits.max_array_index for index in indices):
        found.append(f"array indices must be 0 to {limits.max_array_index}")
    if len(set(indices)) != len(indices):
        found.append("an array index is given twice")
    return found


def array_element(spec: JobSpec, array_id: str, index: int, count: int) -> JobSpec:
    """One job of an array (Slurm's ``--array``, Kubernetes' indexed Jobs): ``spec`` with
    its index, the array's id and size in its environment (over the same names in
    ``--env``), the array's label, and its name suffixed with ``[index]``."""
    return replace(
        spec,
        name=f"{spec.name}[{index}]",
        env={**spec.env, "HODEI_ARRAY_ID": array_id, "HODEI_ARRAY_INDEX": str(index), "HODEI_ARRAY_COUNT": str(count)},
        labels={**spec.labels, ARRAY_LABEL: array_id},
    )


def naming_arrays(spec: JobSpec, after_arrays: Mapping[str, str]) -> JobSpec:
    """The spec as it is checked before the arrays it starts after (--after-array) are read:
    the job naming each array stands for its jobs among those it starts after."""
    return replace(spec, after={**after_arrays, **spec.after}) if after_arrays else spec


def never_after(job_id: str, state: str, condition: str) -> str:
    """Why a job submitted with ``--after job_id[:condition]`` can never start."""
    return f"job {job_id} ended {state}, and this job was to start once it {AFTER_CONDITIONS[condition]}"


def normalise_provider(value: str) -> str:
    """Maps an alias such as ``k8s`` to its provider type; other values pass unchanged."""
    cleaned = value.strip().lower()
    return PROVIDER_ALIASES.get(cleaned, cleaned)


def name_for(command: str) -> str:
    """The name of a job submitted without one: its command on one line (a multi-line
    script is common; a name holds no control characters), cut to 64 characters."""
    line = _CONTROL.sub("?", " ".join(command.split()))
    return line if len(line) <= 64 else line[:61] + "..."


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 time that says its zone; None otherwise."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def canonical_time(text: str) -> str:
    """``text`` (an ISO 8601 time with its zone) in UTC, in the one form stored; a text
    that is not one is returned as it is, for ``problems`` to name."""
    when = parse_time(text)
    return when.astimezone(UTC).isoformat() if when is not None else text


def _size(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


@dataclass(frozen=True)
class Resources:
    """CPU cores and memory bytes (0: the provider's default), and the bytes the job may
    write to its worker's disk (0: no limit)."""

    cpu_cores: float = 0.0
    memory_bytes: int = 0
    disk_bytes: int = 0


@dataclass(frozen=True)
class JobSpec:
    """What to run and under which limits.

    Without ``args`` the command is a shell command line (``/bin/sh -c``); with
    ``args`` it is a program executed directly, so ``bash`` with ``-c '…'`` works.
    ``secret_names`` only names the job's secrets: their values never enter a spec.
    """

    name: str
    command: str
    timeout_seconds: float
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    provider: str = ""
    resources: Resources = Resources()
    labels: Mapping[str, str] = field(default_factory=dict)
    working_dir: str = ""
    max_attempts: int = 1
    secret_names: tuple[str, ...] = ()
    priority: int = 0
    queue_timeout_seconds: float = 0.0
    retries: int = 0
    retry_backoff_seconds: float = 0.0
    # With it, the pause before each retry doubles from retry_backoff_seconds up to this
    # (`--retry-backoff-max`: Kubernetes Jobs' 10 s doubling to 6 min, Airflow's
    # retry_exponential_backoff); 0: the same pause before every retry.
    retry_backoff_max_seconds: float = 0.0
    # Jobs this one starts after: job id -> a condition of AFTER_CONDITIONS. Submitted as
    # ids or prefixes; the server keeps whole ids.
    after: Mapping[str, str] = field(default_factory=dict)
    # The job starts no sooner (ISO 8601 with its zone; "": at once). Kept as
    # ``canonical_time`` writes it, which PostgreSQL's timestamptz reads alike.
    begin_at: str = ""
    # A job of an array with a limit (--array 0-99%4): at most this many of the array's jobs
    # are admitted and not ended at once (Slurm's %N); 0: none but the provider's capacity.
    array_limit: int = 0
    # A pool (hodei.domain.pool): at most its size of the jobs naming it run at once; "": none.
    pool: str = ""
    # Files to keep once the command exits (`job artifacts`): paths or glob patterns relative
    # to the working directory.
    artifacts: tuple[str, ...] = ()
    # Put the artifacts of the jobs in ``after`` into the working directory before the
    # command runs, at artifacts/<job id>/<name> (a reduce reads its map's outputs).
    fetch_artifacts: bool = False
    # Seconds its artifacts are kept once it ended (GitLab's expire_in); 0: as long as its log.
    artifacts_expire_seconds: float = 0.0
    # Files the patterns match that are not kept (GitLab's artifacts:exclude), as patterns.
    artifacts_exclude: tuple[str, ...] = ()
    # The container image the command runs in (GitLab's `image:`, a pod's container image);
    # "": the worker image. The agent is brought into it, so the image needs neither Python
    # nor anything of ours (``hodei.providers.agent_bundle``).
    image: str = ""
    # When its image is pulled (IMAGE_PULLS): "always" (a tag moved in the registry is seen),
    # "never" (only an image the engine holds), "" the provider's way (Docker: when missing;
    # Kubernetes: HODEI_K8S_IMAGE_PULL_POLICY).
    image_pull: str = ""
    # The node labels its pod needs and the node taints it tolerates (hodei.domain.placement):
    # Kubernetes places pods on nodes, so a job with either runs there. Tolerations as
    # ``canonical_tolerations`` writes them (``dedicated=gpu:NoSchedule``).
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[str, ...] = ()
    # Which failed attempts the retries are spent on (hodei.domain.retries): exit codes,
    # ranges of them and ``timeout``, ``!`` before those never retried; (): every failure.
    # Kept as ``canonical_retry_on`` writes them.
    retry_on: tuple[str, ...] = ()
    # Files it starts with (--input; hodei.inputs): the SHA-256 (hex) and size of a
    # tar archive uploaded before it was submitted, unpacked into its working directory
    # before its command runs; "": none.
    input_sha256: str = ""
    input_bytes: int = 0
    # The Kubernetes service account its pod runs as (its serviceAccountName); "": the
    # server's. Which ones a job may name is the server's to say (HODEI_K8S_JOB_SERVICE_ACCOUNTS).
    service_account: str = ""
    # Given HODEI_TOKEN and HODEI_SERVER while an attempt runs (`job run --api-token`): an
    # API token acting as its submitter with the submit role at most, valid only while that
    # attempt runs (hodei.tokens.TokenSigner.job_token), so it may submit and follow jobs of
    # its own (a fan-out decided at run time, GitLab's CI_JOB_TOKEN).
    api_token: bool = False

    def retry_pause(self, retries_used: int) -> float:
        """Seconds between a failed attempt and its retry, when ``retries_used`` retries
        came before it."""
        most = self.retry_backoff_max_seconds
        if not most:
            return self.retry_backoff_seconds
        return min(self.retry_backoff_seconds * 2.0 ** min(retries_used, 64), most)

    @property
    def begins(self) -> datetime | None:
        """When the job may start (--begin); None: at once."""
        return parse_time(self.begin_at) if self.begin_at else None

    def problems(self, secrets: Mapping[str, str] | None = None) -> list[str]:
        """Every bound this spec (and the secret values submitted with it) breaks."""
        found: list[str] = []
        secrets = secrets or {}
        limits = LIMITS
        if not self.command.strip():
            found.append("command must not be empty")
        elif _size(self.command) > limits.command_bytes:
            found.append(f"command is {_size(self.command)} bytes; the limit is {limits.command_bytes}")
        if len(self.name) > limits.name_chars:
            found.append(f"name must be at most {limits.name_chars} characters")
        if _CONTROL.search(self.name):
            found.append("name must not contain control characters")
        found.extend(_timeout_problems(self.timeout_seconds))
        if len(self.args) > limits.args:
            found.append(f"{len(self.args)} arguments; the limit is {limits.args}")
        long = next(((n, size) for n, arg in enumerate(self.args, 1) if (size := _size(arg)) > limits.arg_bytes), None)
        if long:
            found.append(f"argument {long[0]} is {long[1]} bytes; the limit is {limits.arg_bytes}")
        found.extend(_env_problems(self.env))
        found.extend(_secret_problems(secrets))
        overlap = sorted(set(secrets) & set(self.env))
        if overlap:
            found.append(f"{', '.join(overlap)} given both as --env and as --secret")
        exec_size = sum(_size(text) for text in (self.command, *self.args))
        exec_size += sum(_size(k) + _size(v) + 2 for k, v in (*self.env.items(), *secrets.items()))
        if exec_size > limits.exec_bytes:
            found.append(
                f"command, arguments, environment and secrets are {exec_size} bytes; the limit is {limits.exec_bytes}"
            )
        if any("\x00" in text for text in (self.command, *self.args, *self.env.values(), *secrets.values())):
            found.append("command, arguments, environment and secret values must not contain NUL")
        found.extend(_resource_problems(self.resources))
        found.extend(_label_problems(self.labels))
        found.extend(_working_dir_problems(self.working_dir))
        if len(self.provider) > limits.provider_chars or _CONTROL.search(self.provider):
            found.append("provider must be a provider name or id")
        if not 1 <= self.max_attempts <= limits.max_attempts:
            found.append(f"max attempts must be between 1 and {limits.max_attempts}")
        found.extend(_priority_problems(self.priority))
        queue_timeout = self.queue_timeout_seconds
        if not math.isfinite(queue_timeout) or not 0 <= queue_timeout <= limits.max_timeout_seconds:
            found.append(f"queue timeout must be 0 (none) to {limits.max_timeout_seconds:g} seconds")
        found.extend(_retry_problems(self.retries, self.retry_backoff_seconds, self.retry_on))
        found.extend(_backoff_max_problems(self.retry_backoff_seconds, self.retry_backoff_max_seconds))
        found.extend(_input_problems(self.input_sha256, self.input_bytes))
        found.extend(_start_problems(self.after, self.begin_at, self.array_limit, self.pool))
        found.extend(_artifact_problems(self))
        found.extend(_image_problems(self.image, self.image_pull))
        found.extend(selector_problems(self.node_selector))
        found.extend(toleration_problems(self.tolerations))
        found.extend(service_account_problems(self.service_account))
        found.extend(self._api_token_problems(secrets))
        return found

    def _api_token_problems(self, secrets: Mapping[str, str]) -> list[str]:
        given = sorted({*self.env, *self.secret_names, *secrets} & set(API_TOKEN_VARIABLES)) if self.api_token else []
        return [f"{', '.join(given)} is given to the job by --api-token: it cannot be set too"] if given else []

    def validate(self, secrets: Mapping[str, str] | None = None) -> None:
        found = self.problems(secrets)
        if found:
            raise InvalidInput("invalid job: " + "; ".join(found))

    def refuse_written(self, secrets: Mapping[str, str]) -> None:
        """Checked where a person gives a spec (`job run`, `cron create`), not where one
        stored is used again (a cron job's runs, a retry): a secret's value written in any
        of its fields (``written_secrets``)."""
        found = written_secrets("the job's", dict(_texts(self.to_payload())), secrets)
        if found:
            raise InvalidInput("invalid job: " + "; ".join(found))

    def to_payload(self) -> dict[str, Any]:
        """JSON-native: what ``JobCreated`` carries and ``jobs.spec`` holds."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> JobSpec:
        """The inverse of ``to_payload``; also reads a ``hodei.jobs.JobSpec`` as a dict.
        A missing or zero value takes the field's default (proto3 has no "unset")."""
        return _build(cls, payload)


def _priority_problems(priority: int) -> list[str]:
    bound = LIMITS.max_priority
    return [] if -bound <= priority <= bound else [f"priority must be between -{bound} and {bound}, got {priority}"]


def check_priority(priority: int) -> int:
    """A priority a job may have (a new one, `job update --priority`)."""
    for problem in _priority_problems(priority):
        raise InvalidInput(problem)
    return priority


def check_limits(timeout: float | None, resources: Resources | None) -> None:
    """A time limit and resources a job may have (new ones, `job update --timeout --cpu …`;
    None: not asked about)."""
    found = (_timeout_problems(timeout) if timeout is not None else []) + (
        _resource_problems(resources) if resources is not None else []
    )
    if found:
        raise InvalidInput("; ".join(found))


def _timeout_problems(timeout: float) -> list[str]:
    limits = LIMITS
    if not math.isfinite(timeout) or timeout <= 0:
        return [f"timeout must be a positive number of seconds, got {timeout:g}"]
    if timeout < limits.min_timeout_seconds:
        return [f"timeout must be at least {limits.min_timeout_seconds:g} second, got {timeout:g}"]
    if timeout > limits.max_timeout_seconds:
        return [f"timeout must be at most {limits.max_timeout_seconds:g} seconds"]
    return []


def _env_problems(env: Mapping[str, str]) -> list[str]:
    limits = LIMITS
    found = []
    if len(env) > limits.env_vars:
        found.append(f"{len(env)} environment variables; the limit is {limits.env_vars}")
    for key, value in env.items():
        if not ENV_NAME.match(key) or len(key) > limits.env_name_chars:
            found.append(f"environment variable name `{excerpt(key)}` is not valid (letters, digits, _)")
        found.extend(_platform_variable(key, "environment variable"))
        if _size(value) > limits.env_value_bytes:
            found.append(f"environment variable {excerpt(key)} is longer than {limits.env_value_bytes} bytes")
    return found


def _platform_variable(key: str, what: str) -> list[str]:
    if key not in PLATFORM_VARIABLES:
        return []
    meaning = key.removeprefix("HODEI_").lower().replace("_", " ")  # "job id"
    return [f"{what} {key} is set by the platform (its {meaning}) in every job: name yours otherwise"]


def _secret_problems(secrets: Mapping[str, str]) -> list[str]:
    limits = LIMITS
    found = []
    if len(secrets) > limits.secrets:
        found.append(f"{len(secrets)} secrets; the limit is {limits.secrets}")
    for key, value in secrets.items():
        if not ENV_NAME.match(key) or len(key) > limits.env_name_chars:
            found.append(f"secret name `{excerpt(key)}` is not valid (letters, digits, _)")
        found.extend(_platform_variable(key, "secret"))
        if len(value) < limits.secret_min_chars:
            found.append(
                f"secret {excerpt(key)} is shorter than {limits.secret_min_chars} characters (too short to "
                "be masked in the output)"
            )
        if _size(value) > limits.secret_value_bytes:
            found.append(f"secret {excerpt(key)} is longer than {limits.secret_value_bytes} bytes")
    return found


def written_secrets(whose: str, texts: Mapping[str, str], secrets: Mapping[str, str]) -> list[str]:
    """Where a secret's value is written out among ``texts`` (by where each is, in ``whose``
    words: "the job's" command, env.TOKEN): refused, as a job's spec and a `job exec` line
    are kept as written, in the job's history for good, which its secrets never enter but
    sealed. The job has each secret in its environment: ``$NAME`` says it there."""
    found = []
    for name, value in sorted(secrets.items()):
        where = [place for place, text in texts.items() if value and value in text]
        if where:
            found.append(
                f"the value of secret {name} is written in {whose} {' and '.join(where)}: write ${name} there "
                "instead (a job's secrets are in its environment; what is written there is kept as written, in the "
                "job's history)"
            )
    return found


def _texts(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every text of a spec's payload, with where it is (``command``, ``env.TOKEN``, ``args[2]``)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _texts(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _texts(item, f"{path}[{index}]")


@dataclass(frozen=True)
class JobBounds:
    """What the server gives a job that asks for none, and the most one may ask for, as a
    Kubernetes LimitRange's ``defaultRequest`` and ``max``: CPU cores (HODEI_DEFAULT_CPUS,
    HODEI_MAX_CPUS), memory (HODEI_DEFAULT_MEMORY_BYTES, HODEI_MAX_MEMORY_BYTES) and disk
    (HODEI_MAX_DISK_BYTES, its max and default at once); 0: none. Applied as each job is
    made (a cron job's runs, a retry), so a server's setting holds for every job it makes;
    a job given a default asks for it (its provider's capacity counts it, its worker is held
    to it) as one that asked would."""

    default_cpus: float = 0.0
    max_cpus: float = 0.0
    default_memory_bytes: int = 0
    max_memory_bytes: int = 0
    max_disk_bytes: int = 0

    def __post_init__(self) -> None:
        for kind, default, most in (
            ("CPUS", self.default_cpus, self.max_cpus),
            ("MEMORY_BYTES", self.default_memory_bytes, self.max_memory_bytes),
        ):
            if most and default > most:
                raise InvalidInput(f"HODEI_DEFAULT_{kind} ({default:.16g}) is past HODEI_MAX_{kind} ({most:.16g})")

    def apply(self, spec: JobSpec) -> JobSpec:
        """``spec`` with the defaults for what it asks none of; refused past a most."""
        asked = spec.resources
        for what, value, most, setting, said in (
            ("CPU", asked.cpu_cores, self.max_cpus, "HODEI_MAX_CPUS", _cores),
            ("memory", asked.memory_bytes, self.max_memory_bytes, "HODEI_MAX_MEMORY_BYTES", _bytes),
            ("disk", asked.disk_bytes, self.max_disk_bytes, "HODEI_MAX_DISK_BYTES", _bytes),
        ):
            if most and value > most:
                past = f"{what} of {said(value)} is past this server's most for a job, {said(most)}"
                raise InvalidInput(f"invalid job: {past} ({setting})")
        given = replace(
            asked,
            cpu_cores=asked.cpu_cores or self.default_cpus,
            memory_bytes=asked.memory_bytes or self.default_memory_bytes,
            disk_bytes=asked.disk_bytes or self.max_disk_bytes,
        )
        return spec if given == asked else replace(spec, resources=given)


def _cores(cores: float) -> str:
    return f"{cores:.16g} core" + ("" if cores == 1 else "s")


def _bytes(size: float) -> str:
    return f"{size:.0f} bytes"


def _resource_problems(resources: Resources) -> list[str]:
    limits = LIMITS
    found = []
    cpu = resources.cpu_cores
    if not math.isfinite(cpu) or not 0 <= cpu <= limits.max_cpu_cores:
        found.append(f"cpu cores must be between 0 (the default) and {limits.max_cpu_cores:g}, got {cpu:g}")
    if not 0 <= resources.memory_bytes <= limits.max_memory_bytes:
        found.append(f"memory must be between 0 (the default) and {limits.max_memory_bytes} bytes (1 TiB)")
    if not 0 <= resources.disk_bytes <= limits.max_disk_bytes:
        found.append(f"disk must be between 0 (no limit) and {limits.max_disk_bytes} bytes (1 PiB)")
    return found


def label_key_problem(key: str) -> str | None:
    """What is wrong with a label's key (a job's, or the one a report groups by)."""
    if not key.strip():
        return "label keys must not be empty"
    if len(key) > LIMITS.label_key_chars or not _LABEL_KEY.match(key):
        return (
            f"label key `{excerpt(key)}` must be at most {LIMITS.label_key_chars} letters, digits, `.`, `_`, `/` or `-`"
        )
    return None


def refuse_server_labels(labels: Mapping[str, str]) -> None:
    """Refuses a submission's label of the server's own (SERVER_LABELS): set by hand, one put
    a job in another's pipeline or cron job — counted as its newest run, holding its times
    back under `--concurrency forbid` — or said it came from a job it did not."""
    taken = sorted(key for key in labels if key.startswith(SERVER_LABELS))
    if taken:
        raise InvalidInput(
            f"label {', '.join(f'`{excerpt(key)}`' for key in taken)}: labels under {SERVER_LABELS} are the "
            "server's own (the array, pipeline, cron job or job a job came from): leave them out"
        )


def _label_problems(labels: Mapping[str, str]) -> list[str]:
    limits = LIMITS
    found = []
    if len(labels) > limits.labels:
        found.append(f"{len(labels)} labels; the limit is {limits.labels}")
        return found
    for key, value in labels.items():
        if problem := label_key_problem(key):
            found.append(problem)
        if len(value) > limits.label_value_chars or _CONTROL.search(value):
            found.append(
                f"label {excerpt(key)} must be at most {limits.label_value_chars} characters without control characters"
            )
    return found


def _input_problems(sha256: str, size: int) -> list[str]:
    if not sha256:
        return [] if size == 0 else ["input_bytes is the size of an input archive: give its input_sha256"]
    found = [] if SHA256_HEX.fullmatch(sha256) else ["input_sha256 must be 64 lowercase hex digits"]
    return found + ([] if size > 0 else ["input_bytes must be the input archive's size, more than 0"])


def _retry_problems(retries: int, backoff: float, retry_on: tuple[str, ...]) -> list[str]:
    found = []
    if not 0 <= retries <= LIMITS.max_retries:
        found.append(f"retries must be between 0 and {LIMITS.max_retries}")
    if not math.isfinite(backoff) or not 0 <= backoff <= LIMITS.max_timeout_seconds:
        found.append(f"retry backoff must be 0 to {LIMITS.max_timeout_seconds:g} seconds")
    return found + retry_on_problems(retry_on, retries)


def _backoff_max_problems(backoff: float, most: float) -> list[str]:
    if not most:
        return []
    if not math.isfinite(most) or not 0 < backoff <= most <= LIMITS.max_timeout_seconds:
        return [
            f"the most retry backoff must be from the retry backoff (a first pause above 0) to "
            f"{LIMITS.max_timeout_seconds:g} seconds, got {most:g} after {backoff:g}"
        ]
    return []


def _start_problems(after: Mapping[str, str], begin_at: str, array_limit: int, pool: str) -> list[str]:
    """Of when the job may start: the jobs it starts after, the time it begins, how many of
    its array's jobs may run with it, the pool whose room it waits for."""
    limits = LIMITS
    found = []
    if pool:
        try:
            check_name(pool, "a pool")
        except InvalidInput as exc:
            found.append(exc.message)
    if not 0 <= array_limit <= limits.array_jobs:
        found.append(f"an array's limit must be 0 (none) to {limits.array_jobs}, got {array_limit}")
    if begin_at and parse_time(begin_at) is None:
        found.append(f"begin must be an ISO 8601 time with its zone, got `{excerpt(begin_at)}`")
    if len(after) > limits.dependencies:
        found.append(f"{len(after)} jobs to start after; the limit is {limits.dependencies}")
        return found
    for job_ref, condition in after.items():
        if not job_ref.strip() or len(job_ref) > limits.job_ref_chars or _CONTROL.search(job_ref):
            found.append(f"after: `{excerpt(job_ref)}` is not a job id")
        if condition not in AFTER_CONDITIONS:
            found.append(
                f"after: the condition of job {excerpt(job_ref)} must be one of {', '.join(AFTER_CONDITIONS)}, "
                f"got `{excerpt(condition)}`"
            )
    return found


# A Docker image reference: [registry[:port]/]path[:tag][@digest], path components in
# lower case (the distribution project's grammar, without its corner cases), a port from
# 1 to 65535, the name (registry and path) at most IMAGE_NAME_CHARS long.
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_IMAGE = re.compile(
    rf"^(?P<name>(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::0*{_PORT})?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
# The distribution project's NameTotalLengthMax: Docker refuses a longer name only when it
# creates the worker ("repository name must not be more than 255 characters").
IMAGE_NAME_CHARS = 255


def _working_dir_problems(working_dir: str) -> list[str]:
    found = []
    if working_dir and not working_dir.startswith("/"):
        found.append(f"working directory must be an absolute path, got `{working_dir}`")
    if len(working_dir) > LIMITS.working_dir_chars or _CONTROL.search(working_dir):
        found.append(
            f"working directory must be at most {LIMITS.working_dir_chars} characters without control characters"
        )
    return found


IMAGE_PULLS = ("always", "missing", "never")


def _image_problems(image: str, pull: str) -> list[str]:
    """What is wrong with a job's image reference ("": none) and its pull; a registry's own
    refusal (a name that does not exist) comes later, as the job's start failure."""
    reference = _IMAGE.match(image) if len(image) <= LIMITS.image_chars else None
    if image and reference is None:
        return [
            f"image must be an image reference such as python:3.12-slim or registry.example.com/team/tool:1.4, "
            f"got `{excerpt(image)}`"
        ]
    if reference is not None and len(reference["name"]) > IMAGE_NAME_CHARS:
        return [
            f"image name (its registry and path, before its tag) must be at most {IMAGE_NAME_CHARS} characters, "
            f"got {len(reference['name'])}: `{excerpt(image)}`"
        ]
    if pull and pull not in IMAGE_PULLS:
        return [f"image pull must be one of {', '.join(IMAGE_PULLS)}, got `{excerpt(pull)}`"]
    if pull and not image:
        return ["an image pull is for a job in an image of its own (--image)"]
    return []


def _artifact_problems(spec: JobSpec) -> list[str]:
    """Of the files the job keeps (its patterns, and for how long) and those it fetches
    (the artifacts of the jobs it starts after)."""
    limits, patterns = LIMITS, spec.artifacts
    found = []
    if spec.fetch_artifacts and not spec.after:
        found.append("fetching artifacts needs jobs to start after (--after, --after-array): theirs are fetched")
    expiry, bound = spec.artifacts_expire_seconds, limits.max_artifacts_expire_seconds
    if not math.isfinite(expiry) or not 0 <= expiry <= bound:
        found.append(f"artifacts expire after 0 (with the log) to {bound / 86400:.0f} days, got {expiry:.0f} seconds")
    elif expiry and not patterns:
        found.append("an expiry of artifacts is for a job that keeps some (--artifact)")
    excluded = spec.artifacts_exclude
    if excluded and not patterns:
        found.append("excluding artifacts is for a job that keeps some (--artifact)")
    if len(patterns) + len(excluded) > limits.artifact_patterns:  # an exclusion is a pattern too
        return [*found, f"{len(patterns) + len(excluded)} artifact patterns; the limit is {limits.artifact_patterns}"]
    found.extend(f"artifact {problem}" for pattern in patterns if (problem := artifact_path_problem(pattern)))
    return [*found, *(f"artifact exclusion {p}" for pattern in excluded if (p := artifact_path_problem(pattern)))]


def artifact_path_problem(path: str) -> str | None:
    """What is wrong with an artifact's pattern, or a stored artifact's name: both are
    paths inside the job's working directory, so neither may leave it (``..``, ``/``)."""
    limits = LIMITS
    if not path.strip():
        return "paths must not be empty"
    if len(path) > limits.artifact_path_chars or _CONTROL.search(path):
        return f"`{excerpt(path)}` must be at most {limits.artifact_path_chars} characters without control characters"
    if path.startswith("/"):
        return f"`{excerpt(path)}` must be relative to the working directory"
    if ".." in path.split("/"):
        return f"`{excerpt(path)}` must stay inside the working directory (no `..`)"
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, Resources):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _resources(raw: Any) -> Resources:
    raw = raw or {}
    return Resources(
        cpu_cores=float(raw.get("cpu_cores") or 0.0),
        memory_bytes=int(raw.get("memory_bytes") or 0),
        disk_bytes=int(raw.get("disk_bytes") or 0),
    )


def _strings(raw: Any) -> tuple[str, ...]:
    return tuple(str(item) for item in raw)


def _string_map(raw: Any) -> dict[str, str]:
    return {str(key): str(value) for key, value in raw.items()}


def _converter(hint: Any) -> Callable[[Any], Any]:
    if hint is Resources:
        return _resources
    origin = typing.get_origin(hint)
    if origin is tuple:
        return _strings
    if origin is Mapping:
        return _string_map
    if hint is float or hint is int or hint is bool:
        return typing.cast(Callable[[Any], Any], hint)
    return str


# Each field of JobSpec: its name, whether it has a default, how to read its value. Worked
# out once: every load of a job builds its spec (a quarter of rebuilding one from its log).
_HINTS = typing.get_type_hints(JobSpec)
_FIELDS = tuple(
    (f.name, f.default is not MISSING or f.default_factory is not MISSING, _converter(_HINTS[f.name]))
    for f in fields(JobSpec)
)


def _build(cls: type[JobSpec], payload: Mapping[str, Any]) -> JobSpec:
    values: dict[str, Any] = {}
    for name, has_default, convert in _FIELDS:
        raw = payload.get(name)
        if has_default and not raw:
            continue
        values[name] = convert(raw)
    return cls(**values)


@dataclass(frozen=True)
class LabelSelector:
    """Which labels a listed job carries (kubectl's ``-l``): ``KEY=VALUE`` (equal),
    ``KEY!=VALUE`` (not that value, or no such label), ``KEY`` (any value) and ``!KEY``
    (no such label); every term must hold. A key's ``!=`` terms all hold
    (``a!=x, a!=y``: neither value); two ``=`` terms of one key with different values
    could never both hold and are refused."""

    equal: Mapping[str, str] = field(default_factory=dict)
    not_equal: tuple[tuple[str, str], ...] = ()
    present: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()

    @classmethod
    def of(cls, terms: Iterable[str], equal: Mapping[str, str] | None = None) -> LabelSelector:
        """``terms`` as people write them; ``equal``: pairs already split (the API's map)."""
        equal_to: dict[str, str] = dict(equal or {})
        not_equal_to: list[tuple[str, str]] = []
        present: list[str] = []
        absent: list[str] = []
        for term in terms:
            text = term.strip()
            if "!=" in text:
                key, value = text.split("!=", 1)
                if (key.strip(), value.strip()) not in not_equal_to:
                    not_equal_to.append((key.strip(), value.strip()))
            elif "=" in text:
                key, value = text.split("=", 1)
                if equal_to.setdefault(key.strip(), value.strip()) != value.strip():
                    raise InvalidInput(
                        f"label selector `{term}`: {key.strip()} cannot also be {equal_to[key.strip()]!r}; "
                        "no job would match"
                    )
            elif text.startswith("!"):
                key = text[1:]
                absent.append(key.strip())
            else:
                key = text
                present.append(key.strip())
            if not key.strip() or "!" in key or "=" in key:
                raise InvalidInput(f"label selector `{term}`: expected KEY=VALUE, KEY!=VALUE, KEY or !KEY")
        return cls(equal_to, tuple(not_equal_to), tuple(present), tuple(absent))

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether labels hold every term, as the job list's query reads them (a webhook's
        selector is matched here, against each job that ends)."""
        return (
            all(labels.get(key) == value for key, value in self.equal.items())
            and all(labels.get(key) != value for key, value in self.not_equal)
            and all(key in labels for key in self.present)
            and not any(key in labels for key in self.absent)
        )
