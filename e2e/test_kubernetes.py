"""Kubernetes end to end against an emulated API server (kmock) whose node is the
Docker-backed kubelet (hodei.kubelet): each pod runs the real worker image under the
pod's own restrictions. The server talks to the emulator exactly as to a real cluster,
through a kubeconfig."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client, config
from kubernetes.utils.quantity import parse_quantity

from e2e.seed import check_job_get, check_phase6, phase5_jobs, submit
from hodei.kube_emulator import NAMESPACE, KubeEmulator
from hodei.kubelet import LABEL_POD, Kubelet, node_memory
from hodei.logs import LogStore
from hodei.providers.kubernetes import DEFAULT_REQUESTS
from hodei.testing import (
    BARE_MARKER,
    Link,
    ServerProcess,
    eventually,
    make_pki,
    query,
    wait_running,
    wait_settled,
    wait_terminal,
    worker_ended_because,
)

K8S_ID = "22222222-2222-2222-2222-222222222222"
UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1
pytestmark = [pytest.mark.e2e, pytest.mark.docker]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KubeEmulator, Kubelet, Path]]:
    directory = tmp_path_factory.mktemp("kube")
    with KubeEmulator() as api:
        kubelet = Kubelet(api, log_dir=directory).start()
        yield api, kubelet, api.kubeconfig(directory / "kubeconfig")
        kubelet.stop()


def server_env(kubeconfig: Path, image: str, docker: bool = True) -> dict[str, str]:
    return {
        "HODEI_KUBERNETES_ENABLED": "1",
        "HODEI_K8S_KUBECONFIG": str(kubeconfig),
        "HODEI_DOCKER_ENABLED": "1" if docker else "0",
        "HODEI_LOCAL_ENABLED": "0",
        "HODEI_WORKER_IMAGE": image,
        "HODEI_HEARTBEAT_INTERVAL": "0.5",
        "HODEI_HEARTBEAT_TIMEOUT": "3",
        "HODEI_KILL_GRACE": "1",
    }


@pytest.fixture(scope="module")
def server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, cluster: Any, worker_image: str
) -> Iterator[ServerProcess]:
    _, _, kubeconfig = cluster
    with ServerProcess(database_url, tmp_path_factory.mktemp("logs"), server_env(kubeconfig, worker_image)) as process:
        yield process
    print(process.logs()[-4000:])


def core(kubeconfig: Path) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))


def created_pods(api: KubeEmulator) -> list[dict[str, Any]]:
    """Every pod creation the emulator received (kmock keeps all requests)."""
    return [r.data for r in api.call(lambda: list(api.emulator)) if r.method == "POST" and "/pods" in str(r.url)]


def test_seed_phase7_jobs_run_as_pods(
    server: ServerProcess, database_url: str, cluster: Any, docker_client: Any
) -> None:
    api, kubelet, _ = cluster
    jobs = [(job, submit(server, job)) for job in phase5_jobs("kubernetes") if job.title in ("echo", "multi-command")]
    for job, job_id in jobs:
        wait_settled(database_url, job_id, timeout=120)
        check_job_get(server, job_id)
        check_phase6(database_url, job_id, "kubernetes", K8S_ID, job)
        (worker_id, resource) = query(
            database_url, "SELECT id::text, provider_resource_id FROM workers WHERE job_id = %s", (job_id,)
        )[0]
        assert resource == f"hodei-worker-{worker_id}"
        (pod,) = [p for p in created_pods(api) if p["metadata"]["name"] == resource]
        assert pod["metadata"]["namespace"] == NAMESPACE
        assert pod["metadata"]["labels"]["hodei-worker"] == worker_id
        assert pod["metadata"]["labels"]["hodei-job"] == job_id
        # The agent registered with a token it read from the pod's Secret, not from its spec.
        (token,) = [e for e in pod["spec"]["containers"][0]["env"] if e["name"] == "HODEI_WORKER_TOKEN"]
        assert token == {"name": token["name"], "valueFrom": {"secretKeyRef": {"name": resource, "key": token["name"]}}}
        # Pod logs match the database: what the pod printed is what the log file holds.
        (uri,) = query(database_url, "SELECT storage_uri FROM job_log_files WHERE job_id = %s", (job_id,))[0]
        stored = [entry.text for entry in LogStore(Path(uri.removeprefix("file://")).parent).read(job_id).entries]
        printed = [
            line for line in kubelet.outputs[resource].read_text().splitlines() if not line.startswith("[hodei-worker]")
        ]
        assert printed == stored == list(job.expected_lines)
        # 6.6: a Kubernetes job creates no container.
        assert docker_client.containers.list(all=True, sparse=True, filters={"label": f"hodei.job-id={job_id}"}) == []
    eventually(lambda: api.pods() == api.secrets() == {}, 30, what="the pods and secrets to go after their jobs")


def test_a_docker_job_creates_no_pod(server: ServerProcess, database_url: str, cluster: Any) -> None:
    api, _, _ = cluster
    job_id = server.cli(
        "job", "run", "--provider", "docker", "--command", "echo docker", "--timeout", "30", check=True
    ).stdout.strip()
    wait_settled(database_url, job_id, timeout=60)
    assert query(database_url, "SELECT state, provider_type FROM jobs WHERE id = %s", (job_id,)) == [
        ("SUCCEEDED", "docker")
    ]
    assert [p for p in created_pods(api) if p["metadata"]["labels"].get("hodei-job") == job_id] == []


def test_a_deleted_pod_fails_the_job(server: ServerProcess, database_url: str, cluster: Any) -> None:
    """`kubectl delete pod`: the kubelet stops the container (SIGTERM), the agent reports
    that, and the job's error says who stopped it."""
    _, _, kubeconfig = cluster
    job_id = server.cli(
        "job", "run", "--provider", "kubernetes", "--command", "sleep 300", "--timeout", "600", check=True
    ).stdout.strip()
    eventually(lambda: query(database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("RUNNING",)], 60)
    (name,) = query(database_url, "SELECT provider_resource_id FROM workers WHERE job_id = %s", (job_id,))[0]
    core(kubeconfig).delete_namespaced_pod(name, NAMESPACE)
    assert wait_terminal(database_url, job_id, timeout=30) == "FAILED"
    wait_settled(database_url, job_id)
    (reason,) = query(database_url, "SELECT error_message FROM jobs WHERE id = %s", (job_id,))[0]
    assert f"pod {name} was deleted by someone else" in reason, reason


