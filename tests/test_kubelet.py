"""The emulated kubelet: how a pod spec becomes a container (pure), and what the node
reports for pods it refuses or stops (with Docker)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from hodei.kube_emulator import NAMESPACE, KubeEmulator
from hodei.kubelet import PodRefused, container_options, oom_score_adj, run_as, shared_volumes, unschedulable
from hodei.testing import eventually


def pod(container: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": NAMESPACE},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "worker", "image": "w:1", "imagePullPolicy": "IfNotPresent", **(container or {})}],
            **spec,
        },
    }


NOT_HELPFUL = " preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."


def test_the_node_takes_a_pod_only_if_it_tolerates_its_taints_and_has_the_labels_it_selects() -> None:
    """The scheduler's TaintToleration and NodeAffinity filters, in that order, with their
    words: a NoSchedule or NoExecute taint must be tolerated (by key and effect, and value
    unless Exists; an empty key or effect matches any), a PreferNoSchedule one need not."""
    labels = {"kubernetes.io/os": "linux", "disktype": "ssd"}
    gpu = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
    assert unschedulable(pod(), labels, []) is None
    assert unschedulable(pod(nodeSelector={"disktype": "ssd"}), labels, []) is None
    assert unschedulable(pod(nodeSelector={"disktype": "hdd"}), labels, []) == (
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector." + NOT_HELPFUL
    )
    assert unschedulable(pod(), labels, [gpu]) == (
        "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}." + NOT_HELPFUL
    )
    tolerating = [
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Exists"},
        {"operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "value": "gpu"},
    ]
    for toleration in tolerating:
        assert unschedulable(pod(tolerations=[toleration]), labels, [gpu]) is None, toleration
    not_tolerating = [
        {"key": "dedicated", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Exists", "effect": "NoExecute"},
        {"key": "other", "operator": "Exists"},
    ]
    for toleration in not_tolerating:
        assert unschedulable(pod(tolerations=[toleration]), labels, [gpu]) is not None, toleration
    assert unschedulable(pod(), labels, [{**gpu, "effect": "PreferNoSchedule"}]) is None
    # The taint is the first reason, as the scheduler's filters run.
    assert "untolerated taint" in str(unschedulable(pod(nodeSelector={"disktype": "hdd"}), labels, [gpu]))


def test_the_pod_restrictions_become_the_container_options() -> None:
    options = container_options(
        pod(
            {
                "command": ["python3", "-m", "agent"],
                "args": ["--verbose"],
                "workingDir": "/work",
                "env": [{"name": "A", "value": "1"}, {"name": "EMPTY"}],
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}},
                "securityContext": {
                    "readOnlyRootFilesystem": True,
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                },
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            },
            securityContext={"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 2000, "fsGroup": 3000},
            volumes=[{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
        ),
        image_user="",
        kubelet="k1",
    )
    assert options["entrypoint"] == ["python3", "-m", "agent"] and options["command"] == ["--verbose"]
    assert options["working_dir"] == "/work"
    assert options["environment"] == {"A": "1", "EMPTY": ""}
    assert options["user"] == "1000:2000" and options["group_add"] == ["3000"]
    assert options["read_only"] is True and options["privileged"] is False
    assert options["cap_drop"] == ["ALL"] and options["cap_add"] == ["NET_BIND_SERVICE"]
    assert options["security_opt"] == ["no-new-privileges"]
    assert options["tmpfs"] == {"/tmp": f"rw,nosuid,nodev,mode=1777,size={1024**3}"}
    assert options["mem_limit"] == options["memswap_limit"] == 128 * 1024**2
    assert options["nano_cpus"] == 500_000_000
    assert options["network_mode"] == "host"
    assert options["name"] == f"k8s_worker_p_{NAMESPACE}"
    assert options["labels"]["io.hodei.emulated-kubelet"] == "k1"


def test_an_env_value_from_a_secret_is_read_from_it_and_a_missing_one_refused() -> None:
    """What the kubelet answers with CreateContainerConfigError, in its own words."""
    token = {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "TOKEN"}}}
    spec = pod({"env": [{"name": "A", "value": "1"}, token]})
    options = container_options(spec, image_user="1000", kubelet="k1", secrets={"s": {"TOKEN": "t0ken"}})
    assert options["environment"] == {"A": "1", "TOKEN": "t0ken"}
    with pytest.raises(PodRefused, match=r'^secret "s" not found$'):
        container_options(spec, image_user="1000", kubelet="k1", secrets={"other": {"TOKEN": "x"}})
    with pytest.raises(PodRefused, match=f"^couldn't find key TOKEN in Secret {NAMESPACE}/s$"):
        container_options(spec, image_user="1000", kubelet="k1", secrets={"s": {"OTHER": "x"}})
    field = {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    with pytest.raises(PodRefused, match="env NODE: only secretKeyRef of valueFrom is supported"):
        container_options(pod({"env": [field]}), image_user="1000", kubelet="k1")


def test_without_command_or_args_the_image_decides() -> None:
    options = container_options(pod(), image_user="1000", kubelet="k1")
    assert "entrypoint" not in options and "command" not in options
    assert options["user"] == "1000" and options["read_only"] is False and options["tmpfs"] is None


@pytest.mark.parametrize(
    ("security", "image_user", "expected"),
    [
        ({"runAsNonRoot": True}, "1000:1000", "1000:1000"),
        ({"runAsNonRoot": True, "runAsUser": 7}, "", "7"),
        ({}, "", "0"),
        ({}, "root", "0"),
        ({"runAsUser": 0}, "1000", "0"),
    ],
)
def test_the_user_comes_from_the_pod_else_the_image(security: dict[str, Any], image_user: str, expected: str) -> None:
    assert run_as(pod(securityContext=security), image_user) == expected


@pytest.mark.parametrize(
    ("security", "image_user", "refusal"),
    [
        ({"runAsNonRoot": True}, "", "image will run as root"),
        ({"runAsNonRoot": True}, "root", "image will run as root"),
        ({"runAsNonRoot": True, "runAsUser": 0}, "1000", "image will run as root"),
        ({"runAsNonRoot": True}, "hodei", "non-numeric user (hodei), cannot verify user is non-root"),
    ],
)
def test_run_as_non_root_refuses_what_the_kubelet_refuses(
    security: dict[str, Any], image_user: str, refusal: str
) -> None:
    with pytest.raises(PodRefused, match=refusal.replace("(", r"\(").replace(")", r"\)")):
        run_as(pod(securityContext=security), image_user)


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"volumes": [{"name": "data", "hostPath": {"path": "/"}}]}, "only emptyDir volumes"),
        ({"volumes": []}, "no volume of that name"),
        ({"containers": [{"name": "a", "image": "w:1"}, {"name": "b", "image": "w:1"}]}, "exactly one container"),
    ],
)
def test_what_the_emulation_cannot_do_is_refused_by_name(change: dict[str, Any], refusal: str) -> None:
    spec = pod({"volumeMounts": [{"name": "data", "mountPath": "/data"}]}, **change)
    with pytest.raises(PodRefused, match=refusal):
        container_options(spec, image_user="1000", kubelet="k1")


def test_a_volume_several_containers_mount_is_the_nodes_directory() -> None:
    """An emptyDir an init container fills for the container after it is shared (a directory
    of the node, bound into both); one of a single container stays a tmpfs of its size."""
    spec = pod(
        {
            "volumeMounts": [
                {"name": "tmp", "mountPath": "/tmp"},
                {"name": "agent", "mountPath": "/opt/agent", "readOnly": True},
            ]
        },
        initContainers=[{"name": "fill", "image": "w:1", "volumeMounts": [{"name": "agent", "mountPath": "/out"}]}],
        volumes=[{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}, {"name": "agent", "emptyDir": {}}],
    )
    assert shared_volumes(spec) == {"agent"}
    shared = {"agent": "/node/agent"}
    main = container_options(spec, image_user="1000", kubelet="k1", shared=shared)
    assert main["volumes"] == {"/node/agent": {"bind": "/opt/agent", "mode": "ro"}}
    assert main["tmpfs"] == {"/tmp": f"rw,nosuid,nodev,mode=1777,size={1024**3}"}
    init = container_options(spec, "1000", "k1", spec["spec"]["initContainers"][0], shared)
    assert init["volumes"] == {"/node/agent": {"bind": "/out", "mode": "rw"}} and init["tmpfs"] is None
    assert init["name"] == f"k8s_fill_p_{NAMESPACE}"


# With Docker ------------------------------------------------------------------------


@pytest.fixture
def node(tmp_path: Path, worker_image: str) -> Iterator[tuple[KubeEmulator, client.CoreV1Api]]:
    from hodei.kubelet import Kubelet

    with KubeEmulator() as api:
        kubelet = Kubelet(api, log_dir=tmp_path).start()
        core = client.CoreV1Api(config.new_client_from_config(config_file=str(api.kubeconfig(tmp_path / "kc"))))
        yield api, core
        kubelet.stop()


def phase(api: KubeEmulator, name: str) -> str | None:
    found: str | None = api.pods().get(name, {}).get("status", {}).get("phase")
    return found


def container_state(api: KubeEmulator, name: str) -> dict[str, Any] | None:
    statuses = api.pods().get(name, {}).get("status", {}).get("containerStatuses") or []
    state: dict[str, Any] | None = statuses[0]["state"] if statuses else None
    return state


@pytest.mark.docker
def test_a_root_pod_under_run_as_non_root_is_not_started(
    node: tuple[KubeEmulator, client.CoreV1Api], worker_image: str
) -> None:
    api, core = node
    spec = pod({"image": worker_image}, securityContext={"runAsNonRoot": True, "runAsUser": 0})
    core.create_namespaced_pod(NAMESPACE, spec)

    def not_started() -> dict[str, Any] | None:
        state = container_state(api, "p")
        return state if "CreateContainerConfigError" in str(state) else None

    state = eventually(not_started, 30)
    assert "image will run as root" in state["waiting"]["message"]
    with pytest.raises(client.ApiException) as refused:
        core.read_namespaced_pod_log("p", NAMESPACE)
    assert refused.value.status == 400 and "waiting to start" in str(refused.value.body)


@pytest.mark.docker
def test_the_deadline_and_the_delete_grace_are_honoured(
    node: tuple[KubeEmulator, client.CoreV1Api], worker_image: str, docker_client: Any
) -> None:
    api, core = node
    ignore_term = ["sh", "-c", "trap 'echo got TERM' TERM; while true; do sleep 0.1; done"]
    spec = pod(
        {"image": worker_image, "command": ignore_term}, activeDeadlineSeconds=1, terminationGracePeriodSeconds=1
    )
    core.create_namespaced_pod(NAMESPACE, spec)
    eventually(lambda: phase(api, "p") == "Failed", 30, what="the deadline")
    assert api.pods()["p"]["status"]["reason"] == "DeadlineExceeded"
    terminated = container_state(api, "p")["terminated"]  # type: ignore[index]
    assert terminated["exitCode"] == 137  # SIGTERM ignored, SIGKILL after the grace period
    assert "got TERM" in core.read_namespaced_pod_log("p", NAMESPACE)

    spec["metadata"]["name"] = "q"
    core.create_namespaced_pod(NAMESPACE, spec | {"spec": {**spec["spec"], "activeDeadlineSeconds": 600}})
    eventually(lambda: phase(api, "q") == "Running", 30)
    started = time.monotonic()
    core.delete_namespaced_pod("q", NAMESPACE, grace_period_seconds=2)
    label = "io.kubernetes.pod.name=q"
    eventually(lambda: docker_client.containers.list(all=True, sparse=True, filters={"label": label}) == [], 30)
    assert time.monotonic() - started >= 2  # SIGTERM was ignored: the whole grace period passed


@pytest.mark.docker
def test_init_containers_run_first_and_one_that_fails_fails_the_pod(
    node: tuple[KubeEmulator, client.CoreV1Api], worker_image: str, docker_client: Any
) -> None:
    api, core = node
    shared = {"volumes": [{"name": "out", "emptyDir": {}}]}
    mount = [{"name": "out", "mountPath": "/out"}]
    image = {"image": worker_image, "imagePullPolicy": "IfNotPresent", "volumeMounts": mount}
    inits = [
        {"name": "first", "command": ["sh", "-c", "echo one > /out/a"], **image},
        {"name": "second", "command": ["sh", "-c", "cat /out/a > /out/b"], **image},
    ]
    main = {"image": worker_image, "command": ["cat", "/out/b"], "volumeMounts": mount}
    core.create_namespaced_pod(NAMESPACE, pod(main, initContainers=inits, **shared))
    eventually(lambda: phase(api, "p") == "Succeeded", 60, what="the pod to succeed")
    assert core.read_namespaced_pod_log("p", NAMESPACE) == "one\n"
    statuses = api.pods()["p"]["status"]["initContainerStatuses"]
    assert [(s["name"], s["state"]["terminated"]["reason"]) for s in statuses] == [
        ("first", "Completed"),
        ("second", "Completed"),
    ]

    failing = [{**inits[0], "command": ["sh", "-c", "exit 3"]}, inits[1]]
    spec = pod(main, initContainers=failing, **shared)
    spec["metadata"]["name"] = "q"
    core.create_namespaced_pod(NAMESPACE, spec)
    eventually(lambda: phase(api, "q") == "Failed", 60, what="the pod to fail")
    status = api.pods()["q"]["status"]
    ((name, terminated),) = [(s["name"], s["state"]["terminated"]) for s in status["initContainerStatuses"]]
    assert (name, terminated["exitCode"], terminated["reason"]) == ("first", 3, "Error")
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    for name in ("p", "q"):
        core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
    label = "io.hodei.emulated-kubelet"
    eventually(lambda: docker_client.containers.list(all=True, sparse=True, filters={"label": label}) == [], 30)


def test_a_pods_processes_are_ranked_for_the_oom_killer_by_its_qos_class() -> None:
    """As the kubelet ranks them (qos/policy.go): BestEffort first, Guaranteed last, a
    Burstable container by the share of the node's memory it requests."""
    gib = 1024**3

    def adj(resources: dict[str, Any] | None, **spec: Any) -> int:
        made = pod({"resources": resources} if resources else None, **spec)
        return oom_score_adj(made, made["spec"]["containers"][0], 16 * gib)

    assert adj(None) == 1000
    assert adj({"limits": {"cpu": "1", "memory": "1Gi"}}) == -997  # requests default to limits
    assert adj({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}) == -997
    burstable = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
    assert adj(burstable) == 1000 - (1000 * 128 * 1024**2) // (16 * gib)  # 993
    assert adj({"requests": {"memory": "16Gi"}}) == 3  # all of the node's: still above Guaranteed
    assert adj({"requests": {"cpu": "1"}}) == 999  # nothing of the memory: still below BestEffort
    assert adj({"limits": {"memory": "1Gi"}}) == 1000 - (1000 * gib) // (16 * gib)  # no CPU limit: Burstable
    init = {"name": "fetch", "image": "w:1", "resources": {"limits": {"cpu": "1"}}}
    assert adj(None, initContainers=[init]) == 999  # an init container's resources count for the pod
