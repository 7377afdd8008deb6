"""The emulated node: a kubelet that runs each pod of the emulated API (``hodei.kube_emulator``)
as a Docker container of the pod's own image, under the pod's own restrictions, and reports
the container's real state back through the API.

What a real kubelet would enforce is enforced by the engine: the pod's command and args,
env (a ``secretKeyRef`` read from the API's Secret; a missing Secret or key is the kubelet's
``CreateContainerConfigError``) and working directory, ``runAsUser``/``runAsGroup``/``fsGroup``, ``runAsNonRoot``
(refused for an image that would run as root, as the kubelet refuses it),
``readOnlyRootFilesystem``, dropped and added capabilities, ``allowPrivilegeEscalation``,
``emptyDir`` volumes, CPU and memory limits, the pod's ``nodeSelector`` and ``tolerations``
against the node's labels and taints (the scheduler's part: a pod that does not fit stays
Pending, ``PodScheduled`` False with the scheduler's words, and starts once the node is
labelled or untainted to fit it), the ``ephemeral-storage`` limit (the pod's use —
its container's writable layer and its emptyDir volumes — measured every ``CHECK_EVERY``
seconds (``hodei.providers.disk``); past the limit the pod is evicted, as the eviction manager does, with a grace of
1 s), ``activeDeadlineSeconds``, and the rank of the
pod's processes for the node's OOM killer by its QoS class (``oom_score_adj``, as the
kubelet's ``pkg/kubelet/qos/policy.go`` sets it). Init containers
run first, one after the other, each to its end; one that fails fails the pod (its
``restartPolicy`` is Never). An emptyDir of one container is a tmpfs mount of its
``sizeLimit``; one shared by several (an init container's output) is a directory on the
node, mode 0777 as a kubelet makes it, removed with the pod (its ``sizeLimit`` unenforced:
a kubelet enforces it only by evicting the pod afterwards). Containers share the host's
network, so a worker dials the server at 127.0.0.1.

An out-of-memory kill ends the whole container, as Kubernetes does on cgroup v2 since
1.28 (``memory.oom.group``): on our cgroup v1 engines the kernel kills only the biggest
process, so the kubelet kills the rest. Pulls are real: an image the engine does not hold
and cannot pull shows ``ErrImagePull``, then ``ImagePullBackOff``. Deleting a pod stops its
container with the grace period of the delete request (SIGTERM, then SIGKILL); the
container's output is copied to ``log_dir/<pod>.out`` first (the emulator's record for the
seed procedure; a real cluster keeps nothing) and the container is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound, NullResource
from kubernetes.utils.quantity import parse_quantity

from hodei.domain.placement import Toleration, selector_of
from hodei.kube_emulator import NAMESPACE, KubeEmulator, PodLog
from hodei.providers.disk import CHECK_EVERY, tree_bytes

log = logging.getLogger(__name__)

LABEL_KUBELET = "io.hodei.emulated-kubelet"
LABEL_POD = "io.kubernetes.pod.name"
LABEL_NAMESPACE = "io.kubernetes.pod.namespace"
# The kubelet's own pull back-off: 10 s, doubling, at most 5 minutes.
PULL_BACKOFF_FIRST, PULL_BACKOFF_MAX = 10.0, 300.0
POLL = 0.1
# The grace of an eviction (the eviction manager's immediateEvictionGracePeriodSeconds). A pod's
# ephemeral storage is measured every CHECK_EVERY seconds, as the providers measure theirs.
EVICTION_GRACE = 1
Pod = dict[str, Any]
NODE_NAME = "hodei-emulated-node"
# What the scheduler adds to a pod it cannot place when evicting others would not help.
_NO_PREEMPTION = "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."


def _tolerates(toleration: dict[str, Any], taint: dict[str, Any]) -> bool:
    """Kubernetes' ``Toleration.ToleratesTaint``: an effect and a key that match (either
    left empty matches any), and the value unless the operator is Exists."""
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    if toleration.get("key") and toleration["key"] != taint["key"]:
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return True
    return bool(toleration.get("value", "") == taint.get("value", ""))


def unschedulable(pod: Pod, labels: Mapping[str, str], taints: list[dict[str, Any]]) -> str | None:
    """Why the scheduler would not place the pod on a node of these labels and taints, in
    its words (its TaintToleration filter runs before NodeAffinity); None: it fits."""
    spec = pod.get("spec") or {}
    tolerations = spec.get("tolerations") or []
    for taint in taints:
        if taint["effect"] != "PreferNoSchedule" and not any(_tolerates(t, taint) for t in tolerations):
            why = f"had untolerated taint {{{taint['key']}: {taint.get('value', '')}}}"
            break
    else:
        selector = spec.get("nodeSelector") or {}
        if all(labels.get(key) == value for key, value in selector.items()):
            return None
        why = "didn't match Pod's node affinity/selector"
    return f"0/1 nodes are available: 1 node(s) {why}. {_NO_PREEMPTION}"


def node_labels() -> dict[str, str]:
    """The labels a kubelet gives its node."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    return {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch}