def run_kubernetes(server: ServerProcess, database_url: str, command: str, *flags: str) -> tuple[str, str, list[str]]:
    """Runs a job on Kubernetes; its final state, error message and log lines (stdout, then stderr)."""
    job_id = server.cli(
        "job", "run", "--provider", "kubernetes", "--command", command, "--timeout", "60", *flags, check=True
    ).stdout.strip()
    wait_settled(database_url, job_id, timeout=90)
    ((state, error),) = query(database_url, "SELECT state, error_message FROM jobs WHERE id = %s", (job_id,))
    printed = server.cli("job", "logs", "--id", job_id, check=True)
    return state, error or "", (printed.stdout + printed.stderr).splitlines()


def refused_writing_nothing(server: ServerProcess, refusals: dict[tuple[str, ...], str]) -> None:
    """`job run -c true FLAGS` is refused (exit 2) saying so, for each, and no job is written."""
    before = query(server.database_url, "SELECT count(*) FROM jobs")
    for flags, said in refusals.items():
        refused = server.cli("job", "run", "-c", "true", *flags)
        assert refused.returncode == 2 and said in refused.stderr, (flags, refused.stderr)
    assert query(server.database_url, "SELECT count(*) FROM jobs") == before


def test_a_job_runs_as_a_service_account_the_server_lets_jobs_name(
    fresh_database_url: str, tmp_path: Path, cluster: Any, worker_image: str
) -> None:
    """--service-account: the pod runs as it (its serviceAccountName); one the server does
    not list (HODEI_K8S_JOB_SERVICE_ACCOUNTS), a provider without pods and a name Kubernetes
    would refuse are refused at submission, a cron job's too, nothing written."""
    api, _, kubeconfig = cluster
    url = fresh_database_url
    env = server_env(kubeconfig, worker_image, docker=False) | {"HODEI_K8S_JOB_SERVICE_ACCOUNTS": "s3-reader,uploader"}
    with ServerProcess(url, tmp_path / "logs", env) as server:
        ran = ("job", "run", "-c", "echo as s3-reader", "--service-account", "s3-reader", "--wait")
        job_id = server.cli(*ran, check=True).stdout.strip()
        assert query(url, "SELECT state, provider_type FROM jobs WHERE id = %s", (job_id,)) == [
            ("SUCCEEDED", "kubernetes")
        ]
        (pod,) = [p for p in created_pods(api) if p["metadata"]["labels"].get("hodei-job") == job_id]
        assert pod["spec"]["serviceAccountName"] == "s3-reader"
        assert pod["spec"]["automountServiceAccountToken"] is False
        assert "Service account: s3-reader\n" in server.cli("job", "get", job_id, check=True).stdout
        refused_writing_nothing(server, {
            ("--service-account", "admin"): "service account `admin` is not one this server lets jobs run as "
            "(HODEI_K8S_JOB_SERVICE_ACCOUNTS: only s3-reader, uploader)",
            ("-p", "local", "--service-account", "uploader"): "provider local cannot run a job as a service account "
            "of its choosing (--service-account): use kubernetes",
            ("--service-account", "S3_Reader"): "service account `S3_Reader` must be a Kubernetes name",
        })  # fmt: skip
        cron = server.cli("cron", "create", "nightly", "--schedule", "@daily", "-c", "true", "--service-account", "x")
        assert cron.returncode == 2 and "service account `x` is not one this server lets jobs run as" in cron.stderr


