"""The Kubernetes provider against kmock's emulated API server: the exact pod it
creates, how it reads pod failures, deletion, and that it only touches its own pods."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import cast
from uuid import uuid4

import pytest
from kmock import Response  # type: ignore[attr-defined]  # re-exported without __all__

from hodei.cancels import Children
from hodei.config import KubernetesConfig
from hodei.domain.placement import tolerations_of
from hodei.errors import ProviderError, ProviderUnavailable
from hodei.kube_emulator import NAMESPACE, KubeEmulator, PodLog
from hodei.providers.base import WorkerLaunch
from hodei.providers.kubernetes import KubernetesProvider, load_api_client
from hodei.store.app import HodeiStore
from hodei.store.readmodels import ReadModels
from hodei.testing import eventually
from hodei.webhooks import Webhooks
from tests.k8s_schema import problems
from tests.test_deploy import by_kind

INSTALLATION = "test-installation"


def config(kubeconfig: Path, **overrides: object) -> KubernetesConfig:
    values: dict[str, object] = {
        "enabled": True,
        "image": "hodei-jobs-worker:latest",
        "kubeconfig": str(kubeconfig),
        "context": "",
        "namespace": NAMESPACE,
        "image_pull_policy": "IfNotPresent",
        "service_account": "",
        "unschedulable_timeout": 60.0,
    }
    values.update(overrides)
    return KubernetesConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def api() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture
def kubeconfig(api: KubeEmulator, tmp_path: Path) -> Path:
    return api.kubeconfig(tmp_path / "kubeconfig")


_opened: list[KubernetesProvider] = []


@pytest.fixture(autouse=True)
def _close_providers(api: KubeEmulator) -> Iterator[None]:
    """Closes providers before the emulator stops (an open watch would hold it up)."""
    yield
    while _opened:
        _opened.pop().close()


def provider(kubeconfig: Path, watch: bool = False, **overrides: object) -> KubernetesProvider:
    kube = KubernetesProvider(config(kubeconfig, **overrides), INSTALLATION, kill_grace=2.0, watch=watch)
    _opened.append(kube)
    return kube


def launch(**overrides: object) -> WorkerLaunch:
    values: dict[str, object] = {
        "worker_id": str(uuid4()),
        "job_id": str(uuid4()),
        "env": {"HODEI_SERVER_ADDRESS": "10.0.0.1:50051", "HODEI_WORKER_TOKEN": "t"},
        "timeout_seconds": 30.0,
    }
    values.update(overrides)
    return WorkerLaunch(**values)  # type: ignore[arg-type]


def test_a_disk_limit_is_the_containers_ephemeral_storage_and_widens_its_scratch(kubeconfig: Path) -> None:
    """Exact bytes, not rounded up to MiB as memory is; the /tmp emptyDir (the job's home)
    keeps 1Gi unless the limit is larger, which the kubelet would evict the pod at first."""
    kube = provider(kubeconfig, watch=False)
    for size, quantity, scratch in ((10 * 1024**2, "10Mi", "1Gi"), (5 * 1024**3, "5Gi", "5Gi"), (1000, "1000", "1Gi")):
        body = kube.pod_manifest(launch(disk_bytes=size))["spec"]
        (container,) = body["containers"]
        assert container["resources"]["limits"]["ephemeral-storage"] == quantity
        assert container["resources"]["requests"]["ephemeral-storage"] == quantity
        assert body["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": scratch}}]
    unlimited = kube.pod_manifest(launch())["spec"]["containers"][0]["resources"]
    assert "ephemeral-storage" not in unlimited["limits"] | unlimited["requests"]


def test_a_pods_nodes_are_the_servers_and_the_jobs_choice(kubeconfig: Path) -> None:
    """The server's node selector and tolerations (the node pool its workers are kept to)
    are every pod's; a job adds its own (a toleration given by both once), and one whose
    selector contradicts the server's cannot start, saying why."""
    kube = provider(
        kubeconfig,
        node_selector={"pool": "batch"},
        tolerations=tolerations_of(["dedicated=batch:NoSchedule"]),
    )
    alone = kube.pod_manifest(launch())["spec"]
    assert alone["nodeSelector"] == {"pool": "batch"}
    assert alone["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}]
    body = kube.pod_manifest(
        launch(node_selector={"disktype": "ssd"}, tolerations=("spot:NoExecute", "dedicated=batch:NoSchedule"))
    )["spec"]
    assert body["nodeSelector"] == {"pool": "batch", "disktype": "ssd"}
    assert body["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoExecute"},
    ]
    with pytest.raises(ProviderError, match=r"^node selector pool=gpu conflicts with this server's pool=batch") as no:
        kube.pod_manifest(launch(node_selector={"pool": "gpu"}))
    assert not no.value.retryable
    plain = provider(kubeconfig).pod_manifest(launch())["spec"]
    assert "nodeSelector" not in plain and "tolerations" not in plain


def test_a_job_runs_its_pod_as_a_service_account_the_server_lets_it_name(kubeconfig: Path) -> None:
    """Its own account over the server's; its token still not mounted (workload identity
    brings its own); one the server no longer lets jobs name (its list changed since the
    submission) does not start, saying why."""
    kube = provider(kubeconfig, service_account="hodei-worker", job_service_accounts=("s3-reader", "uploader"))
    body = kube.pod_manifest(launch(service_account="s3-reader"))["spec"]
    assert body["serviceAccountName"] == "s3-reader" and body["automountServiceAccountToken"] is False
    assert kube.pod_manifest(launch())["spec"]["serviceAccountName"] == "hodei-worker"
    with pytest.raises(ProviderError, match=r"service account `admin` is not one this server lets jobs run as") as no:
        kube.pod_manifest(launch(service_account="admin"))
    assert not no.value.retryable
    assert "serviceAccountName" not in provider(kubeconfig).pod_manifest(launch())["spec"]


def test_the_pod_spec(api: KubeEmulator, kubeconfig: Path) -> None:
    kube = provider(kubeconfig, service_account="hodei-worker")
    spec = launch(cpu_cores=0.5, memory_bytes=256 * 1024**2)
    name = kube.create_worker(spec)
    assert name == f"hodei-worker-{spec.worker_id}"
    pod = api.pods()[name]
    assert pod["metadata"]["namespace"] == NAMESPACE
    assert pod["metadata"]["labels"] == {
        "hodei-worker": spec.worker_id,
        "hodei-job": spec.job_id,
        "hodei.io/installation": INSTALLATION,
        "app.kubernetes.io/managed-by": "hodei-jobs",
    }
    body = pod["spec"]
    assert body["restartPolicy"] == "Never"
    assert body["activeDeadlineSeconds"] == 30 + 2 + 60
    assert body["automountServiceAccountToken"] is False
    assert body["serviceAccountName"] == "hodei-worker"
    assert body["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = body["containers"]
    assert (container["image"], container["imagePullPolicy"]) == ("hodei-jobs-worker:latest", "IfNotPresent")
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "256Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert body["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    assert container["env"] == [
        {"name": "HODEI_SERVER_ADDRESS", "value": "10.0.0.1:50051"},
        {"name": "HODEI_WORKER_TOKEN", "valueFrom": {"secretKeyRef": {"name": name, "key": "HODEI_WORKER_TOKEN"}}},
    ]


def test_the_credentials_are_in_a_secret_the_pod_owns_not_in_the_pod(api: KubeEmulator, kubeconfig: Path) -> None:
    """Reading pods (the `view` role) must not give a worker's credentials away: the
    registration token and, under mTLS, the client key are in a Secret of the pod's name,
    owned by the pod (Kubernetes deletes it with the pod, even with no server about)."""
    key = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"
    spec = launch(env={"HODEI_WORKER_TOKEN": "s3cr3t-token", "HODEI_TLS_KEY_PEM": key, "HODEI_TLS_CERT_PEM": "cert"})
    name = provider(kubeconfig).create_worker(spec)
    pod = api.pods()[name]
    assert "s3cr3t-token" not in json.dumps(pod) and "PRIVATE KEY" not in json.dumps(pod)
    secrets = api.secrets()
    assert secrets == {name: {"HODEI_WORKER_TOKEN": "s3cr3t-token", "HODEI_TLS_KEY_PEM": key}}
    raw = api.call(lambda: next(o.raw for k, o in api.emulator.objects.items() if k[0].plural == "secrets"))
    assert raw["metadata"]["labels"] == pod["metadata"]["labels"]
    assert raw["type"] == "Opaque"
    assert raw["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod["metadata"]["uid"]}
    ]
    in_image = provider(kubeconfig).pod_manifest(launch(image="app:1", env=spec.env))
    assert "s3cr3t-token" not in json.dumps(in_image) and "PRIVATE KEY" not in json.dumps(in_image)
    provider(kubeconfig).core.delete_namespaced_pod(name, NAMESPACE)  # by someone else, with no server
    assert api.secrets() == {}


def test_a_secret_of_the_workers_name_not_made_by_this_installation_is_left_alone(
    api: KubeEmulator, kubeconfig: Path
) -> None:
    kube = provider(kubeconfig)
    spec = launch()
    name = f"hodei-worker-{spec.worker_id}"
    foreign = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": {"X": "eA=="}}
    kube.core.create_namespaced_secret(NAMESPACE, foreign)
    with pytest.raises(ProviderError, match=f"a secret named {name} exists but was not created by this installation"):
        kube.create_worker(spec)
    assert api.pods() == {}
    kube.destroy_worker(spec.worker_id)
    assert api.secrets() == {name: {"X": "x"}}


def test_the_pod_of_a_job_in_an_image_of_its_own(api: KubeEmulator, kubeconfig: Path) -> None:
    """An init container of the worker image fills an emptyDir with the agent; the job's
    image starts it from there, read-only, under the pod's restrictions but a writable root."""
    spec = launch(image="python:3.12-slim")
    name = provider(kubeconfig).create_worker(spec)
    body = api.pods()[name]["spec"]
    (init,) = body["initContainers"]
    assert (init["name"], init["image"], init["imagePullPolicy"]) == (
        "agent",
        "hodei-jobs-worker:latest",
        "IfNotPresent",
    )
    assert init["command"][:2] == ["python3", "-c"] and init["command"][-1] == "/opt/hodei-agent"
    assert init["volumeMounts"] == [{"name": "agent", "mountPath": "/opt/hodei-agent"}]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    (container,) = body["containers"]
    assert container["image"] == "python:3.12-slim"
    assert container["command"][:2] == ["/opt/hodei-agent/agent/ld.so", "--library-path"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": False,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "agent", "mountPath": "/opt/hodei-agent", "readOnly": True},
    ]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["PYTHONHOME"] == "/opt/hodei-agent/agent/home"
    assert env["HODEI_WORKER_TOKEN"] == {"secretKeyRef": {"name": name, "key": "HODEI_WORKER_TOKEN"}}
    assert set(env["HODEI_AGENT_VARIABLES"].split(",")) == set(env)  # the agent tells them from the image's
    assert body["volumes"][1] == {"name": "agent", "emptyDir": {"sizeLimit": "512Mi"}}
    assert container["imagePullPolicy"] == "IfNotPresent"  # the worker image's (HODEI_K8S_IMAGE_PULL_POLICY)
    for pull, policy in (("always", "Always"), ("missing", "IfNotPresent"), ("never", "Never")):
        pulled = provider(kubeconfig).pod_manifest(launch(image="app:1", image_pull=pull))
        assert pulled["spec"]["containers"][0]["imagePullPolicy"] == policy


def test_default_requests_and_limits(api: KubeEmulator, kubeconfig: Path) -> None:
    name = provider(kubeconfig).create_worker(launch())
    resources = api.pods()[name]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}


def test_creating_twice_is_idempotent(api: KubeEmulator, kubeconfig: Path) -> None:
    kube = provider(kubeconfig)
    spec = launch()
    assert kube.create_worker(spec) == kube.create_worker(spec)
    assert len(api.pods()) == 1 and len(api.secrets()) == 1


def failure_of(kube: KubernetesProvider, worker_id: str) -> str | None:
    kube.resync()
    return next(o.failure for o in kube.observe() if o.worker_id == worker_id)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            {"phase": "Failed", "reason": "DeadlineExceeded", "message": "Pod was active too long"},
            "ended Failed: DeadlineExceeded",
        ),
        (
            {
                "phase": "Failed",
                "containerStatuses": [
                    {
                        "name": "worker",
                        "image": "w:1",
                        "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                    }
                ],
            },
            "ended Failed; container worker OOMKilled (exit code 137)",
        ),
        (
            {
                "phase": "Failed",
                "containerStatuses": [
                    {
                        "name": "worker",
                        "image": "app:1",
                        "state": {
                            "terminated": {
                                "exitCode": 128,
                                "reason": "StartError",
                                "message": 'failed to create containerd task:\n exec: "sh": executable file not found',
                            }
                        },
                    }
                ],
            },
            'container worker StartError (exit code 128): failed to create containerd task: exec: "sh": executable',
        ),
        (
            {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": "worker",
                        "image": "nope:1",
                        "state": {
                            "waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "nope:1"'}
                        },
                    }
                ],
            },
            'cannot start: ImagePullBackOff: Back-off pulling image "nope:1"',
        ),
        (
            {
                "phase": "Failed",
                "initContainerStatuses": [
                    {"name": "agent", "image": "w:1", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}
                ],
                "containerStatuses": [
                    {"name": "worker", "image": "app:1", "state": {"waiting": {"reason": "PodInitializing"}}}
                ],
            },
            "ended Failed; container agent Error (exit code 1)",
        ),
    ],
)
def test_pod_failures_are_observed(
    api: KubeEmulator, kubeconfig: Path, status: dict[str, object], expected: str
) -> None:
    kube = provider(kubeconfig)
    spec = launch()
    name = kube.create_worker(spec)
    assert failure_of(kube, spec.worker_id) is None
    api.patch_pod(name, {"status": status})
    failure = failure_of(kube, spec.worker_id)
    assert failure is not None and expected in failure, failure


