"""The Kubernetes provider: each worker is a pod ``hodei-worker-<worker id>`` in
``HODEI_K8S_NAMESPACE``, labelled ``hodei-worker=<worker id>``, with a Secret of the same
name and labels that holds the agent's credentials (``CREDENTIALS``): the pod's env takes
them from it (``secretKeyRef``), so reading pods (the `view` role) does not give them away.
The Secret is owned by the pod: Kubernetes deletes it with the pod even when no server does.

A background watch (re-listed on every reconnect and at least every minute) keeps a
cache of this installation's pods; ``observe`` turns what it sees into failures the
sagas act on: a Failed pod, an image that cannot be pulled, a pod unschedulable past
its deadline, a pod deleted by someone else. The provider only ever reads, lists or
deletes pods (and secrets) that carry its installation label.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from hodei.config import KubernetesConfig
from hodei.domain.placement import check_service_account, merged_selector, tolerations_of
from hodei.domain.provider import ProviderType
from hodei.errors import InvalidInput, ProviderError, ProviderUnavailable
from hodei.providers.agent_bundle import ENTRYPOINT, MOUNT, agent_env, fill_command
from hodei.providers.base import CREDENTIALS, Health, Observation, WorkerLaunch, WorkerProvider, resource_name

log = logging.getLogger(__name__)
# Pods are read as plain JSON: the client's models refuse objects missing fields they
# declare required, and a failure detector must read whatever the API serves.
Pod = dict[str, Any]

# The seed lists worker pods with `-l hodei-worker`: this key is the worker's label.
LABEL_WORKER = "hodei-worker"
LABEL_JOB = "hodei-job"
LABEL_INSTALLATION = "hodei.io/installation"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "hodei-jobs"
REQUEST_TIMEOUT = 10
# A watch lasts this long, then the pods are listed again: a silent watch cannot go stale.
WATCH_SECONDS = 10
# Pod failures that will not fix themselves. A first failed pull (ErrImagePull) may: the
# kubelet retries it, and shows ImagePullBackOff once it backs off.
STUCK_REASONS = {
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
}
# A job's --pull, as a container's imagePullPolicy.
PULL_POLICIES = {"always": "Always", "missing": "IfNotPresent", "never": "Never"}
DEFAULT_REQUESTS = {"cpu": "100m", "memory": "128Mi"}
DEFAULT_LIMITS = {"cpu": "1", "memory": "512Mi"}
# A pod's activeDeadlineSeconds is the job's timeout plus this, so Kubernetes kills it
# even when the server is gone.
DEADLINE_MARGIN = 60
FORGET_DELETED = 600.0


def load_api_client(config: KubernetesConfig) -> k8s.ApiClient:
    """HODEI_K8S_KUBECONFIG, else in-cluster, else the default kubeconfig."""
    context = config.context or None
    if config.kubeconfig:
        return k8s_config.new_client_from_config(config_file=config.kubeconfig, context=context)
    try:
        configuration = k8s.Configuration()
        k8s_config.load_incluster_config(client_configuration=configuration)
        return k8s.ApiClient(configuration)
    except ConfigException:
        return k8s_config.new_client_from_config(context=context)


def _message(exc: ApiException) -> str:
    """The API's own words (a Status's message: which verb of which resource was refused)."""
    try:
        said = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        return ""
    return f": {said}" if isinstance(said, str) and said else ""


def container_env(name: str, agent_vars: Mapping[str, str]) -> list[dict[str, Any]]:
    """A container's env: the credentials by reference to the worker's Secret ``name``."""
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}
        if key in CREDENTIALS
        else {"name": key, "value": value}
        for key, value in sorted(agent_vars.items())
    ]


def _quantity_cpu(cores: float) -> str:
    return f"{max(1, round(cores * 1000))}m"


def _quantity_memory(size: int) -> str:
    return f"{max(1, math.ceil(size / 1024**2))}Mi"


def _quantity_bytes(size: int) -> str:
    """Exactly ``size`` bytes, in the largest binary unit that holds it whole (``10Mi``), as
    the API server writes a quantity back: a disk limit is not rounded up as memory is."""
    for power, unit in ((5, "Pi"), (4, "Ti"), (3, "Gi"), (2, "Mi"), (1, "Ki")):
        if size % 1024**power == 0:
            return f"{size // 1024**power}{unit}"
    return str(size)


class KubernetesProvider(WorkerProvider):
    provider_type = ProviderType.KUBERNETES
    inspectable = True

    def __init__(
        self,
        config: KubernetesConfig,
        installation: str,
        api_client: k8s.ApiClient | None = None,
        kill_grace: float = 5.0,
        watch: bool = True,
    ) -> None:
        self.config = config
        self.installation = installation
        self.kill_grace = kill_grace
        self.api_client = api_client or load_api_client(config)
        self.core = k8s.CoreV1Api(self.api_client)
        self.namespace = config.namespace
        self.host = self.api_client.configuration.host
        self.selector = f"{LABEL_INSTALLATION}={installation},{LABEL_WORKER}"
        self._pods: dict[str, Pod] = {}
        self._unschedulable_since: dict[str, float] = {}
        self._gone: dict[str, tuple[float, Observation]] = {}
        # Pods this provider deleted, and when: a pod leaving for another reason was
        # deleted by someone else. Forgotten after FORGET_DELETED seconds.
        self._deleted_by_us: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch_response: Any = None
        if watch:
            self._thread = threading.Thread(target=self._watch_forever, name="hodei-k8s-watch", daemon=True)
            self._thread.start()

    # Pod spec ---------------------------------------------------------------------

    def pod_manifest(self, launch: WorkerLaunch) -> dict[str, Any]:
        requests = dict(DEFAULT_REQUESTS)
        limits = dict(DEFAULT_LIMITS)
        if launch.cpu_cores > 0:
            requests["cpu"] = limits["cpu"] = _quantity_cpu(launch.cpu_cores)
        if launch.memory_bytes > 0:
            requests["memory"] = limits["memory"] = _quantity_memory(launch.memory_bytes)
        if launch.disk_bytes > 0:  # the kubelet evicts the pod past it
            requests["ephemeral-storage"] = limits["ephemeral-storage"] = _quantity_bytes(launch.disk_bytes)
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": math.ceil(launch.timeout_seconds + self.kill_grace + DEADLINE_MARGIN),
            "terminationGracePeriodSeconds": math.ceil(self.kill_grace) + 5,
            "automountServiceAccountToken": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "runAsGroup": 1000,
                "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "worker",
                    "image": self.config.image,
                    "imagePullPolicy": self.config.image_pull_policy,
                    "env": container_env(resource_name(launch.worker_id), launch.env),
                    "resources": {"requests": requests, "limits": limits},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "runAsNonRoot": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            # The job's home and TMPDIR: a --disk past 1Gi may fill it (the kubelet evicts past a sizeLimit).
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": _quantity_bytes(max(launch.disk_bytes, 1024**3))}}],
        }
        if launch.image:
            self._in_image(spec, launch)
        spec.update(self._placement(launch))
        return {"apiVersion": "v1", "kind": "Pod", "metadata": self._metadata(launch), "spec": spec}

    def _placement(self, launch: WorkerLaunch) -> dict[str, Any]:
        """The pod's nodeSelector, tolerations and service account: the server's
        (HODEI_K8S_NODE_SELECTOR, HODEI_K8S_TOLERATIONS, HODEI_K8S_SERVICE_ACCOUNT) and the
        job's. A job whose selector conflicts with the server's, or whose service account the
        server no longer lists (its settings changed since the submission), cannot start."""
        try:
            selector = merged_selector(self.config.node_selector, launch.node_selector)
            tolerations = [*self.config.tolerations, *tolerations_of(launch.tolerations)]
            check_service_account(launch.service_account, self.config.job_service_accounts)
        except InvalidInput as exc:
            raise ProviderError(exc.message) from exc
        placement: dict[str, Any] = {}
        if account := launch.service_account or self.config.service_account:
            placement["serviceAccountName"] = account
        if selector:
            placement["nodeSelector"] = selector
        unique = list(dict.fromkeys(tolerations))
        if unique:
            placement["tolerations"] = [toleration.to_kubernetes() for toleration in unique]
        return placement

    def secret_manifest(self, launch: WorkerLaunch) -> dict[str, Any]:
        """The worker's Secret: its credentials, labelled as its pod is."""
        credentials = {key: value for key, value in launch.env.items() if key in CREDENTIALS}
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": self._metadata(launch),
            "data": {key: base64.b64encode(value.encode()).decode() for key, value in sorted(credentials.items())},
        }

    def _metadata(self, launch: WorkerLaunch) -> dict[str, Any]:
        return {
            "name": resource_name(launch.worker_id),
            "namespace": self.namespace,
            "labels": {
                LABEL_WORKER: launch.worker_id,
                LABEL_JOB: launch.job_id,
                LABEL_INSTALLATION: self.installation,
                LABEL_MANAGED_BY: MANAGER,
            },
        }

    def _in_image(self, spec: dict[str, Any], launch: WorkerLaunch) -> None:
        """A job's own image: an init container of the worker image copies the agent into an
        emptyDir (``hodei.providers.agent_bundle``) that the job's container starts it from.
        The image is pulled as its --pull says, else as the worker image is
        (HODEI_K8S_IMAGE_PULL_POLICY), its ENV and WORKDIR kept; the pod's restrictions stay
        but for a read-only root filesystem, which the image's own programs may not expect."""
        (container,) = spec["containers"]
        restricted = container["securityContext"]
        spec["initContainers"] = [
            {
                "name": "agent",
                "image": self.config.image,
                "imagePullPolicy": self.config.image_pull_policy,
                "command": fill_command(MOUNT),
                "resources": {"requests": dict(DEFAULT_REQUESTS), "limits": dict(DEFAULT_LIMITS)},
                "securityContext": dict(restricted),
                "volumeMounts": [{"name": "agent", "mountPath": MOUNT}],
            }
        ]
        container.update(
            image=launch.image,
            imagePullPolicy=PULL_POLICIES.get(launch.image_pull, self.config.image_pull_policy),
            command=ENTRYPOINT,
            env=container_env(resource_name(launch.worker_id), agent_env(launch.env)),
            securityContext={**restricted, "readOnlyRootFilesystem": False},
        )
        container["volumeMounts"].append({"name": "agent", "mountPath": MOUNT, "readOnly": True})
        spec["volumes"].append({"name": "agent", "emptyDir": {"sizeLimit": "512Mi"}})

    # Operations -------------------------------------------------------------------

    def _failure(self, exc: Exception, doing: str) -> ProviderError:
        if isinstance(exc, ApiException):
            said = _message(exc)
            if exc.status == 403:
                return ProviderError(
                    f"Kubernetes refused to {doing} in namespace {self.namespace}: forbidden{said} (the server's "
                    "service account needs the Role of deploy/rbac.yaml in that namespace)"
                )
            if exc.status == 404:
                return ProviderError(f"cannot {doing}: namespace {self.namespace} does not exist")
            return ProviderError(
                f"Kubernetes failed to {doing}: {exc.status} {exc.reason}{said}", retryable=exc.status >= 500
            )
        return ProviderUnavailable(f"the Kubernetes API at {self.host} is unreachable: {exc}")

    @contextlib.contextmanager
    def _calling(self, doing: str) -> Iterator[None]:
        """The API's refusals and the network's failures as ProviderErrors saying what failed."""
        try:
            yield
        except (ApiException, HTTPError, OSError) as exc:
            raise self._failure(exc, doing) from exc

    def _ours(self, pod: Pod) -> bool:
        labels = pod.get("metadata", {}).get("labels") or {}
        return labels.get(LABEL_INSTALLATION) == self.installation and LABEL_WORKER in labels

    def _read(self, read: Callable[..., Any], name: str) -> dict[str, Any]:
        """An object of the namespace as plain JSON (``read``: the client's read of its kind)."""
        response = read(name, self.namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        found: dict[str, Any] = json.loads(response.data)
        return found

    def _create(self, create: Callable[..., Any], read: Callable[..., Any], manifest: dict[str, Any]) -> dict[str, Any]:
        """Creates the object, or finds the one a first try of this create made."""
        name, kind = manifest["metadata"]["name"], manifest["kind"].lower()
        try:
            response = create(self.namespace, manifest, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status != 409:
                raise
            existing = self._read(read, name)
            if not self._ours(existing):
                raise ProviderError(f"a {kind} named {name} exists but was not created by this installation") from exc
            return existing
        made: dict[str, Any] = json.loads(response.data)
        return made

    def create_worker(self, launch: WorkerLaunch) -> str:
        """The Secret first (the kubelet will not start a container whose env names a missing
        one), then the pod, then the pod made the Secret's owner."""
        name = resource_name(launch.worker_id)
        core = self.core
        with self._calling(f"create secret {name}"):
            self._create(core.create_namespaced_secret, core.read_namespaced_secret, self.secret_manifest(launch))
        with self._calling(f"create pod {name}"):
            pod = self._create(core.create_namespaced_pod, core.read_namespaced_pod, self.pod_manifest(launch))
        owner = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod["metadata"]["uid"]}
        with self._calling(f"make pod {name} the owner of its secret"):
            core.patch_namespaced_secret(
                name, self.namespace, {"metadata": {"ownerReferences": [owner]}}, _request_timeout=REQUEST_TIMEOUT
            )
        return name

    def destroy_worker(self, worker_id: str) -> None:
        name = resource_name(worker_id)
        grace = math.ceil(self.kill_grace)
        with self._lock:
            self._deleted_by_us[name] = time.monotonic()
        with self._calling(f"delete pod {name}"):
            self._delete("pod", self.core.read_namespaced_pod, self.core.delete_namespaced_pod, name, grace)
        # Deleting the pod deletes its Secret too (its owner), but not one whose pod was
        # never created, or before Kubernetes' garbage collector comes round to it.
        with self._calling(f"delete secret {name}"):
            self._delete("secret", self.core.read_namespaced_secret, self.core.delete_namespaced_secret, name, grace)

    def _delete(self, kind: str, read: Callable[..., Any], delete: Callable[..., Any], name: str, grace: int) -> None:
        """Deletes the object if it is there and this installation's."""
        try:
            if not self._ours(self._read(read, name)):
                log.warning("not deleting %s %s: it does not carry this installation's labels", kind, name)
                return
            delete(name, self.namespace, grace_period_seconds=grace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def output_tail(self, worker_id: str, lines: int) -> str:
        name = resource_name(worker_id)
        with self._calling(f"read the log of pod {name}"):
            try:
                output: str = self.core.read_namespaced_pod_log(
                    name, self.namespace, tail_lines=lines, _request_timeout=REQUEST_TIMEOUT
                )
            except ApiException as exc:
                if exc.status in (400, 404):  # not started, or gone
                    return ""
                raise
        return output

    def stopped_by_others(self, worker_id: str) -> str | None:
        """A pod gone, or with a deletionTimestamp, that this provider did not delete; or
        evicted by its node."""
        name = resource_name(worker_id)
        with self._lock:
            if name in self._deleted_by_us:
                return None
        try:
            pod = self._read(self.core.read_namespaced_pod, name)
        except ApiException as exc:
            return f"pod {name} was deleted by someone else" if exc.status == 404 else None
        except (HTTPError, OSError):
            return None
        status = pod.get("status") or {}
        if status.get("reason") == "Evicted":  # by its node: past its ephemeral storage, or the node's pressure
            return f"pod {name} was evicted by its node: {' '.join(str(status.get('message') or '').split())}"
        if pod.get("metadata", {}).get("deletionTimestamp"):
            return f"pod {name} is being deleted by someone else"
        return None

    def health(self) -> Health:
        try:
            self.core.read_namespace(self.namespace, _request_timeout=5)
            self.core.list_namespaced_pod(
                self.namespace, label_selector=self.selector, limit=1, _preload_content=False, _request_timeout=5
            )
        except Exception as exc:
            return Health(False, str(self._failure(exc, "list pods")))
        return Health(True, f"Kubernetes API at {self.host}, namespace {self.namespace}")

    # Watching ---------------------------------------------------------------------

    def observe(self) -> list[Observation]:
        if self._thread is None or not self._synced.is_set():
            self.resync()
        now = time.monotonic()
        with self._lock:
            pods = list(self._pods.values())
            for name, (since, _) in list(self._gone.items()):
                if now - since > 120:
                    del self._gone[name]
            gone = [observation for _, observation in self._gone.values()]
        return [self._observation(pod, now) for pod in pods] + gone

    def _observation(self, pod: Pod, now: float) -> Observation:
        metadata = pod.get("metadata", {})
        labels = metadata.get("labels") or {}
        name = metadata["name"]
        status = pod.get("status") or {}
        phase = status.get("phase")
        failure = None
        if phase in ("Failed", "Succeeded"):
            reason = status.get("reason")
            detail = f": {reason} {status.get('message') or ''}".rstrip() if reason else ""
            failure = f"pod {name} ended {phase}{detail}"
        # An init container (the agent's copy into a job's own image) that failed or cannot
        # start first: the reason a pod ended before its container started.
        inits = [
            c
            for c in status.get("initContainerStatuses") or []
            if (c.get("state") or {}).get("terminated", {}).get("exitCode") != 0
        ]
        for container in [*inits, *(status.get("containerStatuses") or [])]:
            terminated = (container.get("state") or {}).get("terminated")
            if failure is not None and terminated:
                # The kubelet's why (a StartError's runtime error, a termination log), one line.
                why = " ".join(str(terminated.get("message") or "").split())
                failure += (
                    f"; container {container.get('name')} {terminated.get('reason') or 'terminated'}"
                    f" (exit code {terminated.get('exitCode')}){f': {why}' if why else ''}"
                )
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                failure = (
                    f"pod {name} cannot start: {waiting['reason']}: {waiting.get('message') or container.get('image')}"
                )
        unschedulable = next(
            (
                c
                for c in status.get("conditions") or []
                if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
            ),
            None,
        )
        with self._lock:
            if unschedulable is None:
                self._unschedulable_since.pop(name, None)
            else:
                since = self._unschedulable_since.setdefault(name, now)
                if now - since >= self.config.unschedulable_timeout:
                    failure = f"pod {name} unschedulable for {now - since:.0f}s: {unschedulable.get('message')}"
        return Observation(
            worker_id=labels[LABEL_WORKER],
            job_id=labels.get(LABEL_JOB),
            resource_id=name,
            running=phase == "Running",
            failure=failure,
        )

    def resync(self) -> None:
        """Replaces the cache with a fresh list (what a watch reconnect does)."""
        try:
            response = self.core.list_namespaced_pod(
                self.namespace, label_selector=self.selector, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
            items: list[Pod] = json.loads(response.data).get("items") or []
        except Exception as exc:
            raise self._failure(exc, "list pods") from exc
        pods = {pod["metadata"]["name"]: pod for pod in items if self._ours(pod)}
        with self._lock:
            for name in set(self._pods) - set(pods):
                self._vanished(self._pods[name])
            self._pods = pods
        self._synced.set()

    def _vanished(self, pod: Pod) -> None:
        """A pod left the API. Ours: fine. Someone else's doing: the worker is lost."""
        metadata = pod["metadata"]
        name = metadata["name"]
        now = time.monotonic()
        for deleted, since in list(self._deleted_by_us.items()):
            if now - since > FORGET_DELETED:
                del self._deleted_by_us[deleted]
        if name in self._deleted_by_us:
            return
        labels = metadata.get("labels") or {}
        observation = Observation(
            worker_id=labels[LABEL_WORKER],
            job_id=labels.get(LABEL_JOB),
            resource_id=name,
            running=False,
            failure=f"pod {name} was deleted by someone else",
        )
        self._gone[name] = (time.monotonic(), observation)

    def apply_event(self, kind: str, pod: Pod) -> None:
        if not self._ours(pod):
            return
        name = pod["metadata"]["name"]
        with self._lock:
            if kind == "DELETED":
                self._pods.pop(name, None)
                self._vanished(pod)
            else:
                self._pods[name] = pod

    def _watch_forever(self) -> None:
        """Watch, re-listing on every (re)connect; a watch ends every WATCH_SECONDS."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                self.resync()
                self._watch_once()
                delay = 0.5
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.debug("pod watch ended (%s); resyncing", exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)

    def _watch_once(self) -> None:
        """Reads watch events as JSON lines (no model deserialisation, see ``Pod``)."""
        response = self.core.list_namespaced_pod(
            self.namespace,
            label_selector=self.selector,
            watch=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=WATCH_SECONDS + 5,
        )
        pending = b""
        self._watch_response = response
        try:
            for chunk in response.stream(4096):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._on_watch_event(json.loads(line))
                if self._stop.is_set():
                    return
        finally:
            self._watch_response = None
            response.release_conn()

    def _on_watch_event(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object")
        if kind == "ERROR":
            raise ProviderError(f"the pod watch was refused: {obj}")
        if kind in ("ADDED", "MODIFIED", "DELETED") and isinstance(obj, dict):
            self.apply_event(kind, obj)

    def close(self) -> None:
        self._stop.set()
        watching = self._watch_response
        if watching is not None:
            watching.shutdown()  # interrupts a watch blocked on a quiet stream (close() would wait)
        self.api_client.close()