class PodRefused(Exception):
    """A pod the kubelet will not start (``CreateContainerConfigError``)."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _merged_security(pod: Pod, container: dict[str, Any]) -> dict[str, Any]:
    """The container's securityContext over the pod's (the container's fields win)."""
    pod_level = {k: v for k, v in (pod["spec"].get("securityContext") or {}).items() if k != "fsGroup"}
    return {**pod_level, **(container.get("securityContext") or {})}


def _main(pod: Pod) -> dict[str, Any]:
    container: dict[str, Any] = pod["spec"]["containers"][0]
    return container


def run_as(pod: Pod, image_user: str, container: dict[str, Any] | None = None) -> str:
    """The user a container (the pod's main one by default) runs as, checked against
    ``runAsNonRoot`` as the kubelet checks it: a numeric uid, from the pod, else from the image."""
    container = container or _main(pod)
    security = _merged_security(pod, container)
    uid = security.get("runAsUser")
    gid = security.get("runAsGroup")
    name = pod["metadata"]["name"]
    if uid is None:
        user = image_user.split(":", 1)[0] or "0"
        if user == "root":
            user = "0"
        if security.get("runAsNonRoot") and not user.isdigit():
            raise PodRefused(
                f"container has runAsNonRoot and image has non-numeric user ({user}), "
                f"cannot verify user is non-root (pod: {name})"
            )
        uid = int(user) if user.isdigit() else user
        if gid is None and ":" in image_user:
            gid = image_user.split(":", 1)[1]
    if security.get("runAsNonRoot") and uid == 0:
        raise PodRefused(
            f"container has runAsNonRoot and image will run as root (pod: {name}, container: {container['name']})"
        )
    return f"{uid}:{gid}" if gid is not None else str(uid)


def _env_value(item: dict[str, Any], namespace: str, secrets: Mapping[str, Mapping[str, str]]) -> str:
    """An env entry's value: its own, or its Secret's key, refused as a kubelet refuses it."""
    source = item.get("valueFrom")
    if source is None:
        value: str = item.get("value", "")
        return value
    reference = source.get("secretKeyRef")
    if reference is None or set(source) != {"secretKeyRef"}:
        raise PodRefused(f"env {item['name']}: only secretKeyRef of valueFrom is supported by the emulated kubelet")
    secret = secrets.get(reference["name"])
    if secret is None:
        raise PodRefused(f'secret "{reference["name"]}" not found')
    if reference["key"] not in secret:
        raise PodRefused(f"couldn't find key {reference['key']} in Secret {namespace}/{reference['name']}")
    return secret[reference["key"]]


# The kubelet's ranks of a pod's processes for the node's OOM killer (qos/policy.go).
GUARANTEED_OOM_SCORE_ADJ = -997
BEST_EFFORT_OOM_SCORE_ADJ = 1000


def node_memory() -> int:
    """The node's memory in bytes (MemTotal), a Burstable pod's rank's denominator."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _resources(container: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """A container's CPU and memory (requests, limits), requests defaulted to limits as the
    API server defaults them; zero quantities left out, as GetPodQOS leaves them."""
    resources = container.get("resources") or {}

    def counted(kind: str) -> dict[str, float]:
        quantities = {
            name: float(parse_quantity(value))
            for name, value in (resources.get(kind) or {}).items()
            if name in ("cpu", "memory")
        }
        return {name: quantity for name, quantity in quantities.items() if quantity > 0}

    limits = counted("limits")
    return {**limits, **counted("requests")}, limits


def pod_ephemeral_limit(pod: Pod) -> str | None:
    """The pod's ephemeral-storage limit, its containers' summed (as ``PodLimits`` sums
    them; our pods have one container): the quantity as written, for the eviction's message."""
    (container,) = pod["spec"].get("containers") or [{}]
    return ((container.get("resources") or {}).get("limits") or {}).get("ephemeral-storage")


def oom_score_adj(pod: Pod, container: dict[str, Any], memory: int) -> int:
    """The container's processes' rank for the OOM killer of a node of ``memory`` bytes, by
    the pod's QoS class: Guaranteed (every container's CPU and memory limited, requested
    as much) last, BestEffort (nothing requested or limited) first, Burstable between, by
    the share of the node's memory the container requests."""
    spec = pod["spec"]
    every = [_resources(each) for each in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]]
    if not any(requests or limits for requests, limits in every):
        return BEST_EFFORT_OOM_SCORE_ADJ
    if all(set(limits) == {"cpu", "memory"} and requests == limits for requests, limits in every):
        return GUARANTEED_OOM_SCORE_ADJ
    requested = int(_resources(container)[0].get("memory", 0))
    adj = 1000 - (1000 * requested) // memory
    return max(1000 + GUARANTEED_OOM_SCORE_ADJ, min(adj, BEST_EFFORT_OOM_SCORE_ADJ - 1))