def test_a_first_failed_pull_is_not_yet_a_failure(api: KubeEmulator, kubeconfig: Path) -> None:
    """The kubelet retries a pull; only its back-off (ImagePullBackOff) means stuck."""
    kube = provider(kubeconfig)
    spec = launch()
    name = kube.create_worker(spec)
    waiting = {"reason": "ErrImagePull", "message": "pull access denied for nope:1"}
    status = {
        "phase": "Pending",
        "containerStatuses": [{"name": "worker", "image": "nope:1", "state": {"waiting": waiting}}],
    }
    api.patch_pod(name, {"status": status})
    assert failure_of(kube, spec.worker_id) is None


def test_an_unschedulable_pod_fails_only_past_its_deadline(api: KubeEmulator, kubeconfig: Path) -> None:
    kube = provider(kubeconfig, unschedulable_timeout=0.5)
    spec = launch()
    name = kube.create_worker(spec)
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: insufficient cpu",
    }
    api.patch_pod(name, {"status": {"phase": "Pending", "conditions": [condition]}})
    assert failure_of(kube, spec.worker_id) is None
    time.sleep(0.6)
    failure = failure_of(kube, spec.worker_id)
    assert failure is not None and "unschedulable" in failure and "insufficient cpu" in failure


def test_a_pod_deleted_by_someone_else_is_a_failure_but_our_deletion_is_not(
    api: KubeEmulator, kubeconfig: Path
) -> None:
    kube = provider(kubeconfig)
    ours, theirs = launch(), launch()
    kube.create_worker(ours)
    other = kube.create_worker(theirs)
    kube.resync()
    kube.destroy_worker(ours.worker_id)
    kube.core.delete_namespaced_pod(other, NAMESPACE)
    kube.resync()
    failures = {o.worker_id: o.failure for o in kube.observe()}
    assert failures == {theirs.worker_id: f"pod {other} was deleted by someone else"}


