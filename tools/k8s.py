"""Kubernetes for development (`just dev-k8s`, `just job-k8s-pods`).

python tools/k8s.py up     use the cluster of HODEI_K8S_KUBECONFIG (or ~/.kube/config)
                           when it answers, else start an emulated API whose kubelet
                           runs pods as Docker containers (hodei.kubelet); write
                           .hodei/k8s.env for `just dev-server`
python tools/k8s.py pods   list the worker pods (-l hodei-worker) and the newest one's log,
                           read through the API (HODEI_K8S_KUBECONFIG overrides .hodei/k8s.env)
python tools/k8s.py down   stop the emulator, forget .hodei/k8s.env
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kubernetes import client, config

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".hodei" / "kube"
ENV_FILE = ROOT / ".hodei" / "k8s.env"
EMULATED_CONFIG = STATE / "kubeconfig"
PID_FILE = STATE / "emulator.pid"
NAMESPACE = os.environ.get("HODEI_K8S_NAMESPACE", "hodei-jobs-workers")


def real_kubeconfig() -> Path | None:
    path = Path(os.environ.get("HODEI_K8S_KUBECONFIG") or Path.home() / ".kube" / "config")
    if not path.exists():
        return None
    try:
        api = config.new_client_from_config(config_file=str(path), context=os.environ.get("HODEI_K8S_CONTEXT") or None)
        client.VersionApi(api).get_code(_request_timeout=3)
        return path
    except Exception as exc:
        print(f"{path} does not lead to a working cluster ({type(exc).__name__}); using the emulator")
        return None


def ensure_namespace(kubeconfig: Path) -> None:
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    try:
        core.read_namespace(NAMESPACE, _request_timeout=5)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        print(f"created namespace {NAMESPACE}")


def emulator_running() -> bool:
    try:
        os.kill(int(PID_FILE.read_text()), 0)
        return EMULATED_CONFIG.exists()
    except (OSError, ValueError):
        return False


def start_emulator() -> Path:
    STATE.mkdir(parents=True, exist_ok=True)
    if emulator_running():
        return EMULATED_CONFIG
    EMULATED_CONFIG.unlink(missing_ok=True)
    with (STATE / "emulator.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "hodei.kubelet", "--kubeconfig", str(EMULATED_CONFIG)],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    PID_FILE.write_text(str(process.pid))
    for _ in range(100):
        if EMULATED_CONFIG.exists():
            return EMULATED_CONFIG
        time.sleep(0.1)
    raise SystemExit("the Kubernetes emulator did not start; see .hodei/kube/emulator.log")


def up() -> None:
    kubeconfig = real_kubeconfig()
    if kubeconfig is not None:
        ensure_namespace(kubeconfig)
        kind = "cluster"
        print(f"Kubernetes: the real cluster of {kubeconfig}")
        print("  workers must reach the server: set HODEI_SERVER_HOST to an address pods can dial,")
        print("  and make hodei-jobs-worker:latest available to the nodes (kind load docker-image ...)")
    else:
        kubeconfig = start_emulator()
        kind = "emulator"
        print(f"Kubernetes: an emulated API server (kmock) whose node runs pods as Docker containers; {kubeconfig}")
    ENV_FILE.write_text(
        f"HODEI_KUBERNETES_ENABLED=1\nHODEI_K8S_KUBECONFIG={kubeconfig}\nHODEI_K8S_NAMESPACE={NAMESPACE}\nHODEI_K8S_KIND={kind}\n"
    )


def pods() -> None:
    """Seed 7.4: the worker pods, and the newest one's log read through the API."""
    settings = dict(line.split("=", 1) for line in ENV_FILE.read_text().split()) if ENV_FILE.exists() else {}
    kubeconfig = os.environ.get("HODEI_K8S_KUBECONFIG") or settings.get("HODEI_K8S_KUBECONFIG")
    if not kubeconfig:
        raise SystemExit("no Kubernetes configured: run `just dev-k8s` first")
    print(f"Kubernetes ({settings.get('HODEI_K8S_KIND', 'kubeconfig')}): pods in {NAMESPACE} with label hodei-worker")
    core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    items = core.list_namespaced_pod(NAMESPACE, label_selector="hodei-worker", _request_timeout=10).items
    items = [pod for pod in items if "hodei-worker" in (pod.metadata.labels or {})]
    items.sort(key=lambda pod: str((pod.status and pod.status.start_time) or pod.metadata.creation_timestamp or ""))
    for pod in items:
        print(f"  {pod.metadata.name}  {pod.status.phase if pod.status else '?'}")
    if not items:
        print("  (none: pods are deleted when their jobs end; HODEI_KEEP_FAILED_WORKERS keeps failed ones)")
        archived = sorted(STATE.glob("hodei-worker-*.out"), key=lambda p: p.stat().st_mtime)
        if settings.get("HODEI_K8S_KIND") == "emulator" and archived:
            print(f"== output of the newest deleted pod, {archived[-1].stem} (kept by the emulated node only)")
            print("\n".join(archived[-1].read_text().splitlines()[-20:]))
        return
    name = items[-1].metadata.name
    print(f"== logs of {name} (kubectl logs -n {NAMESPACE} {name} --tail=20)")
    try:
        print(core.read_namespaced_pod_log(name, NAMESPACE, tail_lines=20, _request_timeout=10), end="")
    except client.ApiException as exc:
        print(f"  no log: {exc.status} {exc.reason}")


def down() -> None:
    if emulator_running():
        os.killpg(int(PID_FILE.read_text()), signal.SIGTERM)
        print("stopped the Kubernetes emulator")
    PID_FILE.unlink(missing_ok=True)
    ENV_FILE.unlink(missing_ok=True)


if __name__ == "__main__":
    {"up": up, "pods": pods, "down": down}[sys.argv[1] if len(sys.argv) > 1 else "up"]()
