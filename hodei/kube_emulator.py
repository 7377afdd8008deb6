"""A Kubernetes API for tests and demos where no cluster exists: kmock's in-memory
emulator served over real HTTP. ``hodei.kubelet`` plays its node.

Two things of a real API server that kmock leaves out are added (``_Api``): every object
created gets a ``metadata.uid``, and deleting an object deletes the objects it owns (those
whose ``ownerReferences`` name its uid), as the garbage collector's background deletion does.

Only tests, ``just`` recipes and ``python -m hodei.kubelet`` use it; the server talks to
it exactly as to a real API server, through a kubeconfig.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kmock
from kmock import Request, Response  # type: ignore[attr-defined]  # re-exported without __all__

NAMESPACE = "hodei-jobs-workers"
T = TypeVar("T")
# kmock has no pods/log: the node answers it (Kubelet.read_log).
LOG_PATH = re.compile(r"^/api/v1/namespaces/[^/]+/pods/[^/]+/log$")


class _Api(kmock.KubernetesEmulator):
    """kmock's emulator with uids and owners (see the module docstring). ``_handle`` is
    where kmock itself changes its objects: an internal of the pinned kmock 0.8."""

    async def _handle(self, request: Request) -> Any:
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            request.data.setdefault("metadata", {})["uid"] = str(uuid.uuid4())
        gone = self._uid(request) if request.action == kmock.action.DELETE else None
        try:
            return await super()._handle(request)
        finally:
            if gone is not None:
                async with self._lock:
                    await self._collect(gone)

    def _uid(self, request: Request) -> str | None:
        if request.resource is None or request.name is None:
            return None  # a delete of a whole collection: kmock deletes nothing then
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        uid: str | None = self.objects[key].raw.get("metadata", {}).get("uid")
        return uid

    async def _collect(self, owner: str) -> None:
        """Deletes the objects ``owner`` owned, and theirs (watchers see them go)."""
        for (resource, _, _), found in list(self.objects.items()):
            references = [] if found.deleted else found.raw.get("metadata", {}).get("ownerReferences") or []
            if any(reference.get("uid") == owner for reference in references):
                uid = found.raw["metadata"].get("uid")
                found.delete()
                await self._buses[resource].put({"type": "DELETED", "object": found.last.raw})
                if uid:
                    await self._collect(uid)


@dataclass(frozen=True)
class PodLog:
    """A pods/log answer: 200 with the text, or an error status with its message."""

    status: int
    text: str


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
        async with _Api() as emulator, kmock.Server(emulator) as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            emulator.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", namespaced=True)
            emulator.resources["v1/secrets"] = kmock.ResourceInfo(kind="Secret", namespaced=True)
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

    def secrets(self, namespace: str = NAMESPACE) -> dict[str, dict[str, str]]:
        """Each Secret's data, decoded (what a kubelet reads to fill a secretKeyRef)."""

        def collect() -> dict[str, dict[str, str]]:
            found = {}
            for (resource, ns, name), obj in self.emulator.objects.items():
                if resource.plural == "secrets" and ns == namespace and not obj.deleted:
                    data = obj.raw.get("data") or {}
                    found[name] = {key: base64.b64decode(value).decode() for key, value in data.items()}
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

    def serve_logs(self, read: Callable[[str, str, int | None], PodLog]) -> None:
        """Answers GET pods/{name}/log with ``read(namespace, name, tailLines)``."""

        async def answer(request: Request) -> Response:
            tail = request.params.get("tailLines")
            found = await asyncio.to_thread(
                read, request.namespace or "", request.name or "", int(tail) if tail else None
            )
            if found.status != 200:
                status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": found.text}
                return Response(status=found.status, payload={**status, "code": found.status})
            return Response(status=200, headers={"Content-Type": "text/plain"}, payload=found.text.encode())

        self.call(lambda: self.emulator[LOG_PATH] << answer)

    def delete_grace(self, name: str, namespace: str = NAMESPACE) -> int | None:
        """The gracePeriodSeconds of the last request that deleted this pod, if it gave one
        (the emulator deletes at once; the node honours the grace period)."""

        def find() -> int | None:
            for request in reversed(list(self.emulator)):
                if request.method == "DELETE" and request.name == name and request.namespace == namespace:
                    grace = request.params.get("gracePeriodSeconds")
                    if grace is None and isinstance(request.data, dict):
                        grace = request.data.get("gracePeriodSeconds")
                    return int(grace) if grace is not None else None
            return None

        return self.call(find)

    def kubeconfig(self, path: Path, server: str | None = None) -> Path:
        """A kubeconfig for the emulator, or for ``server`` (a hop in front of it)."""
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: emulator\n"
            f"clusters:\n- name: emulator\n  cluster:\n    server: {server or self.url}\n"
            "contexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: tester\n"
            "users:\n- name: tester\n  user:\n    token: emulated\n"
        )
        return path

    def __enter__(self) -> KubeEmulator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