def test_the_watch_sees_changes_without_a_resync(api: KubeEmulator, kubeconfig: Path) -> None:
    kube = provider(kubeconfig, watch=True)
    spec = launch()
    name = kube.create_worker(spec)
    api.patch_pod(name, {"status": {"phase": "Failed", "reason": "Evicted"}})
    eventually(
        lambda: any(o.failure for o in kube.observe() if o.worker_id == spec.worker_id), 15, what="the watch event"
    )


def test_destroy_deletes_the_pod_and_its_secret_and_is_idempotent(api: KubeEmulator, kubeconfig: Path) -> None:
    kube = provider(kubeconfig)
    spec = launch()
    kube.create_worker(spec)
    kube.destroy_worker(spec.worker_id)
    assert api.pods() == {} and api.secrets() == {}
    kube.destroy_worker(spec.worker_id)
    deletes = [r for r in api.call(lambda: list(api.emulator)) if r.method == "DELETE"]
    assert len(deletes) == 1  # the pod: its secret went with it
    unowned = launch()
    kube.core.create_namespaced_secret(NAMESPACE, kube.secret_manifest(unowned))  # its pod never created
    kube.destroy_worker(unowned.worker_id)
    assert api.secrets() == {}


def test_pods_it_did_not_create_are_never_listed_nor_deleted(api: KubeEmulator, kubeconfig: Path) -> None:
    """kmock ignores label selectors, so this checks the provider's own filtering."""
    kube = provider(kubeconfig)
    foreign = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hodei-worker-someone", "namespace": NAMESPACE, "labels": {"hodei-worker": "someone"}},
        "spec": {"containers": [{"name": "x", "image": "x"}]},
    }
    unlabelled = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bystander", "namespace": NAMESPACE},
        "spec": {"containers": [{"name": "x", "image": "x"}]},
    }
    kube.core.create_namespaced_pod(NAMESPACE, foreign)
    kube.core.create_namespaced_pod(NAMESPACE, unlabelled)
    mine = launch()
    kube.create_worker(mine)
    kube.resync()
    assert [o.worker_id for o in kube.observe()] == [mine.worker_id]
    kube.destroy_worker("someone")
    assert set(api.pods()) == {"hodei-worker-someone", "bystander", f"hodei-worker-{mine.worker_id}"}
    with pytest.raises(ProviderError, match="not created by this installation"):
        kube.create_worker(launch(worker_id="someone"))


