"""A Kubernetes API for tests and demos where no cluster exists: kmock's in-memory
emulator served over real HTTP, plus a fake kubelet that runs each pod's worker agent
as a local process and reports the pod's phase.

Only tests, ``just`` recipes and ``python -m hodei.kube_emulator`` use it; the server
talks to it exactly as to a real API server, through a kubeconfig.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import kmock

NAMESPACE = "hodei-jobs-workers"
T = TypeVar("T")


class KubeEmulator:
    """kmock's KubernetesEmulator on its own event loop thread."""

    def __init__(self, namespaces: tuple[str, ...] = (NAMESPACE,)) -> None:
        self.namespaces = namespaces
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self.url = ""
        self.emulator: Any = None
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)

    def start(self) -> KubeEmulator:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the Kubernetes emulator did not start")
        return self

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            emulator.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", namespaced=True)
            for namespace in self.namespaces:
                body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
                emulator[f"get /api/v1/namespaces/{namespace}"] << body
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def call(self, function: Callable[[], T]) -> T:
        """Runs ``function`` on the emulator's loop (its objects are not thread-safe)."""

        async def run() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def pods(self, namespace: str = NAMESPACE) -> dict[str, dict[str, Any]]:
        def collect() -> dict[str, dict[str, Any]]:
            found = {}
            for (resource, ns, name), obj in self.emulator.objects.items():
                if resource.plural == "pods" and ns == namespace and not obj.deleted:
                    found[name] = dict(obj.raw)
            return found

        return self.call(collect)

    def patch_pod(self, name: str, patch: dict[str, Any], namespace: str = NAMESPACE) -> None:
        """A status update through the API, as a kubelet makes it (watchers see it)."""
        request = urllib.request.Request(
            f"{self.url}/api/v1/namespaces/{namespace}/pods/{name}/status",
            data=json.dumps(patch).encode(),
            method="PATCH",
            headers={"Content-Type": "application/merge-patch+json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: emulator\n"
            f"clusters:\n- name: emulator\n  cluster:\n    server: {self.url}\n"
            "contexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: tester\n"
            "users:\n- name: tester\n  user:\n    token: emulated\n"
        )
        return path

    def __enter__(self) -> KubeEmulator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass
class Kubelet:
    """Plays the node: runs each new pod's agent as a local process with the pod's
    environment, reports Running, then Succeeded or Failed with the exit code; kills
    the process when the pod is deleted. Images in ``unpullable`` never start: their
    pods report ErrImagePull, then ImagePullBackOff."""

    api: KubeEmulator
    unpullable: set[str] = field(default_factory=set)
    log_dir: Path | None = None
    namespace: str = NAMESPACE
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Kubelet:
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self._sync()
            except Exception as exc:  # the emulator may be stopping
                print(f"[fake-kubelet] {exc}", file=sys.stderr)

    def _sync(self) -> None:
        pods = self.api.pods(self.namespace)
        for name, pod in pods.items():
            if name not in self.processes and name not in self.outputs:
                self._start(name, pod)
            process = self.processes.get(name)
            if process is not None and process.poll() is not None and pod.get("status", {}).get("phase") == "Running":
                code = process.returncode
                phase = "Succeeded" if code == 0 else "Failed"
                terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
                self.api.patch_pod(
                    name, {"status": {"phase": phase, "containerStatuses": [_status(pod, terminated=terminated)]}}
                )
        for name in list(self.processes):
            if name not in pods:
                process = self.processes.pop(name)
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(5)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()

    def _start(self, name: str, pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        output = (self.log_dir or Path("/tmp")) / f"{name}.out"
        self.outputs[name] = output
        if container["image"] in self.unpullable:
            message = f'Back-off pulling image "{container["image"]}"'
            waiting = {"reason": "ImagePullBackOff", "message": message}
            self.api.patch_pod(
                name, {"status": {"phase": "Pending", "containerStatuses": [_status(pod, waiting=waiting)]}}
            )
            return
        env = {**os.environ, **{item["name"]: item["value"] for item in container.get("env", [])}}
        with output.open("wb") as sink:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "hodei_worker.agent"], env=env, stdout=sink, stderr=subprocess.DEVNULL
            )
        running = {"startedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.api.patch_pod(name, {"status": {"phase": "Running", "containerStatuses": [_status(pod, running=running)]}})


def _status(pod: dict[str, Any], **state: Any) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    return {
        "name": container["name"],
        "image": container["image"],
        "imageID": "",
        "restartCount": 0,
        "ready": "running" in state,
        "state": state,
    }


def main() -> None:
    """Serves an emulated Kubernetes API with a fake kubelet until interrupted, and
    writes a kubeconfig for it: what `just dev-k8s` uses when no cluster is configured."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True, help="where to write the kubeconfig")
    args = parser.parse_args()
    with KubeEmulator() as api:
        api.kubeconfig(args.kubeconfig)
        kubelet = Kubelet(api, log_dir=args.kubeconfig.parent).start()
        print(f"Kubernetes emulator at {api.url}; kubeconfig {args.kubeconfig}", flush=True)
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        with contextlib.suppress(KeyboardInterrupt):
            stopped.wait()
        kubelet.stop()


if __name__ == "__main__":
    main()