def test_a_job_runs_only_on_a_node_it_selects_and_tolerates(
    fresh_database_url: str, tmp_path: Path, cluster: Any, worker_image: str
) -> None:
    """--node-selector and --toleration, over the server's own (HODEI_K8S_NODE_SELECTOR,
    HODEI_K8S_TOLERATIONS): a job naming no provider goes to Kubernetes; its pod carries
    both and runs on a node that fits; one whose pod no node fits stays Pending and fails
    past HODEI_K8S_UNSCHEDULABLE_TIMEOUT with the scheduler's words; a job the server can
    never place so is refused at submission, nothing written."""
    api, kubelet, kubeconfig = cluster
    url = fresh_database_url
    env = server_env(kubeconfig, worker_image, docker=False) | {
        "HODEI_K8S_NODE_SELECTOR": "kubernetes.io/os=linux",
        "HODEI_K8S_TOLERATIONS": "hodei.io/workers=batch:NoSchedule",
        "HODEI_K8S_UNSCHEDULABLE_TIMEOUT": "3",
    }
    # `kubectl label node … disktype=ssd`, `kubectl taint node … hodei.io/workers=batch:NoSchedule gpu=true:NoSchedule`
    kubelet.labels["disktype"] = "ssd"
    kubelet.taints[:] = [
        {"key": "hodei.io/workers", "value": "batch", "effect": "NoSchedule"},
        {"key": "gpu", "value": "true", "effect": "NoSchedule"},
    ]
    try:
        with ServerProcess(url, tmp_path / "logs", env) as server:
            placed = ("--node-selector", "disktype=ssd", "--toleration", "gpu:NoSchedule,spot")
            job_id = server.cli("job", "run", "-c", "echo placed", *placed, "--wait", check=True).stdout.strip()
            assert query(url, "SELECT state, provider_type FROM jobs WHERE id = %s", (job_id,)) == [
                ("SUCCEEDED", "kubernetes")
            ]
            assert server.cli("job", "logs", job_id, check=True).stdout == "placed\n"
            (pod,) = [p for p in created_pods(api) if p["metadata"]["labels"].get("hodei-job") == job_id]
            assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux", "disktype": "ssd"}
            assert pod["spec"]["tolerations"] == [
                {"key": "hodei.io/workers", "operator": "Equal", "value": "batch", "effect": "NoSchedule"},
                {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "spot", "operator": "Exists"},
            ]
            shown = server.cli("job", "get", job_id, check=True).stdout
            assert "Node selector: disktype=ssd\n" in shown and "Tolerations: gpu:NoSchedule, spot\n" in shown

            unplaced = {
                "didn't match Pod's node affinity/selector": (
                    "--node-selector",
                    "disktype=nvme",
                    "--toleration",
                    "gpu",
                ),
                "had untolerated taint {gpu: true}": ("--node-selector", "disktype=ssd"),
            }
            jobs = {
                why: server.cli("job", "run", "-c", "echo never", *flags, check=True).stdout.strip()
                for why, flags in unplaced.items()
            }
            for why, pending in jobs.items():
                assert wait_terminal(url, pending, timeout=60) == "FAILED"
                wait_settled(url, pending)
                (error,) = query(url, "SELECT error_message FROM jobs WHERE id = %s", (pending,))[0]
                assert re.search(
                    rf"pod hodei-worker-[0-9a-f-]+ unschedulable for [3-9]s: 0/1 nodes are available: 1 node\(s\)"
                    rf" {re.escape(why)}\. preemption: 0/1 nodes are available: 1 Preemption is not helpful for"
                    r" scheduling\.",
                    error,
                ), error
                assert query(url, "SELECT count(*) FROM job_log_files WHERE job_id = %s", (pending,)) == [(0,)]
            eventually(lambda: api.pods() == {}, 30, what="the unscheduled pods to be deleted")

            refused_writing_nothing(server, {
                ("--node-selector", "kubernetes.io/os=windows"): "node selector kubernetes.io/os=windows conflicts "
                "with this server's kubernetes.io/os=linux (HODEI_K8S_NODE_SELECTOR: its pods run only on such nodes)",
                ("-p", "local", "--toleration", "gpu"): "provider local cannot run a job on nodes of its choosing "
                "(--node-selector, --toleration): use kubernetes",
                ("--toleration", "gpu:Sometimes"): "toleration `gpu:Sometimes`: effect must be one of NoSchedule, "
                "PreferNoSchedule, NoExecute, got `Sometimes` (KEY[=VALUE][:EFFECT])",
                ("--node-selector", "disk type=ssd"): "--node-selector: node selector key `disk type` must be",
            })  # fmt: skip
    finally:
        kubelet.labels.pop("disktype")
        kubelet.taints.clear()