def test_the_role_in_deploy_allows_exactly_what_the_provider_asks(api: KubeEmulator, kubeconfig: Path) -> None:
    """deploy/rbac.yaml against the requests of a worker's whole life (a create tried twice,
    the watch, its log, a health check, its deletion; a Secret whose pod never came)."""
    api.serve_logs(lambda *_: PodLog(200, "output"))
    kube = provider(kubeconfig, watch=True)
    spec = launch()
    kube.create_worker(spec)
    kube.create_worker(spec)
    eventually(lambda: kube.observe() != [], 10, what="the watch")
    kube.output_tail(spec.worker_id, 10)
    kube.stopped_by_others(spec.worker_id)
    kube.health()
    kube.destroy_worker(spec.worker_id)
    unowned = launch()  # (the test's create is one the provider makes too)
    kube.core.create_namespaced_secret(NAMESPACE, kube.secret_manifest(unowned))
    kube.destroy_worker(unowned.worker_id)
    asked: dict[str, set[str]] = {}
    for request in api.call(lambda: list(api.emulator)):
        # /api/v1/namespaces/NS[/RESOURCE[/NAME[/SUBRESOURCE]]]
        namespace, *named = request.url.path.split("/")[4:]
        resource = "/".join(named[:1] + named[2:]) or f"namespaces/{namespace}"
        if request.method != "GET":
            verb = {"POST": "create", "PATCH": "patch", "DELETE": "delete"}[request.method]
        else:
            verb = "watch" if request.params.get("watch") else "list" if len(named) == 1 else "get"
        asked.setdefault(resource, set()).add(verb)
    (role,) = by_kind("Role")
    allowed = {"/".join(rule["resources"]): set(rule["verbs"]) for rule in role["rules"]}
    (cluster_role,) = by_kind("ClusterRole")
    for rule in cluster_role["rules"]:
        allowed.update({f"{rule['resources'][0]}/{name}": set(rule["verbs"]) for name in rule["resourceNames"]})
    assert asked == allowed