def shared_volumes(pod: Pod) -> set[str]:
    """The pod's volumes mounted by more than one of its containers, init containers included."""
    spec = pod["spec"]
    mounted = [
        {mount["name"] for mount in container.get("volumeMounts") or []}
        for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    ]
    return {name for names in mounted for name in names if sum(name in other for other in mounted) > 1}


def container_options(
    pod: Pod,
    image_user: str,
    kubelet: str,
    container: dict[str, Any] | None = None,
    shared: dict[str, str] | None = None,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """The ``docker create`` arguments of one of a pod's containers (its main one by
    default; ``shared``: the node's directory of each volume several containers mount;
    ``secrets``: the namespace's Secrets' data by name).
    Pure: raises PodRefused for what the kubelet would refuse, or this one does not emulate."""
    spec = pod["spec"]
    metadata = pod["metadata"]
    if len(spec.get("containers") or []) != 1:
        raise PodRefused("the emulated kubelet runs pods of exactly one container (and any init containers)")
    container = container or _main(pod)
    shared = shared or {}
    security = _merged_security(pod, container)
    env = {
        item["name"]: _env_value(item, metadata.get("namespace", NAMESPACE), secrets or {})
        for item in container.get("env") or []
    }
    volumes = {volume["name"]: volume for volume in spec.get("volumes") or []}
    tmpfs = {}
    binds = {}
    for mount in container.get("volumeMounts") or []:
        volume = volumes.get(mount["name"])
        if volume is None:
            raise PodRefused(f"volumeMount {mount['name']}: no volume of that name in the pod")
        if "emptyDir" not in volume:
            raise PodRefused(f"volume {mount['name']}: only emptyDir volumes are supported by the emulated kubelet")
        if mount["name"] in shared:
            mode = "ro" if mount.get("readOnly") else "rw"
            binds[shared[mount["name"]]] = {"bind": mount["mountPath"], "mode": mode}
            continue
        flags = ["rw", "nosuid", "nodev", "mode=1777"]
        size = (volume["emptyDir"] or {}).get("sizeLimit")
        if size:
            flags.append(f"size={int(parse_quantity(size))}")
        tmpfs[mount["mountPath"]] = ",".join(flags)
    capabilities = security.get("capabilities") or {}
    security_opt = []
    if security.get("allowPrivilegeEscalation") is False:
        security_opt.append("no-new-privileges")
    if (security.get("seccompProfile") or {}).get("type") == "Unconfined":
        security_opt.append("seccomp=unconfined")
    options: dict[str, Any] = {
        "name": f"k8s_{container['name']}_{metadata['name']}_{metadata.get('namespace', NAMESPACE)}",
        "environment": env,
        "user": run_as(pod, image_user),
        "read_only": bool(security.get("readOnlyRootFilesystem")),
        "privileged": bool(security.get("privileged")),
        "cap_drop": capabilities.get("drop") or None,
        "cap_add": capabilities.get("add") or None,
        "security_opt": security_opt or None,
        "tmpfs": tmpfs or None,
        "volumes": binds or None,
        "network_mode": "host",
        "labels": {LABEL_KUBELET: kubelet, LABEL_POD: metadata["name"], LABEL_NAMESPACE: metadata.get("namespace", "")},
        "stop_signal": "SIGTERM",
    }
    fs_group = (spec.get("securityContext") or {}).get("fsGroup")
    if fs_group is not None:
        options["group_add"] = [str(fs_group)]
    if container.get("command"):
        options["entrypoint"] = container["command"]
    if container.get("args"):
        options["command"] = container["args"]
    if container.get("workingDir"):
        options["working_dir"] = container["workingDir"]
    limits = (container.get("resources") or {}).get("limits") or {}
    if "memory" in limits:
        options["mem_limit"] = options["memswap_limit"] = int(parse_quantity(limits["memory"]))
    if "cpu" in limits:
        options["nano_cpus"] = int(parse_quantity(limits["cpu"]) * 10**9)
    return options


def _container_status(container: dict[str, Any], state: dict[str, Any], container_id: str = "") -> dict[str, Any]:
    return {
        "name": container["name"],
        "image": container["image"],
        "imageID": "",
        "containerID": f"docker://{container_id}" if container_id else "",
        "restartCount": 0,
        "ready": "running" in state,
        "started": "running" in state,
        "state": state,
    }


@dataclass
class _Init:
    """An init container of the pod, and its Docker container once created."""

    container: dict[str, Any]
    container_id: str = ""


@dataclass
class _PodRun:
    name: str
    pod: Pod
    deleted: threading.Event = field(default_factory=threading.Event)
    container_id: str = ""
    thread: threading.Thread | None = None
    # The init containers' states so far, by name, with their container ids.
    init_states: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    # The node's directory of each volume several of the pod's containers mount.
    shared: dict[str, str] = field(default_factory=dict)
    # When the node took the pod (monotonic): its activeDeadlineSeconds count from then.
    started: float = field(default_factory=time.monotonic)


@dataclass
class Kubelet:
    """Plays the node for one namespace of a KubeEmulator (see the module docstring)."""

    api: KubeEmulator
    log_dir: Path | None = None
    namespace: str = NAMESPACE
    docker_url: str | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    # The node's memory: a Burstable pod's rank for the OOM killer is its share of it.
    memory: int = field(default_factory=node_memory)
    # The node's labels and taints (``{"key", "value", "effect"}``), read at each sync: a
    # test changes them as `kubectl label node` and `kubectl taint node` would.
    labels: dict[str, str] = field(default_factory=node_labels)
    taints: list[dict[str, Any]] = field(default_factory=list)
    # Pods the node does not fit, and the scheduler's words last reported for each.
    _unscheduled: dict[str, str] = field(default_factory=dict)
    _runs: dict[str, _PodRun] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _client: Any = None

    def start(self) -> Kubelet:
        self._client = (
            docker.DockerClient(base_url=self.docker_url, timeout=60)
            if self.docker_url
            else docker.from_env(timeout=60)
        )
        self.api.serve_logs(self.read_log)
        self._thread = threading.Thread(target=self._loop, name="emulated-kubelet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops watching and removes every container this kubelet started."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for run in list(self._runs.values()):
            run.deleted.set()
        for run in list(self._runs.values()):
            if run.thread is not None:
                run.thread.join(30)
        for container in self._client.containers.list(
            all=True, sparse=True, filters={"label": f"{LABEL_KUBELET}={self.id}"}
        ):
            with contextlib.suppress(NotFound, APIError):
                container.remove(force=True)
        self._client.close()

    def running(self, pod: str) -> bool:
        """Whether the pod's life on this node goes on: its containers, or its pull, may
        still start something."""
        run = self._runs.get(pod)
        return run is not None and run.thread is not None and run.thread.is_alive()

    # The node's loop ------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(POLL):
            try:
                self._sync()
            except Exception as exc:  # the emulator may be stopping
                log.warning("emulated kubelet: %s", exc)

    def _sync(self) -> None:
        pods = self.api.pods(self.namespace)
        for name in set(self._unscheduled) - set(pods):
            del self._unscheduled[name]
        for name, pod in pods.items():
            if name not in self._runs and self._scheduled(name, pod):
                run = _PodRun(name, pod)
                run.thread = threading.Thread(target=self._run_pod, args=(run,), name=f"pod-{name}", daemon=True)
                self._runs[name] = run
                run.thread.start()
        for name, run in list(self._runs.items()):
            if name not in pods and not run.deleted.is_set():
                run.deleted.set()
            if run.thread is not None and not run.thread.is_alive():
                del self._runs[name]

    def _scheduled(self, name: str, pod: Pod) -> bool:
        """Whether the pod fits the node; one that does not is reported Pending, as the
        scheduler reports it, whenever its reason changes."""
        why = unschedulable(pod, self.labels, self.taints)
        if why is None:
            self._unscheduled.pop(name, None)
            return True
        if self._unscheduled.get(name) != why:
            condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": why}
            self.api.patch_pod(name, {"status": {"phase": "Pending", "conditions": [condition]}}, self.namespace)
            self._unscheduled[name] = why
        return False

    def _report(
        self, run: _PodRun, phase: str, state: dict[str, Any], init: _Init | None = None, **pod_status: Any
    ) -> None:
        """The pod's status: the main container's ``state``, or an init container's (then
        the main one waits: PodInitializing)."""
        if run.deleted.is_set():
            return
        if init is not None:
            run.init_states[init.container["name"]] = (state, init.container_id)
            state = {"waiting": {"reason": "PodInitializing"}}
        inits = {c["name"]: c for c in run.pod["spec"].get("initContainers") or []}
        status = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [_container_status(_main(run.pod), state, run.container_id)],
            **pod_status,
        }
        if run.init_states:
            status["initContainerStatuses"] = [
                _container_status(inits[name], init_state, container_id)
                for name, (init_state, container_id) in run.init_states.items()
            ]
        try:
            self.api.patch_pod(run.name, {"status": status}, self.namespace)
        except Exception as exc:  # deleted meanwhile
            log.debug("emulated kubelet: status of %s not reported: %s", run.name, exc)

    # One pod's life -------------------------------------------------------------------

    def _run_pod(self, run: _PodRun) -> None:
        try:
            self._report(run, "Pending", {"waiting": {"reason": "ContainerCreating"}}, startTime=_now())
            for name in sorted(shared_volumes(run.pod)):
                run.shared[name] = tempfile.mkdtemp(prefix=f"hodei-kubelet-{run.name}-{name}-")
                Path(run.shared[name]).chmod(0o777)
            if all(self._initialised(run, _Init(init)) for init in run.pod["spec"].get("initContainers") or []):
                image = self._pulled(run, _main(run.pod))
                if image is not None:
                    self._create_and_watch(run, image)
            run.deleted.wait()
        except Exception as exc:
            log.exception("emulated kubelet: pod %s: %s", run.name, exc)
            run.deleted.wait()
        finally:
            self._remove(run)

    def _initialised(self, run: _PodRun, init: _Init) -> bool:
        """Runs an init container to its end: False when it failed (the pod with it) or
        the pod went meanwhile."""
        image = self._pulled(run, init.container, init)
        return image is not None and self._create_and_watch(run, image, init)

    def _pulled(self, run: _PodRun, container: dict[str, Any], init: _Init | None = None) -> Any:
        """A container's image, pulled as its ``imagePullPolicy`` says; None when the pod
        went meanwhile."""
        reference = container["image"]
        policy = container.get("imagePullPolicy") or ("Always" if reference.endswith(":latest") else "IfNotPresent")
        backoff = PULL_BACKOFF_FIRST
        while True:
            if policy != "Always":
                with contextlib.suppress(ImageNotFound):
                    return self._client.images.get(reference)
                if policy == "Never":
                    message = f'Container image "{reference}" is not present with pull policy of Never'
                    self._report(run, "Pending", {"waiting": {"reason": "ErrImageNeverPull", "message": message}}, init)
                    return None
            repository, _, tag = reference.rpartition(":") if ":" in reference.split("/")[-1] else (reference, "", "")
            try:
                pulled = self._client.images.pull(repository, tag=tag or "latest")
                # A pod deleted while its image was pulled is not started once the pull ends.
                return None if run.deleted.is_set() else pulled
            except (APIError, DockerException) as exc:
                error = f'failed to pull image "{reference}": {getattr(exc, "explanation", None) or exc}'
                self._report(run, "Pending", {"waiting": {"reason": "ErrImagePull", "message": error}}, init)
            if run.deleted.wait(1.0):
                return None
            message = f'Back-off pulling image "{reference}"'
            self._report(run, "Pending", {"waiting": {"reason": "ImagePullBackOff", "message": message}}, init)
            if run.deleted.wait(backoff):
                return None
            backoff = min(backoff * 2, PULL_BACKOFF_MAX)

    def _create_and_watch(self, run: _PodRun, image: Any, init: _Init | None = None) -> bool:
        """Runs the pod's main container, or one of its init containers, to its end: True
        when it exited 0 within the pod's deadline."""
        try:
            options = container_options(
                run.pod,
                image.attrs["Config"].get("User") or "",
                self.id,
                init.container if init else None,
                run.shared,
                self.api.secrets(self.namespace),
            )
        except PodRefused as exc:
            waiting = {"reason": "CreateContainerConfigError", "message": str(exc)}
            self._report(run, "Pending", {"waiting": waiting}, init)
            return False
        started = _now()
        try:
            container = self._client.containers.create(image.id, detach=True, **options)
            if init is None:
                run.container_id = container.id
            else:
                init.container_id = container.id
            container.start()
            self._rank(container, run.pod, init.container if init else _main(run.pod))
        except APIError as exc:
            terminated = {
                "exitCode": 128,
                "reason": "StartError",
                "message": str(exc.explanation or exc),
                "startedAt": started,
                "finishedAt": _now(),
            }
            self._report(run, "Failed", {"terminated": terminated}, init)
            return False
        self._report(run, "Running" if init is None else "Pending", {"running": {"startedAt": started}}, init)
        return self._watch(run, container, started, init)

    def _rank(self, container: Any, pod: Pod, spec: dict[str, Any]) -> None:
        """The container's rank for the node's OOM killer, given to its first process as it
        starts (its job's processes come later, and inherit it): the engine's runc cannot
        create a container that drops its capabilities with a negative one ("can't get
        final child's PID from pipe")."""
        pid = self._client.api.inspect_container(container.id)["State"]["Pid"]
        rank = oom_score_adj(pod, spec, self.memory)
        try:
            Path(f"/proc/{pid}/oom_score_adj").write_text(str(rank))
        except OSError as exc:  # ended already (its end is reported as such), or a rank below 0
            # needs CAP_SYS_RESOURCE, which a node in a container may lack (ours do): 0 stays
            log.debug("pod %s keeps oom_score_adj 0, not %d: %s", pod["metadata"]["name"], rank, exc)

    def _watch(self, run: _PodRun, container: Any, started: str, init: _Init | None) -> bool:
        """Until the container exits; past the pod's activeDeadlineSeconds (counted from the
        pod's start, init containers included) it is stopped and the pod fails."""
        deadline_seconds = run.pod["spec"].get("activeDeadlineSeconds")
        deadline = run.started + deadline_seconds if deadline_seconds else None
        limit = pod_ephemeral_limit(run.pod) if init is None else None
        measured = time.monotonic()
        pod_reason: dict[str, Any] = {}
        while not run.deleted.wait(POLL):
            state = self._client.api.inspect_container(container.id)["State"]
            if state.get("Running"):
                if state.get("OOMKilled"):
                    container.kill()  # memory.oom.group: the whole container goes
                elif deadline is not None and time.monotonic() > deadline and not pod_reason:
                    message = f"Pod was active on the node longer than the specified deadline ({deadline_seconds}s)"
                    pod_reason = {"reason": "DeadlineExceeded", "message": message}
                    container.stop(timeout=self._grace(run))
                elif limit and not pod_reason and time.monotonic() - measured >= CHECK_EVERY:
                    measured = time.monotonic()
                    if self._ephemeral_use(run, container.id, state.get("Pid") or 0) > parse_quantity(limit):
                        message = f"Pod ephemeral local storage usage exceeds the total limit of containers {limit}. "
                        pod_reason = {"reason": "Evicted", "message": message}
                        # Said before its agent is stopped: the agent's report asks why.
                        self._report(run, "Running", {"running": {"startedAt": started}}, init, **pod_reason)
                        container.stop(timeout=EVICTION_GRACE)
                continue
            code = int(state.get("ExitCode", 0))
            reason = "OOMKilled" if state.get("OOMKilled") else "Completed" if code == 0 else "Error"
            terminated = {
                "exitCode": code,
                "reason": reason,
                "startedAt": started,
                "finishedAt": _now(),
                "containerID": f"docker://{container.id}",
            }
            done = code == 0 and not pod_reason
            phase = "Failed" if not done else "Succeeded" if init is None else "Pending"
            self._report(run, phase, {"terminated": terminated}, init, **pod_reason)
            return done
        return False

    def _ephemeral_use(self, run: _PodRun, container_id: str, pid: int) -> int:
        """The pod's ephemeral storage in use, as the eviction manager sums it: what its
        container wrote to its writable layer (the engine's ``SizeRw``) and what its emptyDir
        volumes hold but those of medium Memory (a tmpfs of one container, read through its
        root; a node directory shared with an init container, by du)."""
        listed = self._client.api.containers(all=True, filters={"id": container_id}, size=True)
        used = int(listed[0].get("SizeRw") or 0) if listed else 0
        volumes = {v["name"]: v["emptyDir"] or {} for v in run.pod["spec"].get("volumes") or [] if "emptyDir" in v}
        for name, directory in run.shared.items():
            if volumes.get(name, {}).get("medium") != "Memory":
                used += tree_bytes(directory)
        for mount in _main(run.pod).get("volumeMounts") or []:
            name = mount["name"]
            if name in run.shared or name not in volumes or volumes[name].get("medium") == "Memory":
                continue
            with contextlib.suppress(OSError):
                held = os.statvfs(f"/proc/{pid}/root{mount['mountPath']}")
                used += (held.f_blocks - held.f_bfree) * held.f_frsize
        return used

    def _grace(self, run: _PodRun) -> int:
        """The delete request's gracePeriodSeconds, else the pod's terminationGracePeriodSeconds."""
        asked = self.api.delete_grace(run.name, self.namespace)
        if asked is not None:
            return asked
        return int(run.pod["spec"].get("terminationGracePeriodSeconds", 30))

    def _remove(self, run: _PodRun) -> None:
        """The pod is gone: stop its container with the grace period, keep its output, remove
        it, its init containers and its volumes' directories."""
        for _, init_id in run.init_states.values():
            with contextlib.suppress(NotFound, APIError, NullResource):
                self._client.api.remove_container(init_id, force=True)
        for directory in run.shared.values():
            shutil.rmtree(directory, ignore_errors=True)
        if not run.container_id:
            return
        try:
            container = self._client.containers.get(run.container_id)
            if container.status == "running":
                container.stop(timeout=self._grace(run))
            output = (self.log_dir or Path("/tmp")) / f"{run.name}.out"
            output.write_bytes(container.logs(stdout=True, stderr=True))
            self.outputs[run.name] = output
            container.remove(force=True)
        except NotFound:
            return

    # pods/log -------------------------------------------------------------------------

    def read_log(self, namespace: str, name: str, tail: int | None) -> PodLog:
        """What ``kubectl logs`` reads: the container's output (stdout and stderr)."""
        run = self._runs.get(name)
        if namespace != self.namespace or run is None or run.deleted.is_set():
            return PodLog(404, f'pods "{name}" not found')
        if not run.container_id:
            return PodLog(400, f'container "worker" in pod "{name}" is waiting to start: ContainerCreating')
        try:
            output: bytes = self._client.containers.get(run.container_id).logs(
                stdout=True, stderr=True, tail="all" if tail is None else tail
            )
        except NotFound:
            return PodLog(404, f'pods "{name}" not found')
        return PodLog(200, output.decode(errors="replace"))


def main() -> None:
    """Serves an emulated Kubernetes API with this kubelet until SIGTERM, and writes a
    kubeconfig for it: what `just dev-k8s` uses when no cluster is configured."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True, help="where to write the kubeconfig")
    parser.add_argument("--node-label", action="append", default=[], help="KEY=VALUE: a label of the node; repeatable")
    parser.add_argument(
        "--node-taint", action="append", default=[], help="KEY[=VALUE]:EFFECT: a taint of the node; repeatable"
    )
    args = parser.parse_args()
    taints = [Toleration.parse(text) for text in args.node_taint]
    if any(not taint.effect for taint in taints):
        parser.error("a taint needs an effect: KEY[=VALUE]:EFFECT")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with KubeEmulator() as api:
        kubelet = Kubelet(
            api,
            log_dir=args.kubeconfig.parent,
            labels={**node_labels(), **selector_of(args.node_label, "--node-label")},
            taints=[{"key": t.key, "value": t.value or "", "effect": t.effect} for t in taints],
        ).start()
        api.kubeconfig(args.kubeconfig)
        print(f"Kubernetes emulator at {api.url}; kubeconfig {args.kubeconfig}", flush=True)
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        with contextlib.suppress(KeyboardInterrupt):
            stopped.wait()
        kubelet.stop()


if __name__ == "__main__":
    main()