def test_the_pod_runs_under_its_own_restrictions(server: ServerProcess, database_url: str) -> None:
    """The worker image runs as the pod spec demands: non-root, read-only root filesystem,
    no capabilities, a writable emptyDir on /tmp (where $HODEI_OUTPUT is), and the job's memory limit."""
    state, error, lines = run_kubernetes(server, database_url, "sh -c 'echo data > /probe'")
    assert state == "FAILED" and "exited with code 1" in error, error
    assert any("Read-only file system" in line for line in lines), lines

    state, _, lines = run_kubernetes(server, database_url, "id -u")
    assert state == "SUCCEEDED" and len(lines) == 1 and lines[0].strip().isdigit() and int(lines[0]) != 0, lines

    state, _, lines = run_kubernetes(server, database_url, "grep -E '^Cap(Eff|Prm)' /proc/self/status")
    assert state == "SUCCEEDED"
    assert sorted(line.split()[1] for line in lines) == ["0000000000000000"] * 2, lines

    state, _, lines = run_kubernetes(server, database_url, "sh -c 'echo scratch > /tmp/probe && cat /tmp/probe'")
    assert (state, lines) == ("SUCCEEDED", ["scratch"])

    # $HODEI_OUTPUT is in the job's home, on the pod's writable emptyDir.
    ran = server.cli("job", "run", "-p", "k8s", "-c", 'echo "uid=$(id -u)" >> "$HODEI_OUTPUT"', "--wait", check=True)
    wait_settled(database_url, ran.stdout.strip())
    assert server.cli("job", "output", ran.stdout.strip(), "uid", check=True).stdout == "1000\n"

    allocate = "python3 -c 'data = b\"x\" * (512 * 1024 * 1024)'"
    state, error, _ = run_kubernetes(server, database_url, allocate, "--memory", "128Mi")
    assert state == "FAILED" and "OOMKilled" in error, error


def test_a_command_runs_in_a_running_pod_under_its_restrictions(server: ServerProcess, database_url: str) -> None:
    """`job exec` on Kubernetes: the pod's agent runs it as the pod's user, and the pod's
    read-only root filesystem holds for it too."""
    job_id = server.cli("job", "run", "-p", "k8s", "-c", "sleep 60", check=True).stdout.strip()
    wait_running(database_url, job_id, 60)
    ran = server.cli("job", "exec", job_id, "--", "sh", "-c", "id -u; touch /probe")
    assert ran.returncode == 1, ran.stderr
    assert ran.stdout == "1000\n" and "Read-only file system" in ran.stderr
    server.cli("job", "cancel", job_id, check=True)
    wait_settled(database_url, job_id)