def test_a_role_without_the_secrets_verbs_is_named_in_the_error(api: KubeEmulator, kubeconfig: Path) -> None:
    """An installation upgraded without applying deploy/rbac.yaml again: the error says what
    was refused, in the API's words, and where the missing permission is."""
    said = 'secrets is forbidden: User "system:serviceaccount:hodei-jobs:hodei-server" cannot create resource'
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403}
    refusal = Response(status=403, payload={**status, "message": said})
    api.call(lambda: api.emulator[f"post /api/v1/namespaces/{NAMESPACE}/secrets"] << refusal)
    spec = launch()
    with pytest.raises(ProviderError) as refused:
        provider(kubeconfig).create_worker(spec)
    assert str(refused.value) == (
        f"Kubernetes refused to create secret hodei-worker-{spec.worker_id} in namespace {NAMESPACE}: "
        f"forbidden: {said} (the server's service account needs the Role of deploy/rbac.yaml in that namespace)"
    )
    assert api.pods() == {}


def test_health_names_the_namespace_and_the_api(api: KubeEmulator, kubeconfig: Path) -> None:
    assert provider(kubeconfig).health().healthy
    missing = provider(kubeconfig, namespace="does-not-exist").health()
    assert not missing.healthy
    assert "namespace does-not-exist does not exist" in missing.message


def test_an_unreachable_api_is_unhealthy_and_creation_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = KubeEmulator.__new__(KubeEmulator)
    dead.url = f"http://127.0.0.1:{port}"
    kube = provider(dead.kubeconfig(tmp_path / "kubeconfig"))
    health = kube.health()
    assert not health.healthy
    assert f"the Kubernetes API at http://127.0.0.1:{port} is unreachable" in health.message
    with pytest.raises(ProviderUnavailable, match="is unreachable"):
        kube.create_worker(launch())


def test_configuration_comes_from_the_kubeconfig_and_context(tmp_path: Path, kubeconfig: Path) -> None:
    client = load_api_client(config(kubeconfig, context="emulator"))
    assert client.configuration.host.startswith("http://127.0.0.1:")
    client.close()
    with pytest.raises(Exception, match=r"No configuration found|does not exist|No such file"):
        load_api_client(config(tmp_path / "missing"))


def test_the_reconciler_removes_labelled_pods_without_a_live_job(
    api: KubeEmulator, kubeconfig: Path, store: HodeiStore
) -> None:
    from hodei.admission import Admission
    from hodei.artifacts import ArtifactStore
    from hodei.config import Timing
    from hodei.cron import CronJobs
    from hodei.domain.provider import ProviderType
    from hodei.liveness import Liveness
    from hodei.logs import LogStore
    from hodei.providers.registry import ProviderRegistry
    from hodei.retention import Retention
    from hodei.sagas.engine import SagaEngine
    from hodei.store.instances import ServerInstances
    from hodei.store.job_secrets import JobSecrets
    from hodei.sweeper import Sweeper

    kube = provider(kubeconfig)
    stray = launch()
    kube.create_worker(stray)
    foreign = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "not-ours",
            "namespace": NAMESPACE,
            "labels": {"hodei-worker": "x", "hodei.io/installation": "other"},
        },
        "spec": {"containers": [{"name": "x", "image": "x"}]},
    }
    kube.core.create_namespaced_pod(NAMESPACE, foreign)
    registry = ProviderRegistry(store, {ProviderType.KUBERNETES: kube}, {})
    timing = Timing(1, 5, 5, 60, 1, 60, 1, 1)
    admission = Admission(store, dict.fromkeys(ProviderType, 16))
    instances = ServerInstances(store.pool, "t")
    retention = Retention(
        store, LogStore(kubeconfig.parent), ArtifactStore(kubeconfig.parent / "artifacts", 1), 604800, 2592000
    )
    sweeper = Sweeper(
        store,
        cast(SagaEngine, None),  # the reconciler drives no saga
        registry,
        Liveness(store.pool, "t"),
        JobSecrets(store.pool),
        admission,
        instances,
        retention,
        CronJobs(store, JobSecrets(store.pool), kill_grace=1.0),
        Children(store, 1.0, lambda: datetime.now(UTC)),
        Webhooks(store, JobSecrets(store.pool), ReadModels(store.pool)),
        timing,
        86400,
    )
    assert set(api.secrets()) == {f"hodei-worker-{stray.worker_id}"}
    sweeper.reconcile()
    assert set(api.pods()) == {"not-ours"} and api.secrets() == {}


def test_the_generated_pod_spec_is_valid_for_the_kubernetes_api(kubeconfig: Path) -> None:
    kube = provider(kubeconfig, service_account="hodei-worker")
    for spec in (
        launch(),
        launch(cpu_cores=2.5, memory_bytes=3 * 1024**3, labels={"team": "data"}),
        launch(image="registry.example.com/team/tool:1.4"),
        launch(node_selector={"disktype": "ssd"}, tolerations=("dedicated=gpu:NoSchedule", "spot")),
    ):
        assert problems(kube.pod_manifest(spec)) == []
        assert problems(kube.secret_manifest(spec)) == []