def test_a_pod_past_its_disk_limit_is_evicted_and_the_job_says_so(server: ServerProcess, database_url: str) -> None:
    """--disk is the container's ephemeral-storage limit (and its /tmp emptyDir's size when
    larger than 1Gi): the node evicts the pod once what it holds, its emptyDir's files
    included, is past it, and the job's error carries the kubelet's words."""
    job_id = server.cli(
        "job",
        "run",
        "-p",
        "kubernetes",
        "-c",
        "head -c 30000000 /dev/zero > big; sleep 300",
        "--disk",
        "10Mi",
        check=True,
    ).stdout.strip()
    assert wait_terminal(database_url, job_id, timeout=90) == "FAILED"
    wait_settled(database_url, job_id)
    (error,) = query(database_url, "SELECT error_message FROM jobs WHERE id = %s", (job_id,))[0]
    assert re.match(
        r"^the worker was stopped \(SIGTERM\) before the job ended: pod hodei-worker-[0-9a-f-]+ was evicted by its"
        r" node: Pod ephemeral local storage usage exceeds the total limit of containers 10Mi\.$",
        error,
    ), error
    state, error, _ = run_kubernetes(server, database_url, "head -c 1000000 /dev/zero > small", "--disk", "10Mi")
    assert (state, error) == ("SUCCEEDED", "")


def test_a_pods_processes_are_ranked_for_the_oom_killer_by_its_qos_class(
    server: ServerProcess, database_url: str
) -> None:
    """As on a node: a job's pod requests less than its limits (Burstable), ranked by the
    share of the node's memory it requests; one with --cpu and --memory requests them
    both (Guaranteed), and is the node's last to go."""
    command = "cat /proc/self/oom_score_adj"
    requested = int(parse_quantity(DEFAULT_REQUESTS["memory"]))
    state, _, lines = run_kubernetes(server, database_url, command)
    assert (state, lines) == ("SUCCEEDED", [str(1000 - (1000 * requested) // node_memory())])
    state, _, lines = run_kubernetes(server, database_url, command, "--cpu", "1", "--memory", "256Mi")
    # A rank below 0 needs CAP_SYS_RESOURCE, which a host in a container may lack (ours do).
    may_lower = int(Path("/proc/self/status").read_text().split("CapEff:")[1].split()[0], 16) >> 24 & 1
    assert (state, lines) == ("SUCCEEDED", ["-997" if may_lower else "0"])


def test_a_pods_files_are_kept_as_artifacts_under_its_restrictions(
    server: ServerProcess, database_url: str, tmp_path: Path
) -> None:
    """Written in the pod's writable scratch (its emptyDir), uploaded by its non-root agent
    before the pod goes."""
    state, _, lines = run_kubernetes(server, database_url, "id -u > uid.txt", "--artifact", "uid.txt")
    assert state == "SUCCEEDED"
    assert "[hodei] stored 1 artifact, 5 bytes" in lines, lines
    first = server.cli("job", "list", "--limit", "1", "-o", "json", check=True).stdout
    first_id = json.loads(first)["jobs"][0]["id"]
    assert server.cli("job", "artifacts", first_id, "uid.txt", "--save", "-", check=True).stdout == "1000\n"
    # The job after it finds it in its own scratch, fetched by its agent before it runs.
    state, _, lines = run_kubernetes(
        server, database_url, f"cat artifacts/{first_id}/uid.txt", "--after", first_id, "--fetch-artifacts"
    )
    assert state == "SUCCEEDED"
    assert lines == ["1000", "[hodei] fetched 1 artifact of 1 job into artifacts/, 5 bytes"], lines
    # Files from the submitter (--input), unpacked by the agent into the same scratch.
    given = tmp_path / "given"
    given.mkdir()
    (given / "note.txt").write_text("for the pod\n")
    state, _, lines = run_kubernetes(server, database_url, "cat note.txt; stat -c %u note.txt", "--input", f"{given}/")
    assert state == "SUCCEEDED"
    assert lines == ["for the pod", "1000", "[hodei] unpacked 1 input file, 12 bytes"], lines


def test_a_job_runs_in_an_image_of_its_own_as_a_pod_under_its_restrictions(
    server: ServerProcess, database_url: str, cluster: Any, bare_image: str, worker_image: str
) -> None:
    """`--image` on Kubernetes: an init container of the worker image copies the agent into an
    emptyDir the job's container (the image: busybox alone) starts it from, read-only; the
    command sees the image's files, ENV and WORKDIR, as the pod's non-root user."""
    api, _, _ = cluster
    command = 'cat /marker; echo "$GREETING $PATH"; pwd; id -u; grep -E "^CapEff" /proc/self/status'
    state, error, lines = run_kubernetes(server, database_url, command, "--image", bare_image)
    assert (state, error) == ("SUCCEEDED", ""), error
    assert lines == [BARE_MARKER, "from-the-image /bin", "/data", "1000", "CapEff:\t0000000000000000"], lines
    (pod,) = [p for p in created_pods(api) if p["spec"]["containers"][0]["image"] == bare_image]
    (init,) = pod["spec"]["initContainers"]
    assert init["image"] == worker_image and init["securityContext"]["readOnlyRootFilesystem"] is True
    (container,) = pod["spec"]["containers"]
    assert {"name": "agent", "mountPath": "/opt/hodei-agent", "readOnly": True} in container["volumeMounts"]
    assert container["securityContext"]["runAsNonRoot"] and container["securityContext"]["capabilities"]
    eventually(lambda: pod["metadata"]["name"] not in api.pods(), 30, what="the pod to be deleted")


def test_under_mutual_tls_a_pod_takes_its_client_key_from_its_secret(
    pg_server: str, template_database: str, cluster: Any, worker_image: str, tmp_path: Path
) -> None:
    """The workers' client key is a credential: in the pod's Secret while the pod lives, never
    in its spec; the agent reads it from there and reaches the server over mutual TLS."""
    from conftest import new_database

    api, _, kubeconfig = cluster
    pki = make_pki(tmp_path)
    url = new_database(pg_server, template_database)
    env = {
        **server_env(kubeconfig, worker_image, docker=False),
        "HODEI_TLS_CERT": str(pki.server_cert),
        "HODEI_TLS_KEY": str(pki.server_key),
        "HODEI_TLS_CLIENT_CA": str(pki.ca),
        "HODEI_TLS_WORKER_CERT": str(pki.client_cert),
        "HODEI_TLS_WORKER_KEY": str(pki.client_key),
    }
    with ServerProcess(url, tmp_path, env, tls=pki) as server:
        job_id = server.cli(
            "job", "run", "--provider", "kubernetes", "--command", "sleep 2; echo mutual", "--timeout", "60", check=True
        ).stdout.strip()
        wait_running(url, job_id, timeout=90)
        (name,) = query(url, "SELECT provider_resource_id FROM workers WHERE job_id = %s", (job_id,))[0]
        assert api.secrets()[name]["HODEI_TLS_KEY_PEM"] == pki.client_key.read_text()
        (pod,) = [p for p in created_pods(api) if p["metadata"]["name"] == name]
        assert "PRIVATE KEY" not in json.dumps(pod)
        wait_settled(url, job_id, timeout=60)
        assert query(url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("SUCCEEDED",)]
        assert server.cli("job", "logs", "--id", job_id, check=True).stdout.splitlines() == ["mutual"]
        eventually(lambda: name not in api.secrets(), 30, what="the secret to go with its pod")


def test_a_job_image_that_cannot_be_pulled_fails_the_job_with_why(server: ServerProcess, database_url: str) -> None:
    state, error, _ = run_kubernetes(server, database_url, "true", "--image", "nosuch.invalid/none:1")
    assert state == "FAILED" and "ImagePullBackOff" in error and "nosuch.invalid/none:1" in error, error


def test_a_kept_failed_pod_shows_its_log_through_the_api(
    pg_server: str, template_database: str, cluster: Any, tmp_path: Path, worker_image: str
) -> None:
    """Seed 7.4 with HODEI_KEEP_FAILED_WORKERS: a pod whose worker never registered stays
    for inspection; `just job-k8s-pods` (kubectl logs) reads its output through the API,
    the job's error quotes the same, and the reconciler removes it after the keep time."""
    from conftest import new_database

    api, _, kubeconfig = cluster
    url = new_database(pg_server, template_database)
    env = {
        **server_env(kubeconfig, worker_image, docker=False),
        "HODEI_SERVER_HOST": UNREACHABLE,
        "HODEI_REGISTRATION_TIMEOUT": "6",
        "HODEI_KEEP_FAILED_WORKERS": "10",
        "HODEI_RECONCILE_INTERVAL": "1",
    }
    with ServerProcess(url, tmp_path, env) as server:
        job_id = server.cli("job", "run", "--provider", "kubernetes", "--command", "echo never", check=True).stdout
        job_id = job_id.strip()
        assert wait_terminal(url, job_id, timeout=60) == "FAILED"
        ((error, name),) = query(
            url,
            "SELECT j.error_message, w.provider_resource_id FROM jobs j JOIN workers w ON w.job_id = j.id"
            " WHERE j.id = %s",
            (job_id,),
        )
        assert f"cannot register with {UNREACHABLE}" in error.rsplit("its last output:", 1)[1], error
        assert name in api.pods()
        printed = core(kubeconfig).read_namespaced_pod_log(name, NAMESPACE, tail_lines=20)
        assert f"cannot register with {UNREACHABLE}" in printed, printed
        pods = subprocess.run(
            [sys.executable, "tools/k8s.py", "pods"],
            env={**os.environ, "HODEI_K8S_KUBECONFIG": str(kubeconfig)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert f"== logs of {name}" in pods and f"cannot register with {UNREACHABLE}" in pods, pods
        eventually(lambda: name not in api.pods(), 60, what="the kept pod to be removed")


def test_an_image_that_cannot_be_pulled_fails_the_job_and_the_pod_goes(
    pg_server: str, template_database: str, cluster: Any, tmp_path: Path
) -> None:
    from conftest import new_database

    api, _, kubeconfig = cluster
    url = new_database(pg_server, template_database)
    env = {**server_env(kubeconfig, "missing-image:1.0", docker=False), "HODEI_REGISTRATION_TIMEOUT": "60"}
    with ServerProcess(url, tmp_path, env) as server:
        job_id = server.cli(
            "job", "run", "--provider", "kubernetes", "--command", "echo never", "--timeout", "30", check=True
        ).stdout.strip()
        assert wait_terminal(url, job_id, timeout=30) == "FAILED"
        wait_settled(url, job_id)
        (reason,) = query(url, "SELECT error_message FROM jobs WHERE id = %s", (job_id,))[0]
        assert "ImagePullBackOff" in reason and "missing-image:1.0" in reason, reason
        (name,) = query(url, "SELECT provider_resource_id FROM workers WHERE job_id = %s", (job_id,))[0]
        eventually(lambda: name not in api.pods(), 15, what="the pod to be deleted")


def test_a_slow_pull_has_the_pull_timeout_to_end_and_one_past_it_fails_the_job_saying_so(
    pg_server: str,
    template_database: str,
    cluster: Any,
    tmp_path: Path,
    worker_image: str,
    bare_image: str,
    docker_client: Any,
) -> None:
    """The kubelet pulls a job's own image while its worker has HODEI_REGISTRATION_TIMEOUT
    plus HODEI_IMAGE_PULL_TIMEOUT to register: a pull longer than the first alone still
    runs the job; one longer than both fails it, naming both, and its pod goes."""
    from conftest import new_database
    from e2e.registry import Registry

    api, kubelet, kubeconfig = cluster
    url = new_database(pg_server, template_database)
    env = {
        **server_env(kubeconfig, worker_image, docker=False),
        "HODEI_REGISTRATION_TIMEOUT": "3",
        "HODEI_IMAGE_PULL_TIMEOUT": "20",
    }
    with Registry(docker_client) as registry, ServerProcess(url, tmp_path, env) as server:

        def run(name: str) -> str:
            reference = registry.push_new(bare_image, name)
            registry.hold()
            job_id = server.cli(
                "job", "run", "-p", "kubernetes", "--image", reference, "-c", "echo ran", check=True
            ).stdout.strip()
            eventually(registry.held.is_set, 60, what="the pull to wait for its layer")
            return job_id

        slow = run("team/slow")
        time.sleep(6)  # past the registration timeout alone
        registry.release()
        assert wait_terminal(url, slow) == "SUCCEEDED"
        assert server.cli("job", "logs", slow, check=True).stdout == "ran\n"

        stuck = run("team/stuck")
        assert wait_terminal(url, stuck, timeout=60) == "FAILED"
        ((error, pod),) = query(
            url,
            "SELECT j.error_message, w.provider_resource_id FROM jobs j JOIN workers w ON w.job_id = j.id"
            " WHERE j.id = %s",
            (stuck,),
        )
        assert "did not register within 23s (HODEI_REGISTRATION_TIMEOUT + HODEI_IMAGE_PULL_TIMEOUT" in error, error
        eventually(lambda: pod not in api.pods(), 30, what="the pod to be deleted")
        released = int(time.time())
        registry.release()
        # The pull ends after the pod went: the kubelet starts nothing of it.
        eventually(lambda: not kubelet.running(pod), 60, what="the kubelet to let the pod go")
        started = docker_client.api.events(
            since=released, until=int(time.time()) + 1, decode=True, filters={"label": f"{LABEL_POD}={pod}"}
        )
        assert [e for e in started if e.get("Type") == "container" and e["Action"] in ("create", "start")] == []
        assert not docker_client.containers.list(all=True, filters={"label": f"{LABEL_POD}={pod}"})


def test_an_unreachable_api_fails_jobs_fast_and_shows_in_health(
    pg_server: str, template_database: str, tmp_path: Path, worker_image: str
) -> None:
    from conftest import new_database

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = KubeEmulator.__new__(KubeEmulator)
    dead.url = f"http://127.0.0.1:{port}"
    url = new_database(pg_server, template_database)
    env = server_env(dead.kubeconfig(tmp_path / "kubeconfig"), worker_image, docker=False)
    with ServerProcess(url, tmp_path, env) as server:
        result = server.cli(
            "job", "run", "--provider", "kubernetes", "--command", "echo x", "--timeout", "30", "--wait"
        )
        assert result.returncode == 125, result.stderr
        job_id = result.stdout.strip()
        (reason,) = query(url, "SELECT error_message FROM jobs WHERE id = %s", (job_id,))[0]
        assert f"the Kubernetes API at http://127.0.0.1:{port} is unreachable" in reason, reason
        probed = server.cli("provider", "health", "kubernetes")
        assert probed.returncode == 1
        assert "UNHEALTHY" in probed.stdout and "unreachable" in probed.stdout


def test_an_api_outage_kills_no_running_job_and_leaves_no_pod(
    pg_server: str, template_database: str, tmp_path: Path, worker_image: str, cluster: Any
) -> None:
    """The server's way to the API is cut for 14 s (the pods and their kubelet run on): a job
    runs through it, another ends in it and is released all the same; once the API answers
    again, the reconciler deletes that job's pod."""
    from conftest import new_database

    api, _, kubeconfig = cluster
    emulator = urlsplit(api.url)
    assert emulator.hostname is not None and emulator.port is not None
    link = Link((emulator.hostname, emulator.port))
    link.up()
    url = new_database(pg_server, template_database)
    env = {
        **server_env(api.kubeconfig(tmp_path / "via-link", f"http://{link.url_host}"), worker_image, docker=False),
        "HODEI_RECONCILE_INTERVAL": "2",
    }
    with ServerProcess(url, tmp_path, env) as server:
        through = server.cli("job", "run", "-p", "kubernetes", "-c", "sleep 22; echo through", check=True).stdout
        during = server.cli("job", "run", "-p", "kubernetes", "-c", "sleep 9; echo during", check=True).stdout
        through, during = through.strip(), during.strip()
        for job_id in (through, during):
            wait_running(url, job_id, 60)
        (pod,) = query(url, "SELECT provider_resource_id FROM workers WHERE job_id = %s", (during,))[0]
        link.down()
        cut = query(url, "SELECT now()")[0][0]
        time.sleep(14)
        assert query(url, "SELECT state FROM jobs WHERE id = %s", (through,)) == [("RUNNING",)]
        wait_settled(url, during, 30)
        assert query(url, "SELECT state, exit_code, completed_at > %s FROM jobs WHERE id = %s", (cut, during)) == [
            ("SUCCEEDED", 0, True)
        ]
        assert worker_ended_because(url, during).startswith(
            "job finished; its resource is removed once its provider answers (the Kubernetes"
        )
        pods = core(kubeconfig)
        assert pod in [p.metadata.name for p in pods.list_namespaced_pod(NAMESPACE).items]
        link.up()
        assert wait_terminal(url, through, timeout=60) == "SUCCEEDED"
        for job_id, line in ((through, "through"), (during, "during")):
            wait_settled(url, job_id, 60)
            assert server.cli("job", "logs", job_id, check=True).stdout == f"{line}\n"
        eventually(
            lambda: pod not in [p.metadata.name for p in pods.list_namespaced_pod(NAMESPACE).items],
            30,
            what=f"pod {pod} deleted",
        )
    link.down()
